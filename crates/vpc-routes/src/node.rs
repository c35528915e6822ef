//! Who this node is in EC2 (instance, region, primary ENI, VPC, subnet), and whether a known
//! identity agrees with the config's overrides. Finding it out (IMDSv2) is vpc-routes-aws' job.

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// The node as EC2 knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeIdentity {
    /// `i-...`
    pub instance_id: String,
    /// AWS region, such as `eu-west-1`.
    pub region: String,
    /// The primary ENI (device 0), the target of the node's route.
    pub eni_id: String,
    /// The node's VPC: where tagged tables are looked up.
    pub vpc_id: String,
    /// The primary ENI's subnet, when known (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<String>,
}

impl NodeIdentity {
    /// Whether this identity agrees with every override in `config` (a cached identity is
    /// only reused when it does).
    pub fn matches(&self, config: &Config) -> bool {
        fn agrees(over: &Option<String>, value: &str) -> bool {
            over.as_deref().is_none_or(|o| o == value)
        }
        agrees(&config.instance_id, &self.instance_id)
            && agrees(&config.region_override(), &self.region)
            && agrees(&config.eni_id, &self.eni_id)
            && agrees(&config.vpc_id, &self.vpc_id)
            && config
                .subnet_id
                .as_deref()
                .is_none_or(|s| self.subnet_id.as_deref() == Some(s))
    }
}
