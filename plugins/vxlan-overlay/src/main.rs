//! `vxlan-overlay`: the CNI plugin, and with `agent --config <conflist>` the node agent. The
//! work is in the `overlay` crate.

use std::path::PathBuf;

use clap::Parser;
use cni_skel::About;
use overlay::VxlanOverlay;

const ABOUT: About = About {
    name: "vxlan-overlay",
    version: env!("CARGO_PKG_VERSION"),
    summary: "Attaches pods to the node bridge with addresses from the node's subnet of a \
              flannel-style VXLAN overlay. `vxlan-overlay agent --config <conflist>` runs the \
              node agent: subnet lease in etcd, VTEP, routes, ARP and FDB entries per peer.",
};

/// `vxlan-overlay agent`'s command line (argv[1] is `agent`, which clap takes for the
/// program name).
#[derive(Parser)]
#[command(
    name = "vxlan-overlay agent",
    bin_name = "vxlan-overlay agent",
    disable_version_flag = true,
    help_template = "usage: {usage}\n\n{about}\n\noptions:\n{options}\n\n{after-help}",
    about = "\
The node agent of the vxlan-overlay network: leases this node a subnet of clusterCIDR in etcd
(or takes it from peersFile), writes it to subnetFile (flannel's subnet.env) for the plugin,
creates the VXLAN device and programs a route, ARP and FDB entry per peer, applying etcd's
watch events as they come, and renews the lease every leaseTTL/3 seconds on a thread of its
own. It reads the conflist's vxlan-overlay entry (etcdEndpoints, etcdCAFile, etcdCertFile,
etcdKeyFile, etcdUsername, etcdPassword, etcdPrefix, leaseTTL, releaseOnExit, peersFile,
subnetFile, vni, port, device, underlayInterface, mtu, dataDir, resyncSeconds,
metricsAddress, logFile, logLevel: see the README), the same entry the plugin reads. Runs
until SIGTERM or SIGINT, then releases its lease unless releaseOnExit is false; the VXLAN
device stays, so pods keep their traffic across restarts.",
    after_help = "vxlan-overlay --version prints the version and the CNI spec versions."
)]
struct AgentArgs {
    /// the conflist (or single network config) with the vxlan-overlay entry
    #[arg(short, long, value_name = "file")]
    config: PathBuf,
}

fn main() {
    // Only the agent parses arguments; the CNI path (no arguments, `CNI_*` variables) goes
    // straight to the skeleton and never runs clap.
    if std::env::args_os().nth(1).is_some_and(|a| a == "agent") {
        let args = AgentArgs::parse_from(std::env::args_os().skip(1));
        std::process::exit(match overlay::agent::run_from_conflist(&args.config) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("vxlan-overlay agent: {e}");
                1
            }
        });
    }
    std::process::exit(cni_skel::run(&VxlanOverlay, &ABOUT));
}
