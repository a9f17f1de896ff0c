//! End-to-end tests: the real `host` binary, the real plugins (`echo` and the test
//! plugin `probe`), and a raw WebSocket client that controls every bit on the wire.
//!
//! Build the plugins first (`make plugins`). Every test starts its own server.

mod common;

use std::io::Write as _;

use common::*;
use flate2::Compression;
use flate2::write::{DeflateDecoder, DeflateEncoder};

// ---------------------------------------------------------------------------------
// Echo plugin
// ---------------------------------------------------------------------------------

#[test]
fn echo_returns_text_and_binary_messages() {
    let server = Server::start("echo", &[]);
    let mut client = server.connect("/");

    client.send_text("hello");
    assert_eq!(client.recv_text(), "hello");
    client.send_text("κόσμε ✓ 𝄞");
    assert_eq!(client.recv_text(), "κόσμε ✓ 𝄞");
    client.send_binary(&[0, 1, 2, 0x80, 0xFF]);
    assert_eq!(client.recv_binary(), [0, 1, 2, 0x80, 0xFF]);
    // A 16-bit and a 64-bit payload length.
    let medium = "m".repeat(300);
    client.send_text(&medium);
    assert_eq!(client.recv_text(), medium);
    let large = pseudo_random_bytes(70_000);
    client.send_binary(&large);
    assert!(client.recv_binary() == large, "70 000-byte echo differs");
}

#[test]
fn echo_reassembles_fragments_and_answers_a_ping_in_between() {
    let server = Server::start("echo", &[]);
    let mut client = server.connect("/");

    client.send_frame(0x01, b"Hello", true);
    client.send_frame(PING, b"still there?", true);
    client.send_frame(0x00, b", fragmented", true);
    client.send_frame(0x80, b" world", true);
    assert_eq!(client.read_frame(), (PONG, b"still there?".to_vec()));
    assert_eq!(client.recv_text(), "Hello, fragmented world");

    // A character split across fragments, and a fragmented binary message.
    client.send_frame(0x01, b"caf\xC3", true);
    client.send_frame(0x80, b"\xA9", true);
    assert_eq!(client.recv_text(), "café");
    client.send_frame(0x02, &[1, 2], true);
    client.send_frame(0x00, &[], true);
    client.send_frame(0x80, &[3], true);
    assert_eq!(client.recv_binary(), [1, 2, 3]);
}

#[test]
fn echo_returns_a_one_mebibyte_binary_message_byte_for_byte() {
    // The default limit is 512 KiB (`max_payload_size`); raise it for this message.
    let server = Server::start("echo", &["--max-payload-size", "2097152"]);
    let mut client = server.connect("/");
    let data = pseudo_random_bytes(1 << 20);
    client.send_binary(&data);
    let echoed = client.recv_binary();
    assert_eq!(echoed.len(), data.len());
    let first_difference = echoed.iter().zip(&data).position(|(a, b)| a != b);
    assert_eq!(first_difference, None, "the echo differs");
}

#[test]
fn echo_returns_empty_messages() {
    let server = Server::start("echo", &[]);
    let mut client = server.connect("/");
    client.send_text("");
    assert_eq!(client.read_frame(), (TEXT, vec![]));
    client.send_binary(&[]);
    assert_eq!(client.read_frame(), (BINARY, vec![]));
    client.send_text("after");
    assert_eq!(client.recv_text(), "after");
}

#[test]
fn frames_sent_with_the_handshake_are_not_lost() {
    let server = Server::start("echo", &[]);
    let mut bytes = upgrade_request("/", &[]).into_bytes();
    bytes.extend(encode_frame(TEXT, b"eager", Some([1, 2, 3, 4])));
    let (mut client, response) = Client::handshake_raw(server.addr, &bytes);
    assert_switched(&response);
    assert_eq!(client.recv_text(), "eager");
}

