//! Interop of the vxlan-overlay agent with real flannel: flanneld (built from its Go module at
//! the release pinned in `conformance/scripts/build-flannel.sh`) on one node namespace, our
//! agent on two others, sharing one registry, as in a cluster migrating from flannel node by
//! node. Judged by what really happens: each node's VXLAN device holds exactly the other two
//! as peers (neighbour, FDB entry, onlink route), whoever programmed it; pods ping across all
//! three nodes both ways; a node that leaves disappears from the others, flannel's and ours.
//!
//! Two registries, one test each: etcd (flanneld's `--etcd-endpoints`, our `etcdEndpoints`,
//! flannel's default prefix), and the Kubernetes API (flanneld's `--kube-subnet-mgr`, our
//! `registry: "kubernetes"`) with the real kube-apiserver and kube-controller-manager of
//! [`cni_testkit::kube`], Node objects created through the API and their podCIDRs allocated by
//! the controller-manager.
//!
//! Run as root on Debian bookworm:
//! ```text
//! conformance/scripts/install-test-deps.sh
//! conformance/scripts/build-flannel.sh       # once per release; the tests run it too
//! conformance/scripts/build-kubernetes.sh    # likewise, for the Kubernetes-registry test
//! export CARGO_TARGET_DIR=/var/tmp/cni-suite-target
//! cargo build --release -p vxlan-overlay-agent -p vxlan-overlay
//! cargo test --release -p cni-testkit --test flannel_interop
//! ```
//! Each test builds its own underlay, etcd and nodes (names unique per process); everything is
//! killed and deleted when a test ends, pass or fail, and on failure the nodes' logs, flanneld's
//! log and every device's state are printed.

use std::fs::{self, File};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cni_testkit::cnitool::CnitoolNetwork;
use cni_testkit::etcd::{tail, EtcdServer, Etcdctl};
use cni_testkit::flannel::{vxlan_net_conf, FlannelNode, FlannelRegistry, FLANNEL_ETCD_PREFIX};
use cni_testkit::kube::{self, ControlPlane};
use cni_testkit::netns::{Netns, Node};
use cni_testkit::overlay::{
    link_mac, records, start_etcd, subnet_key, OverlayNode, Peer, SubnetEnv, Underlay, VxlanState,
    AGENT, BRIDGE, CLUSTER_CIDR, DEVICE, PLUGIN, SUBNET_LEN,
};
use cni_testkit::plugin::{bin_dir, Expect};
use cni_testkit::scenarios::CNITOOL_SPEC_VERSION;
use cni_testkit::traffic::ping;
use cni_testkit::{eventually, require_root, unique_name};
use ipnet::Ipv4Net;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tempfile::TempDir;

/// `leaseTTL` of our agents in etcd mode: short, so nothing in a test waits on it.
const LEASE_TTL: u64 = 6;
/// `resyncSeconds` of our agents.
const RESYNC: u64 = 2;
/// How long every node may take to reflect a change in the registry: both daemons watch it and
/// act at once; a resync of ours catches a missed event, and the slack is for a busy 2-core
/// machine.
const CONVERGE: Duration = Duration::from_secs(15);
/// How long our agent may take from start to subnet.env (etcd or the API server, with retries).
const AGENT_LEASE_TIMEOUT: Duration = Duration::from_secs(60);
/// The underlay links are veths of MTU 1500; VXLAN over IPv4 costs 50 bytes, in flannel
/// (the kernel's own device MTU) as in ours.
const OVERLAY_MTU: u32 = 1450;
/// flannel's annotation prefix (`--kube-annotation-prefix`'s default), which ours uses too.
const ANNOTATION_PREFIX: &str = "flannel.alpha.coreos.com";

/// A pod: its namespace, address, and the name of the node it is on.
struct Pod {
    netns: Netns,
    addr: Ipv4Addr,
    node: String,
}

/// A node's VXLAN device as the kernel holds it, by the node's underlay address.
struct NodeState {
    underlay: IpAddr,
    state: Option<VxlanState>,
}

/// One of our nodes in a mixed cluster, whichever registry its agent uses.
trait OurNode {
    /// Its underlay address and its VXLAN device as the kernel holds it.
    fn node_state(&self) -> NodeState;
    /// Its agent's log tail and state, for a failure message.
    fn report(&self) -> String;
}

