//! Both ends of the wire as a client sees them: client frames encoded by hand (for the
//! seed corpora), and a checker that reads the server's output the way a client does.

use std::collections::VecDeque;

use flate2::{Decompress, FlushDecompress};
use wsplug_ws::close;
use wsplug_ws::frame::{FrameHeader, MAX_CONTROL_PAYLOAD, Opcode};

/// Appends a client frame. `first` is the first byte as on the wire (FIN, RSV, opcode);
/// the payload is masked with `mask` when there is one. Written independently of
/// `FrameHeader::encode`, so reserved opcodes and odd bits can be sent too.
pub fn client_frame(out: &mut Vec<u8>, first: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    out.push(first);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(mask_bit | n as u8),
        n @ 126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
}

/// The sync-flush trailer that RFC 7692 senders strip and receivers add back.
pub const SYNC_TRAILER: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// How the server compresses, as the client knows it from the handshake.
#[derive(Clone, Copy, Debug)]
pub struct ServerDeflate {
    pub no_context_takeover: bool,
    pub window_bits: u8,
}

/// Reads the server's output as a client would, as the socket takes it.
///
/// The output must always be whole frames: the bytes already written of the frame
/// being written, followed by `Protocol::output()`, parse as complete, unmasked,
/// unfragmented server frames, nothing after a close frame. Data frames must carry
/// exactly the messages sent, in order; with permessage-deflate, a plain raw-deflate
/// decoder (reset per message without context takeover) must give them back.
pub struct OutputChecker {
    /// Bytes written of the frame being written (empty at a frame boundary).
    written: Vec<u8>,
    deflate: Option<ServerDeflate>,
    decoder: Option<Decompress>,
    /// Messages sent and not yet read back: (text, payload).
    expected: VecDeque<(bool, Vec<u8>)>,
    /// A close frame was written: nothing may follow it.
    close_written: bool,
    scratch: Vec<u8>,
}

/// One frame found in the output.
struct Parsed {
    start: usize,
    header: FrameHeader,
    payload: std::ops::Range<usize>,
}

impl OutputChecker {
    pub fn new(deflate: Option<ServerDeflate>) -> Self {
        Self {
            written: Vec::new(),
            deflate,
            // A client that negotiated server_max_window_bits=N may decode with N bits.
            decoder: deflate.map(|d| Decompress::new_with_window_bits(false, d.window_bits.clamp(9, 15))),
            expected: VecDeque::new(),
            close_written: false,
            scratch: Vec::new(),
        }
    }

    /// A message the protocol accepted to send.
    pub fn sent(&mut self, text: bool, payload: &[u8]) {
        self.expected.push_back((text, payload.to_vec()));
    }

    /// Checks that what was written plus `output` is whole, valid server frames.
    pub fn check(&mut self, output: &[u8]) {
        let mut all = std::mem::take(&mut self.scratch);
        all.clear();
        all.extend_from_slice(&self.written);
        all.extend_from_slice(output);
        let (mut frames, mut data_frames, mut close_at) = (0, 0, None);
        let end = visit_frames(&all, |frame| {
            frames += 1;
            if frame.header.opcode == Opcode::Close {
                assert!(close_at.is_none(), "a second close frame");
                close_at = Some(frames);
            } else if !frame.header.opcode.is_control() {
                data_frames += 1;
            }
        });
        assert_eq!(end, all.len(), "output ends inside a frame: {:02x?}", &all[end..]);
        match close_at {
            Some(at) => {
                assert!(!self.close_written, "a second close frame");
                assert_eq!(at, frames, "frames after the close frame");
            }
            None => assert!(
                !self.close_written || all.is_empty(),
                "output after the close frame was written"
            ),
        }
        assert!(
            data_frames <= self.expected.len(),
            "{data_frames} data frames in the output, {} messages sent",
            self.expected.len()
        );
        self.scratch = all;
    }

    /// The socket took the first `n` bytes of `output`: reads back the frames completed.
    pub fn advance(&mut self, output: &[u8], n: usize) {
        self.written.extend_from_slice(&output[..n]);
        let mut done = Vec::new();
        let end = visit_frames(&self.written, |frame| done.push((frame.header, frame.payload)));
        for (header, payload) in done {
            let payload = self.written[payload].to_vec();
            self.read_frame(header, &payload);
        }
        self.written.drain(..end);
    }

