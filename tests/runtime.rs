//! End-to-end tests of the plugin runtime: the real `host` binary with the test plugins
//! `chaos` (fails on command), `counter` (two builds, for reloads), `probe` and `echo`.
//!
//! - A failing plugin (CPU deadline, out of memory, panic, trap) costs the connection whose
//!   event failed a 1011, and nothing else: the process and every other connection live on.
//! - A plugin that fails every call backs off without closing the server; a burst of
//!   traps from many clients costs each of them a 1011 and stalls nobody.
//! - Hot reload, by the file watcher (three ways of replacing the file) under load and by
//!   SIGHUP; replacements that cannot be loaded leave the old version serving.
//! - The WASI sandbox, the plugin's stdout and stderr in the log, the compile cache.
//!
//! Build the plugins first (`make plugins`). Every test starts its own server with its own
//! compile cache in a fresh temp dir (except the cache test, which shares one between its
//! servers on purpose). The tests take turns (see [`exclusive`] and [`shared`]): those that
//! measure a latency run alone, since on a 2-core machine they would otherwise measure the
//! other tests too; the others run side by side.

mod common;

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Close code of a connection whose event made the plugin fail.
const INTERNAL_ERROR: u16 = 1011;

/// Sends `text` and expects it back (the chaos and echo plugins echo).
fn echo(client: &mut Client, text: &str) {
    client.send_text(text);
    assert_eq!(client.recv_text(), text);
}

/// Opens `n` connections, one after the other, each proven open with an echo. Once a
/// connection's echo has arrived, the plugin has handled its open, so the server numbered
/// the connections in order: the first one the server ever accepted has id 1.
fn open_echoing(server: &Server, n: usize) -> Vec<Client> {
    (0..n)
        .map(|i| {
            let mut client = server.connect("/");
            echo(&mut client, &format!("hello {i}"));
            client
        })
        .collect()
}

/// Expects the close frame the server sends when the plugin failed on this connection's
/// event (1011, before anything else), answers it, and expects the end of the connection.
fn expect_internal_error(client: &mut Client) {
    let (code, reason) = client.recv_close();
    assert_eq!(code, INTERNAL_ERROR, "close reason {reason:?}");
    client.send_close(INTERNAL_ERROR, "");
    client.expect_eof();
}

/// The log split into records: a record starts with a line that starts with a timestamp
/// (`2026-01-31T...`) and goes on until the next such line, so a message that spans lines
/// (an error with a backtrace) stays in one record.
fn log_records(log: &str) -> Vec<String> {
    let mut records: Vec<String> = Vec::new();
    for line in log.lines() {
        let bytes = line.as_bytes();
        let starts_record = bytes.len() > 11 && bytes[..4].iter().all(u8::is_ascii_digit) && bytes[10] == b'T';
        match records.last_mut() {
            Some(record) if !starts_record => {
                record.push('\n');
                record.push_str(line);
            }
            _ => records.push(line.to_owned()),
        }
    }
    records
}

/// Waits until the log holds `count` complete trap records and returns every trap record
/// (`plugin trapped`, at error level). A record is complete once the line with its fields
/// (`export=... trap=...`, its last) has been read: the server writes it in one piece,
/// but the test's log reader takes it in line by line.
fn wait_for_traps(server: &Server, count: usize) -> Vec<String> {
    server.wait_for_log_lines(count, |line| line.contains(" export=") && line.contains(" trap="));
    let records = log_records(&server.log());
    let traps: Vec<String> = records.into_iter().filter(|r| r.contains("plugin trapped")).collect();
    for record in &traps {
        assert!(
            record.lines().next().unwrap().contains(" ERROR "),
            "not at error level: {record}"
        );
    }
    traps
}

/// Asserts that the log holds exactly one trap record, and that it names the plugin, the
/// export, the connection and the trap, with a wasm backtrace that names functions down
/// to the export (the plugins keep their name section).
fn assert_one_trap_logged(server: &Server, plugin: &str, export: &str, conn: u64, trap: &str) {
    let traps = wait_for_traps(server, 1);
    assert_eq!(
        traps.len(),
        1,
        "expected one trap record, got:\n{}",
        traps.join("\n---\n")
    );
    let record = &traps[0];
    for field in [
        format!("plugin=\"{plugin}\""),
        format!("export=\"{export}\""),
        format!("conn={conn} "),
        format!("trap=\"wasm trap: {trap}\""),
        format!(" - {plugin}.wasm!{export}"),
    ] {
        assert!(record.contains(&field), "the trap record lacks {field}:\n{record}");
    }
}

// ---------------------------------------------------------------------------------
// A failing plugin: 1011 for the sender, nothing for anybody else
// ---------------------------------------------------------------------------------

/// Connections that must not notice another connection's failure.
const BYSTANDERS: usize = 50;

