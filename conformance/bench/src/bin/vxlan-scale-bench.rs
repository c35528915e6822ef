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

use std::collections::BTreeSet;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cni_testkit::etcd::EtcdServer;
use cni_testkit::etcd_gateway::{kv_requests, metric, EtcdGateway};
use cni_testkit::netns::Netns;
use cni_testkit::overlay::{records, subnet_key, OverlayNode, Peer, Underlay, DEVICE};
use cni_testkit::require_root;
use cni_testkit::scenarios::CNITOOL_SPEC_VERSION;
use ipnet::Ipv4Net;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use serde_json::{json, Value};
use tempfile::TempDir;

/// The agents' cluster range: room for 65,280 fake /24 subnets (10.1.0.0 up) besides the
/// agent's own, which it leases first-free from 10.0.0.0/24.
const SCALE_CLUSTER_CIDR: &str = "10.0.0.0/8";
/// Key prefixes: cold starts and the resync share one, the bursts have their own.
const COLD_PREFIX: &str = "/scale/cold";
const BURST_PREFIX: &str = "/scale/burst";
/// The agents' resyncSeconds outside the resync scenario: the plugin's default.
const DEFAULT_RESYNC: u64 = 30;
/// Pause between two reads of the device's routes (one `ip -j route` run, ~10 ms at 5,000).
const POLL_PAUSE: Duration = Duration::from_millis(25);
/// How long etcd's Range counter must stay still before a burst's requests are counted: the
/// agent may still be reading after the kernel state converged.
const QUIET: Duration = Duration::from_secs(1);
/// Once the routes are right, how long the neighbours and FDB entries may take to follow.
const FULL_STATE_GRACE: Duration = Duration::from_secs(5);
/// Size of the tmpfs holding etcd's data (etcd preallocates 64 MB WAL segments).
const TMPFS_SIZE: &str = "size=1g,mode=0700";
/// Goals from the issue (cold start, join/leave delay, RSS, resync).
const GOAL_COLD_MS: f64 = 2000.0;
const GOAL_SETTLE_MS: f64 = 1000.0;
const GOAL_RSS_MB: f64 = 50.0;
const GOAL_RESYNC_MS: f64 = 200.0;
/// "Far below one list per join": at most one Range request per ten joins.
const GOAL_RANGE_PER_JOIN: f64 = 0.1;

/// Set by SIGINT/SIGTERM; checked in every loop so the bench unwinds and cleans up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Panics (unwinding through every guard) if the user interrupted the bench.
fn check_interrupted() {
    assert!(
        !INTERRUPTED.load(Ordering::SeqCst),
        "interrupted; cleaning up"
    );
}

const USAGE: &str = "\
usage: vxlan-scale-bench [--small] [--cold-sizes N,N,...] [--cold-runs N] [--resync-peers N]
                         [--resync-seconds S] [--resyncs N] [--join-base N] [--joins N]
                         [--leaves N] [--churn-peers N] [--churn-percent P]
                         [--churn-seconds S] [--lease-ttl S] [--timeout S] [--out DIR]

One vxlan-overlay agent in a node namespace against a real etcd (data on a tmpfs) holding
fake node records: cold start, a no-op full resync, joins and leaves one by one, churn. Times
come from the kernel's view of the VXLAN device; etcd's /metrics gives the agent's requests,
/proc its CPU time and peak RSS. Writes vxlan-scale.md, vxlan-scale.json and vxlan-scale.svg,
prints the markdown, and exits 1 if a peer set was wrong after a scenario. Needs root, etcd
and the release vxlan-overlay binary next to this one.

