//! The `vpc-route` binary as a runtime runs it, against moto's EC2 and an IMDSv2 fake (a fake:
//! moto's own metadata stub lacks the token TTL header aws-config requires): a cold ADD
//! registers the pod CIDR in every tagged table and passes prevResult on unchanged; a warm ADD
//! makes no EC2 or IMDS request at all (counted from moto's request log); CHECK, STATUS, DEL
//! and the node commands.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use common::{Cluster, ImdsFake, Moto};
use serde_json::{json, Value};

fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("profile dir");
    let bin = dir.join("vpc-route");
    assert!(
        bin.exists(),
        "{} missing: cargo build --release -p vpc-route",
        bin.display()
    );
    bin
}

fn run(args: &[&str], verb: Option<&str>, stdin: &Value, env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(verb) = verb {
        cmd.env("CNI_COMMAND", verb)
            .env("CNI_CONTAINERID", "pod-1")
            .env("CNI_NETNS", "/proc/self/ns/net")
            .env("CNI_IFNAME", "eth0");
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn vpc-route");
    let mut pipe = child.stdin.take().expect("stdin");
    // The node commands do not read stdin and may exit before it is written.
    let written = pipe.write_all(stdin.to_string().as_bytes());
    if verb.is_some() {
        written.expect("write stdin");
    }
    drop(pipe);
    child.wait_with_output().expect("wait vpc-route")
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
    assert!(
        out.status.success(),
        "status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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
