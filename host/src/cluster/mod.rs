//! Several hosts serving one application through a shared Redis server (issue 12).
//!
//! So far this holds the sans-IO half: [`wire`], the messages hosts exchange. The
//! Redis connection, the mirror of the other hosts' connections and the `cluster`
//! setting build on it.

pub mod wire;
