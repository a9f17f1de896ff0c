//! `Protocol::read` on arbitrary client bytes, with and without permessage-deflate.
//!
//! Input layout:
//! - byte 0: bits 0-2 pick the message size limit, bit 3 the mode (below);
//! - with compression, byte 1: bit 0 server_no_context_takeover, bit 1
//!   client_no_context_takeover, bits 2-4 server window bits (8 + n), bits 5-7 the level;
//! - stream mode (bit 3 set): one byte seeds the split points, the rest is the wire.
//!   The wire is read in pieces at those points and, by a second connection, at once:
//!   both must see the same events, errors and output;
//! - ops mode: a list of operations ([`Op`]): bytes fed at split points the input
//!   chooses, sends, pings, closes, aborts, timeouts, partial writes and end of stream.
//!
//! After every step: no panic; every `Message::Text` is UTF-8 (`std::str::from_utf8`)
//! and within the size limit; the output, with what was written of it, parses as whole
//! unmasked server frames that carry exactly the messages sent ([`OutputChecker`]);
//! a violation leaves the state `Failed` (or `Closed` if our close frame was out) and
//! nothing is read after it; states only move forward; `read` never stops with a whole
//! header or payload bytes left unread.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use wsplug_ws::close::{self, ProtocolError};
use wsplug_ws::deflate::DeflateParams;
use wsplug_ws::frame::{FrameHeader, MAX_HEADER_LEN};
use wsplug_ws::protocol::{Ended, Event, Message, Protocol, ProtocolConfig, State, Timeout};

use crate::wire::{OutputChecker, ServerDeflate};
use crate::{Reader, Rng};

/// Message size limits to pick from: around the 7-bit and 16-bit length encodings,
/// zero, and the default.
pub const SIZE_LIMITS: [usize; 8] = [0, 1, 16, 125, 126, 1024, 65_536, 1 << 20];
/// Compression levels to pick from.
pub const LEVELS: [u32; 8] = [0, 1, 2, 4, 6, 6, 8, 9];
/// Bit 3 of the first byte: stream mode.
pub const STREAM_MODE: u8 = 0x08;

pub const IDLE: Duration = Duration::from_secs(5);
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Close codes the harness sends (the API leaves their choice to the caller, who
/// only sends valid ones).
const CODES: [u16; 6] = [close::NORMAL, close::GOING_AWAY, close::NO_STATUS, 1011, 3000, 4999];
const REASONS: [&str; 3] = [
    "",
    "slow reader",
    "κόσμε, a reason that is long enough to be cut at a character boundary: ééééééééééééééééééééééééééééééééééé",
];

/// The operations of ops mode, by the low four bits of their byte.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// 0-7: the next byte + 1 input bytes arrive (as many as remain), then read.
    Feed = 0,
    /// 8: the socket takes a share (next byte / 255) of the output.
    Write = 8,
    /// 9: send a text message (next byte: length, then its bytes, made UTF-8); the
    /// op's high bits repeat it, for longer messages.
    SendText = 9,
    /// 10: the same, binary.
    SendBinary = 10,
    /// 11: send a ping (next byte: length).
    Ping = 11,
    /// 12: start the closing handshake (next byte: code and reason).
    Close = 12,
    /// 13: queue the close frame due after the peer's close or a violation.
    FinishClosing = 13,
    /// 14: time passes (next byte * 100 ms), then the timer is handled.
    Time = 14,
    /// 15: the socket ends (high bits 0) or the server aborts (next byte: code, reason).
    EndOrAbort = 15,
}

