//! Route registration against a real moto EC2 server through aws-sdk-ec2, with an IMDSv2 fake,
//! and the fault layer for what moto cannot emulate (quota, throttling, blackholes, slowness).
//!
//! The IPv6 tests at the end run the node's IPv6 pod range through the same rules. What
//! moto 5.2 models of IPv6 routes, and where it stops, is pinned by
//! `moto_ipv6_routes_what_moto_models_and_where_it_stops`; past that point the fault layer
//! stands in (blackholes, RouteLimitExceeded, and the `RouteAlreadyExists` of a lost race,
//! which moto never answers for an IPv6 destination).
//!
//! Each test starts its own moto server and IMDS fake on free ports (tests/setup-moto.sh
//! installs moto once), and reads the outcome back from moto through the SDK.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Cluster, ImdsFake, Moto, Node};
use serde_json::json;
use vpc_routes::{
    Action, Config, Error, ErrorKind, FaultInjectingEc2, Operation, Outcome, Reason, Registrar,
};
use vpc_routes_aws::AwsEc2;

/// Records warnings from the crate, so tests can assert on what the operator would see.
struct WarningLog;

static WARNINGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

impl log::Log for WarningLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            let mut w = WARNINGS.lock().unwrap_or_else(|p| p.into_inner());
            w.push(r.args().to_string());
        }
    }
    fn flush(&self) {}
}

fn warnings() -> Vec<String> {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let _ = log::set_logger(&WarningLog);
        log::set_max_level(log::LevelFilter::Warn);
    });
    WARNINGS.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

const POD_CIDR: &str = "10.244.3.0/24";
const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The node's IPv6 pod range and the cluster's (ULA, fd00::/8).
const POD_CIDR_V6: &str = "fd00:10:244:3::/64";
const CLUSTER_CIDR_V6: &str = "fd00:10:244::/56";

/// Config keys of a dual-stack node; `podCIDR`/`clusterCIDR` (the IPv4 ones, from
/// [`World::config`]) name ranges of the lists, as a template rendering both would.
fn dual_stack(extra: serde_json::Value) -> serde_json::Value {
    let mut c = json!({
        "podCIDRs": [POD_CIDR, POD_CIDR_V6], "clusterCIDRs": [CLUSTER_CIDR, CLUSTER_CIDR_V6]
    });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(extra.clone());
    }
    c
}

/// Config keys of an IPv6-only node.
fn ipv6_only(extra: serde_json::Value) -> serde_json::Value {
    let mut c = json!({ "podCIDR": POD_CIDR_V6, "clusterCIDR": CLUSTER_CIDR_V6 });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(extra.clone());
    }
    c
}

type Ec2 = Arc<FaultInjectingEc2<AwsEc2>>;

/// One test's world: moto, a cluster VPC, this node, another node, IMDS for this node.
struct World {
    sdk: aws_sdk_ec2::Client,
    cluster: Cluster,
    node: Node,
    other: Node,
    imds: ImdsFake,
    data: tempfile::TempDir,
    moto: Moto,
}

async fn world(name: &str) -> World {
    let moto = Moto::start();
    let sdk = moto.client().await;
    let cluster = common::cluster(&sdk, name).await;
    let node = cluster.run_instance(&sdk).await;
    let other = cluster.run_instance(&sdk).await;
    let imds = ImdsFake::start(cluster.imds_values(&node));
    World {
        sdk,
        cluster,
        node,
        other,
        imds,
        data: tempfile::tempdir().expect("tempdir"),
        moto,
    }
}

impl World {
    /// The plugin config; `extra` keys override the defaults.
    fn config(&self, extra: serde_json::Value) -> Config {
        let mut c = json!({
            "cniVersion": "1.0.0", "type": "vpc-route", "name": "k8s-pod-network",
            "clusterName": self.cluster.name, "podCIDR": POD_CIDR, "clusterCIDR": CLUSTER_CIDR,
            "ec2Endpoint": self.moto.endpoint, "imdsEndpoint": self.imds.endpoint(),
            "dataDir": self.data.path(), "region": "us-east-1"
        });
        if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(extra.clone());
        }
        Config::from_value(c).expect("valid config")
    }

    /// A registrar as a fresh plugin process would build it: identity from IMDS, the real SDK
    /// client on moto, wrapped in the fault layer (which also counts requests).
    async fn registrar(&self, config: Config) -> Registrar<Ec2> {
        let node = vpc_routes_aws::node_identity(&config)
            .await
            .expect("identity");
        let ec2 = Arc::new(FaultInjectingEc2::new(self.moto.aws_ec2().await));
        Registrar::new(config, node, ec2)
    }

    async fn route(
        &self,
        table: &str,
        destination: &str,
    ) -> Option<(Option<String>, Option<String>)> {
        common::route_to(&self.sdk, table, destination).await
    }

    fn on_node_eni(&self) -> Option<(Option<String>, Option<String>)> {
        Some((None, Some(self.node.eni_id.clone())))
    }
}

#[tokio::test]
async fn identity_comes_from_imds_and_overrides_skip_it() {
    let w = world("identity").await;
    let id = vpc_routes_aws::node_identity(&w.config(json!({})))
        .await
        .expect("identity");
    assert_eq!(id.instance_id, w.node.instance_id);
    assert_eq!(id.eni_id, w.node.eni_id);
    assert_eq!(id.vpc_id, w.cluster.vpc_id);
    assert_eq!(id.subnet_id.as_deref(), Some(w.cluster.subnet_id.as_str()));
    assert_eq!(id.region, "us-east-1");
    // token PUT + instance-id, mac, interface-id, vpc-id, subnet-id (region is in config)
    assert_eq!(w.imds.requests(), 6);

    let all = w.config(json!({
        "instanceId": "i-override", "eniId": "eni-override", "vpcId": "vpc-override"
    }));
    let id = vpc_routes_aws::node_identity(&all).await.expect("identity");
    assert_eq!(
        (
            id.instance_id.as_str(),
            id.eni_id.as_str(),
            id.vpc_id.as_str()
        ),
        ("i-override", "eni-override", "vpc-override")
    );
    assert_eq!(
        w.imds.requests(),
        6,
        "every value overridden: no IMDS request"
    );
}

