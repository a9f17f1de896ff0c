//! The security model (docs/operating.md, "Security model"): each rule shown the way it breaks,
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

use common::redis::{Redis, Reply};
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
// The cluster (rules 1 to 4)
// ---------------------------------------------------------------------------------

/// A secret for the clusters that have one.
const SECRET: &str = "a-secret-of-the-tests-0123456789";

/// Starts a host of cluster `name` on `redis` with `plugin` and `extra` arguments (no
/// idle pings: the clients wait seconds at a time without reading).
fn cluster_host(redis: &Redis, name: &str, plugin: &str, extra: &[&str]) -> Server {
    let url = redis.url();
    let mut args = vec![
        "--cluster",
        &url,
        "--cluster-name",
        name,
        "--idle-timeout",
        "120",
        "--serve-metrics",
    ];
    args.extend_from_slice(extra);
    Server::start(plugin, &args)
}

fn signal(name: &str, pid: u32) {
    let status = Command::new("kill").args([name, &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill {name} {pid}");
}

/// A cluster message as any writer to Redis could make one (the wire format, version 2,
/// written out by hand): sent now by host `origin`, incarnation `incarnation`.
fn forged(origin: u16, incarnation: u64, seq: u64, body: &[u8]) -> Vec<u8> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut bytes = vec![2];
    bytes.extend_from_slice(&origin.to_le_bytes());
    bytes.extend_from_slice(&incarnation.to_le_bytes());
    bytes.extend_from_slice(&seq.to_le_bytes());
    bytes.extend_from_slice(&now_ms.to_le_bytes());
    bytes.extend_from_slice(body);
    bytes
}

/// A `Broadcast` body of `text` to everyone.
fn broadcast_body(text: &str) -> Vec<u8> {
    let mut body = vec![10, 0, 0];
    body.extend_from_slice(&(text.len() as u32).to_le_bytes());
    body.extend_from_slice(text.as_bytes());
    body
}

/// A `Close` body for connection `conn` of incarnation `incarnation`.
fn close_body(conn: u64, incarnation: u64, code: u16) -> Vec<u8> {
    let mut body = vec![13];
    body.extend_from_slice(&conn.to_le_bytes());
    body.extend_from_slice(&incarnation.to_le_bytes());
    body.extend_from_slice(&code.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    body
}

/// A whole `Hello` body of one connection, `conn`, in no group.
fn hello_body(conn: u64) -> Vec<u8> {
    let mut body = vec![1];
    body.extend_from_slice(&0u32.to_le_bytes());
    body.push(1);
    body.extend_from_slice(&1u32.to_le_bytes());
    body.extend_from_slice(&conn.to_le_bytes());
    body.push(0);
    body.extend_from_slice(&0u32.to_le_bytes());
    body
}

fn publish(redis: &Redis, channel: &str, message: &[u8]) {
    let reply = redis.command(&[b"PUBLISH", channel.as_bytes(), message]);
    assert!(matches!(reply, Reply::Integer(_)), "{reply:?}");
}

/// The incarnation the host holding number `host` of cluster `name` keeps in Redis: a
/// Redis writer reads it as easily.
fn incarnation_of(redis: &Redis, name: &str, host: u64) -> u64 {
    let held = redis
        .command(&[b"GET", format!("{name}:alive:{host}").as_bytes()])
        .bytes();
    String::from_utf8(held).unwrap().parse().unwrap()
}

/// The id a client of the `api` plugin has.
fn api_id(client: &mut Client) -> u64 {
    let answer = ask(client, "id");
    answer
        .strip_prefix("id ")
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("{answer:?}"))
}

#[test]
fn rule1_a_host_paused_past_its_claim_gives_its_number_up_and_sends_reach_only_their_target() {
    let _turn = shared();
    let redis = Redis::start();
    let paused = cluster_host(&redis, "one", "probe", &[]);
    let third = cluster_host(&redis, "one", "probe", &[]);
    let (mut victim, victim_id) = open_probe(&paused, "/a");
    let (mut sender, _) = open_probe(&third, "/c");
    ask_until(&mut sender, "conns", TIMEOUT, |n| n == "2");
    let number = victim_id >> 37;

    signal("-STOP", paused.pid());
    // The others drop it once it has been silent for 3 s, and its claim lapses.
    ask_until(&mut sender, "conns", TIMEOUT, |n| n == "1");
    let alive = format!("one:alive:{number}");
    let deadline = Instant::now() + TIMEOUT;
    while redis.command(&[b"EXISTS", alive.as_bytes()]) != Reply::Integer(0) {
        assert!(Instant::now() < deadline, "{alive} outlived its host's silence");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Redis lost the counter (as in a restart without persistence): the next host to
    // join draws the paused host's number, and its first client the paused one's id.
    let reply = redis.command(&[b"SET", b"one:host-seq", (number - 1).to_string().as_bytes()]);
    assert_eq!(reply, Reply::Simple("OK".into()));
    let newcomer = cluster_host(&redis, "one", "probe", &[]);
    let (mut target, target_id) = open_probe(&newcomer, "/b");
    assert_eq!(target_id, victim_id, "the scenario: one id for two connections");
    ask_until(&mut sender, "conns", TIMEOUT, |n| n == "2");
    // A send while the paused host sleeps: the paused host finds it waiting when it wakes.
    assert_eq!(ask(&mut sender, &format!("send-to {target_id} first")), "ok");
    assert_eq!(target.recv_text(), "first");

    signal("-CONT", paused.pid());
    // It finds its number taken: its client is told to reconnect (the next frame, so
    // "first" never reached it), and it takes another number.
    assert_eq!(victim.recv_close().0, 1012);
    paused.wait_for_log("took a new host number");
    assert_eq!(ask(&mut sender, &format!("send-to {target_id} second")), "ok");
    assert_eq!(target.recv_text(), "second");
    assert!(ask(&mut sender, &format!("info-of {target_id}")).starts_with("path=/b "));
    // The cluster heals by itself: a new client of the renumbered host has a new
    // number's id, and the others reach it.
    let (mut back, back_id) = open_probe(&paused, "/a");
    assert_ne!(back_id >> 37, number);
    assert!(back_id < 1 << 53);
    ask_until(&mut sender, &format!("send-to {back_id} healed"), TIMEOUT, |a| {
        a == "ok"
    });
    assert_eq!(back.recv_text(), "healed");
    ask_until(&mut sender, "conns", TIMEOUT, |n| n == "3");
    let refused = Scrape::of(paused.addr).value(
        "wsplug_cluster_messages_refused_total",
        &[("route", "default"), ("reason", "misdirected")],
    );
    assert!(
        refused >= 1.0,
        "the paused host dropped the send meant for the newcomer: {refused}"
    );
}

#[test]
fn rule1_ids_are_unique_in_a_process_across_its_routes() {
    let _turn = shared();
    let dir = TempDir::new("two-routes");
    let probe = plugin_path("probe");
    let config = dir.join("wsplug.toml");
    fs::write(
        &config,
        format!(
            "[[route]]\npath = \"/a\"\nplugin = \"{probe}\"\n[[route]]\npath = \"/b\"\nplugin = \"{probe}\"\n",
            probe = probe.display()
        ),
    )
    .unwrap();
    let server = Server::start_config(&config, &[]);
    let mut ids: Vec<u64> = ["/a", "/b", "/a", "/b"]
        .iter()
        .map(|path| open_probe(&server, path).1)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 4, "{ids:?}");
}

#[test]
fn rule1_after_redis_loses_its_data_the_live_hosts_keep_their_numbers() {
    let _turn = exclusive();
    let mut redis = Redis::start();
    let a = cluster_host(&redis, "one", "probe", &[]);
    let b = cluster_host(&redis, "one", "probe", &[]);
    let (mut on_a, a_id) = open_probe(&a, "/");
    let (_on_b, b_id) = open_probe(&b, "/");
    ask_until(&mut on_a, "conns", TIMEOUT, |n| n == "2");
    // Restarted without persistence: no claim, no counter. A host joins at once, while
    // the live ones claim their numbers again.
    redis.stop();
    redis.restart();
    let c = cluster_host(&redis, "one", "probe", &[]);
    let (mut on_c, c_id) = open_probe(&c, "/");
    let numbers = [a_id >> 37, b_id >> 37, c_id >> 37];
    assert!(
        numbers[2] != numbers[0] && numbers[2] != numbers[1],
        "the newcomer took a live host's number: {numbers:?}"
    );
    ask_until(&mut on_c, "conns", Duration::from_secs(20), |n| n == "3");
    assert_eq!(ask(&mut on_c, &format!("send-to {a_id} across")), "ok");
    assert_eq!(on_a.recv_text(), "across");
    for host in [&a, &b, &c] {
        assert!(!host.log().contains("took a new host number"), "{}", host.log());
    }
}

#[test]
fn rule2_a_client_cannot_make_its_host_share_unbounded_groups() {
    let _turn = shared();
    let redis = Redis::start();
    let host = cluster_host(&redis, "two", "api", &[]);
    let mut client = host.connect("/");
    let huge = "g".repeat(400_000);
    for _ in 0..100 {
        assert_eq!(ask(&mut client, &format!("join {huge}")), "error too-large");
    }
    // Up to the bounds a chat needs it works: 256 groups of 256 bytes, then no more.
    assert_eq!(ask(&mut client, "join-many 256 256"), "joined 256 none");
    assert_eq!(ask(&mut client, "join one-more"), "error too-many-groups");
    assert_eq!(ask(&mut client, &format!("group-size {}", "0".repeat(256))), "1");
    // Groups given at the handshake are held to the same bounds.
    let long = "g".repeat(257);
    let (_, refused) = Client::handshake(host.addr, &format!("/attach?group={long}"), &[]);
    assert_eq!(refused.status, 503);
}

#[test]
fn rule2_hosts_with_large_states_survive_redis_cutting_every_subscriber_off() {
    let _turn = exclusive();
    // Redis cuts off a subscriber with 4 MB unread (its default is 32 MB): each host's
    // whole state below is about twice that.
    let redis = Redis::start_with(&["--client-output-buffer-limit", "pubsub 4mb 2mb 10"]);
    let hosts = [
        cluster_host(&redis, "big", "api", &[]),
        cluster_host(&redis, "big", "api", &[]),
    ];
    // 150 connections on each host, each with a 16 KiB attachment and 200 groups of 200
    // bytes (56 KiB of shared state each, 8 MB per host).
    let mut clients: Vec<Vec<Client>> = Vec::new();
    for host in &hosts {
        let mut own = Vec::new();
        for _ in 0..150 {
            let (mut client, response) = Client::handshake(host.addr, "/attach?size=16384", &[]);
            assert_eq!(response.status, 101);
            assert_eq!(ask(&mut client, "join-many 200 200"), "joined 200 none");
            own.push(client);
        }
        clients.push(own);
    }
    ask_until(&mut clients[0][0], "conns", Duration::from_secs(30), |n| n == "300");
    ask_until(&mut clients[1][0], "conns", Duration::from_secs(30), |n| n == "300");
    // The test listens to the bus too, and is not cut off with the hosts.
    let mut bus = redis.connection();
    bus.send(&[b"CLIENT", b"ID"]);
    let Reply::Integer(mine) = bus.reply() else {
        panic!("CLIENT ID")
    };
    bus.subscribe("big:bus");
    let Reply::Bulk(Some(list)) = redis.command(&[b"CLIENT", b"LIST", b"TYPE", b"pubsub"]) else {
        panic!("CLIENT LIST")
    };
    let subscribers: Vec<String> = String::from_utf8_lossy(&list)
        .lines()
        .filter_map(|line| line.strip_prefix("id=")?.split(' ').next().map(str::to_owned))
        .filter(|id| *id != mine.to_string())
        .collect();
    assert!(subscribers.len() >= 2, "{subscribers:?}");
    for id in &subscribers {
        let killed = redis.command(&[b"CLIENT", b"KILL", b"ID", id.as_bytes()]);
        assert_eq!(killed, Reply::Integer(1), "{id}");
    }
    // Both reconnect and say Hello, and each answers the other's: each host's whole
    // state (150 connections) goes over the bus again, in parts, and arrives whole.
    let (mut counted, mut whole) = (std::collections::HashMap::new(), std::collections::HashSet::new());
    let deadline = Instant::now() + Duration::from_secs(20);
    while whole.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = bus
            .next_message(left)
            .unwrap_or_else(|| panic!("whole states came from {whole:?} only"));
        // The header is 27 bytes; a Hello (1) or State (2) then has its part, whether it
        // is the last, and its member count.
        if message.len() < 37 || !matches!(message[27], 1 | 2) {
            continue;
        }
        let origin = u16::from_le_bytes([message[1], message[2]]);
        let part = u32::from_le_bytes(message[28..32].try_into().unwrap());
        let members = u32::from_le_bytes(message[33..37].try_into().unwrap());
        assert!(message.len() < 1 << 20, "a part of {} bytes", message.len());
        let count = counted.entry(origin).or_insert(0);
        if part == 0 {
            *count = 0;
        }
        *count += members;
        if message[32] == 1 && *count == 150 {
            whole.insert(origin);
        }
    }
    let target = api_id(&mut clients[1][7]);
    ask_until(&mut clients[0][0], "conns", Duration::from_secs(20), |n| n == "300");
    ask_until(
        &mut clients[0][0],
        &format!("send-to {target} across"),
        Duration::from_secs(20),
        |a| a == "ok",
    );
    assert_eq!(clients[1][7].recv_text(), "across");
    // Redis never had to cut anyone off for what the hosts sent.
    assert!(!redis.logged("output buffer limits"), "{}", redis.log());
}

