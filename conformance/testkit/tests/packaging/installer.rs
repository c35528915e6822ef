//! `packaging/kubernetes/install-cni.sh` into temp dirs: its three templates, idempotent,
//! atomic under a concurrent reader, refusing a foreign conflist, every error path writing
//! nothing, bad CIDRs refused by the plugins themselves (`--check-config`).

use super::*;
use cni_testkit::plugin::Expect;

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
fn install_cni_renders_the_vxlan_overlay_kubernetes_template() {
    require_root();
    let inst = Installer::with(&["vxlan-overlay"]);
    let o = run(inst
        .command()
        .env("CNI_NETWORK", "vxlan-overlay-kubernetes")
        .env("PLUGINS", "vxlan-overlay portmap")
        .env("CLUSTER_CIDR", "100.96.0.0/11"));
    assert!(o.status.success(), "{}", text(&o));
    let (conf, types) = installed_conflist(&inst);
    assert_eq!(types, ["vxlan-overlay", "portmap"], "{conf:#}");
    let vx = &conf["plugins"][0];
    // The Kubernetes registry: no etcd; the controller-manager's --cluster-cidr.
    assert_eq!(vx["registry"], "kubernetes", "{conf:#}");
    assert!(vx.get("etcdEndpoints").is_none(), "{conf:#}");
    assert_eq!(vx["clusterCIDR"], "100.96.0.0/11", "{conf:#}");
    assert_eq!(vx["metricsAddress"], "127.0.0.1:9472", "{conf:#}");
    assert!(inst.leftovers().is_empty(), "{:?}", inst.leftovers());
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
            "vxlan-overlay refuses the rendered conflist, nothing installed: vxlan-overlay: ",
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

/// The CIDR variables are judged by the plugins that will read the conflist (`<plugin>
/// --check-config`), not by a pattern in shell: a malformed address, a prefix past /32 and a
/// range too small for its use are refused with the plugin's own message, and nothing is
/// installed (binaries and the previous conflist stay as they were).
#[test]
fn install_cni_refuses_bad_cidrs_with_the_plugins_message_and_installs_nothing() {
    require_root();
    let inst = Installer::with(&["kubenet-bridge", "vxlan-overlay", "vpc-route"]);
    let all = "kubenet-bridge vxlan-overlay vpc-route portmap";
    let o = run(inst
        .command()
        .env("PLUGINS", all)
        .env("POD_CIDR", "100.96.3.0/24"));
    assert!(o.status.success(), "{}", text(&o));
    let previous = fs::read(inst.conflist()).expect("the first conflist");
    // A second source whose binaries differ from the installed ones (a trailing byte, still
    // runnable): a run that installed them would show in the bin dir.
    let newer = inst.dir.path().join("newer");
    for p in ["kubenet-bridge", "vxlan-overlay", "vpc-route", "portmap"] {
        copy_exec(&inst.dir.path().join("src").join(p), &newer);
        let mut bytes = fs::read(newer.join(p)).expect("read copy");
        bytes.push(0);
        fs::write(newer.join(p), bytes).expect("write copy");
    }
    let before = tree(inst.dir.path());

    // One run: a template, the variables that differ from good values, the plugin that must
    // refuse, and the words of its refusal.
    let render = |template: &str, vars: &[(&str, &str)]| {
        let mut c = inst.command();
        c.env("PLUGINS", all).env("SRC_BIN_DIR", &newer);
        let good: &[(&str, &str)] = match template {
            "kubenet" => &[("POD_CIDR", "100.96.3.0/24")],
            "kubenet-vpc-route" => &[
                ("POD_CIDR", "100.96.3.0/24"),
                ("CLUSTER_CIDR", "100.96.0.0/16"),
                ("CLUSTER_NAME", "prod.example.com"),
            ],
            _ => &[
                ("CLUSTER_CIDR", "100.96.0.0/16"),
                ("ETCD_ENDPOINTS", "http://10.0.0.5:2379"),
            ],
        };
        c.env("CNI_NETWORK", template);
        for (k, v) in good.iter().chain(vars) {
            c.env(k, v);
        }
        c
    };
    let (kb, vpc, vx) = ("kubenet-bridge", "vpc-route", "vxlan-overlay");
    // podCIDR and vpc-route's ranges take either family; nonMasqueradeCIDR and the overlay's
    // clusterCIDR are IPv4 only.
    let not_cidr = |v: &str| format!("{v:?} is not a CIDR");
    let not_v4 = |v: &str| format!("{v:?} is not an IPv4 CIDR");
    let too_small = |v: &str| format!("pod CIDR {v} is too small");
    /// What, template, variables, the plugin that refuses, the words of its refusal.
    type Refusal<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, &'a str, String);
    #[rustfmt::skip]
    let cases: Vec<Refusal> = vec![
        ("POD_CIDR malformed", "kubenet", vec![("POD_CIDR", "100.96.300.0/24")], kb, not_cidr("100.96.300.0/24")),
        ("POD_CIDR prefix /33", "kubenet", vec![("POD_CIDR", "100.96.3.0/33")], kb, not_cidr("100.96.3.0/33")),
        ("POD_CIDR /31", "kubenet", vec![("POD_CIDR", "100.96.3.0/31")], kb, too_small("100.96.3.0/31")),
        ("POD_CIDR /32", "kubenet", vec![("POD_CIDR", "100.96.3.0/32")], kb, too_small("100.96.3.0/32")),
        ("POD_CIDR IPv6 prefix /129", "kubenet", vec![("POD_CIDR", "fd00:96:3::/129")], kb, not_cidr("fd00:96:3::/129")),
        ("POD_CIDR IPv6 malformed", "kubenet", vec![("POD_CIDR", "fd00:96:3:::/120")], kb, not_cidr("fd00:96:3:::/120")),
        ("POD_CIDR IPv6 /127", "kubenet", vec![("POD_CIDR", "fd00:96:3::/127")], kb, too_small("fd00:96:3::/127")),
        ("POD_CIDR /31 with vpc-route", "kubenet-vpc-route", vec![("POD_CIDR", "100.96.3.0/31")], kb, too_small("100.96.3.0/31")),
        ("NON_MASQUERADE_CIDR malformed", "kubenet", vec![("NON_MASQUERADE_CIDR", "10.0.0.300/8")], kb, not_v4("10.0.0.300/8")),
        ("NON_MASQUERADE_CIDR prefix /33", "kubenet", vec![("NON_MASQUERADE_CIDR", "10.0.0.0/33")], kb, not_v4("10.0.0.0/33")),
        ("NON_MASQUERADE_CIDR not a CIDR", "kubenet", vec![("NON_MASQUERADE_CIDR", "10.0.0.0")], kb, not_v4("10.0.0.0")),
        // kubenet-vpc-route: CLUSTER_CIDR is also the default NON_MASQUERADE_CIDR, so a
        // malformed one is refused by kubenet-bridge first; one too small, by vpc-route.
        ("CLUSTER_CIDR malformed (vpc-route)", "kubenet-vpc-route", vec![("CLUSTER_CIDR", "100.96.0.0.0/16")], kb, not_v4("100.96.0.0.0/16")),
        ("CLUSTER_CIDR prefix /33 (vpc-route)", "kubenet-vpc-route", vec![("CLUSTER_CIDR", "100.96.0.0/33"), ("NON_MASQUERADE_CIDR", "10.0.0.0/8")], vpc, not_cidr("100.96.0.0/33")),
        ("CLUSTER_CIDR smaller than the pod CIDR (vpc-route)", "kubenet-vpc-route", vec![("CLUSTER_CIDR", "100.96.3.0/31")], vpc, "podCIDR: 100.96.3.0/24 is not inside clusterCIDR 100.96.3.0/31".into()),
        ("CLUSTER_CIDR malformed (vxlan-overlay)", "vxlan-overlay", vec![("CLUSTER_CIDR", "100.96.0.0/1x")], vx, not_v4("100.96.0.0/1x")),
        ("CLUSTER_CIDR prefix /33 (vxlan-overlay)", "vxlan-overlay", vec![("CLUSTER_CIDR", "100.96.0.0/33")], vx, not_v4("100.96.0.0/33")),
        ("CLUSTER_CIDR smaller than a node subnet (vxlan-overlay)", "vxlan-overlay", vec![("CLUSTER_CIDR", "100.96.0.0/31")], vx, "subnetLen 24 must be between clusterCIDR's prefix /31 and 30".into()),
    ];
    for (what, template, vars, plugin, message) in cases {
        let o = run(&mut render(template, &vars));
        assert_eq!(o.status.code(), Some(1), "{what}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!(
                "{plugin} refuses the rendered conflist, nothing installed: {plugin}: "
            )),
            "{what}: not refused by {plugin}: {}",
            text(&o)
        );
        assert!(
            err.contains(&message),
            "{what}: stderr lacks {message:?}: {}",
            text(&o)
        );
        assert_eq!(
            fs::read(inst.conflist()).expect("the previous conflist stays"),
            previous,
            "{what}: the conflist changed"
        );
        assert_eq!(tree(inst.dir.path()), before, "{what}: files changed");
        assert!(
            inst.leftovers().is_empty(),
            "{what}: temp files left: {:?}",
            inst.leftovers()
        );
    }

    // The same newer binaries with good values are installed: the runs above would have
    // shown in the tree had they installed anything.
    let o = run(&mut render("kubenet", &[]));
    assert!(o.status.success(), "{}", text(&o));
    assert_ne!(tree(inst.dir.path()), before, "a good run changed nothing");
    assert_eq!(
        fs::read(inst.bin().join("kubenet-bridge")).expect("installed"),
        fs::read(newer.join("kubenet-bridge")).expect("newer")
    );
}