#[tokio::test]
async fn registers_in_both_tagged_tables_and_warm_add_makes_no_ec2_call() {
    let w = world("register").await;
    assert_eq!(
        common::source_dest_check(&w.sdk, &w.node.eni_id).await,
        Some(true)
    );
    let r = w.registrar(w.config(json!({}))).await;
    let plan = r.ensure().await.expect("ensure");
    assert!(!plan.cached);
    let created: Vec<&Action> = plan
        .actions()
        .filter(|a| matches!(a, Action::CreateRoute { .. }))
        .collect();
    assert_eq!(created.len(), 2, "{plan}");
    assert!(plan
        .actions()
        .any(|a| matches!(a, Action::DisableSourceDestCheck { .. })));

    for table in w.cluster.tagged_tables() {
        assert_eq!(w.route(table, POD_CIDR).await, w.on_node_eni(), "{table}");
    }
    assert_eq!(w.route(&w.cluster.foreign_table, POD_CIDR).await, None);
    assert_eq!(
        common::source_dest_check(&w.sdk, &w.node.eni_id).await,
        Some(false)
    );

    // A second ADD, in a new process: the node state answers, EC2 and IMDS are not asked.
    let imds_before = w.imds.requests();
    let config = w.config(json!({}));
    let warm = Registrar::new(
        config.clone(),
        r.node().clone(),
        Arc::new(FaultInjectingEc2::new(w.moto.aws_ec2().await)),
    );
    let plan = warm.ensure().await.expect("warm ensure");
    assert!(plan.cached);
    assert_eq!(warm.ec2().calls(), 0, "warm ADD made EC2 calls");
    assert_eq!(w.imds.requests(), imds_before);

    // STATUS from the cache only.
    let status = vpc_routes::status(&config).expect("status");
    assert!(status.registered, "{status}");
    assert_eq!(status.tables.len(), 2);

    // Past stateMaxAgeSeconds the state is revalidated: EC2 is read, nothing is written.
    let aged = w
        .registrar(w.config(json!({ "stateMaxAgeSeconds": 0 })))
        .await;
    let plan = aged.ensure().await.expect("revalidating ensure");
    assert!(!plan.cached);
    assert!(plan.steps.is_empty(), "{plan}");
    assert_eq!(aged.ec2().calls_of(Operation::DescribeRouteTables), 1);
    assert_eq!(aged.ec2().calls_of(Operation::CreateRoute), 0);
    assert_eq!(aged.ec2().calls_of(Operation::ReplaceRoute), 0);
    assert_eq!(
        aged.ec2()
            .calls_of(Operation::ModifyNetworkInterfaceAttribute),
        0,
        "source/dest check is read first and only written when on"
    );

    r.check().await.expect("check");
}

#[tokio::test]
async fn explicit_route_table_ids_win_over_tags() {
    let w = world("explicit").await;
    let r = w
        .registrar(w.config(json!({ "routeTableIds": [w.cluster.foreign_table] })))
        .await;
    r.ensure().await.expect("ensure");
    assert_eq!(
        w.route(&w.cluster.foreign_table, POD_CIDR).await,
        w.on_node_eni()
    );
    for table in w.cluster.tagged_tables() {
        assert_eq!(w.route(table, POD_CIDR).await, None, "{table}");
    }

    let missing = w
        .registrar(w.config(json!({ "routeTableIds": ["rtb-00000000000000000"] })))
        .await;
    let e = missing.ensure().await.expect_err("unknown table");
    assert_eq!(e.kind(), ErrorKind::NoRouteTables, "{e}");
}

#[tokio::test]
async fn live_route_of_another_instance_is_a_conflict_naming_route_and_target() {
    let w = world("conflict").await;
    common::create_instance_route(
        &w.sdk,
        &w.cluster.owned_table,
        POD_CIDR,
        &w.other.instance_id,
    )
    .await;
    let r = w.registrar(w.config(json!({}))).await;
    let e = r.ensure().await.expect_err("conflict");
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    let msg = e.to_string();
    assert!(msg.contains(&w.cluster.owned_table), "{msg}");
    assert!(msg.contains(POD_CIDR), "{msg}");
    assert!(msg.contains(&w.other.instance_id), "{msg}");
    assert!(!e.is_retryable());

    // The other node keeps its route; the other table got ours regardless.
    assert_eq!(
        w.route(&w.cluster.owned_table, POD_CIDR).await,
        Some((Some(w.other.instance_id.clone()), None))
    );
    assert_eq!(
        w.route(&w.cluster.legacy_table, POD_CIDR).await,
        w.on_node_eni()
    );
    assert_eq!(r.ec2().calls_of(Operation::ReplaceRoute), 0);
    // Not cached as registered: the next ADD asks EC2 again.
    assert!(
        !vpc_routes::status(&w.config(json!({})))
            .expect("status")
            .registered
    );
}

#[tokio::test]
async fn route_to_terminated_instance_is_replaced() {
    let w = world("stale").await;
    for table in w.cluster.tagged_tables() {
        common::create_instance_route(&w.sdk, table, POD_CIDR, &w.other.instance_id).await;
    }
    common::terminate(&w.sdk, &w.other.instance_id).await;
    assert_eq!(
        common::instance_state(&w.sdk, &w.other.instance_id).await,
        "terminated"
    );
    let r = w.registrar(w.config(json!({}))).await;
    let plan = r.ensure().await.expect("ensure");
    let replaced: Vec<&Action> = plan
        .actions()
        .filter(|a| {
            matches!(a, Action::ReplaceRoute { reason: Reason::InstanceGone { instance_id, .. }, .. }
                if *instance_id == w.other.instance_id)
        })
        .collect();
    assert_eq!(replaced.len(), 2, "{plan}");
    for table in w.cluster.tagged_tables() {
        assert_eq!(w.route(table, POD_CIDR).await, w.on_node_eni(), "{table}");
    }
}

#[tokio::test]
async fn blackhole_route_is_replaced() {
    let w = world("blackhole").await;
    common::create_instance_route(
        &w.sdk,
        &w.cluster.owned_table,
        POD_CIDR,
        &w.other.instance_id,
    )
    .await;
    let r = w.registrar(w.config(json!({}))).await;
    // moto never marks routes blackhole; EC2 does once the target is gone.
    r.ec2().blackhole(POD_CIDR.parse().expect("cidr"));
    let plan = r.ensure().await.expect("ensure");
    assert!(
        plan.actions().any(|a| matches!(
            a,
            Action::ReplaceRoute {
                reason: Reason::Blackhole,
                ..
            }
        )),
        "{plan}"
    );
    assert_eq!(
        r.ec2().calls_of(Operation::DescribeInstances),
        0,
        "a blackhole needs no instance lookup"
    );
    assert_eq!(
        w.route(&w.cluster.owned_table, POD_CIDR).await,
        w.on_node_eni()
    );
}

