//! The cluster's messages and view on arbitrary bytes: see src/cluster.rs.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wsplug_fuzz::cluster::run(data));
