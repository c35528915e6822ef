//! The command line: scenario sizes, full size by default, CI sizes with `--small`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Fake peers are numbered; subnet 10.(1 + i/256).(i%256).0/24 bounds their number.
pub const MAX_PEERS: usize = 254 * 256;

/// The options as given; [`Args::resolve`] fills in the defaults, which depend on `--small`.
#[derive(Parser)]
#[command(
    name = "vxlan-scale-bench",
    disable_version_flag = true,
    about = "One vxlan-overlay agent against a real etcd holding thousands of fake node records.",
    long_about = "\
One vxlan-overlay agent in a node namespace against a real etcd (data on a tmpfs) holding
fake node records: cold start, a no-op full resync, joins and leaves one by one, churn. Times
come from the kernel's view of the VXLAN device; etcd's /metrics gives the agent's requests,
/proc its CPU time and peak RSS. Writes vxlan-scale.md, vxlan-scale.json and vxlan-scale.svg,
prints the markdown, and exits 1 if a peer set was wrong after a scenario. Needs root, etcd
and the release vxlan-overlay binary next to this one. Full size by default."
)]
struct Options {
    /// CI sizes: cold start 1000,2000 peers, 100 joins onto 400, 100 leaves, churn 500 peers
    /// at 10 %/s for 5 s, resync at 2000 peers, leaseTTL 6
    #[arg(long)]
    small: bool,
    /// peers in etcd at each cold start [default: 1000,2000,3000,4000,5000]
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    cold_sizes: Option<Vec<usize>>,
    /// cold starts per size [default: 3; 1 with --small]
    #[arg(long, value_name = "N")]
    cold_runs: Option<usize>,
    /// peers of the resync scenario [default: the largest cold size]
    #[arg(long, value_name = "N")]
    resync_peers: Option<usize>,
    /// that agent's resyncSeconds
    #[arg(long, value_name = "S", default_value_t = 2)]
    resync_seconds: u64,
    /// no-op resyncs to wait for [default: 3; 2 with --small]
    #[arg(long, value_name = "N")]
    resyncs: Option<usize>,
    /// peers before the joins [default: churn peers - joins]
    #[arg(long, value_name = "N")]
    join_base: Option<usize>,
    /// nodes joining one by one [default: 500; 100 with --small]
    #[arg(long, value_name = "N")]
    joins: Option<usize>,
    /// nodes leaving one by one, after the joins [default: 500; 100 with --small]
    #[arg(long, value_name = "N")]
    leaves: Option<usize>,
    /// peers during churn [default: 2500; 500 with --small]
    #[arg(long, value_name = "N")]
    churn_peers: Option<usize>,
    /// peers replaced per second
    #[arg(long, value_name = "P", default_value_t = 10)]
    churn_percent: usize,
    /// churn duration [default: 30; 5 with --small]
    #[arg(long, value_name = "S")]
    churn_seconds: Option<usize>,
    /// the agents' leaseTTL [default: 30; 6 with --small]; each scenario checks the agent's
    /// own record is still in etcd
    #[arg(long, value_name = "S")]
    lease_ttl: Option<u64>,
    /// bound on each wait for convergence, seconds
    #[arg(long, value_name = "S", default_value_t = 60)]
    timeout: u64,
    /// where the files go
    #[arg(long, value_name = "DIR", default_value = "conformance/results")]
    out: PathBuf,
    /// version and the CNI spec version of the conflists it writes
    #[arg(short = 'V', long)]
    version: bool,
}

/// Scenario sizes.
#[derive(Clone, Debug)]
pub struct Sizes {
    pub cold_sizes: Vec<usize>,
    pub cold_runs: usize,
    pub resync_peers: usize,
    pub resync_seconds: u64,
    pub resyncs: usize,
    pub join_base: usize,
    pub joins: usize,
    pub leaves: usize,
    pub churn_peers: usize,
    pub churn_percent: usize,
    pub churn_seconds: usize,
    pub lease_ttl: u64,
    pub timeout: Duration,
}

