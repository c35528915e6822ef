//! Keeps the VXLAN dataplane in step with the cluster's Nodes: a list and full reconcile at
//! start and whenever the watch cannot resume (410 Gone) or the API server was unreachable;
//! in between, the watch's events applied as deltas (bursts coalesced into one batch). A
//! watch the server ended (after its `timeoutSeconds`) resumes from the last resourceVersion
//! seen. The periodic resync reconciles from the Nodes already known, without an API call.
//! While the API server is down the dataplane stays as it is and the agent retries with a
//! growing pause.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::WatchEvent;
use overlay::agent::PeerSource;
use overlay::dataplane::Dataplane;
use overlay::peer_sync::{
    apply_changes, reconcile_all, COALESCE_WINDOW, MAX_BACKOFF, MAX_COALESCED, MAX_COALESCE_DELAY,
};
use overlay::peers::PeerTable;
use overlay::registry::{Change, NodeRecord};
use overlay::telemetry::Telemetry;
use tokio::time::timeout;

use crate::annotations::node_record;
use crate::api_access::{describe, ApiAccess, NodeEvents, WATCH_SILENCE};
use crate::Error;

/// What woke the agent from the watch.
#[derive(Debug, Default)]
pub struct Wake {
    events: Vec<WatchEvent<Node>>,
    /// The server ended the watch (resume it from the last resourceVersion).
    ended: bool,
    /// The watch failed (the connection broke, or stayed silent too long).
    failed: Option<Error>,
}

/// The Nodes side of the agent.
pub struct NodeSync {
    access: ApiAccess,
    /// The peers known, by Node name: their IPv4 range and record.
    nodes: BTreeMap<String, (Ipv4Net, NodeRecord)>,
    table: PeerTable,
    /// Where the watch resumes; `None` when a list is needed.
    resource_version: Option<String>,
    watch: Option<NodeEvents>,
    need_reconcile: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
    telemetry: Arc<Telemetry>,
}

impl NodeSync {
    /// The sync of `table`'s peers from the Nodes `access` reaches; nothing listed yet.
    pub fn new(access: ApiAccess, table: PeerTable, telemetry: Arc<Telemetry>) -> NodeSync {
        NodeSync {
            access,
            nodes: BTreeMap::new(),
            table,
            resource_version: None,
            watch: None,
            need_reconcile: true,
            retry_at: None,
            backoff: Duration::from_millis(200),
            telemetry,
        }
    }

    fn failed(&mut self, what: &str, e: &Error) {
        log::warn!(
            "{what} failed ({e}); keeping the dataplane, retrying in {:?}",
            self.backoff
        );
        self.telemetry.etcd_errors.inc();
        self.watch = None;
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// The peer this Node makes, if it is one (never this node's own Node).
    fn record_of(&self, node: &Node) -> Option<(Ipv4Net, NodeRecord)> {
        if node.metadata.name.as_deref() == Some(self.access.node_name()) {
            return None;
        }
        node_record(node)
    }

    async fn list(&mut self, plane: &mut Dataplane) -> Result<(), Error> {
        let started = Instant::now();
        let list = self.access.list_nodes().await?;
        self.nodes = list
            .items
            .iter()
            .filter_map(|n| Some((n.metadata.name.clone()?, self.record_of(n)?)))
            .collect();
        self.reconcile(plane)?;
        self.resource_version = list.metadata.resource_version.clone();
        log::info!(
            "listed {} Nodes ({} peers) at resourceVersion {}, took {} ms",
            list.items.len(),
            self.nodes.len(),
            self.resource_version.as_deref().unwrap_or("?"),
            started.elapsed().as_millis()
        );
        Ok(())
    }

    /// Programs exactly the peers of the Nodes known.
    fn reconcile(&mut self, plane: &mut Dataplane) -> Result<(), Error> {
        let started = Instant::now();
        let records: Vec<(Ipv4Net, NodeRecord)> = self.nodes.values().cloned().collect();
        reconcile_all(plane, &mut self.table, &self.telemetry, &records, started)?;
        self.need_reconcile = false;
        Ok(())
    }

    /// The changes one watch event makes to the peers known.
    fn changes_of(&mut self, event: WatchEvent<Node>, changes: &mut Vec<Change>) {
        let (node, deleted) = match event {
            WatchEvent::Added(n) | WatchEvent::Modified(n) => (n, false),
            WatchEvent::Deleted(n) => (n, true),
            WatchEvent::Bookmark(b) => {
                self.resource_version = Some(b.metadata.resource_version);
                return;
            }
            WatchEvent::Error(status) => {
                if status.code == 410 {
                    log::info!(
                        "the watch's resourceVersion is gone (410: {}); listing again",
                        status.message
                    );
                    self.resource_version = None;
                } else {
                    log::warn!(
                        "the Node watch reported {} {}: {}; watching again",
                        status.code,
                        status.reason,
                        status.message
                    );
                }
                self.watch = None;
                return;
            }
        };
        if let Some(rv) = node.metadata.resource_version.clone() {
            self.resource_version = Some(rv);
        }
        let Some(name) = node.metadata.name.clone() else {
            return;
        };
        let now = if deleted { None } else { self.record_of(&node) };
        let before = self.nodes.get(&name).map(|(s, _)| *s);
        match (before, now) {
            (Some(old), Some((subnet, record))) => {
                if old != subnet {
                    changes.push(Change::Delete(old));
                }
                changes.push(Change::Put(subnet, Some(record.clone())));
                self.nodes.insert(name, (subnet, record));
            }
            (None, Some((subnet, record))) => {
                changes.push(Change::Put(subnet, Some(record.clone())));
                self.nodes.insert(name, (subnet, record));
            }
            (Some(old), None) => {
                changes.push(Change::Delete(old));
                self.nodes.remove(&name);
                log::info!(
                    "Node {name} {}: its peer {old} goes",
                    if deleted {
                        "was deleted"
                    } else {
                        "no longer carries the VTEP annotations"
                    }
                );
            }
            (None, None) => {}
        }
    }
}

impl PeerSource for NodeSync {
    type Wake = Wake;

