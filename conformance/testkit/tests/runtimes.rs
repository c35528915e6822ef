//! The suite under real container runtimes, end to end, in the host network namespace (that is
//! where runtimes put pods):
//! - containerd 1.6 with its CRI plugin, driven over CRI v1 gRPC as kubelet drives it:
//!   UpdateRuntimeConfig renders our conf_template example with the pod CIDR,
//!   RunPodSandbox gets an address from kubenet-bridge, PodSandboxStatus shows it, StopPodSandbox
//!   releases it (the lease file is gone); `cni-suite doctor` judges the node in between;
//! - podman 4 with its CNI backend running a container on a kubenet-bridge network (our
//!   podman examples), with a plugin dir holding our binary beside the reference ones;
//! - both again with a dual-stack network (`podCIDRs`, an IPv4 and a unique-local IPv6 range):
//!   containerd renders our dual-stack template from kubelet's two ranges and reports both pod
//!   addresses, podman's container holds both, reaches both gateways (ping, ping6) and has a
//!   default route per family.
//!
//! Each test snapshots the host's firewall (`nft list ruleset`), links, ip_forward, IPv6
//! forwarding and every link's `accept_ra` first and
//! restores them after (also when it fails, from a Drop guard); the two run one at a time. Every
//! name and range is unique to the run: bridges `crt…`/`pmt…`, pod CIDRs 10.251.x.0/24 and
//! 10.252.x.0/24, private containerd/podman roots under /var/tmp.
//!
//! Needs root and `conformance/scripts/install-test-deps.sh` (containerd, runc, podman,
//! busybox-static, the CRI client). Run:
//! ```text
//! cargo test --release -p cni-testkit --test runtimes
//! ```

use std::collections::BTreeSet;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Duration;

use cni_testkit::plugin::{plugin_binary, REFERENCE_PLUGIN_DIR};
use cni_testkit::{eventually, repo_root, require_root, unique_link_name, unique_name};
use ipnet::Ipv4Net;
use serde_json::{json, Value};
use tempfile::TempDir;

/// Both tests change the host namespace: one at a time, so one's restore never undoes the
/// other's setup.
static HOST: Mutex<()> = Mutex::new(());

fn tools_dir() -> PathBuf {
    std::env::var_os("CNI_SUITE_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/cni-suite-tools"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (run conformance/scripts/install-test-deps.sh)")
    })
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn run_ok(cmd: &mut Command) -> String {
    let o = run(cmd);
    assert!(o.status.success(), "{cmd:?} failed: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A pod CIDR unique to this run: `10.<second>.<pid % 250>.0/24`.
fn unique_cidr(second: u8) -> Ipv4Net {
    let third = (std::process::id() % 250) as u8;
    Ipv4Net::new(Ipv4Addr::new(10, second, third, 0), 24).expect("valid CIDR")
}

/// A CNI bin dir for a runtime: every reference plugin (containerd needs loopback; podman
/// calls VERSION on what it finds) and our kubenet-bridge.
fn plugin_dir(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).expect("mkdir");
    for e in fs::read_dir(REFERENCE_PLUGIN_DIR)
        .expect("reference plugins: run install-test-deps.sh")
        .flatten()
    {
        fs::copy(e.path(), bin.join(e.file_name())).expect("copy reference plugin");
    }
    let ours = bin.join("kubenet-bridge");
    fs::copy(plugin_binary("kubenet-bridge"), &ours).expect("copy kubenet-bridge");
    fs::set_permissions(&ours, fs::Permissions::from_mode(0o755)).expect("chmod");
    bin
}

/// A conflist entry list without portmap: with no port mappings its DEL still creates the
/// iptables nat chains it then deletes, which would leave a `nat` table in the host's
/// ruleset. Port mapping is not what these tests are about.
fn without_portmap(mut conf: Value) -> Value {
    if let Some(list) = conf["plugins"].as_array_mut() {
        list.retain(|p| p["type"] != "portmap");
    }
    conf
}

// ---------------------------------------------------------------------------------------
// The host snapshot

#[derive(Debug, PartialEq, Eq)]
struct HostState {
    links: BTreeSet<String>,
    ruleset: String,
    ip_forward: String,
    ip6_forward: String,
    /// `accept_ra` of every link (a dual-stack ADD raises the uplink's to 2).
    accept_ra: Vec<(String, String)>,
}

fn read_sysctl(path: &str) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl HostState {
    fn take() -> HostState {
        HostState {
            links: links().into_iter().map(|(name, _)| name).collect(),
            ruleset: run_ok(Command::new("nft").args(["list", "ruleset"])),
            ip_forward: fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
                .expect("read ip_forward")
                .trim()
                .to_string(),
            ip6_forward: read_sysctl("/proc/sys/net/ipv6/conf/all/forwarding"),
            accept_ra: links()
                .into_iter()
                .map(|(name, _)| {
                    let v = read_sysctl(&format!("/proc/sys/net/ipv6/conf/{name}/accept_ra"));
                    (name, v)
                })
                .collect(),
        }
    }
}

/// (name, master) of every host link.
fn links() -> Vec<(String, Option<String>)> {
    let out = run_ok(Command::new("ip").args(["-j", "link", "show"]));
    let v: Value = serde_json::from_str(&out).expect("ip -j link show");
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| {
            Some((
                l["ifname"].as_str()?.to_string(),
                l["master"].as_str().map(str::to_string),
            ))
        })
        .collect()
}

