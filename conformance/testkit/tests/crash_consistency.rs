//! Crash consistency of `kubenet-bridge`: 1000 ADD/DEL cycles in a throwaway node namespace
//! with the plugin SIGKILLed at random instants, then proof that no address is ever held by
//! two pods, that GC reclaims every leaked allocation, and that DEL plus GC leave nothing.
//!
//! The model is a runtime's: a pod sandbox (one of a few reused namespaces) gets a fresh
//! container id per cycle; a failed or killed ADD is followed by DEL (containerd tears down a
//! sandbox whose setup failed), sometimes by a retried ADD first; a killed DEL is retried, or
//! the sandbox is destroyed without one (its namespace deleted), which leaks the lease for GC
//! to find. GC runs every [`CHECK_EVERY`] cycles, itself killed at times, with
//! `cni.dev/valid-attachments` listing the pods really attached.
//!
//! Beside that run, focused tests sweep the kill instant across one verb at a time (every
//! 100 µs from spawn to 6 ms, then every millisecond to 25 ms): an ADD killed and then deleted, a killed ADD retried, a killed DEL
//! retried, and GC killed while destroyed sandboxes leak leases; each ends with the node drained
//! to nothing but the lock, the round-robin hint and an empty index.
//!
//! The plugin is exec'd directly into the node namespace (`setns` between fork and exec), not
//! through `ip netns exec`: that wrapper spends the first milliseconds setting up a mount
//! namespace, where most kills would land instead of in the plugin.
//!
//! Kill instants: two thirds of the scheduled kills come 0-3 ms after spawn, the rest 3-25 ms
//! after. On this 2-core machine, under load, an unkilled ADD took 6.7 ms (median, spawn to
//! exit; p90 12 ms) and a DEL 19 ms (the kernel's veth deletion waits for RCU): a 3 ms window
//! alone would never kill an ADD while it configures the pod, or a DEL after the veth is gone
//! and before the lease is released. The test prints which step each killed run had reached.
//!
//! The same runs on a dual-stack network (`podCIDRs`, an IPv4 and an IPv6 range): each attachment
//! holds one address per family, whose files are linked after one index entry naming both, so a
//! kill between them must still never leave an address with two owners, nor an owner with two
//! addresses of one family.
//!
//! Randomness is a seeded splitmix64: the default seed gives the same schedule every run; set
//! `CNI_CRASH_SEED` to try another (a failure prints the seed to rerun it). Kill instants
//! still depend on timing, so a run is repeatable in schedule, not instant by instant.
//!
//! ```text
//! cargo build --release -p kubenet-bridge
//! cargo test --release -p cni-testkit --test crash_consistency -- --nocapture
//! ```

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use cni_testkit::leases::LeaseDir;
use cni_testkit::netns::{Netns, Node};
use cni_testkit::plugin::plugin_binary;
use cni_testkit::result::host_veth_name;
use cni_testkit::{eventually, require_root, unique_link_name, unique_name};
use ipnet::IpNet;
use serde_json::{json, Value};
use tempfile::TempDir;

/// ADD/DEL cycles, each with a fresh container id.
const CYCLES: usize = 1000;
/// Pod sandboxes (namespaces) the cycles reuse.
const SLOTS: usize = 8;
/// Cycles between GC runs and full invariant checks.
const CHECK_EVERY: usize = 50;
/// Share of plugin runs (in percent) that get a SIGKILL scheduled.
const KILL_PERCENT: u64 = 50;
/// Most kills come uniformly 0 to this many microseconds after spawn.
const EARLY_KILL_US: u64 = 3_000;
/// The others (one in [`LATE_KILL_SHARE`]) come from [`EARLY_KILL_US`] to this, to reach the
/// late steps of ADD and DEL.
const LATE_KILL_US: u64 = 25_000;
/// One scheduled kill in this many is a late one.
const LATE_KILL_SHARE: u64 = 3;
/// Share (percent) of killed DELs whose sandbox is destroyed instead of retried.
const ABANDON_PERCENT: u64 = 50;
/// Share (percent) of killed ADDs retried with the same container id before the DEL.
const RETRY_ADD_PERCENT: u64 = 30;
/// Share (percent) of successful ADDs left attached until the slot is next used.
const KEEP_PERCENT: u64 = 40;
/// Default schedule seed.
const DEFAULT_SEED: u64 = 0x6b75_6265_6e65_7407;

const PLUGIN: &str = "kubenet-bridge";
const VERSION: &str = "1.1.0";
const POD_CIDR: &str = "10.244.7.0/24";
/// The IPv6 range of the dual-stack runs.
const POD_CIDR_V6: &str = "fd00:10:244:7::/64";
/// Cycles of the dual-stack run (each exec also sets up IPv6: fewer, for the same time).
const DUAL_CYCLES: usize = 400;
const IFNAME: &str = "eth0";
/// The spec's "container already has this interface" code: what a retried ADD may get when
/// the killed one had created the veth already.
const ALREADY_ATTACHED: u64 = 102;

