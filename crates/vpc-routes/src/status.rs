//! STATUS from the node state cache alone: runtimes poll it, so it never calls EC2 or IMDS.

use std::fmt;
use std::time::Duration;

use ipnet::IpNet;

use crate::config::Config;
use crate::ec2::Family;
use crate::error::Error;
use crate::node::NodeIdentity;
use crate::state::{NodeState, StateStore};

/// One table and one of the node's pod ranges as last seen by this node (a dual-stack node
/// has two per table: AWS counts the quota per address family).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableStatus {
    /// `rtb-...`
    pub id: String,
    /// The node's pod range of this family.
    pub destination: IpNet,
    /// Routes of the range's family counted against the quota when last read.
    pub routes: usize,
    /// The configured `routeQuota`, if any.
    pub quota: Option<u32>,
    /// Whether this node's route was in place.
    pub registered: bool,
    /// At `routeQuota`, or EC2 answered `RouteLimitExceeded`.
    pub full: bool,
    /// Why the route is not in place, if it is not.
    pub problem: Option<String>,
}

/// The node's registration as cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The node, if it ever registered.
    pub node: Option<NodeIdentity>,
    /// Registered in every table, source/dest check off.
    pub registered: bool,
    /// Time since EC2 last confirmed the state.
    pub age: Option<Duration>,
    /// Per table and pod range (IPv4 first).
    pub tables: Vec<TableStatus>,
}

/// Read the node state cache and report it. Fails with [`Error::TableFull`] (STATUS code 50:
/// ADD cannot be served) when a cached table is full, per the last registration's
/// `RouteLimitExceeded` or per `routeQuota`, and this node's route is not in it: the next ADD
/// would have to call CreateRoute and fail on the quota. A full table that already holds the
/// node's route is fine: ADD needs no EC2 call for it.
///
/// No state at all is not an error: a fresh node has not registered yet, and a failing
/// STATUS would keep the runtime from ever sending the ADD that registers it.
pub fn status(config: &Config) -> Result<Status, Error> {
    let state = StateStore::new(&config.data_dir).load()?;
    let status = Status::from_state(config, state.as_ref());
    if let Some(full) = status.tables.iter().find(|t| t.full && !t.registered) {
        return Err(Error::TableFull {
            table_id: full.id.clone(),
            routes: full.routes,
            quota: full.quota.filter(|q| full.routes >= *q as usize),
            destination: full.destination,
        });
    }
    Ok(status)
}

impl Status {
    fn from_state(config: &Config, state: Option<&NodeState>) -> Self {
        let Some(state) =
            state.filter(|s| s.pod_cidr == config.pod_cidr && s.pod_cidr_v6 == config.pod_cidr_v6)
        else {
            return Status {
                node: None,
                registered: false,
                age: None,
                tables: Vec::new(),
            };
        };
        let quota = config.route_quota;
        let mut tables = Vec::new();
        for t in &state.tables {
            for destination in config.pod_cidrs() {
                let Some(f) = t.family(Family::of(&destination)) else {
                    continue;
                };
                tables.push(TableStatus {
                    id: t.id.clone(),
                    destination,
                    routes: f.routes,
                    quota,
                    registered: f.registered,
                    full: f.full || quota.is_some_and(|q| f.routes >= q as usize),
                    problem: f.problem,
                });
            }
        }
        Status {
            node: Some(state.node.clone()),
            registered: state.is_complete(),
            age: Some(state.age()),
            tables,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(node) = &self.node else {
            return write!(f, "not registered yet");
        };
        write!(
            f,
            "{} ({}, {}): {}",
            node.instance_id,
            node.eni_id,
            node.vpc_id,
            if self.registered {
                "registered"
            } else {
                "NOT registered"
            }
        )?;
        if let Some(age) = self.age {
            write!(f, ", checked {} s ago", age.as_secs())?;
        }
        for t in &self.tables {
            let quota = t.quota.map(|q| format!("/{q}")).unwrap_or_default();
            write!(
                f,
                "\n  {} {}: {}{quota} {} routes, {}{}",
                t.id,
                t.destination,
                t.routes,
                Family::of(&t.destination),
                if t.registered {
                    "route in place"
                } else {
                    "route missing"
                },
                if t.full { ", FULL" } else { "" }
            )?;
            if let Some(p) = &t.problem {
                write!(f, " ({p})")?;
            }
        }
        Ok(())
    }
}