/// Puts the host back as [`HostState::take`] found it: the test's bridge and the veths on it,
/// its masquerade table (then the whole ruleset if anything else differs), ip_forward.
struct HostGuard {
    before: HostState,
    bridge: String,
    restored: bool,
}

impl HostGuard {
    fn new(bridge: &str) -> HostGuard {
        HostGuard {
            before: HostState::take(),
            bridge: bridge.to_string(),
            restored: false,
        }
    }

    /// Restores, then returns what still differs (nothing, unless someone else changed the
    /// host meanwhile). Never panics: it also runs from Drop.
    fn restore(&mut self) -> Vec<String> {
        self.restored = true;
        let mut problems = Vec::new();
        let now = links();
        for (name, master) in &now {
            if master.as_deref() == Some(self.bridge.as_str()) && !self.before.links.contains(name)
            {
                let _ = Command::new("ip").args(["link", "del", name]).status();
            }
        }
        if now.iter().any(|(n, _)| *n == self.bridge) && !self.before.links.contains(&self.bridge) {
            let _ = Command::new("ip")
                .args(["link", "del", &self.bridge])
                .status();
        }
        let table = format!(
            "cni_suite_{}",
            self.bridge
                .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        );
        for family in ["ip", "ip6"] {
            if !self
                .before
                .ruleset
                .contains(&format!("table {family} {table} "))
            {
                let _ = Command::new("nft")
                    .args(["delete", "table", family, &table])
                    .output();
            }
        }
        let ruleset = Command::new("nft").args(["list", "ruleset"]).output();
        if ruleset
            .as_ref()
            .map(|o| o.stdout != self.before.ruleset.as_bytes())
            .unwrap_or(true)
        {
            problems.push(
                "the ruleset differed after removing the test's table: restored the snapshot"
                    .to_string(),
            );
            let script = format!("flush ruleset\n{}", self.before.ruleset);
            let child = Command::new("nft")
                .args(["-f", "-"])
                .stdin(std::process::Stdio::piped())
                .spawn();
            if let Ok(mut c) = child {
                if let Some(mut stdin) = c.stdin.take() {
                    use std::io::Write;
                    let _ = stdin.write_all(script.as_bytes());
                }
                let _ = c.wait();
            }
        }
        let _ = fs::write("/proc/sys/net/ipv4/ip_forward", &self.before.ip_forward);
        if !self.before.ip6_forward.is_empty() {
            let _ = fs::write(
                "/proc/sys/net/ipv6/conf/all/forwarding",
                &self.before.ip6_forward,
            );
        }
        for (name, value) in &self.before.accept_ra {
            let path = format!("/proc/sys/net/ipv6/conf/{name}/accept_ra");
            if !value.is_empty() && read_sysctl(&path) != *value {
                let _ = fs::write(&path, value);
            }
        }
        let after = HostState::take();
        let new_links: Vec<&String> = after.links.difference(&self.before.links).collect();
        if !new_links.is_empty() {
            problems.push(format!("links not there before: {new_links:?}"));
        }
        if after.ruleset != self.before.ruleset {
            problems.push("the ruleset still differs from the snapshot".into());
        }
        if after.ip6_forward != self.before.ip6_forward {
            problems.push(format!(
                "IPv6 forwarding is {}, was {}",
                after.ip6_forward, self.before.ip6_forward
            ));
        }
        let ra_changed: Vec<_> = after
            .accept_ra
            .iter()
            .filter(|(n, v)| {
                self.before
                    .accept_ra
                    .iter()
                    .any(|(bn, bv)| bn == n && bv != v)
            })
            .collect();
        if !ra_changed.is_empty() {
            problems.push(format!("accept_ra differs: {ra_changed:?}"));
        }
        if after.ip_forward != self.before.ip_forward {
            problems.push(format!(
                "ip_forward is {}, was {}",
                after.ip_forward, self.before.ip_forward
            ));
        }
        problems
    }
}

