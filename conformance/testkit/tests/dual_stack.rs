//! kubenet-bridge with an IPv4 and an IPv6 pod range (`podCIDRs`), and with an IPv6 range
//! alone: results at every spec version, the kernel state (addresses without DAD, a default
//! route per family, `accept_ra` in the pod, forwarding and the uplink's `accept_ra=2` on the
//! node), ping and ping6 pod to pod and pod to node, masquerade by traffic in both families,
//! CHECK, STATUS per family, GC, 40 concurrent ADDs, cnitool, bad configs.
//!
//! Needs root (fails without it). Every case builds its own node namespace, bridge and
//! dataDir, and uses unique-local IPv6 ranges (`fd00:…`) and private IPv4 ones.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::thread;

use cni_testkit::cnitool::CnitoolNetwork;
use cni_testkit::netns::{Netns, Node};
use cni_testkit::plugin::{bin_dir, plugin_binary, Expect, PluginOutput, PluginRun};
use cni_testkit::pod::Pod;
use cni_testkit::topology::{
    NodeNeighbours, INSIDE_HOST_ADDR, OUTSIDE_HOST_ADDR, OUTSIDE_NODE_ADDR,
};
use cni_testkit::traffic::{observed_source_ip, ping_ip};
use cni_testkit::{require_root, unique_link_name, unique_name, version_at_least, SPEC_VERSIONS};
use serde_json::{json, Value};
use tempfile::TempDir;

const PLUGIN: &str = "kubenet-bridge";
const IFNAME: &str = "eth0";
const V4_CIDR: &str = "10.244.1.0/24";
const V4_GATEWAY: &str = "10.244.1.1";
const V6_CIDR: &str = "fd00:10:244:1::/64";
const V6_GATEWAY: &str = "fd00:10:244:1::1";

/// One node running kubenet-bridge with `podCIDRs` at one spec version.
struct DualNode {
    version: &'static str,
    node: Node,
    program: PathBuf,
    plugin: Value,
    name: String,
    bridge: String,
    data_dir: TempDir,
}

impl DualNode {
    fn new(version: &'static str, pod_cidrs: &[&str]) -> DualNode {
        DualNode::with_config(version, pod_cidrs, |_| {})
    }

    fn with_config(
        version: &'static str,
        pod_cidrs: &[&str],
        edit: impl FnOnce(&mut Value),
    ) -> DualNode {
        require_root();
        let data_dir = tempfile::Builder::new()
            .prefix("cnit-ds-data-")
            .tempdir()
            .expect("cannot create a dataDir");
        let bridge = unique_link_name("ds");
        let mut plugin = json!({
            "type": PLUGIN, "bridge": bridge, "podCIDRs": pod_cidrs,
            "dataDir": data_dir.path(),
            "logFile": data_dir.path().join("kubenet-bridge.log"),
            "logLevel": "debug",
        });
        edit(&mut plugin);
        DualNode {
            version,
            node: Node::new(),
            program: plugin_binary(PLUGIN),
            plugin,
            name: unique_name("cnit-ds-"),
            bridge,
            data_dir,
        }
    }

    fn ctx(&self, what: &str) -> String {
        format!("[{}] {what}", self.version)
    }

    fn config(&self) -> Value {
        let mut c = self.plugin.clone();
        c["cniVersion"] = json!(self.version);
        c["name"] = json!(self.name);
        c
    }

    fn ipam_dir(&self) -> PathBuf {
        self.data_dir.path().join(&self.name)
    }

    fn run(&self, verb: &str) -> PluginRun {
        PluginRun::new(&self.program, &self.node)
            .command(verb)
            .cni_path(&bin_dir().to_string_lossy())
    }

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

    fn check(&self, pod: &Pod, prev: &Value) -> PluginOutput {
        let mut config = self.config();
        config["prevResult"] = prev.clone();
        self.attachment("CHECK", pod).config(&config).exec()
    }

