//! What runtimes and chains hand our plugins beyond a plain ADD, black-box at every spec
//! version: a `prevResult` from an earlier plugin (interfaces, addresses, routes, DNS) that
//! kubenet-bridge and vxlan-overlay must print back with their own attachment merged in;
//! `CNI_NETNS` naming the plugin's own namespace; `CNI_ARGS` (libcni's rules, `IP=`), the
//! `ips` and `mac` capabilities.
//!
//! Run as root after building the plugins:
//! ```text
//! cargo build --release -p kubenet-bridge -p vxlan-overlay
//! cargo test --release -p cni-testkit --test chained_input
//! ```

use std::fs;
use std::path::PathBuf;

use cni_conformance::cases::runtime_input::earlier_result;
use cni_conformance::runtime::Pod;
use cni_testkit::netns::Node;
use cni_testkit::plugin::{bin_dir, plugin_binary, Expect, PluginOutput, PluginRun};
use cni_testkit::{require_root, unique_link_name, unique_name, version_at_least, SPEC_VERSIONS};
use serde_json::{json, Value};
use tempfile::TempDir;

const IFNAME: &str = "eth0";
/// The address-unavailable code of our plugins (README, error table).
const ADDRESS_UNAVAILABLE: u64 = 106;
const INVALID_ENVIRONMENT: u64 = 4;

/// One of our bridge plugins on a node of its own at one spec version.
struct BridgeNode {
    version: &'static str,
    node: Node,
    program: PathBuf,
    plugin: Value,
    name: String,
    _state: TempDir,
}

impl BridgeNode {
    /// kubenet-bridge with 10.244.1.0/24.
    fn kubenet(version: &'static str) -> BridgeNode {
        require_root();
        let state = tempdir();
        let plugin = json!({
            "type": "kubenet-bridge", "bridge": unique_link_name("ci"),
            "podCIDR": "10.244.1.0/24", "ipMasq": false,
            "dataDir": state.path().join("ipam"),
        });
        BridgeNode::new(version, "kubenet-bridge", plugin, state)
    }

    /// vxlan-overlay in static mode: the subnet file the agent would write for 10.244.5.0/24.
    fn overlay(version: &'static str) -> BridgeNode {
        require_root();
        let state = tempdir();
        let subnet_file = state.path().join("subnet.env");
        fs::write(
            &subnet_file,
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.5.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
        )
        .expect("cannot write subnet.env");
        let peers_file = state.path().join("peers.json");
        fs::write(&peers_file, "[]").expect("cannot write peers.json");
        let plugin = json!({
            "type": "vxlan-overlay", "clusterCIDR": "10.244.0.0/16",
            "bridge": unique_link_name("co"),
            "subnetFile": subnet_file, "peersFile": peers_file,
            "dataDir": state.path().join("overlay"), "ipamDir": state.path().join("ipam"),
        });
        BridgeNode::new(version, "vxlan-overlay", plugin, state)
    }

    fn new(version: &'static str, kind: &str, plugin: Value, state: TempDir) -> BridgeNode {
        BridgeNode {
            version,
            node: Node::new(),
            program: plugin_binary(kind),
            plugin,
            name: unique_name("cnit-ci-"),
            _state: state,
        }
    }

    fn ctx(&self, what: &str) -> String {
        format!("[{}] {} {what}", self.version, self.program.display())
    }

    /// The config at this node's version, with `prevResult` when given.
    fn config(&self, prev_result: Option<&Value>) -> Value {
        let mut config = self.plugin.clone();
        config["cniVersion"] = json!(self.version);
        config["name"] = json!(self.name);
        if let Some(prev) = prev_result {
            config["prevResult"] = prev.clone();
        }
        config
    }

    /// A run for `pod` with every variable a runtime sets.
    fn run(&self, verb: &str, pod: &Pod, config: &Value) -> PluginRun {
        PluginRun::new(&self.program, &self.node)
            .command(verb)
            .cni_path(&bin_dir().to_string_lossy())
            .container_id(&pod.id.container_id)
            .netns(&pod.netns.path())
            .ifname(IFNAME)
            .config(config)
    }

