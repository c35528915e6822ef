//! Our plugins under real Kubernetes: kube-apiserver, kube-controller-manager, kube-scheduler,
//! kubelet, kube-proxy and CoreDNS built from Go modules (conformance/scripts/build-kubernetes.sh)
//! at the pinned release, containerd 1.6 rendering its `conf_template` with the node's podCIDR.
//! One control plane serves every test of this binary ([`ControlPlane::shared`]); each test
//! has its own node(s), in namespaces of their own; the tests run one at a time.
//!
//! Needs root; fails (never skips) without it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cni_testkit::kube::{
    nsenter, run_ok, time_until, ControlPlane, KubeNode, NodeNetwork, Proc, BUSYBOX_IMAGE,
    CLUSTER_CIDR, CONTROL_PLANE_IP, NON_MASQUERADE_CIDR, OUTSIDE_IP,
};
use cni_testkit::plugin::plugin_binary;
use cni_testkit::traffic::UdpSourceListener;
use cni_testkit::{eventually, repo_root, require_root, unique_name};
use ipnet::Ipv4Net;
use serde_json::{json, Value};

/// One cluster test at a time: they share the control plane and the host's kernel sysctls.
static CLUSTER: Mutex<()> = Mutex::new(());

const REPLICAS: usize = 30;

/// A namespace of the cluster, deleted when dropped.
struct KubeNamespace<'a> {
    cp: &'a ControlPlane,
    name: String,
}

impl<'a> KubeNamespace<'a> {
    fn new(cp: &'a ControlPlane) -> KubeNamespace<'a> {
        let name = unique_name("cnik-").to_lowercase().replace('_', "-");
        cp.kubectl(&["create", "namespace", &name]);
        KubeNamespace { cp, name }
    }
}

impl Drop for KubeNamespace<'_> {
    fn drop(&mut self) {
        let _ = self
            .cp
            .kubectl_cmd(&["delete", "namespace", &self.name, "--wait=false"])
            .output();
    }
}

/// The host namespace's iptables lines naming kubelet's or kube-proxy's chains (`KUBE-`).
fn host_kube_rules() -> Vec<String> {
    let o = Command::new("iptables-save")
        .output()
        .expect("iptables-save");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.contains("KUBE-"))
        .map(str::to_string)
        .collect()
}

/// A pod of the web Deployment as the cluster and the node see it.
#[derive(Clone, Debug)]
struct WebPod {
    name: String,
    ip: Ipv4Addr,
    sandbox: String,
    netns: PathBuf,
}

/// The kubenet-bridge conflist template (packaging's example) with this test's state paths.
fn kubenet_template(network: &str, state: &Path) -> Value {
    let example = repo_root().join("packaging/examples/kubenet-bridge.conflist.template");
    let mut t: Value =
        serde_json::from_slice(&fs::read(&example).expect("example template")).expect("JSON");
    assert_eq!(t["plugins"][0]["podCIDR"], "{{.PodCIDR}}");
    assert_eq!(t["plugins"][0]["nonMasqueradeCIDR"], NON_MASQUERADE_CIDR);
    // portmap is the reference plugin's, not under test here.
    let first = t["plugins"][0].clone();
    t["plugins"] = json!([first]);
    t["name"] = json!(network);
    t["plugins"][0]["dataDir"] = json!(state.join("ipam"));
    t["plugins"][0]["logFile"] = json!(state.join("kubenet-bridge.log"));
    t
}

/// The reference bridge + host-local, the same shape (for the side-by-side figures).
fn reference_template(network: &str, state: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [{
            "type": "bridge",
            "bridge": "cbr0",
            "isGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "{{.PodCIDR}}"}]],
                "dataDir": state.join("ipam"),
            },
        }],
    })
}

/// A reference plugin (Debian's containernetworking-plugins): containerd sets up the pod's
/// loopback with `loopback`; the figures compare against `bridge` + `host-local`.
fn reference(name: &str) -> PathBuf {
    let p = Path::new("/usr/lib/cni").join(name);
    assert!(
        p.is_file(),
        "{} missing: run conformance/scripts/install-test-deps.sh",
        p.display()
    );
    p
}

fn web_manifest(ns: &str) -> String {
    web_manifest_spread(ns, "ScheduleAnyway")
}

/// The web Deployment (0 replicas) and its Service; pods spread over nodes by hostname.
fn web_manifest_spread(ns: &str, when_unsatisfiable: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec:
  replicas: 0
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 0
      enableServiceLinks: false
      automountServiceAccountToken: false
      topologySpreadConstraints:
      - {{maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: {when_unsatisfiable}, labelSelector: {{matchLabels: {{app: web}}}}}}
      containers:
      - name: web
        image: {BUSYBOX_IMAGE}
        imagePullPolicy: Never
        command: ["sh", "-c", "hostname > /tmp/index.html && exec httpd -f -p 8080 -h /tmp"]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
"#
    )
}

