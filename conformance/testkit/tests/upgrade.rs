//! Rolling upgrade: state on disk written by the previous release (the commit in
//! `conformance/previous-release`, built by `conformance/scripts/build-previous-release.sh`) is
//! read by this one. Pods are attached by the previous release's binaries; then this release's
//! binaries CHECK, DEL and GC them, attach new pods beside them, and (for the overlay) a node
//! upgraded in place keeps its subnet and VTEP and keeps talking to a node not yet upgraded;
//! a kubenet-bridge node upgraded and then given an IPv6 range too (`podCIDRs`) keeps the
//! previous release's IPv4-only pods while new pods get both families.
//! vpc-route's node.json is covered by `crates/vpc-routes-aws/tests/upgrade.rs`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cni_testkit::leases::LeaseDir;
use cni_testkit::netns::Node;
use cni_testkit::overlay::{OverlayCluster, LEASE_TIMEOUT};
use cni_testkit::plugin::{
    bin_dir, plugin_binary, previous_release_binary, previous_release_dir, Expect, PluginRun,
    PREVIOUS_RELEASE,
};
use cni_testkit::pod::Pod;
use cni_testkit::traffic::ping;
use cni_testkit::{eventually, require_root, unique_link_name, unique_name};
use ipnet::Ipv4Net;
use serde_json::{json, Value};
use tempfile::TempDir;

const VERSION: &str = "1.1.0";
const IFNAME: &str = "eth0";

/// One kubenet-bridge node whose binary is swapped between releases.
struct Kubenet {
    node: Node,
    config: Value,
    leases: LeaseDir,
    _data: TempDir,
}

impl Kubenet {
    fn new() -> Kubenet {
        require_root();
        let node = Node::new();
        let data = tempfile::Builder::new()
            .prefix("cnit-upgrade-")
            .tempdir()
            .expect("cannot create a dataDir");
        let name = unique_name("cnit-up-");
        let config = json!({
            "cniVersion": VERSION, "name": name, "type": "kubenet-bridge",
            "bridge": unique_link_name("up"), "podCIDR": "10.244.9.0/24",
            "ipMasq": true, "nonMasqueradeCIDR": "10.0.0.0/8", "hairpinMode": true,
            "dataDir": data.path(), "logFile": data.path().join("kubenet-bridge.log"),
        });
        Kubenet {
            leases: LeaseDir::new(data.path(), &name),
            node,
            config,
            _data: data,
        }
    }

    fn run(&self, program: &Path, verb: &str) -> PluginRun {
        PluginRun::new(program, &self.node)
            .command(verb)
            .cni_path(&program.parent().expect("bin dir").to_string_lossy())
            .config(&self.config)
    }

    fn attachment(&self, program: &Path, verb: &str, pod: &Pod) -> PluginRun {
        self.run(program, verb)
            .container_id(&pod.id)
            .netns(&pod.netns.path())
            .ifname(IFNAME)
    }

    /// ADD with `program`; returns the result and the pod's address.
    fn add(&self, program: &Path, pod: &Pod, ctx: &str) -> (Value, Ipv4Net) {
        let result = self
            .attachment(program, "ADD", pod)
            .exec()
            .expect_success(ctx);
        let address: Ipv4Net = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{ctx}: no IPv4 address in {result}"));
        assert!(
            pod.netns.ipv4_addresses(IFNAME).contains(&address),
            "{ctx}: the pod does not hold {address}"
        );
        (result, address)
    }

    /// The masquerade rules in the node's firewall (the table's comment names the word too).
    fn masquerade_rules(&self) -> usize {
        let out = self.node.netns().run("nft", &["list", "ruleset"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.trim_end().ends_with(" masquerade"))
            .count()
    }
}

/// The binaries of this build and of the previous release, and a line naming the latter.
fn releases(name: &str) -> (PathBuf, PathBuf) {
    let old = previous_release_binary(name);
    let new = plugin_binary(name);
    eprintln!(
        "upgrade of {name}: previous release {} ({}), new {}",
        PREVIOUS_RELEASE.trim(),
        old.display(),
        new.display()
    );
    (old, new)
}

#[test]
fn kubenet_bridge_pods_of_the_previous_release_are_checked_deleted_and_collected() {
    let (old, new) = releases("kubenet-bridge");
    let kn = Kubenet::new();
    let pods: Vec<Pod> = (0..3).map(|_| Pod::new()).collect();
    let mut results = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        results.push(kn.add(&old, pod, &format!("previous release: add pod {i}")));
    }
    let masquerade = kn.masquerade_rules();
    assert_eq!(
        masquerade, 1,
        "the previous release installs one masquerade rule"
    );

