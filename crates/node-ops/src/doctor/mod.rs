//! `cni-suite doctor`: checks a node the way kops' "Validating CNI installation" list does
//! (runtime set to use CNI, the provider started without errors, pod create and delete
//! logged, kube-dns running), and then the suite's own state: binaries, every conflist and the
//! plugins it names, bridges, VXLAN devices, forwarding, masquerade tables, leaked leases,
//! the agent's lease and `/healthz`, and VPC routes. It only reads; nothing on the node changes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use ipnet::{IpNet, Ipv4Net};
use pod_bridge::attach::host_veth_name;
use pod_bridge::BridgeNetwork;
use serde_json::Value;

pub mod agent_health;
pub mod report;

use crate::bin_dir::is_executable;
use crate::kernel::{self, Links};
use crate::libcni_cache::{self, CachedResult};
use crate::netconf::{self, ConfFile, Kind, SuiteNetwork};
use crate::runtime;
use crate::{logs, vpc, SUITE_PLUGINS};
use report::{Check, Report};

/// Where to look.
#[derive(Clone, Debug)]
pub struct Options {
    /// The CNI conf dir runtimes read.
    pub conf_dir: PathBuf,
    /// The CNI bin dir runtimes exec plugins from.
    pub bin_dir: PathBuf,
    /// containerd's config.
    pub containerd_config: PathBuf,
    /// A kubeconfig for the cluster-side checks (kubectl is run with it).
    pub kubeconfig: Option<PathBuf>,
    /// This node's name in the cluster (default: the hostname).
    pub node_name: Option<String>,
    /// libcni's cache dir (results in `<dir>/results`).
    pub cache_dir: PathBuf,
    /// How far back log errors count as recent.
    pub log_window: Duration,
    /// This command's version, compared with the installed plugins'.
    pub suite_version: String,
}

/// How long a plugin may take to answer VERSION or `--version`.
const EXEC_LIMIT: Duration = Duration::from_secs(5);

