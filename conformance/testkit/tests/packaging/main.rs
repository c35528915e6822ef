//! Packaging and the operator command, black-box: `packaging/release.sh` (tarball whose
//! SHA256SUMS verify, all three plugins and cni-suite, binaries that run, the .deb's layout),
//! `install-cni.sh` into temp dirs (its three templates, idempotent, atomic under a concurrent
//! reader, refusing a foreign conflist, every error path writing nothing), `cni-suite doctor`
//! in a node namespace (healthy: every check ok or skipped; broken: the right checks fail),
//! `cni-suite teardown` (a dry run changes nothing; `--yes` removes the suite's state and
//! nothing else), both also on a vxlan-overlay node of a real overlay (etcd and agents from
//! `cni_testkit::overlay`, nothing made by hand), and every workspace binary's
//! `--help`/`--version`.
//!
//! Run as root, after `cargo build --release --workspace --bins` (every binary is required):
//! ```text
//! cargo test --release -p cni-testkit --test packaging
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cni_testkit::cnitool::LIBCNI_RESULT_CACHE;
use cni_testkit::etcd::Etcdctl;
use cni_testkit::http;
use cni_testkit::netns::{Netns, Node};
use cni_testkit::overlay::{OverlayCluster, OverlayNode, BRIDGE, DEVICE, ETCD_PREFIX};
use cni_testkit::plugin::{bin_dir, plugin_binary, reference_plugin, PluginRun};
use cni_testkit::{eventually, repo_root, require_root, unique_link_name, unique_name};
use serde_json::{json, Value};
use tempfile::TempDir;

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The cargo target dir the test binary was built in (`<dir>/<triple>/release/deps/<test>`).
fn target_dir() -> PathBuf {
    bin_dir()
        .parent()
        .and_then(Path::parent)
        .expect("bin dir is <target>/<triple>/release")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn run_ok(cmd: &mut Command) -> Output {
    let o = run(cmd);
    assert!(o.status.success(), "{cmd:?} failed: {}", text(&o));
    o
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn write(path: &Path, content: impl AsRef<[u8]>) {
    if let Some(d) = path.parent() {
        fs::create_dir_all(d).expect("create dir");
    }
    fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn copy_exec(from: &Path, to_dir: &Path) {
    fs::create_dir_all(to_dir).expect("create bin dir");
    let to = to_dir.join(from.file_name().expect("file name"));
    fs::copy(from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    fs::set_permissions(&to, fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Every file below `dir` (relative path → (size, inode, mtime)), for "nothing changed".
fn tree(dir: &Path) -> BTreeMap<String, (u64, u64, i64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let m = fs::symlink_metadata(&p).expect("metadata");
            let rel = p
                .strip_prefix(dir)
                .expect("below dir")
                .display()
                .to_string();
            if m.is_dir() {
                stack.push(p);
                out.insert(format!("{rel}/"), (0, m.ino(), 0));
            } else {
                out.insert(
                    rel,
                    (m.len(), m.ino(), m.mtime_nsec() + m.mtime() * 1_000_000_000),
                );
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// release.sh

#[test]
fn release_tarball_verifies_and_its_binaries_run() {
    require_root();
    let out = TempDir::new_in("/var/tmp").expect("temp dir");
    let o = run(Command::new("bash")
        .arg(repo_root().join("packaging/release.sh"))
        .args(["--out"])
        .arg(out.path())
        .env("CARGO_TARGET_DIR", target_dir()));
    assert!(o.status.success(), "release.sh failed: {}", text(&o));
    let log = stdout(&o);

    let tgz_name = format!("cni-suite-linux-amd64-{VERSION}.tgz");
    let tgz = out.path().join(&tgz_name);
    assert!(
        tgz.is_file(),
        "{} missing; release.sh said:\n{log}",
        tgz.display()
    );
    run_ok(
        Command::new("sha256sum")
            .args(["-c", &format!("{tgz_name}.sha256")])
            .current_dir(out.path()),
    );

    let x = TempDir::new().expect("temp dir");
    run_ok(
        Command::new("tar")
            .arg("xzf")
            .arg(&tgz)
            .arg("-C")
            .arg(x.path()),
    );
    let root = x.path().join(format!("cni-suite-{VERSION}"));
    let sums = fs::read_to_string(root.join("SHA256SUMS")).expect("SHA256SUMS in the tarball");
    run_ok(
        Command::new("sha256sum")
            .args(["-c", "--strict", "SHA256SUMS"])
            .current_dir(&root),
    );
    // Every release carries all three plugins and the operator command, and nothing else in
    // bin/ (a runtime may exec every file of the CNI bin dir).
    let plugins = ["kubenet-bridge", "vpc-route", "vxlan-overlay"];
    let mut in_bin: Vec<String> = fs::read_dir(root.join("bin"))
        .expect("bin/ in the tarball")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    in_bin.sort();
    assert_eq!(in_bin, plugins, "bin/ of the tarball");
    for (rel, name) in plugins
        .iter()
        .map(|p| (format!("bin/{p}"), *p))
        .chain([("sbin/cni-suite".to_string(), "cni-suite")])
    {
        assert!(
            sums.contains(&format!("  {rel}\n")),
            "SHA256SUMS does not cover {rel}:\n{sums}"
        );
        let bin = root.join(&rel);
        let mode = fs::metadata(&bin).expect("binary").permissions().mode();
        assert_eq!(mode & 0o777, 0o755, "{rel} mode");
        let v = run_ok(Command::new(&bin).arg("--version"));
        let v = stdout(&v);
        assert!(
            v.starts_with(&format!("{name} {VERSION}\n")),
            "{rel} --version: {v}"
        );
        assert!(
            v.contains("1.1.0"),
            "{rel} --version names no CNI versions: {v}"
        );
        let ldd = run(Command::new("ldd").arg(&bin));
        let l = format!("{}{}", stdout(&ldd), String::from_utf8_lossy(&ldd.stderr));
        assert!(
            l.contains("statically linked") || l.contains("not a dynamic executable"),
            "{rel} is not static: {l}"
        );
    }
    for f in [
        "examples/kubenet.conflist",
        "examples/kops-cluster.yaml",
        "examples/containerd-config.toml",
        "examples/kubenet-bridge.conflist.template",
        "examples/podman-containers.conf",
        "examples/podman-kubenet.conflist",
        "examples/vxlan-overlay.conflist",
        "examples/kubenet-vpc-route.conflist",
        "kubernetes/daemonset.yaml",
        "kubernetes/install-cni.sh",
        "kubernetes/Containerfile",
        "kubernetes/conflists/kubenet.conflist.in",
    ] {
        assert!(root.join(f).is_file(), "{f} missing from the tarball");
        assert!(
            sums.contains(&format!("  {f}\n")),
            "SHA256SUMS does not cover {f}"
        );
    }
    for f in fs::read_dir(root.join("examples"))
        .expect("examples")
        .flatten()
    {
        let p = f.path();
        if p.extension().is_some_and(|e| e == "conflist") {
            serde_json::from_slice::<Value>(&fs::read(&p).expect("read"))
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()));
        }
    }
    // The Containerfile's own check of its build context, run on the tarball's layout as the
    // image has it (/opt/cni-suite/{bin,conflists,install-cni.sh,SHA256SUMS}).
    let image = TempDir::new().expect("temp dir");
    let opt = image.path().join("opt/cni-suite");
    fs::create_dir_all(&opt).expect("mkdir");
    run_ok(
        Command::new("cp")
            .arg("-r")
            .arg(root.join("bin"))
            .arg(opt.join("bin")),
    );
    run_ok(
        Command::new("cp")
            .arg("-r")
            .arg(root.join("kubernetes/conflists"))
            .arg(opt.join("conflists")),
    );
    fs::copy(
        root.join("kubernetes/install-cni.sh"),
        opt.join("install-cni.sh"),
    )
    .expect("copy");
    fs::copy(root.join("SHA256SUMS"), opt.join("SHA256SUMS")).expect("copy");
    let containerfile =
        fs::read_to_string(root.join("kubernetes/Containerfile")).expect("Containerfile");
    let check = containerfile
        .split("RUN cd /opt/cni-suite && ")
        .nth(1)
        .and_then(|s| s.split("\\\n && ln").next())
        .expect("the Containerfile verifies SHA256SUMS")
        .replace("\\\n", " ");
    let o = run_ok(Command::new("sh").args(["-c", &check]).current_dir(&opt));
    assert!(
        stdout(&o).contains("bin/kubenet-bridge: OK"),
        "{}",
        text(&o)
    );

    // The sums are checked, not decoration: a changed byte is caught.
    let victim = root.join("bin/kubenet-bridge");
    let mut bytes = fs::read(&victim).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&victim, bytes).expect("write");
    let o = run(Command::new("sha256sum")
        .args(["-c", "--quiet", "SHA256SUMS"])
        .current_dir(&root));
    assert!(!o.status.success(), "a corrupted binary passed SHA256SUMS");

    // The .deb: plugins in the CNI bin dir, the operator command outside it, docs.
    let deb = out.path().join(format!("cni-suite_{VERSION}-1_amd64.deb"));
    assert!(
        deb.is_file(),
        "{} missing; release.sh said:\n{log}",
        deb.display()
    );
    let contents = stdout(&run_ok(
        Command::new("dpkg-deb").arg("--contents").arg(&deb),
    ));
    for p in plugins.iter().map(|p| format!("./opt/cni/bin/{p}")).chain([
        "./usr/sbin/cni-suite".to_string(),
        "./usr/share/doc/cni-suite/examples/kops-cluster.yaml".to_string(),
        "./usr/share/doc/cni-suite/examples/kubenet-bridge.conflist.template".to_string(),
        "./usr/share/doc/cni-suite/kubernetes/daemonset.yaml".to_string(),
    ]) {
        assert!(
            contents.lines().any(|l| l.ends_with(&format!(" {p}"))),
            "{p} not in the .deb:\n{contents}"
        );
    }
    // Exactly the three plugins in the CNI bin dir: cni-suite stays out of it.
    let mut deb_bin: Vec<&str> = contents
        .lines()
        .filter_map(|l| l.split_whitespace().last()?.strip_prefix("./opt/cni/bin/"))
        .filter(|f| !f.is_empty())
        .collect();
    deb_bin.sort_unstable();
    assert_eq!(deb_bin, plugins, "/opt/cni/bin of the .deb:\n{contents}");
    let fields = stdout(&run_ok(Command::new("dpkg-deb").arg("--field").arg(&deb)));
    assert!(fields.contains("Package: cni-suite\n"), "{fields}");
    assert!(
        fields.contains(&format!("Version: {VERSION}-1\n")),
        "{fields}"
    );
    assert!(fields.contains("Depends: nftables"), "{fields}");
    let ex = TempDir::new().expect("temp dir");
    run_ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(ex.path()));
    let v = stdout(&run_ok(
        Command::new(ex.path().join("usr/sbin/cni-suite")).arg("--version"),
    ));
    assert!(v.starts_with(&format!("cni-suite {VERSION}")), "{v}");
}

// ---------------------------------------------------------------------------------------
// install-cni.sh

struct Installer {
    dir: TempDir,
}

impl Installer {
    /// A source bin dir with kubenet-bridge and portmap, and empty target dirs.
    fn new() -> Installer {
        Installer::with(&["kubenet-bridge"])
    }

    /// A source bin dir with our plugins `ours` and the reference portmap (every template
    /// chains it), and empty target dirs.
    fn with(ours: &[&str]) -> Installer {
        let dir = TempDir::new().expect("temp dir");
        for p in ours {
            copy_exec(&plugin_binary(p), &dir.path().join("src"));
        }
        copy_exec(&reference_plugin("portmap"), &dir.path().join("src"));
        Installer { dir }
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    fn conflist(&self) -> PathBuf {
        self.conf().join("10-cni-suite.conflist")
    }

    fn command(&self) -> Command {
        let mut c = Command::new("sh");
        c.arg(repo_root().join("packaging/kubernetes/install-cni.sh"));
        for var in [
            "POD_CIDR",
            "FORCE",
            "NODE_NAME",
            "CLUSTER_CIDR",
            "NON_MASQUERADE_CIDR",
            "ETCD_ENDPOINTS",
            "CLUSTER_NAME",
            "BRIDGE",
            "MTU",
            "LOG_DIR",
            "CNI_VERSION",
            "NETWORK_NAME",
            "CNI_NETWORK",
            "CNI_CONF_NAME",
            "TEMPLATE_DIR",
            "SKIP_PLUGIN_CHECK",
            "KUBERNETES_SERVICE_HOST",
        ] {
            c.env_remove(var);
        }
        c.env("SRC_BIN_DIR", self.dir.path().join("src"))
            .env("CNI_BIN_DIR", self.bin())
            .env("CNI_CONF_DIR", self.conf())
            .env("PLUGINS", "kubenet-bridge portmap");
        c
    }

    fn install(&self, pod_cidr: &str) -> Output {
        run(self.command().env("POD_CIDR", pod_cidr))
    }

    /// Hidden temp files the installer may have left.
    fn leftovers(&self) -> Vec<String> {
        [self.bin(), self.conf()]
            .iter()
            .flat_map(|d| fs::read_dir(d).into_iter().flatten().flatten())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect()
    }
}

#[test]
fn install_cni_is_idempotent_and_writes_a_working_conflist() {
    require_root();
    let inst = Installer::new();
    let o = inst.install("10.244.9.0/24");
    assert!(o.status.success(), "{}", text(&o));
    for p in ["kubenet-bridge", "portmap"] {
        let m = fs::metadata(inst.bin().join(p)).expect("installed");
        assert_eq!(m.permissions().mode() & 0o777, 0o755);
        assert_eq!(
            fs::read(inst.bin().join(p)).expect("read"),
            fs::read(inst.dir.path().join("src").join(p)).expect("read")
        );
    }
    let conf: Value =
        serde_json::from_slice(&fs::read(inst.conflist()).expect("conflist")).expect("JSON");
    assert_eq!(conf["plugins"][0]["type"], "kubenet-bridge");
    assert_eq!(conf["plugins"][0]["podCIDR"], "10.244.9.0/24");
    assert_eq!(conf["plugins"][0]["nonMasqueradeCIDR"], "10.0.0.0/8");
    assert_eq!(conf["plugins"][0]["mtu"], 0);
    assert_eq!(
        fs::metadata(inst.conflist())
            .expect("meta")
            .permissions()
            .mode()
            & 0o777,
        0o644
    );
    assert!(
        inst.leftovers().is_empty(),
        "temp files left: {:?}",
        inst.leftovers()
    );

    let before = tree(inst.dir.path());
    let o = inst.install("10.244.9.0/24");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(stdout(&o).matches("unchanged").count(), 3, "{}", text(&o));
    assert_eq!(
        tree(inst.dir.path()),
        before,
        "a second identical run changed files"
    );

    // A new pod CIDR replaces the conflist (a new inode: renamed into place), nothing else.
    let o = inst.install("10.244.10.0/24");
    assert!(o.status.success(), "{}", text(&o));
    let after = tree(inst.dir.path());
    let key = "net.d/10-cni-suite.conflist".to_string();
    assert_ne!(
        after[&key].1, before[&key].1,
        "the conflist was rewritten in place, not renamed"
    );
    assert_eq!(after["bin/kubenet-bridge"], before["bin/kubenet-bridge"]);
    let conf: Value =
        serde_json::from_slice(&fs::read(inst.conflist()).expect("conflist")).expect("JSON");
    assert_eq!(conf["plugins"][0]["podCIDR"], "10.244.10.0/24");

    // The rendered conflist works: the plugin it names attaches a pod with it.
    let node = Node::new();
    let pod = Netns::new("pkg-pod-");
    let mut net = conf["plugins"][0].clone();
    net["cniVersion"] = conf["cniVersion"].clone();
    net["name"] = conf["name"].clone();
    net["bridge"] = json!(unique_link_name("pki"));
    net["dataDir"] = json!(inst.dir.path().join("ipam"));
    net["logFile"] = json!(inst.dir.path().join("kb.log"));
    let add = PluginRun::new(&inst.bin().join("kubenet-bridge"), &node)
        .command("ADD")
        .container_id("pkg-install-1")
        .netns(&pod.path())
        .ifname("eth0")
        .cni_path(&inst.bin().to_string_lossy())
        .config(&net)
        .exec();
    let r = add.expect_success("ADD with the installed conflist");
    assert!(
        r["ips"][0]["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("10.244.10.")),
        "{r}"
    );
}

#[test]
fn install_cni_replaces_files_atomically_under_a_reader() {
    require_root();
    let inst = Installer::new();
    // Two large, different "binaries": a reader that ever sees a mix or a short file caught
    // an in-place write.
    let a: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
    let b: Vec<u8> = (0..12 << 20).map(|i: u32| (i % 241) as u8).collect();
    let src_a = inst.dir.path().join("a");
    let src_b = inst.dir.path().join("b");
    write(&src_a.join("kubenet-bridge"), &a);
    write(&src_b.join("kubenet-bridge"), &b);
    let install = |src: &Path, cidr: &str| {
        let o = run(inst
            .command()
            .env("SRC_BIN_DIR", src)
            .env("PLUGINS", "kubenet-bridge")
            .env("SKIP_PLUGIN_CHECK", "1")
            .env("POD_CIDR", cidr));
        assert!(o.status.success(), "{}", text(&o));
    };
    install(&src_a, "10.1.0.0/24");
    let stop = Arc::new(AtomicBool::new(false));
    let target = inst.bin().join("kubenet-bridge");
    let conflist = inst.conflist();
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut reads = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let bin = fs::read(&target).expect("the binary never disappears");
                assert!(
                    bin == a || bin == b,
                    "a reader saw a partial binary ({} bytes)",
                    bin.len()
                );
                let conf = fs::read(&conflist).expect("the conflist never disappears");
                serde_json::from_slice::<Value>(&conf).expect("a reader saw a partial conflist");
                reads += 1;
            }
            reads
        })
    };
    for i in 0..8 {
        let (src, cidr) = if i % 2 == 0 {
            (&src_b, "10.2.0.0/24")
        } else {
            (&src_a, "10.1.0.0/24")
        };
        install(src, cidr);
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().expect("reader saw only whole files");
    assert!(reads > 8, "the reader hardly ran ({reads} reads)");
    assert!(
        inst.leftovers().is_empty(),
        "temp files left: {:?}",
        inst.leftovers()
    );
}

#[test]
fn install_cni_refuses_a_foreign_conflist_unless_forced() {
    require_root();
    let inst = Installer::new();
    let foreign = r#"{"cniVersion":"0.4.0","name":"calico","plugins":[{"type":"calico"}]}"#;
    write(&inst.conflist(), foreign);
    let o = inst.install("10.244.9.0/24");
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("refusing"),
        "{}",
        text(&o)
    );
    assert_eq!(
        fs::read_to_string(inst.conflist()).expect("read"),
        foreign,
        "the foreign conflist changed"
    );
    assert!(
        inst.leftovers().is_empty(),
        "temp files left: {:?}",
        inst.leftovers()
    );

    let o = run(inst
        .command()
        .env("POD_CIDR", "10.244.9.0/24")
        .arg("--force"));
    assert!(o.status.success(), "{}", text(&o));
    let conf: Value =
        serde_json::from_slice(&fs::read(inst.conflist()).expect("read")).expect("JSON");
    assert_eq!(conf["plugins"][0]["type"], "kubenet-bridge");
    let backup = inst
        .conf()
        .join("10-cni-suite.conflist.replaced-by-cni-suite");
    assert_eq!(fs::read_to_string(backup).expect("backup kept"), foreign);

    // Our own conflist is ours to replace without --force.
    assert!(inst.install("10.244.11.0/24").status.success());

    // Nothing is written without what the template needs, or with unsafe values.
    let empty = Installer::new();
    let o = run(&mut empty.command());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("POD_CIDR"),
        "{}",
        text(&o)
    );
    let o = empty.install("10.0.0.0/8\",\"x\":\"y");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = empty.install("not-a-cidr");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(!empty.conflist().exists());
    // A conflist naming a plugin that is not installed is not written.
    let o = run(empty
        .command()
        .env("POD_CIDR", "10.244.9.0/24")
        .env("PLUGINS", "kubenet-bridge"));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("portmap"),
        "{}",
        text(&o)
    );
    assert!(!empty.conflist().exists());
    assert!(
        empty.leftovers().is_empty(),
        "temp files left: {:?}",
        empty.leftovers()
    );
}

