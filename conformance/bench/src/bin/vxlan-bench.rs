//! `vxlan-bench`: what the vxlan-overlay dataplane costs and how fast its agent converges.
//!
//! 1. Throughput, iperf3 pod to pod across two nodes, on three paths built side by side in
//!    separate namespaces and measured interleaved (the order rotates every run):
//!    - **vxlan-overlay**: etcd, an agent per node, pods attached by the plugin;
//!    - **hand VXLAN**: the same nodes and pods, but the VXLAN device (same settings), its
//!      neighbour, FDB entry and route made with `ip`/`bridge`/`ethtool`: the kernel's VXLAN
//!      ceiling for this path;
//!    - **plain routing**: the same nodes and pods, routed over the underlay with no
//!      encapsulation.
//!
//!    Pods are attached by the plugin on every path (on the hand-made paths from a subnet.env
//!    written by hand), so the pod side is identical and only the node-to-node part differs.
//!    Offload settings are made the same on every path and checked (`ethtool -k`, per
//!    interface role) before measuring.
//! 2. Convergence: time from starting an agent to all its peers programmed in the kernel
//!    (neighbour, FDB entry and route each), for 3 nodes (two real agents; also until the
//!    two have programmed the newcomer) and for 50 nodes (49 fake peer records written into
//!    etcd in the agent's format, underlay addresses that exist nowhere: only kernel state is
//!    measured).
//!
//! Usage (`--help` for the whole): `vxlan-bench [--runs N] [--seconds S] [--timing-runs N]
//! [--offloads default|off] [--vxlan-tx-csum off|on] [--out DIR]`. `--vxlan-tx-csum on` turns the agent's
//! `txChecksumOffload` (and the hand-made device's) on, to price the default workaround.
//! Run as root after `cargo build --release -p vxlan-overlay` and
//! `conformance/scripts/install-test-deps.sh`. Writes `vxlan-bench.md` and `vxlan-bench.json`
//! to `--out` (default `conformance/results`) and prints the markdown. Every wait is bounded;
//! everything is torn down at the end, on failure, and on Ctrl-C.

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::builder::TypedValueParser;
use clap::{Parser, ValueEnum};
use cni_benches::frame::Bench;
use cni_benches::stats::{median, min_max, ms};
use cni_benches::{interrupt, report};
use cni_testkit::etcd::{EtcdServer, Etcdctl};
use cni_testkit::netns::Netns;
use cni_testkit::overlay::{
    link_mac, subnet_key, OverlayCluster, OverlayNode, Peer, Underlay, BRIDGE, CLUSTER_CIDR,
    DEVICE, ETCD_PREFIX,
};
use cni_testkit::scenarios::CNITOOL_SPEC_VERSION;
use ipnet::Ipv4Net;
use serde_json::{json, Value};

/// The iperf3 port inside the server pod.
const IPERF_PORT: &str = "5201";
/// Agents' lease TTL and resync: the plugin's defaults.
const LEASE_TTL: u64 = 30;
const RESYNC: u64 = 30;
/// Bound on one convergence measurement.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The 50-node scenario uses its own key prefix, so its 49 fake peers never reach the real
/// agents of the throughput paths.
const PREFIX_50: &str = "/bench50/network";

/// Whether the interfaces keep their offloads.
#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Offloads {
    /// the kernel's defaults
    Default,
    /// TSO, GSO and GRO off on every interface of every path
    Off,
}

