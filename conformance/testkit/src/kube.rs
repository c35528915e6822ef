//! Real Kubernetes around our plugins: a control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, CoreDNS) shared by every cluster test of a test
//! binary, and nodes (containerd + kubelet + kube-proxy) each in a network namespace of its own.
//!
//! The Kubernetes binaries come from `conformance/scripts/build-kubernetes.sh` (built from Go
//! modules once per pinned release, kept under /var/tmp), the images from
//! `conformance/scripts/k8s-images.sh` (busybox and CoreDNS from local files) and
//! `containerd-cri.sh` (the pause image): nothing comes from a registry.
//!
//! Layout, all in namespaces the test made:
//! - the control plane's namespace holds a bridge, the underlay `172.31.250.0/24` (the API
//!   server on `.1`), and `198.18.0.1`, the "outside the cluster" address pods reach through
//!   their node's masquerade;
//! - each node's namespace has `eth0` on that bridge (`.2`, `.3`, ...) with its default route
//!   through the control plane's namespace; containerd, kubelet and kube-proxy run in it, entered
//!   with `nsenter --net` (`ip netns exec` would remount /sys and hide the cgroup tree kubelet
//!   reads);
//! - pod CIDRs come from the controller-manager (`--allocate-node-cidrs`) out of
//!   [`CLUSTER_CIDR`], Services from [`SERVICE_CIDR`]; both lie in kops' non-masquerade range
//!   `100.64.0.0/10`.
//!
//! Clean-up: a node's guard stops kubelet, removes every sandbox through crictl, stops
//! containerd with its shims, deletes its Node object and namespace, restores the kernel
//! sysctls kubelet rewrites (they are global) and removes what appeared under the host paths
//! kubelet and the runtime write to (`/etc/cni`, `/opt/cni`, `/var/log/containers`, ...). The
//! shared control plane lives in a static and is torn down at process exit (`atexit`), since
//! statics are never dropped.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::netns::Netns;
use crate::pki::CertAuthority;
use crate::{eventually, repo_root, unique_name};

/// The cluster's pod range; the controller-manager gives each node a /24 of it.
pub const CLUSTER_CIDR: &str = "100.64.0.0/16";
/// The Services' range.
pub const SERVICE_CIDR: &str = "100.70.0.0/16";
/// The `kubernetes` Service's address (first of [`SERVICE_CIDR`]).
pub const API_SERVICE_IP: &str = "100.70.0.1";
/// The cluster DNS Service's address (kubelet's `clusterDNS`).
pub const DNS_SERVICE_IP: &str = "100.70.0.10";
/// kops' non-masquerade range: the cluster's pods and Services.
pub const NON_MASQUERADE_CIDR: &str = "100.64.0.0/10";
/// The control plane's address on the underlay.
pub const CONTROL_PLANE_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 250, 1);
/// An address outside the cluster (in the control plane's namespace): where pods' traffic
/// leaves through their node's masquerade.
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The images the tests run, imported into each node's containerd.
pub const BUSYBOX_IMAGE: &str = "localhost/cnisuite-busybox:latest";
/// CoreDNS, built with the Kubernetes binaries.
pub const COREDNS_IMAGE: &str = "localhost/cnisuite-coredns:latest";
const TOKEN: &str = "cnisuite-admin-token";

