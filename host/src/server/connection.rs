//! One connection's task: the thin I/O shell around the sans-IO handshake and
//! protocol. It reads into a buffer, lets the protocol parse every complete frame,
//! hands messages to the plugin, and writes whatever the protocol queued.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};

use super::outbound::{Command, Inbound, Mailbox, Wants};
use super::static_files::Body;
use super::{Route, Shared, endpoints, route_of};
use crate::http;
use crate::metrics::{Rejected, RouteMetrics};
use crate::plugin::{
    ConnectionEvent, ConnectionInfo, Control, HostServices, MAX_ATTACHMENT, Outgoing, PluginEvent, PluginLink, Refused,
};
use crate::plugin::{UpgradeDecision, UpgradeRequest};
use crate::ws::close;
use crate::ws::handshake::{self, Accepted, Outcome, Rejection, Request};
use crate::ws::protocol::{Ended, Event, Message, Protocol, ProtocolConfig, State, Timeout};

/// Bounds of the read buffer's free space. It starts small, so an idle connection
/// costs little memory, doubles while reads fill it (many frames per syscall under
/// load) and shrinks when they do not.
const MIN_READ: usize = 512;
const MAX_READ: usize = 64 * 1024;
/// Leave commands in the mailbox, and stop reading, while this much output waits for
/// the socket: encoding more would only copy it.
const OUTPUT_HIGH_WATER: usize = 256 * 1024;
/// How long a socket may take nothing, while output waits, before its client counts
/// as not reading. A reader that is merely behind a burst makes progress at every
/// round trip; one that stopped makes none.
const STALL_GRACE: Duration = Duration::from_secs(1);
/// How long a connection keeps its (empty) read buffer after its last read: busy
/// connections keep it, idle ones (most, in a chat) hold none. An idle connection is
/// woken at least by its idle ping, and lets it go then.
const HOLD_READ_BUFFER: Duration = Duration::from_secs(1);

