//! A fault-injecting [`Ec2`] wrapper for what moto cannot emulate, with per-call counters.
//!
//! moto 5 has no route quota (`RouteLimitExceeded`), no throttling (`RequestLimitExceeded`),
//! no blackhole state, no propagated routes, no concurrent writers and answers instantly.
//! For IPv6 destinations it also never answers `RouteAlreadyExists` (a second CreateRoute
//! silently repoints the route), so a lost CreateRoute race of an IPv6 route exists only
//! here ([`FaultInjectingEc2::race_create_route`]). Every fault applies to both families.
//! This layer adds each of those on top of any [`Ec2`], and counts every request so tests can
//! show that a warm ADD makes none.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use ipnet::IpNet;

use crate::ec2::{
    ApiError, Ec2, Instance, Operation, RouteOrigin, RouteState, RouteTable, TableQuery,
};

#[derive(Debug, Default)]
struct Faults {
    /// Per operation: error codes to answer, in order, instead of forwarding.
    errors: BTreeMap<Operation, Vec<String>>,
    /// Destinations whose routes are described as blackholes.
    blackholes: HashSet<IpNet>,
    /// Destinations whose routes are described as propagated (from a virtual private gateway).
    propagated: HashSet<IpNet>,
    /// Per CreateRoute call, in order: the ENI another writer routes the same destination to
    /// just before ours arrives.
    races: Vec<String>,
    /// Added before every call.
    delay: Option<Duration>,
    /// Requests seen per operation, injected failures included.
    calls: BTreeMap<Operation, usize>,
}

/// Wraps an [`Ec2`] and injects faults. For tests and fault drills only; never in a plugin.
#[derive(Debug)]
pub struct FaultInjectingEc2<E> {
    inner: E,
    faults: Mutex<Faults>,
}

impl<E: Ec2> FaultInjectingEc2<E> {
    /// No faults yet: every call is forwarded (and counted).
    pub fn new(inner: E) -> Self {
        FaultInjectingEc2 {
            inner,
            faults: Mutex::new(Faults::default()),
        }
    }

    /// The wrapped implementation.
    pub fn inner(&self) -> &E {
        &self.inner
    }

    fn faults(&self) -> MutexGuard<'_, Faults> {
        // A panicking test thread must not hide the counters from the others.
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answer the next `times` calls of `operation` with EC2 error `code`, without forwarding.
    pub fn fail(&self, operation: Operation, code: &str, times: usize) {
        self.faults()
            .errors
            .entry(operation)
            .or_default()
            .extend(std::iter::repeat_n(code.to_string(), times));
    }

    /// Answer the next `times` calls of `operation` with `RequestLimitExceeded`.
    pub fn throttle(&self, operation: Operation, times: usize) {
        self.fail(operation, "RequestLimitExceeded", times);
    }

    /// Describe every route to `destination` as a blackhole, as EC2 does once the target
    /// instance is terminated.
    pub fn blackhole(&self, destination: IpNet) {
        self.faults().blackholes.insert(destination);
    }

    /// Describe every route to `destination` as propagated (origin EnableVgwRoutePropagation),
    /// which moto cannot create: such a route belongs to a gateway, never to this crate.
    pub fn propagated(&self, destination: IpNet) {
        self.faults().propagated.insert(destination);
    }

    /// Let the next CreateRoute lose a race: another writer creates the same destination to
    /// `eni_id` first (forwarded to the wrapped EC2), and our call is answered
    /// `RouteAlreadyExists`, as EC2 answers the second of two concurrent writers. Queued per
    /// call, like [`Self::fail`].
    pub fn race_create_route(&self, eni_id: &str) {
        self.faults().races.push(eni_id.to_string());
    }

    /// Make every call wait `delay` before it is answered (a slow or hung endpoint).
    pub fn delay(&self, delay: Option<Duration>) {
        self.faults().delay = delay;
    }

