//! In-process tests of the connection shell: a real [`serve`] over an in-memory duplex
//! pipe and a native handler on the plugin thread. The timer tests pause tokio's clock
//! once the connection is open, so that timeouts take no wall-clock time. (Paused
//! earlier, the clock would jump ahead while the runtime waits for the plugin thread,
//! which tokio cannot see.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::super::outbound::OutboundLimits;
use super::super::registry::Registry;
use super::super::route_path::RoutePath;
use super::super::{Route, Settings, Shared};
use super::serve;
use crate::metrics::Metrics;
use crate::plugin::{ConnectionEvent, HostServices, Outgoing, spawn_handler};
use crate::ws::frame::{FrameHeader, Opcode};
use crate::ws::handshake::HandshakeConfig;
use crate::ws::mask::apply_mask;

const IDLE: Duration = Duration::from_secs(30);
const CLOSE: Duration = Duration::from_secs(4);

/// What the handler saw, as plain values.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Open,
    Text(String),
    Close(u16, String),
}

/// A server connection on one end of a duplex pipe of `pipe` bytes, its plugin a
/// native handler (its queue holds 64 events) that records events, blocks on `hold`
/// until released, answers `flood N` with N messages of 100 bytes and anything else
/// with an echo.
struct Harness {
    client: DuplexStream,
    seen: UnboundedReceiver<Seen>,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    /// Lets the plugin go on after `hold`, which blocks it.
    release: std::sync::mpsc::Sender<()>,
}

impl Harness {
    async fn start(pipe: usize, limits: OutboundLimits, idle: Duration) -> Harness {
        let registry = Arc::new(Registry::new(limits));
        let (record, seen) = unbounded_channel();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let plugin = spawn_handler(
            "test",
            64,
            registry.clone(),
            move |services: &dyn HostServices, event| {
                match event {
                    ConnectionEvent::Text(_, text) if text == "hold" => {
                        let _ = record.send(Seen::Text(text));
                        let _ = held.recv();
                    }
                    ConnectionEvent::Open(_) => {
                        let _ = record.send(Seen::Open);
                    }
                    ConnectionEvent::Text(conn, text) => {
                        if let Some(n) = text.strip_prefix("flood ") {
                            let message: String = "m".repeat(100);
                            for _ in 0..n.parse::<usize>().expect("a count") {
                                // Refused once the client is dropped: nothing to do then.
                                let _ = services.send(conn, Outgoing::Text(message.clone().into()));
                            }
                        } else {
                            let _ = services.send(conn, Outgoing::Text(text.clone().into()));
                        }
                        let _ = record.send(Seen::Text(text));
                    }
                    ConnectionEvent::Close(_, code, reason) => {
                        let _ = record.send(Seen::Close(code, reason));
                    }
                    ConnectionEvent::Binary(..) => {}
                }
            },
        )
        .expect("plugin thread");
        let metrics = Metrics::new();
        let route = Route::new(
            RoutePath::parse("/*").unwrap(),
            HandshakeConfig {
                deflate: None,
                ..HandshakeConfig::default()
            },
            1 << 20,
            None,
            registry,
            plugin,
            metrics.route("test"),
        );
        let shared = Arc::new(Shared {
            settings: Settings {
                handshake_timeout: Duration::from_secs(5),
                idle_timeout: idle,
                close_timeout: CLOSE,
                max_connections: 10,
                prod: false,
                metrics_here: true,
                ..Settings::default()
            },
            routes: vec![route],
            static_files: None,
            metrics,
            shutdown: CancellationToken::new(),
            ready: Default::default(),
            open: Default::default(),
            per_ip: crate::server::per_ip::PerIp::new(Default::default()),
        });
        let (client, server) = tokio::io::duplex(pipe);
        let (reader, writer) = tokio::io::split(server);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let task = tokio::spawn(serve(reader, writer, peer, shared.clone()));
        let mut harness = Harness {
            client,
            seen,
            shared,
            task,
            release,
        };
        harness.handshake().await;
        assert_eq!(harness.next_seen().await, Seen::Open);
        harness
    }