/// Starts the chaos plugin with `args`, opens [`BYSTANDERS`] connections, sends `command`
/// on another one and asserts that it alone gets 1011, that the process lives on, and that
/// every bystander is served, including a message each sent while the plugin was failing.
/// Returns how long the 1011 took to arrive after `command` was sent.
fn assert_failure_is_contained(command: &str, args: &[&str], trap: &str) -> Duration {
    let _turn = shared();
    let mut server = Server::start_isolated(&plugin_path("chaos"), args);
    let mut bystanders = open_echoing(&server, BYSTANDERS);
    let mut victim = server.connect("/");

    let sent = Instant::now();
    victim.send_text(command);
    // These queue up behind the failing call (or just before it): none may be lost.
    for (i, bystander) in bystanders.iter_mut().enumerate() {
        bystander.send_text(&format!("during {i}"));
    }
    let (code, reason) = victim.recv_close();
    let latency = sent.elapsed();
    assert_eq!(code, INTERNAL_ERROR, "close reason {reason:?}");
    victim.send_close(INTERNAL_ERROR, "");
    victim.expect_eof();
    server.assert_running();

    // Every reply is a text frame: a close frame instead would fail `recv_text`.
    for (i, bystander) in bystanders.iter_mut().enumerate() {
        assert_eq!(bystander.recv_text(), format!("during {i}"));
        echo(bystander, &format!("after {i}"));
    }
    server.assert_running();
    // The bystanders are connections 1 to 50; the victim is 51.
    assert_one_trap_logged(&server, "chaos", "on-text", BYSTANDERS as u64 + 1, trap);
    if command == "panic" {
        // Printed to stderr before the abort that is the trap.
        server.wait_for_log("chaos: panic on command");
    }
    eprintln!("`{command}`: 1011 after {latency:?}");
    latency
}

#[test]
fn a_call_past_its_cpu_deadline_gets_1011_and_spares_the_others() {
    let latency = assert_failure_is_contained("loop", &["--plugin-deadline-ms", "200"], "interrupt");
    // Interrupted at the deadline (counted in 10 ms epoch ticks), not long after it, and
    // not before it either.
    assert!(
        latency >= Duration::from_millis(150),
        "1011 after {latency:?}, before the deadline"
    );
    assert!(latency < Duration::from_secs(5), "1011 only after {latency:?}");
}

#[test]
fn running_out_of_memory_gets_1011_and_spares_the_others() {
    // Rust's allocator aborts (`unreachable`) when the limit refuses to grow the memory.
    let latency = assert_failure_is_contained(
        "oom",
        &["--plugin-memory-mib", "16"],
        "wasm `unreachable` instruction executed",
    );
    assert!(latency < Duration::from_secs(5), "1011 only after {latency:?}");
}

#[test]
fn a_panic_gets_1011_and_spares_the_others() {
    let latency = assert_failure_is_contained("panic", &[], "wasm `unreachable` instruction executed");
    assert!(latency < Duration::from_secs(5), "1011 only after {latency:?}");
}

#[test]
fn a_trap_gets_1011_and_spares_the_others() {
    let latency = assert_failure_is_contained("trap", &[], "wasm `unreachable` instruction executed");
    assert!(latency < Duration::from_secs(5), "1011 only after {latency:?}");
}

#[test]
fn a_stateless_plugins_trap_gets_1011_and_spares_the_others() {
    let latency = assert_failure_is_contained("trap", &["--stateless"], "wasm `unreachable` instruction executed");
    assert!(latency < Duration::from_secs(5), "1011 only after {latency:?}");
}

#[test]
fn a_stateless_plugins_panic_gets_1011_and_its_message_reaches_the_log() {
    // Rust prints a panic's message to stderr, then aborts: the abort is the trap, and
    // the message is in the log (a connection's thread can write to stderr too).
    let latency = assert_failure_is_contained("panic", &["--stateless"], "wasm `unreachable` instruction executed");
    assert!(latency < Duration::from_secs(5), "1011 only after {latency:?}");
}

#[test]
fn a_stateless_plugins_call_past_its_cpu_deadline_gets_1011_and_spares_the_others() {
    // The call runs on a connection's thread: the epoch deadline interrupts it there too.
    let args = ["--stateless", "--plugin-deadline-ms", "200"];
    let latency = assert_failure_is_contained("loop", &args, "interrupt");
    assert!(
        latency >= Duration::from_millis(150),
        "1011 after {latency:?}, before the deadline"
    );
    assert!(latency < Duration::from_secs(5), "1011 only after {latency:?}");
}

#[test]
fn a_stateless_plugin_that_waits_holds_up_its_own_connection_only() {
    let _turn = exclusive();
    // A WASI sleep on a connection's thread (under the CPU deadline, which counts it):
    // the call waits, and the thread's other connections are served elsewhere meanwhile.
    // One runtime thread: without the hand-over, nothing else would be served.
    let args = ["--stateless", "--plugin-deadline-ms", "10000", "--threads", "1"];
    let server = Server::start_isolated(&plugin_path("probe"), &args);
    let mut others: Vec<Client> = (0..20).map(|_| open_probe(&server, "/").0).collect();
    let (mut sleeper, _) = open_probe(&server, "/");
    let sent = Instant::now();
    sleeper.send_text("sleep 2000");
    for round in 0..5 {
        for (i, other) in others.iter_mut().enumerate() {
            let text = format!("round {round} of {i}");
            assert_eq!(ask(other, &text), text);
        }
    }
    let others_done = sent.elapsed();
    assert_eq!(sleeper.recv_text(), "slept");
    let slept = sent.elapsed();
    assert!(
        others_done < Duration::from_millis(2000) && slept >= Duration::from_millis(2000),
        "the others were answered after {others_done:?}, the sleeper after {slept:?}"
    );
    assert_eq!(ask(&mut sleeper, "again"), "again");
}

