//! The plugin runtime: loads a WebAssembly component that implements the
//! `wsplug:plugin` world and calls its exports, one event at a time, on a thread
//! of its own. It knows connections only by id and messages only as text or
//! bytes; what "sending" means is up to the [`HostServices`] it is given.
//!
//! - [`language`]: tells a plugin's source language from its producers sections.
//! - [`loader`]: compiles (or loads from the cache) and links a plugin file.
//! - [`handle`]: how connections reach a running plugin ([`PluginHandle`]), and its
//!   thread's event loop.
//! - [`supervisor`]: the plugin thread ([`Runner`]): traps, replays, restarts, reload swaps.
//! - [`reload`]: what became of a reload ([`Reloaded`], [`ReloadError`]), logged once.
//! - [`instance`]: the sandbox an instance is made in, and a call of an export.
//! - `deadline`: the CPU deadline of a call, and the yields of a stateless plugin's.
//! - [`crash_loop`]: the one crash-loop policy of both ways of serving a plugin.
//! - [`inline`]: a stateless plugin's instances on its connections' own threads, at
//!   most so many calls at once (`call_slots`).
//! - [`output_gate`]: holds what the plugin sends until the store writes before it are
//!   durable.
//! - `replies`: what a stateless plugin's call sends back to its own connection.
//! - [`timers`]: the plugin's timers, kept by the host and fired as events.
//! - [`wasi_io`]: WASI's streams and polling, for calls on any thread (stateless plugins).
//! - [`watcher`]: notices a changed plugin file (or SIGHUP) and hands the new version over.
//!
//! Two versions of the WIT world are served (`wit/0.1.0` and `wit/`, 0.2.0); [`bindings`]
//! maps both onto the same [`HostServices`].

mod bindings;
mod call_slots;
pub mod crash_loop;
mod deadline;
pub mod handle;
pub mod inline;
mod instance;
pub mod language;
pub mod loader;
mod output;
pub mod output_gate;
pub mod reload;
mod replies;
pub mod supervisor;
pub mod timers;
mod wasi_io;
pub mod watcher;

use std::sync::Arc;

pub use bindings::ApiVersion;
pub use handle::{Handler, PluginHandle, PluginLink, Ready, Refused, spawn_handler};
pub use instance::{DATA_DIR, Grants, PluginLimits};
pub use loader::{Loaded, Loader};
pub use reload::{Carried, ReloadError, Reloaded};
pub use supervisor::{Runner, spawn};

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

/// Names a timer; the plugin chooses it.
pub type TimerId = u64;

pub use crate::conn::{CloseCode, ConnId, ConnectionInfo, Headers, HostError, MAX_ATTACHMENT, Outgoing, TextBytes};

/// Whom a broadcast or a group publish is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience<'a> {
    /// Every open connection.
    Everyone,
    /// The open members of a group.
    Group(&'a str),
}

