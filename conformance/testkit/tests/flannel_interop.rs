//! Interop of the vxlan-overlay agent with real flannel: flanneld (built from its Go module at
//! the release pinned in `conformance/scripts/build-flannel.sh`) on one node namespace, our
//! agent on two others, sharing one registry, as in a cluster migrating from flannel node by
//! node. Judged by what really happens: each node's VXLAN device holds exactly the other two
//! as peers (neighbour, FDB entry, onlink route), whoever programmed it; pods ping across all
//! three nodes both ways; a node that leaves disappears from the others, flannel's and ours.
//!
//! Run as root on Debian bookworm:
//! ```text
//! conformance/scripts/install-test-deps.sh
//! conformance/scripts/build-flannel.sh   # once per release; the tests run it too
//! export CARGO_TARGET_DIR=/var/tmp/cni-suite-target
//! cargo build --release -p vxlan-overlay-agent -p vxlan-overlay
//! cargo test --release -p cni-testkit --test flannel_interop
//! ```
//! Each test builds its own underlay, etcd and nodes (names unique per process); everything is
//! killed and deleted when a test ends, pass or fail, and on failure the nodes' logs, flanneld's
//! log and every device's state are printed.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use cni_testkit::etcd::{EtcdServer, Etcdctl};
use cni_testkit::flannel::{vxlan_net_conf, FlannelNode, FlannelRegistry, FLANNEL_ETCD_PREFIX};
use cni_testkit::netns::{Netns, Node};
use cni_testkit::overlay::{
    records, start_etcd, subnet_key, OverlayNode, Peer, Underlay, VxlanState, CLUSTER_CIDR,
    SUBNET_LEN,
};
use cni_testkit::traffic::ping;
use cni_testkit::{eventually, require_root};
use ipnet::Ipv4Net;
use serde_json::json;

/// `leaseTTL` of our agents: short, so nothing in a test waits on it.
const LEASE_TTL: u64 = 6;
/// `resyncSeconds` of our agents.
const RESYNC: u64 = 2;
/// How long every node may take to reflect a change in the registry: both daemons watch it and
/// act at once; a resync of ours catches a missed event, and the slack is for a busy 2-core
/// machine.
const CONVERGE: Duration = Duration::from_secs(15);
/// The underlay links are veths of MTU 1500; VXLAN over IPv4 costs 50 bytes, in flannel
/// (the kernel's own device MTU) as in ours.
const OVERLAY_MTU: u32 = 1450;

/// A pod: its namespace, address, and the name of the node it is on.
struct Pod {
    netns: Netns,
    addr: Ipv4Addr,
    node: &'static str,
}

/// Two nodes with our agent and one with flanneld on one underlay and etcd.
struct MixedEtcdCluster {
    // Drop order: pods, then the nodes (agents and flanneld die first), etcd, the underlay.
    pods: Vec<Pod>,
    ours: Vec<Option<OverlayNode>>,
    flannel: FlannelNode,
    etcd: EtcdServer,
    underlay: Underlay,
}

impl MixedEtcdCluster {
    /// The registry's records, as peers.
    fn records(&self) -> Vec<Peer> {
        records(&self.etcd, FLANNEL_ETCD_PREFIX).expect("etcd answers")
    }

    /// The record of the node at `underlay`, if any.
    fn record_of(&self, underlay: IpAddr) -> Option<Peer> {
        self.records().into_iter().find(|p| p.underlay == underlay)
    }

    /// The VXLAN state of each live node: (name, underlay, device state).
    fn live(&self) -> Vec<(&'static str, IpAddr, Option<VxlanState>)> {
        let mut nodes = Vec::new();
        for (i, node) in self.ours.iter().enumerate() {
            if let Some(n) = node {
                nodes.push((OURS[i], n.underlay_ip(), n.vxlan_state()));
            }
        }
        nodes.push((
            "flannel",
            self.flannel.underlay_ip(),
            self.flannel.vxlan_state(),
        ));
        nodes
    }