#[test]
fn pipelined_messages_are_echoed_in_order() {
    let server = Server::start("echo", &[]);
    let mut client = server.connect("/");
    let mut bytes = Vec::new();
    for i in 0..100 {
        bytes.extend(encode_frame(
            TEXT,
            format!("message {i}").as_bytes(),
            Some([i, 7, 11, 13]),
        ));
    }
    client.send_raw(&bytes);
    for i in 0..100 {
        assert_eq!(client.recv_text(), format!("message {i}"));
    }

    // And one frame written a byte at a time.
    for byte in encode_frame(TEXT, b"slowly", Some([5, 6, 7, 8])) {
        client.send_raw(&[byte]);
    }
    assert_eq!(client.recv_text(), "slowly");
}

// ---------------------------------------------------------------------------------
// Opening handshake
// ---------------------------------------------------------------------------------

#[test]
fn malformed_handshakes_are_refused_and_the_server_keeps_serving() {
    let server = Server::start("echo", &[]);
    let good = upgrade_request("/", &[]);
    let without_key = good.replace(&format!("Sec-WebSocket-Key: {KEY}\r\n"), "");
    assert_ne!(without_key, good);
    // 20 headers of 1 KiB: under the header count limit, over the size limit.
    let filler = "f".repeat(1024);
    let names: Vec<String> = (0..20).map(|i| format!("X-Filler-{i}")).collect();
    let big: Vec<(&str, &str)> = names.iter().map(|name| (name.as_str(), filler.as_str())).collect();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("POST", good.replacen("GET", "POST", 1).into_bytes(), 405),
        ("no Sec-WebSocket-Key", without_key.into_bytes(), 400),
        (
            "15-byte key",
            good.replace(KEY, "AAAAAAAAAAAAAAAAAAAA").into_bytes(),
            400,
        ),
        (
            "version 8",
            good.replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8")
                .into_bytes(),
            426,
        ),
        ("20 KiB of headers", upgrade_request("/", &big).into_bytes(), 431),
        (
            "garbage",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00garbage\r\n\r\n".to_vec(),
            400,
        ),
    ];
    for (name, request, status) in cases {
        let response = http_request(server.addr, &request);
        assert_eq!(response.status, status, "{name}: {response:?}");
        match status {
            405 => assert_eq!(response.header("allow"), Some("GET"), "{name}"),
            426 => assert_eq!(response.header("sec-websocket-version"), Some("13"), "{name}"),
            _ => {}
        }
        assert_eq!(response.header("sec-websocket-accept"), None, "{name}");
    }

    let mut client = server.connect("/");
    client.send_text("still serving");
    assert_eq!(client.recv_text(), "still serving");
}

#[test]
fn a_handshake_may_arrive_a_byte_at_a_time() {
    let server = Server::start("echo", &[]);
    let mut client = Client::open(server.addr);
    for byte in upgrade_request("/", &[]).bytes() {
        client.send_raw(&[byte]);
    }
    assert_switched(&client.read_response());
    client.send_text("hi");
    assert_eq!(client.recv_text(), "hi");
}

#[test]
fn an_incomplete_handshake_times_out() {
    let server = Server::start("echo", &["--handshake-timeout", "1"]);
    let mut client = Client::open(server.addr);
    client.send_raw(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    client.expect_eof();
}

#[test]
fn an_absolute_form_request_target_is_accepted() {
    // RFC 6455 section 4.2.1 allows "an absolute HTTP/HTTPS URI containing the
    // /resource name/", and RFC 7230 section 5.3.2 says a server MUST accept it.
    let server = Server::start("probe", &[]);
    let request = upgrade_request("http://127.0.0.1/room?x=1", &[]);
    let (mut client, response) = Client::handshake_raw(server.addr, request.as_bytes());
    assert_switched(&response);
    expect_id(&mut client);
    let remote = client.stream.local_addr().unwrap();
    assert_eq!(
        ask(&mut client, "whoami"),
        format!("path=/room query=x=1 subprotocol=- remote={remote} headers=5")
    );
}

#[test]
fn a_plugin_that_cannot_be_loaded_fails_the_startup() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_host"))
        .args(["--listen", "127.0.0.1:0", "--plugin", "/nonexistent/plugin.wasm"])
        .env_remove("RUST_LOG")
        .output()
        .expect("cannot run the host binary");
    // A missing file is a configuration error (exit 2); an unloadable one exits 1.
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("host: error: "), "stderr: {stderr}");
    assert!(stderr.contains("/nonexistent/plugin.wasm"), "stderr: {stderr}");
}

