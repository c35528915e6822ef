//! `cni-suite`: the operator command of the CNI suite. `doctor` checks a node, `teardown`
//! removes the suite's state from it; the work is in the `node-ops` crate.
//!
//! Installed outside the CNI bin dir (the .deb puts it in /usr/sbin): runtimes may exec every
//! file in the bin dir.

use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use node_ops::{doctor, teardown};

#[derive(Parser)]
#[command(
    name = "cni-suite",
    about = "Check a node of the CNI suite, or remove the suite's state from it"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check the node: runtime set to use CNI, binaries, conflists and the plugins they name
    /// (VERSION), bridges, VXLAN devices, ip_forward, masquerade tables, leaked leases, logs,
    /// the overlay agent, VPC routes, and with a kubeconfig DNS pods and the node's podCIDR.
    /// Exits 1 when a check fails.
    Doctor {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// The CNI conf dir the runtime reads.
        #[arg(long, default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
        /// The CNI bin dir the runtime execs plugins from.
        #[arg(long, default_value = "/opt/cni/bin")]
        bin_dir: PathBuf,
        /// containerd's config (its CRI plugin's cni section is checked).
        #[arg(long, default_value = "/etc/containerd/config.toml")]
        containerd_config: PathBuf,
        /// Enables the cluster-side checks (run through kubectl).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// This node's name in the cluster (default: the hostname).
        #[arg(long)]
        node_name: Option<String>,
        /// libcni's cache dir (cached results in <dir>/results).
        #[arg(long, default_value = node_ops::libcni_cache::DEFAULT_CACHE_DIR)]
        cache_dir: PathBuf,
        /// Log errors younger than this many minutes count as recent.
        #[arg(long, default_value_t = 60)]
        log_window_minutes: u64,
        /// A lease without a cached result counts as orphaned once older than this (libcni
        /// writes its cache after ADD returns).
        #[arg(long, default_value_t = doctor::DEFAULT_ORPHAN_GRACE_SECONDS)]
        orphan_grace_seconds: u64,
    },
    /// Remove what the suite created on this node: pod veths, the bridges and VXLAN devices of
    /// its conflists, the cni_suite_* nftables tables, its networks' IPAM state and cached
    /// results, the agent's state. A dry run unless --yes. Exits 1 when an action fails.
    Teardown {
        /// Carry out the plan (default: print it only).
        #[arg(long)]
        yes: bool,
        /// Print the plan and outcomes as JSON.
        #[arg(long)]
        json: bool,
        /// Also delete this node's routes from the VPC route tables, by running the installed
        /// `vpc-route deregister --config <conflist>` (found in --bin-dir).
        #[arg(long)]
        with_vpc_routes: bool,
        /// CNI bin dir holding vpc-route, for --with-vpc-routes (may repeat; first match wins).
        #[arg(long, default_value = "/opt/cni/bin")]
        bin_dir: Vec<PathBuf>,
        /// Also release the overlay agent's subnet record in etcd.
        #[arg(long)]
        with_etcd_lease: bool,
        /// The CNI conf dir holding the suite's conflists.
        #[arg(long, default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
        /// libcni's cache dir (cached results in <dir>/results).
        #[arg(long, default_value = node_ops::libcni_cache::DEFAULT_CACHE_DIR)]
        cache_dir: PathBuf,
    },
}

/// The version text clap prints after the name: the shape every binary of the suite uses.
/// cni-suite speaks the spec versions of the plugins it asks VERSION of.
fn version() -> &'static str {
    let spec = cni_spec::SUPPORTED.map(|v| v.as_str());
    let text = cni_spec::version_text(env!("CARGO_PKG_VERSION"), &spec);
    // clap wants a 'static str; this runs once per process.
    Box::leak(text.into_boxed_str())
}

fn main() {
    let matches = Cli::command().version(version()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    std::process::exit(match cli.command {
        Cmd::Doctor {
            json,
            conf_dir,
            bin_dir,
            containerd_config,
            kubeconfig,
            node_name,
            cache_dir,
            log_window_minutes,
            orphan_grace_seconds,
        } => {
            let report = doctor::run(&doctor::Options {
                conf_dir,
                bin_dir,
                containerd_config,
                kubeconfig,
                node_name,
                cache_dir,
                log_window: Duration::from_secs(log_window_minutes * 60),
                suite_version: env!("CARGO_PKG_VERSION").to_string(),
                orphan_grace: Duration::from_secs(orphan_grace_seconds),
            });
            if json {
                println!("{:#}", report.to_json());
            } else {
                print!("{}", report.to_text());
            }
            i32::from(!report.passed())
        }
        Cmd::Teardown {
            yes,
            json,
            with_vpc_routes,
            with_etcd_lease,
            bin_dir,
            conf_dir,
            cache_dir,
        } => {
            let opts = teardown::Options {
                conf_dir,
                cache_dir,
                with_vpc_routes,
                with_etcd_lease,
                bin_dirs: bin_dir,
            };
            let plan = match teardown::plan(&opts) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("cni-suite teardown: cannot look at the node: {e}");
                    std::process::exit(1);
                }
            };
            let outcomes = (yes && plan.blockers.is_empty()).then(|| teardown::execute(&plan));
            if json {
                println!("{:#}", teardown::plan_json(&plan, outcomes.as_deref()));
            } else {
                print!("{}", teardown::plan_text(&plan, outcomes.as_deref()));
            }
            let failed = outcomes
                .as_ref()
                .is_some_and(|o| o.iter().any(|o| o.result.is_err()));
            i32::from(failed || (yes && !plan.blockers.is_empty()))
        }
    });
}
