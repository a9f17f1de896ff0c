//! Plugin API 0.2 and 0.3 through the real `host` binary and the `api` test plugin
//! (`plugins/api`, 0.3, which does on command whatever a test needs): the handshake
//! hook, timers, attachments, state carried across reloads, the key-value store, what
//! 0.3 added (named errors, `sync`, text as bytes, positions), and 0.1 and 0.2 plugins
//! beside 0.3 ones.
//!
//! Build the plugins first (`make plugins`). Every test starts its own server (with its
//! own store); they take turns (see [`exclusive`] and [`shared`]): the throughput test
//! and the one that races fsyncs against a call's wall-clock bound run alone, because on
//! 2 cores they would otherwise measure the other tests; the others run side by side.

mod common;

use std::fs;
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Sends a command whose reply must be `ok`.
fn ok(client: &mut Client, command: &str) {
    assert_eq!(ask(client, command), "ok", "{command}");
}

/// A timer id that the api plugin fires to connection `conn` (it sends to `id >> 20`).
fn timer_id(conn: u64, n: u64) -> u64 {
    (conn << 20) | n
}

/// The connection id the server gave `client`: the first connection of a server is 1,
/// and tests that need ids open their connections one at a time, in order.
const FIRST: u64 = 1;

/// Parses `timer ID late_us N`.
fn parse_timer(text: &str) -> (u64, u64) {
    let fields: Vec<&str> = text.split(' ').collect();
    match fields[..] {
        ["timer", id, "late_us", late] => (id.parse().unwrap(), late.parse().unwrap()),
        _ => panic!("expected `timer ID late_us N`, got {text:?}"),
    }
}

/// A server running a copy of the api plugin that the test replaces.
struct Reloadable {
    server: Server,
    file: PluginFile,
    original: Vec<u8>,
    /// The server's compile cache (dropped after the server).
    _cache: TempDir,
}

impl Reloadable {
    /// Starts one, with its compile cache warmed for `versions` reloads, so that a
    /// reload costs the swap only, not a compile.
    fn start(versions: usize) -> Reloadable {
        let file = PluginFile::copy_of("api");
        let original = fs::read(file.path()).unwrap();
        let cache = TempDir::new("api-cache");
        let args = ["--cache-dir", cache.arg(), "--idle-timeout", "60"];
        for n in 1..=versions {
            file.replace_by_rename(&version(&original, n));
            drop(Server::start_file(&file.path(), &args));
        }
        file.replace_by_rename(&original);
        let server = Server::start_file(&file.path(), &args);
        Reloadable {
            server,
            file,
            original,
            _cache: cache,
        }
    }

    /// Replaces the plugin with version `n` and waits for the server's `n`-th
    /// `plugin reloaded` line, which it returns.
    fn reload(&self, n: usize) -> String {
        self.replace(n);
        self.server
            .wait_for_log_lines(n, |line| line.contains("plugin reloaded"))
            .pop()
            .unwrap()
    }

    /// Replaces the plugin with version `n`.
    fn replace(&self, n: usize) {
        self.file.replace_by_rename(&version(&self.original, n));
    }
}

/// The same code under another digest: version `n` of `original`.
fn version(original: &[u8], n: usize) -> Vec<u8> {
    with_custom_section(original, "reload", &(n as u32).to_le_bytes())
}

// ---------------------------------------------------------------------------------
// The handshake hook
// ---------------------------------------------------------------------------------

#[test]
fn a_rejected_handshake_gets_the_plugins_status_headers_and_body_and_no_on_open() {
    let _turn = shared();
    let server = Server::start("api", &[]);
    for (status, body) in [(401, "who%20are%20you%3F"), (403, "no"), (429, "slow+down"), (599, "")] {
        let path = format!("/reject?status={status}&body={body}");
        let response = http_request(server.addr, upgrade_request(&path, &[]).as_bytes());
        assert_eq!(response.status, status, "{response:?}");
        assert_eq!(response.header("x-plugin"), Some("api"));
        let expected = body.replace("%20", " ").replace("%3F", "?").replace('+', " ");
        assert_eq!(String::from_utf8_lossy(&response.body), expected);
    }
    // None of them got on-open: this one is the first.
    let mut client = server.connect("/");
    assert_eq!(ask(&mut client, "opens"), "1");
}

#[test]
fn a_rejection_that_is_not_an_http_error_fails_closed_with_503() {
    let _turn = shared();
    let server = Server::start("api", &[]);
    for status in [101, 200, 302, 600] {
        let path = format!("/reject?status={status}&body=x");
        let response = http_request(server.addr, upgrade_request(&path, &[]).as_bytes());
        assert_eq!(response.status, 503, "status {status}: {response:?}");
    }
    let mut client = server.connect("/");
    assert_eq!(ask(&mut client, "opens"), "1");
}

