//! Real flannel as a peer of our overlay: flanneld (built from its Go module by
//! `conformance/scripts/build-flannel.sh`, once per pinned release, kept under /var/tmp) in a
//! node namespace, with pods attached the way a flannel node attaches them.
//!
//! flannel's own CNI plugin (`flannel`) only reads flanneld's subnet.env and delegates to the
//! reference `bridge` plugin with `host-local`; [`FlannelNode`] does that delegation itself:
//! Debian's `bridge` + `host-local` (from `/usr/lib/cni`) on bridge [`FLANNEL_BRIDGE`], with the
//! subnet, gateway and MTU of the subnet.env flanneld wrote, no masquerade (the tests run
//! flanneld with `--ip-masq=false`). What is under test is flanneld's registry records or node
//! annotations and its VXLAN dataplane against ours, not flannel's plugin.
//!
//! Everything flanneld creates (its VXLAN device `flannel.<vni>`, routes, neighbours, FDB
//! entries, the nftables tables it always sets up) lives in the node's namespace and goes with
//! it; its files live in a per-node temporary directory; the process is killed when the node is
//! dropped, so a failing test leaves nothing behind.

use std::fs::{self, File};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::cnitool::CnitoolNetwork;
use crate::etcd::tail;
use crate::kube::run_ok;
use crate::netns::{Netns, Node};
use crate::overlay::{link_mac, Peer, SubnetEnv, VxlanState};
use crate::plugin::{Expect, REFERENCE_PLUGIN_DIR};
use crate::scenarios::CNITOOL_IFNAME;
use crate::{repo_root, unique_name};

/// The flannel release the tests run (the script's default; keep the two in step).
pub const FLANNEL_VERSION: &str = "v0.28.10";
/// flanneld's VXLAN device for VNI 1 (`flannel.<vni>`).
pub const FLANNEL_DEVICE: &str = "flannel.1";
/// The bridge the flannel node's pods attach to (flannel's CNI plugin's default, `cni0`).
pub const FLANNEL_BRIDGE: &str = "cni0";
/// flanneld's default etcd prefix (`--etcd-prefix`).
pub const FLANNEL_ETCD_PREFIX: &str = "/coreos.com/network";
/// How long flanneld may take from start to a written subnet.env: it retries etcd and the
/// API server, and its kube subnet manager waits for its node informer's first sync.
pub const FLANNEL_LEASE_TIMEOUT: Duration = Duration::from_secs(60);

/// The path of flanneld, building it first if it is missing (`build-flannel.sh`: a no-op when
/// present). Panics with the script's output if the build fails.
pub fn flanneld_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let out = run_ok(
            Command::new(repo_root().join("conformance/scripts/build-flannel.sh"))
                .env("FLANNEL_VERSION", FLANNEL_VERSION),
        );
        let path = PathBuf::from(
            out.trim()
                .lines()
                .last()
                .expect("build-flannel.sh prints flanneld's path"),
        );
        assert!(path.is_file(), "{} was not built", path.display());
        path
    })
    .clone()
}

/// Where flanneld takes its subnet and publishes its VTEP.
#[derive(Clone, Debug)]
pub enum FlannelRegistry {
    /// etcd v3 (`--etcd-endpoints`, `--etcd-prefix`); the network config is the prefix's
    /// `config` key, which the test writes as a flannel operator does.
    Etcd {
        /// Client URLs.
        endpoints: Vec<String>,
        /// Key prefix.
        prefix: String,
    },
    /// The Kubernetes API (`--kube-subnet-mgr`): the node's `spec.podCIDR`, annotations on its
    /// Node; the network config comes from a net-conf.json file, as the DaemonSet's ConfigMap
    /// gives it.
    Kube {
        /// A kubeconfig reachable from the node's namespace.
        kubeconfig: PathBuf,
        /// The Node's name (`NODE_NAME`, as the downward API gives it).
        node_name: String,
        /// net-conf.json: `{"Network", "Backend": {"Type": "vxlan"}}`.
        net_conf: Value,
    },
}