#[test]
fn a_stateless_plugins_wait_past_the_bound_gets_1011_and_the_other_wait_goes_on() {
    let _turn = shared();
    // One runtime thread: one call may wait with a hand-over at a time. Of two sleeps,
    // one waits and one is refused (a trap: 1011), whichever comes second.
    let args = ["--stateless", "--plugin-deadline-ms", "10000", "--threads", "1"];
    let server = Server::start_isolated(&plugin_path("probe"), &args);
    let (mut first, _) = open_probe(&server, "/");
    let (mut second, _) = open_probe(&server, "/");
    let (mut bystander, _) = open_probe(&server, "/");
    first.send_text("sleep 1500");
    assert_eq!(ask(&mut bystander, "between"), "between");
    second.send_text("sleep 1500");
    let mut outcomes = [&mut first, &mut second].map(|client| match client.read_frame() {
        (0x81, text) => String::from_utf8(text).unwrap(),
        (0x88, payload) => format!("close {}", u16::from_be_bytes([payload[0], payload[1]])),
        (first_byte, _) => panic!("unexpected frame {first_byte:#x}"),
    });
    outcomes.sort();
    assert_eq!(outcomes, ["close 1011", "slept"]);
    server.wait_for_log("could not wait on a connection's thread");
    assert_eq!(ask(&mut bystander, "after"), "after");
}

/// Environment that keeps the host from capturing and symbolising its own stack for
/// every trap (`a_trap_does_not_make_the_server_load_its_debug_info` checks the host does
/// not anyway), so that VmRSS measures plugin memory alone.
const NO_BACKTRACE: &[(&str, &str)] = &[("RUST_BACKTRACE", "0")];

#[test]
fn repeatedly_running_out_of_memory_does_not_grow_the_server() {
    let _turn = shared();
    let chaos = plugin_path("chaos");
    let mut server = Server::start_isolated_env(&chaos, &["--plugin-memory-mib", "16"], NO_BACKTRACE);
    let at_start = server.rss_kib();
    let mut after_second = 0;
    for i in 1..=20 {
        let mut client = server.connect("/");
        client.send_text("oom");
        expect_internal_error(&mut client);
        server.assert_running();
        if i == 2 {
            after_second = server.rss_kib();
        }
    }
    let after_last = server.rss_kib();
    eprintln!(
        "VmRSS at start: {at_start} KiB, after the 2nd oom: {after_second} KiB, after the 20th: {after_last} KiB"
    );
    assert!(after_last < 200 * 1024, "VmRSS {after_last} KiB after 20 ooms");
    assert!(
        after_last.saturating_sub(after_second) <= 64 * 1024,
        "VmRSS grew from {after_second} KiB to {after_last} KiB between the 2nd and the 20th oom"
    );
    assert_eq!(wait_for_traps(&server, 20).len(), 20);
    let mut client = server.connect("/");
    echo(&mut client, "still serving");
}

#[test]
fn a_trap_does_not_make_the_server_load_its_debug_info() {
    let _turn = shared();
    let chaos = plugin_path("chaos");
    let mut server = Server::start_isolated_env(&chaos, &[], &[("RUST_BACKTRACE", "1")]);
    let at_start = server.rss_kib();
    let mut client = server.connect("/");
    client.send_text("trap");
    expect_internal_error(&mut client);
    server.assert_running();
    let after = server.rss_kib();
    assert!(
        after.saturating_sub(at_start) <= 32 * 1024,
        "VmRSS grew from {at_start} KiB to {after} KiB with one trap"
    );
    let traps = wait_for_traps(&server, 1);
    assert!(
        !traps[0].contains("Stack backtrace:"),
        "the host's stack is logged:\n{}",
        traps[0]
    );
}

// ---------------------------------------------------------------------------------
// After a trap: a fresh instance, on-open replayed, back-off in a crash loop
// ---------------------------------------------------------------------------------

#[test]
fn after_a_panic_a_fresh_instance_serves_the_connections_opened_before() {
    let _turn = shared();
    let mut server = Server::start_isolated(&plugin_path("chaos"), &[]);
    let mut opened_before = open_echoing(&server, 2);
    let mut a = server.connect("/");
    echo(&mut a, "a is open");
    a.send_text("panic");
    expect_internal_error(&mut a);
    for (i, client) in opened_before.iter_mut().enumerate() {
        echo(client, &format!("served by the new instance {i}"));
        echo(client, &format!("and again {i}"));
    }
    server.assert_running();
    // B and C are connections 1 and 2, A is 3.
    assert_one_trap_logged(
        &server,
        "chaos",
        "on-text",
        3,
        "wasm `unreachable` instruction executed",
    );
    // The panic message, from the plugin's stderr.
    server.wait_for_log("chaos: panic on command");
}

#[test]
fn after_a_panic_the_fresh_instance_gets_on_open_for_every_live_connection() {
    // The probe answers every `on-open` with `id <conn>`, so a replayed open is visible.
    let _turn = shared();
    let server = Server::start_isolated(&plugin_path("probe"), &[]);
    let (mut b, b_id) = open_probe(&server, "/");
    let (mut c, c_id) = open_probe(&server, "/");
    let (mut a, _) = open_probe(&server, "/");
    a.send_text("panic");
    expect_internal_error(&mut a);

    // The next event makes a fresh instance, which first gets `on-open` for B and C (and
    // not for A, which is closed), then the event itself.
    b.send_text("after the panic");
    assert_eq!(expect_id(&mut b), b_id);
    assert_eq!(b.recv_text(), "after the panic");
    assert_eq!(expect_id(&mut c), c_id);
    // Exactly once: the next frames are the answers, not another `id`.
    assert_eq!(ask(&mut c, "whoami").split(' ').next(), Some("path=/"));
    assert_eq!(ask(&mut b, "conns"), "2");
    assert_eq!(wait_for_traps(&server, 1).len(), 1);
}

#[test]
fn a_connection_that_opens_right_after_a_trap_gets_on_open_once() {
    // The first event after a trap makes the fresh instance; when that event is an open,
    // the replay must not open the new connection a first time.
    let _turn = shared();
    let server = Server::start_isolated(&plugin_path("probe"), &[]);
    let (mut a, _) = open_probe(&server, "/");
    a.send_text("panic");
    expect_internal_error(&mut a);
    let (mut b, b_id) = open_probe(&server, "/");
    // Exactly once: the next frame is the answer, not a second `id`.
    assert_eq!(
        ask(&mut b, "whoami").split(' ').next(),
        Some("path=/"),
        "connection {b_id}"
    );
    assert_eq!(ask(&mut b, "conns"), "1");
}

