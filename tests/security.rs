//! The security model (README, "Security model"): each rule shown the way it breaks,
//! against the real `host` binary: raw clients that misbehave, keys made by `openssl`,
//! files and directories as another user would find them, and (rules 1 to 4) a
//! `redis-server` of the test's own that the test stops, pauses, restarts and writes
//! to as an attacker with access to it would.
//!
//! 1. One host number, one host: a directed message reaches only the connection it named.
//! 2. No client can grow the cluster's shared state without bound.
//! 3. Redis is not a trusted party: TLS, a password file, messages authenticated.
//! 4. Credentials do not leave the host.
//! 5. Internals are not public by default.
//! 6. A dropped client leaves at once.
//! 7. Every key OpenSSL writes opens.
//! 8. Connection floods and shutdown.
//! 9. The small ones: static files, rejections, log lines, names, queued closes.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::tls::{Pki, openssl, tls_stream};
use common::*;

/// How long a host takes to refuse a bad setting.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(60);

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("path is not UTF-8")
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o777
}

/// Connects until the server lets the client in (it may still be counting a connection
/// that just closed); panics if it has not within [`TIMEOUT`].
fn connect_when_admitted(server: &Server) -> Client {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (client, response) = Client::handshake(server.addr, "/", &[]);
        if response.status == 101 {
            return client;
        }
        assert!(Instant::now() < deadline, "still refused: {response:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------
// 5. Internals are not public by default
// ---------------------------------------------------------------------------------

#[test]
fn rule5_metrics_are_on_the_websocket_port_only_when_asked_for() {
    let _turn = serial();
    let server = Server::start("echo", &[]);
    assert_eq!(http_get(server.addr, "/metrics").status, 400);
    // Health stays there, for load balancers.
    assert_eq!(http_get(server.addr, "/healthz").status, 200);
    assert_eq!(http_get(server.addr, "/readyz").status, 200);
    drop(server);

    let asked = Server::start("echo", &["--serve-metrics"]);
    assert!(Scrape::of(asked.addr).text.contains("wsplug_connections"));
    drop(asked);

    let echo = plugin_path("echo");
    let exit = run_host(
        &[
            "--plugin",
            path_arg(&echo),
            "--serve-metrics",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        REFUSAL_TIMEOUT,
    );
    assert_eq!(exit.status.code(), Some(2), "{exit:?}");
    assert!(exit.stderr.contains("exclude each other"), "{exit:?}");
}

#[test]
fn rule5_the_store_and_the_cache_are_readable_by_their_user_only() {
    let _turn = serial();
    let base = TempDir::new("private");
    let cache = base.join("cache").join("nested");
    let store = base.join("store").join("nested");
    let server = Server::start(
        "api",
        &["--cache-dir", path_arg(&cache), "--store-dir", path_arg(&store)],
    );
    let mut client = server.connect("/");
    assert_eq!(ask(&mut client, "kv-set k v"), "ok");
    for dir in [&cache, &base.join("cache"), &store, &base.join("store")] {
        assert_eq!(mode(dir), 0o700, "{}", dir.display());
    }
    let cached: Vec<_> = fs::read_dir(&cache).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(!cached.is_empty(), "nothing cached in {}", cache.display());
    for file in cached.iter().chain([&store.join("store.redb")]) {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
}

#[test]
fn rule5_a_cache_directory_others_may_write_is_not_used() {
    let _turn = serial();
    let cache = TempDir::new("open-cache");
    fs::set_permissions(cache.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let server = Server::start("echo", &["--cache-dir", cache.arg()]);
    server.wait_for_log("not caching compiled plugins in this directory");
    let mut client = server.connect("/");
    assert_eq!(ask(&mut client, "still serves"), "still serves");
    assert_eq!(
        fs::read_dir(cache.path()).unwrap().count(),
        0,
        "code was cached in an open directory"
    );
}

// ---------------------------------------------------------------------------------
// 6. A dropped client leaves at once
// ---------------------------------------------------------------------------------

/// With `close_timeout` at 30 s, a connection whose `on-close` waited for its closing
/// handshake would reach the others after 30 s: every wait here is bounded by the test
/// client's 10 s read timeout.
#[test]
fn rule6_a_reader_dropped_for_slowness_leaves_the_application_at_once() {
    let _turn = serial();
    let server = Server::start(
        "probe",
        &[
            "--close-timeout",
            "30",
            "--idle-timeout",
            "120",
            "--max-messages-buffering",
            "10",
        ],
    );
    let (mut observer, _) = open_probe(&server, "/observe");
    let (mut slow, slow_id) = open_probe(&server, "/");
    assert_eq!(observer.recv_text(), format!("opened {slow_id}"));
    // Far more than its socket and its bound hold; it never reads any of it.
    slow.send_text("flood 4000 65536");
    let closed = observer.recv_text();
    assert!(
        closed.starts_with(&format!("closed {slow_id} 1008")),
        "the observer heard {closed:?}"
    );
    // Gone from everyone's view, though its socket may still be flushing.
    assert_eq!(ask(&mut observer, "conns"), "1");
    drop(slow);
}

#[test]
fn rule6_a_client_that_stops_answering_pings_leaves_the_application_at_once() {
    let _turn = serial();
    let server = Server::start("probe", &["--idle-timeout", "1", "--close-timeout", "30"]);
    // Never reads, so never answers the ping.
    let (_silent, id) = open_probe(&server, "/");
    server.wait_for_log(&format!("on-close {id} 1006"));
}

// ---------------------------------------------------------------------------------
// 7. Every key OpenSSL writes opens
// ---------------------------------------------------------------------------------

/// Makes each kind of key with `openssl` (the commands the predecessor's users ran), a
/// certificate for it signed by the test CA, and serves WSS with it.
#[test]
fn rule7_keys_of_every_form_openssl_writes_open_with_their_passphrase() {
    let _turn = serial();
    let pki = Pki::new();
    let dir = TempDir::new("keys");
    let run = |args: &[&str]| openssl(&dir, args);
    let pass = ["-passout", "pass:secret"];
    // (file, how it was made, encrypted)
    let mut keys: Vec<(&str, Vec<&str>, bool)> = vec![
        // OpenSSL 3.0's default for `req -newkey`: PKCS#8 with DES-EDE3-CBC.
        (
            "req-newkey.pem",
            vec![
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-keyout",
                "req-newkey.pem",
                "-out",
                "unused.pem",
                "-subj",
                "/CN=x",
            ],
            true,
        ),
        (
            "genpkey-aes256.pem",
            vec!["genpkey", "-algorithm", "RSA", "-aes256", "-out", "genpkey-aes256.pem"],
            true,
        ),
        (
            "genrsa-traditional-des3.pem",
            vec![
                "genrsa",
                "-traditional",
                "-des3",
                "-out",
                "genrsa-traditional-des3.pem",
                "2048",
            ],
            true,
        ),
        (
            "genrsa-traditional-aes128.pem",
            vec![
                "genrsa",
                "-traditional",
                "-aes128",
                "-out",
                "genrsa-traditional-aes128.pem",
                "2048",
            ],
            true,
        ),
        (
            "ec.pem",
            vec!["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ec.pem"],
            false,
        ),
        (
            "ed25519.pem",
            vec!["genpkey", "-algorithm", "ed25519", "-out", "ed25519.pem"],
            false,
        ),
        (
            "ed25519-aes.pem",
            vec![
                "genpkey",
                "-algorithm",
                "ed25519",
                "-aes-128-cbc",
                "-out",
                "ed25519-aes.pem",
            ],
            true,
        ),
    ];
    for (_, args, encrypted) in &mut keys {
        if *encrypted {
            // genpkey names its passphrase option differently.
            // (Right after the command: genrsa wants its key size last.)
            let genpkey = args[0] == "genpkey";
            args.splice(1..1, if genpkey { ["-pass", "pass:secret"] } else { pass });
        }
        run(args);
    }
    // Made from keys above: PKCS#8 under scrypt, and a legacy-encrypted SEC1 (EC) key.
    run(&[
        "pkcs8",
        "-topk8",
        "-v2",
        "aes-256-cbc",
        "-scrypt",
        "-in",
        "ec.pem",
        "-out",
        "pkcs8-scrypt.pem",
        "-passout",
        "pass:secret",
    ]);
    run(&[
        "ec",
        "-in",
        "ec.pem",
        "-aes256",
        "-out",
        "ec-traditional-aes256.pem",
        "-passout",
        "pass:secret",
    ]);
    let mut files: Vec<(&str, bool)> = keys.iter().map(|(file, _, encrypted)| (*file, *encrypted)).collect();
    files.extend([("pkcs8-scrypt.pem", true), ("ec-traditional-aes256.pem", true)]);

    let ext = dir.join("server.ext");
    fs::write(&ext, "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
    for (file, encrypted) in files {
        let pem = fs::read_to_string(dir.join(file)).unwrap();
        assert_eq!(
            pem.contains("ENCRYPTED"),
            encrypted,
            "{file} is not what the test meant to make:\n{pem}"
        );
        let csr = format!("{file}.csr");
        let cert = format!("{file}.crt");
        let mut request = vec!["req", "-new", "-key", file, "-out", &csr, "-subj", "/CN=127.0.0.1"];
        if encrypted {
            request.extend(["-passin", "pass:secret"]);
        }
        run(&request);
        let (ca, ca_key) = (pki.path("ca.pem"), pki.path("ca.key"));
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            path_arg(&ca),
            "-CAkey",
            path_arg(&ca_key),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            path_arg(&ext),
            "-out",
            &cert,
        ]);
        let (cert, key) = (dir.join(&cert), dir.join(file));
        let mut args = vec![
            "--ssl",
            "true",
            "--cert-file",
            path_arg(&cert),
            "--key-file",
            path_arg(&key),
        ];
        if encrypted {
            args.extend(["--passphrase", "secret"]);
        }
        let server = Server::start("echo", &args);
        let mut client = Client::over(tls_stream(server.addr, pki.client_config(false)));
        client.upgrade("/");
        client.send_text(file);
        assert_eq!(client.recv_text(), file, "{file}");

        // And a wrong passphrase is said to be one, naming the file.
        if encrypted {
            let echo = plugin_path("echo");
            let mut wrong = vec!["--listen", "127.0.0.1:0", "--plugin", path_arg(&echo)];
            wrong.extend(&args[..args.len() - 1]);
            wrong.push("not the secret");
            let exit = run_host(&wrong, REFUSAL_TIMEOUT);
            assert!(!exit.status.success(), "{file}: {exit:?}");
            assert!(
                exit.stderr.contains("wrong passphrase") && exit.stderr.contains(file),
                "{file}: {exit:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// 8. Connection floods and shutdown
// ---------------------------------------------------------------------------------

/// The accept queue of the socket listening on `port`, as `ss` reads it (its Send-Q).
fn listen_backlog(port: u16) -> u32 {
    let output = Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .expect("cannot run ss (apt-get install iproute2)");
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no listening socket on {port}: {text:?}"));
    line.split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable ss line {line:?}"))
}

#[test]
fn rule8_the_accept_queue_is_the_systems_largest_unless_set() {
    let _turn = serial();
    let somaxconn: u32 = fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let server = Server::start("echo", &[]);
    assert_eq!(listen_backlog(server.addr.port()), somaxconn);
    let set = Server::start("echo", &["--backlog", "77"]);
    assert_eq!(listen_backlog(set.addr.port()), 77);
}

#[test]
fn rule8_one_address_holds_at_most_its_connections_and_opens_at_most_its_rate() {
    let _turn = serial();
    let server = Server::start(
        "echo",
        &["--max-connections-per-ip", "3", "--metrics-listen", "127.0.0.1:0"],
    );
    let mut clients: Vec<Client> = (0..3).map(|_| server.connect("/")).collect();
    let (_, refused) = Client::handshake(server.addr, "/", &[]);
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after"), Some("1"));
    // Plain HTTP counts too: the bound is on sockets.
    let (_, health) = Client::handshake(server.addr, "/healthz", &[]);
    assert_eq!(health.status, 429);
    // One closes: there is room again.
    clients.pop().unwrap().send_close(1000, "");
    clients.push(connect_when_admitted(&server));
    for client in &mut clients {
        client.send_text("ok");
        assert_eq!(client.recv_text(), "ok");
    }
    drop(server);

    let rate = Server::start("echo", &["--max-connection-rate-per-ip", "1"]);
    let mut first = rate.connect("/");
    let (_, refused) = Client::handshake(rate.addr, "/", &[]);
    assert_eq!(refused.status, 429, "a second connection within the same second");
    first.send_text("ok");
    assert_eq!(first.recv_text(), "ok");
}

#[test]
fn rule8_a_shutdown_is_not_held_by_a_client_that_keeps_its_socket_open() {
    let _turn = serial();
    let mut server = Server::start("echo", &["--close-timeout", "30", "--shutdown-grace", "30"]);
    let mut client = server.connect("/");
    client.send_text("hi");
    assert_eq!(client.recv_text(), "hi");
    server.terminate();
    assert_eq!(client.recv_close().0, 1001);
    // It answers the close, and keeps its side of the socket open: the server closes
    // the socket at once, and exits without waiting out close_timeout.
    client.send_close(1001, "");
    client.expect_eof();
    let started = Instant::now();
    assert!(server.wait_exit(Duration::from_secs(10)).success());
    assert!(started.elapsed() < Duration::from_secs(10));
}

// ---------------------------------------------------------------------------------
// 9. The small ones
// ---------------------------------------------------------------------------------

#[test]
fn rule9_a_plugin_cannot_forge_host_log_lines() {
    let _turn = serial();
    let server = Server::start("probe", &[]);
    let (mut client, _) = open_probe(&server, "/");
    let forged = "2026-12-07T00:00:00.000000Z ERROR wsplug::cluster: forged";
    assert_eq!(ask(&mut client, &format!("log hello\n{forged}\r\u{1b}[2J")), "ok");
    server.wait_for_log("hello");
    let lines = server.log_lines(|line| line.contains("forged"));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("hello\\n2026") && lines[0].contains("\\r\\u{1b}[2J"),
        "{lines:?}"
    );
    assert!(!lines[0].starts_with("2026-12-07T00:00:00.000000Z"), "{lines:?}");
}

#[test]
fn rule9_static_files_hide_dotfiles_and_a_stalled_reader_lets_its_place_go() {
    let _turn = serial();
    let site = TempDir::new("site");
    fs::write(site.join("index.html"), "<h1>hi</h1>").unwrap();
    fs::write(site.join(".env"), "TOKEN=secret").unwrap();
    fs::create_dir(site.join(".git")).unwrap();
    fs::write(site.join(".git").join("config"), "secret").unwrap();
    // Far more than the sockets between server and a reader that stopped can hold.
    fs::write(site.join("big.bin"), vec![7u8; 8 << 20]).unwrap();
    // The readers below must all be stalled before the first is let go.
    let server = Server::start("echo", &["--static", site.arg(), "--idle-timeout", "5"]);
    for path in ["/.env", "/.git/config", "/%2eenv"] {
        assert_eq!(http_get(server.addr, path).status, 404, "{path}");
    }
    assert_eq!(http_get(server.addr, "/index.html").status, 200);

    // 256 readers that stop reading hold every place among the files in flight.
    let request = b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n";
    let stalled: Vec<Client> = (0..256)
        .map(|_| {
            let mut client = Client::open(server.addr);
            client.send_raw(request);
            assert_eq!(client.read_response().status, 200);
            client
        })
        .collect();
    let busy = http_get(server.addr, "/index.html");
    assert_eq!(busy.status, 503);
    assert_eq!(busy.header("retry-after"), Some("1"));
    // Each is let go once it has taken nothing for the idle timeout.
    let deadline = Instant::now() + TIMEOUT;
    while http_get(server.addr, "/index.html").status != 200 {
        assert!(Instant::now() < deadline, "the stalled readers still hold every place");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(stalled);
}

#[test]
fn rule9_a_plugins_rejection_is_bounded_in_headers() {
    let _turn = serial();
    let server = Server::start("api", &[]);
    let status = |query: &str| Client::handshake(server.addr, &format!("/reject?status=401&{query}"), &[]).1;
    // x-plugin and 31 more: 32 headers, the most.
    let most = status("headers=31");
    assert_eq!(most.status, 401);
    assert_eq!(most.header("x-30"), Some("v"));
    assert_eq!(status("headers=32").status, 503);
    assert_eq!(status("headers=2&size=5000").status, 503);
    assert_eq!(status("headers=1&size=4000").status, 401);
}