/// A switch given as `on` or `off`.
#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Parser)]
#[command(
    name = "vxlan-bench",
    disable_version_flag = true,
    about = "vxlan-overlay's pod-to-pod throughput against hand VXLAN and plain routing, and \
             its agent's convergence time.",
    long_about = "\
Pod-to-pod iperf3 throughput across two nodes over vxlan-overlay, a hand-made VXLAN device and
plain routing, and the agent's convergence time for 3 and 50 nodes, all in throwaway
namespaces. Writes vxlan-bench.md and vxlan-bench.json. Needs root, etcd and iperf3."
)]
struct Args {
    /// throughput runs per path, interleaved
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    runs: usize,
    /// seconds per iperf3 run, 1 to 60
    #[arg(long, value_name = "S", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=60))]
    seconds: u64,
    /// convergence runs, at most 20 (each run uses an underlay address)
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u8).range(1..=20))]
    timing_runs: u8,
    /// keep the interfaces' offloads, or turn TSO, GSO and GRO off everywhere
    #[arg(long, value_enum, default_value = "default")]
    offloads: Offloads,
    /// tx checksum offload on the VXLAN devices (the agent's txChecksumOffload)
    #[arg(long, value_enum, default_value = "off")]
    vxlan_tx_csum: OnOff,
    /// where the tables go
    #[arg(long, value_name = "DIR", default_value = "conformance/results")]
    out: PathBuf,
    /// version and the CNI spec version pods are attached at
    #[arg(short = 'V', long)]
    version: bool,
}

impl Args {
    fn offloads_off(&self) -> bool {
        self.offloads == Offloads::Off
    }

    fn vxlan_tx_csum(&self) -> bool {
        self.vxlan_tx_csum == OnOff::On
    }
}

/// One path: two nodes, a pod on each; iperf3 runs from `pods[0]` to `pods[1]`.
struct PathUnderTest {
    label: &'static str,
    // Drop order: pods, nodes (and agents), then the etcd cluster and underlay.
    pods: Vec<Netns>,
    addrs: Vec<Ipv4Addr>,
    nodes: Vec<OverlayNode>,
    cluster: Option<OverlayCluster>,
    underlay: Option<Underlay>,
}

impl PathUnderTest {
    fn node(&self, i: usize) -> &OverlayNode {
        match &self.cluster {
            Some(c) => &c.nodes[i],
            None => &self.nodes[i],
        }
    }

    /// (role, namespace, interface) of every interface a packet crosses, in order.
    fn interfaces(&self) -> Vec<(String, &Netns, String)> {
        let mut v = Vec::new();
        for (i, side) in ["client", "server"].iter().enumerate() {
            let node = self.node(i);
            let host_veth = node
                .netns()
                .links_of_kind("veth")
                .into_iter()
                .find(|l| l.master.as_deref() == Some(BRIDGE))
                .map(|l| l.name)
                .expect("the pod's host veth is on the bridge");
            v.push((format!("{side} pod eth0"), &self.pods[i], "eth0".to_owned()));
            v.push((format!("{side} node host veth"), node.netns(), host_veth));
            v.push((
                format!("{side} node {BRIDGE}"),
                node.netns(),
                BRIDGE.to_owned(),
            ));
            if node.netns().has_link(DEVICE) {
                v.push((
                    format!("{side} node {DEVICE}"),
                    node.netns(),
                    DEVICE.to_owned(),
                ));
            }
            v.push((format!("{side} node eth0"), node.netns(), "eth0".to_owned()));
        }
        let underlay = match (&self.cluster, &self.underlay) {
            (Some(c), _) => &c.underlay,
            (None, Some(u)) => u,
            (None, None) => unreachable!("every path has an underlay"),
        };
        for port in ["u1", "u2"] {
            v.push((
                format!("underlay port {port}"),
                underlay.netns(),
                port.to_owned(),
            ));
        }
        v
    }
}

/// The overlay path: etcd and two agents, pods through cnitool. `tx_csum` is the agent's
/// `txChecksumOffload`.
fn overlay_path(tx_csum: bool) -> PathUnderTest {
    let c =
        OverlayCluster::start_with(2, LEASE_TTL, RESYNC, &json!({"txChecksumOffload": tx_csum}));
    c.wait_converged(&[0, 1], Duration::from_secs(10), "overlay path");
    let pods: Vec<Netns> = (0..2).map(|_| Netns::new("cnit-vbpod-")).collect();
    let addrs = (0..2).map(|i| c.nodes[i].add_pod(&pods[i])).collect();
    PathUnderTest {
        label: "vxlan-overlay (agent)",
        pods,
        addrs,
        nodes: Vec::new(),
        cluster: Some(c),
        underlay: None,
    }
}

