//! Unit tests of the protocol state machine: every framing, fragmentation, UTF-8,
//! size, compression and close rule, fed with the bytes a client would send.

use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::*;
use crate::deflate::{DeflateParams, Deflater};

const MASK: [u8; 4] = [0x11, 0x22, 0x33, 0x44];
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONT: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// A client frame: `first` holds FIN, RSV and opcode bits as on the wire.
fn raw_frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = BytesMut::new();
    FrameHeader {
        fin: first & 0x80 != 0,
        rsv1: first & 0x40 != 0,
        rsv23: first & 0x30 != 0,
        opcode: Opcode::from_bits(first & 0x0F).unwrap(),
        mask,
        payload_len: payload.len() as u64,
    }
    .encode(&mut out);
    let mut body = payload.to_vec();
    if let Some(mask) = mask {
        apply_mask(&mut body, mask, 0);
    }
    out.extend_from_slice(&body);
    out.to_vec()
}

fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    raw_frame(if fin { 0x80 } else { 0 } | opcode, payload, Some(MASK))
}

fn config() -> ProtocolConfig {
    ProtocolConfig {
        max_message_size: 1 << 20,
        deflate: None,
        deflate_level: 6,
        idle_timeout: IDLE,
        close_timeout: CLOSE_TIMEOUT,
    }
}

