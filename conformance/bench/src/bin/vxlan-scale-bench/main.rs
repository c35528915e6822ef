//! `vxlan-scale-bench`: one real vxlan-overlay agent against a real etcd holding thousands of
//! fake node records, timed by what the kernel holds.
//!
//! One node namespace on a test underlay runs the release agent (`vxlan-overlay agent`);
//! etcd (Debian's 3.4) runs on that underlay with its data on a tmpfs, so the bench measures
//! etcd's and the agent's work rather than fsyncs. The bench writes fake node records in
//! flannel's format (subnets of 10.0.0.0/8, underlay addresses in 198.18.0.0/15 that exist
//! nowhere: only the VXLAN device's routes, neighbours and FDB entries are measured) through
//! etcd's JSON gateway, each join or leave its own request and so its own etcd revision.
//!
//! Scenarios, each checked for the exact peer set at its end:
//! 1. cold start: time from starting the agent to every peer's route present (then the full
//!    neighbour/FDB/route set checked), at several sizes;
//! 2. a no-op full resync: an agent with a short `resyncSeconds`, its log lines
//!    `full reconcile: <N> peers, <A> added, <R> removed, took <ms> ms`, and `ip monitor` on
//!    the node showing that those reconciles wrote nothing; peak RSS (VmHWM);
//! 3. joins one by one: delay from the last write to all routes present, the agent's etcd
//!    `Range` requests during the burst (etcd's own `grpc_server_started_total`; the bench only
//!    writes), the agent's CPU time;
//! 4. leaves one by one: delay from the last delete to their routes gone;
//! 5. churn: a share of the peers replaced every second; the exact peer set at the end.
//!
//! Run as root after `cargo build --release -p vxlan-overlay -p cni-benches`. Writes
//! `vxlan-scale.md`, `vxlan-scale.json` and `vxlan-scale.svg` to `--out` and prints the
//! markdown; exits 1 if any correctness check failed (a missed timing target does not). Every
//! wait is bounded; everything is torn down at the end, on failure and on Ctrl-C.
//!
//! This file runs the scenarios in order and gathers the JSON; the parts live beside it:
//! `args` (the command line), `bed` (underlay, etcd on a tmpfs, nodes, fake peers),
//! `observe` (what the kernel and /proc say), `agent_log`, one file per phase (`cold_start`,
//! `resync`, `burst` for joins, leaves and churn), then `table` (the markdown) and `chart`.

mod agent_log;
mod args;
mod bed;
mod burst;
mod chart;
mod cold_start;
mod observe;
mod resync;
mod table;

use std::collections::BTreeSet;

use cni_benches::frame::Bench;
use cni_benches::report;
use cni_benches::stats::{json_number, median, min_max};
use cni_testkit::overlay::Peer;
use cni_testkit::scenarios::CNITOOL_SPEC_VERSION;
use serde_json::{json, Value};

use crate::args::Args;
use crate::bed::{fake_peer, set_records, Bed};
use crate::burst::{burst, burst_json, churn_ops, BurstTarget, Op};
use crate::cold_start::{cold_json, cold_start, ColdRun};
use crate::observe::{full_state_exact, proc_sample};
use crate::resync::resync_scenario;

/// Key prefixes: cold starts and the resync share one, the bursts have their own.
pub const COLD_PREFIX: &str = "/scale/cold";
const BURST_PREFIX: &str = "/scale/burst";
/// The agents' resyncSeconds outside the resync scenario: the plugin's default.
const DEFAULT_RESYNC: u64 = 30;

fn main() {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vxlan-scale-bench: {e}");
            std::process::exit(2);
        }
    };
    let bench = Bench {
        name: "vxlan-scale-bench",
        // The conflists it writes for the agent are at cnitool's spec version.
        spec_version: CNITOOL_SPEC_VERSION,
        out: &args.out,
        stem: "vxlan-scale",
        markdown: table::markdown,
        chart: Some(chart::chart),
    };
    let Some(doc) = bench.main(args.version, || run(&args)) else {
        return;
    };
    if doc["correct"] != json!(true) {
        eprintln!("vxlan-scale-bench: a correctness check failed (see \"correct\" in the JSON)");
        std::process::exit(1);
    }
}

/// The agent binary's `--version` line (which agent was measured).
fn agent_version() -> String {
    let bin = cni_testkit::plugin::plugin_binary(cni_testkit::overlay::AGENT);
    std::process::Command::new(&bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|t| t.lines().next().map(str::to_owned))
        .unwrap_or_else(|| format!("{} (no --version)", bin.display()))
}

