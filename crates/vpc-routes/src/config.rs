//! The plugin's configuration keys, parsed from its JSON config object and validated.

use std::path::PathBuf;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;

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
/// The node's pod ranges come as `podCIDR` (one range, either family: the form of earlier
/// releases and of containerd's `{{.PodCIDR}}`) and/or `podCIDRs` (a list of at most one
/// IPv4 and one IPv6 range, Kubernetes' `spec.podCIDRs`, containerd's `{{.PodCIDRRanges}}`);
/// the cluster's as `clusterCIDR` and/or `clusterCIDRs` (kube-controller-manager's
/// `--cluster-cidr` is such a list). Each pod range needs a cluster range of its family.
///
/// Besides these keys the standard AWS environment applies: credentials through the default
/// chain (`AWS_ACCESS_KEY_ID`, profiles, web identity, ECS, IMDS), `AWS_REGION`,
/// `AWS_ENDPOINT_URL_EC2`, `AWS_EC2_METADATA_SERVICE_ENDPOINT`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawConfig")]
pub struct Config {
    /// Cluster name in the route table tags `kubernetes.io/cluster/<name>` and
    /// `KubernetesCluster=<name>`.
    pub cluster_name: String,
    /// This node's IPv4 pod range, routed to the node's primary ENI (`DestinationCidrBlock`).
    pub pod_cidr: Option<Ipv4Net>,
    /// This node's IPv6 pod range, routed to the same ENI (`DestinationIpv6CidrBlock`).
    pub pod_cidr_v6: Option<Ipv6Net>,
    /// The cluster's IPv4 pod range: the only IPv4 routes this crate ever replaces or deletes
    /// lie in it.
    pub cluster_cidr: Option<Ipv4Net>,
    /// The cluster's IPv6 pod range, the same for IPv6 routes.
    pub cluster_cidr_v6: Option<Ipv6Net>,
    /// Explicit route tables; when empty, every table of the node's VPC tagged for the cluster.
    pub route_table_ids: Vec<String>,
    /// AWS region; else `AWS_REGION`, `AWS_DEFAULT_REGION`, then IMDS.
    pub region: Option<String>,
    /// EC2 endpoint URL override (tests, VPC endpoints).
    pub ec2_endpoint: Option<String>,
    /// IMDS endpoint URL override.
    pub imds_endpoint: Option<String>,
    /// Routes per table allowed by the account (quota L-93826ACB), per address family: AWS
    /// counts IPv4 and IPv6 routes separately. When set, warn at 80 % and refuse at the
    /// quota without calling EC2.
    pub route_quota: Option<u32>,
    /// Directory of the node state cache.
    pub data_dir: PathBuf,
    /// Bound on every EC2 operation sequence (ensure, check, deregister, gc), retries included.
    pub deadline_seconds: u64,
    /// How long a registration cached in `dataDir` is trusted without asking EC2.
    pub state_max_age_seconds: u64,
    /// Instance id override (else IMDS).
    pub instance_id: Option<String>,
    /// Primary ENI override (else IMDS, through the instance's MAC).
    pub eni_id: Option<String>,
    /// VPC override (else IMDS).
    pub vpc_id: Option<String>,
    /// Subnet override (else IMDS); informational only.
    pub subnet_id: Option<String>,
}

/// The config as written: the ranges as text, sorted into families by [`Config::try_from`].
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    cluster_name: String,
    #[serde(default, rename = "podCIDR")]
    pod_cidr: Option<String>,
    #[serde(default, rename = "podCIDRs")]
    pod_cidrs: Option<Vec<String>>,
    #[serde(default, rename = "clusterCIDR")]
    cluster_cidr: Option<String>,
    #[serde(default, rename = "clusterCIDRs")]
    cluster_cidrs: Option<Vec<String>>,
    #[serde(default)]
    route_table_ids: Vec<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    ec2_endpoint: Option<String>,
    #[serde(default)]
    imds_endpoint: Option<String>,
    #[serde(default)]
    route_quota: Option<u32>,
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    #[serde(default = "default_deadline")]
    deadline_seconds: u64,
    #[serde(default = "default_state_max_age")]
    state_max_age_seconds: u64,
    #[serde(default)]
    instance_id: Option<String>,
    #[serde(default)]
    eni_id: Option<String>,
    #[serde(default)]
    vpc_id: Option<String>,
    #[serde(default)]
    subnet_id: Option<String>,
}