options (full size by default):
  --small                CI sizes: cold start 1000,2000 peers, 100 joins onto 400, 100 leaves,
                         churn 500 peers at 10 %/s for 5 s, resync at 2000 peers,
                         leaseTTL 6
  --cold-sizes LIST      peers in etcd at each cold start (default 1000,2000,3000,4000,5000)
  --cold-runs N          cold starts per size (default 3; 1 with --small)
  --resync-peers N       peers of the resync scenario (default: the largest cold size)
  --resync-seconds S     that agent's resyncSeconds (default 2)
  --resyncs N            no-op resyncs to wait for (default 3; 2 with --small)
  --join-base N          peers before the joins (default: churn peers - joins)
  --joins N              nodes joining one by one (default 500)
  --leaves N             nodes leaving one by one, after the joins (default 500)
  --churn-peers N        peers during churn (default 2500)
  --churn-percent P      peers replaced per second (default 10)
  --churn-seconds S      churn duration (default 30)
  --lease-ttl S          the agents' leaseTTL (default 30; 6 with --small); each scenario
                         checks the agent's own record is still in etcd
  --timeout S            bound on each wait for convergence (default 60)
  --out DIR              where the files go (default conformance/results)
  -h, --help             this text
  -V, --version          version and the CNI spec version of the conflists it writes";

/// Scenario sizes.
#[derive(Clone, Debug)]
struct Sizes {
    cold_sizes: Vec<usize>,
    cold_runs: usize,
    resync_peers: usize,
    resync_seconds: u64,
    resyncs: usize,
    join_base: usize,
    joins: usize,
    leaves: usize,
    churn_peers: usize,
    churn_percent: usize,
    churn_seconds: usize,
    lease_ttl: u64,
    timeout: Duration,
}