/// `--check-config` on every plugin binary: the entry of its own type, accepted or refused
/// with its code, a conflist without its type refused, a usage error for no file.
#[test]
fn plugins_check_their_entry_of_a_conflist() {
    let dir = TempDir::new().expect("temp dir");
    let file = dir.path().join("net.conflist");
    let check = |plugin: &str, conf: &Value| {
        write(&file, conf.to_string());
        run(Command::new(plugin_binary(plugin))
            .arg("--check-config")
            .arg(&file))
    };
    let list = |plugins: Value| json!({"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": plugins});
    let kb = json!({"type": "kubenet-bridge", "podCIDR": "10.244.1.0/24"});
    let o = check("kubenet-bridge", &list(json!([kb, {"type": "portmap"}])));
    assert!(o.status.success(), "{}", text(&o));
    assert!(stdout(&o).contains(": ok"), "{}", text(&o));
    let o = check(
        "kubenet-bridge",
        &list(
            json!([{"type": "kubenet-bridge", "podCIDR": "10.244.1.0/24", "gateway": "10.9.9.9"}]),
        ),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("gateway 10.9.9.9 is not a host address of 10.244.1.0/24")
            && String::from_utf8_lossy(&o.stderr).contains("(code 7)"),
        "{}",
        text(&o)
    );
    // A single plugin config reads as a list of one.
    let mut single = kb.clone();
    single["cniVersion"] = json!("1.0.0");
    single["name"] = json!("single");
    let o = check("kubenet-bridge", &single);
    assert!(o.status.success(), "{}", text(&o));
    let o = check("vxlan-overlay", &list(json!([kb])));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no plugin of type \"vxlan-overlay\""),
        "{}",
        text(&o)
    );
    let o = check(
        "vxlan-overlay",
        &list(
            json!([{"type": "vxlan-overlay", "clusterCIDR": "10.200.0.0/16", "etcdEndpoints": ["https://10.0.0.5:2379"]}]),
        ),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("need etcdCAFile"),
        "{}",
        text(&o)
    );
    let o = check(
        "vpc-route",
        &list(
            json!([kb, {"type": "vpc-route", "clusterName": "c", "podCIDR": "10.244.1.0/24", "clusterCIDR": "10.244.0.0/16"}]),
        ),
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = run(Command::new(plugin_binary("kubenet-bridge")).arg("--check-config"));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}