#[test]
fn a_trap_is_logged_on_one_error_line() {
    let _turn = shared();
    let server = Server::start_isolated(&plugin_path("chaos"), &[]);
    let mut a = server.connect("/");
    echo(&mut a, "a is open");
    a.send_text("trap");
    expect_internal_error(&mut a);
    server.wait_for_log("plugin trapped");
    let lines = server.log_lines(|line| line.contains(" ERROR "));
    assert_eq!(lines.len(), 1, "error lines: {lines:#?}");
    let line = &lines[0];
    for field in [
        "plugin trapped",
        "plugin=\"chaos\"",
        "export=\"on-text\"",
        "conn=1 ",
        "trap=\"wasm trap: wasm `unreachable` instruction executed\"",
    ] {
        assert!(line.contains(field), "the error line lacks {field}: {line}");
    }
}

#[test]
fn a_crash_loop_backs_off_and_the_server_keeps_serving() {
    crash_loop_backs_off(&[]);
}

#[test]
fn a_stateless_plugins_crash_loop_backs_off_and_the_server_keeps_serving() {
    // The crashes of every thread's instance count together.
    crash_loop_backs_off(&["--stateless"]);
}

fn crash_loop_backs_off(args: &[&str]) {
    // A plugin that fails every call: connections to /panic-on-open make chaos panic in
    // `on-open`, so no instance ever completes a call and each crash counts.
    let _turn = shared();
    let mut server = Server::start_isolated(&plugin_path("chaos"), args);
    let started = Instant::now();
    let mut crashers: Vec<Client> = (0..6).map(|_| server.connect("/panic-on-open")).collect();
    for crasher in &mut crashers {
        expect_internal_error(crasher);
        server.assert_running();
    }
    let crashed = started.elapsed();

    // The plugin is backing off now; the handshake does not need it.
    let mut late = server.connect("/");
    late.stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    echo(&mut late, "served after the crash loop");
    let recovered = started.elapsed();
    server.assert_running();
    echo(&mut late, "and again");

    let warnings = server.wait_for_log_lines(1, |line| line.contains("plugin keeps crashing"));
    for warning in &warnings {
        assert!(
            warning.contains(" WARN ") && warning.contains("plugin=\"chaos\""),
            "{warning}"
        );
    }
    assert_eq!(wait_for_traps(&server, 6).len(), 6);
    // Three crashes free, then 100 + 200 + 400 ms of back-off before the late open.
    assert!(
        recovered >= Duration::from_millis(700),
        "no back-off: the late connection was served {recovered:?} after the first crash"
    );
    eprintln!(
        "crash loop: six 1011s after {crashed:?}, echo on a new connection after {recovered:?}, \
         {} back-off warnings",
        warnings.len()
    );
}

#[test]
fn a_burst_of_traps_from_many_clients_does_not_stall_the_others() {
    // Each attacker's message traps, but every fresh instance serves the replayed opens of
    // the others: one bad message from each of 50 clients is not a plugin that cannot
    // start, so nobody waits for a crash-loop back-off.
    trap_burst(&[]);
}

#[test]
fn a_burst_of_traps_does_not_stall_the_others_of_a_stateless_plugin() {
    trap_burst(&["--stateless"]);
}

/// 50 clients' messages trap at once while a bystander keeps echoing through the same
/// plugin: every attacker gets 1011, the bystander waits under a second each time, and
/// the plugin is never put into back-off.
fn trap_burst(args: &[&str]) {
    let _turn = exclusive();
    let server = Server::start_isolated(&plugin_path("chaos"), args);
    let mut bystander = server.connect("/");
    echo(&mut bystander, "before");
    let mut attackers = open_echoing(&server, 50);
    // Every attacker's frame is written before any is answered.
    let frame = encode_frame(TEXT, b"panic", Some([1, 2, 3, 4]));
    for attacker in &mut attackers {
        attacker.send_raw(&frame);
    }
    let started = Instant::now();
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        let sent = Instant::now();
        echo(&mut bystander, &format!("during the burst {i}"));
        worst = worst.max(sent.elapsed());
    }
    for attacker in &mut attackers {
        expect_internal_error(attacker);
    }
    let all_closed = started.elapsed();
    assert_eq!(wait_for_traps(&server, 50).len(), 50);
    assert!(
        server
            .log_lines(|line| line.contains("plugin keeps crashing"))
            .is_empty(),
        "50 traps by 50 clients put the plugin into back-off"
    );
    assert!(
        worst < Duration::from_secs(1),
        "the bystander waited {worst:?} for an echo"
    );
    eprintln!("trap burst: worst bystander echo {worst:?}, 50 x 1011 within {all_closed:?}");
}

// ---------------------------------------------------------------------------------
// Hot reload
// ---------------------------------------------------------------------------------

/// Connections that keep sending while the plugin is replaced.
const LOAD_CLIENTS: usize = 50;
/// Messages each of them keeps in flight.
const IN_FLIGHT: usize = 4;

/// What a load client reports to the test while it runs.
enum Progress {
    /// Its first answer arrived.
    Answered(usize),
    /// Its first `v2` answer arrived, at this moment.
    Switched(usize, Instant),
}

