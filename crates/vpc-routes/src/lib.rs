//! Make a node's pod CIDR routable in its AWS VPC: one route per cluster route table.
//!
//! This first part holds the building blocks: [`Config`], the [`Ec2`] trait with its
//! aws-sdk-ec2 implementation [`AwsEc2`] and the [`FaultInjectingEc2`] test layer, the
//! [`Error`] type with its [`ErrorKind`]s, [`Plan`]s of route changes, and the deadline and
//! backoff used for every EC2 call.
//!
//! # Error codes
//! The binary maps [`Error::kind`] to CNI codes; the proposal is in [`ErrorKind`]:
//! 7 config, 11 unreachable (try again later), 100 conflict, 101 quota, 102 deadline,
//! 103 no route tables, 104 route missing (CHECK), 105 other EC2 error, 106 node state,
//! 107 incomplete deregister/gc.

mod config;
mod ec2;
mod error;
mod fault;
mod plan;
#[allow(dead_code)] // used by the registrar, next
mod retry;

pub use config::{
    Config, DEFAULT_DATA_DIR, DEFAULT_DEADLINE_SECONDS, DEFAULT_STATE_MAX_AGE_SECONDS,
};
pub use ec2::{
    ApiError, ApiErrorKind, AwsEc2, Ec2, Instance, Operation, Route, RouteOrigin, RouteState,
    RouteTable, RouteTarget, TableQuery,
};
pub use error::{Error, ErrorKind, ROUTE_QUOTA_CODE};
pub use fault::FaultInjectingEc2;
pub use plan::{Action, Outcome, Plan, Reason, Step};