const IDLE: Duration = Duration::from_secs(5);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// The time every test starts at: the protocol reads no clock, so any instant will do.
fn t0() -> Instant {
    use std::sync::OnceLock;
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

fn deflate_params() -> DeflateParams {
    DeflateParams {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        server_window_bits: 15,
    }
}

/// Feeds all of `bytes` and collects the events, stopping at the first error.
fn feed(protocol: &mut Protocol, bytes: &[u8]) -> Result<Vec<Event>, ProtocolError> {
    let mut input = BytesMut::from(bytes);
    let mut events = Vec::new();
    while let Some(event) = protocol.read(&mut input, t0())? {
        events.push(event);
    }
    Ok(events)
}

/// Decodes the server's output into (first byte, payload) pairs, checking it is unmasked.
fn sent_frames(protocol: &mut Protocol) -> Vec<(u8, Vec<u8>)> {
    let out = protocol.output().to_vec();
    protocol.advance_output(out.len());
    let mut frames = Vec::new();
    let mut at = 0;
    while at < out.len() {
        let (header, len) = FrameHeader::decode(&out[at..]).unwrap().expect("whole frame");
        assert!(header.mask.is_none(), "server frames are never masked");
        let start = at + len;
        let end = start + header.payload_len as usize;
        frames.push((out[at], out[start..end].to_vec()));
        at = end;
    }
    frames
}

fn close_code_sent(protocol: &mut Protocol) -> u16 {
    let frames = sent_frames(protocol);
    let (first, payload) = frames.last().expect("a close frame");
    assert_eq!(*first, 0x88);
    u16::from_be_bytes([payload[0], payload[1]])
}

fn expect_failure(bytes: &[u8], code: u16) {
    expect_failure_with(config(), bytes, code);
}

fn expect_failure_with(config: ProtocolConfig, bytes: &[u8], code: u16) {
    let mut protocol = Protocol::new(config, t0());
    let error = feed(&mut protocol, bytes).expect_err("must fail");
    assert_eq!(error.code, code, "{error}");
    assert_eq!(protocol.state(), State::Failed);
    assert!(protocol.output().is_empty(), "the close frame waits for finish_closing");
    protocol.finish_closing(t0());
    assert_eq!(protocol.state(), State::Closed);
    assert_eq!(close_code_sent(&mut protocol), code);
}

#[test]
fn reads_single_frame_messages() {
    let mut p = Protocol::new(config(), t0());
    let mut bytes = frame(true, TEXT, "héllo".as_bytes());
    bytes.extend(frame(true, BINARY, &[0, 1, 2]));
    bytes.extend(frame(true, TEXT, b""));
    assert_eq!(
        feed(&mut p, &bytes).unwrap(),
        vec![
            Event::Message(Message::Text("héllo".into())),
            Event::Message(Message::Binary(vec![0, 1, 2])),
            Event::Message(Message::Text(String::new())),
        ]
    );
    assert!(p.output().is_empty());
}

#[test]
fn reads_byte_by_byte() {
    let payload: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
    let mut bytes = frame(false, BINARY, &payload[..100]);
    bytes.extend(frame(true, CONT, &payload[100..]));
    let mut p = Protocol::new(config(), t0());
    let mut input = BytesMut::new();
    let mut events = Vec::new();
    for b in bytes {
        input.extend_from_slice(&[b]);
        if let Some(event) = p.read(&mut input, t0()).unwrap() {
            events.push(event);
        }
    }
    assert_eq!(events, vec![Event::Message(Message::Binary(payload))]);
}

#[test]
fn reassembles_fragments_with_interleaved_control_frames() {
    let mut p = Protocol::new(config(), t0());
    let mut bytes = frame(false, TEXT, b"frag");
    bytes.extend(frame(true, PING, b"ping!"));
    bytes.extend(frame(false, CONT, b"men"));
    bytes.extend(frame(true, PONG, b"unsolicited"));
    bytes.extend(frame(true, CONT, b"ted"));
    assert_eq!(
        feed(&mut p, &bytes).unwrap(),
        vec![Event::Message(Message::Text("fragmented".into()))]
    );
    assert_eq!(sent_frames(&mut p), vec![(0x8A, b"ping!".to_vec())]);
}

#[test]
fn answers_every_ping_with_its_payload() {
    let mut p = Protocol::new(config(), t0());
    let payload = [0xAB; 125];
    let mut bytes = frame(true, PING, &payload);
    bytes.extend(frame(true, PING, b""));
    assert!(feed(&mut p, &bytes).unwrap().is_empty());
    assert_eq!(sent_frames(&mut p), vec![(0x8A, payload.to_vec()), (0x8A, vec![])]);
}

#[test]
fn framing_violations_close_with_1002() {
    expect_failure(&raw_frame(0x81, b"hi", None), 1002);
    for reserved in [0x83, 0x87, 0x8B, 0x8F] {
        expect_failure(
            &frame(true, 0, b"")
                .iter()
                .enumerate()
                .map(|(i, b)| if i == 0 { reserved } else { *b })
                .collect::<Vec<_>>(),
            1002,
        );
    }
    for rsv in [0x40, 0x20, 0x10] {
        expect_failure(&raw_frame(0x80 | rsv | TEXT, b"hi", Some(MASK)), 1002);
    }
    expect_failure(&frame(true, PING, &[0; 126]), 1002);
    expect_failure(&frame(false, PING, b""), 1002);
    expect_failure(&frame(true, CONT, b"orphan"), 1002);
    let mut nested = frame(false, TEXT, b"a");
    nested.extend(frame(true, TEXT, b"b"));
    expect_failure(&nested, 1002);
    let mut rsv_on_cont = frame(false, TEXT, b"a");
    rsv_on_cont.extend(raw_frame(0x80 | 0x40, b"b", Some(MASK)));
    expect_failure_with(
        ProtocolConfig {
            deflate: Some(deflate_params()),
            ..config()
        },
        &rsv_on_cont,
        1002,
    );
    expect_failure_with(
        ProtocolConfig {
            deflate: Some(deflate_params()),
            ..config()
        },
        &raw_frame(0xC9, b"", Some(MASK)),
        1002,
    );
}

#[test]
fn invalid_utf8_closes_with_1007_as_soon_as_it_arrives() {
    expect_failure(&frame(true, TEXT, b"\xce\xba\xe1\xbd\xb9\xed\xa0\x80edited"), 1007);
    expect_failure(&frame(true, TEXT, b"ends mid char \xe2\x82"), 1007);
    // Fail fast: the first fragment is already invalid; no final fragment is needed.
    expect_failure(&frame(false, TEXT, b"ok \xff"), 1007);
    // ... even inside one frame whose end has not arrived.
    let bytes = frame(true, TEXT, b"\xc0\xafand much more to come");
    let mut p = Protocol::new(config(), t0());
    assert_eq!(feed(&mut p, &bytes[..8]).unwrap_err().code, 1007);
    // A character split across fragments is fine.
    let mut p = Protocol::new(config(), t0());
    let mut split = frame(false, TEXT, b"\xce");
    split.extend(frame(true, CONT, b"\xba"));
    assert_eq!(
        feed(&mut p, &split).unwrap(),
        vec![Event::Message(Message::Text("κ".into()))]
    );
}

#[test]
fn oversized_messages_close_with_1009() {
    let small = ProtocolConfig {
        max_message_size: 100,
        ..config()
    };
    let mut p = Protocol::new(small, t0());
    // The header alone is enough to refuse it: no payload was sent.
    let header_only = &frame(true, BINARY, &[0; 101])[..8];
    assert_eq!(feed(&mut p, header_only).unwrap_err().code, 1009);
    let mut fragmented = frame(false, BINARY, &[0; 60]);
    fragmented.extend(frame(true, CONT, &[0; 41]));
    expect_failure_with(small, &fragmented, 1009);
    let mut p = Protocol::new(small, t0());
    assert_eq!(feed(&mut p, &frame(true, BINARY, &[7; 100])).unwrap().len(), 1);
}

fn compress(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    Deflater::new(&deflate_params(), 6).compress(message, &mut out);
    out
}

#[test]
fn inflates_compressed_messages_including_fragmented_ones() {
    let cfg = ProtocolConfig {
        deflate: Some(deflate_params()),
        ..config()
    };
    let mut p = Protocol::new(cfg, t0());
    let text = "compress me ".repeat(100);
    let compressed = compress(text.as_bytes());
    let mut bytes = raw_frame(0xC1, &compressed, Some(MASK));
    let (a, b) = compressed.split_at(compressed.len() / 2);
    bytes.extend(raw_frame(0x40 | BINARY, a, Some(MASK)));
    bytes.extend(frame(true, PING, b""));
    bytes.extend(frame(true, CONT, b));
    bytes.extend(frame(true, TEXT, b"plain"));
    bytes.extend(raw_frame(0xC1, &[], Some(MASK)));
    let events = feed(&mut p, &bytes).unwrap();
    assert_eq!(
        events,
        vec![
            Event::Message(Message::Text(text.clone())),
            Event::Message(Message::Binary(text.into_bytes())),
            Event::Message(Message::Text("plain".into())),
            Event::Message(Message::Text(String::new())),
        ]
    );
}

#[test]
fn a_compression_bomb_closes_with_1009() {
    let cfg = ProtocolConfig {
        max_message_size: 64 * 1024,
        deflate: Some(deflate_params()),
        ..config()
    };
    let bomb = compress(&vec![b'a'; 10 << 20]);
    assert!(bomb.len() < 64 * 1024);
    expect_failure_with(cfg, &raw_frame(0xC1, &bomb, Some(MASK)), 1009);
}

#[test]
fn compresses_sent_messages_when_negotiated() {
    let cfg = ProtocolConfig {
        deflate: Some(deflate_params()),
        ..config()
    };
    let mut p = Protocol::new(cfg, t0());
    let text = "hello ".repeat(100);
    p.send_text(&text).unwrap();
    let frames = sent_frames(&mut p);
    assert_eq!(frames[0].0, 0xC1);
    assert!(frames[0].1.len() < text.len());
    let mut inflater = Inflater::new(&deflate_params());
    let mut out = Vec::new();
    inflater.inflate(&frames[0].1, &mut out, 1 << 20).unwrap();
    inflater.finish_message(&mut out, 1 << 20).unwrap();
    assert_eq!(out, text.as_bytes());
}

#[test]
fn answers_a_close_and_reports_it() {
    let mut p = Protocol::new(config(), t0());
    let events = feed(&mut p, &frame(true, CLOSE, b"\x03\xe8bye")).unwrap();
    assert_eq!(
        events,
        vec![Event::Closed {
            code: 1000,
            reason: "bye".into()
        }]
    );
    assert_eq!(p.state(), State::CloseReceived);
    // Replies to earlier messages may still go out before the answering close.
    p.send_text("reply").unwrap();
    assert_eq!(p.close(1000, "", t0()), Err(Closing));
    p.finish_closing(t0());
    assert_eq!(p.state(), State::Closed);
    assert_eq!(
        sent_frames(&mut p),
        vec![(0x81, b"reply".to_vec()), (0x88, vec![0x03, 0xe8])]
    );
    assert_eq!(p.send_text("late"), Err(Closing));
    // Nothing after the close is read.
    assert_eq!(feed(&mut p, &frame(true, TEXT, b"ignored")).unwrap(), vec![]);

    let mut p = Protocol::new(config(), t0());
    let events = feed(&mut p, &frame(true, CLOSE, b"")).unwrap();
    assert_eq!(
        events,
        vec![Event::Closed {
            code: close::NO_STATUS,
            reason: String::new()
        }]
    );
    p.finish_closing(t0());
    assert_eq!(sent_frames(&mut p), vec![(0x88, vec![])]);
}

#[test]
fn bad_close_frames_fail_the_connection() {
    expect_failure(&frame(true, CLOSE, &[0x03]), 1002);
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
        expect_failure(&frame(true, CLOSE, &code.to_be_bytes()), 1002);
    }
    expect_failure(&frame(true, CLOSE, b"\x03\xe8\xff\xfe"), 1007);
}

