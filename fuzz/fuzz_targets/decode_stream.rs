//! Fuzz target: `wire::fuzz::decode_stream` (the property tests run the same check on random input).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wire::fuzz::decode_stream(data));
