//! One connection's task: the thin I/O shell around the sans-IO handshake and
//! protocol. It reads into a buffer, lets the protocol parse every complete frame,
//! hands messages to the plugin, and writes whatever the protocol queued.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until, timeout};

use super::Shared;
use super::registry::{Command, Mailbox};
use super::static_files::Body;
use crate::plugin::{ConnectionInfo, Outgoing, PluginEvent};
use crate::ws::close;
use crate::ws::handshake::{self, Accepted, Outcome, Rejection, Request};
use crate::ws::protocol::{Event, Message, Protocol, ProtocolConfig, State};

/// Bounds of the read buffer's free space. It starts small, so an idle connection
/// costs little memory, doubles while reads fill it (many frames per syscall under
/// load) and shrinks when they do not.
const MIN_READ: usize = 512;
const MAX_READ: usize = 64 * 1024;
/// Stop taking commands and reading while this much output waits for a slow peer.
const OUTPUT_HIGH_WATER: usize = 256 * 1024;
/// Close code reported when a reader was too slow for its outbound queue.
pub const OVERFLOW_CLOSE_CODE: u16 = 1008;

/// Serves one accepted socket, given as its read and write halves, until it closes.
pub async fn serve<R, W>(mut reader: R, mut writer: W, peer: SocketAddr, shared: Arc<Shared>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(1024);
    let handshake = timeout(
        shared.settings.handshake_timeout,
        read_handshake(&mut reader, &mut buf, &shared),
    );
    let detailed = !shared.settings.prod;
    let accepted = match handshake.await {
        Ok(Ok(Outcome::Accepted { accepted, consumed })) => {
            buf.advance(consumed);
            if buf.is_empty() {
                buf = BytesMut::new(); // the session sizes its own buffer
            }
            accepted
        }
        Ok(Ok(Outcome::Rejected(rejection))) => {
            tracing::debug!(%peer, "handshake rejected: {rejection}");
            let _ = writer.write_all(&rejection.response(detailed)).await;
            return linger(reader, writer, &shared).await;
        }
        Ok(Ok(Outcome::Plain { request, .. })) => {
            serve_plain(&mut writer, &request, &shared).await;
            return linger(reader, writer, &shared).await;
        }
        Ok(Ok(Outcome::Incomplete)) | Ok(Err(_)) => return,
        Err(_) => {
            tracing::debug!(%peer, "handshake timed out");
            return;
        }
    };
    let Some(slot) = Slot::take(&shared) else {
        tracing::warn!(%peer, max = shared.settings.max_connections, "connection refused: too many connections");
        let rejection = Rejection {
            status: 503,
            detail: "too many connections",
        };
        let _ = writer.write_all(&rejection.response(detailed)).await;
        return linger(reader, writer, &shared).await;
    };
    if writer.write_all(&accepted.response).await.is_err() {
        return;
    }

    let Accepted {
        request,
        subprotocol,
        deflate,
        ..
    } = *accepted;
    let id = shared.registry.next_id();
    let info = ConnectionInfo {
        id,
        remote_address: peer.to_string(),
        path: request.path,
        query: request.query,
        subprotocol,
        headers: request.headers,
    };
    let mailbox = shared.registry.register(info);
    let events = shared.plugin.events();
    if events.send(PluginEvent::Open(id)).await.is_err() {
        shared.registry.unregister(id);
        return;
    }
    tracing::debug!(%peer, conn = id, compression = deflate.is_some(), "connection open");

    let config = ProtocolConfig {
        max_message_size: shared.settings.max_message_size,
        deflate,
        deflate_level: shared.settings.handshake.deflate.map_or(0, |d| d.level),
    };
    let mut session = Session {
        id,
        protocol: Protocol::new(config),
        mailbox,
        events,
        shared: &shared,
    };
    let (code, reason) = session.run(&mut reader, &mut writer, buf).await;

    shared.registry.unregister(id);
    drop(slot);
    tracing::debug!(%peer, conn = id, code, reason, "connection closed");
    let _ = events.send(PluginEvent::Close(id, code, reason)).await;
    linger(reader, writer, &shared).await;
}

/// One of the `max_connections` places, taken before the 101 is sent (so that
/// simultaneous handshakes cannot overshoot) and given back when dropped.
struct Slot<'a>(&'a AtomicUsize);