impl Drop for HostGuard {
    fn drop(&mut self) {
        if !self.restored {
            for p in self.restore() {
                eprintln!("warning: host restore: {p}");
            }
        }
    }
}

/// Removes a runtime's private directory; unmounts what the runtime left mounted below it
/// first (deepest first), so nothing outside is touched.
struct RuntimeDir(TempDir);

impl RuntimeDir {
    fn new(prefix: &str) -> RuntimeDir {
        RuntimeDir(
            tempfile::Builder::new()
                .prefix(prefix)
                .tempdir_in("/var/tmp")
                .expect("temp dir"),
        )
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let prefix = format!("{}/", self.0.path().display());
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
    }
}

// ---------------------------------------------------------------------------------------
// containerd + CRI

/// containerd started by conformance/scripts/containerd-cri.sh; stopped (with its shims) on
/// drop.
struct Containerd {
    dir: PathBuf,
    socket: String,
}

impl Containerd {
    fn start(dir: &Path, bin: &Path, conf: &Path, template: &Path) -> Containerd {
        // The guard exists before containerd does: a failed start still stops what it started.
        let ctd = Containerd {
            dir: dir.to_path_buf(),
            socket: dir.join("containerd.sock").to_string_lossy().into_owned(),
        };
        let out = run_ok(
            Command::new(repo_root().join("conformance/scripts/containerd-cri.sh"))
                .arg("start")
                .args([dir, bin, conf, template]),
        );
        assert_eq!(
            out.trim().lines().last(),
            Some(ctd.socket.as_str()),
            "{out}"
        );
        ctd
    }

    /// One CRI call through conformance/scripts/cri_pod.py; its JSON answer.
    fn cri(&self, args: &[&str]) -> Value {
        let cri = tools_dir().join("cri");
        assert!(
            cri.join("api_pb2_grpc.py").is_file() && cri.join("venv/bin/python").is_file(),
            "no CRI client in {}: run conformance/scripts/install-test-deps.sh",
            cri.display()
        );
        // A runtime that hangs fails the test instead of blocking it.
        let o = run(Command::new("timeout")
            .arg("60")
            .arg(cri.join("venv/bin/python"))
            .arg(repo_root().join("conformance/scripts/cri_pod.py"))
            .arg(&self.socket)
            .args(args)
            .env("PYTHONPATH", &cri));
        let log = fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        assert!(
            o.status.success(),
            "CRI {args:?} failed: {}\ncontainerd log (tail):\n{}",
            text(&o),
            tail(&log, 30)
        );
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("CRI {args:?}: not JSON ({e}): {}", text(&o)))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("conformance/scripts/containerd-cri.sh"))
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn lease_files_any(dir: &Path) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    out.sort();
    out
}

/// A unique-local IPv6 /64 for a run: fd00:10:<second>:<pid-derived>::/64.
fn unique_cidr_v6(second: u8) -> ipnet::Ipv6Net {
    let v4 = unique_cidr(second);
    let third = v4.network().octets()[2];
    format!("fd00:10:{second}:{third}::/64")
        .parse()
        .expect("a valid IPv6 range")
}