    /// Whether each of `members` (underlay addresses) has a record and the device of each
    /// holds exactly the others' records as peers.
    fn converged(&self, members: &[IpAddr]) -> bool {
        let records = self.records();
        let recs: Vec<Peer> = members
            .iter()
            .filter_map(|ip| records.iter().find(|r| r.underlay == *ip).cloned())
            .collect();
        if recs.len() != members.len() {
            return false;
        }
        let live = self.live();
        recs.iter().all(|me| {
            let others: Vec<Peer> = recs.iter().filter(|p| *p != me).cloned().collect();
            live.iter()
                .find(|(_, ip, _)| *ip == me.underlay)
                .and_then(|(_, _, st)| st.as_ref())
                .is_some_and(|st| st.programs_exactly(&others))
        })
    }

    fn wait_converged(&mut self, members: &[IpAddr], ctx: &str) {
        let start = Instant::now();
        if !eventually(CONVERGE, || self.converged(members)) {
            panic!(
                "{ctx}: {members:?} did not converge within {CONVERGE:?}; etcd holds {:?}\n{}",
                self.records(),
                self.diagnostics()
            );
        }
        self.flannel.assert_running();
        eprintln!("{ctx}: converged in {:?}", start.elapsed());
    }

    fn diagnostics(&self) -> String {
        let mut text = String::new();
        for n in self.ours.iter().flatten() {
            text.push_str(&n.diagnostics());
            text.push('\n');
        }
        text.push_str(&self.flannel.diagnostics());
        text.push_str("\n--- etcd log:\n");
        text.push_str(&self.etcd.log_tail(10));
        text
    }

    /// Asserts that every pod reaches every pod on another node, and returns how many pairs
    /// were tried.
    fn assert_pods_ping(&self, ctx: &str) -> usize {
        let mut pairs = 0;
        for a in &self.pods {
            for b in &self.pods {
                if a.node == b.node {
                    continue;
                }
                assert!(
                    ping(&a.netns, b.addr),
                    "{ctx}: pod {} on {} cannot ping pod {} on {}\n{}",
                    a.addr,
                    a.node,
                    b.addr,
                    b.node,
                    self.diagnostics()
                );
                pairs += 1;
            }
        }
        pairs
    }
}

impl Drop for MixedEtcdCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("mixed cluster state at failure:\n{}", self.diagnostics());
        }
    }
}

/// Names of our two nodes, for messages.
const OURS: [&str; 2] = ["ours-1", "ours-3"];

/// Our node on host `host` of `underlay`, its agent on `etcd` under flannel's default prefix.
fn our_node(underlay: &Underlay, etcd: &EtcdServer, host: u8) -> OverlayNode {
    let mut node = OverlayNode::new(
        underlay,
        host,
        &json!({
            "etcdEndpoints": etcd.endpoints(),
            "etcdPrefix": FLANNEL_ETCD_PREFIX,
            "leaseTTL": LEASE_TTL,
            "resyncSeconds": RESYNC,
        }),
    );
    node.start_agent();
    node.wait_for_lease();
    node
}