// ---------------------------------------------------------------------------------
// Protocol violations: the close frame is the first thing the client receives (the
// echo plugin would otherwise have echoed the data), then the server closes TCP.
// ---------------------------------------------------------------------------------

fn assert_violation(frames: &[(u8, &[u8], bool)], expected_code: u16) {
    let server = Server::start("echo", &[]);
    let mut client = server.connect("/");
    for &(first, payload, masked) in frames {
        client.send_frame(first, payload, masked);
    }
    let (code, reason) = client.recv_close();
    assert_eq!(code, expected_code, "close reason {reason:?}");
    client.expect_eof();
}

#[test]
fn an_unmasked_frame_gets_1002() {
    assert_violation(&[(TEXT, b"hello", false)], 1002);
}

#[test]
fn a_reserved_opcode_gets_1002() {
    assert_violation(&[(0x83, b"hello", true)], 1002);
}

#[test]
fn the_rsv2_bit_gets_1002() {
    assert_violation(&[(0xA1, b"hello", true)], 1002);
}

#[test]
fn the_rsv1_bit_without_compression_gets_1002() {
    assert_violation(&[(0xC1, b"hello", true)], 1002);
}

#[test]
fn a_text_message_with_invalid_utf8_gets_1007() {
    assert_violation(&[(TEXT, b"hello \xC3\x28 world", true)], 1007);
}

#[test]
fn invalid_utf8_in_a_first_fragment_gets_1007_at_once() {
    assert_violation(&[(0x01, b"hello \xFF", true)], 1007);
}

#[test]
fn a_ping_with_a_126_byte_payload_gets_1002() {
    assert_violation(&[(PING, &[b'p'; 126], true)], 1002);
}

#[test]
fn a_fragmented_ping_gets_1002() {
    assert_violation(&[(0x09, b"ping", true)], 1002);
}

#[test]
fn a_continuation_without_a_start_gets_1002() {
    assert_violation(&[(0x80, b"hello", true)], 1002);
}

#[test]
fn a_new_message_inside_a_fragmented_one_gets_1002() {
    assert_violation(&[(0x01, b"hel", true), (TEXT, b"hello", true)], 1002);
}

#[test]
fn a_close_frame_with_code_1005_gets_1002() {
    assert_violation(&[(CLOSE, &close_payload(1005, ""), true)], 1002);
}

#[test]
fn a_close_frame_with_a_one_byte_payload_gets_1002() {
    assert_violation(&[(CLOSE, &[0x03], true)], 1002);
}

#[test]
fn a_close_reason_with_invalid_utf8_gets_1007() {
    assert_violation(&[(CLOSE, b"\x03\xE8bye \xFF", true)], 1007);
}

#[test]
fn a_text_message_ending_inside_a_character_gets_1007() {
    assert_violation(&[(0x01, b"ab", true), (0x80, b"\xE2\x82", true)], 1007);
}

#[test]
fn a_frame_longer_than_the_limit_gets_1009_before_its_payload() {
    let server = Server::start("echo", &["--max-payload-size", "1000000"]);
    let mut client = server.connect("/");
    // Only the header of a 1 GiB frame: the server must not wait for the payload.
    let mut header = vec![BINARY, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 30).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    client.send_raw(&header);
    assert_eq!(client.recv_close().0, 1009);
    client.expect_eof();
}