fn lease_files(dir: &Path) -> Vec<Ipv4Addr> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

#[test]
fn containerd_cri_gives_a_pod_sandbox_an_address_from_kubenet_bridge_and_releases_it() {
    require_root();
    let _one_at_a_time = HOST.lock().unwrap_or_else(|p| p.into_inner());
    let bridge = unique_link_name("crt");
    let cidr = unique_cidr(251);
    let mut host = HostGuard::new(&bridge);
    let dir = RuntimeDir::new("cnirt-ctd-");
    let d = dir.path();
    let bin = plugin_dir(d);
    let conf = d.join("net.d");
    let ipam = d.join("ipam");
    let log = d.join("kubenet-bridge.log");

    // Our conf_template example, as containerd renders it with kubelet's pod CIDR; only the
    // node-wide names are made unique to this run.
    let example = repo_root().join("packaging/examples/kubenet-bridge.conflist.template");
    let mut template: Value =
        serde_json::from_slice(&fs::read(&example).expect("example template"))
            .expect("the template example is JSON");
    template = without_portmap(template);
    template["plugins"][0]["bridge"] = json!(bridge);
    template["plugins"][0]["dataDir"] = json!(ipam);
    template["plugins"][0]["logFile"] = json!(log);
    assert_eq!(template["plugins"][0]["podCIDR"], "{{.PodCIDR}}");
    let template_path = d.join("kubenet-bridge.conflist.template");
    fs::write(
        &template_path,
        serde_json::to_string_pretty(&template).expect("json"),
    )
    .expect("write");
    let network = template["name"].as_str().expect("name").to_string();

    let ctd = Containerd::start(d, &bin, &conf, &template_path);
    let st = ctd.cri(&["status"]);
    assert_eq!(st["runtimeReady"], true, "{st}");
    assert_eq!(st["networkReady"], false, "no conflist yet: {st}");

    // kubelet reports the node's pod CIDR; containerd writes the conflist from the template.
    ctd.cri(&["update-pod-cidr", &cidr.to_string()]);
    assert!(
        eventually(Duration::from_secs(20), || ctd.cri(&["status"])
            ["networkReady"]
            == true),
        "containerd's network never became ready: {}",
        ctd.cri(&["status"])
    );
    let rendered: Value = serde_json::from_slice(
        &fs::read(conf.join("10-containerd-net.conflist")).expect("rendered conflist"),
    )
    .expect("rendered conflist is JSON");
    assert_eq!(rendered["plugins"][0]["podCIDR"], cidr.to_string());

    let uid = unique_name("cri-uid-");
    let id = ctd.cri(&[
        "run",
        "cnisuite-pod",
        &uid,
        &d.join("logs").to_string_lossy(),
    ])["id"]
        .as_str()
        .expect("sandbox id")
        .to_string();
    let status = ctd.cri(&["pod-status", &id]);
    assert_eq!(status["state"], "SANDBOX_READY", "{status}");
    let ip: Ipv4Addr = status["ip"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no pod IP: {status}"));
    assert!(
        cidr.contains(&ip) && ip != cidr.hosts().next().expect("gateway"),
        "{ip} not a pod address of {cidr}"
    );
    let leases = ipam.join(&network);
    assert_eq!(lease_files(&leases), vec![ip], "one lease, the pod's");
    let holder = fs::read_to_string(leases.join(ip.to_string())).expect("lease file");
    assert!(
        holder.starts_with(&id),
        "lease held by {holder:?}, sandbox is {id}"
    );
    assert!(
        links().iter().any(|(n, _)| *n == bridge),
        "no bridge {bridge} on the host"
    );
    let logged = fs::read_to_string(&log).expect("plugin log");
    assert!(
        logged.contains(&format!("ADD network={network} container={id}")),
        "{logged}"
    );

    // The doctor, on the host, agrees.
    let o = run(Command::new(plugin_binary("cni-suite")).args([
        "doctor",
        "--json",
        "--conf-dir",
        &conf.to_string_lossy(),
        "--bin-dir",
        &bin.to_string_lossy(),
        "--containerd-config",
        &d.join("config.toml").to_string_lossy(),
    ]));
    let report: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("doctor JSON ({e}): {}", text(&o)));
    let table = format!("cni_suite_{}", bridge.replace('-', "_"));
    for name in [
        "runtime-cni".to_string(),
        "conflist:10-containerd-net.conflist".into(),
        format!("bridge:{bridge}"),
        format!("ipam:{network}"),
        format!("masquerade:{table}"),
        format!("log:{network}"),
        "ip-forward".into(),
    ] {
        let c = report["checks"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == name.as_str()));
        assert_eq!(
            c.map(|c| c["status"].clone()),
            Some(json!("ok")),
            "{name}: {c:?}\n{report:#}"
        );
    }

    // StopPodSandbox: CNI DEL releases the address.
    ctd.cri(&["stop", &id]);
    assert!(
        lease_files(&leases).is_empty(),
        "lease left after StopPodSandbox: {:?}",
        lease_files(&leases)
    );
    let logged = fs::read_to_string(&log).expect("plugin log");
    assert!(
        logged.contains(&format!("DEL network={network} container={id}")),
        "{logged}"
    );
    ctd.cri(&["remove", &id]);
    drop(ctd);

    let problems = host.restore();
    assert!(problems.is_empty(), "host not restored: {problems:?}");
}