/// Runs every check.
pub fn run(opts: &Options) -> Report {
    let mut report = Report::default();
    let procs = kernel::processes();
    let kubelet = runtime::kubelet(&procs);
    report.push(check_runtime(opts, kubelet.as_ref()));
    report.push(check_bin_dir(opts));
    report.push(check_location(opts));

    let files = match netconf::load_dir(&opts.conf_dir) {
        Ok(f) => f,
        Err(e) => {
            report.push(Check::fail(
                "conf-dir",
                format!("cannot read {}: {e}", opts.conf_dir.display()),
                "create it and install a conflist (packaging/kubernetes/install-cni.sh)",
            ));
            Vec::new()
        }
    };
    let (nets, config_errors) = netconf::suite_networks(&files);
    if opts.conf_dir.is_dir() {
        report.push(check_conf_dir(opts, &files, &nets));
    }
    let mut versions = VersionCache::default();
    for f in &files {
        report.push(check_conf_file(opts, f, &mut versions));
    }
    for (path, e) in &config_errors {
        report.push(Check::fail(
            format!("config:{}", file_name(path)),
            format!("a suite plugin's settings do not decode: {e}"),
            format!("fix {} (see README's field tables)", path.display()),
        ));
    }
    report.push(check_ip_forward());

    let mut links = match Links::read() {
        Ok(l) => Some(l),
        Err(e) => {
            report.push(Check::fail(
                "netlink",
                format!("cannot list links: {e}"),
                "run as root on the node (or inside its network namespace)",
            ));
            None
        }
    };
    let nft = kernel::nft_tables();
    let mut seen_bridges = BTreeSet::new();
    for net in &nets {
        let resolved = net.resolve();
        if let (Kind::Kubenet(_), Err(e)) = (&net.kind, &resolved) {
            report.push(Check::fail(
                format!("config:{}", file_name(&net.file)),
                format!("network {:?}: {e}: every ADD fails", net.name),
                format!("fix the kubenet-bridge entry of {}", net.file.display()),
            ));
        }
        let leases = read_leases(&net.ipam_dir());
        if let Some(links) = links.as_mut() {
            if seen_bridges.insert(net.bridge().to_string()) {
                report.push(check_bridge(net, resolved.as_ref().ok(), &leases, links));
            }
            report.push(check_leases(net, resolved.as_ref().ok(), &leases, links));
        }
        report.push(check_masquerade(net, resolved.as_ref().ok(), &leases, &nft));
        report.push(check_log(net, &leases, opts));
        if let Kind::Overlay(cfg) = &net.kind {
            report.push(check_agent(net, cfg));
            report.push(check_agent_record(net, cfg));
            report.push(agent_health::check(net, cfg));
            report.push(check_agent_log(net, opts));
            if let Some(links) = links.as_mut() {
                report.push(check_vxlan(cfg, links));
            }
        }
        if let Some(entry) = &net.vpc_route {
            report.push(check_vpc(net, entry, resolved.as_ref().ok(), &leases));
        }
    }
    if let Some(links) = links.as_ref() {
        report.push(check_results_cache(opts, &nets, links));
    }
    report.push(check_br_netfilter(kubelet.is_some()));
    for c in cluster_checks(opts, &nets) {
        report.push(c);
    }
    report
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// kops: "kubelet is running with the --network-plugin=cni option" (before 1.24); after it,
/// the runtime (containerd) runs CNI with its own bin and conf dirs.
fn check_runtime(opts: &Options, kubelet: Option<&runtime::Kubelet>) -> Check {
    const NAME: &str = "runtime-cni";
    if let Some(k) = kubelet {
        match k.network_plugin.as_deref() {
            Some("cni") => {
                for (flag, dir, want) in [
                    ("--cni-bin-dir", &k.cni_bin_dir, &opts.bin_dir),
                    ("--cni-conf-dir", &k.cni_conf_dir, &opts.conf_dir),
                ] {
                    if let Some(dir) = dir {
                        if !runtime::same_dir(dir, want) {
                            return Check::fail(
                                NAME,
                                format!("kubelet (pid {}) has {flag}={} but the suite is installed in {}", k.pid, dir.display(), want.display()),
                                format!("set kubelet's {flag} to {} or install there", want.display()),
                            );
                        }
                    }
                }
                return Check::ok(NAME, format!("kubelet (pid {}) runs with --network-plugin=cni", k.pid));
            }
            Some(other) => {
                return Check::fail(
                    NAME,
                    format!("kubelet (pid {}) runs with --network-plugin={other}, not cni: CNI plugins are never called", k.pid),
                    "kops: set `networking: cni: {}` in the cluster spec and roll the nodes; by hand: --network-plugin=cni",
                )
            }
            // 1.24+: the flag is gone and the runtime runs CNI; judged below.
            None => {}
        }
    }
    let text = match std::fs::read_to_string(&opts.containerd_config) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return match kubelet {
                Some(k) => Check::warn(
                    NAME,
                    format!("kubelet (pid {}) has no --network-plugin (Kubernetes 1.24+: the runtime runs CNI) and there is no containerd config at {}", k.pid, opts.containerd_config.display()),
                    "point --containerd-config at the runtime's config (CRI-O: check [crio.network] network_dir/plugin_dirs by hand)",
                ),
                None => Check::skip(
                    NAME,
                    format!("no kubelet running and no containerd config at {}", opts.containerd_config.display()),
                ),
            };
        }
        Err(e) => {
            return Check::fail(
                NAME,
                format!("cannot read {}: {e}", opts.containerd_config.display()),
                "run as root",
            )
        }
    };
    let c = match runtime::containerd_cni(&text) {
        Ok(c) => c,
        Err(e) => {
            return Check::fail(
                NAME,
                format!(
                    "{} is not valid TOML: {e}",
                    opts.containerd_config.display()
                ),
                "fix the file; `containerd config default` prints a valid one",
            )
        }
    };
    if c.cri_disabled {
        return Check::fail(
            NAME,
            format!(
                "{} disables the CRI plugin (disabled_plugins): kubelet cannot run pods through it",
                opts.containerd_config.display()
            ),
            "remove \"cri\" from disabled_plugins and restart containerd",
        );
    }
    if !c
        .bin_dirs
        .iter()
        .any(|d| runtime::same_dir(d, &opts.bin_dir))
    {
        return Check::fail(
            NAME,
            format!(
                "containerd looks for CNI plugins in {} but the suite is installed in {}",
                join_paths(&c.bin_dirs),
                opts.bin_dir.display()
            ),
            format!(
                "set bin_dir = \"{}\" in the CRI plugin's cni section and restart containerd",
                opts.bin_dir.display()
            ),
        );
    }
    if !runtime::same_dir(&c.conf_dir, &opts.conf_dir) {
        return Check::fail(
            NAME,
            format!(
                "containerd reads network configs from {} but the suite's are in {}",
                c.conf_dir.display(),
                opts.conf_dir.display()
            ),
            format!(
                "set conf_dir = \"{}\" in the CRI plugin's cni section and restart containerd",
                opts.conf_dir.display()
            ),
        );
    }
    if let Some(t) = &c.conf_template {
        match std::fs::read_to_string(t) {
            Ok(s) if !s.contains("{{.PodCIDR}}") && !s.contains("{{.PodCIDRRanges}}") => {
                return Check::warn(
                    NAME,
                    format!("conf_template {} does not use {{{{.PodCIDR}}}}: every node gets the same pod range", t.display()),
                    "write \"podCIDR\": \"{{.PodCIDR}}\" in the template (packaging/examples/kubenet-bridge.conflist.template)",
                )
            }
            Ok(_) => {}
            Err(e) => {
                return Check::warn(
                    NAME,
                    format!("conf_template {}: {e}", t.display()),
                    "install the template or remove conf_template",
                )
            }
        }
    }
    Check::ok(
        NAME,
        format!(
            "containerd (config version {}) runs CNI: bin_dir {}, conf_dir {}{}",
            c.version,
            join_paths(&c.bin_dirs),
            c.conf_dir.display(),
            c.conf_template
                .as_ref()
                .map(|t| format!(", conf_template {}", t.display()))
                .unwrap_or_default()
        ),
    )
}

