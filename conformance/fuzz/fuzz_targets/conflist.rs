//! Fuzz target: conflists, split into per-plugin configs the way libcni builds them.
//! The properties are in `cni_suite_fuzz::conflist`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cni_suite_fuzz::conflist(data));
