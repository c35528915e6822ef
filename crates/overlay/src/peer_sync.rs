//! Keeps the VXLAN dataplane in step with etcd: a full list and reconcile at start, when the
//! watch cannot resume (its revision was compacted), after a failed write and on every
//! resync; in between, the watch's changes applied as deltas, bursts coalesced into one
//! batch. A lost watch (a member died, the connection was cut, a leader election) resumes
//! from the last revision seen, without a list, so an election does not make every agent of
//! the cluster list at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::WatchStream;
use ipnet::Ipv4Net;
use tokio::time::timeout;

use crate::dataplane::Dataplane;
use crate::etcd_access::{EtcdAccess, Fingerprint, CALL_TIMEOUT};
use crate::peers::PeerTable;
use crate::registry::{watch_news, Change, NodeRecord, Registry, WatchNews};
use crate::telemetry::Telemetry;
use crate::Error;

/// How long to wait for more watch messages once one arrived: events of a burst (nodes
/// joining, an expired batch of leases) come within microseconds of each other. Every
/// registry's watch coalesces with these bounds.
pub const COALESCE_WINDOW: Duration = Duration::from_millis(5);
/// The longest a change waits for others to join its batch: a steady stream of events
/// (faster than the window) is applied every this often, not only when it pauses.
pub const MAX_COALESCE_DELAY: Duration = Duration::from_millis(50);
/// The most changes applied in one batch; the rest follow in the next.
pub const MAX_COALESCED: usize = 10_000;
/// The longest pause between retries while the registry (etcd, the API server) fails.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What woke the agent from the watch.
#[derive(Debug, Default)]
pub struct Wake {
    news: Vec<WatchNews>,
    lost: bool,
}

/// The watch side of the agent.
pub struct PeerSync {
    access: EtcdAccess,
    prefix: String,
    reg: Option<Registry>,
    watch: Option<WatchStream>,
    files: Fingerprint,
    table: PeerTable,
    /// Every change up to this revision is applied; 0 before the first list.
    revision: i64,
    need_full: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
    telemetry: Arc<Telemetry>,
}

impl PeerSync {
    /// The sync of the peers of `table`, under `prefix`, nothing listed yet.
    pub fn new(
        access: EtcdAccess,
        prefix: &str,
        table: PeerTable,
        telemetry: Arc<Telemetry>,
    ) -> PeerSync {
        PeerSync {
            access,
            prefix: prefix.to_string(),
            reg: None,
            watch: None,
            files: Fingerprint::new(),
            table,
            revision: 0,
            need_full: true,
            retry_at: None,
            backoff: Duration::from_millis(200),
            telemetry,
        }
    }

    /// Asks for a full list and reconcile at the next step.
    pub fn request_full(&mut self) {
        self.need_full = true;
    }

    /// Reconnects (the watch resuming where it was) when the TLS files changed.
    pub fn check_files(&mut self) {
        if self.reg.is_some() && self.access.fingerprint() != self.files {
            log::info!("etcd TLS files changed; the watch reconnects");
            self.reg = None;
            self.watch = None;
        }
    }

    /// Does what is due: a full reconcile when asked for, then a watch when there is none.
    /// Failures are logged and counted and retried after a growing pause (see [`next`](Self::next)).
    pub async fn step(&mut self, plane: &mut Dataplane) {
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        if self.need_full {
            if let Err(e) = self.full(plane).await {
                return self.failed("full reconcile", e);
            }
        }
        if self.watch.is_none() {
            if let Err(e) = self.start_watch().await {
                return self.failed("watch", e);
            }
        }
        self.retry_at = None;
        self.backoff = Duration::from_millis(200);
    }

