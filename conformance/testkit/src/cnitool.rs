//! Driving plugins through upstream `cnitool` (libcni 1.1.2), as a runtime would: a conflist in
//! a private `NETCONFPATH`, plugins found on `CNI_PATH`, run inside a node namespace.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tempfile::TempDir;

use crate::netns::{Netns, Node};
use crate::plugin::{run_with_stdin, PluginOutput};

/// Where libcni caches results; cnitool offers no way to move it.
pub const LIBCNI_RESULT_CACHE: &str = "/var/lib/cni/results";

/// `${CNI_SUITE_TOOLS:-/var/tmp/cni-suite-tools}/bin/cnitool`; panics if it is not built.
pub fn cnitool_path() -> PathBuf {
    let tools = std::env::var_os("CNI_SUITE_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/cni-suite-tools"));
    let path = tools.join("bin/cnitool");
    assert!(
        path.is_file(),
        "{} not found: run conformance/scripts/install-test-deps.sh",
        path.display()
    );
    path
}

/// A network (conflist) that cnitool runs inside one node. On drop, removes the conflist and
/// libcni's cached results for this network, which a failed test would otherwise leave in
/// [`LIBCNI_RESULT_CACHE`].
pub struct CnitoolNetwork {
    cnitool: PathBuf,
    node_netns: String,
    conf_dir: TempDir,
    net_name: String,
    cni_path: String,
    capability_args: Option<String>,
}

impl CnitoolNetwork {
    /// Writes `conflist` (whose `name` must be unique to the test) into a fresh `NETCONFPATH`;
    /// plugins will be looked up on `cni_path` (a `:`-separated list).
    pub fn new(node: &Node, conflist: &Value, cni_path: &str) -> CnitoolNetwork {
        let net_name = conflist["name"]
            .as_str()
            .expect("conflist needs a name")
            .to_owned();
        let conf_dir = tempfile::Builder::new()
            .prefix("cnit-netconf-")
            .tempdir()
            .expect("cannot create a NETCONFPATH directory");
        let file = conf_dir.path().join(format!("{net_name}.conflist"));
        fs::write(&file, conflist.to_string())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
        CnitoolNetwork {
            cnitool: cnitool_path(),
            node_netns: node.netns().name().to_owned(),
            conf_dir,
            net_name,
            cni_path: cni_path.to_owned(),
            capability_args: None,
        }
    }

    /// Runtime capability arguments (cnitool's `CAP_ARGS`), like `{"portMappings": [...]}`.
    pub fn with_capability_args(mut self, args: &Value) -> Self {
        self.capability_args = Some(args.to_string());
        self
    }

    /// Looks plugins up on `cni_path` from now on: a node whose binaries were replaced by
    /// another release (the rolling-upgrade tests).
    pub fn set_cni_path(&mut self, cni_path: &str) {
        cni_path.clone_into(&mut self.cni_path);
    }

    /// The network's name.
    pub fn name(&self) -> &str {
        &self.net_name
    }

    /// `cnitool add <net> <pod netns>`; on success stdout holds the final result.
    pub fn add(&self, pod: &Netns) -> PluginOutput {
        self.run("add", &pod.path())
    }

    /// `cnitool check <net> <pod netns>`.
    pub fn check(&self, pod: &Netns) -> PluginOutput {
        self.run("check", &pod.path())
    }

    /// `cnitool del <net> <pod netns>`.
    pub fn del(&self, pod: &Netns) -> PluginOutput {
        self.run("del", &pod.path())
    }

    fn run(&self, verb: &str, netns_path: &Path) -> PluginOutput {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.node_netns])
            .arg(&self.cnitool)
            .args([verb, &self.net_name])
            .arg(netns_path)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("NETCONFPATH", self.conf_dir.path())
            .env("CNI_PATH", &self.cni_path);
        if let Some(args) = &self.capability_args {
            cmd.env("CAP_ARGS", args);
        }
        run_with_stdin(cmd, b"")
    }
}

impl Drop for CnitoolNetwork {
    fn drop(&mut self) {
        // Cache files are named `<net>-<containerid>-<ifname>`; never panic here.
        let prefix = format!("{}-", self.net_name);
        let Ok(entries) = fs::read_dir(LIBCNI_RESULT_CACHE) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}