#[test]
fn a_hook_past_its_deadline_or_trapping_gets_503_and_the_others_keep_working() {
    let _turn = shared();
    let server = Server::start("api", &["--plugin-deadline-ms", "100"]);
    let mut bystander = server.connect("/attach?data=bystander");
    assert_eq!(ask(&mut bystander, "echo before"), "before");
    // Handshakes that spin or trap, from several clients at once.
    let refusals: Vec<_> = (0..6)
        .map(|i| {
            let addr = server.addr;
            thread::spawn(move || {
                let path = if i % 2 == 0 { "/spin" } else { "/trap" };
                let started = Instant::now();
                let response = http_request(addr, upgrade_request(path, &[]).as_bytes());
                (path, response.status, started.elapsed())
            })
        })
        .collect();
    // Meanwhile the bystander's messages are answered (between the refused calls).
    for n in 0..20 {
        assert_eq!(ask(&mut bystander, &format!("echo {n}")), n.to_string());
    }
    for refusal in refusals {
        let (path, status, took) = refusal.join().unwrap();
        assert_eq!(status, 503, "{path}");
        assert!(took < TIMEOUT, "{path} took {took:?}");
    }
    // The fresh instances replayed on-open; the bystander's attachment is the host's.
    assert_eq!(ask(&mut bystander, "attachment"), "attachment bystander");
    let traps = server.wait_for_log_lines(6, |line| line.contains("plugin trapped") && line.contains("on-upgrade"));
    assert_eq!(traps.len(), 6, "{traps:?}");
    server.wait_for_log("handshake refused with 503");
}

#[test]
fn the_hook_chooses_among_the_offered_subprotocols_only() {
    let _turn = shared();
    let server = Server::start("api", &[]);
    let offered = [("Sec-WebSocket-Protocol", "v1, v2")];
    let (mut client, response) = Client::handshake(server.addr, "/protocol?pick=v2", &offered);
    assert_eq!(response.status, 101);
    assert_eq!(response.header("sec-websocket-protocol"), Some("v2"));
    assert_eq!(ask(&mut client, "echo chose v2"), "chose v2");

    let (_, response) = Client::handshake(server.addr, "/protocol", &offered);
    assert_eq!(response.status, 101);
    assert_eq!(response.header("sec-websocket-protocol"), None);

    let response = http_request(server.addr, upgrade_request("/protocol?pick=v3", &offered).as_bytes());
    assert_eq!(response.status, 503, "a subprotocol that was not offered: {response:?}");
    let response = http_request(server.addr, upgrade_request("/protocol?pick=v1", &[]).as_bytes());
    assert_eq!(response.status, 503, "nothing was offered: {response:?}");
}

#[test]
fn the_hook_sets_the_attachment_and_groups_before_on_open() {
    let _turn = shared();
    let server = Server::start("api", &[]);
    let mut a = server.connect("/attach?data=alice&group=room");
    let mut b = server.connect("/attach?data=bob&group=room");
    assert_eq!(ask(&mut a, "attachment"), "attachment alice");
    assert_eq!(ask(&mut b, "attachment"), "attachment bob");
    assert_eq!(ask(&mut a, "group-size room"), "2");
    let too_big = format!("/attach?size={}", 16 * 1024 + 1);
    let response = http_request(server.addr, upgrade_request(&too_big, &[]).as_bytes());
    assert_eq!(response.status, 503, "an attachment over 16 KiB: {response:?}");
    let mut c = server.connect(&format!("/attach?size={}", 16 * 1024));
    let reply = ask(&mut c, "attachment");
    assert_eq!(
        reply.len(),
        "attachment ".len() + 16 * 1024,
        "an attachment of exactly 16 KiB"
    );
}

// ---------------------------------------------------------------------------------
// Timers
// ---------------------------------------------------------------------------------

