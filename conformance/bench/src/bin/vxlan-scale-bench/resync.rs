//! Scenario 2: a no-op full resync, watched through the agent's log and `ip monitor`.

use std::collections::BTreeSet;
use std::fs;
use std::time::{Duration, Instant};

use cni_benches::interrupt;
use cni_testkit::netns::Netns;
use cni_testkit::overlay::{Peer, DEVICE};

use crate::agent_log::{log_len, log_since, parse_full_reconcile, FullReconcile};
use crate::args::Sizes;
use crate::bed::Bed;
use crate::cold_start::{cold_start, ColdRun};
use crate::observe::{full_state_exact, proc_sample, FULL_STATE_GRACE};
use crate::COLD_PREFIX;

/// The resync scenario's result.
#[derive(Clone, Debug)]
pub struct ResyncOutcome {
    pub start: ColdRun,
    /// Every `full reconcile` line, the start's first.
    pub lines: Vec<FullReconcile>,
    /// How long each full reconcile took that ran while the kernel was watched (all of them
    /// should be no-ops: nothing changed in etcd).
    pub noop_ms: Vec<f64>,
    /// Full reconciles while watched that were not no-ops over all peers.
    pub not_noop: usize,
    /// Route and neighbour/FDB notifications the kernel sent meanwhile (`ip monitor`): a
    /// no-op resync writes nothing, so there should be none.
    pub kernel_changes: Vec<String>,
    /// Whether the monitor reported its canary (else its silence proves nothing).
    pub monitor_heard: bool,
    /// At least `resyncs` watched reconciles, every one a no-op over all peers, no kernel
    /// change (from a monitor that was listening), and the state still exact afterwards.
    pub correct: bool,
    pub hwm_kib: u64,
    pub rss_kib: u64,
}

/// `ip monitor route neigh` in a node namespace (neighbour and FDB notifications both come
/// through the neighbour group), its output to a file; killed when dropped.
pub struct KernelMonitor {
    pub child: std::process::Child,
    pub out: tempfile::NamedTempFile,
}

/// A neighbour the monitor must report, on the underlay link (never the VXLAN device's): proof
/// that the monitor was listening, so that "no notification" means something.
pub const MONITOR_CANARY: &str = "172.30.0.250";

impl KernelMonitor {
    pub fn start(netns: &Netns) -> KernelMonitor {
        let out = tempfile::Builder::new()
            .prefix("cnit-scale-monitor-")
            .tempfile()
            .expect("create the monitor's output file");
        let child = std::process::Command::new("ip")
            .args(["-n", netns.name(), "monitor", "route", "neigh"])
            .stdin(std::process::Stdio::null())
            .stdout(out.reopen().expect("reopen the monitor's output"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start ip monitor");
        // Let it subscribe, then make the canary appear and go.
        std::thread::sleep(Duration::from_millis(200));
        let mac = "0e:00:00:00:00:fa";
        netns.ip_ok(&[
            "neigh",
            "add",
            MONITOR_CANARY,
            "lladdr",
            mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]);
        netns.ip_ok(&["neigh", "del", MONITOR_CANARY, "dev", "eth0"]);
        KernelMonitor { child, out }
    }

    /// Stops the monitor; returns whether it reported the canary, and the notifications about
    /// the VXLAN device's entries of the kinds the agent writes. The kernel's own routes are
    /// left out: a new link's IPv6 link-local address gets its `local` route (`proto kernel`)
    /// only once duplicate address detection ends, a second or two after the agent brought
    /// the device up.
    pub fn finish(mut self) -> (bool, Vec<String>) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let text = fs::read_to_string(self.out.path()).unwrap_or_default();
        let canary = text.lines().any(|l| l.contains(MONITOR_CANARY));
        // The agent writes IPv4 routes and neighbours and FDB entries with a remote (`dst`);
        // the kernel's own IPv6 traffic on the device (link-local address, MLD reports making
        // `ff02::` multicast neighbours) shows up late under load and is not the agent's.
        let on_device = |l: &&str| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let first = match words.first() {
                Some(&"Deleted") => words.get(1),
                other => other,
            };
            let agents = first.is_some_and(|w| {
                let addr = w.split('/').next().unwrap_or(w);
                addr.parse::<std::net::Ipv4Addr>().is_ok() || words.contains(&"dst")
            });
            words.windows(2).any(|w| w == ["dev", DEVICE]) && !l.contains("proto kernel") && agents
        };
        let lines = text.lines().filter(on_device).map(str::to_owned).collect();
        (canary, lines)
    }
}

impl Drop for KernelMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts an agent with `resyncSeconds` = `sizes.resync_seconds` over `peers` and, once all
/// are programmed, watches the kernel through `sizes.resyncs` full reconciles.
pub fn resync_scenario(bed: &mut Bed, peers: &BTreeSet<Peer>, sizes: &Sizes) -> ResyncOutcome {
    let mut node = bed.node(COLD_PREFIX, sizes.resync_seconds);
    let start = cold_start(&mut node, peers, sizes.timeout);
    let monitor = KernelMonitor::start(node.netns());
    let log_from = log_len(&node);
    let deadline = Instant::now()
        + Duration::from_secs(sizes.resync_seconds * (sizes.resyncs as u64 + 2) + 10);
    let mut watched = Vec::new();
    while Instant::now() < deadline {
        interrupt::check();
        watched = log_since(&node, log_from)
            .lines()
            .filter_map(parse_full_reconcile)
            .collect();
        if watched.len() >= sizes.resyncs {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (monitor_heard, kernel_changes) = monitor.finish();
    let n = peers.len() as u64;
    let noop = |l: &FullReconcile| l.peers == n && l.added == 0 && l.removed == 0;
    let noop_ms: Vec<f64> = watched
        .iter()
        .filter(|l| noop(l))
        .map(|l| l.took_ms)
        .collect();
    let not_noop = watched.len() - noop_ms.len();
    let exact = full_state_exact(&node, peers, FULL_STATE_GRACE);
    let pid = node.agent_pid().expect("agent runs");
    let mem = proc_sample(pid);
    let lines = log_since(&node, 0)
        .lines()
        .filter_map(parse_full_reconcile)
        .collect();
    let status = node.take_agent().terminate();
    assert!(status.success(), "resync agent exited {status}");
    ResyncOutcome {
        correct: start.exact
            && exact
            && watched.len() >= sizes.resyncs
            && not_noop == 0
            && monitor_heard
            && kernel_changes.is_empty(),
        monitor_heard,
        start,
        lines,
        noop_ms,
        not_noop,
        kernel_changes,
        hwm_kib: mem.hwm_kib,
        rss_kib: mem.rss_kib,
    }
}
