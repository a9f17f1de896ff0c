//! The per-connection protocol state machine, after the handshake: turns received
//! bytes into whole messages, encodes what the server sends, and owns the
//! connection's timers (idle ping, ping answer, closing handshake, final flush). No
//! I/O happens here and no clock is read: the caller passes the time in.
//!
//! The contract, for the I/O shell that drives it:
//! 1. Bytes from the socket go to [`Protocol::read`] (until it returns `Ok(None)`);
//!    end of stream or a socket error to [`Protocol::handle_eof`].
//! 2. [`Protocol::output`] is written to the socket, and what was written removed
//!    with [`Protocol::advance_output`].
//! 3. At [`Protocol::poll_timeout`] (re-read after every call), call
//!    [`Protocol::handle_timeout`].
//! 4. Once [`Protocol::is_done`], close the socket; [`Protocol::ended`] says why.

use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};

use super::close::{self, ProtocolError};
use super::deflate::{DeflateParams, Deflater, InflateError, Inflater};
use super::frame::{FrameHeader, MAX_CONTROL_PAYLOAD, Opcode};
use super::mask::apply_mask;
use super::output::{Backlog, Output};
use super::utf8::Utf8Validator;

/// Settings of one connection's protocol.
#[derive(Clone, Copy, Debug)]
pub struct ProtocolConfig {
    /// Largest message accepted, after reassembly and inflation (1009 beyond).
    pub max_message_size: usize,
    /// The agreed permessage-deflate parameters, if any.
    pub deflate: Option<DeflateParams>,
    /// Compression level for sent messages, 0..=9.
    pub deflate_level: u32,
    /// Silence from the peer before it is pinged, and then the time it has to answer.
    pub idle_timeout: Duration,
    /// How long the closing handshake may take, the wait for replies to messages
    /// received before the peer's close, and the flush of our close frame.
    pub close_timeout: Duration,
}

/// Why a connection ended. The first cause wins: a close frame that answers ours after
/// an idle timeout does not hide the timeout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The peer's close frame, sent first or in answer to ours.
    ByPeer {
        /// Its code ([`close::NO_STATUS`] if it carried none).
        code: u16,
        /// Its reason.
        reason: String,
    },
    /// The peer broke the protocol; our close frame carried the error's code.
    Violation(ProtocolError),
    /// The peer sent nothing for the idle timeout, nor in the same time after a ping.
    PingTimeout,
    /// We sent a close frame and the peer neither answered it nor hung up in time.
    CloseUnanswered,
    /// The connection ended without a close frame from the peer.
    Dropped,
    /// We closed it ahead of everything queued, for a reason of the caller's (see
    /// [`Protocol::abort`]).
    Aborted {
        /// The code of our close frame.
        code: u16,
        /// Its reason.
        reason: &'static str,
    },
}

impl Ended {
    /// Whether we decided that the connection is over (the peer stopped answering, or
    /// the caller aborted it), rather than the peer or the closing handshake.
    pub fn by_host(&self) -> bool {
        matches!(self, Self::PingTimeout | Self::Aborted { .. })
    }

    /// The code and reason reported for this ending (to the plugin's `on-close`): the
    /// close frame's, or 1006 when no close frame ended the connection.
    pub fn code_and_reason(&self) -> (u16, &str) {
        match self {
            Self::ByPeer { code, reason } => (*code, reason),
            Self::Violation(error) => (error.code, error.reason),
            Self::PingTimeout => (close::ABNORMAL, "no answer to ping"),
            Self::CloseUnanswered => (close::ABNORMAL, "closing handshake did not complete"),
            Self::Dropped => (close::ABNORMAL, "connection dropped without a close frame"),
            Self::Aborted { code, reason } => (*code, reason),
        }
    }
}

/// Which timer [`Protocol::handle_timeout`] acted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeout {
    /// The peer was silent: a ping was queued.
    Ping,
    /// The ping went unanswered: the closing handshake started (1001).
    Idle,
    /// The replies to messages received before the peer's close (or violation) did not
    /// come in time: our close frame was queued without them.
    Replies,
    /// Our close frame was not answered: the connection is over.
    CloseHandshake,
    /// The final output could not be flushed: the connection is over.
    Flush,
}

/// A complete message received from the peer.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// A text message, valid UTF-8.
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
}