    // The node's binary is replaced; every pod of the previous release passes CHECK.
    for (i, (pod, (result, _))) in pods.iter().zip(&results).enumerate() {
        let mut config = kn.config.clone();
        config["prevResult"] = result.clone();
        kn.attachment(&new, "CHECK", pod)
            .config(&config)
            .exec()
            .expect_success(&format!(
                "new release: check pod {i} of the previous release"
            ));
    }

    // A new pod gets an address none of the old pods hold, and no second masquerade rule.
    let fresh = Pod::new();
    let (_, fresh_addr) = kn.add(&new, &fresh, "new release: add a pod beside the old ones");
    let old_addrs: BTreeSet<Ipv4Net> = results.iter().map(|(_, a)| *a).collect();
    assert!(
        !old_addrs.contains(&fresh_addr),
        "new release gave {fresh_addr}, held by a pod of the previous release ({old_addrs:?})"
    );
    assert_eq!(
        kn.masquerade_rules(),
        masquerade,
        "the new release must recognise the previous release's masquerade rule"
    );
    assert!(
        ping(&fresh.netns, results[1].1.addr()),
        "a new pod must reach a pod of the previous release over the bridge"
    );

    // DEL of an old pod releases its lease and removes its interface.
    kn.attachment(&new, "DEL", &pods[0])
        .exec()
        .expect_success("new release: del pod 0 of the previous release");
    assert!(
        !kn.leases.is_reserved(results[0].1.addr()),
        "DEL by the new release left the previous release's lease of pod 0"
    );
    assert!(
        !pods[0].netns.has_link(IFNAME),
        "DEL by the new release left pod 0's interface"
    );

    // GC listing pod 1 and the new pod: pod 2's attachment (previous release) goes.
    let mut config = kn.config.clone();
    config["cni.dev/valid-attachments"] = json!([
        {"containerID": pods[1].id, "ifname": IFNAME},
        {"containerID": fresh.id, "ifname": IFNAME},
    ]);
    kn.run(&new, "GC")
        .config(&config)
        .exec()
        .expect_success("new release: gc of the previous release's attachments");
    assert!(
        !kn.leases.is_reserved(results[2].1.addr()),
        "GC by the new release kept pod 2's lease"
    );
    assert!(
        eventually(Duration::from_secs(5), || !pods[2].netns.has_link(IFNAME)),
        "GC by the new release kept pod 2's veth"
    );
    for addr in [results[1].1.addr(), fresh_addr.addr()] {
        assert!(
            kn.leases.is_reserved(addr),
            "GC released {addr}, listed as valid"
        );
    }
    kn.run(&new, "STATUS")
        .exec()
        .expect_success("new release: status");
    kn.attachment(&new, "DEL", &pods[1])
        .exec()
        .expect_success("new release: del pod 1 of the previous release");
    kn.attachment(&new, "DEL", &fresh)
        .exec()
        .expect_success("new release: del the new pod");
    let left = kn.leases.reserved_addresses();
    assert!(left.is_empty(), "leases left after every DEL: {left:?}");
}

/// The previous release's IPv4-only pods on a node whose config then turns dual-stack (the
/// same IPv4 range first in `podCIDRs`, an IPv6 range beside it): the new release CHECKs and
/// DELs them, a new pod gets both families and reaches an old pod, the IPv4 masquerade rule
/// stays as it was and an IPv6 one joins it.
#[test]
fn previous_release_ipv4_pods_survive_the_node_turning_dual_stack() {
    let (old, new) = releases("kubenet-bridge");
    let mut kn = Kubenet::new();
    let pods: Vec<Pod> = (0..2).map(|_| Pod::new()).collect();
    let results: Vec<(Value, Ipv4Net)> = pods
        .iter()
        .enumerate()
        .map(|(i, pod)| kn.add(&old, pod, &format!("previous release: add pod {i}")))
        .collect();
    let o = kn.config.as_object_mut().expect("object");
    o.remove("podCIDR");
    o.insert(
        "podCIDRs".into(),
        json!(["10.244.9.0/24", "fd00:10:244:9::/64"]),
    );
    for (i, (pod, (result, _))) in pods.iter().zip(&results).enumerate() {
        let mut config = kn.config.clone();
        config["prevResult"] = result.clone();
        kn.attachment(&new, "CHECK", pod)
            .config(&config)
            .exec()
            .expect_success(&format!("dual-stack config: check IPv4-only pod {i}"));
    }
    let fresh = Pod::new();
    let (result, v4) = kn.add(&new, &fresh, "dual-stack config: add a pod");
    let v6 = result["ips"][1]["address"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        v6.starts_with("fd00:10:244:9::"),
        "no IPv6 address: {result}"
    );
    assert!(
        results.iter().all(|(_, a)| *a != v4),
        "{v4} is held by a pod of the previous release"
    );
    assert!(
        ping(&fresh.netns, results[0].1.addr()),
        "new pod reaches an old one"
    );
    assert_eq!(
        kn.masquerade_rules(),
        2,
        "the IPv4 rule as it was, and the IPv6 one"
    );
    for (i, pod) in pods.iter().enumerate() {
        kn.attachment(&new, "DEL", pod)
            .exec()
            .expect_success(&format!("dual-stack config: del IPv4-only pod {i}"));
    }
    kn.attachment(&new, "DEL", &fresh)
        .exec()
        .expect_success("dual-stack config: del the new pod");
    let left: Vec<_> = std::fs::read_dir(kn.leases.path())
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.parse::<std::net::IpAddr>().is_ok())
                })
                .map(|e| e.file_name())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "leases left after every DEL: {left:?}");
}

