//! Make a node's pod CIDRs routable in its AWS VPC: one route per pod range (IPv4
//! `DestinationCidrBlock`, IPv6 `DestinationIpv6CidrBlock`) per cluster route table. This
//! crate is the part without the AWS SDK (config, node state, rules, retries, errors), so
//! that `cni-suite` can read the node state with the plugin's own types; the SDK adapter and
//! IMDSv2 are in `vpc-routes-aws`, which only the `vpc-route` binary links.
//!
//! The `vpc-route` plugin binary is a thin layer over both (vpc-routes-aws shows the calls).
//!
//! - [`Config`]: the plugin's keys; [`NodeIdentity`]: instance, region, primary ENI, VPC
//!   (vpc-routes-aws resolves it from IMDSv2), each overridable.
//! - [`Registrar`]: `ensure` (ADD, `register`), `check` (CHECK), `deregister`, `gc` (both with
//!   a dry run); changes come back as a printable [`Plan`]. [`status()`] (STATUS) reads the
//!   node state only; [`StateStore`] and [`NodeState`] are node.json.
//! - [`Ec2`]: the EC2 calls used, implemented by vpc-routes-aws' `AwsEc2` (aws-sdk-ec2) and,
//!   with the `fault-injection` feature (tests, drills), wrapped by `FaultInjectingEc2` for
//!   what moto cannot emulate.
//!
//! # Rules
//! - Tables: `routeTableIds`, else every table of the node's VPC tagged
//!   `kubernetes.io/cluster/<clusterName>` (owned or shared) or `KubernetesCluster=<clusterName>`.
//! - The route targets the primary ENI (CreateRoute by instance fails with several ENIs).
//! - An existing route for the pod CIDR pointing elsewhere is replaced only if it lies inside
//!   `clusterCIDR`, was made by CreateRoute, and is a blackhole, targets a terminated
//!   instance, or targets this node's instance or another of its ENIs
//!   ([`Reason::OtherInterfaceOfThisNode`]); otherwise [`Error::Conflict`]. Nothing outside
//!   `clusterCIDR` is ever changed.
//! - `gc` deletes, inside `clusterCIDR` and made by CreateRoute only, blackholes of any
//!   target kind and routes to terminated instances.
//! - `RouteLimitExceeded` is [`Error::RouteLimitExceeded`], never retried; with `routeQuota`,
//!   a warning at 80 % and [`Error::QuotaReached`] before any EC2 write (the tables have been
//!   read with DescribeRouteTables to count their routes). Routes are counted per address
//!   family ([`Family`]), as AWS applies the quota to IPv4 and IPv6 routes separately.
//! - Both families follow the same rules, each inside the cluster range of its family
//!   (`clusterCIDR`/`clusterCIDRs`).
//! - `RequestLimitExceeded` is retried with jittered exponential backoff inside
//!   `deadlineSeconds` (default 20); the SDK's own retries are off.
//! - After a registration, the node state in `dataDir` lets ADD skip EC2 for
//!   `stateMaxAgeSeconds` (default 600), until CHECK fails, or until a reboot.
//! - [`status()`] fails with [`Error::TableFull`] only when a full table (as cached) lacks
//!   this node's route: then an ADD cannot be served.
//!
//! # Error codes
//! The binary maps [`Error::kind`] to CNI codes (table in [`ErrorKind`], same as the README):
//! 7 config, 11 unreachable (try again later), 50 STATUS: ADD cannot be served, 110 quota,
//! 111 conflict, 112 deadline, 113 other EC2 error, 114 no route tables, 115 incomplete
//! deregister/gc, 104 route missing (CHECK), 5 node state I/O.

mod config;
mod ec2;
mod error;
#[cfg(feature = "fault-injection")]
mod fault;
mod node;
mod plan;
mod registrar;
mod retry;
mod state;
mod status;

pub use config::{
    Config, DEFAULT_DATA_DIR, DEFAULT_DEADLINE_SECONDS, DEFAULT_STATE_MAX_AGE_SECONDS,
};
pub use ec2::{
    ApiError, ApiErrorKind, Ec2, Family, Instance, Operation, Route, RouteOrigin, RouteState,
    RouteTable, RouteTarget, TableQuery,
};
pub use error::{Error, ErrorKind, ROUTE_QUOTA_CODE};
#[cfg(feature = "fault-injection")]
pub use fault::FaultInjectingEc2;
pub use node::NodeIdentity;
pub use plan::{Action, Outcome, Plan, Reason, Step};
pub use registrar::Registrar;
pub use retry::Deadline;
pub use state::{NodeState, StateStore, TableState, STATE_FILE, STATE_VERSION};
pub use status::{status, Status, TableStatus};
