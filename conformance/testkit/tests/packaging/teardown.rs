//! `cni-suite teardown`: a dry run changes nothing, `--yes` removes the suite's state and
//! nothing else, a node of 250 pods in bounded time, and an overlay node with its etcd record.

use super::*;

#[test]
fn teardown_dry_run_changes_nothing_and_yes_removes_only_the_suites_state() {
    require_root();
    let mut s = SuiteNode::new();
    let a = s.add_pod("td-pod-a");
    let netns = s.node.netns();
    // Another provider's state that must stay: a host-local network, its cached result, a
    // bridge and an nftables table.
    let foreign_ipam = s.ipam_root().join("foreign-net");
    write(&foreign_ipam.join("10.99.0.5"), "other-container\r\neth0");
    write(&foreign_ipam.join("last_reserved_ip.0"), "10.99.0.5");
    let results = s.dir.path().join("cache/results");
    write(
        &results.join("foreign-net-other-container-eth0"),
        json!({"kind": "cniCacheV1", "containerId": "other-container", "ifName": "eth0", "networkName": "foreign-net"}).to_string(),
    );
    let ours = results.join(format!("{}-td-pod-a-eth0", s.network));
    write(
        &ours,
        json!({"kind": "cniCacheV1", "containerId": "td-pod-a", "ifName": "eth0", "networkName": s.network}).to_string(),
    );
    let other_bridge = unique_link_name("fbr");
    netns.ip_ok(&["link", "add", &other_bridge, "type", "bridge"]);
    let nft = |args: &[&str]| run(netns.command("nft").args(args));
    assert!(nft(&["add", "table", "ip", "other_provider"])
        .status
        .success());

    let links = || {
        netns
            .ip_json(&["link", "show"])
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect::<Vec<_>>()
    };
    let ruleset = || stdout(&nft(&["list", "ruleset"]));
    let (links0, rules0, files0) = (links(), ruleset(), tree(s.dir.path()));
    assert!(links0.contains(&s.bridge), "{links0:?}");
    assert!(rules0.contains(&s.table()), "{rules0}");

    let (o, plan) = s.teardown(&[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(plan["dryRun"], true);
    let actions: Vec<String> = plan["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .map(|a| a["action"].as_str().unwrap_or("").to_string())
        .collect();
    for want in [
        format!("delete link {} ", s.bridge),
        format!("delete nftables table ip {}", s.table()),
        format!("remove {}/", s.ipam_root().join(&s.network).display()),
        format!("remove {} ", ours.display()),
    ] {
        assert!(
            actions.iter().any(|a| a.starts_with(&want)),
            "plan lacks {want:?}: {actions:#?}"
        );
    }
    assert!(
        actions.iter().any(|a| a.starts_with("delete link veth")),
        "{actions:#?}"
    );
    for a in &actions {
        assert!(
            !a.contains("foreign") && !a.contains("other_provider") && !a.contains(&other_bridge),
            "plan touches another provider: {a}"
        );
    }
    assert_eq!(links(), links0, "the dry run changed links");
    assert_eq!(ruleset(), rules0, "the dry run changed the firewall");
    assert_eq!(tree(s.dir.path()), files0, "the dry run changed files");

    let (o, done) = s.teardown(&["--yes"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(done["dryRun"], false);
    for a in done["actions"].as_array().expect("actions") {
        assert_eq!(a["result"], "done", "{a}");
    }
    let left = links();
    assert!(!left.contains(&s.bridge), "bridge left: {left:?}");
    assert!(
        left.iter().all(|l| !l.starts_with("veth")),
        "veths left: {left:?}"
    );
    assert!(
        left.contains(&other_bridge),
        "another provider's bridge was removed: {left:?}"
    );
    let rules = ruleset();
    assert!(!rules.contains("cni_suite_"), "suite table left:\n{rules}");
    assert!(
        rules.contains("table ip other_provider"),
        "another provider's table was removed:\n{rules}"
    );
    assert!(
        !s.ipam_root().join(&s.network).exists(),
        "suite IPAM state left"
    );
    assert!(
        foreign_ipam.join("10.99.0.5").is_file(),
        "another network's IPAM state was removed"
    );
    assert!(!ours.exists(), "suite cached result left");
    assert!(
        results.join("foreign-net-other-container-eth0").is_file(),
        "another network's cached result was removed"
    );
    // The pod lost its interface with its veth.
    assert!(!s.pods[a].has_link("eth0"));

    // Idempotent: nothing left to do.
    let (o, again) = s.teardown(&["--yes"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        again["actions"].as_array().map(Vec::len),
        Some(0),
        "{again:#}"
    );
}

#[test]
fn teardown_removes_a_node_of_250_pods_in_bounded_time() {
    require_root();
    const PODS: usize = 250;
    // How long the removal may take. It took about 5 s here, nearly all of it the kernel's
    // ~17 ms per veth deletion (RCU synchronisation; `ip -batch` of the same 250 deletes
    // takes 4.2 s). The bound catches a hang or stalls on netlink receive timeouts (10 s
    // each), not a slow machine.
    const LIMIT: Duration = Duration::from_secs(60);
    let mut s = SuiteNode::new();
    for i in 0..PODS {
        s.add_pod(&format!("td-many-{i:03}"));
    }
    let netns = s.node.netns();
    assert_eq!(
        suite_veths(netns).len(),
        PODS,
        "a veth per pod before teardown"
    );
    let leases = s.ipam_root().join(&s.network);
    let leased = fs::read_dir(&leases)
        .expect("the network's IPAM dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("10.245.3."))
        .count();
    assert_eq!(leased, PODS, "a lease per pod before teardown");

    // The plan names every pod's veth once.
    let (o, plan) = s.teardown(&[]);
    assert!(o.status.success(), "{}", text(&o));
    let deletes = plan["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter(|a| {
            a["action"]
                .as_str()
                .unwrap_or("")
                .starts_with("delete link veth")
        })
        .count();
    assert_eq!(deletes, PODS, "{plan:#}");

    let started = Instant::now();
    let (o, done) = s.teardown(&["--yes"]);
    let took = started.elapsed();
    assert!(o.status.success(), "{}", text(&o));
    for a in done["actions"].as_array().expect("actions") {
        assert_eq!(a["result"], "done", "{a}");
    }
    assert!(took < LIMIT, "teardown of {PODS} pods took {took:?}");
    eprintln!("teardown of {PODS} pods took {took:?}");
    assert_eq!(suite_veths(netns), Vec::<String>::new(), "veths left");
    assert!(!netns.has_link(&s.bridge), "bridge {} left", s.bridge);
    assert!(!leases.exists(), "the network's leases are left");
    let rules = stdout(&run(netns.command("nft").args(["list", "ruleset"])));
    assert!(!rules.contains(&s.table()), "{} left:\n{rules}", s.table());
    let attached = s.pods.iter().filter(|p| p.has_link("eth0")).count();
    assert_eq!(attached, 0, "pods kept their interface");
}

#[test]
fn teardown_on_a_vxlan_overlay_node_removes_the_overlay_and_its_etcd_record() {
    require_root();
    let mut s = OverlaySuite::start(2);
    let pod = s.cluster.add_pod(0);
    let net = s.node().net_name().to_string();
    let data = s.node().data_dir();
    let ipam = s.ipam_root().join(&net);
    let me = s.node().underlay_ip().to_string();
    let other = s.cluster.nodes[1].underlay_ip().to_string();
    // Another network's host-local state in the same IPAM root must stay.
    let foreign = s.ipam_root().join("foreign-net");
    write(&foreign.join("10.99.0.5"), "other-container\r\neth0");
    write(&foreign.join("last_reserved_ip.0"), "10.99.0.5");
    let cached = s.cached_results();
    assert_eq!(
        cached.len(),
        1,
        "cnitool cached the pod's result: {cached:?}"
    );
    let links0 = s.links();
    for l in [DEVICE, BRIDGE] {
        assert!(
            links0.iter().any(|x| x == l),
            "{l} missing before teardown: {links0:?}"
        );
    }
    assert!(
        s.ruleset().contains("table ip cni_suite_"),
        "{}",
        s.ruleset()
    );
    assert!(
        ipam.is_dir() && data.join("agent.json").is_file() && data.join("subnet.env").is_file()
    );
    assert_eq!(s.record_owners(), [me.clone(), other.clone()]);

    // With the agent running, --yes refuses: it would recreate the device and subnet file.
    let (o, plan) = s.teardown(&["--yes", "--with-etcd-lease"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        plan["blockers"].as_array().is_some_and(|b| b
            .iter()
            .any(|b| b.as_str().unwrap_or("").contains("agent running"))),
        "{plan:#}"
    );
    assert_eq!(s.links(), links0, "a blocked teardown changed links");
    assert!(
        ipam.is_dir() && data.join("subnet.env").is_file(),
        "a blocked teardown removed state"
    );

    // The agent crashed (SIGKILL releases nothing): its record stays in etcd until the TTL.
    s.cluster.nodes[0].take_agent().kill();
    // Only our own cached result is compared: other tests on the machine share libcni's cache.
    let cached_text = || fs::read_to_string(&cached[0]).ok();
    let (rules0, node_files0, cache0) = (
        s.ruleset(),
        tree(data.parent().expect("node dir")),
        cached_text(),
    );
    let (o, plan) = s.teardown(&["--with-etcd-lease"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(plan["dryRun"], true);
    assert_eq!(plan["blockers"], json!([]), "{plan:#}");
    let actions: Vec<String> = plan["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .map(|a| a["action"].as_str().unwrap_or("").to_string())
        .collect();
    for want in [
        format!("delete link {DEVICE} (VXLAN device of network {net})"),
        format!("delete link {BRIDGE} "),
        "delete link veth".to_string(),
        "delete nftables table ip cni_suite_".to_string(),
        format!("remove {}/ (IPAM state of network {net})", ipam.display()),
        format!("remove {} ", data.join("agent.json").display()),
        format!("remove {} ", data.join("subnet.env").display()),
        format!("remove {}/ if empty", data.display()),
        format!("remove {} ", cached[0].display()),
        format!("release this node's subnet record under {ETCD_PREFIX}/subnets"),
    ] {
        assert!(
            actions.iter().any(|a| a.starts_with(&want)),
            "plan lacks {want:?}: {actions:#?}"
        );
    }
    assert!(
        actions.iter().all(|a| !a.contains("foreign")),
        "the plan touches another network: {actions:#?}"
    );
    assert_eq!(s.links(), links0, "the dry run changed links");
    assert_eq!(s.ruleset(), rules0, "the dry run changed the firewall");
    assert_eq!(
        tree(data.parent().expect("node dir")),
        node_files0,
        "the dry run changed the node's files"
    );
    assert!(cache0.is_some(), "the cached result is readable");
    assert_eq!(
        cached_text(),
        cache0,
        "the dry run changed the cached result"
    );
    assert_eq!(
        s.record_owners(),
        [me.clone(), other.clone()],
        "the dry run changed etcd"
    );

    let (o, done) = s.teardown(&["--yes", "--with-etcd-lease"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(done["dryRun"], false);
    for a in done["actions"].as_array().expect("actions") {
        assert_eq!(a["result"], "done", "{a}");
    }
    let left = s.links();
    for gone in [DEVICE, BRIDGE] {
        assert!(!left.iter().any(|l| l == gone), "{gone} left: {left:?}");
    }
    assert!(
        left.iter().all(|l| !l.starts_with("veth")),
        "veths left: {left:?}"
    );
    assert!(
        left.iter().any(|l| l == "eth0"),
        "the underlay link was removed: {left:?}"
    );
    assert!(
        !s.ruleset().contains("cni_suite_"),
        "suite table left:\n{}",
        s.ruleset()
    );
    assert!(!ipam.exists(), "the network's IPAM state is left");
    assert!(!data.exists(), "the agent's state dir is left");
    assert!(!cached[0].exists(), "the cached result is left");
    assert!(
        foreign.join("10.99.0.5").is_file() && foreign.join("last_reserved_ip.0").is_file(),
        "another network's IPAM state was removed"
    );
    assert_eq!(
        s.record_owners(),
        [other],
        "only this node's record goes from etcd"
    );
    assert!(
        !s.cluster.pods[pod].netns.has_link("eth0"),
        "the pod kept its interface"
    );

    // Nothing left to do.
    let (o, again) = s.teardown(&["--yes"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        again["actions"].as_array().map(Vec::len),
        Some(0),
        "{again:#}"
    );
}
