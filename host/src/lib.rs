//! wsplug: a WebSocket server whose business logic runs in sandboxed WebAssembly
//! components.
//!
//! - [`app`]: the `host` program, from command line to shutdown.
//! - [`blocking`]: waiting for a future in a plugin's host call, on any thread.
//! - [`cluster`]: several hosts serving one application through a shared Redis server.
//! - [`conn`]: the connection vocabulary every layer shares (ids, messages, facts, errors;
//!   the `wsplug-conn` crate, in `host/conn`).
//! - [`http`]: the one writer of the host's HTTP responses (the `wsplug-http` crate, in `host/http`).
//! - [`config`]: the TOML file and command line, merged and validated.
//! - [`metrics`]: the Prometheus metrics (`/metrics`).
//! - [`ws`]: the protocol, sans I/O (the `wsplug-ws` crate, in `host/ws`).
//! - [`plugin`]: the WebAssembly runtime that runs a plugin; it knows nothing of frames.
//! - [`private_files`]: the host's own directories and files, readable by this user only.
//! - [`server`]: the tokio shell that connects sockets, protocol and plugin.
//! - [`store`]: the plugins' key-value store (the `KeyValue` port, and its file backend).
//!
//! `docs/architecture.md` says which of these may import which (`tests/architecture.rs`
//! checks the code against it).

pub mod app;
pub mod blocking;
pub mod cluster;
pub mod config;
pub mod metrics;
pub mod plugin;
pub mod private_files;
pub mod server;
pub mod store;
pub use wsplug_conn as conn;
pub use wsplug_http as http;
pub use wsplug_ws as ws;