/// Something the caller must act on.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A complete data message.
    Message(Message),
    /// The peer's close frame arrived. If it answers ours, the state is
    /// [`State::Closed`]: flush the output and close the socket. Otherwise the state is
    /// [`State::CloseReceived`]: send what is still due in reply to earlier messages,
    /// then call [`Protocol::finish_closing`] to queue the answering close frame.
    Closed {
        /// The peer's close code ([`close::NO_STATUS`] if its frame carried none).
        code: u16,
        /// The peer's close reason.
        reason: String,
    },
}

/// Where the closing handshake stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Messages flow both ways.
    Open,
    /// We sent a close frame and await the peer's.
    CloseSent,
    /// The peer sent a close frame first. Nothing more is read; replies to earlier
    /// messages may still be sent, then [`Protocol::finish_closing`] queues our answer.
    CloseReceived,
    /// The peer broke the protocol. Nothing more is read; replies to the messages
    /// received before the violation may still be sent, then
    /// [`Protocol::finish_closing`] queues the close frame with the violation's code.
    Failed,
    /// Nothing more will be sent or accepted: flush the output and close the socket.
    Closed,
}

/// The frame currently being received.
#[derive(Clone, Copy, Debug)]
struct CurrentFrame {
    header: FrameHeader,
    mask: [u8; 4],
    /// Payload bytes received so far.
    received: u64,
}

/// A data message being reassembled from its frames.
struct Partial {
    text: bool,
    compressed: bool,
    data: Vec<u8>,
    utf8: Utf8Validator,
}

/// The sending half is refused because the connection is closing or closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the connection is closing")]
pub struct Closing;

/// One WebSocket connection's protocol state (server role).
pub struct Protocol {
    config: ProtocolConfig,
    state: State,
    /// In [`State::Open`]: when to ping (or, after a ping, to give up). Otherwise: when
    /// the current closing step must be over.
    deadline: Instant,
    /// A ping was sent for silence, and nothing arrived since.
    pinged: bool,
    /// Why the connection ended, once known.
    ended: Option<Ended>,
    /// Nothing more will be written or read.
    done: bool,
    /// The payload of the close frame that [`Protocol::finish_closing`] will send.
    pending_close: Option<Vec<u8>>,
    frame: Option<CurrentFrame>,
    /// Payload of the control frame being received (at most 125 bytes).
    control: Vec<u8>,
    message: Option<Partial>,
    // Boxed: 300 bytes inline would be part of every connection, compressed or not,
    // and most are idle most of the time.
    inflater: Option<Box<Inflater>>,
    deflater: Option<Box<Deflater>>,
    /// Scratch buffer for compressing outgoing messages.
    compressed: Vec<u8>,
    out: Output,
}

impl Protocol {
    /// State for a connection whose handshake completed at `now`.
    pub fn new(config: ProtocolConfig, now: Instant) -> Self {
        Self {
            config,
            state: State::Open,
            deadline: now + config.idle_timeout,
            pinged: false,
            ended: None,
            done: false,
            pending_close: None,
            frame: None,
            control: Vec::new(),
            message: None,
            inflater: None,
            deflater: None,
            compressed: Vec::new(),
            out: Output::default(),
        }
    }

    /// Where the closing handshake stands.
    pub fn state(&self) -> State {
        self.state
    }

    /// Bytes to send to the peer. The caller writes them, then reports how many with
    /// [`Protocol::advance_output`].
    pub fn output(&self) -> &[u8] {
        self.out.bytes()
    }

    /// Removes the first `n` bytes of the output, which the socket took.
    pub fn advance_output(&mut self, n: usize) {
        self.out.advance(n);
    }

    /// What waits for the peer beyond the frame being written: the measure of a slow
    /// reader.
    pub fn backlog(&self) -> Backlog {
        self.out.backlog()
    }

    /// Why the connection ended; `None` while it has not.
    pub fn ended(&self) -> Option<&Ended> {
        self.ended.as_ref()
    }

    /// Whether the connection is over: the socket can be closed.
    pub fn is_done(&self) -> bool {
        self.done || (self.state == State::Closed && self.out.is_empty())
    }