/// One range per family out of the one-range key and the list key: the list holds at most
/// one range of each family, and the one-range key, when both are given, must be one of the
/// list's (a template may render both from the same node).
fn families(
    one_key: &'static str,
    one: Option<String>,
    list_key: &'static str,
    list: Option<Vec<String>>,
) -> Result<(Option<Ipv4Net>, Option<Ipv6Net>), String> {
    let parse = |key: &str, text: &str| -> Result<IpNet, String> {
        text.parse::<IpNet>()
            .map_err(|_| format!("{key}: {text:?} is not a CIDR (a.b.c.d/n or x:x::/n)"))
    };
    let one = one.map(|t| parse(one_key, &t)).transpose()?;
    let mut v4 = None;
    let mut v6 = None;
    let list = list.unwrap_or_default();
    for text in &list {
        match parse(list_key, text)? {
            IpNet::V4(n) if v4.is_none() => v4 = Some(n),
            IpNet::V6(n) if v6.is_none() => v6 = Some(n),
            n => {
                return Err(format!(
                    "{list_key}: {list:?} holds two {} ranges; at most one IPv4 and one IPv6 \
                     range",
                    if matches!(n, IpNet::V4(_)) {
                        "IPv4"
                    } else {
                        "IPv6"
                    }
                ))
            }
        }
    }
    match one {
        Some(n) if list.is_empty() => match n {
            IpNet::V4(n) => v4 = Some(n),
            IpNet::V6(n) => v6 = Some(n),
        },
        Some(n) if v4.map(IpNet::V4) != Some(n) && v6.map(IpNet::V6) != Some(n) => {
            return Err(format!(
                "{one_key}: {n} is not one of {list_key} {list:?} (give one of the two keys, \
                 or the same range in both)"
            ))
        }
        _ => {}
    }
    Ok((v4, v6))
}

impl TryFrom<RawConfig> for Config {
    type Error = String;

    fn try_from(raw: RawConfig) -> Result<Self, String> {
        let (pod_cidr, pod_cidr_v6) = families("podCIDR", raw.pod_cidr, "podCIDRs", raw.pod_cidrs)?;
        if pod_cidr.is_none() && pod_cidr_v6.is_none() {
            return Err("missing field `podCIDR` (or `podCIDRs`)".into());
        }
        let (cluster_cidr, cluster_cidr_v6) = families(
            "clusterCIDR",
            raw.cluster_cidr,
            "clusterCIDRs",
            raw.cluster_cidrs,
        )?;
        if cluster_cidr.is_none() && cluster_cidr_v6.is_none() {
            return Err("missing field `clusterCIDR` (or `clusterCIDRs`)".into());
        }
        Ok(Config {
            cluster_name: raw.cluster_name,
            pod_cidr,
            pod_cidr_v6,
            cluster_cidr,
            cluster_cidr_v6,
            route_table_ids: raw.route_table_ids,
            region: raw.region,
            ec2_endpoint: raw.ec2_endpoint,
            imds_endpoint: raw.imds_endpoint,
            route_quota: raw.route_quota,
            data_dir: raw.data_dir,
            deadline_seconds: raw.deadline_seconds,
            state_max_age_seconds: raw.state_max_age_seconds,
            instance_id: raw.instance_id,
            eni_id: raw.eni_id,
            vpc_id: raw.vpc_id,
            subnet_id: raw.subnet_id,
        })
    }
}

