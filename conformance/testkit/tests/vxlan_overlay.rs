//! Black-box tests of the `vxlan-overlay` plugin and its node agent in network namespaces: an
//! underlay bridge, etcd on it, an agent per node namespace, pods attached through cnitool.
//! Outcomes are judged by what really happens: the VXLAN neighbours, FDB entries and routes
//! the kernel holds (`ip -j`, `bridge -j`), the records in etcd, the agent's files, and pings
//! between pods on different nodes.
//!
//! Run as root on Debian bookworm:
//! ```text
//! conformance/scripts/install-test-deps.sh
//! export CARGO_TARGET_DIR=/var/tmp/cni-suite-target
//! cargo build --release -p vxlan-overlay
//! cargo test --release -p cni-testkit --test vxlan_overlay
//! ```
//! Every test builds its own underlay, etcd and nodes (names unique per process), so the tests
//! run in parallel with each other and with the other suites; everything is killed and
//! deleted when a test ends, pass or fail. On failure the nodes' logs, the agents' output, the
//! VXLAN state and etcd's log are printed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use cni_testkit::etcd::Etcdctl;
use cni_testkit::netns::Netns;
use cni_testkit::overlay::{
    link_mac, records6, subnet_key, OverlayCluster, OverlayNode, Peer, Peer6, Underlay,
    VxlanState6, CLUSTER_CIDR, DEVICE, ETCD_PREFIX, LEASE_TIMEOUT, SUBNET_LEN,
};
use cni_testkit::ping_stream::{assert_streams_lost_nothing, PingStream};
use cni_testkit::plugin::Expect;
use cni_testkit::traffic::ping;
use cni_testkit::{eventually, require_root};
use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::{json, Value};

/// `leaseTTL` of every agent: short, so a dead node disappears quickly.
const LEASE_TTL: u64 = 6;
/// `resyncSeconds` of every agent.
const RESYNC: u64 = 2;
/// `resyncSeconds` of a cluster whose agents must act on etcd's watch alone: longer than any
/// test runs, so no periodic reconcile can explain a change.
const NO_RESYNC: u64 = 3600;
/// Slack on top of a bound the agent promises (`leaseTTL`, `resyncSeconds`): our polling
/// (`ip` runs every 20 ms on up to three nodes) and process scheduling on a busy 2-core machine.
const GRACE: Duration = Duration::from_secs(1);
/// etcd 3.4's lessor looks for expired leases every 500 ms (`revokeExpiredLeases`), so a key
/// outlives its lease by up to that.
const ETCD_EXPIRY_CHECK: Duration = Duration::from_millis(500);
/// The underlay links are veths with the default MTU.
const UNDERLAY_MTU: u32 = 1500;
/// VXLAN over IPv4 costs 50 bytes: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
const OVERLAY_MTU: u32 = UNDERLAY_MTU - 50;
/// Over IPv6 the outer header is 40 bytes: 70 in all.
const OVERLAY_MTU_V6: u32 = UNDERLAY_MTU - 70;
/// The spec's "try again later" error code.
const TRY_AGAIN_LATER: u64 = 11;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// How long, after a change in etcd, every agent may take to reflect it: the change is
/// reported by a watch at once, and a periodic resync catches a missed event.
fn reconcile_bound() -> Duration {
    secs(RESYNC) + GRACE
}

