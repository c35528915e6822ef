//! Test support for black-box CNI conformance tests: network namespaces that delete
//! themselves, plugin execution with the CNI environment, and observers of the kernel state and
//! traffic a plugin leaves behind.
//!
//! Everything here shells out to the tools an operator would use (`ip`, `ping`, `python3`,
//! `cnitool`), so tests check what the kernel really holds rather than what the plugin claims.
//! The tests that use it need root and call [`require_root`] first, which panics otherwise: the
//! Rust test runner cannot skip at runtime, and an early return would count as a pass.
//!
//! Conventions that keep tests independent and the machine clean:
//! - every name a test creates comes from [`unique_name`] or [`unique_link_name`] (pid + counter), so parallel tests and
//!   concurrent test binaries never collide;
//! - plugins run inside a [`netns::Node`] namespace, so the bridge, the host ends of the veths
//!   and the firewall tables they create vanish with that namespace;
//! - addresses come from private test ranges: 10.x for pods, 172.31.x for the "outside"
//!   network, and traffic only goes to namespaces the test created;
//! - guards ([`netns::Netns`], [`traffic::UdpSourceListener`], [`cnitool::CnitoolNetwork`])
//!   clean up in `Drop` without panicking, so a failing test leaves nothing behind.
//!
//! [`overlay`] builds a whole VXLAN overlay out of namespaces (underlay bridge, etcd from
//! [`etcd`], node agents, pods) for the vxlan-overlay tests and `vxlan-bench`;
//! [`ping_stream`] accounts for every echo request during an outage; [`http`] GETs an
//! endpoint inside a namespace (the agent's `/metrics` and `/healthz`); [`etcd_gateway`]
//! writes etcd records in bulk and reads etcd's request counters (`vxlan-scale-bench`).
//! [`etcd_cluster`] is a three-member etcd with TLS (certificates from [`pki`]) on the same
//! underlay.

pub mod cnitool;
pub mod etcd;
pub mod etcd_cluster;
pub mod etcd_gateway;
pub mod http;
pub mod leases;
pub mod netns;
pub mod overlay;
pub mod ping_stream;
pub mod pki;
pub mod plugin;
pub mod result;
pub mod runner;
pub mod scenarios;
pub mod topology;
pub mod traffic;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The CNI spec versions our plugins support, oldest first; conformance cases loop over these.
pub const SPEC_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// `--version` of this package's binaries: `<name> <version>`, then the spec versions it
/// speaks, in the shape every binary of the suite prints (shared through cni-spec).
pub fn version_banner(name: &str, spoken: &[&str]) -> String {
    format!(
        "{name} {}",
        cni_spec::version_text(env!("CARGO_PKG_VERSION"), spoken)
    )
}

/// Longest interface name the kernel accepts (IFNAMSIZ 16, minus the terminating NUL).
pub const MAX_IFNAME_LEN: usize = 15;

/// Markers of a crash in a plugin's stdout or stderr: a Rust panic ("panicked"), a Rust
/// backtrace, a Go panic's goroutine dump, a Python traceback, and the panic guard of our own
/// plugins' skeleton (cni-skel), which turns a panic into code 199 with "internal error (a
/// bug" on stdout and "internal error: <message> at <file:line>" on stderr, so the word
/// "panicked" never appears.
pub const CRASH_MARKERS: [&str; 5] = [
    "panicked",
    "stack backtrace:",
    "goroutine 1 [",
    "Traceback (most recent call last)",
    "internal error (a bug",
];

/// The crash marker found in a plugin's output, if any (see [`CRASH_MARKERS`]).
pub fn crash_marker(stdout: &str, stderr: &str) -> Option<&'static str> {
    CRASH_MARKERS
        .iter()
        .copied()
        .find(|m| stdout.contains(m) || stderr.contains(m))
}

/// Panics unless the test process runs as root.
///
/// Conformance tests create namespaces, veths and firewall rules; without root they cannot
/// test anything, and returning early would report a pass for a test that never ran.
pub fn require_root() {
    let euid = nix::unistd::geteuid();
    assert!(
        euid.is_root(),
        "conformance tests need root (they create network namespaces), but euid is {euid}: \
         run `sudo -E cargo test --release -p cni-conformance`"
    );
}

/// A name no other test, in this process or another, uses at the same time: `prefix` followed
/// by the process id and a per-process counter, in hex, like `cnit-node-1f3a-2`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}-{n:x}", std::process::id())
}

/// A [`unique_name`] that is also a valid interface name (bridge names, network names that
/// end up in link names): panics if it would be longer than [`MAX_IFNAME_LEN`], so keep
/// prefixes to 5 bytes or fewer.
pub fn unique_link_name(prefix: &str) -> String {
    let name = unique_name(prefix);
    assert!(
        name.len() <= MAX_IFNAME_LEN,
        "unique name {name:?} is longer than {MAX_IFNAME_LEN} bytes: use a shorter prefix"
    );
    name
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; returns whether it held.
///
/// For state the kernel changes asynchronously: a deleted namespace's links are destroyed by a
/// kernel workqueue some time after `ip netns del` returns.
pub fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether spec version `version` is `min` or later (`"0.4.0"`-style dotted triples).
///
/// Panics on a malformed version, which would be a bug in the test itself.
pub fn version_at_least(version: &str, min: &str) -> bool {
    fn parse(v: &str) -> [u32; 3] {
        let parts: Vec<u32> = v
            .split('.')
            .map(|p| {
                p.parse()
                    .unwrap_or_else(|_| panic!("bad spec version {v:?}"))
            })
            .collect();
        parts
            .try_into()
            .unwrap_or_else(|_| panic!("spec version {v:?} is not major.minor.patch"))
    }
    parse(version) >= parse(min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert!(version_at_least("1.0.0", "0.4.0"));
        assert!(version_at_least("0.4.0", "0.4.0"));
        assert!(!version_at_least("0.3.1", "0.4.0"));
        assert!(version_at_least("0.10.0", "0.4.0"));
    }

    #[test]
    fn unique_names_differ_and_fit_an_interface_name() {
        let a = unique_link_name("kb");
        let b = unique_link_name("kb");
        assert_ne!(a, b);
        assert!(a.len() <= MAX_IFNAME_LEN);
    }
}