/// splitmix64: small, seedable, good enough to schedule faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True `percent` times in a hundred.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// How one plugin run ended.
#[derive(Debug)]
enum Outcome {
    /// Exit 0, with stdout.
    Ok(String),
    /// Exit non-zero, with the CNI error code if stdout held one, and a description.
    Failed(Option<u64>, String),
    /// SIGKILLed by the test before it exited.
    Killed,
}

impl Outcome {
    fn expect_ok(self, ctx: &str) -> String {
        match self {
            Outcome::Ok(out) => out,
            other => panic!("{ctx}: expected success, got {other:?}"),
        }
    }
}

/// Counts of what the run did, printed at the end and checked for a real share of kills.
#[derive(Debug, Default)]
struct Stats {
    adds: usize,
    adds_killed: usize,
    add_retries: usize,
    add_retries_already_attached: usize,
    dels: usize,
    dels_killed: usize,
    sandboxes_destroyed: usize,
    gcs: usize,
    gcs_killed: usize,
    leases_reclaimed_by_gc: usize,
    /// How far each killed ADD had got, judged from the lease files and the pod.
    add_killed_at: BTreeMap<&'static str, usize>,
    /// How far each killed DEL had got.
    del_killed_at: BTreeMap<&'static str, usize>,
}

/// A pod sandbox reused across cycles, and the container attached to it now, if any.
struct Slot {
    netns: Netns,
    attached: Option<Attached>,
}

/// A container whose ADD succeeded and which has not been deleted.
#[derive(Debug, Clone)]
struct Attached {
    id: String,
    /// One per range, sorted.
    addresses: Vec<IpAddr>,
    host_veth: String,
}

/// The node, its plugin config and the pods, plus the fault schedule.
struct Harness {
    node: Node,
    /// The node namespace, open for `setns` in the plugin's child process.
    node_ns: File,
    program: PathBuf,
    data_dir: TempDir,
    name: String,
    bridge: String,
    leases: LeaseDir,
    /// `podCIDRs` with an IPv6 range beside the IPv4 one.
    dual: bool,
    slots: Vec<Slot>,
    rng: Rng,
    seed: u64,
    stats: Stats,
    /// Wall times of the runs that were not killed, by verb: what the kill window covers.
    timings: RefCell<BTreeMap<String, Vec<Duration>>>,
}

impl Harness {
    fn new() -> Harness {
        Harness::with_ranges(false)
    }

    /// A harness on a dual-stack network when `dual`.
    fn with_ranges(dual: bool) -> Harness {
        require_root();
        let seed = std::env::var("CNI_CRASH_SEED")
            .ok()
            .map(|s| {
                let s = s.trim_start_matches("0x");
                u64::from_str_radix(s, 16).expect("CNI_CRASH_SEED is a hex number")
            })
            .unwrap_or(DEFAULT_SEED);
        let program = plugin_binary(PLUGIN);
        let node = Node::new();
        let node_ns = File::open(node.netns().path()).expect("cannot open the node namespace");
        let data_dir = tempfile::Builder::new()
            .prefix("cnit-crash-")
            .tempdir()
            .expect("cannot create a dataDir");
        let name = unique_name("cnit-crash-");
        let leases = LeaseDir::new(data_dir.path(), &name);
        let slots = (0..SLOTS)
            .map(|_| Slot {
                netns: Netns::new("cnit-cpod-"),
                attached: None,
            })
            .collect();
        Harness {
            node,
            node_ns,
            program,
            bridge: unique_link_name("kc"),
            data_dir,
            name,
            leases,
            dual,
            slots,
            rng: Rng(seed),
            seed,
            stats: Stats::default(),
            timings: RefCell::default(),
        }
    }

    fn config(&self, extra: Option<(&str, Value)>) -> Value {
        let mut conf = json!({
            "cniVersion": VERSION, "name": self.name, "type": PLUGIN,
            "bridge": self.bridge, "podCIDR": POD_CIDR, "ipMasq": false,
            "hairpinMode": true, "dataDir": self.data_dir.path(),
            "logFile": self.data_dir.path().join("kubenet-bridge.log"),
        });
        if self.dual {
            let o = conf.as_object_mut().expect("config is an object");
            o.remove("podCIDR");
            o.insert("podCIDRs".into(), json!([POD_CIDR, POD_CIDR_V6]));
        }
        if let Some((key, value)) = extra {
            conf[key] = value;
        }
        conf
    }

    /// A kill instant for one run, or none, from the schedule.
    fn kill_schedule(&mut self) -> Option<Duration> {
        if !self.rng.chance(KILL_PERCENT) {
            return None;
        }
        let us = if self.rng.below(LATE_KILL_SHARE) == 0 {
            EARLY_KILL_US + self.rng.below(LATE_KILL_US - EARLY_KILL_US + 1)
        } else {
            self.rng.below(EARLY_KILL_US + 1)
        };
        Some(Duration::from_micros(us))
    }