#[test]
fn a_64_bit_length_with_the_top_bit_set_gets_1002() {
    let server = Server::start("echo", &[]);
    let mut client = server.connect("/");
    let mut header = vec![BINARY, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 63 | 5).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    client.send_raw(&header);
    assert_eq!(client.recv_close().0, 1002);
    client.expect_eof();
}

#[test]
fn replies_to_earlier_messages_precede_the_close_of_a_violation() {
    let server = Server::start("echo", &[]);
    let mut client = server.connect("/");
    let mut bytes = twenty_numbered_messages();
    bytes.extend(encode_frame(TEXT, b"unmasked", None));
    client.send_raw(&bytes);
    for i in 0..20 {
        assert_eq!(client.recv_text(), format!("message {i}"));
    }
    assert_eq!(client.recv_close().0, 1002);
    client.expect_eof();
}

// ---------------------------------------------------------------------------------
// permessage-deflate
// ---------------------------------------------------------------------------------

/// The tail of a sync flush, removed from a message's compressed payload (RFC 7692 7.2.1).
const SYNC_TRAILER: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// The client's compressor, keeping its window from message to message.
struct Compressor(DeflateEncoder<Vec<u8>>);

impl Compressor {
    fn new() -> Self {
        Self(DeflateEncoder::new(Vec::new(), Compression::default()))
    }

    /// Compresses a message given in pieces: raw deflate, sync-flushed, trailer removed.
    fn compress<'a>(&mut self, pieces: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
        for piece in pieces {
            self.0.write_all(piece).unwrap();
        }
        self.0.flush().unwrap();
        let mut out = std::mem::take(self.0.get_mut());
        assert!(out.ends_with(&SYNC_TRAILER), "a sync flush ends with the trailer");
        out.truncate(out.len() - SYNC_TRAILER.len());
        out
    }
}

/// The client's decompressor, keeping its window from message to message.
struct Decompressor(DeflateDecoder<Vec<u8>>);

impl Decompressor {
    fn new() -> Self {
        Self(DeflateDecoder::new(Vec::new()))
    }

    fn decompress(&mut self, payload: &[u8]) -> Vec<u8> {
        self.0.write_all(payload).unwrap();
        self.0.write_all(&SYNC_TRAILER).unwrap();
        self.0.flush().unwrap();
        std::mem::take(self.0.get_mut())
    }
}

fn connect_with_deflate(server: &Server) -> Client {
    let (client, response) = Client::handshake(server.addr, "/", &[("Sec-WebSocket-Extensions", "permessage-deflate")]);
    assert_switched(&response);
    assert_eq!(response.header("sec-websocket-extensions"), Some("permessage-deflate"));
    client
}

#[test]
fn compressed_messages_are_inflated_and_echoed_compressed() {
    let server = Server::start("echo", &[]);
    let mut client = connect_with_deflate(&server);
    let mut compressor = Compressor::new();
    let mut decompressor = Decompressor::new();

    let message = "Hello, compressed world! ".repeat(20);
    // Twice: the second time both sides compress against the first message (context takeover).
    for round in 0..2 {
        let payload = compressor.compress([message.as_bytes()]);
        assert!(
            payload.len() < message.len() / 4,
            "round {round}: {} bytes",
            payload.len()
        );
        client.send_frame(COMPRESSED_TEXT, &payload, true);
        let (first, reply) = client.read_frame();
        assert_eq!(first, COMPRESSED_TEXT, "round {round}");
        assert_eq!(
            String::from_utf8(decompressor.decompress(&reply)).unwrap(),
            message,
            "round {round}"
        );
    }

    // Incompressible, and larger than one read or write.
    let data = pseudo_random_bytes(300_000);
    client.send_frame(COMPRESSED_BINARY, &compressor.compress([data.as_slice()]), true);
    let (first, reply) = client.read_frame();
    assert_eq!(first, COMPRESSED_BINARY);
    assert!(decompressor.decompress(&reply) == data, "binary echo differs");

    // An uncompressed message is allowed on a compressed connection; the reply is compressed.
    client.send_text("plain");
    let (first, reply) = client.read_frame();
    assert_eq!(first, COMPRESSED_TEXT);
    assert_eq!(decompressor.decompress(&reply), b"plain");
}