/// Two nodes without agents whose subnet.env is written by hand with `subnets` (the overlay
/// path's), and a pod on each attached by the plugin.
fn hand_nodes(label: &'static str, subnets: &[Ipv4Net; 2], mtu: u32) -> PathUnderTest {
    let underlay = Underlay::new();
    // The plugin wants etcdEndpoints or peersFile in its config; no agent reads this one.
    let fields = json!({"peersFile": "/nonexistent/no-agent-runs-here"});
    let nodes: Vec<OverlayNode> = (1..=2)
        .map(|h| OverlayNode::new(&underlay, h, &fields))
        .collect();
    for (node, subnet) in nodes.iter().zip(subnets) {
        let gateway = Ipv4Addr::from(u32::from(subnet.network()) + 1);
        let dir = node.data_dir();
        fs::create_dir_all(&dir).expect("create dataDir");
        fs::write(
            dir.join("subnet.env"),
            format!(
                "FLANNEL_NETWORK={CLUSTER_CIDR}\nFLANNEL_SUBNET={gateway}/{}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=true\n",
                subnet.prefix_len()
            ),
        )
        .expect("write subnet.env");
    }
    let pods: Vec<Netns> = (0..2).map(|_| Netns::new("cnit-vbpod-")).collect();
    let addrs = (0..2).map(|i| nodes[i].add_pod(&pods[i])).collect();
    PathUnderTest {
        label,
        pods,
        addrs,
        nodes,
        cluster: None,
        underlay: Some(underlay),
    }
}

