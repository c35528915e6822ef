//! `cni-suite doctor`: checks a node the way kops' "Validating CNI installation" list does
//! (runtime set to use CNI, the provider started without errors, pod create and delete
//! logged, kube-dns running), and then the suite's own state: binaries, every conflist and the
//! plugins it names, bridges, VXLAN devices, forwarding, masquerade tables, leaked leases,
//! orphans (pod veths, cached results and leases one of whose sides is gone), the agent's
//! lease and `/healthz`, and VPC routes. It only reads; nothing on the node changes.
//!
//! One file per group of checks; [`run`] calls them in a fixed order, which is the order of
//! the report. A new check goes into its group's file and gets one call here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod agent_health;
pub mod report;

mod agent;
mod binaries;
mod cluster;
mod conflists;
mod datapath;
mod ipam;
mod kube_registry;
mod orphans;
mod plugin_log;
mod results_cache;
mod runtime_cni;
mod vpc_routes;

pub use binaries::plugin_versions;

use crate::kernel::{self, Links};
use crate::netconf::{self, Kind};
use report::Report;

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
    /// How old a lease without a cached result must be to count as orphaned: libcni writes
    /// its cache only after ADD returns.
    pub orphan_grace: Duration,
}

/// Default `--orphan-grace-seconds`.
pub const DEFAULT_ORPHAN_GRACE_SECONDS: u64 = 300;

/// Runs every check.
pub fn run(opts: &Options) -> Report {
    let mut report = Report::default();
    let procs = kernel::processes();
    let kubelet = crate::runtime::kubelet(&procs);
    report.push(runtime_cni::check_runtime(opts, kubelet.as_ref()));
    report.push(binaries::check_bin_dir(opts));
    report.push(binaries::check_location(opts));

    let files = match netconf::load_dir(&opts.conf_dir) {
        Ok(f) => f,
        Err(e) => {
            report.push(conflists::conf_dir_unreadable(opts, &e));
            Vec::new()
        }
    };
    let (nets, config_errors) = netconf::suite_networks(&files);
    if opts.conf_dir.is_dir() {
        report.push(conflists::check_conf_dir(opts, &files, &nets));
    }
    let mut versions = binaries::VersionCache::default();
    for f in &files {
        report.push(conflists::check_conf_file(opts, f, &mut versions));
    }
    for (path, e) in &config_errors {
        report.push(conflists::config_undecodable(path, e));
    }
    report.push(datapath::check_ip_forward());

    let mut links = match Links::read() {
        Ok(l) => Some(l),
        Err(e) => {
            report.push(datapath::links_unreadable(&e));
            None
        }
    };
    let nft = kernel::nft_tables();
    let nft6 = kernel::nft_tables_ip6();
    let results_dir = crate::libcni_cache::results_dir(&opts.cache_dir);
    let cache = crate::libcni_cache::read_results(&results_dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "{} does not exist (no runtime caches results here)",
                results_dir.display()
            )
        } else {
            format!("{}: {e}", results_dir.display())
        }
    });
    let mut seen_bridges = BTreeSet::new();
    for net in &nets {
        let resolved = net.resolve();
        if let (Kind::Kubenet(_), Err(e)) = (&net.kind, &resolved) {
            report.push(conflists::network_unresolved(net, e));
        }
        let leases = ipam::read_leases(&net.ipam_dir());
        if let Some(links) = links.as_mut() {
            if seen_bridges.insert(net.bridge().to_string()) {
                report.push(datapath::check_bridge(
                    net,
                    resolved.as_ref().ok(),
                    &leases,
                    links,
                ));
            }
            report.push(ipam::check_leases(
                net,
                resolved.as_ref().ok(),
                &leases,
                links,
            ));
        }
        let cached: orphans::CacheEntries<'_> = match &cache {
            Ok(all) => Ok(all.iter().filter(|r| r.network == net.name).collect()),
            Err(why) => Err(why.clone()),
        };
        if let Some(links) = links.as_ref() {
            report.push(orphans::check_veths(net, &leases, &cached, links));
        }
        report.push(orphans::check_cached_results(net, &leases, &cached));
        report.push(orphans::check_uncached_leases(net, &leases, &cached, opts));
        report.push(datapath::check_masquerade(
            net,
            resolved.as_ref().ok(),
            &leases,
            &nft,
            &nft6,
        ));
        report.push(plugin_log::check_log(net, &leases, opts));
        if let Kind::Overlay(cfg) = &net.kind {
            report.push(agent::check_agent(net, cfg));
            if cfg.registry == overlay::config::RegistryKind::Kubernetes {
                for c in kube_registry::check_kube_registry(net, cfg) {
                    report.push(c);
                }
            } else {
                report.push(agent::check_agent_record(net, cfg));
            }
            report.push(agent_health::check(net, cfg));
            report.push(agent::check_agent_log(net, opts));
            if let Some(links) = links.as_mut() {
                report.push(datapath::check_vxlan(cfg, links));
            }
        }
        if let Some(entry) = &net.vpc_route {
            report.push(vpc_routes::check_vpc(
                net,
                entry,
                resolved.as_ref().ok(),
                &leases,
            ));
        }
    }
    if let Some(links) = links.as_ref() {
        report.push(results_cache::check_results_cache(opts, &nets, links));
    }
    report.push(datapath::check_br_netfilter(kubelet.is_some()));
    for c in cluster::cluster_checks(opts, &nets) {
        report.push(c);
    }
    report
}

/// The last component of `p`, as the checks name conf files (`conflist:10-k8s.conflist`).
fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}