#[tokio::test]
async fn gc_and_its_dry_run_never_touch_routes_outside_cluster_cidr() {
    let w = world("gc").await;
    let sdk = &w.sdk;
    let owned = w.cluster.owned_table.as_str();
    let legacy = w.cluster.legacy_table.as_str();
    let dead = w.cluster.run_instance(sdk).await;
    let holed = w.cluster.run_instance(sdk).await;
    // Inside clusterCIDR: to a terminated instance (both tables), to a blackhole, to a live
    // instance. Outside: to the terminated instance and to the blackholed one.
    common::create_instance_route(sdk, owned, "10.244.5.0/24", &dead.instance_id).await;
    common::create_instance_route(sdk, legacy, "10.244.5.0/24", &dead.instance_id).await;
    common::create_instance_route(sdk, owned, "10.244.6.0/24", &holed.instance_id).await;
    common::create_instance_route(sdk, owned, "10.244.7.0/24", &w.other.instance_id).await;
    common::create_instance_route(sdk, owned, "10.50.0.0/24", &dead.instance_id).await;
    common::create_instance_route(sdk, owned, "10.51.0.0/24", &holed.instance_id).await;
    common::terminate(sdk, &dead.instance_id).await;

    let r = w.registrar(w.config(json!({}))).await;
    r.ensure().await.expect("ensure");
    for d in ["10.244.6.0/24", "10.51.0.0/24", POD_CIDR] {
        r.ec2().blackhole(d.parse().expect("cidr"));
    }
    let before_owned = common::routes(sdk, owned).await;
    let before_legacy = common::routes(sdk, legacy).await;

    let plan = r.gc(true).await.expect("gc dry run");
    assert!(plan.dry_run);
    let mut planned: Vec<String> = plan
        .actions()
        .map(|a| match a {
            Action::DeleteRoute {
                table_id,
                destination,
                ..
            } => format!("{table_id} {destination}"),
            other => panic!("unexpected {other}"),
        })
        .collect();
    planned.sort();
    let mut expected = vec![
        format!("{owned} 10.244.5.0/24"),
        format!("{legacy} 10.244.5.0/24"),
        format!("{owned} 10.244.6.0/24"),
    ];
    expected.sort();
    assert_eq!(planned, expected, "{plan}");
    assert!(plan.steps.iter().all(|s| s.outcome == Outcome::Planned));
    assert!(plan.to_string().contains("would delete"), "{plan}");
    assert_eq!(r.ec2().calls_of(Operation::DeleteRoute), 0);
    assert_eq!(common::routes(sdk, owned).await, before_owned);
    assert_eq!(common::routes(sdk, legacy).await, before_legacy);

    let plan = r.gc(false).await.expect("gc");
    assert_eq!(plan.steps.len(), 3, "{plan}");
    assert!(
        plan.steps.iter().all(|s| s.outcome == Outcome::Done),
        "{plan}"
    );
    assert_eq!(w.route(owned, "10.244.5.0/24").await, None);
    assert_eq!(w.route(legacy, "10.244.5.0/24").await, None);
    assert_eq!(w.route(owned, "10.244.6.0/24").await, None);
    // Kept: live target, outside clusterCIDR (dead or blackhole), and this node's own route.
    assert_eq!(
        w.route(owned, "10.244.7.0/24").await,
        Some((Some(w.other.instance_id.clone()), None))
    );
    assert_eq!(
        w.route(owned, "10.50.0.0/24").await,
        Some((Some(dead.instance_id.clone()), None))
    );
    assert_eq!(
        w.route(owned, "10.51.0.0/24").await,
        Some((Some(holed.instance_id.clone()), None))
    );
    assert_eq!(w.route(owned, POD_CIDR).await, w.on_node_eni());

    let again = r.gc(false).await.expect("gc again");
    assert!(again.steps.is_empty(), "{again}");
}

#[tokio::test]
async fn gc_deletes_blackholes_of_any_target_inside_cluster_cidr_made_by_create_route() {
    let w = world("gc-targets").await;
    let sdk = &w.sdk;
    let owned = w.cluster.owned_table.as_str();
    let igw = sdk
        .create_internet_gateway()
        .send()
        .await
        .expect("create internet gateway")
        .internet_gateway()
        .and_then(|g| g.internet_gateway_id())
        .expect("igw id")
        .to_string();
    sdk.attach_internet_gateway()
        .internet_gateway_id(&igw)
        .vpc_id(&w.cluster.vpc_id)
        .send()
        .await
        .expect("attach internet gateway");
    let dead_gateway = "10.244.12.0/24"; // inside, blackhole: collected
    let live_gateway = "10.244.13.0/24"; // inside, active: a gateway is never "gone"
    let propagated = "10.244.14.0/24"; // inside, blackhole, but not made by CreateRoute
    let outside = "10.52.0.0/24"; // blackhole outside clusterCIDR
    for d in [dead_gateway, live_gateway, propagated, outside] {
        sdk.create_route()
            .route_table_id(owned)
            .destination_cidr_block(d)
            .gateway_id(&igw)
            .send()
            .await
            .expect("create gateway route");
    }
    let r = w.registrar(w.config(json!({}))).await;
    // moto has neither blackholes nor propagated routes: the fault layer describes them.
    for d in [dead_gateway, propagated, outside] {
        r.ec2().blackhole(d.parse().expect("cidr"));
    }
    r.ec2().propagated(propagated.parse().expect("cidr"));

    let plan = r.gc(true).await.expect("gc dry run");
    let planned: Vec<String> = plan.actions().map(|a| a.to_string()).collect();
    assert_eq!(
        planned,
        [format!(
            "delete {dead_gateway} -> {igw} in {owned} (blackhole)"
        )],
        "{plan}"
    );
    assert_eq!(r.ec2().calls_of(Operation::DeleteRoute), 0);
    assert_eq!(
        r.ec2().calls_of(Operation::DescribeInstances),
        0,
        "gateways and blackholes need no instance lookup"
    );
    assert!(w.route(owned, dead_gateway).await.is_some());

    let plan = r.gc(false).await.expect("gc");
    assert_eq!(plan.steps.len(), 1, "{plan}");
    assert!(
        plan.steps.iter().all(|s| s.outcome == Outcome::Done),
        "{plan}"
    );
    assert_eq!(w.route(owned, dead_gateway).await, None);
    for kept in [live_gateway, propagated, outside] {
        assert!(w.route(owned, kept).await.is_some(), "{kept} must stay");
    }
}

