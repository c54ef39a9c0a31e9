#![no_main]
//! See `zcnet::fuzzing::descriptor_chains` for the input layout and the checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| zcnet::fuzzing::descriptor_chains(data));