impl<'a> Slot<'a> {
    fn take(shared: &'a Shared) -> Option<Self> {
        let before = shared.open.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(&shared.open);
        (before < shared.settings.max_connections).then_some(slot)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers a request without `Upgrade: websocket`: a static file if a directory is
/// served, else 400.
async fn serve_plain<W: AsyncWrite + Unpin>(writer: &mut W, request: &Request, shared: &Shared) {
    let Some(files) = &shared.static_files else {
        let rejection = Rejection {
            status: 400,
            detail: "missing Upgrade: websocket",
        };
        let _ = writer.write_all(&rejection.response(!shared.settings.prod)).await;
        return;
    };
    let response = files.respond(&request.method, &request.path).await;
    if writer.write_all(&response.head).await.is_err() {
        return;
    }
    let _ = match response.body {
        Body::Empty => Ok(()),
        Body::Text(text) => writer.write_all(format!("{text}\n").as_bytes()).await,
        Body::File(mut file) => tokio::io::copy(&mut file, writer).await.map(drop),
    };
}

async fn read_handshake<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    shared: &Shared,
) -> std::io::Result<Outcome> {
    loop {
        if !buf.is_empty() {
            let outcome = handshake::accept(buf, &shared.settings.handshake);
            if outcome != Outcome::Incomplete {
                return Ok(outcome);
            }
        }
        buf.reserve(1024);
        if reader.read_buf(buf).await? == 0 {
            return Ok(Outcome::Incomplete);
        }
    }
}

/// After the closing handshake: half-close, then discard what the peer still sends
/// for a moment, so that unread data does not make the kernel reset the connection
/// and destroy our close frame before the peer reads it.
async fn linger<R, W>(mut reader: R, mut writer: W, shared: &Shared)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let _ = writer.shutdown().await;
    // On the heap: an array here would make every connection's future 4 KiB larger,
    // all its life, though only a closing connection uses it.
    let mut sink = vec![0u8; 4096];
    let drain = async {
        let mut budget = 1usize << 20;
        while let Ok(n @ 1..) = reader.read(&mut sink).await {
            budget = budget.saturating_sub(n);
            if budget == 0 {
                break;
            }
        }
    };
    let _ = timeout(shared.settings.close_timeout, drain).await;
}

/// The open phase of a connection.
struct Session<'a> {
    id: u64,
    protocol: Protocol,
    mailbox: Mailbox,
    events: &'a mpsc::Sender<PluginEvent>,
    shared: &'a Shared,
}

