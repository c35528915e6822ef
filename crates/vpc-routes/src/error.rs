//! The crate's one error type, and the kinds the plugin binary maps to CNI codes.

use std::path::PathBuf;

use ipnet::IpNet;

use crate::ec2::{ApiError, Family, Operation, RouteTarget};
use crate::plan::Plan;

/// AWS service quota code of "Routes per route table".
pub const ROUTE_QUOTA_CODE: &str = "L-93826ACB";

/// Everything that can go wrong while registering a node's pod CIDR.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The plugin configuration is unusable.
    #[error("invalid vpc-route config: {field}: {reason}")]
    Config {
        /// The JSON key at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// The instance metadata service did not answer a needed value.
    #[error("instance metadata {path} at {endpoint}: {message}")]
    Imds {
        /// Metadata path, such as `/latest/meta-data/mac`.
        path: String,
        /// IMDS endpoint in use (`default` when aws-config picked it).
        endpoint: String,
        /// The client's error, rendered.
        message: String,
    },

    /// EC2 could not be reached (connection refused, DNS, TLS) after a few attempts.
    #[error("EC2 unreachable: {source}")]
    Unavailable {
        /// The last transport error.
        #[source]
        source: ApiError,
    },

    /// EC2 answered with an error this crate has no special handling for.
    #[error("EC2 refused: {source}")]
    Api {
        /// EC2's answer.
        #[source]
        source: ApiError,
    },

    /// The node's pod CIDR is already routed to something that is neither this node nor
    /// a provably dead one: we never take a live route away from someone else.
    #[error(
        "route {destination} in {table_id} points to {target} (origin {origin}, state {state}), \
         not to this node's {eni_id}; refusing to replace it: only blackhole routes or routes \
         to terminated instances, created by CreateRoute inside clusterCIDR, are replaced"
    )]
    Conflict {
        /// Route table holding the route.
        table_id: String,
        /// The route's destination (the node's pod CIDR).
        destination: IpNet,
        /// Where it points now (boxed: keeps `Result<_, Error>` small).
        target: Box<RouteTarget>,
        /// How it was created (`CreateRoute`, `CreateRouteTable`, propagation). `Box<str>`
        /// like `state`: with an IPv6 destination the variant would pass clippy's
        /// `result_large_err` bound of 128 bytes otherwise.
        origin: Box<str>,
        /// `active` or `blackhole`.
        state: Box<str>,
        /// The ENI this node wanted the route on.
        eni_id: String,
    },

    /// EC2 answered `RouteLimitExceeded`: the table is at its quota. Never retried.
    #[error(
        "route table {table_id} is full: EC2 refused {destination} with RouteLimitExceeded. \
         The quota is \"Routes per route table\" ({ROUTE_QUOTA_CODE}): 50 by default in older \
         accounts, 500 in newer ones, 1000 at most. Raise it in Service Quotas, or use the \
         vxlan-overlay plugin, which needs no VPC route per node"
    )]
    RouteLimitExceeded {
        /// The full table.
        table_id: String,
        /// The route that did not fit.
        destination: IpNet,
    },

    /// `routeQuota` is set and the table, as the DescribeRouteTables of this registration
    /// returned it, already holds that many routes: CreateRoute is not called for it. The
    /// reads before it (source/dest check, route tables) have run, and other tables are
    /// still registered.
    #[error(
        "route table {table_id} holds {routes} {} routes, at routeQuota {quota} (counted per \
         address family, as AWS does): not adding {destination}. Raise the quota ({ROUTE_QUOTA_CODE}, 1000 at most) and routeQuota, or \
         use the vxlan-overlay plugin",
        Family::of(.destination)
    )]
    QuotaReached {
        /// The full table.
        table_id: String,
        /// Routes of the destination's family counted against the quota.
        routes: usize,
        /// The configured `routeQuota`.
        quota: u32,
        /// The route that would not fit.
        destination: IpNet,
    },

    /// STATUS: the node state says a table is full (`RouteLimitExceeded` seen, or at
    /// `routeQuota`) and this node's route is not in it, so an ADD could not be served: it
    /// would have to call CreateRoute and the table has no room.
    #[error(
        "cannot serve ADD: route table {table_id} is full ({routes} {} routes{}, as last read) \
         and {destination} is not in it. The quota is \"Routes per route table\" \
         ({ROUTE_QUOTA_CODE}, 1000 at most): raise it (and routeQuota), delete stale routes \
         (vpc-route gc), or use the vxlan-overlay plugin",
        Family::of(.destination),
        quota_suffix(.quota)
    )]
    TableFull {
        /// The full table.
        table_id: String,
        /// Routes counted against the quota when last read.
        routes: usize,
        /// The configured `routeQuota`, if that is what it is full against.
        quota: Option<u32>,
        /// This node's pod CIDR.
        destination: IpNet,
    },

    /// The operation did not finish within `deadlineSeconds`.
    #[error("{operation} did not finish within the {seconds} s deadline{}", last_error_suffix(.last_error))]
    Deadline {
        /// The EC2 call in flight or being retried when time ran out.
        operation: Operation,
        /// The configured deadline.
        seconds: u64,
        /// The last retryable error (throttling), if any.
        last_error: Option<String>,
    },

    /// No route table matched: neither `routeTableIds` nor the cluster tags.
    #[error(
        "no route table in {vpc_id} tagged kubernetes.io/cluster/{cluster_name} or \
         KubernetesCluster={cluster_name}, and no routeTableIds in the config"
    )]
    NoRouteTables {
        /// The node's VPC.
        vpc_id: String,
        /// The configured cluster name.
        cluster_name: String,
    },

    /// A `routeTableIds` entry does not exist.
    #[error("routeTableIds {requested:?}: {message}")]
    UnknownRouteTable {
        /// The configured tables.
        requested: Vec<String>,
        /// EC2's `InvalidRouteTableID.NotFound` message, naming the missing one.
        message: String,
    },

    /// CHECK found the node's route missing, pointing elsewhere, or not active.
    #[error("route {destination} in {table_id} {}, expected {expected}", describe_found(.found))]
    RouteMissing {
        /// The table without a correct route.
        table_id: String,
        /// The node's pod CIDR.
        destination: IpNet,
        /// What the table holds for that destination instead (target and state), if anything.
        found: Option<String>,
        /// The node's primary ENI.
        expected: String,
    },

    /// CHECK found source/destination checking still on for the node's ENI, so EC2 would
    /// drop forwarded pod traffic.
    #[error("source/destination check is still enabled on {eni_id}")]
    SourceDestCheck {
        /// The node's primary ENI.
        eni_id: String,
    },

    /// The node state cache could not be read or written.
    #[error("node state {path}: {source}")]
    State {
        /// File or directory at fault.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The node state file is not one this build reads: another format version, or not
    /// decodable. The plugin ignores such a file (it is a cache); a report shows it.
    #[error("node state {path}: {reason}")]
    StateFormat {
        /// The file.
        path: PathBuf,
        /// The version found, or the decode error.
        reason: String,
    },

    /// Some steps of a multi-step change (deregister, gc) failed; the others were done.
    #[error("{} of {} steps failed:\n{plan}", .plan.failed_count(), .plan.steps.len())]
    Incomplete {
        /// Every step with its outcome.
        plan: Box<Plan>,
    },
}

