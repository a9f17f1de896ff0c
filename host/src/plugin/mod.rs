//! The plugin runtime: loads a WebAssembly component that implements the
//! `wsplug:plugin` world and calls its exports, one event at a time, on a thread
//! of its own. It knows connections only by id and messages only as text or
//! bytes; what "sending" means is up to the [`HostServices`] it is given.
//!
//! - [`language`]: tells a plugin's source language from its producers sections.
//! - [`loader`]: compiles (or loads from the cache) and links a plugin file.
//! - [`runner`]: the plugin thread: instances, traps, crash-loop back-off, reload swaps.
//! - [`watcher`]: notices a changed plugin file (or SIGHUP) and hands the new version over.

mod bindings;
pub mod language;
pub mod loader;
mod output;
pub mod runner;
pub mod watcher;

use std::sync::Arc;

pub use loader::{Loaded, Loader};
pub use runner::{Grants, PluginHandle, PluginLimits, Runner, spawn, spawn_handler};

/// An error and its causes on one log line: wasmtime's messages (a trap's wasm
/// backtrace, a parse error's details) span several lines, which would split one log
/// entry into many.
pub fn one_line(error: &wasmtime::Error) -> String {
    let text = format!("{error:#}");
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Identifies a connection; the same id the plugin sees.
pub type ConnId = u64;

/// A message a plugin asks the host to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// A text message.
    Text(TextBytes),
    /// A binary message.
    Binary(bytes::Bytes),
}

/// UTF-8 text in shared, cheaply cloned bytes (one copy serves every recipient of a broadcast).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextBytes(bytes::Bytes);

impl From<String> for TextBytes {
    fn from(text: String) -> Self {
        Self(bytes::Bytes::from(text))
    }
}

impl From<&'static str> for TextBytes {
    fn from(text: &'static str) -> Self {
        Self(bytes::Bytes::from_static(text.as_bytes()))
    }
}

impl TextBytes {
    /// The text.
    pub fn as_str(&self) -> &str {
        // SAFETY: only built from `String` or `&str` (see the `From` impls), never mutated.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }
}

/// Why a host call about a connection did nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostError {
    /// The connection is closed, closing, or never existed.
    Gone,
    /// A close code an endpoint may not send.
    InvalidCode,
    /// A close reason longer than 123 bytes.
    ReasonTooLong,
}

/// What the host knows about a connection, from its handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The connection's id.
    pub id: ConnId,
    /// Peer address, `ip:port`.
    pub remote_address: String,
    /// Request path.
    pub path: String,
    /// Query string, without `?`.
    pub query: Option<String>,
    /// Selected subprotocol.
    pub subprotocol: Option<String>,
    /// Request headers, names lower-case.
    pub headers: Vec<(String, String)>,
}

/// The services a plugin's imports are served by. The server implements this
/// over its live connections; every method returns without blocking.
pub trait HostServices: Send + Sync + 'static {
    /// The plugin is about to get `on-open` for `conn`. Until then the connection is
    /// left out of broadcasts and [`HostServices::connections`], so that nothing
    /// reaches a client before what the plugin sends it in `on-open`.
    fn opened(&self, conn: ConnId);
    /// Queues a message to one connection.
    fn send(&self, conn: ConnId, message: Outgoing) -> Result<(), HostError>;
    /// Starts closing a connection (code and reason already validated).
    fn close(&self, conn: ConnId, code: u16, reason: String) -> Result<(), HostError>;
    /// Queues a message to every connection but `except`; returns how many.
    fn broadcast(&self, message: Outgoing, except: Option<ConnId>) -> u32;
    /// Adds a connection to a group.
    fn join(&self, conn: ConnId, group: &str) -> Result<(), HostError>;
    /// Removes a connection from a group.
    fn leave(&self, conn: ConnId, group: &str) -> Result<(), HostError>;
    /// Queues a message to every member of a group but `except`; returns how many.
    fn publish(&self, group: &str, message: Outgoing, except: Option<ConnId>) -> u32;
    /// Members of a group.
    fn group_members(&self, group: &str) -> Vec<ConnId>;
    /// Every open connection.
    fn connections(&self) -> Vec<ConnId>;
    /// What the host knows about a connection.
    fn info(&self, conn: ConnId) -> Option<Arc<ConnectionInfo>>;
}

/// Something that happened to a connection, delivered to the plugin in order.
#[derive(Debug)]
pub enum PluginEvent {
    /// The handshake completed.
    Open(ConnId),
    /// A text message arrived.
    Text(ConnId, String),
    /// A binary message arrived.
    Binary(ConnId, Vec<u8>),
    /// The connection closed, with this code and reason.
    Close(ConnId, u16, String),
    /// Calls no export: signals once every earlier event has been handled, so that
    /// whatever the plugin sent in reply is already queued.
    Barrier(ConnId, tokio::sync::oneshot::Sender<()>),
    /// A new version of the plugin, swapped in between the events before and after it.
    Reload(Box<Loaded>),
}

impl PluginEvent {
    /// The export that handles it, for logs.
    pub fn export_name(&self) -> &'static str {
        match self {
            Self::Open(_) => "on-open",
            Self::Text(..) => "on-text",
            Self::Binary(..) => "on-binary",
            Self::Close(..) => "on-close",
            Self::Barrier(..) => "(barrier)",
            Self::Reload(_) => "(reload)",
        }
    }
}
