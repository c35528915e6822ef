//! A test bed for the `vxlan-overlay` plugin and its agent: node namespaces on one underlay
//! bridge, etcd on that underlay, an agent per node, pods attached through cnitool, and
//! readers of what the kernel and etcd hold (VXLAN neighbours, FDB entries and routes; subnet
//! records).
//!
//! The layout mirrors a small cluster: the underlay is 172.30.0.0/24 on a bridge in its own
//! namespace, whose address 172.30.0.254 is every node's default gateway (the agent finds its
//! underlay from the default route); node `n` is 172.30.0.`n`; etcd is 172.30.0.100. An IPv6
//! underlay ([`Underlay::new_v6`]) is the same with fd00:30::/64 (a ULA range) and no IPv4 at
//! all: gateway fd00:30::fe, node `n` fd00:30::`n`, etcd fd00:30::64. All of it lives in
//! namespaces the test created, so addresses never meet anything else, and every namespace
//! name is unique per test run.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ipnet::{Ipv4Net, Ipv6Net};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::cnitool::CnitoolNetwork;
use crate::etcd::{tail, EtcdServer, Etcdctl};
use crate::leases::LeaseDir;
use crate::netns::{Netns, Node};
use crate::plugin::{bin_dir, Expect, PluginRun};
use crate::result::{check_add_result, host_veth_name};
use crate::scenarios::{
    assert_attachment_in_kernel, BridgeNetwork, CNITOOL_IFNAME, CNITOOL_SPEC_VERSION,
};
use crate::{eventually, unique_name};

/// The plugin (and agent) binary under test.
pub const PLUGIN: &str = "vxlan-overlay";
/// The agent's binary (before it had its own, the plugin's `agent` command).
pub const AGENT: &str = "vxlan-overlay-agent";
/// The cluster's pod range, split into node subnets by the agents.
pub const CLUSTER_CIDR: &str = "10.200.0.0/16";
/// The subnet length agents lease (the plugin's default).
pub const SUBNET_LEN: u8 = 24;
/// Key prefix of the overlay in etcd.
pub const ETCD_PREFIX: &str = "/cni-suite/network";
/// The VXLAN device of VNI 1 (the default VNI).
pub const DEVICE: &str = "vxlan.1";
/// The node bridge pods attach to.
pub const BRIDGE: &str = "cbr0";
/// Prefix length of the underlay network.
pub const UNDERLAY_PREFIX: u8 = 24;
/// The underlay bridge's address: every node's default gateway.
pub const UNDERLAY_GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 254);
/// etcd's address on the underlay.
pub const ETCD_ADDR: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 100);
/// Host number of etcd on the underlay (172.30.0.100, fd00:30::64).
pub const ETCD_HOST: u8 = 100;
/// Prefix length of the IPv6 underlay network.
pub const UNDERLAY_PREFIX_V6: u8 = 64;
/// The IPv6 underlay bridge's address: every node's default gateway there.
pub const UNDERLAY_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x30, 0, 0, 0, 0, 0, 0xfe);
/// How long an agent may take from start to a written subnet.env: connecting to etcd is
/// retried with a backoff of up to 5 s.
pub const LEASE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an agent may take to exit after SIGTERM (it revokes its lease first, bounded by a
/// 3 s etcd call).
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The underlay address of host `n` (1..=253).
pub fn underlay_addr(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(172, 30, 0, n)
}

/// The IPv6 underlay address of host `n` (1..=253): fd00:30::`n` (hex).
pub fn underlay_addr_v6(n: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x30, 0, 0, 0, 0, 0, u16::from(n))
}

/// The etcd key of a node subnet: `<prefix>/subnets/10.200.3.0-24`.
pub fn subnet_key(prefix: &str, subnet: Ipv4Net) -> String {
    format!(
        "{}/subnets/{}-{}",
        prefix.trim_end_matches('/'),
        subnet.network(),
        subnet.prefix_len()
    )
}

/// The underlay: a bridge in its own namespace that every node and etcd plug into, IPv4-only
/// or IPv6-only.
pub struct Underlay {
    netns: Netns,
    v6: bool,
    /// An IPv4 underlay whose hosts have an IPv6 address on the same link too.
    dual: bool,
}

impl Underlay {
    /// The underlay bridge is always called this (inside its own namespace).
    const BRIDGE: &'static str = "br0";

    /// Creates the underlay namespace with its bridge up at [`UNDERLAY_GATEWAY`].
    pub fn new() -> Underlay {
        Underlay::create(false)
    }

    /// An IPv6-only underlay: the bridge at [`UNDERLAY_GATEWAY_V6`], hosts get
    /// [`underlay_addr_v6`] and an IPv6 default route only.
    pub fn new_v6() -> Underlay {
        Underlay::create(true)
    }

    /// An IPv4 underlay (default route, node identities) whose hosts also hold
    /// [`underlay_addr_v6`] on the same link, without an IPv6 default route: flannel's
    /// dual-stack node, whose `flannel-v6.<vni>` encapsulates over that IPv6 address.
    pub fn new_dual() -> Underlay {
        let mut underlay = Underlay::create(false);
        underlay.dual = true;
        underlay
    }

    fn create(v6: bool) -> Underlay {
        let netns = Netns::new("cnit-ul-");
        let underlay = Underlay {
            netns,
            v6,
            dual: false,
        };
        underlay
            .netns
            .ip_ok(&["link", "add", Self::BRIDGE, "type", "bridge"]);
        let gateway = underlay.gateway();
        underlay.add_address(&underlay.netns, Self::BRIDGE, gateway);
        underlay.netns.ip_ok(&["link", "set", Self::BRIDGE, "up"]);
        underlay
    }

    /// Whether this is the IPv6-only underlay.
    pub fn is_v6(&self) -> bool {
        self.v6
    }