#[test]
fn overlay_node_upgraded_in_place_keeps_its_subnet_and_talks_to_a_node_not_upgraded() {
    require_root();
    releases("vxlan-overlay");
    let old_dir = previous_release_dir();
    let new_dir = bin_dir();
    let mut c = OverlayCluster::start(0, 30, 5);
    let fields = c.node_fields();
    for _ in 0..2 {
        c.add_node_running(&fields, &old_dir);
    }
    for node in &mut c.nodes {
        node.wait_for_lease();
    }
    let old_pods = [c.add_pod(0), c.add_pod(1)];
    c.wait_converged(&[0, 1], LEASE_TIMEOUT, "previous release on both nodes");
    let (a, b) = (&c.pods[old_pods[0]], &c.pods[old_pods[1]]);
    assert!(
        ping(&a.netns, b.addr),
        "previous release: pods do not reach each other\n{}",
        c.diagnostics()
    );
    let subnet_env = c.nodes[0].subnet_env().expect("subnet.env").text;
    let agent_state = c.nodes[0].agent_state().expect("agent.json");
    let vtep_mac = c.nodes[0].device_mac().expect("VXLAN device");

    // Node 0 upgraded in place: agent stopped, binary replaced, agent started.
    let status = c.nodes[0].take_agent().terminate();
    assert!(status.success(), "previous agent exit: {status}");
    c.nodes[0].use_binaries_from(&new_dir);
    c.nodes[0].start_agent();
    c.nodes[0].wait_for_lease();
    c.wait_converged(&[0, 1], LEASE_TIMEOUT, "node 0 upgraded, node 1 not");
    assert_eq!(
        c.nodes[0].subnet_env().map(|e| e.text),
        Some(subnet_env),
        "the new agent must keep the previous release's subnet.env"
    );
    assert_eq!(
        c.nodes[0].agent_state(),
        Some(agent_state),
        "the new agent must read and keep the previous release's agent.json"
    );
    assert_eq!(
        c.nodes[0].device_mac(),
        Some(vtep_mac),
        "the new agent must keep the VTEP MAC"
    );
    let (a, b) = (&c.pods[old_pods[0]], &c.pods[old_pods[1]]);
    assert!(
        ping(&a.netns, b.addr) && ping(&b.netns, a.addr),
        "after the upgrade of node 0: old pods do not reach each other\n{}",
        c.diagnostics()
    );

    // The new plugin checks and deletes the pod the previous one attached, and attaches new ones.
    let pod = &c.pods[old_pods[0]];
    let node = &c.nodes[0];
    node.cnitool_check(&pod.netns)
        .expect_success("new release: cnitool check of a pod of the previous release");
    let fresh = c.add_pod(0);
    let (f, b) = (&c.pods[fresh], &c.pods[old_pods[1]]);
    assert!(
        ping(&f.netns, b.addr) && ping(&b.netns, f.addr),
        "a pod of the new release does not reach a node still on the previous one\n{}",
        c.diagnostics()
    );
    let old_addr = c.pods[old_pods[0]].addr;
    c.nodes[0]
        .cnitool_del(&c.pods[old_pods[0]].netns)
        .expect_success("new release: cnitool del of a pod of the previous release");
    assert!(
        !c.nodes[0].leases().is_reserved(old_addr),
        "DEL by the new release left the previous release's lease of {old_addr}"
    );
}