/// flanneld's network config for a vxlan network on `network` with default VNI (1) and port
/// (0, the kernel's 8472): what `<prefix>/config` or net-conf.json holds.
///
/// `EnableNFTables`: flanneld's iptables mode refuses to start unless `br_netfilter` is loaded
/// (a kernel module: loading it would change how bridged traffic is filtered in every
/// namespace of the machine, the other suites' included, for good); its nftables mode does not
/// ask for it. Either mode only decides how flanneld writes its own masquerade and forward
/// rules, which the tests turn off; the VXLAN dataplane and the records are the same.
pub fn vxlan_net_conf(network: &str) -> Value {
    json!({"Network": network, "EnableNFTables": true, "Backend": {"Type": "vxlan"}})
}

/// A node running flanneld, with pods on the reference bridge plugin.
pub struct FlannelNode {
    // Drop order: flanneld dies first, then cnitool's cache entries go, then the namespace,
    // then the directory.
    flanneld: Option<Child>,
    network: Option<CnitoolNetwork>,
    node: Node,
    underlay_ip: IpAddr,
    net_name: String,
    dir: TempDir,
}

impl FlannelNode {
    /// flanneld on `node` (already on its underlay, at `underlay_ip` on link `iface`), with
    /// `registry`; not waiting for its lease.
    pub fn start(node: Node, underlay_ip: IpAddr, iface: &str, registry: FlannelRegistry) -> Self {
        let flanneld = flanneld_path();
        let dir = tempfile::Builder::new()
            .prefix("cnit-flannel-")
            .tempdir()
            .expect("cannot create a flannel node directory");
        let log = dir.path().join("flanneld.log");
        let out = File::create(&log).expect("flanneld log");
        let err = out.try_clone().expect("cannot duplicate a file handle");
        let mut cmd = node.netns().command(&flanneld);
        cmd.env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .arg(format!("--iface={iface}"))
            .arg(format!(
                "--subnet-file={}",
                dir.path().join("subnet.env").display()
            ))
            // Pods' traffic leaving the cluster is not under test, and our agent's
            // masquerade is off in these tests too.
            .arg("--ip-masq=false")
            // The namespace's FORWARD policy is ACCEPT; flannel's ACCEPT rules for the
            // cluster range would change nothing.
            .arg("--iptables-forward-rules=false");
        match &registry {
            FlannelRegistry::Etcd { endpoints, prefix } => {
                cmd.arg(format!("--etcd-endpoints={}", endpoints.join(",")))
                    .arg(format!("--etcd-prefix={prefix}"));
            }
            FlannelRegistry::Kube {
                kubeconfig,
                node_name,
                net_conf,
            } => {
                let conf = dir.path().join("net-conf.json");
                fs::write(&conf, net_conf.to_string()).expect("net-conf.json");
                cmd.arg("--kube-subnet-mgr")
                    .arg(format!("--kubeconfig-file={}", kubeconfig.display()))
                    .arg(format!("--net-config-path={}", conf.display()))
                    .env("NODE_NAME", node_name);
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", flanneld.display()));
        FlannelNode {
            flanneld: Some(child),
            network: None,
            node,
            underlay_ip,
            net_name: unique_name("cnit-fl-"),
            dir,
        }
    }

    /// The node's namespace.
    pub fn netns(&self) -> &Netns {
        self.node.netns()
    }

    /// The node's underlay address.
    pub fn underlay_ip(&self) -> IpAddr {
        self.underlay_ip
    }

    /// The subnet.env flanneld wrote, if it exists and parses.
    pub fn subnet_env(&self) -> Option<SubnetEnv> {
        let text = fs::read_to_string(self.dir.path().join("subnet.env")).ok()?;
        SubnetEnv::parse(&text)
    }

    /// Waits up to [`FLANNEL_LEASE_TIMEOUT`] for flanneld's subnet.env; panics with its log if
    /// it does not come or flanneld exits.
    pub fn wait_for_lease(&mut self) -> SubnetEnv {
        let deadline = Instant::now() + FLANNEL_LEASE_TIMEOUT;
        loop {
            if let Some(env) = self.subnet_env() {
                return env;
            }
            if let Some(status) = self.flanneld.as_mut().and_then(|c| c.try_wait().ok()?) {
                panic!(
                    "flanneld on {} exited ({status}) before writing subnet.env:\n{}",
                    self.underlay_ip,
                    self.log_tail(40)
                );
            }
            assert!(
                Instant::now() < deadline,
                "no subnet.env from flanneld on {} within {FLANNEL_LEASE_TIMEOUT:?}:\n{}",
                self.underlay_ip,
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Panics with flanneld's log if it is not running.
    pub fn assert_running(&mut self) {
        let log = self.log_tail(40);
        match self.flanneld.as_mut() {
            None => panic!("flanneld on {} was stopped", self.underlay_ip),
            Some(c) => {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("flanneld on {} exited ({status}):\n{log}", self.underlay_ip);
                }
            }
        }
    }

    /// Kills flanneld (SIGKILL): the node is gone, and nothing of its record or annotations
    /// is withdrawn (flanneld withdraws nothing on SIGTERM either).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.flanneld.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// flanneld's VXLAN device's per-peer state; `None` before flanneld made the device.
    pub fn vxlan_state(&self) -> Option<VxlanState> {
        VxlanState::read(self.netns(), FLANNEL_DEVICE)
    }

    /// This node as a peer: the subnet from subnet.env, the MAC of `flannel.1`.
    pub fn as_peer(&self) -> Option<Peer> {
        Some(Peer {
            subnet: self.subnet_env()?.node_subnet(),
            underlay: self.underlay_ip,
            vtep_mac: link_mac(self.netns(), FLANNEL_DEVICE)?,
        })
    }

    /// Attaches `pod` as flannel's CNI plugin would (bridge `cni0` + host-local on the
    /// subnet.env's subnet, gateway on the bridge, pod MTU `FLANNEL_MTU`, no masquerade)
    /// through cnitool; returns the pod's address. Panics before the lease or if ADD fails.
    pub fn add_pod(&mut self, pod: &Netns) -> Ipv4Addr {
        let env = self
            .subnet_env()
            .expect("add_pod needs flanneld's subnet.env");
        if self.network.is_none() {
            let conflist = json!({
                "cniVersion": crate::scenarios::CNITOOL_SPEC_VERSION,
                "name": self.net_name,
                "plugins": [{
                    "type": "bridge",
                    "bridge": FLANNEL_BRIDGE,
                    "isGateway": true,
                    "ipMasq": false,
                    "mtu": env.mtu,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{
                            "subnet": env.node_subnet().to_string(),
                            "gateway": env.gateway().to_string(),
                        }]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": self.dir.path().join("ipam"),
                    },
                }],
            });
            self.network = Some(CnitoolNetwork::new(
                &self.node,
                &conflist,
                REFERENCE_PLUGIN_DIR,
            ));
        }
        let network = self.network.as_ref().expect("set above");
        let ctx = format!(
            "flannel node {} cnitool add {}",
            self.underlay_ip,
            pod.name()
        );
        let result = network.add(pod).expect_success(&ctx);
        let addr: Ipv4Addr = result["ips"]
            .as_array()
            .and_then(|ips| ips.first())
            .and_then(|ip| ip["address"].as_str())
            .and_then(|a| a.split_once('/'))
            .and_then(|(a, _)| a.parse().ok())
            .unwrap_or_else(|| panic!("{ctx}: no IPv4 address in the result: {result}"));
        assert!(
            env.node_subnet().contains(&addr),
            "{ctx}: {addr} is not in flannel's subnet {}",
            env.node_subnet()
        );
        let mtu = pod
            .link_details(CNITOOL_IFNAME)
            .and_then(|l| l["mtu"].as_u64());
        assert_eq!(
            mtu,
            Some(u64::from(env.mtu)),
            "{ctx}: pod MTU must be FLANNEL_MTU"
        );
        addr
    }

    /// The last `n` lines of flanneld's log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.dir.path().join("flanneld.log"), n)
    }

    /// flanneld's log tail and its device state, for failure messages.
    pub fn diagnostics(&self) -> String {
        format!(
            "--- flannel node {} ({}) flanneld log:\n{}\n--- {FLANNEL_DEVICE}: {:?}",
            self.underlay_ip,
            self.netns().name(),
            self.log_tail(30),
            self.vxlan_state()
        )
    }

    /// The node's working directory (subnet.env, flanneld's log, host-local's leases).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for FlannelNode {
    fn drop(&mut self) {
        self.kill();
    }
}