/// Serves one accepted socket, given as its read and write halves, until it closes.
pub async fn serve<R, W>(mut reader: R, mut writer: W, peer: SocketAddr, shared: Arc<Shared>)
where
    R: ReadHalf,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(1024);
    // One bound for the whole handshake: reading it and, with a hook, the plugin's decision.
    let deadline = Instant::now() + shared.settings.handshake_timeout;
    let handshake = timeout_at(deadline, read_handshake(&mut reader, &mut buf, &shared));
    let detailed = !shared.settings.prod;
    let refuse = |reason: Rejected, rejection: Rejection| {
        shared.metrics.rejected(reason);
        http::error(rejection.status, rejection.headers(), rejection.detail, detailed)
    };
    let mut accepted = match handshake.await {
        Ok(Ok(Outcome::Accepted { accepted, consumed })) => {
            buf.advance(consumed);
            if buf.is_empty() {
                buf = BytesMut::new(); // the session sizes its own buffer
            }
            accepted
        }
        Ok(Ok(Outcome::Rejected(rejection))) => {
            tracing::debug!(%peer, "handshake rejected: {rejection}");
            let _ = writer
                .write_all(&refuse(Rejected::of_status(rejection.status), rejection))
                .await;
            return linger(reader, writer, &shared).await;
        }
        Ok(Ok(Outcome::Plain { request, .. })) => {
            serve_plain(&mut writer, &request, &shared).await;
            return linger(reader, writer, &shared).await;
        }
        Ok(Ok(Outcome::Incomplete)) | Ok(Err(_)) => return,
        Err(_) => {
            shared.metrics.rejected(Rejected::Timeout);
            tracing::debug!(%peer, "handshake timed out");
            return;
        }
    };
    let route = route_of(&shared.routes, &accepted.request.path).expect("the handshake found a route");
    if shared.shutdown.is_cancelled() {
        let response = refuse(Rejected::ShuttingDown, Rejection::new(503, "server shutting down"));
        let _ = writer.write_all(&response).await;
        return linger(reader, writer, &shared).await;
    }
    let Some(slot) = Slot::take(&shared.open, shared.settings.max_connections) else {
        tracing::warn!(%peer, max = shared.settings.max_connections, "connection refused: too many connections");
        let response = refuse(Rejected::Capacity, Rejection::new(503, "too many connections"));
        let _ = writer.write_all(&response).await;
        return linger(reader, writer, &shared).await;
    };
    let route_slot = match route.max_connections {
        None => None,
        Some(max) => match Slot::take(&route.open, max) {
            Some(slot) => Some(slot),
            None => {
                tracing::warn!(%peer, route = route.name(), max, "connection refused: too many connections on its route");
                let response = refuse(Rejected::Capacity, Rejection::new(503, "too many connections"));
                let _ = writer.write_all(&response).await;
                return linger(reader, writer, &shared).await;
            }
        },
    };
    let admitted = match admit(&mut accepted, peer, &shared, route, deadline).await {
        Ok(admitted) => admitted,
        Err((reason, response)) => {
            shared.metrics.rejected(reason);
            let _ = writer.write_all(&response).await;
            return linger(reader, writer, &shared).await;
        }
    };
    if writer.write_all(&accepted.response()).await.is_err() {
        return;
    }

    let Accepted {
        request,
        subprotocol,
        deflate,
        ..
    } = *accepted;
    let registry = &route.registry;
    let id = registry.next_id();
    let info = ConnectionInfo {
        id,
        remote_address: peer.to_string(),
        path: request.path,
        query: request.query,
        subprotocol,
        headers: request.headers.into(),
    };
    let mailbox = registry.register(info);
    if let Some(attachment) = admitted.attachment {
        let _ = registry.set_attachment(id, attachment);
    }
    for group in &admitted.groups {
        let _ = registry.join(id, group);
    }
    let Ok(plugin) = route.plugin.open(id).await else {
        registry.unregister(id);
        return;
    };
    route.metrics.opened.inc();
    tracing::debug!(%peer, conn = id, route = route.name(), compression = deflate.is_some(), "connection open");

    let config = ProtocolConfig {
        max_message_size: route.max_message_size,
        deflate,
        deflate_level: route.handshake.deflate.map_or(0, |d| d.level),
        idle_timeout: shared.settings.idle_timeout,
        close_timeout: shared.settings.close_timeout,
    };
    let mut session = Session {
        protocol: Protocol::new(config, Instant::now().into_std()),
        mailbox,
        plugin,
        route,
        peer,
        released: false,
        replies: Vec::new(),
        metrics: &route.metrics,
        blocked: false,
        progress_at: Instant::now(),
        stalled: false,
        aborted: false,
        readable: false,
        read_at: None,
    };
    let ended = session.run(&mut reader, &mut writer, buf).await;
    session.release(&ended).await;
    drop((slot, route_slot));
    // Both close frames went their way: the peer sends nothing more, so the socket
    // closes at once, the server first (RFC 6455 section 7.1.1), and a client that keeps
    // its side open holds nothing (a shutdown least of all).
    if matches!(ended, Ended::ByPeer { .. }) {
        let _ = writer.shutdown().await;
        return;
    }
    linger(reader, writer, &shared).await;
}

/// What the plugin's `on-upgrade` gave an accepted connection.
#[derive(Default)]
struct Admitted {
    attachment: Option<Vec<u8>>,
    groups: Vec<String>,
}

