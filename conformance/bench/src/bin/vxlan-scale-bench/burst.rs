//! Scenarios 3 to 5: joins, leaves and churn written to etcd one request each while the
//! device is polled, and what they cost the agent and etcd.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cni_benches::interrupt;
use cni_benches::stats::{json_number, ms};
use cni_testkit::overlay::{subnet_key, OverlayNode, Peer};
use serde_json::{json, Value};

use crate::agent_log::{log_len, log_since, parse_applied};
use crate::bed::{fake_peer, Bed};
use crate::observe::{
    device_routes, full_state_exact, proc_sample, route_set, FULL_STATE_GRACE, POLL_PAUSE,
};

/// How long etcd's Range counter must stay still before a burst's requests are counted: the
/// agent may still be reading after the kernel state converged.
pub const QUIET: Duration = Duration::from_secs(1);

/// A change the bench writes to etcd.
#[derive(Clone, Debug)]
pub enum Op {
    Join(Peer),
    Leave(Peer),
}

/// What one burst of writes cost the agent and how fast the kernel followed.
#[derive(Clone, Debug, Default)]
pub struct BurstOutcome {
    pub ops: usize,
    /// First write sent to last write answered.
    pub write_ms: f64,
    /// Last write answered to the routes being exactly the expected ones (`None`: not
    /// within the timeout).
    pub settle_ms: Option<f64>,
    /// Neighbours, FDB entries and routes exactly the expected peers afterwards.
    pub exact: bool,
    /// etcd holds exactly the expected records, and the agent's own (its lease renewed).
    pub etcd_exact: bool,
    /// Range requests etcd started from the burst's start until the agent was quiet.
    pub range_requests: u64,
    /// The agent's CPU time over the same window.
    pub cpu_ms: f64,
    /// etcd's CPU time over the same window (the bench's writes included).
    pub etcd_cpu_ms: f64,
    /// Batches the agent logged as `applied <E> events...`, and their events.
    pub applied_batches: usize,
    pub applied_events: u64,
    /// Mean time between two reads of the routes.
    pub poll_ms: f64,
    /// (ms since the first write, writes answered, routes present), for the chart.
    pub timeline: Vec<(f64, usize, usize)>,
}

/// What every burst of one scenario shares: the node whose agent runs (started by the
/// caller), the key prefix its agent watches, and the bound on each wait.
#[derive(Clone, Copy)]
pub struct BurstTarget<'a> {
    pub node: &'a OverlayNode,
    pub prefix: &'a str,
    pub timeout: Duration,
}