fn join_paths(p: &[PathBuf]) -> String {
    p.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The suite's binaries in the bin dir: present, executable, answering `--version`, all
/// from one release.
fn check_bin_dir(opts: &Options) -> Check {
    const NAME: &str = "bin-dir";
    if !opts.bin_dir.is_dir() {
        return Check::fail(
            NAME,
            format!("{} does not exist", opts.bin_dir.display()),
            "install the plugins (packaging/kubernetes/install-cni.sh, or the .deb)",
        );
    }
    let mut found = Vec::new();
    let mut missing = Vec::new();
    let mut versions = BTreeSet::new();
    for name in SUITE_PLUGINS {
        let p = opts.bin_dir.join(name);
        if !p.exists() {
            missing.push(name);
            continue;
        }
        if !is_executable(&p) {
            return Check::fail(
                NAME,
                format!("{} is not executable", p.display()),
                format!("chmod 0755 {}", p.display()),
            );
        }
        match kernel::run(Command::new(&p).arg("--version").env_clear(), EXEC_LIMIT) {
            Ok((true, out, _)) => {
                let first = out.lines().next().unwrap_or("").trim().to_string();
                if let Some(v) = first.split_whitespace().nth(1) {
                    versions.insert(v.to_string());
                }
                found.push(first);
            }
            Ok((false, _, err)) => {
                return Check::fail(
                    NAME,
                    format!("{} --version failed: {}", p.display(), err.trim()),
                    "reinstall it: the file may be truncated or built for another architecture",
                )
            }
            Err(e) => {
                return Check::fail(
                    NAME,
                    format!("{} does not run: {e}", p.display()),
                    "reinstall it: the file may be truncated or built for another architecture",
                )
            }
        }
    }
    if found.is_empty() {
        return Check::fail(
            NAME,
            format!("no suite plugin in {}", opts.bin_dir.display()),
            "install the plugins (packaging/kubernetes/install-cni.sh, or the .deb)",
        );
    }
    let msg = format!(
        "{} in {}{}",
        found.join(", "),
        opts.bin_dir.display(),
        if missing.is_empty() {
            String::new()
        } else {
            format!(" (not installed: {})", missing.join(", "))
        }
    );
    if versions.len() > 1 || !versions.contains(&opts.suite_version) {
        return Check::warn(
            NAME,
            format!(
                "{msg}; versions differ from each other or from cni-suite {}",
                opts.suite_version
            ),
            "install one release's binaries together (a half-finished upgrade?)",
        );
    }
    Check::ok(NAME, msg)
}

/// Runtimes may exec every file in the bin dir (podman calls VERSION on each): the operator
/// command belongs elsewhere.
fn check_location(opts: &Options) -> Check {
    const NAME: &str = "cni-suite-location";
    match std::env::current_exe() {
        Ok(exe)
            if exe
                .parent()
                .is_some_and(|d| runtime::same_dir(d, &opts.bin_dir)) =>
        {
            Check::warn(
                NAME,
                format!(
                    "{} is inside the CNI bin dir: runtimes that probe every plugin will exec it",
                    exe.display()
                ),
                "install cni-suite in /usr/sbin (the .deb does), not in the CNI bin dir",
            )
        }
        Ok(exe) => Check::ok(
            NAME,
            format!("{} is outside the CNI bin dir", exe.display()),
        ),
        Err(e) => Check::skip(NAME, format!("cannot locate this binary: {e}")),
    }
}

/// The conf dir holds a config, and the runtime's choice (the first file) is ours.
fn check_conf_dir(opts: &Options, files: &[ConfFile], nets: &[SuiteNetwork]) -> Check {
    const NAME: &str = "conf-dir";
    let Some(first) = files.first() else {
        return Check::fail(
            NAME,
            format!("no network config in {}: the runtime reports NetworkPluginNotReady and the node stays NotReady", opts.conf_dir.display()),
            "install a conflist (packaging/kubernetes/install-cni.sh, the DaemonSet, or containerd's conf_template)",
        );
    };
    let first_is_ours = first.parsed.as_ref().is_ok_and(netconf::is_suite);
    if nets.is_empty() {
        return Check::warn(
            NAME,
            format!(
                "no cni-suite network in {} (the runtime uses {})",
                opts.conf_dir.display(),
                file_name(&first.path)
            ),
            "install the suite's conflist, or run this doctor on a node of the suite",
        );
    }
    if !first_is_ours {
        return Check::warn(
            NAME,
            format!("the runtime uses {} (first by name), not the suite's {}", file_name(&first.path), file_name(&nets[0].file)),
            "remove the other provider's config (kops does not clean up after switching providers) or give ours a name that sorts first",
        );
    }
    Check::ok(
        NAME,
        format!(
            "the runtime uses {} (first of {} in {})",
            file_name(&first.path),
            files.len(),
            opts.conf_dir.display()
        ),
    )
}

/// What VERSION said per binary, so each plugin runs once.
#[derive(Default)]
struct VersionCache(BTreeMap<PathBuf, Result<Vec<String>, String>>);

impl VersionCache {
    fn supported(&mut self, bin: &Path, asked: &str) -> Result<Vec<String>, String> {
        self.0
            .entry(bin.to_path_buf())
            .or_insert_with(|| plugin_versions(bin, asked))
            .clone()
    }
}

/// Execs `bin` with CNI_COMMAND=VERSION, as a runtime does, and returns `supportedVersions`.
pub fn plugin_versions(bin: &Path, asked: &str) -> Result<Vec<String>, String> {
    let stdin = serde_json::json!({ "cniVersion": asked }).to_string();
    let (ok, out, err) = kernel::run_with_stdin(
        Command::new(bin)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", "VERSION"),
        Some(stdin.as_bytes()),
        EXEC_LIMIT,
    )
    .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(out.trim()).map_err(|_| {
        format!(
            "VERSION printed no JSON (exit ok={ok}): {} {}",
            out.trim(),
            err.trim()
        )
    })?;
    if !ok {
        return Err(format!(
            "VERSION failed: {}",
            v["msg"].as_str().unwrap_or(out.trim())
        ));
    }
    Ok(v["supportedVersions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect())
}

/// A conf file parses, and every plugin it names is in the bin dir, executable, and speaks the
/// list's cniVersion.
fn check_conf_file(opts: &Options, f: &ConfFile, versions: &mut VersionCache) -> Check {
    let name = format!("conflist:{}", file_name(&f.path));
    let list =
        match &f.parsed {
            Ok(l) => l,
            Err(e) => return Check::fail(
                name,
                format!("does not parse: {e}"),
                "fix or remove it: runtimes skip (containerd) or refuse (podman) invalid configs",
            ),
        };
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for t in list.types() {
        if !seen.insert(t) {
            continue;
        }
        let bin = opts.bin_dir.join(t);
        if !bin.exists() {
            problems.push(format!("plugin {t} is not in {}", opts.bin_dir.display()));
            continue;
        }
        if !is_executable(&bin) {
            problems.push(format!("{} is not executable", bin.display()));
            continue;
        }
        match versions.supported(&bin, &list.cni_version) {
            Ok(v) if v.contains(&list.cni_version) => {}
            Ok(v) => problems.push(format!(
                "{t} speaks {} but the list has cniVersion {}",
                v.join(", "),
                list.cni_version
            )),
            Err(e) => problems.push(format!("{t}: {e}")),
        }
    }
    if problems.is_empty() {
        Check::ok(
            name,
            format!(
                "network {:?}, cniVersion {}: {}: all found, each one's VERSION lists it",
                list.name,
                list.cni_version,
                list.types().join(" → ")
            ),
        )
    } else {
        Check::fail(
            name,
            format!("network {:?}: {}", list.name, problems.join("; ")),
            format!("install the missing plugins into {} (reference plugins: Debian containernetworking-plugins) or fix the list", opts.bin_dir.display()),
        )
    }
}

fn check_ip_forward() -> Check {
    const NAME: &str = "ip-forward";
    match kernel::ip_forward() {
        Ok(true) => Check::ok(NAME, "net.ipv4.ip_forward = 1"),
        Ok(false) => Check::fail(
            NAME,
            "net.ipv4.ip_forward = 0: pods cannot reach anything beyond this node",
            "sysctl -w net.ipv4.ip_forward=1 (and find what turned it off: the next ADD turns it on again)",
        ),
        Err(e) => Check::fail(NAME, e.to_string(), "run on the node (needs /proc)"),
    }
}

/// A lease file: (address, owner (container id, ifname) when the file holds one).
type LeaseFile = (Ipv4Addr, Option<node_ipam::Owner>);

/// The leases of an IPAM directory, read without locking or creating anything.
fn read_leases(dir: &Path) -> Result<Vec<LeaseFile>, String> {
    node_ipam::read_leases(dir).map_err(|e| e.to_string())
}

fn lease_count(leases: &Result<Vec<LeaseFile>, String>) -> usize {
    leases.as_ref().map(Vec::len).unwrap_or(0)
}

/// The node bridge: exists, is a bridge, is up, carries the gateway address.
fn check_bridge(
    net: &SuiteNetwork,
    resolved: Option<&BridgeNetwork>,
    leases: &Result<Vec<LeaseFile>, String>,
    links: &mut Links,
) -> Check {
    let name = format!("bridge:{}", net.bridge());
    let pods = lease_count(leases);
    let Some(link) = links.get(net.bridge()).cloned() else {
        return if pods > 0 {
            Check::fail(
                name,
                format!("missing, but {pods} pod(s) of network {:?} hold leases: their traffic is down", net.name),
                "recreate the pods (their DEL+ADD recreates the bridge); `cni-suite teardown --yes` clears the node",
            )
        } else {
            Check::skip(name, "not created yet: the first pod ADD creates it")
        };
    };
    if link.kind.as_deref() != Some("bridge") {
        return Check::fail(
            name,
            format!(
                "is a {}, not a bridge: every ADD fails (code 103)",
                link.kind.as_deref().unwrap_or("device")
            ),
            "delete or rename that link, or set \"bridge\" to another name",
        );
    }
    if !link.up {
        return Check::fail(
            name,
            "is down: pods have no gateway",
            format!("ip link set {} up", net.bridge()),
        );
    }
    let ports = links.ports_of(link.index).len();
    let Some(net) = resolved else {
        return Check::ok(
            name,
            format!(
                "up, {ports} port(s), mtu {} (gateway unknown until the network resolves)",
                link.mtu
            ),
        );
    };
    let gw = IpNet::V4(
        Ipv4Net::new(net.pool.gateway(), net.pool.subnet().prefix_len()).unwrap_or_default(),
    );
    match links.addresses(link.index) {
        Ok(a) if a.contains(&gw) => Check::ok(
            name,
            format!("up, gateway {gw}, {ports} port(s), mtu {}", link.mtu),
        ),
        Ok(a) => Check::fail(
            name,
            format!(
                "lacks the gateway address {gw} (has {}): pods have no default route target",
                a.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            format!(
                "ip addr add {gw} dev {} (the next ADD adds it too)",
                net.bridge
            ),
        ),
        Err(e) => Check::fail(
            name,
            format!("cannot read its addresses: {e}"),
            "run as root",
        ),
    }
}

/// Leases whose pod is gone (no host veth), and how full the range is.
fn check_leases(
    net: &SuiteNetwork,
    resolved: Option<&BridgeNetwork>,
    leases: &Result<Vec<LeaseFile>, String>,
    links: &Links,
) -> Check {
    let name = format!("ipam:{}", net.name);
    let dir = net.ipam_dir();
    let leases = match leases {
        Ok(l) => l,
        Err(e) => return Check::fail(name, e.clone(), "run as root (IPAM state is 0700)"),
    };
    let leaked: Vec<String> = leases
        .iter()
        .filter_map(|(addr, owner)| {
            let (id, ifname) = owner.as_ref()?;
            let veth = host_veth_name(id, ifname);
            links
                .get(&veth)
                .is_none()
                .then(|| format!("{addr} ({}, {ifname}; no {veth})", short(id)))
        })
        .collect();
    if !leaked.is_empty() {
        return Check::fail(
            name,
            format!("{} of {} lease(s) in {} belong to pods that are gone: {}", leaked.len(), leases.len(), dir.display(), leaked.join(", ")),
            "the runtime's GC (CNI 1.1) or a DEL for those containers releases them; by hand: remove those address files (a racing ADD may show here for an instant)",
        );
    }
    if let Some(r) = resolved {
        let cap = r.pool.capacity() as usize;
        if cap > 0 && leases.len() * 10 >= cap * 9 {
            return Check::warn(
                name,
                format!("{} of {cap} addresses of {} leased", leases.len(), r.pool.subnet()),
                "the node runs out of pod addresses soon: fewer pods per node (kubelet --max-pods) or a larger podCIDR",
            );
        }
    }
    if leases.is_empty() {
        Check::ok(name, format!("no leases in {}", dir.display()))
    } else {
        Check::ok(
            name,
            format!(
                "{} lease(s) in {}, each with its pod's veth",
                leases.len(),
                dir.display()
            ),
        )
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The masquerade table exists with the fingerprint of this network's settings.
fn check_masquerade(
    net: &SuiteNetwork,
    resolved: Option<&BridgeNetwork>,
    leases: &Result<Vec<LeaseFile>, String>,
    tables: &Result<Vec<String>, crate::Error>,
) -> Check {
    let table = net.nft_table();
    let name = format!("masquerade:{table}");
    let Some(r) = resolved else {
        return Check::skip(
            name,
            format!(
                "network {:?} does not resolve yet (see its other checks)",
                net.name
            ),
        );
    };
    let comment = match netsetup::masquerade::table_comment(&table) {
        Ok(c) => c,
        Err(e) => return Check::warn(name, format!("cannot read nftables: {e}"), "run as root"),
    };
    let exists = comment.is_some() || tables.as_ref().is_ok_and(|t| t.contains(&table));
    let Some(keep) = r.masquerade_outside else {
        return if exists {
            Check::warn(
                name,
                "ipMasq is off but the table exists: pod traffic is still masqueraded",
                format!("nft delete table ip {table} (the next ADD removes it too)"),
            )
        } else {
            Check::ok(name, "ipMasq off and no table")
        };
    };
    let want = netsetup::masquerade::MasqueradeSpec {
        table: &table,
        pod_cidr: r.pool.subnet(),
        non_masquerade: keep,
        bridge: &r.bridge,
    }
    .fingerprint();
    match comment {
        Some(c) if c == want => Check::ok(name, format!("present: {c}")),
        Some(c) => Check::fail(
            name,
            format!("holds {c:?}, this network wants {want:?}"),
            "two networks share the bridge with different settings, or the config changed: the next ADD reprograms it",
        ),
        None if exists => Check::fail(name, "present without the suite's fingerprint comment", format!("nft delete table ip {table}; the next ADD recreates it")),
        None if lease_count(leases) > 0 => Check::fail(
            name,
            "missing although pods are attached: their traffic to outside the cluster is not masqueraded",
            "the next ADD recreates it; find what flushed the ruleset (`nft flush ruleset`, a firewall service)",
        ),
        None => Check::skip(name, "not created yet: the first pod ADD creates it"),
    }
}

/// kops: "the CNI provider started without errors" and "logging on a node will display
/// messages on pod create and delete".
fn check_log(net: &SuiteNetwork, leases: &Result<Vec<LeaseFile>, String>, opts: &Options) -> Check {
    let name = format!("log:{}", net.name);
    let Some(path) = net.log_file() else {
        return Check::warn(
            name,
            format!(
                "no logFile in {}: pod create and delete leave no trace on the node",
                file_name(&net.file)
            ),
            format!(
                "add \"logFile\": \"/var/log/{}.log\" to the {} entry",
                net.plugin(),
                net.plugin()
            ),
        );
    };
    let lines = match logs::tail(&path) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return if lease_count(leases) > 0 {
                Check::warn(name, format!("{} is missing although pods are attached", path.display()), "check that its directory exists and is writable by root (the plugin cannot create directories)")
            } else {
                Check::skip(
                    name,
                    format!("{} not written yet: no pod created", path.display()),
                )
            };
        }
        Err(e) => {
            return Check::warn(
                name,
                format!("{}: {e}", path.display()),
                "run as root (the log is 0600)",
            )
        }
    };
    let s = logs::summarize(
        &lines,
        net.plugin(),
        Some(&net.name),
        SystemTime::now(),
        opts.log_window,
    );
    if let Some(last) = s.recent_errors.last() {
        return Check::warn(
            name,
            format!("{} ERROR line(s) in the last {} min; last: {last}", s.recent_errors.len(), opts.log_window.as_secs() / 60),
            "the line names the failing step; `cni-suite doctor`'s other checks usually show the cause",
        );
    }
    if s.adds == 0 && s.dels == 0 {
        return if lease_count(leases) > 0 {
            Check::warn(
                name,
                format!(
                    "{} shows no ADD or DEL although pods are attached",
                    path.display()
                ),
                "was the log rotated or logLevel set to error?",
            )
        } else {
            Check::skip(name, format!("{}: no pod created yet", path.display()))
        };
    }
    Check::ok(
        name,
        format!(
            "{}: {} ADD, {} DEL logged, no ERROR in the last {} min",
            path.display(),
            s.adds,
            s.dels,
            opts.log_window.as_secs() / 60
        ),
    )
}

/// The vxlan-overlay agent: running, its lease in subnet.env, its state in agent.json.
fn check_agent(net: &SuiteNetwork, cfg: &overlay::OverlayConfig) -> Check {
    let name = format!("agent:{}", net.name);
    let subnet_file = cfg.subnet_file();
    let agents = kernel::overlay_agents();
    let env = match overlay::subnet_file::SubnetEnv::read(&subnet_file) {
        Ok(Some(e)) => e,
        Ok(None) => {
            return Check::fail(
                name,
                format!("no subnet leased: {} is missing{}", subnet_file.display(), if agents.is_empty() { " and no agent runs" } else { "" }),
                "run `vxlan-overlay agent --config <conflist>` (the vxlan-overlay DaemonSet); ADDs fail with code 11 until it leases a subnet",
            )
        }
        Err(e) => return Check::fail(name, e.to_string(), "delete the file and restart the agent: it rewrites it"),
    };
    let state_path = cfg.data_dir().join("agent.json");
    let state = overlay::state::NodeState::load(&state_path);
    let subnet = env.subnet.trunc();
    if let Ok(st) = &state {
        if st.subnet.is_some_and(|s| s != subnet) {
            return Check::warn(
                name,
                format!(
                    "{} says {subnet}, {} says {}",
                    subnet_file.display(),
                    state_path.display(),
                    st.subnet.map(|s| s.to_string()).unwrap_or_default()
                ),
                "restart the agent: it rewrites both",
            );
        }
    }
    if agents.is_empty() {
        return Check::fail(
            name,
            format!("leased {subnet} ({}) but no agent runs: the etcd lease expires after leaseTTL ({} s) and peers drop this node", subnet_file.display(), cfg.lease_ttl),
            "start the vxlan-overlay DaemonSet (vxlan-overlay agent --config <conflist>)",
        );
    }
    let pids: Vec<String> = agents.iter().map(|p| p.pid.to_string()).collect();
    Check::ok(
        name,
        format!(
            "agent pid {}; leased {subnet} of {}, MTU {} ({}){}",
            pids.join(","),
            env.network,
            env.mtu,
            subnet_file.display(),
            match state {
                Ok(st) => format!(", VTEP MAC {}", st.vtep_mac.unwrap_or_default()),
                Err(e) => format!(", {e}"),
            }
        ),
    )
}

/// The agent's record in etcd, as the other nodes see it: present, for the subnet in
/// subnet.env, with the VTEP MAC the agent keeps. (A static `peersFile` has no record.)
fn check_agent_record(net: &SuiteNetwork, cfg: &overlay::OverlayConfig) -> Check {
    let name = format!("agent-etcd:{}", net.name);
    if cfg.etcd_endpoints.is_empty() {
        return Check::skip(name, "no etcdEndpoints: peers come from peersFile");
    }
    let endpoints = cfg.etcd_endpoints.join(",");
    let (me, records) = match overlay::agent::node_records(cfg) {
        Ok(found) => found,
        Err(e) => {
            return Check::warn(
                name,
                format!("cannot read the subnet records from {endpoints}: {e}"),
                "the dataplane keeps working while etcd is away, but no node learns of changes: check etcd and this node's route to it",
            )
        }
    };
    let Some((subnet, record)) = records.iter().find(|(_, r)| r.is_node(me)) else {
        return Check::fail(
            name,
            format!(
                "no subnet record for this node ({me}) among the {} in {endpoints}: the other nodes drop its routes",
                records.len()
            ),
            "restart the agent (it re-leases its subnet); is it running, and does it reach etcd?",
        );
    };
    let leased = overlay::subnet_file::SubnetEnv::read(&cfg.subnet_file())
        .ok()
        .flatten()
        .map(|env| env.subnet.trunc());
    if leased.is_some_and(|l| l != *subnet) {
        return Check::fail(
            name,
            format!(
                "etcd records {subnet} for {me}, but {} says {}",
                cfg.subnet_file().display(),
                leased.map(|l| l.to_string()).unwrap_or_default()
            ),
            "restart the agent: it rewrites subnet.env from its lease",
        );
    }
    let state = overlay::state::NodeState::load(&cfg.data_dir().join("agent.json")).ok();
    let kept_mac = state.and_then(|s| s.vtep_mac);
    if kept_mac
        .as_deref()
        .is_some_and(|m| !m.eq_ignore_ascii_case(&record.backend.vtep_mac))
    {
        return Check::warn(
            name,
            format!(
                "etcd records VTEP MAC {} for {subnet}, the agent keeps {}",
                record.backend.vtep_mac,
                kept_mac.unwrap_or_default()
            ),
            "restart the agent: it republishes its record",
        );
    }
    Check::ok(
        name,
        format!(
            "{subnet} recorded for {me} (VNI {}, VTEP MAC {}); {} other node(s) in {endpoints}",
            record.backend.vni,
            record.backend.vtep_mac,
            records.len() - 1
        ),
    )
}

fn check_agent_log(net: &SuiteNetwork, opts: &Options) -> Check {
    let name = format!("agent-log:{}", net.name);
    let Some(path) = net.log_file() else {
        return Check::skip(name, "no logFile: the agent logs to stderr (kubectl -n kube-system logs <vxlan-overlay pod>)");
    };
    let lines = match logs::tail(&path) {
        Ok(l) => l,
        Err(e) => {
            return Check::warn(
                name,
                format!("{}: {e}", path.display()),
                "has the agent started? (it opens logFile first)",
            )
        }
    };
    let s = logs::summarize(
        &lines,
        "vxlan-overlay agent",
        None,
        SystemTime::now(),
        opts.log_window,
    );
    if let Some(last) = s.recent_errors.last() {
        return Check::warn(
            name,
            format!(
                "{} agent ERROR line(s) recently; last: {last}",
                s.recent_errors.len()
            ),
            "see the agent's log for the failing etcd or netlink step",
        );
    }
    if s.lines == 0 {
        return Check::warn(
            name,
            format!("{} holds no agent line", path.display()),
            "has the agent started with this conflist?",
        );
    }
    Check::ok(
        name,
        format!(
            "{} agent line(s), no ERROR in the last {} min",
            s.lines,
            opts.log_window.as_secs() / 60
        ),
    )
}

/// The VXLAN device: exists, is VXLAN, up, carries the VTEP address; its peer routes.
fn check_vxlan(cfg: &overlay::OverlayConfig, links: &mut Links) -> Check {
    let dev = cfg.device();
    let name = format!("vxlan:{dev}");
    let env = overlay::subnet_file::SubnetEnv::read(&cfg.subnet_file())
        .ok()
        .flatten();
    let Some(link) = links.get(&dev).cloned() else {
        return match env {
            Some(_) => Check::fail(
                name,
                "missing although a subnet is leased: no traffic to other nodes",
                "restart the vxlan-overlay agent: it recreates the device",
            ),
            None => Check::skip(
                name,
                "not created yet: the agent creates it after leasing a subnet",
            ),
        };
    };
    if link.kind.as_deref() != Some("vxlan") {
        return Check::fail(
            name,
            format!(
                "is a {}, not VXLAN",
                link.kind.as_deref().unwrap_or("device")
            ),
            "delete it, or set \"device\" to another name",
        );
    }
    if !link.up {
        return Check::fail(
            name,
            "is down: no traffic to other nodes",
            format!("ip link set {dev} up (or restart the agent)"),
        );
    }
    let Some(env) = env else {
        return Check::warn(
            name,
            "up, but no subnet file: stale from an earlier run?",
            "restart the agent",
        );
    };
    let vtep = IpNet::V4(
        Ipv4Net::new(overlay::config::vtep_ip(env.subnet.trunc()), 32).unwrap_or_default(),
    );
    let addrs = match links.addresses(link.index) {
        Ok(a) => a,
        Err(e) => return Check::fail(name, format!("cannot read addresses: {e}"), "run as root"),
    };
    if !addrs.contains(&vtep) {
        return Check::fail(
            name,
            format!("lacks its VTEP address {vtep}"),
            "restart the agent: it sets the address",
        );
    }
    let peers = netsetup::vxlan::device_state(links.socket(), link.index)
        .map(|s| s.routes.len().to_string())
        .unwrap_or_else(|e| format!("? ({e})"));
    Check::ok(
        name,
        format!("up, VTEP {vtep}, mtu {}, {peers} peer route(s)", link.mtu),
    )
}

/// vpc-route's registration as its node state file records it (seam: see [`vpc`]).
fn check_vpc(
    net: &SuiteNetwork,
    entry: &Value,
    resolved: Option<&BridgeNetwork>,
    leases: &Result<Vec<LeaseFile>, String>,
) -> Check {
    let name = format!("vpc-routes:{}", net.name);
    match vpc::node_state(entry) {
        Ok(None) if lease_count(leases) > 0 => Check::warn(
            name,
            format!("pods are attached but {} is missing: the pod CIDR may not be routed in the VPC", vpc::state_path(entry).display()),
            "look for vpc-route errors (codes 110-113) in the runtime's log; `aws ec2 describe-route-tables` shows the routes",
        ),
        Ok(None) => Check::skip(name, "not registered yet: the first pod ADD registers the node's pod CIDR"),
        Err(e) => Check::fail(name, e, "remove the file: it is a cache, the next ADD rereads EC2"),
        Ok(Some(s)) => {
            let tables: Vec<String> = s
                .tables
                .iter()
                .map(|(id, ok, problem)| match (ok, problem) {
                    (true, _) => format!("{id} ok"),
                    (false, Some(p)) => format!("{id} MISSING ({p})"),
                    (false, None) => format!("{id} MISSING"),
                })
                .collect();
            let age = s.age_seconds.map(|a| format!(", verified {a} s ago")).unwrap_or_default();
            if let Some(r) = resolved {
                if s.pod_cidr != r.pool.subnet().to_string() {
                    return Check::fail(
                        name,
                        format!("registered {} but the bridge serves {}", s.pod_cidr, r.pool.subnet()),
                        "the podCIDRs of kubenet-bridge and vpc-route must be the node's pod CIDR",
                    );
                }
            }
            if s.is_complete() {
                Check::ok(name, format!("{} routed in {}{age}", s.pod_cidr, tables.join(", ")))
            } else {
                Check::fail(
                    name,
                    format!(
                        "{}: {}{}{age}",
                        s.pod_cidr,
                        tables.join(", "),
                        if s.source_dest_check_off { "" } else { "; source/dest check still on" }
                    ),
                    "see the problem per table: route quota (request an increase), a conflicting route, or IAM permissions",
                )
            }
        }
    }
}

/// libcni's cached results of our networks whose pod is gone.
fn check_results_cache(opts: &Options, nets: &[SuiteNetwork], links: &Links) -> Check {
    const NAME: &str = "results-cache";
    let dir = libcni_cache::results_dir(&opts.cache_dir);
    let names: BTreeSet<&str> = nets.iter().map(|n| n.name.as_str()).collect();
    let entries = match libcni_cache::read_results(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Check::skip(
                NAME,
                format!(
                    "{} does not exist (no runtime has cached a result here)",
                    dir.display()
                ),
            )
        }
        Err(e) => return Check::warn(NAME, format!("{}: {e}", dir.display()), "run as root"),
    };
    let ours: Vec<&CachedResult> = entries
        .iter()
        .filter(|r| names.contains(r.network.as_str()))
        .collect();
    let stale: Vec<String> = ours
        .iter()
        .filter(|r| {
            links
                .get(&host_veth_name(&r.container_id, &r.ifname))
                .is_none()
        })
        .map(|r| file_name(&r.path))
        .collect();
    if stale.is_empty() {
        Check::ok(
            NAME,
            format!(
                "{} cached result(s) of the suite's networks, none stale",
                ours.len()
            ),
        )
    } else {
        Check::warn(
            NAME,
            format!("{} cached result(s) for pods that are gone: {}", stale.len(), stale.join(", ")),
            "the runtime never sent DEL for them; `cni-suite teardown` or removing the files clears them",
        )
    }
}

/// kube-proxy's service rules only see pod-to-pod traffic on a bridge through br_netfilter.
fn check_br_netfilter(kubelet_running: bool) -> Check {
    const NAME: &str = "br-netfilter";
    if !kubelet_running {
        return Check::skip(
            NAME,
            "no kubelet on this node: kube-proxy's need for br_netfilter not checked",
        );
    }
    match std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables") {
        Ok(v) if v.trim() == "1" => Check::ok(NAME, "net.bridge.bridge-nf-call-iptables = 1"),
        Ok(_) => Check::warn(
            NAME,
            "net.bridge.bridge-nf-call-iptables = 0: services between pods on this bridge break",
            "sysctl -w net.bridge.bridge-nf-call-iptables=1",
        ),
        Err(_) => Check::warn(
            NAME,
            "br_netfilter is not loaded: services between pods on this bridge break",
            "modprobe br_netfilter (and list it in /etc/modules-load.d)",
        ),
    }
}

/// Cluster-side checks through kubectl: DNS pods running (kops: "kube-dns daemonset
/// starts"), and the node's pod CIDR matching the bridge's.
fn cluster_checks(opts: &Options, nets: &[SuiteNetwork]) -> Vec<Check> {
    let Some(kubeconfig) = &opts.kubeconfig else {
        let why = "no --kubeconfig given: cluster-side checks need API access";
        return vec![
            Check::skip("cluster-dns", why),
            Check::skip("node-pod-cidr", why),
        ];
    };
    let Some(kubectl) = kernel::find_program("kubectl") else {
        let why = "kubectl not found on PATH: cluster-side checks run through it";
        return vec![
            Check::skip("cluster-dns", why),
            Check::skip("node-pod-cidr", why),
        ];
    };
    let get = |args: &[&str]| -> Result<Value, String> {
        let (ok, out, err) = kernel::run(
            Command::new(&kubectl)
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args(args)
                .args(["-o", "json"]),
            Duration::from_secs(15),
        )
        .map_err(|e| e.to_string())?;
        if !ok {
            return Err(err.trim().to_string());
        }
        serde_json::from_str(&out).map_err(|e| e.to_string())
    };
    let mut checks = Vec::new();
    checks.push(match get(&["-n", "kube-system", "get", "pods", "-l", "k8s-app=kube-dns"]) {
        Err(e) => Check::fail("cluster-dns", format!("kubectl failed: {e}"), "check the kubeconfig and the API server"),
        Ok(v) => {
            let pods = v["items"].as_array().cloned().unwrap_or_default();
            let ready = pods
                .iter()
                .filter(|p| {
                    p["status"]["phase"] == "Running"
                        && p["status"]["containerStatuses"].as_array().is_some_and(|c| c.iter().all(|c| c["ready"] == true))
                })
                .count();
            if pods.is_empty() {
                Check::warn("cluster-dns", "no pod labelled k8s-app=kube-dns in kube-system", "deploy kube-dns/CoreDNS (kops does)")
            } else if ready < pods.len() {
                Check::fail(
                    "cluster-dns",
                    format!("{ready} of {} DNS pod(s) running and ready", pods.len()),
                    "kube-dns does not start until pod networking works: `kubectl -n kube-system describe pod -l k8s-app=kube-dns` names the CNI error",
                )
            } else {
                Check::ok("cluster-dns", format!("{ready} DNS pod(s) running and ready"))
            }
        }
    });
    let node = opts.node_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default()
    });
    checks.push(match get(&["get", "node", &node]) {
        Err(e) => Check::fail("node-pod-cidr", format!("kubectl get node {node}: {e}"), "pass --node-name if the node is not named after the hostname"),
        Ok(v) => {
            let cidr = v["spec"]["podCIDR"].as_str().unwrap_or("").to_string();
            let bridges: Vec<String> = nets
                .iter()
                .filter(|n| matches!(n.kind, Kind::Kubenet(_)))
                .filter_map(|n| n.resolve().ok().map(|r| r.pool.subnet().to_string()))
                .collect();
            let ready = v["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready")
                .cloned()
                .unwrap_or(Value::Null);
            if cidr.is_empty() && !bridges.is_empty() {
                Check::fail("node-pod-cidr", format!("node {node} has no spec.podCIDR"), "run kube-controller-manager with --allocate-node-cidrs (kops does for kubenet)")
            } else if let Some(b) = bridges.iter().find(|b| **b != cidr) {
                Check::fail(
                    "node-pod-cidr",
                    format!("node {node} has podCIDR {cidr}, the kubenet-bridge config has {b}: pods get addresses the cluster routes elsewhere"),
                    "render the conflist from the node's podCIDR (containerd conf_template or install-cni.sh with POD_CIDR)",
                )
            } else if ready["status"] != "True" {
                Check::fail("node-pod-cidr", format!("node {node} is not Ready: {}", ready["message"].as_str().unwrap_or("?")), "NetworkPluginNotReady means the runtime found no usable conflist")
            } else {
                Check::ok("node-pod-cidr", format!("node {node} is Ready, podCIDR {cidr}"))
            }
        }
    });
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_lease_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("10.1.0.2"), "abc\r\neth0").unwrap();
        std::fs::write(dir.path().join("10.1.0.3"), "").unwrap();
        std::fs::write(dir.path().join("last_reserved_ip.0"), "10.1.0.3").unwrap();
        std::fs::create_dir(dir.path().join("attachments")).unwrap();
        let l = read_leases(dir.path()).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].1, Some(("abc".into(), "eth0".into())));
        assert_eq!(l[1].1, None);
        assert!(read_leases(&dir.path().join("nope")).unwrap().is_empty());
    }
}
