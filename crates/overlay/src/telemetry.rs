//! What the agent reports about itself: the counters and gauges it updates as it works, in
//! Prometheus' text format, and the health verdict `/healthz` gives.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The agent's metrics and health, shared between the agent's threads and the metrics server.
pub struct Telemetry {
    registry: Registry,
    /// Peers whose neighbour, FDB entry and route are programmed.
    pub peers_programmed: Gauge,
    /// Watch events applied to the dataplane (after coalescing, one per peer change).
    pub events_applied: Counter,
    /// Full list-and-reconcile passes.
    pub full_reconciles: Counter,
    /// How long each full reconcile took (list, dump, diff and writes).
    pub full_reconcile_seconds: Histogram,
    /// Failed or timed-out etcd calls.
    pub etcd_errors: Counter,
    /// Successful lease renewals.
    pub lease_renewals: Counter,
    seconds_since_sync: Gauge<f64, std::sync::atomic::AtomicU64>,
    subnet_leased: Family<Vec<(String, String)>, Gauge>,
    lease_held: AtomicBool,
    subnet: Mutex<Option<Ipv4Net>>,
    last_sync: Mutex<Option<Instant>>,
    started: Instant,
    syncs: AtomicU64,
    resync: Duration,
}

impl Telemetry {
    /// Metrics for an agent that resyncs every `resync`.
    pub fn new(resync: Duration) -> Telemetry {
        let mut registry = Registry::with_prefix("vxlan_overlay");
        let t = Telemetry {
            peers_programmed: Gauge::default(),
            events_applied: Counter::default(),
            full_reconciles: Counter::default(),
            full_reconcile_seconds: Histogram::new([
                0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            etcd_errors: Counter::default(),
            lease_renewals: Counter::default(),
            seconds_since_sync: Gauge::default(),
            subnet_leased: Family::default(),
            lease_held: AtomicBool::new(false),
            subnet: Mutex::new(None),
            last_sync: Mutex::new(None),
            started: Instant::now(),
            syncs: AtomicU64::new(0),
            resync,
            registry: Registry::default(),
        };
        registry.register(
            "peers_programmed",
            "Peers whose neighbour, FDB entry and route are programmed",
            t.peers_programmed.clone(),
        );
        registry.register(
            "events_applied",
            "Peer changes from the etcd watch applied to the dataplane",
            t.events_applied.clone(),
        );
        registry.register(
            "full_reconciles",
            "Full list-and-reconcile passes (start, resync, lost watch)",
            t.full_reconciles.clone(),
        );
        registry.register(
            "full_reconcile_duration_seconds",
            "Duration of full reconciles",
            t.full_reconcile_seconds.clone(),
        );
        registry.register(
            "etcd_errors",
            "Failed or timed-out etcd calls",
            t.etcd_errors.clone(),
        );
        registry.register(
            "lease_renewals",
            "Successful renewals of the subnet lease",
            t.lease_renewals.clone(),
        );
        registry.register(
            "seconds_since_last_sync",
            "Seconds since the dataplane last matched etcd (a full reconcile or an applied batch of events)",
            t.seconds_since_sync.clone(),
        );
        registry.register(
            "subnet_leased",
            "1 for the subnet this node holds, with the subnet as label",
            t.subnet_leased.clone(),
        );
        Telemetry { registry, ..t }
    }

    /// Records that the node holds `subnet` (None: the lease is lost).
    pub fn set_lease(&self, subnet: Option<Ipv4Net>) {
        let mut current = self.subnet.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = *current {
            self.subnet_leased
                .get_or_create(&vec![("subnet".into(), old.to_string())])
                .set(0);
        }
        if let Some(new) = subnet {
            self.subnet_leased
                .get_or_create(&vec![("subnet".into(), new.to_string())])
                .set(1);
        }
        *current = subnet;
        self.lease_held.store(subnet.is_some(), Ordering::Relaxed);
    }

    /// The subnet held, if any.
    pub fn lease(&self) -> Option<Ipv4Net> {
        *self.subnet.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that the dataplane matched etcd just now.
    pub fn synced(&self) {
        *self.last_sync.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.syncs.fetch_add(1, Ordering::Relaxed);
    }

    /// Time since the last sync (since the start when there was none).
    pub fn since_sync(&self) -> Duration {
        self.last_sync
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or(self.started)
            .elapsed()
    }

    /// Healthy while the lease is held and a sync succeeded within 3 × resyncSeconds; the
    /// reason otherwise.
    pub fn health(&self) -> Result<(), String> {
        if !self.lease_held.load(Ordering::Relaxed) {
            return Err("no subnet lease held".into());
        }
        let since = self.since_sync();
        let limit = self.resync * 3;
        if since > limit {
            return Err(format!(
                "no successful sync for {:.0} s (limit 3 x resyncSeconds = {} s)",
                since.as_secs_f64(),
                limit.as_secs()
            ));
        }
        Ok(())
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        self.seconds_since_sync.set(self.since_sync().as_secs_f64());
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_follows_the_lease_and_the_last_sync() {
        let t = Telemetry::new(Duration::from_secs(30));
        assert!(t.health().unwrap_err().contains("lease"));
        t.set_lease(Some("10.244.3.0/24".parse().unwrap()));
        t.synced();
        assert_eq!(t.health(), Ok(()));
        let text = t.render();
        assert!(
            text.contains(r#"vxlan_overlay_subnet_leased{subnet="10.244.3.0/24"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("vxlan_overlay_seconds_since_last_sync"),
            "{text}"
        );
        t.set_lease(None);
        assert!(t.health().is_err());
        let stale = Telemetry::new(Duration::from_millis(1));
        stale.set_lease(Some("10.244.4.0/24".parse().unwrap()));
        std::thread::sleep(Duration::from_millis(10));
        assert!(stale.health().unwrap_err().contains("no successful sync"));
    }
}
