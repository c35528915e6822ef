//! This node's side of the Kubernetes registry, a task on the agent's runtime: waits for the
//! Node to exist and for the controller-manager to set its `spec.podCIDR` (polling, with a
//! log line saying so), publishes the VTEP in flannel's annotations and clears
//! `NetworkUnavailable` through nodes/status, and reports the subnet to the agent's loop.
//! There is no lease to renew: the range is the Node's for its life.

use std::sync::Arc;
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::Node;
use overlay::agent::LocalVtep;
use overlay::lease::LeaseEvent;
use overlay::registry::{Lease, NodeRecord};
use overlay::telemetry::Telemetry;
use overlay::OverlayConfig;
use tokio::sync::mpsc::UnboundedSender;

use crate::annotations::{
    annotations_patch, missing_annotations, network_available_patch, own_annotations, pod_cidrs,
};
use crate::api_access::ApiAccess;
use crate::Error;

/// How often the Node is read again while it is missing or has no podCIDR.
const POLL: Duration = Duration::from_secs(2);
/// The longest pause between retries of a failed call.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Takes this node's subnet from its Node and publishes its VTEP; reports
/// [`LeaseEvent::Leased`] on `events`, or [`LeaseEvent::Fatal`] when it cannot succeed
/// (refused rights, a podCIDR outside clusterCIDR). Transient failures are retried with a
/// growing pause; once the subnet is reported the task only holds `events` open.
pub async fn take_subnet(
    access: ApiAccess,
    cfg: OverlayConfig,
    vtep: LocalVtep,
    telemetry: Arc<Telemetry>,
    events: UnboundedSender<LeaseEvent>,
) {
    match publish(&access, &cfg, &vtep).await {
        Ok(lease) => {
            telemetry.set_lease(Some(lease.subnet));
            let _ = events.send(LeaseEvent::Leased(lease));
            set_network_available(&access).await;
            // The agent's loop takes a closed channel for a dead subnet keeper: hold it open
            // for the life of the agent (the range is the Node's for good).
            std::future::pending::<()>().await;
        }
        Err(e) => {
            let _ = events.send(LeaseEvent::Fatal(e.into()));
        }
    }
}

/// The record this node publishes.
pub fn own_record(cfg: &OverlayConfig, vtep: &LocalVtep) -> NodeRecord {
    let me = NodeRecord::new(vtep.underlay, cfg.vni, vtep.mac.clone());
    match &vtep.ipv6 {
        Some((u6, mac6)) => me.with_ipv6_device(*u6, mac6.clone()),
        None => me,
    }
}

async fn publish(
    access: &ApiAccess,
    cfg: &OverlayConfig,
    vtep: &LocalVtep,
) -> Result<Lease, Error> {
    let node = wait_for_pod_cidr(access).await?;
    let (subnet, subnet6) = subnets(access.node_name(), &node, cfg)?;
    let me = own_record(cfg, vtep);
    let wanted = own_annotations(&node, &me);
    let missing = missing_annotations(&node, &wanted);
    if missing.is_empty() {
        log::info!(
            "Node {} carries this VTEP's annotations already",
            access.node_name()
        );
    } else {
        let patch = annotations_patch(&missing);
        let what = "publishing the VTEP annotations";
        retrying(what, || access.patch_own_status(what, &patch)).await?;
        log::info!(
            "published {} on Node {}: {}",
            missing.len(),
            access.node_name(),
            missing
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(Lease {
        subnet,
        ipv6_subnet: subnet6,
        id: 0,
    })
}

/// Reads the Node until it exists with a podCIDR; logs once what it waits for.
async fn wait_for_pod_cidr(access: &ApiAccess) -> Result<Node, Error> {
    let name = access.node_name();
    let mut said = "";
    let mut backoff = POLL;
    loop {
        match access.own_node().await {
            Ok(Some(node)) => {
                let has = node
                    .spec
                    .as_ref()
                    .is_some_and(|s| s.pod_cidr.as_deref().is_some_and(|c| !c.is_empty()));
                if has {
                    return Ok(node);
                }
                if said != "cidr" {
                    log::info!(
                        "waiting for Node {name}'s spec.podCIDR (the controller-manager's \
                         --allocate-node-cidrs sets it)"
                    );
                    said = "cidr";
                }
                backoff = POLL;
            }
            Ok(None) => {
                if said != "node" {
                    log::info!("waiting for Node {name} to exist (kubelet registers it)");
                    said = "node";
                }
                backoff = POLL;
            }
            Err(e) if e.is_permanent() => return Err(e),
            Err(e) => {
                log::warn!("{e}; retrying in {backoff:?}");
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        tokio::time::sleep(backoff).await;
    }
}

/// The node's IPv4 range (required, within clusterCIDR) and its IPv6 one with `enableIPv6`
/// (required then, within ipv6Network), as flannel's `AcquireLease` checks them.
fn subnets(
    name: &str,
    node: &Node,
    cfg: &OverlayConfig,
) -> Result<(Ipv4Net, Option<Ipv6Net>), Error> {
    let problem = |p: String| Error::Node {
        node: name.to_string(),
        problem: p,
    };
    let (v4, v6) = pod_cidrs(node).map_err(problem)?;
    let cluster = cfg.cluster()?;
    let subnet = v4.ok_or_else(|| {
        problem("no IPv4 range in spec.podCIDRs: vxlan-overlay pods always have IPv4".into())
    })?;
    if !cluster.contains(&subnet) {
        return Err(problem(format!(
            "podCIDR {subnet} is not within clusterCIDR {cluster} (the controller-manager's \
             --cluster-cidr must be the overlay's clusterCIDR)"
        )));
    }
    let subnet6 = match cfg.cluster6()? {
        None => None,
        Some(c6) => {
            let s6 = v6.ok_or_else(|| {
                problem("enableIPv6 is set but spec.podCIDRs has no IPv6 range".into())
            })?;
            if !c6.contains(&s6) {
                return Err(problem(format!(
                    "IPv6 podCIDR {s6} is not within ipv6Network {c6}"
                )));
            }
            Some(s6)
        }
    };
    Ok((subnet, subnet6))
}

/// Sets `NetworkUnavailable=False`, as flannel and the cloud route controller do once the
/// node's routes exist. Retried until it succeeds; a refusal is logged (the pods' network
/// works without it, the scheduler's taint stays).
async fn set_network_available(access: &ApiAccess) {
    // Whole seconds, as Kubernetes writes its own timestamps.
    let now =
        k8s_openapi::jiff::Timestamp::from_second(k8s_openapi::jiff::Timestamp::now().as_second())
            .map(|t| t.to_string())
            .unwrap_or_default();
    let what = "clearing the NetworkUnavailable condition";
    let patch = network_available_patch(&now);
    match retrying(what, || access.patch_own_status(what, &patch)).await {
        Ok(()) => log::info!(
            "Node {}: NetworkUnavailable=False ({})",
            access.node_name(),
            crate::annotations::CONDITION_REASON
        ),
        Err(e) => log::error!("{e}"),
    }
}

/// `call` until it succeeds or fails for good, pausing longer after each failure.
async fn retrying<F, Fut>(what: &str, mut call: F) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    let mut backoff = Duration::from_millis(500);
    loop {
        match call().await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_permanent() => return Err(e),
            Err(e) => {
                log::warn!("{what} failed ({e}); retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