    async fn handshake(&mut self) {
        let request = "GET / HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        self.client.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        while !response.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            self.client.read_exact(&mut byte).await.unwrap();
            response.push(byte[0]);
        }
        assert!(
            response.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&response)
        );
    }

    async fn next_seen(&mut self) -> Seen {
        self.seen.recv().await.expect("the plugin thread is alive")
    }

    async fn send(&mut self, opcode: Opcode, payload: &[u8]) {
        let mask = [7, 1, 2, 3];
        let mut out = BytesMut::new();
        FrameHeader {
            fin: true,
            rsv1: false,
            rsv23: false,
            opcode,
            mask: Some(mask),
            payload_len: payload.len() as u64,
        }
        .encode(&mut out);
        let mut body = payload.to_vec();
        apply_mask(&mut body, mask, 0);
        out.extend_from_slice(&body);
        self.client.write_all(&out).await.unwrap();
    }

    /// The next frame from the server, or `None` at the end of the stream.
    async fn recv(&mut self) -> Option<(Opcode, Vec<u8>)> {
        let mut head = vec![0u8; 2];
        if self.client.read_exact(&mut head).await.is_err() {
            return None;
        }
        let extra = match head[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        head.resize(2 + extra, 0);
        self.client.read_exact(&mut head[2..]).await.unwrap();
        let (header, _) = FrameHeader::decode(&head).unwrap().expect("a whole header");
        let mut payload = vec![0u8; header.payload_len as usize];
        self.client.read_exact(&mut payload).await.unwrap();
        Some((header.opcode, payload))
    }

    /// Expects `n` flood messages (100 bytes of text each), then an echo of `after`: the
    /// client was not dropped.
    async fn expect_flood_then_echo(&mut self, n: usize) {
        for i in 0..n {
            let (opcode, payload) = self
                .recv()
                .await
                .unwrap_or_else(|| panic!("dropped after {i} messages"));
            assert_eq!((opcode, payload.len()), (Opcode::Text, 100), "message {i}");
        }
        self.send(Opcode::Text, b"after").await;
        assert_eq!(self.recv().await, Some((Opcode::Text, b"after".to_vec())));
    }

    /// Reads text frames up to a close frame; returns how many came first, and the close
    /// frame's code and reason.
    async fn texts_then_close(&mut self) -> (usize, u16, Vec<u8>) {
        let mut texts = 0;
        loop {
            match self.recv().await.expect("a close frame before the end") {
                (Opcode::Text, _) => texts += 1,
                (Opcode::Close, payload) => {
                    return (
                        texts,
                        u16::from_be_bytes([payload[0], payload[1]]),
                        payload[2..].to_vec(),
                    );
                }
                other => panic!("unexpected frame {other:?} after {texts} messages"),
            }
        }
    }

    /// Expects a close frame and returns its code and reason.
    async fn recv_close(&mut self) -> (u16, String) {
        let (opcode, payload) = self.recv().await.expect("a frame");
        assert_eq!(opcode, Opcode::Close, "{:?}", String::from_utf8_lossy(&payload));
        let code = u16::from_be_bytes([payload[0], payload[1]]);
        (code, String::from_utf8(payload[2..].to_vec()).unwrap())
    }

    async fn expect_eof(&mut self) {
        let mut rest = Vec::new();
        self.client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{} bytes after the close", rest.len());
    }
}

const LIMITS: OutboundLimits = OutboundLimits {
    max_messages: 100,
    max_bytes: 1 << 20,
};

/// Asserts that `elapsed` is `expected`, give or take the real time the harness took
/// to open the connection before the clock was paused, and the timer's millisecond.
fn assert_about(elapsed: Duration, expected: Duration) {
    let tick = Duration::from_millis(10); // each timer rounds up to its millisecond
    let slack = Duration::from_secs(1);
    assert!(
        elapsed <= expected + tick && expected < elapsed + slack,
        "after {elapsed:?}, expected {expected:?}"
    );
}