#[test]
fn a_thousand_10_ms_timers_fire_exactly_once_each() {
    let _turn = shared();
    let server = Server::start("api", &[]);
    let mut client = server.connect("/");
    const N: u64 = 1000;
    for n in 0..N {
        client.send_text(&format!("timer {} 10", timer_id(FIRST, n)));
    }
    // A last one, later: every tick of the others comes before it.
    let sentinel = timer_id(FIRST, N);
    client.send_text(&format!("timer {sentinel} 200"));
    let mut fired = vec![0u32; N as usize];
    let mut late = Vec::new();
    let mut oks = 0;
    loop {
        let text = client.recv_text();
        if text == "ok" {
            oks += 1;
            continue;
        }
        let (id, late_us) = parse_timer(&text);
        if id == sentinel {
            break;
        }
        fired[(id & 0xFFFFF) as usize] += 1;
        late.push(late_us);
    }
    assert_eq!(oks, N + 1, "every set-timer answered ok");
    let wrong: Vec<_> = fired.iter().enumerate().filter(|(_, n)| **n != 1).collect();
    assert!(
        wrong.is_empty(),
        "timers that did not fire exactly once (id, times): {wrong:?}"
    );
    late.sort_unstable();
    let p = |q: f64| late[((late.len() - 1) as f64 * q) as usize];
    println!(
        "1000 timers of 10 ms: lateness p50 {} us, p99 {} us, max {} us",
        p(0.5),
        p(0.99),
        late[late.len() - 1]
    );
    assert_eq!(
        ask(&mut client, &format!("pending {}", timer_id(FIRST, 0))),
        "pending false"
    );
}

#[test]
fn a_cancelled_timer_never_fires_and_a_reset_one_fires_once_at_its_new_time() {
    let _turn = shared();
    let server = Server::start("api", &[]);
    let mut client = server.connect("/");
    let (cancelled, reset, sentinel) = (timer_id(FIRST, 1), timer_id(FIRST, 2), timer_id(FIRST, 3));
    // Delays long enough that the commands in between cannot be overtaken by a tick.
    ok(&mut client, &format!("timer {cancelled} 1000"));
    ok(&mut client, &format!("timer {reset} 1000"));
    let reset_at = Instant::now();
    ok(&mut client, &format!("timer {reset} 1500"));
    assert_eq!(ask(&mut client, &format!("pending {cancelled}")), "pending true");
    assert_eq!(ask(&mut client, &format!("cancel {cancelled}")), "cancelled true");
    assert_eq!(ask(&mut client, &format!("cancel {cancelled}")), "cancelled false");
    ok(&mut client, &format!("timer {sentinel} 2000"));
    assert_eq!(parse_timer(&client.recv_text()).0, reset);
    let waited = reset_at.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "the reset timer fired after {waited:?}, at its old time"
    );
    assert_eq!(parse_timer(&client.recv_text()).0, sentinel);
    // Limits are errors, not traps.
    assert_eq!(
        ask(&mut client, &format!("timer {cancelled} 10 0")),
        "error invalid-duration"
    );
}

#[test]
fn a_repeating_timer_keeps_its_cadence_across_five_reloads_and_a_trap() {
    let _turn = shared();
    let reloadable = Reloadable::start(5);
    let server = &reloadable.server;
    let mut client = server.connect("/");
    const PERIOD: Duration = Duration::from_millis(50);
    let id = timer_id(FIRST, 7);
    ok(&mut client, &format!("timer {id} 50 50"));
    let started = Instant::now();
    let mut ticks = 0u64;
    let mut tick = |client: &mut Client| {
        let text = client.recv_text();
        assert_eq!(parse_timer(&text).0, id, "{text}");
        ticks += 1;
    };
    for _ in 0..3 {
        tick(&mut client);
    }
    for n in 1..=5 {
        let line = reloadable.reload(n);
        assert!(line.contains("state=\"restored"), "{line}");
        for _ in 0..3 {
            tick(&mut client);
        }
    }
    // A trap on another connection: a fresh instance, the timer goes on.
    let mut other = server.connect("/");
    other.send_text("trap");
    assert_eq!(other.recv_close().0, 1011);
    for _ in 0..3 {
        tick(&mut client);
    }
    // Ticks that came while the test waited for the reloads are still to be read: read
    // them until the answer to the cancel, then check none is a duplicate.
    client.send_text(&format!("cancel {id}"));
    loop {
        let text = client.recv_text();
        if text == "cancelled true" {
            break;
        }
        assert_eq!(parse_timer(&text).0, id, "{text}");
        ticks += 1;
    }
    let elapsed = started.elapsed();
    let most = (elapsed.as_millis() / PERIOD.as_millis()) as u64 + 1;
    println!("repeating 50 ms timer: {ticks} ticks in {elapsed:?} across 5 reloads and a trap");
    assert!(ticks <= most, "{ticks} ticks in {elapsed:?}: more than one per period");
}

