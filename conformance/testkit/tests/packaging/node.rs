//! The nodes `cni-suite doctor` and `teardown` run on: a kubenet-bridge node namespace with
//! the suite installed in temp dirs ([`SuiteNode`]), node 0 of an etcd-backed vxlan overlay
//! ([`OverlaySuite`]), and running the command inside them with a time limit.

use super::*;
use cni_testkit::plugin::Expect;

/// A node namespace with the suite installed in temp dirs: bin dir (kubenet-bridge,
/// portmap), conf dir (one kubenet-bridge conflist), a containerd config naming both, and a
/// libcni cache dir.
pub(super) struct SuiteNode {
    pub(super) node: Node,
    pub(super) dir: TempDir,
    pub(super) bridge: String,
    pub(super) network: String,
    pub(super) pods: Vec<Netns>,
    /// Dual-stack: `podCIDRs` [POD_CIDR, POD_CIDR6] instead of `podCIDR`.
    pub(super) dual: bool,
}

pub(super) const POD_CIDR: &str = "10.245.3.0/24";
/// The IPv6 range of a dual-stack [`SuiteNode`].
pub(super) const POD_CIDR6: &str = "fd00:245:3::/120";

impl SuiteNode {
    pub(super) fn new() -> SuiteNode {
        SuiteNode::with_family(false)
    }

    /// A node whose network is dual-stack (`podCIDRs`: IPv4 and IPv6).
    pub(super) fn new_dual() -> SuiteNode {
        SuiteNode::with_family(true)
    }

