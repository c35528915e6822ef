//! `cni-bench`: ADD and DEL latency (median, p99), single and concurrent, and peak RSS per
//! exec of kubenet-bridge against the reference `bridge` + `host-local`, side by side in one
//! run, inside a throwaway node namespace, with vxlan-overlay's pod path (the same attach code,
//! plus reading the agent's subnet.env) as a third row. Writes the table as markdown, JSON and
//! SVG (the chart through plotters; `--redraw` draws it again from a bench.json).
//!
//! Usage (`--help` for the whole): `cni-bench [--ours DIR] [--reference DIR] [--rounds N]
//! [--concurrency N] [--out DIR]`, or `cni-bench --redraw [--out DIR]`. Run as root; Ctrl-C
//! stops it between rounds and removes its namespaces. Masquerade is off on both sides: the
//! reference's per-pod iptables chains would flatter us.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::builder::TypedValueParser;
use clap::Parser;
use cni_benches::{chart, interrupt, report, stats};
use cni_testkit::netns::{Netns, Node};
use serde_json::{json, Value};

/// The spec version both sides are configured with (one version: the table compares
/// plugins, not versions).
const SPEC_VERSION: &str = "1.0.0";

#[derive(Parser)]
#[command(
    name = "cni-bench",
    disable_version_flag = true,
    about = "ADD and DEL latency and peak RSS of kubenet-bridge against the reference bridge + \
             host-local, and of vxlan-overlay's pod path.",
    long_about = "\
ADD and DEL latency (median, p99), one at a time and concurrent, peak RSS per exec and binary
sizes of kubenet-bridge against the reference bridge + host-local, in one run inside a
throwaway node namespace; vxlan-overlay's pod path (a subnet.env as the agent writes it, no
agent running) is measured alongside. Writes bench.md, bench.json and bench.svg. Needs root
(not with --redraw)."
)]
struct Args {
    /// where kubenet-bridge and vxlan-overlay are [default: this binary's directory]
    #[arg(long, value_name = "DIR")]
    ours: Option<PathBuf>,
    /// where the reference bridge and host-local are
    #[arg(long, value_name = "DIR", default_value = "/usr/lib/cni")]
    reference: PathBuf,
    /// sequential ADD/DEL rounds
    #[arg(long, value_name = "N", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    rounds: usize,
    /// concurrent ADDs, then DELs
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    concurrency: usize,
    /// where the tables go
    #[arg(long, value_name = "DIR", default_value = "conformance/results")]
    out: PathBuf,
    /// run nothing: draw bench.svg again from the bench.json in --out
    #[arg(long)]
    redraw: bool,
    /// also measure dual-stack pods (an IPv4 and an IPv6 range): kubenet-bridge's `podCIDRs`
    /// and the reference bridge + host-local with the same two ranges (off for a build of
    /// ours that predates dual-stack, as bench-compare.sh runs)
    #[arg(long)]
    dual_stack: bool,
    /// version and the CNI spec version it runs the plugins at
    #[arg(short = 'V', long)]
    version: bool,
}

/// One plugin under test: how to call it and what its config is.
struct Subject {
    label: &'static str,
    binary: PathBuf,
    cni_path: String,
    config: Value,
    /// Binaries whose sizes count (the reference execs host-local too).
    parts: Vec<PathBuf>,
}

/// One exec: wall time and the peak RSS of its process tree.
#[derive(Clone, Copy)]
struct Sample {
    took: Duration,
    max_rss_kb: i64,
}

/// Runs the plugin once and waits for it with wait4, for its rusage.
fn exec(s: &Subject, verb: &str, id: &str, netns: &str) -> Result<Sample, String> {
    let started = Instant::now();
    let mut child = Command::new(&s.binary)
        .env_clear()
        .env("CNI_COMMAND", verb)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", &s.cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", s.binary.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(s.config.to_string().as_bytes());
    }
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
    }
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child, with valid pointers.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let took = started.elapsed();
    if pid < 0 || std::process::ExitStatus::from_raw(status).code() != Some(0) {
        return Err(format!("{} {verb} {id} failed: {out}", s.label));
    }
    Ok(Sample {
        took,
        max_rss_kb: usage.ru_maxrss,
    })
}

fn summarize(samples: &[Sample]) -> Value {
    let mut ms: Vec<f64> = samples.iter().map(|s| stats::ms(s.took)).collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    let rss = samples.iter().map(|s| s.max_rss_kb).max().unwrap_or(0);
    json!({"n": ms.len(), "median_ms": stats::percentile(&ms, 50.0), "p99_ms": stats::percentile(&ms, 99.0), "max_rss_kb": rss})
}

