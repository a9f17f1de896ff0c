//! `Protocol::read` without compression, with sends, timeouts and closes in between:
//! see src/protocol.rs.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wsplug_fuzz::protocol::run(data, false));