#[test]
fn a_timer_that_traps_at_every_tick_backs_off_instead_of_restarting_at_its_pace() {
    let _turn = shared();
    let server = Server::start("api", &[]);
    let mut client = server.connect("/");
    // Bit 19: the api plugin traps in this timer's on-timer, every 10 ms.
    let trapping = timer_id(FIRST, 1 << 19);
    ok(&mut client, &format!("timer {trapping} 10 10"));
    // A trap in on-timer is nobody's message: no connection closes, and the fresh
    // instance's replay does not count as proof that the plugin works.
    server.wait_for_log("plugin keeps crashing: restarting in");
    assert_eq!(ask(&mut client, &format!("cancel {trapping}")), "cancelled true");
    assert_eq!(ask(&mut client, "echo still here"), "still here");
}

#[test]
fn a_stateless_plugins_crash_gauge_keeps_the_plugin_threads_streak() {
    let _turn = shared();
    // Stateless: connections' events run on their own threads, timers on the plugin's
    // thread, and each side keeps a crash streak. The gauge shows the longer one.
    let server = Server::start("api", &["--stateless", "--serve-metrics"]);
    let mut client = server.connect("/");
    let mut victim = server.connect("/"); // before the loop: its on-upgrade would end it
    let trapping = timer_id(FIRST, 1 << 19);
    ok(&mut client, &format!("timer {trapping} 10 10"));
    server.wait_for_log("plugin keeps crashing: restarting in");
    // On the connections' threads: a trap (a streak of 1), then a call that works (0).
    victim.send_text("trap");
    assert_eq!(victim.recv_close().0, 1011);
    assert_eq!(ask(&mut client, "echo still here"), "still here");
    let crashes = Scrape::of(server.addr).value("wsplug_plugin_consecutive_crashes", &[("route", "default")]);
    assert!(
        crashes >= 3.0,
        "the gauge reads {crashes} while the timer keeps trapping"
    );
    assert_eq!(ask(&mut client, &format!("cancel {trapping}")), "cancelled true");
}

// ---------------------------------------------------------------------------------
// State across reloads, attachments across reloads and traps
// ---------------------------------------------------------------------------------

#[test]
fn a_hundred_clients_times_a_thousand_messages_with_ten_reloads_count_exactly() {
    let _turn = exclusive();
    const CLIENTS: usize = 100;
    const ROUNDS: usize = 10;
    const PER_ROUND: usize = 100;
    const RELOADS: usize = 10;
    let reloadable = Reloadable::start(RELOADS);
    let server = &reloadable.server;
    // Round r of every client goes out once reload r has been asked for, so that the
    // swaps happen while messages are in flight.
    let asked = Arc::new((Mutex::new(0usize), Condvar::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let mut client = server.connect("/");
            let asked = asked.clone();
            thread::spawn(move || {
                for round in 0..ROUNDS {
                    let (lock, changed) = &*asked;
                    let mut n = lock.lock().unwrap();
                    while *n < round {
                        n = changed.wait(n).unwrap();
                    }
                    drop(n);
                    for _ in 0..PER_ROUND {
                        client.send_text("+");
                    }
                }
                // Its own messages were all handled once this comes back.
                assert_eq!(ask(&mut client, &format!("echo done {i}")), format!("done {i}"));
                client
            })
        })
        .collect();
    for n in 1..=RELOADS {
        {
            let (lock, changed) = &*asked;
            *lock.lock().unwrap() = n;
            changed.notify_all();
        }
        let line = reloadable.reload(n);
        assert!(line.contains("state=\"restored"), "reload {n}: {line}");
    }
    let mut clients: Vec<Client> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert_eq!(
        ask(&mut clients[0], "total"),
        format!("total {}", CLIENTS * ROUNDS * PER_ROUND)
    );
    assert_eq!(ask(&mut clients[0], "restores"), format!("restores {RELOADS}"));
    // No connection was dropped: every one still answers.
    for (i, client) in clients.iter_mut().enumerate() {
        assert_eq!(ask(client, &format!("echo still {i}")), format!("still {i}"));
    }
    assert!(!server.log().contains("reload failed"), "{}", server.log());
}

