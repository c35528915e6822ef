//! `vpc-route`: a chained CNI plugin that makes the node's pod CIDR routable in the AWS VPC
//! route tables, and the node commands `register | deregister [--dry-run] | status |
//! gc [--dry-run]`.
//! The work is in the `vpc-routes` crates (the rules in vpc-routes, EC2 and IMDS in
//! vpc-routes-aws); this file parses (the node commands through clap), calls them, and gives
//! their errors their CNI codes once (the skeleton prints them).

use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory, Parser, Subcommand};
use cni_skel::cni_spec::{Attachment, Code, ConfList, ErrorCode};
use cni_skel::{About, AddOutput, Plugin, Request};
use serde_json::Value;
use vpc_routes::{Config, ErrorKind};

const ABOUT: About = About {
    name: "vpc-route",
    version: env!("CARGO_PKG_VERSION"),
    summary: "Chained after kubenet-bridge: registers the node's pod CIDR -> primary ENI in every \
              cluster route table of the VPC (zero EC2 calls once registered) and passes the \
              previous result on unchanged. Node commands: vpc-route register | deregister \
              [--dry-run] | status | gc [--dry-run] --config <conflist>.",
};

/// What can fail here: the registrar, the request itself, or (never in practice) the async
/// runtime.
#[derive(Debug, thiserror::Error)]
enum VpcError {
    #[error(transparent)]
    Vpc(#[from] vpc_routes::Error),
    /// A request refused before any EC2 call: its spec code and message.
    #[error("{1}")]
    Request(Code, String),
    #[error("tokio runtime: {0}")]
    Runtime(std::io::Error),
}

/// The one place where vpc-route's errors get their CNI code.
impl ErrorCode for VpcError {
    fn code(&self) -> Code {
        let e = match self {
            VpcError::Vpc(e) => e,
            VpcError::Request(c, _) => return *c,
            VpcError::Runtime(_) => return Code::IoFailure,
        };
        match e.kind() {
            ErrorKind::Config => Code::InvalidNetworkConfig,
            ErrorKind::Unavailable => Code::TryAgainLater,
            ErrorKind::Quota => Code::RouteQuota,
            ErrorKind::NotAvailable => Code::PluginNotAvailable,
            ErrorKind::Conflict => Code::RouteConflict,
            ErrorKind::Deadline => Code::CloudDeadline,
            ErrorKind::Api => Code::CloudApi,
            ErrorKind::NoRouteTables => Code::NoRouteTables,
            ErrorKind::RouteMissing => Code::CheckMismatch,
            ErrorKind::State => Code::IoFailure,
            ErrorKind::Incomplete => Code::CloudIncomplete,
        }
    }
}

/// Runs one async registrar call on a single-threaded runtime (no worker threads on the
/// per-pod path).
fn block_on<T>(
    f: impl std::future::Future<Output = Result<T, vpc_routes::Error>>,
) -> Result<T, VpcError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(VpcError::Runtime)?;
    Ok(rt.block_on(f)?)
}

/// What CHECK demands before it may cost an EC2 call: a prevResult. (`CNI_NETNS`, which
/// vpc-route never enters, is checked by the skeleton for every plugin: code 4 for anything
/// but a pod's network namespace.)
fn refuse_bad_request(req: &Request<Value>) -> Result<(), VpcError> {
    if req.command == cni_skel::cni_spec::Command::Check && req.conf.prev_result.is_none() {
        return Err(VpcError::Request(
            Code::InvalidNetworkConfig,
            "CHECK needs prevResult".into(),
        ));
    }
    Ok(())
}

struct VpcRoute;

impl Plugin for VpcRoute {
    type Config = Value;
    type Error = VpcError;

    fn add(&self, req: &Request<Value>) -> Result<AddOutput, VpcError> {
        let config = Config::from_value(req.config.clone())?;
        refuse_bad_request(req)?;
        let plan = block_on(vpc_routes_aws::ensure(config))?;
        log::debug!("vpc-route ADD: {plan}");
        Ok(AddOutput::PrevResult)
    }

    /// A pod leaving does not take the node's route with it.
    fn del(&self, req: &Request<Value>) -> Result<Option<String>, VpcError> {
        Config::from_value(req.config.clone())?;
        Ok(None)
    }

    fn check(&self, req: &Request<Value>) -> Result<(), VpcError> {
        let config = Config::from_value(req.config.clone())?;
        refuse_bad_request(req)?;
        block_on(vpc_routes_aws::check(config))
    }

    /// From the node state only: runtimes poll STATUS, it never calls EC2.
    fn status(&self, req: &Request<Value>) -> Result<(), VpcError> {
        let config = Config::from_value(req.config.clone())?;
        vpc_routes::status(&config)?;
        Ok(())
    }

    /// The config rules ADD applies before any EC2 call (podCIDR inside clusterCIDR, ...).
    fn check_config(
        &self,
        _conf: &cni_skel::cni_spec::NetConf,
        config: &Value,
    ) -> Result<(), VpcError> {
        Config::from_value(config.clone())?;
        Ok(())
    }