fn last_error_suffix(last: &Option<String>) -> String {
    match last {
        Some(e) => format!(" (last error: {e})"),
        None => String::new(),
    }
}

fn quota_suffix(quota: &Option<u32>) -> String {
    match quota {
        Some(q) => format!(" of routeQuota {q}"),
        None => ", EC2 answered RouteLimitExceeded".to_string(),
    }
}

fn describe_found(found: &Option<String>) -> String {
    match found {
        Some(t) => format!("points to {t}"),
        None => "is missing".to_string(),
    }
}

/// What kind of failure an [`Error`] is: what the plugin binary maps to a CNI error code.
///
/// The binary's mapping (`plugins/vpc-route/src/main.rs`; the README's error code table; CNI
/// reserves 1-99, plugins use 100+):
///
/// | kind | CNI code | meaning for the runtime |
/// |---|---|---|
/// | `Config` | 7 | invalid network config: fix the config |
/// | `Unavailable` | 11 | try again later: IMDS or EC2 unreachable |
/// | `NotAvailable` | 50 | STATUS: ADD cannot be served (a full table without our route) |
/// | `Quota` | 110 | route table full (`RouteLimitExceeded` or `routeQuota`) |
/// | `Conflict` | 111 | another live target owns the pod CIDR's route |
/// | `Deadline` | 112 | not done within `deadlineSeconds` (throttling, slow EC2) |
/// | `Api` | 113 | any other EC2 error (permissions, ...) |
/// | `NoRouteTables` | 114 | no table tagged for the cluster, or a listed table missing |
/// | `Incomplete` | 115 | deregister/gc: some steps failed |
/// | `RouteMissing` | 104 | CHECK: route missing, wrong, or source/dest check on |
/// | `State` | 5 | node state cache unreadable or unwritable (I/O failure) |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// See [`Error::Config`].
    Config,
    /// See [`Error::Imds`] and [`Error::Unavailable`].
    Unavailable,
    /// See [`Error::Conflict`].
    Conflict,
    /// See [`Error::RouteLimitExceeded`] and [`Error::QuotaReached`].
    Quota,
    /// See [`Error::TableFull`].
    NotAvailable,
    /// See [`Error::Deadline`].
    Deadline,
    /// See [`Error::NoRouteTables`] and [`Error::UnknownRouteTable`].
    NoRouteTables,
    /// See [`Error::RouteMissing`] and [`Error::SourceDestCheck`].
    RouteMissing,
    /// See [`Error::Api`].
    Api,
    /// See [`Error::State`] and [`Error::StateFormat`].
    State,
    /// See [`Error::Incomplete`].
    Incomplete,
}

