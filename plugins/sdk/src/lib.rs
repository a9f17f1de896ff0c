//! Write a wsplug plugin in Rust as one trait impl and one macro:
//!
//! ```ignore
//! use wsplug_plugin::{ConnectionId, Plugin, host};
//!
//! struct Echo;
//!
//! impl Plugin for Echo {
//!     fn on_text(conn: ConnectionId, text: String) {
//!         let _ = host::send_text(conn, &text);
//!     }
//! }
//!
//! wsplug_plugin::export!(Echo);
//! ```
//!
//! The crate holds the bindings of the `wsplug:plugin@0.3.0` worlds (`wit/plugin.wit`, the
//! one contract between host and plugins), so a plugin needs neither the WIT files nor
//! `wit_bindgen::generate!`. Every export has a default that does nothing, so a plugin
//! implements only the events it cares about.
//!
//! The optional exports are cargo features, which together pick the world: `handshake`
//! adds [`Plugin::on_upgrade`], `state` adds [`Plugin::snapshot`] and [`Plugin::restore`],
//! `timers` adds [`Plugin::on_timer`] and the `timers` import (worlds `plugin`,
//! `plugin-handshake`, ..., `plugin-handshake-state-timers`). Without them the plugin has
//! none of those exports, and the host neither asks it at handshakes, nor carries state
//! at reloads, nor lets it set timers. (Cargo unifies the features of one build: build a
//! plugin that turns them on in a `cargo build -p` of its own, as the Makefile does, or
//! every plugin in that build gets them.) The trait's methods are the bindings' own
//! export signatures, called through a blanket impl that the compiler inlines:
//! no extra cost per call (measured: `make bench`, "plugin call", echo vs echo-raw).

/// The generated bindings of the world the features pick.
macro_rules! bindings_of {
    ($world:literal) => {
        wit_bindgen::generate!({
            world: $world,
            path: "../../wit",
            default_bindings_module: "wsplug_plugin::bindings",
            pub_export_macro: true,
            export_macro_name: "export_guest",
        });
    };
}

/// The generated bindings, for what the re-exports below do not cover.
pub mod bindings {
    #[cfg(not(any(feature = "handshake", feature = "state", feature = "timers")))]
    bindings_of!("plugin");
    #[cfg(all(feature = "timers", not(any(feature = "handshake", feature = "state"))))]
    bindings_of!("plugin-timers");
    #[cfg(all(feature = "handshake", not(any(feature = "state", feature = "timers"))))]
    bindings_of!("plugin-handshake");
    #[cfg(all(feature = "handshake", feature = "timers", not(feature = "state")))]
    bindings_of!("plugin-handshake-timers");
    #[cfg(all(feature = "state", not(any(feature = "handshake", feature = "timers"))))]
    bindings_of!("plugin-state");
    #[cfg(all(feature = "state", feature = "timers", not(feature = "handshake")))]
    bindings_of!("plugin-state-timers");
    #[cfg(all(feature = "handshake", feature = "state", not(feature = "timers")))]
    bindings_of!("plugin-handshake-state");
    #[cfg(all(feature = "handshake", feature = "state", feature = "timers"))]
    bindings_of!("plugin-handshake-state-timers");
}

/// The streams of groups that keep history: positions, replays, reads.
pub use bindings::wsplug::plugin::history;
/// The host's imports: send, close, broadcast, groups, connection info, attachments, log.
pub use bindings::wsplug::plugin::host;
/// The key-value store: get, set (with expiry), delete, list keys by prefix, sync.
pub use bindings::wsplug::plugin::store;
/// Timers: set, cancel, ask whether one is pending (feature `timers`).
#[cfg(feature = "timers")]
pub use bindings::wsplug::plugin::timers;
/// Types shared with the host.
pub use bindings::wsplug::plugin::types::{
    Accept, ConnectionId, ConnectionInfo, Error, HistoryError, LogLevel, Message, Position, Publication, Published,
    Reject, StoreError, TimerId, UpgradeDecision, UpgradeRequest,
};

impl UpgradeDecision {
    /// Lets the client in with no subprotocol, attachment or groups.
    pub fn accept() -> Self {
        Self::Accept(Accept {
            subprotocol: None,
            attachment: None,
            groups: Vec::new(),
        })
    }

