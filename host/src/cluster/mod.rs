//! Several hosts serving one application through a shared Redis server (issue 12).
//!
//! So far this holds the sans-IO half:
//! - [`wire`]: the messages hosts exchange, as bytes.
//! - [`view`]: what a host knows of the others, rebuilt from those messages.
//!
//! The Redis connection, the registry's use of the view and the `cluster` setting
//! build on them.

pub mod view;
pub mod wire;