#[test]
fn server_initiated_close_waits_for_the_peer() {
    let mut p = Protocol::new(config(), t0());
    p.close(4000, "done", t0()).unwrap();
    assert_eq!(p.state(), State::CloseSent);
    assert_eq!(sent_frames(&mut p), vec![(0x88, b"\x0f\xa0done".to_vec())]);
    assert_eq!(p.close(1000, "", t0()), Err(Closing));
    // Data still in flight from the peer is not delivered, and pings are not answered.
    let mut bytes = frame(true, TEXT, b"in flight");
    bytes.extend(frame(true, PING, b""));
    bytes.extend(frame(true, CLOSE, b"\x0f\xa0"));
    assert_eq!(
        feed(&mut p, &bytes).unwrap(),
        vec![Event::Closed {
            code: 4000,
            reason: String::new()
        }]
    );
    assert_eq!(p.state(), State::Closed);
    assert!(p.output().is_empty());
}

#[test]
fn replies_to_earlier_messages_go_out_before_the_failure_close() {
    let mut p = Protocol::new(config(), t0());
    let mut bytes = frame(true, TEXT, b"valid");
    bytes.extend(raw_frame(0xA1, b"rsv2", Some(MASK)));
    let mut input = BytesMut::from(&bytes[..]);
    assert_eq!(
        p.read(&mut input, t0()).unwrap(),
        Some(Event::Message(Message::Text("valid".into())))
    );
    assert_eq!(p.read(&mut input, t0()).unwrap_err().code, 1002);
    // Nothing more is read once failed.
    assert_eq!(
        p.read(&mut BytesMut::from(&frame(true, TEXT, b"x")[..]), t0()).unwrap(),
        None
    );
    p.send_text("reply").unwrap();
    assert_eq!(p.close(1000, "", t0()), Err(Closing));
    p.finish_closing(t0());
    assert_eq!(p.send_text("late"), Err(Closing));
    let frames = sent_frames(&mut p);
    assert_eq!(frames[0], (0x81, b"reply".to_vec()));
    assert_eq!(frames[1].0, 0x88);
    assert_eq!(u16::from_be_bytes([frames[1].1[0], frames[1].1[1]]), 1002);
}

