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
//! The crate holds the bindings of the `wsplug:plugin` world (`wit/plugin.wit`, the one
//! contract between host and plugins), so a plugin needs neither the WIT files nor
//! `wit_bindgen::generate!`. Every export has a default that does nothing, so a plugin
//! implements only the events it cares about. The trait's methods are the bindings'
//! own export signatures, called through a blanket impl that the compiler inlines:
//! no extra cost per call (measured: `make bench`, "plugin call", echo vs echo-raw).

/// The generated bindings, for what the re-exports below do not cover.
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../../wit",
        default_bindings_module: "wsplug_plugin::bindings",
        pub_export_macro: true,
        export_macro_name: "export_guest",
    });
}

/// The host's imports: send, close, broadcast, groups, connection info, log.
pub use bindings::wsplug::plugin::host;
/// Types shared with the host: [`ConnectionId`], [`Error`], [`LogLevel`], [`ConnectionInfo`].
pub use bindings::wsplug::plugin::types::{ConnectionId, ConnectionInfo, Error, LogLevel};

/// A plugin's event handlers. The host calls them one at a time, in order: for each
/// connection `on_open` once, then `on_text`/`on_binary` per message, then `on_close`
/// exactly once. State lives in statics (`thread_local!` with a `RefCell` is the
/// usual way): the host keeps one instance for all connections.
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

/// Exports a type that implements [`Plugin`] as the component's `on-open`,
/// `on-text`, `on-binary` and `on-close`. Use it once per plugin.
#[macro_export]
macro_rules! export {
    ($plugin:ident) => {
        $crate::bindings::export_guest!($plugin with_types_in $crate::bindings);
    };
}