struct Args {
    sizes: Sizes,
    small: bool,
    out: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let small = argv.iter().any(|a| a == "--small");
    let mut cold_sizes = if small {
        vec![1000, 2000]
    } else {
        vec![1000, 2000, 3000, 4000, 5000]
    };
    let mut cold_runs = if small { 1 } else { 3 };
    let mut resync_peers = None;
    let mut resync_seconds = 2;
    let mut resyncs = if small { 2 } else { 3 };
    let mut join_base = None;
    let mut joins = if small { 100 } else { 500 };
    let mut leaves = if small { 100 } else { 500 };
    let mut churn_peers = if small { 500 } else { 2500 };
    let mut churn_percent = 10;
    let mut churn_seconds = if small { 5 } else { 30 };
    let mut timeout = 60;
    // Short in CI: a run of ~15 s then outlasts two TTLs, so an agent whose renewals stall
    // behind its dataplane work loses its record before the bench looks.
    let mut lease_ttl = if small { 6 } else { 30 };
    let mut out = PathBuf::from("conformance/results");
    let mut it = argv.into_iter();
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| -> Result<usize, String> {
            v.parse().map_err(|e| format!("{flag} {v:?}: {e}"))
        };
        match flag.as_str() {
            "--small" => {}
            "--cold-sizes" => {
                cold_sizes = val()?
                    .split(',')
                    .map(|s| num(s.trim().to_owned()))
                    .collect::<Result<_, _>>()?
            }
            "--cold-runs" => cold_runs = num(val()?)?,
            "--resync-peers" => resync_peers = Some(num(val()?)?),
            "--resync-seconds" => resync_seconds = num(val()?)? as u64,
            "--resyncs" => resyncs = num(val()?)?,
            "--join-base" => join_base = Some(num(val()?)?),
            "--joins" => joins = num(val()?)?,
            "--leaves" => leaves = num(val()?)?,
            "--churn-peers" => churn_peers = num(val()?)?,
            "--churn-percent" => churn_percent = num(val()?)?,
            "--churn-seconds" => churn_seconds = num(val()?)?,
            "--timeout" => timeout = num(val()?)? as u64,
            "--lease-ttl" => lease_ttl = num(val()?)? as u64,
            "--out" => out = val()?.into(),
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--version" | "-V" => {
                // The conflists it writes for the agent are at cnitool's spec version.
                println!(
                    "{}",
                    cni_testkit::version_banner("vxlan-scale-bench", &[CNITOOL_SPEC_VERSION])
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    cold_sizes.sort_unstable();
    cold_sizes.dedup();
    let largest = *cold_sizes.last().ok_or("--cold-sizes is empty")?;
    let sizes = Sizes {
        resync_peers: resync_peers.unwrap_or(largest),
        join_base: join_base.unwrap_or(churn_peers.saturating_sub(joins)),
        cold_sizes,
        cold_runs,
        resync_seconds,
        resyncs,
        joins,
        leaves,
        churn_peers,
        churn_percent,
        churn_seconds,
        lease_ttl,
        timeout: Duration::from_secs(timeout),
    };
    let s = &sizes;
    if s.cold_runs == 0 || s.resyncs == 0 || s.resync_seconds == 0 || s.timeout.is_zero() {
        return Err("--cold-runs, --resyncs, --resync-seconds and --timeout must be > 0".into());
    }
    if s.lease_ttl < 3 {
        return Err("--lease-ttl must be at least 3 (the agent's minimum)".into());
    }
    if s.joins == 0 || s.leaves > s.join_base + s.joins {
        return Err("--joins must be > 0 and --leaves at most --join-base + --joins".into());
    }
    if !(1..=100).contains(&s.churn_percent) || s.churn_peers == 0 {
        return Err("--churn-percent must be in 1..=100 and --churn-peers > 0".into());
    }
    // One underlay address per agent (hosts 1..=99; etcd is 100).
    if s.cold_sizes.len() * s.cold_runs + 2 > 99 {
        return Err("--cold-sizes x --cold-runs must be at most 97 agents".into());
    }
    let most = largest
        .max(s.resync_peers)
        .max(s.join_base + s.joins)
        .max(s.churn_peers);
    let churn_new = s.churn_peers * s.churn_percent / 100 * s.churn_seconds;
    if most + churn_new > MAX_PEERS {
        return Err(format!(
            "at most {MAX_PEERS} fake peers (the bursts' and churn's new ones included)"
        ));
    }
    Ok(Args { sizes, small, out })
}

/// Fake peers are numbered; subnet 10.(1 + i/256).(i%256).0/24 bounds their number.
const MAX_PEERS: usize = 254 * 256;

/// Fake peer `i`: subnet 10.(1 + i/256).(i % 256).0/24, underlay 198.18.0.0/15 + i + 1
/// (RFC 2544's benchmark range; nothing has these addresses), MAC 0e:5c:<i, 4 bytes>.
fn fake_peer(i: usize) -> Peer {
    assert!(i < MAX_PEERS, "fake peer {i} is past {MAX_PEERS}");
    let i = u32::try_from(i).expect("fits u32");
    let third = u8::try_from(1 + i / 256).expect("below 255");
    let fourth = u8::try_from(i % 256).expect("below 256");
    let [a, b, c, d] = i.to_be_bytes();
    Peer {
        subnet: Ipv4Net::new(Ipv4Addr::new(10, third, fourth, 0), 24).expect("valid /24"),
        underlay: IpAddr::V4(Ipv4Addr::from(
            u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i + 1,
        )),
        vtep_mac: format!("0e:5c:{a:02x}:{b:02x}:{c:02x}:{d:02x}"),
    }
}

/// A tmpfs mounted on a fresh temporary directory; unmounted (then the directory removed)
/// when dropped.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn new() -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("cnit-scale-tmpfs-")
            .tempdir()
            .expect("create the tmpfs mount point");
        mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(TMPFS_SIZE),
        )
        .unwrap_or_else(|e| panic!("mount tmpfs on {}: {e}", dir.path().display()));
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Never panics. etcd is gone by now (the bed drops it first); a lazy unmount still
        // detaches the tmpfs if something kept a file open.
        if let Err(e) = umount2(self.dir.path(), MntFlags::empty()) {
            eprintln!(
                "warning: umount {}: {e}; detaching",
                self.dir.path().display()
            );
            let _ = umount2(self.dir.path(), MntFlags::MNT_DETACH);
        }
    }
}

