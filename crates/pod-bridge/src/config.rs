//! kubenet-bridge's configuration: kubenet's settings, with kubenet's names and defaults.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net};
use serde::Deserialize;

use crate::attach::{BridgeNetwork, DefaultRoute};
use crate::Error;
use node_ipam::{Pool, Ranges};

/// The plugin's own fields of a `kubenet-bridge` network configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubenetConfig {
    /// Node bridge (default `cbr0`).
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// The node's pod CIDR, IPv4 or IPv6, as `{{.PodCIDR}}` renders it: the one-range form
    /// of `podCIDRs` (one of the two is required).
    #[serde(
        rename = "podCIDR",
        default,
        deserialize_with = "cni_spec::cidr::optional_ip"
    )]
    pub pod_cidr: Option<IpNet>,
    /// The node's pod ranges, at most one IPv4 and one IPv6 (Kubernetes' `spec.podCIDRs`,
    /// containerd's `{{.PodCIDRRanges}}`); their order is the order of the pod's addresses.
    #[serde(
        rename = "podCIDRs",
        default,
        deserialize_with = "cni_spec::cidr::optional_ip_list"
    )]
    pub pod_cidrs: Option<Vec<IpNet>>,
    /// Gateway on the bridge in the range of its family (default: each range's first host
    /// address).
    pub gateway: Option<IpAddr>,
    /// Masquerade traffic leaving `nonMasqueradeCIDR` (default true).
    #[serde(default = "yes")]
    pub ip_masq: bool,
    /// IPv4 destinations never masqueraded (kubenet's default 10.0.0.0/8).
    #[serde(
        rename = "nonMasqueradeCIDR",
        default,
        deserialize_with = "cni_spec::cidr::optional_ipv4"
    )]
    pub non_masquerade_cidr: Option<Ipv4Net>,
    /// Destinations never masqueraded, per family: the IPv4 ones replace
    /// `nonMasqueradeCIDR`, the IPv6 ones the IPv6 default `fc00::/7` (unique local
    /// addresses, IPv6's analogue of kubenet's 10.0.0.0/8).
    #[serde(
        rename = "nonMasqueradeCIDRs",
        default,
        deserialize_with = "cni_spec::cidr::optional_ip_list"
    )]
    pub non_masquerade_cidrs: Option<Vec<IpNet>>,
    /// Pod MTU; 0 = the MTU of the default route's interface (1500 when there is none).
    #[serde(default)]
    pub mtu: u32,
    /// Hairpin mode on pod ports (default true).
    #[serde(default = "yes")]
    pub hairpin_mode: bool,
    /// Promiscuous bridge (default false).
    #[serde(default)]
    pub promisc_mode: bool,
    /// IPAM state root (default `/var/lib/cni/networks`).
    pub data_dir: Option<PathBuf>,
    /// Whether the pod's default route goes through this network (default `auto`: only when
    /// the pod has none yet, so a second network of a pod attaches beside the first).
    #[serde(default)]
    pub default_route: DefaultRoute,
}

fn default_bridge() -> String {
    "cbr0".into()
}

fn default_non_masquerade() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), 8).unwrap_or_default()
}

/// IPv6's default kept range: `fc00::/7`, the unique local addresses.
fn default_non_masquerade_v6() -> IpNet {
    IpNet::new(
        IpAddr::V6(std::net::Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0)),
        7,
    )
    .unwrap_or_default()
}

fn yes() -> bool {
    true
}

/// Default IPAM state root, host-local's.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

impl KubenetConfig {
    /// Resolves the config for network `name`: checks it and fills in defaults.
    pub fn resolve(&self, name: &str) -> Result<BridgeNetwork, Error> {
        validate_bridge_name(&self.bridge)?;
        let ranges = self.ranges()?;
        Ok(BridgeNetwork {
            name: name.to_string(),
            bridge: self.bridge.clone(),
            mtu: self.mtu,
            hairpin: self.hairpin_mode,
            promisc: self.promisc_mode,
            masquerade_outside: match self.ip_masq {
                true => Some(self.non_masquerade(&ranges)?),
                false => None,
            },
            ranges,
            nft_table: nft_table_for(&self.bridge),
            default_route: self.default_route,
            data_dir: self
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        })
    }
}