#[tokio::test]
async fn deregister_removes_only_this_nodes_routes() {
    let w = world("deregister").await;
    // The foreign table carries a route for the same CIDR: it is not ours to remove.
    common::create_instance_route(
        &w.sdk,
        &w.cluster.foreign_table,
        POD_CIDR,
        &w.node.instance_id,
    )
    .await;
    let config = w.config(json!({}));
    let r = w.registrar(config.clone()).await;
    r.ensure().await.expect("ensure");

    // The dry run names both routes and changes nothing: routes, node state, lock file.
    std::fs::remove_file(w.data.path().join("node.lock")).expect("lock file of the ensure");
    let plan = r.deregister(true).await.expect("deregister --dry-run");
    assert!(plan.dry_run);
    assert_eq!(plan.steps.len(), 2, "{plan}");
    assert!(plan.steps.iter().all(|s| s.outcome == Outcome::Planned));
    for table in w.cluster.tagged_tables() {
        let line = format!(
            "would delete {POD_CIDR} -> {} in {table} (node deregistered)",
            w.node.eni_id
        );
        assert!(plan.to_string().contains(&line), "{line} not in:\n{plan}");
        assert_eq!(w.route(table, POD_CIDR).await, w.on_node_eni(), "{table}");
    }
    assert_eq!(r.ec2().calls_of(Operation::DeleteRoute), 0);
    assert!(vpc_routes::status(&config).expect("status").registered);
    assert!(!w.data.path().join("node.lock").exists());

    let plan = r.deregister(false).await.expect("deregister");
    assert!(!plan.dry_run);
    assert_eq!(plan.steps.len(), 2, "{plan}");
    for table in w.cluster.tagged_tables() {
        assert_eq!(w.route(table, POD_CIDR).await, None, "{table}");
    }
    assert_eq!(
        w.route(&w.cluster.foreign_table, POD_CIDR).await,
        Some((Some(w.node.instance_id.clone()), None))
    );
    let status = vpc_routes::status(&config).expect("status");
    assert!(!status.registered && status.node.is_none(), "{status}");

    let again = r.deregister(false).await.expect("deregister twice");
    assert!(again.steps.is_empty(), "{again}");
    // And the next ADD registers again instead of trusting a stale cache.
    let plan = r.ensure().await.expect("ensure again");
    assert!(!plan.cached);
    assert_eq!(
        w.route(&w.cluster.owned_table, POD_CIDR).await,
        w.on_node_eni()
    );
}

#[tokio::test]
async fn check_finds_a_missing_route_and_the_next_add_repairs_it() {
    let w = world("check").await;
    let r = w.registrar(w.config(json!({}))).await;
    r.ensure().await.expect("ensure");
    w.sdk
        .delete_route()
        .route_table_id(&w.cluster.legacy_table)
        .destination_cidr_block(POD_CIDR)
        .send()
        .await
        .expect("delete route behind our back");
    let e = r.check().await.expect_err("route missing");
    assert_eq!(e.kind(), ErrorKind::RouteMissing, "{e}");
    assert!(e.to_string().contains(&w.cluster.legacy_table), "{e}");

    let plan = r.ensure().await.expect("ensure after failed check");
    assert!(!plan.cached, "a failed CHECK invalidates the node state");
    assert_eq!(
        w.route(&w.cluster.legacy_table, POD_CIDR).await,
        w.on_node_eni()
    );
    r.check().await.expect("check after repair");
}

#[tokio::test]
async fn route_quota_refuses_before_calling_ec2() {
    let w = world("quota").await;
    let owned = &w.cluster.owned_table;
    // local + 2 routes = 3 routes: at a routeQuota of 3.
    common::create_instance_route(&w.sdk, owned, "10.244.8.0/24", &w.other.instance_id).await;
    common::create_instance_route(&w.sdk, owned, "10.244.9.0/24", &w.other.instance_id).await;
    let config = w.config(json!({ "routeQuota": 3, "routeTableIds": [owned] }));
    let r = w.registrar(config.clone()).await;
    let e = r.ensure().await.expect_err("quota");
    assert!(
        matches!(&e, Error::QuotaReached { routes: 3, quota: 3, table_id, .. } if table_id == owned),
        "{e}"
    );
    assert_eq!(e.kind(), ErrorKind::Quota);
    assert!(e.to_string().contains("L-93826ACB"), "{e}");
    assert_eq!(r.ec2().calls_of(Operation::CreateRoute), 0);
    assert_eq!(w.route(owned, POD_CIDR).await, None);

    // STATUS: the cached table is full without our route, so ADD cannot be served (code 50
    // in the binary), said from the cache: the counters do not move.
    let calls = r.ec2().calls();
    let e = vpc_routes::status(&config).expect_err("status: full");
    assert_eq!(e.kind(), ErrorKind::NotAvailable, "{e}");
    assert!(
        matches!(&e, Error::TableFull { table_id, routes: 3, quota: Some(3), .. } if table_id == owned),
        "{e}"
    );
    let msg = e.to_string();
    for needle in [owned.as_str(), "L-93826ACB", "routeQuota 3", POD_CIDR] {
        assert!(msg.contains(needle), "{needle} missing from: {msg}");
    }
    assert_eq!(r.ec2().calls(), calls);

    // One below the quota: registered, with the 80 % warning in the log.
    warnings();
    let config = w.config(json!({ "routeQuota": 4, "routeTableIds": [owned] }));
    let r = w.registrar(config.clone()).await;
    r.ensure().await.expect("ensure under quota");
    assert_eq!(w.route(owned, POD_CIDR).await, w.on_node_eni());
    let warned = warnings();
    assert!(
        warned
            .iter()
            .any(|m| m.contains(owned.as_str()) && m.contains("4 of 4 IPv4 routes")),
        "{warned:?}"
    );

    // Now the table is full (4 of 4) but holds our route: ADD needs no EC2 call, STATUS is ok.
    let status = vpc_routes::status(&config).expect("status: full but registered");
    assert!(status.registered, "{status}");
    assert!(
        status.tables[0].full && status.tables[0].registered,
        "{status}"
    );
}

