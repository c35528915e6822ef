//! The vxlan-overlay agent's `metricsAddress` endpoint, black-box: a two-node overlay (etcd
//! and agents from `cni_testkit::overlay`) whose agents serve `/metrics` and `/healthz`
//! in their node namespaces, read with curl from inside them. Judged: every metric the README
//! names is there with values that match the node (its peers, its subnet, renewals going up),
//! and `/healthz` turns 503 with a reason once etcd is gone and 200 again when it is back.
//!
//! Run as root, after `cargo build --release -p vxlan-overlay`:
//! ```text
//! cargo test --release -p cni-testkit --test vxlan_overlay_metrics
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use cni_testkit::http::{self, Reply};
use cni_testkit::overlay::OverlayCluster;
use cni_testkit::{eventually, require_root};
use serde_json::json;

/// `leaseTTL`: short, so a lost lease shows within seconds.
const LEASE_TTL: u64 = 6;
/// `resyncSeconds`: /healthz fails after 3 of them without a sync.
const RESYNC: u64 = 1;
/// Slack on the agent's own bounds: curl's start, scheduling on a busy 2-core machine.
const GRACE: Duration = Duration::from_secs(3);
/// Every node's metricsAddress (each node is its own namespace, so they share it).
const METRICS: &str = "127.0.0.1:9472";

fn metrics_addr() -> SocketAddr {
    METRICS.parse().expect("a socket address")
}

/// The value of the unlabelled sample `name` (or `name{labels}` written out) in `text`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (n, rest) = l.split_once(' ')?;
        if n != name {
            return None;
        }
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn get(c: &OverlayCluster, node: usize, path: &str) -> Result<Reply, String> {
    http::get(c.nodes[node].netns(), metrics_addr(), path)
}

#[test]
fn agent_serves_every_metric_and_healthz_follows_etcd() {
    require_root();
    let mut c =
        OverlayCluster::start_with(2, LEASE_TTL, RESYNC, &json!({"metricsAddress": METRICS}));
    c.wait_converged(&[0, 1], Duration::from_secs(20), "two nodes");
    let subnet = c.nodes[0].subnet_env().expect("leased").node_subnet();

    let m = get(&c, 0, "/metrics").unwrap_or_else(|e| panic!("{e}\n{}", c.diagnostics()));
    assert_eq!(m.status, 200, "{m:?}");
    assert_eq!(
        m.content_type, "application/openmetrics-text; version=1.0.0; charset=utf-8",
        "{m:?}"
    );
    let text = &m.body;
    for name in [
        "vxlan_overlay_peers_programmed",
        "vxlan_overlay_events_applied_total",
        "vxlan_overlay_full_reconciles_total",
        "vxlan_overlay_full_reconcile_duration_seconds_count",
        "vxlan_overlay_full_reconcile_duration_seconds_sum",
        "vxlan_overlay_etcd_errors_total",
        "vxlan_overlay_lease_renewals_total",
        "vxlan_overlay_seconds_since_last_sync",
    ] {
        assert!(
            sample(text, name).is_some(),
            "/metrics lacks {name}:\n{text}"
        );
    }
    assert!(
        text.contains("vxlan_overlay_full_reconcile_duration_seconds_bucket{le="),
        "the reconcile duration is a histogram:\n{text}"
    );
    let leased = format!("vxlan_overlay_subnet_leased{{subnet=\"{subnet}\"}}");
    assert_eq!(sample(text, &leased), Some(1.0), "{leased}:\n{text}");
    assert_eq!(
        sample(text, "vxlan_overlay_peers_programmed"),
        Some(1.0),
        "one other node:\n{text}"
    );
    assert!(
        sample(text, "vxlan_overlay_full_reconciles_total").is_some_and(|n| n >= 1.0),
        "the start's reconcile at least:\n{text}"
    );
    assert!(
        sample(text, "vxlan_overlay_seconds_since_last_sync")
            .is_some_and(|s| s <= (3 * RESYNC) as f64),
        "a resync every {RESYNC} s:\n{text}"
    );
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics ends with # EOF:\n{text}"
    );
    // Renewals every leaseTTL/3 and resyncs every second: both counters move.
    let renewals = sample(text, "vxlan_overlay_lease_renewals_total").unwrap_or(0.0);
    let reconciles = sample(text, "vxlan_overlay_full_reconciles_total").unwrap_or(0.0);
    let moved = eventually(Duration::from_secs(LEASE_TTL) + GRACE, || {
        get(&c, 0, "/metrics").is_ok_and(|m| {
            sample(&m.body, "vxlan_overlay_lease_renewals_total").is_some_and(|n| n > renewals)
                && sample(&m.body, "vxlan_overlay_full_reconciles_total")
                    .is_some_and(|n| n > reconciles)
        })
    });
    assert!(
        moved,
        "renewals and reconciles did not go up:\n{}",
        c.diagnostics()
    );

    let h = get(&c, 0, "/healthz").expect("healthz");
    assert_eq!((h.status, h.body.trim()), (200, "ok"), "{h:?}");
    assert_eq!(get(&c, 0, "/nope").map(|r| r.status), Ok(404));

    // etcd killed: no renewal, no sync. /healthz turns 503 within 3 x resyncSeconds (or at the
    // lease's loss, within leaseTTL), naming why; the etcd errors are counted.
    c.etcd.kill();
    let bound = Duration::from_secs(LEASE_TTL.max(3 * RESYNC)) + GRACE;
    let failing = eventually(bound, || {
        get(&c, 0, "/healthz").is_ok_and(|r| r.status == 503)
    });
    assert!(
        failing,
        "/healthz still 200 {bound:?} after etcd went away:\n{}",
        c.diagnostics()
    );
    let h = get(&c, 0, "/healthz").expect("healthz");
    assert!(
        h.body.contains("lease") || h.body.contains("sync"),
        "503 names the lease or the sync: {h:?}"
    );
    let m = get(&c, 0, "/metrics").expect("metrics while unhealthy");
    assert!(
        sample(&m.body, "vxlan_overlay_etcd_errors_total").is_some_and(|n| n >= 1.0),
        "etcd errors counted:\n{}",
        m.body
    );
    assert!(
        sample(&m.body, "vxlan_overlay_seconds_since_last_sync")
            .is_some_and(|s| s > (3 * RESYNC) as f64),
        "the last sync ages:\n{}",
        m.body
    );
    // The agent keeps serving and the other node's agent too.
    assert_eq!(get(&c, 1, "/healthz").map(|r| r.status), Ok(503));

    // etcd back: renewals and syncs resume, /healthz is 200 again.
    c.etcd.start_again();
    let healthy = eventually(Duration::from_secs(2 * LEASE_TTL) + GRACE, || {
        (0..2).all(|n| get(&c, n, "/healthz").is_ok_and(|r| r.status == 200))
    });
    assert!(
        healthy,
        "/healthz did not recover after etcd came back: {:?}\n{}",
        get(&c, 0, "/healthz"),
        c.diagnostics()
    );
}

#[test]
fn without_metrics_address_nothing_listens() {
    require_root();
    let c = OverlayCluster::start(1, LEASE_TTL, RESYNC);
    let r = get(&c, 0, "/healthz");
    assert!(
        r.is_err(),
        "metricsAddress unset, yet {METRICS} answers: {r:?}"
    );
}
