#![no_main]
//! See `zcnet_tap::fuzzing::vnet_hdr` for the input layout and the checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| zcnet_tap::fuzzing::vnet_hdr(data));
