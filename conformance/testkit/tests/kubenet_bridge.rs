//! Black-box conformance tests of the `kubenet-bridge` plugin binary: each case execs the built
//! binary with the CNI environment inside a fresh node namespace, at every spec version it
//! applies to, and judges the result JSON, the kernel state (`ip -j`), the IPAM lease files and
//! real traffic.
//!
//! Run as root on Debian bookworm:
//! ```text
//! conformance/scripts/install-test-deps.sh
//! export CARGO_TARGET_DIR=/var/tmp/cni-suite-target
//! cargo build --release -p kubenet-bridge
//! cargo test --release -p cni-testkit
//! ```
//! `CNI_SUITE_BIN_DIR` overrides where the plugin binary is looked up; `CNI_SUITE_TOOLS` where
//! cnitool is. Failure messages start with the spec version, like `[1.0.0] add pod a`. The
//! plugin's own log of each failed case is printed with the failure.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use cni_testkit::leases::LeaseDir;
use cni_testkit::netns::{Netns, Node};
use cni_testkit::plugin::{
    bin_dir, plugin_binary, Expect, PluginOutput, PluginRun, REFERENCE_PLUGIN_DIR,
};
use cni_testkit::pod::Pod;
use cni_testkit::result::{check_add_result, host_veth_name};
use cni_testkit::scenarios::{
    assert_attachment_in_kernel, chained_with_portmap_and_bandwidth, cnitool_add_check_del,
    BridgeNetwork,
};
use cni_testkit::topology::{
    NodeNeighbours, INSIDE_HOST_ADDR, OUTSIDE_HOST_ADDR, OUTSIDE_NODE_ADDR,
};
use cni_testkit::traffic::{observed_source, ping};
use cni_testkit::{
    eventually, require_root, unique_link_name, unique_name, version_at_least, SPEC_VERSIONS,
};
use ipnet::Ipv4Net;
use serde_json::{json, Value};
use tempfile::TempDir;

/// The plugin under test.
const PLUGIN: &str = "kubenet-bridge";
/// The pod CIDR of most cases; every node is its own namespace, so cases never collide.
const POD_CIDR: &str = "10.244.1.0/24";
/// The gateway kubenet-bridge defaults to for [`POD_CIDR`] (its first host).
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
/// The cluster range exempt from masquerade; covers [`INSIDE_HOST_ADDR`].
const NON_MASQUERADE_CIDR: &str = "10.0.0.0/8";
const IFNAME: &str = "eth0";

/// CNI error codes from the spec (SPEC.md "Error codes"), and kubenet-bridge's own (README).
mod code {
    pub const INCOMPATIBLE_VERSION: u64 = 1;
    pub const INVALID_ENVIRONMENT: u64 = 4;
    pub const DECODING_FAILURE: u64 = 6;
    pub const INVALID_NETWORK_CONFIG: u64 = 7;
    pub const PLUGIN_NOT_AVAILABLE: u64 = 50;
    pub const RANGE_EXHAUSTED: u64 = 100;
    pub const ALREADY_ATTACHED: u64 = 102;
    pub const CHECK_MISMATCH: u64 = 104;
}

/// One node running kubenet-bridge at one spec version, with its own bridge, dataDir and log
/// file. Dropped at the end of the case, it takes the node namespace (bridge, veths, nftables
/// table) and the dataDir with it.
struct KubenetNode {
    version: &'static str,
    node: Node,
    program: PathBuf,
    net: BridgeNetwork,
    data_dir: TempDir,
}

impl KubenetNode {
    /// A node with the contract's example config (masquerade on, 10.244.1.0/24).
    fn new(version: &'static str) -> KubenetNode {
        KubenetNode::with_config(version, |_| {})
    }

    /// A node whose plugin config is the example one changed by `edit`.
    fn with_config(version: &'static str, edit: impl FnOnce(&mut Value)) -> KubenetNode {
        require_root();
        let program = plugin_binary(PLUGIN);
        let node = Node::new();
        let data_dir = tempfile::Builder::new()
            .prefix("cnit-kb-data-")
            .tempdir()
            .expect("cannot create a dataDir");
        let name = unique_name("cnit-kb-");
        let bridge = unique_link_name("kb");
        let mut plugin = json!({
            "type": PLUGIN, "bridge": bridge, "podCIDR": POD_CIDR, "gateway": GATEWAY.to_string(),
            "ipMasq": true, "nonMasqueradeCIDR": NON_MASQUERADE_CIDR, "mtu": 0,
            "hairpinMode": true, "promiscMode": false,
            "dataDir": data_dir.path(),
            "logFile": data_dir.path().join("kubenet-bridge.log"),
            "logLevel": "debug",
        });
        edit(&mut plugin);
        let pod_cidr: Ipv4Net = plugin["podCIDR"]
            .as_str()
            .unwrap_or(POD_CIDR)
            .parse()
            .expect("test podCIDR is a valid CIDR");
        let gateway = plugin["gateway"]
            .as_str()
            .map(|g| g.parse().expect("test gateway is an address"))
            .unwrap_or_else(|| first_host(pod_cidr));
        let net = BridgeNetwork {
            leases: LeaseDir::new(data_dir.path(), &name),
            name,
            plugin,
            bridge,
            pod_cidr,
            gateway,
            cni_path: format!("{}:{REFERENCE_PLUGIN_DIR}", bin_dir().display()),
        };
        KubenetNode {
            version,
            node,
            program,
            net,
            data_dir,
        }
    }