/// `IPv4` or `IPv6`, as errors and logs name a family.
pub(crate) fn family_name(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "IPv4",
        IpNet::V6(_) => "IPv6",
    }
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
        for (pod, cluster) in [
            (
                self.pod_cidr.map(IpNet::V4),
                self.cluster_cidr.map(IpNet::V4),
            ),
            (
                self.pod_cidr_v6.map(IpNet::V6),
                self.cluster_cidr_v6.map(IpNet::V6),
            ),
        ] {
            let Some(pod) = pod else { continue };
            if pod != pod.trunc() {
                return Err(Error::config("podCIDR", format!("{pod} has host bits set")));
            }
            // The replace and gc rules only ever act inside clusterCIDR; a pod CIDR outside
            // it could never be repaired, so refuse it up front.
            match cluster {
                Some(cluster) if cluster.contains(&pod) => {}
                Some(cluster) => {
                    return Err(Error::config(
                        "podCIDR",
                        format!("{pod} is not inside clusterCIDR {cluster}"),
                    ))
                }
                None => {
                    return Err(Error::config(
                        "clusterCIDRs",
                        format!("no {} cluster range for podCIDR {pod}", family_name(&pod)),
                    ))
                }
            }
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

    /// The node's pod ranges, IPv4 first: one route per range in every table.
    pub fn pod_cidrs(&self) -> Vec<IpNet> {
        self.pod_cidr
            .map(IpNet::V4)
            .into_iter()
            .chain(self.pod_cidr_v6.map(IpNet::V6))
            .collect()
    }

    /// Whether `destination` lies inside the cluster range of its family: the only routes
    /// ever replaced or deleted.
    pub fn in_cluster(&self, destination: &IpNet) -> bool {
        match destination {
            IpNet::V4(d) => self.cluster_cidr.is_some_and(|c| c.contains(d)),
            IpNet::V6(d) => self.cluster_cidr_v6.is_some_and(|c| c.contains(d)),
        }
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
        assert_eq!(
            c.pod_cidr.map(|n| n.to_string()).as_deref(),
            Some("10.244.3.0/24")
        );
        assert_eq!(c.pod_cidr_v6, None);
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

    #[test]
    fn pod_cidrs_list_gives_one_range_per_family_and_pod_cidr_stays_accepted() {
        let c = Config::from_value(json!({
            "clusterName": "c1", "podCIDRs": ["10.244.3.0/24", "fd00:10:244:3::/64"],
            "clusterCIDRs": ["10.244.0.0/16", "fd00:10:244::/56"]
        }))
        .expect("dual-stack");
        assert_eq!(
            c.pod_cidrs()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["10.244.3.0/24", "fd00:10:244:3::/64"]
        );
        assert!(c.in_cluster(&"fd00:10:244:9::/64".parse().expect("cidr")));
        assert!(!c.in_cluster(&"fd00:99::/64".parse().expect("cidr")));
        // The same range in both keys (a template rendering both) is fine.
        let both = Config::from_value(json!({
            "clusterName": "c1", "podCIDR": "10.244.3.0/24",
            "podCIDRs": ["10.244.3.0/24", "fd00:10:244:3::/64"],
            "clusterCIDR": "10.244.0.0/16", "clusterCIDRs": ["10.244.0.0/16", "fd00:10:244::/56"]
        }))
        .expect("both keys");
        assert_eq!(both, c);
        // IPv6 only, through the one-range keys.
        let v6 = Config::from_value(json!({
            "clusterName": "c1", "podCIDR": "fd00:10:244:3::/64", "clusterCIDR": "fd00:10:244::/56"
        }))
        .expect("IPv6 only");
        assert_eq!(v6.pod_cidr, None);
        assert_eq!(v6.pod_cidrs().len(), 1);
    }

    #[test]
    fn refuses_two_ranges_of_a_family_a_disagreeing_pod_cidr_and_a_family_without_cluster_range() {
        for (config, needle) in [
            (
                json!({"clusterName": "c1", "podCIDRs": ["10.244.3.0/24", "10.244.4.0/24"],
                       "clusterCIDR": "10.244.0.0/16"}),
                "two IPv4 ranges",
            ),
            (
                json!({"clusterName": "c1", "podCIDR": "10.244.5.0/24",
                       "podCIDRs": ["10.244.3.0/24"], "clusterCIDR": "10.244.0.0/16"}),
                "is not one of podCIDRs",
            ),
            (
                json!({"clusterName": "c1", "podCIDRs": ["10.244.3.0/24", "fd00:10:244:3::/64"],
                       "clusterCIDR": "10.244.0.0/16"}),
                "no IPv6 cluster range",
            ),
            (
                json!({"clusterName": "c1", "podCIDRs": ["fd00:10:244:3::1/64"],
                       "clusterCIDRs": ["fd00:10:244::/56"]}),
                "host bits",
            ),
            (
                json!({"clusterName": "c1", "podCIDRs": ["fd00:99:3::/64"],
                       "clusterCIDRs": ["fd00:10:244::/56"]}),
                "not inside clusterCIDR",
            ),
            (
                json!({"clusterName": "c1", "podCIDRs": [], "clusterCIDR": "10.244.0.0/16"}),
                "missing field `podCIDR`",
            ),
            (
                json!({"clusterName": "c1", "podCIDRs": ["nonsense"], "clusterCIDR": "10.244.0.0/16"}),
                "\"nonsense\" is not a CIDR",
            ),
        ] {
            let e = Config::from_value(config.clone()).expect_err("refused");
            assert!(e.to_string().contains(needle), "{config}: {e}");
        }
    }

    #[test]
    fn the_dual_stack_example_renders_to_a_valid_config() {
        // packaging/examples' template as containerd renders it for a node with both ranges.
        let template = include_str!(
            "../../../packaging/examples/kubenet-vpc-route-dual-stack.conflist.template"
        );
        let rendered = template.replace(
            r#"[{{range $i, $r := .PodCIDRRanges}}{{if $i}}, {{end}}"{{$r}}"{{end}}]"#,
            r#"["100.96.3.0/24", "fd00:10:96:3::/64"]"#,
        );
        let list: serde_json::Value = serde_json::from_str(&rendered).expect("JSON");
        let c = Config::from_value(list["plugins"][1].clone()).expect("valid");
        assert_eq!(c.pod_cidrs().len(), 2);
        assert!(c.in_cluster(&"fd00:10:96:3::/64".parse().expect("cidr")));
    }
}
