//! The WebSocket protocol (RFC 6455 and RFC 7692), sans I/O: functions and state
//! machines over bytes, tested and fuzzable without sockets. The server module
//! drives them from tokio.

pub mod close;
pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod output;
pub mod protocol;
pub mod utf8;