#[test]
fn a_compressed_message_may_be_fragmented() {
    let server = Server::start("echo", &[]);
    let mut client = connect_with_deflate(&server);
    let message = "fragmented and compressed ".repeat(40);
    let payload = Compressor::new().compress([message.as_bytes()]);
    let (head, rest) = payload.split_at(payload.len() / 3);
    let (middle, tail) = rest.split_at(rest.len() / 2);
    // RSV1 on the first frame only.
    client.send_frame(0x41, head, true);
    client.send_frame(0x00, middle, true);
    client.send_frame(0x80, tail, true);
    let (first, reply) = client.read_frame();
    assert_eq!(first, COMPRESSED_TEXT);
    assert_eq!(
        String::from_utf8(Decompressor::new().decompress(&reply)).unwrap(),
        message
    );
}

#[test]
fn no_context_takeover_is_negotiated_and_honoured() {
    let server = Server::start("echo", &[]);
    let offer = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
    let (mut client, response) = Client::handshake(server.addr, "/", &[("Sec-WebSocket-Extensions", offer)]);
    assert_switched(&response);
    assert_eq!(response.header("sec-websocket-extensions"), Some(offer));
    let message = "no context takeover ".repeat(10);
    // Every message is compressed and decompressed from a fresh state, on both sides.
    for round in 0..3 {
        client.send_frame(COMPRESSED_TEXT, &Compressor::new().compress([message.as_bytes()]), true);
        let (first, reply) = client.read_frame();
        assert_eq!(first, COMPRESSED_TEXT, "round {round}");
        assert_eq!(
            String::from_utf8(Decompressor::new().decompress(&reply)).unwrap(),
            message,
            "round {round}"
        );
    }
}

#[test]
fn no_compression_declines_permessage_deflate() {
    let server = Server::start("echo", &["--no-compression"]);
    let (mut client, response) =
        Client::handshake(server.addr, "/", &[("Sec-WebSocket-Extensions", "permessage-deflate")]);
    assert_switched(&response);
    assert_eq!(response.header("sec-websocket-extensions"), None);
    client.send_text("plain");
    assert_eq!(client.recv_text(), "plain");
    client.send_frame(COMPRESSED_TEXT, &Compressor::new().compress([b"x".as_slice()]), true);
    assert_eq!(client.recv_close().0, 1002);
    client.expect_eof();
}

#[test]
fn a_compression_bomb_gets_1009() {
    let server = Server::start("echo", &["--max-payload-size", "1048576"]);
    let mut client = connect_with_deflate(&server);
    let zeros = vec![0u8; 1 << 20];
    let bomb = Compressor::new().compress(std::iter::repeat_n(zeros.as_slice(), 50));
    assert!(bomb.len() < 1 << 20, "the bomb is {} bytes", bomb.len());
    client.send_frame(COMPRESSED_BINARY, &bomb, true);
    let (code, reason) = client.recv_close();
    assert_eq!(code, 1009, "close reason {reason:?}");
    client.expect_eof();

    // As the first fragment of a message that never ends: the limit must be enforced
    // while inflating, not only at the end of the message.
    let mut client = connect_with_deflate(&server);
    client.send_frame(0x42, &bomb, true);
    let (code, reason) = client.recv_close();
    assert_eq!(code, 1009, "close reason {reason:?}");
    client.expect_eof();
}

// ---------------------------------------------------------------------------------
// Size limit, closing handshake, subprotocols
// ---------------------------------------------------------------------------------

