//! `cni-suite teardown`: plans, and with `--yes` carries out, the removal of everything the
//! suite created on a node (kops leaves a previous provider's state behind when switching):
//! pod veths and the bridges and VXLAN devices named in the suite's conflists, the
//! `cni_suite_*` nftables tables, the IPAM state and cached results of the suite's networks
//! only, and the agent's state; with flags the VPC routes and the etcd lease.
//!
//! Conflists and binaries stay: the DaemonSet or the package installed them and removes them.
//! Every action is attempted; failures are collected and reported together.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::kernel::{self, Links};
use crate::libcni_cache;
use crate::netconf::{self, Kind, SuiteNetwork};
use crate::{vpc, Error};

/// What to remove.
#[derive(Clone, Debug)]
pub struct Options {
    /// The CNI conf dir holding the suite's conflists.
    pub conf_dir: PathBuf,
    /// libcni's cache dir (results in `<dir>/results`).
    pub cache_dir: PathBuf,
    /// Also deregister the node's VPC routes (by running the installed `vpc-route`).
    pub with_vpc_routes: bool,
    /// CNI bin dirs to find `vpc-route` in, first match wins.
    pub bin_dirs: Vec<PathBuf>,
    /// Also release the agent's subnet record in etcd.
    pub with_etcd_lease: bool,
}

/// One step of the plan.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Delete a link (a veth takes its peer along).
    DeleteLink {
        /// Its name.
        name: String,
        /// Why it is ours.
        why: String,
    },
    /// Delete an nftables table of family ip, and its ip6 twin of a dual-stack or IPv6 network.
    DeleteNftTable {
        /// Its name.
        table: String,
    },
    /// Remove a directory and everything below it.
    RemoveDir {
        /// The directory.
        path: PathBuf,
        /// Why it is ours.
        why: String,
    },
    /// Remove a file.
    RemoveFile {
        /// The file.
        path: PathBuf,
        /// Why it is ours.
        why: String,
    },
    /// Remove a directory if nothing is left in it.
    RemoveEmptyDir {
        /// The directory.
        path: PathBuf,
    },
    /// Delete this node's routes from the VPC route tables: `vpc-route deregister`.
    DeregisterVpcRoutes {
        /// The network.
        network: String,
        /// The vpc-route conflist entry.
        entry: Value,
        /// The installed `vpc-route` binary.
        binary: PathBuf,
        /// The conflist it reads its entry from.
        conflist: PathBuf,
    },
    /// Release the agent's subnet record in etcd.
    ReleaseEtcdLease {
        /// The vxlan-overlay conflist entry (endpoints, prefix, underlay).
        config: serde_json::Value,
        /// The network.
        network: String,
        /// etcd endpoints.
        endpoints: Vec<String>,
        /// The record's prefix.
        prefix: String,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::DeleteLink { name, why } => write!(f, "delete link {name} ({why})"),
            Action::DeleteNftTable { table } => write!(f, "delete nftables table ip {table}"),
            Action::RemoveDir { path, why } => write!(f, "remove {}/ ({why})", path.display()),
            Action::RemoveFile { path, why } => write!(f, "remove {} ({why})", path.display()),
            Action::RemoveEmptyDir { path } => write!(f, "remove {}/ if empty", path.display()),
            Action::DeregisterVpcRoutes {
                network,
                entry,
                binary,
                conflist,
            } => write!(
                f,
                "deregister the VPC routes of {} (network {network}): {} deregister --config {}",
                pod_ranges_text(entry),
                binary.display(),
                conflist.display()
            ),
            Action::ReleaseEtcdLease { network, endpoints, prefix, .. } => write!(
                f,
                "release this node's subnet record under {prefix}/subnets in etcd {} (network {network})",
                endpoints.join(",")
            ),
        }
    }
}

/// The plan: actions in execution order, notes for the operator, and what blocks it.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// In order.
    pub actions: Vec<Action>,
    /// What stays, and why.
    pub notes: Vec<String>,
    /// Reasons not to apply it now.
    pub blockers: Vec<String>,
}