    /// `[version] what`, the prefix of every message.
    fn ctx(&self, what: &str) -> String {
        format!("[{}] {what}", self.version)
    }

    /// The single-plugin config at this node's version.
    fn config(&self) -> Value {
        self.net.plugin_config(self.version)
    }

    /// A run of the plugin in this node with `CNI_COMMAND` and `CNI_PATH` set.
    fn run(&self, verb: &str) -> PluginRun {
        PluginRun::new(&self.program, &self.node)
            .command(verb)
            .cni_path(&bin_dir().to_string_lossy())
    }

    /// A run for `pod`'s attachment: every variable a runtime sets, and the config.
    fn attachment(&self, verb: &str, pod: &Pod) -> PluginRun {
        self.run(verb)
            .container_id(&pod.id)
            .netns(&pod.netns.path())
            .ifname(IFNAME)
            .config(&self.config())
    }

    fn add(&self, pod: &Pod) -> PluginOutput {
        self.attachment("ADD", pod).exec()
    }

    fn del(&self, pod: &Pod) -> PluginOutput {
        self.attachment("DEL", pod).exec()
    }

    /// CHECK of `pod` with the ADD result as `prevResult`, as the spec requires.
    fn check(&self, pod: &Pod, prev_result: &Value) -> PluginOutput {
        let mut config = self.config();
        config["prevResult"] = prev_result.clone();
        self.attachment("CHECK", pod).config(&config).exec()
    }

    /// ADD of `pod`, asserting success, the result's shape, the kernel state and the lease.
    /// Returns the result, the pod's address and the host veth's name.
    fn add_ok(&self, pod: &Pod, what: &str) -> (Value, Ipv4Net, String) {
        let ctx = self.ctx(what);
        let result = self.add(pod).expect_success(&ctx);
        let netns_path = pod.netns.path();
        let address = check_add_result(
            &ctx,
            &result,
            &self.net.expected(self.version, IFNAME, &netns_path),
        );
        assert_eq!(
            result["interfaces"][0]["name"].as_str(),
            Some(self.net.bridge.as_str()),
            "{ctx}: interfaces[0] must be the bridge: {result}"
        );
        let host_veth = host_veth_name(&result, &self.net.bridge)
            .unwrap_or_else(|| panic!("{ctx}: result names no host veth: {result}"));
        assert_attachment_in_kernel(
            &ctx, &self.node, &pod.netns, IFNAME, address, &self.net, &host_veth,
        );
        let holder = self.net.leases.holder(address.addr()).unwrap_or_else(|| {
            panic!(
                "{ctx}: no lease file for {address} in {}",
                self.net.leases.path().display()
            )
        });
        assert_eq!(
            (holder.container_id.as_str(), holder.ifname.as_str()),
            (pod.id.as_str(), IFNAME),
            "{ctx}: lease file of {address} names the wrong holder"
        );
        (result, address, host_veth)
    }

    /// Asserts a failed call left nothing behind: no veth on the node, no lease.
    fn assert_nothing_created(&self, what: &str) {
        let ctx = self.ctx(what);
        let veths = self.node.netns().links_of_kind("veth");
        assert!(veths.is_empty(), "{ctx}: failed call left veths {veths:?}");
        let leases = self.net.leases.reserved_addresses();
        assert!(
            leases.is_empty(),
            "{ctx}: failed call left leases {leases:?}"
        );
    }
}