impl OurNode for OverlayNode {
    fn node_state(&self) -> NodeState {
        NodeState {
            underlay: self.underlay_ip(),
            state: self.vxlan_state(),
        }
    }
    fn report(&self) -> String {
        self.diagnostics()
    }
}

/// The devices of every node of a mixed cluster: ours still running, and flanneld's.
fn node_states<N: OurNode>(ours: &[Option<N>], flannel: &FlannelNode) -> Vec<NodeState> {
    let mut nodes: Vec<NodeState> = ours.iter().flatten().map(OurNode::node_state).collect();
    nodes.push(NodeState {
        underlay: flannel.underlay_ip(),
        state: flannel.vxlan_state(),
    });
    nodes
}

/// Every daemon's report of a mixed cluster, then `registry`'s (titled `what`).
fn cluster_diagnostics<N: OurNode>(
    ours: &[Option<N>],
    flannel: &FlannelNode,
    what: &str,
    registry: &str,
) -> String {
    let mut text = String::new();
    for n in ours.iter().flatten() {
        text.push_str(&n.report());
        text.push('\n');
    }
    text.push_str(&flannel.diagnostics());
    text.push_str(&format!("\n--- {what}:\n"));
    text.push_str(registry);
    text
}

/// Whether each of `members` (underlay addresses) has an entry in `peers` (what the registry
/// says) and its device holds exactly the other members' entries.
fn converged(peers: &[Peer], members: &[IpAddr], states: &[NodeState]) -> bool {
    let recs: Vec<&Peer> = members
        .iter()
        .filter_map(|ip| peers.iter().find(|r| r.underlay == *ip))
        .collect();
    if recs.len() != members.len() {
        return false;
    }
    recs.iter().all(|me| {
        let others: Vec<Peer> = recs
            .iter()
            .filter(|p| **p != *me)
            .map(|p| (*p).clone())
            .collect();
        states
            .iter()
            .find(|n| n.underlay == me.underlay)
            .and_then(|n| n.state.as_ref())
            .is_some_and(|st| st.programs_exactly(&others))
    })
}

/// Asserts that every pod reaches every pod on another node; returns how many ordered pairs
/// were tried.
fn assert_pods_ping(pods: &[Pod], ctx: &str, diagnostics: impl Fn() -> String) -> usize {
    let mut pairs = 0;
    for a in pods {
        for b in pods {
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
                diagnostics()
            );
            pairs += 1;
        }
    }
    pairs
}

/// Asserts flannel's subnet.env and ours agree on the network and the MTU.
fn assert_same_subnet_env(flannel: &SubnetEnv, ours: &SubnetEnv, cluster: Ipv4Net) {
    assert_eq!(flannel.network, cluster, "flannel's FLANNEL_NETWORK");
    assert_eq!(ours.network, cluster, "our FLANNEL_NETWORK");
    assert_eq!(flannel.mtu, OVERLAY_MTU, "flannel's FLANNEL_MTU");
    assert_eq!(ours.mtu, flannel.mtu, "both kinds agree on the overlay MTU");
    assert!(!flannel.ipmasq, "flanneld runs with --ip-masq=false");
}

// ---------------------------------------------------------------------------------------
// etcd registry

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

    fn states(&self) -> Vec<NodeState> {
        node_states(&self.ours, &self.flannel)
    }

    fn wait_converged(&mut self, members: &[IpAddr], ctx: &str) {
        let start = Instant::now();
        if !eventually(CONVERGE, || {
            converged(&self.records(), members, &self.states())
        }) {
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
        cluster_diagnostics(
            &self.ours,
            &self.flannel,
            "etcd log",
            &self.etcd.log_tail(10),
        )
    }
}

impl Drop for MixedEtcdCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("mixed cluster state at failure:\n{}", self.diagnostics());
        }
    }
}

/// Our node on host `host` of `underlay`, its agent on `etcd` under flannel's default prefix.
fn our_etcd_node(underlay: &Underlay, etcd: &EtcdServer, host: u8) -> OverlayNode {
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
    let ours1 = our_etcd_node(&underlay, &etcd, 1);
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
    let ours3 = our_etcd_node(&underlay, &etcd, 3);
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
    for n in c.ours.iter().flatten() {
        let env = n.subnet_env().expect("our subnet.env");
        assert_same_subnet_env(&fl_env, &env, cluster);
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
            node: name.to_owned(),
        });
    }
    let netns = Netns::new("cnit-flpod-");
    let addr = c.flannel.add_pod(&netns);
    c.pods.push(Pod {
        netns,
        addr,
        node: "flannel".to_owned(),
    });
    let pairs = assert_pods_ping(&c.pods, "three nodes", || c.diagnostics());
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
    assert_eq!(
        assert_pods_ping(&c.pods, "after node 3 left", || c.diagnostics()),
        2
    );

    // flanneld's node leaves: flanneld withdraws nothing (its etcd lease lasts 24 h), so the
    // operator deletes its record; our node 1 must drop it.
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