/// Polls `condition` every 100 ms for `duration`; returns false as soon as it does not hold.
fn holds_for(duration: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + duration;
    while Instant::now() < end {
        if !condition() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    condition()
}

/// The pod and VXLAN MTU a node on underlay address `underlay` must get.
fn overlay_mtu(underlay: IpAddr) -> u32 {
    if underlay.is_ipv6() {
        OVERLAY_MTU_V6
    } else {
        OVERLAY_MTU
    }
}

/// Three nodes with agents on etcd, converged, with `pods_per_node` pods on each node attached
/// through cnitool; checks the leases and the devices first.
fn three_node_cluster(pods_per_node: usize) -> OverlayCluster {
    three_node_cluster_on(Underlay::new(), RESYNC, pods_per_node)
}

/// [`three_node_cluster`] on `underlay`, with `resyncSeconds` = `resync`.
fn three_node_cluster_on(underlay: Underlay, resync: u64, pods_per_node: usize) -> OverlayCluster {
    require_root();
    let mut c = OverlayCluster::start_on(underlay, 3, LEASE_TTL, resync, &json!({}));
    assert_leases_and_devices(&c);
    // Convergence at start never waits for a resync: each agent lists after its watch is
    // up, and the watch reports the nodes that come after it.
    c.wait_converged(&[0, 1, 2], reconcile_bound(), "after start");
    for node in 0..c.nodes.len() {
        for _ in 0..pods_per_node {
            c.add_pod(node);
        }
    }
    c
}

/// Every node's subnet.env, agent.json, etcd record and VXLAN device agree, and the subnets
/// are distinct /24s of the cluster CIDR.
fn assert_leases_and_devices(c: &OverlayCluster) {
    assert_leases_and_devices_with(c, |node| overlay_mtu(node.underlay_ip()))
}

/// [`assert_leases_and_devices`] with the pods' MTU (`FLANNEL_MTU`) of each node given.
fn assert_leases_and_devices_with(c: &OverlayCluster, pod_mtu: impl Fn(&OverlayNode) -> u32) {
    let cluster: Ipv4Net = CLUSTER_CIDR.parse().expect("valid cluster CIDR");
    let records = c.records().expect("etcd answers");
    assert_eq!(
        records.len(),
        c.nodes.len(),
        "etcd should hold one record per node: {records:?}"
    );
    let mut subnets = BTreeSet::new();
    for node in &c.nodes {
        let ctx = format!("node {}", node.underlay_ip());
        let env = node
            .subnet_env()
            .unwrap_or_else(|| panic!("{ctx}: no valid subnet.env"));
        let subnet = env.node_subnet();
        assert_eq!(env.network, cluster, "{ctx}: FLANNEL_NETWORK");
        assert!(
            cluster.contains(&subnet) && subnet.prefix_len() == SUBNET_LEN,
            "{ctx}: subnet {subnet} must be a /{SUBNET_LEN} of {cluster}"
        );
        assert_eq!(
            env.gateway(),
            Ipv4Addr::from(u32::from(subnet.network()) + 1),
            "{ctx}: FLANNEL_SUBNET must name the gateway .1"
        );
        assert_eq!(env.mtu, pod_mtu(node), "{ctx}: FLANNEL_MTU");
        assert!(
            env.ipmasq,
            "{ctx}: FLANNEL_IPMASQ should default to true:\n{}",
            env.text
        );
        subnets.insert(subnet);

        let mac = node
            .device_mac()
            .unwrap_or_else(|| panic!("{ctx}: no {DEVICE}"));
        let state = node
            .agent_state()
            .unwrap_or_else(|| panic!("{ctx}: no agent.json"));
        assert_eq!(
            state["subnet"].as_str(),
            Some(subnet.to_string().as_str()),
            "{ctx}: agent.json subnet: {state}"
        );
        assert_eq!(
            state["vtepMac"].as_str().map(str::to_ascii_lowercase),
            Some(mac.clone()),
            "{ctx}: agent.json vtepMac must be the device's MAC: {state}"
        );
        let record = records
            .iter()
            .find(|r| r.underlay == node.underlay_ip())
            .unwrap_or_else(|| panic!("{ctx}: no record in etcd: {records:?}"));
        assert_eq!(
            (record.subnet, record.vtep_mac.as_str()),
            (subnet, mac.as_str()),
            "{ctx}: etcd record"
        );
        assert_vxlan_device(node, subnet);
    }
    assert_eq!(
        subnets.len(),
        c.nodes.len(),
        "nodes must lease distinct subnets: {subnets:?}"
    );
}

/// The device: VNI 1, port 8472, learning off, on the underlay (`local`, or `local6` over
/// IPv6), MTU underlay − 50 (− 70 over IPv6), up, with the subnet's network address /32.
fn assert_vxlan_device(node: &OverlayNode, subnet: Ipv4Net) {
    let ctx = format!("node {} {DEVICE}", node.underlay_ip());
    let link = node
        .netns()
        .link_details(DEVICE)
        .unwrap_or_else(|| panic!("{ctx}: missing"));
    let data = &link["linkinfo"]["info_data"];
    assert_eq!(
        link["linkinfo"]["info_kind"].as_str(),
        Some("vxlan"),
        "{ctx}: {link}"
    );
    assert_eq!(data["id"].as_u64(), Some(1), "{ctx}: VNI: {link}");
    assert_eq!(data["port"].as_u64(), Some(8472), "{ctx}: port: {link}");
    assert_eq!(
        data["learning"].as_bool(),
        Some(false),
        "{ctx}: learning: {link}"
    );
    let (local, other) = if node.underlay_ip().is_ipv6() {
        ("local6", "local")
    } else {
        ("local", "local6")
    };
    assert_eq!(
        data[local].as_str(),
        Some(node.underlay_ip().to_string().as_str()),
        "{ctx}: {local}: {link}"
    );
    assert!(data.get(other).is_none(), "{ctx}: {other} is set: {link}");
    assert_eq!(
        data["link"].as_str(),
        Some("eth0"),
        "{ctx}: underlay: {link}"
    );
    assert_eq!(
        link["mtu"].as_u64(),
        Some(u64::from(overlay_mtu(node.underlay_ip()))),
        "{ctx}: MTU: {link}"
    );
    assert!(
        link["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|v| v == "UP")),
        "{ctx}: not up: {link}"
    );
    let vtep = Ipv4Net::new(subnet.network(), 32).expect("/32 is valid");
    assert_eq!(
        node.netns().ipv4_addresses(DEVICE),
        vec![vtep],
        "{ctx}: VTEP address"
    );
}

/// Every pod on a node of `nodes` pings every pod on the other nodes of `nodes`.
fn assert_pods_reach_across(c: &OverlayCluster, nodes: &[usize], ctx: &str) {
    let mut failed = Vec::new();
    let mut tried = 0;
    for from in c.pods.iter().filter(|p| nodes.contains(&p.node)) {
        for to in c
            .pods
            .iter()
            .filter(|p| nodes.contains(&p.node) && p.node != from.node)
        {
            tried += 1;
            if !ping(&from.netns, to.addr) {
                failed.push(format!(
                    "{} (node {}) -> {} (node {})",
                    from.addr, from.node, to.addr, to.node
                ));
            }
        }
    }
    assert!(tried > 0, "{ctx}: no pod pairs to ping");
    if !failed.is_empty() {
        panic!(
            "{ctx}: {} of {tried} cross-node pings failed: {failed:#?}\n{}",
            failed.len(),
            c.diagnostics()
        );
    }
}

/// The record etcd holds for `node`, if any.
fn record_of(c: &OverlayCluster, node: usize) -> Option<Peer> {
    let ip = c.nodes[node].underlay_ip();
    c.records()?.into_iter().find(|r| r.underlay == ip)
}

/// The etcd lease each record of `peers` is attached to, by subnet (0 = none).
fn record_leases(c: &OverlayCluster, peers: &BTreeSet<Peer>) -> BTreeMap<Ipv4Net, i64> {
    peers
        .iter()
        .map(|p| {
            let key = subnet_key(ETCD_PREFIX, p.subnet);
            (p.subnet, c.etcd.key_lease(&key).unwrap_or(0))
        })
        .collect()
}

#[test]
fn three_nodes_lease_distinct_subnets_pods_reach_across_and_a_dead_node_is_removed() {
    // No periodic resync: the dead node must go on the watch's DELETE alone.
    let mut c = three_node_cluster_on(Underlay::new(), NO_RESYNC, 2);
    assert_eq!(c.pods.len(), 6);
    assert_pods_reach_across(&c, &[0, 1, 2], "three nodes");

    // Node 2 dies: SIGKILL, so its lease is not released and must expire. Its last renewal
    // was at most leaseTTL before the kill, so etcd deletes the record within leaseTTL (plus
    // its expiry check) and the watch reports the delete at once.
    let dead = record_of(&c, 2).expect("node 2 has a record");
    let killed = Instant::now();
    c.nodes[2].take_agent().kill();
    let bound = secs(LEASE_TTL) + ETCD_EXPIRY_CHECK + GRACE;
    let gone = eventually(bound, || {
        [0, 1].iter().all(|&i| {
            c.nodes[i]
                .vxlan_state()
                .is_some_and(|st| !st.mentions(&dead))
        })
    });
    let took = killed.elapsed();
    assert!(
        gone,
        "dead node {dead:?}: its route, neighbour and FDB entry must leave the other nodes \
         within leaseTTL (+ etcd's expiry check and polling) = {bound:?}; after {took:?}:\n{}",
        c.diagnostics()
    );
    assert!(
        record_of(&c, 2).is_none(),
        "the dead node's record should have expired from etcd"
    );
    eprintln!("dead node removed from its peers {took:?} after SIGKILL (bound {bound:?})");
    // The survivors still hold each other, and their pods still talk.
    assert!(c.converged(&[0, 1]), "survivors lost each other");
    assert_pods_reach_across(&c, &[0, 1], "survivors");
}

#[test]
fn restarted_agent_keeps_its_subnet_and_vtep_mac_and_traffic_resumes() {
    let mut c = three_node_cluster(1);
    assert_pods_reach_across(&c, &[0, 1, 2], "before the restart");
    let node = 1;
    let kept = NodeIdentity::of(&c, node);
    let record_before = record_of(&c, node).expect("record");

    let status = c.nodes[node].take_agent().terminate();
    assert!(
        status.success(),
        "agent should exit 0 on SIGTERM, got {status}:\n{}",
        c.nodes[node].diagnostics()
    );
    // releaseOnExit (default true): the lease is revoked before exit, so peers drop the node
    // without waiting for the TTL.
    assert!(
        record_of(&c, node).is_none(),
        "SIGTERM with releaseOnExit should have revoked the record"
    );
    let me = record_before.clone();
    assert!(
        eventually(reconcile_bound(), || [0, 2].iter().all(|&i| c.nodes[i]
            .vxlan_state()
            .is_some_and(|st| !st.mentions(&me)))),
        "peers should drop a released node within resyncSeconds:\n{}",
        c.diagnostics()
    );

    c.nodes[node].start_agent();
    assert!(
        eventually(LEASE_TIMEOUT, || record_of(&c, node).is_some()),
        "restarted agent did not publish its record:\n{}",
        c.diagnostics()
    );
    c.wait_converged(&[0, 1, 2], reconcile_bound(), "after the restart");
    assert_eq!(
        record_of(&c, node),
        Some(record_before),
        "the restarted agent must lease the same subnet with the same VTEP MAC"
    );
    kept.assert_kept(&c, node);
    assert_pods_reach_across(&c, &[0, 1, 2], "after the restart");
}

#[test]
fn killed_agent_reclaims_its_record_with_the_same_subnet_and_mac_and_traffic_flows() {
    let mut c = three_node_cluster(1);
    let node = 1;
    assert_pods_reach_across(&c, &[0, 1, 2], "before the kill");
    let record_before = record_of(&c, node).expect("record");
    let key = subnet_key(ETCD_PREFIX, record_before.subnet);
    let old_lease = c.etcd.key_lease(&key).expect("the record has a lease");
    let kept = NodeIdentity::of(&c, node);
    let ifindex = |c: &OverlayCluster| {
        c.nodes[node]
            .netns()
            .link_details(DEVICE)
            .and_then(|l| l["ifindex"].as_u64())
    };
    let ifindex_before = ifindex(&c).expect("device");
    // Pings both ways between the node's pod and the others', for the whole crash and restart.
    let mine: Vec<usize> = (0..c.pods.len())
        .filter(|&p| c.pods[p].node == node)
        .collect();
    let mut streams = Vec::new();
    for &m in &mine {
        for other in c.pods.iter().filter(|p| p.node != node) {
            let interval = Duration::from_millis(200);
            streams.push(PingStream::start(&c.pods[m].netns, other.addr, interval));
            streams.push(PingStream::start(&other.netns, c.pods[m].addr, interval));
        }
    }
    let started = Instant::now();

    // A crash: nothing is released, the record stays with its lease until that runs out.
    c.nodes[node].take_agent().kill();
    assert_eq!(
        record_of(&c, node),
        Some(record_before.clone()),
        "SIGKILL releases nothing"
    );
    assert_eq!(c.etcd.key_lease(&key), Some(old_lease));

    c.nodes[node].start_agent();
    // The agent takes its own record over with a new lease (not a new subnet).
    let reclaimed = eventually(LEASE_TIMEOUT, || {
        c.etcd
            .key_lease(&key)
            .is_some_and(|l| l != 0 && l != old_lease)
    });
    assert!(
        reclaimed,
        "the restarted agent must attach its record to a new lease; {key} has lease {:?} \
         (old {old_lease}):\n{}",
        c.etcd.key_lease(&key),
        c.diagnostics()
    );
    assert_eq!(
        c.records().map(|r| r.len()),
        Some(3),
        "one record per node: no second subnet leased"
    );
    // The old lease runs out, and the record, now on the new lease, outlives it.
    let old_gone = eventually(secs(LEASE_TTL) + ETCD_EXPIRY_CHECK + GRACE, || {
        c.etcd.lease_remaining(old_lease).is_none()
    });
    assert!(
        old_gone,
        "the crashed agent's lease {old_lease:x} did not expire"
    );
    assert_eq!(
        record_of(&c, node),
        Some(record_before),
        "after the old lease expired: same subnet and VTEP MAC in etcd"
    );
    c.wait_converged(&[0, 1, 2], reconcile_bound(), "after the restart");
    kept.assert_kept(&c, node);
    assert_eq!(
        ifindex(&c),
        Some(ifindex_before),
        "the VXLAN device has the same settings, so it must be kept, not recreated"
    );
    assert_streams_lost_nothing(streams, started, "across the crash and restart");
    assert_pods_reach_across(&c, &[0, 1, 2], "after the restart");
}

#[test]
fn ipv6_underlay_carries_ipv4_pods_with_the_mtu_less_70() {
    // Nodes and etcd on fd00:30::/64 with no IPv4 at all on the underlay: the agents find it
    // from the IPv6 default route, and VXLAN runs over IPv6 or not at all.
    let c = three_node_cluster_on(Underlay::new_v6(), RESYNC, 1);
    // assert_leases_and_devices (above) already checked subnet.env and the device: MTU
    // 1500 − 70, local6 = the node's address. Here: the records and the FDB entries.
    for (i, node) in c.nodes.iter().enumerate() {
        let ctx = format!("node {}", node.underlay_ip());
        assert!(
            node.netns().ipv4_addresses("eth0").is_empty(),
            "{ctx}: the underlay must be IPv6-only"
        );
        let record = record_of(&c, i).unwrap_or_else(|| panic!("{ctx}: no record"));
        assert!(
            record.underlay.is_ipv6(),
            "{ctx}: the record must carry PublicIPv6: {record:?}"
        );
        let st = node.vxlan_state().expect("device");
        assert!(
            st.fdb.len() == 2 && st.fdb.iter().all(|(_, dst)| dst.is_ipv6()),
            "{ctx}: FDB entries must point at the peers' IPv6 addresses: {st:?}"
        );
    }
    for pod in &c.pods {
        let mtu = pod
            .netns
            .link_details("eth0")
            .and_then(|l| l["mtu"].as_u64());
        assert_eq!(mtu, Some(u64::from(OVERLAY_MTU_V6)), "pod {} MTU", pod.addr);
    }
    assert_pods_reach_across(&c, &[0, 1, 2], "IPv6 underlay");
    // A full-size packet with DF set fits: 1430 bytes of IPv4 (1402 of ICMP payload) become
    // exactly 1500 on the underlay.
    let payload = (OVERLAY_MTU_V6 - 28).to_string();
    let (from, to) = (&c.pods[0], &c.pods[1]);
    assert_ne!(from.node, to.node);
    let to_addr = to.addr.to_string();
    let out = from.netns.run(
        "ping",
        &[
            "-c1", "-W2", "-n", "-q", "-M", "do", "-s", &payload, &to_addr,
        ],
    );
    assert!(
        out.status.success(),
        "a {payload}-byte DF ping {} -> {} must fit the IPv6 encapsulation: {}\n{}",
        from.addr,
        to.addr,
        String::from_utf8_lossy(&out.stdout),
        c.diagnostics()
    );
}

#[test]
fn underlay_interface_picks_that_interfaces_address_over_the_default_route() {
    require_root();
    // Each node: eth0 on an IPv4 underlay with the default route, eth1 on an IPv6 one
    // without. underlayInterface eth1 must win over the default route (and, eth1 having only
    // IPv6, the IPv6 family over the IPv4 preference).
    let main = Underlay::new();
    let second = Underlay::new_v6();
    let dir = tempfile::Builder::new()
        .prefix("cnit-vx-ulif-")
        .tempdir()
        .expect("tempdir");
    let peers_file = dir.path().join("peers.json");
    let fields = json!({"peersFile": peers_file, "resyncSeconds": RESYNC,
                        "underlayInterface": "eth1"});
    let mut nodes = [
        OverlayNode::new(&main, 1, &fields),
        OverlayNode::new(&main, 2, &fields),
    ];
    let peers: Vec<Peer> = (1..=2u8)
        .map(|n| Peer {
            subnet: Ipv4Net::new(Ipv4Addr::new(10, 200, n, 0), 24).expect("valid"),
            underlay: second.addr(n),
            vtep_mac: format!("0e:00:0a:c8:0{n}:00"),
        })
        .collect();
    for (node, n) in nodes.iter().zip(1u8..) {
        second.attach(node.netns(), second.addr(n), "eth1", false);
    }
    let list: Vec<Value> = peers
        .iter()
        .map(|p| json!({"subnet": p.subnet.to_string(), "underlay": p.underlay.to_string(), "vtepMac": p.vtep_mac}))
        .collect();
    fs::write(&peers_file, Value::Array(list).to_string()).expect("write peers file");
    for node in &mut nodes {
        node.start_agent();
    }
    for (i, node) in nodes.iter_mut().enumerate() {
        let env = node.wait_for_lease();
        let ctx = format!("node {} with underlayInterface eth1", node.underlay_ip());
        assert_eq!(env.node_subnet(), peers[i].subnet, "{ctx}: subnet");
        assert_eq!(env.mtu, OVERLAY_MTU_V6, "{ctx}: FLANNEL_MTU");
        let link = node.netns().link_details(DEVICE).expect("device");
        let data = &link["linkinfo"]["info_data"];
        assert_eq!(data["link"].as_str(), Some("eth1"), "{ctx}: {link}");
        assert_eq!(
            data["local6"].as_str(),
            Some(peers[i].underlay.to_string().as_str()),
            "{ctx}: local6 must be eth1's address: {link}"
        );
        assert!(data.get("local").is_none(), "{ctx}: {link}");
        let other = peers[1 - i].clone();
        assert!(
            eventually(reconcile_bound(), || {
                node.vxlan_state()
                    .is_some_and(|st| st.programs_exactly(std::slice::from_ref(&other)))
            }),
            "{ctx}: peer {other:?} not programmed:\n{}",
            node.diagnostics()
        );
    }
    let pods = [Netns::new("cnit-vxpod-"), Netns::new("cnit-vxpod-")];
    let addrs = [nodes[0].add_pod(&pods[0]), nodes[1].add_pod(&pods[1])];
    for (from, to) in [(0, 1), (1, 0)] {
        assert!(
            ping(&pods[from], addrs[to]),
            "over eth1: {} cannot reach {}:\n{}\n{}",
            addrs[from],
            addrs[to],
            nodes[0].diagnostics(),
            nodes[1].diagnostics()
        );
    }
}

#[test]
fn dataplane_survives_an_etcd_restart_and_agents_republish() {
    let mut c = three_node_cluster(1);
    let all = [0, 1, 2];
    let before: BTreeSet<Peer> = c.records().expect("etcd answers").into_iter().collect();

    // A ping stream between every ordered pair of nodes for the whole outage and restart.
    let mut streams = Vec::new();
    for from in &c.pods {
        for to in c.pods.iter().filter(|p| p.node != from.node) {
            streams.push(PingStream::start(
                &from.netns,
                to.addr,
                Duration::from_millis(200),
            ));
        }
    }
    let started = Instant::now();

    c.etcd.kill();
    // Longer than the TTL and several resyncs and renewals, all failing: the agents must keep
    // the dataplane and keep running.
    let outage = secs(LEASE_TTL + 2 * RESYNC);
    let peers_of: Vec<Vec<Peer>> = c
        .nodes
        .iter()
        .map(|n| {
            before
                .iter()
                .filter(|p| p.underlay != n.underlay_ip())
                .cloned()
                .collect()
        })
        .collect();
    let kept = holds_for(outage, || {
        c.nodes.iter_mut().zip(&peers_of).all(|(node, peers)| {
            node.agent_mut().is_some_and(|a| a.exited().is_none())
                && node
                    .vxlan_state()
                    .is_some_and(|st| st.programs_exactly(peers))
        })
    });
    assert!(
        kept,
        "with etcd down the agents must keep running and keep every peer programmed:\n{}",
        c.diagnostics()
    );

    c.etcd.start_again();
    // etcd restores leases with a fresh TTL on restart, so the records outlive it only if
    // the agents renew them: watch them for two TTLs.
    let republished = holds_for(secs(2 * LEASE_TTL) + GRACE, || {
        c.records()
            .is_some_and(|r| r.into_iter().collect::<BTreeSet<_>>() == before)
    });
    assert!(
        republished,
        "after etcd restarted, every agent's record must stay (renewed); etcd holds {:?}:\n{}",
        c.records(),
        c.diagnostics()
    );
    // The agents watch etcd again: a new peer appears on every node, and goes when its lease
    // is revoked.
    let probe = Peer {
        subnet: "10.200.250.0/24".parse().expect("valid"),
        underlay: "172.30.0.250".parse().expect("valid"),
        vtep_mac: "0e:00:00:00:00:fa".into(),
    };
    let lease = c.etcd.lease_grant(LEASE_TTL);
    c.etcd.put(
        &subnet_key(ETCD_PREFIX, probe.subnet),
        &probe.record_json(1),
        Some(lease),
    );
    assert!(
        eventually(reconcile_bound(), || all.iter().all(|&i| c.nodes[i]
            .vxlan_state()
            .is_some_and(|st| st.programs(&probe)))),
        "after the etcd restart, agents did not program a new peer:\n{}",
        c.diagnostics()
    );
    c.etcd.lease_revoke(lease);
    assert!(
        eventually(reconcile_bound(), || all.iter().all(|&i| c.nodes[i]
            .vxlan_state()
            .is_some_and(|st| !st.mentions(&probe)))),
        "after the etcd restart, agents did not remove a revoked peer:\n{}",
        c.diagnostics()
    );

    assert_streams_lost_nothing(streams, started, "during the etcd outage and restart");
    assert_pods_reach_across(&c, &all, "after the etcd restart");
}

#[test]
fn agents_republish_after_etcd_loses_its_data() {
    let mut c = three_node_cluster(1);
    let before: BTreeSet<Peer> = c.records().expect("etcd answers").into_iter().collect();
    let leases_before = record_leases(&c, &before);
    c.etcd.kill();
    c.etcd.wipe_data();
    c.etcd.start_again();
    // Each agent finds its lease gone at its next renewal (every leaseTTL/3) and claims its
    // subnet again; the bound allows for reconnecting first.
    let back = eventually(LEASE_TIMEOUT, || {
        c.records()
            .is_some_and(|r| r.into_iter().collect::<BTreeSet<_>>() == before)
    });
    assert!(
        back,
        "agents must re-publish the same subnets and MACs; etcd holds {:?}:\n{}",
        c.records(),
        c.diagnostics()
    );
    // New etcd leases: the records were claimed again, not restored from old data.
    let leases_after = record_leases(&c, &before);
    for (subnet, lease) in &leases_after {
        assert!(
            *lease != 0 && leases_before.get(subnet) != Some(lease),
            "record of {subnet} should carry a new etcd lease: {leases_before:?} -> {leases_after:?}"
        );
    }
    c.wait_converged(&[0, 1, 2], reconcile_bound(), "after etcd lost its data");
    assert_pods_reach_across(&c, &[0, 1, 2], "after etcd lost its data");
}

#[test]
fn add_before_the_lease_is_try_again_later_and_static_peers_file_connects_two_nodes() {
    require_root();
    let underlay = Underlay::new();
    let dir = tempfile::Builder::new()
        .prefix("cnit-vx-static-")
        .tempdir()
        .expect("tempdir");
    let peers_file = dir.path().join("peers.json");
    // txChecksumOffload set both ways, one per node: the agent applies what it is told.
    let fields = |tx_csum: bool| json!({"peersFile": peers_file, "resyncSeconds": RESYNC, "txChecksumOffload": tx_csum});
    let mut a = OverlayNode::new(&underlay, 1, &fields(false));
    let mut b = OverlayNode::new(&underlay, 2, &fields(true));

    // A fresh node with no agent: nothing leased, so ADD must ask the runtime to retry.
    let pod_a = Netns::new("cnit-vxpod-");
    let ctx = "ADD before the agent";
    let out = a.plugin_run("ADD", &pod_a, "early-pod").exec();
    out.expect_cni_error_code(ctx, TRY_AGAIN_LATER, Some("1.0.0"));
    assert!(!pod_a.has_link("eth0"), "{ctx}: pod interface created");
    assert!(
        a.leases().reserved_addresses().is_empty(),
        "{ctx}: an address was reserved"
    );
    let veths: Vec<String> = a
        .netns()
        .links_of_kind("veth")
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(veths, ["eth0"], "{ctx}: only the underlay veth may exist");
    let out = a.cnitool_add(&pod_a);
    assert!(
        !out.status.success(),
        "{ctx}: cnitool add should fail: {}",
        out.describe()
    );

    // Static mode: both nodes from one peers file.
    let peers = [
        Peer {
            subnet: "10.200.1.0/24".parse().expect("valid"),
            underlay: a.underlay_ip(),
            vtep_mac: "0e:00:0a:c8:01:00".into(),
        },
        Peer {
            subnet: "10.200.2.0/24".parse().expect("valid"),
            underlay: b.underlay_ip(),
            vtep_mac: "0e:00:0a:c8:02:00".into(),
        },
    ];
    let list: Vec<Value> = peers
        .iter()
        .map(|p| json!({"subnet": p.subnet.to_string(), "underlay": p.underlay.to_string(), "vtepMac": p.vtep_mac}))
        .collect();
    fs::write(&peers_file, Value::Array(list).to_string()).expect("write peers file");
    a.start_agent();
    b.start_agent();
    for (node, me, other, tx_csum) in [
        (&mut a, &peers[0], &peers[1], "off"),
        (&mut b, &peers[1], &peers[0], "on"),
    ] {
        let env = node.wait_for_lease();
        let ctx = format!("static node {}", node.underlay_ip());
        assert_eq!(
            env.node_subnet(),
            me.subnet,
            "{ctx}: subnet from the peers file"
        );
        assert_eq!(
            link_mac(node.netns(), DEVICE).as_deref(),
            Some(me.vtep_mac.as_str()),
            "{ctx}: VTEP MAC from the peers file"
        );
        assert_vxlan_device(node, me.subnet);
        let ethtool = node.netns().run("ethtool", &["-k", DEVICE]);
        let features = String::from_utf8_lossy(&ethtool.stdout);
        assert!(
            features
                .lines()
                .any(|l| l == format!("tx-checksumming: {tx_csum}")),
            "{ctx}: txChecksumOffload must leave tx-checksumming {tx_csum}: {features}{}",
            String::from_utf8_lossy(&ethtool.stderr)
        );
        let other = other.clone();
        assert!(
            eventually(reconcile_bound(), || {
                node.vxlan_state()
                    .is_some_and(|st| st.programs_exactly(std::slice::from_ref(&other)))
            }),
            "{ctx}: peer {other:?} not programmed:\n{}",
            node.diagnostics()
        );
    }

    // The runtime's retry now succeeds, and pods on the two nodes reach each other.
    let addr_a = a.add_pod(&pod_a);
    let pod_b = Netns::new("cnit-vxpod-");
    let addr_b = b.add_pod(&pod_b);
    assert!(
        ping(&pod_a, addr_b),
        "static mode: {addr_a} cannot reach {addr_b}:\n{}\n{}",
        a.diagnostics(),
        b.diagnostics()
    );
    assert!(
        ping(&pod_b, addr_a),
        "static mode: {addr_b} cannot reach {addr_a}:\n{}\n{}",
        a.diagnostics(),
        b.diagnostics()
    );
}

/// What a restarted agent must keep: its subnet.env, its agent.json and its VTEP MAC.
struct NodeIdentity {
    subnet_env: String,
    agent_state: Value,
    vtep_mac: String,
}

impl NodeIdentity {
    fn of(c: &OverlayCluster, node: usize) -> NodeIdentity {
        NodeIdentity {
            subnet_env: c.nodes[node].subnet_env().expect("subnet.env").text,
            agent_state: c.nodes[node].agent_state().expect("agent.json"),
            vtep_mac: c.nodes[node].device_mac().expect("device"),
        }
    }

    fn assert_kept(&self, c: &OverlayCluster, node: usize) {
        let n = &c.nodes[node];
        assert_eq!(
            n.subnet_env().map(|e| e.text).as_ref(),
            Some(&self.subnet_env),
            "subnet.env changed"
        );
        assert_eq!(
            n.agent_state().as_ref(),
            Some(&self.agent_state),
            "agent.json changed"
        );
        assert_eq!(
            n.device_mac().as_ref(),
            Some(&self.vtep_mac),
            "VTEP MAC changed"
        );
    }
}

/// The cluster's IPv6 pod range of the dual-stack tests (ULA).
const IPV6_NETWORK: &str = "fd00:10:244::/56";
/// The IPv6 VXLAN device (flannel's `flannel-v6.<vni>` is ours `vxlan-v6.<vni>`).
const DEVICE6: &str = "vxlan-v6.1";

/// Three dual-stack nodes (`enableIPv6`) on `underlay`, converged on both devices. With
/// IPv6 over an IPv6 underlay beside IPv4 over IPv4 (`Underlay::new_dual`), the pods' MTU
/// is the smaller of the two devices' (1500 − 70): one pod interface carries both families.
fn dual_stack_cluster_on(underlay: Underlay) -> OverlayCluster {
    dual_stack_cluster_with(underlay, RESYNC)
}

/// [`dual_stack_cluster_on`] with `resyncSeconds` = `resync`.
fn dual_stack_cluster_with(underlay: Underlay, resync: u64) -> OverlayCluster {
    require_root();
    let dual_family = underlay.is_dual();
    let c = OverlayCluster::start_on(
        underlay,
        3,
        LEASE_TTL,
        resync,
        &json!({"enableIPv6": true, "ipv6Network": IPV6_NETWORK}),
    );
    assert_leases_and_devices_with(&c, |node| {
        if dual_family {
            OVERLAY_MTU_V6
        } else {
            overlay_mtu(node.underlay_ip())
        }
    });
    c.wait_converged(&[0, 1, 2], reconcile_bound(), "after start (IPv4 device)");
    c
}

/// The IPv6 peers of node `i` as etcd says: every other node's dual-stack record.
fn ipv6_peers_of(c: &OverlayCluster, i: usize) -> Vec<Peer6> {
    let own = c.nodes[i].subnet_env().expect("subnet.env").node_subnet();
    records6(&c.etcd, ETCD_PREFIX)
        .expect("etcd answers")
        .into_iter()
        .filter(|p| p.v4_subnet != own)
        .collect()
}

/// Every node: a dual-stack key and record, FLANNEL_IPV6_* in subnet.env, the device that
/// carries IPv6 with its /128 VTEP address over the expected underlay, and exactly its peers'
/// IPv6 neighbours, FDB entries and routes on it; VTEP-to-VTEP ping6 across nodes over it.
/// `device6`: [`DEVICE6`] when the IPv6 side has a device of its own (its underlay is of the
/// other family, flannel's case), [`DEVICE`] when it shares the IPv4 one (same family).
fn assert_ipv6_overlay(c: &OverlayCluster, device6: &str, ctx: &str) {
    let shared = device6 == DEVICE;
    let network: Ipv6Net = IPV6_NETWORK.parse().expect("valid IPv6 network");
    let records = records6(&c.etcd, ETCD_PREFIX).expect("etcd answers");
    assert_eq!(
        records.len(),
        c.nodes.len(),
        "{ctx}: one dual-stack record per node: {records:?}"
    );
    let subnets: BTreeSet<Ipv6Net> = records.iter().map(|r| r.subnet).collect();
    assert_eq!(subnets.len(), records.len(), "{ctx}: distinct IPv6 subnets");
    for (i, node) in c.nodes.iter().enumerate() {
        let nctx = format!("{ctx}: node {}", node.underlay_ip());
        let env = node.subnet_env().expect("subnet.env");
        let own = records
            .iter()
            .find(|r| r.v4_subnet == env.node_subnet())
            .unwrap_or_else(|| panic!("{nctx}: no dual-stack record for {}", env.node_subnet()));
        assert!(
            network.contains(&own.subnet) && own.subnet.prefix_len() == 64,
            "{nctx}: {} must be a /64 of {network}",
            own.subnet
        );
        let gateway6 = Ipv6Addr::from(u128::from(own.subnet.network()) + 1);
        for line in [
            format!("FLANNEL_IPV6_NETWORK={network}"),
            format!("FLANNEL_IPV6_SUBNET={gateway6}/64"),
        ] {
            assert!(
                env.text.lines().any(|l| l == line),
                "{nctx}: subnet.env lacks {line}:\n{}",
                env.text
            );
        }
        let state = node.agent_state().expect("agent.json");
        assert_eq!(
            state["ipv6Subnet"].as_str(),
            Some(own.subnet.to_string().as_str()),
            "{nctx}: agent.json {state}"
        );
        // The IPv6 device: VXLAN, the record's MAC, the VTEP address, over the underlay the
        // record names (PublicIPv6 on an IPv6 underlay, PublicIP over IPv4).
        let link = node
            .netns()
            .link_details(device6)
            .unwrap_or_else(|| panic!("{nctx}: {device6} missing"));
        let data = &link["linkinfo"]["info_data"];
        assert_eq!(
            link["linkinfo"]["info_kind"].as_str(),
            Some("vxlan"),
            "{nctx}: {link}"
        );
        assert_eq!(data["id"].as_u64(), Some(1), "{nctx}: {link}");
        assert_eq!(data["learning"].as_bool(), Some(false), "{nctx}: {link}");
        let local = if own.underlay.is_ipv6() {
            "local6"
        } else {
            "local"
        };
        assert_eq!(
            data[local].as_str(),
            Some(own.underlay.to_string().as_str()),
            "{nctx}: {local} must be the record's underlay {}: {link}",
            own.underlay
        );
        if shared {
            assert_eq!(own.underlay, node.underlay_ip(), "{nctx}: record underlay");
            assert!(
                !node.netns().has_link(DEVICE6),
                "{nctx}: same underlay family: no second device"
            );
        } else {
            assert_ne!(
                own.underlay.is_ipv6(),
                node.underlay_ip().is_ipv6(),
                "{nctx}: the IPv6 device's underlay is of the other family"
            );
        }
        assert_eq!(
            link_mac(node.netns(), device6).as_deref(),
            Some(own.vtep_mac.as_str()),
            "{nctx}: BackendV6Data.VtepMAC must be {device6}'s MAC"
        );
        if !shared {
            assert_ne!(
                link_mac(node.netns(), DEVICE),
                link_mac(node.netns(), device6),
                "{nctx}: the two devices have MACs of their own"
            );
        }
        assert_eq!(
            link["mtu"].as_u64(),
            Some(u64::from(overlay_mtu(own.underlay))),
            "{nctx}: MTU: {link}"
        );
        let addrs = node
            .netns()
            .ip_json(&["-6", "addr", "show", "dev", device6]);
        let vtep = format!("{}", own.vtep_ip());
        let has_vtep =
            addrs.as_ref().is_some_and(|a| {
                a.as_array().into_iter().flatten().any(|l| {
                    l["addr_info"].as_array().into_iter().flatten().any(|ai| {
                        ai["local"].as_str() == Some(vtep.as_str()) && ai["prefixlen"] == 128
                    })
                })
            });
        assert!(
            has_vtep,
            "{nctx}: {device6} must hold {vtep}/128: {addrs:?}"
        );

        let peers = ipv6_peers_of(c, i);
        assert_eq!(peers.len(), c.nodes.len() - 1, "{nctx}: {peers:?}");
        let programmed = eventually(reconcile_bound(), || {
            VxlanState6::read(node.netns(), device6).is_some_and(|st| st.programs_exactly(&peers))
        });
        assert!(
            programmed,
            "{nctx}: {device6} must hold exactly the IPv6 neighbour, FDB entry and onlink route \
             of {peers:?}; holds {:?}\n{}",
            VxlanState6::read(node.netns(), device6),
            c.diagnostics()
        );
        let st = VxlanState6::read(node.netns(), device6).expect("device");
        assert!(
            st.fdb
                .iter()
                .all(|(_, dst)| dst.is_ipv6() == own.underlay.is_ipv6()),
            "{nctx}: FDB entries in the underlay's family: {st:?}"
        );
        // Traffic over the IPv6 device: this node's VTEP address to every peer's.
        for p in &peers {
            assert!(
                ping6(node.netns(), p.vtep_ip()),
                "{nctx}: ping6 {} over {device6}\n{}",
                p.vtep_ip(),
                c.diagnostics()
            );
        }
    }
}

#[test]
fn dual_stack_agents_lease_ipv6_subnets_and_program_ipv6_peers_over_an_ipv4_underlay() {
    // IPv4-only underlay: IPv6 pod traffic encapsulates over IPv4 on the one device (the
    // kernel allows one VXLAN device per VNI, port and underlay family), and the records
    // carry no PublicIPv6 (the nodes have no IPv6 address).
    let mut c = dual_stack_cluster_on(Underlay::new());
    assert_ipv6_overlay(&c, DEVICE, "IPv4 underlay");
    for r in c.records().expect("etcd") {
        assert!(r.underlay.is_ipv4(), "{r:?}");
    }

    // The network config in etcd carries flannel's IPv6 fields.
    let config = c
        .etcd
        .get_prefix(&format!("{ETCD_PREFIX}/config"))
        .expect("etcd answers");
    let config: Value =
        serde_json::from_str(&config.first().expect("a config record").1).expect("config JSON");
    assert_eq!(config["EnableIPv6"], true, "{config}");
    assert_eq!(config["IPv6Network"], IPV6_NETWORK, "{config}");
    assert_eq!(config["IPv6SubnetLen"], 64, "{config}");

    // A restarted agent keeps its IPv6 subnet and its IPv6 device's MAC (agent.json).
    let before = records6(&c.etcd, ETCD_PREFIX).expect("etcd");
    let own_v4 = c.nodes[1].subnet_env().expect("subnet.env").node_subnet();
    let mine = before
        .iter()
        .find(|r| r.v4_subnet == own_v4)
        .cloned()
        .expect("node 1's record");
    let status = c.nodes[1].take_agent().terminate();
    assert!(status.success(), "agent exit: {status:?}");
    let gone = eventually(reconcile_bound(), || {
        [0, 2].iter().all(|&i| {
            VxlanState6::read(c.nodes[i].netns(), DEVICE).is_some_and(|st| !st.mentions(&mine))
        })
    });
    assert!(
        gone,
        "a node that left (lease revoked) must leave its peers' {DEVICE}:\n{}",
        c.diagnostics()
    );
    c.nodes[1].start_agent();
    c.nodes[1].wait_for_lease();
    let back = eventually(LEASE_TIMEOUT, || {
        records6(&c.etcd, ETCD_PREFIX).is_some_and(|r| r.contains(&mine))
    });
    assert!(
        back,
        "node 1 must come back with the same IPv6 subnet and MAC {mine:?}; etcd: {:?}",
        records6(&c.etcd, ETCD_PREFIX)
    );
    c.wait_converged(&[0, 1, 2], reconcile_bound(), "after the restart");
    assert_ipv6_overlay(&c, DEVICE, "after the restart");
}

#[test]
fn dual_stack_agents_program_ipv6_peers_over_an_ipv6_underlay_with_public_ipv6() {
    // IPv6-only underlay: one device encapsulates both families over IPv6, and the records
    // carry the node's address as PublicIPv6 (where flannel's IPv6 FDB entries point).
    let c = dual_stack_cluster_on(Underlay::new_v6());
    assert_ipv6_overlay(&c, DEVICE, "IPv6 underlay");
    for p in records6(&c.etcd, ETCD_PREFIX).expect("etcd") {
        assert!(p.underlay.is_ipv6(), "{p:?}");
    }
}

#[test]
fn a_flanneld_dual_stack_record_becomes_an_ipv6_peer() {
    // A record exactly as a dual-stack flanneld writes it (key from its MakeSubnetKey, value
    // from json.Marshal of its LeaseAttrs, see overlay's registry tests), on the IPv6
    // underlay where flannel's FDB entries point at PublicIPv6.
    let c = dual_stack_cluster_on(Underlay::new_v6());
    let key = format!("{ETCD_PREFIX}/subnets/10.244.200.0-24&fd00:10:244:c8::-64");
    let value = r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:30::c8","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:c8"},"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:c9"}}"#;
    c.etcd.put(&key, value, None);
    let flanneld = Peer6 {
        v4_subnet: "10.244.200.0/24".parse().expect("cidr"),
        subnet: "fd00:10:244:c8::/64".parse().expect("cidr"),
        underlay: "fd00:30::c8".parse().expect("addr"),
        vtep_mac: "aa:bb:cc:dd:ee:c9".into(),
    };
    let ipv4 = Peer {
        subnet: flanneld.v4_subnet,
        underlay: flanneld.underlay,
        vtep_mac: "aa:bb:cc:dd:ee:c8".into(),
    };
    for node in &c.nodes {
        let ok = eventually(reconcile_bound(), || {
            VxlanState6::read(node.netns(), DEVICE).is_some_and(|st| st.programs(&flanneld))
                && node.vxlan_state().is_some_and(|st| st.programs(&ipv4))
        });
        assert!(
            ok,
            "node {}: the flanneld record must be programmed on both devices: {:?} {:?}\n{}",
            node.underlay_ip(),
            VxlanState6::read(node.netns(), DEVICE),
            node.vxlan_state(),
            c.diagnostics()
        );
    }
}

#[test]
fn dual_stack_node_with_both_underlay_families_gets_a_second_device_as_flannel_does() {
    // flannel's own topology: IPv4 underlay (default route) plus an IPv6 address on the same
    // link. vxlan.1 stays over IPv4; vxlan-v6.1 (flannel-v6.1) encapsulates over IPv6 with a
    // MAC of its own, published as PublicIPv6 and BackendV6Data.VtepMAC.
    // No periodic resync: what changes after the start is applied from the watch alone.
    let mut c = dual_stack_cluster_with(Underlay::new_dual(), NO_RESYNC);
    assert_ipv6_overlay(&c, DEVICE6, "both underlay families");
    for r in records6(&c.etcd, ETCD_PREFIX).expect("etcd") {
        assert!(
            r.underlay.is_ipv6(),
            "PublicIPv6 is the IPv6 device's underlay: {r:?}"
        );
    }
    for r in c.records().expect("etcd") {
        assert!(
            r.underlay.is_ipv4(),
            "the node's identity stays PublicIP: {r:?}"
        );
    }

    // Node 2 leaves (SIGTERM revokes its lease): a watch DELETE, applied as a delta, takes
    // its IPv6 neighbour, FDB entry and route off the others' vxlan-v6.1 (and its IPv4 ones
    // off vxlan.1), while the two stay programmed for each other.
    let leaving = ipv6_peers_of(&c, 0)
        .into_iter()
        .find(|p| Some(p.v4_subnet) == c.nodes[2].subnet_env().map(|e| e.node_subnet()))
        .expect("node 2's IPv6 side");
    let status = c.nodes[2].take_agent().terminate();
    assert!(status.success(), "agent exit: {status}");
    let gone = eventually(GRACE * 2, || {
        [0, 1].iter().all(|&i| {
            VxlanState6::read(c.nodes[i].netns(), DEVICE6).is_some_and(|st| {
                !st.mentions(&leaving) && st.programs_exactly(&ipv6_peers_of(&c, i))
            })
        })
    });
    assert!(
        gone,
        "{leaving:?} must leave vxlan-v6.1 of nodes 0 and 1 on the watch's delete:\n{}",
        c.diagnostics()
    );
    assert!(c.converged(&[0, 1]), "the IPv4 side of the survivors");
}

#[test]
fn turning_enable_ipv6_on_moves_a_nodes_record_to_a_dual_stack_key_keeping_its_ipv4_subnet() {
    // An IPv4-only cluster; node 0's agent dies (SIGKILL: its record stays) and comes back
    // with enableIPv6 in its conflist, as a rolling change of the DaemonSet's config does.
    require_root();
    let mut c = OverlayCluster::start_on(Underlay::new(), 3, LEASE_TTL, RESYNC, &json!({}));
    c.wait_converged(&[0, 1, 2], reconcile_bound(), "IPv4 only");
    let before = record_of(&c, 0).expect("node 0's record");
    c.nodes[0].take_agent().kill();
    let path = c.nodes[0].conflist_path();
    let mut conflist: Value =
        serde_json::from_str(&fs::read_to_string(&path).expect("conflist")).expect("JSON");
    conflist["plugins"][0]["enableIPv6"] = json!(true);
    conflist["plugins"][0]["ipv6Network"] = json!(IPV6_NETWORK);
    fs::write(&path, conflist.to_string()).expect("write conflist");
    c.nodes[0].start_agent();
    c.nodes[0].wait_for_lease();

    // One record for node 0, now under a dual-stack key, with the same IPv4 subnet and MAC;
    // the IPv4-only key is gone (moved in one transaction, not left to expire).
    let dual = eventually(LEASE_TIMEOUT, || {
        records6(&c.etcd, ETCD_PREFIX)
            .is_some_and(|r| r.iter().any(|p| p.v4_subnet == before.subnet))
    });
    assert!(
        dual,
        "no dual-stack record for {before:?}: {:?}",
        records6(&c.etcd, ETCD_PREFIX)
    );
    let keys: Vec<String> = c
        .etcd
        .get_prefix(&format!("{ETCD_PREFIX}/subnets/"))
        .expect("etcd")
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.contains(&format!("/{}-", before.subnet.network())))
        .collect();
    assert_eq!(keys.len(), 1, "one key for {}: {keys:?}", before.subnet);
    assert!(keys[0].contains('&'), "{keys:?}");
    assert_eq!(
        record_of(&c, 0),
        Some(before.clone()),
        "IPv4 side unchanged"
    );
    let env = c.nodes[0].subnet_env().expect("subnet.env");
    assert!(
        env.text
            .contains(&format!("FLANNEL_IPV6_NETWORK={IPV6_NETWORK}\n")),
        "{}",
        env.text
    );
    // The IPv4 overlay goes on for everyone; node 0 has no IPv6 peer yet (the others are
    // IPv4-only), and the others program nothing of IPv6.
    c.wait_converged(
        &[0, 1, 2],
        reconcile_bound(),
        "after turning IPv6 on at node 0",
    );
    assert!(
        VxlanState6::read(c.nodes[0].netns(), DEVICE).is_some_and(|st| st.routes.is_empty()),
        "{:?}",
        VxlanState6::read(c.nodes[0].netns(), DEVICE)
    );
}

#[test]
fn ipv6_subnets_are_distinct_and_running_out_of_them_stops_the_agent_with_a_clear_error() {
    // ipv6Network /63 split into /64s: room for two nodes. Both take distinct IPv6 subnets;
    // a third agent finds none left and stops, saying so, with no record written.
    require_root();
    let fields = json!({"enableIPv6": true, "ipv6Network": "fd00:10:245::/63"});
    let mut c = OverlayCluster::start_on(Underlay::new(), 2, LEASE_TTL, RESYNC, &fields);
    let two = records6(&c.etcd, ETCD_PREFIX).expect("etcd");
    let subnets: BTreeSet<Ipv6Net> = two.iter().map(|r| r.subnet).collect();
    assert_eq!(subnets.len(), 2, "{two:?}");
    let third = c.add_node();
    let exited = eventually(LEASE_TIMEOUT, || {
        c.nodes[third]
            .agent_mut()
            .is_some_and(|a| a.exited().is_some())
    });
    assert!(
        exited,
        "the third agent must stop: {}",
        c.nodes[third].diagnostics()
    );
    let logs = c.nodes[third].diagnostics();
    assert!(
        logs.contains("no free /64 left in fd00:10:245::/63"),
        "the error must name the IPv6 range: {logs}"
    );
    assert_eq!(
        c.records().expect("etcd").len(),
        2,
        "no record for the third node (its IPv4 subnet is not held either)"
    );
}

/// Whether `from` reaches `to` by ping6: up to three one-second attempts, as the IPv4
/// `ping` does, so a first packet lost to neighbour discovery is not a failure.
fn ping6(from: &Netns, to: Ipv6Addr) -> bool {
    let to = to.to_string();
    (0..3).any(|_| {
        from.run("ping", &["-6", "-c1", "-W1", "-n", "-q", &to])
            .status
            .success()
    })
}

/// A dual-stack pod attached through cnitool on `node`: its namespace and the IPv4 and IPv6
/// addresses its result lists (checked against the node's subnets).
fn add_dual_stack_pod(c: &OverlayCluster, node: usize) -> (Netns, Ipv4Addr, Ipv6Addr) {
    let n = &c.nodes[node];
    let pod = Netns::new("cnit-vxpod6-");
    let ctx = format!("node {} cnitool add {}", n.underlay_ip(), pod.name());
    let out = n.cnitool_add(&pod);
    assert!(
        out.status.success(),
        "{ctx}: {}\n{}",
        out.describe(),
        c.diagnostics()
    );
    let result: Value = serde_json::from_str(&out.stdout).expect("result JSON");
    let addrs: Vec<ipnet::IpNet> = result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str()?.parse().ok())
        .collect();
    let env = n.subnet_env().expect("subnet.env");
    let v4 = addrs.iter().find_map(|a| match a {
        ipnet::IpNet::V4(a) => Some(a.addr()),
        _ => None,
    });
    let v6 = addrs.iter().find_map(|a| match a {
        ipnet::IpNet::V6(a) => Some(*a),
        _ => None,
    });
    let (Some(v4), Some(v6)) = (v4, v6) else {
        panic!("{ctx}: one address per family expected: {result}");
    };
    assert!(
        env.node_subnet().contains(&v4),
        "{ctx}: {v4} outside {}",
        env.node_subnet()
    );
    let own6 = records6(&c.etcd, ETCD_PREFIX)
        .expect("etcd")
        .into_iter()
        .find(|r| r.v4_subnet == env.node_subnet())
        .expect("the node's dual-stack record");
    assert!(
        own6.subnet.contains(&v6.addr()) && v6.prefix_len() == own6.subnet.prefix_len(),
        "{ctx}: {v6} must be an address of {}",
        own6.subnet
    );
    assert!(
        pod.ip_json(&["-6", "addr", "show", "dev", "eth0"])
            .is_some_and(|a| a.to_string().contains(&v6.addr().to_string())),
        "{ctx}: {v6} on the pod's eth0"
    );
    (pod, v4, v6.addr())
}

