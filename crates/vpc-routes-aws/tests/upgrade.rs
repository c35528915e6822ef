//! Rolling upgrade of vpc-route: the node state (node.json) written by the previous release's
//! binary (the commit in `conformance/previous-release`, built by
//! `conformance/scripts/build-previous-release.sh`) is read by this one, whose warm ADD then
//! makes no EC2 or IMDS request, and whose CHECK, STATUS, node `status` and DEL work on it.
//! Against moto's EC2 and the IMDSv2 fake of `common` (a fake: moto's metadata stub lacks the
//! token TTL header aws-config requires).

mod common;

use common::{ImdsFake, Moto};
use serde_json::{json, Value};

fn ok(out: &std::process::Output, what: &str) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{what}: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_state_of_the_previous_release_is_read_by_the_new_binary() {
    let old = cni_testkit::plugin::previous_release_binary("vpc-route");
    let new = common::vpc_route_binary();
    let moto = Moto::start();
    let ec2 = moto.client().await;
    let cluster = common::cluster(&ec2, "upgrade").await;
    let node = cluster.run_instance(&ec2).await;
    let imds = ImdsFake::start(cluster.imds_values(&node));
    let data = tempfile::tempdir().expect("tempdir");
    let prev = json!({"cniVersion": "1.0.0",
        "interfaces": [{"name": "cbr0", "mac": "02:00:00:00:00:01"},
                       {"name": "eth0", "mac": "0a:58:0a:f4:08:02", "sandbox": "/var/run/netns/p"}],
        "ips": [{"address": "10.244.8.2/24", "gateway": "10.244.8.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.8.1"}]});
    let plugin = json!({"type": "vpc-route", "clusterName": "upgrade", "podCIDR": "10.244.8.0/24",
        "clusterCIDR": "10.244.0.0/16", "region": "us-east-1", "ec2Endpoint": moto.endpoint,
        "imdsEndpoint": imds.endpoint(), "dataDir": data.path()});
    let mut conf = plugin.clone();
    conf["cniVersion"] = json!("1.0.0");
    conf["name"] = json!("k8s");
    conf["prevResult"] = prev.clone();

    // The previous release registers the node and writes its state.
    let run_old = |verb| common::run_vpc_route(&old, &[], Some(verb), &conf, &[]);
    ok(&run_old("ADD"), "previous release: cold ADD");
    let state: Vec<_> = std::fs::read_dir(data.path())
        .expect("dataDir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !state.is_empty(),
        "the previous release wrote no node state in its dataDir"
    );
    for table in cluster.tagged_tables() {
        let routes = common::routes(&ec2, table).await;
        assert!(
            routes
                .iter()
                .any(|(dst, _, eni)| dst.to_string() == "10.244.8.0/24"
                    && eni.as_deref() == Some(node.eni_id.as_str())),
            "previous release did not register in {table}: {routes:?}"
        );
    }

    // The node's binary is replaced: the new one trusts the previous release's node state.
    let (ec2_before, imds_before) = (moto.requests(), imds.requests());
    let run_new = |verb| common::run_vpc_route(&new, &[], Some(verb), &conf, &[]);
    let printed: Value =
        serde_json::from_slice(&ok(&run_new("ADD"), "new release: warm ADD")).expect("JSON");
    assert_eq!(printed, prev, "ADD must pass prevResult on unchanged");
    assert_eq!(
        (moto.requests(), imds.requests()),
        (ec2_before, imds_before),
        "the new release's warm ADD on the previous release's node state must make no EC2 or \
         IMDS request"
    );
    ok(&run_new("CHECK"), "new release: CHECK");
    let mut status = conf.clone();
    status["cniVersion"] = json!("1.1.0");
    status.as_object_mut().expect("object").remove("prevResult");
    ok(
        &common::run_vpc_route(&new, &[], Some("STATUS"), &status, &[]),
        "new release: STATUS",
    );
    let conflist = data.path().join("net.conflist");
    std::fs::write(
        &conflist,
        json!({"cniVersion": "1.0.0", "name": "k8s",
        "plugins": [{"type": "kubenet-bridge", "podCIDR": "10.244.8.0/24"}, plugin]})
        .to_string(),
    )
    .expect("write conflist");
    let path = conflist.to_string_lossy().into_owned();
    let out = common::run_vpc_route(&new, &["status", "--config", &path], None, &json!({}), &[]);
    let text = String::from_utf8_lossy(&ok(&out, "new release: node status")).into_owned();
    assert!(
        text.starts_with(&format!(
            "{} ({}, {}): registered",
            node.instance_id, node.eni_id, cluster.vpc_id
        )),
        "node status must report the previous release's registration: {text}"
    );
    let out = run_new("DEL");
    ok(&out, "new release: DEL");
    assert!(out.stdout.is_empty(), "DEL prints nothing");
}