/// The underlay, etcd on a tmpfs, and a gateway connection to it. Fields drop in order:
/// the connection, etcd (killed), the underlay, then the tmpfs is unmounted.
struct Bed {
    gw: EtcdGateway,
    etcd: EtcdServer,
    underlay: Underlay,
    tmpfs: Tmpfs,
    next_host: u8,
    lease_ttl: u64,
}

impl Bed {
    fn new(lease_ttl: u64) -> Bed {
        let tmpfs = Tmpfs::new();
        let underlay = Underlay::new();
        let netns = Netns::new("cnit-etcd-");
        let addr = underlay.addr(cni_testkit::overlay::ETCD_HOST);
        underlay.connect(&netns, addr);
        let etcd = EtcdServer::start_in(netns, addr, tmpfs.path());
        let gw = EtcdGateway::connect(&etcd);
        Bed {
            gw,
            etcd,
            underlay,
            tmpfs,
            next_host: 1,
            lease_ttl,
        }
    }

    /// A fresh node (its own namespace and underlay address) whose agent (not started yet)
    /// uses `prefix` and `resync` seconds.
    fn node(&mut self, prefix: &str, resync: u64) -> OverlayNode {
        let host = self.next_host;
        self.next_host += 1;
        assert!(host < cni_testkit::overlay::ETCD_HOST, "out of hosts");
        let fields = json!({
            "etcdEndpoints": [self.etcd.endpoint()],
            "etcdPrefix": prefix,
            "clusterCIDR": SCALE_CLUSTER_CIDR,
            "leaseTTL": self.lease_ttl,
            "resyncSeconds": resync,
        });
        OverlayNode::new(&self.underlay, host, &fields)
    }

    /// Writes the records of `peers` under `prefix`, many to a transaction.
    fn put_peers<'a>(&mut self, prefix: &str, peers: impl IntoIterator<Item = &'a Peer>) {
        let kvs: Vec<(String, String)> = peers
            .into_iter()
            .map(|p| (subnet_key(prefix, p.subnet), p.record_json(1)))
            .collect();
        self.gw.put_all(&kvs);
    }

    /// etcd's count of Range requests so far (every one of them an agent's: the bench only
    /// writes through the gateway, and reads with etcdctl only outside measured windows).
    fn range_requests(&mut self) -> u64 {
        kv_requests(&self.gw.metrics(), "Range")
    }

    /// etcd's own CPU time so far (`process_cpu_seconds_total`): what the agent's reads cost
    /// the cluster's side, besides the bench's writes.
    fn etcd_cpu(&mut self) -> Duration {
        let secs = metric(&self.gw.metrics(), "process_cpu_seconds_total", &[]).unwrap_or(0.0);
        Duration::from_secs_f64(secs.max(0.0))
    }

    /// Whether etcd holds exactly `peers` under `prefix` and one record of the agent at
    /// `agent_ip`: its own, still there, so its lease kept being renewed through the work.
    fn etcd_holds(&self, prefix: &str, peers: &BTreeSet<Peer>, agent_ip: IpAddr) -> bool {
        records(&self.etcd, prefix).is_some_and(|r| {
            let (own, fakes): (Vec<Peer>, Vec<Peer>) =
                r.into_iter().partition(|p| p.underlay == agent_ip);
            own.len() == 1 && fakes.into_iter().collect::<BTreeSet<_>>() == *peers
        })
    }
}

/// The destinations of the routes with a gateway on the VXLAN device: one `ip -j` run.
/// Empty if the device does not exist (yet).
fn device_routes(netns: &Netns) -> BTreeSet<Ipv4Net> {
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

fn route_set<'a>(peers: impl IntoIterator<Item = &'a Peer>) -> BTreeSet<Ipv4Net> {
    peers.into_iter().map(|p| p.subnet).collect()
}

