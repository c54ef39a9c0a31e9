#![no_main]
//! See `zcnet::fuzzing::vhost_daemon` for the input layout and the checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| zcnet::fuzzing::vhost_daemon(data));
