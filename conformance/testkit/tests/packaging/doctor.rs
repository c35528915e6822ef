//! `cni-suite doctor`: every check ok or skipped on a healthy node, the right checks failing on
//! a broken one, the vxlan device and the agent's lease and `/healthz` on an overlay node.

use super::*;

#[test]
fn doctor_passes_a_healthy_node() {
    require_root();
    let mut s = SuiteNode::new();
    s.add_pod("doc-healthy-a");
    let b = s.add_pod("doc-healthy-b");
    s.plugin("DEL", "doc-healthy-b", &s.pods[b]);
    let (o, report) = s.doctor();
    for c in report["checks"].as_array().expect("checks") {
        assert!(
            c["status"] == "ok" || c["status"] == "skip",
            "on a healthy node every check is ok or skipped, {} is not: {c}\n{report:#}",
            c["name"]
        );
        if c["status"] == "skip" {
            assert!(
                c["message"].as_str().is_some_and(|m| m.len() > 10),
                "a skip says why: {c}"
            );
        }
    }
    assert!(o.status.success(), "doctor exit: {}", text(&o));
    assert_eq!(report["passed"], true);
    for name in [
        "runtime-cni".to_string(),
        "bin-dir".into(),
        "conf-dir".into(),
        "conflist:10-suite.conflist".into(),
        "ip-forward".into(),
        format!("bridge:{}", s.bridge),
        format!("ipam:{}", s.network),
        // The fingerprint the doctor expects is the one netsetup wrote.
        format!("masquerade:{}", s.table()),
        format!("log:{}", s.network),
        "results-cache".into(),
    ] {
        assert_eq!(
            status(&report, &name),
            "ok",
            "{name}: {:#}",
            check(&report, &name)
        );
    }
    let log = check(&report, &format!("log:{}", s.network))["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(log.contains("2 ADD, 1 DEL"), "{log}");
    for skipped in ["cluster-dns", "node-pod-cidr"] {
        assert!(check(&report, skipped)["message"]
            .as_str()
            .unwrap_or("")
            .contains("kubeconfig"));
    }
    // The text report says the same.
    let o = s.suite(&[
        "doctor",
        "--conf-dir",
        &s.conf().to_string_lossy(),
        "--bin-dir",
        &s.bin().to_string_lossy(),
        "--containerd-config",
        &s.dir.path().join("containerd.toml").to_string_lossy(),
        "--cache-dir",
        &s.dir.path().join("cache").to_string_lossy(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(stdout(&o).contains("0 failures"), "{}", text(&o));
}

#[test]
fn doctor_fails_a_broken_node_on_the_right_checks() {
    require_root();
    let mut s = SuiteNode::new();
    s.add_pod("doc-broken-a");
    // A leaked lease: the pod's namespace is deleted without a DEL (its veth pair goes with it).
    let c = s.add_pod("doc-broken-leak");
    let leaked = s.pods.remove(c);
    leaked.delete();
    assert!(
        eventually(Duration::from_secs(10), || s
            .node
            .netns()
            .links_of_kind("veth")
            .len()
            == 1),
        "the leaked pod's veth did not go away"
    );
    // The bridge deleted, forwarding off, a conflist naming a plugin that is not installed.
    s.node.netns().ip_ok(&["link", "del", &s.bridge]);
    s.node.netns().set_sysctl("net/ipv4/ip_forward", "0");
    write(
        &s.conf().join("20-broken.conflist"),
        json!({"cniVersion": "1.0.0", "name": "broken", "plugins": [{"type": "no-such-plugin"}]})
            .to_string(),
    );

    let (o, report) = s.doctor();
    assert_eq!(
        o.status.code(),
        Some(1),
        "doctor must exit 1 on failures: {}",
        text(&o)
    );
    assert_eq!(report["passed"], false);
    assert_eq!(status(&report, &format!("bridge:{}", s.bridge)), "fail");
    assert_eq!(status(&report, "ip-forward"), "fail");
    let ipam = check(&report, &format!("ipam:{}", s.network));
    assert_eq!(ipam["status"], "fail", "{ipam}");
    assert!(
        ipam["message"]
            .as_str()
            .unwrap_or("")
            .contains("1 of 2 lease"),
        "{ipam}"
    );
    let broken = check(&report, "conflist:20-broken.conflist");
    assert_eq!(broken["status"], "fail");
    assert!(
        broken["message"]
            .as_str()
            .unwrap_or("")
            .contains("no-such-plugin"),
        "{broken}"
    );
    for c in report["checks"].as_array().expect("checks") {
        if c["status"] == "fail" || c["status"] == "warn" {
            assert!(
                c["hint"].as_str().is_some_and(|h| !h.is_empty()),
                "a failure carries a fix: {c}"
            );
        }
    }
    // What is still right stays ok.
    assert_eq!(status(&report, "conflist:10-suite.conflist"), "ok");
    assert_eq!(status(&report, "runtime-cni"), "ok");
    assert_eq!(status(&report, &format!("masquerade:{}", s.table())), "ok");
}

#[test]
fn doctor_judges_both_families_of_a_dual_stack_network() {
    require_root();
    let mut s = SuiteNode::new_dual();
    s.add_pod("doc-dual-a");
    let bridge = format!("bridge:{}", s.bridge);
    let masq = format!("masquerade:{}", s.table());
    let (o, report) = s.doctor();
    assert!(o.status.success(), "doctor exit: {}\n{report:#}", text(&o));
    for name in [&bridge, &masq] {
        assert_eq!(status(&report, name), "ok", "{:#}", check(&report, name));
    }
    let gateways = check(&report, &bridge)["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        gateways.contains("10.245.3.1/24") && gateways.contains("fd00:245:3::1/120"),
        "both gateways named: {gateways}"
    );
    let tables = check(&report, &masq)["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        tables.contains("IPv4: present") && tables.contains("IPv6: present"),
        "both tables judged: {tables}"
    );

    // Only the IPv6 side broken: the IPv4 one alone would pass.
    s.node
        .netns()
        .ip_ok(&["-6", "addr", "del", "fd00:245:3::1/120", "dev", &s.bridge]);
    let nft = s
        .node
        .netns()
        .run("nft", &["delete", "table", "ip6", &s.table()]);
    assert!(nft.status.success(), "nft: {}", text(&nft));
    let (o, report) = s.doctor();
    assert_eq!(o.status.code(), Some(1), "doctor must fail: {}", text(&o));
    let b = check(&report, &bridge);
    assert_eq!(b["status"], "fail", "{b}");
    assert!(
        b["message"]
            .as_str()
            .is_some_and(|m| m.contains("lacks the gateway address fd00:245:3::1/120")),
        "{b}"
    );
    let m = check(&report, &masq);
    assert_eq!(m["status"], "fail", "{m}");
    let message = m["message"].as_str().unwrap_or("");
    assert!(
        message.contains("IPv4: present")
            && message.contains("IPv6: missing although pods are attached"),
        "{m}"
    );
    assert!(m["hint"].as_str().is_some_and(|h| !h.is_empty()), "{m}");
}

#[test]
fn doctor_checks_the_vxlan_device_and_the_agent_lease() {
    require_root();
    let mut s = OverlaySuite::start(1);
    let subnet = s.node().subnet_env().expect("leased").node_subnet();
    let dev = format!("vxlan:{DEVICE}");
    let agent = format!("agent:{}", s.node().net_name());
    let record = format!("agent-etcd:{}", s.node().net_name());
    let me = s.node().underlay_ip().to_string();

    let (_, report) = s.doctor();
    let c = check(&report, &record);
    assert_eq!(c["status"], "ok", "{c}");
    assert!(
        message(c).contains(&format!("{subnet} recorded for {me}")),
        "the record check names the subnet etcd holds for this node: {c}"
    );
    let c = check(&report, &dev);
    assert_eq!(c["status"], "ok", "{c}");
    assert!(
        message(c).contains(&format!("VTEP {}/32", subnet.network())),
        "the device check names the VTEP address: {c}"
    );
    let c = check(&report, &agent);
    assert_eq!(c["status"], "ok", "{c}");
    assert!(
        message(c).contains("agent pid") && message(c).contains(&format!("leased {subnet}")),
        "the agent check names the agent and its lease: {c}"
    );

    // The device deleted under a running agent: a failure with the fix.
    s.node().netns().ip_ok(&["link", "del", DEVICE]);
    let (o, report) = s.doctor();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let c = check(&report, &dev);
    assert_eq!(c["status"], "fail", "{c}");
    assert!(message(c).contains("missing"), "{c}");
    assert!(hint(c).contains("restart the vxlan-overlay agent"), "{c}");
    assert_eq!(status(&report, &agent), "ok", "the agent still runs");

    // The agent killed: its lease is on file but nobody renews it.
    s.cluster.nodes[0].take_agent().kill();
    let (o, report) = s.doctor();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let c = check(&report, &agent);
    assert_eq!(c["status"], "fail", "{c}");
    assert!(message(c).contains("no agent runs"), "{c}");
    assert!(hint(c).contains("vxlan-overlay-agent --config"), "{c}");

    // Its record gone from etcd (expired, or deleted by hand): peers drop the node.
    let key = format!(
        "{ETCD_PREFIX}/subnets/{}-{}",
        subnet.network(),
        subnet.prefix_len()
    );
    s.cluster.etcd.ctl_ok(&["del", &key]);
    let (o, report) = s.doctor();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let c = check(&report, &record);
    assert_eq!(c["status"], "fail", "{c}");
    assert!(
        message(c).contains(&format!("no subnet record for this node ({me})")),
        "{c}"
    );
    assert!(hint(c).contains("restart the agent"), "{c}");

    // No lease at all: the agent check says so and what it breaks; without a lease a missing
    // device is expected, not a fault.
    fs::remove_file(s.node().data_dir().join("subnet.env")).expect("remove subnet.env");
    let (_, report) = s.doctor();
    let c = check(&report, &agent);
    assert_eq!(c["status"], "fail", "{c}");
    assert!(message(c).contains("no subnet leased"), "{c}");
    assert!(hint(c).contains("code 11"), "{c}");
    let c = check(&report, &dev);
    assert_eq!(c["status"], "skip", "{c}");
    assert!(message(c).contains("not created yet"), "{c}");
    for c in report["checks"].as_array().expect("checks") {
        if c["status"] == "fail" || c["status"] == "warn" {
            assert!(!hint(c).is_empty(), "a failure carries a fix: {c}");
        }
    }
}

#[test]
fn doctor_reads_the_agents_healthz_on_its_metrics_address() {
    require_root();
    // A short leaseTTL and resync, so that etcd's loss shows in /healthz within seconds.
    let metrics: std::net::SocketAddr = "127.0.0.1:9472".parse().expect("address");
    let mut s = OverlaySuite::start_with(2, 6, 1, &json!({"metricsAddress": metrics}));
    s.cluster
        .wait_converged(&[0, 1], Duration::from_secs(20), "two nodes");
    let name = format!("agent-health:{}", s.node().net_name());
    let url = format!("http://{metrics}/healthz");

    // Healthy: ok, with the figures of /metrics (one peer, a recent sync).
    let (_, report) = s.doctor();
    let c = check(&report, &name);
    assert_eq!(c["status"], "ok", "{c}");
    assert!(message(c).starts_with(&format!("{url}: ok")), "{c}");
    assert!(message(c).contains("1 peer(s) programmed"), "{c}");
    assert!(message(c).contains("last sync"), "{c}");

    // etcd gone: the lease cannot be renewed and no sync succeeds, /healthz turns 503 and
    // the doctor fails with the agent's own reason.
    s.cluster.etcd.kill();
    let turned = eventually(Duration::from_secs(30), || {
        http::get(s.node().netns(), metrics, "/healthz").is_ok_and(|r| r.status == 503)
    });
    assert!(
        turned,
        "/healthz stayed 200 without etcd:\n{}",
        s.cluster.diagnostics()
    );
    let reason = http::get(s.node().netns(), metrics, "/healthz")
        .expect("the agent answers")
        .body;
    let (o, report) = s.doctor();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let c = check(&report, &name);
    assert_eq!(c["status"], "fail", "{c}");
    assert!(
        message(c).contains(&format!("{url}: 503 {}", reason.trim())),
        "the check names the agent's reason {reason:?}: {c}"
    );
    assert!(hint(c).contains("etcd") || hint(c).contains("log"), "{c}");

    // The agent stopped: nothing answers, and the check says what to do.
    s.cluster.nodes[0].take_agent().kill();
    let (o, report) = s.doctor();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let c = check(&report, &name);
    assert_eq!(c["status"], "fail", "{c}");
    assert!(
        message(c).contains(&format!("nothing answers on {url}")),
        "{c}"
    );
    assert!(
        message(c).contains("no vxlan-overlay agent runs"),
        "the check names the cause: {c}"
    );
    assert!(hint(c).contains("start the agent"), "{c}");
    assert!(
        hint(c).contains(&format!("metricsAddress {metrics}")),
        "{c}"
    );
}

/// Holds the attachment lock of (`id`, `ifname`) in the IPAM directory `dir` as a running ADD
/// or DEL does (an OFD lock on one byte of `lock`, at node-ipam's offset: FNV-1a of id, NUL,
/// ifname, modulo 2^20), until the file is dropped.
fn hold_attachment_lock(dir: &Path, id: &str, ifname: &str) -> fs::File {
    use std::os::fd::AsRawFd;
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join("lock"))
        .expect("the network's lock file");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes().chain([0u8]).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let fl = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: (h % (1 << 20)) as libc::off_t,
        l_len: 1,
        l_pid: 0,
    };
    // SAFETY: fcntl on a descriptor this function owns, with a flock struct that outlives the
    // call.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    assert_eq!(r, 0, "OFD lock: {}", std::io::Error::last_os_error());
    file
}

/// The name of pod `id`'s lease file (its address) in the node's IPAM directory.
fn lease_file(s: &SuiteNode, id: &str) -> String {
    let dir = s.ipam_root().join(&s.network);
    fs::read_dir(&dir)
        .expect("ipam dir")
        .flatten()
        .find(|e| fs::read_to_string(e.path()).is_ok_and(|c| c.starts_with(&format!("{id}\r\n"))))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .unwrap_or_else(|| panic!("no lease of {id} in {}", dir.display()))
}

/// Runs the doctor on `s` with `extra` arguments and returns check `name`, which must have
/// status `want` (and a failing exit status when it fails).
fn doctor_check(s: &SuiteNode, extra: &[&str], name: &str, want: &str) -> Value {
    let (o, report) = s.doctor_with(extra);
    let c = check(&report, name).clone();
    assert_eq!(c["status"], want, "{c}");
    if want == "fail" {
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    }
    c
}

#[test]
fn doctor_fails_a_veth_on_the_bridge_with_no_lease_and_no_pod() {
    require_root();
    let mut s = SuiteNode::new();
    s.add_pod("doc-orph-veth-a");
    let name = format!("orphan-veths:{}", s.network);
    let c = doctor_check(&s, &[], &name, "ok");
    assert!(message(&c).contains("1 pod veth(s)"), "{c}");

    // A veth of the suite's naming on the bridge whose peer is in no pod's namespace and
    // which no lease names: what a lost lease leaves once the pod is gone.
    let netns = s.node.netns();
    let orphan = "veth0badc0ffee1";
    netns.ip_ok(&[
        "link",
        "add",
        orphan,
        "type",
        "veth",
        "peer",
        "name",
        "doc-orph-peer",
    ]);
    netns.ip_ok(&["link", "set", orphan, "master", &s.bridge]);
    let c = doctor_check(&s, &[], &name, "fail");
    assert!(
        message(&c).contains(orphan),
        "the check names the veth: {c}"
    );
    assert!(message(&c).contains("no lease, no namespace"), "{c}");
    assert!(
        hint(&c).contains(&format!("ip link del {orphan}"))
            && hint(&c).contains("cni-suite teardown"),
        "the fix names the veth and teardown: {c}"
    );
    // The pod with its lease is not named.
    let pod_veth = suite_veths(netns)
        .into_iter()
        .find(|v| v != orphan)
        .expect("the pod's veth");
    assert!(!message(&c).contains(&pod_veth), "{c}");

    // A pod whose lease is lost while its namespace lives: a warning naming its veth.
    netns.ip_ok(&["link", "del", orphan]);
    let dir = s.ipam_root().join(&s.network);
    fs::remove_file(dir.join(lease_file(&s, "doc-orph-veth-a"))).expect("remove lease");
    fs::remove_file(dir.join("attachments/doc-orph-veth-a@eth0")).expect("remove index entry");
    let c = doctor_check(&s, &[], &name, "warn");
    assert!(message(&c).contains(&pod_veth), "{c}");
    assert!(message(&c).contains("namespace still exists"), "{c}");
}

#[test]
fn doctor_fails_a_cached_result_with_no_lease_and_skips_a_busy_one() {
    require_root();
    let mut s = SuiteNode::new();
    s.add_pod("doc-orph-res-a");
    s.cache_result("doc-orph-res-a");
    let name = format!("orphan-results:{}", s.network);
    let c = doctor_check(&s, &[], &name, "ok");
    assert!(message(&c).contains("1 cached result(s)"), "{c}");

    // The runtime's cache names a pod the plugin holds nothing for.
    let gone = s.cache_result("doc-orph-res-gone");
    let gone_file = gone
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let c = doctor_check(&s, &[], &name, "fail");
    assert!(
        message(&c).contains(&gone_file),
        "the check names the file: {c}"
    );
    assert!(
        !message(&c).contains(&format!("{}-doc-orph-res-a-eth0", s.network)),
        "{c}"
    );
    assert!(hint(&c).contains("cni-suite teardown"), "{c}");

    // While its DEL holds the attachment lock, it is not judged.
    let lock = hold_attachment_lock(&s.ipam_root().join(&s.network), "doc-orph-res-gone", "eth0");
    doctor_check(&s, &[], &name, "ok");
    drop(lock);
    doctor_check(&s, &[], &name, "fail");
}

#[test]
fn doctor_fails_a_lease_with_no_cached_result_only_after_the_grace_period() {
    require_root();
    let mut s = SuiteNode::new();
    s.add_pod("doc-orph-old");
    s.add_pod("doc-orph-new");
    let name = format!("orphan-leases:{}", s.network);
    // Just added, not cached yet (libcni caches after ADD returns): not an orphan.
    let c = doctor_check(&s, &[], &name, "ok");
    assert!(message(&c).contains("2 younger or busy"), "{c}");

    // One lease ten minutes old that no runtime cached: past the default 300 s.
    let dir = s.ipam_root().join(&s.network);
    let old = lease_file(&s, "doc-orph-old");
    run_ok(
        Command::new("touch")
            .args(["-d", "10 minutes ago"])
            .arg(dir.join(&old)),
    );
    let c = doctor_check(&s, &[], &name, "fail");
    assert!(
        message(&c).contains(&format!("{old} (doc-orph-old, eth0;")),
        "{c}"
    );
    assert!(!message(&c).contains("doc-orph-new"), "{c}");
    assert!(hint(&c).contains("GC"), "{c}");

    // A longer grace, a running ADD/DEL, or a cached result: not an orphan.
    doctor_check(&s, &["--orphan-grace-seconds", "3600"], &name, "ok");
    let lock = hold_attachment_lock(&dir, "doc-orph-old", "eth0");
    doctor_check(&s, &[], &name, "ok");
    drop(lock);
    s.cache_result("doc-orph-old");
    doctor_check(&s, &[], &name, "ok");
}