impl Session<'_> {
    /// Runs the connection until it closes; returns the code and reason for `on-close`.
    async fn run<R, W>(&mut self, reader: &mut R, writer: &mut W, mut input: BytesMut) -> (u16, String)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let settings = &self.shared.settings;
        let mut pending: Option<PluginEvent> = None;
        let mut ended: Option<(u16, String)> = None;
        // When the closing handshake (or the flush after it) must be over.
        let mut deadline: Option<Instant> = None;
        // After the peer's close or a violation: resolves once the plugin has handled
        // every earlier message, so its replies go out before our close frame.
        let mut barrier: Option<oneshot::Receiver<()>> = None;
        // Liveness: the last time the peer sent anything, and whether we pinged since.
        let mut last_input = Instant::now();
        let mut pinged = false;
        let mut read_size = MIN_READ;
        let timer = sleep_until(last_input + settings.idle_timeout);
        // Created once: polling a fresh `cancelled()` each turn would re-register it.
        let shutdown = self.shared.shutdown.clone().cancelled_owned();
        let overflow = self.mailbox.overflowed();
        tokio::pin!(timer, shutdown, overflow);
        loop {
            if pending.is_none() && ended.is_none() {
                match self.protocol.read(&mut input) {
                    Ok(Some(Event::Message(Message::Text(text)))) => pending = Some(PluginEvent::Text(self.id, text)),
                    Ok(Some(Event::Message(Message::Binary(data)))) => {
                        pending = Some(PluginEvent::Binary(self.id, data));
                    }
                    Ok(Some(Event::Closed { code, reason })) => ended = Some((code, reason)),
                    Ok(None) => {}
                    Err(error) => {
                        tracing::debug!(conn = self.id, "protocol error: {error}");
                        ended = Some((error.code, error.reason.to_owned()));
                    }
                }
                // The peer closed or broke the protocol: before our close frame goes
                // out, let the plugin answer the messages that came before.
                if matches!(self.protocol.state(), State::CloseReceived | State::Failed) {
                    let (done, wait) = oneshot::channel();
                    pending = Some(PluginEvent::Barrier(self.id, done));
                    barrier = Some(wait);
                    deadline = Some(Instant::now() + settings.close_timeout);
                }
            }
            if let Some(event) = pending.take() {
                match self.events.try_send(event) {
                    Ok(()) => continue,
                    Err(mpsc::error::TrySendError::Full(event)) => pending = Some(event),
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        return (close::INTERNAL_ERROR, "plugin stopped".into());
                    }
                }
            }
            // Take every reply already queued, so that one write carries them all.
            if self.protocol.state() != State::Closed {
                while self.protocol.output().len() < OUTPUT_HIGH_WATER {
                    let Some(command) = self.mailbox.try_recv() else {
                        break;
                    };
                    if self.apply(command) {
                        deadline = Some(Instant::now() + settings.close_timeout);
                    }
                }
            }
            let state = self.protocol.state();
            let closed = state == State::Closed;
            let open = matches!(state, State::Open | State::CloseSent);
            if closed && deadline.is_none() {
                deadline = Some(Instant::now() + settings.close_timeout);
            }
            let output_len = self.protocol.output().len();
            if closed && output_len == 0 {
                break;
            }
            let take_commands = !closed && output_len < OUTPUT_HIGH_WATER;
            let want_input = pending.is_none() && open && output_len < OUTPUT_HIGH_WATER;
            if want_input {
                if input.is_empty() && input.capacity() > 4 * read_size {
                    input = BytesMut::new(); // give back what a burst made it grow to
                }
                input.reserve(read_size);
            }
            let spare = input.capacity() - input.len();
            // One timer serves the closing deadline and the idle check. It is moved
            // earlier at once but never later: input arrives far more often than the
            // timer fires, so a timer that fires early is simply re-armed then.
            let wake = deadline.unwrap_or(last_input + settings.idle_timeout * (1 + u32::from(pinged)));
            if wake < timer.deadline() || timer.is_elapsed() {
                timer.as_mut().reset(wake);
            }
            let output = self.protocol.output();
            tokio::select! {
                biased;
                () = &mut overflow => {
                    tracing::warn!(conn = self.id, "outbound queue overflowed: dropping the slow reader");
                    return (OVERFLOW_CLOSE_CODE, "outbound queue overflow".into());
                }
                written = writer.write(output), if output_len > 0 => match written {
                    Ok(n @ 1..) => output.advance(n),
                    _ => break,
                },
                command = self.mailbox.recv(), if take_commands => {
                    if self.apply(command) {
                        deadline = Some(Instant::now() + settings.close_timeout);
                    }
                }
                permit = self.events.reserve(), if pending.is_some() => match permit {
                    Ok(permit) => permit.send(pending.take().expect("checked above")),
                    Err(_) => return (close::INTERNAL_ERROR, "plugin stopped".into()),
                },
                read = reader.read_buf(&mut input), if want_input => match read {
                    Ok(n @ 1..) => {
                        last_input = Instant::now();
                        pinged = false;
                        if n == spare {
                            read_size = (read_size * 2).min(MAX_READ);
                        } else if n < read_size / 8 {
                            read_size = (read_size / 2).max(MIN_READ);
                        }
                    }
                    _ => break,
                },
                _ = async { barrier.as_mut().expect("guarded").await }, if barrier.is_some() && pending.is_none() => {
                    barrier = None;
                    self.finish_closing();
                }
                () = &mut shutdown, if state == State::Open => {
                    let _ = self.protocol.close(close::GOING_AWAY, "server shutting down");
                    deadline = Some(Instant::now() + settings.close_timeout);
                }
                () = &mut timer => {
                    if Instant::now() < wake {
                        continue; // fired for an older deadline: input arrived since
                    }
                    if deadline.is_none() {
                        // Idle: ping once; if that is not answered in time either, give up.
                        if !pinged {
                            pinged = true;
                            let _ = self.protocol.send_ping(b"wsplug");
                        } else {
                            tracing::debug!(conn = self.id, "no answer to ping: closing");
                            let _ = self.protocol.close(close::GOING_AWAY, "idle timeout");
                            ended = Some((close::ABNORMAL, "no answer to ping".into()));
                            deadline = Some(Instant::now() + settings.close_timeout);
                        }
                        continue;
                    }
                    if barrier.take().is_some() {
                        tracing::warn!(conn = self.id, "plugin did not catch up in time: closing without its replies");
                        self.finish_closing();
                        deadline = Some(Instant::now() + settings.close_timeout);
                        continue;
                    }
                    tracing::debug!(conn = self.id, "closing handshake timed out");
                    break;
                }
            }
        }
        if let Some(end) = ended {
            return end;
        }
        match self.protocol.state() {
            // We sent a close frame and the peer never answered it.
            State::CloseSent => (close::ABNORMAL, "closing handshake did not complete".into()),
            _ => (close::ABNORMAL, "connection dropped without a close frame".into()),
        }
    }

    /// Sends what the plugin queued in reply to the messages before the peer's close
    /// or violation, then our close frame.
    fn finish_closing(&mut self) {
        while let Some(command) = self.mailbox.try_recv() {
            self.apply(command);
        }
        self.protocol.finish_closing();
    }

    /// Applies a plugin command; returns whether it started the closing handshake.
    fn apply(&mut self, command: Command) -> bool {
        match command {
            Command::Send(Outgoing::Text(text)) => {
                let _ = self.protocol.send_text(text.as_str());
                false
            }
            Command::Send(Outgoing::Binary(data)) => {
                let _ = self.protocol.send_binary(&data);
                false
            }
            Command::Close(code, reason) => self.protocol.close(code, &reason).is_ok(),
        }
    }
}