    fn with_family(dual: bool) -> SuiteNode {
        let dir = TempDir::new().expect("temp dir");
        let bridge = unique_link_name("dkb");
        let network = unique_name("docnet-");
        let s = SuiteNode {
            node: Node::new(),
            dir,
            bridge,
            network,
            pods: Vec::new(),
            dual,
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

    pub(super) fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }
    pub(super) fn conf(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }
    pub(super) fn ipam_root(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }
    pub(super) fn log(&self) -> PathBuf {
        self.dir.path().join("kubenet-bridge.log")
    }
    pub(super) fn table(&self) -> String {
        format!(
            "cni_suite_{}",
            self.bridge
                .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        )
    }

    pub(super) fn conflist(&self) -> Value {
        let mut list = json!({
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
        });
        if self.dual {
            let entry = &mut list["plugins"][0];
            entry["podCIDRs"] = json!([POD_CIDR, POD_CIDR6]);
            if let Some(o) = entry.as_object_mut() {
                o.remove("podCIDR");
            }
        }
        list
    }

    pub(super) fn plugin(&self, verb: &str, id: &str, pod: &Netns) -> Value {
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
    pub(super) fn add_pod(&mut self, id: &str) -> usize {
        let pod = Netns::new("doc-pod-");
        self.plugin("ADD", id, &pod);
        self.pods.push(pod);
        self.pods.len() - 1
    }

    pub(super) fn suite(&self, args: &[&str]) -> Output {
        suite_in(self.node.netns(), args)
    }

    pub(super) fn doctor(&self) -> (Output, Value) {
        self.doctor_with(&[])
    }

    /// `cni-suite doctor` with `extra` arguments.
    pub(super) fn doctor_with(&self, extra: &[&str]) -> (Output, Value) {
        doctor_in(
            self.node.netns(),
            &self.conf(),
            &self.bin(),
            self.dir.path(),
            &self.dir.path().join("cache"),
            extra,
        )
    }

    /// A libcni cache entry for `id`/eth0 of this network, as containerd writes it.
    pub(super) fn cache_result(&self, id: &str) -> PathBuf {
        let path = self
            .dir
            .path()
            .join(format!("cache/results/{}-{id}-eth0", self.network));
        write(
            &path,
            json!({"kind": "cniCacheV1", "containerId": id, "ifName": "eth0", "networkName": self.network}).to_string(),
        );
        path
    }

    pub(super) fn teardown(&self, extra: &[&str]) -> (Output, Value) {
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
pub(super) const SUITE_LIMIT: Duration = Duration::from_secs(120);

/// `cni-suite <args>` inside the node namespace `node`, killed (and the test failed) after
/// [`SUITE_LIMIT`].
pub(super) fn suite_in(node: &Netns, args: &[&str]) -> Output {
    run_within(
        node.command(plugin_binary("cni-suite")).args(args),
        SUITE_LIMIT,
    )
}

/// Runs `cmd` to its end, its output collected; kills it and panics after `limit`.
pub(super) fn run_within(cmd: &mut Command, limit: Duration) -> Output {
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
pub(super) fn doctor_in(
    node: &Netns,
    conf: &Path,
    bin: &Path,
    dir: &Path,
    cache: &Path,
    extra: &[&str],
) -> (Output, Value) {
    let (conf, bin) = (conf.to_string_lossy(), bin.to_string_lossy());
    let containerd = dir.join("containerd.toml");
    let (containerd, cache) = (containerd.to_string_lossy(), cache.to_string_lossy());
    let mut args = vec![
        "doctor",
        "--json",
        "--conf-dir",
        &conf,
        "--bin-dir",
        &bin,
        "--containerd-config",
        &containerd,
        "--cache-dir",
        &cache,
    ];
    args.extend_from_slice(extra);
    let o = suite_in(node, &args);
    let v = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("doctor --json is not JSON ({e}): {}", text(&o)));
    (o, v)
}

/// `cni-suite teardown --json <extra>` inside `node`: its output and plan.
pub(super) fn teardown_in(
    node: &Netns,
    conf: &Path,
    cache: &Path,
    extra: &[&str],
) -> (Output, Value) {
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

pub(super) fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name} in {report:#}"))
}

pub(super) fn status<'a>(report: &'a Value, name: &str) -> &'a str {
    check(report, name)["status"].as_str().unwrap_or("?")
}

/// The suite's veths (`veth` + 11 hex digits) in `netns`.
pub(super) fn suite_veths(netns: &Netns) -> Vec<String> {
    netns
        .links_of_kind("veth")
        .into_iter()
        .map(|l| l.name)
        .filter(|n| n.len() == 15 && n.starts_with("veth"))
        .collect()
}

/// Node 0 of an etcd-backed overlay (etcd and real agents, from `cni_testkit::overlay`)
/// as cni-suite sees it: a conf dir holding the conflist its agent reads, a bin dir with
/// vxlan-overlay, and libcni's cache dir (where cnitool, which attaches the pods, caches
/// results).
pub(super) struct OverlaySuite {
    // Dropped first: pods, agents, etcd and namespaces go before the temp dir.
    pub(super) cluster: OverlayCluster,
    pub(super) dir: TempDir,
}

impl OverlaySuite {
    pub(super) fn start(nodes: u8) -> OverlaySuite {
        // A leaseTTL that outlives the test, so a killed agent's record is still in etcd when
        // teardown looks; a resync that never comes, so the agent does not repair what a test
        // breaks on purpose.
        OverlaySuite::start_with(nodes, 300, 3600, &json!({}))
    }

    /// [`start`](Self::start) with this leaseTTL, resyncSeconds and more plugin fields.
    pub(super) fn start_with(
        nodes: u8,
        lease_ttl: u64,
        resync: u64,
        fields: &Value,
    ) -> OverlaySuite {
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

    pub(super) fn node(&self) -> &OverlayNode {
        &self.cluster.nodes[0]
    }
    pub(super) fn conf(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }
    /// The IPAM root of the node's conflist (`ipamDir`).
    pub(super) fn ipam_root(&self) -> PathBuf {
        self.node()
            .leases()
            .path()
            .parent()
            .expect("leases are <ipamDir>/<network>")
            .to_path_buf()
    }
    /// libcni's cache dir (cached results in `<dir>/results`).
    pub(super) fn cache_dir() -> &'static Path {
        Path::new(LIBCNI_RESULT_CACHE)
            .parent()
            .expect("results is below the cache dir")
    }
    /// The node's cached results, as cnitool wrote them.
    pub(super) fn cached_results(&self) -> Vec<PathBuf> {
        let prefix = format!("{}-", self.node().net_name());
        fs::read_dir(LIBCNI_RESULT_CACHE)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect()
    }

    pub(super) fn doctor(&self) -> (Output, Value) {
        doctor_in(
            self.node().netns(),
            &self.conf(),
            &self.dir.path().join("bin"),
            self.dir.path(),
            Self::cache_dir(),
            &[],
        )
    }

    pub(super) fn teardown(&self, extra: &[&str]) -> (Output, Value) {
        teardown_in(self.node().netns(), &self.conf(), Self::cache_dir(), extra)
    }

    /// The node's links by name.
    pub(super) fn links(&self) -> Vec<String> {
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
    pub(super) fn ruleset(&self) -> String {
        stdout(&run(self
            .node()
            .netns()
            .command("nft")
            .args(["list", "ruleset"])))
    }

    /// The underlay addresses etcd holds subnet records of.
    pub(super) fn record_owners(&self) -> Vec<String> {
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

pub(super) fn message(c: &Value) -> &str {
    c["message"].as_str().unwrap_or("")
}

pub(super) fn hint(c: &Value) -> &str {
    c["hint"].as_str().unwrap_or("")
}