#[test]
fn flanneld_and_our_agents_share_etcd_pods_ping_and_leavers_are_removed() {
    require_root();
    let started = Instant::now();
    let underlay = Underlay::new();
    let etcd = start_etcd(&underlay);
    // The network config as a flannel operator writes it (etcdctl put), before any node: our
    // agent must take flannel's config as it finds it.
    let mut config = vxlan_net_conf(CLUSTER_CIDR);
    config["SubnetLen"] = json!(SUBNET_LEN);
    etcd.put(
        &format!("{FLANNEL_ETCD_PREFIX}/config"),
        &config.to_string(),
        None,
    );

    // Started in turn, so that each kind of node joins a registry that already holds the
    // other kind: ours, then flannel, then ours.
    let ours1 = our_node(&underlay, &etcd, 1);
    let fl_node = Node::new();
    let fl_ip = underlay.addr(2);
    underlay.connect(fl_node.netns(), fl_ip);
    let mut flannel = FlannelNode::start(
        fl_node,
        fl_ip,
        "eth0",
        FlannelRegistry::Etcd {
            endpoints: etcd.endpoints(),
            prefix: FLANNEL_ETCD_PREFIX.to_owned(),
        },
    );
    let fl_env = flannel.wait_for_lease();
    let ours3 = our_node(&underlay, &etcd, 3);
    let mut c = MixedEtcdCluster {
        pods: Vec::new(),
        ours: vec![Some(ours1), Some(ours3)],
        flannel,
        etcd,
        underlay,
    };
    let ip1 = c.underlay.addr(1);
    let ip3 = c.underlay.addr(3);

    // The leases: distinct /24s of the one cluster range, the same subnet.env on both kinds.
    let cluster: Ipv4Net = CLUSTER_CIDR.parse().expect("cluster CIDR");
    let mut subnets = vec![fl_env.node_subnet()];
    assert_eq!(fl_env.network, cluster, "flannel's FLANNEL_NETWORK");
    assert_eq!(fl_env.mtu, OVERLAY_MTU, "flannel's FLANNEL_MTU");
    assert!(!fl_env.ipmasq, "flanneld runs with --ip-masq=false");
    for n in c.ours.iter().flatten() {
        let env = n.subnet_env().expect("our subnet.env");
        assert_eq!(env.network, cluster, "our FLANNEL_NETWORK");
        assert_eq!(env.mtu, fl_env.mtu, "both kinds agree on the overlay MTU");
        subnets.push(env.node_subnet());
    }
    for s in &subnets {
        assert!(
            cluster.contains(s) && s.prefix_len() == SUBNET_LEN,
            "{s} is not a /{SUBNET_LEN} of {cluster}"
        );
    }
    subnets.sort();
    subnets.dedup();
    assert_eq!(subnets.len(), 3, "three distinct node subnets");

    // flanneld's record is in the format ours is read in (records() panics otherwise), names
    // flannel.1's MAC and the node's underlay address.
    let fl_record = c.record_of(fl_ip).expect("flanneld's record in etcd");
    assert_eq!(
        Some(fl_record.clone()),
        c.flannel.as_peer(),
        "flanneld's record: its subnet.env subnet, its underlay address, flannel.1's MAC"
    );

    c.wait_converged(&[ip1, fl_ip, ip3], "three nodes up");

    for (node, name) in [(0usize, "ours-1"), (1, "ours-3")] {
        let netns = Netns::new("cnit-flpod-");
        let addr = c.ours[node].as_ref().expect("node up").add_pod(&netns);
        c.pods.push(Pod {
            netns,
            addr,
            node: name,
        });
    }
    let netns = Netns::new("cnit-flpod-");
    let addr = c.flannel.add_pod(&netns);
    c.pods.push(Pod {
        netns,
        addr,
        node: "flannel",
    });
    let pairs = c.assert_pods_ping("three nodes");
    assert_eq!(pairs, 6, "every ordered pair of pods on different nodes");

    // Our node 3 leaves: its agent, stopped, withdraws its record; flanneld and our node 1
    // must drop it.
    let ours3_peer = c.record_of(ip3).expect("node 3's record");
    let status = c.ours[1]
        .as_mut()
        .expect("node 3 up")
        .take_agent()
        .terminate();
    assert!(status.success(), "our agent's exit on SIGTERM: {status}");
    c.pods.retain(|p| p.node != "ours-3");
    c.ours[1] = None;
    c.wait_converged(&[ip1, fl_ip], "our node 3 left");
    assert!(c.record_of(ip3).is_none(), "node 3's record is withdrawn");
    assert!(
        !c.flannel
            .vxlan_state()
            .is_some_and(|st| st.mentions(&ours3_peer)),
        "flannel.1 still holds something of node 3: {:?}",
        c.flannel.vxlan_state()
    );
    assert_eq!(c.assert_pods_ping("after node 3 left"), 2);

    // flanneld's node leaves: flanneld withdraws nothing (its etcd lease lasts 24 h), so the
    // operator deletes its record, as flannel's documentation says; our node 1 must drop it.
    c.flannel.kill();
    let key = subnet_key(FLANNEL_ETCD_PREFIX, fl_record.subnet);
    c.etcd.ctl_ok(&["del", &key]);
    let ours1 = c.ours[0].as_ref().expect("node 1 up");
    let gone = eventually(CONVERGE, || {
        ours1
            .vxlan_state()
            .is_some_and(|st| st.programs_exactly(&[]) && !st.mentions(&fl_record))
    });
    assert!(
        gone,
        "our node 1 still holds flannel's node after its record was deleted: {:?}\n{}",
        ours1.vxlan_state(),
        c.diagnostics()
    );
    eprintln!("etcd-mode interop test took {:?}", started.elapsed());
}