#[tokio::test]
async fn a_silent_client_is_pinged_then_closed_and_the_plugin_told_why() {
    let mut h = Harness::start(64 * 1024, LIMITS, IDLE).await;
    tokio::time::pause();
    let start = Instant::now();
    assert_eq!(h.recv().await, Some((Opcode::Ping, b"wsplug".to_vec())));
    assert_about(start.elapsed(), IDLE);
    assert_eq!(h.recv_close().await, (1001, "idle timeout".into()));
    assert_about(start.elapsed(), 2 * IDLE);
    // The client does not answer the close either: the connection ends at the close timeout.
    h.expect_eof().await;
    assert_about(start.elapsed(), 2 * IDLE + CLOSE);
    assert_eq!(h.next_seen().await, Seen::Close(1006, "no answer to ping".into()));
}

#[tokio::test]
async fn a_client_that_answers_pings_stays_open() {
    let mut h = Harness::start(64 * 1024, LIMITS, IDLE).await;
    tokio::time::pause();
    let start = Instant::now();
    assert_eq!(h.recv().await, Some((Opcode::Ping, b"wsplug".to_vec())));
    assert_about(start.elapsed(), IDLE);
    for round in 2..=4 {
        h.send(Opcode::Pong, b"wsplug").await;
        let answered = Instant::now();
        assert_eq!(
            h.recv().await,
            Some((Opcode::Ping, b"wsplug".to_vec())),
            "round {round}"
        );
        assert_about(answered.elapsed(), IDLE);
    }
    tokio::time::resume(); // the echo comes from the plugin thread
    h.send(Opcode::Text, b"still here").await;
    assert_eq!(h.recv().await, Some((Opcode::Text, b"still here".to_vec())));
}

#[tokio::test]
async fn shutdown_closes_with_1001_and_an_unanswered_close_ends_at_the_close_timeout() {
    let mut h = Harness::start(64 * 1024, LIMITS, IDLE).await;
    tokio::time::pause();
    let start = Instant::now();
    h.shared.shut_down();
    assert_eq!(h.recv_close().await, (1001, "server shutting down".into()));
    h.expect_eof().await;
    assert_about(start.elapsed(), CLOSE);
    assert_eq!(
        h.next_seen().await,
        Seen::Close(1006, "closing handshake did not complete".into())
    );
    h.task.await.unwrap();
}