#[test]
fn attachments_survive_reloads_and_traps() {
    let _turn = shared();
    let reloadable = Reloadable::start(2);
    let server = &reloadable.server;
    let mut alice = server.connect("/attach?data=alice");
    let mut bob = server.connect("/");
    ok(&mut bob, "attach bob");
    reloadable.reload(1);
    assert_eq!(ask(&mut alice, "attachment"), "attachment alice");
    assert_eq!(ask(&mut alice, "attachment-of 2"), "attachment bob");
    // A trap replaces the instance: the attachments are the host's.
    let mut doomed = server.connect("/attach?data=doomed");
    doomed.send_text("trap");
    assert_eq!(doomed.recv_close().0, 1011);
    assert_eq!(ask(&mut alice, "attachment"), "attachment alice");
    assert_eq!(ask(&mut bob, "attachment"), "attachment bob");
    // The next reload carries the fresh instance's state; the attachments are not in it.
    reloadable.reload(2);
    assert_eq!(ask(&mut bob, "attachment-of 1"), "attachment alice");
    // Replaced, removed, and over the limit.
    ok(&mut alice, "attach alice2");
    assert_eq!(ask(&mut bob, "attachment-of 1"), "attachment alice2");
    let big = format!("attach {}", "x".repeat(16 * 1024 + 1));
    assert_eq!(ask(&mut alice, &big), "error too-large");
    assert_eq!(ask(&mut alice, "attachment"), "attachment alice2");
}

#[test]
fn a_refused_snapshot_or_restore_keeps_the_old_version_and_its_state() {
    let _turn = shared();
    let reloadable = Reloadable::start(2);
    let server = &reloadable.server;
    let mut client = server.connect("/");
    ok(&mut client, "memo colour blue");
    ok(&mut client, "fail-snapshot");
    reloadable.replace(1);
    server.wait_for_log("reload failed, previous version keeps serving: snapshot refused: told to refuse");
    assert_eq!(ask(&mut client, "memo? colour"), "blue");

    ok(&mut client, "fail-restore");
    reloadable.replace(2);
    server.wait_for_log("reload failed, previous version keeps serving: restore refused: told to refuse");
    assert_eq!(ask(&mut client, "memo? colour"), "blue");
    assert_eq!(ask(&mut client, "restores"), "restores 0");

    let failures = server.log_lines(|line| line.contains("reload failed"));
    assert_eq!(failures.len(), 2, "one error line per failure: {failures:?}");
    assert!(server.log_lines(|line| line.contains("plugin reloaded")).is_empty());
}

#[test]
fn an_eight_mib_state_is_carried_across_a_reload() {
    let _turn = shared();
    let reloadable = Reloadable::start(1);
    let server = &reloadable.server;
    let mut client = server.connect("/");
    ok(&mut client, &format!("grow {}", 8 << 20));
    let before = ask(&mut client, "blob");
    let line = reloadable.reload(1);
    assert!(
        line.contains(&format!("state=\"restored {} bytes\"", (8 << 20) + 40)),
        "{line}"
    );
    assert_eq!(ask(&mut client, "blob"), before);
}

// ---------------------------------------------------------------------------------
// The key-value store
// ---------------------------------------------------------------------------------

#[test]
fn the_store_keeps_data_across_a_killed_host() {
    let _turn = shared();
    let store = TempDir::new("api-store");
    let args = ["--store-dir", store.arg()];
    {
        // Stateless: each reply waits on a connection's thread for its write's commit.
        let server = Server::start("api", &[&args[..], &["--stateless"]].concat());
        let mut client = server.connect("/");
        for n in 0..20 {
            ok(&mut client, &format!("kv-set item/{n:02} value-{n}"));
        }
        ok(&mut client, "kv-set other x");
        assert_eq!(ask(&mut client, "kv-del item/05"), "deleted true");
        assert_eq!(ask(&mut client, "kv-del item/05"), "deleted false");
        // Dropped: killed with SIGKILL, so only what reached the disk survives.
    }
    let server = Server::start("api", &args);
    let mut client = server.connect("/");
    assert_eq!(ask(&mut client, "kv-get item/19"), "value value-19");
    assert_eq!(ask(&mut client, "kv-get item/05"), "none");
    let first_page = ask(&mut client, "kv-list item/ - 3");
    assert_eq!(first_page, "keys item/00,item/01,item/02");
    assert_eq!(ask(&mut client, "kv-list item/ item/17 10"), "keys item/18,item/19");
    let all = ask(&mut client, "kv-list item/");
    assert_eq!(all.trim_start_matches("keys ").split(',').count(), 19, "{all}");
}