/// Asks the plugin's `on-upgrade`, if it has one, whether to let the client in, and
/// checks its answer: the connection's attachment and groups, or the HTTP response to
/// send instead. Anything but a clear, valid decision by `deadline` (the end of the
/// handshake timeout; a plugin whose queue is full counts against it too), such as a
/// trap, a deadline overrun, a subprotocol that was not offered or a malformed
/// rejection, is a 503: the hook fails closed.
async fn admit(
    accepted: &mut Accepted,
    peer: SocketAddr,
    shared: &Shared,
    route: &Route,
    deadline: Instant,
) -> Result<Admitted, (Rejected, Vec<u8>)> {
    if !route.plugin.decides_handshakes() {
        return Ok(Admitted::default());
    }
    let request = &accepted.request;
    let upgrade = UpgradeRequest {
        remote_address: peer.to_string(),
        path: request.path.clone(),
        query: request.query.clone(),
        headers: request.headers.clone(),
        protocols: request.offered_subprotocols().map(str::to_owned).collect(),
    };
    let decision = timeout_at(deadline, route.plugin.upgrade(upgrade)).await.ok();
    let unavailable = |why: &str| {
        tracing::warn!(%peer, "handshake refused with 503: {why}");
        let response = http::error(503, &[], "the application could not decide", !shared.settings.prod);
        (Rejected::PluginFailed, response)
    };
    match decision.unwrap_or(UpgradeDecision::Failed) {
        UpgradeDecision::Accept {
            subprotocol,
            attachment,
            groups,
        } => {
            if accepted.choose_subprotocol(subprotocol).is_err() {
                return Err(unavailable("on-upgrade chose a subprotocol the client did not offer"));
            }
            if attachment.as_ref().is_some_and(|a| a.len() > MAX_ATTACHMENT) {
                return Err(unavailable("on-upgrade gave an attachment over 16 KiB"));
            }
            let limits = route.registry.shared_limits();
            if groups.len() > limits.max_groups || groups.iter().any(|g| g.len() > limits.max_group_name) {
                return Err(unavailable(
                    "on-upgrade gave more groups than max_groups_per_connection, or a name over max_group_name",
                ));
            }
            Ok(Admitted { attachment, groups })
        }
        UpgradeDecision::Reject { status, headers, body } => match http::custom(status, &headers, &body) {
            Ok(response) => {
                tracing::debug!(%peer, status, "handshake rejected by the plugin");
                Err((Rejected::Plugin, response))
            }
            Err(bad) => Err(unavailable(&format!("on-upgrade's rejection cannot be sent: {bad}"))),
        },
        UpgradeDecision::NoHook => Ok(Admitted::default()),
        UpgradeDecision::Failed => Err(unavailable(
            "on-upgrade failed (trapped, ran past its deadline, or did not answer in time)",
        )),
    }
}

/// One of the `max_connections` places (of the host or of a route), taken before the 101 is sent (so that
/// simultaneous handshakes cannot overshoot) and given back when dropped.
struct Slot<'a>(&'a AtomicUsize);