/// Runs `ip`/`bridge`/`ethtool` (`args[0]`) inside `netns`; panics if it fails.
fn x(netns: &Netns, args: &[&str]) {
    let out = netns.run(args[0], &args[1..]);
    assert!(
        out.status.success(),
        "{} in {}: {}",
        args.join(" "),
        netns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The hand-made VXLAN path: the agent's device settings (VNI 1, port 8472, learning off,
/// MTU, tx checksum offload as `tx_csum`) and, per peer, a permanent neighbour, an FDB entry
/// and an onlink route.
fn hand_vxlan_path(subnets: &[Ipv4Net; 2], mtu: u32, tx_csum: bool) -> PathUnderTest {
    let p = hand_nodes("hand VXLAN (ip commands)", subnets, mtu);
    let macs = ["0e:00:00:00:0b:01", "0e:00:00:00:0b:02"];
    for i in 0..2 {
        let ns = p.nodes[i].netns();
        let local = p.nodes[i].underlay_ip().to_string();
        let mtu = mtu.to_string();
        x(
            ns,
            &[
                "ip",
                "link",
                "add",
                DEVICE,
                "address",
                macs[i],
                "mtu",
                &mtu,
                "type",
                "vxlan",
                "id",
                "1",
                "dstport",
                "8472",
                "local",
                &local,
                "dev",
                "eth0",
                "nolearning",
            ],
        );
        // What the agent does with txChecksumOffload (default false: off).
        x(
            ns,
            &[
                "ethtool",
                "-K",
                DEVICE,
                "tx",
                if tx_csum { "on" } else { "off" },
            ],
        );
        let vtep = format!("{}/32", subnets[i].network());
        x(ns, &["ip", "addr", "add", &vtep, "dev", DEVICE]);
        x(ns, &["ip", "link", "set", DEVICE, "up"]);
        let j = 1 - i;
        let peer_vtep = subnets[j].network().to_string();
        let peer_ip = p.nodes[j].underlay_ip().to_string();
        x(
            ns,
            &[
                "ip",
                "neigh",
                "add",
                &peer_vtep,
                "lladdr",
                macs[j],
                "dev",
                DEVICE,
                "nud",
                "permanent",
            ],
        );
        x(
            ns,
            &[
                "bridge", "fdb", "append", macs[j], "dev", DEVICE, "dst", &peer_ip,
            ],
        );
        x(
            ns,
            &[
                "ip",
                "route",
                "add",
                &subnets[j].to_string(),
                "via",
                &peer_vtep,
                "dev",
                DEVICE,
                "onlink",
            ],
        );
    }
    p
}

/// The plain routing path: each node routes the other's pod subnet via its underlay address.
fn plain_path(subnets: &[Ipv4Net; 2], mtu: u32) -> PathUnderTest {
    let p = hand_nodes("plain routing (no encapsulation)", subnets, mtu);
    for i in 0..2 {
        let j = 1 - i;
        let via = p.nodes[j].underlay_ip().to_string();
        x(
            p.nodes[i].netns(),
            &[
                "ip",
                "route",
                "add",
                &subnets[j].to_string(),
                "via",
                &via,
                "dev",
                "eth0",
            ],
        );
    }
    p
}

/// The VXLAN settings that must match between the agent's device and the hand-made one:
/// `info_data` without what names this node (local address, underlay link), plus MTU.
fn vxlan_settings(netns: &Netns) -> Value {
    let link = netns.link_details(DEVICE).expect("VXLAN device exists");
    let mut data = link["linkinfo"]["info_data"].clone();
    if let Some(obj) = data.as_object_mut() {
        obj.remove("local");
        obj.remove("link");
    }
    json!({"info_data": data, "mtu": link["mtu"]})
}

/// `ethtool -k` as feature → value ("on", "off [fixed]"...).
fn offloads(netns: &Netns, ifname: &str) -> BTreeMap<String, String> {
    let out = netns.run("ethtool", &["-k", ifname]);
    assert!(
        out.status.success(),
        "ethtool -k {ifname}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

/// The features that decide throughput here, as a short string for the report.
fn offload_summary(f: &BTreeMap<String, String>) -> String {
    // tx-tcp-segmentation rather than the aggregate tcp-segmentation-offload line, which
    // ethtool 6.1 prints "on" when only a newer kernel's sub-feature is on.
    [
        ("tx-checksumming", "txcsum"),
        ("scatter-gather", "sg"),
        ("tx-tcp-segmentation", "tso"),
        ("generic-segmentation-offload", "gso"),
        ("generic-receive-offload", "gro"),
    ]
    .iter()
    .map(|(k, short)| {
        let v = f.get(*k).map(String::as_str).unwrap_or("?");
        format!("{short} {}", v.split_whitespace().next().unwrap_or("?"))
    })
    .collect::<Vec<_>>()
    .join(", ")
}

/// Turns TSO, GSO and GRO off on every interface of the path.
fn offloads_off(p: &PathUnderTest) {
    for (_, ns, ifname) in p.interfaces() {
        x(
            ns,
            &[
                "ethtool", "-K", &ifname, "tso", "off", "gso", "off", "gro", "off",
            ],
        );
    }
}

/// Checks that interfaces of the same role carry the same offload features on every path;
/// returns role → summary for the report.
fn check_offloads(paths: &[PathUnderTest]) -> Result<BTreeMap<String, String>, String> {
    let mut by_role: BTreeMap<String, (String, BTreeMap<String, String>)> = BTreeMap::new();
    for p in paths {
        for (role, ns, ifname) in p.interfaces() {
            let f = offloads(ns, &ifname);
            match by_role.get(&role) {
                None => {
                    by_role.insert(role, (p.label.to_owned(), f));
                }
                Some((first, want)) if *want != f => {
                    let diff: Vec<String> = want
                        .iter()
                        .filter(|(k, v)| f.get(*k) != Some(*v))
                        .map(|(k, v)| format!("{k}: {v} vs {:?}", f.get(k)))
                        .collect();
                    return Err(format!(
                        "offloads of {role} differ between {first} and {}: {diff:?}",
                        p.label
                    ));
                }
                Some(_) => {}
            }
        }
    }
    Ok(by_role
        .into_iter()
        .map(|(role, (_, f))| (role, offload_summary(&f)))
        .collect())
}

/// One iperf3 run's outcome.
#[derive(Clone, Copy, Debug)]
struct Throughput {
    gbps: f64,
    retransmits: f64,
    cpu_sender: f64,
    cpu_receiver: f64,
}

/// Runs `cmd` with stdout in a temporary file, killing it after `timeout`; returns stdout.
fn run_bounded(mut cmd: Command, timeout: Duration) -> Result<String, String> {
    let out = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.reopen().map_err(|e| e.to_string())?)
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{cmd:?} did not finish within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = fs::read_to_string(out.path()).map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("{cmd:?} exited {status}: {text}"));
    }
    Ok(text)
}

/// One iperf3 TCP run of `seconds` from pod 0 to pod 1.
fn iperf(p: &PathUnderTest, seconds: u64) -> Throughput {
    interrupt::check();
    let server_addr = p.addrs[1].to_string();
    let mut server = p.pods[1]
        .command("iperf3")
        .args(["-s", "-1", "-B", &server_addr, "-p", IPERF_PORT])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start iperf3 server");
    let listening = cni_testkit::eventually(Duration::from_secs(5), || {
        let out = p.pods[1].run("ss", &["-Hltn", &format!("sport = :{IPERF_PORT}")]);
        !out.stdout.is_empty()
    });
    let result = if listening {
        let mut client = p.pods[0].command("iperf3");
        client.args([
            "-c",
            &server_addr,
            "-p",
            IPERF_PORT,
            "-t",
            &seconds.to_string(),
            "-J",
        ]);
        run_bounded(client, Duration::from_secs(seconds + 15))
    } else {
        Err("iperf3 server did not listen within 5 s".into())
    };
    let _ = server.kill();
    let _ = server.wait();
    let text = result.unwrap_or_else(|e| panic!("iperf3 on {}: {e}", p.label));
    let j: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("iperf3 on {} printed invalid JSON ({e}): {text}", p.label));
    if let Some(err) = j.get("error") {
        panic!("iperf3 on {}: {err}", p.label);
    }
    let end = &j["end"];
    Throughput {
        gbps: end["sum_received"]["bits_per_second"]
            .as_f64()
            .expect("iperf3 reports sum_received")
            / 1e9,
        retransmits: end["sum_sent"]["retransmits"].as_f64().unwrap_or(f64::NAN),
        cpu_sender: end["cpu_utilization_percent"]["host_total"]
            .as_f64()
            .unwrap_or(f64::NAN),
        cpu_receiver: end["cpu_utilization_percent"]["remote_total"]
            .as_f64()
            .unwrap_or(f64::NAN),
    }
}