    /// Whether this is an IPv4 underlay whose hosts have IPv6 addresses too
    /// ([`Underlay::new_dual`]).
    pub fn is_dual(&self) -> bool {
        self.dual
    }

    /// The gateway (the bridge's address) of this underlay's family.
    pub fn gateway(&self) -> IpAddr {
        if self.v6 {
            UNDERLAY_GATEWAY_V6.into()
        } else {
            UNDERLAY_GATEWAY.into()
        }
    }

    /// The address of host `n` on this underlay.
    pub fn addr(&self, n: u8) -> IpAddr {
        if self.v6 {
            underlay_addr_v6(n).into()
        } else {
            underlay_addr(n).into()
        }
    }

    /// Adds `addr` with the underlay's prefix to `dev` in `netns`. IPv6 addresses skip
    /// duplicate address detection: the addresses are unique by construction, and a
    /// tentative address cannot source packets for the second or so DAD takes.
    fn add_address(&self, netns: &Netns, dev: &str, addr: IpAddr) {
        match addr {
            IpAddr::V4(a) => {
                netns.ip_ok(&["addr", "add", &format!("{a}/{UNDERLAY_PREFIX}"), "dev", dev])
            }
            IpAddr::V6(a) => netns.ip_ok(&[
                "-6",
                "addr",
                "add",
                &format!("{a}/{UNDERLAY_PREFIX_V6}"),
                "dev",
                dev,
                "nodad",
            ]),
        };
    }

    /// The underlay's namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Plugs `host` into the underlay: its `eth0` (a veth whose other end is a port of the
    /// bridge) holds `addr` (/24, or /64 on IPv6), and its default route goes via the
    /// underlay's gateway.
    pub fn connect(&self, host: &Netns, addr: IpAddr) {
        self.attach(host, addr, "eth0", true);
    }

    /// [`connect`](Self::connect) through link `ifname` of `host`, with a default route via
    /// the gateway only when `default_route` (a second underlay of a node has none).
    pub fn attach(&self, host: &Netns, addr: IpAddr, ifname: &str, default_route: bool) {
        assert_eq!(
            addr.is_ipv6(),
            self.v6,
            "{addr} is not of the underlay's family"
        );
        let last = match addr {
            IpAddr::V4(a) => a.octets()[3],
            IpAddr::V6(a) => a.octets()[15],
        };
        let port = format!("u{last}");
        self.netns.ip_ok(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            ifname,
            "netns",
            host.name(),
        ]);
        self.netns
            .ip_ok(&["link", "set", &port, "master", Self::BRIDGE, "up"]);
        self.add_address(host, ifname, addr);
        if self.dual {
            self.add_address(host, ifname, underlay_addr_v6(last).into());
        }
        host.ip_ok(&["link", "set", ifname, "up"]);
        if default_route {
            let family = if self.v6 { "-6" } else { "-4" };
            host.ip_ok(&[
                family,
                "route",
                "add",
                "default",
                "via",
                &self.gateway().to_string(),
            ]);
        }
    }
}

impl Default for Underlay {
    fn default() -> Self {
        Underlay::new()
    }
}

/// Starts etcd in a fresh namespace on `underlay` at host [`ETCD_HOST`] (on an IPv6
/// underlay etcd listens on IPv6 only, like everything else there).
pub fn start_etcd(underlay: &Underlay) -> EtcdServer {
    let netns = Netns::new("cnit-etcd-");
    let addr = underlay.addr(ETCD_HOST);
    underlay.connect(&netns, addr);
    EtcdServer::start(netns, addr)
}

/// A running `vxlan-overlay agent`, killed (SIGKILL) when dropped.
pub struct Agent {
    child: Child,
    started: Instant,
}

impl Agent {
    /// Starts the agent in `bin` (`vxlan-overlay-agent --config <config>`, or
    /// `vxlan-overlay agent --config <config>` of a release before the agent had a binary of its
    /// own) inside `node`, its stdout and stderr appended to `output` (its log goes to the
    /// config's `logFile`).
    pub fn spawn(bin: &Path, node: &Netns, config: &Path, output: &Path) -> Agent {
        let out = File::options()
            .create(true)
            .append(true)
            .open(output)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", output.display()));
        let err = out.try_clone().expect("cannot duplicate a file handle");
        let started = Instant::now();
        // `ip netns exec` execs the agent in place, so signals to the child reach the agent.
        let own = bin.join(AGENT);
        let (program, first) = if own.is_file() {
            (own, None)
        } else {
            (bin.join(PLUGIN), Some("agent"))
        };
        let child = node
            .command(&program)
            .args(first)
            .arg("--config")
            .arg(config)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        Agent { child, started }
    }

    /// When the agent was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The agent's process id (`ip netns exec` execs it in place, so it is the child's), for
    /// reading its CPU time and memory from `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The agent's exit status if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Kills the agent with SIGKILL, as a crashed or powered-off node: nothing is released.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits up to [`EXIT_TIMEOUT`] for the agent to exit; returns its
    /// status. Panics (after killing it) if it does not exit in time.
    pub fn terminate(mut self) -> ExitStatus {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits i32"));
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("agent did not exit within {EXIT_TIMEOUT:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Never panics; the agent may have exited already.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The node's lease as the agent wrote it in flannel's subnet.env format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK`: the cluster CIDR.
    pub network: Ipv4Net,
    /// `FLANNEL_SUBNET`: gateway/prefix, as flannel writes it.
    pub subnet: Ipv4Net,
    /// `FLANNEL_MTU`.
    pub mtu: u32,
    /// `FLANNEL_IPMASQ`.
    pub ipmasq: bool,
    /// The file's text, verbatim.
    pub text: String,
}

impl SubnetEnv {
    /// Parses the file's text; `None` if a field is missing or malformed.
    pub fn parse(text: &str) -> Option<SubnetEnv> {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
                .map(str::trim)
        };
        Some(SubnetEnv {
            network: field("FLANNEL_NETWORK")?.parse().ok()?,
            subnet: field("FLANNEL_SUBNET")?.parse().ok()?,
            mtu: field("FLANNEL_MTU")?.parse().ok()?,
            ipmasq: field("FLANNEL_IPMASQ")? == "true",
            text: text.to_owned(),
        })
    }

    /// The node subnet itself (network address and prefix).
    pub fn node_subnet(&self) -> Ipv4Net {
        self.subnet.trunc()
    }

    /// The pods' gateway: the address part of `FLANNEL_SUBNET`.
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.addr()
    }
}