impl Drop for KubenetNode {
    /// On a failing case, show the plugin's own log next to the failure.
    fn drop(&mut self) {
        if thread::panicking() {
            let log = self.data_dir.path().join("kubenet-bridge.log");
            if let Ok(text) = std::fs::read_to_string(&log) {
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("--- [{}] tail of {}:", self.version, log.display());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

fn first_host(cidr: Ipv4Net) -> Ipv4Addr {
    cidr.hosts().next().expect("podCIDR has hosts")
}

#[test]
fn add_gives_two_pods_addresses_they_reach_each_other_and_the_gateway_with() {
    for version in SPEC_VERSIONS {
        let kn = KubenetNode::new(version);
        let (a, b) = (Pod::new(), Pod::new());
        let (_, addr_a, veth_a) = kn.add_ok(&a, "add creates veth for pod a");
        let (_, addr_b, veth_b) = kn.add_ok(&b, "add creates veth for pod b");
        assert_ne!(addr_a, addr_b, "{}", kn.ctx("two pods got one address"));
        assert_ne!(veth_a, veth_b, "{}", kn.ctx("two pods got one host veth"));
        assert_eq!(
            kn.net.leases.last_reserved(),
            Some(addr_b.addr()),
            "{}",
            kn.ctx("last_reserved_ip.0 records the last address handed out")
        );
        assert!(
            ping(&a.netns, addr_b.addr()),
            "{}",
            kn.ctx("pod a pings pod b")
        );
        assert!(
            ping(&b.netns, addr_a.addr()),
            "{}",
            kn.ctx("pod b pings pod a")
        );
        assert!(
            ping(&a.netns, kn.net.gateway),
            "{}",
            kn.ctx("pod a pings the gateway")
        );
        assert!(
            ping(&b.netns, kn.net.gateway),
            "{}",
            kn.ctx("pod b pings the gateway")
        );
    }
}

#[test]
fn gateway_defaults_to_the_first_host_of_pod_cidr() {
    for version in SPEC_VERSIONS {
        let kn = KubenetNode::with_config(version, |plugin| {
            plugin["podCIDR"] = json!("10.244.7.0/24");
            plugin
                .as_object_mut()
                .expect("plugin config is an object")
                .remove("gateway");
        });
        assert_eq!(kn.net.gateway, Ipv4Addr::new(10, 244, 7, 1));
        // add_ok checks the result's gateway and route, and the bridge holding it.
        let pod = Pod::new();
        kn.add_ok(&pod, "add without gateway uses the first host");
        assert!(
            ping(&pod.netns, kn.net.gateway),
            "{}",
            kn.ctx("pod pings the default gateway")
        );
    }
}

#[test]
fn hairpin_and_promisc_modes_reach_the_kernel() {
    for version in SPEC_VERSIONS {
        for (hairpin, promisc) in [(true, false), (false, true)] {
            let kn = KubenetNode::with_config(version, |plugin| {
                plugin["hairpinMode"] = json!(hairpin);
                plugin["promiscMode"] = json!(promisc);
            });
            let pod = Pod::new();
            let what = format!("add with hairpinMode={hairpin} promiscMode={promisc}");
            let (_, _, host_veth) = kn.add_ok(&pod, &what);
            let port = kn
                .node
                .netns()
                .link_details(&host_veth)
                .expect("host veth exists after add");
            assert_eq!(
                port["linkinfo"]["info_slave_data"]["hairpin"].as_bool(),
                Some(hairpin),
                "{}: bridge port flags {port}",
                kn.ctx(&format!("{what}: hairpin on the host veth"))
            );
            let bridge = kn
                .node
                .netns()
                .link_details(&kn.net.bridge)
                .expect("bridge exists after add");
            let bridge_promisc = bridge["flags"]
                .as_array()
                .is_some_and(|flags| flags.iter().any(|f| f == "PROMISC"));
            assert_eq!(
                bridge_promisc,
                promisc,
                "{}: bridge {bridge}",
                kn.ctx(&format!("{what}: bridge promiscuous"))
            );
        }
    }
}

#[test]
fn check_passes_after_add_from_0_4_0_and_is_refused_on_0_3() {
    for version in SPEC_VERSIONS {
        let kn = KubenetNode::new(version);
        let pod = Pod::new();
        let (result, _, _) = kn.add_ok(&pod, "add");
        let out = kn.check(&pod, &result);
        if version_at_least(version, "0.4.0") {
            out.expect_success(&kn.ctx("check after add"));
        } else {
            out.expect_cni_error_code(
                &kn.ctx("check does not exist before 0.4.0"),
                code::INCOMPATIBLE_VERSION,
                Some(version),
            );
        }
    }
}

#[test]
fn check_fails_after_pod_address_removed() {
    for version in SPEC_VERSIONS
        .into_iter()
        .filter(|v| version_at_least(v, "0.4.0"))
    {
        let kn = KubenetNode::new(version);
        let pod = Pod::new();
        let (result, _, _) = kn.add_ok(&pod, "add");
        pod.netns.ip_ok(&["addr", "flush", "dev", IFNAME]);
        kn.check(&pod, &result).expect_cni_error_code(
            &kn.ctx("check after the pod address was removed"),
            code::CHECK_MISMATCH,
            Some(version),
        );
    }
}

#[test]
fn del_twice_succeeds_and_removes_the_attachment() {
    for version in SPEC_VERSIONS {
        let kn = KubenetNode::new(version);
        let pod = Pod::new();
        let (_, address, host_veth) = kn.add_ok(&pod, "add");
        kn.del(&pod).expect_success(&kn.ctx("del"));
        assert!(
            !kn.net.leases.is_reserved(address.addr()),
            "{}",
            kn.ctx("del releases the address")
        );
        assert!(
            !pod.netns.has_link(IFNAME),
            "{}",
            kn.ctx("del removes the pod interface")
        );
        assert!(
            !kn.node.netns().has_link(&host_veth),
            "{}",
            kn.ctx("del removes the host veth")
        );
        kn.del(&pod).expect_success(&kn.ctx("second del"));
    }
}

#[test]
fn del_after_netns_deleted_releases_the_address() {
    for version in SPEC_VERSIONS {
        let kn = KubenetNode::new(version);
        let pod = Pod::new();
        let (_, address, host_veth) = kn.add_ok(&pod, "add");
        let Pod { netns, id } = pod;
        let netns_path = netns.path();
        netns.delete();
        kn.run("DEL")
            .container_id(&id)
            .netns(&netns_path)
            .ifname(IFNAME)
            .config(&kn.config())
            .exec()
            .expect_success(&kn.ctx("del after the pod netns was deleted"));
        assert!(
            !kn.net.leases.is_reserved(address.addr()),
            "{}: lease file of {address} still in {}",
            kn.ctx("del after the pod netns was deleted releases the address"),
            kn.net.leases.path().display()
        );
        // The kernel destroys the pair when it frees the namespace, asynchronously.
        assert!(
            eventually(Duration::from_secs(10), || !kn
                .node
                .netns()
                .has_link(&host_veth)),
            "{}",
            kn.ctx("no host veth after the netns was deleted")
        );
    }
}

#[test]
fn del_without_netns_succeeds_and_releases_the_address() {
    for version in SPEC_VERSIONS {
        let kn = KubenetNode::new(version);
        let pod = Pod::new();
        let (_, address, _) = kn.add_ok(&pod, "add");
        kn.attachment("DEL", &pod)
            .without("CNI_NETNS")
            .exec()
            .expect_success(&kn.ctx("del without CNI_NETNS"));
        assert!(
            !kn.net.leases.is_reserved(address.addr()),
            "{}",
            kn.ctx("del without CNI_NETNS releases the address")
        );
    }
}

#[test]
fn malformed_json_is_a_decoding_error() {
    for version in SPEC_VERSIONS {
        let kn = KubenetNode::new(version);
        let pod = Pod::new();
        let truncated = format!(r#"{{"cniVersion":"{version}","name":"#);
        kn.attachment("ADD", &pod)
            .stdin_bytes(truncated.as_bytes())
            .exec()
            .expect_cni_error_code(
                &kn.ctx("add with malformed JSON"),
                code::DECODING_FAILURE,
                None,
            );
        kn.assert_nothing_created("add with malformed JSON");
    }
}

#[test]
fn missing_cni_variables_are_rejected() {
    for version in SPEC_VERSIONS {
        let kn = KubenetNode::new(version);
        let pod = Pod::new();
        for var in ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS"] {
            let what = format!("add without {var}");
            kn.attachment("ADD", &pod)
                .without(var)
                .exec()
                .expect_cni_error_code(&kn.ctx(&what), code::INVALID_ENVIRONMENT, Some(version));
            kn.assert_nothing_created(&what);
        }
    }
}

#[test]
fn invalid_interface_names_are_rejected() {
    let too_long = "a".repeat(16);
    for version in SPEC_VERSIONS {
        let kn = KubenetNode::new(version);
        let pod = Pod::new();
        for ifname in [too_long.as_str(), ".", "..", "a/b", "a:b", "a b"] {
            let what = format!("add with CNI_IFNAME {ifname:?}");
            kn.attachment("ADD", &pod)
                .ifname(ifname)
                .exec()
                .expect_cni_error_code(&kn.ctx(&what), code::INVALID_ENVIRONMENT, Some(version));
            kn.assert_nothing_created(&what);
        }
    }
}

#[test]
fn invalid_container_ids_are_rejected() {
    for version in SPEC_VERSIONS {
        let kn = KubenetNode::new(version);
        let pod = Pod::new();
        for id in ["-bad", "../../etc/x"] {
            let what = format!("add with CNI_CONTAINERID {id:?}");
            kn.attachment("ADD", &pod)
                .container_id(id)
                .exec()
                .expect_cni_error_code(&kn.ctx(&what), code::INVALID_ENVIRONMENT, Some(version));
            kn.assert_nothing_created(&what);
        }
    }
}

#[test]
fn unsupported_spec_versions_are_rejected() {
    for unsupported in ["0.2.0", "9.9.9"] {
        let kn = KubenetNode::new("1.0.0");
        let pod = Pod::new();
        let mut config = kn.config();
        config["cniVersion"] = json!(unsupported);
        let what = format!("[{unsupported}] add with an unsupported cniVersion");
        kn.attachment("ADD", &pod)
            .config(&config)
            .exec()
            .expect_cni_error_code(&what, code::INCOMPATIBLE_VERSION, None);
        kn.assert_nothing_created(&what);
    }
}

#[test]
fn status_and_gc_are_refused_before_1_1_0() {
    for version in SPEC_VERSIONS
        .into_iter()
        .filter(|v| !version_at_least(v, "1.1.0"))
    {
        let kn = KubenetNode::new(version);
        for verb in ["STATUS", "GC"] {
            kn.run(verb)
                .config(&kn.config())
                .exec()
                .expect_cni_error_code(
                    &kn.ctx(&format!("{verb} does not exist before 1.1.0")),
                    code::INCOMPATIBLE_VERSION,
                    Some(version),
                );
        }
    }
}

#[test]
fn missing_pod_cidr_is_a_config_error() {
    for version in SPEC_VERSIONS {
        let kn = KubenetNode::with_config(version, |plugin| {
            plugin
                .as_object_mut()
                .expect("plugin config is an object")
                .remove("podCIDR");
        });
        let pod = Pod::new();
        kn.add(&pod).expect_cni_error_code(
            &kn.ctx("add without podCIDR"),
            code::INVALID_NETWORK_CONFIG,
            Some(version),
        );
        kn.assert_nothing_created("add without podCIDR");
    }
}

#[test]
fn version_lists_every_supported_spec_version() {
    for version in SPEC_VERSIONS {
        let kn = KubenetNode::new(version);
        let out = kn
            .run("VERSION")
            .config(&json!({"cniVersion": version}))
            .exec()
            .expect_success(&kn.ctx("version"));
        let supported: BTreeSet<&str> = out["supportedVersions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        for expected in SPEC_VERSIONS {
            assert!(
                supported.contains(expected),
                "{}: supportedVersions lacks {expected}: {out}",
                kn.ctx("version")
            );
        }
    }
}

#[test]
fn status_succeeds_on_1_1_0() {
    let kn = KubenetNode::new("1.1.0");
    kn.run("STATUS")
        .config(&kn.config())
        .exec()
        .expect_success(&kn.ctx("status"));
}

/// Adds pods A and B, then GCs with only A listed under `key`: B's lease must go, A's stay.
fn gc_keeps_only_listed_attachments(key: &str) {
    let kn = KubenetNode::new("1.1.0");
    let (a, b) = (Pod::new(), Pod::new());
    let (_, addr_a, _) = kn.add_ok(&a, "add pod a");
    let (_, addr_b, _) = kn.add_ok(&b, "add pod b");
    let mut config = kn.config();
    config[key] = json!([{"containerID": a.id, "ifname": IFNAME}]);
    let what = format!("gc with {key} listing only pod a");
    kn.run("GC")
        .config(&config)
        .exec()
        .expect_success(&kn.ctx(&what));
    assert!(
        !kn.net.leases.is_reserved(addr_b.addr()),
        "{}: pod b's lease {addr_b} survived",
        kn.ctx(&what)
    );
    assert!(
        kn.net.leases.is_reserved(addr_a.addr()),
        "{}: pod a's lease {addr_a} was released",
        kn.ctx(&what)
    );
}

#[test]
fn gc_without_a_valid_attachments_list_is_refused_and_releases_nothing() {
    let kn = KubenetNode::new("1.1.0");
    let pod = Pod::new();
    let (_, address, host_veth) = kn.add_ok(&pod, "add");
    let what = kn.ctx("gc without cni.dev/valid-attachments");
    kn.run("GC")
        .config(&kn.config())
        .exec()
        .expect_cni_error_code(&what, code::INVALID_NETWORK_CONFIG, Some("1.1.0"));
    assert!(
        kn.net.leases.is_reserved(address.addr()),
        "{what}: the lease was released"
    );
    assert!(
        kn.node.netns().has_link(&host_veth),
        "{what}: the pod's veth was removed"
    );
    let log = std::fs::read_to_string(kn.data_dir.path().join("kubenet-bridge.log"))
        .expect("the plugin writes its logFile");
    assert!(
        log.lines()
            .any(|l| l.contains("GC network=") && l.contains("outcome=error [7]")),
        "{what}: a refused request still gets its log line:\n{log}"
    );
    // null is what libcni sends for an empty list: nothing is valid, everything goes.
    let mut config = kn.config();
    config["cni.dev/valid-attachments"] = Value::Null;
    kn.run("GC")
        .config(&config)
        .exec()
        .expect_success(&kn.ctx("gc with a null list"));
    assert!(
        !kn.net.leases.is_reserved(address.addr()),
        "{what}: a null list must release the lease"
    );
    assert!(
        eventually(Duration::from_secs(5), || !kn
            .node
            .netns()
            .has_link(&host_veth)),
        "{what}: a null list must remove the veth"
    );
}

#[test]
fn a_request_refused_before_the_plugin_runs_is_logged() {
    let kn = KubenetNode::new("1.0.0");
    let pod = Pod::new();
    kn.attachment("ADD", &pod)
        .container_id("../../etc/x")
        .exec()
        .expect_cni_error_code(
            &kn.ctx("add with a path in CNI_CONTAINERID"),
            code::INVALID_ENVIRONMENT,
            Some("1.0.0"),
        );
    let log = std::fs::read_to_string(kn.data_dir.path().join("kubenet-bridge.log"))
        .expect("the plugin writes its logFile");
    assert!(
        log.lines().any(|l| l.contains("ADD network=")
            && l.contains("container=../../etc/x")
            && l.contains("outcome=error [4]")),
        "the refused ADD must be logged with the container id it was given:\n{log}"
    );
}

#[test]
fn gc_releases_attachments_not_listed_as_valid() {
    gc_keeps_only_listed_attachments("cni.dev/valid-attachments");
}

#[test]
fn gc_of_250_attached_pods_removes_every_veth_and_lease_in_bounded_time() {
    // A node drained at once: GC with no valid attachment removes 250 veths (one netlink
    // request each, every receive bounded) and releases 250 leases under the store's lock.
    const PODS: usize = 250;
    // GC took about 5 s here, nearly all of it the kernel's ~17 ms per veth deletion; the
    // bound catches hangs and receive timeouts, not a slow machine.
    const LIMIT: Duration = Duration::from_secs(45);
    let kn = KubenetNode::new("1.1.0");
    let pods: Vec<Pod> = (0..PODS).map(|_| Pod::new()).collect();
    for (i, pod) in pods.iter().enumerate() {
        kn.add(pod)
            .expect_success(&kn.ctx(&format!("add {} of {PODS}", i + 1)));
    }
    assert_eq!(kn.net.leases.reserved_addresses().len(), PODS);
    assert_eq!(kn.node.netns().links_of_kind("veth").len(), PODS);
    let mut config = kn.config();
    config["cni.dev/valid-attachments"] = json!([]);
    let what = kn.ctx(&format!("gc of {PODS} pods, none valid"));
    let started = std::time::Instant::now();
    kn.run("GC").config(&config).exec().expect_success(&what);
    let took = started.elapsed();
    assert!(took < LIMIT, "{what}: took {took:?}");
    eprintln!("{what}: took {took:?}");
    let leases = kn.net.leases.reserved_addresses();
    assert!(leases.is_empty(), "{what}: leases left {leases:?}");
    let veths = kn.node.netns().links_of_kind("veth");
    assert!(veths.is_empty(), "{what}: {} veths left", veths.len());
    let attached = pods.iter().filter(|p| p.netns.has_link(IFNAME)).count();
    assert_eq!(attached, 0, "{what}: pods kept their interface");
}

#[test]
fn gc_accepts_the_attachments_key() {
    gc_keeps_only_listed_attachments("cni.dev/attachments");
}

#[test]
fn concurrent_adds_get_distinct_addresses() {
    const PODS: usize = 40;
    for version in SPEC_VERSIONS {
        let kn = KubenetNode::new(version);
        let pods: Vec<Pod> = (0..PODS).map(|_| Pod::new()).collect();
        let outputs: Vec<PluginOutput> = thread::scope(|s| {
            let runs: Vec<_> = pods.iter().map(|pod| s.spawn(|| kn.add(pod))).collect();
            runs.into_iter()
                .map(|r| r.join().expect("ADD thread panicked"))
                .collect()
        });
        let mut addresses = BTreeSet::new();
        for (i, (pod, out)) in pods.iter().zip(&outputs).enumerate() {
            let ctx = kn.ctx(&format!("concurrent add {i}"));
            let result = out.expect_success(&ctx);
            let netns_path = pod.netns.path();
            let address = check_add_result(
                &ctx,
                &result,
                &kn.net.expected(version, IFNAME, &netns_path),
            );
            assert!(
                addresses.insert(address.addr()),
                "{ctx}: address {address} handed out twice"
            );
        }
        let leased: BTreeSet<Ipv4Addr> = kn.net.leases.reserved_addresses().into_iter().collect();
        assert_eq!(
            leased,
            addresses,
            "{}",
            kn.ctx("lease files match the addresses handed out")
        );
        let veths = kn.node.netns().links_of_kind("veth").len();
        assert_eq!(veths, PODS, "{}", kn.ctx("one host veth per pod"));

        let outputs: Vec<PluginOutput> = thread::scope(|s| {
            let runs: Vec<_> = pods.iter().map(|pod| s.spawn(|| kn.del(pod))).collect();
            runs.into_iter()
                .map(|r| r.join().expect("DEL thread panicked"))
                .collect()
        });
        for (i, out) in outputs.iter().enumerate() {
            out.expect_success(&kn.ctx(&format!("concurrent del {i}")));
        }
        let leased = kn.net.leases.reserved_addresses();
        assert!(
            leased.is_empty(),
            "{}: {leased:?}",
            kn.ctx("all leases released after concurrent dels")
        );
        let veths = kn.node.netns().links_of_kind("veth");
        assert!(
            veths.is_empty(),
            "{}: {veths:?}",
            kn.ctx("no veth left after concurrent dels")
        );
    }
}

#[test]
fn exhausted_pod_cidr_fails_cleanly() {
    // A /29 has 8 addresses: network, broadcast and the gateway leave 5 for pods.
    const USABLE: usize = 5;
    for version in SPEC_VERSIONS {
        let kn = KubenetNode::with_config(version, |plugin| {
            plugin["podCIDR"] = json!("10.244.1.0/29");
            plugin["gateway"] = json!("10.244.1.1");
        });
        let pods: Vec<Pod> = (0..=USABLE).map(|_| Pod::new()).collect();
        let mut addresses = BTreeSet::new();
        for (i, pod) in pods[..USABLE].iter().enumerate() {
            let (_, address, _) = kn.add_ok(pod, &format!("add {} of {USABLE}", i + 1));
            addresses.insert(address.addr());
        }
        assert_eq!(
            addresses.len(),
            USABLE,
            "{}",
            kn.ctx("distinct addresses in a /29")
        );
        let last = &pods[USABLE];
        if version_at_least(version, "1.1.0") {
            kn.run("STATUS")
                .config(&kn.config())
                .exec()
                .expect_cni_error_code(
                    &kn.ctx("status of an exhausted podCIDR"),
                    code::PLUGIN_NOT_AVAILABLE,
                    Some(version),
                );
        }
        let ctx = kn.ctx("add to an exhausted podCIDR");
        let err = kn
            .add(last)
            .expect_cni_error_code(&ctx, code::RANGE_EXHAUSTED, Some(version));
        assert!(
            err.msg.contains("10.244.1.0/29"),
            "{ctx}: the message must name the range: {}",
            err.msg
        );
        assert!(
            !last.netns.has_link(IFNAME),
            "{ctx}: pod interface left behind"
        );
        let veths = kn.node.netns().links_of_kind("veth").len();
        assert_eq!(veths, USABLE, "{ctx}: veth left behind");
        assert_eq!(
            kn.net.leases.reserved_addresses().len(),
            USABLE,
            "{ctx}: lease count changed"
        );
    }
}

#[test]
fn cnitool_adds_checks_and_deletes() {
    let kn = KubenetNode::new("1.0.0");
    cnitool_add_check_del(&kn.node, &kn.net);
}

#[test]
fn chained_with_reference_portmap_and_bandwidth() {
    let kn = KubenetNode::new("1.0.0");
    chained_with_portmap_and_bandwidth(&kn.node, &kn.net);
}

#[test]
fn masquerade_hides_pods_from_outside_but_not_from_the_cluster() {
    for version in SPEC_VERSIONS {
        let kn = KubenetNode::new(version);
        let neighbours = NodeNeighbours::connect(&kn.node);
        let (a, b) = (Pod::new(), Pod::new());
        let (_, addr_a, _) = kn.add_ok(&a, "add pod a");
        let (_, addr_b, _) = kn.add_ok(&b, "add pod b");
        assert_eq!(
            observed_source(&a.netns, &neighbours.outside, OUTSIDE_HOST_ADDR.addr()),
            Some(OUTSIDE_NODE_ADDR.addr()),
            "{}",
            kn.ctx("traffic to outside the cluster is masqueraded as the node")
        );
        assert_eq!(
            observed_source(&a.netns, &neighbours.inside, INSIDE_HOST_ADDR.addr()),
            Some(addr_a.addr()),
            "{}",
            kn.ctx("traffic into nonMasqueradeCIDR keeps the pod address")
        );
        assert_eq!(
            observed_source(&a.netns, &b.netns, addr_b.addr()),
            Some(addr_a.addr()),
            "{}",
            kn.ctx("pod to pod traffic keeps the pod address")
        );
        let tables = nft_tables(&kn.node);
        assert_eq!(
            tables.len(),
            1,
            "{}: {tables:?}",
            kn.ctx("one nftables table per node, whatever the pod count")
        );
    }
}

#[test]
fn ip_masq_false_keeps_pod_addresses() {
    for version in SPEC_VERSIONS {
        let kn = KubenetNode::with_config(version, |plugin| plugin["ipMasq"] = json!(false));
        let neighbours = NodeNeighbours::connect(&kn.node);
        let pod = Pod::new();
        let (_, address, _) = kn.add_ok(&pod, "add");
        assert_eq!(
            observed_source(&pod.netns, &neighbours.outside, OUTSIDE_HOST_ADDR.addr()),
            Some(address.addr()),
            "{}",
            kn.ctx("ipMasq=false: traffic to outside keeps the pod address")
        );
    }
}

/// The nftables tables in the node, as `family name` lines.
fn nft_tables(node: &Node) -> Vec<String> {
    let out = node.netns().run("nft", &["list", "tables"]);
    assert!(
        out.status.success(),
        "nft list tables in the node failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_start_matches("table ").to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// The MTU of `ifname` in `netns`, from `ip -d -j link show`.
fn link_mtu(netns: &Netns, ifname: &str) -> Option<u64> {
    netns.link_details(ifname)?["mtu"].as_u64()
}

#[test]
fn mtu_0_follows_the_default_route_link_and_an_explicit_mtu_wins() {
    // mtu 0: the bridge is created with the MTU of the default route's link (1400 here), and
    // pods get the bridge's.
    let kn = KubenetNode::new("1.1.0");
    let ns = kn.node.netns();
    // The uplink is a veth pair inside the node (this kernel has no dummy driver).
    ns.ip_ok(&[
        "link", "add", "uplink0", "mtu", "1400", "type", "veth", "peer", "name", "uplink1", "mtu",
        "1400",
    ]);
    ns.ip_ok(&["link", "set", "uplink1", "up"]);
    ns.ip_ok(&["link", "set", "uplink0", "up"]);
    ns.ip_ok(&["addr", "add", "192.0.2.2/24", "dev", "uplink0"]);
    ns.ip_ok(&["route", "add", "default", "via", "192.0.2.1"]);
    let pod = Pod::new();
    let (result, _, _) = kn.add_ok(&pod, "add with mtu 0");
    let ctx = kn.ctx("mtu 0");
    assert_eq!(link_mtu(&pod.netns, IFNAME), Some(1400), "{ctx}: pod MTU");
    assert_eq!(
        link_mtu(ns, &kn.net.bridge),
        Some(1400),
        "{ctx}: bridge MTU"
    );
    assert_eq!(
        result["interfaces"][2]["mtu"].as_u64(),
        Some(1400),
        "{ctx}: 1.1.0 results carry the pod interface's MTU: {result}"
    );

    // No default route at all: 1500.
    let bare = KubenetNode::new("1.0.0");
    let pod = Pod::new();
    bare.add_ok(&pod, "add with mtu 0 and no default route");
    assert_eq!(
        link_mtu(&pod.netns, IFNAME),
        Some(1500),
        "{}",
        bare.ctx("mtu 0 without a default route")
    );

    let fixed = KubenetNode::with_config("1.1.0", |plugin| plugin["mtu"] = json!(1300));
    let pod = Pod::new();
    let (result, _, _) = fixed.add_ok(&pod, "add with mtu 1300");
    let ctx = fixed.ctx("mtu 1300");
    assert_eq!(link_mtu(&pod.netns, IFNAME), Some(1300), "{ctx}: pod MTU");
    assert_eq!(
        result["interfaces"][2]["mtu"].as_u64(),
        Some(1300),
        "{ctx}: {result}"
    );
}

#[test]
fn two_concurrent_adds_of_one_pod_hold_one_address_and_del_frees_it() {
    // A runtime retrying an ADD it timed out on: both run at once. One attaches the pod, the
    // other fails with code 102; never two leases, never a lease released under the winner.
    let kn = KubenetNode::new("1.0.0");
    for round in 0..10 {
        let pod = Pod::new();
        let ctx = kn.ctx(&format!("round {round}: two concurrent ADDs of one pod"));
        let outputs: Vec<PluginOutput> = thread::scope(|s| {
            let runs: Vec<_> = (0..2).map(|_| s.spawn(|| kn.add(&pod))).collect();
            runs.into_iter()
                .map(|r| r.join().expect("ADD thread panicked"))
                .collect()
        });
        let won: Vec<&PluginOutput> = outputs.iter().filter(|o| o.status.success()).collect();
        assert_eq!(won.len(), 1, "{ctx}: {outputs:?}");
        for lost in outputs.iter().filter(|o| !o.status.success()) {
            lost.expect_cni_error_code(&ctx, code::ALREADY_ATTACHED, Some("1.0.0"));
        }
        let result = won[0].expect_success(&ctx);
        let address: Ipv4Net = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{ctx}: no address in {result}"));
        assert_eq!(
            kn.net.leases.reserved_addresses(),
            vec![address.addr()],
            "{ctx}: exactly the winner's lease"
        );
        assert_eq!(
            pod.netns.ipv4_addresses(IFNAME),
            vec![address],
            "{ctx}: the pod has the winner's address"
        );
        kn.del(&pod).expect_success(&ctx);
        assert!(
            kn.net.leases.reserved_addresses().is_empty(),
            "{ctx}: DEL left a lease"
        );
    }
}