fn t0() -> Instant {
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

/// Builds the connection's configuration from the input's first bytes.
pub fn config(r: &mut Reader<'_>, deflate: bool) -> (ProtocolConfig, bool) {
    let first = r.byte_or(0);
    let mut config = ProtocolConfig {
        max_message_size: SIZE_LIMITS[usize::from(first & 7)],
        deflate: None,
        deflate_level: 6,
        idle_timeout: IDLE,
        close_timeout: CLOSE_TIMEOUT,
    };
    if deflate {
        // With compression the 1 MiB limit is 64 KiB: bombs are caught all the same, and
        // inflating a megabyte for every such input would slow the fuzzer down.
        config.max_message_size = config.max_message_size.min(65_536);
        let b = r.byte_or(0);
        config.deflate = Some(DeflateParams {
            server_no_context_takeover: b & 1 != 0,
            client_no_context_takeover: b & 2 != 0,
            server_window_bits: 8 + ((b >> 2) & 7),
        });
        config.deflate_level = LEVELS[usize::from(b >> 5)];
    }
    (config, first & STREAM_MODE != 0)
}

pub fn run(data: &[u8], deflate: bool) {
    let mut r = Reader::new(data);
    let (config, stream_mode) = config(&mut r, deflate);
    if stream_mode {
        stream(config, &mut r);
    } else {
        ops(config, &mut r);
    }
}

/// One connection and what the harness knows about it.
struct Harness {
    p: Protocol,
    config: ProtocolConfig,
    now: Instant,
    input: BytesMut,
    out: OutputChecker,
    events: Vec<Event>,
    error: Option<ProtocolError>,
}

fn rank(state: State) -> u8 {
    match state {
        State::Open => 0,
        State::CloseSent | State::CloseReceived | State::Failed => 1,
        State::Closed => 2,
    }
}

impl Harness {
    fn new(config: ProtocolConfig) -> Self {
        let now = t0();
        let deflate = config.deflate.map(|d| ServerDeflate {
            no_context_takeover: d.server_no_context_takeover,
            window_bits: d.server_window_bits,
        });
        Self {
            p: Protocol::new(config, now),
            config,
            now,
            input: BytesMut::new(),
            out: OutputChecker::new(deflate),
            events: Vec::new(),
            error: None,
        }
    }

    /// Bytes arrive from the socket: read until `read` wants more.
    fn feed(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
        loop {
            let state = self.p.state();
            let ended = self.p.ended().cloned();
            let len = self.input.len();
            let result = self.p.read(&mut self.input, self.now);
            self.check_step(state);
            match result {
                Ok(Some(event)) => {
                    self.check_event(&event, state);
                    self.events.push(event);
                }
                Ok(None) => {
                    if matches!(state, State::Open | State::CloseSent) {
                        assert!(
                            self.input.len() < MAX_HEADER_LEN
                                && (self.input.is_empty() || FrameHeader::decode(&self.input) == Ok(None)),
                            "read wants more input with {:02x?} unread",
                            &self.input[..]
                        );
                    } else {
                        assert_eq!(self.input.len(), len, "bytes read in state {state:?}");
                    }
                    return;
                }
                Err(error) => {
                    self.check_error(error, state, ended);
                    return;
                }
            }
        }
    }

    fn check_event(&self, event: &Event, before: State) {
        let limit = self.config.max_message_size;
        match event {
            Event::Message(message) => {
                assert_eq!(self.p.state(), State::Open, "message delivered in state {before:?}");
                assert_eq!(before, State::Open);
                match message {
                    Message::Text(text) => {
                        assert!(
                            std::str::from_utf8(text.as_bytes()).is_ok(),
                            "Message::Text is not UTF-8"
                        );
                        assert!(
                            text.len() <= limit,
                            "text message of {} bytes, limit {limit}",
                            text.len()
                        );
                    }
                    Message::Binary(data) => {
                        assert!(
                            data.len() <= limit,
                            "binary message of {} bytes, limit {limit}",
                            data.len()
                        );
                    }
                }
            }
            Event::Closed { code, reason } => {
                assert!(
                    *code == close::NO_STATUS || close::is_sendable(*code),
                    "close code {code}"
                );
                assert!(reason.len() <= close::MAX_REASON_LEN);
                assert!(*code != close::NO_STATUS || reason.is_empty());
                let expected = if before == State::Open {
                    State::CloseReceived
                } else {
                    State::Closed
                };
                assert_eq!(self.p.state(), expected, "state after the peer's close in {before:?}");
                assert!(self.p.ended().is_some());
            }
        }
    }

    fn check_error(&mut self, error: ProtocolError, before: State, ended_before: Option<Ended>) {
        assert!(
            matches!(error.code, close::PROTOCOL_ERROR | close::INVALID_DATA | close::TOO_BIG),
            "violation with close code {}",
            error.code
        );
        assert!(close::is_sendable(error.code) && error.reason.len() <= close::MAX_REASON_LEN);
        let state = self.p.state();
        let expected = if before == State::Open {
            State::Failed
        } else {
            State::Closed
        };
        assert_eq!(state, expected, "state after a violation in {before:?}");
        match ended_before {
            None => assert_eq!(self.p.ended(), Some(&Ended::Violation(error))),
            Some(ended) => assert_eq!(self.p.ended(), Some(&ended), "the first cause must win"),
        }
        assert!(self.error.is_none(), "a second violation: {error}");
        self.error = Some(error);
        // Nothing more is read.
        let len = self.input.len();
        assert_eq!(self.p.read(&mut self.input, self.now), Ok(None));
        assert_eq!(self.input.len(), len);
    }

    /// Invariants after any step.
    fn check_step(&mut self, before: State) {
        let state = self.p.state();
        assert!(
            rank(state) >= rank(before),
            "state went back from {before:?} to {state:?}"
        );
        self.out.check(self.p.output());
        assert_eq!(self.p.poll_timeout().is_none(), self.p.is_done());
        if state == State::Closed && self.p.output().is_empty() {
            assert!(self.p.is_done());
        }
    }

    fn write(&mut self, n: usize) {
        let n = n.min(self.p.output().len());
        self.out.advance(self.p.output(), n);
        let state = self.p.state();
        self.p.advance_output(n);
        self.check_step(state);
    }

    fn send(&mut self, text: bool, payload: &[u8]) {
        let state = self.p.state();
        let result = if text {
            self.p.send_text(std::str::from_utf8(payload).expect("made UTF-8"))
        } else {
            self.p.send_binary(payload)
        };
        let allowed = matches!(state, State::Open | State::CloseReceived | State::Failed);
        assert_eq!(result.is_ok(), allowed, "send in state {state:?}: {result:?}");
        if result.is_ok() {
            self.out.sent(text, payload);
        }
        self.check_step(state);
    }

    fn time(&mut self, step: Duration) {
        let state = self.p.state();
        let deadline = self.p.poll_timeout();
        self.now += step;
        let timeout = self.p.handle_timeout(self.now);
        match deadline {
            Some(deadline) if deadline <= self.now => {
                let expected = match state {
                    State::Open => [Timeout::Ping, Timeout::Idle].as_slice(),
                    State::CloseReceived | State::Failed => &[Timeout::Replies],
                    State::CloseSent => &[Timeout::CloseHandshake],
                    State::Closed => &[Timeout::Flush],
                };
                assert!(
                    timeout.is_some_and(|t| expected.contains(&t)),
                    "{timeout:?} in {state:?}"
                );
            }
            _ => assert_eq!(timeout, None, "a timer fired before its deadline"),
        }
        if matches!(timeout, Some(Timeout::CloseHandshake | Timeout::Flush)) {
            assert!(self.p.is_done());
        }
        self.check_step(state);
    }

    /// The end of a connection: the due close frame is queued and everything written.
    fn finish(mut self) {
        let state = self.p.state();
        self.p.finish_closing(self.now);
        if matches!(state, State::CloseReceived | State::Failed) {
            assert_eq!(self.p.state(), State::Closed);
        }
        self.check_step(state);
        self.write(usize::MAX);
        self.out.finish(self.p.output().is_empty());
        if self.p.state() == State::Closed {
            assert!(self.p.is_done());
        }
    }
}

/// The text that a send of `bytes` carries: made UTF-8 the way a plugin's string would be.
fn text_of(bytes: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(bytes).into_owned().into_bytes()
}

fn ops(config: ProtocolConfig, r: &mut Reader<'_>) {
    let mut h = Harness::new(config);
    let trace = std::env::var_os("WSPLUG_FUZZ_TRACE").is_some();
    while let Some(op) = r.byte() {
        if trace {
            eprintln!(
                "op {op:#04x} in {:?}, {} bytes of output",
                h.p.state(),
                h.p.output().len()
            );
        }
        match op & 0x0F {
            0..=7 => {
                let n = usize::from(r.byte_or(255)) + 1;
                let bytes = r.take(n);
                h.feed(bytes);
            }
            8 => {
                let share = usize::from(r.byte_or(255));
                let n = h.p.output().len() * share / 255;
                h.write(n);
            }
            kind @ (9 | 10) => {
                let n = usize::from(r.byte_or(0));
                let piece = r.take(n);
                let piece = if kind == 9 { text_of(piece) } else { piece.to_vec() };
                // High bits repeat the piece, past the 16-bit length: up to 241 times
                // (61 KB), or 16 times with compression, where compressing with small
                // windows is slow enough to cut the executions per second tenfold.
                let times = if h.config.deflate.is_some() { 1 } else { 16 };
                let payload = piece.repeat(usize::from(op >> 4) * times + 1);
                h.send(kind == 9, &payload);
            }
            11 => {
                let n = usize::from(r.byte_or(0) % 140);
                let payload = r.take(n).to_vec();
                let state = h.p.state();
                let result = h.p.send_ping(&payload);
                assert_eq!(result.is_ok(), state == State::Open);
                h.check_step(state);
            }
            12 => {
                let b = r.byte_or(0);
                let state = h.p.state();
                let result = h.p.close(
                    CODES[usize::from(b) % CODES.len()],
                    REASONS[usize::from(b >> 4) % REASONS.len()],
                    h.now,
                );
                assert_eq!(result.is_ok(), state == State::Open);
                if result.is_ok() {
                    assert_eq!(h.p.state(), State::CloseSent);
                }
                h.check_step(state);
            }
            13 => {
                let state = h.p.state();
                h.p.finish_closing(h.now);
                if matches!(state, State::CloseReceived | State::Failed) {
                    assert_eq!(h.p.state(), State::Closed);
                } else {
                    assert_eq!(h.p.state(), state);
                }
                h.check_step(state);
            }
            14 => {
                let step = Duration::from_millis(100) * u32::from(r.byte_or(0));
                h.time(step);
            }
            _ if op >> 4 == 0 => {
                let state = h.p.state();
                h.p.handle_eof();
                assert_eq!(h.p.state(), State::Closed);
                assert!(h.p.is_done());
                assert!(h.p.ended().is_some());
                h.check_step(state);
            }
            _ => {
                let b = r.byte_or(0);
                let state = h.p.state();
                if matches!(state, State::Open | State::CloseReceived | State::Failed) {
                    h.out.discard_unstarted(h.p.output());
                }
                let code = [close::POLICY_VIOLATION, close::GOING_AWAY, close::INTERNAL_ERROR][usize::from(b) % 3];
                h.p.abort(code, REASONS[usize::from(b >> 4) % REASONS.len()], h.now);
                if matches!(state, State::Open | State::CloseReceived | State::Failed) {
                    // Our close frame is queued: nothing more is sent.
                    assert!(
                        matches!(h.p.state(), State::CloseSent | State::Closed),
                        "{:?} after abort",
                        h.p.state()
                    );
                } else {
                    assert_eq!(h.p.state(), state);
                }
                h.check_step(state);
            }
        }
    }
    h.finish();
}

/// Lengths of the pieces the wire arrives in: often tiny, sometimes large.
fn piece_len(rng: &mut Rng) -> usize {
    match rng.below(4) {
        0 => 1,
        1 => 2 + rng.below(3) as usize,
        2 => 5 + rng.below(16) as usize,
        _ => 21 + rng.below(300) as usize,
    }
}

fn stream(config: ProtocolConfig, r: &mut Reader<'_>) {
    let seed = r.byte_or(0);
    let wire = r.rest();
    let mut pieces = Harness::new(config);
    let mut rng = Rng::new(u64::from(seed));
    let mut rest = wire;
    while !rest.is_empty() {
        let n = piece_len(&mut rng).min(rest.len());
        pieces.feed(&rest[..n]);
        rest = &rest[n..];
    }
    let mut whole = Harness::new(config);
    whole.feed(wire);

    assert_eq!(pieces.events, whole.events, "events differ with the split points");
    match (pieces.error, whole.error) {
        (None, None) => {}
        (Some(a), Some(b)) => {
            // A compressed frame that inflates to bad UTF-8 or past the limit, and then
            // turns out corrupt: which is found first (and so the reason, and 1007 or
            // 1009) depends on how its bytes arrived.
            let codes = [a.code, b.code];
            assert!(
                a.code == b.code
                    || codes == [close::TOO_BIG, close::INVALID_DATA]
                    || codes == [close::INVALID_DATA, close::TOO_BIG],
                "error differs with the split points: {a} vs {b}"
            );
        }
        (a, b) => panic!("error differs with the split points: {a:?} vs {b:?}"),
    }
    assert_eq!(pieces.p.state(), whole.p.state());
    assert_eq!(
        pieces.p.output(),
        whole.p.output(),
        "output differs with the split points"
    );
    pieces.finish();
    whole.finish();
}