    /// `Protocol::abort` is about to drop the frames the socket has not started.
    pub fn discard_unstarted(&mut self, output: &[u8]) {
        let mut all = self.written.clone();
        all.extend_from_slice(output);
        let started = self.written.len();
        let mut unstarted_data = 0;
        visit_frames(&all, |f| {
            if f.start >= started && !f.header.opcode.is_control() {
                unstarted_data += 1;
            }
        });
        for _ in 0..unstarted_data {
            self.expected.pop_back();
        }
    }

    fn read_frame(&mut self, header: FrameHeader, payload: &[u8]) {
        match header.opcode {
            Opcode::Close => self.close_written = true,
            Opcode::Ping | Opcode::Pong => {}
            Opcode::Text | Opcode::Binary => {
                let (text, message) = self.expected.pop_front().expect("a data frame nobody sent");
                assert_eq!(header.opcode == Opcode::Text, text, "frame opcode");
                let received = match (&mut self.decoder, self.deflate) {
                    (Some(decoder), Some(deflate)) => {
                        if deflate.no_context_takeover {
                            decoder.reset(false);
                        }
                        plain_inflate(decoder, payload)
                    }
                    _ => payload.to_vec(),
                };
                assert!(
                    received == message,
                    "message read back differs ({} bytes sent, {} read)",
                    message.len(),
                    received.len()
                );
                if text {
                    assert!(std::str::from_utf8(&received).is_ok());
                }
            }
            Opcode::Continuation => unreachable!("checked in parse"),
        }
    }

    /// At the end: everything written was read back (nothing sent was lost).
    pub fn finish(&self, output_empty: bool) {
        if output_empty && self.written.is_empty() {
            assert!(
                self.expected.is_empty(),
                "{} sent messages never reached the output",
                self.expected.len()
            );
        }
    }
}

/// Visits the whole frames at the start of `buf`, checking each; returns where they end.
fn visit_frames(buf: &[u8], mut visit: impl FnMut(Parsed)) -> usize {
    let mut at = 0;
    loop {
        let Some((header, len)) = FrameHeader::decode(&buf[at..]).expect("the output is valid frames") else {
            return at;
        };
        let Some(end) = (at + len)
            .checked_add(header.payload_len as usize)
            .filter(|&end| end <= buf.len())
        else {
            return at;
        };
        let payload = at + len..end;
        check_server_frame(&header, &buf[payload.clone()]);
        visit(Parsed {
            start: at,
            header,
            payload,
        });
        at = end;
    }
}

/// What RFC 6455 allows a server to send (we never fragment).
fn check_server_frame(header: &FrameHeader, payload: &[u8]) {
    assert!(header.mask.is_none(), "server frame is masked");
    assert!(header.fin, "server frame is fragmented");
    assert!(!header.rsv23, "server frame has RSV2/RSV3");
    match header.opcode {
        Opcode::Continuation => panic!("server sent a continuation frame"),
        Opcode::Text | Opcode::Binary => {}
        control => {
            assert!(!header.rsv1, "RSV1 on a control frame");
            assert!(
                payload.len() <= MAX_CONTROL_PAYLOAD,
                "{control:?} frame of {} bytes",
                payload.len()
            );
            if control == Opcode::Close && !payload.is_empty() {
                let parsed = close::parse_payload(payload);
                assert!(parsed.is_ok(), "server close payload {payload:02x?}: {parsed:?}");
            }
        }
    }
}

/// Decodes one message as any RFC 7692 client does: payload + sync trailer through a
/// raw inflate stream.
pub fn plain_inflate(decoder: &mut Decompress, payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&SYNC_TRAILER);
    let mut out = Vec::with_capacity(input.len() * 4 + 64);
    let mut rest = &input[..];
    loop {
        let (before, before_out) = (decoder.total_in(), out.len());
        let status = decoder.decompress_vec(rest, &mut out, FlushDecompress::Sync);
        assert!(
            status.is_ok(),
            "a plain decoder rejects our compressed message: {status:?}"
        );
        let consumed = (decoder.total_in() - before) as usize;
        rest = &rest[consumed..];
        if rest.is_empty() && out.len() < out.capacity() {
            return out;
        }
        assert!(
            consumed > 0 || out.len() > before_out || out.len() == out.capacity(),
            "a plain decoder is stuck on our compressed message"
        );
        out.reserve(out.capacity());
    }
}
