//! Register, check, deregister and garbage-collect the node's pod CIDR routes in its tables.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Mutex, MutexGuard};

use ipnet::IpNet;

use crate::config::Config;
use crate::ec2::{
    ApiError, ApiErrorKind, Ec2, Family, Operation, Route, RouteOrigin, RouteState, RouteTable,
    RouteTarget, TableQuery,
};
use crate::error::Error;
use crate::node::NodeIdentity;
use crate::plan::{Action, Outcome, Plan, Reason};
use crate::retry::{self, Deadline};
use crate::state::{FamilyState, NodeState, StateStore, TableState};

/// Registers one node's pod CIDR in the cluster's VPC route tables.
///
/// Every EC2-calling operation runs under a deadline of `deadlineSeconds`, throttled calls
/// included; with [`Registrar::inheriting`] (what vpc-routes-aws' `connect` does), the first
/// operation shares its deadline with the IMDS lookup, so a cold ADD is bounded as a whole. Changing operations hold the node lock
/// in `dataDir`, so concurrent ADDs make one registration between them.
#[derive(Debug)]
pub struct Registrar<E> {
    config: Config,
    node: NodeIdentity,
    ec2: E,
    store: StateStore,
    /// The deadline started before the registrar (IMDS lookup), for the first operation to
    /// inherit.
    inherited: Mutex<Option<Deadline>>,
}

impl<E: Ec2> Registrar<E> {
    /// A registrar for `node`, talking to EC2 through `ec2`.
    pub fn new(config: Config, node: NodeIdentity, ec2: E) -> Self {
        let store = StateStore::new(&config.data_dir);
        Registrar {
            config,
            node,
            ec2,
            store,
            inherited: Mutex::new(None),
        }
    }

    /// Let the first operation inherit `deadline`, started before the registrar was built
    /// (the node's IMDS lookup), instead of starting a fresh one.
    pub fn inheriting(self, deadline: Deadline) -> Self {
        *self.inherited_deadline() = Some(deadline);
        self
    }

    fn inherited_deadline(&self) -> MutexGuard<'_, Option<Deadline>> {
        self.inherited.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The deadline for one operation: the inherited one, once, else a new one.
    fn deadline(&self) -> Deadline {
        self.inherited_deadline()
            .take()
            .unwrap_or_else(|| Deadline::after(self.config.deadline()))
    }

    /// The node this registrar acts for.
    pub fn node(&self) -> &NodeIdentity {
        &self.node
    }

    /// The EC2 implementation (tests read the fault layer's counters through it).
    pub fn ec2(&self) -> &E {
        &self.ec2
    }

    /// Make `podCIDR` route to this node's primary ENI in every table, and turn the ENI's
    /// source/destination check off. With a fresh node state cache this makes no EC2 call and
    /// returns a `cached` plan; otherwise it reads EC2, changes what is needed, and caches.
    ///
    /// Tables are all tried; the first error is returned (quota, conflict), the others logged.
    pub async fn ensure(&self) -> Result<Plan, Error> {
        if self.is_warm()? {
            return Ok(Plan {
                cached: true,
                ..Plan::default()
            });
        }
        let deadline = self.deadline();
        let _lock = self.store.lock(&deadline).await?;
        // Another ADD may have registered while this one waited for the lock.
        if self.is_warm()? {
            return Ok(Plan {
                cached: true,
                ..Plan::default()
            });
        }
        self.register_within(&deadline).await
    }

    /// What `vpc-route register` does: like [`Self::ensure`] but never trusts the node state,
    /// so EC2 is read (and repaired) at node boot even within `stateMaxAgeSeconds`.
    pub async fn register(&self) -> Result<Plan, Error> {
        let deadline = self.deadline();
        let _lock = self.store.lock(&deadline).await?;
        self.register_within(&deadline).await
    }

    fn is_warm(&self) -> Result<bool, Error> {
        Ok(self
            .store
            .load()?
            .is_some_and(|s| s.node == self.node && s.is_fresh_for(&self.config)))
    }