    /// Execs the plugin in the node namespace with exactly `vars` (and PATH), `config` on
    /// stdin, and SIGKILLs it `kill_after` its spawn if it is still running then.
    fn exec(&self, vars: &[(&str, &str)], config: &Value, kill_after: Option<Duration>) -> Outcome {
        let mut cmd = Command::new(&self.program);
        cmd.env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .envs(vars.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let node_fd = self.node_ns.as_raw_fd();
        // SAFETY: setns is async-signal-safe and touches no memory of the parent; the fd stays
        // open in the parent for the whole call.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(node_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.program.display()));
        {
            // The config is far below a pipe buffer: this never blocks. A killed plugin may
            // not have read it: EPIPE is expected then.
            let mut stdin = child.stdin.take().expect("stdin is piped");
            let _ = stdin.write_all(config.to_string().as_bytes());
        }
        if let Some(delay) = kill_after {
            if let Some(left) = delay.checked_sub(started.elapsed()) {
                thread::sleep(left);
            }
            // Fails only when the child was already reaped, which cannot happen before wait.
            let _ = child.kill();
        }
        let status = child.wait().expect("cannot wait for the plugin");
        let mut stdout = String::new();
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stdout.take() {
            let _ = pipe.read_to_string(&mut stdout);
        }
        if let Some(mut pipe) = child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        if status.signal() == Some(libc::SIGKILL) {
            return Outcome::Killed;
        }
        let verb = vars
            .iter()
            .find(|(k, _)| *k == "CNI_COMMAND")
            .map_or("", |(_, v)| v);
        self.timings
            .borrow_mut()
            .entry(verb.to_owned())
            .or_default()
            .push(started.elapsed());
        let marker = cni_testkit::crash_marker(&stdout, &stderr);
        assert!(
            marker.is_none(),
            "plugin crashed ({marker:?} in its output): stdout {stdout}; stderr {stderr}"
        );
        if status.success() {
            return Outcome::Ok(stdout);
        }
        let code = serde_json::from_str::<Value>(&stdout)
            .ok()
            .and_then(|v| v["code"].as_u64());
        Outcome::Failed(
            code,
            format!(
                "exit {status}; stdout {}; stderr {}",
                stdout.trim(),
                stderr.trim()
            ),
        )
    }

    fn attachment_vars<'a>(
        &self,
        verb: &'a str,
        id: &'a str,
        netns: &'a str,
    ) -> Vec<(&'a str, &'a str)> {
        vec![
            ("CNI_COMMAND", verb),
            ("CNI_CONTAINERID", id),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", IFNAME),
            ("CNI_PATH", ""),
        ]
    }

    fn add(&self, slot: usize, id: &str, kill_after: Option<Duration>) -> Outcome {
        let netns = self.slots[slot].netns.path().to_string_lossy().into_owned();
        let vars = self.attachment_vars("ADD", id, &netns);
        self.exec(&vars, &self.config(None), kill_after)
    }

    fn del(&self, slot: usize, id: &str, kill_after: Option<Duration>) -> Outcome {
        let netns = self.slots[slot].netns.path().to_string_lossy().into_owned();
        let vars = self.attachment_vars("DEL", id, &netns);
        self.exec(&vars, &self.config(None), kill_after)
    }

    /// GC with the attached pods as `cni.dev/valid-attachments`.
    fn gc(&self, kill_after: Option<Duration>) -> Outcome {
        let valid: Vec<Value> = self
            .attached()
            .map(|a| json!({"containerID": a.id, "ifname": IFNAME}))
            .collect();
        let config = self.config(Some(("cni.dev/valid-attachments", Value::Array(valid))));
        self.exec(
            &[("CNI_COMMAND", "GC"), ("CNI_PATH", "")],
            &config,
            kill_after,
        )
    }

    fn attached(&self) -> impl Iterator<Item = &Attached> {
        self.slots.iter().filter_map(|s| s.attached.as_ref())
    }

