//! The protocol of a wsplug cluster's hosts, sans I/O: plain functions and a state
//! machine over bytes and instants, so that a hostile message is an error value and
//! never a panic, and every rule can be tested (and fuzzed) without Redis.
//!
//! - [`wire`]: the messages, as bytes, tagged with the cluster's secret.
//! - [`view`]: what one host knows of the others, rebuilt from their messages.

pub mod view;
pub mod wire;