    async fn register_within(&self, deadline: &Deadline) -> Result<Plan, Error> {
        let mut plan = Plan::default();
        let mut state = NodeState::new(&self.config, self.node.clone());
        let eni = self.node.eni_id.as_str();

        // Read first: the write needs more IAM and is the rarer call.
        let check_on = self
            .call_ok(
                deadline,
                Operation::DescribeNetworkInterfaceAttribute,
                || self.ec2.source_dest_check(eni),
            )
            .await?;
        if check_on {
            self.call_ok(deadline, Operation::ModifyNetworkInterfaceAttribute, || {
                self.ec2.disable_source_dest_check(eni)
            })
            .await?;
            plan.push(
                Action::DisableSourceDestCheck {
                    eni_id: eni.to_string(),
                },
                Outcome::Done,
            );
        }
        state.source_dest_check_off = true;

        let tables = self.tables(deadline).await?;
        let mut first_error: Option<Error> = None;
        for table in &tables {
            let mut table_state = TableState::new(&table.id, table.quota_routes(Family::Ipv4));
            for destination in self.config.pod_cidrs() {
                let family = Family::of(&destination);
                let family_state = match self
                    .ensure_in_table(deadline, table, destination, &mut plan)
                    .await
                {
                    Ok(routes) => FamilyState {
                        routes,
                        registered: true,
                        full: false,
                        problem: None,
                    },
                    // Past the deadline, or with EC2 unreachable, every further table would
                    // fail the same way, only later.
                    Err(e) if e.is_retryable() => return Err(e),
                    Err(e) => {
                        let family_state = FamilyState {
                            routes: table.quota_routes(family),
                            registered: false,
                            full: e.kind() == crate::ErrorKind::Quota,
                            problem: Some(e.to_string()),
                        };
                        match first_error {
                            None => first_error = Some(e),
                            Some(_) => log::warn!("{e}"),
                        }
                        family_state
                    }
                };
                table_state.set(family, family_state);
            }
            state.tables.push(table_state);
        }
        state.verified_at = crate::state::now_secs();
        self.store.save(&state)?;
        match first_error {
            Some(e) => Err(e),
            None => Ok(plan),
        }
    }

    /// The route for one pod range in one table; returns the table's quota-counted routes
    /// of that range's family afterwards.
    async fn ensure_in_table(
        &self,
        deadline: &Deadline,
        table: &RouteTable,
        destination: IpNet,
        plan: &mut Plan,
    ) -> Result<usize, Error> {
        let eni = self.node.eni_id.as_str();
        let family = Family::of(&destination);
        let count = table.quota_routes(family);
        if let Some(route) = table.route_to(destination) {
            self.reconcile(deadline, table, route, destination, plan)
                .await?;
            return Ok(count);
        }
        self.check_quota(table, count, destination)?;
        let created = self
            .call(deadline, Operation::CreateRoute, || {
                self.ec2.create_route(&table.id, destination, eni)
            })
            .await?;
        match created {
            Ok(()) => {
                plan.push(
                    Action::CreateRoute {
                        table_id: table.id.clone(),
                        destination,
                        eni_id: eni.to_string(),
                    },
                    Outcome::Done,
                );
                Ok(count + 1)
            }
            Err(e) if e.kind == ApiErrorKind::RouteLimitExceeded => {
                Err(Error::RouteLimitExceeded {
                    table_id: table.id.clone(),
                    destination,
                })
            }
            // Created by someone else between our read and our write: read again, once, and
            // apply the same rules to what is there now.
            Err(e) if e.has_code("RouteAlreadyExists") => {
                let fresh = self
                    .tables_from(deadline, &TableQuery::Ids(vec![table.id.clone()]))
                    .await?;
                let fresh = fresh
                    .into_iter()
                    .find(|t| t.id == table.id)
                    .ok_or(Error::Api { source: e.clone() })?;
                let route = fresh
                    .route_to(destination)
                    .ok_or(Error::Api { source: e })?;
                self.reconcile(deadline, &fresh, route, destination, plan)
                    .await?;
                Ok(fresh.quota_routes(family))
            }
            Err(source) => Err(Error::Api { source }),
        }
    }