/// The conflist the installer wrote, parsed, and the types of its plugins in order.
fn installed_conflist(inst: &Installer) -> (Value, Vec<String>) {
    let conf: Value = serde_json::from_slice(&fs::read(inst.conflist()).expect("conflist"))
        .expect("the rendered conflist is JSON");
    let types = conf["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .map(|p| p["type"].as_str().unwrap_or("").to_string())
        .collect();
    (conf, types)
}

#[test]
fn install_cni_renders_the_vxlan_overlay_template() {
    require_root();
    let inst = Installer::with(&["vxlan-overlay"]);
    let o = run(inst
        .command()
        .env("CNI_NETWORK", "vxlan-overlay")
        .env("PLUGINS", "vxlan-overlay portmap")
        .env("CLUSTER_CIDR", "10.200.0.0/16")
        .env(
            "ETCD_ENDPOINTS",
            "http://10.0.0.5:2379,http://10.0.0.6:2379",
        ));
    assert!(o.status.success(), "{}", text(&o));
    let (conf, types) = installed_conflist(&inst);
    assert_eq!(types, ["vxlan-overlay", "portmap"], "{conf:#}");
    let vx = &conf["plugins"][0];
    // The cluster's range: the agent leases this node's subnet of it.
    assert_eq!(vx["clusterCIDR"], "10.200.0.0/16", "{conf:#}");
    assert_eq!(
        vx["etcdEndpoints"],
        json!(["http://10.0.0.5:2379", "http://10.0.0.6:2379"]),
        "{conf:#}"
    );
    assert_eq!(vx["bridge"], "cbr0");
    assert_eq!(vx["mtu"], 0);
    assert_eq!(vx["logFile"], "/var/log/vxlan-overlay.log");
    // On by default, on loopback: what the DaemonSet's probes (host 127.0.0.1) reach.
    assert_eq!(vx["metricsAddress"], "127.0.0.1:9472", "{conf:#}");
    assert_eq!(conf["cniVersion"], "1.0.0");
    assert_eq!(conf["name"], "k8s-pod-network");
    assert!(inst.bin().join("vxlan-overlay").is_file());
    assert!(inst.leftovers().is_empty(), "{:?}", inst.leftovers());

    // METRICS_ADDRESS: any address (IPv6 in brackets) rendered as given; "off" leaves the
    // field out, and the agent serves nothing.
    let render = |metrics: &str| {
        let o = run(inst
            .command()
            .env("CNI_NETWORK", "vxlan-overlay")
            .env("PLUGINS", "vxlan-overlay portmap")
            .env("CLUSTER_CIDR", "10.200.0.0/16")
            .env("ETCD_ENDPOINTS", "http://10.0.0.5:2379")
            .env("METRICS_ADDRESS", metrics));
        assert!(
            o.status.success(),
            "METRICS_ADDRESS={metrics}: {}",
            text(&o)
        );
        installed_conflist(&inst).0
    };
    for (given, rendered) in [
        ("0.0.0.0:9100", json!("0.0.0.0:9100")),
        ("[::1]:9472", json!("[::1]:9472")),
        ("off", Value::Null),
    ] {
        let conf = render(given);
        let vx = &conf["plugins"][0];
        assert_eq!(
            vx["metricsAddress"], rendered,
            "METRICS_ADDRESS={given}: {conf:#}"
        );
        assert_eq!(
            vx["clusterCIDR"], "10.200.0.0/16",
            "METRICS_ADDRESS={given} broke the rest: {conf:#}"
        );
    }
    let vx = &render("127.0.0.1:9472")["plugins"][0];
    assert_eq!(vx["metricsAddress"], "127.0.0.1:9472");

    // The plugin reads the rendered entry: an ADD before the agent leased a subnet is "try
    // again later" (11), not a config error (7). State goes to temp dirs, not the node's.
    let node = Node::new();
    let pod = Netns::new("pkg-vxpod-");
    let mut net = vx.clone();
    net["cniVersion"] = conf["cniVersion"].clone();
    net["name"] = conf["name"].clone();
    net["dataDir"] = json!(inst.dir.path().join("overlay"));
    net["ipamDir"] = json!(inst.dir.path().join("ipam"));
    net["logFile"] = json!(inst.dir.path().join("vx.log"));
    let add = PluginRun::new(&inst.bin().join("vxlan-overlay"), &node)
        .command("ADD")
        .container_id("pkg-install-vx")
        .netns(&pod.path())
        .ifname("eth0")
        .cni_path(&inst.bin().to_string_lossy())
        .config(&net)
        .exec();
    add.expect_cni_error_code(
        "ADD before the lease, rendered vxlan-overlay entry",
        11,
        Some("1.0.0"),
    );
}

#[test]
fn install_cni_renders_the_kubenet_vpc_route_template() {
    require_root();
    let inst = Installer::with(&["kubenet-bridge", "vpc-route"]);
    let o = run(inst
        .command()
        .env("CNI_NETWORK", "kubenet-vpc-route")
        .env("PLUGINS", "kubenet-bridge vpc-route portmap")
        .env("POD_CIDR", "10.244.12.0/24")
        .env("CLUSTER_CIDR", "10.244.0.0/16")
        .env("CLUSTER_NAME", "prod.example.com"));
    assert!(o.status.success(), "{}", text(&o));
    let (conf, types) = installed_conflist(&inst);
    assert_eq!(
        types,
        ["kubenet-bridge", "vpc-route", "portmap"],
        "{conf:#}"
    );
    let kb = &conf["plugins"][0];
    let vpc = &conf["plugins"][1];
    assert_eq!(kb["podCIDR"], "10.244.12.0/24", "{conf:#}");
    // Without NON_MASQUERADE_CIDR the cluster's range is never masqueraded.
    assert_eq!(kb["nonMasqueradeCIDR"], "10.244.0.0/16", "{conf:#}");
    assert_eq!(vpc["podCIDR"], "10.244.12.0/24", "{conf:#}");
    assert_eq!(vpc["clusterCIDR"], "10.244.0.0/16", "{conf:#}");
    assert_eq!(vpc["clusterName"], "prod.example.com", "{conf:#}");
    for p in ["kubenet-bridge", "vpc-route", "portmap"] {
        assert!(inst.bin().join(p).is_file(), "{p} not installed");
    }
    assert!(inst.leftovers().is_empty(), "{:?}", inst.leftovers());
}

#[test]
fn install_cni_error_paths_write_nothing() {
    require_root();
    let inst = Installer::with(&["kubenet-bridge", "vxlan-overlay"]);
    let vxlan = |inst: &Installer| {
        let mut c = inst.command();
        c.env("CNI_NETWORK", "vxlan-overlay")
            .env("PLUGINS", "vxlan-overlay portmap")
            .env("CLUSTER_CIDR", "10.200.0.0/16")
            .env("ETCD_ENDPOINTS", "http://10.0.0.5:2379");
        c
    };
    let broken_templates = inst.dir.path().join("templates");
    write(
        &broken_templates.join("kubenet.conflist.in"),
        r#"{"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "kubenet-bridge", "podCIDR": "@@POD_CIDR@@"}"#,
    );
    assert!(
        has_program("jq"),
        "jq is needed (the installer checks the rendered JSON with it): run conformance/scripts/install-test-deps.sh"
    );
    let cases: Vec<(&str, Command, &str)> = vec![
        (
            "unknown argument",
            {
                let mut c = inst.command();
                c.env("POD_CIDR", "10.244.9.0/24").arg("--frob");
                c
            },
            "unknown argument --frob",
        ),
        (
            "unknown network",
            {
                let mut c = inst.command();
                c.env("POD_CIDR", "10.244.9.0/24")
                    .env("CNI_NETWORK", "calico");
                c
            },
            "no template",
        ),
        (
            "vxlan without CLUSTER_CIDR",
            {
                let mut c = vxlan(&inst);
                c.env_remove("CLUSTER_CIDR");
                c
            },
            "vxlan-overlay needs CLUSTER_CIDR",
        ),
        (
            "vxlan without etcd",
            {
                let mut c = vxlan(&inst);
                c.env_remove("ETCD_ENDPOINTS");
                c
            },
            "vxlan-overlay needs ETCD_ENDPOINTS",
        ),
        (
            "etcd endpoints that would break the JSON",
            {
                let mut c = vxlan(&inst);
                c.env("ETCD_ENDPOINTS", "http://a:2379\"],\"x\":[\"");
                c
            },
            "ETCD_ENDPOINTS=",
        ),
        (
            "cluster CIDR that is not one",
            {
                let mut c = vxlan(&inst);
                c.env("CLUSTER_CIDR", "10.200.0.0");
                c
            },
            "CLUSTER_CIDR=10.200.0.0 is not an IPv4 CIDR",
        ),
        (
            "metrics address without a port",
            {
                let mut c = vxlan(&inst);
                c.env("METRICS_ADDRESS", "127.0.0.1");
                c
            },
            "METRICS_ADDRESS=127.0.0.1 is not IPv4:port",
        ),
        (
            "metrics address with a host name",
            {
                let mut c = vxlan(&inst);
                c.env("METRICS_ADDRESS", "localhost:9472");
                c
            },
            "METRICS_ADDRESS=localhost:9472 is not IPv4:port",
        ),
        (
            "metrics address with port 0 (no probe can follow it)",
            {
                let mut c = vxlan(&inst);
                c.env("METRICS_ADDRESS", "127.0.0.1:0");
                c
            },
            "METRICS_ADDRESS=127.0.0.1:0 is not",
        ),
        (
            "metrics address with an octet past 255",
            {
                let mut c = vxlan(&inst);
                c.env("METRICS_ADDRESS", "127.0.0.256:9472");
                c
            },
            "METRICS_ADDRESS=127.0.0.256:9472 is not",
        ),
        (
            "metrics address that would break the JSON",
            {
                let mut c = vxlan(&inst);
                c.env("METRICS_ADDRESS", "127.0.0.1:9472\",\"x\":\"y");
                c
            },
            "METRICS_ADDRESS=",
        ),
        (
            "MTU that is not a number",
            {
                let mut c = inst.command();
                c.env("POD_CIDR", "10.244.9.0/24").env("MTU", "1500x");
                c
            },
            "MTU=1500x is not a number",
        ),
        (
            "vpc-route without CLUSTER_NAME",
            {
                let mut c = inst.command();
                c.env("CNI_NETWORK", "kubenet-vpc-route")
                    .env("POD_CIDR", "10.244.9.0/24")
                    .env("CLUSTER_CIDR", "10.244.0.0/16");
                c
            },
            "kubenet-vpc-route needs CLUSTER_NAME",
        ),
        (
            "vpc-route template without the vpc-route binary",
            {
                let mut c = inst.command();
                c.env("CNI_NETWORK", "kubenet-vpc-route")
                    .env("POD_CIDR", "10.244.9.0/24")
                    .env("CLUSTER_CIDR", "10.244.0.0/16")
                    .env("CLUSTER_NAME", "prod.example.com")
                    .env("PLUGINS", "kubenet-bridge portmap");
                c
            },
            "names plugin vpc-route",
        ),
        (
            "no binary to install",
            {
                let mut c = inst.command();
                c.env("POD_CIDR", "10.244.9.0/24")
                    .env("PLUGINS", "no-such-plugin");
                c
            },
            "no plugin binary",
        ),
        (
            "a template that renders invalid JSON",
            {
                let mut c = inst.command();
                c.env("POD_CIDR", "10.244.9.0/24")
                    .env("TEMPLATE_DIR", &broken_templates);
                c
            },
            "not valid JSON",
        ),
    ];
    for (what, mut cmd, message) in cases {
        let o = run(&mut cmd);
        assert_eq!(o.status.code(), Some(1), "{what}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(message),
            "{what}: stderr lacks {message:?}: {}",
            text(&o)
        );
        assert!(!inst.conflist().exists(), "{what}: a conflist was written");
        assert!(
            inst.leftovers().is_empty(),
            "{what}: temp files left: {:?}",
            inst.leftovers()
        );
    }

    // Not an error, but said: another config sorting first is what runtimes use.
    write(
        &inst.conf().join("05-other.conflist"),
        r#"{"cniVersion":"1.0.0","name":"o","plugins":[{"type":"bridge"}]}"#,
    );
    let o = run(vxlan(&inst).env("CNI_CONF_NAME", "10-cni-suite.conflist"));
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("05-other.conflist sorts before 10-cni-suite.conflist"),
        "{}",
        text(&o)
    );
}