/// Times of one agent start, in milliseconds from spawning it.
#[derive(Clone, Copy, Debug, Default)]
struct Join {
    lease_ms: f64,
    own_peers_ms: f64,
    /// Until the existing agents also programmed the newcomer (NaN without real peers).
    converged_ms: f64,
    /// Mean time of one poll iteration: the resolution of the numbers above.
    poll_ms: f64,
}

/// The number of routes with a gateway on the node's VXLAN device (cheap: one `ip` run).
/// The agent sends each peer's neighbour and FDB entry before its route in one batch, so all
/// routes present means everything was sent; a full `VxlanState` read confirms it after.
fn vxlan_route_count(netns: &Netns) -> usize {
    netns
        .ip_json(&["-4", "route", "show", "dev", DEVICE])
        .and_then(|v| {
            v.as_array()
                .map(|a| a.iter().filter(|r| r["gateway"].is_string()).count())
        })
        .unwrap_or(0)
}

/// Starts an agent on a fresh node `host` of `underlay` configured with `fields`, and times
/// it until it programmed `peers` and (if given) until `existing` nodes programmed it.
/// Stops it (releasing its lease) and waits until `existing` dropped it again.
fn time_join(
    underlay: &Underlay,
    host: u8,
    fields: &Value,
    peers: &[Peer],
    existing: &[&OverlayNode],
) -> Join {
    interrupt::check();
    let mut node = OverlayNode::new(underlay, host, fields);
    node.start_agent();
    let t0 = node.agent_mut().expect("agent runs").started();
    let (mut lease, mut own, mut theirs) = (None, None, None);
    let mut me: Option<Peer> = None;
    let mut polls = 0u32;
    let deadline = Instant::now() + JOIN_TIMEOUT;
    while lease.is_none() || own.is_none() || (theirs.is_none() && !existing.is_empty()) {
        assert!(
            Instant::now() < deadline,
            "agent on {} did not converge within {JOIN_TIMEOUT:?}:\n{}",
            node.underlay_ip(),
            node.diagnostics()
        );
        polls += 1;
        if lease.is_none() && node.subnet_env().is_some() {
            lease = Some(t0.elapsed());
        }
        if own.is_none() && vxlan_route_count(node.netns()) == peers.len() {
            own = Some(t0.elapsed());
        }
        if theirs.is_none() && !existing.is_empty() {
            if me.is_none() {
                me = node.as_peer();
            }
            if let Some(me) = &me {
                let done = existing.iter().all(|n| {
                    n.netns()
                        .ip_json(&["-4", "route", "show", &me.subnet.to_string(), "dev", DEVICE])
                        .is_some_and(|v| v.as_array().is_some_and(|a| !a.is_empty()))
                });
                if done {
                    theirs = Some(t0.elapsed());
                }
            }
        }
    }
    let poll_ms = ms(t0.elapsed()) / f64::from(polls.max(1));
    let state = node.vxlan_state().expect("device exists");
    assert!(
        state.programs_exactly(peers),
        "agent on {} programmed {state:?}, want exactly {peers:?}",
        node.underlay_ip()
    );
    if let Some(me) = &me {
        for n in existing {
            assert!(
                n.vxlan_state().is_some_and(|s| s.programs(me)),
                "{} did not fully program the newcomer {me:?}",
                n.underlay_ip()
            );
        }
    }
    let status = node.take_agent().terminate();
    assert!(status.success(), "agent exited {status}");
    if let Some(me) = &me {
        let dropped = cni_testkit::eventually(Duration::from_secs(10), || {
            existing
                .iter()
                .all(|n| n.vxlan_state().is_some_and(|s| !s.mentions(me)))
        });
        assert!(dropped, "existing nodes kept the stopped agent {me:?}");
    }
    let own = own.expect("loop ends with own set");
    Join {
        lease_ms: ms(lease.expect("loop ends with lease set")),
        own_peers_ms: ms(own),
        converged_ms: theirs.map_or(f64::NAN, |t| ms(t.max(own))),
        poll_ms,
    }
}