    /// `routeQuota`: warn at 80 %, refuse at the quota, before any EC2 write. `count` is the
    /// table's routes of the destination's family: AWS counts each family on its own.
    fn check_quota(
        &self,
        table: &RouteTable,
        count: usize,
        destination: IpNet,
    ) -> Result<(), Error> {
        let Some(quota) = self.config.route_quota else {
            return Ok(());
        };
        let limit = quota as usize;
        if count >= limit {
            return Err(Error::QuotaReached {
                table_id: table.id.clone(),
                routes: count,
                quota,
                destination,
            });
        }
        if (count + 1) * 5 >= limit * 4 {
            log::warn!(
                "route table {} will hold {} of {quota} {} routes (routeQuota, service quota {}, \
                 counted per address family); raise the quota or plan a move to vxlan-overlay",
                table.id,
                count + 1,
                Family::of(&destination),
                crate::ROUTE_QUOTA_CODE
            );
        }
        Ok(())
    }

    /// An existing route for a pod range: keep it, replace it, or refuse (item 4's rules).
    async fn reconcile(
        &self,
        deadline: &Deadline,
        table: &RouteTable,
        route: &Route,
        destination: IpNet,
        plan: &mut Plan,
    ) -> Result<(), Error> {
        let eni = self.node.eni_id.as_str();
        let on_our_eni =
            matches!(&route.target, RouteTarget::Node { eni_id: Some(e), .. } if e == eni);
        if on_our_eni && route.state == RouteState::Active {
            return Ok(());
        }
        let reason = self.replace_reason(deadline, route).await?;
        let Some(reason) = reason else {
            return Err(Error::Conflict {
                table_id: table.id.clone(),
                destination,
                target: Box::new(route.target.clone()),
                origin: route.origin.to_string().into(),
                state: route.state.to_string().into(),
                eni_id: eni.to_string(),
            });
        };
        self.call_ok(deadline, Operation::ReplaceRoute, || {
            self.ec2.replace_route(&table.id, destination, eni)
        })
        .await?;
        log::info!(
            "replaced {destination} -> {} in {} ({reason})",
            route.target,
            table.id
        );
        plan.push(
            Action::ReplaceRoute {
                table_id: table.id.clone(),
                destination,
                from: route.target.clone(),
                eni_id: eni.to_string(),
                reason,
            },
            Outcome::Done,
        );
        Ok(())
    }

    /// Why `route` (for our pod CIDR, not on our primary ENI, or not active) may be replaced,
    /// or `None` when it must not be. Only routes inside clusterCIDR, created by CreateRoute,
    /// that are blackholes or point to a terminated instance, or to this node itself.
    async fn replace_reason(
        &self,
        deadline: &Deadline,
        route: &Route,
    ) -> Result<Option<Reason>, Error> {
        let inside = route
            .destination
            .is_some_and(|d| self.config.in_cluster(&d));
        if !inside || route.origin != RouteOrigin::CreateRoute {
            return Ok(None);
        }
        if route
            .target
            .is_node(&self.node.instance_id, &self.node.eni_id)
        {
            return Ok(Some(match route.state {
                RouteState::Blackhole => Reason::Blackhole,
                _ => Reason::OtherInterfaceOfThisNode,
            }));
        }
        if route.state == RouteState::Blackhole {
            return Ok(Some(Reason::Blackhole));
        }
        let Some(instance_id) = route.target.instance_id() else {
            return Ok(None);
        };
        let gone = self
            .gone_instances(deadline, &[instance_id.to_string()])
            .await?;
        Ok(gone.get(instance_id).map(|state| Reason::InstanceGone {
            instance_id: instance_id.to_string(),
            state: state.clone(),
        }))
    }

    /// Of `ids`, the instances EC2 lists as terminated or shutting down, with their state.
    /// Instances EC2 does not list at all count as alive: an instance of another account, or
    /// one purged long ago, whose route EC2 then shows as a blackhole anyway.
    async fn gone_instances(
        &self,
        deadline: &Deadline,
        ids: &[String],
    ) -> Result<BTreeMap<String, String>, Error> {
        if ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        let instances = self
            .call_ok(deadline, Operation::DescribeInstances, || {
                self.ec2.describe_instances(ids)
            })
            .await?;
        Ok(instances
            .into_iter()
            .filter(|i| i.is_gone())
            .map(|i| (i.id, i.state))
            .collect())
    }