    /// Reads a successful ADD's result: the pod's address and host veth, checked against the
    /// lease file and the other attached pods at once.
    fn record_attached(&mut self, slot: usize, id: &str, stdout: &str, ctx: &str) {
        let result: Value = serde_json::from_str(stdout)
            .unwrap_or_else(|e| panic!("{ctx}: result is not JSON ({e}): {stdout}"));
        let mut addresses: Vec<IpAddr> = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str()?.parse::<IpNet>().ok())
            .map(|n| n.addr())
            .collect();
        addresses.sort();
        let families: Vec<bool> = addresses.iter().map(IpAddr::is_ipv6).collect();
        let want_families = if self.dual {
            vec![false, true]
        } else {
            vec![false]
        };
        assert_eq!(
            families, want_families,
            "{ctx}: one address per range: {result}"
        );
        let host_veth = host_veth_name(&result, &self.bridge)
            .unwrap_or_else(|| panic!("{ctx}: result names no host veth: {result}"));
        for address in &addresses {
            let owner = read_owner(&self.lease_path(*address));
            assert_eq!(
                owner.as_ref().map(|(i, f)| (i.as_str(), f.as_str())),
                Some((id, IFNAME)),
                "{ctx}: the lease file of {address} does not name the container just attached"
            );
            if let Some(other) = self.attached().find(|a| a.addresses.contains(address)) {
                panic!("{ctx}: {address} handed out while {} holds it", other.id);
            }
        }
        self.slots[slot].attached = Some(Attached {
            id: id.to_owned(),
            addresses,
            host_veth,
        });
    }

    /// DEL of `id`, killed at times; a killed DEL is retried until it succeeds, or the
    /// sandbox is destroyed without one (leaking what the DEL did not release).
    fn del_with_faults(&mut self, slot: usize, id: &str, ctx: &str) {
        self.stats.dels += 1;
        let kill = self.kill_schedule();
        match self.del(slot, id, kill) {
            Outcome::Ok(_) => return,
            Outcome::Failed(_, why) => panic!("{ctx}: DEL failed: {why}"),
            Outcome::Killed => self.stats.dels_killed += 1,
        }
        let phase = self.del_phase(slot, id);
        *self.stats.del_killed_at.entry(phase).or_default() += 1;
        if self.rng.chance(ABANDON_PERCENT) {
            self.destroy_sandbox(slot);
        } else {
            self.del(slot, id, None)
                .expect_ok(&format!("{ctx}: DEL retried after a kill"));
        }
    }

    /// Whether a lease file names `id`, found by reading every lease file (not through the
    /// plugin's index, which is under test).
    fn is_leased(&self, id: &str) -> bool {
        let want = (id.to_owned(), IFNAME.to_owned());
        self.lease_owners("lease scan").values().any(|o| *o == want)
    }

    /// How far a killed ADD of `id` got: nothing, the lease, the veth, or the pod configured.
    fn add_phase(&self, slot: usize, id: &str) -> &'static str {
        let leased = self.is_leased(id);
        let pod = &self.slots[slot].netns;
        match (leased, pod.has_link(IFNAME), !pod_addresses(pod).is_empty()) {
            (false, false, _) => "before the lease",
            (true, false, _) => "leased, no veth yet",
            (true, true, false) => "veth created, pod not configured",
            (true, true, true) => "pod configured (result not printed)",
            (false, true, _) => "veth without a lease (unexpected)",
        }
    }

    /// How far a killed DEL of `id` got: nothing, the veth removed, or everything.
    fn del_phase(&self, slot: usize, id: &str) -> &'static str {
        let leased = self.is_leased(id);
        match (self.slots[slot].netns.has_link(IFNAME), leased) {
            (true, true) => "nothing removed yet",
            (false, true) => "veth removed, lease held",
            (false, false) => "veth and lease gone (or never there)",
            (true, false) => "lease released, veth left (unexpected)",
        }
    }

    /// Deletes the slot's namespace (the kernel destroys the veth pair in it) and gives the
    /// slot a new one, as a runtime does for a new sandbox.
    fn destroy_sandbox(&mut self, slot: usize) {
        self.stats.sandboxes_destroyed += 1;
        let old = std::mem::replace(&mut self.slots[slot].netns, Netns::new("cnit-cpod-"));
        old.delete();
        self.slots[slot].attached = None;
    }

    /// One cycle: tear down what the slot holds, ADD a fresh container (killed at times;
    /// retried or followed by DEL when it did not succeed), then DEL it or leave it attached.
    fn cycle(&mut self, n: usize) {
        let slot = self.rng.below(SLOTS as u64) as usize;
        let ctx = format!("cycle {n} (seed {:#x}), slot {slot}", self.seed);
        if let Some(old) = self.slots[slot].attached.take() {
            self.del_with_faults(slot, &old.id, &format!("{ctx}: DEL of {}", old.id));
        }
        let id = format!("crash{n:04}-{}", std::process::id());
        self.stats.adds += 1;
        let kill = self.kill_schedule();
        let mut outcome = self.add(slot, &id, kill);
        let mut retried = false;
        if matches!(outcome, Outcome::Killed) {
            self.stats.adds_killed += 1;
            let phase = self.add_phase(slot, &id);
            *self.stats.add_killed_at.entry(phase).or_default() += 1;
            if self.rng.chance(RETRY_ADD_PERCENT) {
                self.stats.add_retries += 1;
                retried = true;
                outcome = self.add(slot, &id, None);
                if let Outcome::Failed(Some(ALREADY_ATTACHED), _) = outcome {
                    self.stats.add_retries_already_attached += 1;
                }
            }
        }
        match outcome {
            Outcome::Ok(stdout) => {
                self.record_attached(slot, &id, &stdout, &format!("{ctx}: ADD of {id}"));
                if !self.rng.chance(KEEP_PERCENT) {
                    self.slots[slot].attached = None;
                    self.del_with_faults(slot, &id, &format!("{ctx}: DEL of {id}"));
                }
            }
            // A retried ADD finds the veth of the killed one: the runtime DELs then.
            Outcome::Failed(Some(ALREADY_ATTACHED), _) if retried => {
                self.del_with_faults(slot, &id, &format!("{ctx}: DEL after failed ADD of {id}"));
            }
            Outcome::Killed => {
                self.del_with_faults(slot, &id, &format!("{ctx}: DEL after failed ADD of {id}"));
            }
            Outcome::Failed(_, why) => {
                panic!("{ctx}: ADD of {id} into a clean sandbox failed: {why}")
            }
        }
    }

    /// The invariants that hold at any quiet moment, leaks included: every lease file holds
    /// one owner, no owner holds two addresses, no two pods carry one address, and each
    /// attached pod carries exactly its leased address.
    fn check_no_double_use(&self, ctx: &str) {
        let owners = self.lease_owners(ctx);
        // Per family: no owner holds two addresses of one family.
        let mut by_owner: BTreeMap<(&(String, String), bool), IpAddr> = BTreeMap::new();
        for (addr, owner) in &owners {
            if let Some(first) = by_owner.insert((owner, addr.is_ipv6()), *addr) {
                panic!("{ctx}: {owner:?} holds two addresses, {first} and {addr}");
            }
        }
        let mut carried: BTreeMap<IpAddr, usize> = BTreeMap::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let addrs = pod_addresses(&slot.netns);
            for a in &addrs {
                if let Some(j) = carried.insert(*a, i) {
                    panic!("{ctx}: pods in slots {j} and {i} both carry {a}");
                }
            }
            match &slot.attached {
                Some(att) => {
                    let want = (att.id.clone(), IFNAME.to_owned());
                    assert_eq!(
                        addrs, att.addresses,
                        "{ctx}: slot {i} ({}) must carry exactly its addresses",
                        att.id
                    );
                    for address in &att.addresses {
                        assert_eq!(
                            owners.get(address),
                            Some(&want),
                            "{ctx}: slot {i}: lease of {address} must name {}",
                            att.id
                        );
                    }
                }
                None => assert!(
                    !slot.netns.has_link(IFNAME),
                    "{ctx}: slot {i} holds no container, yet has {IFNAME} ({addrs:?})"
                ),
            }
        }
        let veths = self.node_veths();
        for att in self.attached() {
            assert_eq!(
                veths.get(&att.host_veth).map(|m| m.as_deref()),
                Some(Some(self.bridge.as_str())),
                "{ctx}: host veth {} of {} must be a port of {}",
                att.host_veth,
                att.id,
                self.bridge
            );
        }
    }

    /// GC, killed at times, then a GC that completes; afterwards the lease files are exactly
    /// the attached pods' and so are the node's veths.
    fn gc_and_check(&mut self, ctx: &str) {
        self.stats.gcs += 1;
        let before = self.lease_owners(ctx).len();
        let kill = self.kill_schedule();
        match self.gc(kill) {
            Outcome::Ok(_) => {}
            Outcome::Killed => self.stats.gcs_killed += 1,
            Outcome::Failed(_, why) => panic!("{ctx}: GC failed: {why}"),
        }
        self.gc(None).expect_ok(&format!("{ctx}: GC"));
        let owners = self.lease_owners(ctx);
        self.stats.leases_reclaimed_by_gc += before.saturating_sub(owners.len());
        let want: BTreeMap<IpAddr, (String, String)> = self
            .attached()
            .flat_map(|a| {
                a.addresses
                    .iter()
                    .map(|addr| (*addr, (a.id.clone(), IFNAME.to_owned())))
            })
            .collect();
        assert_eq!(
            owners, want,
            "{ctx}: after GC the lease files must be exactly the attached pods'"
        );
        let want_veths: BTreeSet<String> = self.attached().map(|a| a.host_veth.clone()).collect();
        let mut seen = BTreeSet::new();
        let settled = eventually(Duration::from_secs(10), || {
            seen = self.node_veths().into_keys().collect();
            seen == want_veths
        });
        assert!(
            settled,
            "{ctx}: after GC the node's veths must be the attached pods': want {want_veths:?}, \
             have {seen:?}"
        );
    }

    /// Every address file: address → (container id, ifname); panics on one that is empty or
    /// not `id\r\nifname`.
    fn lease_owners(&self, ctx: &str) -> BTreeMap<IpAddr, (String, String)> {
        let addresses: Vec<IpAddr> = fs::read_dir(self.leases.path())
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        addresses
            .into_iter()
            .filter_map(|addr| {
                let file = self.lease_path(addr);
                // Released between the listing and now: only possible with a plugin running.
                let owner = read_owner(&file)?;
                assert!(
                    !owner.0.is_empty() && !owner.1.is_empty(),
                    "{ctx}: lease file {} names no owner: {owner:?}",
                    file.display()
                );
                Some((addr, owner))
            })
            .collect()
    }

    /// The lease file of `addr` (either family).
    fn lease_path(&self, addr: IpAddr) -> PathBuf {
        self.leases.path().join(addr.to_string())
    }

    /// The node's veths: name → bridge it is a port of.
    fn node_veths(&self) -> BTreeMap<String, Option<String>> {
        self.node
            .netns()
            .links_of_kind("veth")
            .into_iter()
            .map(|l| (l.name, l.master))
            .collect()
    }

    /// The tail of the plugin's log, for failure messages.
    fn log_tail(&self) -> String {
        let log = self.data_dir.path().join("kubenet-bridge.log");
        let text = fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- crash consistency failed with CNI_CRASH_SEED={:#x}; {:?}\n--- plugin log tail:\n{}",
                self.seed,
                self.stats,
                self.log_tail()
            );
        }
        // Slots, then the node namespace, then the dataDir go with their own guards.
    }
}

