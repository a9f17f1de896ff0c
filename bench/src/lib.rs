//! Support for `wsbench`, a load generator that speaks RFC 6455 itself (no WebSocket
//! library), so that it measures every server the same way.
//!
//! - [`client`]: handshake, frames, optional permessage-deflate and TLS.
//! - [`stats`]: latency summaries and CPU/memory readings from `/proc`.

pub mod client;
pub mod stats;
