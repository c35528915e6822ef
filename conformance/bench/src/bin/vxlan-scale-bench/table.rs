//! The markdown report: each scenario against its goal.

use std::time::Duration;

use serde_json::{json, Value};

/// Goals from the issue (cold start, join/leave delay, RSS, resync).
pub const GOAL_COLD_MS: f64 = 2000.0;
pub const GOAL_SETTLE_MS: f64 = 1000.0;
pub const GOAL_RSS_MB: f64 = 50.0;
pub const GOAL_RESYNC_MS: f64 = 200.0;
/// "Far below one list per join": at most one Range request per ten joins.
pub const GOAL_RANGE_PER_JOIN: f64 = 0.1;

pub fn yes_no(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "n/a",
    }
}

/// Thousands separated by commas, as the issue writes sizes.
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn markdown(doc: &Value, took: Duration) -> String {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let u = |v: &Value| v.as_u64().unwrap_or(0);
    let sz = &doc["sizes"];
    let mut s = format!(
        "## vxlan-overlay at scale: one agent, fake peers in etcd\n\n\
         Kernel {}, {} CPUs; agent `{}` (leaseTTL {} s); etcd 3.4 with its data on a tmpfs; \
         times from the kernel's view of the VXLAN device.\n\n\
         | scenario | size | measured | target | met? |\n|---|---|---|---|---|\n",
        doc["kernel"].as_str().unwrap_or("?"),
        doc["cpus"],
        doc["agent"].as_str().unwrap_or("?"),
        doc["sizes"]["lease_ttl"],
    );
    let cold = &doc["cold_start"];
    if let Some(big) = cold["by_size"].as_array().and_then(|a| a.last()) {
        let med = f(&big["programmed_median_ms"]);
        let all = big["all_programmed"] == json!(true);
        let runs = big["runs"].as_array().map_or(0, Vec::len);
        s += &format!(
            "| cold start | {} peers in etcd | {} (median of {runs}; {:.2}–{:.2} s) | < 2 s | {} |\n",
            count(u(&big["peers"])),
            if all { format!("all programmed in {:.2} s", med / 1e3) } else { "not all programmed in time".into() },
            f(&big["programmed_min_ms"]) / 1e3,
            f(&big["programmed_max_ms"]) / 1e3,
            yes_no(Some(all && med < GOAL_COLD_MS)),
        );
    }
    let settle = |b: &Value, verb: &str| -> (String, Option<bool>) {
        match b["settle_ms"].as_f64() {
            Some(t) => (
                format!(
                    "{verb} {:.2} s after the last ({} writes in {:.2} s)",
                    t / 1e3,
                    count(u(&b["writes"])),
                    f(&b["write_ms"]) / 1e3
                ),
                Some(t <= GOAL_SETTLE_MS),
            ),
            None => (
                format!("not within {} s of the last", u(&sz["timeout_s"])),
                Some(false),
            ),
        }
    };
    let join = &doc["join"];
    let (m, met) = settle(join, "all routes present");
    s += &format!(
        "| join, one put (revision) each | {} nodes onto {} | {m} | ≤ 1 s | {} |\n",
        count(u(&sz["joins"])),
        count(u(&sz["join_base"])),
        yes_no(met)
    );
    let per_join = f(&join["range_per_write"]);
    s += &format!(
        "| agent's etcd reads during the joins | {} joins | {} Range requests ({per_join:.3} per join) | far below 1 per join (≤ {GOAL_RANGE_PER_JOIN}) | {} |\n",
        count(u(&sz["joins"])),
        u(&join["range_requests"]),
        yes_no(Some(per_join <= GOAL_RANGE_PER_JOIN))
    );
    let leave = &doc["leave"];
    let (m, met) = settle(leave, "routes gone");
    s += &format!(
        "| leave, one delete each | {} of {} | {m} | ≤ 1 s | {} |\n",
        count(u(&sz["leaves"])),
        count(u(&sz["join_base"]) + u(&sz["joins"])),
        yes_no(met)
    );
    let churn = &doc["churn"];
    let exact = churn["exact"] == json!(true) && churn["etcd_exact"] == json!(true);
    s += &format!(
        "| churn | {} peers, {} % replaced per second for {} s ({} writes) | {} | exact peer set at the end | {} |\n",
        count(u(&sz["churn_peers"])),
        u(&sz["churn_percent"]),
        u(&sz["churn_seconds"]),
        count(u(&churn["writes"])),
        match churn["settle_ms"].as_f64() {
            Some(t) if exact => format!("exact set {:.2} s after the last write", t / 1e3),
            Some(_) => "routes right, neighbours/FDB or etcd not".into(),
            None => format!("not exact within {} s", u(&sz["timeout_s"])),
        },
        yes_no(Some(exact)),
    );
    s += &format!(
        "| agent CPU per 1,000 events | joins / leaves / churn | {:.0} / {:.0} / {:.0} ms (overall {:.0} ms) | — | — |\n",
        f(&join["agent_cpu_ms_per_1000_events"]),
        f(&leave["agent_cpu_ms_per_1000_events"]),
        f(&churn["agent_cpu_ms_per_1000_events"]),
        f(&doc["agent_cpu_ms_per_1000_events"]),
    );
    let rs = &doc["resync"];
    let rss_mb = u(&rs["peak_rss_kib"]) as f64 * 1024.0 / 1e6;
    s += &format!(
        "| peak RSS (VmHWM) | {} peers, after start and resyncs | {rss_mb:.1} MB | ≤ 50 MB | {} |\n",
        count(u(&rs["peers"])),
        yes_no(Some(rss_mb > 0.0 && rss_mb <= GOAL_RSS_MB)),
    );
    let noop = rs["noop_ms"].as_array().map_or(0, Vec::len);
    s += &format!(
        "| no-op full resync | {} peers | {} | < 200 ms | {} |\n",
        count(u(&rs["peers"])),
        if noop > 0 {
            format!(
                "{:.0} ms median, {:.0} ms max ({noop} resyncs, agent's log)",
                f(&rs["noop_median_ms"]),
                f(&rs["noop_max_ms"])
            )
        } else if rs["full_reconcile_lines"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            "resyncs seen, none a no-op".into()
        } else {
            "no `full reconcile` line in the agent's log".into()
        },
        yes_no((noop > 0).then(|| f(&rs["noop_max_ms"]) < GOAL_RESYNC_MS)),
    );
    let changes = u(&rs["kernel_changes"]);
    let heard = rs["monitor_heard_canary"] == json!(true);
    s += &format!(
        "| no-op resync writes nothing | {} peers, {} reconciles watched | {} route/neighbour/FDB notifications (`ip monitor`{}), {} reconciles that changed something | none | {} |\n",
        count(u(&rs["peers"])),
        noop + u(&rs["not_noop"]) as usize,
        changes,
        if heard { "" } else { ", which was not listening" },
        u(&rs["not_noop"]),
        yes_no((noop > 0 || u(&rs["not_noop"]) > 0)
            .then_some(heard && changes == 0 && u(&rs["not_noop"]) == 0)),
    );
    let checks = &doc["checks"];
    let failed: Vec<&str> = checks
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| *v != &json!(true))
        .map(|(k, _)| k.as_str())
        .collect();
    s += &format!(
        "| exact peer sets (kernel and etcd) | after every scenario | {} | all exact | {} |\n",
        if failed.is_empty() {
            "all exact".to_owned()
        } else {
            format!("wrong: {}", failed.join(", "))
        },
        yes_no(Some(failed.is_empty())),
    );

    s += "\nCold start by size (agent start → every peer's route present, then neighbours and \
          FDB entries checked):\n\n\
          | peers | runs | subnet.env written | all programmed, median (min–max) | agent CPU | peak RSS |\n\
          |---|---|---|---|---|---|\n";
    for b in cold["by_size"].as_array().into_iter().flatten() {
        s += &format!(
            "| {} | {} | {:.0} ms | {:.0} ms ({:.0}–{:.0}) | {:.0} ms | {:.1} MB |\n",
            count(u(&b["peers"])),
            b["runs"].as_array().map_or(0, Vec::len),
            f(&b["lease_median_ms"]),
            f(&b["programmed_median_ms"]),
            f(&b["programmed_min_ms"]),
            f(&b["programmed_max_ms"]),
            f(&b["cpu_median_ms"]),
            u(&b["peak_rss_max_kib"]) as f64 * 1024.0 / 1e6,
        );
    }
    s += &format!(
        "\netcd's own CPU time (writes included) during the joins / leaves / churn: {:.0} / {:.0} / \
         {:.0} ms.\n",
        f(&join["etcd_cpu_ms"]),
        f(&leave["etcd_cpu_ms"]),
        f(&churn["etcd_cpu_ms"]),
    );
    s += &format!(
        "\nBursts: joins {} batches / {} events applied (agent's log), leaves {} / {}, churn {} / {}; \
         churn Range requests {}. Routes polled with `ip -j route` every ≈{:.0} ms during the \
         bursts (the resolution of the delays). Fake peers: subnets of 10.0.0.0/8, underlay \
         addresses in 198.18.0.0/15 that exist nowhere; the bench writes through etcd's JSON \
         gateway (Put/DeleteRange/Txn), so every Range request etcd counts is the agent's.\n\n\
         Command: `{}`; it took {:.0} s.\n",
        u(&join["applied_batches"]),
        u(&join["applied_events"]),
        u(&leave["applied_batches"]),
        u(&leave["applied_events"]),
        u(&churn["applied_batches"]),
        u(&churn["applied_events"]),
        u(&churn["range_requests"]),
        f(&join["poll_ms"]).max(f(&leave["poll_ms"])),
        doc["command"].as_str().unwrap_or("vxlan-scale-bench"),
        took.as_secs_f64()
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_have_thousands_separators() {
        assert_eq!(count(5000), "5,000");
        assert_eq!(count(500), "500");
        assert_eq!(count(1234567), "1,234,567");
    }
}
