//! Scenarios shared by every bridge-type plugin under test: runtime-driven (cnitool) ADD,
//! CHECK, DEL, and chaining with the reference `portmap` and `bandwidth` plugins. The same
//! code judges kubenet-bridge and Debian's reference `bridge`, which proves the harness.

use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use serde_json::{json, Value};

use crate::cnitool::CnitoolNetwork;
use crate::leases::LeaseDir;
use crate::netns::{Netns, Node};
use crate::plugin::Expect;
use crate::result::{check_add_result, host_veth_name, interface_names, ExpectedAttachment};

/// The interface name cnitool asks for when `CNI_IFNAME` is unset.
pub const CNITOOL_IFNAME: &str = "eth0";

/// The spec version of the conflists given to cnitool: the newest libcni 1.1.2 and the
/// Debian reference plugins (1.1.1) understand.
pub const CNITOOL_SPEC_VERSION: &str = "1.0.0";

/// Host port the chained `portmap` maps to the pod's port 80.
pub const MAPPED_HOST_PORT: u16 = 18080;

/// A bridge-type plugin configured on one node: its conflist entry and what a correct ADD
/// must produce.
#[derive(Debug, Clone)]
pub struct BridgeNetwork {
    /// The network name (unique per test).
    pub name: String,
    /// The plugin's entry in a conflist: `type` and its own fields, no `name`/`cniVersion`.
    pub plugin: Value,
    /// The bridge the plugin attaches pods to.
    pub bridge: String,
    /// Where pod addresses come from.
    pub pod_cidr: Ipv4Net,
    /// The pods' gateway, held by the bridge.
    pub gateway: Ipv4Addr,
    /// Where the plugin records reserved addresses.
    pub leases: LeaseDir,
    /// `CNI_PATH` for cnitool: where the plugin and any chained plugins are.
    pub cni_path: String,
}

impl BridgeNetwork {
    /// A single-plugin network config at spec `version`.
    pub fn plugin_config(&self, version: &str) -> Value {
        let mut conf = self.plugin.clone();
        conf["cniVersion"] = json!(version);
        conf["name"] = json!(self.name);
        conf
    }

    /// A conflist at spec `version`: this plugin first, then `chained`.
    pub fn conflist(&self, version: &str, chained: &[Value]) -> Value {
        let mut plugins = vec![self.plugin.clone()];
        plugins.extend_from_slice(chained);
        json!({"cniVersion": version, "name": self.name, "plugins": plugins})
    }

    /// What an ADD at `version` of `ifname` in the pod at `netns_path` must return.
    pub fn expected<'a>(
        &self,
        version: &'a str,
        ifname: &'a str,
        netns_path: &'a Path,
    ) -> ExpectedAttachment<'a> {
        ExpectedAttachment {
            version,
            ifname,
            netns_path,
            pod_cidr: self.pod_cidr,
            gateway: self.gateway,
        }
    }
}

/// Asserts the kernel holds what an ADD reported: `address` on `ifname` in the pod with a
/// default route via the gateway; on the node, the bridge holding the gateway address and
/// `host_veth` enslaved to it.
pub fn assert_attachment_in_kernel(
    ctx: &str,
    node: &Node,
    pod: &Netns,
    ifname: &str,
    address: Ipv4Net,
    net: &BridgeNetwork,
    host_veth: &str,
) {
    let pod_addrs = pod.ipv4_addresses(ifname);
    assert!(
        pod_addrs.contains(&address),
        "{ctx}: pod {} {ifname} should hold {address}, holds {pod_addrs:?}",
        pod.name()
    );
    assert_eq!(
        pod.default_gateway(),
        Some(net.gateway),
        "{ctx}: pod {} default route",
        pod.name()
    );
    let gateway_cidr = Ipv4Net::new(net.gateway, net.pod_cidr.prefix_len())
        .expect("podCIDR prefix is a valid prefix");
    let bridge_addrs = node.netns().ipv4_addresses(&net.bridge);
    assert!(
        bridge_addrs.contains(&gateway_cidr),
        "{ctx}: bridge {} should hold {gateway_cidr}, holds {bridge_addrs:?}",
        net.bridge
    );
    let veths = node.netns().links_of_kind("veth");
    let veth = veths
        .iter()
        .find(|l| l.name == host_veth)
        .unwrap_or_else(|| {
            panic!("{ctx}: host veth {host_veth} from the result is not on the node: {veths:?}")
        });
    assert_eq!(
        veth.master.as_deref(),
        Some(net.bridge.as_str()),
        "{ctx}: host veth {host_veth} must be enslaved to the bridge"
    );
}