#[test]
fn dual_stack_pods_ping_and_ping6_across_nodes() {
    // Pods of the vxlan-overlay plugin on a dual-stack lease: an address of each family (the
    // IPv6 one from FLANNEL_IPV6_SUBNET), and traffic of both families between nodes, over
    // the one device of an IPv4 or an IPv6 underlay and over the two devices of a node with
    // both underlay families (flannel's arrangement).
    for underlay in [Underlay::new(), Underlay::new_v6(), Underlay::new_dual()] {
        let what = match (underlay.is_dual(), underlay.is_v6()) {
            (true, _) => "both underlay families",
            (false, true) => "IPv6 underlay",
            (false, false) => "IPv4 underlay",
        };
        let c = dual_stack_cluster_on(underlay);
        let pods: Vec<(usize, Netns, Ipv4Addr, Ipv6Addr)> = (0..c.nodes.len())
            .map(|i| {
                let (pod, v4, v6) = add_dual_stack_pod(&c, i);
                (i, pod, v4, v6)
            })
            .collect();
        let mut failed = Vec::new();
        for (from_node, from, _, from6) in &pods {
            for (to_node, _, to4, to6) in &pods {
                if from_node == to_node {
                    continue;
                }
                if !ping(from, *to4) {
                    failed.push(format!("ping {to4} from node {from_node}"));
                }
                if !ping6(from, *to6) {
                    failed.push(format!(
                        "ping6 {from6} -> {to6} (node {from_node} -> {to_node})"
                    ));
                }
            }
        }
        assert!(
            failed.is_empty(),
            "{what}: {} failed: {failed:#?}\n{}",
            failed.len(),
            c.diagnostics()
        );
        for (i, pod, _, _) in &pods {
            let out = c.nodes[*i].cnitool_check(pod);
            assert!(out.status.success(), "{what}: CHECK: {}", out.describe());
            let out = c.nodes[*i].cnitool_del(pod);
            assert!(out.status.success(), "{what}: DEL: {}", out.describe());
            let held: Vec<String> = fs::read_dir(c.nodes[*i].leases().path())
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.parse::<IpAddr>().is_ok())
                .collect();
            assert!(
                held.is_empty(),
                "{what}: DEL must release both addresses: {held:?}"
            );
        }
    }
}