/// A peer as the overlay describes it: subnet, underlay address and VTEP MAC (lower case).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Peer {
    /// The peer's pod subnet.
    pub subnet: Ipv4Net,
    /// The peer's underlay address.
    pub underlay: IpAddr,
    /// The peer's VTEP MAC.
    pub vtep_mac: String,
}

impl Peer {
    /// The peer's VTEP address: its subnet's network address, as flannel uses.
    pub fn vtep_ip(&self) -> Ipv4Addr {
        self.subnet.network()
    }

    /// The etcd record the agent publishes for this peer (flannel's format: an IPv6 underlay
    /// address goes in `PublicIPv6`, with `PublicIP` 0.0.0.0).
    pub fn record_json(&self, vni: u32) -> String {
        let mut rec = json!({
            "PublicIP": self.underlay.to_string(),
            "BackendType": "vxlan",
            "BackendData": {"VNI": vni, "VtepMAC": self.vtep_mac},
        });
        if self.underlay.is_ipv6() {
            rec["PublicIP"] = json!("0.0.0.0");
            rec["PublicIPv6"] = json!(self.underlay.to_string());
        }
        rec.to_string()
    }
}

/// The subnet records under `prefix` in etcd, as peers; `None` when etcd does not answer.
/// Panics on a record that is not in flannel's format.
pub fn records(etcd: &impl Etcdctl, prefix: &str) -> Option<Vec<Peer>> {
    let subnets = format!("{}/subnets/", prefix.trim_end_matches('/'));
    let kvs = etcd.get_prefix(&subnets)?;
    Some(
        kvs.iter()
            .map(|(key, value)| {
                // A dual-stack key, `<v4>-<len>&<v6>-<len>`: the IPv4 part here, the rest
                // in `records6`.
                let subnet = key
                    .strip_prefix(&subnets)
                    .map(|rest| rest.split_once('&').map_or(rest, |(v4, _)| v4))
                    .and_then(|rest| rest.split_once('-'))
                    .and_then(|(ip, len)| Ipv4Net::new(ip.parse().ok()?, len.parse().ok()?).ok())
                    .unwrap_or_else(|| {
                        panic!("etcd key {key:?} is not <prefix>/subnets/<ip>-<len>")
                    });
                let rec: Value = serde_json::from_str(value)
                    .unwrap_or_else(|e| panic!("record {key} is not JSON ({e}): {value}"));
                let public_ip: Ipv4Addr = rec["PublicIP"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("record {key} has no PublicIP: {value}"));
                // The node's identity: PublicIP, or PublicIPv6 on an IPv6 underlay (PublicIP
                // 0.0.0.0). A dual-stack node on an IPv4 underlay may publish both.
                let underlay = match rec.get("PublicIPv6").filter(|v| !v.is_null()) {
                    Some(_) if !public_ip.is_unspecified() => IpAddr::V4(public_ip),
                    None => IpAddr::V4(public_ip),
                    Some(v6) => v6
                        .as_str()
                        .and_then(|s| s.parse::<Ipv6Addr>().ok())
                        .map(IpAddr::V6)
                        .unwrap_or_else(|| panic!("record {key}: bad PublicIPv6: {value}")),
                };
                let vtep_mac = rec["BackendData"]["VtepMAC"]
                    .as_str()
                    .unwrap_or_else(|| panic!("record {key} has no BackendData.VtepMAC: {value}"))
                    .to_ascii_lowercase();
                assert_eq!(
                    rec["BackendType"].as_str(),
                    Some("vxlan"),
                    "record {key}: BackendType"
                );
                Peer {
                    subnet,
                    underlay,
                    vtep_mac,
                }
            })
            .collect(),
    )
}

/// The IPv6 side of a dual-stack peer: its IPv6 subnet (from the key), the underlay address
/// its IPv6 device is reached at (`PublicIPv6`, else `PublicIP`) and that device's MAC
/// (`BackendV6Data.VtepMAC`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Peer6 {
    /// The record's IPv4 subnet (the key's first part).
    pub v4_subnet: Ipv4Net,
    /// The peer's IPv6 pod subnet.
    pub subnet: Ipv6Net,
    /// Where the peer's IPv6 device is reached.
    pub underlay: IpAddr,
    /// The peer's IPv6 device's MAC.
    pub vtep_mac: String,
}

impl Peer6 {
    /// The peer's IPv6 VTEP address: its IPv6 subnet's network address.
    pub fn vtep_ip(&self) -> Ipv6Addr {
        self.subnet.network()
    }
}