    /// The tables the route belongs in: `routeTableIds`, else the VPC's cluster-tagged tables.
    async fn tables(&self, deadline: &Deadline) -> Result<Vec<RouteTable>, Error> {
        if !self.config.route_table_ids.is_empty() {
            let query = TableQuery::Ids(self.config.route_table_ids.clone());
            return self.tables_from(deadline, &query).await;
        }
        let query = TableQuery::Vpc(self.node.vpc_id.clone());
        let mut tables: Vec<RouteTable> = self
            .tables_from(deadline, &query)
            .await?
            .into_iter()
            .filter(|t| t.is_tagged_for(&self.config.cluster_name))
            .collect();
        if tables.is_empty() {
            return Err(Error::NoRouteTables {
                vpc_id: self.node.vpc_id.clone(),
                cluster_name: self.config.cluster_name.clone(),
            });
        }
        tables.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(tables)
    }

    async fn tables_from(
        &self,
        deadline: &Deadline,
        query: &TableQuery,
    ) -> Result<Vec<RouteTable>, Error> {
        match self
            .call(deadline, Operation::DescribeRouteTables, || {
                self.ec2.describe_route_tables(query)
            })
            .await?
        {
            Ok(tables) => Ok(tables),
            Err(e) if e.has_code("InvalidRouteTableID.NotFound") => Err(Error::UnknownRouteTable {
                requested: self.config.route_table_ids.clone(),
                message: e.message,
            }),
            Err(source) => Err(Error::Api { source }),
        }
    }