    /// Turns the client away with `status` and a plain-text `body`.
    pub fn reject(status: u16, body: &str) -> Self {
        Self::Reject(Reject {
            status,
            headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
            body: body.as_bytes().to_vec(),
        })
    }
}

impl UpgradeRequest {
    /// The value of query parameter `name`, percent-decoded (`+` is a space), if present.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query
            .as_deref()?
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| percent_decode(value))
    }

    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Decodes `%XX` escapes and `+`; invalid escapes stay as they are, invalid UTF-8 is replaced.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push((hi * 16 + lo) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A plugin's event handlers. The host calls them one at a time, in order: for each
/// connection `on_open` once, then `on_text`/`on_binary` per message, then `on_close`
/// exactly once; `on_timer` in order with them. State lives in statics (`thread_local!`
/// with a `RefCell` is the usual way): the host keeps one instance for all connections.
pub trait Plugin {
    /// A client completed the opening handshake.
    fn on_open(conn: ConnectionId) {
        let _ = conn;
    }
    /// A complete text message arrived (reassembled, inflated and UTF-8 checked).
    fn on_text(conn: ConnectionId, text: String) {
        let _ = (conn, text);
    }
    /// A complete binary message arrived (reassembled and inflated).
    fn on_binary(conn: ConnectionId, data: Vec<u8>) {
        let _ = (conn, data);
    }
    /// The connection closed with `code` and `reason` (1006 if it dropped).
    fn on_close(conn: ConnectionId, code: u16, reason: String) {
        let _ = (conn, code, reason);
    }
    /// Timer `id` (set with [`timers::set_timer`]) is due (feature `timers`).
    #[cfg(feature = "timers")]
    fn on_timer(id: TimerId) {
        let _ = id;
    }
    /// Decides a handshake before the host answers it (feature `handshake`). A trap or
    /// a deadline overrun gets the client a 503.
    #[cfg(feature = "handshake")]
    fn on_upgrade(request: UpgradeRequest) -> UpgradeDecision {
        let _ = request;
        UpgradeDecision::accept()
    }
    /// The state to hand to the next version at a hot reload (feature `state`).
    #[cfg(feature = "state")]
    fn snapshot() -> Result<Vec<u8>, String> {
        Ok(Vec::new())
    }
    /// Takes over what the previous version's [`Plugin::snapshot`] returned, before any
    /// other event (feature `state`). An error keeps the previous version serving.
    #[cfg(feature = "state")]
    fn restore(state: Vec<u8>) -> Result<(), String> {
        let _ = state;
        Ok(())
    }
}

impl<T: Plugin> bindings::Guest for T {
    #[inline(always)]
    fn on_open(conn: ConnectionId) {
        <T as Plugin>::on_open(conn)
    }
    #[inline(always)]
    fn on_text(conn: ConnectionId, text: String) {
        <T as Plugin>::on_text(conn, text)
    }
    #[inline(always)]
    fn on_binary(conn: ConnectionId, data: Vec<u8>) {
        <T as Plugin>::on_binary(conn, data)
    }
    #[inline(always)]
    fn on_close(conn: ConnectionId, code: u16, reason: String) {
        <T as Plugin>::on_close(conn, code, reason)
    }
}

#[cfg(feature = "timers")]
impl<T: Plugin> bindings::exports::wsplug::plugin::timer_events::Guest for T {
    #[inline(always)]
    fn on_timer(id: TimerId) {
        <T as Plugin>::on_timer(id)
    }
}

#[cfg(feature = "handshake")]
impl<T: Plugin> bindings::exports::wsplug::plugin::handshake::Guest for T {
    fn on_upgrade(request: UpgradeRequest) -> UpgradeDecision {
        <T as Plugin>::on_upgrade(request)
    }
}

#[cfg(feature = "state")]
impl<T: Plugin> bindings::exports::wsplug::plugin::state::Guest for T {
    fn snapshot() -> Result<Vec<u8>, String> {
        <T as Plugin>::snapshot()
    }
    fn restore(state: Vec<u8>) -> Result<(), String> {
        <T as Plugin>::restore(state)
    }
}

/// Exports a type that implements [`Plugin`] as the component's exports. Use it once
/// per plugin.
#[macro_export]
macro_rules! export {
    ($plugin:ident) => {
        $crate::bindings::export_guest!($plugin with_types_in $crate::bindings);
    };
}