/// Writes 49 fake peers under [`PREFIX_50`]: subnets 10.200.100-148.0/24, underlay
/// addresses 172.30.0.150-198 (nothing has them), locally administered MACs.
fn fake_peers(etcd: &EtcdServer, n: u8) -> Vec<Peer> {
    (0..n)
        .map(|i| {
            let peer = Peer {
                subnet: Ipv4Net::new(Ipv4Addr::new(10, 200, 100 + i, 0), 24).expect("valid"),
                underlay: Ipv4Addr::new(172, 30, 0, 150 + i).into(),
                vtep_mac: format!("0e:00:00:00:50:{i:02x}"),
            };
            etcd.put(
                &subnet_key(PREFIX_50, peer.subnet),
                &peer.record_json(1),
                None,
            );
            peer
        })
        .collect()
}

fn summarize_joins(joins: &[Join]) -> Value {
    let col = |f: fn(&Join) -> f64| joins.iter().map(f).collect::<Vec<f64>>();
    let stat = |v: Vec<f64>| {
        let (lo, hi) = min_max(&v);
        json!({"median_ms": median(&v), "min_ms": lo, "max_ms": hi, "samples_ms": v})
    };
    json!({
        "runs": joins.len(),
        "lease": stat(col(|j| j.lease_ms)),
        "own_peers": stat(col(|j| j.own_peers_ms)),
        "converged": stat(col(|j| j.converged_ms)),
        "poll_ms": median(&col(|j| j.poll_ms)),
    })
}

fn main() {
    let args = Args::parse();
    let bench = Bench {
        name: "vxlan-bench",
        // Pods are attached through cnitool, at its spec version.
        spec_version: CNITOOL_SPEC_VERSION,
        out: &args.out,
        stem: "vxlan-bench",
        markdown,
        chart: None,
    };
    bench.main(args.version, || run(&args));
}