/// The addresses of the pod's interface, both families, link-local ones left out; sorted.
fn pod_addresses(pod: &Netns) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = pod
        .ip_json(&["addr", "show", "dev", IFNAME])
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["scope"] != "link")
        .filter_map(|a| a["local"].as_str()?.parse().ok())
        .collect();
    out.sort();
    out
}

/// The owner a lease file names, `None` if there is no file; panics if it is not
/// `id\r\nifname` (an empty file included).
fn read_owner(file: &Path) -> Option<(String, String)> {
    let content = fs::read_to_string(file).ok()?;
    let (id, ifname) = content.split_once("\r\n").unwrap_or_else(|| {
        panic!(
            "lease file {} holds {content:?}, not \"containerid\\r\\nifname\"",
            file.display()
        )
    });
    Some((id.to_owned(), ifname.to_owned()))
}

/// The names in the network's state directory other than address files, recursively.
fn non_lease_entries(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for entry in fs::read_dir(dir)
        .expect("state directory is readable")
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.parse::<IpAddr>().is_ok() {
            continue;
        }
        if entry.path().is_dir() {
            out.insert(format!("{name}/"));
            for inner in fs::read_dir(entry.path()).expect("readable").flatten() {
                out.insert(format!("{name}/{}", inner.file_name().to_string_lossy()));
            }
        } else {
            out.insert(name);
        }
    }
    out
}