/// The services a plugin's imports are served by. The server implements this
/// over its live connections; every method returns without blocking, but for
/// [`HostServices::info`] of a connection on another host of a cluster, which asks Redis.
pub trait HostServices: Send + Sync + 'static {
    /// The plugin is about to get `on-open` for `conn`. Until then the connection is
    /// left out of broadcasts and [`HostServices::connections`], so that nothing
    /// reaches a client before what the plugin sends it in `on-open`.
    fn opened(&self, conn: ConnId);
    /// The plugin has handled `on-close` for `conn`: its attachment, readable until
    /// then, can go.
    fn closed(&self, conn: ConnId);
    /// Queues a message to one connection.
    fn send(&self, conn: ConnId, message: Outgoing) -> Result<(), HostError>;
    /// Starts closing a connection (its reason already checked: at most 123 bytes).
    fn close(&self, conn: ConnId, code: CloseCode, reason: String) -> Result<(), HostError>;
    /// Queues a message to every connection but `except`; returns how many.
    fn broadcast(&self, message: Outgoing, except: Option<ConnId>) -> u32;
    /// Queues a message to each of `conns`, connections of this host (those gone are
    /// skipped): what the output gate releases of a broadcast or a publish.
    fn send_each(&self, conns: &[ConnId], message: &Outgoing) {
        for conn in conns {
            let _ = self.send(*conn, message.clone());
        }
    }
    /// Adds a connection to a group.
    fn join(&self, conn: ConnId, group: &str) -> Result<(), HostError>;
    /// Removes a connection from a group.
    fn leave(&self, conn: ConnId, group: &str) -> Result<(), HostError>;
    /// Queues a message to every member of a group but `except`; returns how many.
    fn publish(&self, group: &str, message: Outgoing, except: Option<ConnId>) -> u32;
    /// Members of a group.
    fn group_members(&self, group: &str) -> Vec<ConnId>;
    /// The recipients of a broadcast or a publish to `to` but `except`: those on this
    /// host, and how many the other hosts of a cluster have. For the output gate, which
    /// holds the first as they are and the rest as one message to the other hosts
    /// ([`HostServices::tell_other_hosts`]), which find their recipients when it comes,
    /// as for any broadcast.
    fn recipients(&self, to: Audience<'_>, except: Option<ConnId>) -> (Vec<ConnId>, u32) {
        let mut here = match to {
            Audience::Everyone => self.connections(),
            Audience::Group(group) => self.group_members(group),
        };
        here.retain(|conn| Some(*conn) != except);
        (here, 0)
    }
    /// Queues `message` to the recipients of `to` but `except` on the other hosts of a
    /// cluster only; returns how many. None without a cluster.
    fn tell_other_hosts(&self, to: Audience<'_>, message: Outgoing, except: Option<ConnId>) -> u32 {
        let _ = (to, message, except);
        0
    }
    /// Every open connection.
    fn connections(&self) -> Vec<ConnId>;
    /// What the host knows about a connection (in a cluster, any host's: that of another
    /// host is fetched from Redis, waiting a quarter of a second at most).
    fn info(&self, conn: ConnId) -> Option<Arc<ConnectionInfo>>;
    /// Whether a connection is there (in a cluster, on any host), without fetching what
    /// [`HostServices::info`] would.
    fn exists(&self, conn: ConnId) -> bool {
        self.info(conn).is_some()
    }
    /// Replaces a connection's attachment (already checked against [`MAX_ATTACHMENT`]);
    /// an empty one removes it.
    fn set_attachment(&self, conn: ConnId, data: Vec<u8>) -> Result<(), HostError>;
    /// A connection's attachment, also while the plugin handles its `on-close`.
    fn attachment(&self, conn: ConnId) -> Option<bytes::Bytes>;
    /// A call for `conn`'s event ran past the plugin's CPU deadline (the connection is
    /// being closed with 1011): the host may hold it against the client.
    fn overran(&self, conn: ConnId);
    /// Runs `then` once everything sent so far has been queued to its connections: at
    /// once, unless output is held for the store (see [`output_gate`]). What answers a
    /// barrier, so that a connection's last replies precede its close frame.
    fn after_output(&self, then: Box<dyn FnOnce() + Send>) {
        then();
    }
}

/// An opening handshake, as the plugin's `on-upgrade` sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// Peer address, `ip:port`.
    pub remote_address: String,
    /// Request path.
    pub path: String,
    /// Query string, without `?`.
    pub query: Option<String>,
    /// Request headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// Offered subprotocols, in the client's order.
    pub protocols: Vec<String>,
}

/// What the plugin made of an [`UpgradeRequest`]. The server checks it (a subprotocol
/// that was not offered, a status that is not an error, ...) before it acts on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpgradeDecision {
    /// Let the client in.
    Accept {
        /// The chosen subprotocol.
        subprotocol: Option<String>,
        /// The connection's first attachment.
        attachment: Option<Vec<u8>>,
        /// Groups to join before `on-open`.
        groups: Vec<String>,
    },
    /// Answer with this HTTP response.
    Reject {
        /// HTTP status.
        status: u16,
        /// Extra headers.
        headers: Vec<(String, String)>,
        /// Body.
        body: Vec<u8>,
    },
    /// The plugin has no `on-upgrade`: the host's own rules decide.
    NoHook,
    /// `on-upgrade` trapped or ran past its deadline: fail closed.
    Failed,
}