/// Keys the clients of one round saw: the sender's `ok KEY`s, the observer's
/// `relayed KEY`s.
fn relayed_until_killed(server: Server, round: usize) -> (Vec<String>, usize) {
    /// Sent without waiting: far more than the host relays before it is killed.
    const SENT: usize = 100_000;
    let mut sender = server.connect("/");
    let mut observer = server.connect("/");
    // Both open, so the observer gets every relay.
    assert_eq!(ask(&mut observer, "echo ready"), "ready");
    assert_eq!(ask(&mut sender, "echo ready"), "ready");
    let mut writer = Client::over(sender.stream.try_clone().unwrap());
    let writing = thread::spawn(move || {
        for n in 0..SENT {
            if !writer.try_send_text(&format!("kv-relay r{round}/{n:06}")) {
                break;
            }
        }
    });
    let observing = thread::spawn(move || {
        let mut seen = Vec::new();
        while let Some((_, text)) = observer.try_read_frame() {
            let text = String::from_utf8(text).unwrap_or_default();
            if let Some(key) = text.strip_prefix("relayed ") {
                seen.push(key.to_owned());
            }
        }
        seen
    });
    let mut seen = Vec::new();
    let mut server = Some(server);
    // Killed at a different point each round, with messages in flight.
    let kill_after = 200 + 97 * round;
    while let Some((_, text)) = sender.try_read_frame() {
        let text = String::from_utf8(text).unwrap();
        let key = text.strip_prefix("ok ").unwrap_or_else(|| panic!("{text}"));
        seen.push(key.to_owned());
        if seen.len() == kill_after {
            drop(server.take()); // SIGKILL
        }
    }
    assert!(server.is_none(), "the connection ended before the kill");
    let acknowledged = seen.len();
    assert!(acknowledged < SENT, "killed under load, not after it");
    writing.join().unwrap();
    seen.extend(observing.join().unwrap());
    (seen, acknowledged)
}

#[test]
fn no_client_sees_a_write_that_a_killed_host_lost() {
    let _turn = exclusive();
    // Ten kills under load, alternating the two plugin modes. Each message is stored,
    // then relayed: every message a client saw must be in the store after the restart.
    let store = TempDir::new("kill-loop");
    let started = Instant::now();
    let mut seen: Vec<String> = Vec::new();
    for round in 0..=10 {
        let mut args = vec!["--store-dir", store.arg()];
        if round % 2 == 1 {
            args.push("--stateless");
        }
        let server = Server::start("api", &args);
        let mut check = server.connect("/");
        for key in &seen {
            check.send_text(&format!("kv-get {key}"));
        }
        for key in &seen {
            assert_eq!(
                check.recv_text(),
                "value v",
                "{key} was seen by a client, then lost (round {round})"
            );
        }
        if round == 10 {
            break;
        }
        drop(check);
        let (keys, acknowledged) = relayed_until_killed(server, round);
        println!("round {round}: {acknowledged} acknowledged, {} seen in all", keys.len());
        seen = keys;
    }
    println!("10 kills in {:?}", started.elapsed());
}

#[test]
fn a_plugin_past_its_store_quota_gets_an_error_not_a_trap() {
    let _turn = shared();
    let store = TempDir::new("quota");
    let server = Server::start("api", &["--store-dir", store.arg(), "--store-max-keys", "100"]);
    let mut client = server.connect("/");
    assert_eq!(ask(&mut client, "kv-fill 150"), "filled 100 failed 50");
    assert_eq!(
        ask(&mut client, "kv-set one-more v"),
        r#"error StoreError::QuotaExceeded("100 keys at most")"#
    );
    assert_eq!(ask(&mut client, "kv-del fill/00000000"), "deleted true");
    ok(&mut client, "kv-set one-more v");
    assert_eq!(ask(&mut client, "kv-get one-more"), "value v");
}

#[test]
fn api_0_3_takes_text_as_bytes_says_where_a_publication_is_and_syncs() {
    let _turn = shared();
    let store = TempDir::new("api-0.3");
    for mode in [&[][..], &["--stateless"]] {
        let mut args = vec!["--store-dir", store.arg()];
        args.extend(mode);
        let server = Server::start("api", &args);
        let mut client = server.connect("/");
        // Text given as bytes is checked once, and refused if it is not UTF-8.
        client.send_text("utf8 valid");
        assert_eq!(client.recv_text(), "café", "{mode:?}");
        assert_eq!(client.recv_text(), "ok");
        assert_eq!(ask(&mut client, "utf8 invalid"), "error invalid-utf8");
        ok(&mut client, "join room");
        client.send_text("publish-utf8 room héllo");
        assert_eq!(
            client.recv_text(),
            "héllo",
            "{mode:?}: the publication precedes the reply"
        );
        // No group keeps history until the operator names it: no position.
        assert_eq!(client.recv_text(), "published 1 position None");
        assert_eq!(ask(&mut client, "position room"), "error no-history");
        ok(&mut client, "kv-set synced-key v");
        assert_eq!(ask(&mut client, "kv-sync"), "synced");
        assert_eq!(ask(&mut client, "kv-get synced-key"), "value v");
        assert_eq!(ask(&mut client, "kv-remove synced-key"), "removed");
        assert_eq!(ask(&mut client, "kv-get synced-key"), "none");
        assert_eq!(ask(&mut client, "kv-remove never-set"), "removed");
    }
}

