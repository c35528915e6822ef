//! The vxlan-overlay agent against etcd as production runs it: a real three-member etcd 3.4
//! with TLS everywhere and client certificates required ([`EtcdCluster`]), each member in its
//! own namespace on the overlay's underlay. Members are killed, started again and cut off
//! with a firewall rule while pods ping across nodes; certificates are wrong, missing or
//! rotated. Also here: 200 records changing while an agent's etcd connection is cut, which
//! the agent must catch up on by resuming its watch, not by listing.
//!
//! Run as root on Debian bookworm:
//! ```text
//! conformance/scripts/install-test-deps.sh
//! export CARGO_TARGET_DIR=/var/tmp/cni-suite-target
//! cargo build --release -p vxlan-overlay
//! cargo test --release -p cni-testkit --test overlay_etcd_tls
//! ```
//! Everything (members, agents, namespaces, certificates) is removed when a test ends, pass or
//! fail; on failure the nodes' logs, VXLAN state and every member's log are printed.

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use cni_testkit::etcd::Etcdctl;
use cni_testkit::etcd_cluster::EtcdCluster;
use cni_testkit::overlay::{
    subnet_key, OverlayCluster, Peer, Underlay, ETCD_ADDR, ETCD_PREFIX, LEASE_TIMEOUT,
};
use cni_testkit::ping_stream::{assert_streams_lost_nothing, PingStream};
use cni_testkit::pki::{CertAuthority, KeyPair};
use cni_testkit::{eventually, require_root};
use ipnet::Ipv4Net;
use serde_json::{json, Value};

/// `leaseTTL` of the agents on the TLS cluster. Short enough that every disruption below
/// outlasts it, so a renewal that does not get through shows as a lost record; long enough
/// for what a client needs to notice a black-holed member: the agent's HTTP/2 keepalive (5 s
/// interval, 3 s timeout) plus a renewal retry, twice over.
const LEASE_TTL: u64 = 15;
/// `resyncSeconds`: small, so a periodic check of the TLS files happens several times a test.
const RESYNC: u64 = 2;
/// Slack on top of a bound the agent promises: polling and scheduling on a busy 2-core machine.
const GRACE: Duration = Duration::from_secs(2);
/// How long an election may take after the leader dies or is cut off: etcd's default election
/// timeout is 1 s, randomised up to 2 s, and a vote may split.
const ELECTION: Duration = Duration::from_secs(10);
/// etcd 3.4's lessor looks for expired leases every 500 ms.
const ETCD_EXPIRY_CHECK: Duration = Duration::from_millis(500);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A copy of `pair` at `<dir>/etcd-client.pem` and `<dir>/etcd-client-key.pem`, the files an
/// agent is configured with, replaced the way a certificate manager does it: each written
/// aside, then renamed over the old one.
fn install_client_identity(pair: &KeyPair, dir: &Path) -> KeyPair {
    fs::create_dir_all(dir).expect("cannot create the agent's certificate directory");
    let installed = KeyPair {
        cert: dir.join("etcd-client.pem"),
        key: dir.join("etcd-client-key.pem"),
    };
    for (from, to) in [(&pair.cert, &installed.cert), (&pair.key, &installed.key)] {
        let aside = to.with_extension("pem.new");
        fs::copy(from, &aside).unwrap_or_else(|e| {
            panic!("cannot copy {} to {}: {e}", from.display(), aside.display())
        });
        fs::rename(&aside, to)
            .unwrap_or_else(|e| panic!("cannot rename onto {}: {e}", to.display()));
    }
    installed
}

/// The node fields that make an agent use `ca` for the members and present `client`.
fn tls_fields(ca: &Path, client: Option<&KeyPair>) -> Value {
    let mut fields = json!({"etcdCAFile": ca});
    if let Some(c) = client {
        fields["etcdCertFile"] = json!(c.cert);
        fields["etcdKeyFile"] = json!(c.key);
    }
    fields
}