    fn failed(&mut self, what: &str, e: Error) {
        let e = self.access.explain(e);
        log::warn!(
            "{what} failed ({e}); keeping the dataplane, retrying in {:?}",
            self.backoff
        );
        if matches!(e, Error::Etcd(_) | Error::EtcdAccess(_)) {
            self.telemetry.etcd_errors.inc();
            self.reg = None;
            self.watch = None;
        }
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    async fn registry(&mut self) -> Result<&mut Registry, Error> {
        if self.reg.is_none() {
            let files = self.access.fingerprint();
            self.reg = Some(self.access.connect().await?);
            self.files = files;
        }
        self.reg
            .as_mut()
            .ok_or_else(|| Error::Runtime("no etcd connection".into()))
    }

    async fn full(&mut self, plane: &mut Dataplane) -> Result<(), Error> {
        let started = Instant::now();
        let reg = self.registry().await?;
        let (records, revision) = timeout(CALL_TIMEOUT * 2, reg.list())
            .await
            .map_err(|_| Error::EtcdAccess("listing peers timed out".into()))??;
        reconcile_all(plane, &mut self.table, &self.telemetry, &records, started)?;
        self.revision = revision;
        self.need_full = false;
        Ok(())
    }

    async fn start_watch(&mut self) -> Result<(), Error> {
        let from = self.revision + 1;
        let reg = self.registry().await?;
        let w = timeout(CALL_TIMEOUT * 2, reg.watch(from))
            .await
            .map_err(|_| Error::EtcdAccess("starting the watch timed out".into()))??;
        log::debug!("watching from revision {from}");
        self.watch = Some(w);
        Ok(())
    }

    /// The next watch news, with whatever else arrives within the coalescing window. Pends
    /// forever without a watch; while a retry is pending, wakes at its time with no news.
    pub async fn next(&mut self) -> Wake {
        if let Some(t) = self.retry_at {
            tokio::time::sleep_until(t.into()).await;
            return Wake::default();
        }
        let Some(w) = self.watch.as_mut() else {
            return std::future::pending().await;
        };
        let mut wake = Wake::default();
        match w.message().await {
            Ok(Some(resp)) => wake.news.push(watch_news(&self.prefix, &resp)),
            Ok(None) | Err(_) => {
                wake.lost = true;
                return wake;
            }
        }
        let mut count = wake.news[0].changes.len();
        let deadline = Instant::now() + MAX_COALESCE_DELAY;
        while count < MAX_COALESCED {
            let window = COALESCE_WINDOW.min(deadline.saturating_duration_since(Instant::now()));
            if window.is_zero() {
                break;
            }
            match timeout(window, w.message()).await {
                Err(_) => break,
                Ok(Ok(Some(resp))) => {
                    let news = watch_news(&self.prefix, &resp);
                    count += news.changes.len();
                    wake.news.push(news);
                }
                Ok(Ok(None) | Err(_)) => {
                    wake.lost = true;
                    break;
                }
            }
        }
        wake
    }

    /// Applies what the watch reported. Changes at or before the revision already applied
    /// (the watch catching up after a full list) are skipped; a failed write asks for a full
    /// reconcile; a lost or canceled watch is resumed at the next step.
    pub fn handle(&mut self, plane: &mut Dataplane, wake: Wake) {
        let mut changes = Vec::new();
        let mut revision = self.revision;
        let mut lost = wake.lost;
        for news in wake.news {
            if news.compacted {
                log::warn!("the watch's revision was compacted; listing again");
                self.need_full = true;
            }
            lost |= news.canceled;
            changes.extend(
                news.changes
                    .into_iter()
                    .filter(|(rev, _)| *rev > self.revision)
                    .map(|(_, c)| c),
            );
            revision = revision.max(news.revision.unwrap_or(0));
        }
        let events = changes.len();
        if !apply_changes(
            plane,
            &mut self.table,
            &self.telemetry,
            &changes,
            events,
            "events",
        ) {
            self.need_full = true;
        }
        if !self.need_full {
            self.revision = revision;
        }
        if lost {
            log::info!(
                "the etcd watch ended; resuming from revision {}",
                self.revision + 1
            );
            self.watch = None;
            self.reg = None;
        }
    }
}

/// A full reconcile, the same for every registry: programs exactly the peers of `records`
/// (begun at `started`), records it in the peer table and the telemetry, and logs it.
pub fn reconcile_all(
    plane: &mut Dataplane,
    table: &mut PeerTable,
    telemetry: &Telemetry,
    records: &[(Ipv4Net, NodeRecord)],
    started: Instant,
) -> Result<(), Error> {
    let peers = table.peers_of(records);
    let c = plane.reconcile(&peers)?;
    table.replaced(records, &peers);
    let took = started.elapsed();
    telemetry.full_reconciles.inc();
    telemetry.full_reconcile_seconds.observe(took.as_secs_f64());
    telemetry.peers_programmed.set(peers.v4.len() as i64);
    telemetry.synced();
    // This line's shape is read by vxlan-scale-bench (agent_log.rs): IPv6 entries get a
    // line of their own.
    if !peers.v6.is_empty() {
        log::info!("reconciled {} IPv6 peer entries", peers.v6.len());
    }
    log::info!(
        "full reconcile: {} peers, {} added, {} removed, took {} ms",
        peers.v4.len(),
        c.added,
        c.removed,
        took.as_millis()
    );
    Ok(())
}

/// Applies a batch of watch changes, the same for every registry (the log line says
/// "applied `events` `what`"): the deltas they make to the peer table go to the dataplane and
/// the telemetry.
/// False when the dataplane refused them: the caller then reconciles in full.
pub fn apply_changes(
    plane: &mut Dataplane,
    table: &mut PeerTable,
    telemetry: &Telemetry,
    changes: &[Change],
    events: usize,
    what: &str,
) -> bool {
    if changes.is_empty() {
        return true;
    }
    let deltas = table.deltas(changes);
    match plane.apply(&deltas) {
        Ok(c) => {
            table.applied(&deltas);
            telemetry.events_applied.inc_by(deltas.len() as u64);
            telemetry.peers_programmed.set(table.len() as i64);
            telemetry.synced();
            if !deltas.is_empty() {
                log::info!(
                    "applied {events} {what}: {} added/changed, {} removed",
                    c.added,
                    c.removed
                );
            }
            true
        }
        Err(e) => {
            log::error!(
                "applying {} peer changes failed ({e}); reconciling in full",
                deltas.len()
            );
            false
        }
    }
}