/// Sets `PREFIX000`, `PREFIX001`, ... to `value` until a reply is not `ok`: how many
/// were, and that reply.
fn set_until_refused(client: &mut Client, prefix: &str, value: &str) -> (usize, String) {
    for n in 0..100 {
        let reply = try_set(client, &format!("{prefix}{n:03}"), value);
        if reply != "ok" {
            return (n, reply);
        }
    }
    panic!("100 writes of {} bytes all went through", value.len())
}

/// Sends `kv-set KEY VALUE` and returns the reply, or `close CODE REASON` if the host
/// closed the connection instead.
fn try_set(client: &mut Client, key: &str, value: &str) -> String {
    client.send_text(&format!("kv-set {key} {value}"));
    let (opcode, payload) = client.read_frame();
    match opcode {
        0x81 => String::from_utf8(payload).unwrap(),
        0x88 => format!(
            "close {} {}",
            u16::from_be_bytes([payload[0], payload[1]]),
            String::from_utf8_lossy(&payload[2..])
        ),
        _ => panic!("unexpected frame {opcode:#x}"),
    }
}

#[test]
fn a_full_disk_costs_the_writes_that_met_it_and_the_store_answers_again_once_there_is_room() {
    let _turn = shared();
    // The "disk" is the host's file size limit (RLIMIT_FSIZE, 4 MiB, with SIGXFSZ ignored,
    // as `sh` leaves it for what it runs): a write past it fails as on a full disk, and
    // `prlimit --pid` gives the room back. No root, no mount.
    let store = TempDir::new("full-disk");
    let value = "x".repeat(64 << 10);
    let limited = |quota: &str| {
        let wrapper = [
            "sh",
            "-c",
            r#"trap '' XFSZ; exec prlimit --fsize=4194304:unlimited -- "$@""#,
            "sh",
        ];
        let args = ["--store-dir", store.arg(), "--no-cache", "--store-max-bytes", quota];
        Server::start_wrapped("api", &args, &wrapper)
    };

    // A quota below the room left: the plugin meets the quota, as an error, first.
    let server = limited("1048576");
    let mut client = server.connect("/");
    let (stored, refused) = set_until_refused(&mut client, "before/", &value);
    assert!(refused.contains("QuotaExceeded"), "{refused} after {stored} writes");
    assert_eq!(stored, 15, "1 MiB holds 15 entries of 64 KiB and their keys");
    drop(server);

    // A quota above it: the disk fills first. The write that met it is lost, and its
    // reply, which waited for it, never comes: the connection gets 1011 instead.
    let server = limited("1073741824");
    // A count in the plugin's memory, which a lost commit makes suspect.
    let mut observer = server.connect("/");
    for _ in 0..3 {
        observer.send_text("+");
    }
    assert_eq!(ask(&mut observer, "total"), "total 3");
    let mut client = server.connect("/");
    let (written, lost) = set_until_refused(&mut client, "after/", &value);
    assert_eq!(lost, "close 1011 store write failed", "after {written} writes");
    // Room again: within a few seconds the store opens its file again and answers.
    let status = Command::new("prlimit")
        .args(["--pid", &server.pid().to_string(), "--fsize=unlimited:unlimited"])
        .status()
        .unwrap();
    assert!(status.success());
    let mut client = server.connect("/");
    let deadline = Instant::now() + Duration::from_secs(10);
    while try_set(&mut client, "again", "v") != "ok" {
        assert!(
            Instant::now() < deadline,
            "the store did not answer again after room came back"
        );
    }
    assert_eq!(ask(&mut client, "kv-get before/014"), format!("value {value}"));
    // The plugin started again from what is stored (a new instance): its memory too.
    assert_eq!(ask(&mut observer, "total"), "total 0");
    server.wait_for_log("store writes were lost: the plugin starts again from its stored state");
    assert_eq!(
        ask(&mut client, &format!("kv-get after/{:03}", written - 1)),
        format!("value {value}")
    );
}

#[test]
fn replies_that_wait_for_a_commit_still_precede_the_close_frame() {
    let _turn = shared();
    // Each reply waits for its write's commit; the client's close must not overtake them.
    for mode in [&[][..], &["--stateless"][..]] {
        let server = Server::start("api", mode);
        let mut client = server.connect("/");
        for n in 0..50 {
            client.send_text(&format!("kv-set k{n} v"));
        }
        client.send_close(1000, "bye");
        for n in 0..50 {
            assert_eq!(client.recv_text(), "ok", "reply {n} ({mode:?})");
        }
        assert_eq!(client.recv_close().0, 1000);
    }
}

