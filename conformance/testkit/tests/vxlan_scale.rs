//! The vxlan-overlay scale benchmark at CI size: `vxlan-scale-bench --small` (one real agent,
//! a real etcd on a tmpfs, 2,000 fake peers at the cold start, 100 joins and 100 leaves one
//! by one, 500 peers churned at 10 % a second for 5 s, no-op resyncs at 2,000 peers) must end
//! in time with the exact peer set after every scenario (kernel and etcd, the agent's own
//! record still there at leaseTTL 6 s), resyncs that write nothing to the kernel, and
//! well-formed output files. Timings are not judged here: on a shared 2-core machine they are
//! the benchmark's business (README).
//!
//! Run as root after `cargo build --release -p vxlan-overlay -p cni-benches` (the bench is
//! another package's binary, found next to the plugins).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cni_testkit::plugin::plugin_binary;
use cni_testkit::require_root;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// The whole run's bound: about 15 s here with the incremental agent; a hung agent or etcd
/// must fail the test, not stall CI.
const RUN_BOUND: Duration = Duration::from_secs(150);
/// After Ctrl-C the bench tears everything down (agents, etcd, namespaces, the tmpfs).
const CLEANUP_BOUND: Duration = Duration::from_secs(30);

#[test]
fn small_scale_bench_keeps_exact_peer_sets() {
    require_root();
    let out = tempfile::Builder::new()
        .prefix("cnit-scale-out-")
        .tempdir()
        .expect("create the output directory");
    let log = out.path().join("bench.log");
    let log_file = std::fs::File::create(&log).expect("create the bench log");
    let mut child = Command::new(plugin_binary("vxlan-scale-bench"))
        // Each wait for convergence bounded well inside RUN_BOUND.
        .args(["--small", "--timeout", "20", "--out"])
        .arg(out.path())
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("duplicate a file handle"))
        .stderr(log_file)
        .spawn()
        .expect("start vxlan-scale-bench");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the bench") {
            break status;
        }
        if started.elapsed() > RUN_BOUND {
            // SIGINT: the bench unwinds through its guards; SIGKILL only if that hangs too.
            let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
            let _ = kill(pid, Signal::SIGINT);
            let deadline = Instant::now() + CLEANUP_BOUND;
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "vxlan-scale-bench --small did not finish within {RUN_BOUND:?}:\n{}",
                read(&log)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let took = started.elapsed();
    let text = read(&log);
    assert!(
        status.success(),
        "vxlan-scale-bench --small exited {status} after {took:?} (1 = a peer set was wrong):\n{text}"
    );
    eprintln!("vxlan-scale-bench --small took {took:?}");

    let doc: Value = serde_json::from_str(&read(&out.path().join("vxlan-scale.json")))
        .expect("vxlan-scale.json is JSON");
    // Every correctness check, by name, so a check dropped from the bench fails here.
    for check in [
        "cold_starts_exact",
        "resync_noop_and_exact",
        "burst_agent_start_exact",
        "joins_exact",
        "leaves_exact",
        "churn_start_exact",
        "churn_exact",
    ] {
        assert_eq!(
            doc["checks"][check],
            Value::Bool(true),
            "{check} failed: {}",
            doc["checks"]
        );
    }
    assert_eq!(doc["correct"], Value::Bool(true));

    // The runs were the CI sizes, and each scenario did all its writes and converged.
    let sizes = &doc["sizes"];
    assert_eq!(sizes["cold_sizes"], serde_json::json!([1000, 2000]));
    assert_eq!(sizes["joins"], 100);
    assert_eq!(sizes["leaves"], 100);
    assert_eq!(sizes["churn_peers"], 500);
    for (scenario, writes) in [("join", 100), ("leave", 100), ("churn", 500)] {
        let s = &doc[scenario];
        assert_eq!(s["writes"], writes, "{scenario}: {s}");
        assert!(
            s["settle_ms"].is_number(),
            "{scenario} did not converge: {s}"
        );
    }
    for size in doc["cold_start"]["by_size"].as_array().expect("by_size") {
        assert!(
            size["programmed_median_ms"].is_number(),
            "cold start did not program every peer: {size}"
        );
    }
    let resync = &doc["resync"];
    assert!(
        resync["noop_ms"].as_array().is_some_and(|a| a.len() >= 2),
        "fewer than 2 no-op resyncs logged: {resync}"
    );
    assert!(
        resync["peak_rss_kib"].as_u64().is_some_and(|k| k > 1000),
        "the agent's peak RSS was not read: {resync}"
    );
    // The no-op check listened: its monitor heard the canary it planted.
    assert_eq!(
        resync["monitor_heard_canary"],
        Value::Bool(true),
        "{resync}"
    );

    let md = read(&out.path().join("vxlan-scale.md"));
    for row in [
        "| scenario | size | measured | target | met? |",
        "| cold start | 2,000 peers in etcd |",
        "| join, one put (revision) each | 100 nodes onto 400 |",
        "| leave, one delete each | 100 of 500 |",
        "| churn | 500 peers, 10 % replaced per second for 5 s (500 writes) |",
        "| no-op full resync | 2,000 peers |",
        "| exact peer sets (kernel and etcd) | after every scenario | all exact | all exact | yes |",
    ] {
        assert!(md.contains(row), "vxlan-scale.md lacks {row:?}:\n{md}");
    }
    assert!(
        text.contains("| scenario | size | measured | target | met? |"),
        "the bench did not print its table:\n{text}"
    );

    let svg = read(&out.path().join("vxlan-scale.svg"));
    assert!(
        svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
        "vxlan-scale.svg is not one SVG document: {}",
        &svg[..svg.len().min(200)]
    );
    // Both panels: their titles, and a drawn line in each (medians, routes over time).
    for title in [
        "cold start: agent start",
        "100 joins one by one onto 400 peers",
    ] {
        assert!(
            svg.contains(title),
            "vxlan-scale.svg lacks the title {title:?}"
        );
    }
    // The data lines: the cold-start medians (blue) and the routes over time (green), 2 px
    // wide, each drawn once in its panel and once as its legend sample.
    for (what, stroke) in [("cold-start medians", "#0000FF"), ("routes", "#00FF00")] {
        let line =
            format!("<polyline fill=\"none\" opacity=\"1\" stroke=\"{stroke}\" stroke-width=\"2\"");
        assert!(
            svg.matches(&line).count() >= 2,
            "vxlan-scale.svg has no {what} line ({stroke})"
        );
    }
    assert_eq!(
        svg.matches("<text").count(),
        svg.matches("</text>").count(),
        "unbalanced <text> elements in vxlan-scale.svg"
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("({}: {e})", path.display()))
}