    /// ADD, asserting success and the result's shape; returns the result and the pod's
    /// addresses in the result's order.
    fn add_ok(&self, pod: &Pod, what: &str, want_families: &[bool]) -> (Value, Vec<IpAddr>) {
        let ctx = self.ctx(what);
        let result = self.add(pod).expect_success(&ctx);
        let addrs = check_result(&ctx, self.version, &result, want_families);
        (result, addrs)
    }

    /// The lease files (addresses) in the IPAM directory.
    fn leased(&self) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = std::fs::read_dir(self.ipam_dir())
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }
}

impl Drop for DualNode {
    fn drop(&mut self) {
        if thread::panicking() {
            let log = self.data_dir.path().join("kubenet-bridge.log");
            if let Ok(text) = std::fs::read_to_string(&log) {
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                eprintln!("--- [{}] tail of {}:", self.version, log.display());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// Checks an ADD result: one address per family in `want_v6` order (true = IPv6) on the pod
/// interface (index 2) with its gateway, `ips[].version` exactly before 1.0.0, and one
/// default route per family via that family's gateway. Returns the addresses.
fn check_result(ctx: &str, version: &str, result: &Value, want_v6: &[bool]) -> Vec<IpAddr> {
    assert_eq!(result["cniVersion"], version, "{ctx}: {result}");
    let ips = result["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("{ctx}: no ips: {result}"));
    assert_eq!(
        ips.len(),
        want_v6.len(),
        "{ctx}: one address per range: {result}"
    );
    let mut out = Vec::new();
    for (ip, v6) in ips.iter().zip(want_v6) {
        let cidr: ipnet::IpNet = ip["address"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{ctx}: bad address in {ip}"));
        assert_eq!(cidr.addr().is_ipv6(), *v6, "{ctx}: family order: {result}");
        let (prefix, gateway) = if *v6 {
            (64, V6_GATEWAY)
        } else {
            (24, V4_GATEWAY)
        };
        assert_eq!(cidr.prefix_len(), prefix, "{ctx}: {ip}");
        assert_eq!(ip["gateway"], gateway, "{ctx}: {ip}");
        assert_eq!(ip["interface"], 2, "{ctx}: {ip}");
        if version_at_least(version, "1.0.0") {
            assert!(
                ip.get("version").is_none(),
                "{ctx}: no version at 1.0.0+: {ip}"
            );
        } else {
            assert_eq!(ip["version"], if *v6 { "6" } else { "4" }, "{ctx}: {ip}");
        }
        out.push(cidr.addr());
    }
    let routes = result["routes"].as_array().cloned().unwrap_or_default();
    for v6 in want_v6 {
        let (dst, gw) = if *v6 {
            ("::/0", V6_GATEWAY)
        } else {
            ("0.0.0.0/0", V4_GATEWAY)
        };
        assert!(
            routes.iter().any(|r| r["dst"] == dst && r["gw"] == gw),
            "{ctx}: no default route {dst} via {gw}: {result}"
        );
    }
    assert_eq!(routes.len(), want_v6.len(), "{ctx}: {result}");
    out
}

/// Kernel state of an attached pod: its addresses present and not tentative (no DAD), the
/// default route per family via the gateway, `accept_ra` 0 on the interface when IPv6.
fn assert_pod_kernel_state(ctx: &str, pod: &Pod, addrs: &[IpAddr]) {
    for addr in addrs {
        let family = if addr.is_ipv6() { "-6" } else { "-4" };
        let info = pod
            .netns
            .ip_json(&[family, "addr", "show", "dev", IFNAME])
            .unwrap_or_else(|| panic!("{ctx}: ip addr in the pod failed"));
        let entry = info[0]["addr_info"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["local"] == addr.to_string()).cloned())
            .unwrap_or_else(|| panic!("{ctx}: {addr} not on {IFNAME}: {info}"));
        assert!(
            entry.get("tentative").is_none(),
            "{ctx}: {addr} is tentative: {entry}"
        );
        let (gw, dst) = if addr.is_ipv6() {
            (V6_GATEWAY, "default")
        } else {
            (V4_GATEWAY, "default")
        };
        let routes = pod
            .netns
            .ip_json(&[family, "route", "show", dst])
            .unwrap_or_else(|| panic!("{ctx}: ip route in the pod failed"));
        assert!(
            routes
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["gateway"] == gw && r["dev"] == IFNAME)),
            "{ctx}: no {family} default route via {gw}: {routes}"
        );
    }
    if addrs.iter().any(IpAddr::is_ipv6) {
        let out = pod.netns.run(
            "sysctl",
            &["-n", &format!("net.ipv6.conf.{IFNAME}.accept_ra")],
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "0",
            "{ctx}: the pod interface must not accept router advertisements"
        );
    }
}

fn sysctl(netns: &Netns, key: &str) -> String {
    let out = netns.run("sysctl", &["-n", key]);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn dual_stack_pods_reach_each_other_and_the_node_in_both_families() {
    for version in SPEC_VERSIONS {
        let dn = DualNode::new(version, &[V4_CIDR, V6_CIDR]);
        let (a, b) = (Pod::new(), Pod::new());
        let (result_a, addrs_a) = dn.add_ok(&a, "add pod a", &[false, true]);
        let (_, addrs_b) = dn.add_ok(&b, "add pod b", &[false, true]);
        assert_eq!(
            addrs_a,
            [
                "10.244.1.2".parse::<IpAddr>().unwrap(),
                "fd00:10:244:1::2".parse().unwrap()
            ]
        );
        assert_eq!(
            addrs_b,
            [
                "10.244.1.3".parse::<IpAddr>().unwrap(),
                "fd00:10:244:1::3".parse().unwrap()
            ]
        );
        assert_pod_kernel_state(&dn.ctx("pod a"), &a, &addrs_a);
        assert_pod_kernel_state(&dn.ctx("pod b"), &b, &addrs_b);
        // The bridge holds both gateways, the node forwards both families.
        let node = dn.node.netns();
        let bridge_addrs = node
            .ip_json(&["addr", "show", "dev", &dn.bridge])
            .unwrap_or_default();
        for gw in [V4_GATEWAY, V6_GATEWAY] {
            assert!(
                bridge_addrs.to_string().contains(&format!("\"{gw}\"")),
                "{}: {bridge_addrs}",
                dn.ctx("bridge gateways")
            );
        }
        assert_eq!(sysctl(node, "net.ipv4.ip_forward"), "1");
        assert_eq!(sysctl(node, "net.ipv6.conf.all.forwarding"), "1");
        for (from, to) in [(&a, &addrs_b), (&b, &addrs_a)] {
            for addr in to {
                assert!(
                    ping_ip(&from.netns, *addr),
                    "{}",
                    dn.ctx(&format!("ping {addr} pod to pod"))
                );
            }
        }
        for gw in [V4_GATEWAY, V6_GATEWAY] {
            assert!(
                ping_ip(&a.netns, gw.parse().unwrap()),
                "{}",
                dn.ctx(&format!("pod pings the node at {gw}"))
            );
        }
        for addr in &addrs_a {
            assert!(
                ping_ip(node, *addr),
                "{}",
                dn.ctx(&format!("node pings the pod at {addr}"))
            );
        }
        if version_at_least(version, "0.4.0") {
            dn.check(&a, &result_a)
                .expect_success(&dn.ctx("check pod a"));
            // CHECK notices a lost IPv6 address.
            a.netns.ip_ok(&[
                "-6",
                "addr",
                "del",
                &format!("{}/64", addrs_a[1]),
                "dev",
                IFNAME,
            ]);
            let e = dn
                .check(&a, &result_a)
                .expect_cni_error(&dn.ctx("check without the IPv6 address"));
            assert_eq!(e.code, 104, "{}", e.msg);
        }
        assert_eq!(dn.leased().len(), 4);
        for pod in [&a, &b] {
            dn.attachment("DEL", pod)
                .exec()
                .expect_success(&dn.ctx("del"));
        }
        assert!(
            dn.leased().is_empty(),
            "{}: {:?}",
            dn.ctx("leases after del"),
            dn.leased()
        );
        assert!(
            node.links_of_kind("veth").is_empty(),
            "{}",
            dn.ctx("veths after del")
        );
    }
}

#[test]
fn ipv6_only_pods_reach_each_other_and_the_node() {
    for version in SPEC_VERSIONS {
        let dn = DualNode::with_config(version, &[], |p| {
            let o = p.as_object_mut().expect("object");
            o.remove("podCIDRs");
            o.insert("podCIDR".into(), json!(V6_CIDR));
        });
        let (a, b) = (Pod::new(), Pod::new());
        let (result, addrs_a) = dn.add_ok(&a, "add pod a", &[true]);
        let (_, addrs_b) = dn.add_ok(&b, "add pod b", &[true]);
        assert_pod_kernel_state(&dn.ctx("pod a"), &a, &addrs_a);
        let v4 = a
            .netns
            .ip_json(&["-4", "addr", "show", "dev", IFNAME])
            .unwrap_or_default();
        assert!(
            !v4.to_string().contains("\"local\""),
            "{}: IPv4 on an IPv6-only pod: {v4}",
            dn.ctx("no ipv4")
        );
        // The MAC follows the IPv6 address: 0a:58 and its last four bytes.
        let mac = result["interfaces"][2]["mac"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert_eq!(mac, "0a:58:00:00:00:02", "{}", dn.ctx("pod mac"));
        assert!(
            ping_ip(&a.netns, addrs_b[0]),
            "{}",
            dn.ctx("ping6 pod to pod")
        );
        assert!(
            ping_ip(&a.netns, V6_GATEWAY.parse().unwrap()),
            "{}",
            dn.ctx("ping6 the node")
        );
        assert!(
            ping_ip(dn.node.netns(), addrs_a[0]),
            "{}",
            dn.ctx("node pings the pod")
        );
        if version_at_least(version, "0.4.0") {
            dn.check(&a, &result).expect_success(&dn.ctx("check"));
        }
        assert_eq!(
            std::fs::read_to_string(dn.ipam_dir().join("last_reserved_ip.0")).unwrap_or_default(),
            "fd00:10:244:1::3"
        );
        dn.attachment("DEL", &a)
            .exec()
            .expect_success(&dn.ctx("del a"));
        dn.attachment("DEL", &b)
            .exec()
            .expect_success(&dn.ctx("del b"));
        assert!(dn.leased().is_empty());
    }
}

/// The range order is the address order: an IPv6-primary node lists IPv6 first.
#[test]
fn ipv6_first_pod_cidrs_give_ipv6_first_results() {
    let dn = DualNode::new("1.0.0", &[V6_CIDR, V4_CIDR]);
    let pod = Pod::new();
    let (result, addrs) = dn.add_ok(&pod, "add", &[true, false]);
    assert_pod_kernel_state(&dn.ctx("pod"), &pod, &addrs);
    // The MAC still follows the IPv4 address (10.244.1.2), as IPv4-only pods' does.
    assert_eq!(
        result["interfaces"][2]["mac"], "0a:58:0a:f4:01:02",
        "{result}"
    );
    dn.attachment("DEL", &pod)
        .exec()
        .expect_success(&dn.ctx("del"));
}

/// Connects `node` to an outside host over IPv6 (fd00:99:1::/64) with a default route back
/// through the node; addresses without DAD so the listener can bind at once.
fn outside_v6(node: &Netns) -> Netns {
    let outside = Netns::new("cnit-out6-");
    let (node_if, host_if) = (unique_link_name("o6n"), unique_link_name("o6h"));
    node.ip_ok(&[
        "link",
        "add",
        &node_if,
        "type",
        "veth",
        "peer",
        "name",
        &host_if,
        "netns",
        outside.name(),
    ]);
    node.ip_ok(&[
        "-6",
        "addr",
        "add",
        "fd00:99:1::1/64",
        "dev",
        &node_if,
        "nodad",
    ]);
    node.ip_ok(&["link", "set", &node_if, "up"]);
    outside.ip_ok(&[
        "-6",
        "addr",
        "add",
        "fd00:99:1::2/64",
        "dev",
        &host_if,
        "nodad",
    ]);
    outside.ip_ok(&["link", "set", &host_if, "up"]);
    outside.ip_ok(&["-6", "route", "add", "default", "via", "fd00:99:1::1"]);
    // A second, in-cluster host behind the same link: fd00:10:250::2.
    outside.ip_ok(&[
        "-6",
        "addr",
        "add",
        "fd00:10:250::2/64",
        "dev",
        &host_if,
        "nodad",
    ]);
    node.ip_ok(&[
        "-6",
        "route",
        "add",
        "fd00:10:250::/64",
        "via",
        "fd00:99:1::2",
    ]);
    outside
}

#[test]
fn masquerade_applies_per_family_outside_the_non_masquerade_cidrs() {
    for version in ["0.3.1", "1.0.0"] {
        let dn = DualNode::with_config(version, &[V4_CIDR, V6_CIDR], |p| {
            p["nonMasqueradeCIDRs"] = json!(["10.0.0.0/8", "fd00:10::/32"]);
        });
        let neighbours = NodeNeighbours::connect(&dn.node);
        let outside6 = outside_v6(dn.node.netns());
        let pod = Pod::new();
        let (_, addrs) = dn.add_ok(&pod, "add", &[false, true]);
        let node_v6: IpAddr = "fd00:99:1::1".parse().unwrap();
        let cases: [(&Netns, IpAddr, IpAddr, &str); 4] = [
            (
                &neighbours.outside,
                OUTSIDE_HOST_ADDR.addr().into(),
                OUTSIDE_NODE_ADDR.addr().into(),
                "IPv4 outside: masqueraded",
            ),
            (
                &neighbours.inside,
                INSIDE_HOST_ADDR.addr().into(),
                addrs[0],
                "IPv4 inside: kept",
            ),
            (
                &outside6,
                "fd00:99:1::2".parse().unwrap(),
                node_v6,
                "IPv6 outside: masqueraded",
            ),
            (
                &outside6,
                "fd00:10:250::2".parse().unwrap(),
                addrs[1],
                "IPv6 inside: kept",
            ),
        ];
        for (host, to, want, what) in cases {
            let seen = observed_source_ip(&pod.netns, host, to);
            assert_eq!(seen, Some(want), "{}", dn.ctx(what));
        }
        let tables = dn.node.netns().run("nft", &["list", "tables"]);
        let tables = String::from_utf8_lossy(&tables.stdout).to_string();
        let table = format!("cni_suite_{}", dn.bridge.replace('-', "_"));
        for family in ["ip", "ip6"] {
            assert!(
                tables.contains(&format!("table {family} {table}")),
                "{}: {tables}",
                dn.ctx("both tables")
            );
        }
    }
}

#[test]
fn ipv6_forwarding_keeps_the_uplinks_router_advertisements() {
    let dn = DualNode::new("1.0.0", &[V4_CIDR, V6_CIDR]);
    let node = dn.node.netns();
    // A veth (no dummy module here) whose peer is up too, so the uplink has carrier.
    let uplink = unique_link_name("up");
    let peer = unique_link_name("upp");
    node.ip_ok(&[
        "link", "add", &uplink, "type", "veth", "peer", "name", &peer,
    ]);
    node.ip_ok(&["link", "set", &peer, "up"]);
    node.ip_ok(&["link", "set", &uplink, "up"]);
    node.ip_ok(&[
        "-6",
        "addr",
        "add",
        "fd00:98::2/64",
        "dev",
        &uplink,
        "nodad",
    ]);
    node.ip_ok(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        "fd00:98::1",
        "dev",
        &uplink,
    ]);
    assert_eq!(
        sysctl(node, "net.ipv6.conf.all.forwarding"),
        "0",
        "a fresh namespace does not forward"
    );
    assert_eq!(
        sysctl(node, &format!("net.ipv6.conf.{uplink}.accept_ra")),
        "1"
    );
    let pod = Pod::new();
    dn.add_ok(&pod, "add", &[false, true]);
    assert_eq!(sysctl(node, "net.ipv6.conf.all.forwarding"), "1");
    assert_eq!(
        sysctl(node, &format!("net.ipv6.conf.{uplink}.accept_ra")),
        "2",
        "the uplink accepts router advertisements with forwarding on"
    );
    let default = node
        .ip_json(&["-6", "route", "show", "default"])
        .unwrap_or_default();
    assert!(
        default.to_string().contains(&uplink),
        "node kept its default route: {default}"
    );
}

#[test]
fn status_reports_the_exhausted_family_and_add_fails_cleanly() {
    let dn = DualNode::new("1.1.0", &[V4_CIDR, "fd00:10:244:9::/126"]);
    dn.run("STATUS")
        .config(&dn.config())
        .exec()
        .expect_success(&dn.ctx("status with room"));
    let pods: Vec<Pod> = (0..2).map(|_| Pod::new()).collect();
    for pod in &pods {
        dn.add(pod).expect_success(&dn.ctx("add"));
    }
    let e = dn
        .run("STATUS")
        .config(&dn.config())
        .exec()
        .expect_cni_error_code(&dn.ctx("status when IPv6 is full"), 50, Some("1.1.0"));
    assert!(
        e.msg.contains("fd00:10:244:9::/126") && !e.msg.contains("10.244.1.0"),
        "{}",
        e.msg
    );
    let third = Pod::new();
    let e =
        dn.add(&third)
            .expect_cni_error_code(&dn.ctx("add when IPv6 is full"), 100, Some("1.1.0"));
    assert!(e.msg.contains("fd00:10:244:9::/126"), "{}", e.msg);
    assert_eq!(
        dn.leased().len(),
        4,
        "{}: the failed ADD holds no IPv4 address",
        dn.ctx("rollback")
    );
    assert_eq!(
        dn.node.netns().links_of_kind("veth").len(),
        2,
        "{}",
        dn.ctx("no veth of the failed add")
    );
    for pod in &pods {
        dn.attachment("DEL", pod)
            .exec()
            .expect_success(&dn.ctx("del"));
    }
}

#[test]
fn gc_releases_both_addresses_of_unlisted_attachments() {
    let dn = DualNode::new("1.1.0", &[V4_CIDR, V6_CIDR]);
    let (a, b) = (Pod::new(), Pod::new());
    let (_, addrs_a) = dn.add_ok(&a, "add a", &[false, true]);
    dn.add_ok(&b, "add b", &[false, true]);
    let mut config = dn.config();
    config["cni.dev/valid-attachments"] = json!([{"containerID": a.id, "ifname": IFNAME}]);
    dn.run("GC")
        .config(&config)
        .exec()
        .expect_success(&dn.ctx("gc keeping a"));
    let mut want = addrs_a.clone();
    want.sort();
    assert_eq!(
        dn.leased(),
        want,
        "{}",
        dn.ctx("only a's two leases remain")
    );
    assert_eq!(
        dn.node.netns().links_of_kind("veth").len(),
        1,
        "{}",
        dn.ctx("b's veth removed")
    );
    dn.attachment("DEL", &a)
        .exec()
        .expect_success(&dn.ctx("del a"));
}

#[test]
fn forty_concurrent_dual_stack_adds_get_distinct_addresses() {
    let dn = DualNode::new("1.0.0", &[V4_CIDR, V6_CIDR]);
    let pods: Vec<Pod> = (0..40).map(|_| Pod::new()).collect();
    let results: Vec<Value> = thread::scope(|s| {
        let handles: Vec<_> = pods.iter().map(|p| s.spawn(|| dn.add(p))).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .expect("add thread")
                    .expect_success(&dn.ctx("concurrent add"))
            })
            .collect()
    });
    let mut seen = HashSet::new();
    for r in &results {
        let addrs = check_result(&dn.ctx("concurrent add"), "1.0.0", r, &[false, true]);
        for a in addrs {
            assert!(
                seen.insert(a),
                "{}: {a} handed out twice",
                dn.ctx("distinct addresses")
            );
        }
    }
    assert_eq!(seen.len(), 80);
    assert_eq!(dn.leased().len(), 80);
    assert!(
        ping_ip(
            &pods[0].netns,
            *results[39]["ips"][1]["address"]
                .as_str()
                .and_then(|a| a.split('/').next())
                .and_then(|a| a.parse().ok())
                .as_ref()
                .unwrap_or(&"::1".parse().unwrap())
        ),
        "{}",
        dn.ctx("ping6 across the batch")
    );
    thread::scope(|s| {
        for p in &pods {
            let dn = &dn;
            s.spawn(move || {
                dn.attachment("DEL", p)
                    .exec()
                    .expect_success(&dn.ctx("concurrent del"))
            });
        }
    });
    assert!(dn.leased().is_empty(), "{:?}", dn.leased());
}

#[test]
fn dual_stack_through_cnitool_add_check_del() {
    let dn = DualNode::new("1.0.0", &[V4_CIDR, V6_CIDR]);
    let mut plugin = dn.plugin.clone();
    plugin.as_object_mut().map(|o| o.remove("cniVersion"));
    let conflist = json!({"cniVersion": "1.0.0", "name": dn.name, "plugins": [plugin]});
    let net = CnitoolNetwork::new(&dn.node, &conflist, &bin_dir().to_string_lossy());
    let pod = Pod::new();
    let result = net.add(&pod.netns).expect_success("[cnitool] add");
    let addrs = check_result("[cnitool] add", "1.0.0", &result, &[false, true]);
    assert_pod_kernel_state("[cnitool] add", &pod, &addrs);
    net.check(&pod.netns).expect_success("[cnitool] check");
    assert!(
        ping_ip(&pod.netns, V6_GATEWAY.parse().unwrap()),
        "[cnitool] ping6 the node"
    );
    net.del(&pod.netns).expect_success("[cnitool] del");
    assert!(
        dn.leased().is_empty(),
        "[cnitool] leases after del: {:?}",
        dn.leased()
    );
}

#[test]
fn unusable_pod_cidrs_are_code_7_before_anything_is_made() {
    for (what, edit) in [
        (
            "two IPv4 ranges",
            json!({"podCIDRs": ["10.244.1.0/24", "10.244.2.0/24"]}),
        ),
        (
            "two IPv6 ranges",
            json!({"podCIDRs": ["fd00:1::/64", "fd00:2::/64"]}),
        ),
        (
            "three ranges",
            json!({"podCIDRs": ["10.244.1.0/24", "fd00:1::/64", "fd00:2::/64"]}),
        ),
        (
            "podCIDR not in podCIDRs",
            json!({"podCIDR": "10.9.0.0/24", "podCIDRs": ["10.244.1.0/24"]}),
        ),
        (
            "IPv6 range too small",
            json!({"podCIDRs": ["fd00:1::/127"]}),
        ),
        ("no range", json!({"podCIDRs": []})),
    ] {
        let dn = DualNode::with_config("1.0.0", &[], |p| {
            for (k, v) in edit.as_object().expect("object") {
                p[k] = v.clone();
            }
        });
        let pod = Pod::new();
        dn.add(&pod)
            .expect_cni_error_code(&dn.ctx(what), 7, Some("1.0.0"));
        assert!(
            !dn.node.netns().has_link(&dn.bridge),
            "{}: bridge made",
            dn.ctx(what)
        );
        assert!(dn.leased().is_empty(), "{}", dn.ctx(what));
    }
}
