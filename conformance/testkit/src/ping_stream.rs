//! A ping running in the background for as long as an event lasts (an etcd outage, an agent
//! restart), so a test can show traffic never stopped: every echo request is accounted for,
//! not just a probe before and after.

use std::collections::BTreeSet;
use std::fs;
use std::net::Ipv4Addr;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::NamedTempFile;

use crate::netns::Netns;

/// How long ping may take to print its summary and exit after SIGINT.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// `ping -n -i <interval> <to>` inside a namespace, its output in a temporary file (a pipe
/// could fill up during a long event). Killed if dropped without [`stop`](Self::stop).
pub struct PingStream {
    child: Child,
    output: NamedTempFile,
    from: String,
    to: Ipv4Addr,
}

/// What a stopped [`PingStream`] saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PingReport {
    /// Echo requests sent.
    pub sent: u32,
    /// Sequence numbers that were answered.
    pub answered: BTreeSet<u32>,
}

impl PingReport {
    /// Sequence numbers that got no answer, except the last request, which may still have
    /// been in flight when ping was stopped.
    pub fn lost(&self) -> Vec<u32> {
        (1..self.sent)
            .filter(|seq| !self.answered.contains(seq))
            .collect()
    }
}

impl PingStream {
    /// Starts pinging `to` from inside `from` every `interval` (at least 0.002 s, ping's
    /// minimum for root).
    pub fn start(from: &Netns, to: Ipv4Addr, interval: Duration) -> PingStream {
        let output = NamedTempFile::new().expect("cannot create a temporary file");
        let out = output.reopen().expect("cannot reopen the temporary file");
        let child = from
            .command("ping")
            .args(["-n", "-i", &format!("{:.3}", interval.as_secs_f64())])
            .arg(to.to_string())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start ping in netns {}: {e}", from.name()));
        PingStream {
            child,
            output,
            from: from.name().to_owned(),
            to,
        }
    }

    /// A label for messages: `<netns> -> <address>`.
    pub fn label(&self) -> String {
        format!("{} -> {}", self.from, self.to)
    }

    /// Stops ping with SIGINT (it prints its summary) and returns what it saw; panics if it
    /// does not exit in time or its output has no summary.
    pub fn stop(mut self) -> PingReport {
        // `ip netns exec` execs ping in place, so the child's pid is ping's.
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits i32"));
        let _ = kill(pid, Signal::SIGINT);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while !matches!(self.child.try_wait(), Ok(Some(_))) {
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("ping {} did not exit after SIGINT", self.label());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let text = fs::read_to_string(self.output.path()).unwrap_or_default();
        parse_ping_output(&text)
            .unwrap_or_else(|| panic!("ping {} printed no summary:\n{text}", self.label()))
    }
}

impl Drop for PingStream {
    fn drop(&mut self) {
        // Never panics; a no-op after stop().
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses iputils ping output: `icmp_seq=N` of each reply and the `N packets transmitted`
/// summary line. `None` without the summary.
pub fn parse_ping_output(text: &str) -> Option<PingReport> {
    let answered = text
        .lines()
        .filter(|l| l.contains(" bytes from "))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("icmp_seq="))
                .and_then(|n| n.parse().ok())
        })
        .collect();
    let sent = text
        .lines()
        .find(|l| l.contains("packets transmitted"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(PingReport { sent, answered })
}

/// Stops each ping stream (5 requests/s, started at `started`) and asserts that it ran the
/// whole time and that every request was answered; `during` says when, for the message.
pub fn assert_streams_lost_nothing(streams: Vec<PingStream>, started: Instant, during: &str) {
    let elapsed = started.elapsed();
    for stream in streams {
        let label = stream.label();
        let report = stream.stop();
        // At 5/s, the stream must have run the whole time (allowing for ping's own pacing).
        let expected = u32::try_from(elapsed.as_secs()).unwrap_or(u32::MAX) * 5 / 2;
        assert!(
            report.sent >= expected,
            "ping {label} sent only {} requests in {elapsed:?}",
            report.sent
        );
        assert!(
            report.lost().is_empty(),
            "ping {label}: requests {:?} of {} went unanswered {during}",
            report.lost(),
            report.sent
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_replies_and_summary() {
        let text = "PING 10.200.1.2 (10.200.1.2) 56(84) bytes of data.\n\
            64 bytes from 10.200.1.2: icmp_seq=1 ttl=62 time=0.120 ms\n\
            64 bytes from 10.200.1.2: icmp_seq=3 ttl=62 time=0.101 ms\n\
            \n--- 10.200.1.2 ping statistics ---\n\
            4 packets transmitted, 2 received, 50% packet loss, time 603ms\n";
        let r = parse_ping_output(text).expect("summary present");
        assert_eq!(r.sent, 4);
        assert_eq!(r.answered, BTreeSet::from([1, 3]));
        // 4 may have been in flight when ping stopped; 2 was lost.
        assert_eq!(r.lost(), vec![2]);
        assert!(parse_ping_output("64 bytes from x: icmp_seq=1").is_none());
    }
}
