//! `vxlan-overlay-agent`: the node agent of the vxlan-overlay network, a binary of its own so
//! that the per-pod plugin (`vxlan-overlay`) links none of its Kubernetes client, metrics
//! server or async runtime. The work is in `overlay::agent` (etcd and static peers) and
//! `overlay_kube` (`"registry": "kubernetes"`); this file parses and calls them.

use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser};
use overlay::config::RegistryKind;

/// The agent's command line.
#[derive(Parser)]
#[command(
    name = "vxlan-overlay-agent",
    help_template = "usage: {usage}\n\n{about}\n\noptions:\n{options}\n\n{after-help}",
    about = "\
The node agent of the vxlan-overlay network: leases this node a subnet of clusterCIDR in etcd
(or takes it from peersFile, or with registry kubernetes from its Node's spec.podCIDR,
publishing the VTEP in flannel's node annotations), writes it to subnetFile (flannel's
subnet.env) for the plugin,
creates the VXLAN device and programs a route, ARP and FDB entry per peer, applying etcd's
watch events as they come, and renews the lease every leaseTTL/3 seconds on a thread of its
own. It reads the conflist's vxlan-overlay entry (registry, kubeconfig, nodeName, etcdEndpoints, etcdCAFile, etcdCertFile,
etcdKeyFile, etcdUsername, etcdPassword, etcdPrefix, leaseTTL, releaseOnExit, peersFile,
subnetFile, vni, port, device, underlayInterface, mtu, dataDir, resyncSeconds,
metricsAddress, logFile, logLevel: see the README), the same entry the plugin reads. Runs
until SIGTERM or SIGINT, then releases its lease unless releaseOnExit is false; the VXLAN
device stays, so pods keep their traffic across restarts.",
    after_help = "`vxlan-overlay agent …`, the command of earlier releases, runs this binary."
)]
struct AgentArgs {
    /// the conflist (or single network config) with the vxlan-overlay entry
    #[arg(short, long, value_name = "file")]
    config: PathBuf,
}

/// The version text every binary of the suite prints: the agent reads conflists of every
/// spec version the plugin speaks.
fn version() -> &'static str {
    let spec = cni_spec::SUPPORTED.map(|v| v.as_str());
    // clap wants a 'static str; this runs once per process.
    Box::leak(cni_spec::version_text(env!("CARGO_PKG_VERSION"), &spec).into_boxed_str())
}

fn main() {
    let matches = AgentArgs::command().version(version()).get_matches();
    let args = AgentArgs::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let run = overlay::agent::load_conflist(&args.config).and_then(|cfg| match cfg.registry {
        RegistryKind::Kubernetes => overlay_kube::run(cfg),
        RegistryKind::Etcd => overlay::agent::run(cfg),
    });
    std::process::exit(match run {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("vxlan-overlay agent: {e}");
            1
        }
    });
}