// ---------------------------------------------------------------------------------------
// Kubernetes registry

/// A Node object created through the API (no kubelet: the agents and flanneld only read and
/// annotate it), deleted when dropped.
struct NodeObject {
    cp: Arc<ControlPlane>,
    name: String,
}

impl NodeObject {
    /// Creates Node `name` and waits for the controller-manager to allocate its podCIDR.
    fn create(cp: &Arc<ControlPlane>, name: &str) -> (NodeObject, Ipv4Net) {
        cp.apply(
            &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}).to_string(),
        );
        let node = NodeObject {
            cp: cp.clone(),
            name: name.to_owned(),
        };
        let mut cidr = String::new();
        let got = eventually(Duration::from_secs(60), || {
            cidr = cp
                .try_kubectl(&["get", "node", name, "-o", "jsonpath={.spec.podCIDR}"])
                .unwrap_or_default();
            !cidr.is_empty()
        });
        assert!(got, "node {name} got no podCIDR:\n{}", cp.logs());
        let cidr = cidr
            .parse()
            .unwrap_or_else(|e| panic!("podCIDR {cidr}: {e}"));
        (node, cidr)
    }

    /// The Node as JSON; `None` once it is gone.
    fn get(&self) -> Option<Value> {
        let out = self
            .cp
            .try_kubectl(&["get", "node", &self.name, "-o", "json"])
            .ok()?;
        serde_json::from_str(&out).ok()
    }

    /// The Node as a peer, from its podCIDR and flannel's annotations; `None` while one is
    /// missing. Panics on annotations not in flannel's format.
    fn peer(&self) -> Option<Peer> {
        let node = self.get()?;
        peer_of(&node)
    }

    fn delete(&self) {
        self.cp
            .kubectl(&["delete", "node", &self.name, "--wait=true"]);
    }
}

impl Drop for NodeObject {
    fn drop(&mut self) {
        let _ = self
            .cp
            .kubectl_cmd(&[
                "delete",
                "node",
                &self.name,
                "--ignore-not-found",
                "--wait=false",
            ])
            .output();
    }
}

/// A Node (JSON) as a peer: its podCIDR, `public-ip`, `backend-data`'s VtepMAC; `None` while
/// it lacks flannel's annotations. Panics if they are there but not in flannel's format.
fn peer_of(node: &Value) -> Option<Peer> {
    let name = node["metadata"]["name"].as_str().unwrap_or("?");
    let ann = &node["metadata"]["annotations"];
    let get = |key: &str| ann[format!("{ANNOTATION_PREFIX}/{key}")].as_str();
    let data = get("backend-data")?;
    assert_eq!(
        get("backend-type"),
        Some("vxlan"),
        "node {name}: backend-type"
    );
    assert_eq!(
        get("kube-subnet-manager"),
        Some("true"),
        "node {name}: kube-subnet-manager"
    );
    let data: Value = serde_json::from_str(data)
        .unwrap_or_else(|e| panic!("node {name}: backend-data is not JSON ({e}): {data}"));
    assert_eq!(data["VNI"], json!(1), "node {name}: backend-data VNI");
    let vtep_mac = data["VtepMAC"]
        .as_str()
        .unwrap_or_else(|| panic!("node {name}: backend-data has no VtepMAC: {data}"))
        .to_ascii_lowercase();
    let underlay: IpAddr = get("public-ip")?
        .parse()
        .unwrap_or_else(|e| panic!("node {name}: public-ip: {e}"));
    let subnet = node["spec"]["podCIDR"].as_str()?.parse().ok()?;
    Some(Peer {
        subnet,
        underlay,
        vtep_mac,
    })
}

