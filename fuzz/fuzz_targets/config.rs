#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| coalesce_proxy::tools::fuzzing::config(data));