    /// Pods hold nothing of ours; node routes are collected by `vpc-route gc`.
    fn gc(&self, req: &Request<Value>, _valid: &[Attachment]) -> Result<Option<String>, VpcError> {
        Config::from_value(req.config.clone())?;
        Ok(None)
    }
}

/// `vpc-route`'s node commands (argv[1] is one of them; anything else is the CNI path).
#[derive(Parser)]
#[command(
    name = "vpc-route",
    bin_name = "vpc-route",
    disable_version_flag = true,
    about = "The node commands of vpc-route: the node's pod CIDR in the VPC route tables. Each \
             reads the vpc-route entry of the conflist; `vpc-route --help` describes the plugin."
)]
struct NodeArgs {
    #[command(subcommand)]
    command: NodeCommand,
}

/// One node command and its options.
#[derive(Subcommand)]
enum NodeCommand {
    /// Registers the node's route in every cluster route table, whatever the node state says.
    Register(ConfigArg),
    /// Deletes the node's route from every cluster route table.
    Deregister {
        #[command(flatten)]
        conf: ConfigArg,
        /// print what would be deleted, change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Prints the node state (no EC2 call).
    Status(ConfigArg),
    /// Deletes routes inside clusterCIDR whose target is gone.
    Gc {
        #[command(flatten)]
        conf: ConfigArg,
        /// print what would be deleted, change nothing
        #[arg(long)]
        dry_run: bool,
    },
}

/// The conflist every node command reads.
#[derive(Args)]
struct ConfigArg {
    /// the conflist (or single network config) with the vpc-route entry
    #[arg(short, long, value_name = "conflist")]
    config: PathBuf,
}

impl NodeCommand {
    /// The command's name (for messages), its conflist, and whether it is a dry run.
    fn parts(&self) -> (&'static str, &Path, bool) {
        match self {
            NodeCommand::Register(c) => ("register", &c.config, false),
            NodeCommand::Deregister { conf, dry_run } => ("deregister", &conf.config, *dry_run),
            NodeCommand::Status(c) => ("status", &c.config, false),
            NodeCommand::Gc { conf, dry_run } => ("gc", &conf.config, *dry_run),
        }
    }
}

fn main() {
    // Only the node commands parse arguments; the CNI path (`CNI_*` variables, or `--version`
    // and `--help`, which the skeleton answers) never runs clap.
    let node_command = std::env::args_os().nth(1).is_some_and(|a| {
        ["register", "deregister", "status", "gc"]
            .iter()
            .any(|c| a == *c)
    });
    if node_command {
        std::process::exit(run_node_command(&NodeArgs::parse().command));
    }
    std::process::exit(cni_skel::run(&VpcRoute, &ABOUT));
}

/// Runs a node command: prints the plan or status (a dry run prints what it would delete and
/// changes nothing); 0 on success, 1 when the command failed, 2 when the conflist is unusable.
fn run_node_command(command: &NodeCommand) -> i32 {
    let (name, path, dry_run) = command.parts();
    let shown = path.display();
    let list = match std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|b| ConfList::parse(&b).map_err(|e| e.msg))
    {
        Ok(list) => list,
        Err(e) => usage_error(name, format!("{shown}: {e}")),
    };
    let Some(entry) = list.entry("vpc-route").cloned() else {
        usage_error(name, format!("{shown} has no vpc-route plugin"));
    };
    cni_skel::log_file::init_with(&entry, "vpc-route", log::LevelFilter::Info);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vpc-route {name}: tokio runtime: {e}");
            return 2;
        }
    };
    let outcome = Config::from_value(entry).and_then(|config| {
        if let NodeCommand::Status(_) = command {
            return vpc_routes::status(&config).map(|s| s.to_string());
        }
        rt.block_on(async {
            let r = vpc_routes_aws::connect(config).await?;
            let plan = match command {
                NodeCommand::Register(_) => r.register().await?,
                NodeCommand::Deregister { .. } => r.deregister(dry_run).await?,
                _ => r.gc(dry_run).await?,
            };
            Ok(plan.to_string())
        })
    });
    match outcome {
        Ok(text) => {
            println!("{text}");
            0
        }
        Err(e) => {
            eprintln!("vpc-route {name}: {e}");
            1
        }
    }
}

/// A conflist `command` cannot use: clap's usage error, with that command's usage (exit 2).
fn usage_error(command: &str, why: String) -> ! {
    let mut cli = NodeArgs::command();
    // Built, the subcommands know their full name (`vpc-route gc`) for the usage line.
    cli.build();
    let error = match cli.find_subcommand_mut(command) {
        Some(sub) => sub.error(clap::error::ErrorKind::InvalidValue, why),
        None => cli.error(clap::error::ErrorKind::InvalidValue, why),
    };
    error.exit()
}