/// The dual-stack records under `prefix` (keys `<v4>-<len>&<v6>-<len>` with
/// `BackendV6Data`), as IPv6 peers; `None` when etcd does not answer. Panics on a dual-stack
/// record that is not in flannel's format.
pub fn records6(etcd: &impl Etcdctl, prefix: &str) -> Option<Vec<Peer6>> {
    let subnets = format!("{}/subnets/", prefix.trim_end_matches('/'));
    let kvs = etcd.get_prefix(&subnets)?;
    Some(
        kvs.iter()
            .filter_map(|(key, value)| {
                let (v4, v6) = key.strip_prefix(&subnets)?.split_once('&')?;
                let parse_net = |text: &str| -> Option<(String, u8)> {
                    let (ip, len) = text.rsplit_once('-')?;
                    Some((ip.to_string(), len.parse().ok()?))
                };
                let (ip4, len4) = parse_net(v4)?;
                let (ip6, len6) =
                    parse_net(v6).unwrap_or_else(|| panic!("etcd key {key:?}: bad IPv6 part"));
                let v4_subnet = Ipv4Net::new(ip4.parse().ok()?, len4).ok()?;
                let subnet = ip6
                    .parse()
                    .ok()
                    .and_then(|ip| Ipv6Net::new(ip, len6).ok())
                    .unwrap_or_else(|| panic!("etcd key {key:?}: bad IPv6 subnet"));
                let rec: Value = serde_json::from_str(value)
                    .unwrap_or_else(|e| panic!("record {key} is not JSON ({e}): {value}"));
                let underlay = rec
                    .get("PublicIPv6")
                    .and_then(Value::as_str)
                    .or(rec["PublicIP"].as_str())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("record {key}: no underlay address: {value}"));
                let vtep_mac = rec["BackendV6Data"]["VtepMAC"]
                    .as_str()
                    .unwrap_or_else(|| panic!("record {key} has no BackendV6Data.VtepMAC: {value}"))
                    .to_ascii_lowercase();
                Some(Peer6 {
                    v4_subnet,
                    subnet,
                    underlay,
                    vtep_mac,
                })
            })
            .collect(),
    )
}

/// The per-peer state of the IPv6 VXLAN device of a dual-stack overlay (`ip -6 -j neigh`,
/// `bridge -j fdb`, `ip -6 -j route`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VxlanState6 {
    /// Permanent IPv6 neighbours: (VTEP address, MAC).
    pub neighbours: BTreeSet<(Ipv6Addr, String)>,
    /// FDB entries with a remote: (MAC, underlay address).
    pub fdb: BTreeSet<(String, IpAddr)>,
    /// IPv6 routes through the device with a gateway: (destination, gateway).
    pub routes: BTreeSet<(Ipv6Net, Ipv6Addr)>,
}

impl VxlanState6 {
    /// Reads the state of `device` in `netns`; `None` if the device does not exist.
    pub fn read(netns: &Netns, device: &str) -> Option<VxlanState6> {
        if !netns.has_link(device) {
            return None;
        }
        let mut st = VxlanState6::default();
        let neigh = netns.ip_json(&["-6", "neigh", "show", "dev", device])?;
        for n in neigh.as_array().into_iter().flatten() {
            let permanent = n["state"]
                .as_array()
                .is_some_and(|s| s.iter().any(|v| v == "PERMANENT"));
            let dst = n["dst"].as_str().and_then(|d| d.parse().ok());
            let mac = n["lladdr"].as_str().map(str::to_ascii_lowercase);
            if let (true, Some(dst), Some(mac)) = (permanent, dst, mac) {
                st.neighbours.insert((dst, mac));
            }
        }
        let out = netns.run("bridge", &["-j", "fdb", "show", "dev", device]);
        if !out.status.success() {
            return None;
        }
        if !out.stdout.iter().all(u8::is_ascii_whitespace) {
            let fdb: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                panic!(
                    "bridge -j fdb printed invalid JSON ({e}): {}",
                    String::from_utf8_lossy(&out.stdout)
                )
            });
            for f in fdb.as_array().into_iter().flatten() {
                let dst = f["dst"].as_str().and_then(|d| d.parse().ok());
                let mac = f["mac"].as_str().map(str::to_ascii_lowercase);
                if let (Some(dst), Some(mac)) = (dst, mac) {
                    st.fdb.insert((mac, dst));
                }
            }
        }
        let routes = netns.ip_json(&["-6", "route", "show", "dev", device])?;
        for r in routes.as_array().into_iter().flatten() {
            let dst = r["dst"].as_str().and_then(|d| d.parse().ok());
            let gw = r["gateway"].as_str().and_then(|g| g.parse().ok());
            if let (Some(dst), Some(gw)) = (dst, gw) {
                st.routes.insert((dst, gw));
            }
        }
        Some(st)
    }

    /// Whether `peer` is fully programmed: its IPv6 neighbour, FDB entry and onlink route.
    pub fn programs(&self, peer: &Peer6) -> bool {
        self.neighbours
            .contains(&(peer.vtep_ip(), peer.vtep_mac.clone()))
            && self.fdb.contains(&(peer.vtep_mac.clone(), peer.underlay))
            && self.routes.contains(&(peer.subnet, peer.vtep_ip()))
    }

    /// Whether anything of `peer` is left on the device.
    pub fn mentions(&self, peer: &Peer6) -> bool {
        self.neighbours
            .iter()
            .any(|(ip, mac)| *ip == peer.vtep_ip() || *mac == peer.vtep_mac)
            || self.fdb.iter().any(|(mac, _)| *mac == peer.vtep_mac)
            || self.routes.iter().any(|(dst, _)| *dst == peer.subnet)
    }

    /// Whether the device holds exactly `peers`: each fully programmed and nothing else.
    pub fn programs_exactly(&self, peers: &[Peer6]) -> bool {
        peers.iter().all(|p| self.programs(p))
            && self.neighbours.len() == peers.len()
            && self.fdb.len() == peers.len()
            && self.routes.len() == peers.len()
    }
}