    /// Consumes bytes from `input`, received by `now`, until an event is complete or
    /// `input` runs out. Consumed bytes count as activity for the idle timer.
    ///
    /// Returns `Ok(None)` when more input is needed. On a protocol violation the error
    /// is returned and the state becomes [`State::Failed`] (or [`State::Closed`] if our
    /// close frame was already sent): the caller may still send replies to earlier
    /// messages, then calls [`Protocol::finish_closing`], which queues the close frame
    /// with the violation's code. Pongs are put in the output as a side effect.
    pub fn read(&mut self, input: &mut BytesMut, now: Instant) -> Result<Option<Event>, ProtocolError> {
        if !matches!(self.state, State::Open | State::CloseSent) {
            return Ok(None);
        }
        let before = input.len();
        let result = self.read_inner(input, now);
        if input.len() < before && self.state == State::Open {
            self.deadline = now + self.config.idle_timeout;
            self.pinged = false;
        }
        match result {
            Err(e) => {
                self.fail(e, now);
                Err(e)
            }
            ok => ok,
        }
    }

    /// The connection's byte stream ended (or failed) at the peer's side: nothing more
    /// can be read, and nothing more is written.
    pub fn handle_eof(&mut self) {
        let ended = match self.state {
            State::CloseSent => Ended::CloseUnanswered,
            _ => Ended::Dropped,
        };
        self.ended.get_or_insert(ended);
        self.state = State::Closed;
        self.done = true;
    }

