//! Writes the seed corpora (committed under host/fuzz/corpus/<target>/): a few valid
//! inputs per target, in each target's input layout, that the fuzzer mutates from.
//! Run again after changing a layout:
//! `cargo run --manifest-path host/fuzz/Cargo.toml --example gen_corpus -- host/fuzz/corpus`
//! Every seed is also run through its target's checks here.

use std::path::Path;

use flate2::{Compress, Compression, FlushCompress};
use wsplug_fuzz::handshake::KEY;
use wsplug_fuzz::protocol::STREAM_MODE;
use wsplug_fuzz::wire::{SYNC_TRAILER, client_frame};

const MASK: Option<[u8; 4]> = Some([0x37, 0xfa, 0x21, 0x3d]);
const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const CONT: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    client_frame(&mut out, first, payload, MASK);
    out
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// Ops-mode encoding of `wire` arriving in pieces of the given sizes (cycled).
fn feeds(wire: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = wire;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let n = size.clamp(1, 256).min(rest.len());
        out.push(0x00); // feed
        out.push((n - 1) as u8);
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
    out
}

const WRITE_ALL: [u8; 2] = [0x08, 0xff];
const FINISH_CLOSING: u8 = 0x0d;

/// A client's compressor: raw deflate, sync flush, trailer stripped (RFC 7692 section 7.2.1).
struct ClientDeflate(Compress);

impl ClientDeflate {
    fn new(bits: u8) -> Self {
        Self(Compress::new_with_window_bits(Compression::new(6), false, bits))
    }

    fn compress(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 64);
        let start = self.0.total_in();
        self.0.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
        assert!(self.0.total_in() - start == data.len() as u64 && out.len() < out.capacity());
        assert!(out.ends_with(&SYNC_TRAILER));
        out.truncate(out.len() - SYNC_TRAILER.len());
        out
    }
}

struct Corpus<'a> {
    dir: &'a Path,
}

impl Corpus<'_> {
    fn seed(&self, target: &str, name: &str, data: &[u8]) {
        assert!(wsplug_fuzz::run_target(target, data));
        let dir = self.dir.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    }
}

fn main() {
    let dir = std::env::args().nth(1).expect("usage: gen_corpus CORPUS_DIR");
    let c = Corpus { dir: Path::new(&dir) };
    frames(&c);
    protocol(&c);
    protocol_deflate(&c);
    handshake(&c);
    negotiate(&c);
    cluster(&c);
    regressions(&c);
    eprintln!("seeds written to {dir}");
}