#[test]
fn rule3_with_a_secret_what_a_redis_writer_forges_is_dropped_and_counted() {
    let _turn = shared();
    let redis = Redis::start();
    // Without a secret, anyone who may PUBLISH reaches every client and closes any
    // connection (the incarnation it needs is in Redis too): the attack.
    let open = cluster_host(&redis, "open", "probe", &[]);
    let (mut client, id) = open_probe(&open, "/");
    publish(&redis, "open:bus", &forged(999, 1, 1, &broadcast_body("forged hello")));
    assert_eq!(client.recv_text(), "forged hello");
    let incarnation = incarnation_of(&redis, "open", id >> 37);
    // A close code no endpoint may send is refused even so.
    let channel = format!("open:host:{}", id >> 37);
    publish(&redis, &channel, &forged(999, 1, 2, &close_body(id, incarnation, 1006)));
    Scrape::until(open.addr, |s| {
        s.value(
            "wsplug_cluster_messages_refused_total",
            &[("route", "default"), ("reason", "invalid")],
        ) == 1.0
    });
    assert_eq!(ask(&mut client, "still open"), "still open");
    publish(&redis, &channel, &forged(999, 1, 3, &close_body(id, incarnation, 4001)));
    assert_eq!(client.recv_close().0, 4001);

    // With a secret, the same messages are dropped, and counted.
    let sealed = cluster_host(&redis, "sealed", "probe", &["--cluster-secret", SECRET]);
    let (mut client, id) = open_probe(&sealed, "/");
    let incarnation = incarnation_of(&redis, "sealed", id >> 37);
    publish(
        &redis,
        "sealed:bus",
        &forged(999, 1, 1, &broadcast_body("forged hello")),
    );
    publish(&redis, "sealed:bus", &forged(998, 1, 1, &hello_body(998 << 37 | 1)));
    let channel = format!("sealed:host:{}", id >> 37);
    publish(&redis, &channel, &forged(999, 1, 2, &close_body(id, incarnation, 4001)));
    let forged_count = |s: &Scrape| {
        s.value(
            "wsplug_cluster_messages_refused_total",
            &[("route", "default"), ("reason", "forged")],
        )
    };
    let scrape = Scrape::until(sealed.addr, |s| forged_count(s) == 3.0);
    assert_eq!(scrape.value("wsplug_cluster_peers", &[("route", "default")]), 0.0);
    // Counted where it would have been delivered: the client's next frame is its echo.
    assert_eq!(ask(&mut client, "still open"), "still open");
    assert_eq!(ask(&mut client, "conns"), "1");
    // The facts it keeps in Redis are tagged too: changed, they are not believed.
    let other = cluster_host(&redis, "sealed", "probe", &["--cluster-secret", SECRET]);
    let (mut other_client, _) = open_probe(&other, "/");
    ask_until(&mut other_client, "conns", TIMEOUT, |n| n == "2");
    assert!(ask(&mut other_client, &format!("info-of {id}")).starts_with("path=/ "));
    let infos = format!("sealed:info:{}", id >> 37);
    let mut facts = redis
        .command(&[b"HGET", infos.as_bytes(), id.to_string().as_bytes()])
        .bytes();
    let at = facts.len() - 20;
    facts[at] ^= 1;
    let _ = redis.command(&[b"HSET", infos.as_bytes(), id.to_string().as_bytes(), &facts]);
    assert_eq!(ask(&mut other_client, &format!("info-of {id}")), "error gone");
}