#[test]
fn max_payload_size_is_the_largest_message_accepted() {
    let server = Server::start("echo", &["--max-payload-size", "1000"]);

    let mut client = server.connect("/");
    let data = pseudo_random_bytes(1000);
    client.send_binary(&data);
    assert_eq!(client.recv_binary(), data);
    client.send_binary(&pseudo_random_bytes(1001));
    assert_eq!(client.recv_close().0, 1009);
    client.expect_eof();

    // The limit applies to the reassembled message.
    let mut client = server.connect("/");
    client.send_frame(0x02, &[1; 600], true);
    client.send_frame(0x80, &[2; 401], true);
    assert_eq!(client.recv_close().0, 1009);
    client.expect_eof();

    // And to the inflated message.
    let mut client = connect_with_deflate(&server);
    let mut compressor = Compressor::new();
    let mut decompressor = Decompressor::new();
    client.send_frame(COMPRESSED_TEXT, &compressor.compress([[b'a'; 1000].as_slice()]), true);
    let (first, reply) = client.read_frame();
    assert_eq!(first, COMPRESSED_TEXT);
    assert_eq!(decompressor.decompress(&reply), [b'a'; 1000]);
    client.send_frame(COMPRESSED_TEXT, &compressor.compress([[b'a'; 1001].as_slice()]), true);
    assert_eq!(client.recv_close().0, 1009);
    client.expect_eof();
}

#[test]
fn a_client_close_is_answered_and_the_server_closes_the_connection() {
    let server = Server::start("echo", &[]);
    let mut client = server.connect("/");
    client.send_close(1000, "bye");
    assert_eq!(client.recv_close().0, 1000);
    client.expect_eof();

    // A close frame without a status code is answered with one without a status code.
    let mut client = server.connect("/");
    client.send_frame(CLOSE, &[], true);
    assert_eq!(client.read_frame(), (CLOSE, vec![]));
    client.expect_eof();
}

#[test]
fn replies_to_earlier_messages_precede_the_answer_to_a_close() {
    // Autobahn case 7.1.1 in bulk: messages, then a close frame, in one write. The
    // plugin gets every message (the contract calls on-text for each one before
    // on-close), so its echoes must go out before the close frame that answers ours.
    let server = Server::start("echo", &[]);
    let mut client = server.connect("/");
    let mut bytes = twenty_numbered_messages();
    bytes.extend(encode_frame(CLOSE, &close_payload(1000, ""), Some([9, 9, 9, 9])));
    client.send_raw(&bytes);
    for i in 0..20 {
        assert_eq!(client.recv_text(), format!("message {i}"));
    }
    assert_eq!(client.recv_close().0, 1000);
    client.expect_eof();
}

#[test]
fn the_first_offered_subprotocol_the_server_speaks_is_selected() {
    let server = Server::start("probe", &["--subprotocol", "chat", "--subprotocol", "v2"]);
    let cases = [("v2, chat", Some("v2")), ("other, chat", Some("chat")), ("other", None)];
    for (offer, selected) in cases {
        let (mut client, response) = Client::handshake(server.addr, "/", &[("Sec-WebSocket-Protocol", offer)]);
        assert_switched(&response);
        assert_eq!(response.header("sec-websocket-protocol"), selected, "offer {offer:?}");
        expect_id(&mut client);
        client.send_text("whoami");
        let remote = client.stream.local_addr().unwrap();
        let selected = selected.unwrap_or("-");
        assert_eq!(
            client.recv_text(),
            format!("path=/ query=- subprotocol={selected} remote={remote} headers=6")
        );
    }
}

// ---------------------------------------------------------------------------------
// Probe plugin: every host import
// ---------------------------------------------------------------------------------

