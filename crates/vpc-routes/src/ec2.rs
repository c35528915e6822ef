//! The EC2 calls route registration needs, behind a trait; the aws-sdk-ec2 implementation is
//! `AwsEc2` in the vpc-routes-aws crate.
//!
//! The trait speaks in this crate's small types, not the SDK's, so that the fault layer
//! (`FaultInjectingEc2`, feature `fault-injection`), the registrar's rules and everything
//! that reads the node state never depend on SDK builders, nor compile the SDK.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// One EC2 API operation, for errors, deadlines, fault injection and call counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// `DescribeRouteTables`
    DescribeRouteTables,
    /// `CreateRoute`
    CreateRoute,
    /// `ReplaceRoute`
    ReplaceRoute,
    /// `DeleteRoute`
    DeleteRoute,
    /// `DescribeInstances`
    DescribeInstances,
    /// `DescribeNetworkInterfaceAttribute` (sourceDestCheck)
    DescribeNetworkInterfaceAttribute,
    /// `ModifyNetworkInterfaceAttribute` (sourceDestCheck)
    ModifyNetworkInterfaceAttribute,
}

impl Operation {
    /// Every operation: the IAM actions `ec2:<operation>` the node role needs.
    pub const ALL: [Operation; 7] = [
        Operation::DescribeRouteTables,
        Operation::CreateRoute,
        Operation::ReplaceRoute,
        Operation::DeleteRoute,
        Operation::DescribeInstances,
        Operation::DescribeNetworkInterfaceAttribute,
        Operation::ModifyNetworkInterfaceAttribute,
    ];
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// How an EC2 error should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiErrorKind {
    /// `RequestLimitExceeded` and other throttling codes: retried with jittered backoff.
    Throttled,
    /// `RouteLimitExceeded`: the table is full; never retried.
    RouteLimitExceeded,
    /// No HTTP answer (connect, DNS, TLS, timeout): retried a few times.
    Transport,
    /// Any other error answered by EC2.
    Service,
}

/// An error from one EC2 call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{operation}: {}{message}", code_prefix(.code))]
pub struct ApiError {
    /// The call that failed.
    pub operation: Operation,
    /// EC2's error code (`RouteAlreadyExists`, ...), when it answered one.
    pub code: Option<String>,
    /// EC2's message, or the transport error's chain.
    pub message: String,
    /// How to handle it.
    pub kind: ApiErrorKind,
}

fn code_prefix(code: &Option<String>) -> String {
    code.as_ref().map(|c| format!("{c}: ")).unwrap_or_default()
}

impl ApiError {
    /// An error EC2 answered with `code`; the kind follows from the code.
    pub fn service(operation: Operation, code: &str, message: impl Into<String>) -> Self {
        let kind = match code {
            "RequestLimitExceeded" | "Throttling" | "ThrottlingException" => {
                ApiErrorKind::Throttled
            }
            "RouteLimitExceeded" => ApiErrorKind::RouteLimitExceeded,
            _ => ApiErrorKind::Service,
        };
        ApiError {
            operation,
            code: Some(code.to_string()),
            message: message.into(),
            kind,
        }
    }

    /// A call that got no answer.
    pub fn transport(operation: Operation, message: impl Into<String>) -> Self {
        ApiError {
            operation,
            code: None,
            message: message.into(),
            kind: ApiErrorKind::Transport,
        }
    }

    /// Whether EC2 answered exactly this error code.
    pub fn has_code(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }
}

/// Which route tables to describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableQuery {
    /// Exactly these tables (`routeTableIds`).
    Ids(Vec<String>),
    /// Every table of this VPC (the caller filters by tags).
    Vpc(String),
}

/// Where a route sends traffic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RouteTarget {
    /// An instance or a network interface: a node. EC2 reports both ids when the ENI is
    /// attached, only the ENI when it is not, only the instance in moto.
    Node {
        /// Target instance, when reported.
        instance_id: Option<String>,
        /// Target network interface, when reported.
        eni_id: Option<String>,
    },
    /// A gateway, NAT gateway, peering, transit gateway, `local`, ...: never a node's route.
    Other(String),
    /// EC2 reported no target at all.
    Unknown,
}

impl RouteTarget {
    /// A route target of a node's ENI.
    pub fn eni(eni_id: &str) -> Self {
        RouteTarget::Node {
            instance_id: None,
            eni_id: Some(eni_id.to_string()),
        }
    }

    /// Whether this target is the given node: its ENI, or its instance.
    pub fn is_node(&self, instance_id: &str, eni_id: &str) -> bool {
        match self {
            RouteTarget::Node {
                instance_id: i,
                eni_id: e,
            } => i.as_deref() == Some(instance_id) || e.as_deref() == Some(eni_id),
            _ => false,
        }
    }