/// The per-peer state of a VXLAN device as the kernel holds it (`ip -j neigh`,
/// `bridge -j fdb`, `ip -j route`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VxlanState {
    /// Permanent neighbours: (VTEP address, MAC).
    pub neighbours: BTreeSet<(Ipv4Addr, String)>,
    /// FDB entries with a remote: (MAC, underlay address).
    pub fdb: BTreeSet<(String, IpAddr)>,
    /// Routes through the device: (destination, gateway).
    pub routes: BTreeSet<(Ipv4Net, Ipv4Addr)>,
}

impl VxlanState {
    /// Reads the state of `device` in `netns`; `None` if the device does not exist.
    pub fn read(netns: &Netns, device: &str) -> Option<VxlanState> {
        if !netns.has_link(device) {
            return None;
        }
        let mut st = VxlanState::default();
        let neigh = netns.ip_json(&["-4", "neigh", "show", "dev", device])?;
        for n in neigh.as_array().into_iter().flatten() {
            let permanent = n["state"]
                .as_array()
                .is_some_and(|s| s.iter().any(|v| v == "PERMANENT"));
            let dst = n["dst"].as_str().and_then(|d| d.parse().ok());
            let mac = n["lladdr"].as_str().map(str::to_ascii_lowercase);
            if let (true, Some(dst), Some(mac)) = (permanent, dst, mac) {
                st.neighbours.insert((dst, mac));
            }
        }
        let out = netns.run("bridge", &["-j", "fdb", "show", "dev", device]);
        if !out.status.success() {
            return None;
        }
        let fdb: Value = if out.stdout.iter().all(u8::is_ascii_whitespace) {
            Value::Array(Vec::new())
        } else {
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                panic!(
                    "bridge -j fdb printed invalid JSON ({e}): {}",
                    String::from_utf8_lossy(&out.stdout)
                )
            })
        };
        for f in fdb.as_array().into_iter().flatten() {
            let dst = f["dst"].as_str().and_then(|d| d.parse().ok());
            let mac = f["mac"].as_str().map(str::to_ascii_lowercase);
            if let (Some(dst), Some(mac)) = (dst, mac) {
                st.fdb.insert((mac, dst));
            }
        }
        let routes = netns.ip_json(&["-4", "route", "show", "dev", device])?;
        for r in routes.as_array().into_iter().flatten() {
            let dst = r["dst"].as_str().and_then(|d| d.parse().ok());
            let gw = r["gateway"].as_str().and_then(|g| g.parse().ok());
            if let (Some(dst), Some(gw)) = (dst, gw) {
                st.routes.insert((dst, gw));
            }
        }
        Some(st)
    }

    /// Whether `peer` is fully programmed: its neighbour, FDB entry and onlink route.
    pub fn programs(&self, peer: &Peer) -> bool {
        self.neighbours
            .contains(&(peer.vtep_ip(), peer.vtep_mac.clone()))
            && self.fdb.contains(&(peer.vtep_mac.clone(), peer.underlay))
            && self.routes.contains(&(peer.subnet, peer.vtep_ip()))
    }

    /// Whether anything of `peer` is left: a neighbour for its VTEP address or MAC, an FDB
    /// entry for its MAC or underlay address, or a route to its subnet.
    pub fn mentions(&self, peer: &Peer) -> bool {
        self.neighbours
            .iter()
            .any(|(ip, mac)| *ip == peer.vtep_ip() || *mac == peer.vtep_mac)
            || self
                .fdb
                .iter()
                .any(|(mac, ip)| *mac == peer.vtep_mac || *ip == peer.underlay)
            || self.routes.iter().any(|(dst, _)| *dst == peer.subnet)
    }

    /// Whether the device holds exactly `peers`: each fully programmed and nothing else.
    pub fn programs_exactly(&self, peers: &[Peer]) -> bool {
        peers.iter().all(|p| self.programs(p))
            && self.neighbours.len() == peers.len()
            && self.fdb.len() == peers.len()
            && self.routes.len() == peers.len()
    }
}

/// The MAC address of `device` in `netns`, lower case; `None` if it does not exist.
pub fn link_mac(netns: &Netns, device: &str) -> Option<String> {
    netns
        .link_details(device)?
        .get("address")?
        .as_str()
        .map(str::to_ascii_lowercase)
}

/// One node of the overlay: a node namespace on the underlay with its own dataDir, ipamDir,
/// conflist and log, the agent (once started), and a cnitool network for its pods.
pub struct OverlayNode {
    // Fields drop in order: the agent dies before its namespace goes, and cnitool's cache
    // entries go before the directory.
    agent: Option<Agent>,
    network: CnitoolNetwork,
    node: Node,
    underlay_ip: IpAddr,
    plugin: Value,
    net_name: String,
    /// Where this node's `vxlan-overlay` (plugin and agent) is: the build's, or another
    /// release's after [`OverlayNode::use_binaries_from`].
    bin: PathBuf,
    dir: TempDir,
}

impl OverlayNode {
    /// Creates node `host` (underlay address 172.30.0.`host`, or fd00:30::`host` on an IPv6
    /// underlay) on `underlay`, configured with
    /// the plugin entry `{"type": "vxlan-overlay", "clusterCIDR", "dataDir", "ipamDir",
    /// "logFile"}` plus `fields` (etcdEndpoints or peersFile, leaseTTL, resyncSeconds...).
    /// The agent is not started.
    pub fn new(underlay: &Underlay, host: u8, fields: &Value) -> OverlayNode {
        OverlayNode::with_binaries_from(underlay, host, fields, &bin_dir())
    }

