//! A chat room. Every text message is relayed to every other connection as JSON,
//! with the sender's name and colour; joins, leaves and renames are announced, the
//! last 50 messages are kept and sent to whoever joins, and everyone gets the list of
//! who is here every 3 seconds.
//!
//! Connecting: the name comes with the handshake, as `?name=NAME` (letters, digits,
//! `-`, `_` and `.` are kept, at most 24). A missing or empty name is refused with
//! HTTP 400, a name someone in the room has with 409: before the upgrade, so a refused
//! client never joins.
//!
//! Server to client (one JSON object per message, field `type`):
//! - `welcome` `{id, name, color, users: [{id, name, color}], history: [message]}`: to a
//!   newcomer; `history` holds the last 50 `message` objects, oldest first (only those of
//!   at most 4 KiB of JSON: longer ones are relayed but not kept, so that a few huge
//!   messages cannot make the welcome too large for the newcomer's queue).
//! - `join` / `leave` `{id, name, color}`: to everyone else.
//! - `message` `{id, name, color, text}`: a message from someone else.
//! - `rename` `{id, name, color, old}`: someone changed their name (to everyone).
//! - `presence` `{users: [{id, name, color}]}`: everyone in the room, by id, every 3 s.
//! - `error` `{text}`: to the sender of a rename to an empty or taken name.
//!
//! Client to server: any text is a message, except `/name NEW` which renames. Binary
//! messages are relayed to everyone else unchanged.
//!
//! The room lives in the host, not in the plugin's memory, so it survives hot reloads,
//! traps and (the history) host restarts: each name is its connection's attachment,
//! the history is in the key-value store under `history/<sequence number>`, and the
//! presence timer is the host's. The plugin exports `snapshot`/`restore` with nothing
//! to carry, so that a reload does not replay `on-open` (no second welcome).

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use wsplug_plugin::{Accept, ConnectionId, Plugin, TimerId, UpgradeDecision, UpgradeRequest, host, store, timers};

const COLORS: [&str; 8] = [
    "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#008080", "#9a6324", "#800000",
];
const MAX_NAME: usize = 24;
/// Messages kept for newcomers.
const HISTORY: usize = 50;
const HISTORY_PREFIX: &str = "history/";
/// Longest `message` (its JSON, in bytes) kept in the history.
const MAX_KEPT: usize = 4096;
/// The presence timer, and its period.
const PRESENCE: TimerId = 1;
const PRESENCE_MS: u32 = 3000;
/// How long a name admitted at a handshake stays reserved for its `on-open`.
const RESERVATION: Duration = Duration::from_secs(10);