/// What the bench runs with.
pub struct Args {
    pub sizes: Sizes,
    pub small: bool,
    pub out: PathBuf,
    /// `--version`: print the banner, run nothing.
    pub version: bool,
}

impl Args {
    /// Parses the command line (clap's usage error, exit 2, on a malformed one) and checks
    /// the sizes together.
    pub fn parse() -> Result<Args, String> {
        resolve(Options::parse())
    }
}

/// The defaults `--small` changes, then the checks across options.
fn resolve(o: Options) -> Result<Args, String> {
    let pick = |given: Option<usize>, full: usize, small: usize| {
        given.unwrap_or(if o.small { small } else { full })
    };
    let mut cold_sizes = o.cold_sizes.clone().unwrap_or_else(|| {
        if o.small {
            vec![1000, 2000]
        } else {
            vec![1000, 2000, 3000, 4000, 5000]
        }
    });
    cold_sizes.sort_unstable();
    cold_sizes.dedup();
    let largest = *cold_sizes.last().ok_or("--cold-sizes is empty")?;
    let joins = pick(o.joins, 500, 100);
    let churn_peers = pick(o.churn_peers, 2500, 500);
    let sizes = Sizes {
        resync_peers: o.resync_peers.unwrap_or(largest),
        join_base: o.join_base.unwrap_or(churn_peers.saturating_sub(joins)),
        cold_sizes,
        cold_runs: pick(o.cold_runs, 3, 1),
        resync_seconds: o.resync_seconds,
        resyncs: pick(o.resyncs, 3, 2),
        joins,
        leaves: pick(o.leaves, 500, 100),
        churn_peers,
        churn_percent: o.churn_percent,
        churn_seconds: pick(o.churn_seconds, 30, 5),
        // Short in CI: a run of ~15 s then outlasts two TTLs, so an agent whose renewals
        // stall behind its dataplane work loses its record before the bench looks.
        lease_ttl: o.lease_ttl.unwrap_or(if o.small { 6 } else { 30 }),
        timeout: Duration::from_secs(o.timeout),
    };
    check(&sizes)?;
    Ok(Args {
        sizes,
        small: o.small,
        out: o.out,
        version: o.version,
    })
}

/// The limits across options that clap cannot state one option at a time.
fn check(s: &Sizes) -> Result<(), String> {
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
    let largest = s.cold_sizes.last().copied().unwrap_or(0);
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> Result<Args, String> {
        let o = Options::try_parse_from(
            std::iter::once("vxlan-scale-bench").chain(argv.iter().copied()),
        )
        .map_err(|e| e.to_string())?;
        resolve(o)
    }

    #[test]
    fn small_changes_the_defaults_and_explicit_options_win() {
        let a = args(&["--small"]).expect("valid");
        assert_eq!(a.sizes.cold_sizes, vec![1000, 2000]);
        assert_eq!(
            (a.sizes.cold_runs, a.sizes.joins, a.sizes.lease_ttl),
            (1, 100, 6)
        );
        assert_eq!(a.sizes.join_base, 400);
        assert_eq!(a.sizes.resync_peers, 2000);
        let a = args(&["--small", "--cold-sizes", "300,100,300", "--joins", "50"]).expect("valid");
        assert_eq!(a.sizes.cold_sizes, vec![100, 300]);
        assert_eq!((a.sizes.joins, a.sizes.join_base), (50, 450));
        let full = args(&[]).expect("valid");
        assert_eq!(full.sizes.cold_sizes.len(), 5);
        assert_eq!((full.sizes.lease_ttl, full.sizes.churn_seconds), (30, 30));
    }

    #[test]
    fn inconsistent_sizes_are_refused() {
        assert!(args(&["--lease-ttl", "2"]).is_err());
        assert!(args(&["--churn-percent", "0"]).is_err());
        assert!(args(&["--joins", "10", "--join-base", "0", "--leaves", "11"]).is_err());
        assert!(args(&["--cold-runs", "50"]).is_err(), "too many agents");
        assert!(args(&["--frob"]).is_err());
    }
}
