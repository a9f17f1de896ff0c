//! Exercises every capability of the plugin API 0.3 on command, for the host's tests.
//!
//! Handshakes (`on-upgrade`), by path:
//! - `/reject?status=N&body=TEXT`: rejects with that status and body, and header `x-plugin: api`
//!   (and `headers=K` more headers `x-0` to `x-{K-1}`, of `size=S` bytes each).
//! - `/spin`: never returns (the deadline cuts it: 503). `/trap`: panics (503).
//! - `/protocol?pick=P`: accepts with subprotocol P (the host refuses one not offered).
//! - `/attach?data=D&group=G`: accepts with attachment D (or `size=N`: N bytes), joining group G.
//! - anything else: accepts.
//!
//! Text commands, one reply each unless said otherwise:
//! - `opens`: how many `on-open` calls this instance's state has seen.
//! - `attach D` / `attachment` / `attachment-of ID`: set or read attachments.
//! - `timer ID DELAY [REPEAT]`, `cancel ID`, `pending ID`: timers. A timer fires as the
//!   text `timer ID late_us N` to connection `ID >> 20` (the tests pick ids that way),
//!   where N is how late it came, by this instance's clock, in microseconds (0 if the
//!   instance did not set it: after a reload or a trap). An id with bit 19 set traps
//!   instead.
//! - `kv-set K V [TTL]`, `kv-get K`, `kv-del K`, `kv-list PREFIX [AFTER [LIMIT]]`,
//!   `kv-fill N` (N writes in one call), `kv-read N` (N reads of what `kv-fill N` wrote,
//!   `read F` with F found), `kv-big key|value` (one over the limit).
//!   `kv-relay K`: stores K, then sends `relayed K` to every other connection and
//!   replies `ok K`.
//!   `kv-sync`: waits until this plugin's writes are durable (`synced`). `kv-remove K`:
//!   removes K without asking whether it was set (`removed`).
//! - `utf8 valid|invalid`: sends `café`, or bytes that are not UTF-8, with `send-text-utf8`
//!   (`ok` or `error E`). `publish-utf8 G T`: publishes T to group G as bytes
//!   (`published N position P`). `position G`: group G's stream position (`error E`
//!   if it keeps no history).
//! - `+`: counts one, no reply; `total`: the count. The count, the memos, the blob and
//!   the number of restores survive reloads through `snapshot`/`restore`.
//! - `memo K V` / `memo? K`, `grow N` (an N-byte blob in the state), `blob` (its size
//!   and checksum), `restores` (how many restores the state has been through).
//! - `fail-snapshot` / `fail-restore`: the next snapshot (or the restore of the next
//!   version) refuses. `trap`: panics. `spin`: never returns.
//! - `group-size G`: members of group G. `echo T`: replies T.
//! - `join G`: joins group G (`ok` or `error E`). `join-many N LEN`: joins N groups whose
//!   names are LEN bytes long; `joined K E` (K joined, E the first error or `none`).
//! - `id`: `id N`, this connection's id.
//! - `send-to ID T`: sends T to connection ID (`ok` or `error E`). `conns`: how many
//!   connections are open. `info-of ID`: `info PATH HEADER-NAMES` (comma-separated,
//!   `-` for none) or `info none`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use wsplug_plugin::{
    Accept, ConnectionId, Plugin, Reject, TimerId, UpgradeDecision, UpgradeRequest, history, host, store, timers,
};

#[derive(Default)]
struct State {
    opens: u64,
    count: u64,
    restores: u64,
    fail_snapshot: bool,
    fail_restore: bool,
    memos: BTreeMap<String, String>,
    blob: Vec<u8>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
    /// When each timer this instance set is next due, and its repetition.
    static DUE: RefCell<BTreeMap<TimerId, (Instant, Option<Duration>)>> = const { RefCell::new(BTreeMap::new()) };
}

fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    STATE.with(|state| f(&mut state.borrow_mut()))
}

fn reply(conn: ConnectionId, text: &str) {
    let _ = host::send_text(conn, text);
}