fn run(args: &Args) -> Value {
    eprintln!("vxlan-bench: building the three paths");
    let overlay = overlay_path(args.vxlan_tx_csum());
    let c = overlay
        .cluster
        .as_ref()
        .expect("overlay path has a cluster");
    let subnets = [0, 1].map(|i| {
        c.nodes[i]
            .subnet_env()
            .expect("overlay node leased")
            .node_subnet()
    });
    let mtu = c.nodes[0].subnet_env().expect("leased").mtu;
    let hand = hand_vxlan_path(&subnets, mtu, args.vxlan_tx_csum());
    let plain = plain_path(&subnets, mtu);
    let paths = [overlay, hand, plain];

    let settings_agent = vxlan_settings(paths[0].node(0).netns());
    let settings_hand = vxlan_settings(paths[1].node(0).netns());
    assert_eq!(
        settings_agent, settings_hand,
        "the hand-made VXLAN device must have the agent's settings"
    );
    if args.offloads_off() {
        paths.iter().for_each(offloads_off);
    }
    let offload_roles = check_offloads(&paths).unwrap_or_else(|e| panic!("{e}"));
    for p in &paths {
        assert!(
            cni_testkit::traffic::ping(&p.pods[0], p.addrs[1]),
            "{}: pods cannot reach each other",
            p.label
        );
    }

    eprintln!(
        "vxlan-bench: iperf3, {} runs x {} s per path, interleaved",
        args.runs, args.seconds
    );
    for p in &paths {
        iperf(p, 1); // warm-up, not recorded
    }
    let mut samples: Vec<Vec<Throughput>> = vec![Vec::new(); paths.len()];
    for run in 0..args.runs {
        for k in 0..paths.len() {
            let i = (run + k) % paths.len();
            let t = iperf(&paths[i], args.seconds);
            eprintln!("  run {run}: {}: {:.2} Gbit/s", paths[i].label, t.gbps);
            samples[i].push(t);
        }
    }
    let hand_median = median(&samples[1].iter().map(|t| t.gbps).collect::<Vec<_>>());
    let throughput: Vec<Value> = paths
        .iter()
        .zip(&samples)
        .map(|(p, s)| {
            let g: Vec<f64> = s.iter().map(|t| t.gbps).collect();
            let (lo, hi) = min_max(&g);
            json!({
                "path": p.label,
                "runs": g.len(),
                "median_gbps": median(&g),
                "min_gbps": lo,
                "max_gbps": hi,
                "vs_hand_vxlan": median(&g) / hand_median,
                "median_retransmits": median(&s.iter().map(|t| t.retransmits).collect::<Vec<_>>()),
                "median_cpu_sender_pct": median(&s.iter().map(|t| t.cpu_sender).collect::<Vec<_>>()),
                "median_cpu_receiver_pct": median(&s.iter().map(|t| t.cpu_receiver).collect::<Vec<_>>()),
                "samples_gbps": g,
            })
        })
        .collect();

    eprintln!(
        "vxlan-bench: agent convergence, {} runs each",
        args.timing_runs
    );
    let c = paths[0]
        .cluster
        .as_ref()
        .expect("overlay path has a cluster");
    let existing: Vec<&OverlayNode> = c.nodes.iter().collect();
    let real_peers: Vec<Peer> = existing
        .iter()
        .map(|n| n.as_peer().expect("overlay node set up"))
        .collect();
    let fields = c.node_fields();
    let joins3: Vec<Join> = (0..args.timing_runs)
        .map(|k| {
            let host = 10 + k;
            time_join(&c.underlay, host, &fields, &real_peers, &existing)
        })
        .collect();
    let fakes = fake_peers(&c.etcd, 49);
    let mut fields50 = c.node_fields();
    fields50["etcdPrefix"] = json!(PREFIX_50);
    let joins50: Vec<Join> = (0..args.timing_runs)
        .map(|k| {
            let host = 30 + k;
            time_join(&c.underlay, host, &fields50, &fakes, &[])
        })
        .collect();

    let mac = link_mac(paths[0].node(0).netns(), DEVICE).unwrap_or_default();
    json!({
        "kernel": report::kernel_release(),
        "cpus": report::cpus(),
        "iperf_seconds": args.seconds,
        "runs": args.runs,
        "offloads": format!(
            "{}; VXLAN tx checksum {} (agent's txChecksumOffload {}, mirrored by hand)",
            if args.offloads_off() { "tso/gso/gro off on every interface" } else { "kernel defaults" },
            if args.vxlan_tx_csum() { "on" } else { "off" },
            args.vxlan_tx_csum(),
        ),
        "offloads_by_role": offload_roles,
        "vxlan_settings": settings_agent,
        "overlay_vtep_mac_node1": mac,
        "pod_mtu": mtu,
        "throughput": throughput,
        "convergence": {
            "3_nodes": summarize_joins(&joins3),
            "50_nodes": summarize_joins(&joins50),
        },
        "etcd_prefix_3_nodes": ETCD_PREFIX,
        "etcd_prefix_50_nodes": PREFIX_50,
    })
}