    async fn step(&mut self, plane: &mut Dataplane) {
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        if self.resource_version.is_none() {
            if let Err(e) = self.list(plane).await {
                return self.failed("listing Nodes", &e);
            }
        } else if self.need_reconcile {
            if let Err(e) = self.reconcile(plane) {
                return self.failed("full reconcile", &e);
            }
        }
        if self.watch.is_none() {
            let from = self.resource_version.clone().unwrap_or_default();
            match self.access.watch_nodes(&from).await {
                Ok(w) => {
                    log::debug!("watching Nodes from resourceVersion {from}");
                    self.watch = Some(w);
                }
                Err(e) => {
                    // The API server may have lost its history (a restore): list again.
                    self.resource_version = None;
                    return self.failed("watching Nodes", &e);
                }
            }
        }
        self.retry_at = None;
        self.backoff = Duration::from_millis(200);
    }

    async fn next(&mut self) -> Wake {
        if let Some(t) = self.retry_at {
            tokio::time::sleep_until(t.into()).await;
            return Wake::default();
        }
        let Some(w) = self.watch.as_mut() else {
            return std::future::pending().await;
        };
        let mut wake = Wake::default();
        match timeout(WATCH_SILENCE, w.next()).await {
            Err(_) => {
                wake.failed = Some(Error::Timeout {
                    what: "the Node watch".into(),
                    after: WATCH_SILENCE,
                });
                return wake;
            }
            Ok(None) => {
                wake.ended = true;
                return wake;
            }
            Ok(Some(Err(e))) => {
                wake.failed = Some(describe("the Node watch", &e));
                return wake;
            }
            Ok(Some(Ok(ev))) => wake.events.push(ev),
        }
        let deadline = Instant::now() + MAX_COALESCE_DELAY;
        while wake.events.len() < MAX_COALESCED {
            let window = COALESCE_WINDOW.min(deadline.saturating_duration_since(Instant::now()));
            if window.is_zero() {
                break;
            }
            match timeout(window, w.next()).await {
                Err(_) => break,
                Ok(Some(Ok(ev))) => wake.events.push(ev),
                Ok(None) => {
                    wake.ended = true;
                    break;
                }
                Ok(Some(Err(e))) => {
                    wake.failed = Some(describe("the Node watch", &e));
                    break;
                }
            }
        }
        wake
    }

    fn handle(&mut self, plane: &mut Dataplane, wake: Wake) {
        let mut changes = Vec::new();
        let count = wake.events.len();
        for ev in wake.events {
            self.changes_of(ev, &mut changes);
        }
        if !apply_changes(
            plane,
            &mut self.table,
            &self.telemetry,
            &changes,
            count,
            "Node events",
        ) {
            self.need_reconcile = true;
        }
        if let Some(e) = wake.failed {
            // The API server went away or the connection broke: once it is back, list
            // again (what changed meanwhile is then certain to be seen).
            self.resource_version = None;
            self.failed("the Node watch", &e);
        } else if wake.ended {
            log::debug!("the Node watch ended; resuming");
            self.watch = None;
        }
    }

    fn request_full(&mut self) {
        self.need_reconcile = true;
    }

    fn resync(&mut self) {
        self.need_reconcile = true;
    }
}
