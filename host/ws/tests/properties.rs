//! Property tests of permessage-deflate against flate2's plain raw-deflate codec, and of
//! the protocol and UTF-8 validator against the ways bytes can arrive. Seeded loops
//! (SplitMix64), so every run checks the same cases and a failure names its seed:
//! rerun one with `PROPERTY_SEED=<seed> cargo test -p wsplug-ws --test properties`.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use wsplug_ws::deflate::{DeflateParams, Deflater, InflateError, Inflater};
use wsplug_ws::frame::{FrameHeader, Opcode};
use wsplug_ws::protocol::{Event, Message, Protocol, ProtocolConfig, State};
use wsplug_ws::utf8::Utf8Validator;

const TRAILER: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x5851_F42D_4C95_7F2D)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// The seeds to run: `PROPERTY_SEED` alone if set, else `0..n`.
fn seeds(n: u64) -> Vec<u64> {
    match std::env::var("PROPERTY_SEED") {
        Ok(seed) => vec![seed.parse().expect("PROPERTY_SEED is a number")],
        Err(_) => (0..n).collect(),
    }
}

/// A message of a size and kind that compression cares about: empty, tiny, around
/// the window sizes, up to 100 KiB; random bytes, text, runs, or a mix.
fn message(rng: &mut Rng) -> Vec<u8> {
    let len = match rng.below(8) {
        0 => 0,
        1 => rng.range(1, 8),
        2 => rng.range(9, 300),
        3 => rng.range(250, 1100),
        4 => rng.range(1000, 40_000),
        5 => rng.range(30_000, 100_000),
        _ => rng.range(1, 5000),
    };
    let kind = rng.below(4);
    let words: [&[u8]; 6] = [
        b"hello ",
        b"wsplug ",
        "κόσμε ".as_bytes(),
        b"{\"type\":\"chat\",\"text\":",
        b"\"}\n",
        b"0123456789",
    ];
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        match kind {
            0 => out.push(rng.next() as u8),
            1 => out.extend_from_slice(words[rng.below(words.len())]),
            2 => {
                let b = rng.next() as u8;
                let n = rng.range(1, 600);
                out.extend(std::iter::repeat_n(b, n));
            }
            _ => {
                if rng.chance(3) {
                    out.push(rng.next() as u8);
                } else {
                    out.extend_from_slice(words[rng.below(words.len())]);
                }
            }
        }
    }
    out.truncate(len);
    out
}

fn params(server_nct: bool, client_nct: bool, bits: u8) -> DeflateParams {
    DeflateParams {
        server_no_context_takeover: server_nct,
        client_no_context_takeover: client_nct,
        server_window_bits: bits,
    }
}

/// Decodes one message as a plain RFC 7692 client does: payload + sync trailer through
/// a raw inflate stream, `FlushDecompress::Sync`.
fn plain_inflate(decoder: &mut Decompress, payload: &[u8]) -> Result<Vec<u8>, String> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&TRAILER);
    let mut out = Vec::with_capacity(input.len() * 4 + 64);
    let mut rest = &input[..];
    loop {
        let (before_in, before_out) = (decoder.total_in(), out.len());
        let status = decoder
            .decompress_vec(rest, &mut out, FlushDecompress::Sync)
            .map_err(|e| format!("plain decoder: {e}"))?;
        let consumed = (decoder.total_in() - before_in) as usize;
        rest = &rest[consumed..];
        if rest.is_empty() && out.len() < out.capacity() {
            return Ok(out);
        }
        if status == Status::StreamEnd {
            return Err("the server ended the deflate stream".into());
        }
        if consumed == 0 && out.len() == before_out && out.len() < out.capacity() {
            return Err("plain decoder made no progress".into());
        }
        out.reserve(out.capacity().max(64));
    }
}