/// Polls the full neighbour/FDB/route state until it holds exactly `peers`, for at most
/// `grace`; returns whether it did.
fn full_state_exact(node: &OverlayNode, peers: &BTreeSet<Peer>, grace: Duration) -> bool {
    let want: Vec<Peer> = peers.iter().cloned().collect();
    let deadline = Instant::now() + grace;
    loop {
        check_interrupted();
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
struct ProcSample {
    /// User + system time of every thread.
    cpu: Duration,
    /// Peak resident set (VmHWM), KiB.
    hwm_kib: u64,
    /// Resident set now (VmRSS), KiB.
    rss_kib: u64,
}

fn proc_sample(pid: u32) -> ProcSample {
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One `full reconcile: <N> peers, <A> added, <R> removed, took <ms> ms` line of the agent.
#[derive(Clone, Copy, Debug, PartialEq)]
struct FullReconcile {
    peers: u64,
    added: u64,
    removed: u64,
    took_ms: f64,
}

fn parse_full_reconcile(line: &str) -> Option<FullReconcile> {
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
fn parse_applied(line: &str) -> Option<u64> {
    let rest = &line[line.find("applied ")? + "applied ".len()..];
    let (n, tail) = rest.split_once(' ')?;
    tail.starts_with("events").then(|| n.parse().ok())?
}

/// The agent's log from byte `from` on.
fn log_since(node: &OverlayNode, from: u64) -> String {
    let text = fs::read(node.log_path()).unwrap_or_default();
    let from = usize::try_from(from).unwrap_or(usize::MAX).min(text.len());
    String::from_utf8_lossy(&text[from..]).into_owned()
}

fn log_len(node: &OverlayNode) -> u64 {
    fs::metadata(node.log_path()).map_or(0, |m| m.len())
}

/// One cold start.
#[derive(Clone, Debug)]
struct ColdRun {
    peers: usize,
    /// Agent start to subnet.env written.
    lease_ms: f64,
    /// Agent start to every peer's route present (`None`: not within the timeout).
    programmed_ms: Option<f64>,
    /// Neighbours, FDB entries and routes exactly the peers (checked after the routes).
    exact: bool,
    /// The agent's CPU time until then.
    cpu_ms: f64,
    hwm_kib: u64,
    /// Mean time between two reads of the routes: the resolution.
    poll_ms: f64,
    /// (ms since start, routes present), for the chart.
    timeline: Vec<(f64, usize)>,
}

/// Starts the agent of `node` with `peers` in etcd and times it until all are programmed.
/// Leaves the agent running.
fn cold_start(node: &mut OverlayNode, peers: &BTreeSet<Peer>, timeout: Duration) -> ColdRun {
    check_interrupted();
    let want = route_set(peers);
    node.start_agent();
    let agent = node.agent_mut().expect("agent runs");
    let (t0, pid) = (agent.started(), agent.pid());
    let mut lease = None;
    let mut programmed = None;
    let mut timeline = Vec::new();
    let mut polls = 0u32;
    while programmed.is_none() && t0.elapsed() < timeout {
        check_interrupted();
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

/// A change the bench writes to etcd.
#[derive(Clone, Debug)]
enum Op {
    Join(Peer),
    Leave(Peer),
}

/// What one burst of writes cost the agent and how fast the kernel followed.
#[derive(Clone, Debug, Default)]
struct BurstOutcome {
    ops: usize,
    /// First write sent to last write answered.
    write_ms: f64,
    /// Last write answered to the routes being exactly the expected ones (`None`: not
    /// within the timeout).
    settle_ms: Option<f64>,
    /// Neighbours, FDB entries and routes exactly the expected peers afterwards.
    exact: bool,
    /// etcd holds exactly the expected records, and the agent's own (its lease renewed).
    etcd_exact: bool,
    /// Range requests etcd started from the burst's start until the agent was quiet.
    range_requests: u64,
    /// The agent's CPU time over the same window.
    cpu_ms: f64,
    /// etcd's CPU time over the same window (the bench's writes included).
    etcd_cpu_ms: f64,
    /// Batches the agent logged as `applied <E> events...`, and their events.
    applied_batches: usize,
    applied_events: u64,
    /// Mean time between two reads of the routes.
    poll_ms: f64,
    /// (ms since the first write, writes answered, routes present), for the chart.
    timeline: Vec<(f64, usize, usize)>,
}

/// Writes `ops` one request each (at `per_second` if given, else as fast as etcd answers)
/// while polling the device, then waits (bounded) until the routes are exactly `after`.
fn burst(
    bed: &mut Bed,
    node: &OverlayNode,
    prefix: &str,
    ops: &[Op],
    per_second: Option<f64>,
    after: &BTreeSet<Peer>,
    timeout: Duration,
) -> BurstOutcome {
    check_interrupted();
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
                check_interrupted();
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
            check_interrupted();
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
        check_interrupted();
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

/// A pseudo-random sequence (xorshift64*), fixed seed: the same churn every run.
struct Shuffle(u64);

impl Shuffle {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as usize % n
    }
}

/// The churn's writes: every second, `per_second` peers of `current` deleted and as many new
/// ones (numbered from `next`) added, alternating; updates `current` and `next`.
fn churn_ops(
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

/// The resync scenario's result.
#[derive(Clone, Debug)]
struct ResyncOutcome {
    start: ColdRun,
    /// Every `full reconcile` line, the start's first.
    lines: Vec<FullReconcile>,
    /// How long each full reconcile took that ran while the kernel was watched (all of them
    /// should be no-ops: nothing changed in etcd).
    noop_ms: Vec<f64>,
    /// Full reconciles while watched that were not no-ops over all peers.
    not_noop: usize,
    /// Route and neighbour/FDB notifications the kernel sent meanwhile (`ip monitor`): a
    /// no-op resync writes nothing, so there should be none.
    kernel_changes: Vec<String>,
    /// Whether the monitor reported its canary (else its silence proves nothing).
    monitor_heard: bool,
    /// At least `resyncs` watched reconciles, every one a no-op over all peers, no kernel
    /// change (from a monitor that was listening), and the state still exact afterwards.
    correct: bool,
    hwm_kib: u64,
    rss_kib: u64,
}

/// `ip monitor route neigh` in a node namespace (neighbour and FDB notifications both come
/// through the neighbour group), its output to a file; killed when dropped.
struct KernelMonitor {
    child: std::process::Child,
    out: tempfile::NamedTempFile,
}

/// A neighbour the monitor must report, on the underlay link (never the VXLAN device's): proof
/// that the monitor was listening, so that "no notification" means something.
const MONITOR_CANARY: &str = "172.30.0.250";

impl KernelMonitor {
    fn start(netns: &Netns) -> KernelMonitor {
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
    fn finish(mut self) -> (bool, Vec<String>) {
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
fn resync_scenario(bed: &mut Bed, peers: &BTreeSet<Peer>, sizes: &Sizes) -> ResyncOutcome {
    let mut node = bed.node(COLD_PREFIX, sizes.resync_seconds);
    let start = cold_start(&mut node, peers, sizes.timeout);
    let monitor = KernelMonitor::start(node.netns());
    let log_from = log_len(&node);
    let deadline = Instant::now()
        + Duration::from_secs(sizes.resync_seconds * (sizes.resyncs as u64 + 2) + 10);
    let mut watched = Vec::new();
    while Instant::now() < deadline {
        check_interrupted();
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

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vxlan-scale-bench: {e}");
            std::process::exit(2);
        }
    };
    require_root();
    let handler = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &handler) }.expect("install signal handler");
    }
    let started = Instant::now();
    let doc = run(&args);
    let md = markdown(&doc, started.elapsed());
    fs::create_dir_all(&args.out).expect("create --out directory");
    fs::write(
        args.out.join("vxlan-scale.json"),
        serde_json::to_string_pretty(&doc).expect("serialize"),
    )
    .expect("write vxlan-scale.json");
    fs::write(args.out.join("vxlan-scale.md"), &md).expect("write vxlan-scale.md");
    fs::write(args.out.join("vxlan-scale.svg"), chart(&doc)).expect("write vxlan-scale.svg");
    print!("{md}");
    if doc["correct"] != json!(true) {
        eprintln!("vxlan-scale-bench: a correctness check failed (see \"correct\" in the JSON)");
        std::process::exit(1);
    }
}

/// The agent binary's `--version` line (which agent was measured).
fn agent_version() -> String {
    let bin = cni_testkit::plugin::plugin_binary(cni_testkit::overlay::PLUGIN);
    std::process::Command::new(&bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|t| t.lines().next().map(str::to_owned))
        .unwrap_or_else(|| format!("{} (no --version)", bin.display()))
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// A JSON number, or null for NaN/None (JSON has no NaN).
fn num(x: Option<f64>) -> Value {
    x.filter(|x| x.is_finite())
        .map_or(Value::Null, |x| json!(x))
}

fn cold_json(r: &ColdRun) -> Value {
    json!({
        "peers": r.peers,
        "lease_ms": num(Some(r.lease_ms)),
        "programmed_ms": num(r.programmed_ms),
        "exact": r.exact,
        "cpu_ms": r.cpu_ms,
        "peak_rss_kib": r.hwm_kib,
        "poll_ms": r.poll_ms,
    })
}

fn burst_json(b: &BurstOutcome, what: &str) -> Value {
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
        "settle_ms": num(b.settle_ms),
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

/// Brings the records under `prefix` from `current` to exactly `want` (deletes one by one,
/// puts in transactions).
fn set_records(bed: &mut Bed, prefix: &str, current: &BTreeSet<Peer>, want: &BTreeSet<Peer>) {
    for p in current.difference(want) {
        bed.gw.delete(&subnet_key(prefix, p.subnet));
    }
    let add: Vec<&Peer> = want.difference(current).collect();
    bed.put_peers(prefix, add);
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

    let joining: Vec<Peer> = (next..next + s.joins).map(fake_peer).collect();
    next += s.joins;
    current.extend(joining.iter().cloned());
    let ops: Vec<Op> = joining.iter().cloned().map(Op::Join).collect();
    let join = burst(
        &mut bed,
        &node,
        BURST_PREFIX,
        &ops,
        None,
        &current,
        s.timeout,
    );
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
    let leave = burst(
        &mut bed,
        &node,
        BURST_PREFIX,
        &ops,
        None,
        &current,
        s.timeout,
    );
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
        &node,
        BURST_PREFIX,
        &ops,
        Some(2.0 * per_second as f64),
        &current,
        s.timeout,
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
                "programmed_median_ms": num(Some(median(&t))),
                "programmed_min_ms": num(Some(lo)),
                "programmed_max_ms": num(Some(hi)),
                "all_programmed": runs.iter().all(|r| r.programmed_ms.is_some()),
                "lease_median_ms": num(Some(median(&runs.iter().map(|r| r.lease_ms).collect::<Vec<_>>()))),
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
        "kernel": kernel_release(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
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
            "noop_median_ms": num(Some(median(&resync.noop_ms))),
            "noop_max_ms": num(Some(min_max(&resync.noop_ms).1)),
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

fn yes_no(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "n/a",
    }
}

/// Thousands separated by commas, as the issue writes sizes.
fn count(n: u64) -> String {
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

fn markdown(doc: &Value, took: Duration) -> String {
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

/// The chart: cold start time against peers (median, min–max, the 2 s goal), and the join
/// burst's writes and programmed routes over time.
fn chart(doc: &Value) -> String {
    let mut svg = String::new();
    if let Err(e) = draw_chart(doc, &mut svg) {
        eprintln!("vxlan-scale-bench: chart not drawn: {e}");
    }
    svg
}

fn draw_chart(doc: &Value, svg: &mut String) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let root = SVGBackend::with_string(svg, (1100, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(550);

    let sizes: Vec<&Value> = doc["cold_start"]["by_size"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let max_peers = sizes.iter().map(|b| f(&b["peers"])).fold(1.0, f64::max);
    let max_ms = sizes
        .iter()
        .map(|b| f(&b["programmed_max_ms"]))
        .filter(|x| x.is_finite())
        .fold(GOAL_COLD_MS, f64::max);
    let mut c = ChartBuilder::on(&left)
        .caption(
            "cold start: agent start → all peers programmed",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..max_peers * 1.05, 0f64..max_ms * 1.15)?;
    c.configure_mesh()
        .light_line_style(WHITE)
        .x_desc("peers in etcd")
        .y_desc("ms")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    let medians: Vec<(f64, f64)> = sizes
        .iter()
        .map(|b| (f(&b["peers"]), f(&b["programmed_median_ms"])))
        .filter(|(_, y)| y.is_finite())
        .collect();
    c.draw_series(LineSeries::new(medians.clone(), BLUE.stroke_width(2)))?
        .label("median")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE.stroke_width(2)));
    c.draw_series(medians.iter().map(|&p| Circle::new(p, 4, BLUE.filled())))?;
    c.draw_series(sizes.iter().filter_map(|b| {
        let (x, lo, hi) = (
            f(&b["peers"]),
            f(&b["programmed_min_ms"]),
            f(&b["programmed_max_ms"]),
        );
        (lo.is_finite() && hi.is_finite())
            .then(|| PathElement::new(vec![(x, lo), (x, hi)], BLUE.stroke_width(1)))
    }))?
    .label("min–max")
    .legend(|(x, y)| PathElement::new(vec![(x + 9, y - 6), (x + 9, y + 6)], BLUE));
    c.draw_series(LineSeries::new(
        vec![(0.0, GOAL_COLD_MS), (max_peers * 1.05, GOAL_COLD_MS)],
        RED.stroke_width(1),
    ))?
    .label("goal at 5,000 peers: < 2 s")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED));
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;

    let join = &doc["join"];
    let points: Vec<(f64, f64, f64)> = join["timeline_ms_written_routes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?, p[2].as_f64()?)))
        .collect();
    let base = f(&doc["sizes"]["join_base"]);
    let t_max = points.iter().map(|p| p.0).fold(1.0, f64::max);
    let n_max = points
        .iter()
        .map(|p| p.2.max(p.1 + base))
        .fold(base + 1.0, f64::max);
    let mut c = ChartBuilder::on(&right)
        .caption(
            format!(
                "{} joins one by one onto {base} peers",
                f(&doc["sizes"]["joins"])
            ),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..t_max * 1.05, (base * 0.98).floor()..n_max * 1.01)?;
    c.configure_mesh()
        .light_line_style(WHITE)
        .x_desc("ms since the first write")
        .y_desc("peers")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    c.draw_series(LineSeries::new(
        points.iter().map(|p| (p.0, base + p.1)),
        BLACK.stroke_width(1),
    ))?
    .label("records written to etcd")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK));
    c.draw_series(LineSeries::new(
        points.iter().map(|p| (p.0, p.2)),
        GREEN.stroke_width(2),
    ))?
    .label("routes on the VXLAN device")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], GREEN.stroke_width(2)));
    c.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
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

    #[test]
    fn fake_peers_are_distinct_and_outside_the_agents_subnet() {
        let a = fake_peer(0);
        assert_eq!(a.subnet.to_string(), "10.1.0.0/24");
        assert_eq!(a.underlay.to_string(), "198.18.0.1");
        assert_eq!(a.vtep_mac, "0e:5c:00:00:00:00");
        let b = fake_peer(MAX_PEERS - 1);
        assert_eq!(b.subnet.to_string(), "10.254.255.0/24");
        let set: BTreeSet<Ipv4Net> = (0..3000).map(|i| fake_peer(i).subnet).collect();
        assert_eq!(set.len(), 3000);
    }

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

    #[test]
    fn counts_have_thousands_separators() {
        assert_eq!(count(5000), "5,000");
        assert_eq!(count(500), "500");
        assert_eq!(count(1234567), "1,234,567");
    }
}