struct Api;

impl Plugin for Api {
    fn on_upgrade(request: UpgradeRequest) -> UpgradeDecision {
        match request.path.as_str() {
            "/reject" => UpgradeDecision::Reject(Reject {
                status: request
                    .query_param("status")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(403),
                headers: {
                    let count: usize = request.query_param("headers").and_then(|n| n.parse().ok()).unwrap_or(0);
                    let size: usize = request.query_param("size").and_then(|n| n.parse().ok()).unwrap_or(1);
                    let mut headers = vec![("x-plugin".to_owned(), "api".to_owned())];
                    headers.extend((0..count).map(|i| (format!("x-{i}"), "v".repeat(size))));
                    headers
                },
                body: request.query_param("body").unwrap_or_default().into_bytes(),
            }),
            "/spin" => spin(),
            "/trap" => panic!("on-upgrade told to trap"),
            "/protocol" => UpgradeDecision::Accept(Accept {
                subprotocol: request.query_param("pick"),
                attachment: None,
                groups: Vec::new(),
            }),
            "/attach" => UpgradeDecision::Accept(Accept {
                subprotocol: None,
                attachment: match request.query_param("size") {
                    Some(size) => Some(vec![b'x'; size.parse().unwrap_or_default()]),
                    None => request.query_param("data").map(String::into_bytes),
                },
                groups: request.query_param("group").into_iter().collect(),
            }),
            _ => UpgradeDecision::accept(),
        }
    }

    fn on_open(_conn: ConnectionId) {
        with(|s| s.opens += 1);
    }