fn frames(c: &Corpus) {
    let t = "frame";
    // RFC 6455 section 5.7 examples.
    c.seed(
        t,
        "rfc-masked-hello",
        &[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58],
    );
    c.seed(t, "rfc-unmasked-hello", b"\x81\x05Hello");
    c.seed(t, "rfc-fragment", &[0x01, 0x03, 0x48, 0x65, 0x6c]);
    c.seed(t, "ping", &frame(FIN | PING, b"Hello"));
    c.seed(t, "close-1000", &frame(FIN | CLOSE, &[0x03, 0xe8, b'o', b'k']));
    c.seed(t, "binary-256", &frame(FIN | BINARY, &[0xaa; 256])[..20]);
    c.seed(t, "binary-64k", &frame(FIN | BINARY, &vec![0x55; 65_536])[..24]);
    c.seed(
        t,
        "len127-top-bit",
        &[0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
    );
    c.seed(t, "reserved-opcode", &[0x83, 0x80, 1, 2, 3, 4]);
    c.seed(t, "rsv-bits", &[0xf1, 0x81, 1, 2, 3, 4, 5]);
    c.seed(t, "short", &[0x81]);
}

fn protocol(c: &Corpus) {
    let t = "protocol";
    let ops = |cfg: u8, body: &[&[u8]]| -> Vec<u8> {
        let mut out = vec![cfg];
        for part in body {
            out.extend_from_slice(part);
        }
        out
    };
    let stream = |cfg: u8, seed: u8, wire: &[u8]| -> Vec<u8> { cat(&[vec![cfg | STREAM_MODE, seed], wire.to_vec()]) };
    let hello = frame(FIN | TEXT, b"Hello");
    let close = frame(FIN | CLOSE, &[0x03, 0xe8]);
    let fragmented = cat(&[
        frame(TEXT, "κό".as_bytes()),
        frame(FIN | PING, b"ping"),
        frame(CONT, &"σμε".as_bytes()[..3]),
        frame(FIN | CONT, &"σμε".as_bytes()[3..]),
    ]);
    let binary = frame(FIN | BINARY, &(0..300u32).map(|i| i as u8).collect::<Vec<_>>());

    c.seed(
        t,
        "text-then-close",
        &ops(
            7,
            &[
                &feeds(&cat(&[hello.clone(), close.clone()]), &[256]),
                &WRITE_ALL,
                &[FINISH_CLOSING],
                &WRITE_ALL,
            ],
        ),
    );
    c.seed(
        t,
        "fragmented-with-ping",
        &ops(7, &[&feeds(&fragmented, &[1, 2, 3, 5, 8]), &[0x08, 0x40], &WRITE_ALL]),
    );
    c.seed(
        t,
        "binary-16bit-length",
        &ops(5, &[&feeds(&binary, &[7, 100]), &WRITE_ALL]),
    );
    c.seed(
        t,
        "invalid-utf8",
        &ops(
            7,
            &[
                &feeds(&frame(FIN | TEXT, b"ab\xed\xa0\x80cd"), &[3]),
                &[FINISH_CLOSING],
                &WRITE_ALL,
            ],
        ),
    );
    c.seed(
        t,
        "too-big",
        &ops(
            2,
            &[
                &feeds(&frame(FIN | BINARY, &[0; 17]), &[256]),
                &[FINISH_CLOSING],
                &WRITE_ALL,
            ],
        ),
    );
    c.seed(
        t,
        "unmasked",
        &ops(7, &[&feeds(b"\x81\x05Hello", &[256]), &[FINISH_CLOSING], &WRITE_ALL]),
    );
    // Sends, a ping and our close, then the peer's answer.
    c.seed(
        t,
        "sends-and-close",
        &ops(
            7,
            &[
                &[0x09, 5],
                b"hello",
                &[0x1a, 3],
                &[1, 2, 3],
                &[0x0b, 2],
                b"hi",
                &[0x08, 0x80],
                &[0x0c, 0x10],
                &feeds(&close, &[2]),
                &WRITE_ALL,
            ],
        ),
    );
    // Idle: a ping after 5 s, a close after 5 more, unanswered after 3 more.
    c.seed(
        t,
        "idle-timeouts",
        &ops(7, &[&[0x0e, 60], &WRITE_ALL, &[0x0e, 60], &WRITE_ALL, &[0x0e, 40]]),
    );
    c.seed(
        t,
        "pong-resets-idle",
        &ops(
            7,
            &[
                &[0x0e, 60],
                &feeds(&frame(FIN | PONG, b"wsplug"), &[256]),
                &[0x0e, 30],
                &WRITE_ALL,
            ],
        ),
    );
    // A slow reader: messages queued, one half written, then aborted.
    c.seed(
        t,
        "abort",
        &ops(
            7,
            &[
                &[0x09, 3],
                b"one",
                &[0x09, 3],
                b"two",
                &[0x08, 0x40],
                &[0x1f, 0],
                &WRITE_ALL,
            ],
        ),
    );
    c.seed(t, "eof", &ops(7, &[&feeds(&hello, &[4]), &[0x0f]]));
    c.seed(
        t,
        "stream-mixed",
        &stream(
            7,
            1,
            &cat(&[hello.clone(), fragmented.clone(), binary.clone(), close.clone()]),
        ),
    );
    c.seed(
        t,
        "stream-invalid-utf8-split",
        &stream(7, 2, &cat(&[frame(TEXT, b"\xce"), frame(FIN | CONT, b"\xba\xff")])),
    );
    c.seed(
        t,
        "stream-bad-close-code",
        &stream(7, 3, &frame(FIN | CLOSE, &[0x03, 0xed])),
    );
}

fn protocol_deflate(c: &Corpus) {
    let t = "protocol_deflate";
    // Byte 1: context takeover both ways, 15-bit server window, level 6.
    let params_byte = |server_nct: bool, client_nct: bool, bits: u8| -> u8 {
        u8::from(server_nct) | u8::from(client_nct) << 1 | (bits - 8) << 2 | 4 << 5
    };
    let ops = |cfg: u8, params: u8, body: &[&[u8]]| -> Vec<u8> {
        let mut out = vec![cfg, params];
        for part in body {
            out.extend_from_slice(part);
        }
        out
    };
    let stream = |cfg: u8, params: u8, seed: u8, wire: &[u8]| -> Vec<u8> {
        cat(&[vec![cfg | STREAM_MODE, params, seed], wire.to_vec()])
    };
    let p15 = params_byte(false, false, 15);
    let p9 = params_byte(true, true, 9);

    // RFC 7692 section 7.2.3.1-2: "Hello" twice, the second using the shared window.
    let rfc = cat(&[
        frame(FIN | RSV1 | TEXT, &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]),
        frame(FIN | RSV1 | TEXT, &[0xf2, 0x00, 0x11, 0x00, 0x00]),
    ]);
    c.seed(t, "rfc-hello-twice", &ops(7, p15, &[&feeds(&rfc, &[3, 9]), &WRITE_ALL]));
    // RFC 7692 section 7.2.3.3: an empty stored block... here, an empty message.
    c.seed(
        t,
        "empty-message",
        &ops(7, p15, &[&feeds(&frame(FIN | RSV1 | TEXT, &[0x00]), &[256])]),
    );

    let mut client = ClientDeflate::new(15);
    let text = "hello wsplug ".repeat(40);
    let first = client.compress(text.as_bytes());
    let second = client.compress(text.as_bytes());
    let fragmented = cat(&[
        frame(RSV1 | TEXT, &first[..first.len() / 2]),
        frame(FIN | PING, b"mid"),
        frame(FIN | CONT, &first[first.len() / 2..]),
        frame(FIN | RSV1 | TEXT, &second),
    ]);
    c.seed(
        t,
        "context-takeover-fragmented",
        &ops(7, p15, &[&feeds(&fragmented, &[1, 17, 5]), &WRITE_ALL]),
    );
    c.seed(
        t,
        "stream-context-takeover",
        &stream(
            7,
            p15,
            4,
            &cat(&[fragmented.clone(), frame(FIN | CLOSE, &[0x03, 0xe8])]),
        ),
    );

    let mut client = ClientDeflate::new(9);
    let binary: Vec<u8> = (0..2000u32).map(|i| (i % 251) as u8).collect();
    let a = client.compress(&binary);
    let mut client = ClientDeflate::new(9);
    let b = client.compress(&binary);
    c.seed(
        t,
        "no-context-takeover-9-bits",
        &ops(
            7,
            p9,
            &[
                &feeds(
                    &cat(&[frame(FIN | RSV1 | BINARY, &a), frame(FIN | RSV1 | BINARY, &b)]),
                    &[64],
                ),
                &WRITE_ALL,
            ],
        ),
    );

    let mut client = ClientDeflate::new(15);
    let bomb = client.compress(&vec![0u8; 60_000]);
    c.seed(
        t,
        "bomb-past-limit",
        &ops(
            5,
            p15,
            &[
                &feeds(&frame(FIN | RSV1 | BINARY, &bomb), &[256]),
                &[FINISH_CLOSING],
                &WRITE_ALL,
            ],
        ),
    );
    c.seed(
        t,
        "corrupt",
        &stream(7, p15, 5, &frame(FIN | RSV1 | BINARY, &[0xff, 0xff, 0xff, 0xff])),
    );
    c.seed(
        t,
        "uncompressed-among-compressed",
        &stream(7, p15, 6, &cat(&[frame(FIN | TEXT, b"plain"), rfc.clone()])),
    );
    c.seed(
        t,
        "rsv1-on-continuation",
        &stream(
            7,
            p15,
            7,
            &cat(&[frame(RSV1 | TEXT, &first), frame(FIN | RSV1 | CONT, &[0x00])]),
        ),
    );
    // The server compresses what it sends: sends with and without context takeover.
    c.seed(
        t,
        "sends",
        &ops(
            7,
            p15,
            &[
                &[0x09, 5],
                b"hello",
                &[0x09, 5],
                b"hello",
                &[0x3a, 4],
                &[0; 4],
                &[0x09, 0],
                &WRITE_ALL,
            ],
        ),
    );
    c.seed(
        t,
        "sends-no-context-takeover",
        &ops(
            7,
            params_byte(true, false, 10),
            &[&[0x09, 5], b"hello", &[0x09, 5], b"hello", &WRITE_ALL],
        ),
    );
}

