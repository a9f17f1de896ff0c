//! `deflate::negotiate` on arbitrary header values: see src/negotiate.rs.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wsplug_fuzz::negotiate::run(data));
