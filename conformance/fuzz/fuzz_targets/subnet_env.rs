//! Fuzz target: flannel's `subnet.env`, as the vxlan-overlay plugin reads it on every ADD.
//! The properties are in `cni_suite_fuzz::subnet_env`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cni_suite_fuzz::subnet_env(data));