    fn add(&self, pod: &Pod, prev_result: Option<&Value>) -> PluginOutput {
        self.run("ADD", pod, &self.config(prev_result)).exec()
    }

    fn add_with_args(&self, pod: &Pod, args: &str) -> PluginOutput {
        self.run("ADD", pod, &self.config(None))
            .env("CNI_ARGS", args)
            .exec()
    }
}

fn tempdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("cnit-ci-")
        .tempdir()
        .expect("cannot create a tempdir")
}

/// The IPv4 addresses on the pod's interface, as `a.b.c.d/len`.
fn addresses(pod: &Pod) -> Vec<String> {
    pod.netns
        .ipv4_addresses(IFNAME)
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// The MAC of the pod's interface.
fn mac(pod: &Pod) -> String {
    pod.netns
        .link_details(IFNAME)
        .and_then(|l| l["address"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Asserts `out` is `earlier` with the plugin's own attachment appended: the earlier entries
/// first and unchanged, then the plugin's interfaces, its address pointing at the pod's
/// interface (index shifted past the earlier interfaces), its route, the earlier DNS.
fn assert_merged(ctx: &str, earlier: &Value, out: &Value, pod: &Pod, version: &str) {
    assert_eq!(out["cniVersion"], version, "{ctx}: cniVersion: {out}");
    let interfaces = out["interfaces"].as_array().expect("interfaces");
    assert_eq!(
        interfaces[..2],
        earlier["interfaces"]
            .as_array()
            .expect("earlier interfaces")[..],
        "{ctx}: the earlier interfaces must come first, unchanged: {out}"
    );
    let ips = out["ips"].as_array().expect("ips");
    assert_eq!(
        ips[..3],
        earlier["ips"].as_array().expect("earlier ips")[..],
        "{ctx}: the earlier addresses must come first, unchanged (indexes included): {out}"
    );
    assert_eq!(ips.len(), 4, "{ctx}: one address of its own: {out}");
    let own = &ips[3];
    let index = own["interface"].as_u64().expect("own ip has an interface") as usize;
    assert!(index >= 2, "{ctx}: own interface index not shifted: {out}");
    assert_eq!(interfaces[index]["name"], IFNAME, "{ctx}: {out}");
    assert_eq!(
        interfaces[index]["sandbox"],
        &*pod.netns.path().to_string_lossy(),
        "{ctx}: {out}"
    );
    assert_eq!(
        addresses(pod),
        [own["address"].as_str().expect("address")],
        "{ctx}: the pod holds the address the result gives"
    );
    assert_eq!(
        interfaces[index]["mac"].as_str(),
        Some(mac(pod).as_str()),
        "{ctx}: the result's MAC is the pod's"
    );
    let routes = out["routes"].as_array().expect("routes");
    assert_eq!(routes[0], earlier["routes"][0], "{ctx}: {out}");
    assert!(
        routes[1..].iter().any(|r| r["dst"] == "0.0.0.0/0"),
        "{ctx}: own default route: {out}"
    );
    assert_eq!(out["dns"], earlier["dns"], "{ctx}: {out}");
    if !version_at_least(version, "1.0.0") {
        assert_eq!(own["version"], "4", "{ctx}: {out}");
    }
}

fn prev_result_is_merged(node: impl Fn(&'static str) -> BridgeNode) {
    for version in SPEC_VERSIONS {
        let n = node(version);
        let pod = Pod::new();
        let earlier = earlier_result(version, &pod.netns.path().to_string_lossy());
        let ctx = n.ctx("ADD with a prevResult");
        let out = n.add(&pod, Some(&earlier)).expect_success(&ctx);
        assert_merged(&ctx, &earlier, &out, &pod, version);
        if version_at_least(version, "0.4.0") {
            // CHECK gets the merged result, as a runtime would send it; the earlier plugin's
            // route is not ours to vouch for.
            n.run("CHECK", &pod, &n.config(Some(&out)))
                .exec()
                .expect_success(&n.ctx("CHECK with the merged result"));
        }
        n.run("DEL", &pod, &n.config(Some(&out)))
            .exec()
            .expect_success(&n.ctx("DEL"));
        // Without a prevResult the result is the plugin's own alone.
        let alone = Pod::new();
        let out = n.add(&alone, None).expect_success(&n.ctx("ADD alone"));
        assert_eq!(out["ips"].as_array().map(Vec::len), Some(1), "{out}");
        assert!(out.get("dns").is_none(), "{out}");
    }
}

#[test]
fn kubenet_bridge_prints_the_prev_result_with_its_attachment_merged_in() {
    prev_result_is_merged(BridgeNode::kubenet);
}

#[test]
fn vxlan_overlay_prints_the_prev_result_with_its_attachment_merged_in() {
    prev_result_is_merged(BridgeNode::overlay);
}

#[test]
fn the_plugins_own_namespace_is_refused_naming_cni_netns_and_nothing_changes() {
    for make in [BridgeNode::kubenet, BridgeNode::overlay] {
        let n = make("1.0.0");
        let pod = Pod::new();
        let links_before = n.node.netns().links_of_kind("veth");
        for netns in [
            "/proc/self/ns/net".to_owned(),
            n.node.netns().path().to_string_lossy().into_owned(),
        ] {
            let ctx = n.ctx(&format!("ADD with CNI_NETNS={netns}"));
            let out = n
                .run("ADD", &pod, &n.config(None))
                .env("CNI_NETNS", &netns)
                .exec();
            let e = out.expect_cni_error_code(&ctx, INVALID_ENVIRONMENT, Some("1.0.0"));
            assert!(e.msg.contains("CNI_NETNS"), "{ctx}: {}", e.msg);
            assert!(e.msg.contains("own network namespace"), "{ctx}: {}", e.msg);
        }
        assert_eq!(
            n.node.netns().links_of_kind("veth"),
            links_before,
            "{}",
            n.ctx("a refused ADD made veths on the node")
        );
        assert!(
            n.node.netns().links_of_kind("bridge").is_empty(),
            "{}",
            n.ctx("a refused ADD made the bridge")
        );
        // The pod's own namespace still works.
        n.add(&pod, None)
            .expect_success(&n.ctx("ADD in the pod's namespace"));
    }
}

#[test]
fn cni_args_follow_libcni_rules() {
    for version in SPEC_VERSIONS {
        let n = BridgeNode::kubenet(version);
        for (args, why) in [
            (
                "K8S_POD_NAME=web;FOO=bar",
                "unknown key without IgnoreUnknown",
            ),
            ("IgnoreUnknown=0;FOO=bar", "IgnoreUnknown=0"),
            ("IgnoreUnknown=1;K8S_POD_NAME", "pair without ="),
            ("K8S_POD_NAME=web;", "trailing ;"),
            ("IgnoreUnknown=1;IP=banana", "IP that is no address"),
        ] {
            let pod = Pod::new();
            let ctx = n.ctx(&format!("CNI_ARGS {args:?} ({why})"));
            let e = n.add_with_args(&pod, args).expect_cni_error_code(
                &ctx,
                INVALID_ENVIRONMENT,
                Some(version),
            );
            assert!(e.msg.contains("CNI_ARGS"), "{ctx}: {}", e.msg);
            assert!(addresses(&pod).is_empty(), "{ctx}: the pod got an address");
        }
        for args in [
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=1f2e;FOO=bar",
            "IgnoreUnknown=true;FOO=bar",
            "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
            "",
        ] {
            let pod = Pod::new();
            n.add_with_args(&pod, args)
                .expect_success(&n.ctx(&format!("CNI_ARGS {args:?}")));
        }
        // DEL needs no argument and is not refused for them.
        let pod = Pod::new();
        n.add(&pod, None).expect_success(&n.ctx("ADD"));
        n.run("DEL", &pod, &n.config(None))
            .env("CNI_ARGS", "FOO=bar;broken")
            .exec()
            .expect_success(&n.ctx("DEL with bad CNI_ARGS"));
        assert!(pod.netns.ipv4_addresses(IFNAME).is_empty());
    }
}

#[test]
fn a_requested_address_is_leased_or_refused_with_code_106() {
    for version in SPEC_VERSIONS {
        let n = BridgeNode::kubenet(version);
        let a = Pod::new();
        let ctx = n.ctx("ADD with IP=10.244.1.77");
        let out = n
            .add_with_args(&a, "IgnoreUnknown=1;IP=10.244.1.77")
            .expect_success(&ctx);
        assert_eq!(addresses(&a), ["10.244.1.77/24"], "{ctx}: {out}");
        // Taken, outside the range, the gateway, the wrong prefix, IPv6: refused, 106.
        for args in [
            "IP=10.244.1.77",
            "IP=10.244.2.5",
            "IP=10.244.1.1",
            "IP=10.244.1.80/16",
            "IP=fd00::5",
        ] {
            let pod = Pod::new();
            let ctx = n.ctx(&format!("ADD with {args}"));
            let e = n.add_with_args(&pod, args).expect_cni_error_code(
                &ctx,
                ADDRESS_UNAVAILABLE,
                Some(version),
            );
            assert!(e.msg.contains("requested address"), "{ctx}: {}", e.msg);
            assert!(addresses(&pod).is_empty(), "{ctx}");
            assert!(
                pod.netns.link_details(IFNAME).is_none(),
                "{ctx}: the refused ADD left {IFNAME} in the pod"
            );
        }
        assert_eq!(addresses(&a), ["10.244.1.77/24"], "the holder keeps it");
        // The ips capability wins over CNI_ARGS, as CONVENTIONS.md says.
        let b = Pod::new();
        let mut config = n.config(None);
        config["runtimeConfig"] = json!({"ips": ["10.244.1.90/24"]});
        n.run("ADD", &b, &config)
            .env("CNI_ARGS", "IP=10.244.1.91")
            .exec()
            .expect_success(&n.ctx("ADD with runtimeConfig.ips and IP="));
        assert_eq!(addresses(&b), ["10.244.1.90/24"]);
    }
}

#[test]
fn the_mac_capability_sets_the_pod_mac_and_check_holds_it() {
    for version in SPEC_VERSIONS {
        for make in [BridgeNode::kubenet, BridgeNode::overlay] {
            let n = make(version);
            let pod = Pod::new();
            let mut config = n.config(None);
            config["runtimeConfig"] = json!({"mac": "0a:58:cc:00:00:42"});
            let ctx = n.ctx("ADD with runtimeConfig.mac");
            let out = n.run("ADD", &pod, &config).exec().expect_success(&ctx);
            assert_eq!(mac(&pod), "0a:58:cc:00:00:42", "{ctx}");
            let pod_iface = out["interfaces"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|i| i["name"] == IFNAME)
                .cloned()
                .unwrap_or_default();
            assert_eq!(pod_iface["mac"], "0a:58:cc:00:00:42", "{ctx}: {out}");
            if version_at_least(version, "0.4.0") {
                n.run("CHECK", &pod, &n.config(Some(&out)))
                    .exec()
                    .expect_success(&n.ctx("CHECK after runtimeConfig.mac"));
            }
            let bad = Pod::new();
            config["runtimeConfig"] = json!({"mac": "01:00:5e:00:00:01"});
            n.run("ADD", &bad, &config).exec().expect_cni_error_code(
                &n.ctx("multicast MAC"),
                7,
                Some(version),
            );
        }
    }
}
