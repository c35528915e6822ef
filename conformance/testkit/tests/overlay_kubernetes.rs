//! vxlan-overlay with `"registry": "kubernetes"` against a real kube-apiserver and
//! kube-controller-manager (RBAC enforced): node namespaces on an underlay that also reaches
//! the API server, a Node object per node created through the API (the controller-manager
//! allocates its podCIDR), an agent per node authenticating with a token of the
//! ServiceAccount bound to exactly the ClusterRole of
//! `packaging/kubernetes/vxlan-overlay-kubernetes.yaml`, and pods attached with the plugin.
//! Judged: pods ping across every pair of nodes; each Node carries flannel's annotations
//! matching its VTEP and `NetworkUnavailable=False`; a deleted Node's peer is gone from the
//! others within seconds; while the API server is down traffic keeps flowing, and once it is
//! back a Node added then is programmed; a token without the role makes the agent exit with
//! an error naming the missing rights.
//!
//! A test binary of its own: its control plane enforces RBAC and is restarted by a test.
//! Run as root, after `cargo build --release -p vxlan-overlay -p vxlan-overlay-agent`:
//! ```text
//! cargo test --release -p cni-testkit --test overlay_kubernetes
//! ```

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cni_testkit::kube::{time_until, ControlPlane, CONTROL_PLANE_IP};
use cni_testkit::netns::Netns;
use cni_testkit::overlay::{OverlayNode, Peer, Underlay};
use cni_testkit::ping_stream::{assert_streams_lost_nothing, PingStream};
use cni_testkit::plugin::bin_dir;
use cni_testkit::traffic::ping;
use cni_testkit::{eventually, repo_root, require_root, unique_link_name, unique_name};
use ipnet::Ipv4Net;
use serde_json::{json, Value};

/// The controller-manager's `--cluster-cidr`, the overlay's `clusterCIDR`.
const CLUSTER_CIDR: &str = cni_testkit::kube::CLUSTER_CIDR;
/// The control plane's address on the overlay's underlay.
const API_ON_UNDERLAY: u8 = 200;
/// The annotation prefix flannel uses.
const FLANNEL: &str = "flannel.alpha.coreos.com/";
/// How soon a change of the Nodes must reach every agent's dataplane.
const PROPAGATION: Duration = Duration::from_secs(10);

/// One test at a time: each plugs its underlay into the shared control plane's namespace
/// with the same addresses.
static UNDERLAY_SLOT: Mutex<()> = Mutex::new(());

fn slot() -> MutexGuard<'static, ()> {
    UNDERLAY_SLOT.lock().unwrap_or_else(|p| p.into_inner())
}

/// The RBAC objects of the packaging manifest (its DaemonSet left out: no kubelet runs it).
fn apply_packaging_rbac(cp: &ControlPlane) {
    let manifest =
        fs::read_to_string(repo_root().join("packaging/kubernetes/vxlan-overlay-kubernetes.yaml"))
            .expect("packaging manifest");
    let rbac: Vec<&str> = manifest
        .split("\n---\n")
        .filter(|d| d.contains("kind: ") && !d.contains("kind: DaemonSet"))
        .collect();
    assert_eq!(rbac.len(), 3, "ServiceAccount, ClusterRole, binding");
    cp.apply(&rbac.join("\n---\n"));
}

/// A token of `service_account` in kube-system (created when missing).
fn token_of(cp: &ControlPlane, service_account: &str) -> String {
    let _ = cp.try_kubectl(&[
        "-n",
        "kube-system",
        "create",
        "serviceaccount",
        service_account,
    ]);
    cp.kubectl(&[
        "-n",
        "kube-system",
        "create",
        "token",
        service_account,
        "--duration=2h",
    ])
    .trim()
    .to_string()
}

/// A kubeconfig for `token` reaching the API server at its control plane address.
fn kubeconfig(cp: &ControlPlane, dir: &Path, token: &str) -> PathBuf {
    let path = dir.join(format!("{}.kubeconfig", unique_name("agent")));
    fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    \
             server: https://{CONTROL_PLANE_IP}:6443\n    certificate-authority: {}\n\
             users:\n- name: agent\n  user:\n    token: {token}\ncontexts:\n- name: test\n  \
             context:\n    cluster: test\n    user: agent\ncurrent-context: test\n",
            cp.ca.display()
        ),
    )
    .expect("kubeconfig");
    path
}

