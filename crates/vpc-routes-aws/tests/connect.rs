//! The plugin binary's path, `vpc_routes_aws::connect`, end to end: IMDSv2 fake for the identity and
//! region, the standard credential chain (environment), moto for EC2.
//!
//! A test binary of its own with a single test: it sets process environment variables, which
//! must not race with other tests' threads.

mod common;

use common::{ImdsFake, Moto};
use serde_json::json;
use vpc_routes::Config;

const POD_CIDR: &str = "10.244.12.0/24";

#[test]
fn connect_resolves_identity_once_and_warm_add_skips_imds_and_ec2() {
    // Before any thread exists: the credential chain reads the environment.
    let rt = common::credential_env_and_runtime();
    rt.block_on(async {
        let moto = Moto::start();
        let sdk = moto.client().await;
        let cluster = common::cluster(&sdk, "connect").await;
        let node = cluster.run_instance(&sdk).await;
        let imds = ImdsFake::start(cluster.imds_values(&node));
        let data = tempfile::tempdir().expect("tempdir");
        // No region, no ids: everything from IMDS.
        let config = Config::from_value(json!({
            "type": "vpc-route", "clusterName": cluster.name, "podCIDR": POD_CIDR,
            "clusterCIDR": "10.244.0.0/16", "ec2Endpoint": moto.endpoint,
            "imdsEndpoint": imds.endpoint(), "dataDir": data.path()
        }))
        .expect("config");

        let r = vpc_routes_aws::connect(config.clone())
            .await
            .expect("connect");
        assert_eq!(r.node().instance_id, node.instance_id);
        assert_eq!(r.node().region, "us-east-1");
        let plan = r.ensure().await.expect("ensure");
        assert!(!plan.cached, "{plan}");
        for table in cluster.tagged_tables() {
            assert_eq!(
                common::route_to(&sdk, table, POD_CIDR).await,
                Some((None, Some(node.eni_id.clone()))),
                "{table}"
            );
        }
        let imds_requests = imds.requests();
        assert!(imds_requests >= 6, "{imds_requests}");

        // The next ADD: identity and registration both from the node state.
        let r = vpc_routes_aws::connect(config.clone())
            .await
            .expect("connect");
        let plan = r.ensure().await.expect("warm ensure");
        assert!(plan.cached);
        assert_eq!(imds.requests(), imds_requests, "warm ADD asked IMDS");

        let status = vpc_routes::status(&config).expect("status");
        assert!(status.registered, "{status}");
        r.check().await.expect("check");
    });
}