#[test]
fn rule3_hosts_answer_a_storm_of_hellos_with_one_state_a_second() {
    let _turn = exclusive();
    let redis = Redis::start();
    let host = cluster_host(&redis, "storm", "probe", &[]);
    let (mut client, id) = open_probe(&host, "/");
    let number = (id >> 37) as u16;
    let mut bus = redis.subscribe("storm:bus");
    // 50 hosts that do not exist say Hello at once (no secret: anyone can).
    for fake in 0..50u16 {
        publish(
            &redis,
            "storm:bus",
            &forged(1000 + fake, 7, 1, &hello_body(u64::from(1000 + fake) << 37 | 1)),
        );
    }
    // The host's states on the bus over the next 2.5 s: a message of its number whose
    // kind (after the 27 bytes of header) is a State.
    let until = Instant::now() + Duration::from_millis(2500);
    let mut states = 0;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        let Some(message) = bus.next_message(left) else {
            break;
        };
        if message.len() > 27 && message[1..3] == number.to_le_bytes() && message[27] == 2 {
            states += 1;
        }
    }
    assert!((1..=4).contains(&states), "{states} states answered 50 Hellos in 2.5 s");
    assert_eq!(ask(&mut client, "still here"), "still here");
}

#[test]
fn rule3_hosts_reach_redis_over_tls_with_a_password_from_a_file() {
    let _turn = shared();
    let pki = Pki::new();
    let dir = TempDir::new("redis-auth");
    fs::write(dir.join("password"), "s3cret-password\n").unwrap();
    fs::write(dir.join("wrong"), "not-the-password\n").unwrap();
    let (cert, key, ca) = (pki.path("server.pem"), pki.path("server-key.pem"), pki.path("ca.pem"));
    let redis = Redis::start_tls(&[
        "--tls-cert-file",
        path_arg(&cert),
        "--tls-key-file",
        path_arg(&key),
        "--tls-ca-cert-file",
        path_arg(&ca),
        "--tls-auth-clients",
        "no",
        "--requirepass",
        "s3cret-password",
    ]);
    let url = redis.url();
    assert!(url.starts_with("rediss://"));
    let password = dir.join("password");
    let args = [
        "--cluster-ca-file",
        path_arg(&ca),
        "--cluster-password-file",
        path_arg(&password),
    ];
    let a = cluster_host(&redis, "tls", "probe", &args);
    let b = cluster_host(&redis, "tls", "probe", &args);
    let (mut on_a, _) = open_probe(&a, "/");
    let (mut on_b, b_id) = open_probe(&b, "/");
    ask_until(&mut on_a, "conns", TIMEOUT, |n| n == "2");
    assert_eq!(ask(&mut on_a, &format!("send-to {b_id} over-tls")), "ok");
    assert_eq!(on_b.recv_text(), "over-tls");
    // Without the CA, or with the wrong password, the host says it cannot reach Redis.
    let echo = plugin_path("echo");
    let wrong = dir.join("wrong");
    for extra in [
        vec!["--cluster-password-file", path_arg(&password)],
        vec![
            "--cluster-ca-file",
            path_arg(&ca),
            "--cluster-password-file",
            path_arg(&wrong),
        ],
    ] {
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--plugin",
            path_arg(&echo),
            "--cluster",
            &url,
        ];
        args.extend(extra);
        let exit = run_host(&args, REFUSAL_TIMEOUT);
        assert!(!exit.status.success(), "{exit:?}");
        assert!(
            exit.stderr.contains("cannot reach the cluster's Redis server"),
            "{exit:?}"
        );
        assert!(!exit.stderr.contains("s3cret"), "{exit:?}");
    }
}

