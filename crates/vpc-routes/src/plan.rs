//! Route changes as data: planned, done or failed, printable for `--dry-run` and the logs.

use std::fmt;

use ipnet::IpNet;

use crate::ec2::RouteTarget;

/// Why a route is replaced or deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// No route for the node's pod CIDR yet.
    Missing,
    /// The route's state is blackhole.
    Blackhole,
    /// The target instance is terminated or shutting down.
    InstanceGone {
        /// The instance.
        instance_id: String,
        /// Its state.
        state: String,
    },
    /// The route points to this node, but not to its primary ENI.
    OtherInterfaceOfThisNode,
    /// This node leaves the cluster.
    Deregister,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Missing => write!(f, "missing"),
            Reason::Blackhole => write!(f, "blackhole"),
            Reason::InstanceGone { instance_id, state } => {
                write!(f, "target instance {instance_id} is {state}")
            }
            Reason::OtherInterfaceOfThisNode => write!(f, "points to another ENI of this node"),
            Reason::Deregister => write!(f, "node deregistered"),
        }
    }
}

/// One change to EC2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// CreateRoute `destination` -> `eni_id`.
    CreateRoute {
        /// Table.
        table_id: String,
        /// The node's pod CIDR.
        destination: IpNet,
        /// The node's primary ENI.
        eni_id: String,
    },
    /// ReplaceRoute `destination` from `from` to `eni_id`.
    ReplaceRoute {
        /// Table.
        table_id: String,
        /// The node's pod CIDR.
        destination: IpNet,
        /// The old target.
        from: RouteTarget,
        /// The node's primary ENI.
        eni_id: String,
        /// Why the old route may go.
        reason: Reason,
    },
    /// DeleteRoute `destination`.
    DeleteRoute {
        /// Table.
        table_id: String,
        /// The route's destination.
        destination: IpNet,
        /// Where it pointed.
        target: RouteTarget,
        /// Why it goes.
        reason: Reason,
    },
    /// ModifyNetworkInterfaceAttribute sourceDestCheck=false.
    DisableSourceDestCheck {
        /// The node's primary ENI.
        eni_id: String,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::CreateRoute {
                table_id,
                destination,
                eni_id,
            } => write!(f, "create {destination} -> {eni_id} in {table_id}"),
            Action::ReplaceRoute {
                table_id,
                destination,
                from,
                eni_id,
                reason,
            } => write!(
                f,
                "replace {destination} -> {from} with -> {eni_id} in {table_id} ({reason})"
            ),
            Action::DeleteRoute {
                table_id,
                destination,
                target,
                reason,
            } => write!(
                f,
                "delete {destination} -> {target} in {table_id} ({reason})"
            ),
            Action::DisableSourceDestCheck { eni_id } => {
                write!(f, "disable source/destination check on {eni_id}")
            }
        }
    }
}

/// What became of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not attempted (dry run).
    Planned,
    /// EC2 accepted it (or it was already so).
    Done,
    /// EC2 refused it; the message says why.
    Failed(String),
}

/// An action and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The change.
    pub action: Action,
    /// What became of it.
    pub outcome: Outcome,
}

/// The changes one operation made or, in a dry run, would make. An empty plan means EC2
/// already matched (or, for `ensure`, that the cached state was trusted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Steps in order.
    pub steps: Vec<Step>,
    /// Nothing was changed: `gc --dry-run`, `deregister --dry-run`.
    pub dry_run: bool,
    /// `ensure` answered from the node state cache, without any EC2 call.
    pub cached: bool,
}

impl Plan {
    /// Steps that failed.
    pub fn failed_count(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Failed(_)))
            .count()
    }

    /// The actions, whatever their outcome.
    pub fn actions(&self) -> impl Iterator<Item = &Action> {
        self.steps.iter().map(|s| &s.action)
    }

    /// A dry run's plan: every action [`Outcome::Planned`].
    pub(crate) fn planned(actions: Vec<Action>) -> Self {
        let mut plan = Plan {
            dry_run: true,
            ..Plan::default()
        };
        for action in actions {
            plan.push(action, Outcome::Planned);
        }
        plan
    }

    pub(crate) fn push(&mut self, action: Action, outcome: Outcome) {
        self.steps.push(Step { action, outcome });
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.steps.is_empty() {
            return write!(f, "nothing to do");
        }
        for (i, step) in self.steps.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match &step.outcome {
                Outcome::Planned => write!(f, "would {}", step.action)?,
                Outcome::Done => write!(f, "did {}", step.action)?,
                Outcome::Failed(e) => write!(f, "FAILED to {}: {e}", step.action)?,
            }
        }
        Ok(())
    }
}
