//! Fuzz target: results and prevResults: parse, print in every spec version, parse back.
//! The properties are in `cni_suite_fuzz::result`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cni_suite_fuzz::result(data));