#[test]
fn store_limits_and_expiry() {
    let _turn = shared();
    let server = Server::start("api", &[]);
    let mut client = server.connect("/");
    assert_eq!(ask(&mut client, "kv-big key"), "Err(StoreError::TooLarge)");
    assert_eq!(ask(&mut client, "kv-big value"), "Err(StoreError::TooLarge)");
    ok(&mut client, "kv-set short v 30");
    ok(&mut client, "kv-set long v 3600000");
    let deadline = Instant::now() + TIMEOUT;
    while ask(&mut client, "kv-get short") != "none" {
        assert!(Instant::now() < deadline, "a 30 ms key outlived {TIMEOUT:?}");
    }
    assert_eq!(ask(&mut client, "kv-list short"), "keys ");
    assert_eq!(ask(&mut client, "kv-get long"), "value v");
}

#[test]
fn a_call_that_keeps_writing_is_stopped_at_ten_times_its_deadline() {
    let _turn = shared();
    // 200,000 writes take seconds, even staged in memory; the call may last 10 x 10 ms
    // in all.
    let server = Server::start("api", &["--plugin-deadline-ms", "10"]);
    let mut client = server.connect("/");
    let started = Instant::now();
    client.send_text("kv-fill 200000");
    assert_eq!(client.recv_close().0, 1011);
    let took = started.elapsed();
    println!("a loop of store writes stopped after {took:?}");
    assert!(took < Duration::from_secs(2), "stopped only after {took:?}");
}

#[test]
fn a_store_that_cannot_open_is_an_error_not_a_trap() {
    let _turn = shared();
    let dir = TempDir::new("blocked-store");
    // A directory where the database file should be.
    fs::create_dir(dir.join("store.redb")).unwrap();
    let server = Server::start("api", &["--store-dir", dir.arg()]);
    let mut client = server.connect("/");
    let reply = ask(&mut client, "kv-get k");
    assert!(reply.starts_with("error StoreError::Unavailable("), "{reply}");
    assert!(reply.contains("store.redb"), "{reply}");
    assert_eq!(ask(&mut client, "echo alive"), "alive");
}

// ---------------------------------------------------------------------------------
// Versions
// ---------------------------------------------------------------------------------

#[test]
fn the_load_report_names_the_api_version_and_optional_exports() {
    let _turn = shared();
    for (plugin, api, exports) in [
        ("echo-raw", "0.1.0", "none"),
        ("counter-v1", "0.1.0", "none"),
        ("chat-c", "0.2.0", "on-upgrade,snapshot+restore"),
        ("echo", "0.3.0", "none"),
        ("api", "0.3.0", "on-upgrade,snapshot+restore,on-timer"),
    ] {
        let server = Server::start(plugin, &[]);
        server.wait_for_log("plugin loaded");
        let line = server.log_lines(|line| line.contains("plugin loaded")).pop().unwrap();
        assert!(line.contains(&format!("api={api} ")), "{plugin}: {line}");
        assert!(line.contains(&format!("exports={exports} ")), "{plugin}: {line}");
        // The chat wants a name; the others echo.
        if plugin.starts_with("echo") {
            let mut client = server.connect("/");
            assert_eq!(ask(&mut client, "hello"), "hello");
        }
    }
}

#[test]
fn a_reload_from_0_1_to_0_3_and_back_keeps_the_connections() {
    let _turn = shared();
    let file = PluginFile::copy_of("echo-raw");
    let server = Server::start_file(&file.path(), &["--idle-timeout", "60"]);
    let mut client = server.connect("/");
    assert_eq!(ask(&mut client, "before"), "before");
    file.replace_by_rename(&fs::read(plugin_path("echo")).unwrap());
    let line = server
        .wait_for_log_lines(1, |line| line.contains("plugin reloaded"))
        .pop()
        .unwrap();
    assert!(line.contains("api=0.3.0"), "{line}");
    assert_eq!(ask(&mut client, "on 0.3"), "on 0.3");
    file.replace_by_rename(&fs::read(plugin_path("echo-raw")).unwrap());
    let line = server
        .wait_for_log_lines(2, |line| line.contains("plugin reloaded"))
        .pop()
        .unwrap();
    assert!(line.contains("api=0.1.0"), "{line}");
    assert_eq!(ask(&mut client, "on 0.1"), "on 0.1");
}