/// Whether `name` is an executable on PATH (or in the system directories).
fn has_program(name: &str) -> bool {
    run(Command::new("sh").args(["-c", &format!("command -v {name}")]))
        .status
        .success()
}

// ---------------------------------------------------------------------------------------
// cni-suite doctor and teardown, in a node namespace

/// A node namespace with the suite installed in temp dirs: bin dir (kubenet-bridge,
/// portmap), conf dir (one kubenet-bridge conflist), a containerd config naming both, and a
/// libcni cache dir.
struct SuiteNode {
    node: Node,
    dir: TempDir,
    bridge: String,
    network: String,
    pods: Vec<Netns>,
}

const POD_CIDR: &str = "10.245.3.0/24";

impl SuiteNode {
    fn new() -> SuiteNode {
        let dir = TempDir::new().expect("temp dir");
        let bridge = unique_link_name("dkb");
        let network = unique_name("docnet-");
        let s = SuiteNode {
            node: Node::new(),
            dir,
            bridge,
            network,
            pods: Vec::new(),
        };
        copy_exec(&plugin_binary("kubenet-bridge"), &s.bin());
        copy_exec(&reference_plugin("portmap"), &s.bin());
        write(
            &s.conf().join("10-suite.conflist"),
            s.conflist().to_string(),
        );
        write(
            &s.dir.path().join("containerd.toml"),
            format!(
                "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"{}\"\n  conf_dir = \"{}\"\n",
                s.bin().display(),
                s.conf().display()
            ),
        );
        fs::create_dir_all(s.dir.path().join("cache/results")).expect("mkdir");
        s
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }
    fn conf(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }
    fn ipam_root(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }
    fn log(&self) -> PathBuf {
        self.dir.path().join("kubenet-bridge.log")
    }
    fn table(&self) -> String {
        format!(
            "cni_suite_{}",
            self.bridge
                .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        )
    }