/// Keeps [`IN_FLIGHT`] messages in flight on `client` until `stop`, then collects the
/// answers still owed and closes cleanly. Returns how many messages it sent and every
/// answer, in order.
fn keep_counting(
    mut client: Client,
    index: usize,
    stop: &AtomicBool,
    progress: &mpsc::Sender<Progress>,
) -> (usize, Vec<String>) {
    let (mut sent, mut answers) = (0, Vec::<String>::new());
    let mut switched = false;
    loop {
        while sent - answers.len() < IN_FLIGHT && !stop.load(Ordering::Relaxed) {
            client.send_text("count");
            sent += 1;
        }
        if sent == answers.len() {
            break;
        }
        // A close frame instead of an answer fails here.
        let answer = client.recv_text();
        if answers.is_empty() {
            let _ = progress.send(Progress::Answered(index));
        }
        if !switched && answer.starts_with("v2:") {
            switched = true;
            let _ = progress.send(Progress::Switched(index, Instant::now()));
        }
        answers.push(answer);
    }
    // Still open: a clean closing handshake.
    client.send_close(1000, "");
    assert_eq!(client.recv_close().0, 1000);
    client.expect_eof();
    (sent, answers)
}

/// Asserts that `answers` (to `sent` messages) are `v1:1, ..., v1:k, v2:1, ..., v2:m` with
/// k and m at least 1: every message answered exactly once and in order, first by v1, then
/// by v2, whose fresh instance got `on-open` replayed and so counts from 1 again.
fn assert_switched_once(index: usize, sent: usize, answers: &[String]) {
    assert_eq!(answers.len(), sent, "connection {index}: {sent} messages sent");
    let k = answers.iter().take_while(|a| a.starts_with("v1:")).count();
    let expected = (1..=k)
        .map(|n| format!("v1:{n}"))
        .chain((1..=sent - k).map(|n| format!("v2:{n}")));
    for (at, (answer, expected)) in answers.iter().zip(expected).enumerate() {
        assert_eq!(
            *answer,
            expected,
            "connection {index}: answer {at} of {sent} (answers around it: {:?})",
            &answers[at.saturating_sub(3)..(at + 3).min(sent)]
        );
    }
    assert!(k >= 1, "connection {index}: no v1 answer");
    assert!(sent - k >= 1, "connection {index}: no v2 answer");
}

/// Hands `progress` reports to `on_report` until it says enough arrived; panics at `deadline`.
fn wait_for_progress(
    progress: &mpsc::Receiver<Progress>,
    deadline: Instant,
    what: &str,
    mut on_report: impl FnMut(Progress) -> bool,
) {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match progress.recv_timeout(left) {
            Ok(report) => {
                if on_report(report) {
                    return;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("timed out waiting until {what}"),
            // A client thread panicked: its join below reports why.
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("every load client stopped before {what}"),
        }
    }
}

/// Serves counter v1 from a file to [`LOAD_CLIENTS`] busy connections, replaces the file
/// with counter v2 by `replace`, and checks the switch: no connection closed, every
/// message answered once and in order, v2 answering within 2 s of the replacement.
fn reload_under_load(how: &str, replace: impl FnOnce(&PluginFile)) {
    reload_under_load_with(how, &[], replace, assert_switched_once);
}

/// [`reload_under_load`] with the host's `args`, checking each connection's answers with
/// `check(index, sent, answers)`.
fn reload_under_load_with(
    how: &str,
    args: &[&str],
    replace: impl FnOnce(&PluginFile),
    check: fn(usize, usize, &[String]),
) {
    let _turn = exclusive();
    let plugin = PluginFile::copy_of("counter-v1");
    let mut server = Server::start_isolated(&plugin.path(), args);
    let clients: Vec<Client> = (0..LOAD_CLIENTS).map(|_| server.connect("/")).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let (report, progress) = mpsc::channel();
    let workers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(index, client)| {
            let (stop, report) = (stop.clone(), report.clone());
            thread::spawn(move || keep_counting(client, index, &stop, &report))
        })
        .collect();
    drop(report);

    let mut answered = [false; LOAD_CLIENTS];
    let mut left = LOAD_CLIENTS;
    wait_for_progress(&progress, Instant::now() + TIMEOUT, "every client had an answer", |p| {
        if let Progress::Answered(i) = p
            && !std::mem::replace(&mut answered[i], true)
        {
            left -= 1;
        }
        left == 0
    });

    replace(&plugin);
    let replaced = Instant::now();
    let mut switched: [Option<Instant>; LOAD_CLIENTS] = [None; LOAD_CLIENTS];
    let mut left = LOAD_CLIENTS;
    wait_for_progress(&progress, replaced + TIMEOUT, "every client had a v2 answer", |p| {
        if let Progress::Switched(i, at) = p
            && switched[i].replace(at).is_none()
        {
            left -= 1;
        }
        left == 0
    });
    stop.store(true, Ordering::Relaxed);

    let mut total = 0;
    for (index, worker) in workers.into_iter().enumerate() {
        let (sent, answers) = worker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        check(index, sent, &answers);
        total += sent;
    }
    server.assert_running();

    let first = switched.iter().flatten().min().unwrap().duration_since(replaced);
    let last = switched.iter().flatten().max().unwrap().duration_since(replaced);
    server.wait_for_log("plugin reloaded");
    let reloads = server.log_lines(|line| line.contains("plugin reloaded"));
    assert_eq!(reloads.len(), 1, "{reloads:#?}");
    // Nor did the watcher read a half-written file.
    let errors = server.log_lines(|line| line.contains(" ERROR "));
    assert!(errors.is_empty(), "{errors:#?}");
    let file = plugin.path().display().to_string();
    assert!(reloads[0].contains(&file), "{}", reloads[0]);
    eprintln!(
        "reload by {how}: first v2 answer {first:?} after the write, last connection switched after \
         {last:?}; {total} messages; {}",
        reloads[0]
    );
    assert!(
        first < Duration::from_secs(2),
        "first v2 answer only {first:?} after the write"
    );
}

