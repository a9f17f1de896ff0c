//! `Protocol::read` with permessage-deflate negotiated: see src/protocol.rs.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wsplug_fuzz::protocol::run(data, true));