fn markdown(doc: &Value, took: Duration) -> String {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let mut s = format!(
        "## vxlan-overlay dataplane and agent convergence\n\n\
         Kernel {}, {} CPUs; iperf3 TCP, 1 stream, {} s per run, {} runs per path, interleaved \
         (order rotated each run); pod MTU {}. Offloads: {}.\n\n\
         | path | median Gbit/s | min–max | vs hand VXLAN | median retransmits | median CPU sender / receiver |\n\
         |---|---|---|---|---|---|\n",
        doc["kernel"].as_str().unwrap_or("?"),
        doc["cpus"],
        doc["iperf_seconds"],
        doc["runs"],
        doc["pod_mtu"],
        doc["offloads"].as_str().unwrap_or("?"),
    );
    for t in doc["throughput"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "| {} | {:.2} | {:.2}–{:.2} | {:.2}× | {:.0} | {:.0}% / {:.0}% |\n",
            t["path"].as_str().unwrap_or("?"),
            f(&t["median_gbps"]),
            f(&t["min_gbps"]),
            f(&t["max_gbps"]),
            f(&t["vs_hand_vxlan"]),
            f(&t["median_retransmits"]),
            f(&t["median_cpu_sender_pct"]),
            f(&t["median_cpu_receiver_pct"]),
        ));
    }
    s.push_str(
        "\n| agent start → | peers | runs | subnet.env written | all own peers programmed | \
         peers programmed it too |\n|---|---|---|---|---|---|\n",
    );
    for (key, label, peers) in [
        ("3_nodes", "3 nodes (2 real agents)", 2),
        ("50_nodes", "50 nodes (49 fake records)", 49),
    ] {
        let c = &doc["convergence"][key];
        let cell = |k: &str| {
            let v = &c[k];
            if f(&v["median_ms"]).is_nan() {
                "n/a".to_owned()
            } else {
                format!(
                    "{:.0} ms ({:.0}–{:.0})",
                    f(&v["median_ms"]),
                    f(&v["min_ms"]),
                    f(&v["max_ms"])
                )
            }
        };
        s.push_str(&format!(
            "| {label} | {peers} | {} | {} | {} | {} |\n",
            c["runs"],
            cell("lease"),
            cell("own_peers"),
            cell("converged"),
        ));
    }
    let poll = f(&doc["convergence"]["3_nodes"]["poll_ms"])
        .max(f(&doc["convergence"]["50_nodes"]["poll_ms"]));
    s.push_str(&format!(
        "\nMedians (min–max). Kernel state polled with `ip -j` every ≈{poll:.0} ms (the \
         resolution); a peer counts once its route is there (the agent sends neighbour and FDB \
         entry first in the same batch) and the full neighbour/FDB/route set is checked after.\n\n\
         Offloads per interface role (equal on every path, checked):\n\n"
    ));
    for (role, summary) in doc["offloads_by_role"].as_object().into_iter().flatten() {
        s.push_str(&format!("- {role}: {}\n", summary.as_str().unwrap_or("?")));
    }
    s.push_str(&format!(
        "\nVXLAN device settings (agent = hand): `{}`\n\nBench took {:.0} s.\n",
        doc["vxlan_settings"],
        took.as_secs_f64()
    ));
    s
}
