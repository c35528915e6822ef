//! The agent's log lines the bench reads: full reconciles and applied event batches.

use std::fs;

use cni_testkit::overlay::OverlayNode;

/// One `full reconcile: <N> peers, <A> added, <R> removed, took <ms> ms` line of the agent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FullReconcile {
    pub peers: u64,
    pub added: u64,
    pub removed: u64,
    pub took_ms: f64,
}

pub fn parse_full_reconcile(line: &str) -> Option<FullReconcile> {
    let rest = &line[line.find("full reconcile: ")? + "full reconcile: ".len()..];
    let mut parts = rest.split(", ");
    let mut num = |unit: &str| -> Option<f64> {
        let p = parts.next()?.trim();
        let p = p.strip_prefix("took ").unwrap_or(p);
        p.strip_suffix(unit)?.trim().parse().ok()
    };
    Some(FullReconcile {
        peers: num("peers")? as u64,
        added: num("added")? as u64,
        removed: num("removed")? as u64,
        took_ms: num("ms")?,
    })
}

/// One `applied <E> events: <A> added/changed, <R> removed` line: the events of one batch.
pub fn parse_applied(line: &str) -> Option<u64> {
    let rest = &line[line.find("applied ")? + "applied ".len()..];
    let (n, tail) = rest.split_once(' ')?;
    tail.starts_with("events").then(|| n.parse().ok())?
}

/// The agent's log from byte `from` on.
pub fn log_since(node: &OverlayNode, from: u64) -> String {
    let text = fs::read(node.log_path()).unwrap_or_default();
    let from = usize::try_from(from).unwrap_or(usize::MAX).min(text.len());
    String::from_utf8_lossy(&text[from..]).into_owned()
}

pub fn log_len(node: &OverlayNode) -> u64 {
    fs::metadata(node.log_path()).map_or(0, |m| m.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_log_lines_parse() {
        let l = "2026-12-04T16:20:01Z INFO vxlan-overlay agent: full reconcile: 5000 peers, 0 added, 0 removed, took 41 ms";
        assert_eq!(
            parse_full_reconcile(l),
            Some(FullReconcile {
                peers: 5000,
                added: 0,
                removed: 0,
                took_ms: 41.0
            })
        );
        assert_eq!(
            parse_full_reconcile("full reconcile: 3 peers, 1 added, 2 removed, took 0.5 ms")
                .map(|r| r.took_ms),
            Some(0.5)
        );
        assert_eq!(parse_full_reconcile("reconciled 3 peers: Changes"), None);
        assert_eq!(
            parse_applied("INFO agent: applied 17 events: 15 added/changed, 2 removed"),
            Some(17)
        );
        assert_eq!(parse_applied("applied nothing"), None);
    }
}