/// The record etcd holds for the node at `underlay`, with the key's lease, if any.
fn record_at(etcd: &impl Etcdctl, underlay: IpAddr) -> Option<(Peer, i64)> {
    let peer = cni_testkit::overlay::records(etcd, ETCD_PREFIX)?
        .into_iter()
        .find(|r| r.underlay == underlay)?;
    let lease = etcd.key_lease(&subnet_key(ETCD_PREFIX, peer.subnet))?;
    Some((peer, lease))
}

/// The TTL lease `id` has left as etcd answers it (-1 once expired or revoked); `None` when
/// etcd does not answer (an election, a member coming back).
fn lease_ttl_left(etcd: &impl Etcdctl, id: i64) -> Option<i64> {
    let out = etcd.ctl(&["lease", "timetolive", &format!("{id:x}"), "-w", "json"]);
    if !out.status.success() {
        return None;
    }
    let json: Value = serde_json::from_slice(&out.stdout).ok()?;
    json["ttl"].as_i64()
}

/// Watches the nodes' records in etcd throughout a disruption: each known node's record stays,
/// for the same subnet, on the same etcd lease, which never runs out. Checks happen whenever
/// the test calls [`observe`](Self::observe); what goes wrong is collected with the time and
/// phase, and reported at the end with everything else.
struct LeaseWatch {
    /// Per node underlay address: the record and its lease when first seen.
    expected: BTreeMap<IpAddr, (Peer, i64)>,
    started: Instant,
    /// Polls in which etcd answered, per phase.
    answered: BTreeMap<String, u32>,
    /// Polls in which it did not (an election, a member coming back), per phase.
    unanswered: BTreeMap<String, u32>,
    /// The least TTL any watched lease had left.
    min_remaining: Option<i64>,
    violations: Vec<String>,
}

impl LeaseWatch {
    fn new() -> LeaseWatch {
        LeaseWatch {
            expected: BTreeMap::new(),
            started: Instant::now(),
            answered: BTreeMap::new(),
            unanswered: BTreeMap::new(),
            min_remaining: None,
            violations: Vec::new(),
        }
    }

    /// Starts watching the node at `underlay` with its current record; panics if it has none.
    fn add(&mut self, etcd: &impl Etcdctl, underlay: IpAddr) {
        let rec = record_at(etcd, underlay)
            .unwrap_or_else(|| panic!("node {underlay} has no record (with a lease) to watch"));
        assert_ne!(rec.1, 0, "node {underlay}'s record has no lease: {rec:?}");
        self.expected.insert(underlay, rec);
    }

    /// One look at etcd; returns whether etcd answered.
    fn check(&mut self, etcd: &impl Etcdctl, phase: &str) -> bool {
        let at = self.started.elapsed();
        let Some(records) = cni_testkit::overlay::records(etcd, ETCD_PREFIX) else {
            *self.unanswered.entry(phase.to_owned()).or_default() += 1;
            return false;
        };
        for (underlay, (peer, lease)) in &self.expected {
            match records.iter().find(|r| r.underlay == *underlay) {
                None => self.violations.push(format!(
                    "{at:?} [{phase}]: node {underlay}'s record is gone (had {})",
                    peer.subnet
                )),
                Some(now) if now != peer => self.violations.push(format!(
                    "{at:?} [{phase}]: node {underlay}'s record changed: {peer:?} -> {now:?}"
                )),
                Some(_) => {}
            }
            if let Some(owner) = records
                .iter()
                .find(|r| r.subnet == peer.subnet && r.underlay != *underlay)
            {
                self.violations.push(format!(
                    "{at:?} [{phase}]: {} changed owner: {underlay} -> {}",
                    peer.subnet, owner.underlay
                ));
            }
            // Per-key reads may fail during an election like the list; only an answer counts.
            if let Some(now) = etcd.key_lease(&subnet_key(ETCD_PREFIX, peer.subnet)) {
                if now != *lease {
                    self.violations.push(format!(
                        "{at:?} [{phase}]: node {underlay}'s record moved from lease {lease:x} \
                         to {now:x}: the lease was not kept alive"
                    ));
                }
            }
            match lease_ttl_left(etcd, *lease) {
                // No answer (an election): nothing learnt.
                None => {}
                Some(ttl) => {
                    self.min_remaining = Some(self.min_remaining.map_or(ttl, |m| m.min(ttl)));
                    if ttl < 1 {
                        self.violations.push(format!(
                            "{at:?} [{phase}]: node {underlay}'s lease {lease:x} has {ttl} s \
                             left (-1: expired or revoked)"
                        ));
                    }
                }
            }
        }
        *self.answered.entry(phase.to_owned()).or_default() += 1;
        true
    }