/// Kill instants swept across a whole ADD, DEL or GC: every 100 µs for the first
/// 2 x [`EARLY_KILL_US`] (an unloaded ADD is over in about 4 ms), then every millisecond to
/// [`LATE_KILL_US`] (a loaded one, and DEL), so that kills land in each step whatever the
/// machine's load.
fn kill_sweep() -> impl Iterator<Item = Duration> {
    let fine = (0..2 * EARLY_KILL_US).step_by(100);
    let coarse = (2 * EARLY_KILL_US..=LATE_KILL_US).step_by(1_000);
    fine.chain(coarse).map(Duration::from_micros)
}

impl Harness {
    /// A container id of this process for the `n`th attachment of a test.
    fn container_id(tag: &str, n: usize) -> String {
        format!("{tag}{n:04}-{}", std::process::id())
    }

    /// ADD of `id` into `slot` that must succeed; records it as attached (checking its lease).
    fn attach(&mut self, slot: usize, id: &str, ctx: &str) {
        let out = self
            .add(slot, id, None)
            .expect_ok(&format!("{ctx}: ADD of {id}"));
        self.record_attached(slot, id, &out, &format!("{ctx}: ADD of {id}"));
    }

    /// After a completed DEL of `id`: no lease file names it and the pod has no interface.
    fn assert_released(&self, slot: usize, id: &str, ctx: &str) {
        assert!(!self.is_leased(id), "{ctx}: a lease still names {id}");
        assert!(
            !self.slots[slot].netns.has_link(IFNAME),
            "{ctx}: the pod of {id} still has {IFNAME}"
        );
    }