/// Writes `ops` one request each (at `per_second` if given, else as fast as etcd answers)
/// while polling the device, then waits (bounded) until the routes are exactly `after`.
pub fn burst(
    bed: &mut Bed,
    target: BurstTarget,
    ops: &[Op],
    per_second: Option<f64>,
    after: &BTreeSet<Peer>,
) -> BurstOutcome {
    interrupt::check();
    let BurstTarget {
        node,
        prefix,
        timeout,
    } = target;
    let pid = node
        .agent_pid()
        .expect("the burst's agent is running (started by the caller)");
    let want = route_set(after);
    let log_from = log_len(node);
    let ranges_before = bed.range_requests();
    let cpu_before = proc_sample(pid).cpu;
    let etcd_cpu_before = bed.etcd_cpu();
    let routes_before = device_routes(node.netns()).len();
    let written = AtomicUsize::new(0);
    let t0 = Instant::now();
    let mut out = BurstOutcome {
        ops: ops.len(),
        timeline: vec![(0.0, 0, routes_before)],
        ..BurstOutcome::default()
    };
    let mut polls = 0u32;
    let gw = &mut bed.gw;
    let last_write = std::thread::scope(|s| {
        let mut writer = Some(s.spawn(|| {
            for (k, op) in ops.iter().enumerate() {
                interrupt::check();
                if let Some(rate) = per_second {
                    let due = t0 + Duration::from_secs_f64(k as f64 / rate);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                match op {
                    Op::Join(p) => {
                        gw.put(&subnet_key(prefix, p.subnet), &p.record_json(1));
                    }
                    Op::Leave(p) => {
                        let n = gw.delete(&subnet_key(prefix, p.subnet));
                        assert_eq!(n, 1, "deleting {p:?} removed {n} keys");
                    }
                }
                written.store(k + 1, Ordering::SeqCst);
            }
            Instant::now()
        }));
        let mut last_write = None;
        loop {
            interrupt::check();
            let routes = device_routes(node.netns());
            polls += 1;
            let now = Instant::now();
            out.timeline
                .push((ms(now - t0), written.load(Ordering::SeqCst), routes.len()));
            if let Some(done) = writer.take_if(|w| w.is_finished()) {
                last_write = Some(match done.join() {
                    Ok(t) => t,
                    Err(panic) => std::panic::resume_unwind(panic),
                });
            }
            if let Some(last) = last_write {
                // A read that started before the last write finished may predate it.
                if routes == want && now > last {
                    out.settle_ms = Some(ms(now.saturating_duration_since(last)));
                    break;
                }
                if now.duration_since(last) > timeout {
                    break;
                }
            }
            std::thread::sleep(POLL_PAUSE);
        }
        last_write.expect("the loop ends after the writer")
    });
    out.write_ms = ms(last_write - t0);
    out.poll_ms = ms(t0.elapsed()) / f64::from(polls.max(1));
    out.exact = out.settle_ms.is_some() && full_state_exact(node, after, FULL_STATE_GRACE);
    // The agent may still be reading etcd after the kernel converged (an agent that lists
    // per event drains its backlog): count its requests once the counter stands still.
    let mut ranges = bed.range_requests();
    let quiet_deadline = Instant::now() + timeout;
    let mut still_since = Instant::now();
    while Instant::now() < quiet_deadline && still_since.elapsed() < QUIET {
        interrupt::check();
        std::thread::sleep(Duration::from_millis(100));
        let now = bed.range_requests();
        if now != ranges {
            ranges = now;
            still_since = Instant::now();
        }
    }
    out.range_requests = ranges - ranges_before;
    out.cpu_ms = ms(proc_sample(pid).cpu.saturating_sub(cpu_before));
    out.etcd_cpu_ms = ms(bed.etcd_cpu().saturating_sub(etcd_cpu_before));
    let log = log_since(node, log_from);
    for events in log.lines().filter_map(parse_applied) {
        out.applied_batches += 1;
        out.applied_events += events;
    }
    out.etcd_exact = bed.etcd_holds(prefix, after, node.underlay_ip());
    out
}

pub fn burst_json(b: &BurstOutcome, what: &str) -> Value {
    // The chart needs at most a few hundred points.
    let step = (b.timeline.len() / 400).max(1);
    let timeline: Vec<Value> = b
        .timeline
        .iter()
        .step_by(step)
        .chain(b.timeline.last())
        .map(|(t, w, r)| json!([t, w, r]))
        .collect();
    json!({
        "what": what,
        "writes": b.ops,
        "write_ms": b.write_ms,
        "settle_ms": json_number(b.settle_ms),
        "exact": b.exact,
        "etcd_exact": b.etcd_exact,
        "range_requests": b.range_requests,
        "range_per_write": b.range_requests as f64 / b.ops.max(1) as f64,
        "agent_cpu_ms": b.cpu_ms,
        "agent_cpu_ms_per_1000_events": b.cpu_ms * 1000.0 / b.ops.max(1) as f64,
        "etcd_cpu_ms": b.etcd_cpu_ms,
        "applied_batches": b.applied_batches,
        "applied_events": b.applied_events,
        "poll_ms": b.poll_ms,
        "timeline_ms_written_routes": timeline,
    })
}

/// A pseudo-random sequence (xorshift64*), fixed seed: the same churn every run.
pub struct Shuffle(u64);

impl Shuffle {
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as usize % n
    }
}

/// The churn's writes: every second, `per_second` peers of `current` deleted and as many new
/// ones (numbered from `next`) added, alternating; updates `current` and `next`.
pub fn churn_ops(
    current: &mut BTreeSet<Peer>,
    next: &mut usize,
    per_second: usize,
    seconds: usize,
) -> Vec<Op> {
    let mut rng = Shuffle(0x05ca_1ab1_e0dd_c0de);
    let mut members: Vec<Peer> = current.iter().cloned().collect();
    let mut ops = Vec::with_capacity(2 * per_second * seconds);
    for _ in 0..seconds * per_second {
        let gone = members.swap_remove(rng.below(members.len()));
        let new = fake_peer(*next);
        *next += 1;
        ops.push(Op::Leave(gone));
        ops.push(Op::Join(new.clone()));
        members.push(new);
    }
    *current = members.into_iter().collect();
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_replaces_the_share_asked_for() {
        let mut current: BTreeSet<Peer> = (0..100).map(fake_peer).collect();
        let before = current.clone();
        let mut next = 100;
        let ops = churn_ops(&mut current, &mut next, 10, 3);
        assert_eq!(ops.len(), 60);
        assert_eq!(current.len(), 100);
        assert_eq!(next, 130);
        let added = current.difference(&before).count();
        assert!(added > 0 && added <= 30, "{added}");
    }
}
