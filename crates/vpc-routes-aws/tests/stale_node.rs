//! vpc-route's ADD and CHECK path (`vpc_routes_aws::ensure`, `check`) with a node state that
//! names ids EC2 does not know: moto for EC2, the IMDSv2 fake for the identity, the standard
//! credential chain (environment).
//!
//! A test binary of its own with a single test: it sets process environment variables, which
//! must not race with other tests' threads.

mod common;

use std::time::Instant;

use common::{ImdsFake, Moto};
use serde_json::json;
use vpc_routes::{Config, ErrorKind, NodeState, STATE_FILE};

const POD_CIDR: &str = "10.244.13.0/24";

#[test]
fn a_node_state_naming_ids_ec2_does_not_know_is_resolved_again_within_the_add() {
    // Before any thread exists: the credential chain reads the environment.
    let rt = common::credential_env_and_runtime();
    rt.block_on(async {
        let moto = Moto::start();
        let sdk = moto.client().await;
        let cluster = common::cluster(&sdk, "stale-node").await;
        let node = cluster.run_instance(&sdk).await;
        let imds = ImdsFake::start(cluster.imds_values(&node));
        let data = tempfile::tempdir().expect("tempdir");
        let plugin_config = json!({
            "type": "vpc-route", "clusterName": cluster.name, "podCIDR": POD_CIDR,
            "clusterCIDR": "10.244.0.0/16", "ec2Endpoint": moto.endpoint,
            "imdsEndpoint": imds.endpoint(), "dataDir": data.path(), "region": "us-east-1"
        });
        let config = Config::from_value(plugin_config.clone()).expect("config");
        let plan = vpc_routes_aws::ensure(config.clone())
            .await
            .expect("first ADD");
        assert!(!plan.cached, "{plan}");

        // The state file as another instance of this boot left it: its instance and ENI,
        // which EC2 does not know, verified long ago (so the ADD asks EC2: a fresh state is
        // trusted unasked).
        let path = data.path().join(STATE_FILE);
        let mut state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("node.json")).expect("JSON");
        assert_eq!(state["node"]["eniId"], json!(node.eni_id), "{state:#}");
        state["node"]["instanceId"] = json!("i-0badc0ffee0ddf00d");
        state["node"]["eniId"] = json!("eni-0badc0ffee0ddf00d");
        state["verifiedAt"] = json!(0);
        std::fs::write(&path, serde_json::to_vec(&state).expect("encode")).expect("write");

        let (moto_before, imds_before) = (moto.requests(), imds.requests());
        let started = Instant::now();
        let plan = vpc_routes_aws::ensure(config.clone())
            .await
            .expect("ADD with a stale node state repairs it");
        assert!(!plan.cached, "{plan}");
        assert!(
            started.elapsed() < config.deadline(),
            "the repair took {:?}",
            started.elapsed()
        );
        let rewritten: NodeState =
            serde_json::from_slice(&std::fs::read(&path).expect("node.json")).expect("state");
        assert_eq!(rewritten.node.instance_id, node.instance_id);
        assert_eq!(rewritten.node.eni_id, node.eni_id);
        assert!(rewritten.is_fresh_for(&config), "{rewritten:?}");
        // EC2: the source/dest check read that answered NotFound, then the same read for the
        // right ENI and one DescribeRouteTables (the routes are already on it).
        assert_eq!(
            moto.requests() - moto_before,
            3,
            "EC2 requests of the repair"
        );
        // IMDS once: token PUT + instance-id, mac, interface-id, vpc-id, subnet-id.
        assert_eq!(
            imds.requests() - imds_before,
            6,
            "IMDS requests of the repair"
        );
        for table in cluster.tagged_tables() {
            assert_eq!(
                common::route_to(&sdk, table, POD_CIDR).await,
                Some((None, Some(node.eni_id.clone()))),
                "{table}"
            );
        }

        // The next ADD is warm again: no EC2 or IMDS request.
        let (moto_before, imds_before) = (moto.requests(), imds.requests());
        let plan = vpc_routes_aws::ensure(config.clone())
            .await
            .expect("warm ADD");
        assert!(plan.cached, "{plan}");
        assert_eq!(moto.requests(), moto_before, "warm ADD made EC2 requests");
        assert_eq!(imds.requests(), imds_before, "warm ADD made IMDS requests");
        vpc_routes_aws::check(config.clone()).await.expect("CHECK");

        // CHECK repairs the same way.
        state["verifiedAt"] = json!(0);
        std::fs::write(&path, serde_json::to_vec(&state).expect("encode")).expect("write");
        vpc_routes_aws::check(config.clone())
            .await
            .expect("CHECK with a stale node state");
        let rewritten: NodeState =
            serde_json::from_slice(&std::fs::read(&path).expect("node.json")).expect("state");
        assert_eq!(rewritten.node.eni_id, node.eni_id);

        // A NotFound for a node IMDS (here the config's override) just named is returned,
        // once: asking IMDS again would only double the failure's cost.
        let mut wrong = plugin_config.clone();
        wrong["eniId"] = json!("eni-0badc0ffee0ddf00d");
        wrong["dataDir"] = json!(data.path().join("other"));
        let moto_before = moto.requests();
        let e = vpc_routes_aws::ensure(Config::from_value(wrong).expect("config"))
            .await
            .expect_err("an ENI EC2 does not know");
        assert!(e.is_unknown_node_id(), "{e}");
        assert_eq!(e.kind(), ErrorKind::Api, "{e}");
        assert_eq!(
            moto.requests() - moto_before,
            1,
            "one EC2 request, no retry"
        );
    });
}
