//! End-to-end tests of the settings: the real `host` binary, configured by
//! flags and by a TOML file, with the `echo` and `probe` plugins.
//!
//! - Bad settings stop the start with status 2 and one `host: error:` line; `--help`
//!   lists every flag; a config file works and flags override it.
//! - Timeouts (handshake, idle ping, unanswered ping), the default message limit, a slow
//!   reader dropped with 1008 while others stay fast.
//! - WSS with a combined PEM, separate files, an encrypted key (and a wrong passphrase),
//!   and client certificates.
//! - Allowed origins, the connection limit, static files, graceful shutdown, prod mode
//!   and IPv6.
//!
//! Build the plugins first (`make plugins`). Every server gets its own compile cache in
//! a fresh temp dir. The tests take turns (see [`exclusive`] and [`shared`]): those that
//! measure times run alone, since on a 2-core machine they would otherwise measure the
//! other tests too; the others run side by side.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv6Addr, TcpListener};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::tls::{Pki, tls_stream};
use common::*;

/// Close code of a message past `max_payload_size`.
const MESSAGE_TOO_BIG: u16 = 1009;
/// Close code of a reader that let its outbound queue overflow.
const POLICY_VIOLATION: u16 = 1008;
/// Close code the server sends when it shuts down.
const GOING_AWAY: u16 = 1001;
/// What `on-close` reports for a connection that ended without a closing handshake.
const ABNORMAL: u16 = 1006;

/// Starts a server with `plugin` and its own compile cache.
fn start(plugin: &str, args: &[&str]) -> Server {
    Server::start_isolated(&plugin_path(plugin), args)
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("path is not UTF-8")
}

/// Sends `text` and expects it back (echo, and probe for text that is no command).
fn echo<S: Transport>(client: &mut Client<S>, text: &str) {
    client.send_text(text);
    assert_eq!(client.recv_text(), text);
}

/// Sends a binary message and expects it back byte for byte.
fn echo_binary(client: &mut Client, data: &[u8]) {
    client.send_binary(data);
    let back = client.recv_binary();
    assert!(
        back == data,
        "echo of {} bytes came back as {} other bytes",
        data.len(),
        back.len()
    );
}

/// Reads the next text message, answering the server's pings on the way (as every
/// WebSocket client does); returns the text and how many pings were answered.
fn recv_text_answering_pings(client: &mut Client) -> (String, usize) {
    let mut pings = 0;
    loop {
        let (first, payload) = client.read_frame();
        match first {
            PING => {
                client.send_frame(PONG, &payload, true);
                pings += 1;
            }
            TEXT => return (String::from_utf8(payload).expect("text is not UTF-8"), pings),
            _ => panic!("expected a text message or a ping, got first byte {first:#04x}"),
        }
    }
}

/// Sends a close frame with `code`, expects the server's answer with the same code and
/// the end of the connection.
fn close_cleanly(client: &mut Client, code: u16) {
    client.send_close(code, "");
    assert_eq!(client.recv_close().0, code);
    client.expect_eof();
}

/// Sends `bytes` and expects a close frame with `code`, then the end of the connection.
fn expect_close_after(client: &mut Client, bytes: &[u8], code: u16) {
    client.send_raw(bytes);
    assert_eq!(client.recv_close().0, code);
    client.expect_eof();
}

/// A masked text frame of `len` bytes.
fn text_frame(len: usize) -> Vec<u8> {
    encode_frame(TEXT, &"a".repeat(len).into_bytes(), Some([1, 2, 3, 4]))
}

// ---------------------------------------------------------------------------------
// Configuration errors, --help, the config file
// ---------------------------------------------------------------------------------

/// How long a start that must fail may take (it fails before loading the plugin, or
/// while reading it).
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(30);