/// Answers a barrier (`done`) once everything sent before it has left: every earlier
/// event was handled, and [`HostServices::after_output`] says when their output is out.
pub(crate) fn answer_barrier(services: &dyn HostServices, done: tokio::sync::oneshot::Sender<()>) {
    services.after_output(Box::new(move || {
        let _ = done.send(());
    }));
}

/// Something that happened to a connection: the plugin sees a connection's events in
/// the order they happened.
#[derive(Debug)]
pub enum ConnectionEvent {
    /// The handshake completed.
    Open(ConnId),
    /// A text message arrived.
    Text(ConnId, String),
    /// A binary message arrived.
    Binary(ConnId, Vec<u8>),
    /// The connection closed, with this code and reason.
    Close(ConnId, u16, String),
}

impl ConnectionEvent {
    /// The connection it happened to.
    pub fn conn(&self) -> ConnId {
        match self {
            Self::Open(conn) | Self::Text(conn, _) | Self::Binary(conn, _) | Self::Close(conn, ..) => *conn,
        }
    }

    /// The export that handles it.
    pub fn export(&self) -> Export {
        match self {
            Self::Open(_) => Export::OnOpen,
            Self::Text(..) => Export::OnText,
            Self::Binary(..) => Export::OnBinary,
            Self::Close(..) => Export::OnClose,
        }
    }
}

/// What the host asks of a plugin's thread besides a connection's events.
#[derive(Debug)]
pub enum Control {
    /// A handshake waits for `on-upgrade`'s decision, to be sent back on the channel.
    Upgrade(Box<UpgradeRequest>, tokio::sync::oneshot::Sender<UpgradeDecision>),
    /// A timer is due: its id, and the generation it was set in (a timer set again
    /// since, or cancelled, does not fire for an older generation).
    Timer(TimerId, u64),
    /// Calls no export: signals once every earlier event has been handled, so that
    /// whatever the plugin sent in reply is already queued.
    Barrier(tokio::sync::oneshot::Sender<()>),
    /// A new version of the plugin, swapped in between the events before and after it;
    /// what became of it is sent back on the channel.
    Reload(Box<Loaded>, tokio::sync::oneshot::Sender<Result<Reloaded, ReloadError>>),
}

/// An entry of a plugin thread's queue, which keeps the order of both kinds.
#[derive(Debug)]
pub enum PluginEvent {
    /// A connection's event.
    Connection(ConnectionEvent),
    /// Anything else.
    Control(Control),
}

impl From<ConnectionEvent> for PluginEvent {
    fn from(event: ConnectionEvent) -> Self {
        Self::Connection(event)
    }
}

impl From<Control> for PluginEvent {
    fn from(control: Control) -> Self {
        Self::Control(control)
    }
}

/// An export of the plugin: what a call, a trap or a crash is about. In the order of
/// the metrics' [`crate::metrics::EXPORTS`], which times each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Export {
    /// `on-open`.
    OnOpen,
    /// `on-text`.
    OnText,
    /// `on-binary`.
    OnBinary,
    /// `on-close`.
    OnClose,
    /// `handshake.on-upgrade`.
    OnUpgrade,
    /// `on-timer`.
    OnTimer,
    /// `state.snapshot`.
    Snapshot,
    /// `state.restore`.
    Restore,
}

impl Export {
    /// Every export, in the metrics' order.
    pub const ALL: [Export; 8] = [
        Export::OnOpen,
        Export::OnText,
        Export::OnBinary,
        Export::OnClose,
        Export::OnUpgrade,
        Export::OnTimer,
        Export::Snapshot,
        Export::Restore,
    ];

    /// Its name in the WIT, logs and metrics.
    pub fn name(self) -> &'static str {
        crate::metrics::EXPORTS[self as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::Export;

    #[test]
    fn exports_are_in_the_metrics_order() {
        for (i, export) in Export::ALL.into_iter().enumerate() {
            assert_eq!(export as usize, i);
            assert_eq!(export.name(), crate::metrics::EXPORTS[i]);
        }
        assert_eq!(Export::OnUpgrade.name(), "on-upgrade");
    }
}
