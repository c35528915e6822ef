//! The subnet lease, kept on a thread of its own: it takes the lease, renews it every third
//! of its TTL (every second after a failure), claims the subnet again when etcd lets the lease
//! expire, and releases it on stop. No dataplane or watch work shares this thread, so none of
//! it can delay a renewal.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipnet::{Ipv4Net, Ipv6Net};
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::timeout;

use crate::etcd_access::{EtcdAccess, Fingerprint, CALL_TIMEOUT};
use crate::registry::{Lease, NodeRecord, Ranges, Registry};
use crate::telemetry::Telemetry;
use crate::Error;

/// What the lease thread tells the agent.
#[derive(Debug)]
pub enum LeaseEvent {
    /// The node holds this subnet, and its IPv6 one on a dual-stack network (the first
    /// lease, or different subnets after the old ones were lost to another node).
    Leased(Lease),
    /// Leasing cannot succeed (another network config in etcd, no free subnet): the agent
    /// stops.
    Fatal(Error),
}

/// What the lease is for.
#[derive(Clone, Debug)]
pub struct LeaseTerms {
    /// This node's record.
    pub me: NodeRecord,
    /// The subnets to prefer (the last ones held).
    pub preferred: (Option<Ipv4Net>, Option<Ipv6Net>),
    /// The cluster's ranges and subnet lengths.
    pub ranges: Ranges,
    /// Lease TTL in seconds.
    pub ttl: u64,
    /// Revoke the lease on stop.
    pub release_on_exit: bool,
}