#[test]
fn a_violation_after_our_close_needs_no_second_close_frame() {
    let mut p = Protocol::new(config(), t0());
    p.close(1000, "", t0()).unwrap();
    sent_frames(&mut p);
    assert_eq!(
        feed(&mut p, &raw_frame(0x81, b"unmasked", None)).unwrap_err().code,
        1002
    );
    assert_eq!(p.state(), State::Closed);
    p.finish_closing(t0());
    assert!(p.output().is_empty());
}

// ---------------------------------------------------------------------------------
// Timers and endings: the clock is whatever instant the test passes in.
// ---------------------------------------------------------------------------------

#[test]
fn a_silent_peer_is_pinged_then_closed_with_1001() {
    let mut p = Protocol::new(config(), t0());
    assert_eq!(p.poll_timeout(), Some(t0() + IDLE));
    assert_eq!(p.handle_timeout(t0() + IDLE - Duration::from_millis(1)), None);
    assert_eq!(p.handle_timeout(t0() + IDLE), Some(Timeout::Ping));
    assert_eq!(sent_frames(&mut p), vec![(0x89, b"wsplug".to_vec())]);
    assert_eq!(p.poll_timeout(), Some(t0() + 2 * IDLE));
    assert_eq!(p.handle_timeout(t0() + 2 * IDLE), Some(Timeout::Idle));
    assert_eq!(p.state(), State::CloseSent);
    assert_eq!(close_code_sent(&mut p), 1001);
    // The peer answers our close: the timeout stays the reason.
    feed(&mut p, &frame(true, CLOSE, &close_payload(1001))).unwrap();
    assert!(p.is_done());
    assert_eq!(p.ended(), Some(&Ended::PingTimeout));
    assert_eq!(p.ended().unwrap().code_and_reason(), (1006, "no answer to ping"));
}

fn close_payload(code: u16) -> Vec<u8> {
    code.to_be_bytes().to_vec()
}

#[test]
fn any_consumed_input_restarts_the_idle_timer_and_an_answered_ping_keeps_it_open() {
    let mut p = Protocol::new(config(), t0());
    let later = t0() + Duration::from_secs(4);
    let mut input = BytesMut::from(&frame(true, PONG, b"")[..]);
    assert_eq!(p.read(&mut input, later).unwrap(), None);
    assert_eq!(p.poll_timeout(), Some(later + IDLE));
    assert_eq!(p.handle_timeout(later + IDLE), Some(Timeout::Ping));
    let answered = later + IDLE + Duration::from_secs(1);
    let mut input = BytesMut::from(&frame(true, PONG, b"wsplug")[..]);
    p.read(&mut input, answered).unwrap();
    assert_eq!(p.poll_timeout(), Some(answered + IDLE));
    assert_eq!(
        p.handle_timeout(answered + IDLE),
        Some(Timeout::Ping),
        "pings again, does not close"
    );
    assert_eq!(p.state(), State::Open);
}