/// Runs `cmd`, with its output captured; panics only if it cannot be started.
fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd`; panics with its output unless it exits 0; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let o = output(cmd);
    assert!(
        o.status.success(),
        "{cmd:?} failed ({}): {}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The directory holding the Kubernetes binaries, building them first if any is missing
/// (`conformance/scripts/build-kubernetes.sh`; a no-op when present).
pub fn kube_bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = run_ok(&mut Command::new(
            repo_root().join("conformance/scripts/build-kubernetes.sh"),
        ));
        PathBuf::from(
            out.trim()
                .lines()
                .last()
                .expect("the script prints its bin dir"),
        )
    })
    .clone()
}

/// The OCI image tars of [`BUSYBOX_IMAGE`] and [`COREDNS_IMAGE`] (built once, cached beside
/// the binaries).
fn image_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let bin = kube_bin_dir();
        let out = bin.parent().expect("bin has a parent").join("images");
        run_ok(
            Command::new(repo_root().join("conformance/scripts/k8s-images.sh"))
                .arg(&out)
                .arg(bin.join("coredns")),
        );
        out
    })
    .clone()
}

/// `nsenter --net=<netns path> program`: the process sees the host's mounts (/sys and the
/// cgroup tree kubelet reads) and the namespace's network.
pub fn nsenter(netns: &Path, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display()))
        .arg("--")
        .arg(program);
    cmd
}

/// A process that is killed (and reaped) when dropped.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Proc {
        let file = fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            log,
        }
    }

    /// Asserts the process still runs (a crashed component fails the test with its log).
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited ({status}):\n{}",
                self.name,
                crate::etcd::tail(&self.log, 40)
            );
        }
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        crate::etcd::tail(&self.log, n)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The control plane: etcd (Debian's 3.4), kube-apiserver (token auth, generated CA and
/// service-account key), kube-controller-manager (`--allocate-node-cidrs`), kube-scheduler, and
/// CoreDNS deployed as `kube-dns`.
pub struct ControlPlane {
    procs: Mutex<Vec<Proc>>,
    /// The kubeconfig every component and the tests use (admin token, the CA).
    pub kubeconfig: PathBuf,
    /// The Kubernetes binaries.
    pub bin: PathBuf,
    /// The generated CA's certificate.
    pub ca: PathBuf,
    next_host: Mutex<u8>,
    /// kube-apiserver's program and arguments (to start it again).
    api_cmd: (PathBuf, Vec<String>),
    /// `--authorization-mode`.
    authorization: String,
    dir: TempDir,
    // Last: the processes are gone before their namespace is.
    netns: Netns,
}

static SHARED: Mutex<Option<Arc<ControlPlane>>> = Mutex::new(None);

extern "C" fn teardown_shared() {
    let cp = SHARED.lock().ok().and_then(|mut s| s.take());
    drop(cp);
}

impl ControlPlane {
    /// The one control plane of this test binary, started on first use; torn down at exit.
    /// Every request is authorized (`AlwaysAllow`).
    pub fn shared() -> Arc<ControlPlane> {
        ControlPlane::shared_with("AlwaysAllow")
    }

    /// [`shared`](Self::shared) with RBAC enforced: the admin token is in `system:masters`,
    /// other identities (ServiceAccounts) have only what their roles grant. A test binary
    /// uses one kind or the other.
    pub fn shared_rbac() -> Arc<ControlPlane> {
        ControlPlane::shared_with("RBAC")
    }

    fn shared_with(authorization: &str) -> Arc<ControlPlane> {
        let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cp) = shared.as_ref() {
            assert_eq!(
                cp.authorization, authorization,
                "one test binary, one kind of shared control plane"
            );
            return cp.clone();
        }
        let cp = Arc::new(ControlPlane::start_with(authorization));
        // SAFETY: registers a plain function with no captured state; it only takes the
        // static and drops it.
        unsafe {
            libc::atexit(teardown_shared);
        }
        *shared = Some(cp.clone());
        cp
    }

    /// Starts a control plane of its own (what [`shared`](Self::shared) does once).
    pub fn start() -> ControlPlane {
        ControlPlane::start_with("AlwaysAllow")
    }

    /// [`start`](Self::start) with kube-apiserver's `--authorization-mode` `authorization`.
    pub fn start_with(authorization: &str) -> ControlPlane {
        let bin = kube_bin_dir();
        let netns = Netns::new("kcp-");
        let dir = tempfile::Builder::new()
            .prefix("cnisuite-kcp-")
            .tempdir_in("/var/tmp")
            .expect("control plane dir");
        let d = dir.path().to_path_buf();
        netns.ip_ok(&["link", "add", "kbr0", "type", "bridge"]);
        netns.ip_ok(&[
            "addr",
            "add",
            &format!("{CONTROL_PLANE_IP}/24"),
            "dev",
            "kbr0",
        ]);
        netns.ip_ok(&["link", "set", "kbr0", "up"]);
        netns.ip_ok(&["addr", "add", &format!("{OUTSIDE_IP}/32"), "dev", "lo"]);

        let pki = d.join("pki");
        fs::create_dir_all(&pki).expect("pki dir");
        let ca = CertAuthority::new(&pki, "kube-ca");
        let serving = ca.issue_server(
            "apiserver",
            &[
                CONTROL_PLANE_IP.into(),
                API_SERVICE_IP.parse::<Ipv4Addr>().expect("ip").into(),
                Ipv4Addr::LOCALHOST.into(),
            ],
        );
        // The service-account signing key (ES256 tokens), SEC1 PEM, and its public half: the
        // API server's key reader takes neither a PKCS#8 private key as a public key file.
        let sa_key = pki.join("sa.key");
        let sa_pub = pki.join("sa.pub");
        run_ok(
            Command::new("openssl")
                .args([
                    "ecparam",
                    "-name",
                    "prime256v1",
                    "-genkey",
                    "-noout",
                    "-out",
                ])
                .arg(&sa_key),
        );
        run_ok(
            Command::new("openssl")
                .args(["ec", "-pubout", "-in"])
                .arg(&sa_key)
                .arg("-out")
                .arg(&sa_pub),
        );
        fs::write(
            d.join("tokens.csv"),
            format!("{TOKEN},admin,admin,system:masters\n"),
        )
        .expect("token file");
        let kubeconfig = d.join("kubeconfig");
        fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    \
                 server: https://{CONTROL_PLANE_IP}:6443\n    certificate-authority: {}\n\
                 users:\n- name: admin\n  user:\n    token: {TOKEN}\ncontexts:\n- name: test\n  \
                 context:\n    cluster: test\n    user: admin\ncurrent-context: test\n",
                ca.cert().display()
            ),
        )
        .expect("kubeconfig");

        let s = |p: &Path| p.to_string_lossy().into_owned();
        let api_args: Vec<String> = [
            "--etcd-servers=http://127.0.0.1:2379".to_string(),
            "--bind-address=0.0.0.0".into(),
            "--secure-port=6443".into(),
            format!("--advertise-address={CONTROL_PLANE_IP}"),
            format!("--tls-cert-file={}", s(&serving.cert)),
            format!("--tls-private-key-file={}", s(&serving.key)),
            format!("--client-ca-file={}", s(ca.cert())),
            format!("--token-auth-file={}", s(&d.join("tokens.csv"))),
            format!("--authorization-mode={authorization}"),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", s(&sa_pub)),
            format!("--service-account-signing-key-file={}", s(&sa_key)),
            format!("--cert-dir={}", s(&d.join("apiserver-certs"))),
            "--allow-privileged=true".into(),
            "--enable-priority-and-fairness=false".into(),
            "--profiling=false".into(),
            // Node names resolve nowhere: reach kubelets (exec, logs) at their --node-ip.
            "--kubelet-preferred-address-types=InternalIP".into(),
        ]
        .into();
        let cp = ControlPlane {
            procs: Mutex::new(Vec::new()),
            kubeconfig: kubeconfig.clone(),
            bin: bin.clone(),
            ca: ca.cert().to_path_buf(),
            next_host: Mutex::new(2),
            api_cmd: (bin.join("kube-apiserver"), api_args),
            authorization: authorization.to_string(),
            dir,
            netns,
        };
        let ns = cp.netns.path();

        let mut etcd = nsenter(&ns, crate::etcd::ETCD);
        etcd.args([
            "--name",
            "kcp",
            "--data-dir",
            &s(&d.join("etcd")),
            "--listen-client-urls",
            &format!("http://127.0.0.1:2379,http://{CONTROL_PLANE_IP}:2379"),
            "--advertise-client-urls",
            &format!("http://{CONTROL_PLANE_IP}:2379"),
            "--listen-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-cluster",
            "kcp=http://127.0.0.1:2380",
        ]);
        cp.spawn("etcd", etcd);

        cp.start_apiserver();

        let mut kcm = nsenter(&ns, bin.join("kube-controller-manager"));
        kcm.args([
            &format!("--kubeconfig={}", s(&kubeconfig)),
            "--allocate-node-cidrs=true",
            &format!("--cluster-cidr={CLUSTER_CIDR}"),
            "--node-cidr-mask-size=24",
            &format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            &format!("--root-ca-file={}", s(ca.cert())),
            &format!("--service-account-private-key-file={}", s(&sa_key)),
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--controllers=*",
            // A node that goes away (each test deletes its own) frees its pods quickly.
            "--terminated-pod-gc-threshold=10",
        ]);
        cp.spawn("kube-controller-manager", kcm);
        let mut sched = nsenter(&ns, bin.join("kube-scheduler"));
        sched.args([
            &format!("--kubeconfig={}", s(&kubeconfig)),
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
        ]);
        cp.spawn("kube-scheduler", sched);
        let sa = eventually(Duration::from_secs(60), || {
            cp.try_kubectl(&["-n", "default", "get", "serviceaccount", "default"])
                .is_ok()
        });
        assert!(sa, "no default service account:\n{}", cp.logs());
        cp.apply(&coredns_manifest());
        cp
    }

    /// Starts kube-apiserver (again, after [`stop_apiserver`](Self::stop_apiserver)) and
    /// waits until it is ready.
    pub fn start_apiserver(&self) {
        let mut api = nsenter(&self.netns.path(), &self.api_cmd.0);
        api.args(&self.api_cmd.1);
        self.spawn("kube-apiserver", api);
        let ready = eventually(Duration::from_secs(120), || {
            self.assert_running();
            self.try_kubectl(&["get", "--raw", "/readyz"])
                .is_ok_and(|o| o.trim() == "ok")
        });
        assert!(ready, "kube-apiserver never became ready:\n{}", self.logs());
    }

    /// Kills kube-apiserver (an outage: the other components keep running and retrying).
    pub fn stop_apiserver(&self) {
        let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        let at = procs
            .iter()
            .position(|p| p.name == "kube-apiserver")
            .expect("kube-apiserver runs");
        let mut api = procs.remove(at);
        api.stop();
    }

    fn spawn(&self, name: &str, cmd: Command) {
        let log = self.dir.path().join(format!("{name}.log"));
        self.procs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Proc::spawn(name, cmd, log));
    }

    /// Panics with the component's log if one of the control plane's processes exited.
    pub fn assert_running(&self) {
        for p in self
            .procs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter_mut()
        {
            p.assert_running();
        }
    }

    /// The tail of every component's log.
    pub fn logs(&self) -> String {
        let procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        procs
            .iter()
            .map(|p| format!("--- {}\n{}\n", p.name, p.log_tail(20)))
            .collect()
    }

    /// The control plane's namespace (the underlay bridge `kbr0`, [`OUTSIDE_IP`]).
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Hands out the next underlay address for a node.
    pub fn next_node_ip(&self) -> Ipv4Addr {
        let mut n = self.next_host.lock().unwrap_or_else(|p| p.into_inner());
        let ip = Ipv4Addr::new(172, 31, 250, *n);
        *n += 1;
        ip
    }

    /// Plugs the node namespace `ns` into the underlay: its `eth0` (a veth whose other end,
    /// named from `prefix`, is on the control plane's bridge) gets `ip`/24 and a default route
    /// through the control plane.
    pub fn plug_in(&self, ns: &Netns, ip: Ipv4Addr, prefix: &str) {
        let host_if = crate::unique_link_name(prefix);
        self.netns().ip_ok(&[
            "link",
            "add",
            &host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ]);
        self.netns()
            .ip_ok(&["link", "set", &host_if, "master", "kbr0", "up"]);
        ns.ip_ok(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ns.ip_ok(&["link", "set", "eth0", "up"]);
        ns.ip_ok(&[
            "route",
            "add",
            "default",
            "via",
            &CONTROL_PLANE_IP.to_string(),
        ]);
    }

    /// A kubectl command run in the control plane's namespace with the admin kubeconfig.
    pub fn kubectl_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = nsenter(&self.netns.path(), self.bin.join("kubectl"));
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(["--request-timeout=30s"])
            .args(args);
        cmd
    }

    /// kubectl's stdout, or its stderr as the error.
    pub fn try_kubectl(&self, args: &[&str]) -> Result<String, String> {
        let o = output(&mut self.kubectl_cmd(args));
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    }

    /// kubectl's stdout; panics if it fails.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.try_kubectl(args)
            .unwrap_or_else(|e| panic!("kubectl {args:?} failed: {e}"))
    }

    /// `kubectl get ... -o json`.
    pub fn get_json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let out = self.kubectl(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl {args:?}: {e}: {out}"))
    }

    /// `kubectl apply -f -` of a YAML or JSON document.
    pub fn apply(&self, manifest: &str) {
        let mut child = self
            .kubectl_cmd(&["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(manifest.as_bytes())
            .expect("write manifest");
        let o = child.wait_with_output().expect("kubectl apply");
        assert!(
            o.status.success(),
            "kubectl apply failed: {}\n{manifest}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Reverse order: the controllers before the API server before etcd.
        let mut procs = std::mem::take(&mut *self.procs.lock().unwrap_or_else(|p| p.into_inner()));
        while let Some(mut p) = procs.pop() {
            p.stop();
        }
    }
}

/// CoreDNS as the cluster DNS, the way kops deploys it: Deployment and Service `kube-dns` in
/// kube-system, label `k8s-app=kube-dns`, the Service on [`DNS_SERVICE_IP`]. It answers for
/// cluster.local only (no forwarding: no traffic leaves the test's namespaces).
fn coredns_manifest() -> String {
    format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: coredns, namespace: kube-system}}
data:
  Corefile: |
    .:53 {{
        errors
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {{
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
        }}
        cache 5
    }}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: coredns, namespace: kube-system, labels: {{k8s-app: kube-dns}}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{k8s-app: kube-dns}}}}
  template:
    metadata: {{labels: {{k8s-app: kube-dns}}}}
    spec:
      dnsPolicy: Default
      terminationGracePeriodSeconds: 1
      containers:
      - name: coredns
        image: {COREDNS_IMAGE}
        imagePullPolicy: Never
        command: ["/coredns", "-conf", "/etc/coredns/Corefile"]
        volumeMounts: [{{name: config, mountPath: /etc/coredns}}]
        readinessProbe:
          httpGet: {{path: /ready, port: 8181}}
          periodSeconds: 2
      volumes: [{{name: config, configMap: {{name: coredns}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: kube-dns, namespace: kube-system, labels: {{k8s-app: kube-dns}}}}
spec:
  clusterIP: {DNS_SERVICE_IP}
  selector: {{k8s-app: kube-dns}}
  ports:
  - {{name: dns, port: 53, protocol: UDP}}
  - {{name: dns-tcp, port: 53, protocol: TCP}}
"#
    )
}

/// The kernel sysctls kubelet sets when `protectKernelDefaults` is off (its defaults for
/// panics, overcommit and keys). They are not per network namespace: the guard restores them.
const KUBELET_SYSCTLS: &[&str] = &[
    "kernel/panic",
    "kernel/panic_on_oops",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

/// Host paths kubelet or the runtime may write to outside the node's scratch directory.
const HOST_PATHS: &[&str] = &[
    "/etc/cni",
    "/opt/cni",
    "/var/log/containers",
    "/var/log/pods",
    "/etc/kubernetes",
    "/var/lib/kubelet",
];

/// What the host had before a node started; put back when dropped.
struct HostState {
    sysctls: Vec<(PathBuf, String)>,
    paths: BTreeSet<PathBuf>,
}

fn walk(p: &Path, out: &mut BTreeSet<PathBuf>) {
    if fs::symlink_metadata(p).is_err() {
        return;
    }
    out.insert(p.to_path_buf());
    if p.is_dir() && !p.is_symlink() {
        for e in fs::read_dir(p).into_iter().flatten().flatten() {
            walk(&e.path(), out);
        }
    }
}

fn host_paths() -> BTreeSet<PathBuf> {
    let mut s = BTreeSet::new();
    for p in HOST_PATHS {
        walk(Path::new(p), &mut s);
    }
    s
}

impl HostState {
    fn save() -> HostState {
        let sysctls = KUBELET_SYSCTLS
            .iter()
            .map(|k| {
                let p = Path::new("/proc/sys").join(k);
                let v = fs::read_to_string(&p).unwrap_or_default();
                (p, v)
            })
            .collect();
        HostState {
            sysctls,
            paths: host_paths(),
        }
    }

    /// Paths that appeared since [`save`](Self::save).
    fn new_paths(&self) -> Vec<PathBuf> {
        host_paths().difference(&self.paths).cloned().collect()
    }
}

impl Drop for HostState {
    fn drop(&mut self) {
        for (p, v) in &self.sysctls {
            if fs::read_to_string(p).ok().as_deref() != Some(v.as_str()) {
                let _ = fs::write(p, v.trim());
            }
        }
        // Deepest first.
        for p in self.new_paths().iter().rev() {
            if p.is_dir() && !p.is_symlink() {
                let _ = fs::remove_dir(p);
            } else {
                let _ = fs::remove_file(p);
            }
        }
    }
}

/// What a node runs its pods with: a conflist template for containerd's `conf_template`
/// (`{{.PodCIDR}}` rendered with the node's podCIDR) and the plugin binaries for its bin dir.
#[derive(Default)]
pub struct NodeNetwork {
    /// The conflist template (JSON).
    pub template: Value,
    /// Binaries copied into the node's CNI bin dir.
    pub plugins: Vec<PathBuf>,
    /// A node daemon the plugins need (vxlan-overlay's agent): program and arguments, where
    /// `{conflist}` stands for the template's path. Started in the node's namespace before
    /// containerd, stopped after it.
    pub daemon: Option<(PathBuf, Vec<String>)>,
    /// A file the daemon writes once it is ready (the agent's subnet.env); the node waits for
    /// it before starting containerd.
    pub daemon_ready: Option<PathBuf>,
    /// Environment of containerd, and so of the plugins it execs (vpc-route's AWS
    /// credentials).
    pub runtime_env: Vec<(String, String)>,
}

/// One node: its namespace on the underlay, containerd (CRI, conf_template), kubelet and
/// kube-proxy; every path under one scratch directory.
pub struct KubeNode {
    /// The Node's name.
    pub name: String,
    /// Its underlay address (kubelet's `--node-ip`).
    pub ip: Ipv4Addr,
    /// The scratch directory (containerd below `ctd/`, kubelet below `kubelet/`).
    pub dir: PathBuf,
    /// The CNI bin dir containerd execs plugins from.
    pub bin_dir: PathBuf,
    /// The CNI conf dir containerd renders the conflist into.
    pub conf_dir: PathBuf,
    /// containerd's socket.
    pub socket: PathBuf,
    kubelet: Option<Proc>,
    kube_proxy: Option<Proc>,
    daemon: Option<Proc>,
    cp: Arc<ControlPlane>,
    scratch: Option<TempDir>,
    host: Option<HostState>,
    netns: Option<Netns>,
}

impl KubeNode {
    /// Starts a node running `network`'s plugins and waits until it is registered.
    pub fn start(cp: &Arc<ControlPlane>, network: &NodeNetwork) -> KubeNode {
        let host = HostState::save();
        let netns = Netns::new("knode-");
        let ip = cp.next_node_ip();
        let name = unique_name("cnik-").to_lowercase().replace('_', "-");
        let scratch = tempfile::Builder::new()
            .prefix("cnisuite-knode-")
            .tempdir_in("/var/tmp")
            .expect("node dir");
        let dir = scratch.path().to_path_buf();
        let ctd = dir.join("ctd");
        let mut node = KubeNode {
            name,
            ip,
            bin_dir: dir.join("cni-bin"),
            conf_dir: dir.join("net.d"),
            socket: ctd.join("containerd.sock"),
            dir,
            kubelet: None,
            kube_proxy: None,
            daemon: None,
            cp: cp.clone(),
            scratch: Some(scratch),
            host: Some(host),
            netns: Some(netns),
        };
        let ns = node.netns();
        cp.plug_in(ns, ip, "kn");
        ns.set_sysctl("net/ipv4/ip_forward", "1");
        // What a kops node sets (kubelet's kubenet did too): kube-proxy's Service DNAT must
        // see bridged pod-to-pod replies.
        ns.set_sysctl("net/bridge/bridge-nf-call-iptables", "1");

        fs::create_dir_all(&node.bin_dir).expect("bin dir");
        for p in &network.plugins {
            let to = node.bin_dir.join(p.file_name().expect("plugin file name"));
            fs::copy(p, &to).unwrap_or_else(|e| panic!("copy {}: {e}", p.display()));
        }
        let template = node.dir.join("conflist.template");
        fs::write(
            &template,
            serde_json::to_string_pretty(&network.template).expect("json"),
        )
        .expect("template");
        if let Some((program, args)) = &network.daemon {
            let mut cmd = nsenter(&ns.path(), program);
            cmd.args(
                args.iter()
                    .map(|a| a.replace("{conflist}", &template.to_string_lossy())),
            );
            let name = program
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let log = node.dir.join(format!("{name}.out"));
            node.daemon = Some(Proc::spawn(&name, cmd, log));
        }
        if let Some(ready) = &network.daemon_ready {
            let up = eventually(Duration::from_secs(60), || {
                if let Some(d) = node.daemon.as_mut() {
                    d.assert_running();
                }
                ready.exists()
            });
            assert!(up, "the node daemon never wrote {}", ready.display());
        }
        let ns = node.netns();

        // containerd, in the node's namespace (the script starts it in the background).
        let out = run_ok(
            nsenter(
                &ns.path(),
                repo_root().join("conformance/scripts/containerd-cri.sh"),
            )
            .arg("start")
            .args([&ctd, &node.bin_dir, &node.conf_dir, &template])
            .envs(network.runtime_env.iter().map(|(k, v)| (k, v))),
        );
        assert_eq!(
            out.trim().lines().last().map(PathBuf::from),
            Some(node.socket.clone()),
            "{out}"
        );
        let images = image_dir();
        for (tar, name) in [
            ("busybox.oci.tar", "localhost/cnisuite-busybox"),
            ("coredns.oci.tar", "localhost/cnisuite-coredns"),
        ] {
            run_ok(
                Command::new("ctr")
                    .arg("-a")
                    .arg(&node.socket)
                    .args(["-n", "k8s.io", "images", "import", "--base-name", name])
                    .arg(images.join(tar)),
            );
        }
        node.start_kubelet();
        node.start_kube_proxy();
        let registered = eventually(Duration::from_secs(120), || {
            node.assert_running();
            cp.try_kubectl(&["get", "node", &node.name]).is_ok()
        });
        assert!(
            registered,
            "node {} never registered:\n{}",
            node.name,
            node.kubelet_log(40)
        );
        node
    }

    /// The node's network namespace.
    pub fn netns(&self) -> &Netns {
        self.netns
            .as_ref()
            .expect("netns lives as long as the node")
    }

    fn kubelet_config(&self) -> PathBuf {
        let d = &self.dir;
        let path = d.join("kubelet-config.yaml");
        let cfg = json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            // This VM mounts cgroup v1 (hybrid); kubelet 1.34 still runs there when told.
            "failCgroupV1": false,
            // PID 1 is not systemd.
            "cgroupDriver": "cgroupfs",
            // No QoS hierarchy under the host's cgroup root: pods' cgroups are containerd's.
            "cgroupsPerQOS": false,
            "enforceNodeAllocatable": [],
            "failSwapOn": false,
            "authentication": {"anonymous": {"enabled": true}, "webhook": {"enabled": false}},
            "authorization": {"mode": "AlwaysAllow"},
            "clusterDNS": [DNS_SERVICE_IP],
            "clusterDomain": "cluster.local",
            "resolvConf": "",
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "podLogsDir": d.join("pod-logs"),
            "containerRuntimeEndpoint": format!("unix://{}", self.socket.display()),
            "serializeImagePulls": false,
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "nodeStatusUpdateFrequency": "4s",
            "syncFrequency": "10s",
            "maxPods": 110,
        });
        fs::write(&path, serde_json::to_string_pretty(&cfg).expect("json"))
            .expect("kubelet config");
        path
    }

    /// Starts kubelet (again, after [`stop_kubelet`](Self::stop_kubelet)).
    pub fn start_kubelet(&mut self) {
        let cfg = self.kubelet_config();
        let mut cmd = nsenter(&self.netns().path(), self.cp.bin.join("kubelet"));
        cmd.arg(format!("--config={}", cfg.display()))
            .arg(format!("--kubeconfig={}", self.cp.kubeconfig.display()))
            .arg(format!("--root-dir={}", self.dir.join("kubelet").display()))
            .arg(format!("--hostname-override={}", self.name))
            .arg(format!("--node-ip={}", self.ip))
            .arg("--v=2");
        let n = if self.dir.join("kubelet.log").exists() {
            2
        } else {
            1
        };
        self.kubelet = Some(Proc::spawn(
            "kubelet",
            cmd,
            self.dir.join(format!(
                "kubelet{}.log",
                if n == 1 {
                    String::new()
                } else {
                    format!("-{n}")
                }
            )),
        ));
    }

    /// Stops kubelet (the pods keep running).
    pub fn stop_kubelet(&mut self) {
        if let Some(mut k) = self.kubelet.take() {
            k.stop();
        }
    }

    fn start_kube_proxy(&mut self) {
        let mut cmd = nsenter(&self.netns().path(), self.cp.bin.join("kube-proxy"));
        cmd.arg(format!("--kubeconfig={}", self.cp.kubeconfig.display()))
            .arg(format!("--hostname-override={}", self.name))
            .arg(format!("--cluster-cidr={CLUSTER_CIDR}"))
            .arg("--proxy-mode=iptables")
            // Leave the host-wide conntrack sysctls alone.
            .arg("--conntrack-max-per-core=0")
            .arg("--conntrack-tcp-timeout-established=0")
            .arg("--conntrack-tcp-timeout-close-wait=0")
            .arg("--metrics-bind-address=127.0.0.1:10249")
            .arg("--healthz-bind-address=127.0.0.1:10256");
        self.kube_proxy = Some(Proc::spawn(
            "kube-proxy",
            cmd,
            self.dir.join("kube-proxy.log"),
        ));
    }

    /// Panics with the log of a node component that exited.
    pub fn assert_running(&mut self) {
        self.cp.assert_running();
        if let Some(k) = self.kubelet.as_mut() {
            k.assert_running();
        }
        if let Some(k) = self.kube_proxy.as_mut() {
            k.assert_running();
        }
    }

    /// The last `n` lines of kubelet's log.
    pub fn kubelet_log(&self, n: usize) -> String {
        self.kubelet
            .as_ref()
            .map(|k| k.log_tail(n))
            .unwrap_or_default()
    }

    /// containerd's log, last `n` lines.
    pub fn containerd_log(&self, n: usize) -> String {
        crate::etcd::tail(&self.dir.join("ctd/containerd.log"), n)
    }

    /// A crictl command against this node's containerd.
    pub fn crictl_cmd(&self) -> Command {
        let mut cmd = Command::new(self.cp.bin.join("crictl"));
        cmd.arg(format!(
            "--runtime-endpoint=unix://{}",
            self.socket.display()
        ))
        .arg(format!("--image-endpoint=unix://{}", self.socket.display()))
        .arg("--timeout=30s");
        cmd
    }

    /// crictl's stdout; panics if it fails.
    pub fn crictl(&self, args: &[&str]) -> String {
        run_ok(self.crictl_cmd().args(args))
    }

    /// The node's podCIDR once the controller-manager has set it.
    pub fn wait_pod_cidr(&self) -> Ipv4Net {
        let mut cidr = String::new();
        let got = eventually(Duration::from_secs(60), || {
            cidr = self
                .cp
                .try_kubectl(&["get", "node", &self.name, "-o", "jsonpath={.spec.podCIDR}"])
                .unwrap_or_default();
            !cidr.is_empty()
        });
        assert!(got, "node {} got no podCIDR", self.name);
        cidr.parse()
            .unwrap_or_else(|e| panic!("podCIDR {cidr}: {e}"))
    }

    /// The node's Ready condition: (status, reason, message).
    pub fn ready_condition(&self) -> (String, String, String) {
        let node = self.cp.get_json(&["get", "node", &self.name]);
        let c = node["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .cloned()
            .unwrap_or(Value::Null);
        let f = |k: &str| c[k].as_str().unwrap_or("").to_string();
        (f("status"), f("reason"), f("message"))
    }

    /// Waits until the Node's Ready condition has `status` ("True"/"False").
    pub fn wait_ready(&mut self, status: &str, timeout: Duration) -> bool {
        eventually(timeout, || {
            self.assert_running();
            self.ready_condition().0 == status
        })
    }

    /// The sandboxes of pods in `namespace`: (pod name, sandbox id, state).
    pub fn sandboxes(&self, namespace: &str) -> Vec<(String, String, String)> {
        let out = self.crictl(&["pods", "--namespace", namespace, "-o", "json"]);
        let v: Value = serde_json::from_str(&out).expect("crictl pods json");
        v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                    p["id"].as_str().unwrap_or("").to_string(),
                    p["state"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// The network namespace of a sandbox and the address the runtime reports for it (from
    /// `crictl inspectp`).
    pub fn sandbox_network(&self, id: &str) -> (PathBuf, Option<Ipv4Addr>) {
        let out = self.crictl(&["inspectp", "-o", "json", id]);
        let v: Value = serde_json::from_str(&out).expect("inspectp json");
        let ip = v["status"]["network"]["ip"]
            .as_str()
            .and_then(|s| s.parse().ok());
        let ns = v["info"]["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["type"] == "network")
            .and_then(|n| n["path"].as_str())
            .unwrap_or_else(|| panic!("sandbox {id} has no network namespace: {v}"))
            .to_string();
        (PathBuf::from(ns), ip)
    }

    /// Runs `cni-suite doctor --json` on this node (in its namespace) with the kubeconfig;
    /// returns (exit ok, report).
    pub fn doctor(&self, cni_suite: &Path) -> (bool, Value) {
        let path = format!(
            "{}:{}",
            self.cp.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let o = output(
            nsenter(&self.netns().path(), cni_suite)
                .env("PATH", path)
                .args(["doctor", "--json"])
                .arg("--conf-dir")
                .arg(&self.conf_dir)
                .arg("--bin-dir")
                .arg(&self.bin_dir)
                .arg("--containerd-config")
                .arg(self.dir.join("ctd/config.toml"))
                .arg("--kubeconfig")
                .arg(&self.cp.kubeconfig)
                .arg("--node-name")
                .arg(&self.name),
        );
        let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!(
                "doctor printed no JSON ({e}): {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        });
        (o.status.success(), v)
    }

    /// Host paths that appeared under the tracked host directories since the node started.
    pub fn new_host_paths(&self) -> Vec<PathBuf> {
        self.host
            .as_ref()
            .map(|h| h.new_paths())
            .unwrap_or_default()
    }
}

impl Drop for KubeNode {
    fn drop(&mut self) {
        // Never panic here. kubelet first, so nothing recreates the sandboxes removed next.
        self.stop_kubelet();
        if let Some(mut p) = self.kube_proxy.take() {
            p.stop();
        }
        let _ = self.crictl_cmd().args(["rmp", "--all", "--force"]).output();
        if let Some(ns) = self.netns.as_ref() {
            let _ = nsenter(
                &ns.path(),
                repo_root().join("conformance/scripts/containerd-cri.sh"),
            )
            .arg("stop")
            .arg(self.dir.join("ctd"))
            .output();
        }
        if let Some(mut d) = self.daemon.take() {
            d.stop();
        }
        // What is still mounted below the scratch dir (kubelet's volumes), deepest first.
        let prefix = format!("{}/", self.dir.display());
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut below: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        below.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in below {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        let _ = self
            .cp
            .kubectl_cmd(&["delete", "node", &self.name, "--wait=false"])
            .output();
        drop(self.netns.take());
        drop(self.host.take());
        if std::env::var_os("CNISUITE_KEEP_NODE_DIR").is_some() {
            if let Some(s) = self.scratch.take() {
                eprintln!("kept node dir {}", s.keep().display());
            }
        }
    }
}

/// The time from `start` until `cond` holds, polling every 250 ms, or `None` after `timeout`.
pub fn time_until(
    start: Instant,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
) -> Option<Duration> {
    while start.elapsed() < timeout {
        if cond() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    None
}