fn request(extra: &str) -> String {
    format!(
        "GET /chat?room=1 HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

fn handshake(c: &Corpus) {
    let t = "handshake";
    // 0x0d: deflate on with a 15-bit server window; 0x07: 15-bit client window.
    let raw = |cfg: u8, cfg2: u8, request: &[u8]| cat(&[vec![cfg, cfg2], request.to_vec()]);
    c.seed(t, "valid", &raw(0x0d, 0x07, request("").as_bytes()));
    c.seed(
        t,
        "deflate",
        &raw(
            0x0d,
            0x07,
            request("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n").as_bytes(),
        ),
    );
    c.seed(
        t,
        "deflate-small-windows",
        &raw(
            0x03,
            0x02,
            request("Sec-WebSocket-Extensions: foo, permessage-deflate; server_max_window_bits=12; client_max_window_bits; server_no_context_takeover\r\n")
                .as_bytes(),
        ),
    );
    c.seed(
        t,
        "subprotocol",
        &raw(
            0x1d,
            0x07,
            request("Sec-WebSocket-Protocol: soap, superchat\r\nSec-WebSocket-Protocol: chat\r\n").as_bytes(),
        ),
    );
    c.seed(
        t,
        "origin",
        &raw(0x2d, 0x07, request("Origin: https://CHAT.example\r\n").as_bytes()),
    );
    c.seed(
        t,
        "plain",
        &raw(0x0d, 0x07, b"HEAD /index.html?x HTTP/1.0\r\nHost: h\r\n\r\n"),
    );
    c.seed(
        t,
        "absolute-form-bare-lf",
        &raw(
            0x0d,
            0x07,
            request("")
                .replace("/chat?room=1", "ws://h:9001/chat")
                .replace("\r\n", "\n")
                .as_bytes(),
        ),
    );
    c.seed(
        t,
        "trailing-frame",
        &raw(
            0x0d,
            0x07,
            &cat(&[request("").into_bytes(), vec![0x81, 0x80, 1, 2, 3, 4]]),
        ),
    );
    c.seed(
        t,
        "small-limit",
        &raw(0x4d, 0x20, request("X-Filler: 0123456789\r\n").as_bytes()),
    );
    // Structured mode: edits of a valid request.
    c.seed(t, "edit-none", &[0x8d, 0x07]);
    c.seed(t, "edit-add-extensions", &[0x8d, 0x07, 0x2b, 5, 0x2b, 7]);
    c.seed(t, "edit-drop-key-repeat-version", &[0x8d, 0x07, 0x18, 0x21]);
    c.seed(t, "edit-case-and-padding", &[0x9d, 0x07, 0x34, 0, 0x0c, 2, 0x33, 9]);
    c.seed(
        t,
        "edit-method-target-version",
        &[0x8d, 0x07, 0x05, 2, 0x0d, 2, 0x15, 1],
    );
    c.seed(t, "edit-raw-value", &[0x8d, 0x07, 0x1a, 4, b'x', b'y', 0xff, b'z']);
}

fn negotiate(c: &Corpus) {
    let t = "deflate_negotiate";
    // 0x3e: 15-bit windows both ways; 0x12: server 11, client 10.
    let seed = |name: &str, cfg: u8, values: &str| c.seed(t, name, &cat(&[vec![cfg], values.as_bytes().to_vec()]));
    seed("plain", 0x3e, "permessage-deflate");
    seed("client-window", 0x12, "permessage-deflate; client_max_window_bits");
    seed(
        "every-parameter",
        0x3e,
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=12",
    );
    seed(
        "quoted-and-fallback",
        0x12,
        "x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=\"9\"",
    );
    seed(
        "declined-then-accepted",
        0x3e,
        "permessage-deflate; unknown=1, permessage-deflate; Client_Max_Window_Bits=9\nfoo",
    );
    seed(
        "repeated",
        0x3e,
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
    );
}

/// Inputs that failed before a fix (named regression-*), so that every run checks them.
fn regressions(c: &Corpus) {
    // RFC 7692 section 7.2.3.4's BFINAL "Hello", then section 7.2.3.1's. The Inflater
    // dropped the rest of a piece after a final block: read at once, the second message
    // failed (1007); in pieces that put the last 0x00 apart, it passed.
    // Byte 0: 1 MiB limit, stream mode; byte 1: context takeover, 15-bit window, level 6.
    let mut wire = vec![0x07 | STREAM_MODE, 7 << 2 | 4 << 5];
    wire.push(5); // the split points: this seed puts the last 0x00 in a piece of its own
    wire.extend(frame(
        FIN | RSV1 | TEXT,
        &[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00],
    ));
    wire.extend(frame(FIN | RSV1 | TEXT, &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]));
    c.seed("protocol_deflate", "regression-bfinal-then-message", &wire);
    // Found by the fuzzer: a 4-byte final block, then more data in the same frame,
    // dropped when read at once and inflated (corrupt) when read in pieces.
    c.seed(
        "protocol_deflate",
        "regression-data-after-bfinal",
        &[
            0xfb, 0x6b, 0x51, 0xc2, 0xcc, 0x21, 0x37, 0x3d, 0x37, 0xfa, 0x21, 0x3d, 0x37, 0xfa, 0x01, 0x80, 0x21, 0xfa,
            0x3d, 0x37, 0x21, 0x5c, 0x37, 0xfa, 0x21, 0x3d, 0x34, 0xfa, 0x21, 0x3d, 0x00, 0xfa, 0x21, 0x3d, 0x37, 0xfa,
            0x38, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0d, 0x08, 0xff,
        ],
    );
    // An empty compressed payload, then a stored-block message: the bare trailer used to
    // open a stored block that took the next message in (without an error).
    let mut stored = vec![0x00, 0x05, 0x00, 0xfa, 0xff];
    stored.extend_from_slice(b"third");
    let wire = [
        vec![0x07 | STREAM_MODE, 7 << 2 | 4 << 5, 0],
        frame(FIN | RSV1 | TEXT, &[]),
        frame(FIN | RSV1 | BINARY, &stored),
    ]
    .concat();
    c.seed("protocol_deflate", "regression-empty-payload", &wire);
    // deflate::negotiate took "+9" as a window size.
    c.seed(
        "deflate_negotiate",
        "regression-plus-sign",
        b"\x3epermessage-deflate; client_max_window_bits=+9",
    );
}

fn cluster(c: &Corpus) {
    use bytes::Bytes;
    use wsplug_cluster_proto::wire::{Body, BusKey, Envelope, Member, StatePart, encode_info};
    use wsplug_conn::{ConnectionInfo, Outgoing};
    use wsplug_fuzz::cluster::{INCARNATION, ME, SECRET, input};

    let t = "cluster_wire";
    let mine = (u64::from(ME) << 37) | 1;
    let theirs = (2u64 << 37) | 1;
    let member = Member {
        conn: theirs,
        attachment: Some(Bytes::from_static(b"ann")),
        groups: vec!["room".into()],
    };
    let bodies = [
        Body::Hello(StatePart::whole(vec![member.clone()])),
        Body::Joined(theirs, "lobby".into()),
        Body::Broadcast {
            message: Outgoing::Text("hi".into()),
            except: None,
        },
        Body::Send {
            conn: mine,
            incarnation: INCARNATION,
            message: Outgoing::Text("to me".into()),
        },
        Body::Send {
            conn: mine,
            incarnation: INCARNATION + 1,
            message: Outgoing::Binary(Bytes::from_static(&[1, 2])),
        },
        Body::Close {
            conn: mine,
            incarnation: INCARNATION,
            code: 4000,
            reason: "bye".into(),
        },
        Body::Close {
            conn: mine,
            incarnation: INCARNATION,
            code: 1006,
            reason: String::new(),
        },
        Body::State(StatePart {
            part: 1,
            last: true,
            members: vec![member],
        }),
        Body::Bye,
    ];
    let info = ConnectionInfo {
        id: theirs,
        remote_address: "10.0.0.1:5000".into(),
        path: "/chat".into(),
        query: None,
        subprotocol: None,
        headers: vec![("host".to_owned(), "example".to_owned())].into(),
    };
    let key = BusKey::derive(SECRET);
    for keyed in [false, true] {
        let key = keyed.then_some(&key);
        let messages: Vec<Bytes> = bodies
            .iter()
            .enumerate()
            .map(|(seq, body)| {
                Envelope {
                    origin: 2,
                    incarnation: 20,
                    seq: seq as u64 + 1,
                    sent_ms: 1_765_000_000_000,
                    body: body.clone(),
                }
                .encode(key)
            })
            .chain([encode_info(&info, key)])
            .collect();
        let name = if keyed { "conversation-keyed" } else { "conversation" };
        c.seed(t, name, &input(keyed, &messages));
    }
    // Found by the fuzzer: a state part numbered u64::MAX overflowed the next number due.
    let parts: Vec<Bytes> = [(u64::MAX, 0, false), (0, 1, true)]
        .into_iter()
        .map(|(seq, part, last)| {
            Envelope {
                origin: 2,
                incarnation: 20,
                seq,
                sent_ms: 0,
                body: Body::State(StatePart {
                    part,
                    last,
                    members: Vec::new(),
                }),
            }
            .encode(None)
        })
        .collect();
    c.seed(t, "regression-last-sequence-number", &input(false, &parts));
}