#[test]
fn an_incomplete_header_is_not_activity() {
    // A slow trickle of header bytes must not keep a connection alive forever.
    let mut p = Protocol::new(config(), t0());
    let mut input = BytesMut::from(&frame(true, TEXT, b"hi")[..1]);
    assert_eq!(p.read(&mut input, t0() + Duration::from_secs(4)).unwrap(), None);
    assert_eq!(p.poll_timeout(), Some(t0() + IDLE));
}

#[test]
fn an_unanswered_close_ends_at_the_close_timeout() {
    let mut p = Protocol::new(config(), t0());
    let at = t0() + Duration::from_secs(1);
    p.close(4000, "bye", at).unwrap();
    assert_eq!(p.poll_timeout(), Some(at + CLOSE_TIMEOUT));
    assert_eq!(p.handle_timeout(at + CLOSE_TIMEOUT), Some(Timeout::CloseHandshake));
    assert!(p.is_done());
    assert_eq!(p.poll_timeout(), None);
    assert_eq!(p.ended(), Some(&Ended::CloseUnanswered));
}

#[test]
fn replies_that_do_not_come_in_time_are_given_up_and_the_flush_is_bounded() {
    let mut p = Protocol::new(config(), t0());
    feed(&mut p, &frame(true, CLOSE, &close_payload(1000))).unwrap();
    assert_eq!(p.state(), State::CloseReceived);
    let waited = t0() + CLOSE_TIMEOUT;
    assert_eq!(p.handle_timeout(waited), Some(Timeout::Replies));
    assert_eq!(p.state(), State::Closed);
    assert!(!p.is_done(), "our close frame is still to be written");
    assert_eq!(p.poll_timeout(), Some(waited + CLOSE_TIMEOUT));
    assert_eq!(p.handle_timeout(waited + CLOSE_TIMEOUT), Some(Timeout::Flush));
    assert!(p.is_done());
    assert_eq!(
        p.ended(),
        Some(&Ended::ByPeer {
            code: 1000,
            reason: String::new()
        })
    );
}

#[test]
fn end_of_stream_is_a_drop_or_an_unanswered_close() {
    let mut p = Protocol::new(config(), t0());
    p.handle_eof();
    assert!(p.is_done());
    assert_eq!(p.ended(), Some(&Ended::Dropped));
    let mut p = Protocol::new(config(), t0());
    p.close(1000, "", t0()).unwrap();
    p.handle_eof();
    assert_eq!(p.ended(), Some(&Ended::CloseUnanswered));
}

#[test]
fn a_violation_is_the_reason_even_after_the_flush() {
    let mut p = Protocol::new(config(), t0());
    let mut input = BytesMut::from(&raw_frame(0x81, b"x", None)[..]);
    assert!(p.read(&mut input, t0()).is_err());
    p.finish_closing(t0());
    let (code, reason) = p.ended().unwrap().code_and_reason();
    assert_eq!((code, reason), (1002, "client frame is not masked"));
}

#[test]
fn abort_puts_its_close_frame_ahead_of_the_queue_and_after_the_frame_in_flight() {
    let mut p = Protocol::new(config(), t0());
    for i in 0..10 {
        p.send_text(&format!("queued {i}")).unwrap();
    }
    assert_eq!(p.backlog().frames, 10);
    p.advance_output(3); // the socket took part of the first frame
    assert_eq!(p.backlog().frames, 9);
    p.abort(1008, "outbound queue overflow", t0());
    assert_eq!(p.state(), State::Closed);
    assert!(!p.is_done(), "the close frame is still to be written");
    assert_eq!(p.backlog().frames, 1, "only the close frame waits");
    let rest = p.output().to_vec();
    p.advance_output(rest.len());
    // The rest of "queued 0" (a 2-byte header and 8 bytes, 3 of them written), then the close.
    assert_eq!(&rest[..7], b"ueued 0");
    assert_eq!(rest[7], 0x88);
    assert_eq!(u16::from_be_bytes([rest[9], rest[10]]), 1008);
    assert_eq!(&rest[11..], b"outbound queue overflow");
    assert!(p.is_done());
    assert_eq!(p.send_text("late"), Err(Closing));
    assert_eq!(
        p.ended(),
        Some(&Ended::Aborted {
            code: 1008,
            reason: "outbound queue overflow"
        })
    );
}
