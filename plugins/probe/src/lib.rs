//! A test plugin that exercises every host import, driven by text commands.
//!
//! - On open: a connection to `/observe` joins the group `observers`; every
//!   connection is sent `id <id>`, and the observers (but not the connection
//!   itself) are sent `opened <id>`.
//! - On close: the observers are sent `closed <id> <code> <reason>`, and
//!   `on-close <id> <code>` is logged at info level.
//! - Binary messages are echoed as binary.
//! - Text messages are commands, answered on the same connection:
//!
//! | command                  | effect and answer                                                      |
//! |--------------------------|------------------------------------------------------------------------|
//! | `whoami`                 | `path=P query=Q subprotocol=S remote=A headers=N` (`-` for none)       |
//! | `info-of <id>`           | the same of another connection (`error gone` if none)                  |
//! | `close <code> <reason>`  | `close`; on error `error <gone\|invalid-code\|reason-too-long>`        |
//! | `broadcast <msg>`        | `broadcast-text` to all but the sender; `sent <count>`                 |
//! | `join <g>`, `leave <g>`  | `ok` (or `error <e>`)                                                  |
//! | `publish <g> <msg>`      | `publish-text` to the group but the sender; `sent <count>`             |
//! | `members <g>`            | the members' ids, sorted, space-separated                              |
//! | `conns`                  | the number of open connections                                         |
//! | `send-to <id> <msg>`     | `send-text` to that connection; `ok` (or `error <e>`)                  |
//! | `close-conn <id> <code>` | `close` of that connection; `ok` (or `error <e>`)                      |
//! | `log <msg>`              | `log` at info level; `ok`                                              |
//! | `panic`                  | panics (the host closes the connection with 1011)                      |
//! | `flood <n> <size>`       | sends `n` text messages of `size` bytes (`x`s) to the sender, stopping |
//! |                          | at the first error (its queue overflowed); no other answer             |
//! | `sequence <n> [close <c>]` | sends `0` to `n-1`; then closes with `c` and sends one more          |
//!
//! And commands that probe the sandbox from inside, through WASI and Rust's `std`:
//!
//! | command                      | effect and answer                                                  |
//! |------------------------------|--------------------------------------------------------------------|
//! | `read-file <path>`           | `std::fs::read_to_string`; `ok <length>` or `error <message>`      |
//! | `write-file <path> <text>`   | `std::fs::write`; `ok` or `error <message>`                        |
//! | `list-dir <path>`            | `std::fs::read_dir`; `ok <entries>` or `error <message>`           |
//! | `connect <addr>`             | `std::net::TcpStream::connect`; `ok` or `error <message>`          |
//! | `env`                        | `env=<count of std::env::vars()> args=<count of std::env::args()>` |
//! | `print <msg>`                | `println!` and `eprintln!` of the message; `ok`                    |
//! | `sleep <ms>`                 | `std::thread::sleep` (a WASI poll on a clock); `slept`             |
//!
//! Anything else is echoed back as text.

// Built against the 0.1.0 world on purpose: the host serves both versions.
wit_bindgen::generate!({ world: "plugin", path: "../../wit/0.1.0" });

use wsplug::plugin::host;
use wsplug::plugin::types::{Error, LogLevel};

/// The group that hears about every connection's open and close.
const OBSERVERS: &str = "observers";

struct Probe;

fn reply(conn: ConnectionId, text: &str) {
    // The only possible error is that the connection is gone: nothing to do then.
    let _ = host::send_text(conn, text);
}

fn error_name(error: Error) -> &'static str {
    match error {
        Error::Gone => "gone",
        Error::InvalidCode => "invalid-code",
        Error::ReasonTooLong => "reason-too-long",
    }
}

fn reply_result(conn: ConnectionId, result: Result<(), Error>) {
    match result {
        Ok(()) => reply(conn, "ok"),
        Err(error) => reply(conn, &format!("error {}", error_name(error))),
    }
}

fn reply_io(conn: ConnectionId, result: std::io::Result<()>) {
    match result {
        Ok(()) => reply(conn, "ok"),
        Err(error) => reply(conn, &format!("error {error}")),
    }
}

/// Answers `conn` with what the host knows of `target`.
fn describe(conn: ConnectionId, target: ConnectionId) {
    let Some(info) = host::info(target) else {
        reply(conn, "error gone");
        return;
    };
    reply(
        conn,
        &format!(
            "path={} query={} subprotocol={} remote={} headers={}",
            info.path,
            info.query.as_deref().unwrap_or("-"),
            info.subprotocol.as_deref().unwrap_or("-"),
            info.remote_address,
            info.headers.len()
        ),
    );
}