/// A node namespace plugged into the control plane's underlay bridge, at the next free
/// address, with its default route through the control plane (as [`kube::KubeNode`]'s).
fn node_on_control_plane(cp: &ControlPlane) -> (Node, IpAddr) {
    let node = Node::new();
    let ip = cp.next_node_ip();
    cp.plug_in(node.netns(), ip, "kfl");
    (node, IpAddr::V4(ip))
}

/// Our agent on a node in Kubernetes mode (`registry: "kubernetes"`, the Node's name in
/// `NODE_NAME` as a DaemonSet's downward API gives it), and a cnitool network of our plugin
/// for its pods.
struct OurKubeNode {
    // Drop order: the agent dies first, cnitool's cache entries go, then the namespace and
    // the directory.
    agent: Option<Child>,
    network: CnitoolNetwork,
    node: Node,
    underlay_ip: IpAddr,
    dir: TempDir,
}

impl OurKubeNode {
    fn start(node: Node, underlay_ip: IpAddr, node_name: &str, kubeconfig: &PathBuf) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cnit-vxk-node-")
            .tempdir()
            .expect("node dir");
        let d = dir.path();
        let conflist = json!({
            "cniVersion": CNITOOL_SPEC_VERSION,
            "name": unique_name("cnit-vxk-"),
            "plugins": [{
                "type": PLUGIN,
                "clusterCIDR": kube::CLUSTER_CIDR,
                "registry": "kubernetes",
                "kubeconfig": kubeconfig,
                "bridge": BRIDGE,
                "resyncSeconds": RESYNC,
                "dataDir": d.join("data"),
                "ipamDir": d.join("ipam"),
                "logFile": d.join("vxlan-overlay.log"),
            }],
        });
        let conf = d.join("vxnet.conflist");
        fs::write(&conf, conflist.to_string()).expect("conflist");
        let bin = bin_dir();
        let out = File::create(d.join("agent.out")).expect("agent output");
        let err = out.try_clone().expect("dup");
        let agent = node
            .netns()
            .command(bin.join(AGENT))
            .arg("--config")
            .arg(&conf)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("NODE_NAME", node_name)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {AGENT}: {e}"));
        let network = CnitoolNetwork::new(&node, &conflist, &bin.to_string_lossy());
        OurKubeNode {
            agent: Some(agent),
            network,
            node,
            underlay_ip,
            dir,
        }
    }

    fn subnet_env(&self) -> Option<SubnetEnv> {
        let text = fs::read_to_string(self.dir.path().join("data/subnet.env")).ok()?;
        SubnetEnv::parse(&text)
    }

    fn wait_for_lease(&mut self) -> SubnetEnv {
        let deadline = Instant::now() + AGENT_LEASE_TIMEOUT;
        loop {
            if let Some(env) = self.subnet_env() {
                return env;
            }
            if let Some(status) = self.agent.as_mut().and_then(|c| c.try_wait().ok()?) {
                panic!(
                    "our agent on {} exited ({status}) before its lease:\n{}",
                    self.underlay_ip,
                    self.diagnostics()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no subnet.env from our agent on {} within {AGENT_LEASE_TIMEOUT:?}:\n{}",
                self.underlay_ip,
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn vxlan_state(&self) -> Option<VxlanState> {
        VxlanState::read(self.node.netns(), DEVICE)
    }

    /// Panics with the agent's log if it is not running: an agent that exited explains a
    /// dataplane that stopped following the API better than the dataplane does.
    fn assert_running(&mut self) {
        let exited = match self.agent.as_mut() {
            None => panic!("our agent on {} was stopped", self.underlay_ip),
            Some(c) => c.try_wait().ok().flatten(),
        };
        if let Some(status) = exited {
            panic!(
                "our agent on {} exited ({status}):\n{}",
                self.underlay_ip,
                self.diagnostics()
            );
        }
    }

    /// Attaches `pod` with our plugin through cnitool; returns its address.
    fn add_pod(&self, pod: &Netns) -> Ipv4Addr {
        let ctx = format!("our node {} cnitool add {}", self.underlay_ip, pod.name());
        let result = self.network.add(pod).expect_success(&ctx);
        let addr: Ipv4Addr = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split_once('/'))
            .and_then(|(a, _)| a.parse().ok())
            .unwrap_or_else(|| panic!("{ctx}: no IPv4 address in the result: {result}"));
        let env = self.subnet_env().expect("subnet.env");
        assert!(
            env.node_subnet().contains(&addr),
            "{ctx}: {addr} is not in {}",
            env.node_subnet()
        );
        addr
    }

    /// Stops the agent with SIGTERM, as a node shutting down; returns whether it exited 0.
    fn terminate(&mut self) -> bool {
        let Some(mut child) = self.agent.take() else {
            return false;
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
        let _ = kill(pid, Signal::SIGTERM);
        let exited = eventually(Duration::from_secs(10), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !exited {
            let _ = child.kill();
        }
        child.wait().is_ok_and(|s| s.success()) && exited
    }

    fn diagnostics(&self) -> String {
        let d = self.dir.path();
        format!(
            "--- our node {} ({}) log:\n{}\n--- agent stdout/stderr:\n{}\n--- {DEVICE}: {:?}",
            self.underlay_ip,
            self.node.netns().name(),
            tail(&d.join("vxlan-overlay.log"), 25),
            tail(&d.join("agent.out"), 10),
            self.vxlan_state()
        )
    }
}

impl Drop for OurKubeNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl OurNode for OurKubeNode {
    fn node_state(&self) -> NodeState {
        NodeState {
            underlay: self.underlay_ip,
            state: self.vxlan_state(),
        }
    }
    fn report(&self) -> String {
        self.diagnostics()
    }
}

/// Two Nodes with our agent and one with flanneld, on the shared control plane.
struct MixedKubeCluster {
    // Drop order: pods, then the daemons and their namespaces, then the Node objects.
    pods: Vec<Pod>,
    ours: Vec<Option<OurKubeNode>>,
    flannel: FlannelNode,
    objects: Vec<NodeObject>,
    cp: Arc<ControlPlane>,
}

impl MixedKubeCluster {
    /// Every Node of this test as a peer (those with flannel's annotations).
    fn peers(&self) -> Vec<Peer> {
        self.objects.iter().filter_map(NodeObject::peer).collect()
    }

    fn states(&self) -> Vec<NodeState> {
        node_states(&self.ours, &self.flannel)
    }

    fn wait_converged(&mut self, members: &[IpAddr], ctx: &str) {
        let start = Instant::now();
        let converged_in_time = eventually(CONVERGE, || {
            converged(&self.peers(), members, &self.states())
        });
        for n in self.ours.iter_mut().flatten() {
            n.assert_running();
        }
        if !converged_in_time {
            panic!(
                "{ctx}: {members:?} did not converge within {CONVERGE:?}; the Nodes say {:?}\n{}",
                self.peers(),
                self.diagnostics()
            );
        }
        self.flannel.assert_running();
        eprintln!("{ctx}: converged in {:?}", start.elapsed());
    }

    fn diagnostics(&self) -> String {
        cluster_diagnostics(&self.ours, &self.flannel, "control plane", &self.cp.logs())
    }
}

impl Drop for MixedKubeCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("mixed cluster state at failure:\n{}", self.diagnostics());
        }
    }
}

#[test]
fn flanneld_and_our_agents_share_the_kubernetes_api_pods_ping_and_deleted_nodes_are_removed() {
    require_root();
    let started = Instant::now();
    // Both kinds of daemon use the control plane's admin kubeconfig: what is under test here
    // is the format they share; the agent's smallest ClusterRole is overlay_kubernetes.rs's.
    let cp = ControlPlane::shared();
    cp.assert_running();
    let cluster: Ipv4Net = kube::CLUSTER_CIDR.parse().expect("cluster CIDR");

    // The Nodes first, as kubelet registers them before any network daemon runs on them; the
    // controller-manager allocates their podCIDRs (flanneld gives up on a Node without one).
    let names: Vec<String> = ["ours", "flannel", "ours"]
        .iter()
        .map(|kind| {
            unique_name(&format!("cnifl-{kind}-"))
                .to_lowercase()
                .replace('_', "-")
        })
        .collect();
    let mut objects = Vec::new();
    let mut cidrs = Vec::new();
    for name in &names {
        let (obj, cidr) = NodeObject::create(&cp, name);
        objects.push(obj);
        cidrs.push(cidr);
    }

    // Started in turn: ours, flannel, ours.
    let (n1, ip1) = node_on_control_plane(&cp);
    let mut ours1 = OurKubeNode::start(n1, ip1, &names[0], &cp.kubeconfig);
    let env1 = ours1.wait_for_lease();
    let (n2, fl_ip) = node_on_control_plane(&cp);
    let mut flannel = FlannelNode::start(
        n2,
        fl_ip,
        "eth0",
        FlannelRegistry::Kube {
            kubeconfig: cp.kubeconfig.clone(),
            node_name: names[1].clone(),
            net_conf: vxlan_net_conf(kube::CLUSTER_CIDR),
        },
    );
    let fl_env = flannel.wait_for_lease();
    let (n3, ip3) = node_on_control_plane(&cp);
    let mut ours3 = OurKubeNode::start(n3, ip3, &names[2], &cp.kubeconfig);
    let env3 = ours3.wait_for_lease();
    let mut c = MixedKubeCluster {
        pods: Vec::new(),
        ours: vec![Some(ours1), Some(ours3)],
        flannel,
        objects,
        cp,
    };

    // Each node's subnet is its Node's podCIDR, on both kinds.
    for (env, cidr, who) in [
        (&env1, cidrs[0], "ours-1"),
        (&fl_env, cidrs[1], "flannel"),
        (&env3, cidrs[2], "ours-3"),
    ] {
        assert_eq!(env.node_subnet(), cidr, "{who}: subnet.env is the podCIDR");
    }
    assert_same_subnet_env(&fl_env, &env1, cluster);
    assert_same_subnet_env(&fl_env, &env3, cluster);

    c.wait_converged(&[ip1, fl_ip, ip3], "three nodes up");
    // The annotations of each kind name its own VTEP, in the one format (peer_of asserts it).
    let fl_peer = c.objects[1].peer().expect("flannel's annotations");
    assert_eq!(Some(fl_peer.clone()), c.flannel.as_peer(), "flannel's Node");
    for (i, n) in [(0usize, 0usize), (2, 1)] {
        let ours = c.ours[n].as_ref().expect("node up");
        let peer = c.objects[i].peer().expect("our annotations");
        assert_eq!(peer.underlay, ours.underlay_ip, "our public-ip");
        assert_eq!(
            Some(peer.vtep_mac.clone()),
            link_mac(ours.node.netns(), DEVICE),
            "our backend-data VtepMAC is our device's MAC"
        );
    }

    for (n, name) in [(0usize, &names[0]), (1, &names[2])] {
        let netns = Netns::new("cnit-flpod-");
        let addr = c.ours[n].as_ref().expect("node up").add_pod(&netns);
        c.pods.push(Pod {
            netns,
            addr,
            node: name.clone(),
        });
    }
    let netns = Netns::new("cnit-flpod-");
    let addr = c.flannel.add_pod(&netns);
    c.pods.push(Pod {
        netns,
        addr,
        node: names[1].clone(),
    });
    let pairs = assert_pods_ping(&c.pods, "three nodes", || c.diagnostics());
    assert_eq!(pairs, 6, "every ordered pair of pods on different nodes");

    // Our node 3 leaves: its agent stops and its Node is deleted; flanneld and our node 1
    // must drop it.
    let ours3_peer = c.objects[2].peer().expect("node 3's annotations");
    let stopped = c.ours[1].as_mut().expect("node 3 up").terminate();
    assert!(stopped, "our agent exits 0 on SIGTERM");
    c.pods.retain(|p| p.node != names[2]);
    c.ours[1] = None;
    c.objects[2].delete();
    c.wait_converged(&[ip1, fl_ip], "our node 3 deleted");
    assert!(
        !c.flannel
            .vxlan_state()
            .is_some_and(|st| st.mentions(&ours3_peer)),
        "flannel.1 still holds something of node 3: {:?}",
        c.flannel.vxlan_state()
    );
    assert_eq!(
        assert_pods_ping(&c.pods, "after node 3 left", || c.diagnostics()),
        2
    );

    // flanneld's node leaves: flanneld stops and its Node is deleted; our node 1 must drop it.
    c.flannel.kill();
    c.objects[1].delete();
    let ours1 = c.ours[0].as_ref().expect("node 1 up");
    let gone = eventually(CONVERGE, || {
        ours1
            .vxlan_state()
            .is_some_and(|st| st.programs_exactly(&[]) && !st.mentions(&fl_peer))
    });
    assert!(
        gone,
        "our node 1 still holds flannel's node after its Node was deleted: {:?}\n{}",
        ours1.vxlan_state(),
        c.diagnostics()
    );
    eprintln!("Kubernetes-mode interop test took {:?}", started.elapsed());
}