/// Runs `cnitool add`, `check`, `del`, `del` on a single-plugin 1.0.0 conflist and checks the
/// result, the kernel and the lease at each step.
pub fn cnitool_add_check_del(node: &Node, net: &BridgeNetwork) {
    let ctx = format!("[{CNITOOL_SPEC_VERSION}] cnitool");
    let network = CnitoolNetwork::new(
        node,
        &net.conflist(CNITOOL_SPEC_VERSION, &[]),
        &net.cni_path,
    );
    let pod = Netns::new("cnit-pod-");
    let netns_path = pod.path();

    let result = network.add(&pod).expect_success(&format!("{ctx} add"));
    let expected = net.expected(CNITOOL_SPEC_VERSION, CNITOOL_IFNAME, &netns_path);
    let address = check_add_result(&format!("{ctx} add result"), &result, &expected);
    let host_veth = host_veth_name(&result, &net.bridge)
        .unwrap_or_else(|| panic!("{ctx} add: result names no host veth: {result}"));
    assert_attachment_in_kernel(&ctx, node, &pod, CNITOOL_IFNAME, address, net, &host_veth);
    let holder = net.leases.holder(address.addr()).unwrap_or_else(|| {
        panic!(
            "{ctx} add: no lease file for {address} in {}",
            net.leases.path().display()
        )
    });
    assert!(
        holder.container_id.starts_with("cnitool-") && holder.ifname == CNITOOL_IFNAME,
        "{ctx} add: lease of {address} names {holder:?}, not cnitool's container and {CNITOOL_IFNAME}"
    );

    network.check(&pod).expect_success(&format!("{ctx} check"));

    network.del(&pod).expect_success(&format!("{ctx} del"));
    assert!(
        !net.leases.is_reserved(address.addr()),
        "{ctx} del: lease of {address} not released"
    );
    assert!(
        !pod.has_link(CNITOOL_IFNAME),
        "{ctx} del: pod interface left behind"
    );
    assert!(
        !node.netns().has_link(&host_veth),
        "{ctx} del: host veth {host_veth} left behind"
    );

    network
        .del(&pod)
        .expect_success(&format!("{ctx} del again"));
}

/// Chains the plugin with Debian's reference `portmap` (a port mapping through the
/// `portMappings` capability) and `bandwidth` (static rates) in a 1.0.0 conflist: ADD through
/// cnitool must keep the plugin's interfaces and address in the final result and let both
/// chained plugins find the host veth; DEL must undo all of it. No CHECK: portmap 1.1.1 fails
/// CHECK on its own.
pub fn chained_with_portmap_and_bandwidth(node: &Node, net: &BridgeNetwork) {
    let ctx = format!("[{CNITOOL_SPEC_VERSION}] chain with portmap and bandwidth");
    let portmap = json!({"type": "portmap", "capabilities": {"portMappings": true}});
    let bandwidth = json!({
        "type": "bandwidth",
        "ingressRate": 8_000_000, "ingressBurst": 1_000_000,
        "egressRate": 8_000_000, "egressBurst": 1_000_000,
    });
    let conflist = net.conflist(CNITOOL_SPEC_VERSION, &[portmap, bandwidth]);
    let network = CnitoolNetwork::new(node, &conflist, &net.cni_path).with_capability_args(
        &json!({"portMappings": [{"hostPort": MAPPED_HOST_PORT, "containerPort": 80, "protocol": "tcp"}]}),
    );
    let pod = Netns::new("cnit-pod-");
    let netns_path = pod.path();

    let result = network.add(&pod).expect_success(&format!("{ctx}: add"));
    let expected = net.expected(CNITOOL_SPEC_VERSION, CNITOOL_IFNAME, &netns_path);
    let address = check_add_result(&format!("{ctx}: final result"), &result, &expected);
    assert!(
        interface_names(&result).contains(&net.bridge),
        "{ctx}: final result lost the bridge interface: {result}"
    );
    let host_veth = host_veth_name(&result, &net.bridge)
        .unwrap_or_else(|| panic!("{ctx}: final result names no host veth: {result}"));
    assert_attachment_in_kernel(&ctx, node, &pod, CNITOOL_IFNAME, address, net, &host_veth);

    let nat = iptables_nat_rules(node);
    let dnat_target = format!("{}:80", address.addr());
    assert!(
        nat.contains(&format!("--dport {MAPPED_HOST_PORT}")) && nat.contains(&dnat_target),
        "{ctx}: portmap installed no DNAT {MAPPED_HOST_PORT} -> {dnat_target}:\n{nat}"
    );
    let qdiscs = node_qdiscs(node, &host_veth);
    assert!(
        qdiscs.contains("tbf"),
        "{ctx}: bandwidth put no tbf on host veth {host_veth}:\n{qdiscs}"
    );
    assert!(
        !node.netns().links_of_kind("ifb").is_empty(),
        "{ctx}: bandwidth created no ifb for egress shaping"
    );

    network.del(&pod).expect_success(&format!("{ctx}: del"));
    let nat = iptables_nat_rules(node);
    assert!(
        !nat.contains(&format!("--dport {MAPPED_HOST_PORT}")),
        "{ctx}: DEL left portmap's DNAT:\n{nat}"
    );
    assert!(
        node.netns().links_of_kind("ifb").is_empty(),
        "{ctx}: DEL left bandwidth's ifb"
    );
    assert!(
        !net.leases.is_reserved(address.addr()),
        "{ctx}: DEL did not release {address}"
    );
    assert!(
        !node.netns().has_link(&host_veth),
        "{ctx}: DEL left host veth {host_veth}"
    );
}

/// The node's nat table as `iptables-save` prints it.
fn iptables_nat_rules(node: &Node) -> String {
    let out = node.netns().run("iptables-save", &["-t", "nat"]);
    assert!(
        out.status.success(),
        "iptables-save in the node failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `tc qdisc show dev <ifname>` on the node.
fn node_qdiscs(node: &Node, ifname: &str) -> String {
    let out = node.netns().run("tc", &["qdisc", "show", "dev", ifname]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}
