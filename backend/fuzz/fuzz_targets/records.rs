#![no_main]
//! See `zcnet_tap::fuzzing::records` for the input layout and the checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| zcnet_tap::fuzzing::records(data));
