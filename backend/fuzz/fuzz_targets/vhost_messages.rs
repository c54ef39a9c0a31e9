#![no_main]
//! See `zcnet::fuzzing::vhost_messages` for the input layout and the checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| zcnet::fuzzing::vhost_messages(data));
