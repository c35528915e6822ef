//! Fuzz target: the `CNI_*` environment (`KEY=VALUE` lines), read by `command_from` and
//! `Env::from_lookup`.
//! The properties are in `cni_suite_fuzz::env`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cni_suite_fuzz::env(data));
