//! The checks behind the fuzz targets of wsplug-ws and wsplug-cluster-proto. Each target in `fuzz_targets/` is one
//! call into this library, so the same checks run on any input without libFuzzer
//! (`cargo run --example replay -- TARGET FILE...`), and `examples/gen_corpus.rs`
//! writes the seed corpora with the encoders below.
//!
//! Every check is an `assert!`: libFuzzer reports a failed one as a crash and saves the input.

pub mod cluster;
pub mod frame;
pub mod handshake;
pub mod negotiate;
pub mod protocol;
pub mod wire;

/// Takes an input apart byte by byte; past the end, it yields defaults.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.data.split_first()?;
        self.data = rest;
        Some(first)
    }

    pub fn byte_or(&mut self, default: u8) -> u8 {
        self.byte().unwrap_or(default)
    }

    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        taken
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// SplitMix64: split points and other choices derived from one input byte.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Runs the target called `name` on `data`; `false` for an unknown name.
pub fn run_target(name: &str, data: &[u8]) -> bool {
    match name {
        "frame" => frame::run(data),
        "protocol" => protocol::run(data, false),
        "protocol_deflate" => protocol::run(data, true),
        "handshake" => handshake::run(data),
        "deflate_negotiate" => negotiate::run(data),
        "cluster_wire" => cluster::run(data),
        _ => return false,
    }
    true
}

/// The targets, in the order run.sh runs them.
pub const TARGETS: [&str; 6] = [
    "frame",
    "protocol",
    "protocol_deflate",
    "handshake",
    "deflate_negotiate",
    "cluster_wire",
];