#[test]
fn rule4_credentials_stay_on_the_host_that_holds_the_connection() {
    let _turn = shared();
    let redis = Redis::start();
    let a = cluster_host(&redis, "four", "api", &[]);
    let b = cluster_host(&redis, "four", "api", &[]);
    let (mut client, response) = Client::handshake(
        b.addr,
        "/?token=query-secret",
        &[
            ("Cookie", "session=cookie-secret"),
            ("Authorization", "Bearer authorization-secret"),
            ("Proxy-Authorization", "Basic proxy-secret"),
            ("User-Agent", "test-agent"),
        ],
    );
    assert_eq!(response.status, 101);
    let id = api_id(&mut client);
    // Its own host shows everything.
    let local = ask(&mut client, &format!("info-of {id}"));
    assert!(local.contains("cookie") && local.contains("authorization"), "{local}");
    // Another host's info of it lacks the credentials.
    let mut other = a.connect("/");
    let remote = ask_until(&mut other, &format!("info-of {id}"), TIMEOUT, |a| a != "info none");
    assert_eq!(remote, "info / host,user-agent");
    // And Redis holds none of them, anywhere.
    let Reply::Array(keys) = redis.command(&[b"KEYS", b"*"]) else {
        panic!("KEYS");
    };
    for key in keys {
        let key = key.bytes();
        let value = match redis.command(&[b"TYPE", &key]) {
            Reply::Simple(kind) if kind == "hash" => redis.command(&[b"HGETALL", &key]).text(),
            Reply::Simple(kind) if kind == "string" => redis.command(&[b"GET", &key]).text(),
            other => format!("{other:?}"),
        };
        assert!(!value.contains("secret"), "{}: {value}", String::from_utf8_lossy(&key));
    }
}