/// Messages compressed by our `Deflater` decode with flate2's plain raw decoder, kept
/// across messages (context takeover) or reset for each one, with a 15-bit window and
/// with the window the server agreed to use.
#[test]
fn deflater_output_decodes_with_a_plain_raw_inflater() {
    for seed in seeds(300) {
        let mut rng = Rng::new(seed);
        let nct = rng.chance(2);
        let bits = rng.range(9, 15) as u8;
        let level = rng.range(0, 9) as u32;
        let p = params(nct, false, bits);
        let mut deflater = Deflater::new(&p, level);
        let mut plain = Decompress::new(false);
        let mut narrow = Decompress::new_with_window_bits(false, bits);
        let mut payload = Vec::new();
        let count = rng.range(1, 8);
        for i in 0..count {
            let msg = message(&mut rng);
            deflater.compress(&msg, &mut payload);
            let at = format!(
                "seed {seed}: message {i} of {} bytes, no_context_takeover {nct}, window {bits}, level {level}",
                msg.len()
            );
            assert!(!payload.is_empty(), "{at}: empty payload");
            for decoder in [&mut plain, &mut narrow] {
                if nct {
                    decoder.reset(false);
                }
                let decoded = plain_inflate(decoder, &payload).unwrap_or_else(|e| panic!("{at}: {e}"));
                assert!(decoded == msg, "{at}: decoded {} bytes that differ", decoded.len());
            }
        }
    }
}

/// How a client ends each compressed message.
#[derive(Clone, Copy, Debug)]
enum ClientFlush {
    /// Sync flush, trailer removed (RFC 7692 section 7.2.1): what every client does.
    SyncStripped,
    /// Full flush (also resets the dictionary), trailer removed.
    Full,
    /// A final block (BFINAL) and the 0x00 octet that RFC 7692 section 7.2.3.4 has
    /// follow it; the next message is a new stream.
    Finish,
}

/// A plain flate2 compressor on the client's side.
struct Client {
    compress: Compress,
    flush: ClientFlush,
    /// client_no_context_takeover: reset after every message.
    nct: bool,
}