#[test]
fn hot_reload_under_load_of_a_file_rewritten_in_place() {
    let v2 = fs::read(plugin_path("counter-v2")).unwrap();
    reload_under_load("an in-place write", |plugin| plugin.replace_in_place(&v2));
}

#[test]
fn hot_reload_under_load_of_a_file_copied_over() {
    let v2 = plugin_path("counter-v2");
    reload_under_load("fs::copy", |plugin| {
        fs::copy(&v2, plugin.path()).unwrap();
    });
}

#[test]
fn hot_reload_under_load_of_a_file_renamed_over() {
    let v2 = fs::read(plugin_path("counter-v2")).unwrap();
    reload_under_load("a rename", |plugin| plugin.replace_by_rename(&v2));
}

/// Asserts that `answers` (to `sent` messages) are v1 answers, then v2 answers, at least
/// one of each: every message answered exactly once and in order, and no v1 answer once a
/// v2 one came. (The counts say nothing here: counter keeps its counts in the instance, and
/// a stateless plugin's calls go to whichever thread's instance runs the connection.)
fn assert_switched_once_stateless(index: usize, sent: usize, answers: &[String]) {
    assert_eq!(answers.len(), sent, "connection {index}: {sent} messages sent");
    let k = answers.iter().take_while(|a| a.starts_with("v1:")).count();
    assert!(
        answers[k..].iter().all(|a| a.starts_with("v2:")),
        "connection {index}: a v1 answer after a v2 one, or neither: {answers:?}"
    );
    assert!(k >= 1, "connection {index}: no v1 answer");
    assert!(sent - k >= 1, "connection {index}: no v2 answer");
}

#[test]
fn hot_reload_under_load_of_a_stateless_plugin() {
    // Every thread's instance is replaced before its next call: no connection closes,
    // nothing is lost, and once one call saw the new version every later one does.
    let v2 = fs::read(plugin_path("counter-v2")).unwrap();
    reload_under_load_with(
        "a rename (stateless)",
        &["--stateless"],
        |plugin| plugin.replace_by_rename(&v2),
        assert_switched_once_stateless,
    );
}

/// Sends `count` messages on each of `clients` before reading any reply, then expects every
/// echo in order.
fn echo_pipelined(clients: &mut [Client], count: usize) {
    for (c, client) in clients.iter_mut().enumerate() {
        for i in 0..count {
            client.send_text(&format!("{c}:{i}"));
        }
    }
    for (c, client) in clients.iter_mut().enumerate() {
        for i in 0..count {
            assert_eq!(client.recv_text(), format!("{c}:{i}"));
        }
    }
}

#[test]
fn a_burst_of_small_messages_read_at_once_is_echoed_whole() {
    // 20,000 frames in one write: the host reads thousands at a time. A stateless plugin
    // answers each while the connection is still reading them; the replies must be encoded
    // as they come, not pile up in the outbound queue past its hard cap (4096 messages
    // with the default limits), which would drop a client that reads them all.
    let _turn = shared();
    const BURST: usize = 20_000;
    for args in [&[][..], &["--stateless"][..]] {
        let mut server = Server::start_isolated(&plugin_path("echo"), args);
        let mut client = server.connect("/");
        let burst: Vec<u8> = (0..BURST)
            .flat_map(|i| encode_frame(TEXT, format!("{i}").as_bytes(), Some([9, 8, 7, 6])))
            .collect();
        let reader = {
            let mut reader = Client::over(client.stream.try_clone().unwrap());
            thread::spawn(move || (0..BURST).all(|i| reader.recv_text() == format!("{i}")))
        };
        client.send_raw(&burst);
        assert!(reader.join().unwrap(), "{args:?}: an echo out of order");
        server.assert_running();
    }
}

#[test]
fn what_a_plugin_sends_its_own_connection_keeps_its_order() {
    // A stateless plugin's sends to the connection whose message it handles skip the
    // outbound queue, up to 64 a call; the later ones, and a close, take the queue. The
    // client sees them in the order sent either way, and nothing sent after the close.
    let _turn = shared();
    for args in [&[][..], &["--stateless"][..]] {
        let server = Server::start_isolated(&plugin_path("probe"), args);
        let mut client = server.connect("/");
        assert!(client.recv_text().starts_with("id "), "the probe's greeting");
        for count in [1, 200] {
            client.send_text(&format!("sequence {count}"));
            for i in 0..count {
                assert_eq!(client.recv_text(), i.to_string(), "{args:?}");
            }
        }
        client.send_text("sequence 3 close 4000");
        for i in 0..3 {
            assert_eq!(client.recv_text(), i.to_string(), "{args:?}");
        }
        assert_eq!(client.recv_close().0, 4000, "{args:?}");
    }
}