#[tokio::test]
async fn route_quota_warning_starts_at_80_percent_not_below() {
    let w = world("quota-warning").await;
    let owned = w.cluster.owned_table.clone();
    let config = w.config(json!({ "routeQuota": 10, "routeTableIds": [owned] }));
    warnings();
    // Only this table's warnings: tests run in parallel and share the logger.
    let ours = || -> Vec<String> {
        warnings()
            .into_iter()
            .filter(|m| m.contains(owned.as_str()) && m.contains("of 10 IPv4 routes"))
            .collect()
    };
    // local + 5: ours makes 7 of 10 (70 %).
    for i in 20..25 {
        let d = format!("10.244.{i}.0/24");
        common::create_instance_route(&w.sdk, &owned, &d, &w.other.instance_id).await;
    }
    let r = w.registrar(config.clone()).await;
    r.ensure().await.expect("at 70 %");
    assert_eq!(w.route(&owned, POD_CIDR).await, w.on_node_eni());
    assert_eq!(ours(), Vec::<String>::new(), "no warning below 80 %");

    // One more route elsewhere: ours makes 8 of 10 (80 %), then 9 of 10.
    for (i, expected) in [(25, "8 of 10 IPv4 routes"), (26, "9 of 10 IPv4 routes")] {
        r.deregister(false).await.expect("deregister");
        let d = format!("10.244.{i}.0/24");
        common::create_instance_route(&w.sdk, &owned, &d, &w.other.instance_id).await;
        r.ensure().await.expect("under the quota");
        assert_eq!(w.route(&owned, POD_CIDR).await, w.on_node_eni());
        let warned = ours();
        assert!(
            warned.last().is_some_and(|m| m.contains(expected)),
            "{expected}: {warned:?}"
        );
    }
    assert_eq!(ours().len(), 2, "{:?}", ours());
}