    /// The target instance, when EC2 reported one.
    pub fn instance_id(&self) -> Option<&str> {
        match self {
            RouteTarget::Node { instance_id, .. } => instance_id.as_deref(),
            _ => None,
        }
    }
}

impl fmt::Display for RouteTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteTarget::Node {
                instance_id: Some(i),
                eni_id: Some(e),
            } => write!(f, "{i} ({e})"),
            RouteTarget::Node {
                instance_id: Some(i),
                eni_id: None,
            } => write!(f, "{i}"),
            RouteTarget::Node {
                instance_id: None,
                eni_id: Some(e),
            } => write!(f, "{e}"),
            RouteTarget::Node {
                instance_id: None,
                eni_id: None,
            }
            | RouteTarget::Unknown => write!(f, "an unknown target"),
            RouteTarget::Other(o) => write!(f, "{o}"),
        }
    }
}

/// How a route came to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteOrigin {
    /// The table's own `local` route.
    CreateRouteTable,
    /// Someone called CreateRoute (or ReplaceRoute): the only kind this crate may change.
    CreateRoute,
    /// Propagated from a virtual private gateway or advertised: not counted in the quota.
    Propagated,
    /// Anything else EC2 may report.
    Other(String),
}

impl fmt::Display for RouteOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteOrigin::CreateRouteTable => write!(f, "CreateRouteTable"),
            RouteOrigin::CreateRoute => write!(f, "CreateRoute"),
            RouteOrigin::Propagated => write!(f, "propagated"),
            RouteOrigin::Other(o) => write!(f, "{o}"),
        }
    }
}

/// Whether a route's target can take traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteState {
    /// The target is usable.
    Active,
    /// The target is gone (terminated instance, deleted ENI, stopped instance).
    Blackhole,
    /// Anything else EC2 may report.
    Other(String),
}

impl fmt::Display for RouteState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteState::Active => write!(f, "active"),
            RouteState::Blackhole => write!(f, "blackhole"),
            RouteState::Other(o) => write!(f, "{o}"),
        }
    }
}

/// An address family: AWS counts the "Routes per route table" quota separately for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// `DestinationCidrBlock` routes.
    Ipv4,
    /// `DestinationIpv6CidrBlock` routes.
    Ipv6,
}

impl Family {
    /// The family of a destination.
    pub fn of(net: &IpNet) -> Self {
        match net {
            IpNet::V4(_) => Family::Ipv4,
            IpNet::V6(_) => Family::Ipv6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        })
    }
}

/// One route of a route table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// IPv4 destination; `None` for IPv6 and prefix-list routes, which this crate never touches.
    pub destination: Option<IpNet>,
    /// Where it points.
    pub target: RouteTarget,
    /// How it was created.
    pub origin: RouteOrigin,
    /// Whether the target is alive.
    pub state: RouteState,
}

/// A route table with its tags and routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable {
    /// `rtb-...`
    pub id: String,
    /// The table's VPC.
    pub vpc_id: String,
    /// Tags, key to value.
    pub tags: BTreeMap<String, String>,
    /// All routes, IPv6 ones included.
    pub routes: Vec<Route>,
}

impl RouteTable {
    /// The route for exactly `destination` (either family), if any.
    pub fn route_to(&self, destination: IpNet) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.destination == Some(destination))
    }

    /// Routes of `family` counted against the "Routes per route table" quota, which AWS
    /// applies to IPv4 and IPv6 routes separately: propagated routes are not counted.
    /// Prefix-list routes (no destination) count as IPv4, as this crate always counted them.
    pub fn quota_routes(&self, family: Family) -> usize {
        self.routes
            .iter()
            .filter(|r| r.origin != RouteOrigin::Propagated)
            .filter(|r| r.destination.as_ref().map_or(Family::Ipv4, Family::of) == family)
            .count()
    }

    /// Whether the table is tagged for the cluster: `kubernetes.io/cluster/<name>` (owned or
    /// shared) or `KubernetesCluster=<name>`.
    pub fn is_tagged_for(&self, cluster_name: &str) -> bool {
        let owned = self
            .tags
            .get(&format!("kubernetes.io/cluster/{cluster_name}"))
            .is_some_and(|v| v == "owned" || v == "shared");
        let legacy = self
            .tags
            .get("KubernetesCluster")
            .is_some_and(|v| v == cluster_name);
        owned || legacy
    }
}

/// An instance's id and state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// `i-...`
    pub id: String,
    /// `pending`, `running`, `stopping`, `stopped`, `shutting-down`, `terminated`.
    pub state: String,
}

impl Instance {
    /// Terminated or being terminated: its routes can only be blackholes from now on.
    pub fn is_gone(&self) -> bool {
        self.state == "terminated" || self.state == "shutting-down"
    }
}