    /// Checks repeatedly for `duration`.
    fn observe(&mut self, etcd: &impl Etcdctl, duration: Duration, phase: &str) {
        let end = Instant::now() + duration;
        while Instant::now() < end {
            self.check(etcd, phase);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Checks repeatedly until `done` holds or `timeout` passes; returns whether it held.
    fn observe_until(
        &mut self,
        etcd: &impl Etcdctl,
        timeout: Duration,
        phase: &str,
        mut done: impl FnMut() -> bool,
    ) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if done() {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            self.check(etcd, phase);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Panics with every violation, or if some phase never got an answer from etcd (then
    /// nothing was checked in it).
    fn assert_held(&self, diagnostics: impl FnOnce() -> String) {
        let silent: Vec<&String> = self
            .unanswered
            .keys()
            .filter(|p| !self.answered.contains_key(*p))
            .collect();
        if self.violations.is_empty() && silent.is_empty() {
            return;
        }
        panic!(
            "leases and records did not hold: {:#?}\nphases with no answer from etcd: \
             {silent:?}\nanswered polls {:?}, unanswered {:?}\n{}",
            self.violations,
            self.answered,
            self.unanswered,
            diagnostics()
        );
    }
}

/// Established TCP connections from the nodes' namespaces (the agents) to etcd's client port
/// at `member`.
fn agent_connections(c: &OverlayCluster<EtcdCluster>, member: IpAddr) -> usize {
    c.nodes
        .iter()
        .map(|n| {
            let out = n.netns().run(
                "ss",
                &[
                    "-Htn",
                    "state",
                    "established",
                    "dst",
                    &member.to_string(),
                    "dport",
                    "=",
                    ":2379",
                ],
            );
            String::from_utf8_lossy(&out.stdout).lines().count()
        })
        .sum()
}

/// The harness itself: three members elect a leader; another takes over when it dies; a
/// restarted member rejoins on its data; a cut-off member cannot serve quorum reads while the
/// other two can; TLS is enforced (no client certificate or a foreign CA's is refused). If
/// this fails, the fixture or the machine is broken, not the agent.
#[test]
fn etcd_cluster_fixture_elects_fails_over_partitions_and_enforces_tls() {
    require_root();
    let underlay = Underlay::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let foreign = CertAuthority::new(dir.path(), "foreign-ca");
    let mut etcd = EtcdCluster::start_on(&underlay, &[]);
    etcd.put("/cnit/probe", "1", None);

    let leader = etcd.wait_leader(ELECTION).expect("a leader after start");
    etcd.kill(leader);
    let next = etcd
        .wait_leader(ELECTION)
        .expect("a new leader after the leader died");
    assert_ne!(next, leader, "a dead member cannot lead");
    etcd.put("/cnit/probe", "2", None);
    etcd.start(leader);
    // The restarted member catches up from the others: a quorum read through it sees "2".
    let caught_up = eventually(ELECTION, || {
        let out = etcd.ctl_at(leader, &["get", "/cnit/probe", "--print-value-only"]);
        String::from_utf8_lossy(&out.stdout).trim() == "2"
    });
    assert!(
        caught_up,
        "restarted member did not catch up:\n{}",
        etcd.log_tail(20)
    );

    let cut = (leader + 1) % etcd.len();
    etcd.cut_off(cut);
    let isolated = eventually(ELECTION, || {
        !etcd.ctl_at(cut, &["get", "/cnit/probe"]).status.success()
    });
    assert!(isolated, "a cut-off member still serves quorum reads");
    etcd.put("/cnit/probe", "3", None);
    etcd.restore(cut);
    etcd.wait_healthy(cut);

    // TLS is enforced on the client port, from inside the namespace (where etcdctl can reach).
    let m = (cut + 1) % etcd.len();
    let no_cert = etcd.netns(m).run(
        "etcdctl",
        &[
            &format!("--endpoints=https://{}:2379", etcd.addr(m)),
            &format!("--cacert={}", etcd.ca().cert().display()),
            "--dial-timeout=2s",
            "--command-timeout=3s",
            "get",
            "/cnit/probe",
        ],
    );
    assert!(
        !no_cert.status.success(),
        "a client without a certificate was served"
    );
    let foreign_id = foreign.issue_client("intruder");
    assert!(
        !etcd
            .ctl_as(m, &foreign_id, &["get", "/cnit/probe"])
            .status
            .success(),
        "a client certificate of a CA the members do not trust was accepted"
    );
}

/// The one scenario of issue 11 item 4: agents on all three members over TLS with client
/// certificates; the leader is killed and started again, another member is cut off and
/// restored, a fourth node joins meanwhile. Throughout, every record stays with its subnet on
/// its lease, the new node is leased and programmed, and pod traffic never stops.
#[test]
fn agents_ride_out_a_leader_kill_and_a_cut_off_member_over_tls() {
    require_root();
    let underlay = Underlay::new();
    let etcd = EtcdCluster::start_on(&underlay, &[]);
    let client = install_client_identity(
        &etcd.ca().issue_client("overlay-agent"),
        &etcd.dir().join("agent"),
    );
    let fields = tls_fields(etcd.ca().cert(), Some(&client));
    let mut c = OverlayCluster::on_etcd(underlay, etcd, 3, LEASE_TTL, RESYNC, &fields);
    c.wait_converged(&[0, 1, 2], secs(RESYNC) + GRACE, "after start over TLS");
    for node in 0..3 {
        c.add_pod(node);
    }
    let mut watch = LeaseWatch::new();
    for node in &c.nodes {
        watch.add(&c.etcd, node.underlay_ip());
    }
    let mut streams = Vec::new();
    for from in &c.pods {
        for to in c.pods.iter().filter(|p| p.node != from.node) {
            streams.push(PingStream::start(
                &from.netns,
                to.addr,
                Duration::from_millis(200),
            ));
        }
    }
    let started = Instant::now();

    // The leader dies (SIGKILL) and stays down for a few seconds: the agents' connections to
    // it break, a new leader is elected, leases are renewed through the others.
    let leader = c.etcd.wait_leader(ELECTION).expect("a leader");
    c.etcd.kill(leader);
    watch.observe(&c.etcd, secs(5), "leader killed");
    let next = c.etcd.wait_leader(ELECTION);
    assert!(
        next.is_some_and(|n| n != leader),
        "no new leader after killing {}: {next:?}\n{}",
        c.etcd.name(leader),
        c.etcd.log_tail(20)
    );
    c.etcd.start(leader);
    watch.observe(&c.etcd, secs(3), "killed leader back");

    // Another member (the current leader when that is not the restarted one) is cut off for
    // longer than a lease TTL: connections to it go silent rather than fail. A fourth node
    // joins meanwhile.
    let cut = c
        .etcd
        .wait_leader(ELECTION)
        .filter(|&l| l != leader)
        .unwrap_or((leader + 1) % c.etcd.len());
    let connected = agent_connections(&c, c.etcd.addr(cut));
    eprintln!(
        "killed {} (the leader); cutting off {} (leader now: {:?}), to which the agents hold \
         {connected} connections",
        c.etcd.name(leader),
        c.etcd.name(cut),
        c.etcd.leader().map(|l| c.etcd.name(l).to_owned())
    );
    assert!(
        connected > 0,
        "no agent is connected to {}: cutting it off would disrupt nothing",
        c.etcd.name(cut)
    );
    c.etcd.cut_off(cut);
    let cut_at = Instant::now();
    let fourth = c.add_node();
    let leased = watch.observe_until(&c.etcd, LEASE_TIMEOUT, "cut off, 4th node joining", || {
        c.nodes[fourth].subnet_env().is_some()
    });
    assert!(
        leased,
        "a node started while {} was cut off got no lease within {LEASE_TIMEOUT:?}:\n{}",
        c.etcd.name(cut),
        c.diagnostics()
    );
    let ip = c.nodes[fourth].underlay_ip();
    let published = watch.observe_until(
        &c.etcd,
        secs(RESYNC) + GRACE,
        "cut off, 4th node joining",
        || record_at(&c.etcd, ip).is_some(),
    );
    assert!(
        published,
        "the 4th node's record is not in etcd:\n{}",
        c.diagnostics()
    );
    watch.add(&c.etcd, ip);
    let programmed = watch.observe_until(
        &c.etcd,
        secs(RESYNC) + GRACE,
        "cut off, 4th node joining",
        || c.converged(&[0, 1, 2, 3]),
    );
    assert!(
        programmed,
        "the 4th node was not programmed on the others (or they on it) while {} was cut off; \
         etcd holds {:?}\n{}",
        c.etcd.name(cut),
        c.records(),
        c.diagnostics()
    );
    let cut_for = secs(LEASE_TTL) + GRACE;
    watch.observe(&c.etcd, cut_for.saturating_sub(cut_at.elapsed()), "cut off");
    c.etcd.restore(cut);
    // Back with a higher term (it campaigned alone), the member forces one more election.
    c.etcd.wait_healthy(cut);
    watch.observe(&c.etcd, secs(4), "cut member restored");

    watch.assert_held(|| c.diagnostics());
    c.wait_converged(&[0, 1, 2, 3], secs(RESYNC) + GRACE, "after the disruptions");
    eprintln!(
        "least lease TTL left during the run: {:?} s of {LEASE_TTL}; polls answered {:?}, \
         unanswered {:?}",
        watch.min_remaining, watch.answered, watch.unanswered
    );
    // The dataplane never depends on etcd: not one echo request may go missing.
    assert_streams_lost_nothing(streams, started, "during the leader kill and the cut-off");
}

/// A wrong CA or a missing client certificate is an error that names what to fix, and the
/// agent takes no lease; a correctly configured node on the same cluster leases at once, so
/// the failures are down to the files.
#[test]
fn wrong_ca_or_missing_client_certificate_is_a_clear_error_and_takes_no_lease() {
    require_root();
    let underlay = Underlay::new();
    let etcd = EtcdCluster::start_on(&underlay, &[]);
    let wrong_ca = CertAuthority::new(etcd.dir(), "wrong-ca");
    let client = etcd.ca().issue_client("overlay-agent");
    let ca = etcd.ca().cert().to_owned();
    let mut c = OverlayCluster::on_etcd(underlay, etcd, 0, LEASE_TTL, RESYNC, &json!({}));
    let good = c.add_node_with(&tls_fields(&ca, Some(&client)));
    let bad_ca = c.add_node_with(&tls_fields(wrong_ca.cert(), Some(&client)));
    let no_cert = c.add_node_with(&tls_fields(&ca, None));
    c.nodes[good].wait_for_lease();

    // Bounded: long enough for several connection attempts with the agent's backoff.
    let wait = secs(10);
    let wrong_ca_path = wrong_ca.cert().display().to_string();
    let deadline = Instant::now() + wait;
    let mut leaked = Vec::new();
    while Instant::now() < deadline {
        for (node, label) in [(bad_ca, "wrong CA"), (no_cert, "no client certificate")] {
            let n = &c.nodes[node];
            if n.subnet_env().is_some() {
                leaked.push(format!("{label}: subnet.env written"));
            }
            if record_at(&c.etcd, n.underlay_ip()).is_some() {
                leaked.push(format!("{label}: record in etcd"));
            }
        }
        if !leaked.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        leaked.is_empty(),
        "an agent that cannot authenticate the members, or be authenticated, took a lease: \
         {leaked:?}\n{}",
        c.diagnostics()
    );
    assert!(
        c.nodes[bad_ca].logs().contains(&wrong_ca_path),
        "with a wrong etcdCAFile the agent's log must name that file ({wrong_ca_path}) within \
         {wait:?}:\n{}",
        c.nodes[bad_ca].diagnostics()
    );
    assert!(
        {
            let log = c.nodes[no_cert].logs();
            log.contains("etcdCertFile") || log.to_ascii_lowercase().contains("client certificate")
        },
        "without a client certificate the agent's log must say so (etcdCertFile or \"client \
         certificate\") within {wait:?}:\n{}",
        c.nodes[no_cert].diagnostics()
    );
    for (node, what) in [(bad_ca, "wrong CA"), (no_cert, "no client certificate")] {
        let logs = c.nodes[node].logs();
        let first = logs
            .lines()
            .find(|l| l.contains("etcd"))
            .unwrap_or_default();
        eprintln!("{what}: {first}");
    }
    assert!(
        c.records().is_some_and(|r| r.len() == 1),
        "etcd should hold the good node's record only: {:?}",
        c.records()
    );
}

/// Rotated client certificate files are picked up without a restart. The members first trust
/// client certificates of CA "a" and CA "b"; the agent starts with an "a" certificate, which is
/// then replaced on disk by a "b" one, and the members are restarted one by one trusting "b"
/// only (checked: an "a" certificate is refused). The agent must keep its lease and still
/// get what changes in etcd.
#[test]
fn rotated_client_certificate_files_are_picked_up_without_a_restart() {
    require_root();
    let underlay = Underlay::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_a = CertAuthority::new(dir.path(), "client-ca-a");
    let ca_b = CertAuthority::new(dir.path(), "client-ca-b");
    let etcd = EtcdCluster::start_on(&underlay, &[&ca_a, &ca_b]);
    let old_pair = ca_a.issue_client("overlay-agent");
    let new_pair = ca_b.issue_client("overlay-agent");
    let client = install_client_identity(&old_pair, &dir.path().join("agent"));
    let fields = tls_fields(etcd.ca().cert(), Some(&client));
    let mut c = OverlayCluster::on_etcd(underlay, etcd, 1, LEASE_TTL, RESYNC, &fields);
    let ip = c.nodes[0].underlay_ip();
    let mut watch = LeaseWatch::new();
    watch.add(&c.etcd, ip);

    // Rotation on disk; a few resyncs pass with both CAs still trusted.
    install_client_identity(&new_pair, &dir.path().join("agent"));
    watch.observe(&c.etcd, secs(2 * RESYNC), "certificate replaced");
    // Members restart one by one (quorum stays) trusting "b" only (members read the trust
    // bundle when they start). Every connection the agent had is cut by a restart, and a
    // reconnection with the old certificate is refused.
    c.etcd.set_client_trust(&[&ca_b]);
    for m in 0..c.etcd.len() {
        c.etcd.kill(m);
        watch.observe(&c.etcd, secs(1), "rolling restart");
        c.etcd.start(m);
        watch.observe(&c.etcd, secs(1), "rolling restart");
    }
    for m in 0..c.etcd.len() {
        assert!(
            !c.etcd.ctl_as(m, &old_pair, &["get", "/x"]).status.success(),
            "member {} still accepts the old CA's client certificate: the test proves nothing",
            c.etcd.name(m)
        );
        assert!(
            c.etcd.ctl_as(m, &new_pair, &["get", "/x"]).status.success(),
            "member {} refuses the new client certificate",
            c.etcd.name(m)
        );
    }
    // Longer than a lease TTL after the last member stopped accepting the old certificate:
    // renewals must have gone through with the new one.
    watch.observe(
        &c.etcd,
        secs(LEASE_TTL) + ETCD_EXPIRY_CHECK + GRACE,
        "after rotation",
    );
    watch.assert_held(|| c.diagnostics());

    // A change made now reaches the agent (watch or resync, both over the new certificate).
    let probe = Peer {
        subnet: "10.200.250.0/24".parse().expect("valid"),
        underlay: "172.30.0.250".parse().expect("valid"),
        vtep_mac: "0e:00:00:00:00:fa".into(),
    };
    c.etcd.put(
        &subnet_key(ETCD_PREFIX, probe.subnet),
        &probe.record_json(1),
        None,
    );
    let programmed = eventually(secs(RESYNC) + GRACE, || {
        c.nodes[0]
            .vxlan_state()
            .is_some_and(|st| st.programs(&probe))
    });
    assert!(
        programmed,
        "after the rotation the agent did not program a peer put in etcd:\n{}",
        c.diagnostics()
    );
    let logs = c.nodes[0].logs();
    let tls_lines: Vec<&str> = logs.lines().filter(|l| l.contains("TLS")).collect();
    eprintln!("agent's TLS lines:\n{}", tls_lines.join("\n"));
}

/// A fake peer `n` of the 200-change test: subnet 10.200.`subnet`.0/24, underlay and MAC
/// derived from `n` and `generation` (a modified record changes both).
fn fake_peer(subnet: u8, n: u16, generation: u8) -> Peer {
    let [hi, lo] = n.to_be_bytes();
    Peer {
        subnet: Ipv4Net::new(Ipv4Addr::new(10, 200, subnet, 0), 24).expect("valid"),
        underlay: Ipv4Addr::new(172, 30, 10 + generation * 4 + hi, lo).into(),
        vtep_mac: format!("0e:00:00:{generation:02x}:{hi:02x}:{lo:02x}"),
    }
}

/// Sums the `<E>` of every `applied <E> events: ...` line of `log`.
fn events_applied(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| l.split_once("applied ")?.1.split_once(" events:"))
        .filter_map(|(n, _)| n.trim().parse::<u64>().ok())
        .sum()
}

/// Issue 11 item 6: 200 records change while the agent's connection to etcd is cut (100
/// added, 50 deleted, 50 given a new VTEP MAC and underlay address). Restored, the agent
/// programs exactly the final set by resuming its watch from the last revision it saw: no
/// list, no full reconcile after the first.
#[test]
fn two_hundred_changes_while_the_watch_is_down_are_caught_up_by_resuming_it() {
    require_root();
    // leaseTTL 60: the cut does not cost the agent its own lease; resyncSeconds 3600: no
    // periodic reconcile can do the catching up.
    let mut c = OverlayCluster::start(0, 60, 3600);
    let mut peers: BTreeMap<u8, Peer> = BTreeMap::new();
    for i in 0..150u16 {
        let subnet = u8::try_from(i + 1).expect("fits");
        let p = fake_peer(subnet, i, 0);
        c.etcd
            .put(&subnet_key(ETCD_PREFIX, p.subnet), &p.record_json(1), None);
        peers.insert(subnet, p);
    }
    let node = c.add_node();
    let own = c.nodes[node].wait_for_lease().node_subnet();
    let initial: Vec<Peer> = peers.values().cloned().collect();
    let programmed = eventually(secs(10), || {
        c.nodes[node]
            .vxlan_state()
            .is_some_and(|st| st.programs_exactly(&initial))
    });
    assert!(
        programmed,
        "the 150 peers were not programmed:\n{}",
        c.diagnostics()
    );
    let full_reconciles = |c: &OverlayCluster| {
        fs::read_to_string(c.nodes[node].log_path())
            .unwrap_or_default()
            .matches("full reconcile:")
            .count()
    };
    assert!(
        eventually(secs(5), || full_reconciles(&c) == 1),
        "expected one `full reconcile:` line after start, found {}:\n{}",
        full_reconciles(&c),
        c.diagnostics()
    );

    // The cut: everything between the node and etcd dropped, and the agent's established
    // connections aborted, so the watch is lost for certain rather than only stalled.
    let netns = c.nodes[node].netns();
    netns.nft_ok(&format!(
        "add table ip cnit_cut; \
         add chain ip cnit_cut in {{ type filter hook input priority -10; policy accept; }}; \
         add chain ip cnit_cut out {{ type filter hook output priority -10; policy accept; }}; \
         add rule ip cnit_cut in ip saddr {ETCD_ADDR} drop; \
         add rule ip cnit_cut out ip daddr {ETCD_ADDR} drop"
    ));
    let killed = netns.run("ss", &["-K", "dst", &ETCD_ADDR.to_string()]);
    // ss prints each socket it destroyed: the agent's connections (watch and lease) to etcd.
    let destroyed = String::from_utf8_lossy(&killed.stdout);
    assert!(
        killed.status.success() && destroyed.contains(&format!("{ETCD_ADDR}:2379")),
        "ss -K destroyed no connection to etcd (stdout {destroyed:?}): {}",
        String::from_utf8_lossy(&killed.stderr)
    );
    let log_len_at_cut = fs::read_to_string(c.nodes[node].log_path())
        .unwrap_or_default()
        .len();

    // 200 changes, each its own etcd revision.
    let own_octet = own.network().octets()[2];
    let free: Vec<u8> = (0..=255u8)
        .filter(|s| !peers.contains_key(s) && *s != own_octet)
        .take(100)
        .collect();
    assert_eq!(free.len(), 100, "not enough free subnets for 100 new peers");
    for (k, &subnet) in free.iter().enumerate() {
        let p = fake_peer(subnet, 150 + u16::try_from(k).expect("fits"), 0);
        c.etcd
            .put(&subnet_key(ETCD_PREFIX, p.subnet), &p.record_json(1), None);
        peers.insert(subnet, p);
    }
    for subnet in 1..=50u8 {
        let p = peers.remove(&subnet).expect("initial peer");
        c.etcd.ctl_ok(&["del", &subnet_key(ETCD_PREFIX, p.subnet)]);
    }
    for subnet in 51..=100u8 {
        let p = fake_peer(subnet, u16::from(subnet), 1);
        c.etcd
            .put(&subnet_key(ETCD_PREFIX, p.subnet), &p.record_json(1), None);
        peers.insert(subnet, p);
    }
    let final_set: Vec<Peer> = peers.values().cloned().collect();
    assert_eq!(final_set.len(), 200);
    // The cut held: the agent still has the old set.
    assert!(
        c.nodes[node]
            .vxlan_state()
            .is_some_and(|st| st.programs_exactly(&initial)),
        "the agent changed its peers while cut off from etcd: the cut leaks"
    );

    let netns = c.nodes[node].netns();
    netns.nft_ok("delete table ip cnit_cut");
    let restored = Instant::now();
    let caught_up = eventually(secs(30), || {
        c.nodes[node]
            .vxlan_state()
            .is_some_and(|st| st.programs_exactly(&final_set))
    });
    assert!(
        caught_up,
        "30 s after the connection came back the device does not hold exactly the 200 final \
         peers:\n{}",
        c.diagnostics()
    );
    eprintln!(
        "caught up {:?} after the connection was restored",
        restored.elapsed()
    );
    let log = fs::read_to_string(c.nodes[node].log_path()).unwrap_or_default();
    let after_cut = &log[log_len_at_cut.min(log.len())..];
    eprintln!("agent log from the cut on:\n{after_cut}");
    assert_eq!(
        full_reconciles(&c),
        1,
        "the agent listed again instead of resuming its watch:\n{after_cut}"
    );
    assert_eq!(
        events_applied(after_cut),
        200,
        "resumed from the last revision seen, the watch delivers exactly the 200 changes:\n\
         {after_cut}"
    );
    // Its own record survived the cut, on the same subnet.
    assert_eq!(
        record_at(&c.etcd, c.nodes[node].underlay_ip()).map(|(p, _)| p.subnet),
        Some(own),
        "the agent's own record after the cut"
    );
}