impl KubenetConfig {
    /// The pod ranges: `podCIDRs`, or `podCIDR` alone. Both may be given (a template that
    /// renders both `{{.PodCIDR}}` and `{{.PodCIDRRanges}}`) when `podCIDR` is one of
    /// `podCIDRs` (Kubernetes' `spec.podCIDR` is `spec.podCIDRs[0]`); then `podCIDRs` rules.
    fn ranges(&self) -> Result<Ranges, Error> {
        let cidrs: Vec<IpNet> = match (self.pod_cidr, &self.pod_cidrs) {
            (Some(one), Some(list)) if !list.iter().any(|c| c.trunc() == one.trunc()) => {
                return Err(Error::Config(format!(
                    "podCIDR {one} is not one of podCIDRs {}: give podCIDRs alone, or a                      podCIDR that is one of them",
                    list_text(list)
                )))
            }
            (_, Some(list)) if !list.is_empty() => list.clone(),
            (Some(one), _) => vec![one],
            (None, _) => {
                return Err(Error::Config(
                    "podCIDR or podCIDRs is required (the node's pod ranges, e.g.                      [\"10.244.1.0/24\", \"fd00:10:244:1::/64\"])"
                        .into(),
                ))
            }
        };
        let v6 = cidrs.iter().filter(|c| matches!(c, IpNet::V6(_))).count();
        if cidrs.len() > 2 || v6 > 1 || cidrs.len() - v6 > 1 {
            return Err(Error::Config(format!(
                "podCIDRs {}: at most one IPv4 and one IPv6 range",
                list_text(&cidrs)
            )));
        }
        if let Some(g) = self.gateway {
            if !cidrs.iter().any(|c| c.addr().is_ipv6() == g.is_ipv6()) {
                return Err(Error::Config(format!(
                    "gateway {g} has no pod range of its address family"
                )));
            }
        }
        let pools = cidrs
            .iter()
            .map(|c| {
                let gateway = self.gateway.filter(|g| g.is_ipv6() == c.addr().is_ipv6());
                Pool::new(*c, gateway)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Ranges::new(pools)?)
    }

    /// The destinations kept (not masqueraded), for the families of `ranges`.
    fn non_masquerade(&self, ranges: &Ranges) -> Result<Vec<IpNet>, Error> {
        let listed = self.non_masquerade_cidrs.clone().unwrap_or_default();
        let (v6_listed, v4_listed): (Vec<IpNet>, Vec<IpNet>) =
            listed.into_iter().partition(|c| c.addr().is_ipv6());
        let mut keep = Vec::new();
        if ranges.v4().is_some() {
            if v4_listed.is_empty() {
                let one = self
                    .non_masquerade_cidr
                    .unwrap_or_else(default_non_masquerade);
                keep.push(IpNet::V4(one));
            } else {
                if let Some(one) = self.non_masquerade_cidr {
                    if !v4_listed.contains(&IpNet::V4(one)) {
                        return Err(Error::Config(format!(
                            "nonMasqueradeCIDR {one} is not one of nonMasqueradeCIDRs {}",
                            list_text(&v4_listed)
                        )));
                    }
                }
                keep.extend(v4_listed);
            }
        }
        if ranges.v6().is_some() {
            if v6_listed.is_empty() {
                keep.push(default_non_masquerade_v6());
            } else {
                keep.extend(v6_listed);
            }
        }
        Ok(keep)
    }
}

fn list_text(list: &[IpNet]) -> String {
    format!(
        "[{}]",
        list.iter()
            .map(IpNet::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The masquerade table of a bridge: `cni_suite_<bridge>` with non-alphanumerics as `_`.
pub fn nft_table_for(bridge: &str) -> String {
    let clean: String = bridge
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("cni_suite_{clean}")
}

/// A bridge name must be a valid interface name.
pub fn validate_bridge_name(name: &str) -> Result<(), Error> {
    cni_spec::validate_ifname(name).map_err(|_| {
        Error::Config(format!(
            "bridge name {name:?} is not a valid interface name"
        ))
    })?;
    if name.is_empty() {
        return Err(Error::Config("bridge name is empty".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> KubenetConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_follow_kubenet() {
        let c = parse(r#"{"podCIDR":"10.244.3.0/24"}"#);
        assert_eq!(c.bridge, "cbr0");
        assert!(c.ip_masq && c.hairpin_mode && !c.promisc_mode);
        let n = c.resolve("net").unwrap();
        assert_eq!(
            n.masquerade_outside,
            Some(vec!["10.0.0.0/8".parse().unwrap()])
        );
        assert_eq!(n.ranges.pools().len(), 1);
        assert_eq!(n.ranges.primary().gateway().to_string(), "10.244.3.1");
        assert_eq!(n.data_dir, PathBuf::from("/var/lib/cni/networks"));
        assert_eq!(n.nft_table, "cni_suite_cbr0");
        assert!(n.masquerade_outside.is_some());
    }

    #[test]
    fn rejects_missing_or_unusable_settings() {
        assert!(parse("{}").resolve("n").is_err());
        assert!(parse(r#"{"podCIDR":"10.0.0.0/31"}"#).resolve("n").is_err());
        assert!(parse(r#"{"podCIDR":"10.0.0.0/24","bridge":"a/b"}"#)
            .resolve("n")
            .is_err());
        assert!(
            parse(r#"{"podCIDR":"10.0.0.0/24","bridge":"waytoolongbridge0"}"#)
                .resolve("n")
                .is_err()
        );
        assert!(parse(r#"{"podCIDR":"10.0.0.0/24","gateway":"10.0.1.1"}"#)
            .resolve("n")
            .is_err());
        assert!(serde_json::from_str::<KubenetConfig>(r#"{"podCIDR":"banana"}"#).is_err());
    }

    /// What `--check-config` (the installer) refuses in podCIDR and nonMasqueradeCIDR:
    /// malformed, out-of-range prefixes, and pod ranges with no address left to lease.
    #[test]
    fn refuses_malformed_out_of_range_and_too_small_cidrs() {
        for (field, what) in [
            ("podCIDR", "is not a CIDR"),
            ("nonMasqueradeCIDR", "is not an IPv4 CIDR"),
        ] {
            for bad in ["100.96.300.0/24", "100.96.3.0/33", "100.96.3.0"] {
                let json = serde_json::json!({"podCIDR": "10.1.0.0/24", field: bad});
                let e = serde_json::from_value::<KubenetConfig>(json)
                    .expect_err(bad)
                    .to_string();
                assert!(e.contains(&format!("{bad:?} {what}")), "{field}={bad}: {e}");
            }
        }
        for small in ["100.96.3.0/31", "100.96.3.1/32"] {
            let e = parse(&format!(r#"{{"podCIDR":"{small}"}}"#))
                .resolve("n")
                .expect_err(small)
                .to_string();
            assert!(e.contains("too small"), "{small}: {e}");
        }
        assert!(parse(r#"{"podCIDR":"100.96.3.0/30"}"#).resolve("n").is_ok());
    }

    #[test]
    fn default_route_is_auto_unless_told() {
        assert_eq!(
            parse(r#"{"podCIDR":"10.0.0.0/24"}"#).default_route,
            DefaultRoute::Auto
        );
        for (text, want) in [
            ("always", DefaultRoute::Always),
            ("never", DefaultRoute::Never),
            ("auto", DefaultRoute::Auto),
        ] {
            let c = parse(&format!(
                r#"{{"podCIDR":"10.0.0.0/24","defaultRoute":"{text}"}}"#
            ));
            assert_eq!(c.default_route, want);
        }
        assert!(serde_json::from_str::<KubenetConfig>(
            r#"{"podCIDR":"10.0.0.0/24","defaultRoute":"sometimes"}"#
        )
        .is_err());
    }

    #[test]
    fn pod_cidrs_give_one_range_per_family_in_order() {
        let c = parse(r#"{"podCIDRs":["fd00:10:244:1::/64","10.244.1.0/24"]}"#);
        let n = c.resolve("n").unwrap();
        let subnets: Vec<String> = n
            .ranges
            .pools()
            .iter()
            .map(|p| p.subnet().to_string())
            .collect();
        assert_eq!(subnets, ["fd00:10:244:1::/64", "10.244.1.0/24"]);
        assert_eq!(
            n.ranges.v6().unwrap().gateway().to_string(),
            "fd00:10:244:1::1"
        );
        assert_eq!(
            n.masquerade_outside,
            Some(vec![
                "10.0.0.0/8".parse().unwrap(),
                "fc00::/7".parse().unwrap()
            ])
        );
        // IPv6 only, in either form.
        for json in [
            r#"{"podCIDRs":["fd00:10:244:2::/64"]}"#,
            r#"{"podCIDR":"fd00:10:244:2::/64"}"#,
        ] {
            let n = parse(json).resolve("n").unwrap();
            assert!(
                n.ranges.v4().is_none() && n.ranges.primary().is_ipv6(),
                "{json}"
            );
            assert_eq!(
                n.masquerade_outside,
                Some(vec!["fc00::/7".parse().unwrap()])
            );
        }
        // Both forms when they agree (podCIDR is kubelet's podCIDRs[0]).
        let both =
            parse(r#"{"podCIDR":"10.244.1.0/24","podCIDRs":["10.244.1.0/24","fd00:1::/64"]}"#);
        assert_eq!(both.resolve("n").unwrap().ranges.pools().len(), 2);
    }

    #[test]
    fn pod_cidrs_that_cannot_be_served_are_invalid_config() {
        use cni_spec::ErrorCode;
        for json in [
            r#"{"podCIDRs":["10.244.1.0/24","10.244.2.0/24"]}"#,
            r#"{"podCIDRs":["fd00:1::/64","fd00:2::/64"]}"#,
            r#"{"podCIDRs":["10.244.1.0/24","fd00:1::/64","fd00:2::/64"]}"#,
            r#"{"podCIDRs":[]}"#,
            r#"{"podCIDR":"10.9.0.0/24","podCIDRs":["10.244.1.0/24","fd00:1::/64"]}"#,
            r#"{"podCIDRs":["10.244.1.0/24","fd00:1::/127"]}"#,
            r#"{"podCIDRs":["10.244.1.0/24"],"gateway":"fd00:1::1"}"#,
            r#"{"podCIDRs":["fd00:1::/64"],"gateway":"fd00:2::1"}"#,
            r#"{"podCIDR":"10.244.1.0/24","nonMasqueradeCIDR":"10.0.0.0/8","nonMasqueradeCIDRs":["10.244.0.0/16"]}"#,
        ] {
            let e = parse(json).resolve("n").expect_err(json);
            assert_eq!(
                e.code(),
                cni_spec::Code::InvalidNetworkConfig,
                "{json}: {e}"
            );
        }
        assert!(
            serde_json::from_str::<KubenetConfig>(r#"{"podCIDRs":["fd00::/64","x"]}"#).is_err()
        );
        assert!(serde_json::from_str::<KubenetConfig>(r#"{"podCIDRs":"fd00::/64"}"#).is_err());
    }

    #[test]
    fn non_masquerade_cidrs_replace_the_defaults_per_family() {
        let c = parse(
            r#"{"podCIDRs":["10.244.1.0/24","fd00:10:244:1::/64"],
                "nonMasqueradeCIDRs":["10.244.0.0/16","fd00:10:244::/56","fd00:10:96::/112"]}"#,
        );
        let keep: Vec<String> = c
            .resolve("n")
            .unwrap()
            .masquerade_outside
            .unwrap()
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            keep,
            ["10.244.0.0/16", "fd00:10:244::/56", "fd00:10:96::/112"]
        );
        let only_v6 = parse(
            r#"{"podCIDRs":["10.244.1.0/24","fd00:1::/64"],"nonMasqueradeCIDR":"10.1.0.0/16","nonMasqueradeCIDRs":["fd00::/8"]}"#,
        );
        let keep: Vec<String> = only_v6
            .resolve("n")
            .unwrap()
            .masquerade_outside
            .unwrap()
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(keep, ["10.1.0.0/16", "fd00::/8"]);
        let off = parse(r#"{"podCIDRs":["10.244.1.0/24","fd00:1::/64"],"ipMasq":false}"#);
        assert_eq!(off.resolve("n").unwrap().masquerade_outside, None);
    }

    #[test]
    fn table_names_are_nft_safe() {
        assert_eq!(nft_table_for("br-pods.1"), "cni_suite_br_pods_1");
    }
}