// ---------------------------------------------------------------------------------------
// podman + CNI

/// podman with its CNI backend, kept to one test's directory: storage, run root, temp dir
/// and a `containers.conf` made from our example, naming the test's plugin and config dirs.
struct Podman {
    home: PathBuf,
    conf_file: PathBuf,
}

impl Podman {
    fn new(home: &Path, bin: &Path, conf: &Path) -> Podman {
        let example =
            fs::read_to_string(repo_root().join("packaging/examples/podman-containers.conf"))
                .expect("example");
        assert!(example.contains("network_backend = \"cni\""), "{example}");
        let containers_conf = example
            .lines()
            .map(|l| {
                if l.starts_with("cni_plugin_dirs") {
                    format!("cni_plugin_dirs = [\"{}\"]", bin.display())
                } else if l.starts_with("network_config_dir") {
                    format!("network_config_dir = \"{}\"", conf.display())
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
            // This machine: no CAP_SYS_RESOURCE for podman's default ulimits, crun refuses the
            // hybrid cgroups (runc works), no systemd for cgroups or journald for events.
            + "\n[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
               [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n";
        let conf_file = home.join("containers.conf");
        fs::write(&conf_file, containers_conf).expect("write");
        Podman {
            home: home.to_path_buf(),
            conf_file,
        }
    }

    /// `podman <args>`, bounded by 120 s.
    fn run(&self, args: &[&str]) -> Output {
        let d = &self.home;
        run(Command::new("timeout")
            .args(["120", "podman", "--root"])
            .arg(d.join("storage"))
            .arg("--runroot")
            .arg(d.join("run"))
            .args(["--storage-driver", "vfs", "--tmpdir"])
            .arg(d.join("tmp"))
            .args(args)
            .env("CONTAINERS_CONF", &self.conf_file))
    }

    /// Imports `image`: a root filesystem of Debian's busybox-static with `applets` linked to
    /// it, so no registry is needed.
    fn import_busybox(&self, image: &str, applets: &[&str]) {
        let rootfs = self.home.join("rootfs");
        fs::create_dir_all(rootfs.join("bin")).expect("mkdir");
        for sub in ["etc", "proc", "sys", "dev", "tmp"] {
            fs::create_dir_all(rootfs.join(sub)).expect("mkdir");
        }
        fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
            .expect("busybox-static: run install-test-deps.sh");
        for applet in applets {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
                .expect("symlink");
        }
        fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("write");
        fs::write(rootfs.join("etc/group"), "root:x:0:\n").expect("write");
        let tar = self.home.join("rootfs.tar");
        run_ok(
            Command::new("tar")
                .arg("-C")
                .arg(&rootfs)
                .arg("-cf")
                .arg(&tar)
                .arg("."),
        );
        let o = self.run(&[
            "import",
            "-q",
            "--change",
            "CMD [\"/bin/sh\"]",
            &tar.to_string_lossy(),
            image,
        ]);
        assert!(o.status.success(), "podman import: {}", text(&o));
    }
}

#[test]
fn podman_runs_a_container_on_a_kubenet_bridge_network() {
    require_root();
    let _one_at_a_time = HOST.lock().unwrap_or_else(|p| p.into_inner());
    let bridge = unique_link_name("pmt");
    let cidr = unique_cidr(252);
    let gateway = cidr.hosts().next().expect("gateway");
    let mut host = HostGuard::new(&bridge);
    let dir = RuntimeDir::new("cnirt-pm-");
    let d = dir.path();
    let bin = plugin_dir(d);
    let conf = d.join("net.d");
    fs::create_dir_all(&conf).expect("mkdir");
    let ipam = d.join("ipam");
    let log = d.join("kubenet-bridge.log");

    // Our podman examples, with this run's names, ranges and directories.
    let network = unique_name("cnisuite-");
    let mut net: Value = serde_json::from_slice(
        &fs::read(repo_root().join("packaging/examples/podman-kubenet.conflist")).expect("example"),
    )
    .expect("the podman conflist example is JSON");
    net = without_portmap(net);
    net["name"] = json!(network);
    let p = &mut net["plugins"][0];
    p["bridge"] = json!(bridge);
    p["podCIDR"] = json!(cidr.to_string());
    p["nonMasqueradeCIDR"] = json!(cidr.to_string());
    p["dataDir"] = json!(ipam);
    p["logFile"] = json!(log);
    fs::write(
        conf.join(format!("{network}.conflist")),
        serde_json::to_string_pretty(&net).expect("json"),
    )
    .expect("write");
    let pm = Podman::new(d, &bin, &conf);
    let podman = |args: &[&str]| pm.run(args);

    let image = "localhost/cnisuite-bb:latest";
    pm.import_busybox(image, &["sh", "ip", "ping", "sleep"]);

    let o = podman(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(o.status.success(), "podman network ls: {}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| l == network),
        "podman does not list {network}: {}",
        text(&o)
    );

    let script = format!("ip -4 -o addr show eth0; ip route; ping -c 1 -W 2 {gateway} >/dev/null && echo gateway-reachable");
    let o = podman(&[
        "run",
        "--rm",
        "--network",
        &network,
        image,
        "sh",
        "-c",
        &script,
    ]);
    assert!(
        o.status.success(),
        "podman run on {network}: {}\nplugin log:\n{}",
        text(&o),
        fs::read_to_string(&log).unwrap_or_default()
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let addr: Ipv4Net = out
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no IPv4 address on eth0: {out}"));
    assert!(
        cidr.contains(&addr.addr()) && addr.prefix_len() == 24,
        "{addr} not from {cidr}"
    );
    assert!(
        out.contains(&format!("default via {gateway}")),
        "no default route via the gateway: {out}"
    );
    assert!(
        out.contains("gateway-reachable"),
        "the container cannot reach the gateway: {out}"
    );

    // --rm: podman sent DEL; the address is free again.
    let leases = ipam.join(&network);
    assert!(
        lease_files(&leases).is_empty(),
        "lease left after the container exited: {:?}",
        lease_files(&leases)
    );
    let logged = fs::read_to_string(&log).expect("plugin log");
    assert!(
        logged.contains(&format!("ADD network={network}")),
        "{logged}"
    );
    assert!(
        logged.contains(&format!("DEL network={network}")),
        "{logged}"
    );

    let _ = podman(&["rm", "-af"]);
    let _ = podman(&["rmi", "-af"]);
    let problems = host.restore();
    assert!(problems.is_empty(), "host not restored: {problems:?}");
}

// ---------------------------------------------------------------------------------------
// Dual-stack

#[test]
fn containerd_cri_gives_a_dual_stack_sandbox_both_addresses_from_kubenet_bridge() {
    require_root();
    let _one_at_a_time = HOST.lock().unwrap_or_else(|p| p.into_inner());
    let bridge = unique_link_name("crd");
    let (cidr, cidr6) = (unique_cidr(249), unique_cidr_v6(249));
    let mut host = HostGuard::new(&bridge);
    let dir = RuntimeDir::new("cnirt-ctd6-");
    let d = dir.path();
    let bin = plugin_dir(d);
    let conf = d.join("net.d");
    let ipam = d.join("ipam");
    let log = d.join("kubenet-bridge.log");

    // Our dual-stack template: podCIDRs rendered with `range` over {{.PodCIDRRanges}}. It is
    // text, not JSON, until rendered: only its node-wide names are changed here.
    let example =
        repo_root().join("packaging/examples/kubenet-bridge-dual-stack.conflist.template");
    let text = fs::read_to_string(&example).expect("dual-stack template example");
    assert!(
        text.contains("{{range $i, $r := .PodCIDRRanges}}"),
        "{text}"
    );
    let text = text
        .replace("\"cbr0\"", &format!("\"{bridge}\""))
        .replace(
            "\"/var/log/kubenet-bridge.log\"",
            &format!("\"{}\", \"dataDir\": \"{}\"", log.display(), ipam.display()),
        )
        // No portmap in the test's bin dir needs: the list ends with our plugin.
        .replace(
            ",\n    { \"type\": \"portmap\", \"capabilities\": { \"portMappings\": true } }",
            "",
        );
    let template_path = d.join("kubenet-bridge-dual-stack.conflist.template");
    fs::write(&template_path, &text).expect("write");

    let ctd = Containerd::start(d, &bin, &conf, &template_path);
    // kubelet's UpdateRuntimeConfig with the node's two ranges, comma-separated.
    ctd.cri(&["update-pod-cidr", &format!("{cidr},{cidr6}")]);
    assert!(
        eventually(Duration::from_secs(20), || ctd.cri(&["status"])
            ["networkReady"]
            == true),
        "containerd's network never became ready: {}\ntemplate:\n{text}",
        ctd.cri(&["status"])
    );
    let rendered: Value = serde_json::from_slice(
        &fs::read(conf.join("10-containerd-net.conflist")).expect("rendered conflist"),
    )
    .unwrap_or_else(|e| panic!("rendered conflist is not JSON ({e}):\n{text}"));
    assert_eq!(
        rendered["plugins"][0]["podCIDRs"],
        json!([cidr.to_string(), cidr6.to_string()]),
        "{rendered}"
    );
    let network = rendered["name"].as_str().expect("name").to_string();

    let uid = unique_name("cri-uid-");
    let id = ctd.cri(&[
        "run",
        "cnisuite-pod6",
        &uid,
        &d.join("logs").to_string_lossy(),
    ])["id"]
        .as_str()
        .expect("sandbox id")
        .to_string();
    let status = ctd.cri(&["pod-status", &id]);
    assert_eq!(status["state"], "SANDBOX_READY", "{status}");
    let ip: IpAddr = status["ip"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no pod IP: {status}"));
    let extra: Vec<IpAddr> = status["additionalIps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str()?.parse().ok())
        .collect();
    assert!(
        matches!(ip, IpAddr::V4(v4) if cidr.contains(&v4)),
        "primary {ip} not from {cidr}: {status}"
    );
    assert!(
        matches!(extra[..], [IpAddr::V6(v6)] if cidr6.contains(&v6)),
        "additional IPs {extra:?} must be one address of {cidr6}: {status}"
    );
    let leases = ipam.join(&network);
    let mut want = vec![ip, extra[0]];
    want.sort();
    assert_eq!(lease_files_any(&leases), want, "the pod's two leases");
    assert_eq!(
        read_sysctl("/proc/sys/net/ipv6/conf/all/forwarding"),
        "1",
        "IPv6 forwarding on for the pods"
    );

    ctd.cri(&["stop", &id]);
    assert!(
        lease_files_any(&leases).is_empty(),
        "leases left after StopPodSandbox: {:?}",
        lease_files_any(&leases)
    );
    ctd.cri(&["remove", &id]);
    drop(ctd);
    let problems = host.restore();
    assert!(problems.is_empty(), "host not restored: {problems:?}");
}

#[test]
fn podman_runs_a_container_on_a_dual_stack_kubenet_bridge_network() {
    require_root();
    let _one_at_a_time = HOST.lock().unwrap_or_else(|p| p.into_inner());
    let bridge = unique_link_name("pmd");
    let (cidr, cidr6) = (unique_cidr(250), unique_cidr_v6(250));
    let gateway = cidr.hosts().next().expect("gateway");
    let gateway6 = IpAddr::from(std::net::Ipv6Addr::from(u128::from(cidr6.network()) + 1));
    let mut host = HostGuard::new(&bridge);
    let dir = RuntimeDir::new("cnirt-pm6-");
    let d = dir.path();
    let bin = plugin_dir(d);
    let conf = d.join("net.d");
    fs::create_dir_all(&conf).expect("mkdir");
    let ipam = d.join("ipam");
    let log = d.join("kubenet-bridge.log");

    let network = unique_name("cnisuite6-");
    let mut net: Value = serde_json::from_slice(
        &fs::read(repo_root().join("packaging/examples/podman-kubenet.conflist")).expect("example"),
    )
    .expect("the podman conflist example is JSON");
    net = without_portmap(net);
    net["name"] = json!(network);
    let p = &mut net["plugins"][0];
    let o = p.as_object_mut().expect("plugin object");
    o.remove("podCIDR");
    o.remove("nonMasqueradeCIDR");
    p["bridge"] = json!(bridge);
    p["podCIDRs"] = json!([cidr.to_string(), cidr6.to_string()]);
    p["nonMasqueradeCIDRs"] = json!([cidr.to_string(), cidr6.to_string()]);
    p["dataDir"] = json!(ipam);
    p["logFile"] = json!(log);
    fs::write(
        conf.join(format!("{network}.conflist")),
        serde_json::to_string_pretty(&net).expect("json"),
    )
    .expect("write");
    let pm = Podman::new(d, &bin, &conf);
    let podman = |args: &[&str]| pm.run(args);
    let image = "localhost/cnisuite-bb6:latest";
    pm.import_busybox(image, &["sh", "ip", "ping", "ping6", "sleep", "cat"]);

    let script = format!(
        "ip -o addr show eth0; ip route; ip -6 route; \
         cat /proc/sys/net/ipv6/conf/eth0/accept_ra | sed 's/^/accept_ra=/'; \
         ping -c 1 -W 2 {gateway} >/dev/null && echo gateway4-reachable; \
         ping6 -c 1 -W 2 {gateway6} >/dev/null && echo gateway6-reachable"
    );
    let o = podman(&[
        "run",
        "--rm",
        "--network",
        &network,
        image,
        "sh",
        "-c",
        &script,
    ]);
    assert!(
        o.status.success(),
        "podman run on {network}: {}\nplugin log:\n{}",
        text(&o),
        fs::read_to_string(&log).unwrap_or_default()
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let addrs: Vec<ipnet::IpNet> = out
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "inet" || w[0] == "inet6")
        .filter_map(|w| w[1].parse().ok())
        .filter(|n: &ipnet::IpNet| !matches!(n.addr(), IpAddr::V6(a) if a.segments()[0] == 0xfe80))
        .collect();
    assert!(
        addrs
            .iter()
            .any(|a| matches!(a.addr(), IpAddr::V4(v4) if cidr.contains(&v4))),
        "no IPv4 address of {cidr}: {out}"
    );
    assert!(
        addrs.iter().any(
            |a| matches!(a.addr(), IpAddr::V6(v6) if cidr6.contains(&v6)) && a.prefix_len() == 64
        ),
        "no IPv6 address of {cidr6}: {out}"
    );
    for want in [
        format!("default via {gateway}"),
        format!("default via {gateway6}"),
        "accept_ra=0".into(),
        "gateway4-reachable".into(),
        "gateway6-reachable".into(),
    ] {
        assert!(
            out.contains(&want),
            "{want:?} missing from the container's view: {out}"
        );
    }
    let leases = ipam.join(&network);
    assert!(
        lease_files_any(&leases).is_empty(),
        "leases left after the container exited: {:?}",
        lease_files_any(&leases)
    );
    let _ = podman(&["rm", "-af"]);
    let _ = podman(&["rmi", "-af"]);
    let problems = host.restore();
    assert!(problems.is_empty(), "host not restored: {problems:?}");
}
