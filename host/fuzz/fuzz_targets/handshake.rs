//! `handshake::accept` on arbitrary bytes and on edited valid requests: see src/handshake.rs.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wsplug_fuzz::handshake::run(data));
