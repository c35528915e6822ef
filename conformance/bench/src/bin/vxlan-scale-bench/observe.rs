//! What the bench reads of a node: the VXLAN device's routes (cheap, polled) and its full
//! neighbour/FDB/route state (checked), and the agent's CPU time and memory from /proc.

use std::collections::BTreeSet;
use std::fs;
use std::time::{Duration, Instant};

use cni_benches::interrupt;
use cni_testkit::netns::Netns;
use cni_testkit::overlay::{OverlayNode, Peer, DEVICE};
use ipnet::Ipv4Net;

/// Pause between two reads of the device's routes (one `ip -j route` run, ~10 ms at 5,000).
pub const POLL_PAUSE: Duration = Duration::from_millis(25);
/// Once the routes are right, how long the neighbours and FDB entries may take to follow.
pub const FULL_STATE_GRACE: Duration = Duration::from_secs(5);

/// The destinations of the routes with a gateway on the VXLAN device: one `ip -j` run.
/// Empty if the device does not exist (yet).
pub fn device_routes(netns: &Netns) -> BTreeSet<Ipv4Net> {
    netns
        .ip_json(&["-4", "route", "show", "dev", DEVICE])
        .and_then(|v| {
            v.as_array().map(|a| {
                a.iter()
                    .filter(|r| r["gateway"].is_string())
                    .filter_map(|r| r["dst"].as_str()?.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

pub fn route_set<'a>(peers: impl IntoIterator<Item = &'a Peer>) -> BTreeSet<Ipv4Net> {
    peers.into_iter().map(|p| p.subnet).collect()
}

/// Polls the full neighbour/FDB/route state until it holds exactly `peers`, for at most
/// `grace`; returns whether it did.
pub fn full_state_exact(node: &OverlayNode, peers: &BTreeSet<Peer>, grace: Duration) -> bool {
    let want: Vec<Peer> = peers.iter().cloned().collect();
    let deadline = Instant::now() + grace;
    loop {
        interrupt::check();
        if node
            .vxlan_state()
            .is_some_and(|s| s.programs_exactly(&want))
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL_PAUSE);
    }
}

/// CPU time and memory of a process, from /proc.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    /// User + system time of every thread.
    pub cpu: Duration,
    /// Peak resident set (VmHWM), KiB.
    pub hwm_kib: u64,
    /// Resident set now (VmRSS), KiB.
    pub rss_kib: u64,
}

pub fn proc_sample(pid: u32) -> ProcSample {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (in parentheses, which may hold spaces): state is the
    // first, utime the 12th, stime the 13th (fields 14 and 15 of proc(5)).
    let fields: Vec<&str> = stat
        .rfind(')')
        .map(|i| stat[i + 1..].split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |n: usize| {
        fields
            .get(n)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let cpu = Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / hz as f64);
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    ProcSample {
        cpu,
        hwm_kib: kib("VmHWM:"),
        rss_kib: kib("VmRSS:"),
    }
}
