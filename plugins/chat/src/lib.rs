//! A chat room. Every text message is relayed to every other connection as JSON,
//! with the sender's name and colour; joins, leaves and renames are announced.
//!
//! Server to client (one JSON object per message, field `type`):
//! - `welcome` `{id, name, color, users: [{id, name, color}]}`: to a newcomer.
//! - `join` / `leave` `{id, name, color}`: to everyone else.
//! - `message` `{id, name, color, text}`: a message from someone else.
//! - `rename` `{id, name, color, old}`: someone changed their name.
//!
//! Client to server: any text is a message, except `/name NEW` which renames. A
//! name can also be given when connecting, as `?name=NEW`. Binary messages are
//! relayed to everyone else unchanged.

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde::Serialize;
use wsplug_plugin::{ConnectionId, Plugin, host};

const COLORS: [&str; 8] = [
    "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#008080", "#9a6324", "#800000",
];
const MAX_NAME: usize = 24;

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
        users: Vec<&'a User>,
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
}

impl Out<'_> {
    fn json(&self) -> String {
        serde_json::to_string(self).expect("plain data serialises")
    }
}

thread_local! {
    /// Everyone in the room, by connection.
    static USERS: RefCell<BTreeMap<ConnectionId, User>> = const { RefCell::new(BTreeMap::new()) };
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

fn name_from_query(conn: ConnectionId) -> Option<String> {
    let query = host::info(conn)?.query?;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("name="))
        .and_then(clean_name)
}

struct Chat;

impl Plugin for Chat {
    fn on_open(conn: ConnectionId) {
        let user = User {
            id: conn,
            name: name_from_query(conn).unwrap_or_else(|| format!("guest-{conn}")),
            color: COLORS[(conn as usize) % COLORS.len()],
        };
        USERS.with(|users| {
            let mut users = users.borrow_mut();
            users.insert(conn, user.clone());
            let others: Vec<&User> = users.values().filter(|u| u.id != conn).collect();
            let _ = host::send_text(
                conn,
                &Out::Welcome {
                    you: &user,
                    users: others,
                }
                .json(),
            );
        });
        host::broadcast_text(&Out::Join(&user).json(), Some(conn));
    }

    fn on_text(conn: ConnectionId, text: String) {
        let Some(user) = USERS.with(|users| users.borrow().get(&conn).cloned()) else {
            return;
        };
        if let Some(requested) = text.strip_prefix("/name ") {
            let Some(name) = clean_name(requested) else { return };
            let renamed = User { name, ..user.clone() };
            USERS.with(|users| users.borrow_mut().insert(conn, renamed.clone()));
            host::broadcast_text(
                &Out::Rename {
                    user: &renamed,
                    old: &user.name,
                }
                .json(),
                None,
            );
            return;
        }
        host::broadcast_text(
            &Out::Message {
                from: &user,
                text: &text,
            }
            .json(),
            Some(conn),
        );
    }

    fn on_binary(conn: ConnectionId, data: Vec<u8>) {
        host::broadcast_binary(&data, Some(conn));
    }

    fn on_close(conn: ConnectionId, _code: u16, _reason: String) {
        if let Some(user) = USERS.with(|users| users.borrow_mut().remove(&conn)) {
            host::broadcast_text(&Out::Leave(&user).json(), Some(conn));
        }
    }
}

wsplug_plugin::export!(Chat);