fn run(args: &Args) -> Value {
    let s = &args.sizes;
    eprintln!("vxlan-scale-bench: etcd (data on a tmpfs) on a test underlay");
    let mut bed = Bed::new(s.lease_ttl);
    eprintln!("  etcd data in {} (tmpfs)", bed.etcd.data_dir().display());
    assert!(bed.etcd.data_dir().starts_with(bed.tmpfs.path()));

    // 1. Cold starts, the sizes ascending, records added between them.
    let mut cold_peers: BTreeSet<Peer> = BTreeSet::new();
    let mut cold: Vec<ColdRun> = Vec::new();
    for &size in &s.cold_sizes {
        let want: BTreeSet<Peer> = (0..size).map(fake_peer).collect();
        set_records(&mut bed, COLD_PREFIX, &cold_peers, &want);
        cold_peers = want;
        for run in 0..s.cold_runs {
            let mut node = bed.node(COLD_PREFIX, DEFAULT_RESYNC);
            let r = cold_start(&mut node, &cold_peers, s.timeout);
            eprintln!(
                "  cold start {size} peers, run {}: lease {:.0} ms, all programmed {} (exact: {})",
                run + 1,
                r.lease_ms,
                r.programmed_ms
                    .map_or("not within the timeout".into(), |t| format!("{t:.0} ms")),
                r.exact
            );
            let status = node.take_agent().terminate();
            assert!(status.success(), "cold-start agent exited {status}");
            cold.push(r);
        }
    }

    // 2. A no-op resync (and peak RSS) at resync_peers.
    let want: BTreeSet<Peer> = (0..s.resync_peers).map(fake_peer).collect();
    set_records(&mut bed, COLD_PREFIX, &cold_peers, &want);
    eprintln!(
        "  resync: {} peers, resyncSeconds {}",
        want.len(),
        s.resync_seconds
    );
    let resync = resync_scenario(&mut bed, &want, s);
    eprintln!(
        "  resync: {} full reconcile lines, no-op ones took {:?} ms; peak RSS {} KiB",
        resync.lines.len(),
        resync.noop_ms,
        resync.hwm_kib
    );

    // 3-5. One agent through joins, leaves and churn.
    let mut current: BTreeSet<Peer> = (0..s.join_base).map(fake_peer).collect();
    let mut next = s.join_base;
    bed.put_peers(BURST_PREFIX, &current);
    let mut node = bed.node(BURST_PREFIX, DEFAULT_RESYNC);
    let base = cold_start(&mut node, &current, s.timeout);
    eprintln!(
        "  burst agent: {} peers programmed in {:?} ms",
        current.len(),
        base.programmed_ms
    );

    let target = BurstTarget {
        node: &node,
        prefix: BURST_PREFIX,
        timeout: s.timeout,
    };
    let joining: Vec<Peer> = (next..next + s.joins).map(fake_peer).collect();
    next += s.joins;
    current.extend(joining.iter().cloned());
    let ops: Vec<Op> = joining.iter().cloned().map(Op::Join).collect();
    let join = burst(&mut bed, target, &ops, None, &current);
    eprintln!(
        "  {} joins written in {:.0} ms; routes complete {:?} ms after the last; {} Range requests",
        s.joins, join.write_ms, join.settle_ms, join.range_requests
    );

    // The most recent peers leave (the joined ones first).
    let leaving: Vec<Peer> = current.iter().rev().take(s.leaves).cloned().collect();
    for p in &leaving {
        current.remove(p);
    }
    let ops: Vec<Op> = leaving.iter().cloned().map(Op::Leave).collect();
    let leave = burst(&mut bed, target, &ops, None, &current);
    eprintln!(
        "  {} leaves written in {:.0} ms; routes gone {:?} ms after the last",
        s.leaves, leave.write_ms, leave.settle_ms
    );

    // Churn at churn_peers: top up (or trim), let the agent catch up, then churn.
    let mut want: BTreeSet<Peer> = current.iter().take(s.churn_peers).cloned().collect();
    while want.len() < s.churn_peers {
        want.insert(fake_peer(next));
        next += 1;
    }
    set_records(&mut bed, BURST_PREFIX, &current, &want);
    current = want;
    let churn_ready = full_state_exact(&node, &current, s.timeout);
    let per_second = s.churn_peers * s.churn_percent / 100;
    let ops = churn_ops(&mut current, &mut next, per_second, s.churn_seconds);
    eprintln!(
        "  churn: {} peers, {per_second} replaced per second for {} s ({} writes)",
        s.churn_peers,
        s.churn_seconds,
        ops.len()
    );
    let churn = burst(
        &mut bed,
        target,
        &ops,
        Some(2.0 * per_second as f64),
        &current,
    );
    eprintln!(
        "  churn written in {:.0} ms; exact set {:?} ms after the last write",
        churn.write_ms, churn.settle_ms
    );
    let burst_mem = proc_sample(node.agent_pid().expect("agent runs"));
    let status = node.take_agent().terminate();
    assert!(status.success(), "burst agent exited {status}");

    let largest = *s.cold_sizes.last().expect("sizes checked non-empty");
    let by_size: Vec<Value> = s
        .cold_sizes
        .iter()
        .map(|&size| {
            let runs: Vec<&ColdRun> = cold.iter().filter(|r| r.peers == size).collect();
            let t: Vec<f64> = runs
                .iter()
                .map(|r| r.programmed_ms.unwrap_or(f64::NAN))
                .collect();
            let (lo, hi) = min_max(&t);
            json!({
                "peers": size,
                "runs": runs.iter().map(|r| cold_json(r)).collect::<Vec<_>>(),
                "programmed_median_ms": json_number(Some(median(&t))),
                "programmed_min_ms": json_number(Some(lo)),
                "programmed_max_ms": json_number(Some(hi)),
                "all_programmed": runs.iter().all(|r| r.programmed_ms.is_some()),
                "lease_median_ms": json_number(Some(median(&runs.iter().map(|r| r.lease_ms).collect::<Vec<_>>()))),
                "cpu_median_ms": median(&runs.iter().map(|r| r.cpu_ms).collect::<Vec<_>>()),
                "peak_rss_max_kib": runs.iter().map(|r| r.hwm_kib).max().unwrap_or(0),
                "timeline_first_run": runs.first().map(|r| {
                    let step = (r.timeline.len() / 200).max(1);
                    r.timeline.iter().step_by(step).map(|(t, n)| json!([t, n])).collect::<Vec<_>>()
                }),
            })
        })
        .collect();
    let checks = json!({
        "cold_starts_exact": cold.iter().all(|r| r.exact),
        "resync_noop_and_exact": resync.correct,
        "burst_agent_start_exact": base.exact,
        "joins_exact": join.exact && join.etcd_exact,
        "leaves_exact": leave.exact && leave.etcd_exact,
        "churn_start_exact": churn_ready,
        "churn_exact": churn.exact && churn.etcd_exact,
    });
    let correct = checks
        .as_object()
        .is_some_and(|m| m.values().all(|v| v == &json!(true)));
    let total_events = join.ops + leave.ops + churn.ops;
    let total_cpu = join.cpu_ms + leave.cpu_ms + churn.cpu_ms;
    json!({
        "kernel": report::kernel_release(),
        "cpus": report::cpus(),
        "agent": agent_version(),
        "small": args.small,
        "command": std::iter::once("vxlan-scale-bench".to_owned())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
        "sizes": {
            "cold_sizes": s.cold_sizes, "cold_runs": s.cold_runs,
            "resync_peers": s.resync_peers, "resync_seconds": s.resync_seconds, "resyncs": s.resyncs,
            "join_base": s.join_base, "joins": s.joins, "leaves": s.leaves,
            "churn_peers": s.churn_peers, "churn_percent": s.churn_percent,
            "churn_seconds": s.churn_seconds, "lease_ttl": s.lease_ttl,
            "timeout_s": s.timeout.as_secs(),
        },
        "cold_start": {
            "largest": largest,
            "by_size": by_size,
        },
        "resync": {
            "peers": s.resync_peers,
            "resync_seconds": s.resync_seconds,
            "start": cold_json(&resync.start),
            "full_reconcile_lines": resync.lines.iter().map(|l| json!({
                "peers": l.peers, "added": l.added, "removed": l.removed, "took_ms": l.took_ms,
            })).collect::<Vec<_>>(),
            "noop_ms": resync.noop_ms,
            "not_noop": resync.not_noop,
            "kernel_changes": resync.kernel_changes.len(),
            "monitor_heard_canary": resync.monitor_heard,
            "kernel_changes_first": resync.kernel_changes.iter().take(10).collect::<Vec<_>>(),
            "noop_median_ms": json_number(Some(median(&resync.noop_ms))),
            "noop_max_ms": json_number(Some(min_max(&resync.noop_ms).1)),
            "peak_rss_kib": resync.hwm_kib,
            "rss_kib": resync.rss_kib,
            "correct": resync.correct,
        },
        "burst_agent": {
            "start": cold_json(&base),
            "peak_rss_kib": burst_mem.hwm_kib,
        },
        "join": burst_json(&join, &format!("{} joins onto {}", s.joins, s.join_base)),
        "leave": burst_json(&leave, &format!("{} leaves from {}", s.leaves, s.join_base + s.joins)),
        "churn": burst_json(&churn, &format!(
            "{} peers, {per_second} replaced per second for {} s", s.churn_peers, s.churn_seconds)),
        "agent_cpu_ms_per_1000_events": total_cpu * 1000.0 / total_events.max(1) as f64,
        "checks": checks,
        "correct": correct,
    })
}