impl Client {
    fn message(&mut self, data: &[u8]) -> Vec<u8> {
        let flush = match self.flush {
            ClientFlush::SyncStripped => FlushCompress::Sync,
            ClientFlush::Full => FlushCompress::Full,
            ClientFlush::Finish => FlushCompress::Finish,
        };
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        let mut rest = data;
        loop {
            let before = self.compress.total_in();
            let status = self.compress.compress_vec(rest, &mut out, flush).expect("compress");
            rest = &rest[(self.compress.total_in() - before) as usize..];
            let done = match self.flush {
                ClientFlush::Finish => status == Status::StreamEnd,
                _ => rest.is_empty() && out.len() < out.capacity(),
            };
            if done {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        if matches!(self.flush, ClientFlush::SyncStripped | ClientFlush::Full) {
            if out.is_empty() {
                // zlib flushes nothing for an empty message right after a flush; RFC 7692
                // section 7.2.1 has the sender append an empty stored block all the same,
                // which leaves 0x00 once its last four octets are removed.
                out.push(0x00);
            } else {
                assert!(out.ends_with(&TRAILER), "{out:02x?}");
                out.truncate(out.len() - TRAILER.len());
            }
        }
        if matches!(self.flush, ClientFlush::Finish) {
            out.push(0x00);
        }
        if self.nct || matches!(self.flush, ClientFlush::Finish) {
            self.compress.reset();
        }
        out
    }
}

fn client(rng: &mut Rng) -> Client {
    let bits = rng.range(9, 15) as u8;
    let level = rng.range(0, 9) as u32;
    Client {
        compress: Compress::new_with_window_bits(Compression::new(level), false, bits),
        flush: [ClientFlush::SyncStripped, ClientFlush::SyncStripped, ClientFlush::Full][rng.below(3)],
        nct: rng.chance(2),
    }
}

/// Feeds `payload` to the inflater in random pieces, then ends the message.
fn inflate_in_pieces(
    rng: &mut Rng,
    inflater: &mut Inflater,
    payload: &[u8],
    limit: usize,
) -> Result<Vec<u8>, InflateError> {
    let mut out = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        let n = match rng.below(3) {
            0 => 1,
            1 => rng.range(1, 64),
            _ => rest.len(),
        }
        .min(rest.len());
        inflater.inflate(&rest[..n], &mut out, limit)?;
        rest = &rest[n..];
    }
    inflater.finish_message(&mut out, limit)?;
    Ok(out)
}

/// Our `Inflater` decodes what flate2's plain raw `Compress` produces, with and without
/// context takeover, any window and level, and however the client ends its messages.
#[test]
fn inflater_decodes_what_a_plain_compressor_produces() {
    for seed in seeds(300) {
        let mut rng = Rng::new(seed);
        let mut client = client(&mut rng);
        let mut inflater = Inflater::new(&params(false, client.nct, 15));
        let count = rng.range(1, 8);
        for i in 0..count {
            let msg = message(&mut rng);
            let payload = client.message(&msg);
            let at = format!(
                "seed {seed}: message {i} of {} bytes ({} compressed), {:?}, no_context_takeover {}",
                msg.len(),
                payload.len(),
                client.flush,
                client.nct
            );
            // The limit is the message's size exactly: reaching it is allowed.
            let decoded = inflate_in_pieces(&mut rng, &mut inflater, &payload, msg.len())
                .unwrap_or_else(|e| panic!("{at}: {e:?}"));
            assert!(decoded == msg, "{at}: decoded {} bytes that differ", decoded.len());
        }
    }
}

/// One byte over the limit is `TooBig`, never more than a bounded allocation; and a
/// message exactly at the limit passes.
#[test]
fn inflater_enforces_the_limit_to_the_byte() {
    for seed in seeds(200) {
        let mut rng = Rng::new(seed);
        let mut client = client(&mut rng);
        client.nct = true;
        let msg = message(&mut rng);
        if msg.is_empty() {
            continue;
        }
        let payload = client.message(&msg);
        let mut inflater = Inflater::new(&params(false, true, 15));
        let result = inflate_in_pieces(&mut rng, &mut inflater, &payload, msg.len() - 1);
        assert_eq!(
            result,
            Err(InflateError::TooBig),
            "seed {seed}: {} bytes, limit one less",
            msg.len()
        );
        let mut inflater = Inflater::new(&params(false, true, 15));
        let result = inflate_in_pieces(&mut rng, &mut inflater, &payload, msg.len());
        assert!(
            result.as_deref() == Ok(&msg[..]),
            "seed {seed}: {} bytes at the limit: {result:?}",
            msg.len()
        );
    }
}

const MASK_KEYS: [[u8; 4]; 3] = [[0, 0, 0, 0], [0x37, 0xfa, 0x21, 0x3d], [0xff, 0x01, 0x80, 0x7f]];

fn client_frame(out: &mut Vec<u8>, first: u8, payload: &[u8], key: [u8; 4]) {
    out.push(first);
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
}

/// A text message: random characters of every UTF-8 width.
fn text(rng: &mut Rng) -> String {
    let len = [0, 1, 10, 200, 3000, 70_000][rng.below(6)];
    let chars = ['a', ' ', 'é', 'κ', '€', '\u{FFFF}', '😀', '\u{10FFFF}', '\n'];
    let mut s = String::new();
    while s.len() < len {
        s.push(chars[rng.below(chars.len())]);
    }
    s
}

/// A compressing client's messages, fragmented at random points, masked, with pings
/// between fragments and some messages sent uncompressed, arrive in random pieces: the
/// protocol gives back each message and answers each ping. And what the server sends
/// back decodes with a plain decoder.
#[test]
fn protocol_reassembles_compressed_fragmented_messages_however_they_arrive() {
    for seed in seeds(120) {
        let mut rng = Rng::new(seed);
        let mut client = client(&mut rng);
        let server_nct = rng.chance(2);
        let bits = rng.range(9, 15) as u8;
        let config = ProtocolConfig {
            max_message_size: 1 << 20,
            deflate: Some(params(server_nct, client.nct, bits)),
            deflate_level: rng.range(0, 9) as u32,
            idle_timeout: Duration::from_secs(60),
            close_timeout: Duration::from_secs(5),
        };
        let now = Instant::now();
        let mut protocol = Protocol::new(config, now);
        let mut wire = Vec::new();
        let mut sent = Vec::new();
        let mut pings = 0;
        for _ in 0..rng.range(1, 6) {
            let is_text = rng.chance(2);
            let msg: Vec<u8> = if is_text {
                text(&mut rng).into_bytes()
            } else {
                message(&mut rng)
            };
            let compressed = !rng.chance(4);
            let payload = if compressed { client.message(&msg) } else { msg.clone() };
            let pieces = rng.range(1, 4);
            let mut cuts: Vec<usize> = (1..pieces).map(|_| rng.below(payload.len() + 1)).collect();
            cuts.sort_unstable();
            cuts.insert(0, 0);
            cuts.push(payload.len());
            for (k, w) in cuts.windows(2).enumerate() {
                let first = k == 0;
                let last = k == cuts.len() - 2;
                let opcode = if !first {
                    0x0
                } else if is_text {
                    0x1
                } else {
                    0x2
                };
                let byte0 = u8::from(last) << 7 | u8::from(first && compressed) << 6 | opcode;
                client_frame(&mut wire, byte0, &payload[w[0]..w[1]], MASK_KEYS[rng.below(3)]);
                if !last && rng.chance(2) {
                    client_frame(&mut wire, 0x89, b"ping", MASK_KEYS[rng.below(3)]);
                    pings += 1;
                }
            }
            sent.push((is_text, msg));
        }
        client_frame(&mut wire, 0x88, &[0x03, 0xe8], MASK_KEYS[1]);

        let mut input = BytesMut::new();
        let mut received = Vec::new();
        let mut rest = &wire[..];
        while !rest.is_empty() {
            let n = [1, 3, 17, 500, 70_000][rng.below(5)].min(rest.len());
            input.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            while let Some(event) = protocol
                .read(&mut input, now)
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"))
            {
                received.push(event);
            }
        }
        let expected: Vec<Event> = sent
            .iter()
            .map(|(is_text, msg)| {
                Event::Message(if *is_text {
                    Message::Text(String::from_utf8(msg.clone()).unwrap())
                } else {
                    Message::Binary(msg.clone())
                })
            })
            .chain([Event::Closed {
                code: 1000,
                reason: String::new(),
            }])
            .collect();
        assert!(received == expected, "seed {seed}: events differ");
        assert_eq!(protocol.state(), State::CloseReceived);

        // The server's replies, compressed, then its close: a plain client decodes them.
        let replies: Vec<String> = (0..rng.range(0, 4)).map(|_| text(&mut rng)).collect();
        for reply in &replies {
            protocol.send_text(reply).unwrap();
        }
        protocol.finish_closing(now);
        let output = protocol.output().to_vec();
        protocol.advance_output(output.len());
        assert!(protocol.is_done());
        let mut decoder = Decompress::new_with_window_bits(false, bits);
        let mut at = 0;
        let mut pongs = 0;
        let mut texts = Vec::new();
        while at < output.len() {
            let (header, len) = FrameHeader::decode(&output[at..]).unwrap().expect("whole frames");
            let payload = &output[at + len..at + len + header.payload_len as usize];
            at += len + payload.len();
            assert!(header.fin && header.mask.is_none());
            match header.opcode {
                Opcode::Pong => {
                    assert_eq!(payload, b"ping");
                    pongs += 1;
                }
                Opcode::Text => {
                    assert!(header.rsv1);
                    if server_nct {
                        decoder.reset(false);
                    }
                    let decoded = plain_inflate(&mut decoder, payload).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                    texts.push(String::from_utf8(decoded).expect("UTF-8"));
                }
                Opcode::Close => assert_eq!(payload, [0x03, 0xe8], "the peer's code echoed"),
                other => panic!("seed {seed}: unexpected {other:?} frame"),
            }
        }
        assert_eq!(pongs, pings, "seed {seed}: one pong per ping");
        assert!(texts == replies, "seed {seed}: replies differ");
    }
}

/// The incremental validator agrees with `std::str::from_utf8` on any bytes, fed in any pieces.
#[test]
fn utf8_validator_agrees_with_std_in_any_pieces() {
    for seed in seeds(3000) {
        let mut rng = Rng::new(seed);
        let mut bytes = text(&mut rng).into_bytes();
        bytes.truncate(rng.range(0, 400).min(bytes.len()));
        // Corrupt a few bytes, or cut a character, or leave it valid.
        for _ in 0..rng.below(3) {
            if !bytes.is_empty() {
                let at = rng.below(bytes.len());
                bytes[at] = [
                    0x80,
                    0xbf,
                    0xc0,
                    0xc1,
                    0xe0,
                    0xed,
                    0xf0,
                    0xf4,
                    0xf5,
                    0xff,
                    rng.next() as u8,
                ][rng.below(11)];
            }
        }
        let expected = std::str::from_utf8(&bytes).is_ok();
        let mut validator = Utf8Validator::default();
        let mut rest = &bytes[..];
        let mut ok = true;
        while !rest.is_empty() && ok {
            let n = rng.range(1, 8).min(rest.len());
            ok = validator.feed(&rest[..n]).is_ok();
            rest = &rest[n..];
        }
        let ok = ok && validator.finish().is_ok();
        assert_eq!(ok, expected, "seed {seed}: {bytes:02x?}");
    }
}

/// RFC 7692 section 7.2.3.4: a client may end a message with a BFINAL block, followed
/// by a 0x00 octet so that the appended trailer completes an empty stored block. (Found
/// by the fuzzer: the `Inflater` used to drop the input after a final block when both
/// arrived in one piece, so the message after it failed with 1007.)
#[test]
fn inflater_continues_after_a_bfinal_message() {
    let p = params(false, false, 15);
    let bfinal = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00]; // "Hello", section 7.2.3.4
    let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]; // "Hello", section 7.2.3.1
    let mut inflater = Inflater::new(&p);
    let mut out = Vec::new();
    inflater.inflate(&bfinal, &mut out, 100).unwrap();
    inflater.finish_message(&mut out, 100).unwrap();
    assert_eq!(out, b"Hello");
    let mut out = Vec::new();
    let result = inflater
        .inflate(&hello, &mut out, 100)
        .and_then(|()| inflater.finish_message(&mut out, 100));
    assert_eq!(result, Ok(()), "the message after a BFINAL one");
    assert_eq!(out, b"Hello");

    // And with a plain client that ends every message so, in random pieces.
    for seed in seeds(100) {
        let mut rng = Rng::new(seed);
        let mut client = client(&mut rng);
        client.flush = ClientFlush::Finish;
        let mut inflater = Inflater::new(&params(false, client.nct, 15));
        for i in 0..3 {
            let msg = message(&mut rng);
            let payload = client.message(&msg);
            let decoded = inflate_in_pieces(&mut rng, &mut inflater, &payload, 1 << 20);
            assert!(
                decoded.as_deref() == Ok(&msg[..]),
                "seed {seed}: message {i}: {:?}",
                decoded.map(|d| d.len())
            );
        }
    }
}