    /// When [`Protocol::handle_timeout`] must next be called; `None` once done.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.is_done()).then_some(self.deadline)
    }

    /// Acts on the timer that expired by `now`, if any: pings a silent peer, gives up
    /// on one that did not answer, or ends a closing step that took too long.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Timeout> {
        if self.is_done() || now < self.deadline {
            return None;
        }
        match self.state {
            State::Open if !self.pinged => {
                let _ = self.send_ping(b"wsplug");
                self.pinged = true;
                self.deadline = now + self.config.idle_timeout;
                Some(Timeout::Ping)
            }
            State::Open => {
                self.ended.get_or_insert(Ended::PingTimeout);
                let _ = self.close(close::GOING_AWAY, "idle timeout", now);
                Some(Timeout::Idle)
            }
            State::CloseReceived | State::Failed => {
                self.finish_closing(now);
                Some(Timeout::Replies)
            }
            State::CloseSent => {
                self.ended.get_or_insert(Ended::CloseUnanswered);
                self.state = State::Closed;
                self.done = true;
                Some(Timeout::CloseHandshake)
            }
            State::Closed => {
                self.done = true;
                Some(Timeout::Flush)
            }
        }
    }

    /// Enters a closing state whose step must be over within the close timeout.
    fn enter(&mut self, state: State, now: Instant) {
        self.state = state;
        self.deadline = now + self.config.close_timeout;
    }

    fn read_inner(&mut self, input: &mut BytesMut, now: Instant) -> Result<Option<Event>, ProtocolError> {
        loop {
            let Some(frame) = self.frame else {
                let Some((header, len)) = FrameHeader::decode(input)? else {
                    return Ok(None);
                };
                input.advance(len);
                self.start_frame(header)?;
                if header.payload_len == 0
                    && let Some(event) = self.end_frame(now)?
                {
                    return Ok(Some(event));
                }
                continue;
            };
            if input.is_empty() {
                return Ok(None);
            }
            let remaining = frame.header.payload_len - frame.received;
            let take = remaining.min(input.len() as u64) as usize;
            let mut chunk = input.split_to(take);
            apply_mask(&mut chunk, frame.mask, frame.received as usize);
            if frame.header.opcode.is_control() {
                self.control.extend_from_slice(&chunk);
            } else {
                self.data_chunk(&chunk)?;
            }
            let frame = self.frame.as_mut().expect("frame in progress");
            frame.received += take as u64;
            if frame.received == frame.header.payload_len
                && let Some(event) = self.end_frame(now)?
            {
                return Ok(Some(event));
            }
        }
    }

    /// Checks a new frame's header against the protocol's rules and prepares to receive it.
    fn start_frame(&mut self, header: FrameHeader) -> Result<(), ProtocolError> {
        let Some(mask) = header.mask else {
            return Err(ProtocolError::protocol("client frame is not masked"));
        };
        if header.rsv23 {
            return Err(ProtocolError::protocol("reserved bit set"));
        }
        let opcode = header.opcode;
        if opcode.is_control() {
            if !header.fin {
                return Err(ProtocolError::protocol("fragmented control frame"));
            }
            if header.payload_len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(ProtocolError::protocol("control frame longer than 125 bytes"));
            }
            if header.rsv1 {
                return Err(ProtocolError::protocol("RSV1 set on a control frame"));
            }
            self.control.clear();
        } else {
            let max = self.config.max_message_size as u64;
            match (opcode, &self.message) {
                (Opcode::Continuation, None) => {
                    return Err(ProtocolError::protocol(
                        "continuation frame without a message to continue",
                    ));
                }
                (Opcode::Continuation, Some(_)) if header.rsv1 => {
                    return Err(ProtocolError::protocol("RSV1 set on a continuation frame"));
                }
                (Opcode::Continuation, Some(partial)) => {
                    // Compressed payloads are limited after inflation, but a frame longer
                    // than the limit is refused outright.
                    let so_far = if partial.compressed {
                        0
                    } else {
                        partial.data.len() as u64
                    };
                    if so_far + header.payload_len > max {
                        return Err(ProtocolError::too_big("message exceeds the size limit"));
                    }
                }
                (_, Some(_)) => {
                    return Err(ProtocolError::protocol("new data frame inside a fragmented message"));
                }
                (_, None) => {
                    if header.rsv1 && self.config.deflate.is_none() {
                        return Err(ProtocolError::protocol("RSV1 set without permessage-deflate"));
                    }
                    if header.payload_len > max {
                        return Err(ProtocolError::too_big("message exceeds the size limit"));
                    }
                    self.message = Some(Partial {
                        text: opcode == Opcode::Text,
                        compressed: header.rsv1,
                        data: Vec::with_capacity(if header.rsv1 { 0 } else { header.payload_len as usize }),
                        utf8: Utf8Validator::default(),
                    });
                }
            }
        }
        self.frame = Some(CurrentFrame {
            header,
            mask,
            received: 0,
        });
        Ok(())
    }

    /// Adds an unmasked piece of a data frame's payload to the message.
    fn data_chunk(&mut self, chunk: &[u8]) -> Result<(), ProtocolError> {
        let limit = self.config.max_message_size;
        let partial = self.message.as_mut().expect("data frame belongs to a message");
        let start = partial.data.len();
        if partial.compressed {
            let params = self.config.deflate.as_ref().expect("RSV1 checked against negotiation");
            let inflater = self.inflater.get_or_insert_with(|| Box::new(Inflater::new(params)));
            inflater
                .inflate(chunk, &mut partial.data, limit)
                .map_err(inflate_error)?;
        } else {
            partial.data.extend_from_slice(chunk);
        }
        if partial.text {
            partial
                .utf8
                .feed(&partial.data[start..])
                .map_err(|_| ProtocolError::invalid_data("text message is not valid UTF-8"))?;
        }
        Ok(())
    }

    /// Handles the end of the current frame.
    fn end_frame(&mut self, now: Instant) -> Result<Option<Event>, ProtocolError> {
        let frame = self.frame.take().expect("frame in progress");
        let header = frame.header;
        match header.opcode {
            Opcode::Ping => {
                if self.state == State::Open {
                    self.out.push_frame(Opcode::Pong, false, &self.control);
                }
                Ok(None)
            }
            Opcode::Pong => Ok(None),
            Opcode::Close => self.receive_close(now),
            Opcode::Text | Opcode::Binary | Opcode::Continuation => {
                if !header.fin {
                    return Ok(None);
                }
                let mut partial = self.message.take().expect("data frame belongs to a message");
                if partial.compressed {
                    let limit = self.config.max_message_size;
                    let params = self.config.deflate.as_ref().expect("RSV1 checked against negotiation");
                    // A compressed message whose frames were all empty has not created it yet.
                    let inflater = self.inflater.get_or_insert_with(|| Box::new(Inflater::new(params)));
                    let start = partial.data.len();
                    inflater
                        .finish_message(&mut partial.data, limit)
                        .map_err(inflate_error)?;
                    if partial.text {
                        partial
                            .utf8
                            .feed(&partial.data[start..])
                            .map_err(|_| ProtocolError::invalid_data("text message is not valid UTF-8"))?;
                    }
                }
                if self.state != State::Open {
                    // After our close frame, data is read for protocol errors only.
                    return Ok(None);
                }
                let message = if partial.text {
                    partial
                        .utf8
                        .finish()
                        .map_err(|_| ProtocolError::invalid_data("text message ends inside a character"))?;
                    // SAFETY: every byte went through `Utf8Validator::feed`, and `finish`
                    // confirmed the message does not end inside a character.
                    Message::Text(unsafe { String::from_utf8_unchecked(partial.data) })
                } else {
                    Message::Binary(partial.data)
                };
                Ok(Some(Event::Message(message)))
            }
        }
    }

    fn receive_close(&mut self, now: Instant) -> Result<Option<Event>, ProtocolError> {
        let (code, reason) = close::parse_payload(&self.control)?;
        self.ended.get_or_insert_with(|| Ended::ByPeer {
            code,
            reason: reason.clone(),
        });
        if self.state == State::Open {
            // Echo the peer's code, as RFC 6455 section 5.5.1 suggests.
            self.pending_close = Some(close::encode_payload(code, ""));
            self.enter(State::CloseReceived, now);
        } else {
            self.enter(State::Closed, now);
        }
        Ok(Some(Event::Closed { code, reason }))
    }

    /// Stops reading after a violation; the close frame follows in `finish_closing`.
    fn fail(&mut self, error: ProtocolError, now: Instant) {
        self.ended.get_or_insert(Ended::Violation(error));
        if self.state == State::Open {
            self.pending_close = Some(close::encode_payload(error.code, error.reason));
            self.enter(State::Failed, now);
        } else {
            self.enter(State::Closed, now);
        }
        self.frame = None;
        self.message = None;
    }

    /// Queues the close frame that is due in [`State::CloseReceived`] (the answer to
    /// the peer's) or [`State::Failed`] (the violation's code); the state becomes
    /// [`State::Closed`]. Does nothing in other states.
    pub fn finish_closing(&mut self, now: Instant) {
        if let Some(payload) = self.pending_close.take() {
            self.out.push_frame(Opcode::Close, false, &payload);
            self.enter(State::Closed, now);
        }
    }

    /// Drops the peer ahead of everything queued: frames the socket has not started are
    /// discarded, our close frame follows the one being written, and the state becomes
    /// [`State::Closed`] without waiting for an answer (the close timeout bounds the
    /// flush). For a peer that stopped reading (its backlog is over a bound), or a
    /// server that can no longer serve it. Does nothing once our close frame is queued.
    pub fn abort(&mut self, code: u16, reason: &'static str, now: Instant) {
        if !matches!(self.state, State::Open | State::CloseReceived | State::Failed) {
            return;
        }
        self.ended.get_or_insert(Ended::Aborted { code, reason });
        self.out.discard_unstarted();
        self.out
            .push_frame(Opcode::Close, false, &close::encode_payload(code, reason));
        self.pending_close = None;
        self.frame = None;
        self.message = None;
        self.enter(State::Closed, now);
    }

    /// Queues a text message.
    pub fn send_text(&mut self, text: &str) -> Result<(), Closing> {
        self.send(Opcode::Text, text.as_bytes())
    }

    /// Queues a binary message.
    pub fn send_binary(&mut self, data: &[u8]) -> Result<(), Closing> {
        self.send(Opcode::Binary, data)
    }

    fn send(&mut self, opcode: Opcode, payload: &[u8]) -> Result<(), Closing> {
        if !matches!(self.state, State::Open | State::CloseReceived | State::Failed) {
            return Err(Closing);
        }
        match &self.config.deflate {
            Some(params) => {
                let level = self.config.deflate_level;
                let deflater = self
                    .deflater
                    .get_or_insert_with(|| Box::new(Deflater::new(params, level)));
                deflater.compress(payload, &mut self.compressed);
                self.out.push_frame(opcode, true, &self.compressed);
            }
            None => self.out.push_frame(opcode, false, payload),
        }
        Ok(())
    }

    /// Queues a ping.
    pub fn send_ping(&mut self, payload: &[u8]) -> Result<(), Closing> {
        if self.state != State::Open {
            return Err(Closing);
        }
        let len = payload.len().min(MAX_CONTROL_PAYLOAD);
        self.out.push_frame(Opcode::Ping, false, &payload[..len]);
        Ok(())
    }

    /// Starts the closing handshake at `now`. The caller keeps reading until
    /// [`Event::Closed`] arrives; the close timeout ends the wait.
    pub fn close(&mut self, code: u16, reason: &str, now: Instant) -> Result<(), Closing> {
        if self.state != State::Open {
            return Err(Closing);
        }
        let payload = close::encode_payload(code, reason);
        self.out.push_frame(Opcode::Close, false, &payload);
        self.enter(State::CloseSent, now);
        Ok(())
    }
}

fn inflate_error(error: InflateError) -> ProtocolError {
    match error {
        InflateError::TooBig => ProtocolError::too_big("inflated message exceeds the size limit"),
        InflateError::Corrupt => ProtocolError::invalid_data("invalid compressed data"),
    }
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