#[tokio::test]
async fn route_limit_exceeded_is_a_clear_error_without_retry_loop() {
    let w = world("routelimit").await;
    let config = w.config(json!({}));
    let r = w.registrar(config.clone()).await;
    r.ec2()
        .fail(Operation::CreateRoute, "RouteLimitExceeded", 100);
    let started = Instant::now();
    let e = r.ensure().await.expect_err("route limit");
    assert!(matches!(e, Error::RouteLimitExceeded { .. }), "{e}");
    let msg = e.to_string();
    for needle in ["L-93826ACB", "50", "500", "1000", "vxlan-overlay"] {
        assert!(msg.contains(needle), "{needle} missing from: {msg}");
    }
    assert_eq!(
        r.ec2().calls_of(Operation::CreateRoute),
        2,
        "one CreateRoute per table, no retry"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let e = vpc_routes::status(&config).expect_err("status: full");
    assert!(matches!(e, Error::TableFull { quota: None, .. }), "{e}");
    assert!(e.to_string().contains("RouteLimitExceeded"), "{e}");
    assert!(e.to_string().contains("L-93826ACB"), "{e}");
}

#[tokio::test]
async fn create_route_race_rereads_the_table_and_applies_the_same_rules() {
    let w = world("race").await;
    let owned = w.cluster.owned_table.clone();
    let legacy = w.cluster.legacy_table.clone();

    // A concurrent registration of this same node got there first: the route re-read is
    // ours, nothing more to do.
    let config = w.config(json!({ "routeTableIds": [owned] }));
    let r = w.registrar(config.clone()).await;
    r.ec2().race_create_route(&w.node.eni_id);
    let plan = r
        .ensure()
        .await
        .expect("ensure after losing the race to itself");
    assert!(
        !plan
            .actions()
            .any(|a| matches!(a, Action::CreateRoute { .. } | Action::ReplaceRoute { .. })),
        "{plan}"
    );
    assert_eq!(r.ec2().calls_of(Operation::CreateRoute), 1);
    assert_eq!(
        r.ec2().calls_of(Operation::DescribeRouteTables),
        2,
        "the table is read once more after RouteAlreadyExists"
    );
    assert_eq!(w.route(&owned, POD_CIDR).await, w.on_node_eni());
    assert!(vpc_routes::status(&config).expect("status").registered);

    // Another node got there first: its live route is a conflict, not replaced.
    let r = w
        .registrar(w.config(json!({ "routeTableIds": [legacy] })))
        .await;
    r.ec2().race_create_route(&w.other.eni_id);
    let e = r.ensure().await.expect_err("conflict after the race");
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(e.to_string().contains(&legacy), "{e}");
    assert!(e.to_string().contains(&w.other.eni_id), "{e}");
    assert_eq!(r.ec2().calls_of(Operation::DescribeRouteTables), 2);
    assert_eq!(r.ec2().calls_of(Operation::ReplaceRoute), 0);
    assert_eq!(
        w.route(&legacy, POD_CIDR).await,
        Some((None, Some(w.other.eni_id.clone())))
    );
}

#[tokio::test]
async fn request_limit_exceeded_is_retried_with_backoff_within_the_deadline() {
    let w = world("throttle").await;
    let r = w.registrar(w.config(json!({}))).await;
    r.ec2().throttle(Operation::DescribeRouteTables, 3);
    r.ec2().throttle(Operation::CreateRoute, 2);
    let started = Instant::now();
    r.ensure().await.expect("ensure despite throttling");
    let took = started.elapsed();
    assert_eq!(r.ec2().calls_of(Operation::DescribeRouteTables), 4);
    assert_eq!(r.ec2().calls_of(Operation::CreateRoute), 4);
    // Backoff waits at least half of 200, 400, 800 ms (describe) and 200, 400 ms (create).
    assert!(took >= Duration::from_millis(1000), "{took:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    for table in w.cluster.tagged_tables() {
        assert_eq!(w.route(table, POD_CIDR).await, w.on_node_eni(), "{table}");
    }

    // Throttled for good: a deadline error after about deadlineSeconds, naming the throttling.
    let w2 = world("throttle-forever").await;
    let r = w2
        .registrar(w2.config(json!({ "deadlineSeconds": 2 })))
        .await;
    r.ec2().throttle(Operation::DescribeRouteTables, 1000);
    let started = Instant::now();
    let e = r.ensure().await.expect_err("deadline");
    let took = started.elapsed();
    assert!(matches!(e, Error::Deadline { seconds: 2, .. }), "{e}");
    assert!(e.to_string().contains("RequestLimitExceeded"), "{e}");
    assert!(e.is_retryable());
    assert!(took <= Duration::from_millis(4000), "{took:?}");
    let calls = r.ec2().calls_of(Operation::DescribeRouteTables);
    assert!((3..=10).contains(&calls), "{calls} attempts in 2 s");
}

#[tokio::test]
async fn slow_endpoint_ends_in_a_deadline_error() {
    let w = world("slow").await;
    let r = w.registrar(w.config(json!({ "deadlineSeconds": 1 }))).await;
    r.ec2().delay(Some(Duration::from_secs(30)));
    let started = Instant::now();
    let e = r.ensure().await.expect_err("deadline");
    let took = started.elapsed();
    assert_eq!(e.kind(), ErrorKind::Deadline, "{e}");
    assert!(took >= Duration::from_millis(900), "{took:?}");
    // Generous upper bound for a loaded 2-core machine; the point is "not 30 s".
    assert!(took < Duration::from_millis(3000), "{took:?}");
    assert_eq!(w.route(&w.cluster.owned_table, POD_CIDR).await, None);
}

#[tokio::test]
async fn unreachable_ec2_is_try_again_later() {
    let w = world("unreachable").await;
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let config = w.config(json!({}));
    let node = vpc_routes_aws::node_identity(&config)
        .await
        .expect("identity");
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(common::credentials())
        .load()
        .await;
    let ec2 = AwsEc2::from_sdk_config(&sdk, Some(&format!("http://127.0.0.1:{port}")));
    let e = Registrar::new(config, node, ec2)
        .ensure()
        .await
        .expect_err("unreachable");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_adds_make_one_registration() {
    let w = world("parallel").await;
    let config = w.config(json!({}));
    let mut registrars = Vec::new();
    for _ in 0..4 {
        registrars.push(Arc::new(w.registrar(config.clone()).await));
    }
    let tasks: Vec<_> = registrars
        .iter()
        .map(|r| {
            let r = r.clone();
            tokio::spawn(async move { r.ensure().await })
        })
        .collect();
    let mut cached = 0;
    for t in tasks {
        let plan = t.await.expect("join").expect("ensure");
        cached += usize::from(plan.cached);
    }
    // One registered under the node lock; the others found the state warm after waiting.
    assert_eq!(cached, 3);
    let creates: usize = registrars
        .iter()
        .map(|r| r.ec2().calls_of(Operation::CreateRoute))
        .sum();
    assert_eq!(creates, 2, "one CreateRoute per table in total");
    for table in w.cluster.tagged_tables() {
        assert_eq!(w.route(table, POD_CIDR).await, w.on_node_eni(), "{table}");
    }

    // `register` (node boot) reads EC2 even with a warm cache, and repairs.
    w.sdk
        .delete_route()
        .route_table_id(&w.cluster.owned_table)
        .destination_cidr_block(POD_CIDR)
        .send()
        .await
        .expect("delete route behind our back");
    let r = &registrars[0];
    assert!(r.ensure().await.expect("warm").cached);
    let plan = r.register().await.expect("register");
    assert!(!plan.cached);
    assert_eq!(plan.steps.len(), 1, "{plan}");
    assert_eq!(
        w.route(&w.cluster.owned_table, POD_CIDR).await,
        w.on_node_eni()
    );
}

// ---- IPv6 ----

#[tokio::test]
async fn moto_ipv6_routes_what_moto_models_and_where_it_stops() {
    // Not a test of ours: it pins what moto 5.2 does with IPv6 routes, which the README cites
    // and the tests above and below rely on. If moto changes, this says where.
    let w = world("moto-ipv6").await;
    let table = w.cluster.owned_table.clone();
    let create = |eni: String| {
        w.sdk
            .create_route()
            .route_table_id(&table)
            .destination_ipv6_cidr_block(POD_CIDR_V6)
            .network_interface_id(eni)
            .send()
    };
    // Modelled: CreateRoute with DestinationIpv6CidrBlock to an ENI, described back with
    // DestinationIpv6CidrBlock, origin CreateRoute, state active.
    create(w.node.eni_id.clone())
        .await
        .expect("CreateRoute IPv6");
    assert_eq!(w.route(&table, POD_CIDR_V6).await, w.on_node_eni());
    // Not modelled: a second CreateRoute of the same IPv6 destination is no
    // RouteAlreadyExists (EC2 refuses it); moto silently points the route elsewhere.
    create(w.other.eni_id.clone())
        .await
        .expect("moto accepts a duplicate IPv6 CreateRoute");
    assert_eq!(
        w.route(&table, POD_CIDR_V6).await,
        Some((None, Some(w.other.eni_id.clone())))
    );
    // Not modelled: the DescribeRouteTables filter route.destination-ipv6-cidr-block
    // (moto answers HTTP 500). vpc-route filters by vpc-id or ids only.
    let filtered = w
        .sdk
        .describe_route_tables()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("route.destination-ipv6-cidr-block")
                .values(POD_CIDR_V6)
                .build(),
        )
        .send()
        .await;
    assert!(
        filtered.is_err(),
        "moto now filters by route.destination-ipv6-cidr-block"
    );
    // Modelled: ReplaceRoute and DeleteRoute of an IPv6 destination, and their NotFound
    // answers (InvalidParameterValue for ReplaceRoute, InvalidRoute.NotFound for DeleteRoute).
    w.sdk
        .replace_route()
        .route_table_id(&table)
        .destination_ipv6_cidr_block(POD_CIDR_V6)
        .network_interface_id(&w.node.eni_id)
        .send()
        .await
        .expect("ReplaceRoute IPv6");
    assert_eq!(w.route(&table, POD_CIDR_V6).await, w.on_node_eni());
    let missing = w
        .sdk
        .replace_route()
        .route_table_id(&table)
        .destination_ipv6_cidr_block("fd00:10:244:9::/64")
        .network_interface_id(&w.node.eni_id)
        .send()
        .await
        .expect_err("ReplaceRoute of a missing IPv6 route");
    assert_eq!(
        aws_sdk_ec2::error::ProvideErrorMetadata::code(&missing),
        Some("InvalidParameterValue")
    );
    for expected in [None, Some("InvalidRoute.NotFound")] {
        let deleted = w
            .sdk
            .delete_route()
            .route_table_id(&table)
            .destination_ipv6_cidr_block(POD_CIDR_V6)
            .send()
            .await;
        assert_eq!(
            deleted
                .err()
                .and_then(|e| aws_sdk_ec2::error::ProvideErrorMetadata::code(&e).map(str::to_string))
                .as_deref(),
            expected
        );
    }
    assert_eq!(w.route(&table, POD_CIDR_V6).await, None);
    // Not modelled either (as for IPv4): blackhole state, RouteLimitExceeded, throttling. The
    // VPC needs no IPv6 block of its own in moto, nor is the destination's text checked
    // (moto keys routes by the literal text): AwsEc2 always sends ipnet's canonical text.
}

#[tokio::test]
async fn dual_stack_registers_both_ranges_in_both_tables_and_warm_add_makes_no_ec2_call() {
    let w = world("dual").await;
    let config = w.config(dual_stack(json!({})));
    let r = w.registrar(config.clone()).await;
    let plan = r.ensure().await.expect("ensure");
    let created: Vec<String> = plan
        .actions()
        .filter_map(|a| match a {
            Action::CreateRoute {
                table_id,
                destination,
                ..
            } => Some(format!("{table_id} {destination}")),
            _ => None,
        })
        .collect();
    assert_eq!(created.len(), 4, "{plan}");
    for table in w.cluster.tagged_tables() {
        assert_eq!(w.route(table, POD_CIDR).await, w.on_node_eni(), "{table}");
        assert_eq!(
            w.route(table, POD_CIDR_V6).await,
            w.on_node_eni(),
            "{table}"
        );
    }
    assert_eq!(w.route(&w.cluster.foreign_table, POD_CIDR_V6).await, None);

    // node.json: the IPv4 fields of the release before IPv6, the IPv6 range beside them.
    let text = std::fs::read_to_string(w.data.path().join("node.json")).expect("node.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(json["podCIDR"], POD_CIDR);
    assert_eq!(json["ipv6PodCIDR"], POD_CIDR_V6);
    assert_eq!(json["tables"][0]["registered"], true);
    assert_eq!(json["tables"][0]["ipv6"]["registered"], true);
    assert_eq!(json["tables"][0]["ipv6"]["routes"], 1, "{text}");

    // A warm ADD in a new process: zero EC2 and IMDS requests, as for IPv4 alone.
    let imds_before = w.imds.requests();
    let moto_before = w.moto.requests();
    let warm = Registrar::new(
        config.clone(),
        r.node().clone(),
        Arc::new(FaultInjectingEc2::new(w.moto.aws_ec2().await)),
    );
    assert!(warm.ensure().await.expect("warm ensure").cached);
    assert_eq!(warm.ec2().calls(), 0, "warm dual-stack ADD made EC2 calls");
    assert_eq!(w.imds.requests(), imds_before);
    assert_eq!(w.moto.requests(), moto_before);

    // An IPv4-only config on the same node.json is not warm: its ranges differ.
    let v4_only = w.registrar(w.config(json!({}))).await;
    assert!(!v4_only.ensure().await.expect("IPv4-only ensure").cached);
    r.register().await.expect("register dual again");

    // STATUS: one line per table and family.
    let status = vpc_routes::status(&config).expect("status");
    assert!(status.registered, "{status}");
    assert_eq!(status.tables.len(), 4, "{status}");
    assert!(
        status
            .to_string()
            .contains(&format!("{POD_CIDR_V6}: 1 IPv6 routes")),
        "{status}"
    );

    r.check().await.expect("check");
    // CHECK finds the IPv6 route gone.
    w.sdk
        .delete_route()
        .route_table_id(&w.cluster.legacy_table)
        .destination_ipv6_cidr_block(POD_CIDR_V6)
        .send()
        .await
        .expect("delete");
    let e = r.check().await.expect_err("IPv6 route missing");
    assert_eq!(e.kind(), ErrorKind::RouteMissing, "{e}");
    assert!(e.to_string().contains(POD_CIDR_V6), "{e}");
    r.ensure().await.expect("repaired");
    assert_eq!(
        w.route(&w.cluster.legacy_table, POD_CIDR_V6).await,
        w.on_node_eni()
    );

    // deregister takes both routes out of both tables.
    let plan = r.deregister(false).await.expect("deregister");
    assert_eq!(plan.steps.len(), 4, "{plan}");
    for table in w.cluster.tagged_tables() {
        assert_eq!(w.route(table, POD_CIDR).await, None, "{table}");
        assert_eq!(w.route(table, POD_CIDR_V6).await, None, "{table}");
    }
}

#[tokio::test]
async fn ipv6_only_node_registers_its_ipv6_range_alone() {
    let w = world("v6only").await;
    let config = w.config(ipv6_only(json!({})));
    assert_eq!(config.pod_cidr, None);
    let r = w.registrar(config.clone()).await;
    r.ensure().await.expect("ensure");
    for table in w.cluster.tagged_tables() {
        assert_eq!(
            w.route(table, POD_CIDR_V6).await,
            w.on_node_eni(),
            "{table}"
        );
        assert_eq!(w.route(table, POD_CIDR).await, None, "{table}");
    }
    let text = std::fs::read_to_string(w.data.path().join("node.json")).expect("node.json");
    assert!(!text.contains("\"podCIDR\""), "{text}");
    let warm = Registrar::new(
        config.clone(),
        r.node().clone(),
        Arc::new(FaultInjectingEc2::new(w.moto.aws_ec2().await)),
    );
    assert!(warm.ensure().await.expect("warm").cached);
    assert_eq!(warm.ec2().calls(), 0);
    assert!(vpc_routes::status(&config).expect("status").registered);
}

#[tokio::test]
async fn route_quota_counts_each_address_family_on_its_own() {
    let w = world("quota-family").await;
    let owned = w.cluster.owned_table.clone();
    let legacy = w.cluster.legacy_table.clone();
    // owned: local + 2 IPv4 routes (3 IPv4), no IPv6 route.
    for d in ["10.244.8.0/24", "10.244.9.0/24"] {
        common::create_instance_route(&w.sdk, &owned, d, &w.other.instance_id).await;
    }
    let config = w.config(dual_stack(
        json!({ "routeQuota": 3, "routeTableIds": [owned] }),
    ));
    let r = w.registrar(config.clone()).await;
    let e = r.ensure().await.expect_err("IPv4 at the quota");
    assert!(
        matches!(&e, Error::QuotaReached { routes: 3, quota: 3, destination, .. }
            if destination.to_string() == POD_CIDR),
        "{e}"
    );
    assert!(e.to_string().contains("3 IPv4 routes"), "{e}");
    // The IPv6 count is 0 of 3: that route went in.
    assert_eq!(w.route(&owned, POD_CIDR).await, None);
    assert_eq!(w.route(&owned, POD_CIDR_V6).await, w.on_node_eni());
    assert_eq!(r.ec2().calls_of(Operation::CreateRoute), 1);
    // STATUS names the IPv4 range that the full table lacks.
    let e = vpc_routes::status(&config).expect_err("status: IPv4 full");
    assert!(
        matches!(&e, Error::TableFull { routes: 3, quota: Some(3), destination, .. }
            if destination.to_string() == POD_CIDR),
        "{e}"
    );

    // legacy: local (1 IPv4) + 3 IPv6 routes of another node.
    for d in [
        "fd00:10:244:8::/64",
        "fd00:10:244:9::/64",
        "fd00:10:244:a::/64",
    ] {
        common::create_instance_route(&w.sdk, &legacy, d, &w.other.instance_id).await;
    }
    let config = w.config(dual_stack(
        json!({ "routeQuota": 3, "routeTableIds": [legacy] }),
    ));
    let r = w.registrar(config.clone()).await;
    let e = r.ensure().await.expect_err("IPv6 at the quota");
    assert!(
        matches!(&e, Error::QuotaReached { routes: 3, quota: 3, destination, .. }
            if destination.to_string() == POD_CIDR_V6),
        "{e}"
    );
    assert!(e.to_string().contains("3 IPv6 routes"), "{e}");
    assert_eq!(w.route(&legacy, POD_CIDR).await, w.on_node_eni());
    assert_eq!(w.route(&legacy, POD_CIDR_V6).await, None);
    let e = vpc_routes::status(&config).expect_err("status: IPv6 full");
    assert!(e.to_string().contains(POD_CIDR_V6), "{e}");
    assert!(e.to_string().contains("3 IPv6 routes"), "{e}");

    // One more of quota: the IPv6 route goes in as the 4th of 4 IPv6 routes, with the 80 %
    // warning naming the family; the IPv4 side (2 of 4) warns nothing.
    warnings();
    let config = w.config(dual_stack(
        json!({ "routeQuota": 4, "routeTableIds": [legacy] }),
    ));
    let r = w.registrar(config.clone()).await;
    r.ensure().await.expect("under the IPv6 quota");
    assert_eq!(w.route(&legacy, POD_CIDR_V6).await, w.on_node_eni());
    let ours: Vec<String> = warnings()
        .into_iter()
        .filter(|m| m.contains(legacy.as_str()))
        .collect();
    assert!(
        ours.iter().any(|m| m.contains("4 of 4 IPv6 routes")),
        "{ours:?}"
    );
    assert!(!ours.iter().any(|m| m.contains("IPv4 routes")), "{ours:?}");
    let status = vpc_routes::status(&config).expect("full but registered");
    assert!(status.registered, "{status}");
}

#[tokio::test]
async fn ipv6_route_limit_exceeded_from_the_fault_layer_is_the_quota_error_for_that_family() {
    // moto has no route quota: RouteLimitExceeded comes from the fault layer.
    let w = world("v6limit").await;
    let config = w.config(ipv6_only(
        json!({ "routeTableIds": [w.cluster.owned_table] }),
    ));
    let r = w.registrar(config.clone()).await;
    r.ec2()
        .fail(Operation::CreateRoute, "RouteLimitExceeded", 1);
    let e = r.ensure().await.expect_err("route limit");
    assert!(
        matches!(&e, Error::RouteLimitExceeded { destination, .. }
            if destination.to_string() == POD_CIDR_V6),
        "{e}"
    );
    assert_eq!(r.ec2().calls_of(Operation::CreateRoute), 1, "never retried");
    let e = vpc_routes::status(&config).expect_err("status: full");
    assert!(matches!(e, Error::TableFull { quota: None, .. }), "{e}");
    assert!(e.to_string().contains("IPv6 routes"), "{e}");
}

#[tokio::test]
async fn ipv6_routes_follow_the_ownership_and_replace_rules() {
    let w = world("v6rules").await;
    let owned = w.cluster.owned_table.clone();
    let legacy = w.cluster.legacy_table.clone();
    // A live IPv6 route of another node: a conflict, left alone; the IPv4 route goes in.
    common::create_instance_route(&w.sdk, &owned, POD_CIDR_V6, &w.other.instance_id).await;
    let config = w.config(dual_stack(json!({ "routeTableIds": [owned] })));
    let r = w.registrar(config.clone()).await;
    let e = r.ensure().await.expect_err("conflict");
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(e.to_string().contains(POD_CIDR_V6), "{e}");
    assert!(e.to_string().contains(&w.other.instance_id), "{e}");
    assert_eq!(w.route(&owned, POD_CIDR).await, w.on_node_eni());
    assert_eq!(
        w.route(&owned, POD_CIDR_V6).await,
        Some((Some(w.other.instance_id.clone()), None))
    );
    assert_eq!(r.ec2().calls_of(Operation::ReplaceRoute), 0);

    // The same route as a blackhole (the fault layer: moto has no blackhole state): replaced.
    let r = w.registrar(config.clone()).await;
    r.ec2().blackhole(POD_CIDR_V6.parse().expect("cidr"));
    let plan = r.ensure().await.expect("blackhole replaced");
    assert!(
        plan.actions().any(|a| matches!(a,
            Action::ReplaceRoute { reason: Reason::Blackhole, destination, .. }
                if destination.to_string() == POD_CIDR_V6)),
        "{plan}"
    );
    assert_eq!(w.route(&owned, POD_CIDR_V6).await, w.on_node_eni());

    // Losing a CreateRoute race (the fault layer: moto answers no RouteAlreadyExists for an
    // IPv6 destination) to another node: read again, a conflict, not replaced.
    let r = w
        .registrar(w.config(dual_stack(json!({ "routeTableIds": [legacy] }))))
        .await;
    r.ec2().race_create_route(&w.node.eni_id);
    r.ec2().race_create_route(&w.other.eni_id);
    let e = r.ensure().await.expect_err("lost the IPv6 race");
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(e.to_string().contains(POD_CIDR_V6), "{e}");
    assert_eq!(r.ec2().calls_of(Operation::DescribeRouteTables), 3);
    assert_eq!(
        w.route(&legacy, POD_CIDR_V6).await,
        Some((None, Some(w.other.eni_id.clone())))
    );

    // gc: inside the IPv6 cluster range, made by CreateRoute, to a terminated instance:
    // deleted; the same outside the range: untouched; this node's routes: untouched.
    let inside = "fd00:10:244:9::/64";
    let outside = "fd00:99:0:9::/64";
    for d in [inside, outside] {
        common::create_instance_route(&w.sdk, &owned, d, &w.other.instance_id).await;
    }
    common::terminate(&w.sdk, &w.other.instance_id).await;
    let gc = w.registrar(config.clone()).await;
    let dry = gc.gc(true).await.expect("gc dry run");
    let planned: Vec<String> = dry
        .actions()
        .filter_map(|a| match a {
            Action::DeleteRoute { destination, .. } => Some(destination.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(planned, [inside], "{dry}");
    gc.gc(false).await.expect("gc");
    assert_eq!(w.route(&owned, inside).await, None);
    assert_eq!(
        w.route(&owned, outside).await,
        Some((Some(w.other.instance_id.clone()), None))
    );
    assert_eq!(w.route(&owned, POD_CIDR_V6).await, w.on_node_eni());
}