    fn on_text(conn: ConnectionId, text: String) {
        if text == "+" {
            with(|s| s.count += 1);
            return;
        }
        let (command, rest) = text.split_once(' ').unwrap_or((&text, ""));
        let args: Vec<&str> = rest.split(' ').filter(|a| !a.is_empty()).collect();
        let answer = match (command, &args[..]) {
            ("opens", []) => with(|s| s.opens.to_string()),
            ("total", []) => with(|s| format!("total {}", s.count)),
            ("restores", []) => with(|s| format!("restores {}", s.restores)),
            ("echo", _) => rest.to_owned(),
            ("attach", _) => result(host::set_attachment(conn, rest.as_bytes())),
            ("attachment", []) => attachment(conn),
            ("attachment-of", [id]) => attachment(id.parse().unwrap_or_default()),
            ("group-size", [group]) => host::group_members(group).len().to_string(),
            ("join", [group]) => result(host::join(conn, group)),
            ("join-many", [n, len]) => {
                let (n, len): (usize, usize) = (n.parse().unwrap_or(0), len.parse().unwrap_or(1));
                let mut error = None;
                let joined = (0..n)
                    .filter(|i| match host::join(conn, &format!("{i:0>len$}")) {
                        Ok(()) => true,
                        Err(e) => {
                            error.get_or_insert(e.name());
                            false
                        }
                    })
                    .count();
                format!("joined {joined} {}", error.unwrap_or("none"))
            }
            ("id", []) => format!("id {conn}"),
            ("send-to", [id, text]) => result(host::send_text(id.parse().unwrap_or_default(), text)),
            ("conns", []) => host::connections().len().to_string(),
            ("info-of", [id]) => match host::info(id.parse().unwrap_or_default()) {
                Some(info) => {
                    let names: Vec<&str> = info.headers.iter().map(|(name, _)| name.as_str()).collect();
                    let names = if names.is_empty() {
                        "-".to_owned()
                    } else {
                        names.join(",")
                    };
                    format!("info {} {names}", info.path)
                }
                None => "info none".into(),
            },
            ("timer", [id, delay, repeat @ ..]) => {
                let id: TimerId = id.parse().unwrap_or_default();
                let delay: u32 = delay.parse().unwrap_or_default();
                let repeat = repeat.first().map(|r| r.parse().unwrap_or(0));
                let ms = |ms: u32| Duration::from_millis(ms.into());
                DUE.with(|due| {
                    due.borrow_mut()
                        .insert(id, (Instant::now() + ms(delay), repeat.map(ms)))
                });
                result(timers::set_timer(id, delay, repeat))
            }
            ("cancel", [id]) => format!("cancelled {}", timers::cancel_timer(id.parse().unwrap_or_default())),
            ("pending", [id]) => format!("pending {}", timers::timer_pending(id.parse().unwrap_or_default())),
            ("kv-set", [key, value, ttl @ ..]) => {
                let ttl = ttl.first().and_then(|t| t.parse().ok());
                match store::set(key, value.as_bytes(), ttl) {
                    Ok(()) => "ok".into(),
                    Err(error) => format!("error {error:?}"),
                }
            }
            // Stores a message, then relays it: to the others as `relayed KEY`, to the
            // sender as `ok KEY`.
            ("kv-relay", [key]) => match store::set(key, b"v", None) {
                Ok(()) => {
                    host::broadcast_text(&format!("relayed {key}"), Some(conn));
                    format!("ok {key}")
                }
                Err(error) => format!("error {error:?}"),
            },
            ("kv-get", [key]) => match store::get(key) {
                Ok(Some(value)) => format!("value {}", String::from_utf8_lossy(&value)),
                Ok(None) => "none".into(),
                Err(error) => format!("error {error:?}"),
            },
            ("kv-remove", [key]) => match store::remove(key) {
                Ok(()) => "removed".into(),
                Err(error) => format!("error {error:?}"),
            },
            ("kv-del", [key]) => match store::delete(key) {
                Ok(was) => format!("deleted {was}"),
                Err(error) => format!("error {error:?}"),
            },
            ("kv-list", [prefix, page @ ..]) => {
                let after = page.first().map(|a| a.to_string());
                let limit = page.get(1).and_then(|l| l.parse().ok()).unwrap_or(100);
                match store::list_keys(prefix, after.as_deref(), limit) {
                    Ok(keys) => format!("keys {}", keys.join(",")),
                    Err(error) => format!("error {error:?}"),
                }
            }
            ("kv-sync", []) => match store::sync() {
                Ok(()) => "synced".into(),
                Err(error) => format!("error {error:?}"),
            },
            ("utf8", [which]) => {
                let text: &[u8] = if *which == "valid" {
                    "café".as_bytes()
                } else {
                    b"caf\xc3"
                };
                result(host::send_text_utf8(conn, text))
            }
            ("publish-utf8", [group, text]) => match host::publish_text_utf8(group, text.as_bytes(), None) {
                Ok(published) => format!("published {} position {:?}", published.delivered, published.position),
                Err(error) => format!("error {}", error.name()),
            },
            ("position", [group]) => match history::group_position(group) {
                Ok(position) => format!("position {} {}", position.epoch, position.offset),
                Err(error) => format!("error {}", error.name()),
            },
            ("kv-read", [n]) => {
                let n: u32 = n.parse().unwrap_or_default();
                let found = (0..n)
                    .filter(|i| matches!(store::get(&format!("fill/{i:08}")), Ok(Some(_))))
                    .count();
                format!("read {found}")
            }
            ("kv-fill", [n]) => {
                let n: u32 = n.parse().unwrap_or_default();
                let failed = (0..n)
                    .filter(|i| store::set(&format!("fill/{i:08}"), b"v", None).is_err())
                    .count();
                format!("filled {} failed {failed}", n as usize - failed)
            }
            ("kv-big", [which]) => {
                let big = "k".repeat(1025);
                let outcome = match *which {
                    "key" => store::set(&big, b"v", None),
                    _ => store::set("k", &vec![0; (1 << 20) + 1], None),
                };
                format!("{outcome:?}")
            }
            ("memo", [key, value]) => {
                with(|s| s.memos.insert(key.to_string(), value.to_string()));
                "ok".into()
            }
            ("memo?", [key]) => with(|s| s.memos.get(*key).cloned().unwrap_or_else(|| "none".into())),
            ("grow", [n]) => {
                let n: usize = n.parse().unwrap_or_default();
                with(|s| s.blob = (0..n).map(|i| (i % 251) as u8).collect());
                "ok".into()
            }
            ("blob", []) => with(|s| {
                let sum: u64 = s.blob.iter().map(|&b| u64::from(b)).sum();
                format!("blob {} {sum}", s.blob.len())
            }),
            ("fail-snapshot", []) => {
                with(|s| s.fail_snapshot = true);
                "ok".into()
            }
            ("fail-restore", []) => {
                with(|s| s.fail_restore = true);
                "ok".into()
            }
            ("trap", []) => panic!("told to trap"),
            ("spin", []) => spin(),
            _ => format!("unknown command {text:?}"),
        };
        reply(conn, &answer);
    }