#[test]
fn a_stateless_plugin_is_called_on_the_connections_threads() {
    // One instance serves a plugin on its thread; a stateless one gets an instance on each
    // thread that runs its connections too. Either way every message comes back in order.
    let _turn = shared();
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    // The plugin's threads: none of its own (shared), one per core, or as `--threads` says.
    for (args, threads) in [
        (&["--serve-metrics"][..], None),
        (&["--serve-metrics", "--stateless"][..], Some(cores)),
        (&["--serve-metrics", "--stateless", "--threads", "1"][..], Some(1)),
    ] {
        let server = Server::start_isolated(&plugin_path("echo"), args);
        let mut clients: Vec<Client> = (0..20).map(|_| server.connect("/")).collect();
        echo_pipelined(&mut clients, 200);
        let instances = Scrape::of(server.addr).value("wsplug_plugin_instances", &[("route", "default")]);
        match threads {
            None => assert_eq!(instances, 1.0, "shared: the plugin thread's instance alone"),
            // The plugin thread's, and one on each runtime thread that ran a connection.
            Some(1) => assert_eq!(instances, 2.0, "{args:?}"),
            Some(threads) => assert!(
                (2.0..=(1 + threads) as f64).contains(&instances),
                "{args:?}: {instances} instances, expected 2 to {}",
                1 + threads
            ),
        }
        eprintln!("{args:?}: {instances} instances");
    }
}

/// Asks until the answer is a `v2` one, which it returns; the answers before must be `v1`
/// and continue the count from `v1:<last_v1>`. Panics after [`TIMEOUT`].
fn ask_until_v2(client: &mut Client, mut last_v1: u64) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let answer = ask(client, "count");
        if answer.starts_with("v2:") {
            return answer;
        }
        last_v1 += 1;
        assert_eq!(answer, format!("v1:{last_v1}"));
        assert!(Instant::now() < deadline, "still v1 after {TIMEOUT:?}");
    }
}

#[test]
fn sighup_reloads_the_plugin_when_the_file_is_not_watched() {
    let _turn = shared();
    let plugin = PluginFile::copy_of("counter-v1");
    let server = Server::start_isolated(&plugin.path(), &["--no-watch"]);
    let mut client = server.connect("/");
    assert_eq!(ask(&mut client, "count"), "v1:1");
    plugin.replace_by_rename(&fs::read(plugin_path("counter-v2")).unwrap());
    for n in 2..=5 {
        assert_eq!(ask(&mut client, "count"), format!("v1:{n}"));
    }

    let signalled = Instant::now();
    server.hangup();
    assert_eq!(ask_until_v2(&mut client, 5), "v2:1");
    let latency = signalled.elapsed();
    assert_eq!(ask(&mut client, "count"), "v2:2");
    server.wait_for_log("plugin reloaded");
    assert_eq!(server.log_lines(|line| line.contains("plugin reloaded")).len(), 1);
    eprintln!("SIGHUP: v2 answering {latency:?} after the signal");
}

/// Replacements the watcher must refuse: what they are, their bytes, and what the error
/// line must say about them.
fn unloadable_replacements() -> [(&'static str, Vec<u8>, [&'static str; 2]); 3] {
    [
        (
            "garbage",
            pseudo_random_bytes(4096),
            ["is not a valid WebAssembly component", "magic header not detected"],
        ),
        (
            // A valid core module: the magic and version 1, no sections.
            "a core module",
            b"\0asm\x01\0\0\0".to_vec(),
            [
                "is not a valid WebAssembly component",
                "wasm module with a component parser",
            ],
        ),
        (
            // A valid component (version 0x0d, layer 1) of another world: the empty one.
            "an empty component",
            b"\0asm\x0d\0\x01\0".to_vec(),
            ["does not implement the wsplug:plugin world", "no export"],
        ),
    ]
}

#[test]
fn a_replacement_that_cannot_be_loaded_leaves_the_old_version_serving() {
    let _turn = shared();
    let plugin = PluginFile::copy_of("counter-v1");
    let server = Server::start_isolated(&plugin.path(), &[]);
    let mut client = server.connect("/");
    assert_eq!(ask(&mut client, "count"), "v1:1");

    let cases = unloadable_replacements();
    let refused = |line: &str| line.contains("reload failed");
    let mut count = 1;
    for (i, (what, bytes, _)) in cases.iter().enumerate() {
        plugin.replace_by_rename(bytes);
        server.wait_for_log_lines(i + 1, refused);
        // The same instance serves on: its count goes on.
        for _ in 0..3 {
            count += 1;
            assert_eq!(ask(&mut client, "count"), format!("v1:{count}"), "after {what}");
        }
    }

    // A good version at last. Once it answers, the watcher has handled every earlier
    // change (it handles them in order), so the number of refusals is final.
    plugin.replace_by_rename(&fs::read(plugin_path("counter-v2")).unwrap());
    assert_eq!(ask_until_v2(&mut client, count), "v2:1");

    server.wait_for_log("plugin reloaded");
    let file = plugin.path().display().to_string();
    let refusals = server.log_lines(refused);
    assert_eq!(
        refusals.len(),
        cases.len(),
        "one refusal per replacement: {refusals:#?}"
    );
    for (line, (what, _, causes)) in refusals.iter().zip(&cases) {
        assert!(line.contains(" ERROR "), "{what}: {line}");
        assert!(line.contains(&file), "{what}: the line does not name {file}: {line}");
        for cause in causes {
            assert!(line.contains(cause), "{what}: the line does not say {cause:?}: {line}");
        }
    }
    let errors = server.log_lines(|line| line.contains(" ERROR "));
    assert_eq!(errors.len(), cases.len(), "{errors:#?}");
    assert_eq!(server.log_lines(|line| line.contains("plugin reloaded")).len(), 1);
}

#[test]
fn a_refused_replacement_is_logged_on_one_line() {
    let _turn = shared();
    let plugin = PluginFile::copy_of("counter-v1");
    let server = Server::start_isolated(&plugin.path(), &[]);
    let file = format!("file=\"{}\"", plugin.path().display());
    for (i, (what, bytes, _)) in unloadable_replacements().iter().enumerate() {
        plugin.replace_by_rename(bytes);
        let refusals = server.wait_for_log_lines(i + 1, |line| line.contains("reload failed"));
        let line = &refusals[i];
        assert!(line.contains(&file), "{what}: the error line lacks {file}: {line}");
    }
}