    /// Requests seen, all operations.
    pub fn calls(&self) -> usize {
        self.faults().calls.values().sum()
    }

    /// Requests seen for one operation.
    pub fn calls_of(&self, operation: Operation) -> usize {
        self.faults()
            .calls
            .get(&operation)
            .copied()
            .unwrap_or_default()
    }

    /// Set all counters back to zero.
    pub fn reset_calls(&self) {
        self.faults().calls.clear();
    }

    /// Count the call, wait the injected delay, and pop an injected error if one is queued.
    async fn enter(&self, operation: Operation) -> Result<(), ApiError> {
        let (delay, injected) = {
            let mut f = self.faults();
            *f.calls.entry(operation).or_default() += 1;
            let injected = f.errors.get_mut(&operation).and_then(|q| {
                if q.is_empty() {
                    None
                } else {
                    Some(q.remove(0))
                }
            });
            (f.delay, injected)
        };
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        match injected {
            Some(code) => Err(ApiError::service(
                operation,
                &code,
                format!("{code} injected by FaultInjectingEc2"),
            )),
            None => Ok(()),
        }
    }
}

impl<E: Ec2> Ec2 for FaultInjectingEc2<E> {
    async fn describe_route_tables(&self, query: &TableQuery) -> Result<Vec<RouteTable>, ApiError> {
        self.enter(Operation::DescribeRouteTables).await?;
        let mut tables = self.inner.describe_route_tables(query).await?;
        let (blackholes, propagated) = {
            let f = self.faults();
            (f.blackholes.clone(), f.propagated.clone())
        };
        for route in tables.iter_mut().flat_map(|t| t.routes.iter_mut()) {
            if route.destination.is_some_and(|d| blackholes.contains(&d)) {
                route.state = RouteState::Blackhole;
            }
            if route.destination.is_some_and(|d| propagated.contains(&d)) {
                route.origin = RouteOrigin::Propagated;
            }
        }
        Ok(tables)
    }

    async fn create_route(
        &self,
        table_id: &str,
        destination: IpNet,
        eni_id: &str,
    ) -> Result<(), ApiError> {
        self.enter(Operation::CreateRoute).await?;
        let race = {
            let mut f = self.faults();
            (!f.races.is_empty()).then(|| f.races.remove(0))
        };
        if let Some(winner) = race {
            self.inner
                .create_route(table_id, destination, &winner)
                .await?;
            return Err(ApiError::service(
                Operation::CreateRoute,
                "RouteAlreadyExists",
                format!(
                    "the route identified by {destination} already exists \
                     (race with {winner} injected by FaultInjectingEc2)"
                ),
            ));
        }
        self.inner.create_route(table_id, destination, eni_id).await
    }

    async fn replace_route(
        &self,
        table_id: &str,
        destination: IpNet,
        eni_id: &str,
    ) -> Result<(), ApiError> {
        self.enter(Operation::ReplaceRoute).await?;
        self.inner
            .replace_route(table_id, destination, eni_id)
            .await
    }

    async fn delete_route(&self, table_id: &str, destination: IpNet) -> Result<(), ApiError> {
        self.enter(Operation::DeleteRoute).await?;
        self.inner.delete_route(table_id, destination).await
    }

    async fn describe_instances(&self, instance_ids: &[String]) -> Result<Vec<Instance>, ApiError> {
        self.enter(Operation::DescribeInstances).await?;
        self.inner.describe_instances(instance_ids).await
    }

    async fn source_dest_check(&self, eni_id: &str) -> Result<bool, ApiError> {
        self.enter(Operation::DescribeNetworkInterfaceAttribute)
            .await?;
        self.inner.source_dest_check(eni_id).await
    }

    async fn disable_source_dest_check(&self, eni_id: &str) -> Result<(), ApiError> {
        self.enter(Operation::ModifyNetworkInterfaceAttribute)
            .await?;
        self.inner.disable_source_dest_check(eni_id).await
    }
}