    /// As [`OverlayNode::new`], with the `vxlan-overlay` binary (plugin and agent) from `bin`:
    /// a node still running another release.
    pub fn with_binaries_from(
        underlay: &Underlay,
        host: u8,
        fields: &Value,
        bin: &Path,
    ) -> OverlayNode {
        let node = Node::new();
        let underlay_ip = underlay.addr(host);
        underlay.connect(node.netns(), underlay_ip);
        let dir = tempfile::Builder::new()
            .prefix("cnit-vx-node-")
            .tempdir()
            .expect("cannot create a node directory");
        let mut plugin = json!({
            "type": PLUGIN,
            "clusterCIDR": CLUSTER_CIDR,
            "bridge": BRIDGE,
            "dataDir": dir.path().join("data"),
            "ipamDir": dir.path().join("ipam"),
            "logFile": dir.path().join("vxlan-overlay.log"),
        });
        if let (Some(base), Some(extra)) = (plugin.as_object_mut(), fields.as_object()) {
            for (k, v) in extra {
                base.insert(k.clone(), v.clone());
            }
        }
        let net_name = unique_name("cnit-vx-");
        let conflist = json!({
            "cniVersion": CNITOOL_SPEC_VERSION, "name": net_name, "plugins": [plugin],
        });
        let conf_path = dir.path().join("vxnet.conflist");
        fs::write(&conf_path, conflist.to_string())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", conf_path.display()));
        let network = CnitoolNetwork::new(&node, &conflist, &bin.to_string_lossy());
        OverlayNode {
            agent: None,
            network,
            node,
            underlay_ip,
            plugin,
            net_name,
            bin: bin.to_path_buf(),
            dir,
        }
    }

    /// Runs this node's plugin and (at the next [`OverlayNode::start_agent`]) its agent from
    /// `bin` from now on: a node upgraded in place. Stop the agent first.
    pub fn use_binaries_from(&mut self, bin: &Path) {
        assert!(
            self.agent.is_none(),
            "stop the agent before replacing its binary"
        );
        bin.clone_into(&mut self.bin);
        self.network.set_cni_path(&bin.to_string_lossy());
    }

    /// The node namespace.
    pub fn netns(&self) -> &Netns {
        self.node.netns()
    }

    /// This node's `vxlan-overlay` binary; panics if it is missing.
    fn plugin_binary(&self) -> PathBuf {
        let path = self.bin.join(PLUGIN);
        assert!(path.is_file(), "{} not found", path.display());
        path
    }

    /// The node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The node's underlay address: its identity in the overlay.
    pub fn underlay_ip(&self) -> IpAddr {
        self.underlay_ip
    }

    /// The network name of the conflist.
    pub fn net_name(&self) -> &str {
        &self.net_name
    }

    /// The conflist file the agent reads.
    pub fn conflist_path(&self) -> PathBuf {
        self.dir.path().join("vxnet.conflist")
    }

    /// The agent's `dataDir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The pods' IPAM lease directory.
    pub fn leases(&self) -> LeaseDir {
        LeaseDir::new(&self.dir.path().join("ipam"), &self.net_name)
    }

