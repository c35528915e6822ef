//! The plugins' and the agent's log files (cni-skel's format): recent errors, and the ADD and
//! DEL lines that show pods being created and deleted.
//!
//! A line is `<RFC 3339 UTC> <LEVEL> <program>: <text>`, e.g.
//! `2026-11-23T18:00:00.123Z INFO  kubenet-bridge: ADD network=k8s container=... outcome=ok`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Only the tail of a log is read: enough for recent history, bounded on a busy node.
const TAIL_BYTES: u64 = 512 * 1024;

/// One parsed line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// Seconds since the epoch, if the timestamp parsed.
    pub at: Option<u64>,
    /// `ERROR`, `WARN`, `INFO`, `DEBUG`.
    pub level: String,
    /// `kubenet-bridge`, `vxlan-overlay agent`, ...
    pub program: String,
    /// The rest.
    pub text: String,
    /// The line as written.
    pub raw: String,
}

/// What a log says about one network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// ADD lines of the network.
    pub adds: usize,
    /// DEL lines of the network.
    pub dels: usize,
    /// ERROR lines of `program` within the window, oldest first.
    pub recent_errors: Vec<String>,
    /// Lines of `program` at all.
    pub lines: usize,
}

/// Parses one line; None for lines in another format.
pub fn parse_line(raw: &str) -> Option<Line> {
    let mut it = raw.splitn(2, ' ');
    let ts = it.next()?;
    let rest = it.next()?.trim_start();
    let (level, rest) = rest.split_once(' ')?;
    if !matches!(level, "ERROR" | "WARN" | "INFO" | "DEBUG" | "TRACE") {
        return None;
    }
    let (program, text) = rest.trim_start().split_once(": ")?;
    Some(Line {
        at: parse_timestamp(ts),
        level: level.to_string(),
        program: program.to_string(),
        text: text.to_string(),
        raw: raw.to_string(),
    })
}

/// `YYYY-MM-DDTHH:MM:SS(.mmm)Z` to seconds since the epoch.
pub fn parse_timestamp(ts: &str) -> Option<u64> {
    let ts = ts.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.split('.').next()?;
    let mut t = time.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    let days = days_from_civil(y, m, day);
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// Howard Hinnant's days-from-civil (the inverse of cni-skel's timestamp formatting).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Reads the last [`TAIL_BYTES`] of `path` as lines (a partial first line is dropped).
pub fn tail(path: &Path) -> std::io::Result<Vec<String>> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let start = len.saturating_sub(TAIL_BYTES);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0);
    }
    Ok(lines)
}

/// Summarises `lines` for `program` (exact, e.g. `kubenet-bridge` or `vxlan-overlay agent`)
/// and network `network`: ADD/DEL lines, and ERROR lines newer than `window` before `now`.
pub fn summarize(
    lines: &[String],
    program: &str,
    network: Option<&str>,
    now: SystemTime,
    window: Duration,
) -> Summary {
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let since = now.saturating_sub(window.as_secs());
    let net_tag = network.map(|n| format!("network={n} "));
    let mut s = Summary::default();
    for raw in lines {
        let Some(l) = parse_line(raw) else { continue };
        if l.program != program {
            continue;
        }
        s.lines += 1;
        let of_network = net_tag.as_deref().is_none_or(|t| l.text.contains(t));
        if of_network && l.text.starts_with("ADD ") {
            s.adds += 1;
        }
        if of_network && l.text.starts_with("DEL ") {
            s.dels += 1;
        }
        if l.level == "ERROR" && l.at.is_some_and(|t| t >= since) {
            s.recent_errors.push(l.raw.clone());
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
2026-11-23T18:00:00.123Z INFO  kubenet-bridge: ADD network=k8s container=a netns=/n ifname=eth0 address=10.1.0.2/24 duration_ms=3.00 outcome=ok
2026-11-23T18:00:01.000Z ERROR kubenet-bridge: ADD network=k8s container=b netns=/n ifname=eth0 address=- duration_ms=1.00 outcome=error boom
2026-11-23T18:00:02.000Z INFO  kubenet-bridge: DEL network=k8s container=a netns=- ifname=eth0 address=10.1.0.2 duration_ms=1.00 outcome=ok
2026-11-23T18:00:03.000Z INFO  kubenet-bridge: ADD network=other container=c netns=/n ifname=eth0 address=- duration_ms=1.00 outcome=ok
2026-11-23T17:00:00.000Z ERROR vxlan-overlay agent: reconcile failed: x
garbage line
";

    #[test]
    fn parses_cni_skel_lines() {
        let l = parse_line(LOG.lines().next().unwrap()).unwrap();
        assert_eq!(l.level, "INFO");
        assert_eq!(l.program, "kubenet-bridge");
        assert!(l.text.starts_with("ADD network=k8s"));
        assert_eq!(parse_timestamp("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(parse_timestamp("2000-02-29T00:00:00Z"), Some(951_782_400));
        assert_eq!(
            parse_timestamp("2026-11-23T18:00:00.123Z"),
            Some(1_795_456_800)
        );
        assert!(parse_line("garbage line").is_none());
    }

    #[test]
    fn counts_pod_lines_and_recent_errors() {
        let lines: Vec<String> = LOG.lines().map(str::to_string).collect();
        let now = UNIX_EPOCH + Duration::from_secs(1_795_456_800 + 60);
        let s = summarize(
            &lines,
            "kubenet-bridge",
            Some("k8s"),
            now,
            Duration::from_secs(3600),
        );
        assert_eq!(
            (s.adds, s.dels, s.recent_errors.len(), s.lines),
            (2, 1, 1, 4)
        );
        let later = now + Duration::from_secs(7200);
        let s = summarize(
            &lines,
            "kubenet-bridge",
            Some("k8s"),
            later,
            Duration::from_secs(3600),
        );
        assert!(s.recent_errors.is_empty());
        let a = summarize(
            &lines,
            "vxlan-overlay agent",
            None,
            now,
            Duration::from_secs(3600),
        );
        assert_eq!((a.lines, a.recent_errors.len()), (1, 0));
    }
}