/// Pods of `app=web` in `ns` by phase.
fn pods(cp: &ControlPlane, ns: &str) -> Vec<Value> {
    cp.get_json(&["-n", ns, "get", "pods", "-l", "app=web"])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn running(cp: &ControlPlane, ns: &str) -> usize {
    pods(cp, ns)
        .iter()
        .filter(|p| {
            p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
        })
        .count()
}

/// `kubectl scale` to `n`, then the time until exactly `n` web pods run (and none else).
fn scale(node: &mut KubeNode, cp: &ControlPlane, ns: &str, n: usize) -> Duration {
    let start = Instant::now();
    cp.kubectl(&[
        "-n",
        ns,
        "scale",
        "deployment/web",
        &format!("--replicas={n}"),
    ]);
    let took = time_until(start, Duration::from_secs(300), || {
        node.assert_running();
        let p = pods(cp, ns);
        p.len() == n && running(cp, ns) == n
    });
    took.unwrap_or_else(|| {
        panic!(
            "{} of {n} web pods running after 300 s; pods:\n{}\nkubelet:\n{}\ncontainerd:\n{}",
            running(cp, ns),
            cp.kubectl(&["-n", ns, "get", "pods", "-o", "wide"]),
            node.kubelet_log(30),
            node.containerd_log(30)
        )
    })
}

/// The running web pods of `node` with their addresses, sandboxes and network namespaces.
fn web_pods(node: &KubeNode, cp: &ControlPlane, ns: &str) -> Vec<WebPod> {
    let sandboxes: BTreeMap<String, String> = node
        .sandboxes(ns)
        .into_iter()
        .filter(|(_, _, state)| state == "SANDBOX_READY")
        .map(|(name, id, _)| (name, id))
        .collect();
    pods(cp, ns)
        .iter()
        .filter(|p| {
            p["status"]["phase"] == "Running" && p["spec"]["nodeName"] == node.name.as_str()
        })
        .map(|p| {
            let name = p["metadata"]["name"].as_str().expect("name").to_string();
            let ip = p["status"]["podIP"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("pod {name} has no podIP: {}", p["status"]));
            let sandbox = sandboxes
                .get(&name)
                .unwrap_or_else(|| panic!("pod {name} has no ready sandbox: {sandboxes:?}"))
                .clone();
            let (netns, runtime_ip) = node.sandbox_network(&sandbox);
            assert_eq!(
                runtime_ip,
                Some(ip),
                "pod {name}: the runtime's address of sandbox {sandbox} is not the pod's podIP"
            );
            WebPod {
                name,
                ip,
                sandbox,
                netns,
            }
        })
        .collect()
}

fn ping_from(netns: &Path, to: Ipv4Addr) -> bool {
    (0..3).any(|_| {
        nsenter(netns, "ping")
            .args(["-c", "1", "-W", "2", &to.to_string()])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// An HTTP GET from inside `netns`; the body.
fn http_get(netns: &Path, url: &str) -> Option<String> {
    let o = nsenter(netns, "curl")
        .args(["-s", "-m", "3", url])
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// Each pod reaches the next one (a ring over all of them) and the node.
fn assert_connectivity(pods: &[WebPod], node: &KubeNode) {
    for (i, p) in pods.iter().enumerate() {
        let next = &pods[(i + 1) % pods.len()];
        assert!(
            ping_from(&p.netns, next.ip),
            "pod {} ({}) cannot reach pod {} ({})",
            p.name,
            p.ip,
            next.name,
            next.ip
        );
        assert!(
            ping_from(&p.netns, node.ip),
            "pod {} ({}) cannot reach its node {}",
            p.name,
            p.ip,
            node.ip
        );
    }
}

fn assert_addresses(pods: &[WebPod], cidr: Ipv4Net) {
    let ips: BTreeSet<Ipv4Addr> = pods.iter().map(|p| p.ip).collect();
    assert_eq!(ips.len(), pods.len(), "an address held twice: {pods:?}");
    for p in pods {
        assert!(
            cidr.contains(&p.ip) && p.ip != cidr.hosts().next().expect("gateway"),
            "pod {} has {} outside its node's podCIDR {cidr}",
            p.name,
            p.ip
        );
    }
}

fn lease_addresses(dir: &Path) -> BTreeSet<Ipv4Addr> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// libcni's cached results of `network` (containerd keeps libcni's default cache dir).
fn cached_results(network: &str) -> Vec<String> {
    fs::read_dir("/var/lib/cni/results")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with(&format!("{network}-")))
        .collect()
}

/// Host ends of pod veths on the node's bridge.
fn pod_veths(node: &KubeNode) -> usize {
    node.netns()
        .links_of_kind("veth")
        .iter()
        .filter(|l| l.master.as_deref() == Some("cbr0"))
        .count()
}

fn checks(report: &Value) -> Vec<(String, String, String)> {
    report["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or("").to_string(),
                c["status"].as_str().unwrap_or("").to_string(),
                c["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn failed(report: &Value) -> Vec<(String, String, String)> {
    checks(report)
        .into_iter()
        .filter(|(_, s, _)| s == "fail")
        .collect()
}

#[test]
fn kubernetes_runs_kubenet_bridge_pods_from_the_nodes_pod_cidr() {
    require_root();
    let _one = CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let cp = ControlPlane::shared();
    let state = tempfile::Builder::new()
        .prefix("cnisuite-k8s-kubenet-")
        .tempdir_in("/var/tmp")
        .expect("state dir");
    let network = unique_name("k8s-pod-network-");
    let log = state.path().join("kubenet-bridge.log");
    let host_firewall = host_kube_rules();
    let mut node = KubeNode::start(
        &cp,
        &NodeNetwork {
            template: kubenet_template(&network, state.path()),
            plugins: vec![plugin_binary("kubenet-bridge"), reference("loopback")],
            ..Default::default()
        },
    );
    let t0 = Instant::now();

    // The controller-manager allocates the podCIDR; containerd renders the template with it.
    let cidr = node.wait_pod_cidr();
    let cluster: Ipv4Net = CLUSTER_CIDR.parse().expect("cidr");
    assert!(cluster.contains(&cidr), "podCIDR {cidr} not in {cluster}");
    let rendered = node.conf_dir.join("10-containerd-net.conflist");
    assert!(
        eventually(Duration::from_secs(60), || rendered.is_file()),
        "containerd rendered no conflist; kubelet:\n{}",
        node.kubelet_log(30)
    );
    let conf: Value = serde_json::from_slice(&fs::read(&rendered).expect("read")).expect("JSON");
    assert_eq!(conf["plugins"][0]["podCIDR"], cidr.to_string(), "{conf}");
    assert!(
        node.wait_ready("True", Duration::from_secs(60)),
        "node not Ready: {:?}",
        node.ready_condition()
    );
    println!(
        "node {} Ready with podCIDR {cidr} after {:?}",
        node.name,
        t0.elapsed()
    );

    // CoreDNS (the cluster's, kube-system) runs on this node with our plugin.
    let dns_ready = eventually(Duration::from_secs(180), || {
        node.assert_running();
        cp.get_json(&["-n", "kube-system", "get", "pods", "-l", "k8s-app=kube-dns"])["items"]
            .as_array()
            .is_some_and(|items| {
                items.iter().any(|p| {
                    p["spec"]["nodeName"] == node.name.as_str()
                        && p["status"]["phase"] == "Running"
                        && p["status"]["containerStatuses"][0]["ready"] == true
                })
            })
    });
    assert!(
        dns_ready,
        "CoreDNS not running on {}:\n{}",
        node.name,
        cp.kubectl(&[
            "-n",
            "kube-system",
            "describe",
            "pods",
            "-l",
            "k8s-app=kube-dns"
        ])
    );

    // 30 pods of a Deployment.
    let ns = KubeNamespace::new(&cp);
    cp.apply(&web_manifest(&ns.name));
    let up = scale(&mut node, &cp, &ns.name, REPLICAS);
    println!("kubectl scale 0 -> {REPLICAS}: all Running after {up:?}");
    let web = web_pods(&node, &cp, &ns.name);
    assert_eq!(web.len(), REPLICAS);
    assert_addresses(&web, cidr);
    assert_eq!(
        lease_addresses(&state.path().join("ipam").join(&network)),
        web.iter()
            .map(|p| p.ip)
            .chain(
                // CoreDNS holds one too.
                cp.get_json(&["-n", "kube-system", "get", "pods", "-l", "k8s-app=kube-dns"])
                    ["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["spec"]["nodeName"] == node.name.as_str())
                    .filter_map(|p| p["status"]["podIP"].as_str()?.parse().ok())
            )
            .collect::<BTreeSet<_>>(),
        "leases are exactly the running pods' addresses"
    );
    assert_connectivity(&web, &node);
    // Masquerade: an address outside the cluster sees the node's address.
    for p in &web {
        let listener = UdpSourceListener::start(cp.netns(), OUTSIDE_IP, 5601);
        let sent = nsenter(&p.netns, "python3")
            .args([
                "-c",
                &format!(
                    "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
                     [s.sendto(b'x',('{OUTSIDE_IP}',5601)) for _ in range(3)]"
                ),
            ])
            .status()
            .expect("python3");
        assert!(sent.success());
        assert_eq!(
            listener.source(),
            Some(node.ip),
            "pod {} ({}) reached {OUTSIDE_IP} not masqueraded as its node",
            p.name,
            p.ip
        );
    }
    println!("{REPLICAS} pods: addresses from {cidr}, ring, node and masquerade ok");

    // The ClusterIP Service answers from every pod.
    let svc_ip = cp.kubectl(&[
        "-n",
        &ns.name,
        "get",
        "service",
        "web",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    let names: BTreeSet<String> = web.iter().map(|p| p.name.clone()).collect();
    for p in &web {
        let mut body = None;
        let answered = eventually(Duration::from_secs(30), || {
            body = http_get(&p.netns, &format!("http://{svc_ip}/"));
            body.as_ref().is_some_and(|b| names.contains(b))
        });
        assert!(
            answered,
            "Service {svc_ip} did not answer pod {}: {body:?}",
            p.name
        );
    }
    // Hairpin: a pod reaching itself through a Service whose only endpoint it is.
    let me = &web[0];
    cp.kubectl(&["-n", &ns.name, "label", "pod", &me.name, "hairpin=yes"]);
    cp.apply(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: self, namespace: {}}}\nspec:\n  \
         selector: {{app: web, hairpin: \"yes\"}}\n  ports: [{{port: 80, targetPort: 8080}}]\n",
        ns.name
    ));
    let self_ip = cp.kubectl(&[
        "-n",
        &ns.name,
        "get",
        "service",
        "self",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    let mut body = None;
    let hairpin = eventually(Duration::from_secs(30), || {
        body = http_get(&me.netns, &format!("http://{self_ip}/"));
        body.as_deref() == Some(me.name.as_str())
    });
    assert!(
        hairpin,
        "pod {} did not reach itself through {self_ip}: {body:?}",
        me.name
    );
    println!("Service {svc_ip} answered all {REPLICAS} pods; hairpin through {self_ip} ok");

    // CoreDNS answers a pod's lookup of the Service's name.
    let fqdn = format!("web.{}.svc.cluster.local", ns.name);
    let mut answer = String::new();
    let resolved = eventually(Duration::from_secs(30), || {
        answer = cp
            .try_kubectl(&[
                "-n",
                &ns.name,
                "exec",
                &web[1].name,
                "--",
                "nslookup",
                &fqdn,
            ])
            .unwrap_or_else(|e| e);
        answer.contains(&svc_ip)
    });
    assert!(
        resolved,
        "{fqdn} did not resolve to {svc_ip} in pod {}: {answer}",
        web[1].name
    );
    println!(
        "pod {} resolved {fqdn} -> {svc_ip} through CoreDNS",
        web[1].name
    );

    // A sandbox killed: kubelet recreates it; the plugin saw DEL, then ADD.
    let victim = web[2].clone();
    node.crictl(&["stopp", &victim.sandbox]);
    let mut new_sandbox = String::new();
    let recreated = eventually(Duration::from_secs(120), || {
        node.assert_running();
        new_sandbox = node
            .sandboxes(&ns.name)
            .into_iter()
            .find(|(n, id, st)| *n == victim.name && *id != victim.sandbox && st == "SANDBOX_READY")
            .map(|(_, id, _)| id)
            .unwrap_or_default();
        // Running, and kubelet has reported the new sandbox's address as the podIP.
        !new_sandbox.is_empty()
            && running(&cp, &ns.name) == REPLICAS
            && cp
                .try_kubectl(&[
                    "-n",
                    &ns.name,
                    "get",
                    "pod",
                    &victim.name,
                    "-o",
                    "jsonpath={.status.podIP}",
                ])
                .ok()
                .and_then(|ip| ip.parse().ok())
                == node.sandbox_network(&new_sandbox).1
    });
    assert!(
        recreated,
        "kubelet did not recreate the sandbox of {}:\n{}",
        victim.name,
        node.kubelet_log(30)
    );
    let logged = fs::read_to_string(&log).expect("plugin log");
    let del = logged
        .find(&format!(
            "DEL network={network} container={}",
            victim.sandbox
        ))
        .unwrap_or_else(|| panic!("no DEL of {} in the plugin log:\n{logged}", victim.sandbox));
    let add = logged
        .find(&format!("ADD network={network} container={new_sandbox}"))
        .unwrap_or_else(|| panic!("no ADD of {new_sandbox} in the plugin log:\n{logged}"));
    assert!(
        del < add,
        "ADD of the new sandbox logged before DEL of the old one"
    );
    let web = web_pods(&node, &cp, &ns.name);
    assert_eq!(web.len(), REPLICAS);
    assert_addresses(&web, cidr);
    println!(
        "sandbox {} killed: DEL, then ADD of {new_sandbox}; no address held twice",
        victim.sandbox
    );

    // kubelet restarted: pods keep their sandboxes, addresses and connectivity.
    let before: BTreeMap<String, (Ipv4Addr, String)> = web
        .iter()
        .map(|p| (p.name.clone(), (p.ip, p.sandbox.clone())))
        .collect();
    node.stop_kubelet();
    node.start_kubelet();
    assert!(
        node.wait_ready("True", Duration::from_secs(60)),
        "node not Ready after kubelet restart"
    );
    std::thread::sleep(Duration::from_secs(10));
    let web = web_pods(&node, &cp, &ns.name);
    let after: BTreeMap<String, (Ipv4Addr, String)> = web
        .iter()
        .map(|p| (p.name.clone(), (p.ip, p.sandbox.clone())))
        .collect();
    assert_eq!(
        before, after,
        "kubelet's restart changed pods' sandboxes or addresses"
    );
    assert_connectivity(&web, &node);
    println!("kubelet restarted: {REPLICAS} pods kept sandboxes, addresses and connectivity");

    // cni-suite doctor with the kubeconfig passes every check on this node.
    let doctor = plugin_binary("cni-suite");
    let (ok, report) = node.doctor(&doctor);
    assert!(
        ok && failed(&report).is_empty(),
        "doctor failed: {report:#}"
    );
    let names: Vec<String> = checks(&report).into_iter().map(|c| c.0).collect();
    for must in ["cluster-dns", "node-pod-cidr", "bin-dir"] {
        let c = checks(&report).into_iter().find(|c| c.0 == must);
        assert!(
            c.as_ref().is_some_and(|c| c.1 == "ok"),
            "doctor check {must} not ok: {c:?} (checks: {names:?})"
        );
    }
    println!("doctor: {} checks, none failed", names.len());

    // Scale to 0: no lease, veth or cached result is left; then back to 30.
    let down = scale(&mut node, &cp, &ns.name, 0);
    println!("kubectl scale {REPLICAS} -> 0: all gone after {down:?}");
    let leftover = eventually(Duration::from_secs(30), || {
        lease_addresses(&state.path().join("ipam").join(&network)).len() == 1
            && pod_veths(&node) == 1
    });
    assert!(
        leftover,
        "after scale to 0: leases {:?} (CoreDNS holds one), veths {} (CoreDNS has one)",
        lease_addresses(&state.path().join("ipam").join(&network)),
        pod_veths(&node)
    );
    // libcni's cache holds CoreDNS's result only (files are <network>-<sandbox>-<ifname>).
    let dns_sandboxes: Vec<String> = node
        .sandboxes("kube-system")
        .into_iter()
        .filter(|(_, _, st)| st == "SANDBOX_READY")
        .map(|(_, id, _)| format!("{network}-{id}-eth0"))
        .collect();
    assert_eq!(dns_sandboxes.len(), 1, "one CoreDNS sandbox on the node");
    assert_eq!(
        cached_results(&network),
        dns_sandboxes,
        "cached results left after scale to 0"
    );
    let up_again = scale(&mut node, &cp, &ns.name, REPLICAS);
    println!("kubectl scale 0 -> {REPLICAS} again: all Running after {up_again:?}");
    let web = web_pods(&node, &cp, &ns.name);
    assert_addresses(&web, cidr);
    assert_connectivity(&web, &node);

    // The conflist removed: the runtime reports NetworkPluginNotReady, the node goes NotReady
    // and doctor names the missing conflist.
    let saved = fs::read(&rendered).expect("conflist");
    fs::remove_file(&rendered).expect("remove conflist");
    assert!(
        node.wait_ready("False", Duration::from_secs(60)),
        "node still Ready without a conflist: {:?}",
        node.ready_condition()
    );
    let (_, cond_reason, cond_msg) = node.ready_condition();
    assert!(
        cond_msg.contains("NetworkPluginNotReady") || cond_msg.contains("network plugin"),
        "NotReady for another reason: {cond_reason}: {cond_msg}"
    );
    let (ok, report) = node.doctor(&doctor);
    let f = failed(&report);
    assert!(
        !ok && f.iter().any(|c| c.0 == "conf-dir"),
        "doctor did not name the missing conflist: {report:#}"
    );
    println!("conflist removed: node NotReady ({cond_msg}); doctor: {f:?}");
    fs::write(&rendered, saved).expect("restore conflist");
    assert!(
        node.wait_ready("True", Duration::from_secs(60)),
        "node not Ready again with the conflist back: {:?}",
        node.ready_condition()
    );

    // The plugin binary removed: a new pod fails to start; doctor names the binary.
    let plugin = node.bin_dir.join("kubenet-bridge");
    let saved = fs::read(&plugin).expect("plugin");
    fs::remove_file(&plugin).expect("remove plugin");
    cp.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: broken, namespace: {}}}\nspec:\n  \
         terminationGracePeriodSeconds: 0\n  containers:\n  - name: c\n    image: {BUSYBOX_IMAGE}\n    \
         imagePullPolicy: Never\n    command: [sleep, '3600']\n",
        ns.name
    ));
    let mut events = String::new();
    let sandbox_failed = eventually(Duration::from_secs(90), || {
        events = cp
            .try_kubectl(&[
                "-n",
                &ns.name,
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=broken",
                "-o",
                "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
            ])
            .unwrap_or_default();
        events.contains("FailedCreatePodSandBox") && events.contains("kubenet-bridge")
    });
    assert!(
        sandbox_failed,
        "no FailedCreatePodSandBox naming kubenet-bridge: {events}"
    );
    assert_ne!(
        cp.kubectl(&[
            "-n",
            &ns.name,
            "get",
            "pod",
            "broken",
            "-o",
            "jsonpath={.status.phase}"
        ]),
        "Running"
    );
    let (ok, report) = node.doctor(&doctor);
    let f = failed(&report);
    assert!(
        !ok && f.iter().any(|c| c.2.contains("kubenet-bridge")),
        "doctor did not name the missing plugin: {report:#}"
    );
    println!(
        "plugin removed: pod broken failed ({}); doctor: {f:?}",
        events
            .lines()
            .find(|l| l.contains("FailedCreatePodSandBox"))
            .unwrap_or("")
    );
    fs::write(&plugin, saved).expect("restore plugin");
    let mut perms = fs::metadata(&plugin).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    fs::set_permissions(&plugin, perms).expect("chmod");
    assert!(
        eventually(Duration::from_secs(120), || cp.kubectl(&[
            "-n",
            &ns.name,
            "get",
            "pod",
            "broken",
            "-o",
            "jsonpath={.status.phase}"
        ]) == "Running"),
        "pod broken did not start once the plugin was back"
    );
    drop(ns);
    drop(node);
    // kubelet's and kube-proxy's rules lived in the node's namespace only.
    assert_eq!(
        host_kube_rules(),
        host_firewall,
        "the host's firewall changed"
    );
    println!("cluster test took {:?}", t0.elapsed());
}

/// The figures of the README's performance section: from `kubectl scale` to 30 pods Running
/// (and back to 0), with kubenet-bridge and with the reference bridge + host-local, each on a
/// node of its own against the same control plane, in one run. A benchmark, not part of CI:
/// `cargo test --release --workspace --test kubernetes -- --ignored --nocapture`
/// (`CNISUITE_K8S_ROUNDS`, default 3). Writes conformance/results/k8s-scale-30.txt.
#[test]
#[ignore = "a benchmark: run with --ignored (README, performance section)"]
fn kubernetes_scale_to_30_kubenet_bridge_vs_reference_bridge() {
    require_root();
    let _one = CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let cp = ControlPlane::shared();
    let rounds: usize = std::env::var("CNISUITE_K8S_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let mut table = Vec::new();
    for label in ["kubenet-bridge", "bridge+host-local"] {
        let state = tempfile::Builder::new()
            .prefix("cnisuite-k8s-bench-")
            .tempdir_in("/var/tmp")
            .expect("state dir");
        let network = unique_name("k8s-bench-");
        let network_conf = if label == "kubenet-bridge" {
            NodeNetwork {
                template: kubenet_template(&network, state.path()),
                plugins: vec![plugin_binary("kubenet-bridge"), reference("loopback")],
                ..Default::default()
            }
        } else {
            NodeNetwork {
                template: reference_template(&network, state.path()),
                plugins: vec![
                    reference("bridge"),
                    reference("host-local"),
                    reference("loopback"),
                ],
                ..Default::default()
            }
        };
        let mut node = KubeNode::start(&cp, &network_conf);
        let cidr = node.wait_pod_cidr();
        assert!(
            node.wait_ready("True", Duration::from_secs(90)),
            "{label}: node not Ready"
        );
        let ns = KubeNamespace::new(&cp);
        cp.apply(&web_manifest(&ns.name));
        let mut ups = Vec::new();
        let mut downs = Vec::new();
        for _ in 0..rounds {
            ups.push(scale(&mut node, &cp, &ns.name, REPLICAS));
            let web = web_pods(&node, &cp, &ns.name);
            assert_addresses(&web, cidr);
            downs.push(scale(&mut node, &cp, &ns.name, 0));
        }
        ups.sort();
        downs.sort();
        let secs = |d: &[Duration]| {
            d.iter()
                .map(|d| format!("{:.1}", d.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(" ")
        };
        table.push(format!(
            "{label:<18} 0->{REPLICAS} Running: median {:.1} s (runs: {})   {REPLICAS}->0: median {:.1} s (runs: {})",
            ups[ups.len() / 2].as_secs_f64(),
            secs(&ups),
            downs[downs.len() / 2].as_secs_f64(),
            secs(&downs)
        ));
        drop(ns);
        drop(node);
    }
    let text = format!(
        "kubectl scale deployment/web to {REPLICAS} Running and back to 0, one node, Kubernetes {} \
         (kubelet, containerd 1.6.20), {rounds} rounds each, same control plane, same run\n{}\n",
        cp.bin
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        table.join("\n")
    );
    print!("{text}");
    let out = repo_root().join("conformance/results/k8s-scale-30.txt");
    fs::write(&out, &text).expect("write results");
    assert_eq!(table.len(), 2);
}

/// vxlan-overlay under Kubernetes, two nodes: each node's agent leases a subnet from etcd (the
/// control plane's etcd, a prefix of this test's own), the plugin gives pods addresses from it,
/// pods on the two nodes reach each other through the VXLAN device, and a Service answers
/// across nodes.
#[test]
fn kubernetes_runs_vxlan_overlay_pods_on_two_nodes() {
    require_root();
    let _one = CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let cp = ControlPlane::shared();
    let t0 = Instant::now();
    let network = unique_name("k8s-overlay-");
    let prefix = format!("/{}/network", unique_name("cnisuite-k8s-"));
    let mut states = Vec::new();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let state = tempfile::Builder::new()
            .prefix("cnisuite-k8s-overlay-")
            .tempdir_in("/var/tmp")
            .expect("state dir");
        let data = state.path().join("data");
        let template = json!({
            "cniVersion": "1.0.0",
            "name": network,
            "plugins": [{
                "type": "vxlan-overlay",
                "clusterCIDR": CLUSTER_CIDR,
                "subnetLen": 24,
                "etcdEndpoints": [format!("http://{}:2379", cni_testkit::kube::CONTROL_PLANE_IP)],
                "etcdPrefix": prefix,
                "bridge": "cbr0",
                "dataDir": data,
                "ipamDir": state.path().join("ipam"),
                "logFile": state.path().join("vxlan-overlay.log"),
            }],
        });
        let agent = plugin_binary("vxlan-overlay-agent");
        let node = KubeNode::start(
            &cp,
            &NodeNetwork {
                template,
                plugins: vec![
                    plugin_binary("vxlan-overlay"),
                    agent.clone(),
                    reference("loopback"),
                ],
                daemon: Some((agent, vec!["--config".into(), "{conflist}".into()])),
                daemon_ready: Some(data.join("subnet.env")),
                ..Default::default()
            },
        );
        nodes.push(node);
        states.push(state);
    }
    // Each node's subnet, as its agent leased it (flannel's subnet.env).
    let subnets: Vec<Ipv4Net> = states
        .iter()
        .map(|s| {
            let env = fs::read_to_string(s.path().join("data/subnet.env")).expect("subnet.env");
            env.lines()
                .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
                .map(|v| {
                    let n: Ipv4Net = v.trim().parse().expect("FLANNEL_SUBNET");
                    n.trunc()
                })
                .unwrap_or_else(|| panic!("no FLANNEL_SUBNET in {env}"))
        })
        .collect();
    assert_ne!(subnets[0], subnets[1], "two nodes leased one subnet");
    for (node, subnet) in nodes.iter_mut().zip(&subnets) {
        assert!(
            node.wait_ready("True", Duration::from_secs(90)),
            "node {} not Ready: {:?}",
            node.name,
            node.ready_condition()
        );
        // The route to the other node's subnet goes through the VXLAN device.
        let other = subnets.iter().find(|s| *s != subnet).expect("other subnet");
        let routes = node
            .netns()
            .run("ip", &["route", "show", &other.to_string()]);
        let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
        assert!(
            routes.contains("vxlan.1"),
            "node {}: no route to {other} through vxlan.1: {routes:?}",
            node.name
        );
    }
    println!(
        "two nodes Ready, subnets {subnets:?}, routes through vxlan.1, after {:?}",
        t0.elapsed()
    );

    let ns = KubeNamespace::new(&cp);
    cp.apply(&web_manifest_spread(&ns.name, "DoNotSchedule"));
    let replicas = 10;
    let start = Instant::now();
    cp.kubectl(&[
        "-n",
        &ns.name,
        "scale",
        "deployment/web",
        &format!("--replicas={replicas}"),
    ]);
    let up = time_until(start, Duration::from_secs(300), || {
        for n in nodes.iter_mut() {
            n.assert_running();
        }
        running(&cp, &ns.name) == replicas
    });
    assert!(
        up.is_some(),
        "{} of {replicas} pods Running:\n{}",
        running(&cp, &ns.name),
        cp.kubectl(&["-n", &ns.name, "get", "pods", "-o", "wide"])
    );
    println!("{replicas} pods Running after {:?}", up.unwrap_or_default());
    let mut all = Vec::new();
    for (node, subnet) in nodes.iter().zip(&subnets) {
        let on_node = web_pods(node, &cp, &ns.name);
        assert_eq!(
            on_node.len(),
            replicas / 2,
            "pods of node {}: {on_node:?}",
            node.name
        );
        assert_addresses(&on_node, *subnet);
        all.push(on_node);
    }
    // Across nodes: every pod of node 0 reaches a pod of node 1 and back.
    for (i, p) in all[0].iter().enumerate() {
        let q = &all[1][i % all[1].len()];
        assert!(
            ping_from(&p.netns, q.ip),
            "{} ({}) cannot reach {} ({}) on the other node",
            p.name,
            p.ip,
            q.name,
            q.ip
        );
        assert!(
            ping_from(&q.netns, p.ip),
            "{} ({}) cannot reach {} ({}) on the other node",
            q.name,
            q.ip,
            p.name,
            p.ip
        );
    }
    // The Service answers every pod, with backends on both nodes.
    let svc_ip = cp.kubectl(&[
        "-n",
        &ns.name,
        "get",
        "service",
        "web",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    let names: BTreeSet<String> = all.iter().flatten().map(|p| p.name.clone()).collect();
    for p in all.iter().flatten() {
        let mut body = None;
        let answered = eventually(Duration::from_secs(30), || {
            body = http_get(&p.netns, &format!("http://{svc_ip}/"));
            body.as_ref().is_some_and(|b| names.contains(b))
        });
        assert!(
            answered,
            "Service {svc_ip} did not answer pod {}: {body:?}",
            p.name
        );
    }
    println!("pods on both nodes reach each other through vxlan.1; Service {svc_ip} answered all {replicas}");
    drop(ns);
    drop(nodes);
    println!("overlay cluster test took {:?}", t0.elapsed());
}

/// moto's EC2 server in the control plane's namespace (reachable from the nodes over the
/// underlay), in the moto venv the vpc-routes-aws tests install; killed when dropped.
struct MotoServer {
    _proc: Proc,
    _dir: tempfile::TempDir,
    endpoint: String,
    python: PathBuf,
}

impl MotoServer {
    fn start(cp: &ControlPlane) -> MotoServer {
        let venv = PathBuf::from(
            std::env::var("VPC_ROUTES_MOTO_VENV")
                .unwrap_or_else(|_| "/var/tmp/vpc-routes-moto".into()),
        );
        run_ok(
            Command::new("sh")
                .arg(repo_root().join("crates/vpc-routes-aws/tests/setup-moto.sh"))
                .env("VPC_ROUTES_MOTO_VENV", &venv),
        );
        let dir = tempfile::Builder::new()
            .prefix("cnisuite-k8s-moto-")
            .tempdir_in("/var/tmp")
            .expect("moto dir");
        let log = dir.path().join("moto.log");
        let mut cmd = nsenter(&cp.netns().path(), venv.join("bin/moto_server"));
        cmd.args(["-H", &CONTROL_PLANE_IP.to_string(), "-p", "5000"]);
        let mut proc = Proc::spawn("moto_server", cmd, log.clone());
        let up = eventually(Duration::from_secs(60), || {
            proc.assert_running();
            fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("Running on")
        });
        assert!(up, "moto_server did not start: {}", proc.log_tail(20));
        MotoServer {
            _proc: proc,
            _dir: dir,
            endpoint: format!("http://{CONTROL_PLANE_IP}:5000"),
            python: venv.join("bin/python"),
        }
    }

    /// conformance/scripts/moto_vpc.py's JSON answer (run in the control plane's namespace).
    fn vpc(&self, cp: &ControlPlane, args: &[&str]) -> Value {
        let out = run_ok(
            nsenter(&cp.netns().path(), &self.python)
                .arg(repo_root().join("conformance/scripts/moto_vpc.py"))
                .args(args)
                .envs(aws_env()),
        );
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("moto_vpc.py {args:?}: {e}: {out}"))
    }
}

/// moto's dummy credentials and the region, for boto3 and for vpc-route (through containerd).
fn aws_env() -> Vec<(String, String)> {
    [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// kubenet-bridge chained with vpc-route under Kubernetes, against moto's EC2: the
/// controller-manager's podCIDR, rendered into both plugins by containerd, lands in the
/// cluster's tagged route table as a route to the node's ENI on the first pod's ADD; pods run
/// with addresses from it, bridged and routed as kubenet-bridge configures them.
#[test]
fn kubernetes_runs_kubenet_bridge_with_vpc_route_against_moto() {
    require_root();
    let _one = CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let cp = ControlPlane::shared();
    let t0 = Instant::now();
    let moto = MotoServer::start(&cp);
    let cluster = unique_name("k8s-vpc-").to_lowercase();
    let vpc = moto.vpc(&cp, &["setup", &moto.endpoint, &cluster]);
    let s = |k: &str| {
        vpc[k]
            .as_str()
            .unwrap_or_else(|| panic!("{k} in {vpc}"))
            .to_string()
    };
    let (table, eni) = (s("route_table"), s("eni_id"));

    let state = tempfile::Builder::new()
        .prefix("cnisuite-k8s-vpc-")
        .tempdir_in("/var/tmp")
        .expect("state dir");
    let network = unique_name("k8s-vpc-net-");
    let mut template = kubenet_template(&network, state.path());
    // The instance, ENI, VPC and region given in the config: no IMDS on these machines.
    let vpc_route = json!({
        "type": "vpc-route",
        "clusterName": cluster,
        "clusterCIDR": CLUSTER_CIDR,
        "podCIDR": "{{.PodCIDR}}",
        "region": "us-east-1",
        "ec2Endpoint": moto.endpoint,
        "instanceId": s("instance_id"),
        "eniId": eni,
        "vpcId": s("vpc_id"),
        "subnetId": s("subnet_id"),
        "dataDir": state.path().join("vpc-route"),
    });
    template["plugins"]
        .as_array_mut()
        .expect("plugins")
        .push(vpc_route);
    let mut node = KubeNode::start(
        &cp,
        &NodeNetwork {
            template,
            plugins: vec![
                plugin_binary("kubenet-bridge"),
                plugin_binary("vpc-route"),
                reference("loopback"),
            ],
            runtime_env: aws_env(),
            ..Default::default()
        },
    );
    let cidr = node.wait_pod_cidr();
    assert!(
        node.wait_ready("True", Duration::from_secs(90)),
        "node not Ready: {:?}",
        node.ready_condition()
    );
    let ns = KubeNamespace::new(&cp);
    cp.apply(&web_manifest(&ns.name));
    let replicas = 10;
    let up = scale(&mut node, &cp, &ns.name, replicas);
    let web = web_pods(&node, &cp, &ns.name);
    assert_eq!(web.len(), replicas);
    assert_addresses(&web, cidr);
    assert_connectivity(&web, &node);
    // The node's podCIDR is routed to its ENI in the cluster's table.
    let routes = moto.vpc(&cp, &["routes", &moto.endpoint, &table]);
    assert!(
        routes
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["dst"] == cidr.to_string() && r["eni"] == eni.as_str()),
        "no route {cidr} -> {eni} in {table}: {routes}"
    );
    // kubenet-bridge's part as configured: the bridge holds the podCIDR's gateway and the
    // node routes the podCIDR to it.
    let gateway = cidr.hosts().next().expect("gateway");
    assert!(
        node.netns()
            .ipv4_addresses("cbr0")
            .iter()
            .any(|a| a.addr() == gateway && a.prefix_len() == cidr.prefix_len()),
        "cbr0 lacks {gateway}/{}",
        cidr.prefix_len()
    );
    let route = node
        .netns()
        .run("ip", &["route", "show", &cidr.to_string()]);
    assert!(
        String::from_utf8_lossy(&route.stdout).contains("dev cbr0"),
        "no route to {cidr} on cbr0: {}",
        String::from_utf8_lossy(&route.stdout)
    );
    println!("{replicas} pods Running after {up:?} with addresses from {cidr}; moto's {table} routes {cidr} to {eni}");
    drop(ns);
    drop(node);
    println!("vpc-route cluster test took {:?}", t0.elapsed());
}