/// ADD then DEL of `pods` one at a time; returns (add samples, del samples).
fn sequential(
    s: &Subject,
    pods: &[Netns],
    tag: &str,
) -> Result<(Vec<Sample>, Vec<Sample>), String> {
    let mut adds = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        adds.push(exec(
            s,
            "ADD",
            &format!("{tag}{i}"),
            &p.path().to_string_lossy(),
        )?);
    }
    let mut dels = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        dels.push(exec(
            s,
            "DEL",
            &format!("{tag}{i}"),
            &p.path().to_string_lossy(),
        )?);
    }
    Ok((adds, dels))
}

/// All ADDs at once, then all DELs at once.
fn concurrent(
    s: &Subject,
    pods: &[Netns],
    tag: &str,
) -> Result<(Vec<Sample>, Vec<Sample>), String> {
    let run = |verb: &str| -> Result<Vec<Sample>, String> {
        std::thread::scope(|scope| {
            let handles: Vec<_> = pods
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let id = format!("{tag}{i}");
                    let ns = p.path().to_string_lossy().into_owned();
                    scope.spawn(move || exec(s, verb, &id, &ns))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().map_err(|_| "thread panicked".to_string())?)
                .collect()
        })
    };
    let adds = run("ADD")?;
    let dels = run("DEL")?;
    Ok((adds, dels))
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("cni-bench: {e}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<(), String> {
    let args = Args::parse();
    if args.version {
        println!(
            "{}",
            cni_testkit::version_banner("cni-bench", &[SPEC_VERSION])
        );
        return Ok(());
    }
    if args.redraw {
        return redraw(&args.out);
    }
    let ours_dir = match &args.ours {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("must run as root (it creates network namespaces)".into());
    }
    interrupt::install()?;
    let data = tempfile::tempdir().map_err(|e| e.to_string())?;
    let ours = Subject {
        label: "kubenet-bridge",
        binary: ours_dir.join("kubenet-bridge"),
        cni_path: ours_dir.display().to_string(),
        config: json!({"cniVersion": SPEC_VERSION, "name": "bench-ours", "type": "kubenet-bridge",
            "bridge": "benchbr0", "podCIDR": "10.97.0.0/24", "ipMasq": false, "mtu": 1500,
            "dataDir": data.path().join("ours")}),
        parts: vec![ours_dir.join("kubenet-bridge")],
    };
    let reference = Subject {
        label: "reference bridge+host-local",
        binary: args.reference.join("bridge"),
        cni_path: args.reference.display().to_string(),
        config: json!({"cniVersion": SPEC_VERSION, "name": "bench-ref", "type": "bridge",
            "bridge": "benchbr1", "isGateway": true, "ipMasq": false, "hairpinMode": true, "mtu": 1500,
            "ipam": {"type": "host-local", "dataDir": data.path().join("ref"),
                     "ranges": [[{"subnet": "10.97.1.0/24", "gateway": "10.97.1.1"}]],
                     "routes": [{"dst": "0.0.0.0/0"}]}}),
        parts: vec![
            args.reference.join("bridge"),
            args.reference.join("host-local"),
        ],
    };
    // vxlan-overlay's ADD reads the lease the agent wrote; the agent itself is not part of
    // a pod's ADD, so a subnet.env in flannel's format stands in for it.
    let subnet_env = data.path().join("subnet.env");
    std::fs::write(
        &subnet_env,
        "FLANNEL_NETWORK=10.97.0.0/16\nFLANNEL_SUBNET=10.97.2.1/24\nFLANNEL_MTU=1450\n\
         FLANNEL_IPMASQ=false\n",
    )
    .map_err(|e| e.to_string())?;
    let overlay = Subject {
        label: "vxlan-overlay",
        binary: ours_dir.join("vxlan-overlay"),
        cni_path: ours_dir.display().to_string(),
        config: json!({"cniVersion": SPEC_VERSION, "name": "bench-overlay", "type": "vxlan-overlay",
            "clusterCIDR": "10.97.0.0/16", "bridge": "benchbr2", "ipMasq": false,
            "peersFile": data.path().join("peers.json"), "subnetFile": subnet_env,
            "ipamDir": data.path().join("overlay"), "dataDir": data.path().join("overlay-agent")}),
        parts: vec![ours_dir.join("vxlan-overlay")],
    };
    // The same two ranges on both sides: 10.97.3.0/24 and 10.97.4.0/24 with a ULA /64 each.
    let ours_dual = Subject {
        label: "kubenet-bridge dual-stack",
        binary: ours_dir.join("kubenet-bridge"),
        cni_path: ours_dir.display().to_string(),
        config: json!({"cniVersion": SPEC_VERSION, "name": "bench-ours-ds", "type": "kubenet-bridge",
            "bridge": "benchbr3", "podCIDRs": ["10.97.3.0/24", "fd00:97:3::/64"], "ipMasq": false,
            "mtu": 1500, "dataDir": data.path().join("ours-ds")}),
        parts: vec![ours_dir.join("kubenet-bridge")],
    };
    let reference_dual = Subject {
        label: "reference dual-stack",
        binary: args.reference.join("bridge"),
        cni_path: args.reference.display().to_string(),
        config: json!({"cniVersion": SPEC_VERSION, "name": "bench-ref-ds", "type": "bridge",
            "bridge": "benchbr4", "isGateway": true, "ipMasq": false, "hairpinMode": true, "mtu": 1500,
            "ipam": {"type": "host-local", "dataDir": data.path().join("ref-ds"),
                     "ranges": [[{"subnet": "10.97.4.0/24", "gateway": "10.97.4.1"}],
                                [{"subnet": "fd00:97:4::/64", "gateway": "fd00:97:4::1"}]],
                     "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}}),
        parts: vec![
            args.reference.join("bridge"),
            args.reference.join("host-local"),
        ],
    };
    let mut subjects = vec![&ours, &reference, &overlay];
    if args.dual_stack {
        subjects.extend([&ours_dual, &reference_dual]);
    }
    let subjects = subjects;
    for s in subjects.iter().copied() {
        if !s.binary.exists() {
            return Err(format!("{} not found", s.binary.display()));
        }
    }
    let pods_needed = args.rounds.max(args.concurrency);
    // Guards from the test kit: the namespaces go when this returns, on errors too.
    let node = Node::new();
    let pods: Vec<Netns> = (0..pods_needed).map(|_| Netns::new("cnibench-")).collect();
    // Plugins are exec'd straight into the node (no `ip netns exec` in the measured time) and
    // see it as the host; this is the only thread yet, so every later one is born there too.
    node.netns()
        .enter_thread()
        .map_err(|e| format!("entering {}: {e}", node.netns().name()))?;
    let seq_pods = &pods[..args.rounds];
    let conc_pods = &pods[..args.concurrency];
    // Warm-up: creates each bridge, so both sides are measured on a node already set up.
    for s in subjects.iter().copied() {
        sequential(s, &seq_pods[..1], "warm")?;
    }
    // Interleaved in rounds of 5 so that machine noise hits both sides alike.
    let mut results: BTreeMap<&str, [Vec<Sample>; 4]> = BTreeMap::new();
    for chunk in seq_pods.chunks(5) {
        for s in subjects.iter().copied() {
            interrupt::check();
            let (a, d) = sequential(s, chunk, "seq")?;
            let e = results.entry(s.label).or_default();
            e[0].extend(a);
            e[1].extend(d);
        }
    }
    for s in subjects.iter().copied() {
        interrupt::check();
        let (a, d) = concurrent(s, conc_pods, "conc")?;
        let e = results.entry(s.label).or_default();
        e[2].extend(a);
        e[3].extend(d);
    }
    let mut rows = Vec::new();
    for s in subjects.iter().copied() {
        let r = &results[s.label];
        let size: u64 = s
            .parts
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        rows.push(json!({
            "plugin": s.label,
            "add": summarize(&r[0]), "del": summarize(&r[1]),
            "add_concurrent": summarize(&r[2]), "del_concurrent": summarize(&r[3]),
            "binary_bytes": size,
        }));
    }
    let ratio = |key: &str| {
        rows[0][key]["median_ms"].as_f64().unwrap_or(f64::NAN)
            / rows[1][key]["median_ms"].as_f64().unwrap_or(f64::NAN)
    };
    let mut doc = json!({
        "rounds": args.rounds, "concurrency": args.concurrency,
        "results": rows,
        "ratio_median": {"add": ratio("add"), "del": ratio("del"),
                         "add_concurrent": ratio("add_concurrent"), "del_concurrent": ratio("del_concurrent")},
    });
    if args.dual_stack {
        // Rows 3 and 4: dual-stack ours and reference. The goal is on ours' dual-stack ADD
        // against ours' IPv4-only ADD; the reference's ratio is reported (it waits for DAD).
        let rows = &doc["results"];
        let per = |a: usize, b: usize, key: &str| {
            rows[a][key]["median_ms"].as_f64().unwrap_or(f64::NAN)
                / rows[b][key]["median_ms"].as_f64().unwrap_or(f64::NAN)
        };
        let mut dual = serde_json::Map::new();
        for key in ["add", "del", "add_concurrent", "del_concurrent"] {
            dual.insert(
                key.into(),
                json!({"ours_dual_vs_ours_ipv4": per(3, 0, key),
                       "reference_dual_vs_reference_ipv4": per(4, 1, key),
                       "ours_dual_vs_reference_dual": per(3, 4, key)}),
            );
        }
        doc["dual_stack_ratio_median"] = Value::Object(dual);
    }
    let md = markdown(&doc);
    report::write(
        &args.out,
        "bench",
        &doc,
        &md,
        Some(&chart::latency_bars(&doc)?),
    )?;
    print!("{md}");
    Ok(())
}

fn markdown(doc: &Value) -> String {
    let mut s = format!(
        "| plugin | ADD median | ADD p99 | DEL median | DEL p99 | ADD median ×{c} | ADD p99 ×{c} | DEL median ×{c} | DEL p99 ×{c} | peak RSS | binary |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
        c = doc["concurrency"]
    );
    for r in doc["results"].as_array().into_iter().flatten() {
        let ms = |k: &str, q: &str| format!("{:.2} ms", r[k][q].as_f64().unwrap_or(f64::NAN));
        let rss = ["add", "del", "add_concurrent", "del_concurrent"]
            .iter()
            .filter_map(|k| r[*k]["max_rss_kb"].as_i64())
            .max()
            .unwrap_or(0);
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} MB | {:.1} MB |\n",
            r["plugin"].as_str().unwrap_or("?"),
            ms("add", "median_ms"),
            ms("add", "p99_ms"),
            ms("del", "median_ms"),
            ms("del", "p99_ms"),
            ms("add_concurrent", "median_ms"),
            ms("add_concurrent", "p99_ms"),
            ms("del_concurrent", "median_ms"),
            ms("del_concurrent", "p99_ms"),
            rss as f64 / 1024.0,
            r["binary_bytes"].as_f64().unwrap_or(0.0) / 1e6,
        );
    }
    let q = &doc["ratio_median"];
    s += &format!(
        "\nOurs ÷ reference (medians): ADD {:.2}×, DEL {:.2}×, concurrent ADD {:.2}×, concurrent DEL {:.2}×. {} sequential rounds, {} concurrent.\n",
        q["add"].as_f64().unwrap_or(f64::NAN),
        q["del"].as_f64().unwrap_or(f64::NAN),
        q["add_concurrent"].as_f64().unwrap_or(f64::NAN),
        q["del_concurrent"].as_f64().unwrap_or(f64::NAN),
        doc["rounds"],
        doc["concurrency"]
    );
    if let Some(d) = doc.get("dual_stack_ratio_median") {
        let r = |k: &str, w: &str| d[k][w].as_f64().unwrap_or(f64::NAN);
        s += &format!(
            "\nDual-stack (medians): ours dual-stack ÷ ours IPv4-only ADD {:.2}× (goal ≤ 1.25×), DEL {:.2}×, concurrent ADD {:.2}×; reference dual-stack ÷ reference IPv4-only ADD {:.2}×; ours ÷ reference, both dual-stack: ADD {:.2}×, DEL {:.2}×.\n",
            r("add", "ours_dual_vs_ours_ipv4"),
            r("del", "ours_dual_vs_ours_ipv4"),
            r("add_concurrent", "ours_dual_vs_ours_ipv4"),
            r("add", "reference_dual_vs_reference_ipv4"),
            r("add", "ours_dual_vs_reference_dual"),
            r("del", "ours_dual_vs_reference_dual"),
        );
    }
    s
}

/// `--redraw`: bench.svg again from the bench.json in `out`, without running anything.
fn redraw(out: &Path) -> Result<(), String> {
    let path = out.join("bench.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::write(out.join("bench.svg"), chart::latency_bars(&doc)?)
        .map_err(|e| format!("{}: {e}", out.join("bench.svg").display()))
}
