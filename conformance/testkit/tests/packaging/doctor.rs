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
    assert!(hint(c).contains("vxlan-overlay agent --config"), "{c}");

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