#[test]
fn observers_see_each_open_and_exactly_one_close() {
    let server = Server::start("probe", &[]);
    let (mut observer, observer_id) = open_probe(&server, "/observe");

    // (a) A normal closing handshake.
    let (mut a, a_id) = open_probe(&server, "/");
    assert_eq!(observer.recv_text(), format!("opened {a_id}"));
    a.send_close(1000, "bye");
    assert_eq!(a.recv_close().0, 1000);
    a.expect_eof();
    assert_eq!(observer.recv_text(), format!("closed {a_id} 1000 bye"));

    // (b) A protocol violation: the plugin hears the code the server closed with.
    let (mut b, b_id) = open_probe(&server, "/");
    assert_eq!(observer.recv_text(), format!("opened {b_id}"));
    b.send_frame(TEXT, b"bad \xFF", true);
    let (code, reason) = b.recv_close();
    assert_eq!(code, 1007);
    b.expect_eof();
    assert_eq!(observer.recv_text(), format!("closed {b_id} 1007 {reason}"));

    // (c) The TCP connection drops without a close frame.
    let (c, c_id) = open_probe(&server, "/");
    assert_eq!(observer.recv_text(), format!("opened {c_id}"));
    c.shutdown();
    let closed = observer.recv_text();
    assert!(closed.starts_with(&format!("closed {c_id} 1006 ")), "{closed:?}");

    // Nothing else was queued for the observer before the reply to this command:
    // no second `closed`, and no `opened` for the observer itself.
    assert_eq!(ask(&mut observer, "members observers"), observer_id.to_string());
    assert_eq!(ask(&mut observer, "conns"), "1");
}

#[test]
fn whoami_reports_the_handshake() {
    let server = Server::start("probe", &[]);
    let (mut client, response) = Client::handshake(
        server.addr,
        "/room?x=1",
        &[("X-Test", "yes"), ("User-Agent", "wsplug-tests")],
    );
    assert_switched(&response);
    expect_id(&mut client);
    let remote = client.stream.local_addr().unwrap();
    assert_eq!(
        ask(&mut client, "whoami"),
        format!("path=/room query=x=1 subprotocol=- remote={remote} headers=7")
    );

    let (mut plain, _) = open_probe(&server, "/");
    let remote = plain.stream.local_addr().unwrap();
    assert_eq!(
        ask(&mut plain, "whoami"),
        format!("path=/ query=- subprotocol=- remote={remote} headers=5")
    );
}

#[test]
fn probe_echoes_binary_and_text_that_is_not_a_command() {
    let server = Server::start("probe", &[]);
    let (mut client, _) = open_probe(&server, "/");
    client.send_binary(&[9, 8, 7]);
    assert_eq!(client.recv_binary(), [9, 8, 7]);
    assert_eq!(ask(&mut client, "hello there"), "hello there");
    assert_eq!(ask(&mut client, "close soon"), "close soon");
}

#[test]
fn broadcast_reaches_every_other_connection() {
    let server = Server::start("probe", &[]);
    let (mut a, _) = open_probe(&server, "/");
    let (mut b, _) = open_probe(&server, "/");
    let (mut c, _) = open_probe(&server, "/");

    // Had the sender received it, it would arrive before the reply.
    assert_eq!(ask(&mut a, "broadcast hello all"), "sent 2");
    assert_eq!(b.recv_text(), "hello all");
    assert_eq!(c.recv_text(), "hello all");
    assert_eq!(ask(&mut a, "conns"), "3");

    c.send_close(1000, "");
    assert_eq!(c.recv_close().0, 1000);
    c.expect_eof();
    assert_eq!(ask(&mut b, "broadcast again"), "sent 1");
    assert_eq!(a.recv_text(), "again");
    assert_eq!(ask(&mut b, "conns"), "2");
}

