//! End-to-end tests of what operators use: the real `host` binary.
//!
//! - `/metrics` after scripted traffic: every count checked exactly (connections by
//!   route and close code, refused handshakes by reason, messages and bytes each way,
//!   plugin calls per export, traps by kind, reloads, crash-loop state, loads), and the
//!   output passes `promtool check metrics`.
//! - `/healthz` and `/readyz`, and readiness turning 503 while the server shuts down.
//! - Routes: three plugins on three paths, 404 for any other path before the upgrade;
//!   a reload and a trap in one route leave the others' connections untouched.
//! - `metrics_listen`, `host check`, `log_format = "json"`.
//!
//! Build the plugins first (`make plugins`). The tests take turns (see [`exclusive`] and
//! [`shared`]): the one that measures a p99 runs alone, the others side by side.

mod common;

use std::fs;
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const NORMAL: u16 = 1000;
const INTERNAL_ERROR: u16 = 1011;

/// A config file in a temp dir of its own.
fn config_file(dir: &TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.join("wsplug.toml");
    fs::write(&path, text).unwrap();
    path
}

fn path_text(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// Passes the scrape through `promtool check metrics`, which parses it and checks
/// Prometheus's naming conventions; panics with what it says if it finds anything.
fn promtool_accepts(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is needed: `make deps` installs it");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn metrics_count_scripted_traffic_exactly_and_pass_promtool() {
    let _turn = shared();
    let cache = TempDir::new("cache");
    let server = Server::start_file(
        &plugin_path("echo"),
        &[
            "--cache-dir",
            cache.arg(),
            "--allowed-origin",
            "http://ok.example",
            "--serve-metrics",
        ],
    );
    let ok = [("Origin", "http://ok.example")];

    // Refused: 3 bad origins, 2 malformed upgrades (no key; POST), 1 wrong version.
    for _ in 0..3 {
        let (_, response) = Client::handshake(server.addr, "/", &[("Origin", "http://evil.example")]);
        assert_eq!(response.status, 403);
    }
    let no_key = "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Version: 13\r\nOrigin: http://ok.example\r\n\r\n";
    assert_eq!(http_request(server.addr, no_key.as_bytes()).status, 400);
    assert_eq!(
        http_request(server.addr, no_key.replace("GET", "POST").as_bytes()).status,
        405
    );
    let old = no_key.replace("Version: 13", "Version: 8");
    assert_eq!(http_request(server.addr, old.as_bytes()).status, 426);

    // 4 clients; each sends 2 texts of 5 bytes and a binary of 3, and gets them back.
    let mut clients: Vec<Client> = (0..4)
        .map(|_| {
            let (client, response) = Client::handshake(server.addr, "/", &ok);
            assert_switched(&response);
            client
        })
        .collect();
    for client in &mut clients {
        for _ in 0..2 {
            client.send_text("hello");
            assert_eq!(client.recv_text(), "hello");
        }
        client.send_binary(&[1, 2, 3]);
        assert_eq!(client.recv_binary(), [1, 2, 3]);
    }
    // Two close with 1000, one with 4001, one hangs up without a close frame (1006).
    let mut clients = clients.into_iter();
    for code in [NORMAL, NORMAL, 4001] {
        let mut client = clients.next().unwrap();
        client.send_close(code, "bye");
        assert_eq!(client.recv_close().0, code);
        client.expect_eof();
    }
    clients.next().unwrap().shutdown();

    let route = [("route", "default")];
    let scrape = Scrape::until(server.addr, |s| {
        s.value(
            "wsplug_plugin_call_duration_seconds_count",
            &[("route", "default"), ("export", "on-close")],
        ) == 4.0
            && s.sum("wsplug_connections_closed_total", &[]) == 4.0
    });
    let closed = |code: &str| {
        scrape.value(
            "wsplug_connections_closed_total",
            &[("route", "default"), ("code", code)],
        )
    };
    assert_eq!((closed("1000"), closed("4xxx"), closed("1006")), (2.0, 1.0, 1.0));
    assert_eq!(scrape.sum("wsplug_connections_closed_total", &[]), 4.0);
    assert_eq!(scrape.value("wsplug_connections", &route), 0.0);
    assert_eq!(scrape.value("wsplug_connections_opened_total", &route), 4.0);
    let rejected = |reason: &str| scrape.value("wsplug_handshakes_rejected_total", &[("reason", reason)]);
    assert_eq!(
        (rejected("origin"), rejected("bad_request"), rejected("version")),
        (3.0, 2.0, 1.0)
    );
    assert_eq!(scrape.sum("wsplug_handshakes_rejected_total", &[]), 6.0);
    let received = |kind: &str| {
        scrape.value(
            "wsplug_messages_received_total",
            &[("route", "default"), ("type", kind)],
        )
    };
    assert_eq!((received("text"), received("binary")), (8.0, 4.0));
    assert_eq!(scrape.value("wsplug_received_bytes_total", &route), 52.0);
    assert_eq!(scrape.value("wsplug_messages_sent_total", &route), 12.0);
    assert_eq!(scrape.value("wsplug_sent_bytes_total", &route), 52.0);
    let calls = |export: &str| {
        scrape.value(
            "wsplug_plugin_call_duration_seconds_count",
            &[("route", "default"), ("export", export)],
        )
    };
    assert_eq!(
        (
            calls("on-open"),
            calls("on-text"),
            calls("on-binary"),
            calls("on-close")
        ),
        (4.0, 8.0, 4.0, 4.0)
    );
    // Every call took more than nothing and less than its deadline.
    let seconds = scrape.sum("wsplug_plugin_call_duration_seconds_sum", &route);
    assert!(seconds > 0.0 && seconds < 20.0 * 0.5, "{seconds}");
    assert_eq!(scrape.sum("wsplug_plugin_traps_total", &route), 0.0);
    assert_eq!(scrape.value("wsplug_slow_clients_dropped_total", &route), 0.0);
    // A fresh cache: the plugin was compiled, not loaded from it.
    let loads = |cache: &str| scrape.value("wsplug_plugin_loads_total", &[("route", "default"), ("cache", cache)]);
    assert_eq!((loads("miss"), loads("hit")), (1.0, 0.0));
    assert_eq!(
        scrape.value("wsplug_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0
    );
    assert!(scrape.value("process_resident_memory_bytes", &[]) > 0.0);
    promtool_accepts(&scrape.text);

    // The number of series does not grow with connections: 50 more, as many series.
    let series = |s: &Scrape| s.text.lines().filter(|l| !l.starts_with('#')).count();
    let before = series(&scrape);
    let many: Vec<Client> = (0..50).map(|_| Client::handshake(server.addr, "/", &ok).0).collect();
    let scrape = Scrape::until(server.addr, |s| s.value("wsplug_connections", &route) == 50.0);
    assert_eq!(series(&scrape), before);
    drop(many);
}

#[test]
fn health_is_200_and_readiness_turns_503_while_the_server_shuts_down() {
    let _turn = shared();
    let mut server = Server::start_isolated(
        &plugin_path("probe"),
        &["--shutdown-grace", "10", "--close-timeout", "3", "--serve-metrics"],
    );
    let healthz = http_get(server.addr, "/healthz");
    assert_eq!((healthz.status, healthz.body.as_slice()), (200, &b"ok\n"[..]));
    assert_eq!(http_get(server.addr, "/readyz").status, 200);
    // HEAD: the same head, no body.
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream.write_all(b"HEAD /readyz HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    let mut head = String::new();
    stream.read_to_string(&mut head).unwrap();
    assert!(
        head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"),
        "{head:?}"
    );

    // A client that never answers the close frame keeps the shutdown going for the
    // close timeout: meanwhile the server is alive, not ready, and refuses upgrades.
    let (_stubborn, _) = open_probe(&server, "/");
    server.terminate();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let status = http_get(server.addr, "/readyz").status;
        if status == 503 {
            break;
        }
        assert_eq!(status, 200);
        assert!(std::time::Instant::now() < deadline, "/readyz stayed 200 after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(http_get(server.addr, "/healthz").status, 200);
    let (_, refused) = Client::handshake(server.addr, "/", &[]);
    assert_eq!(refused.status, 503);
    let scrape = Scrape::of(server.addr);
    assert_eq!(
        scrape.value("wsplug_handshakes_rejected_total", &[("reason", "shutting_down")]),
        1.0
    );
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
}

#[test]
fn routes_serve_three_plugins_and_a_reload_or_traps_in_one_leave_the_others_alone() {
    let _turn = shared();
    let dir = TempDir::new("routes");
    let chat = PluginFile::copy_of("probe");
    let config = config_file(
        &dir,
        &format!(
            "cache_dir = \"{cache}\"\n\
             [[route]]\npath = \"/chat\"\nplugin = \"{chat}\"\n\
             [[route]]\npath = \"/echo/*\"\nplugin = \"{echo}\"\n\
             [[route]]\nname = \"chaos\"\npath = \"/panic-on-open/*\"\nplugin = \"{chaos}\"\n\
             plugin_deadline_ms = 100\nplugin_memory_mib = 16\n",
            cache = dir.join("cache").display(),
            chat = chat.path().display(),
            echo = plugin_path("echo").display(),
            chaos = plugin_path("chaos").display(),
        ),
    );
    let server = Server::start_config(&config, &["--serve-metrics"]);

    // No route serves these: 404 before the upgrade.
    for path in ["/", "/chatroom", "/echo-x", "/chat/x"] {
        let (_, response) = Client::handshake(server.addr, path, &[]);
        assert_eq!(response.status, 404, "{path}");
    }
    // Plain requests are not routed: the endpoints answer on any configuration.
    assert_eq!(http_get(server.addr, "/healthz").status, 200);

    let mut echo = server.connect("/echo/room/1");
    echo.send_text("a");
    assert_eq!(echo.recv_text(), "a");
    let (mut ann, ann_id) = open_probe(&server, "/chat");
    let (mut bob, _) = open_probe(&server, "/chat");
    // Each plugin sees its own connections only, and broadcasts reach only them.
    assert_eq!(ask(&mut ann, "conns"), "2");
    assert_eq!(ask(&mut ann, "broadcast hi"), "sent 1");
    assert_eq!(bob.recv_text(), "hi");
    let echo_still_alone = |echo: &mut Client, text: &str| {
        echo.send_text(text);
        assert_eq!(echo.recv_text(), text, "the echo route got something else");
    };
    echo_still_alone(&mut echo, "b");

    // A new version of the chat plugin: the chat route reloads, nothing else does.
    let bytes = fs::read(plugin_path("probe")).unwrap();
    chat.replace_by_rename(&with_custom_section(&bytes, "version", b"2"));
    server.wait_for_log("plugin reloaded");
    // The new version got on-open for the chat route's connections, and only those.
    assert_eq!(ann.recv_text(), format!("id {ann_id}"));
    assert!(bob.recv_text().starts_with("id "));
    echo_still_alone(&mut echo, "c");

    // Traps of every kind in the chaos route: a deadline, the memory cap, a trap (each
    // one message's fault, costing its client only), and four connections whose
    // on-open panics (a crash loop: those count).
    for command in ["loop", "oom", "trap"] {
        let mut client = server.connect("/panic-on-open/x");
        client.send_text(command);
        assert_eq!(client.recv_close().0, INTERNAL_ERROR, "{command}");
        client.send_close(INTERNAL_ERROR, "");
        client.expect_eof();
    }
    for _ in 0..4 {
        let mut client = server.connect("/panic-on-open");
        assert_eq!(client.recv_close().0, INTERNAL_ERROR);
        client.send_close(INTERNAL_ERROR, "");
        client.expect_eof();
    }
    let chaos = [("route", "chaos")];
    let scrape = Scrape::until(server.addr, |s| {
        s.value("wsplug_plugin_consecutive_crashes", &chaos) == 4.0
            && s.sum(
                "wsplug_connections_closed_total",
                &[("route", "chaos"), ("code", "1011")],
            ) == 7.0
    });
    let traps =
        |route: &str, kind: &str| scrape.value("wsplug_plugin_traps_total", &[("route", route), ("kind", kind)]);
    assert_eq!(
        (
            traps("chaos", "deadline"),
            traps("chaos", "memory"),
            traps("chaos", "trap")
        ),
        (1.0, 1.0, 5.0)
    );
    // Four counted crashes in a row: the next restart waits 0.2 s (0.1 s doubled once).
    assert_eq!(scrape.value("wsplug_plugin_restart_backoff_seconds", &chaos), 0.2);
    for route in ["chat", "echo"] {
        assert_eq!(
            scrape.sum("wsplug_plugin_traps_total", &[("route", route)]),
            0.0,
            "{route}"
        );
        assert_eq!(
            scrape.value("wsplug_plugin_consecutive_crashes", &[("route", route)]),
            0.0
        );
    }
    let reloads = |route: &str, result: &str| {
        scrape.value("wsplug_plugin_reloads_total", &[("route", route), ("result", result)])
    };
    assert_eq!(
        (reloads("chat", "ok"), reloads("echo", "ok"), reloads("chaos", "ok")),
        (1.0, 0.0, 0.0)
    );
    let opened = |route: &str| scrape.value("wsplug_connections_opened_total", &[("route", route)]);
    assert_eq!((opened("chat"), opened("echo"), opened("chaos")), (2.0, 1.0, 7.0));
    assert_eq!(
        scrape.value("wsplug_handshakes_rejected_total", &[("reason", "not_found")]),
        4.0
    );
    promtool_accepts(&scrape.text);

    // A broken version of the chat plugin is refused; the one before keeps serving.
    chat.replace_by_rename(b"not a component");
    server.wait_for_log("reload failed, previous version keeps serving");
    let scrape = Scrape::until(server.addr, |s| {
        s.value(
            "wsplug_plugin_reloads_total",
            &[("route", "chat"), ("result", "failed")],
        ) == 1.0
    });
    assert_eq!(scrape.sum("wsplug_plugin_reloads_total", &[("result", "failed")]), 1.0);

    // The other routes' connections never noticed.
    echo_still_alone(&mut echo, "d");
    assert_eq!(ask(&mut ann, "conns"), "2");
    let mut client = server.connect("/panic-on-open/y");
    client.send_text("still here");
    assert_eq!(client.recv_text(), "still here");
    let scrape = Scrape::until(server.addr, |s| {
        s.value("wsplug_plugin_consecutive_crashes", &chaos) == 0.0
    });
    assert_eq!(scrape.value("wsplug_plugin_restart_backoff_seconds", &chaos), 0.0);
}

#[test]
fn routes_keep_their_own_limits() {
    let _turn = shared();
    let dir = TempDir::new("limits");
    let config = config_file(
        &dir,
        &format!(
            "cache_dir = \"{cache}\"\nplugin = \"{echo}\"\n\
             [[route]]\npath = \"/small\"\nplugin = \"{echo}\"\nmax_payload_size = 10\nmax_connections = 1\n",
            cache = dir.join("cache").display(),
            echo = plugin_path("echo").display(),
        ),
    );
    let server = Server::start_config(&config, &["--serve-metrics"]);
    let mut small = server.connect("/small");
    small.send_text("0123456789");
    assert_eq!(small.recv_text(), "0123456789");
    // The route's own bound, not the host's.
    let (_, refused) = Client::handshake(server.addr, "/small", &[]);
    assert_eq!(refused.status, 503);
    small.send_text("01234567890");
    assert_eq!(small.recv_close().0, 1009);
    // The catch-all route (plugin =) takes the top-level limits.
    let mut big = server.connect("/anything");
    let text = "x".repeat(1000);
    big.send_text(&text);
    assert_eq!(big.recv_text(), text);
    let scrape = Scrape::of(server.addr);
    assert_eq!(
        scrape.value("wsplug_handshakes_rejected_total", &[("reason", "capacity")]),
        1.0
    );
    let closed =
        |route: &str, code: &str| scrape.value("wsplug_connections_closed_total", &[("route", route), ("code", code)]);
    assert_eq!(closed("small", "1009"), 1.0);
}

#[test]
fn metrics_listen_moves_metrics_off_the_websocket_port() {
    let _turn = shared();
    let server = Server::start_isolated(&plugin_path("echo"), &["--metrics-listen", "127.0.0.1:0"]);
    server.wait_for_log("metrics on http://");
    let line = server.log_lines(|l| l.contains("metrics on http://")).remove(0);
    let addr: std::net::SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let mut client = server.connect("/");
    client.send_text("x");
    assert_eq!(client.recv_text(), "x");
    // Counts of an open connection reach the metrics within 0.1 s.
    let scrape = Scrape::until(addr, |s| {
        s.value("wsplug_messages_sent_total", &[("route", "default")]) == 1.0
    });
    assert_eq!(scrape.value("wsplug_connections", &[("route", "default")]), 1.0);
    assert_eq!(scrape.value("wsplug_sent_bytes_total", &[("route", "default")]), 1.0);
    assert_eq!(http_get(addr, "/healthz").status, 200);
    assert_eq!(http_get(addr, "/readyz").status, 200);
    assert_eq!(http_get(addr, "/other").status, 404);
    // The WebSocket port no longer serves them; health stays there for load balancers.
    assert_eq!(http_get(server.addr, "/metrics").status, 400);
    assert_eq!(http_get(server.addr, "/healthz").status, 200);
}

#[test]
fn host_check_describes_a_plugin_or_says_why_it_would_not_load() {
    let _turn = shared();
    let echo = plugin_path("echo");
    let exit = run_host(&["check", path_text(&echo)], Duration::from_secs(120));
    assert!(exit.status.success(), "{exit:?}");
    for line in [
        "language: Rust",
        "world: wsplug:plugin@0.3.0",
        "exports: on-open on-text on-binary on-close\n",
        "wsplug:plugin/host@0.3.0",
        "compile: ",
        "instantiate: ",
        "(memory cap 64 MiB)",
    ] {
        assert!(exit.stdout.contains(line), "no {line:?} in:\n{}", exit.stdout);
    }
    let size = fs::metadata(&echo).unwrap().len();
    assert!(exit.stdout.contains(&format!("size: {size} bytes")), "{}", exit.stdout);
    let exit = run_host(&["check", path_text(&plugin_path("echo-py"))], Duration::from_secs(120));
    assert!(
        exit.status.success() && exit.stdout.contains("language: Python"),
        "{exit:?}"
    );
    // JavaScript's garbage collector needs more room than the 64 MiB the others get.
    let exit = run_host(&["check", path_text(&plugin_path("echo-js"))], Duration::from_secs(120));
    assert!(
        exit.status.success()
            && exit.stdout.contains("language: JavaScript")
            && exit.stdout.contains("(memory cap 128 MiB)"),
        "{exit:?}"
    );

    let dir = TempDir::new("check");
    let junk = dir.join("junk.wasm");
    fs::write(&junk, b"not wasm").unwrap();
    let exit = run_host(&["check", path_text(&junk)], Duration::from_secs(60));
    assert_eq!(exit.status.code(), Some(1), "{exit:?}");
    assert!(exit.stderr.contains("is not a valid WebAssembly component"), "{exit:?}");
    let missing = dir.join("missing.wasm");
    let exit = run_host(&["check", path_text(&missing)], Duration::from_secs(60));
    assert_eq!(exit.status.code(), Some(1), "{exit:?}");
    assert!(exit.stderr.contains("cannot read plugin"), "{exit:?}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let _turn = shared();
    let mut server = Server::start_isolated(&plugin_path("echo"), &["--log-format", "json"]);
    let mut client = server.connect("/");
    client.send_close(NORMAL, "");
    client.recv_close();
    server.terminate();
    assert!(server.wait_exit(Duration::from_secs(10)).success());
    let log = server.log();
    let mut messages = Vec::new();
    for line in log.lines() {
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        assert!(object["level"].is_string() && object["timestamp"].is_string(), "{line}");
        messages.push(object["message"].as_str().unwrap_or_default().to_owned());
    }
    assert!(messages.iter().any(|m| m == "plugin loaded"), "{log}");
    assert!(messages.iter().any(|m| m == "shut down cleanly"), "{log}");
}

/// The 99th percentile of `times`.
fn p99(times: &mut [Duration]) -> Duration {
    times.sort();
    times[(times.len() * 99).div_ceil(100).saturating_sub(1)]
}

#[test]
fn a_stateless_route_whose_calls_spin_stalls_no_other_route_nor_the_endpoints() {
    let _turn = exclusive();
    let dir = TempDir::new("spin");
    // Two runtime threads, four attackers: each sends `spin` to the stateless route
    // (a loop until the CPU deadline traps it), and reconnects after the 1011 to do it
    // again, so that every runtime thread always has a spinning call to run.
    let config = config_file(
        &dir,
        &format!(
            "threads = 2\ncache_dir = \"{cache}\"\n\
             [[route]]\npath = \"/a\"\nplugin = \"{api}\"\nstateless = true\nplugin_deadline_ms = 500\n\
             [[route]]\npath = \"/b\"\nplugin = \"{echo}\"\n",
            cache = dir.join("cache").display(),
            api = plugin_path("api").display(),
            echo = plugin_path("echo").display(),
        ),
    );
    let server = Server::start_config(&config, &[]);
    let addr = server.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = std::sync::Arc::new(std::sync::Barrier::new(5));
    let attackers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, started) = (stop.clone(), started.clone());
            std::thread::spawn(move || {
                let mut spun = 0;
                let mut first = true;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut attacker = Client::connect(addr, "/a");
                    attacker.send_text("spin");
                    if std::mem::take(&mut first) {
                        started.wait();
                    }
                    assert_eq!(attacker.recv_close().0, INTERNAL_ERROR);
                    spun += 1;
                }
                spun
            })
        })
        .collect();
    started.wait();
    // For two seconds (four deadlines of the attackers' calls) and at least 30 turns,
    // an echo on the other route, and every tenth turn a new connection to it and a
    // health check.
    let mut bystander = server.connect("/b");
    let (mut echoes, mut opens, mut checks) = (Vec::new(), Vec::new(), Vec::new());
    let began = std::time::Instant::now();
    while began.elapsed() < Duration::from_secs(2) || echoes.len() < 30 {
        let sent = std::time::Instant::now();
        bystander.send_text("still here");
        assert_eq!(bystander.recv_text(), "still here");
        echoes.push(sent.elapsed());
        if echoes.len() % 10 == 0 {
            let sent = std::time::Instant::now();
            let mut newcomer = server.connect("/b");
            newcomer.send_text("new");
            assert_eq!(newcomer.recv_text(), "new");
            opens.push(sent.elapsed());
            let sent = std::time::Instant::now();
            assert_eq!(http_get(addr, "/healthz").status, 200);
            checks.push(sent.elapsed());
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let spun: u32 = attackers.into_iter().map(|a| a.join().expect("attacker")).sum();
    let (echo, open, check) = (p99(&mut echoes), p99(&mut opens), p99(&mut checks));
    eprintln!(
        "spinning stateless route: {spun} calls trapped at their deadline; the other route's echo p99 \
         {echo:?} over {} echoes, a new connection's first echo p99 {open:?}, /healthz p99 {check:?}",
        echoes.len()
    );
    assert!(spun >= 8, "the attack did not run: {spun} calls trapped");
    for (what, p99) in [("echo", echo), ("new connection", open), ("/healthz", check)] {
        assert!(
            p99 < Duration::from_millis(50),
            "{what}: p99 {p99:?} behind the spinning route"
        );
    }
}
