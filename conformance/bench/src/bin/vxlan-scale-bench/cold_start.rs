//! Scenario 1: a cold start, from starting the agent to every peer's route present.

use std::collections::BTreeSet;
use std::time::Duration;

use cni_benches::interrupt;
use cni_benches::stats::{json_number, ms};
use cni_testkit::overlay::{OverlayNode, Peer};
use serde_json::{json, Value};

use crate::observe::{
    device_routes, full_state_exact, proc_sample, route_set, FULL_STATE_GRACE, POLL_PAUSE,
};

/// One cold start.
#[derive(Clone, Debug)]
pub struct ColdRun {
    pub peers: usize,
    /// Agent start to subnet.env written.
    pub lease_ms: f64,
    /// Agent start to every peer's route present (`None`: not within the timeout).
    pub programmed_ms: Option<f64>,
    /// Neighbours, FDB entries and routes exactly the peers (checked after the routes).
    pub exact: bool,
    /// The agent's CPU time until then.
    pub cpu_ms: f64,
    pub hwm_kib: u64,
    /// Mean time between two reads of the routes: the resolution.
    pub poll_ms: f64,
    /// (ms since start, routes present), for the chart.
    pub timeline: Vec<(f64, usize)>,
}

/// Starts the agent of `node` with `peers` in etcd and times it until all are programmed.
/// Leaves the agent running.
pub fn cold_start(node: &mut OverlayNode, peers: &BTreeSet<Peer>, timeout: Duration) -> ColdRun {
    interrupt::check();
    let want = route_set(peers);
    node.start_agent();
    let agent = node.agent_mut().expect("agent runs");
    let (t0, pid) = (agent.started(), agent.pid());
    let mut lease = None;
    let mut programmed = None;
    let mut timeline = Vec::new();
    let mut polls = 0u32;
    while programmed.is_none() && t0.elapsed() < timeout {
        interrupt::check();
        if let Some(status) = node.agent_mut().and_then(|a| a.exited()) {
            panic!("agent exited ({status}):\n{}", node.diagnostics());
        }
        if lease.is_none() && node.subnet_env().is_some() {
            lease = Some(ms(t0.elapsed()));
        }
        let routes = device_routes(node.netns());
        polls += 1;
        let t = ms(t0.elapsed());
        timeline.push((t, routes.len()));
        if routes == want {
            programmed = Some(t);
        } else {
            std::thread::sleep(POLL_PAUSE);
        }
    }
    let cpu_ms = ms(proc_sample(pid).cpu);
    let exact = programmed.is_some() && full_state_exact(node, peers, FULL_STATE_GRACE);
    ColdRun {
        peers: peers.len(),
        lease_ms: lease.unwrap_or(f64::NAN),
        programmed_ms: programmed,
        exact,
        cpu_ms,
        hwm_kib: proc_sample(pid).hwm_kib,
        poll_ms: ms(t0.elapsed()) / f64::from(polls.max(1)),
        timeline,
    }
}

pub fn cold_json(r: &ColdRun) -> Value {
    json!({
        "peers": r.peers,
        "lease_ms": json_number(Some(r.lease_ms)),
        "programmed_ms": json_number(r.programmed_ms),
        "exact": r.exact,
        "cpu_ms": r.cpu_ms,
        "peak_rss_kib": r.hwm_kib,
        "poll_ms": r.poll_ms,
    })
}