impl<'a> Slot<'a> {
    fn take(open: &'a AtomicUsize, max: usize) -> Option<Self> {
        let before = open.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(open);
        (before < max).then_some(slot)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers a request without `Upgrade: websocket`: an operator's endpoint (health,
/// metrics), else a static file if a directory is served, else 400. A client that
/// takes nothing of the response for the idle timeout is let go.
async fn serve_plain<W: AsyncWrite + Unpin>(writer: &mut W, request: &Request, shared: &Shared) {
    let stall = shared.settings.idle_timeout;
    if let Some(response) = endpoints::respond(&request.method, &request.path, shared, shared.settings.metrics_here) {
        let _ = write_within(writer, &response, stall).await;
        return;
    }
    let Some(files) = &shared.static_files else {
        let response = http::error(400, &[], "missing Upgrade: websocket", !shared.settings.prod);
        let _ = write_within(writer, &response, stall).await;
        return;
    };
    let response = files.respond(&request.method, &request.path).await;
    if write_within(writer, &response.head, stall).await.is_err() {
        return;
    }
    match response.body {
        Body::Empty => {}
        Body::File(mut file) => {
            let mut chunk = vec![0; 64 << 10];
            while let Ok(n @ 1..) = file.read(&mut chunk).await {
                if write_within(writer, &chunk[..n], stall).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Writes all of `bytes`, unless the peer takes nothing for `stall`.
async fn write_within<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8], stall: Duration) -> std::io::Result<()> {
    let mut rest = bytes;
    while !rest.is_empty() {
        match timeout(stall, writer.write(rest)).await {
            Ok(Ok(n @ 1..)) => rest = &rest[n..],
            Ok(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(Err(error)) => return Err(error),
            Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
        }
    }
    Ok(())
}

async fn read_handshake<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    shared: &Shared,
) -> std::io::Result<Outcome> {
    loop {
        if !buf.is_empty() {
            let outcome = handshake::accept_routed(buf, handshake::MAX_REQUEST_BYTES, |path| {
                route_of(&shared.routes, path).map(|route| &route.handshake)
            });
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

/// A connection's read half: a byte stream that may also say when it is readable.
pub trait ReadHalf: AsyncRead + Unpin {
    /// Resolves once a read would not wait (data, the end, or an error), without a
    /// buffer to read into. Streams that cannot tell resolve at once.
    fn readable(&self) -> impl Future<Output = std::io::Result<()>>;
}

impl ReadHalf for tokio::net::tcp::OwnedReadHalf {
    fn readable(&self) -> impl Future<Output = std::io::Result<()>> {
        // Polled in place: `OwnedReadHalf::readable`'s future is 100 bytes larger, and
        // every connection's task holds it.
        let stream: &tokio::net::TcpStream = self.as_ref();
        std::future::poll_fn(move |cx| stream.poll_read_ready(cx))
    }
}

/// TLS streams (and the tests' pipes): their readiness is the TLS layer's, so they read
/// into a buffer at once.
impl<T: AsyncRead> ReadHalf for tokio::io::ReadHalf<T> {
    async fn readable(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Waits until `reader` is readable (`None`) if `wait_first`, else reads into `input`.
/// One future for both, so that the connection's loop borrows the reader once.
async fn read_or_wait<R: ReadHalf>(
    reader: &mut R,
    input: &mut BytesMut,
    wait_first: bool,
) -> std::io::Result<Option<usize>> {
    if wait_first {
        reader.readable().await.map(|()| None)
    } else {
        reader.read_buf(input).await.map(Some)
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

/// Writes what `writer` takes of `bytes` now, without waiting: `None` if it would have
/// to wait (the caller's task is then woken when it can take more).
async fn write_now<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> Option<std::io::Result<usize>> {
    std::future::poll_fn(|cx| match Pin::new(&mut *writer).poll_write(cx, bytes) {
        Poll::Ready(written) => Poll::Ready(Some(written)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// The open phase of a connection: moves bytes between the socket and the protocol,
/// messages to the plugin and its commands back, and fires the protocol's timers.
/// Every rule about time and closing lives in [`Protocol`].
struct Session<'a> {
    protocol: Protocol,
    mailbox: Mailbox,
    /// The way to the plugin, which drops what is no longer for it.
    plugin: PluginLink<'a>,
    /// The route the connection belongs to.
    route: &'a Route,
    /// The client's address, for the log.
    peer: SocketAddr,
    /// The connection has left the application ([`Session::release`]): what the socket
    /// still does (the close frame's flush) concerns nobody else.
    released: bool,
    /// What a stateless plugin sent back while handling one of this connection's
    /// messages on this thread, to encode when the call returns (kept for its room).
    replies: Vec<Outgoing>,
    metrics: &'a RouteMetrics,
    /// The socket refused part of the last write: the client is behind.
    blocked: bool,
    /// When the socket last took bytes, or last had nothing to take.
    progress_at: Instant,
    /// The socket has taken nothing for [`STALL_GRACE`] while output waited: the
    /// client is not reading, and the outbound limits apply.
    stalled: bool,
    /// The client was dropped ahead of its queue (too slow, or the plugin is gone).
    aborted: bool,
    /// The socket became readable while the connection held no read buffer.
    readable: bool,
    /// When the socket last gave bytes.
    read_at: Option<Instant>,
}

impl Session<'_> {
    /// Runs the connection until it is over; returns why it ended.
    async fn run<R, W>(&mut self, reader: &mut R, writer: &mut W, mut input: BytesMut) -> Ended
    where
        R: ReadHalf,
        W: AsyncWrite + Unpin,
    {
        // A message read but not yet taken by the plugin's queue.
        let mut pending: Option<PluginEvent> = None;
        // After the peer's close or a violation: resolves once the plugin has handled
        // every earlier message, so that its replies go out before our close frame.
        let mut barrier: Option<oneshot::Receiver<()>> = None;
        let mut read_size = MIN_READ;
        // The socket reached its end (or failed) in this turn.
        let mut gone = false;
        let first_deadline = self
            .protocol
            .poll_timeout()
            .expect("a new connection has an idle deadline");
        let timer = sleep_until(Instant::from_std(first_deadline));
        tokio::pin!(timer);
        // The time, read once per turn of the loop, when it wakes: what the socket did
        // in this turn happened at about this time (a read or a write does not wait).
        let mut now = Instant::now();
        loop {
            // Messages in, for as long as the plugin's queue takes them and the replies
            // stay under the high-water mark. Replies in first, each time: every command
            // already queued, so that one write carries them all, and so that a stateless
            // plugin's direct replies to the next message come after them.
            loop {
                self.take_replies();
                if !(pending.is_none() && self.replies_have_room() && self.protocol.output().len() < OUTPUT_HIGH_WATER)
                {
                    break;
                }
                match self.protocol.read(&mut input, now.into_std()) {
                    Ok(Some(Event::Message(message))) => pending = Some(self.received(message)),
                    Ok(Some(Event::Closed { .. })) => {}
                    Ok(None) => break,
                    Err(error) => tracing::debug!(conn = self.plugin.conn(), "protocol error: {error}"),
                }
                // The peer closed or broke the protocol: before our close frame goes
                // out, let the plugin answer the messages that came before.
                if pending.is_none() && matches!(self.protocol.state(), State::CloseReceived | State::Failed) {
                    let (done, wait) = oneshot::channel();
                    pending = Some(Control::Barrier(done).into());
                    barrier = Some(wait);
                }
                if let Some(event) = pending.take() {
                    // The queue is empty (taken above, under the high-water mark): what a
                    // stateless plugin sends back now may skip it.
                    let mut replies = std::mem::take(&mut self.replies);
                    match self.plugin.try_send(event, Some(&mut replies)).await {
                        Ok(()) => {}
                        Err(Refused::Busy(event)) => pending = Some(event),
                        Err(Refused::Stopped) => self.abort(close::INTERNAL_ERROR, "plugin stopped"),
                    }
                    for reply in replies.drain(..) {
                        self.apply(Command::Send(reply));
                    }
                    if replies.capacity() <= 8 {
                        self.replies = replies; // kept, unless a burst grew it
                    }
                }
            }
            // A client found too slow is dropped before anything more is written to it.
            if !self.aborted && self.mailbox.overflowed() {
                self.drop_slow_reader();
            }
            // Output out at once if the socket takes it: a reply leaves in the turn that
            // made it, instead of in a turn of its own through every wait below. Tried at
            // every turn, also after a partial write: commands arriving without pause win
            // the select below, and must not keep the socket from being written (a reader
            // that keeps up would look stalled).
            if !self.protocol.output().is_empty()
                && let Some(Ok(n @ 1..)) = write_now(writer, self.protocol.output()).await
            {
                self.wrote(n);
                self.progress_at = now;
            }
            if self.protocol.is_done() {
                break;
            }
            // Dropped by the host (too slow, no answer to a ping): the application sees
            // it gone now, while the close frame still has its time to leave.
            if !self.released
                && let Some(ended) = self.protocol.ended().filter(|ended| ended.by_host()).cloned()
            {
                pending = None;
                barrier = None;
                self.release(&ended).await;
            }
            let state = self.protocol.state();
            let output_len = self.protocol.output().len();
            let wants = Wants {
                commands: state != State::Closed && output_len < OUTPUT_HIGH_WATER,
                overflow: !self.aborted,
                shutdown: state == State::Open,
            };
            let readable = matches!(state, State::Open | State::CloseSent);
            let want_input =
                pending.is_none() && readable && output_len < OUTPUT_HIGH_WATER && self.replies_have_room();
            // A connection that has read nothing for a while holds no read buffer: it
            // waits until the socket is readable, and only then makes room to read into.
            let wait_first = want_input
                && input.is_empty()
                && !self.readable
                && self.read_at.is_none_or(|at| now >= at + HOLD_READ_BUFFER);
            if want_input {
                if input.is_empty() && (wait_first || input.capacity() > 4 * read_size) {
                    input = BytesMut::new(); // give back what a burst made it grow to
                }
                if !wait_first {
                    input.reserve(read_size);
                }
            }
            let spare = input.capacity() - input.len();
            if output_len == 0 {
                self.progress_at = now; // nothing waits, so nothing is overdue
            }
            // One timer serves every deadline of the protocol and the stall check. It is
            // moved earlier at once but never later: input moves the idle deadline far
            // more often than the timer fires, so a timer that fires early is simply
            // re-armed then.
            let stall_check = (output_len > 0 && !self.stalled).then(|| self.progress_at + STALL_GRACE);
            let protocol_deadline = self.protocol.poll_timeout().map(Instant::from_std);
            if let Some(wake) = protocol_deadline.into_iter().chain(stall_check).min()
                && (wake < timer.deadline() || timer.is_elapsed())
            {
                timer.as_mut().reset(wake);
            }
            let output = self.protocol.output();
            let (mut wrote, mut got) = (false, false);
            tokio::select! {
                biased;
                // First: a client found too slow is dropped before anything more is written.
                inbound = self.mailbox.recv(wants), if wants.any() => match inbound {
                    Inbound::Command(command) => self.apply(command),
                    Inbound::Overflowed => self.drop_slow_reader(),
                    Inbound::ShuttingDown => {
                        let _ = self.protocol.close(close::GOING_AWAY, "server shutting down", Instant::now().into_std());
                    }
                },
                written = writer.write(output), if output_len > 0 => match written {
                    Ok(n @ 1..) => {
                        self.wrote(n);
                        wrote = true;
                    }
                    _ => gone = true,
                },
                ready = self.plugin.ready(), if pending.is_some() => match ready {
                    Ok(ready) => self.plugin.send_in(ready, pending.take().expect("checked above")).await,
                    Err(_) => {
                        pending = None;
                        self.abort(close::INTERNAL_ERROR, "plugin stopped");
                    }
                },
                read = read_or_wait(reader, &mut input, wait_first), if want_input => match read {
                    Ok(None) => self.readable = true,
                    Ok(Some(n @ 1..)) => {
                        self.readable = false;
                        got = true;
                        if n == spare {
                            read_size = (read_size * 2).min(MAX_READ);
                        } else if n < read_size / 8 {
                            read_size = (read_size / 2).max(MIN_READ);
                        }
                    }
                    _ => gone = true,
                },
                _ = async { barrier.as_mut().expect("guarded").await }, if barrier.is_some() && pending.is_none() => {
                    barrier = None;
                    self.finish_closing();
                }
                () = &mut timer => {
                    self.fire_timer();
                    self.check_stall();
                }
            }
            now = Instant::now();
            if wrote {
                self.progress_at = now;
            }
            if got {
                self.read_at = Some(now);
            }
            if gone {
                // The socket ended or failed: what the peer sent before still reaches
                // the plugin, then nothing more is read or written.
                self.deliver_rest(pending.take(), &mut input).await;
                self.protocol.handle_eof();
            }
            if !matches!(self.protocol.state(), State::CloseReceived | State::Failed) {
                barrier = None; // the wait for replies is over (they came, or timed out)
            }
        }
        self.protocol.ended().cloned().unwrap_or(Ended::Dropped)
    }

    /// Notes that the socket took the first `n` bytes of the output.
    fn wrote(&mut self, n: usize) {
        self.blocked = n < self.protocol.output().len();
        self.protocol.advance_output(n);
        self.stalled = false;
        self.mailbox.update(self.protocol.backlog(), false);
    }

    /// The plugin event of a message from the client, counted.
    fn received(&mut self, message: Message) -> PluginEvent {
        match message {
            Message::Text(text) => {
                self.metrics.traffic.received(true, text.len());
                ConnectionEvent::Text(self.plugin.conn(), text).into()
            }
            Message::Binary(data) => {
                self.metrics.traffic.received(false, data.len());
                ConnectionEvent::Binary(self.plugin.conn(), data).into()
            }
        }
    }

    /// Encodes the commands already queued, up to the output's high-water mark.
    fn take_replies(&mut self) {
        while self.protocol.state() != State::Closed && self.protocol.output().len() < OUTPUT_HIGH_WATER {
            let Some(command) = self.mailbox.try_recv() else {
                break;
            };
            self.apply(command);
        }
    }

    /// Takes the connection out of the application, once: out of the registry (sends,
    /// broadcasts, groups, `connections()`, the other hosts' views), counted as closed,
    /// and its `on-close` delivered with why it `ended`.
    async fn release(&mut self, ended: &Ended) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        self.route.registry.unregister(self.plugin.conn());
        let (code, reason) = ended.code_and_reason();
        self.metrics.closed(code);
        tracing::debug!(peer = %self.peer, conn = self.plugin.conn(), code, reason, "connection closed");
        self.plugin.close(code, reason).await;
    }

    /// Hands the plugin the event that waited for room in its queue and every complete
    /// message still in `input`, waiting for room as needed: a client that sends and
    /// hangs up at once loses nothing it sent.
    async fn deliver_rest(&mut self, mut next: Option<PluginEvent>, input: &mut BytesMut) {
        let now = Instant::now().into_std();
        loop {
            if let Some(event) = next.take()
                && self.plugin.send(event).await.is_err()
            {
                return;
            }
            next = match self.protocol.read(input, now) {
                Ok(Some(Event::Message(message))) => Some(self.received(message)),
                _ => return,
            };
        }
    }

    /// Whether to take more messages from the client: not while it fails to take the
    /// replies already waiting for it. A client that sends without reading is slowed
    /// down by its own TCP window, instead of growing its backlog to the drop.
    fn replies_have_room(&self) -> bool {
        if !self.blocked {
            return true;
        }
        let limits = self.mailbox.limits();
        let waiting = self.mailbox.waiting(self.protocol.backlog());
        waiting.frames < limits.max_messages / 2 && waiting.bytes < limits.max_bytes / 2
    }

    /// Acts on the protocol's timer, if its deadline has come.
    fn fire_timer(&mut self) {
        let Some(timeout) = self.protocol.handle_timeout(Instant::now().into_std()) else {
            return; // fired for an older deadline: input arrived since
        };
        match timeout {
            Timeout::Ping => {}
            Timeout::Idle => tracing::debug!(conn = self.plugin.conn(), "no answer to ping: closing"),
            Timeout::Replies => {
                tracing::warn!(
                    conn = self.plugin.conn(),
                    "plugin did not catch up in time: closing without its replies"
                );
            }
            Timeout::CloseHandshake => tracing::debug!(conn = self.plugin.conn(), "closing handshake timed out"),
            Timeout::Flush => tracing::debug!(conn = self.plugin.conn(), "close frame not flushed in time"),
        }
    }

    /// Once the socket has taken nothing for [`STALL_GRACE`] while output waits, the
    /// client counts as not reading: from then on (until it takes something), more than
    /// the outbound limits waiting for it drops it.
    fn check_stall(&mut self) {
        let now = Instant::now();
        if self.stalled || self.protocol.output().is_empty() || now < self.progress_at + STALL_GRACE {
            return;
        }
        self.stalled = true;
        if self.mailbox.update(self.protocol.backlog(), true) && !self.aborted {
            self.drop_slow_reader();
        }
    }

    /// Drops a client that does not take what waits for it: a 1008 close frame goes out
    /// ahead of its queue, after the frame being written.
    fn drop_slow_reader(&mut self) {
        self.metrics.slow_clients.inc();
        let limits = self.mailbox.limits();
        tracing::warn!(
            conn = self.plugin.conn(),
            max_messages = limits.max_messages,
            max_bytes = limits.max_bytes,
            "client too slow for its outbound bound: dropping it"
        );
        self.abort(close::POLICY_VIOLATION, "outbound queue overflow");
    }

    fn abort(&mut self, code: u16, reason: &'static str) {
        self.aborted = true;
        self.protocol.abort(code, reason, Instant::now().into_std());
    }

    /// Sends what the plugin queued in reply to the messages before the peer's close
    /// or violation, then our close frame.
    fn finish_closing(&mut self) {
        while let Some(command) = self.mailbox.try_recv() {
            self.apply(command);
        }
        self.protocol.finish_closing(Instant::now().into_std());
    }

    /// Applies a plugin command. Commands that come too late (the connection is
    /// closing) are dropped.
    fn apply(&mut self, command: Command) {
        let (sent, len) = match command {
            Command::Send(Outgoing::Text(text)) => (self.protocol.send_text(text.as_str()), text.as_str().len()),
            Command::Send(Outgoing::Binary(data)) => (self.protocol.send_binary(&data), data.len()),
            Command::Close(code, reason) => {
                let _ = self.protocol.close(code.get(), &reason, Instant::now().into_std());
                return;
            }
        };
        if sent.is_ok() {
            self.metrics.traffic.sent(len);
        }
    }
}

#[cfg(test)]
#[path = "connection_tests.rs"]
mod tests;
