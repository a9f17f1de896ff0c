//! `FrameHeader::decode` (and unmasking) on arbitrary bytes: see src/frame.rs.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wsplug_fuzz::frame::run(data));