// ---------------------------------------------------------------------------------
// 5. Internals are not public by default
// ---------------------------------------------------------------------------------

#[test]
fn rule5_metrics_are_on_the_websocket_port_only_when_asked_for() {
    let _turn = shared();
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
    let _turn = shared();
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
    let _turn = shared();
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
    let _turn = shared();
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
    let _turn = shared();
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
    let _turn = shared();
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
    let _turn = shared();
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
    let _turn = exclusive();
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
fn rule8_an_address_whose_calls_keep_running_to_their_deadline_is_refused_in_both_modes() {
    let _turn = shared();
    // Off unless set (behind a reverse proxy every client is one address), then 2 a minute.
    for (bound, stateless) in [(None, true), (Some(2), false), (Some(2), true)] {
        let mode = format!(
            "{} with max_overruns_per_ip {bound:?}",
            if stateless { "stateless" } else { "plugin thread" }
        );
        let dir = TempDir::new("overruns");
        let config = dir.join("wsplug.toml");
        let setting = bound.map_or(String::new(), |n| format!("max_overruns_per_ip = {n}\n"));
        fs::write(
            &config,
            format!(
                "{setting}[[route]]\nname = \"api\"\npath = \"/\"\nplugin = \"{}\"\n\
                 stateless = {stateless}\nplugin_deadline_ms = 100\n",
                plugin_path("api").display()
            ),
        )
        .unwrap();
        let server = Server::start_config(&config, &[]);
        // A message that makes the call spin costs its connection, twice.
        for _ in 0..2 {
            let mut client = server.connect("/");
            client.send_text("spin");
            assert_eq!(client.recv_close().0, 1011, "{mode}");
        }
        let (_, answer) = Client::handshake(server.addr, "/", &[]);
        if bound.is_none() {
            assert_switched(&answer);
            continue;
        }
        // The third attempt is refused until a minute's two have refilled one: 30 s.
        assert_eq!(answer.status, 429, "{mode}");
        let retry: u64 = answer.header("retry-after").expect("Retry-After").parse().unwrap();
        assert!((25..=30).contains(&retry), "{mode}: Retry-After {retry}");
    }
}

#[test]
fn rule8_a_shutdown_is_not_held_by_a_client_that_keeps_its_socket_open() {
    let _turn = shared();
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
    let _turn = shared();
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
    let _turn = exclusive();
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
    let _turn = shared();
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