/// Asserts that `host <args>` exits with status 2, prints nothing on stdout and exactly
/// one line on stderr, `host: error: ...`, that contains every one of `needles` and no
/// panic or backtrace.
fn assert_config_error(args: &[&str], needles: &[&str]) {
    let exit = run_host(args, REFUSAL_TIMEOUT);
    let context = format!("host {args:?} wrote {exit:?}");
    assert_eq!(exit.status.code(), Some(2), "{context}");
    assert_eq!(exit.stdout, "", "{context}");
    let lines: Vec<&str> = exit.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr; {context}");
    assert!(lines[0].starts_with("host: error: "), "{context}");
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "the error does not mention {needle:?}; {context}"
        );
    }
    let lower = exit.stderr.to_lowercase();
    for word in ["panicked", "backtrace"] {
        assert!(!lower.contains(word), "{context}");
    }
}

/// The arguments of a start that would succeed but for `extra`.
fn with_plugin(cache: &TempDir, extra: &[&'static str]) -> Vec<String> {
    let mut args: Vec<String> = ["--listen", "127.0.0.1:0", "--cache-dir", cache.arg(), "--plugin"]
        .map(String::from)
        .into();
    args.push(path_arg(&plugin_path("echo")).to_owned());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn invalid_flags_exit_2_with_one_error_line_naming_key_value_and_what_is_allowed() {
    let _turn = shared();
    let cache = TempDir::new("cache");
    let cases: [(&[&str], &[&str]); 4] = [
        (&["--timeout", "0"], &["timeout", "= 0", "1 to 3600 seconds"]),
        (
            &["--max-payload-size", "0"],
            &["max_payload_size", "= 0", "1 to 4294967296 bytes"],
        ),
        (&["--ssl", "true"], &["ssl = true", "cert_file"]),
        (&["--write-masked", "true"], &["write_masked", "true", "RFC 6455"]),
    ];
    for (extra, needles) in cases {
        assert_config_error(&strs(&with_plugin(&cache, extra)), needles);
    }
    // The listening address, given once (the helper's own --listen is left out).
    let echo = plugin_path("echo");
    assert_config_error(
        &[
            "--listen",
            "nowhere",
            "--cache-dir",
            cache.arg(),
            "--plugin",
            path_arg(&echo),
        ],
        &["listen", "nowhere", "ADDRESS:PORT"],
    );
    // No plugin at all.
    assert_config_error(
        &["--listen", "127.0.0.1:0", "--cache-dir", cache.arg()],
        &["plugin", "--plugin FILE"],
    );
}

/// For each (TOML text, needles): a config file holding the text stops the start with
/// one error line containing every needle (see `assert_config_error`).
fn assert_config_file_errors(dir: &TempDir, cases: &[(&str, &[&str])]) {
    for (i, (toml, needles)) in cases.iter().enumerate() {
        let file = dir.join(&format!("case{i}.toml"));
        std::fs::write(&file, toml).unwrap();
        let mut args = with_plugin(dir, &[]);
        args.extend(["--config".to_owned(), path_arg(&file).to_owned()]);
        assert_config_error(&strs(&args), needles);
    }
}

#[test]
fn refused_keys_in_a_config_file_exit_2_with_one_error_line() {
    let _turn = shared();
    let dir = TempDir::new("config");
    let cases: [(&str, &[&str]); 3] = [
        ("write_masked = true\n", &["write_masked", "true", "RFC 6455"]),
        ("ssl = true\n", &["ssl = true", "cert_file"]),
        ("timeout = 0\n", &["timeout", "= 0", "1 to 3600 seconds"]),
    ];
    assert_config_file_errors(&dir, &cases);
}

#[test]
fn a_config_file_with_an_unknown_key_or_a_wrong_type_exits_2_with_one_error_line() {
    let _turn = shared();
    let dir = TempDir::new("config");
    let cases: [(&str, &[&str]); 2] = [
        // The key, and what is allowed: the known keys.
        ("max_payload = 1000\n", &["max_payload", "max_payload_size", "config"]),
        ("timeout = \"soon\"\n", &["timeout", "soon", "expected"]),
    ];
    assert_config_file_errors(&dir, &cases);
}

#[test]
fn a_missing_plugin_file_exits_2_with_one_error_line() {
    let _turn = shared();
    let cache = TempDir::new("cache");
    assert_config_error(
        &[
            "--listen",
            "127.0.0.1:0",
            "--cache-dir",
            cache.arg(),
            "--plugin",
            "/nonexistent/plugin.wasm",
        ],
        &["plugin", "/nonexistent/plugin.wasm", "No such file"],
    );
}

#[test]
fn help_lists_every_flag() {
    let _turn = shared();
    let exit = run_host(&["--help"], REFUSAL_TIMEOUT);
    assert_eq!(exit.status.code(), Some(0), "{exit:?}");
    let flags = [
        "--config",
        "--listen",
        "--plugin",
        "--timeout",
        "--handshake-timeout",
        "--idle-timeout",
        "--close-timeout",
        "--max-payload-size",
        "--max-messages-buffering",
        "--max-buffered-bytes",
        "--max-connections",
        "--allowed-origin",
        "--subprotocol",
        "--compression",
        "--no-compression",
        "--server-max-window-bits",
        "--client-max-window-bits",
        "--compression-level",
        "--ssl",
        "--cert-file",
        "--key-file",
        "--passphrase",
        "--client-ca-file",
        "--prod",
        "--static",
        "--shutdown-grace",
        "--plugin-deadline-ms",
        "--plugin-memory-mib",
        "--plugin-queue",
        "--plugin-dir",
        "--cache-dir",
        "--cache",
        "--no-cache",
        "--watch",
        "--no-watch",
        "--log",
        "--help",
        "--version",
    ];
    let listed: Vec<&str> = exit
        .stdout
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|word| word.starts_with("--"))
        .collect();
    let missing: Vec<&str> = flags.iter().copied().filter(|flag| !listed.contains(flag)).collect();
    assert!(missing.is_empty(), "--help does not list {missing:?}:\n{}", exit.stdout);
}

#[test]
fn a_config_file_sets_max_payload_size_and_a_flag_overrides_it() {
    let _turn = shared();
    let dir = TempDir::new("config");
    let file = dir.join("wsplug.toml");
    std::fs::write(&file, "# a comment\nmax_payload_size = 1000\n").unwrap();

    let server = start("echo", &["--config", path_arg(&file)]);
    let mut client = server.connect("/");
    echo(&mut client, &"a".repeat(1000));
    expect_close_after(&mut client, &text_frame(1001), MESSAGE_TOO_BIG);
    drop(server);

    let server = start("echo", &["--config", path_arg(&file), "--max-payload-size", "2000"]);
    let mut client = server.connect("/");
    echo(&mut client, &"a".repeat(1001));
    echo(&mut client, &"a".repeat(2000));
    expect_close_after(&mut client, &text_frame(2001), MESSAGE_TOO_BIG);
}

#[test]
fn the_default_max_payload_size_is_512_kib() {
    let _turn = shared();
    let server = start("echo", &[]);
    let mut client = server.connect("/");
    echo_binary(&mut client, &pseudo_random_bytes(500 * 1024));
    echo_binary(&mut client, &pseudo_random_bytes(512 * 1024));
    let too_big = encode_frame(BINARY, &pseudo_random_bytes(600 * 1024), Some([9, 8, 7, 6]));
    expect_close_after(&mut client, &too_big, MESSAGE_TOO_BIG);
}

// ---------------------------------------------------------------------------------
// Timeouts
// ---------------------------------------------------------------------------------

#[test]
fn timeouts_close_half_handshakes_and_unanswered_pings_but_spare_live_clients() {
    let _turn = exclusive();
    let server = start("probe", &["--timeout", "1"]);

    // Half a handshake, then silence: the server hangs up after about 1 s.
    let mut half = Client::open(server.addr);
    let sent = Instant::now();
    half.send_raw(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n");
    half.expect_eof();
    let handshake_closed = sent.elapsed();
    assert!(
        (Duration::from_millis(800)..Duration::from_secs(3)).contains(&handshake_closed),
        "the half handshake was dropped after {handshake_closed:?}, expected about 1 s"
    );

    let (mut observer, _) = open_probe(&server, "/observe");
    let silent_opened = Instant::now();
    let (mut silent, silent_id) = open_probe(&server, "/");
    let (mut live, live_id) = open_probe(&server, "/");

    // The live client answers 3 pings, one per idle period, then echoes.
    let live_thread = thread::spawn(move || {
        let opened = Instant::now();
        let mut pings = 0;
        while pings < 3 {
            let (first, payload) = live.read_frame();
            assert_eq!(first, PING, "the live client got something else than a ping");
            live.send_frame(PONG, &payload, true);
            pings += 1;
        }
        echo(&mut live, "still here");
        (live, pings, opened.elapsed())
    });

    // The silent client is pinged after about 1 s and, as it does not answer, sent a
    // close frame and dropped.
    let silent_thread = thread::spawn(move || {
        let (first, _) = silent.read_frame();
        assert_eq!(first, PING, "expected a ping");
        let pinged = silent_opened.elapsed();
        assert_eq!(silent.recv_close().0, GOING_AWAY);
        silent.expect_eof();
        (pinged, silent_opened.elapsed())
    });

    // Meanwhile the observer, which answers pings, hears of the silent client's end.
    let mut heard = Vec::new();
    loop {
        let (text, _) = recv_text_answering_pings(&mut observer);
        if text.starts_with("closed ") {
            assert!(
                text.starts_with(&format!("closed {silent_id} {ABNORMAL} ")),
                "the observer heard {text:?} (and before: {heard:?})"
            );
            break;
        }
        heard.push(text);
    }
    assert_eq!(heard, [format!("opened {silent_id}"), format!("opened {live_id}")]);

    let (pinged, dropped) = silent_thread.join().expect("the silent client failed");
    assert!(
        (Duration::from_millis(800)..Duration::from_millis(2500)).contains(&pinged),
        "the silent client was pinged after {pinged:?}, expected about 1 s"
    );
    assert!(
        dropped < Duration::from_secs(5),
        "the silent client was dropped after {dropped:?}"
    );
    // Kept open (not dropped) until the observer has counted it.
    let (_live, pings, open_for) = live_thread.join().expect("the live client failed");
    assert!(
        open_for > Duration::from_millis(2500),
        "3 pings came within {open_for:?}: the idle timeout is 1 s"
    );
    observer.send_text("conns");
    let (conns, _) = recv_text_answering_pings(&mut observer);
    assert_eq!(conns, "2", "the observer and the live client should be open");
    eprintln!(
        "half handshake dropped after {handshake_closed:?}; silent client pinged after {pinged:?}, \
         dropped after {dropped:?}; live client answered {pings} pings in {open_for:?}"
    );
}

// ---------------------------------------------------------------------------------
// A slow reader
// ---------------------------------------------------------------------------------

/// The `q`-quantile of `samples` (nearest rank).
fn quantile(samples: &[Duration], q: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[test]
fn a_reader_that_lets_its_queue_overflow_is_dropped_and_spares_the_others() {
    let _turn = exclusive();
    let mut server = start("probe", &[]);
    let (mut observer, _) = open_probe(&server, "/observe");
    let (mut other, other_id) = open_probe(&server, "/");
    assert_eq!(observer.recv_text(), format!("opened {other_id}"));
    let (mut flooder, flooder_id) = open_probe(&server, "/");
    assert_eq!(observer.recv_text(), format!("opened {flooder_id}"));
    for i in 0..20 {
        echo(&mut other, &format!("warm-up {i}"));
    }
    let rss_before = server.rss_kib();

    // 100 MB if the server kept it all; the probe stops at the first refused send.
    flooder.send_text("flood 100000 1000");
    let flood_sent = Instant::now();
    let mut round_trips = Vec::new();
    for i in 0..50 {
        let message = format!("echo {i} {}", "y".repeat(100));
        let start = Instant::now();
        echo(&mut other, &message);
        round_trips.push(start.elapsed());
    }
    // The flooder never read: what its socket holds, then a 1008 close frame ahead of
    // the rest of its queue, then the end of the connection.
    let mut received = 0;
    let (code, reason) = loop {
        let (first, payload) = flooder.read_frame();
        match first {
            TEXT => received += 1,
            CLOSE => break (u16::from_be_bytes([payload[0], payload[1]]), payload[2..].to_vec()),
            other => panic!("unexpected frame {other:#x} after {received} messages"),
        }
    };
    assert_eq!(
        code,
        POLICY_VIOLATION,
        "close reason {:?}",
        String::from_utf8_lossy(&reason)
    );
    assert!(received < 100_000, "the whole flood was kept for the slow reader");
    flooder.expect_eof();
    let closed = observer.recv_text();
    let dropped_after = flood_sent.elapsed();
    assert!(
        closed.starts_with(&format!("closed {flooder_id} {POLICY_VIOLATION} ")),
        "the observer heard {closed:?}"
    );
    let rss_after = server.rss_kib();
    server.assert_running();
    echo(&mut other, "after the flood");

    let p50 = quantile(&round_trips, 0.5);
    let p99 = quantile(&round_trips, 0.99);
    eprintln!(
        "flooder dropped after {dropped_after:?}; RSS {rss_before} KiB before, {rss_after} KiB after; \
         other client's round trips p50 {p50:?}, p99 {p99:?}"
    );
    assert!(
        rss_after < rss_before + 50 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert!(
        p99 < Duration::from_millis(200),
        "p99 round trip {p99:?}: {round_trips:?}"
    );
}

// ---------------------------------------------------------------------------------
// WSS
// ---------------------------------------------------------------------------------

/// Starts an echo server with `--ssl true` and `args`, opens a WebSocket over TLS and
/// echoes over it.
fn assert_wss_echoes(args: &[&str]) {
    let pki = Pki::new();
    let args: Vec<String> = args
        .iter()
        .map(|arg| match arg.strip_prefix("pki:") {
            Some(name) => path_arg(&pki.path(name)).to_owned(),
            None => arg.to_string(),
        })
        .collect();
    let mut all = vec!["--ssl", "true"];
    all.extend(strs(&args));
    let server = start("echo", &all);
    assert_eq!(server.scheme, "wss");
    let mut client = Client::over(tls_stream(server.addr, pki.client_config(false)));
    client.upgrade("/");
    echo(&mut client, "over TLS");
    echo(&mut client, &"b".repeat(100_000));
}

#[test]
fn wss_with_the_certificate_chain_and_key_in_one_file() {
    let _turn = shared();
    assert_wss_echoes(&["--cert-file", "pki:combined.pem"]);
}

#[test]
fn wss_with_the_certificate_and_key_in_two_files() {
    let _turn = shared();
    assert_wss_echoes(&["--cert-file", "pki:server.pem", "--key-file", "pki:server-key.pem"]);
}

#[test]
fn wss_with_an_encrypted_key_and_its_passphrase() {
    let _turn = shared();
    assert_wss_echoes(&[
        "--cert-file",
        "pki:server.pem",
        "--key-file",
        "pki:server-key-encrypted.pem",
        "--passphrase",
        "secret",
    ]);
}

#[test]
fn a_wrong_passphrase_stops_the_start_with_one_error_line() {
    let _turn = shared();
    let pki = Pki::new();
    let cache = TempDir::new("cache");
    let key = pki.path("server-key-encrypted.pem");
    let cert = pki.path("server.pem");
    let echo = plugin_path("echo");
    let exit = run_host(
        &[
            "--listen",
            "127.0.0.1:0",
            "--cache-dir",
            cache.arg(),
            "--plugin",
            path_arg(&echo),
            "--ssl",
            "true",
            "--cert-file",
            path_arg(&cert),
            "--key-file",
            path_arg(&key),
            "--passphrase",
            "not the secret",
        ],
        REFUSAL_TIMEOUT,
    );
    assert!(!exit.status.success(), "{exit:?}");
    assert!(!exit.stdout.contains("listening"), "{exit:?}");
    let errors: Vec<&str> = exit.stderr.lines().filter(|l| l.starts_with("host: error: ")).collect();
    assert_eq!(errors.len(), 1, "{exit:?}");
    assert!(errors[0].contains("wrong passphrase"), "{exit:?}");
    assert!(errors[0].contains(path_arg(&key)), "{exit:?}");
    let lower = exit.stderr.to_lowercase();
    assert!(!lower.contains("panicked") && !lower.contains("backtrace"), "{exit:?}");
}

/// Sends an upgrade request over `stream` and reads what comes back until the end of
/// the response head, the end of the stream or an error; returns the text and the error.
fn try_upgrade<S: Read + Write>(stream: &mut S) -> (String, Option<std::io::Error>) {
    let mut received = Vec::new();
    let error = match stream.write_all(upgrade_request("/", &[]).as_bytes()) {
        Err(error) => Some(error),
        Ok(()) => loop {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk) {
                Ok(0) => break None,
                Ok(n) => {
                    received.extend_from_slice(&chunk[..n]);
                    if received.windows(4).any(|w| w == b"\r\n\r\n") {
                        break None;
                    }
                }
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) => break Some(error),
            }
        },
    };
    (String::from_utf8_lossy(&received).into_owned(), error)
}

#[test]
fn with_a_client_ca_only_clients_with_a_certificate_it_signed_get_in() {
    let _turn = shared();
    let pki = Pki::new();
    let server = start(
        "echo",
        &[
            "--ssl",
            "true",
            "--cert-file",
            path_arg(&pki.path("combined.pem")),
            "--client-ca-file",
            path_arg(&pki.path("ca.pem")),
        ],
    );

    let mut anonymous = tls_stream(server.addr, pki.client_config(false));
    anonymous.get_ref().set_read_timeout(Some(TIMEOUT)).unwrap();
    let (received, error) = try_upgrade(&mut anonymous);
    assert!(
        !received.starts_with("HTTP/1.1 101"),
        "a client without a certificate was upgraded: {received:?}"
    );
    if let Some(error) = &error {
        assert!(
            !matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "the server neither refused nor answered the client without a certificate"
        );
    }

    let mut client = Client::over(tls_stream(server.addr, pki.client_config(true)));
    client.upgrade("/");
    echo(&mut client, "with a certificate");
    eprintln!("without a certificate: received {received:?}, error {error:?}");
}

// ---------------------------------------------------------------------------------
// Origins and the connection limit
// ---------------------------------------------------------------------------------

#[test]
fn only_allowed_origins_may_connect() {
    let _turn = shared();
    let server = start("echo", &["--allowed-origin", "https://good.example"]);
    let (mut client, response) = Client::handshake(server.addr, "/", &[("Origin", "https://good.example")]);
    assert_switched(&response);
    echo(&mut client, "good");

    for origin in [Some("https://evil.example"), Some("https://good.example.evil"), None] {
        let extra: Vec<(&str, &str)> = origin.map(|o| ("Origin", o)).into_iter().collect();
        let request = upgrade_request("/", &extra);
        let response = http_request(server.addr, request.as_bytes());
        assert_eq!(response.status, 403, "origin {origin:?}: {response:?}");
    }
}

#[test]
fn past_max_connections_handshakes_get_503_until_one_closes() {
    let _turn = shared();
    let server = start("echo", &["--max-connections", "2"]);
    let mut first = server.connect("/");
    echo(&mut first, "first");
    let mut second = server.connect("/");
    echo(&mut second, "second");

    let response = http_request(server.addr, upgrade_request("/", &[]).as_bytes());
    assert_eq!(response.status, 503, "{response:?}");

    close_cleanly(&mut first, 1000);
    let mut third = server.connect("/");
    echo(&mut third, "third");
    echo(&mut second, "second still open");
    let response = http_request(server.addr, upgrade_request("/", &[]).as_bytes());
    assert_eq!(response.status, 503, "{response:?}");
}

#[test]
fn simultaneous_handshakes_never_exceed_max_connections() {
    let _turn = shared();
    let server = start("echo", &["--max-connections", "2"]);
    let request = upgrade_request("/", &[]);
    // The race is narrow: try it for a while, from no connection open each time.
    let start = Instant::now();
    for round in 0.. {
        if start.elapsed() > Duration::from_secs(3) {
            eprintln!("{round} rounds, never more than 2 connections");
            break;
        }
        let mut clients: Vec<Client> = (0..20).map(|_| Client::open(server.addr)).collect();
        for client in &mut clients {
            client.send_raw(request.as_bytes());
        }
        let statuses: Vec<u16> = clients.iter_mut().map(|c| c.read_response().status).collect();
        assert!(
            statuses.iter().all(|&s| s == 101 || s == 503),
            "round {round}: {statuses:?}"
        );
        for (client, _) in clients.iter_mut().zip(&statuses).filter(|(_, s)| **s == 101) {
            close_cleanly(client, 1000);
        }
        let upgraded = statuses.iter().filter(|&&s| s == 101).count();
        assert_eq!(upgraded, 2, "round {round}: {statuses:?}");
    }
}

// ---------------------------------------------------------------------------------
// Static files
// ---------------------------------------------------------------------------------

/// Sends a plain HTTP request; returns the response, with its body.
fn get(server: &Server, method: &str, target: &str) -> Response {
    let request = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n");
    http_request(server.addr, request.as_bytes())
}

#[test]
fn static_files_are_served_and_paths_that_leave_the_directory_are_refused() {
    let _turn = shared();
    let base = TempDir::new("static");
    let site = base.join("site");
    std::fs::create_dir_all(site.join("sub")).unwrap();
    let index = "<!doctype html><title>wsplug</title><p>index 5d1f</p>\n";
    let app = "console.log('app 9c2e');\n";
    let sub_index = "<p>sub 77aa</p>\n";
    let secret = "SECRET 0b8e4c\n";
    std::fs::write(site.join("index.html"), index).unwrap();
    std::fs::write(site.join("app.js"), app).unwrap();
    std::fs::write(site.join("sub/index.html"), sub_index).unwrap();
    std::fs::write(base.join("secret.txt"), secret).unwrap();
    std::os::unix::fs::symlink(base.join("secret.txt"), site.join("link.txt")).unwrap();
    std::os::unix::fs::symlink(base.path(), site.join("up")).unwrap();

    let server = start("echo", &["--static", path_arg(&site)]);

    let response = get(&server, "GET", "/");
    assert_eq!(response.status, 200, "{response:?}");
    assert!(
        response.header("content-type").unwrap().starts_with("text/html"),
        "{response:?}"
    );
    assert_eq!(String::from_utf8_lossy(&response.body), index);

    let response = get(&server, "GET", "/sub/");
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(String::from_utf8_lossy(&response.body), sub_index);

    // HEAD: the head of a GET, and no body (the connection ends after the head).
    let mut client = Client::open(server.addr);
    client.send_raw(b"HEAD /app.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let response = client.read_response();
    assert_eq!(response.status, 200, "{response:?}");
    assert!(
        response.header("content-type").unwrap().starts_with("text/javascript"),
        "{response:?}"
    );
    assert_eq!(response.header("content-length"), Some(app.len().to_string().as_str()));
    client.expect_eof();
    assert_eq!(String::from_utf8_lossy(&get(&server, "GET", "/app.js").body), app);

    assert_eq!(get(&server, "GET", "/missing").status, 404);
    let response = get(&server, "POST", "/");
    assert_eq!(response.status, 405, "{response:?}");
    assert!(!String::from_utf8_lossy(&response.body).contains("index"));

    for target in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/sub/..%2f..%2fsecret.txt",
        "/sub/%2E%2E/%2e%2e/secret.txt",
        "/link.txt",
        "/up/secret.txt",
    ] {
        let response = get(&server, "GET", target);
        assert!(
            [400, 403].contains(&response.status),
            "{target} got {}",
            response.status
        );
        assert!(
            !String::from_utf8_lossy(&response.body).contains("SECRET"),
            "{target} leaked the secret"
        );
    }
    assert_eq!(get(&server, "GET", "/link.txt").status, 403);
    assert_eq!(get(&server, "GET", "/../secret.txt").status, 403);

    let mut client = server.connect("/");
    echo(&mut client, "WebSocket on the same port");
}

// ---------------------------------------------------------------------------------
// Graceful shutdown, prod mode, IPv6
// ---------------------------------------------------------------------------------

#[test]
fn sigterm_closes_every_connection_with_1001_and_exits_0_after_every_on_close() {
    let _turn = shared();
    let mut server = start("probe", &["--shutdown-grace", "5"]);
    let clients: Vec<(Client, u64)> = (0..5).map(|_| open_probe(&server, "/")).collect();
    let sent = Instant::now();
    server.terminate();
    let mut ids = Vec::new();
    // Like any client: answer the close, and close the socket once the server has.
    for (mut client, id) in clients {
        let (code, reason) = client.recv_close();
        assert_eq!(code, GOING_AWAY, "connection {id} closed with {code} {reason:?}");
        client.send_close(GOING_AWAY, "");
        client.expect_eof();
        ids.push(id);
    }
    let status = server.wait_exit(Duration::from_secs(8));
    let exited = sent.elapsed();
    assert!(status.success(), "the server exited with {status}");
    assert!(exited < Duration::from_secs(5), "the server took {exited:?} to exit");
    let log = server.log();
    assert!(!log.contains("grace period over"), "{log}");
    for id in &ids {
        let line = format!("on-close {id} {GOING_AWAY}");
        assert!(log.contains(&line), "no {line:?} in the log:\n{log}");
    }
    eprintln!("exited {exited:?} after SIGTERM");
}

#[test]
fn in_prod_error_bodies_are_the_status_phrase_and_otherwise_say_what_was_wrong() {
    let _turn = shared();
    let request = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Version: 13\r\n\r\n";

    let server = start("echo", &[]);
    let response = http_request(server.addr, request.as_bytes());
    assert_eq!(response.status, 400);
    assert_eq!(String::from_utf8_lossy(&response.body).trim_end(), "Bad Request");
    drop(server);

    let server = start("echo", &["--prod", "false"]);
    let response = http_request(server.addr, request.as_bytes());
    assert_eq!(response.status, 400);
    let body = String::from_utf8_lossy(&response.body);
    assert!(body.contains("Sec-WebSocket-Key"), "body: {body:?}");
}

#[test]
fn the_server_listens_and_echoes_on_ipv6() {
    let _turn = shared();
    if let Err(error) = TcpListener::bind("[::1]:0") {
        eprintln!("SKIPPED the_server_listens_and_echoes_on_ipv6: no IPv6 loopback here ({error})");
        return;
    }
    let server = start("echo", &["--listen", "[::1]:0"]);
    assert_eq!(server.scheme, "ws");
    assert_eq!(server.addr.ip(), Ipv6Addr::LOCALHOST);
    assert_ne!(server.addr.port(), 0);
    let mut client = server.connect("/");
    assert!(client.stream.local_addr().unwrap().is_ipv6());
    echo(&mut client, "over IPv6");
}

/// Every default that `--help` states as a number or a boolean is the one the host
/// uses: giving the flag that value yields the same configuration as leaving it out.
/// (Defaults that are words, such as "timeout" or "one per core", are not checked.)
#[test]
fn every_default_the_help_states_is_the_one_the_host_uses() {
    use clap::{CommandFactory, Parser};
    use wsplug::config::Options;

    let plugin = plugin_path("echo");
    // The cluster's settings need a cluster (only named: nothing connects to it here).
    let configured = |extra: &[&str], clustered: bool| {
        let mut args = vec!["host", "--plugin", path_arg(&plugin)];
        if clustered {
            args.extend(["--cluster", "redis://127.0.0.1:1"]);
        }
        args.extend(extra);
        let options = Options::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        format!("{:?}", options.validate().unwrap_or_else(|e| panic!("{args:?}: {e}")))
    };
    let mut checked = Vec::new();
    for arg in Options::command().get_arguments() {
        let (Some(long), Some(help)) = (arg.get_long(), arg.get_help()) else {
            continue;
        };
        let help = help.to_string();
        let Some((_, rest)) = help.split_once("[default: ") else {
            continue;
        };
        let value = rest.split(']').next().unwrap_or_default();
        if value.parse::<u64>().is_err() && value != "true" && value != "false" {
            continue;
        }
        let flag = format!("--{long}");
        let clustered = long.starts_with("cluster-");
        assert_eq!(
            configured(&[&flag, value], clustered),
            configured(&[], clustered),
            "{flag}: --help says the default is {value}, and the host uses another"
        );
        checked.push(flag);
    }
    // Enough of them to mean something: timeouts, sizes, limits, switches.
    assert!(checked.len() >= 20, "only {checked:?}");
}
