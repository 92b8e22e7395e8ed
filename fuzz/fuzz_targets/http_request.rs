#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchyard::fuzz_targets::http_request(data));
