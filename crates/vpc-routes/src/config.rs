//! The plugin's configuration keys, parsed from its JSON config object and validated.

use std::path::PathBuf;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Default `dataDir`: node state lives next to the other CNI state on the host.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/vpc-route";
/// Default `deadlineSeconds`: the runtime must never hang on EC2.
pub const DEFAULT_DEADLINE_SECONDS: u64 = 20;
/// Default `stateMaxAgeSeconds`: a warm ADD trusts the cache this long, then rereads EC2.
pub const DEFAULT_STATE_MAX_AGE_SECONDS: u64 = 600;

/// The vpc-route configuration. Unknown keys (`type`, `name`, `prevResult`, ...) are
/// ignored, so the whole CNI plugin config object can be passed in.
///
/// Besides these keys the standard AWS environment applies: credentials through the default
/// chain (`AWS_ACCESS_KEY_ID`, profiles, web identity, ECS, IMDS), `AWS_REGION`,
/// `AWS_ENDPOINT_URL_EC2`, `AWS_EC2_METADATA_SERVICE_ENDPOINT`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    /// Cluster name in the route table tags `kubernetes.io/cluster/<name>` and
    /// `KubernetesCluster=<name>`.
    pub cluster_name: String,
    /// This node's pod CIDR, routed to the node's primary ENI.
    #[serde(rename = "podCIDR", deserialize_with = "cni_spec::cidr::ipv4")]
    pub pod_cidr: Ipv4Net,
    /// The cluster's pod range: the only routes this crate ever replaces or deletes lie in it.
    #[serde(rename = "clusterCIDR", deserialize_with = "cni_spec::cidr::ipv4")]
    pub cluster_cidr: Ipv4Net,
    /// Explicit route tables; when empty, every table of the node's VPC tagged for the cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route_table_ids: Vec<String>,
    /// AWS region; else `AWS_REGION`, `AWS_DEFAULT_REGION`, then IMDS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// EC2 endpoint URL override (tests, VPC endpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ec2_endpoint: Option<String>,
    /// IMDS endpoint URL override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imds_endpoint: Option<String>,
    /// Routes per table allowed by the account (quota L-93826ACB). When set, warn at 80 %
    /// and refuse at the quota without calling EC2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_quota: Option<u32>,
    /// Directory of the node state cache.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Bound on every EC2 operation sequence (ensure, check, deregister, gc), retries included.
    #[serde(default = "default_deadline")]
    pub deadline_seconds: u64,
    /// How long a registration cached in `dataDir` is trusted without asking EC2.
    #[serde(default = "default_state_max_age")]
    pub state_max_age_seconds: u64,
    /// Instance id override (else IMDS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Primary ENI override (else IMDS, through the instance's MAC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eni_id: Option<String>,
    /// VPC override (else IMDS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
    /// Subnet override (else IMDS); informational only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<String>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(DEFAULT_DATA_DIR)
}

fn default_deadline() -> u64 {
    DEFAULT_DEADLINE_SECONDS
}

fn default_state_max_age() -> u64 {
    DEFAULT_STATE_MAX_AGE_SECONDS
}

impl Config {
    /// Parse and validate from the plugin's JSON config object.
    pub fn from_value(value: serde_json::Value) -> Result<Self, Error> {
        let config: Config =
            serde_json::from_value(value).map_err(|e| Error::config("config", e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Parse and validate from JSON bytes (the plugin's stdin, a file).
    pub fn from_slice(bytes: &[u8]) -> Result<Self, Error> {
        let config: Config =
            serde_json::from_slice(bytes).map_err(|e| Error::config("config", e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Check the rules serde cannot express.
    pub fn validate(&self) -> Result<(), Error> {
        if self.cluster_name.is_empty() {
            return Err(Error::config("clusterName", "must not be empty"));
        }
        if self.pod_cidr != self.pod_cidr.trunc() {
            return Err(Error::config(
                "podCIDR",
                format!("{} has host bits set", self.pod_cidr),
            ));
        }
        // The replace and gc rules only ever act inside clusterCIDR; a pod CIDR outside it
        // could never be repaired, so refuse it up front.
        if !self.cluster_cidr.contains(&self.pod_cidr) {
            return Err(Error::config(
                "podCIDR",
                format!(
                    "{} is not inside clusterCIDR {}",
                    self.pod_cidr, self.cluster_cidr
                ),
            ));
        }
        if self.route_quota == Some(0) {
            return Err(Error::config("routeQuota", "must be at least 1"));
        }
        if self.deadline_seconds == 0 {
            return Err(Error::config("deadlineSeconds", "must be at least 1"));
        }
        if self.route_table_ids.iter().any(|t| !t.starts_with("rtb-")) {
            return Err(Error::config(
                "routeTableIds",
                format!("{:?}: ids start with rtb-", self.route_table_ids),
            ));
        }
        Ok(())
    }

    /// `deadlineSeconds` as a duration.
    pub fn deadline(&self) -> Duration {
        Duration::from_secs(self.deadline_seconds)
    }

    /// `stateMaxAgeSeconds` as a duration.
    pub fn state_max_age(&self) -> Duration {
        Duration::from_secs(self.state_max_age_seconds)
    }

    /// The region the node is in without asking IMDS: `region`, else the standard
    /// environment variables `AWS_REGION`, `AWS_DEFAULT_REGION`.
    pub fn region_override(&self) -> Option<String> {
        self.region.clone().or_else(|| {
            ["AWS_REGION", "AWS_DEFAULT_REGION"]
                .iter()
                .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_plugin_config_and_defaults() {
        let c = Config::from_value(json!({
            "cniVersion": "1.0.0", "type": "vpc-route", "name": "k8s",
            "clusterName": "c1", "podCIDR": "10.244.3.0/24", "clusterCIDR": "10.244.0.0/16",
            "routeTableIds": ["rtb-1"], "routeQuota": 50, "instanceId": "i-1"
        }))
        .expect("valid config");
        assert_eq!(c.pod_cidr.to_string(), "10.244.3.0/24");
        assert_eq!(c.route_table_ids, vec!["rtb-1".to_string()]);
        assert_eq!(c.route_quota, Some(50));
        assert_eq!(c.instance_id.as_deref(), Some("i-1"));
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.deadline(), Duration::from_secs(20));
        assert_eq!(c.state_max_age(), Duration::from_secs(600));
    }

    #[test]
    fn refuses_pod_cidr_outside_cluster_cidr() {
        let e = Config::from_value(json!({
            "clusterName": "c1", "podCIDR": "10.9.3.0/24", "clusterCIDR": "10.244.0.0/16"
        }))
        .expect_err("outside");
        assert!(
            matches!(
                e,
                Error::Config {
                    field: "podCIDR",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn refuses_missing_keys_and_host_bits() {
        assert!(Config::from_value(json!({"clusterName": "c1"})).is_err());
        let e = Config::from_value(json!({
            "clusterName": "c1", "podCIDR": "10.244.3.1/24", "clusterCIDR": "10.244.0.0/16"
        }))
        .expect_err("host bits");
        assert!(e.to_string().contains("host bits"), "{e}");
    }
}
