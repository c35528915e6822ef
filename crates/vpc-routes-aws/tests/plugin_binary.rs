//! The `vpc-route` binary as a runtime runs it, against moto's EC2 and an IMDSv2 fake (a fake:
//! moto's own metadata stub lacks the token TTL header aws-config requires): a cold ADD
//! registers the pod CIDR in every tagged table and passes prevResult on unchanged; a warm ADD
//! makes no EC2 or IMDS request at all (counted from moto's request log); CHECK, STATUS, DEL
//! and the node commands.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use cni_testkit::netns::Netns;
use common::{Cluster, ImdsFake, Moto};
use serde_json::{json, Value};

fn binary() -> PathBuf {
    common::vpc_route_binary()
}

fn run(args: &[&str], verb: Option<&str>, stdin: &Value, env: &[(&str, String)]) -> Output {
    common::run_vpc_route(&binary(), args, verb, stdin, env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_registers_once_then_costs_no_ec2_call_and_passes_prev_result_on() {
    let moto = Moto::start();
    let ec2 = moto.client().await;
    let cluster: Cluster = common::cluster(&ec2, "bin").await;
    let node = cluster.run_instance(&ec2).await;
    let imds = ImdsFake::start(cluster.imds_values(&node));
    let data = tempfile::tempdir().expect("tempdir");
    let prev = json!({"cniVersion": "1.0.0",
        "interfaces": [{"name": "cbr0", "mac": "02:00:00:00:00:01"},
                       {"name": "eth0", "mac": "0a:58:0a:f4:07:02", "sandbox": "/var/run/netns/p"}],
        "ips": [{"address": "10.244.7.2/24", "gateway": "10.244.7.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.7.1"}]});
    let plugin = json!({"type": "vpc-route", "clusterName": "bin", "podCIDR": "10.244.7.0/24",
        "clusterCIDR": "10.244.0.0/16", "region": "us-east-1", "ec2Endpoint": moto.endpoint,
        "imdsEndpoint": imds.endpoint(), "dataDir": data.path()});
    let mut conf = plugin.clone();
    conf["cniVersion"] = json!("1.0.0");
    conf["name"] = json!("k8s");
    conf["prevResult"] = prev.clone();

    let out = run(&[], Some("ADD"), &conf, &[]);
    assert!(
        out.status.success(),
        "cold ADD: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).expect("ADD prints JSON");
    assert_eq!(printed, prev, "ADD must pass prevResult on unchanged");
    for table in cluster.tagged_tables() {
        let routes = common::routes(&ec2, table).await;
        assert!(
            routes
                .iter()
                .any(|(dst, _, eni)| dst.to_string() == "10.244.7.0/24"
                    && eni.as_deref() == Some(node.eni_id.as_str())),
            "{table}: {routes:?}"
        );
    }
    let foreign = common::routes(&ec2, &cluster.foreign_table).await;
    assert!(!foreign
        .iter()
        .any(|(dst, _, _)| dst.to_string() == "10.244.7.0/24"));

    let (ec2_before, imds_before) = (moto.requests(), imds.requests());
    assert!(ec2_before > 0, "the cold ADD went to EC2");
    for _ in 0..3 {
        let out = run(&[], Some("ADD"), &conf, &[]);
        assert!(
            out.status.success(),
            "warm ADD: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert_eq!(
        moto.requests(),
        ec2_before,
        "a warm ADD must make no EC2 request"
    );
    assert_eq!(
        imds.requests(),
        imds_before,
        "a warm ADD must make no IMDS request"
    );

    let out = run(&[], Some("CHECK"), &conf, &[]);
    assert!(
        out.status.success(),
        "CHECK: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mut status = conf.clone();
    status["cniVersion"] = json!("1.1.0");
    status.as_object_mut().expect("object").remove("prevResult");
    let out = run(&[], Some("STATUS"), &status, &[]);
    assert!(
        out.status.success(),
        "STATUS: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = run(&[], Some("DEL"), &conf, &[]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        common::routes(&ec2, &cluster.owned_table)
            .await
            .iter()
            .any(|(dst, _, _)| dst.to_string() == "10.244.7.0/24"),
        "DEL of a pod must leave the node route"
    );

    // Node commands read the same conflist.
    let conflist = data.path().join("net.conflist");
    std::fs::write(
        &conflist,
        json!({"cniVersion": "1.0.0", "name": "k8s",
        "plugins": [{"type": "kubenet-bridge", "podCIDR": "10.244.7.0/24"}, plugin]})
        .to_string(),
    )
    .expect("write conflist");
    let path = conflist.to_string_lossy().to_string();
    let out = run(&["status", "--config", &path], None, &json!({}), &[]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with(&format!(
            "{} ({}, {}): registered",
            node.instance_id, node.eni_id, cluster.vpc_id
        )),
        "{text}"
    );
    for table in cluster.tagged_tables() {
        assert!(
            text.contains(&format!(
                "{table} 10.244.7.0/24: 2 IPv4 routes, route in place"
            )),
            "{table}: {text}"
        );
    }

    // A route inside clusterCIDR to a terminated instance: the dry run names it, keeps it.
    let dead = cluster.run_instance(&ec2).await;
    common::create_instance_route(
        &ec2,
        &cluster.owned_table,
        "10.244.9.0/24",
        &dead.instance_id,
    )
    .await;
    common::terminate(&ec2, &dead.instance_id).await;
    let out = run(
        &["gc", "--dry-run", "--config", &path],
        None,
        &json!({}),
        &[],
    );
    assert!(
        out.status.success(),
        "gc --dry-run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "would delete 10.244.9.0/24 -> {id} in {} (target instance {id} is terminated)",
            cluster.owned_table,
            id = dead.instance_id
        )
    );
    assert!(
        common::route_to(&ec2, &cluster.owned_table, "10.244.9.0/24")
            .await
            .is_some(),
        "gc --dry-run must not delete"
    );

    let out = run(
        &["deregister", "--dry-run", "--config", &path],
        None,
        &json!({}),
        &[],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "deregister --dry-run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for table in cluster.tagged_tables() {
        let line = format!(
            "would delete 10.244.7.0/24 -> {} in {table} (node deregistered)",
            node.eni_id
        );
        assert!(text.contains(&line), "{line} not in: {text}");
        assert_eq!(
            common::route_to(&ec2, table, "10.244.7.0/24").await,
            Some((None, Some(node.eni_id.clone()))),
            "deregister --dry-run must not delete ({table})"
        );
    }
    let out = run(&["status", "--config", &path], None, &json!({}), &[]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(": registered"),
        "the dry run keeps the node state: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = run(
        &["register", "--dry-run", "--config", &path],
        None,
        &json!({}),
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "--dry-run is for deregister and gc"
    );

    let out = run(&["deregister", "--config", &path], None, &json!({}), &[]);
    assert!(
        out.status.success(),
        "deregister: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for table in cluster.tagged_tables() {
        let routes = common::routes(&ec2, table).await;
        assert!(
            !routes
                .iter()
                .any(|(dst, _, _)| dst.to_string() == "10.244.7.0/24"),
            "{table}: {routes:?}"
        );
    }
    let out = run(&["register", "--config", &path], None, &json!({}), &[]);
    assert!(
        out.status.success(),
        "register: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("10.244.7.0/24"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn bad_config_is_a_cni_error_not_a_panic() {
    let conf = json!({"cniVersion": "1.0.0", "name": "k8s", "type": "vpc-route",
        "clusterName": "x", "podCIDR": "10.9.0.0/24", "clusterCIDR": "10.244.0.0/16"});
    let out = run(&[], Some("ADD"), &conf, &[]);
    assert!(!out.status.success());
    let err: Value = serde_json::from_slice(&out.stdout).expect("JSON error");
    assert_eq!(err["code"], 7, "{err}");
    assert_eq!(err["cniVersion"], "1.0.0");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_50_while_a_full_table_lacks_the_route_and_ok_once_it_holds_it() {
    let moto = Moto::start();
    let ec2 = moto.client().await;
    let cluster: Cluster = common::cluster(&ec2, "status").await;
    let node = cluster.run_instance(&ec2).await;
    let imds = ImdsFake::start(cluster.imds_values(&node));
    let data = tempfile::tempdir().expect("tempdir");
    let conf = |quota: u32, verb: &str| {
        let mut c = json!({"cniVersion": "1.1.0", "name": "k8s", "type": "vpc-route",
            "clusterName": "status", "podCIDR": "10.244.8.0/24", "clusterCIDR": "10.244.0.0/16",
            "region": "us-east-1", "ec2Endpoint": moto.endpoint, "imdsEndpoint": imds.endpoint(),
            "dataDir": data.path(), "routeQuota": quota,
            "routeTableIds": [cluster.owned_table]});
        if verb == "ADD" {
            c["prevResult"] = json!({"cniVersion": "1.1.0"});
        }
        c
    };

    // Never registered: STATUS is ok (a failing STATUS would keep the first ADD from coming).
    let out = run(&[], Some("STATUS"), &conf(1, "STATUS"), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The table holds only its local route, at a routeQuota of 1: ADD is refused (110) ...
    let out = run(&[], Some("ADD"), &conf(1, "ADD"), &[]);
    let err: Value = serde_json::from_slice(&out.stdout).expect("ADD error JSON");
    assert_eq!(err["code"], 110, "{err}");
    // ... and STATUS says so from the node state alone: 50, naming table and quota.
    let requests = moto.requests();
    let out = run(&[], Some("STATUS"), &conf(1, "STATUS"), &[]);
    assert!(!out.status.success());
    let err: Value = serde_json::from_slice(&out.stdout).expect("STATUS error JSON");
    assert_eq!(err["code"], 50, "{err}");
    let msg = err["msg"].as_str().unwrap_or_default();
    for needle in [
        cluster.owned_table.as_str(),
        "L-93826ACB",
        "routeQuota 1",
        "10.244.8.0/24",
    ] {
        assert!(msg.contains(needle), "{needle} missing from: {msg}");
    }
    assert_eq!(moto.requests(), requests, "STATUS must not call EC2");

    // Room for exactly our route: registered, and the table is now full (2 of 2) but holds
    // it, so ADD needs no EC2 call: STATUS is ok.
    let out = run(&[], Some("ADD"), &conf(2, "ADD"), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let requests = moto.requests();
    let out = run(&[], Some("STATUS"), &conf(2, "STATUS"), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(out.stdout.is_empty());
    let out = run(&[], Some("ADD"), &conf(2, "ADD"), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        moto.requests(),
        requests,
        "a warm ADD in a full table calls no EC2"
    );
}

/// Forwards 127.0.0.1:`port` inside a namespace to 127.0.0.1:`port` here, so a process in
/// the namespace reaches moto at the same endpoint. The listening socket is made by a thread
/// that entered the namespace (setns moves only the calling thread; a socket stays in the
/// namespace it was created in); upstream connections are made from this one.
struct Forwarder {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Forwarder {
    fn start(netns: &Netns, port: u16) -> Self {
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::Ordering;
        let listener = netns
            .on_thread_inside(|| TcpListener::bind(("127.0.0.1", port)).expect("bind in netns"))
            .expect("enter the test namespace");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        continue;
                    }
                    Err(_) => break,
                };
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", port)) else {
                    continue;
                };
                let _ = client.set_nonblocking(false);
                for (from, to) in [(&client, &upstream), (&upstream, &client)] {
                    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Forwarder {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A node's network of [kubenet-bridge, vpc-route].
struct NodeNet<'a> {
    name: &'a str,
    cluster_name: &'a str,
    pod_cidr: &'a str,
    /// Top-level fields added to the conflist (`disableCheck`...).
    list_fields: Value,
}

/// Writes `net` as a conflist at `path`, with state under `state` and every identity value
/// of `node` given (so no IMDS is needed, in any namespace), and registers the node with
/// `vpc-route register --config`. Returns the conflist's path.
fn register_node(
    path: &std::path::Path,
    state: &std::path::Path,
    net: &NodeNet,
    moto: &Moto,
    cluster: &Cluster,
    node: &common::Node,
) -> String {
    let mut list = json!({"cniVersion": "1.0.0", "name": net.name, "plugins": [
        {"type": "kubenet-bridge", "podCIDR": net.pod_cidr,
         "dataDir": state.join("ipam")},
        {"type": "vpc-route", "clusterName": net.cluster_name, "podCIDR": net.pod_cidr,
         "clusterCIDR": "10.244.0.0/16", "region": "us-east-1",
         "ec2Endpoint": moto.endpoint, "instanceId": node.instance_id,
         "eniId": node.eni_id, "vpcId": cluster.vpc_id,
         "dataDir": state.join("vpc-route")}]});
    if let (Some(list), Some(extra)) = (list.as_object_mut(), net.list_fields.as_object()) {
        list.extend(extra.clone());
    }
    std::fs::write(path, list.to_string()).expect("write conflist");
    let path = path.to_string_lossy().to_string();
    let out = run(&["register", "--config", &path], None, &json!({}), &[]);
    assert!(
        out.status.success(),
        "register: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// `cni-suite teardown --with-vpc-routes` runs the installed vpc-route (here: the one next to
/// cni-suite in the target dir, given with --bin-dir) and reports its plan. In a network
/// namespace of its own, since teardown removes every cni_suite_* nftables table it sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_suite_teardown_with_vpc_routes_runs_vpc_route_deregister() {
    let bin_dir = binary().parent().expect("bin dir").to_path_buf();
    let cni_suite = bin_dir.join("cni-suite");
    assert!(
        cni_suite.exists(),
        "{} missing: cargo build --release --workspace --bins",
        cni_suite.display()
    );
    let moto = Moto::start();
    let ec2 = moto.client().await;
    let cluster: Cluster = common::cluster(&ec2, "teardown").await;
    let node = cluster.run_instance(&ec2).await;
    let port: u16 = moto
        .endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("moto port");
    let netns = Netns::new("vpcrt-td-");
    let _forwarder = Forwarder::start(&netns, port);

    let dir = tempfile::tempdir().expect("tempdir");
    let conf_dir = dir.path().join("net.d");
    std::fs::create_dir_all(&conf_dir).expect("mkdir");
    let conflist = conf_dir.join("10-k8s.conflist");
    register_node(
        &conflist,
        dir.path(),
        &NodeNet {
            name: "k8s-td",
            cluster_name: "teardown",
            pod_cidr: "10.244.11.0/24",
            list_fields: json!({}),
        },
        &moto,
        &cluster,
        &node,
    );
    let registered = Some((None, Some(node.eni_id.clone())));
    for table in cluster.tagged_tables() {
        assert_eq!(
            common::route_to(&ec2, table, "10.244.11.0/24").await,
            registered
        );
    }

    let teardown = |extra: &[&str]| -> (Output, Value) {
        let out = Command::new("ip")
            .args(["netns", "exec", netns.name()])
            .arg(&cni_suite)
            .args(["teardown", "--json", "--with-vpc-routes", "--conf-dir"])
            .arg(&conf_dir)
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .arg("--bin-dir")
            .arg(dir.path().join("no-such-bin"))
            .arg("--bin-dir")
            .arg(&bin_dir)
            .args(extra)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .output()
            .expect("run cni-suite");
        let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "teardown --json ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out, v)
    };
    let action = format!(
        "deregister the VPC routes of 10.244.11.0/24 (network k8s-td): {} deregister --config {}",
        bin_dir.join("vpc-route").display(),
        conflist.display()
    );

    // The dry run plans it and changes nothing.
    let (out, plan) = teardown(&[]);
    assert!(out.status.success(), "{plan}");
    let step = plan["actions"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["action"] == action.as_str()))
        .unwrap_or_else(|| panic!("{action} not planned: {plan}"));
    assert_eq!(step["result"], "planned");
    assert_eq!(
        common::route_to(&ec2, &cluster.owned_table, "10.244.11.0/24").await,
        registered
    );

    let (out, done) = teardown(&["--yes"]);
    assert!(out.status.success(), "{done}");
    let step = done["actions"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["action"] == action.as_str()))
        .unwrap_or_else(|| panic!("{action} not done: {done}"));
    assert_eq!(step["result"], "done", "{done}");
    let output = step["output"].as_str().unwrap_or_default();
    for table in cluster.tagged_tables() {
        let line = format!(
            "did delete 10.244.11.0/24 -> {} in {table} (node deregistered)",
            node.eni_id
        );
        assert!(output.contains(&line), "{line} not in: {output}");
        assert_eq!(common::route_to(&ec2, table, "10.244.11.0/24").await, None);
    }
    assert!(!dir.path().join("vpc-route/node.json").exists());
}

/// The conformance runner on [kubenet-bridge, vpc-route], every spec version: vpc-route as a
/// runtime meets it, chained after the plugin that makes the pod. The node registers first
/// (`vpc-route register`, against moto); the runner's cases then run in namespaces of their
/// own, which cannot reach moto on this namespace's loopback, so every ADD, DEL, STATUS and GC
/// there must come from vpc-route's node state: the test also asserts that the whole run made
/// no EC2 request. CHECK is off in this conflist (`disableCheck`) because vpc-route's CHECK
/// asks EC2 by design; it is tested against moto above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_runner_passes_kubenet_bridge_chained_with_vpc_route() {
    let bin_dir = binary().parent().expect("bin dir").to_path_buf();
    let runner = bin_dir.join("cni-conformance");
    assert!(
        runner.exists(),
        "{} missing: cargo build --release --workspace --bins",
        runner.display()
    );
    let moto = Moto::start();
    let ec2 = moto.client().await;
    let cluster: Cluster = common::cluster(&ec2, "runner").await;
    let node = cluster.run_instance(&ec2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = register_node(
        &dir.path().join("10-k8s.conflist"),
        dir.path(),
        &NodeNet {
            name: "k8s-runner",
            cluster_name: "runner",
            pod_cidr: "10.244.12.0/24",
            list_fields: json!({"disableCheck": true}),
        },
        &moto,
        &cluster,
        &node,
    );
    let before = moto.requests();

    let report_path = dir.path().join("report.json");
    let out = Command::new(&runner)
        .args(["--conflist", &path, "--cni-path"])
        .arg(format!("{}:/usr/lib/cni", bin_dir.display()))
        .arg("--json")
        .arg(&report_path)
        .output()
        .expect("run cni-conformance");
    let table = String::from_utf8_lossy(&out.stdout);
    println!("{table}");
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(&report_path).expect("the runner writes its JSON report"),
    )
    .expect("the report is JSON");
    let cells: Vec<&Value> = report["results"].as_array().into_iter().flatten().collect();
    let failed: Vec<String> = cells
        .iter()
        .filter(|c| c["outcome"] == "fail")
        .map(|c| format!("[{}] {}: {}", c["version"], c["case"], c["reason"]))
        .collect();
    assert!(
        out.status.success() && failed.is_empty(),
        "every MUST case passes (exit {}): {failed:#?}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let passed = cells
            .iter()
            .filter(|c| c["version"] == version && c["outcome"] == "pass")
            .count();
        assert!(
            passed > 0,
            "[{version}] no case passed: the runner ran nothing"
        );
    }
    assert_eq!(
        moto.requests(),
        before,
        "the runner's ADDs, DELs, STATUS and GC made EC2 requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_add_registers_both_ranges_once_then_costs_no_ec2_call() {
    let moto = Moto::start();
    let ec2 = moto.client().await;
    let cluster: Cluster = common::cluster(&ec2, "bin-dual").await;
    let node = cluster.run_instance(&ec2).await;
    let imds = ImdsFake::start(cluster.imds_values(&node));
    let data = tempfile::tempdir().expect("tempdir");
    let (v4, v6) = ("10.244.17.0/24", "fd00:10:244:17::/64");
    let conf = json!({"cniVersion": "1.1.0", "name": "k8s", "type": "vpc-route",
        "clusterName": "bin-dual", "podCIDRs": [v4, v6],
        "clusterCIDRs": ["10.244.0.0/16", "fd00:10:244::/56"], "routeQuota": 50,
        "region": "us-east-1", "ec2Endpoint": moto.endpoint, "imdsEndpoint": imds.endpoint(),
        "dataDir": data.path()});
    let out = run(&[], Some("ADD"), &conf, &[]);
    assert!(
        out.status.success(),
        "cold ADD: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    for table in cluster.tagged_tables() {
        for d in [v4, v6] {
            assert_eq!(
                common::route_to(&ec2, table, d).await,
                Some((None, Some(node.eni_id.clone()))),
                "{table} {d}"
            );
        }
    }
    let ec2_before = moto.requests();
    let out = run(&[], Some("ADD"), &conf, &[]);
    assert!(out.status.success());
    assert_eq!(
        moto.requests(),
        ec2_before,
        "a warm dual-stack ADD made EC2 requests"
    );
    let mut check = conf.clone();
    check["prevResult"] = json!({"cniVersion": "1.1.0"});
    for (verb, stdin) in [("CHECK", &check), ("STATUS", &conf)] {
        let out = run(&[], Some(verb), stdin, &[]);
        assert!(
            out.status.success(),
            "{verb}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // A config error is JSON on stdout with code 7 and a nonzero exit.
    let mut bad = conf.clone();
    bad["podCIDRs"] = json!([v4, "fd00:10:244:18::/64", "fd00:10:244:19::/64"]);
    let out = run(&[], Some("ADD"), &bad, &[]);
    assert!(!out.status.success());
    let err: Value = serde_json::from_slice(&out.stdout).expect("error JSON");
    assert_eq!(err["code"], 7, "{err}");
    assert!(
        err["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("two IPv6 ranges")
            || err["details"]
                .as_str()
                .unwrap_or_default()
                .contains("two IPv6 ranges"),
        "{err}"
    );
}