    fn conflist(&self) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": self.network,
            "plugins": [
                {
                    "type": "kubenet-bridge",
                    "bridge": self.bridge,
                    "podCIDR": POD_CIDR,
                    "dataDir": self.ipam_root(),
                    "logFile": self.log(),
                },
                { "type": "portmap", "capabilities": { "portMappings": true } }
            ]
        })
    }

    fn plugin(&self, verb: &str, id: &str, pod: &Netns) -> Value {
        let mut conf = self.conflist()["plugins"][0].clone();
        conf["cniVersion"] = json!("1.0.0");
        conf["name"] = json!(self.network);
        PluginRun::new(&self.bin().join("kubenet-bridge"), &self.node)
            .command(verb)
            .container_id(id)
            .netns(&pod.path())
            .ifname("eth0")
            .cni_path(&self.bin().to_string_lossy())
            .config(&conf)
            .exec()
            .expect_success(&format!("{verb} {id}"))
    }

    /// ADDs a pod; returns its index in `pods`.
    fn add_pod(&mut self, id: &str) -> usize {
        let pod = Netns::new("doc-pod-");
        self.plugin("ADD", id, &pod);
        self.pods.push(pod);
        self.pods.len() - 1
    }

    fn suite(&self, args: &[&str]) -> Output {
        suite_in(self.node.netns(), args)
    }

    fn doctor(&self) -> (Output, Value) {
        doctor_in(
            self.node.netns(),
            &self.conf(),
            &self.bin(),
            self.dir.path(),
            &self.dir.path().join("cache"),
        )
    }

    fn teardown(&self, extra: &[&str]) -> (Output, Value) {
        teardown_in(
            self.node.netns(),
            &self.conf(),
            &self.dir.path().join("cache"),
            extra,
        )
    }
}