    /// DELs every attached pod, then GC with none valid, as a drained node would; afterwards
    /// no veth, no lease, and the state directory holds only the lock, the round-robin hint
    /// and an empty index.
    fn drain_and_check(&mut self, ctx: &str) {
        for slot in 0..SLOTS {
            if let Some(att) = self.slots[slot].attached.take() {
                self.del(slot, &att.id, None)
                    .expect_ok(&format!("{ctx}: DEL of {}", att.id));
            }
        }
        self.gc(None).expect_ok(&format!("{ctx}: final GC"));
        let mut left = BTreeMap::new();
        let settled = eventually(Duration::from_secs(10), || {
            left = self.node_veths();
            left.is_empty()
        });
        assert!(settled, "{ctx}: veths left on the node: {left:?}");
        let owners = self.lease_owners(ctx);
        assert!(owners.is_empty(), "{ctx}: lease files left: {owners:?}");
        let rest = non_lease_entries(self.leases.path());
        let mut expected: BTreeSet<String> = ["attachments/", "last_reserved_ip.0", "lock"]
            .map(String::from)
            .into();
        if self.dual {
            expected.insert("last_reserved_ip.1".into());
        }
        assert_eq!(
            rest, expected,
            "{ctx}: the state directory must hold only the lock, the round-robin hint and an \
             empty index"
        );
    }

    /// Prints what the run did and how long the unkilled runs took.
    fn report(&self, what: &str, took: Duration) {
        eprintln!(
            "crash consistency, {what}: {took:.1?} (seed {:#x}): {:?}",
            self.seed, self.stats
        );
        for (verb, times) in self.timings.borrow_mut().iter_mut() {
            times.sort();
            eprintln!(
                "  {verb} runs not killed: {}, wall time from spawn p10 {:.1?} p50 {:.1?} p90 {:.1?} max {:.1?}",
                times.len(),
                times[times.len() / 10],
                times[times.len() / 2],
                times[times.len() * 9 / 10],
                times[times.len() - 1]
            );
        }
    }
}

#[test]
fn kill_anywhere_in_1000_add_del_cycles_never_double_assigns_and_gc_reclaims_all() {
    kill_anywhere_in_cycles(Harness::new(), CYCLES);
}

#[test]
fn dual_stack_kill_anywhere_in_400_add_del_cycles_never_double_assigns_and_gc_reclaims_all() {
    kill_anywhere_in_cycles(Harness::with_ranges(true), DUAL_CYCLES);
}

fn kill_anywhere_in_cycles(mut h: Harness, cycles: usize) {
    let started = Instant::now();
    for n in 0..cycles {
        h.cycle(n);
        if (n + 1) % CHECK_EVERY == 0 {
            let ctx = format!("after cycle {n} (seed {:#x})", h.seed);
            h.check_no_double_use(&ctx);
            h.gc_and_check(&ctx);
        }
    }
    h.report(&format!("{cycles} cycles"), started.elapsed());
    h.drain_and_check(&format!("teardown (seed {:#x})", h.seed));

    let s = &h.stats;
    // Enough kills really landed inside the plugin for the run to mean something.
    assert!(
        s.adds_killed >= cycles / 10 && s.dels_killed >= cycles / 20,
        "too few runs were killed mid-way to test anything: {s:?}"
    );
    let past_the_veth: usize = s
        .add_killed_at
        .iter()
        .filter(|(phase, _)| {
            phase.starts_with("veth created") || phase.starts_with("pod configured")
        })
        .map(|(_, n)| n)
        .sum();
    assert!(
        past_the_veth > 0,
        "no kill landed in an ADD after it created the veth: {s:?}"
    );
    assert!(
        s.leases_reclaimed_by_gc > 0,
        "no leaked lease reached GC, so GC's reclaiming went untested: {s:?}"
    );
}

#[test]
fn an_add_killed_at_any_step_then_deleted_leaves_nothing_behind() {
    add_killed_then_deleted(Harness::new());
}

/// The sweep on a dual-stack network: kills land between the index entry and the two address
/// files too.
#[test]
fn a_dual_stack_add_killed_at_any_step_then_deleted_leaves_nothing_behind() {
    add_killed_then_deleted(Harness::with_ranges(true));
}

fn add_killed_then_deleted(mut h: Harness) {
    let started = Instant::now();
    for (n, kill) in kill_sweep().enumerate() {
        let id = Harness::container_id("addkill", n);
        let ctx = format!("ADD of {id} with a kill {kill:?} after spawn");
        h.stats.adds += 1;
        match h.add(0, &id, Some(kill)) {
            Outcome::Killed => {
                h.stats.adds_killed += 1;
                let phase = h.add_phase(0, &id);
                *h.stats.add_killed_at.entry(phase).or_default() += 1;
            }
            Outcome::Ok(_) => {}
            Outcome::Failed(_, why) => panic!("{ctx}: ADD into a clean sandbox failed: {why}"),
        }
        // The runtime's answer to a failed sandbox setup.
        h.stats.dels += 1;
        h.del(0, &id, None).expect_ok(&format!("{ctx}: DEL"));
        h.assert_released(0, &id, &ctx);
    }
    h.report("ADDs killed across their run", started.elapsed());
    assert!(
        h.stats.adds_killed > 0 && h.stats.adds_killed < h.stats.adds,
        "the sweep must kill some ADDs and let others finish: {:?}",
        h.stats
    );
    h.drain_and_check("after the ADD sweep");
}