/// The running lease thread.
pub struct LeaseKeeper {
    stop: mpsc::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl LeaseKeeper {
    /// Starts the thread; it reports on `events`.
    pub fn spawn(
        access: EtcdAccess,
        terms: LeaseTerms,
        telemetry: Arc<Telemetry>,
        events: UnboundedSender<LeaseEvent>,
    ) -> Result<LeaseKeeper, Error> {
        let rt = crate::agent::current_thread_runtime()?;
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("lease".into())
            .spawn(move || {
                let mut keeper = Keeper {
                    rt,
                    access,
                    terms,
                    telemetry,
                    events,
                    stopped,
                    reg: None,
                    files: Fingerprint::new(),
                };
                keeper.run();
            })
            .map_err(|e| Error::Runtime(format!("cannot start the lease thread: {e}")))?;
        Ok(LeaseKeeper {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread (releasing the lease if so configured) and waits for it: bounded,
    /// since each of its etcd calls is.
    pub fn stop(mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Keeper {
    rt: tokio::runtime::Runtime,
    access: EtcdAccess,
    terms: LeaseTerms,
    telemetry: Arc<Telemetry>,
    events: UnboundedSender<LeaseEvent>,
    stopped: mpsc::Receiver<()>,
    reg: Option<Registry>,
    files: Fingerprint,
}

impl Keeper {
    /// Waits `d`; false when asked to stop (or when the agent is gone).
    fn wait(&self, d: Duration) -> bool {
        matches!(self.stopped.recv_timeout(d), Err(RecvTimeoutError::Timeout))
    }

    /// Connects anew when there is no connection or the TLS files changed.
    fn ensure_registry(&mut self) -> Result<(), Error> {
        let files = self.access.fingerprint();
        if files != self.files {
            if !self.files.is_empty() {
                log::info!("etcd TLS files changed; the lease connection reconnects");
            }
            self.reg = None;
        }
        if self.reg.is_none() {
            self.reg = Some(self.rt.block_on(self.access.connect())?);
            self.files = files;
        }
        Ok(())
    }

    /// One bounded etcd call on the registry; a failure drops the connection so the next
    /// call reconnects.
    fn call<T>(
        &mut self,
        work: impl AsyncFnOnce(&mut Registry) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let result = match (self.ensure_registry(), self.reg.as_mut()) {
            (Ok(()), Some(reg)) => self
                .rt
                .block_on(async { timeout(CALL_TIMEOUT * 2, work(reg)).await })
                .unwrap_or_else(|_| Err(Error::EtcdAccess("etcd call timed out".into()))),
            (Err(e), _) => Err(e),
            (Ok(()), None) => Err(Error::Runtime("no etcd connection".into())),
        };
        if result.is_err() {
            self.telemetry.etcd_errors.inc();
            self.reg = None;
        }
        result.map_err(|e| self.access.explain(e))
    }

    fn acquire(&mut self, preferred: (Option<Ipv4Net>, Option<Ipv6Net>)) -> Result<Lease, Error> {
        let t = self.terms.clone();
        self.call(async |reg| {
            reg.ensure_network_config(&t.ranges).await?;
            reg.acquire(&t.me, preferred, &t.ranges, t.ttl).await
        })
    }

    fn run(&mut self) {
        // Until the first lease there is nothing to keep: retry with backoff.
        let mut backoff = Duration::from_millis(200);
        let mut lease = loop {
            match self.acquire(self.terms.preferred) {
                Ok(l) => break l,
                Err(
                    e @ (Error::Conflict(_) | Error::Exhausted { .. } | Error::Exhausted6 { .. }),
                ) => {
                    let _ = self.events.send(LeaseEvent::Fatal(e));
                    return;
                }
                Err(e) => log::warn!("etcd not ready ({e}); retrying in {backoff:?}"),
            }
            if !self.wait(backoff) {
                return;
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        };
        self.telemetry.set_lease(Some(lease.subnet));
        if self.events.send(LeaseEvent::Leased(lease)).is_err() {
            return;
        }
        let period = Duration::from_secs((self.terms.ttl / 3).max(1));
        let ttl = Duration::from_secs(self.terms.ttl);
        let mut last_ok = Instant::now();
        let mut next = period;
        while self.wait(next) {
            let l = lease;
            match self.call(async |reg| reg.renew(&l).await) {
                Ok(true) => {
                    self.telemetry.lease_renewals.inc();
                    if self.telemetry.lease().is_none() {
                        self.telemetry.set_lease(Some(lease.subnet));
                    }
                    last_ok = Instant::now();
                    next = period;
                }
                Ok(false) => {
                    log::warn!("lease on {} expired; claiming it again", lease.subnet);
                    self.telemetry.set_lease(None);
                    match self.acquire((Some(lease.subnet), lease.ipv6_subnet)) {
                        Ok(new) => {
                            if (new.subnet, new.ipv6_subnet) != (lease.subnet, lease.ipv6_subnet) {
                                // Another node took our subnet while we were away: pods
                                // here keep their addresses only if the agent starts over.
                                log::error!(
                                    "subnet {} was taken by another node; now {}",
                                    lease.subnet,
                                    new.subnet
                                );
                                if self.events.send(LeaseEvent::Leased(new)).is_err() {
                                    return;
                                }
                            }
                            lease = new;
                            self.telemetry.set_lease(Some(lease.subnet));
                            last_ok = Instant::now();
                            next = period;
                        }
                        Err(
                            e @ (Error::Conflict(_)
                            | Error::Exhausted { .. }
                            | Error::Exhausted6 { .. }),
                        ) => {
                            let _ = self.events.send(LeaseEvent::Fatal(e));
                            return;
                        }
                        Err(e) => {
                            log::warn!("claiming {} again failed: {e}", lease.subnet);
                            next = Duration::from_secs(1);
                        }
                    }
                }
                Err(e) => {
                    log::warn!("lease renewal failed ({e}); retrying in 1 s");
                    if last_ok.elapsed() > ttl {
                        // etcd has surely let it expire by now: report it lost.
                        self.telemetry.set_lease(None);
                    }
                    next = Duration::from_secs(1);
                }
            }
        }
        if self.terms.release_on_exit {
            let l = lease;
            match self.call(async |reg| reg.release(&l).await) {
                Ok(()) => log::info!("released {}", lease.subnet),
                Err(e) => log::warn!("cannot release {}: {e}", lease.subnet),
            }
        }
    }
}