#[test]
fn groups_join_publish_list_and_leave() {
    let server = Server::start("probe", &[]);
    let (mut a, a_id) = open_probe(&server, "/");
    let (mut b, b_id) = open_probe(&server, "/");
    let (mut c, _) = open_probe(&server, "/");

    assert_eq!(ask(&mut a, "join room"), "ok");
    assert_eq!(ask(&mut b, "join room"), "ok");
    assert_eq!(ask(&mut a, "join room"), "ok");
    assert_eq!(ask(&mut c, "members room"), format!("{a_id} {b_id}"));
    assert_eq!(ask(&mut c, "members nowhere"), "");

    assert_eq!(ask(&mut a, "publish room hi room"), "sent 1");
    assert_eq!(b.recv_text(), "hi room");
    assert_eq!(ask(&mut c, "publish room from outside"), "sent 2");
    assert_eq!(a.recv_text(), "from outside");
    assert_eq!(b.recv_text(), "from outside");
    // c is not a member: the reply is the first thing it receives.
    assert_eq!(ask(&mut c, "conns"), "3");

    assert_eq!(ask(&mut a, "leave room"), "ok");
    assert_eq!(ask(&mut a, "leave room"), "ok");
    assert_eq!(ask(&mut c, "members room"), b_id.to_string());
    assert_eq!(ask(&mut c, "publish room only b"), "sent 1");
    assert_eq!(b.recv_text(), "only b");

    // A connection leaves its groups when it closes.
    b.send_close(1000, "");
    assert_eq!(b.recv_close().0, 1000);
    b.expect_eof();
    assert_eq!(ask(&mut c, "members room"), "");
    assert_eq!(ask(&mut c, "publish room nobody"), "sent 0");
    assert_eq!(ask(&mut a, "conns"), "2");
}

#[test]
fn send_to_reaches_a_connection_until_it_is_gone() {
    let server = Server::start("probe", &[]);
    let (mut a, a_id) = open_probe(&server, "/");
    let (mut b, b_id) = open_probe(&server, "/");

    assert_eq!(ask(&mut b, &format!("send-to {a_id} hi a")), "ok");
    assert_eq!(a.recv_text(), "hi a");
    // To itself: the message is queued before the reply.
    b.send_text(&format!("send-to {b_id} hi me"));
    assert_eq!(b.recv_text(), "hi me");
    assert_eq!(b.recv_text(), "ok");

    a.send_close(1000, "");
    assert_eq!(a.recv_close().0, 1000);
    a.expect_eof();
    assert_eq!(ask(&mut b, &format!("send-to {a_id} too late")), "error gone");
    assert_eq!(ask(&mut b, "send-to 999999 never was"), "error gone");
}

#[test]
fn a_plugin_close_sends_its_code_and_reason() {
    let server = Server::start("probe", &[]);
    let (mut observer, _) = open_probe(&server, "/observe");
    let (mut client, id) = open_probe(&server, "/");
    assert_eq!(observer.recv_text(), format!("opened {id}"));

    client.send_text("close 4001 done");
    assert_eq!(client.recv_close(), (4001, "done".to_owned()));
    client.send_close(4001, "done");
    client.expect_eof();
    assert_eq!(observer.recv_text(), format!("closed {id} 4001 done"));
}

#[test]
fn a_plugin_close_with_an_invalid_code_or_long_reason_is_refused() {
    let server = Server::start("probe", &[]);
    let (mut client, _) = open_probe(&server, "/");
    assert_eq!(ask(&mut client, "close 1005 x"), "error invalid-code");
    assert_eq!(ask(&mut client, "close 1006 x"), "error invalid-code");
    assert_eq!(ask(&mut client, "close 999 x"), "error invalid-code");
    assert_eq!(
        ask(&mut client, &format!("close 4000 {}", "r".repeat(124))),
        "error reason-too-long"
    );
    assert_eq!(ask(&mut client, "conns"), "1");

    // 123 bytes is the longest reason.
    let reason = "r".repeat(123);
    client.send_text(&format!("close 4000 {reason}"));
    assert_eq!(client.recv_close(), (4000, reason));
    client.send_close(4000, "");
    client.expect_eof();
}

#[test]
fn log_writes_to_the_server_log() {
    let server = Server::start("probe", &[]);
    let (mut client, _) = open_probe(&server, "/");
    assert_eq!(ask(&mut client, "log probe says 7f3a9c"), "ok");
    server.wait_for_log("probe says 7f3a9c");
}

/// Twenty masked text frames, `message 0` to `message 19`, in one buffer.
fn twenty_numbered_messages() -> Vec<u8> {
    (0..20u8)
        .flat_map(|i| encode_frame(TEXT, format!("message {i}").as_bytes(), Some([i, 1, 2, 3])))
        .collect()
}