    /// The plugin's and agent's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("vxlan-overlay.log")
    }

    /// Starts the agent; panics if it is running already.
    pub fn start_agent(&mut self) {
        assert!(self.agent.is_none(), "the agent is already running");
        let output = self.dir.path().join("agent.out");
        self.agent = Some(Agent::spawn(
            &self.bin,
            self.node.netns(),
            &self.conflist_path(),
            &output,
        ));
    }

    /// The running agent's process id, if one runs.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Agent::pid)
    }

    /// The running agent, if any.
    pub fn agent_mut(&mut self) -> Option<&mut Agent> {
        self.agent.as_mut()
    }

    /// Takes the agent out (to kill or terminate it); panics if none runs.
    pub fn take_agent(&mut self) -> Agent {
        self.agent.take().expect("no agent running on this node")
    }

    /// The subnet.env the agent wrote, if it exists and parses.
    pub fn subnet_env(&self) -> Option<SubnetEnv> {
        let text = fs::read_to_string(self.data_dir().join("subnet.env")).ok()?;
        SubnetEnv::parse(&text)
    }

    /// Waits up to [`LEASE_TIMEOUT`] for subnet.env; panics with the agent's log if it does
    /// not appear, or if the agent exits.
    pub fn wait_for_lease(&mut self) -> SubnetEnv {
        let mut env = None;
        let deadline = Instant::now() + LEASE_TIMEOUT;
        while Instant::now() < deadline {
            env = self.subnet_env();
            if env.is_some() {
                break;
            }
            if let Some(status) = self.agent.as_mut().and_then(Agent::exited) {
                panic!(
                    "agent of {} exited ({status}) before leasing:\n{}",
                    self.underlay_ip,
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        env.unwrap_or_else(|| {
            panic!(
                "no subnet.env from the agent of {} within {LEASE_TIMEOUT:?}:\n{}",
                self.underlay_ip,
                self.diagnostics()
            )
        })
    }

    /// agent.json (subnet and VTEP MAC kept across restarts), if it exists.
    pub fn agent_state(&self) -> Option<Value> {
        let text = fs::read_to_string(self.data_dir().join("agent.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The VXLAN device's per-peer state; `None` without the device.
    pub fn vxlan_state(&self) -> Option<VxlanState> {
        VxlanState::read(self.netns(), DEVICE)
    }

    /// The VXLAN device's MAC; `None` without the device.
    pub fn device_mac(&self) -> Option<String> {
        link_mac(self.netns(), DEVICE)
    }

    /// This node as a peer: subnet from subnet.env, MAC of its VXLAN device. `None` before
    /// the agent set both up.
    pub fn as_peer(&self) -> Option<Peer> {
        Some(Peer {
            subnet: self.subnet_env()?.node_subnet(),
            underlay: self.underlay_ip,
            vtep_mac: self.device_mac()?,
        })
    }

    /// The pods' network of this node as the shared bridge scenarios describe it, from its
    /// lease; panics before the lease.
    pub fn bridge_network(&self) -> BridgeNetwork {
        let env = self
            .subnet_env()
            .expect("bridge_network needs the node's subnet.env");
        BridgeNetwork {
            name: self.net_name.clone(),
            plugin: self.plugin.clone(),
            bridge: BRIDGE.to_owned(),
            pod_cidr: env.node_subnet(),
            gateway: env.gateway(),
            leases: self.leases(),
            cni_path: self.bin.to_string_lossy().into_owned(),
        }
    }

    /// Attaches `pod` through `cnitool add` inside the node, checks the result and the
    /// kernel state (address from the node's subnet, default route via its gateway, veth on
    /// the bridge, pod MTU from subnet.env) and returns the pod's address.
    pub fn add_pod(&self, pod: &Netns) -> Ipv4Addr {
        let ctx = format!("node {} cnitool add {}", self.underlay_ip, pod.name());
        let out = self.network.add(pod);
        if !out.status.success() {
            panic!(
                "{ctx}: expected success, {}\n{}",
                out.describe(),
                self.diagnostics()
            );
        }
        let result = out.expect_success(&ctx);
        let net = self.bridge_network();
        let path = pod.path();
        let expected = net.expected(CNITOOL_SPEC_VERSION, CNITOOL_IFNAME, &path);
        let address = check_add_result(&ctx, &result, &expected);
        let host_veth = host_veth_name(&result, BRIDGE)
            .unwrap_or_else(|| panic!("{ctx}: result names no host veth: {result}"));
        assert_attachment_in_kernel(
            &ctx,
            &self.node,
            pod,
            CNITOOL_IFNAME,
            address,
            &net,
            &host_veth,
        );
        let mtu = pod
            .link_details(CNITOOL_IFNAME)
            .and_then(|l| l["mtu"].as_u64());
        let want = self.subnet_env().map(|e| u64::from(e.mtu));
        assert_eq!(mtu, want, "{ctx}: pod MTU must be subnet.env's FLANNEL_MTU");
        address.addr()
    }

    /// `cnitool add` for `pod` without judging the outcome.
    pub fn cnitool_add(&self, pod: &Netns) -> crate::plugin::PluginOutput {
        self.network.add(pod)
    }

    /// `cnitool check` for `pod` (libcni gives the cached ADD result as prevResult).
    pub fn cnitool_check(&self, pod: &Netns) -> crate::plugin::PluginOutput {
        self.network.check(pod)
    }

    /// `cnitool del` for `pod`.
    pub fn cnitool_del(&self, pod: &Netns) -> crate::plugin::PluginOutput {
        self.network.del(pod)
    }

    /// A direct plugin run (no cnitool) of `verb` for `pod`, with the single-plugin config at
    /// [`CNITOOL_SPEC_VERSION`]: for checking error codes, which cnitool does not print.
    pub fn plugin_run(&self, verb: &str, pod: &Netns, container_id: &str) -> PluginRun {
        let mut conf = self.plugin.clone();
        conf["cniVersion"] = json!(CNITOOL_SPEC_VERSION);
        conf["name"] = json!(self.net_name);
        PluginRun::new(&self.plugin_binary(), &self.node)
            .command(verb)
            .container_id(container_id)
            .netns(&pod.path())
            .ifname(CNITOOL_IFNAME)
            .cni_path(&self.bin.to_string_lossy())
            .config(&conf)
    }

    /// Everything the agent logged: its `logFile`, then its stdout and stderr.
    pub fn logs(&self) -> String {
        let read = |p: &Path| fs::read_to_string(p).unwrap_or_default();
        format!(
            "{}{}",
            read(&self.log_path()),
            read(&self.dir.path().join("agent.out"))
        )
    }

    /// The node's log tail, agent output and VXLAN state, for failure messages.
    pub fn diagnostics(&self) -> String {
        format!(
            "--- node {} ({}) log:\n{}\n--- agent stdout/stderr:\n{}\n--- {DEVICE}: {:?}",
            self.underlay_ip,
            self.netns().name(),
            tail(&self.log_path(), 25),
            tail(&self.dir.path().join("agent.out"), 10),
            self.vxlan_state()
        )
    }
}

/// A pod of the overlay: its namespace, address and node index.
pub struct OverlayPod {
    /// The pod's namespace.
    pub netns: Netns,
    /// Its address.
    pub addr: Ipv4Addr,
    /// Index of its node in [`OverlayCluster::nodes`].
    pub node: usize,
}

/// An etcd-backed overlay: the underlay, etcd, and nodes 1..=n each running an agent. etcd is
/// the single plaintext [`EtcdServer`] unless a test brings another ([`on_etcd`](Self::on_etcd)),
/// like the TLS cluster of [`crate::etcd_cluster`].
pub struct OverlayCluster<E: Etcdctl = EtcdServer> {
    // Drop order: pods, then nodes (agents die first), then etcd, then the underlay.
    /// Pods attached so far.
    pub pods: Vec<OverlayPod>,
    /// The nodes; node `i` has underlay address 172.30.0.`i + 1`.
    pub nodes: Vec<OverlayNode>,
    /// etcd.
    pub etcd: E,
    /// The underlay bridge.
    pub underlay: Underlay,
    /// `leaseTTL` of every agent, in seconds.
    pub lease_ttl: u64,
    /// `resyncSeconds` of every agent.
    pub resync_seconds: u64,
    /// More plugin fields for every node (a JSON object), like `{"txChecksumOffload": true}`
    /// or the etcd TLS files.
    pub extra_fields: Value,
}

impl OverlayCluster {
    /// Starts the underlay, etcd and `n` nodes with agents, and waits for every lease.
    pub fn start(n: u8, lease_ttl: u64, resync_seconds: u64) -> OverlayCluster {
        OverlayCluster::start_with(n, lease_ttl, resync_seconds, &json!({}))
    }

    /// [`start`](Self::start) with `extra_fields` added to every node's plugin config.
    pub fn start_with(
        n: u8,
        lease_ttl: u64,
        resync_seconds: u64,
        extra_fields: &Value,
    ) -> OverlayCluster {
        OverlayCluster::start_on(Underlay::new(), n, lease_ttl, resync_seconds, extra_fields)
    }

    /// [`start_with`](Self::start_with) on a given underlay (an IPv6 one, say): etcd and
    /// every node get addresses of its family.
    pub fn start_on(
        underlay: Underlay,
        n: u8,
        lease_ttl: u64,
        resync_seconds: u64,
        extra_fields: &Value,
    ) -> OverlayCluster {
        let etcd = start_etcd(&underlay);
        OverlayCluster::on_etcd(underlay, etcd, n, lease_ttl, resync_seconds, extra_fields)
    }
}

impl<E: Etcdctl> OverlayCluster<E> {
    /// `n` nodes with agents on `underlay`, whose agents use the running `etcd` (started on
    /// that underlay); waits for every lease.
    pub fn on_etcd(
        underlay: Underlay,
        etcd: E,
        n: u8,
        lease_ttl: u64,
        resync_seconds: u64,
        extra_fields: &Value,
    ) -> OverlayCluster<E> {
        let mut cluster = OverlayCluster {
            pods: Vec::new(),
            nodes: Vec::new(),
            etcd,
            underlay,
            lease_ttl,
            resync_seconds,
            extra_fields: extra_fields.clone(),
        };
        for _ in 0..n {
            cluster.add_node();
        }
        for node in &mut cluster.nodes {
            node.wait_for_lease();
        }
        cluster
    }

    /// The plugin fields of this cluster's nodes: etcd endpoint, prefix, TTL, resync and the
    /// extra fields.
    pub fn node_fields(&self) -> Value {
        let mut fields = json!({
            "etcdEndpoints": self.etcd.endpoints(),
            "etcdPrefix": ETCD_PREFIX,
            "leaseTTL": self.lease_ttl,
            "resyncSeconds": self.resync_seconds,
        });
        if let (Some(base), Some(extra)) = (fields.as_object_mut(), self.extra_fields.as_object()) {
            for (k, v) in extra {
                base.insert(k.clone(), v.clone());
            }
        }
        fields
    }

    /// Adds the next node and starts its agent (without waiting for its lease); returns its
    /// index.
    pub fn add_node(&mut self) -> usize {
        self.add_node_with(&json!({}))
    }

    /// [`add_node`](Self::add_node) with `fields` (a JSON object) over this cluster's node
    /// fields: a node with its own TLS files, say.
    pub fn add_node_with(&mut self, fields: &Value) -> usize {
        self.add_node_running(fields, &bin_dir())
    }

    /// [`add_node_with`](Self::add_node_with), the node's plugin and agent taken from `bin`:
    /// a node still on another release.
    pub fn add_node_running(&mut self, fields: &Value, bin: &Path) -> usize {
        let index = self.nodes.len();
        let host = u8::try_from(index + 1).expect("fewer than 100 nodes");
        let mut all = self.node_fields();
        if let (Some(base), Some(extra)) = (all.as_object_mut(), fields.as_object()) {
            for (k, v) in extra {
                base.insert(k.clone(), v.clone());
            }
        }
        let mut node = OverlayNode::with_binaries_from(&self.underlay, host, &all, bin);
        node.start_agent();
        self.nodes.push(node);
        index
    }

    /// The subnet records in etcd; `None` when etcd does not answer.
    pub fn records(&self) -> Option<Vec<Peer>> {
        records(&self.etcd, ETCD_PREFIX)
    }

    /// Attaches a new pod to node `node` through cnitool; returns its index in `pods`.
    pub fn add_pod(&mut self, node: usize) -> usize {
        let netns = Netns::new("cnit-vxpod-");
        let addr = self.nodes[node].add_pod(&netns);
        self.pods.push(OverlayPod { netns, addr, node });
        self.pods.len() - 1
    }

    /// Whether every node in `nodes` holds exactly the other nodes of `nodes` as peers, as
    /// etcd records them (and etcd records each of them).
    pub fn converged(&self, nodes: &[usize]) -> bool {
        let Some(records) = self.records() else {
            return false;
        };
        let members: Vec<Peer> = nodes
            .iter()
            .filter_map(|&i| {
                let ip = self.nodes[i].underlay_ip();
                records.iter().find(|r| r.underlay == ip).cloned()
            })
            .collect();
        if members.len() != nodes.len() {
            return false;
        }
        nodes.iter().zip(&members).all(|(&i, me)| {
            let others: Vec<Peer> = members.iter().filter(|p| *p != me).cloned().collect();
            self.nodes[i]
                .vxlan_state()
                .is_some_and(|st| st.programs_exactly(&others))
        })
    }

    /// Waits up to `timeout` for [`converged`](Self::converged); panics with diagnostics if
    /// it does not happen.
    pub fn wait_converged(&self, nodes: &[usize], timeout: Duration, ctx: &str) {
        if !eventually(timeout, || self.converged(nodes)) {
            panic!(
                "{ctx}: nodes {nodes:?} did not converge within {timeout:?}; etcd holds {:?}\n{}",
                self.records(),
                self.diagnostics()
            );
        }
    }

    /// Every node's diagnostics and etcd's log tail.
    pub fn diagnostics(&self) -> String {
        let mut text = String::new();
        for n in &self.nodes {
            text.push_str(&n.diagnostics());
            text.push('\n');
        }
        text.push_str("--- etcd log:\n");
        text.push_str(&self.etcd.log_tail(15));
        text
    }
}

impl<E: Etcdctl> Drop for OverlayCluster<E> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("overlay cluster state at failure:\n{}", self.diagnostics());
        }
    }
}