/// The overlay's underlay, with the control plane's namespace on it (at host
/// [`API_ON_UNDERLAY`]): nodes reach the API server through it.
struct Site {
    cp: Arc<ControlPlane>,
    underlay: Underlay,
    port: String,
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let cp = ControlPlane::shared_rbac();
        let underlay = Underlay::new();
        let port = unique_link_name("ul");
        underlay.attach(cp.netns(), underlay.addr(API_ON_UNDERLAY), &port, false);
        apply_packaging_rbac(&cp);
        Site {
            cp,
            underlay,
            port,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// A Node object named `name` (no kubelet: created through the API).
    fn create_node(&self, name: &str, extra_annotations: &Value) {
        self.cp.apply(
            &json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "annotations": extra_annotations},
            })
            .to_string(),
        );
    }

    /// The Node's podCIDR once the controller-manager set it.
    fn wait_pod_cidr(&self, name: &str) -> Ipv4Net {
        let mut cidr = None;
        let ok = eventually(Duration::from_secs(30), || {
            cidr = self
                .cp
                .try_kubectl(&["get", "node", name, "-o", "jsonpath={.spec.podCIDR}"])
                .ok()
                .and_then(|c| c.trim().parse().ok());
            cidr.is_some()
        });
        assert!(ok, "Node {name} got no podCIDR:\n{}", self.cp.logs());
        cidr.expect("checked")
    }

    /// Node `host` on the underlay running the agent as Node `name` with `token`.
    fn node(&self, host: u8, name: &str, token: &str) -> OverlayNode {
        let kubeconfig = kubeconfig(&self.cp, self.dir.path(), token);
        let node = OverlayNode::new(
            &self.underlay,
            host,
            &json!({
                "registry": "kubernetes",
                "kubeconfig": kubeconfig,
                "nodeName": name,
                "clusterCIDR": CLUSTER_CIDR,
                "resyncSeconds": 5,
            }),
        );
        node.netns().ip_ok(&[
            "route",
            "add",
            &format!("{CONTROL_PLANE_IP}/32"),
            "via",
            &self.underlay.addr(API_ON_UNDERLAY).to_string(),
        ]);
        node
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = self.cp.netns().ip(&["link", "del", &self.port]);
    }
}

/// A node of the test: its overlay node, Node name, and a pod.
struct KubeOverlayNode {
    name: String,
    node: OverlayNode,
    pod: Netns,
    pod_ip: Ipv4Addr,
}

fn start_node(site: &Site, host: u8, token: &str) -> KubeOverlayNode {
    let name = unique_name("vxk-").to_lowercase().replace('_', "-");
    site.create_node(&name, &json!({}));
    let mut node = site.node(host, &name, token);
    node.start_agent();
    let env = node.wait_for_lease();
    let cidr = site.wait_pod_cidr(&name);
    assert_eq!(
        env.node_subnet(),
        cidr,
        "subnet.env must hold Node {name}'s podCIDR"
    );
    let pod = Netns::new("cnit-vxkpod-");
    let pod_ip = node.add_pod(&pod);
    KubeOverlayNode {
        name,
        node,
        pod,
        pod_ip,
    }
}

fn annotations(cp: &ControlPlane, name: &str) -> Value {
    cp.get_json(&["get", "node", name])["metadata"]["annotations"].clone()
}

fn network_unavailable(cp: &ControlPlane, name: &str) -> Option<(String, String)> {
    let node = cp.get_json(&["get", "node", name]);
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "NetworkUnavailable")
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
}