    fn on_timer(id: TimerId) {
        if id & TRAPPING_TIMER != 0 {
            panic!("timer {id} told to trap");
        }
        let now = Instant::now();
        let late = DUE.with(|due| {
            let mut due = due.borrow_mut();
            let (at, repeat) = due.remove(&id)?;
            if let Some(period) = repeat {
                due.insert(id, (at + period, repeat));
            }
            Some(now.saturating_duration_since(at).as_micros())
        });
        reply(id >> 20, &format!("timer {id} late_us {}", late.unwrap_or(0)));
    }

    fn snapshot() -> Result<Vec<u8>, String> {
        with(|s| {
            if std::mem::take(&mut s.fail_snapshot) {
                return Err("told to refuse".into());
            }
            Ok(encode(s))
        })
    }

    fn restore(state: Vec<u8>) -> Result<(), String> {
        let mut restored = decode(&state).ok_or("unreadable state")?;
        if restored.fail_restore {
            return Err("told to refuse".into());
        }
        restored.restores += 1;
        with(|s| *s = restored);
        Ok(())
    }
}

/// A timer id with this bit set traps when it fires.
const TRAPPING_TIMER: TimerId = 1 << 19;

fn spin() -> ! {
    let mut n = 0u64;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

fn result(outcome: Result<(), wsplug_plugin::Error>) -> String {
    match outcome {
        Ok(()) => "ok".into(),
        Err(error) => format!("error {}", error.name()),
    }
}

fn attachment(conn: ConnectionId) -> String {
    match host::attachment(conn) {
        Some(data) => format!("attachment {}", String::from_utf8_lossy(&data)),
        None => "attachment none".into(),
    }
}

/// opens, count, restores, fail_restore as u64s; the memos as length-prefixed strings;
/// then the blob.
fn encode(s: &State) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + s.blob.len());
    for n in [
        s.opens,
        s.count,
        s.restores,
        s.fail_restore as u64,
        s.memos.len() as u64,
    ] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    for (key, value) in &s.memos {
        for text in [key, value] {
            out.extend_from_slice(&(text.len() as u64).to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        }
    }
    out.extend_from_slice(&s.blob);
    out
}

fn decode(mut bytes: &[u8]) -> Option<State> {
    fn number(bytes: &mut &[u8]) -> Option<u64> {
        let (head, rest) = bytes.split_first_chunk::<8>()?;
        *bytes = rest;
        Some(u64::from_le_bytes(*head))
    }
    fn text(bytes: &mut &[u8]) -> Option<String> {
        let len = number(bytes)? as usize;
        let (head, rest) = (bytes.get(..len)?, bytes.get(len..)?);
        *bytes = rest;
        String::from_utf8(head.to_vec()).ok()
    }
    let mut state = State {
        opens: number(&mut bytes)?,
        count: number(&mut bytes)?,
        restores: number(&mut bytes)?,
        fail_restore: number(&mut bytes)? != 0,
        ..State::default()
    };
    for _ in 0..number(&mut bytes)? {
        let key = text(&mut bytes)?;
        state.memos.insert(key, text(&mut bytes)?);
    }
    state.blob = bytes.to_vec();
    Some(state)
}

wsplug_plugin::export!(Api);