#[derive(Clone, Serialize)]
struct User {
    id: ConnectionId,
    name: String,
    color: &'static str,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Out<'a> {
    Welcome {
        #[serde(flatten)]
        you: &'a User,
        users: Vec<User>,
        history: Vec<Value>,
    },
    Join(&'a User),
    Leave(&'a User),
    Message {
        #[serde(flatten)]
        from: &'a User,
        text: &'a str,
    },
    Rename {
        #[serde(flatten)]
        user: &'a User,
        old: &'a str,
    },
    Presence {
        users: Vec<User>,
    },
    Error {
        text: &'a str,
    },
}

impl Out<'_> {
    fn json(&self) -> String {
        serde_json::to_string(self).expect("plain data serialises")
    }
}

thread_local! {
    /// Names let in by `on-upgrade` whose `on-open` has not come yet: two handshakes
    /// with one name, close together, must not both get in.
    static ADMITTED: RefCell<Vec<(String, Instant)>> = const { RefCell::new(Vec::new()) };
    /// The number the next history message gets, once this instance has read the keys.
    static NEXT: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Keeps letters, digits, `-`, `_` and `.`, at most [`MAX_NAME`] of them.
fn clean_name(raw: &str) -> Option<String> {
    let name: String = raw
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(MAX_NAME)
        .collect();
    (!name.is_empty()).then_some(name)
}

fn user(conn: ConnectionId, attachment: Option<Vec<u8>>) -> Option<User> {
    Some(User {
        id: conn,
        name: String::from_utf8(attachment?).ok()?,
        color: COLORS[(conn as usize) % COLORS.len()],
    })
}

/// Everyone in the room, by id.
fn users() -> Vec<User> {
    let mut conns = host::connections();
    conns.sort_unstable();
    conns.into_iter().filter_map(|c| user(c, host::attachment(c))).collect()
}

fn name_taken(name: &str) -> bool {
    let now = Instant::now();
    let reserved = ADMITTED.with(|admitted| {
        let mut admitted = admitted.borrow_mut();
        admitted.retain(|(_, at)| now.duration_since(*at) < RESERVATION);
        admitted.iter().any(|(n, _)| n == name)
    });
    reserved || users().iter().any(|u| u.name == name)
}

/// Appends a `message` to the history (unless it is over [`MAX_KEPT`]), dropping the
/// oldest beyond [`HISTORY`]. The first call of an instance reads the history's keys
/// from the store; later ones know the next number and the oldest to drop.
fn remember(message: &str) {
    if message.len() > MAX_KEPT || cfg!(not(feature = "history")) {
        return;
    }
    let next = NEXT.with(Cell::get).unwrap_or_else(|| {
        let keys = store::list_keys(HISTORY_PREFIX, None, 1000).unwrap_or_default();
        for old in &keys[..(keys.len() + 1).saturating_sub(HISTORY)] {
            let _ = store::remove(old);
        }
        keys.last()
            .and_then(|key| key[HISTORY_PREFIX.len()..].parse::<u64>().ok())
            .map_or(1, |n| n + 1)
    });
    if let Err(error) = store::set(&history_key(next), message.as_bytes(), None) {
        host::log(wsplug_plugin::LogLevel::Warn, &format!("history not stored: {error:?}"));
        // Read the keys again next time: the store may have lost writes.
        NEXT.with(|n| n.set(None));
        return;
    }
    if let Some(oldest) = next.checked_sub(HISTORY as u64).filter(|n| *n > 0) {
        // Whether it was there does not matter: `remove` need not wait to find out.
        let _ = store::remove(&history_key(oldest));
    }
    NEXT.with(|n| n.set(Some(next + 1)));
}

/// The store key of history message number `n`.
fn history_key(n: u64) -> String {
    format!("{HISTORY_PREFIX}{n:020}")
}

/// The kept messages, oldest first.
fn history() -> Vec<Value> {
    if cfg!(not(feature = "history")) {
        return Vec::new();
    }
    let keys = store::list_keys(HISTORY_PREFIX, None, 1000).unwrap_or_default();
    keys.iter()
        .filter_map(|key| store::get(key).ok().flatten())
        .filter_map(|value| serde_json::from_slice(&value).ok())
        .collect()
}

struct Chat;

impl Plugin for Chat {
    fn on_upgrade(request: UpgradeRequest) -> UpgradeDecision {
        let Some(name) = request.query_param("name").as_deref().and_then(clean_name) else {
            return UpgradeDecision::reject(400, "a name is required: connect with ?name=NAME\n");
        };
        if name_taken(&name) {
            return UpgradeDecision::reject(409, &format!("the name {name} is taken\n"));
        }
        ADMITTED.with(|admitted| admitted.borrow_mut().push((name.clone(), Instant::now())));
        UpgradeDecision::Accept(Accept {
            subprotocol: None,
            attachment: Some(name.into_bytes()),
            groups: Vec::new(),
        })
    }

    fn on_open(conn: ConnectionId) {
        let Some(me) = user(conn, host::attachment(conn)) else {
            // Let in before this version decided handshakes: no name to go by.
            let _ = host::close(conn, 4000, "a name is required: reconnect with ?name=NAME");
            return;
        };
        ADMITTED.with(|admitted| admitted.borrow_mut().retain(|(name, _)| *name != me.name));
        let others = users().into_iter().filter(|u| u.id != conn).collect();
        let welcome = Out::Welcome {
            you: &me,
            users: others,
            history: history(),
        };
        let _ = host::send_text(conn, &welcome.json());
        host::broadcast_text(&Out::Join(&me).json(), Some(conn));
        if !timers::timer_pending(PRESENCE) {
            let _ = timers::set_timer(PRESENCE, PRESENCE_MS, Some(PRESENCE_MS));
        }
    }

    fn on_text(conn: ConnectionId, text: String) {
        let Some(me) = user(conn, host::attachment(conn)) else {
            return;
        };
        if let Some(requested) = text.strip_prefix("/name ") {
            let refusal = match clean_name(requested) {
                None => "a name needs a letter or a digit",
                Some(name) if name != me.name && name_taken(&name) => "that name is taken",
                Some(name) => {
                    let _ = host::set_attachment(conn, name.as_bytes());
                    let renamed = User { name, ..me.clone() };
                    let rename = Out::Rename {
                        user: &renamed,
                        old: &me.name,
                    };
                    host::broadcast_text(&rename.json(), None);
                    return;
                }
            };
            let _ = host::send_text(conn, &Out::Error { text: refusal }.json());
            return;
        }
        let message = Out::Message { from: &me, text: &text }.json();
        host::broadcast_text(&message, Some(conn));
        remember(&message);
    }

    fn on_binary(conn: ConnectionId, data: Vec<u8>) {
        host::broadcast_binary(&data, Some(conn));
    }

    fn on_close(conn: ConnectionId, _code: u16, _reason: String) {
        // The attachment is still readable during on-close.
        if let Some(me) = user(conn, host::attachment(conn)) {
            host::broadcast_text(&Out::Leave(&me).json(), Some(conn));
        }
    }

    fn on_timer(id: TimerId) {
        if id != PRESENCE {
            return;
        }
        let users = users();
        if users.is_empty() {
            timers::cancel_timer(PRESENCE);
            return;
        }
        host::broadcast_text(&Out::Presence { users }.json(), None);
    }

    // The room is in the host: nothing to carry, but having these exports means a
    // reload takes over without replaying on-open (and a second welcome).
    fn snapshot() -> Result<Vec<u8>, String> {
        Ok(Vec::new())
    }

    fn restore(_state: Vec<u8>) -> Result<(), String> {
        Ok(())
    }
}

wsplug_plugin::export!(Chat);