// ---------------------------------------------------------------------------------
// The sandbox
// ---------------------------------------------------------------------------------

#[test]
fn the_sandbox_grants_no_files_sockets_environment_or_arguments() {
    let _turn = shared();
    let host_dir = TempDir::new("not-granted");
    fs::write(host_dir.join("secret.txt"), "secret").unwrap();
    let server = Server::start_isolated(&plugin_path("probe"), &[]);
    let (mut client, _) = open_probe(&server, "/");
    let secret = host_dir.join("secret.txt").display().to_string();
    let escaped = host_dir.join("escaped.txt").display().to_string();
    for command in [
        "read-file /etc/hostname".to_owned(),
        "list-dir /".to_owned(),
        "list-dir .".to_owned(),
        format!("read-file {secret}"),
        format!("list-dir {}", host_dir.arg()),
        format!("write-file {escaped} escaped"),
    ] {
        let answer = ask(&mut client, &command);
        assert!(answer.starts_with("error "), "{command}: {answer}");
    }
    assert!(!host_dir.join("escaped.txt").exists());
    // Not even the server's own port, on the loopback interface.
    let command = format!("connect 127.0.0.1:{}", server.addr.port());
    let answer = ask(&mut client, &command);
    assert!(answer.starts_with("error "), "{command}: {answer}");
    assert_eq!(ask(&mut client, "env"), "env=0 args=0");
}

#[test]
fn a_granted_directory_is_readable_at_data_and_nothing_else_is() {
    let _turn = shared();
    let data = TempDir::new("data");
    fs::write(data.join("hello.txt"), "hello, plugin\n").unwrap();
    let server = Server::start_isolated(&plugin_path("probe"), &["--plugin-dir", data.arg()]);
    let (mut client, _) = open_probe(&server, "/");
    assert_eq!(ask(&mut client, "read-file /data/hello.txt"), "ok 14");
    assert_eq!(ask(&mut client, "list-dir /data"), "ok 1");
    for command in [
        "write-file /data/hello.txt overwritten",
        "write-file /data/new.txt created",
        "read-file /data/../etc/hostname",
        "read-file /etc/hostname",
        "list-dir /",
    ] {
        let answer = ask(&mut client, command);
        assert!(answer.starts_with("error "), "{command}: {answer}");
    }
    assert_eq!(fs::read_to_string(data.join("hello.txt")).unwrap(), "hello, plugin\n");
    assert!(!data.join("new.txt").exists());
}

#[test]
fn the_plugins_stdout_and_stderr_go_to_the_log() {
    let _turn = shared();
    // Stateless, the plugin prints from a connection's thread, where WASI's blocking
    // writes must not block on the runtime (they once failed the call with 1011).
    // Rust's `println!`, JavaScript's `console.log` and Python's `print` each reach
    // them by a path of their own language's runtime.
    for plugin in ["probe", "probe-js", "probe-py"] {
        for args in [&[][..], &["--stateless"][..]] {
            let server = Server::start(plugin, args);
            let mut client = server.connect("/");
            if plugin == "probe" {
                expect_id(&mut client); // the Rust probe greets with the connection's id
            }
            assert_eq!(ask(&mut client, "print hi"), "ok", "{plugin} {args:?}");
            for (stream, level) in [("stdout", " INFO "), ("stderr", " WARN ")] {
                let field = format!("stream=\"{stream}\"");
                let lines = server.wait_for_log_lines(1, |line| line.contains(&field));
                assert_eq!(lines.len(), 1, "{plugin} {args:?}: {lines:#?}");
                let line = &lines[0];
                assert!(
                    line.contains(" hi ") && line.contains(&format!("plugin=\"{plugin}\"")) && line.contains(level),
                    "{plugin} {args:?}: {line}"
                );
            }
            assert_eq!(ask(&mut client, "print again"), "ok", "{plugin} {args:?}");
        }
    }
}

// ---------------------------------------------------------------------------------
// The compile cache
// ---------------------------------------------------------------------------------

#[test]
fn compiled_plugins_are_cached_and_a_corrupt_cache_entry_is_ignored() {
    let _turn = shared();
    let cache = TempDir::new("shared-cache");
    let echo_plugin = plugin_path("echo");
    // Starts a server on the shared cache; returns it and its `plugin loaded` line.
    let start = || {
        let server = Server::start_file(&echo_plugin, &["--cache-dir", cache.arg()]);
        let loaded = server.wait_for_log_lines(1, |line| line.contains("plugin loaded"));
        let mut client = server.connect("/");
        echo(&mut client, "compiled code works");
        (server, loaded[0].clone())
    };

    let (server, loaded) = start();
    assert!(loaded.contains("cache_hit=false"), "{loaded}");
    drop(server);
    let (server, loaded) = start();
    assert!(loaded.contains("cache_hit=true"), "{loaded}");
    drop(server);

    let entries: Vec<_> = fs::read_dir(cache.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(!entries.is_empty(), "nothing cached in {}", cache.path().display());
    for entry in &entries {
        fs::write(entry, pseudo_random_bytes(1000)).unwrap();
    }
    let (server, loaded) = start();
    assert!(loaded.contains("cache_hit=false"), "{loaded}");
    assert_eq!(
        server
            .log_lines(|line| line.contains("ignoring unusable cached plugin code"))
            .len(),
        1,
        "{}",
        server.log()
    );
    drop(server);
    // The recompiled code replaced the corrupt entry.
    let (_server, loaded) = start();
    assert!(loaded.contains("cache_hit=true"), "{loaded}");
}