    /// Verify, without changing anything, that every table routes `podCIDR` to this node and
    /// that source/dest check is off. Refreshes the node state either way: a failed CHECK
    /// makes the next ADD register again.
    pub async fn check(&self) -> Result<(), Error> {
        let deadline = self.deadline();
        let eni = self.node.eni_id.as_str();
        let check_on = self
            .call_ok(
                &deadline,
                Operation::DescribeNetworkInterfaceAttribute,
                || self.ec2.source_dest_check(eni),
            )
            .await?;
        let tables = self.tables(&deadline).await?;

        let mut state = NodeState::new(&self.config, self.node.clone());
        state.source_dest_check_off = !check_on;
        let mut first_error = check_on.then(|| Error::SourceDestCheck {
            eni_id: eni.to_string(),
        });
        for table in &tables {
            let mut table_state = TableState::new(&table.id, table.quota_routes(Family::Ipv4));
            for destination in self.config.pod_cidrs() {
                let family = Family::of(&destination);
                let route = table.route_to(destination);
                let ok = route.is_some_and(|r| {
                    r.state == RouteState::Active
                        && r.target.is_node(&self.node.instance_id, &self.node.eni_id)
                });
                table_state.set(
                    family,
                    FamilyState {
                        routes: table.quota_routes(family),
                        registered: ok,
                        full: false,
                        problem: None,
                    },
                );
                if !ok && first_error.is_none() {
                    first_error = Some(Error::RouteMissing {
                        table_id: table.id.clone(),
                        destination,
                        found: route.map(|r| format!("{} ({})", r.target, r.state)),
                        expected: eni.to_string(),
                    });
                }
            }
            state.tables.push(table_state);
        }
        let _lock = self.store.lock(&deadline).await?;
        self.store.save(&state)?;
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Delete this node's route (to its ENI or instance) from every table and forget the
    /// node state. Routes for the pod CIDR that point elsewhere are left alone. Idempotent.
    /// With `dry_run`, only plan: tables are read, nothing is deleted and the node state stays.
    pub async fn deregister(&self, dry_run: bool) -> Result<Plan, Error> {
        let deadline = self.deadline();
        // A dry run writes nothing, not even the lock file in `dataDir`.
        let _lock = if dry_run {
            None
        } else {
            Some(self.store.lock(&deadline).await?)
        };
        let tables = self.tables(&deadline).await?;
        let mut actions = Vec::new();
        for table in &tables {
            for destination in self.config.pod_cidrs() {
                let Some(route) = table.route_to(destination) else {
                    continue;
                };
                if route
                    .target
                    .is_node(&self.node.instance_id, &self.node.eni_id)
                {
                    actions.push(Action::DeleteRoute {
                        table_id: table.id.clone(),
                        destination,
                        target: route.target.clone(),
                        reason: Reason::Deregister,
                    });
                }
            }
        }
        if dry_run {
            return Ok(Plan::planned(actions));
        }
        // Forget first: whatever happens next, the cache must not claim a registration.
        self.store.remove()?;
        let plan = self.apply(&deadline, actions).await;
        match plan.failed_count() {
            0 => Ok(plan),
            _ => Err(Error::Incomplete {
                plan: Box::new(plan),
            }),
        }
    }

    /// Delete, in every cluster table, routes inside clusterCIDR created by CreateRoute that
    /// are blackholes, whatever their target (instance, ENI, NAT gateway, peering: a dead
    /// target routes nothing), or that point to a terminated instance. This node's own route
    /// is never collected (ensure repairs it). With `dry_run`, only plan.
    pub async fn gc(&self, dry_run: bool) -> Result<Plan, Error> {
        let deadline = self.deadline();
        let tables = self.tables(&deadline).await?;
        let candidates: Vec<(&RouteTable, &Route, IpNet)> = tables
            .iter()
            .flat_map(|t| t.routes.iter().map(move |r| (t, r)))
            .filter_map(|(t, r)| {
                let d = r.destination?;
                let eligible = self.config.in_cluster(&d)
                    && r.origin == RouteOrigin::CreateRoute
                    && (r.state == RouteState::Blackhole
                        || matches!(r.target, RouteTarget::Node { .. }))
                    && !r.target.is_node(&self.node.instance_id, &self.node.eni_id);
                eligible.then_some((t, r, d))
            })
            .collect();
        let ids: Vec<String> = candidates
            .iter()
            .filter(|(_, r, _)| r.state != RouteState::Blackhole)
            .filter_map(|(_, r, _)| r.target.instance_id().map(str::to_string))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let gone = self.gone_instances(&deadline, &ids).await?;
        let actions: Vec<Action> = candidates
            .into_iter()
            .filter_map(|(t, r, d)| {
                let reason = if r.state == RouteState::Blackhole {
                    Reason::Blackhole
                } else {
                    let id = r.target.instance_id()?;
                    Reason::InstanceGone {
                        instance_id: id.to_string(),
                        state: gone.get(id)?.clone(),
                    }
                };
                Some(Action::DeleteRoute {
                    table_id: t.id.clone(),
                    destination: d,
                    target: r.target.clone(),
                    reason,
                })
            })
            .collect();
        if dry_run {
            return Ok(Plan::planned(actions));
        }
        let plan = self.apply(&deadline, actions).await;
        match plan.failed_count() {
            0 => Ok(plan),
            _ => Err(Error::Incomplete {
                plan: Box::new(plan),
            }),
        }
    }

    /// Carry out delete actions, collecting failures and going on (a failed delete must not
    /// keep the others from happening).
    async fn apply(&self, deadline: &Deadline, actions: Vec<Action>) -> Plan {
        let mut plan = Plan::default();
        for action in actions {
            let outcome = match &action {
                Action::DeleteRoute {
                    table_id,
                    destination,
                    ..
                } => match self
                    .call(deadline, Operation::DeleteRoute, || {
                        self.ec2.delete_route(table_id, *destination)
                    })
                    .await
                {
                    Ok(Ok(())) => Outcome::Done,
                    // Already gone: what we wanted.
                    Ok(Err(e)) if e.has_code("InvalidRoute.NotFound") => Outcome::Done,
                    Ok(Err(e)) => Outcome::Failed(e.to_string()),
                    Err(e) => Outcome::Failed(e.to_string()),
                },
                other => Outcome::Failed(format!("not a delete: {other}")),
            };
            plan.push(action, outcome);
        }
        plan
    }

    async fn call<T, F, Fut>(
        &self,
        deadline: &Deadline,
        operation: Operation,
        f: F,
    ) -> Result<Result<T, ApiError>, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        retry::call(deadline, operation, f).await
    }

    /// [`Self::call`] for calls without special error codes.
    async fn call_ok<T, F, Fut>(
        &self,
        deadline: &Deadline,
        operation: Operation,
        f: F,
    ) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        retry::call(deadline, operation, f)
            .await?
            .map_err(|source| Error::Api { source })
    }
}