/// One carried-out action.
#[derive(Debug)]
pub struct Outcome {
    /// The action.
    pub action: Action,
    /// Its result: on success, what the step reported (`vpc-route deregister`'s plan).
    pub result: Result<Option<String>, Error>,
}

/// A veth of ours: `veth` + 11 hex digits (`pod_bridge::attach::host_veth_name`).
pub fn is_suite_veth(name: &str) -> bool {
    name.len() == 15
        && name.starts_with("veth")
        && name[4..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Looks at the node and lists what would be removed.
pub fn plan(opts: &Options) -> Result<Plan, Error> {
    let mut plan = Plan::default();
    let files = match netconf::load_dir(&opts.conf_dir) {
        Ok(f) => f,
        Err(e) => {
            plan.notes.push(format!(
                "cannot read {} ({e}): bridges, devices and IPAM state of the suite's networks are unknown; only cni_suite_* tables are removed",
                opts.conf_dir.display()
            ));
            Vec::new()
        }
    };
    let (nets, errors) = netconf::suite_networks(&files);
    for (path, e) in errors {
        plan.notes.push(format!(
            "{}: a suite entry does not decode ({e}): its state is not removed",
            path.display()
        ));
    }
    if nets.is_empty() {
        plan.notes.push(format!(
            "no cni-suite network in {}",
            opts.conf_dir.display()
        ));
    }
    let links = Links::read()?;
    plan_links(&nets, &links, &mut plan);
    plan_nft(&mut plan)?;
    plan_files(opts, &nets, &mut plan);
    plan_remote(opts, &nets, &mut plan);
    let agents = kernel::overlay_agents();
    if !agents.is_empty() && nets.iter().any(|n| matches!(n.kind, Kind::Overlay(_))) {
        plan.blockers.push(format!(
            "vxlan-overlay agent running (pid {}): it would recreate the VXLAN device and subnet file; stop it first (delete the vxlan-overlay DaemonSet)",
            agents.iter().map(|p| p.pid.to_string()).collect::<Vec<_>>().join(",")
        ));
    }
    plan.notes.push(format!(
        "left in place: the conflists in {} and the plugin binaries (the DaemonSet or the package installed them and removes them)",
        opts.conf_dir.display()
    ));
    Ok(plan)
}

fn plan_links(nets: &[SuiteNetwork], links: &Links, plan: &mut Plan) {
    let mut done = BTreeSet::new();
    let mut pods = 0;
    for net in nets {
        let bridge = net.bridge();
        // Host ends of leases first: a pod whose bridge is already gone still has one.
        if let Ok(leases) = node_ipam::read_leases(&net.ipam_dir()) {
            for (_, owner) in leases {
                pods += 1;
                let Some((id, ifname)) = owner else {
                    continue;
                };
                let veth = pod_bridge::attach::host_veth_name(&id, &ifname);
                if links.get(&veth).is_some() && done.insert(veth.clone()) {
                    plan.actions.push(Action::DeleteLink {
                        why: format!(
                            "host end of pod {} {ifname}, network {}",
                            id.get(..12).unwrap_or(&id),
                            net.name
                        ),
                        name: veth,
                    });
                }
            }
        }
        let Some(br) = links.get(bridge) else {
            continue;
        };
        if br.kind.as_deref() != Some("bridge") {
            plan.notes.push(format!(
                "{bridge} is a {}, not a bridge: left alone",
                br.kind.as_deref().unwrap_or("device")
            ));
            continue;
        }
        for port in links.ports_of(br.index) {
            if is_suite_veth(&port.name) {
                if done.insert(port.name.clone()) {
                    plan.actions.push(Action::DeleteLink {
                        name: port.name.clone(),
                        why: format!("pod veth on {bridge}"),
                    });
                }
            } else {
                plan.notes.push(format!(
                    "{} is a port of {bridge} but not the suite's: it is detached, not deleted",
                    port.name
                ));
            }
        }
        if done.insert(bridge.to_string()) {
            plan.actions.push(Action::DeleteLink {
                name: bridge.to_string(),
                why: format!("bridge of network {}", net.name),
            });
        }
    }
    for net in nets {
        let Kind::Overlay(cfg) = &net.kind else {
            continue;
        };
        // The IPv6 device of a dual-stack overlay too, when there is one (IPv6 over the
        // other underlay family than IPv4).
        let devices = std::iter::once(cfg.device()).chain(cfg.enable_ipv6.then(|| cfg.device6()));
        for dev in devices {
            match links.get(&dev) {
                Some(l) if l.kind.as_deref() == Some("vxlan") => {
                    if !done.insert(dev.clone()) {
                        continue;
                    }
                    plan.actions.push(Action::DeleteLink {
                        name: dev,
                        why: format!("VXLAN device of network {}", net.name),
                    });
                }
                Some(l) => plan.notes.push(format!(
                    "{dev} is a {}, not VXLAN: left alone",
                    l.kind.as_deref().unwrap_or("device")
                )),
                None => {}
            }
        }
    }
    if pods > 0 {
        plan.notes.push(format!(
            "{pods} pod(s) still hold leases: they lose their network"
        ));
    }
}

/// The pod ranges a `vpc-route` entry names, for the plan: `podCIDRs` (dual-stack) or
/// `podCIDR`.
fn pod_ranges_text(entry: &Value) -> String {
    match entry["podCIDRs"].as_array() {
        Some(list) if !list.is_empty() => list
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", "),
        _ => entry["podCIDR"]
            .as_str()
            .unwrap_or("the pod CIDR")
            .to_string(),
    }
}

fn plan_nft(plan: &mut Plan) -> Result<(), Error> {
    let mut tables = kernel::nft_tables()?;
    // An IPv6-only network's table exists in family ip6 alone.
    for table in kernel::nft_tables_ip6().unwrap_or_default() {
        if !tables.contains(&table) {
            tables.push(table);
        }
    }
    for table in tables {
        if table.starts_with("cni_suite_") {
            plan.actions.push(Action::DeleteNftTable { table });
        }
    }
    Ok(())
}

fn plan_files(opts: &Options, nets: &[SuiteNetwork], plan: &mut Plan) {
    let names: BTreeSet<&str> = nets.iter().map(|n| n.name.as_str()).collect();
    match libcni_cache::read_results(&libcni_cache::results_dir(&opts.cache_dir)) {
        Ok(results) => {
            for r in results
                .into_iter()
                .filter(|r| names.contains(r.network.as_str()))
            {
                plan.actions.push(Action::RemoveFile {
                    why: format!("cached result of network {}", r.network),
                    path: r.path,
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => plan
            .notes
            .push(format!("{}/results: {e}", opts.cache_dir.display())),
    }
    let mut dirs = BTreeSet::new();
    for net in nets {
        let dir = net.ipam_dir();
        // The name comes from a parsed conflist; never let it reach outside the IPAM root.
        let safe =
            !net.name.is_empty() && !net.name.contains('/') && net.name != "." && net.name != "..";
        if safe && dir.is_dir() && dirs.insert(dir.clone()) {
            plan.actions.push(Action::RemoveDir {
                why: format!("IPAM state of network {}", net.name),
                path: dir,
            });
        }
    }
    for net in nets {
        let Kind::Overlay(cfg) = &net.kind else {
            continue;
        };
        let data = cfg.data_dir();
        for (path, why) in [
            (data.join("agent.json"), "agent state"),
            (cfg.subnet_file(), "the agent's subnet lease"),
        ] {
            if path.exists() && dirs.insert(path.clone()) {
                plan.actions.push(Action::RemoveFile {
                    path,
                    why: format!("{why}, network {}", net.name),
                });
            }
        }
        if data.is_dir() && dirs.insert(data.clone()) {
            plan.actions.push(Action::RemoveEmptyDir { path: data });
        }
    }
}

fn plan_remote(opts: &Options, nets: &[SuiteNetwork], plan: &mut Plan) {
    let mut seen = BTreeSet::new();
    for net in nets {
        if let Some(entry) = &net.vpc_route {
            if !seen.insert(net.name.clone()) {
                continue;
            }
            if opts.with_vpc_routes {
                // The binary, not vpc-routes-aws: linking the AWS SDK into cni-suite
                // would make it wait for the SDK's compile, and the binary is installed
                // wherever vpc-route is in use.
                match vpc::find_binary(&opts.bin_dirs) {
                    Some(binary) => plan.actions.push(Action::DeregisterVpcRoutes {
                        network: net.name.clone(),
                        entry: entry.clone(),
                        binary,
                        conflist: net.file.clone(),
                    }),
                    None => plan.blockers.push(format!(
                        "--with-vpc-routes: no executable {} in {} to deregister the VPC routes of network {} with; give the CNI bin dir holding it with --bin-dir",
                        vpc::BINARY,
                        opts.bin_dirs
                            .iter()
                            .map(|d| d.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                        net.name
                    )),
                }
            } else {
                plan.notes.push(format!(
                    "VPC routes of network {} stay (and {} with them): add --with-vpc-routes to delete them",
                    net.name,
                    vpc::state_path(entry).display()
                ));
            }
        }
        if let Kind::Overlay(cfg) = &net.kind {
            if cfg.etcd_endpoints.is_empty() {
                continue;
            }
            if opts.with_etcd_lease {
                plan.actions.push(Action::ReleaseEtcdLease {
                    config: net.entry.clone(),
                    network: net.name.clone(),
                    endpoints: cfg.etcd_endpoints.clone(),
                    prefix: cfg.etcd_prefix.clone(),
                });
            } else {
                plan.notes.push(format!(
                    "the etcd record of network {} was revoked when the agent stopped (releaseOnExit) or expires {} s after it: add --with-etcd-lease to release it now",
                    net.name, cfg.lease_ttl
                ));
            }
        }
    }
}

/// Carries out every action, in order, going on after failures.
pub fn execute(plan: &Plan) -> Vec<Outcome> {
    let mut sock = netsetup::Socket::new();
    plan.actions
        .iter()
        .map(|a| Outcome {
            action: a.clone(),
            result: apply(a, &mut sock),
        })
        .collect()
}

fn apply(
    action: &Action,
    sock: &mut Result<netsetup::Socket, netsetup::Error>,
) -> Result<Option<String>, Error> {
    let local = match action {
        Action::DeleteLink { name, .. } => {
            let sock = sock
                .as_mut()
                .map_err(|e| Error::Refused(format!("no netlink socket: {e}")))?;
            match sock.request(netsetup::link::delete_link(name)) {
                Ok(_) => Ok(()),
                Err(netsetup::Error::Netlink { source, .. })
                    if netsetup::link::is_no_device(&source) =>
                {
                    Ok(())
                }
                Err(e) => Err(e.into()),
            }
        }
        Action::DeleteNftTable { table } => {
            netsetup::masquerade::remove_masquerade(table)?;
            netsetup::masquerade::remove_masquerade_of(table, true)?;
            Ok(())
        }
        Action::RemoveDir { path, .. } => ignore_missing(path, std::fs::remove_dir_all(path)),
        Action::RemoveFile { path, .. } => ignore_missing(path, std::fs::remove_file(path)),
        Action::RemoveEmptyDir { path } => match std::fs::remove_dir(path) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Ok(()),
            r => ignore_missing(path, r),
        },
        // The one step that reports something: vpc-route's plan, for the operator.
        Action::DeregisterVpcRoutes {
            entry,
            binary,
            conflist,
            ..
        } => return vpc::deregister(binary, conflist, entry).map(Some),
        Action::ReleaseEtcdLease { config, .. } => {
            let cfg: overlay::OverlayConfig = serde_json::from_value(config.clone())
                .map_err(|e| Error::Remote(format!("vxlan-overlay config: {e}")))?;
            overlay::agent::release_node_records(&cfg)
                .map(|_| ())
                .map_err(|e| Error::Remote(format!("releasing the etcd record: {e}")))
        }
    };
    local.map(|()| None)
}

fn ignore_missing(path: &Path, r: std::io::Result<()>) -> Result<(), Error> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
        Ok(()) => Ok(()),
    }
}

/// The plan for people: actions, notes, blockers.
pub fn plan_text(plan: &Plan, outcomes: Option<&[Outcome]>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    match outcomes {
        None => {
            let _ = if plan.blockers.is_empty() {
                writeln!(
                    out,
                    "cni-suite teardown: dry run, nothing changed (run with --yes to apply)"
                )
            } else {
                writeln!(
                    out,
                    "cni-suite teardown: nothing changed, blocked (see BLOCKED below)"
                )
            };
            if plan.actions.is_empty() {
                let _ = writeln!(out, "nothing to remove");
            }
            for a in &plan.actions {
                let _ = writeln!(out, "  would {a}");
            }
        }
        Some(done) => {
            let _ = writeln!(out, "cni-suite teardown:");
            if done.is_empty() {
                let _ = writeln!(out, "nothing to remove");
            }
            for o in done {
                match &o.result {
                    Ok(detail) => {
                        let _ = writeln!(out, "  done: {}", o.action);
                        for line in detail.iter().flat_map(|d| d.lines()) {
                            let _ = writeln!(out, "    {line}");
                        }
                    }
                    Err(e) => {
                        let _ = writeln!(out, "  FAILED: {}: {e}", o.action);
                    }
                }
            }
        }
    }
    for n in &plan.notes {
        let _ = writeln!(out, "note: {n}");
    }
    for b in &plan.blockers {
        let _ = writeln!(out, "BLOCKED: {b}");
    }
    out
}

/// The plan (and outcomes) as JSON.
pub fn plan_json(plan: &Plan, outcomes: Option<&[Outcome]>) -> Value {
    let actions: Vec<Value> = match outcomes {
        None => plan
            .actions
            .iter()
            .map(|a| serde_json::json!({"action": a.to_string(), "result": "planned"}))
            .collect(),
        Some(done) => done
            .iter()
            .map(|o| match &o.result {
                Ok(None) => serde_json::json!({"action": o.action.to_string(), "result": "done"}),
                Ok(Some(d)) => serde_json::json!({"action": o.action.to_string(), "result": "done", "output": d}),
                Err(e) => serde_json::json!({"action": o.action.to_string(), "result": "failed", "error": e.to_string()}),
            })
            .collect(),
    };
    serde_json::json!({
        "dryRun": outcomes.is_none(),
        "actions": actions,
        "notes": plan.notes,
        "blockers": plan.blockers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A conf dir with one kubenet-bridge + vpc-route conflist, and the opts to plan it.
    fn vpc_node(dir: &Path, with_vpc_routes: bool) -> (Options, Vec<SuiteNetwork>) {
        let conf = dir.join("net.d");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::write(
            conf.join("10-k8s.conflist"),
            r#"{"cniVersion":"1.0.0","name":"k8s","plugins":[
                {"type":"kubenet-bridge","podCIDR":"10.244.3.0/24"},
                {"type":"vpc-route","clusterName":"c","podCIDR":"10.244.3.0/24",
                 "clusterCIDR":"10.244.0.0/16"}]}"#,
        )
        .unwrap();
        let opts = Options {
            conf_dir: conf.clone(),
            cache_dir: dir.join("cache"),
            with_vpc_routes,
            with_etcd_lease: false,
            bin_dirs: vec![dir.join("bin-a"), dir.join("bin-b")],
        };
        let (nets, errors) = netconf::suite_networks(&netconf::load_dir(&conf).unwrap());
        assert!(errors.is_empty(), "{errors:?}");
        (opts, nets)
    }

    #[test]
    fn with_vpc_routes_runs_the_installed_vpc_route_or_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let (opts, nets) = vpc_node(dir.path(), true);

        // No binary in any bin dir: blocked, naming the dirs and the flag, nothing planned.
        let mut plan = Plan::default();
        plan_remote(&opts, &nets, &mut plan);
        assert!(plan.actions.is_empty(), "{:?}", plan.actions);
        assert_eq!(plan.blockers.len(), 1, "{:?}", plan.blockers);
        let b = &plan.blockers[0];
        assert!(
            b.contains("bin-a") && b.contains("bin-b") && b.contains("--bin-dir"),
            "{b}"
        );

        // Installed in the second dir: one action running it on the network's conflist.
        let bin = dir.path().join("bin-b");
        std::fs::create_dir_all(&bin).unwrap();
        let vpc_route = bin.join("vpc-route");
        std::fs::write(&vpc_route, "#!/bin/sh\necho \"did delete for $*\"\n").unwrap();
        std::fs::set_permissions(&vpc_route, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut plan = Plan::default();
        plan_remote(&opts, &nets, &mut plan);
        assert!(plan.blockers.is_empty(), "{:?}", plan.blockers);
        let conflist = opts.conf_dir.join("10-k8s.conflist");
        let [action] = plan.actions.as_slice() else {
            panic!("{:?}", plan.actions)
        };
        assert_eq!(
            action.to_string(),
            format!(
                "deregister the VPC routes of 10.244.3.0/24 (network k8s): {} deregister --config {}",
                vpc_route.display(),
                conflist.display()
            )
        );
        let outcomes = execute(&plan);
        let output = outcomes[0].result.as_ref().unwrap();
        assert_eq!(
            output.as_deref(),
            Some(format!("did delete for deregister --config {}", conflist.display()).as_str())
        );
        let text = plan_text(&plan, Some(&outcomes));
        assert!(text.contains("  done: deregister the VPC routes"), "{text}");
        assert!(text.contains("    did delete for deregister"), "{text}");
        let json = plan_json(&plan, Some(&outcomes));
        assert_eq!(json["actions"][0]["result"], "done");
        assert!(json["actions"][0]["output"]
            .as_str()
            .unwrap()
            .starts_with("did delete for"));

        // Without the flag: a note, no action, whatever is installed.
        let (opts, nets) = vpc_node(dir.path(), false);
        let mut plan = Plan::default();
        plan_remote(&opts, &nets, &mut plan);
        assert!(plan.actions.is_empty() && plan.blockers.is_empty());
        assert!(
            plan.notes[0].contains("--with-vpc-routes"),
            "{:?}",
            plan.notes
        );
    }

    #[test]
    fn recognises_only_the_suites_veth_names() {
        assert!(is_suite_veth(&pod_bridge::attach::host_veth_name(
            "abc", "eth0"
        )));
        assert!(!is_suite_veth("veth1a2b3c4d")); // the reference bridge plugin's
        assert!(!is_suite_veth("vethABCDEFGHIJK"));
        assert!(!is_suite_veth("eth0"));
    }

    #[test]
    fn the_vpc_route_plan_names_both_ranges_of_a_dual_stack_entry() {
        let dual = serde_json::json!({"type": "vpc-route",
            "podCIDRs": ["10.244.3.0/24", "fd00:10:244:3::/64"]});
        assert_eq!(pod_ranges_text(&dual), "10.244.3.0/24, fd00:10:244:3::/64");
        let one = serde_json::json!({"type": "vpc-route", "podCIDR": "10.244.3.0/24"});
        assert_eq!(pod_ranges_text(&one), "10.244.3.0/24");
    }
}