/// How long one `cni-suite doctor` or `teardown` may take before the test kills it and
/// fails: far beyond a healthy run (a few seconds, 250 pods included).
const SUITE_LIMIT: Duration = Duration::from_secs(120);

/// `cni-suite <args>` inside the node namespace `node`, killed (and the test failed) after
/// [`SUITE_LIMIT`].
fn suite_in(node: &Netns, args: &[&str]) -> Output {
    run_within(
        node.command(plugin_binary("cni-suite")).args(args),
        SUITE_LIMIT,
    )
}

/// Runs `cmd` to its end, its output collected; kills it and panics after `limit`.
fn run_within(cmd: &mut Command, limit: Duration) -> Output {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    // Drained on threads: a full pipe must not stall the command while we wait for it.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped")));
    let err = drain(Box::new(child.stderr.take().expect("piped")));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let err = err.join().unwrap_or_default();
                panic!(
                    "{cmd:?} did not finish within {limit:?}; killed. stderr:\n{}",
                    String::from_utf8_lossy(&err)
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("waiting for {cmd:?}: {e}"),
        }
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// `cni-suite doctor --json` inside `node` on these directories (containerd's config is
/// `<dir>/containerd.toml`): its output and report.
fn doctor_in(node: &Netns, conf: &Path, bin: &Path, dir: &Path, cache: &Path) -> (Output, Value) {
    let o = suite_in(
        node,
        &[
            "doctor",
            "--json",
            "--conf-dir",
            &conf.to_string_lossy(),
            "--bin-dir",
            &bin.to_string_lossy(),
            "--containerd-config",
            &dir.join("containerd.toml").to_string_lossy(),
            "--cache-dir",
            &cache.to_string_lossy(),
        ],
    );
    let v = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("doctor --json is not JSON ({e}): {}", text(&o)));
    (o, v)
}

/// `cni-suite teardown --json <extra>` inside `node`: its output and plan.
fn teardown_in(node: &Netns, conf: &Path, cache: &Path, extra: &[&str]) -> (Output, Value) {
    let conf = conf.to_string_lossy().into_owned();
    let cache = cache.to_string_lossy().into_owned();
    let mut args = vec![
        "teardown",
        "--json",
        "--conf-dir",
        &conf,
        "--cache-dir",
        &cache,
    ];
    args.extend_from_slice(extra);
    let o = suite_in(node, &args);
    let v = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("teardown --json is not JSON ({e}): {}", text(&o)));
    (o, v)
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name} in {report:#}"))
}

fn status<'a>(report: &'a Value, name: &str) -> &'a str {
    check(report, name)["status"].as_str().unwrap_or("?")
}

