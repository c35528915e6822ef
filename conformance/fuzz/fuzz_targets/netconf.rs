//! Fuzz target: the network configuration on stdin: `NetConf::parse`, then `KubenetConfig` and
//! `OverlayConfig` decoding and resolution.
//! The properties are in `cni_suite_fuzz::netconf`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cni_suite_fuzz::netconf(data));