/// Runs a command; returns false if `text` is not one, so that it gets echoed.
fn command(conn: ConnectionId, text: &str) -> bool {
    let (name, args) = text.split_once(' ').unwrap_or((text, ""));
    match (name, args) {
        ("whoami", "") => describe(conn, conn),
        ("info-of", target) => {
            let Ok(target) = target.parse::<ConnectionId>() else {
                return false;
            };
            describe(conn, target);
        }
        ("close", args) => {
            let (code, reason) = args.split_once(' ').unwrap_or((args, ""));
            let Ok(code) = code.parse::<u16>() else { return false };
            if let Err(error) = host::close(conn, code, reason) {
                reply(conn, &format!("error {}", error_name(error)));
            }
        }
        ("broadcast", message) => {
            let count = host::broadcast_text(message, Some(conn));
            reply(conn, &format!("sent {count}"));
        }
        ("join", group) if !group.is_empty() => reply_result(conn, host::join(conn, group)),
        ("leave", group) if !group.is_empty() => reply_result(conn, host::leave(conn, group)),
        ("publish", args) => {
            let Some((group, message)) = args.split_once(' ') else {
                return false;
            };
            let count = host::publish_text(group, message, Some(conn));
            reply(conn, &format!("sent {count}"));
        }
        ("members", group) if !group.is_empty() => {
            let mut members = host::group_members(group);
            members.sort_unstable();
            let members: Vec<String> = members.iter().map(u64::to_string).collect();
            reply(conn, &members.join(" "));
        }
        ("conns", "") => reply(conn, &host::connections().len().to_string()),
        ("send-to", args) => {
            let Some((target, message)) = args.split_once(' ') else {
                return false;
            };
            let Ok(target) = target.parse::<ConnectionId>() else {
                return false;
            };
            reply_result(conn, host::send_text(target, message));
        }
        ("close-conn", args) => {
            let Some((target, code)) = args.split_once(' ') else {
                return false;
            };
            let (Ok(target), Ok(code)) = (target.parse::<ConnectionId>(), code.parse::<u16>()) else {
                return false;
            };
            reply_result(conn, host::close(target, code, ""));
        }
        ("log", message) => {
            host::log(LogLevel::Info, message);
            reply(conn, "ok");
        }
        ("panic", "") => panic!("probe: panic on command"),
        ("flood", args) => {
            let Some((Ok(count), Ok(size))) = args
                .split_once(' ')
                .map(|(count, size)| (count.parse::<u64>(), size.parse::<usize>()))
            else {
                return false;
            };
            let message = "x".repeat(size);
            for _ in 0..count {
                if host::send_text(conn, &message).is_err() {
                    break;
                }
            }
        }
        ("sequence", args) => {
            // `sequence N [close CODE]`: sends 0 to N-1, then closes with CODE and sends one
            // more, which must not arrive.
            let (count, close) = args.split_once(" close ").unwrap_or((args, ""));
            let Ok(count) = count.parse::<u32>() else {
                return false;
            };
            for i in 0..count {
                let _ = host::send_text(conn, &i.to_string());
            }
            if let Ok(code) = close.parse::<u16>() {
                let _ = host::close(conn, code, "");
                let _ = host::send_text(conn, "after close");
            }
        }
        ("read-file", path) if !path.is_empty() => match std::fs::read_to_string(path) {
            Ok(text) => reply(conn, &format!("ok {}", text.len())),
            Err(error) => reply(conn, &format!("error {error}")),
        },
        ("write-file", args) => {
            let Some((path, text)) = args.split_once(' ') else {
                return false;
            };
            reply_io(conn, std::fs::write(path, text));
        }
        ("list-dir", path) if !path.is_empty() => match std::fs::read_dir(path) {
            Ok(entries) => reply(conn, &format!("ok {}", entries.count())),
            Err(error) => reply(conn, &format!("error {error}")),
        },
        ("connect", addr) if !addr.is_empty() => reply_io(conn, std::net::TcpStream::connect(addr).map(drop)),
        ("env", "") => reply(
            conn,
            &format!("env={} args={}", std::env::vars().count(), std::env::args().count()),
        ),
        ("sleep", ms) => {
            let Ok(ms) = ms.parse::<u64>() else {
                return false;
            };
            std::thread::sleep(std::time::Duration::from_millis(ms));
            reply(conn, "slept");
        }
        ("print", message) => {
            println!("{message}");
            eprintln!("{message}");
            reply(conn, "ok");
        }
        _ => return false,
    }
    true
}

impl Guest for Probe {
    fn on_open(conn: ConnectionId) {
        if host::info(conn).is_some_and(|info| info.path == "/observe") {
            let _ = host::join(conn, OBSERVERS);
        }
        reply(conn, &format!("id {conn}"));
        host::publish_text(OBSERVERS, &format!("opened {conn}"), Some(conn));
    }

    fn on_text(conn: ConnectionId, text: String) {
        if !command(conn, &text) {
            reply(conn, &text);
        }
    }

    fn on_binary(conn: ConnectionId, data: Vec<u8>) {
        let _ = host::send_binary(conn, &data);
    }

    fn on_close(conn: ConnectionId, code: u16, reason: String) {
        host::publish_text(OBSERVERS, &format!("closed {conn} {code} {reason}"), None);
        host::log(LogLevel::Info, &format!("on-close {conn} {code}"));
    }
}

export!(Probe);