#[test]
fn doctor_passes_a_healthy_node() {
    require_root();
    let mut s = SuiteNode::new();
    s.add_pod("doc-healthy-a");
    let b = s.add_pod("doc-healthy-b");
    s.plugin("DEL", "doc-healthy-b", &s.pods[b]);
    let (o, report) = s.doctor();
    for c in report["checks"].as_array().expect("checks") {
        assert!(
            c["status"] == "ok" || c["status"] == "skip",
            "on a healthy node every check is ok or skipped, {} is not: {c}\n{report:#}",
            c["name"]
        );
        if c["status"] == "skip" {
            assert!(
                c["message"].as_str().is_some_and(|m| m.len() > 10),
                "a skip says why: {c}"
            );
        }
    }
    assert!(o.status.success(), "doctor exit: {}", text(&o));
    assert_eq!(report["passed"], true);
    for name in [
        "runtime-cni".to_string(),
        "bin-dir".into(),
        "conf-dir".into(),
        "conflist:10-suite.conflist".into(),
        "ip-forward".into(),
        format!("bridge:{}", s.bridge),
        format!("ipam:{}", s.network),
        // The fingerprint the doctor expects is the one netsetup wrote.
        format!("masquerade:{}", s.table()),
        format!("log:{}", s.network),
        "results-cache".into(),
    ] {
        assert_eq!(
            status(&report, &name),
            "ok",
            "{name}: {:#}",
            check(&report, &name)
        );
    }
    let log = check(&report, &format!("log:{}", s.network))["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(log.contains("2 ADD, 1 DEL"), "{log}");
    for skipped in ["cluster-dns", "node-pod-cidr"] {
        assert!(check(&report, skipped)["message"]
            .as_str()
            .unwrap_or("")
            .contains("kubeconfig"));
    }
    // The text report says the same.
    let o = s.suite(&[
        "doctor",
        "--conf-dir",
        &s.conf().to_string_lossy(),
        "--bin-dir",
        &s.bin().to_string_lossy(),
        "--containerd-config",
        &s.dir.path().join("containerd.toml").to_string_lossy(),
        "--cache-dir",
        &s.dir.path().join("cache").to_string_lossy(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(stdout(&o).contains("0 failures"), "{}", text(&o));
}

#[test]
fn doctor_fails_a_broken_node_on_the_right_checks() {
    require_root();
    let mut s = SuiteNode::new();
    s.add_pod("doc-broken-a");
    // A leaked lease: the pod's namespace is deleted without a DEL (its veth pair goes with it).
    let c = s.add_pod("doc-broken-leak");
    let leaked = s.pods.remove(c);
    leaked.delete();
    assert!(
        eventually(Duration::from_secs(10), || s
            .node
            .netns()
            .links_of_kind("veth")
            .len()
            == 1),
        "the leaked pod's veth did not go away"
    );
    // The bridge deleted, forwarding off, a conflist naming a plugin that is not installed.
    s.node.netns().ip_ok(&["link", "del", &s.bridge]);
    s.node.netns().set_sysctl("net/ipv4/ip_forward", "0");
    write(
        &s.conf().join("20-broken.conflist"),
        json!({"cniVersion": "1.0.0", "name": "broken", "plugins": [{"type": "no-such-plugin"}]})
            .to_string(),
    );

    let (o, report) = s.doctor();
    assert_eq!(
        o.status.code(),
        Some(1),
        "doctor must exit 1 on failures: {}",
        text(&o)
    );
    assert_eq!(report["passed"], false);
    assert_eq!(status(&report, &format!("bridge:{}", s.bridge)), "fail");
    assert_eq!(status(&report, "ip-forward"), "fail");
    let ipam = check(&report, &format!("ipam:{}", s.network));
    assert_eq!(ipam["status"], "fail", "{ipam}");
    assert!(
        ipam["message"]
            .as_str()
            .unwrap_or("")
            .contains("1 of 2 lease"),
        "{ipam}"
    );
    let broken = check(&report, "conflist:20-broken.conflist");
    assert_eq!(broken["status"], "fail");
    assert!(
        broken["message"]
            .as_str()
            .unwrap_or("")
            .contains("no-such-plugin"),
        "{broken}"
    );
    for c in report["checks"].as_array().expect("checks") {
        if c["status"] == "fail" || c["status"] == "warn" {
            assert!(
                c["hint"].as_str().is_some_and(|h| !h.is_empty()),
                "a failure carries a fix: {c}"
            );
        }
    }
    // What is still right stays ok.
    assert_eq!(status(&report, "conflist:10-suite.conflist"), "ok");
    assert_eq!(status(&report, "runtime-cni"), "ok");
    assert_eq!(status(&report, &format!("masquerade:{}", s.table())), "ok");
}

#[test]
fn teardown_dry_run_changes_nothing_and_yes_removes_only_the_suites_state() {
    require_root();
    let mut s = SuiteNode::new();
    let a = s.add_pod("td-pod-a");
    let netns = s.node.netns();
    // Another provider's state that must stay: a host-local network, its cached result, a
    // bridge and an nftables table.
    let foreign_ipam = s.ipam_root().join("foreign-net");
    write(&foreign_ipam.join("10.99.0.5"), "other-container\r\neth0");
    write(&foreign_ipam.join("last_reserved_ip.0"), "10.99.0.5");
    let results = s.dir.path().join("cache/results");
    write(
        &results.join("foreign-net-other-container-eth0"),
        json!({"kind": "cniCacheV1", "containerId": "other-container", "ifName": "eth0", "networkName": "foreign-net"}).to_string(),
    );
    let ours = results.join(format!("{}-td-pod-a-eth0", s.network));
    write(
        &ours,
        json!({"kind": "cniCacheV1", "containerId": "td-pod-a", "ifName": "eth0", "networkName": s.network}).to_string(),
    );
    let other_bridge = unique_link_name("fbr");
    netns.ip_ok(&["link", "add", &other_bridge, "type", "bridge"]);
    let nft = |args: &[&str]| run(netns.command("nft").args(args));
    assert!(nft(&["add", "table", "ip", "other_provider"])
        .status
        .success());

    let links = || {
        netns
            .ip_json(&["link", "show"])
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect::<Vec<_>>()
    };
    let ruleset = || stdout(&nft(&["list", "ruleset"]));
    let (links0, rules0, files0) = (links(), ruleset(), tree(s.dir.path()));
    assert!(links0.contains(&s.bridge), "{links0:?}");
    assert!(rules0.contains(&s.table()), "{rules0}");

    let (o, plan) = s.teardown(&[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(plan["dryRun"], true);
    let actions: Vec<String> = plan["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .map(|a| a["action"].as_str().unwrap_or("").to_string())
        .collect();
    for want in [
        format!("delete link {} ", s.bridge),
        format!("delete nftables table ip {}", s.table()),
        format!("remove {}/", s.ipam_root().join(&s.network).display()),
        format!("remove {} ", ours.display()),
    ] {
        assert!(
            actions.iter().any(|a| a.starts_with(&want)),
            "plan lacks {want:?}: {actions:#?}"
        );
    }
    assert!(
        actions.iter().any(|a| a.starts_with("delete link veth")),
        "{actions:#?}"
    );
    for a in &actions {
        assert!(
            !a.contains("foreign") && !a.contains("other_provider") && !a.contains(&other_bridge),
            "plan touches another provider: {a}"
        );
    }
    assert_eq!(links(), links0, "the dry run changed links");
    assert_eq!(ruleset(), rules0, "the dry run changed the firewall");
    assert_eq!(tree(s.dir.path()), files0, "the dry run changed files");

    let (o, done) = s.teardown(&["--yes"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(done["dryRun"], false);
    for a in done["actions"].as_array().expect("actions") {
        assert_eq!(a["result"], "done", "{a}");
    }
    let left = links();
    assert!(!left.contains(&s.bridge), "bridge left: {left:?}");
    assert!(
        left.iter().all(|l| !l.starts_with("veth")),
        "veths left: {left:?}"
    );
    assert!(
        left.contains(&other_bridge),
        "another provider's bridge was removed: {left:?}"
    );
    let rules = ruleset();
    assert!(!rules.contains("cni_suite_"), "suite table left:\n{rules}");
    assert!(
        rules.contains("table ip other_provider"),
        "another provider's table was removed:\n{rules}"
    );
    assert!(
        !s.ipam_root().join(&s.network).exists(),
        "suite IPAM state left"
    );
    assert!(
        foreign_ipam.join("10.99.0.5").is_file(),
        "another network's IPAM state was removed"
    );
    assert!(!ours.exists(), "suite cached result left");
    assert!(
        results.join("foreign-net-other-container-eth0").is_file(),
        "another network's cached result was removed"
    );
    // The pod lost its interface with its veth.
    assert!(!s.pods[a].has_link("eth0"));

    // Idempotent: nothing left to do.
    let (o, again) = s.teardown(&["--yes"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        again["actions"].as_array().map(Vec::len),
        Some(0),
        "{again:#}"
    );
}

/// The suite's veths (`veth` + 11 hex digits) in `netns`.
fn suite_veths(netns: &Netns) -> Vec<String> {
    netns
        .links_of_kind("veth")
        .into_iter()
        .map(|l| l.name)
        .filter(|n| n.len() == 15 && n.starts_with("veth"))
        .collect()
}

#[test]
fn teardown_removes_a_node_of_250_pods_in_bounded_time() {
    require_root();
    const PODS: usize = 250;
    // How long the removal may take. It took about 5 s here, nearly all of it the kernel's
    // ~17 ms per veth deletion (RCU synchronisation; `ip -batch` of the same 250 deletes
    // takes 4.2 s). The bound catches a hang or stalls on netlink receive timeouts (10 s
    // each), not a slow machine.
    const LIMIT: Duration = Duration::from_secs(60);
    let mut s = SuiteNode::new();
    for i in 0..PODS {
        s.add_pod(&format!("td-many-{i:03}"));
    }
    let netns = s.node.netns();
    assert_eq!(
        suite_veths(netns).len(),
        PODS,
        "a veth per pod before teardown"
    );
    let leases = s.ipam_root().join(&s.network);
    let leased = fs::read_dir(&leases)
        .expect("the network's IPAM dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("10.245.3."))
        .count();
    assert_eq!(leased, PODS, "a lease per pod before teardown");

    // The plan names every pod's veth once.
    let (o, plan) = s.teardown(&[]);
    assert!(o.status.success(), "{}", text(&o));
    let deletes = plan["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter(|a| {
            a["action"]
                .as_str()
                .unwrap_or("")
                .starts_with("delete link veth")
        })
        .count();
    assert_eq!(deletes, PODS, "{plan:#}");

    let started = Instant::now();
    let (o, done) = s.teardown(&["--yes"]);
    let took = started.elapsed();
    assert!(o.status.success(), "{}", text(&o));
    for a in done["actions"].as_array().expect("actions") {
        assert_eq!(a["result"], "done", "{a}");
    }
    assert!(took < LIMIT, "teardown of {PODS} pods took {took:?}");
    eprintln!("teardown of {PODS} pods took {took:?}");
    assert_eq!(suite_veths(netns), Vec::<String>::new(), "veths left");
    assert!(!netns.has_link(&s.bridge), "bridge {} left", s.bridge);
    assert!(!leases.exists(), "the network's leases are left");
    let rules = stdout(&run(netns.command("nft").args(["list", "ruleset"])));
    assert!(!rules.contains(&s.table()), "{} left:\n{rules}", s.table());
    let attached = s.pods.iter().filter(|p| p.has_link("eth0")).count();
    assert_eq!(attached, 0, "pods kept their interface");
}

// ---------------------------------------------------------------------------------------
// cni-suite doctor and teardown on a vxlan-overlay node

/// Node 0 of an etcd-backed overlay (etcd and real agents, from `cni_testkit::overlay`)
/// as cni-suite sees it: a conf dir holding the conflist its agent reads, a bin dir with
/// vxlan-overlay, and libcni's cache dir (where cnitool, which attaches the pods, caches
/// results).
struct OverlaySuite {
    // Dropped first: pods, agents, etcd and namespaces go before the temp dir.
    cluster: OverlayCluster,
    dir: TempDir,
}

impl OverlaySuite {
    fn start(nodes: u8) -> OverlaySuite {
        // A leaseTTL that outlives the test, so a killed agent's record is still in etcd when
        // teardown looks; a resync that never comes, so the agent does not repair what a test
        // breaks on purpose.
        OverlaySuite::start_with(nodes, 300, 3600, &json!({}))
    }

    /// [`start`](Self::start) with this leaseTTL, resyncSeconds and more plugin fields.
    fn start_with(nodes: u8, lease_ttl: u64, resync: u64, fields: &Value) -> OverlaySuite {
        let cluster = OverlayCluster::start_with(nodes, lease_ttl, resync, fields);
        let dir = TempDir::new().expect("temp dir");
        let s = OverlaySuite { cluster, dir };
        write(
            &s.conf().join("10-vxlan.conflist"),
            fs::read(s.node().conflist_path()).expect("the node's conflist"),
        );
        copy_exec(&plugin_binary("vxlan-overlay"), &s.dir.path().join("bin"));
        s
    }

    fn node(&self) -> &OverlayNode {
        &self.cluster.nodes[0]
    }
    fn conf(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }
    /// The IPAM root of the node's conflist (`ipamDir`).
    fn ipam_root(&self) -> PathBuf {
        self.node()
            .leases()
            .path()
            .parent()
            .expect("leases are <ipamDir>/<network>")
            .to_path_buf()
    }
    /// libcni's cache dir (cached results in `<dir>/results`).
    fn cache_dir() -> &'static Path {
        Path::new(LIBCNI_RESULT_CACHE)
            .parent()
            .expect("results is below the cache dir")
    }
    /// The node's cached results, as cnitool wrote them.
    fn cached_results(&self) -> Vec<PathBuf> {
        let prefix = format!("{}-", self.node().net_name());
        fs::read_dir(LIBCNI_RESULT_CACHE)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect()
    }

    fn doctor(&self) -> (Output, Value) {
        doctor_in(
            self.node().netns(),
            &self.conf(),
            &self.dir.path().join("bin"),
            self.dir.path(),
            Self::cache_dir(),
        )
    }

    fn teardown(&self, extra: &[&str]) -> (Output, Value) {
        teardown_in(self.node().netns(), &self.conf(), Self::cache_dir(), extra)
    }

    /// The node's links by name.
    fn links(&self) -> Vec<String> {
        self.node()
            .netns()
            .ip_json(&["link", "show"])
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect()
    }

    /// The node's nftables ruleset.
    fn ruleset(&self) -> String {
        stdout(&run(self
            .node()
            .netns()
            .command("nft")
            .args(["list", "ruleset"])))
    }

    /// The underlay addresses etcd holds subnet records of.
    fn record_owners(&self) -> Vec<String> {
        let mut owners: Vec<String> = self
            .cluster
            .records()
            .expect("etcd answers")
            .iter()
            .map(|p| p.underlay.to_string())
            .collect();
        owners.sort();
        owners
    }
}

fn message(c: &Value) -> &str {
    c["message"].as_str().unwrap_or("")
}

fn hint(c: &Value) -> &str {
    c["hint"].as_str().unwrap_or("")
}

#[test]
fn doctor_checks_the_vxlan_device_and_the_agent_lease() {
    require_root();
    let mut s = OverlaySuite::start(1);
    let subnet = s.node().subnet_env().expect("leased").node_subnet();
    let dev = format!("vxlan:{DEVICE}");
    let agent = format!("agent:{}", s.node().net_name());
    let record = format!("agent-etcd:{}", s.node().net_name());
    let me = s.node().underlay_ip().to_string();

    let (_, report) = s.doctor();
    let c = check(&report, &record);
    assert_eq!(c["status"], "ok", "{c}");
    assert!(
        message(c).contains(&format!("{subnet} recorded for {me}")),
        "the record check names the subnet etcd holds for this node: {c}"
    );
    let c = check(&report, &dev);
    assert_eq!(c["status"], "ok", "{c}");
    assert!(
        message(c).contains(&format!("VTEP {}/32", subnet.network())),
        "the device check names the VTEP address: {c}"
    );
    let c = check(&report, &agent);
    assert_eq!(c["status"], "ok", "{c}");
    assert!(
        message(c).contains("agent pid") && message(c).contains(&format!("leased {subnet}")),
        "the agent check names the agent and its lease: {c}"
    );

    // The device deleted under a running agent: a failure with the fix.
    s.node().netns().ip_ok(&["link", "del", DEVICE]);
    let (o, report) = s.doctor();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let c = check(&report, &dev);
    assert_eq!(c["status"], "fail", "{c}");
    assert!(message(c).contains("missing"), "{c}");
    assert!(hint(c).contains("restart the vxlan-overlay agent"), "{c}");
    assert_eq!(status(&report, &agent), "ok", "the agent still runs");

    // The agent killed: its lease is on file but nobody renews it.
    s.cluster.nodes[0].take_agent().kill();
    let (o, report) = s.doctor();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let c = check(&report, &agent);
    assert_eq!(c["status"], "fail", "{c}");
    assert!(message(c).contains("no agent runs"), "{c}");
    assert!(hint(c).contains("vxlan-overlay agent --config"), "{c}");

    // Its record gone from etcd (expired, or deleted by hand): peers drop the node.
    let key = format!(
        "{ETCD_PREFIX}/subnets/{}-{}",
        subnet.network(),
        subnet.prefix_len()
    );
    s.cluster.etcd.ctl_ok(&["del", &key]);
    let (o, report) = s.doctor();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let c = check(&report, &record);
    assert_eq!(c["status"], "fail", "{c}");
    assert!(
        message(c).contains(&format!("no subnet record for this node ({me})")),
        "{c}"
    );
    assert!(hint(c).contains("restart the agent"), "{c}");

    // No lease at all: the agent check says so and what it breaks; without a lease a missing
    // device is expected, not a fault.
    fs::remove_file(s.node().data_dir().join("subnet.env")).expect("remove subnet.env");
    let (_, report) = s.doctor();
    let c = check(&report, &agent);
    assert_eq!(c["status"], "fail", "{c}");
    assert!(message(c).contains("no subnet leased"), "{c}");
    assert!(hint(c).contains("code 11"), "{c}");
    let c = check(&report, &dev);
    assert_eq!(c["status"], "skip", "{c}");
    assert!(message(c).contains("not created yet"), "{c}");
    for c in report["checks"].as_array().expect("checks") {
        if c["status"] == "fail" || c["status"] == "warn" {
            assert!(!hint(c).is_empty(), "a failure carries a fix: {c}");
        }
    }
}

#[test]
fn doctor_reads_the_agents_healthz_on_its_metrics_address() {
    require_root();
    // A short leaseTTL and resync, so that etcd's loss shows in /healthz within seconds.
    let metrics: std::net::SocketAddr = "127.0.0.1:9472".parse().expect("address");
    let mut s = OverlaySuite::start_with(2, 6, 1, &json!({"metricsAddress": metrics}));
    s.cluster
        .wait_converged(&[0, 1], Duration::from_secs(20), "two nodes");
    let name = format!("agent-health:{}", s.node().net_name());
    let url = format!("http://{metrics}/healthz");

    // Healthy: ok, with the figures of /metrics (one peer, a recent sync).
    let (_, report) = s.doctor();
    let c = check(&report, &name);
    assert_eq!(c["status"], "ok", "{c}");
    assert!(message(c).starts_with(&format!("{url}: ok")), "{c}");
    assert!(message(c).contains("1 peer(s) programmed"), "{c}");
    assert!(message(c).contains("last sync"), "{c}");

    // etcd gone: the lease cannot be renewed and no sync succeeds, /healthz turns 503 and
    // the doctor fails with the agent's own reason.
    s.cluster.etcd.kill();
    let turned = eventually(Duration::from_secs(30), || {
        http::get(s.node().netns(), metrics, "/healthz").is_ok_and(|r| r.status == 503)
    });
    assert!(
        turned,
        "/healthz stayed 200 without etcd:\n{}",
        s.cluster.diagnostics()
    );
    let reason = http::get(s.node().netns(), metrics, "/healthz")
        .expect("the agent answers")
        .body;
    let (o, report) = s.doctor();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let c = check(&report, &name);
    assert_eq!(c["status"], "fail", "{c}");
    assert!(
        message(c).contains(&format!("{url}: 503 {}", reason.trim())),
        "the check names the agent's reason {reason:?}: {c}"
    );
    assert!(hint(c).contains("etcd") || hint(c).contains("log"), "{c}");

    // The agent stopped: nothing answers, and the check says what to do.
    s.cluster.nodes[0].take_agent().kill();
    let (o, report) = s.doctor();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let c = check(&report, &name);
    assert_eq!(c["status"], "fail", "{c}");
    assert!(
        message(c).contains(&format!("nothing answers on {url}")),
        "{c}"
    );
    assert!(
        message(c).contains("no vxlan-overlay agent runs"),
        "the check names the cause: {c}"
    );
    assert!(hint(c).contains("start the agent"), "{c}");
    assert!(
        hint(c).contains(&format!("metricsAddress {metrics}")),
        "{c}"
    );
}

#[test]
fn teardown_on_a_vxlan_overlay_node_removes_the_overlay_and_its_etcd_record() {
    require_root();
    let mut s = OverlaySuite::start(2);
    let pod = s.cluster.add_pod(0);
    let net = s.node().net_name().to_string();
    let data = s.node().data_dir();
    let ipam = s.ipam_root().join(&net);
    let me = s.node().underlay_ip().to_string();
    let other = s.cluster.nodes[1].underlay_ip().to_string();
    // Another network's host-local state in the same IPAM root must stay.
    let foreign = s.ipam_root().join("foreign-net");
    write(&foreign.join("10.99.0.5"), "other-container\r\neth0");
    write(&foreign.join("last_reserved_ip.0"), "10.99.0.5");
    let cached = s.cached_results();
    assert_eq!(
        cached.len(),
        1,
        "cnitool cached the pod's result: {cached:?}"
    );
    let links0 = s.links();
    for l in [DEVICE, BRIDGE] {
        assert!(
            links0.iter().any(|x| x == l),
            "{l} missing before teardown: {links0:?}"
        );
    }
    assert!(
        s.ruleset().contains("table ip cni_suite_"),
        "{}",
        s.ruleset()
    );
    assert!(
        ipam.is_dir() && data.join("agent.json").is_file() && data.join("subnet.env").is_file()
    );
    assert_eq!(s.record_owners(), [me.clone(), other.clone()]);

    // With the agent running, --yes refuses: it would recreate the device and subnet file.
    let (o, plan) = s.teardown(&["--yes", "--with-etcd-lease"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        plan["blockers"].as_array().is_some_and(|b| b
            .iter()
            .any(|b| b.as_str().unwrap_or("").contains("agent running"))),
        "{plan:#}"
    );
    assert_eq!(s.links(), links0, "a blocked teardown changed links");
    assert!(
        ipam.is_dir() && data.join("subnet.env").is_file(),
        "a blocked teardown removed state"
    );

    // The agent crashed (SIGKILL releases nothing): its record stays in etcd until the TTL.
    s.cluster.nodes[0].take_agent().kill();
    // Only our own cached result is compared: other tests on the machine share libcni's cache.
    let cached_text = || fs::read_to_string(&cached[0]).ok();
    let (rules0, node_files0, cache0) = (
        s.ruleset(),
        tree(data.parent().expect("node dir")),
        cached_text(),
    );
    let (o, plan) = s.teardown(&["--with-etcd-lease"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(plan["dryRun"], true);
    assert_eq!(plan["blockers"], json!([]), "{plan:#}");
    let actions: Vec<String> = plan["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .map(|a| a["action"].as_str().unwrap_or("").to_string())
        .collect();
    for want in [
        format!("delete link {DEVICE} (VXLAN device of network {net})"),
        format!("delete link {BRIDGE} "),
        "delete link veth".to_string(),
        "delete nftables table ip cni_suite_".to_string(),
        format!("remove {}/ (IPAM state of network {net})", ipam.display()),
        format!("remove {} ", data.join("agent.json").display()),
        format!("remove {} ", data.join("subnet.env").display()),
        format!("remove {}/ if empty", data.display()),
        format!("remove {} ", cached[0].display()),
        format!("release this node's subnet record under {ETCD_PREFIX}/subnets"),
    ] {
        assert!(
            actions.iter().any(|a| a.starts_with(&want)),
            "plan lacks {want:?}: {actions:#?}"
        );
    }
    assert!(
        actions.iter().all(|a| !a.contains("foreign")),
        "the plan touches another network: {actions:#?}"
    );
    assert_eq!(s.links(), links0, "the dry run changed links");
    assert_eq!(s.ruleset(), rules0, "the dry run changed the firewall");
    assert_eq!(
        tree(data.parent().expect("node dir")),
        node_files0,
        "the dry run changed the node's files"
    );
    assert!(cache0.is_some(), "the cached result is readable");
    assert_eq!(
        cached_text(),
        cache0,
        "the dry run changed the cached result"
    );
    assert_eq!(
        s.record_owners(),
        [me.clone(), other.clone()],
        "the dry run changed etcd"
    );

    let (o, done) = s.teardown(&["--yes", "--with-etcd-lease"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(done["dryRun"], false);
    for a in done["actions"].as_array().expect("actions") {
        assert_eq!(a["result"], "done", "{a}");
    }
    let left = s.links();
    for gone in [DEVICE, BRIDGE] {
        assert!(!left.iter().any(|l| l == gone), "{gone} left: {left:?}");
    }
    assert!(
        left.iter().all(|l| !l.starts_with("veth")),
        "veths left: {left:?}"
    );
    assert!(
        left.iter().any(|l| l == "eth0"),
        "the underlay link was removed: {left:?}"
    );
    assert!(
        !s.ruleset().contains("cni_suite_"),
        "suite table left:\n{}",
        s.ruleset()
    );
    assert!(!ipam.exists(), "the network's IPAM state is left");
    assert!(!data.exists(), "the agent's state dir is left");
    assert!(!cached[0].exists(), "the cached result is left");
    assert!(
        foreign.join("10.99.0.5").is_file() && foreign.join("last_reserved_ip.0").is_file(),
        "another network's IPAM state was removed"
    );
    assert_eq!(
        s.record_owners(),
        [other],
        "only this node's record goes from etcd"
    );
    assert!(
        !s.cluster.pods[pod].netns.has_link("eth0"),
        "the pod kept its interface"
    );

    // Nothing left to do.
    let (o, again) = s.teardown(&["--yes"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        again["actions"].as_array().map(Vec::len),
        Some(0),
        "{again:#}"
    );
}

// ---------------------------------------------------------------------------------------
// --help and --version

/// The binary targets of every workspace package, as cargo lists them: a binary added later
/// is covered (or this test names it) without anyone remembering to list it here.
fn workspace_binaries() -> Vec<String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let o = run_ok(
        Command::new(cargo)
            .args([
                "metadata",
                "--no-deps",
                "--offline",
                "--format-version",
                "1",
            ])
            .current_dir(repo_root()),
    );
    let meta: Value = serde_json::from_slice(&o.stdout).expect("cargo metadata is JSON");
    let mut bins: Vec<String> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.contains(&json!("bin")))
        })
        .filter_map(|t| t["name"].as_str().map(str::to_string))
        .collect();
    bins.sort();
    bins
}

/// The spec versions each binary must say it speaks on `--version`: the plugins, cni-suite
/// (which asks them VERSION) and the runner every version; the benches the one version they
/// configure (cni-bench), attach pods at through cnitool (vxlan-bench) or write the agent's
/// conflist at (vxlan-scale-bench).
fn spoken_versions(bin: &str) -> Vec<&'static str> {
    match bin {
        "kubenet-bridge" | "vpc-route" | "vxlan-overlay" | "cni-suite" | "cni-conformance" => {
            cni_testkit::SPEC_VERSIONS.to_vec()
        }
        "cni-bench" | "vxlan-bench" | "vxlan-scale-bench" => vec!["1.0.0"],
        other => panic!("binary {other} is new: add the CNI versions it speaks to this test"),
    }
}

#[test]
fn every_binary_answers_help_and_version() {
    let bins = workspace_binaries();
    for b in [
        "kubenet-bridge",
        "vpc-route",
        "vxlan-overlay",
        "cni-suite",
        "cni-conformance",
        "cni-bench",
        "vxlan-bench",
        "vxlan-scale-bench",
    ] {
        assert!(
            bins.iter().any(|x| x == b),
            "cargo metadata lacks {b}: {bins:?}"
        );
    }
    for b in &bins {
        // The test command builds every binary first: a missing one is a failure.
        let p = plugin_binary(b);
        let v = stdout(&run_ok(Command::new(&p).arg("--version").env_clear()));
        let want = format!(
            "{b} {VERSION}\nCNI spec versions: {}\n",
            spoken_versions(b).join(", ")
        );
        assert_eq!(v, want, "{b} --version");
        let h = stdout(&run_ok(Command::new(&p).arg("--help").env_clear()));
        assert!(
            h.len() > 300 && h.contains("--version") && h.contains("--help"),
            "{b} --help must describe the binary and list its options: {h}"
        );
    }
    let agent = stdout(&run_ok(
        Command::new(plugin_binary("vxlan-overlay")).args(["agent", "--help"]),
    ));
    for want in [
        "usage: vxlan-overlay agent --config",
        "-c, --config",
        "-h, --help",
        "SIGTERM",
        "etcdEndpoints",
    ] {
        assert!(agent.contains(want), "agent --help lacks {want:?}: {agent}");
    }
    for sub in ["doctor", "teardown"] {
        let h = stdout(&run_ok(
            Command::new(plugin_binary("cni-suite")).args([sub, "--help"]),
        ));
        assert!(
            h.contains("--json") && h.contains("--conf-dir"),
            "cni-suite {sub} --help: {h}"
        );
    }
    let o = run(Command::new(plugin_binary("cni-suite")).arg("no-such-command"));
    assert_eq!(
        o.status.code(),
        Some(2),
        "a usage error exits 2: {}",
        text(&o)
    );
}