#[test]
fn a_killed_add_retried_succeeds_or_answers_already_attached() {
    killed_add_retried(Harness::new());
}

#[test]
fn a_killed_dual_stack_add_retried_succeeds_or_answers_already_attached() {
    killed_add_retried(Harness::with_ranges(true));
}

fn killed_add_retried(mut h: Harness) {
    let started = Instant::now();
    for (n, kill) in kill_sweep().enumerate() {
        let id = Harness::container_id("retry", n);
        let ctx = format!("ADD of {id} with a kill {kill:?} after spawn, then retried");
        h.stats.adds += 1;
        let outcome = match h.add(0, &id, Some(kill)) {
            Outcome::Killed => {
                h.stats.adds_killed += 1;
                h.stats.add_retries += 1;
                h.add(0, &id, None)
            }
            finished => finished,
        };
        match outcome {
            Outcome::Ok(out) => {
                h.record_attached(0, &id, &out, &ctx);
                h.check_no_double_use(&ctx);
                h.slots[0].attached = None;
            }
            // The killed ADD had created the veth: the runtime DELs, below.
            Outcome::Failed(Some(ALREADY_ATTACHED), _) => {
                h.stats.add_retries_already_attached += 1;
            }
            Outcome::Failed(_, why) => panic!("{ctx}: ADD failed: {why}"),
            Outcome::Killed => panic!("{ctx}: the retry was killed, though none was scheduled"),
        }
        h.stats.dels += 1;
        h.del(0, &id, None).expect_ok(&format!("{ctx}: DEL"));
        h.assert_released(0, &id, &ctx);
    }
    h.report("ADDs killed and retried", started.elapsed());
    assert!(
        h.stats.add_retries > 0,
        "no ADD of the sweep was killed, so no retry was tested: {:?}",
        h.stats
    );
    h.drain_and_check("after the retried ADDs");
}

#[test]
fn a_del_killed_at_any_step_completes_when_retried() {
    let mut h = Harness::new();
    let started = Instant::now();
    for (n, kill) in kill_sweep().enumerate() {
        let id = Harness::container_id("delkill", n);
        let ctx = format!("DEL of {id} with a kill {kill:?} after spawn, then retried");
        h.stats.adds += 1;
        h.attach(0, &id, &ctx);
        h.slots[0].attached = None;
        h.stats.dels += 1;
        match h.del(0, &id, Some(kill)) {
            Outcome::Killed => {
                h.stats.dels_killed += 1;
                let phase = h.del_phase(0, &id);
                *h.stats.del_killed_at.entry(phase).or_default() += 1;
            }
            Outcome::Ok(_) => {}
            Outcome::Failed(_, why) => panic!("{ctx}: DEL failed: {why}"),
        }
        h.del(0, &id, None)
            .expect_ok(&format!("{ctx}: DEL retried"));
        h.assert_released(0, &id, &ctx);
    }
    h.report("DELs killed and retried", started.elapsed());
    assert!(
        h.stats.dels_killed > 0,
        "no DEL of the sweep was killed: {:?}",
        h.stats
    );
    h.drain_and_check("after the retried DELs");
}

#[test]
fn gc_killed_at_any_step_then_rerun_reclaims_destroyed_sandboxes_and_keeps_attached_pods() {
    let mut h = Harness::new();
    let started = Instant::now();
    for slot in 0..SLOTS {
        h.attach(slot, &Harness::container_id("gcpod", slot), "setup");
    }
    for (n, kill) in kill_sweep().step_by(5).enumerate() {
        // A sandbox destroyed without DEL leaks its lease; a new pod takes the slot.
        let slot = n % SLOTS;
        let leaked = h.slots[slot]
            .attached
            .clone()
            .expect("every slot is attached");
        h.destroy_sandbox(slot);
        let ctx = format!("GC with a kill {kill:?} after spawn, {} leaked", leaked.id);
        assert!(h.is_leased(&leaked.id), "{ctx}: the lease leaked before GC");
        h.attach(slot, &Harness::container_id("gcpod", SLOTS + n), &ctx);
        h.stats.gcs += 1;
        match h.gc(Some(kill)) {
            Outcome::Killed => h.stats.gcs_killed += 1,
            Outcome::Ok(_) => {}
            Outcome::Failed(_, why) => panic!("{ctx}: GC failed: {why}"),
        }
        // A full GC afterwards: the leaked lease goes, the attached pods keep theirs.
        h.gc_and_check(&ctx);
        assert!(!h.is_leased(&leaked.id), "{ctx}: GC kept the leaked lease");
        h.check_no_double_use(&ctx);
    }
    h.report("GCs killed across their run", started.elapsed());
    assert!(
        h.stats.gcs_killed > 0,
        "no GC of the sweep was killed: {:?}",
        h.stats
    );
    h.drain_and_check("after the GC sweep");
}