#[tokio::test]
async fn a_burst_twenty_times_the_bound_reaches_a_client_whose_socket_takes_it() {
    // 2000 messages against a bound of 100: they all fit the (256 KiB) pipe, so none
    // waits for the client beyond what its socket accepted, and it is never dropped.
    let mut h = Harness::start(256 * 1024, LIMITS, Duration::from_secs(3600)).await;
    h.send(Opcode::Text, b"flood 2000").await;
    h.expect_flood_then_echo(2000).await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_with_1008_ahead_of_its_queue() {
    let mut h = Harness::start(8 * 1024, LIMITS, Duration::from_secs(3600)).await;
    h.send(Opcode::Text, b"flood 20000").await;
    // The client reads nothing until the plugin has queued (or tried to queue) it all.
    assert_eq!(h.next_seen().await, Seen::Text("flood 20000".into()));
    let (texts, code, reason) = h.texts_then_close().await;
    assert_eq!((code, &reason[..]), (1008, &b"outbound queue overflow"[..]));
    // What the pipe held, and not the backlog: the close frame went ahead of it.
    assert!(texts <= 8 * 1024 / 102 + 1, "{texts} messages before the close frame");
    h.send(Opcode::Close, &1008u16.to_be_bytes()).await;
    h.expect_eof().await;
    assert_eq!(h.next_seen().await, Seen::Close(1008, "outbound queue overflow".into()));
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_by_the_byte_bound_too() {
    let limits = OutboundLimits {
        max_messages: 1_000_000,
        max_bytes: 16 * 1024,
    };
    let mut h = Harness::start(8 * 1024, limits, Duration::from_secs(3600)).await;
    h.send(Opcode::Text, b"flood 2000").await;
    assert_eq!(h.next_seen().await, Seen::Text("flood 2000".into()));
    // The client never answers the close: its timeout passes on the paused clock.
    tokio::time::pause();
    assert_eq!(h.next_seen().await, Seen::Close(1008, "outbound queue overflow".into()));
}

#[tokio::test]
async fn a_reader_behind_a_burst_larger_than_its_socket_keeps_up_and_is_not_dropped() {
    // 3000 messages (300 KB) through an 8 KiB pipe: the socket refuses most writes, but
    // the client takes something at every turn, so it never counts as not reading.
    let mut h = Harness::start(8 * 1024, LIMITS, Duration::from_secs(3600)).await;
    h.send(Opcode::Text, b"flood 3000").await;
    h.expect_flood_then_echo(3000).await;
}

#[tokio::test]
async fn a_client_that_takes_nothing_is_dropped_once_the_stall_grace_is_over() {
    // 300 messages: under the queue's hard cap, over the bound of 100. The client reads
    // nothing, so after the grace the backlog counts, and it is dropped.
    let mut h = Harness::start(8 * 1024, LIMITS, Duration::from_secs(3600)).await;
    h.send(Opcode::Text, b"flood 300").await;
    assert_eq!(h.next_seen().await, Seen::Text("flood 300".into()));
    // The client's part: take nothing for longer than the grace (on the paused clock).
    tokio::time::pause();
    tokio::time::sleep(super::STALL_GRACE + Duration::from_millis(100)).await;
    let (texts, code, reason) = h.texts_then_close().await;
    assert_eq!(
        code,
        1008,
        "{:?} after {texts} messages",
        String::from_utf8_lossy(&reason)
    );
    assert!(texts < 300, "the whole backlog went out before the close frame");
}

#[tokio::test]
async fn messages_received_before_the_socket_broke_still_reach_the_plugin() {
    let mut h = Harness::start(64 * 1024, LIMITS, IDLE).await;
    h.send(Opcode::Text, b"hold").await;
    assert_eq!(h.next_seen().await, Seen::Text("hold".into()));
    // 200 messages while the plugin is blocked: its queue takes 64, the connection
    // holds what it read beyond them. Then the client vanishes.
    for i in 0..200 {
        h.send(Opcode::Text, format!("m{i}").as_bytes()).await;
    }
    let (client, _) = tokio::io::duplex(1);
    drop(std::mem::replace(&mut h.client, client));
    // On the paused clock, past the idle timeout: the server's ping is the write that
    // finds the socket gone (its timer is due first, so it has fired by the time this
    // sleep ends).
    tokio::time::pause();
    tokio::time::sleep(IDLE + Duration::from_secs(1)).await;
    h.release.send(()).unwrap();
    // Every message the connection had read reaches the plugin, in order: more than
    // its queue held (64), though not those still in the pipe when the write failed.
    let mut delivered = 0;
    let close = loop {
        match h.next_seen().await {
            Seen::Text(text) => {
                assert_eq!(text, format!("m{delivered}"));
                delivered += 1;
            }
            other => break other,
        }
    };
    assert!(
        delivered > 64,
        "only the {delivered} messages in the plugin's queue arrived"
    );
    assert_eq!(
        close,
        Seen::Close(1006, "connection dropped without a close frame".into())
    );
}

/// Every idle connection holds its task's future: a plain one must not carry the TLS
/// path's state, nor the compression state it does not use (both boxed), and the whole
/// must stay within what the idle-memory benchmark was measured with (2,208 bytes,
/// 3.9 KiB per connection in all, 2026-12-04).
#[test]
fn a_plain_connections_task_stays_small() {
    fn size<A, B, C, D, F>(_: fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }
    fn size5<A, B, C, D, E, F>(_: fn(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
    let serve = size(serve::<OwnedReadHalf, OwnedWriteHalf>);
    let accept = size5(super::super::accept);
    assert!(accept <= serve + 256, "accept {accept} bytes, serve {serve}");
    assert!(accept <= 2304, "a plain connection's task grew to {accept} bytes");
}