/// A compressed message with an empty payload: zlib gives nothing to flush for an
/// empty message right after a flush, and a client that sends that as it is (RFC 7692
/// section 7.2.1 asks for 0x00) used to make the receiver inflate the bare trailer,
/// which at a block boundary opens a stored block that the next message's bytes then
/// completed: that message failed with 1007, or inflated to the wrong bytes.
#[test]
fn inflater_survives_an_empty_compressed_payload() {
    let p = params(false, false, 15);
    let mut client = Compress::new(Compression::new(0), false);
    let mut inflater = Inflater::new(&p);
    for msg in [&b"first"[..], b"", b"third message"] {
        let mut payload = Vec::with_capacity(64);
        client.compress_vec(msg, &mut payload, FlushCompress::Sync).unwrap();
        if payload.ends_with(&TRAILER) {
            payload.truncate(payload.len() - 4);
        }
        let mut out = Vec::new();
        let result = inflater
            .inflate(&payload, &mut out, 1000)
            .and_then(|()| inflater.finish_message(&mut out, 1000));
        assert_eq!(result, Ok(()), "{msg:?} ({payload:02x?})");
        assert_eq!(out, msg, "payload {payload:02x?}");
    }
}

/// A client that ends its messages with BFINAL but without the 0x00 octet that RFC 7692
/// section 7.2.3.4 adds after the final block (zlib's `Z_FINISH` output as it is): the
/// receiver's trailer used to land in a new stream, where `00 00 ff ff` is not a whole
/// block, and the next message was taken into it (1007). Such a sender is off the RFC;
/// the trailer is now skipped when the stream ended with nothing after it.
#[test]
fn inflater_continues_after_a_bfinal_message_without_the_trailing_octet() {
    let p = params(false, false, 15);
    let mut inflater = Inflater::new(&p);
    for i in 0..3 {
        let mut payload = Vec::with_capacity(64);
        Compress::new(Compression::default(), false)
            .compress_vec(b"Hello", &mut payload, FlushCompress::Finish)
            .unwrap();
        let mut out = Vec::new();
        let result = inflater
            .inflate(&payload, &mut out, 100)
            .and_then(|()| inflater.finish_message(&mut out, 100));
        assert_eq!(result, Ok(()), "message {i}: {payload:02x?}");
        assert_eq!(out, b"Hello");
    }
}
