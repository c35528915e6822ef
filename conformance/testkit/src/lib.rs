//! The suite's test kit: one node/pod/namespace fixture for every black-box suite (this crate's
//! tests/), the benchmarks and the crates' kernel tests, plus observers of the kernel state and
//! traffic a plugin leaves behind, and fixtures that know our plugins (host-local's lease layout
//! in [`leases`], cni-skel's panic marker, where the built binaries are in [`plugin`]).
//!
//! Namespaces ([`netns`]) and plugin execution ([`plugin::PluginRun`]) are the conformance
//! runner's own (cni-conformance runs plugins like a runtime does, and so do the tests); this
//! crate re-exports them so that there is one `Netns` in the workspace.
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
//! [`flannel`] runs real flanneld (built from its Go module) as a peer of our overlay.
//! [`kube`] is real Kubernetes around the plugins: a control plane shared by a test binary's
//! cluster tests and nodes (containerd, kubelet, kube-proxy) each in a namespace of its own.

pub mod cnitool;
pub mod etcd;
pub mod etcd_cluster;
pub mod etcd_gateway;
pub mod flannel;
pub mod http;
pub mod kube;
pub mod leases;
pub mod overlay;
pub mod ping_stream;
pub mod pki;
pub mod plugin;
pub mod pod;
pub mod result;
pub mod scenarios;
pub mod topology;
pub mod traffic;

pub use cni_conformance::netns;
pub use cni_conformance::{
    crash_marker, unique_link_name, unique_name, version_at_least, version_banner, CRASH_MARKERS,
    MAX_IFNAME_LEN, SPEC_VERSIONS,
};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Panics unless the test process runs as root.
///
/// Conformance tests create namespaces, veths and firewall rules; without root they cannot
/// test anything, and returning early would report a pass for a test that never ran.
pub fn require_root() {
    let euid = nix::unistd::geteuid();
    assert!(
        euid.is_root(),
        "conformance tests need root (they create network namespaces), but euid is {euid}: \
         run `sudo -E cargo test --release -p cni-testkit`"
    );
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

/// The checkout's root, for tests of the scripts and files in it (packaging/, examples): this
/// crate lives in `conformance/testkit`.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("conformance/testkit has two parents")
        .to_path_buf()
}