/// The EC2 API as route registration uses it. Each method is exactly one EC2 request
/// (DescribeRouteTables and DescribeInstances follow pagination): the fault layer and call
/// counters rely on that.
pub trait Ec2: Send + Sync {
    /// DescribeRouteTables, all pages.
    fn describe_route_tables(
        &self,
        query: &TableQuery,
    ) -> impl Future<Output = Result<Vec<RouteTable>, ApiError>> + Send;

    /// CreateRoute `destination` -> `eni_id` (`DestinationCidrBlock` for IPv4,
    /// `DestinationIpv6CidrBlock` for IPv6, in canonical text). By ENI, not instance: CreateRoute by instance id
    /// fails on instances with several ENIs.
    fn create_route(
        &self,
        table_id: &str,
        destination: IpNet,
        eni_id: &str,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// ReplaceRoute `destination` -> `eni_id`.
    fn replace_route(
        &self,
        table_id: &str,
        destination: IpNet,
        eni_id: &str,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// DeleteRoute `destination`.
    fn delete_route(
        &self,
        table_id: &str,
        destination: IpNet,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// DescribeInstances filtered by `instance-id`: instances EC2 no longer knows are simply
    /// absent (no `InvalidInstanceID.NotFound` for the whole batch).
    fn describe_instances(
        &self,
        instance_ids: &[String],
    ) -> impl Future<Output = Result<Vec<Instance>, ApiError>> + Send;

    /// DescribeNetworkInterfaceAttribute sourceDestCheck: whether the check is on.
    fn source_dest_check(
        &self,
        eni_id: &str,
    ) -> impl Future<Output = Result<bool, ApiError>> + Send;

    /// ModifyNetworkInterfaceAttribute sourceDestCheck=false, so the ENI may carry pod traffic.
    fn disable_source_dest_check(
        &self,
        eni_id: &str,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;
}

impl<T: Ec2> Ec2 for Arc<T> {
    fn describe_route_tables(
        &self,
        query: &TableQuery,
    ) -> impl Future<Output = Result<Vec<RouteTable>, ApiError>> + Send {
        (**self).describe_route_tables(query)
    }
    fn create_route(
        &self,
        table_id: &str,
        destination: IpNet,
        eni_id: &str,
    ) -> impl Future<Output = Result<(), ApiError>> + Send {
        (**self).create_route(table_id, destination, eni_id)
    }
    fn replace_route(
        &self,
        table_id: &str,
        destination: IpNet,
        eni_id: &str,
    ) -> impl Future<Output = Result<(), ApiError>> + Send {
        (**self).replace_route(table_id, destination, eni_id)
    }
    fn delete_route(
        &self,
        table_id: &str,
        destination: IpNet,
    ) -> impl Future<Output = Result<(), ApiError>> + Send {
        (**self).delete_route(table_id, destination)
    }
    fn describe_instances(
        &self,
        instance_ids: &[String],
    ) -> impl Future<Output = Result<Vec<Instance>, ApiError>> + Send {
        (**self).describe_instances(instance_ids)
    }
    fn source_dest_check(
        &self,
        eni_id: &str,
    ) -> impl Future<Output = Result<bool, ApiError>> + Send {
        (**self).source_dest_check(eni_id)
    }
    fn disable_source_dest_check(
        &self,
        eni_id: &str,
    ) -> impl Future<Output = Result<(), ApiError>> + Send {
        (**self).disable_source_dest_check(eni_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_and_quota_codes_get_their_kind() {
        let op = Operation::CreateRoute;
        assert_eq!(
            ApiError::service(op, "RequestLimitExceeded", "slow down").kind,
            ApiErrorKind::Throttled
        );
        assert_eq!(
            ApiError::service(op, "RouteLimitExceeded", "full").kind,
            ApiErrorKind::RouteLimitExceeded
        );
        let e = ApiError::service(op, "RouteAlreadyExists", "dup");
        assert_eq!(e.kind, ApiErrorKind::Service);
        assert!(e.has_code("RouteAlreadyExists"));
        assert_eq!(e.to_string(), "CreateRoute: RouteAlreadyExists: dup");
    }

    #[test]
    fn tags_select_cluster_tables() {
        let mut t = RouteTable {
            id: "rtb-1".into(),
            vpc_id: "vpc-1".into(),
            tags: BTreeMap::new(),
            routes: vec![],
        };
        assert!(!t.is_tagged_for("c1"));
        t.tags
            .insert("kubernetes.io/cluster/c1".into(), "shared".into());
        assert!(t.is_tagged_for("c1"));
        assert!(!t.is_tagged_for("c2"));
        t.tags.clear();
        t.tags.insert("KubernetesCluster".into(), "c2".into());
        assert!(t.is_tagged_for("c2"));
        assert!(!t.is_tagged_for("c1"));
    }
}