impl Error {
    /// The kind of failure, for mapping to a CNI error code.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config { .. } => ErrorKind::Config,
            Error::Imds { .. } | Error::Unavailable { .. } => ErrorKind::Unavailable,
            Error::Api { .. } => ErrorKind::Api,
            Error::Conflict { .. } => ErrorKind::Conflict,
            Error::RouteLimitExceeded { .. } | Error::QuotaReached { .. } => ErrorKind::Quota,
            Error::TableFull { .. } => ErrorKind::NotAvailable,
            Error::Deadline { .. } => ErrorKind::Deadline,
            Error::NoRouteTables { .. } | Error::UnknownRouteTable { .. } => {
                ErrorKind::NoRouteTables
            }
            Error::RouteMissing { .. } | Error::SourceDestCheck { .. } => ErrorKind::RouteMissing,
            Error::State { .. } | Error::StateFormat { .. } => ErrorKind::State,
            Error::Incomplete { .. } => ErrorKind::Incomplete,
        }
    }

    /// Whether EC2 answered that an id of the node (instance, ENI, VPC, subnet) does not
    /// exist: the identity it was given is wrong (a node state from another instance), not
    /// the cluster's tables.
    pub fn is_unknown_node_id(&self) -> bool {
        const NODE_ID_NOT_FOUND: [&str; 4] = [
            "InvalidInstanceID.NotFound",
            "InvalidNetworkInterfaceID.NotFound",
            "InvalidVpcID.NotFound",
            "InvalidSubnetID.NotFound",
        ];
        matches!(self, Error::Api { source } if NODE_ID_NOT_FOUND.iter().any(|c| source.has_code(c)))
    }

    /// Whether the same call may succeed later without anyone changing anything:
    /// unreachable endpoints and deadlines. Quota, conflicts and config errors need a human.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind(), ErrorKind::Unavailable | ErrorKind::Deadline)
    }

    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> Self {
        Error::Config {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn state(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::State {
            path: path.into(),
            source,
        }
    }
}
