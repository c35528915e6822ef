//! `vpc-route`: a chained CNI plugin that makes the node's pod CIDR routable in the AWS VPC
//! route tables, and the node commands `register | deregister [--dry-run] | status |
//! gc [--dry-run]`.
//! The work is in the `vpc-routes` crates (the rules in vpc-routes, EC2 and IMDS in
//! vpc-routes-aws); this file parses, calls them, and gives their errors their CNI codes
//! once (the skeleton prints them).

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
        let plan = block_on(async { vpc_routes_aws::connect(config).await?.ensure().await })?;
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
        block_on(async { vpc_routes_aws::connect(config).await?.check().await })
    }

    /// From the node state only: runtimes poll STATUS, it never calls EC2.
    fn status(&self, req: &Request<Value>) -> Result<(), VpcError> {
        let config = Config::from_value(req.config.clone())?;
        vpc_routes::status(&config)?;
        Ok(())
    }

    /// Pods hold nothing of ours; node routes are collected by `vpc-route gc`.
    fn gc(&self, req: &Request<Value>, _valid: &[Attachment]) -> Result<Option<String>, VpcError> {
        Config::from_value(req.config.clone())?;
        Ok(None)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("register" | "deregister" | "status" | "gc") => {
            std::process::exit(node_command(&args))
        }
        _ => std::process::exit(cni_skel::run(&VpcRoute, &ABOUT)),
    }
}

/// `vpc-route <command> [--dry-run] --config <conflist>`: prints the plan or status; a dry
/// run (deregister, gc) prints what it would delete and changes nothing.
fn node_command(args: &[String]) -> i32 {
    let mut path = None;
    let mut dry_run = false;
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" | "-c" => path = it.next().cloned(),
            "--dry-run" => dry_run = true,
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    let Some(path) = path else {
        return usage("--config <conflist> is required");
    };
    if dry_run && !matches!(args[0].as_str(), "gc" | "deregister") {
        return usage("--dry-run applies to deregister and gc");
    }
    let list = match std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| ConfList::parse(&b).map_err(|e| e.msg))
    {
        Ok(list) => list,
        Err(e) => return usage(&format!("{path}: {e}")),
    };
    let Some(entry) = list.entry("vpc-route").cloned() else {
        return usage(&format!("{path} has no vpc-route plugin"));
    };
    cni_skel::log_file::init_with(&entry, "vpc-route", log::LevelFilter::Info);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return usage(&format!("tokio runtime: {e}")),
    };
    let outcome = Config::from_value(entry).and_then(|config| {
        if args[0] == "status" {
            return vpc_routes::status(&config).map(|s| s.to_string());
        }
        rt.block_on(async {
            let r = vpc_routes_aws::connect(config).await?;
            let plan = match args[0].as_str() {
                "register" => r.register().await?,
                "deregister" => r.deregister(dry_run).await?,
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
            eprintln!("vpc-route {}: {e}", args[0]);
            1
        }
    }
}

fn usage(why: &str) -> i32 {
    eprintln!("vpc-route: {why}\nusage: vpc-route register | deregister [--dry-run] | status | gc [--dry-run] --config <conflist>");
    2
}