/// `cni-suite doctor --json` on `n` (its conflist's directory as the conf dir): the checks
/// whose name starts with `prefix`, by name.
fn doctor_checks(n: &KubeOverlayNode, prefix: &str) -> Vec<(String, String, String)> {
    let conf_dir = n
        .node
        .conflist_path()
        .parent()
        .expect("conflist dir")
        .to_path_buf();
    let out = n
        .node
        .netns()
        .command(bin_dir().join("cni-suite"))
        .args(["doctor", "--json", "--conf-dir"])
        .arg(&conf_dir)
        .arg("--bin-dir")
        .arg(bin_dir())
        .output()
        .expect("cni-suite runs");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json is not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let checks = report["checks"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no checks in {report}"));
    checks
        .iter()
        .filter(|c| c["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_string(),
                c["status"].as_str().unwrap_or_default().to_string(),
                c["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn as_peer(n: &KubeOverlayNode) -> Peer {
    n.node.as_peer().expect("the node's subnet and device")
}

fn assert_all_ping(nodes: &[KubeOverlayNode], ctx: &str) {
    let mut failed = Vec::new();
    for a in nodes {
        for b in nodes {
            if a.name != b.name && !ping(&a.pod, b.pod_ip) {
                failed.push(format!("{} -> {}", a.pod_ip, b.pod_ip));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{ctx}: pings failed: {failed:?}\n{}",
        nodes
            .iter()
            .map(|n| n.node.diagnostics())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn three_nodes_on_the_kubernetes_registry_ping_publish_flannels_annotations_and_follow_the_nodes() {
    require_root();
    let _slot = slot();
    let site = Site::new();
    let token = token_of(&site.cp, "vxlan-overlay-agent");
    let mut nodes: Vec<KubeOverlayNode> = (1..=3).map(|h| start_node(&site, h, &token)).collect();

    // Each agent programs the two others, and pods reach across every pair.
    for n in &nodes {
        let others: Vec<Peer> = nodes
            .iter()
            .filter(|o| o.name != n.name)
            .map(as_peer)
            .collect();
        let ok = eventually(PROPAGATION, || {
            n.node
                .vxlan_state()
                .is_some_and(|s| s.programs_exactly(&others))
        });
        assert!(
            ok,
            "node {} does not program exactly {others:?}:\n{}",
            n.name,
            n.node.diagnostics()
        );
    }
    assert_all_ping(&nodes, "three nodes");

    // flannel's annotations, as flannel writes them, and the condition.
    for n in &nodes {
        let a = annotations(&site.cp, &n.name);
        let mac = n.node.device_mac().expect("device MAC");
        let want = [
            ("backend-type", "vxlan".to_string()),
            ("backend-data", format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#)),
            ("public-ip", n.node.underlay_ip().to_string()),
            ("kube-subnet-manager", "true".to_string()),
        ];
        for (key, value) in want {
            assert_eq!(
                a[format!("{FLANNEL}{key}")].as_str(),
                Some(value.as_str()),
                "Node {} annotation {key}: {a}",
                n.name
            );
        }
        let cond = eventually(PROPAGATION, || {
            network_unavailable(&site.cp, &n.name)
                .is_some_and(|(status, reason)| status == "False" && reason == "VxlanOverlayIsUp")
        });
        assert!(
            cond,
            "Node {}: NetworkUnavailable is {:?}",
            n.name,
            network_unavailable(&site.cp, &n.name)
        );
    }

    // cni-suite doctor: podCIDR, annotations and peers, all ok.
    let checks = doctor_checks(&nodes[0], "kube-");
    assert_eq!(
        checks.len(),
        3,
        "kube-pod-cidr, kube-annotations, kube-peers: {checks:?}"
    );
    for (name, status, message) in &checks {
        assert_eq!(status, "ok", "{name}: {message}");
    }
    assert!(
        checks
            .iter()
            .any(|(n, _, m)| n.starts_with("kube-peers") && m.contains("2 peer Node(s)")),
        "{checks:?}"
    );

    // A Node deleted: its peer leaves the others within seconds.
    let gone = nodes.pop().expect("three nodes");
    let gone_peer = as_peer(&gone);
    let started = Instant::now();
    site.cp.kubectl(&["delete", "node", &gone.name]);
    for n in &nodes {
        let took = time_until(started, PROPAGATION, || {
            n.node
                .vxlan_state()
                .is_some_and(|s| !s.mentions(&gone_peer))
        });
        assert!(
            took.is_some(),
            "node {} still programs deleted Node {}: {:?}\n{}",
            n.name,
            gone.name,
            n.node.vxlan_state(),
            n.node.diagnostics()
        );
        eprintln!("deleted Node removed on {} after {:?}", n.name, took);
    }
    drop(gone);

    // The API server goes away: the dataplane keeps carrying traffic, untouched.
    let streams = vec![
        PingStream::start(&nodes[0].pod, nodes[1].pod_ip, Duration::from_millis(100)),
        PingStream::start(&nodes[1].pod, nodes[0].pod_ip, Duration::from_millis(100)),
    ];
    let outage = Instant::now();
    site.cp.stop_apiserver();
    std::thread::sleep(Duration::from_secs(8));
    for n in &mut nodes {
        assert!(
            n.node.agent_mut().and_then(|a| a.exited()).is_none(),
            "the agent of {} exited while the API server was down:\n{}",
            n.name,
            n.node.diagnostics()
        );
    }
    site.cp.start_apiserver();
    // A Node joins after the restart (a flannel-style peer: annotations as flanneld writes
    // them): the agents, watching again, program it.
    let joined = unique_name("vxk-late-").to_lowercase().replace('_', "-");
    let joined_mac = "0a:58:0a:f4:07:01";
    let joined_ip: IpAddr = site.underlay.addr(77);
    site.create_node(
        &joined,
        &Value::Object(
            [
                ("backend-type", "vxlan".to_string()),
                (
                    "backend-data",
                    format!(r#"{{"VNI":1,"VtepMAC":"{joined_mac}"}}"#),
                ),
                ("public-ip", joined_ip.to_string()),
                ("kube-subnet-manager", "true".to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (format!("{FLANNEL}{k}"), Value::String(v)))
            .collect(),
        ),
    );
    let joined_peer = Peer {
        subnet: site.wait_pod_cidr(&joined),
        underlay: joined_ip,
        vtep_mac: joined_mac.to_string(),
    };
    for n in &nodes {
        let ok = eventually(Duration::from_secs(30), || {
            n.node
                .vxlan_state()
                .is_some_and(|s| s.programs(&joined_peer))
        });
        assert!(
            ok,
            "node {} did not program Node {joined} added after the API server restart:\n{}",
            n.name,
            n.node.diagnostics()
        );
    }
    for n in &nodes {
        let lists = n.node.logs().matches("listed ").count();
        assert!(
            lists >= 2,
            "node {} listed the Nodes {lists} time(s): it must list again after the outage:\n{}",
            n.name,
            n.node.diagnostics()
        );
    }
    assert_streams_lost_nothing(streams, outage, "the API server outage");
    assert_all_ping(&nodes, "after the API server restart");
    // doctor notices annotations that no longer match the local VTEP.
    site.cp.kubectl(&[
        "annotate",
        "node",
        &nodes[0].name,
        "--overwrite",
        &format!(r#"{FLANNEL}backend-data={{"VNI":1,"VtepMAC":"0a:00:00:00:00:01"}}"#),
    ]);
    let checks = doctor_checks(&nodes[0], "kube-annotations");
    assert!(
        checks
            .iter()
            .any(|(_, status, m)| status == "fail" && m.contains("0a:00:00:00:00:01")),
        "{checks:?}"
    );
    site.cp.kubectl(&["delete", "node", &joined]);
    for n in &nodes {
        let _ = site
            .cp
            .try_kubectl(&["delete", "node", &n.name, "--wait=false"]);
    }
}

#[test]
fn an_agent_without_the_cluster_role_exits_naming_the_rights_it_needs() {
    require_root();
    let _slot = slot();
    let site = Site::new();
    // A ServiceAccount bound to nothing.
    let token = token_of(
        &site.cp,
        &unique_name("norole").to_lowercase().replace('_', "-"),
    );
    let name = unique_name("vxk-denied-").to_lowercase().replace('_', "-");
    site.create_node(&name, &json!({}));
    let mut node = site.node(9, &name, &token);
    node.start_agent();
    let mut status = None;
    let exited = eventually(Duration::from_secs(30), || {
        status = node.agent_mut().and_then(|a| a.exited());
        status.is_some()
    });
    assert!(
        exited,
        "the agent kept running without rights:\n{}",
        node.diagnostics()
    );
    assert!(
        !status.expect("exited").success(),
        "a denied agent must fail"
    );
    let logs = node.logs();
    for words in [
        "forbidden",
        "nodes",
        "ClusterRole",
        "vxlan-overlay-kubernetes.yaml",
    ] {
        assert!(
            logs.contains(words),
            "the agent's error must say {words:?}:\n{logs}"
        );
    }
    assert!(
        node.subnet_env().is_none(),
        "no subnet.env without the Node"
    );
    let _ = site
        .cp
        .try_kubectl(&["delete", "node", &name, "--wait=false"]);
}
