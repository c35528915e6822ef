//! kubenet-bridge's configuration: kubenet's settings, with kubenet's names and defaults.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::Deserialize;

use crate::attach::{BridgeNetwork, DefaultRoute};
use crate::Error;
use node_ipam::Pool;

/// The plugin's own fields of a `kubenet-bridge` network configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubenetConfig {
    /// Node bridge (default `cbr0`).
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// The node's pod CIDR (required), as `{{.PodCIDR}}` renders it.
    #[serde(
        rename = "podCIDR",
        default,
        deserialize_with = "cni_spec::cidr::optional_ipv4"
    )]
    pub pod_cidr: Option<Ipv4Net>,
    /// Gateway on the bridge (default: first host address).
    pub gateway: Option<Ipv4Addr>,
    /// Masquerade traffic leaving `nonMasqueradeCIDR` (default true).
    #[serde(default = "yes")]
    pub ip_masq: bool,
    /// Destinations never masqueraded (kubenet's default 10.0.0.0/8).
    #[serde(
        rename = "nonMasqueradeCIDR",
        default = "default_non_masquerade",
        deserialize_with = "cni_spec::cidr::ipv4"
    )]
    pub non_masquerade_cidr: Ipv4Net,
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

fn yes() -> bool {
    true
}

/// Default IPAM state root, host-local's.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

impl KubenetConfig {
    /// Resolves the config for network `name`: checks it and fills in defaults.
    pub fn resolve(&self, name: &str) -> Result<BridgeNetwork, Error> {
        let pod_cidr = self.pod_cidr.ok_or_else(|| {
            Error::Config("podCIDR is required (the node's pod range, e.g. 10.244.1.0/24)".into())
        })?;
        validate_bridge_name(&self.bridge)?;
        let pool = Pool::new(pod_cidr, self.gateway)?;
        Ok(BridgeNetwork {
            name: name.to_string(),
            bridge: self.bridge.clone(),
            pool,
            mtu: self.mtu,
            hairpin: self.hairpin_mode,
            promisc: self.promisc_mode,
            masquerade_outside: self.ip_masq.then_some(self.non_masquerade_cidr),
            nft_table: nft_table_for(&self.bridge),
            default_route: self.default_route,
            data_dir: self
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        })
    }
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
        assert_eq!(c.non_masquerade_cidr.to_string(), "10.0.0.0/8");
        let n = c.resolve("net").unwrap();
        assert_eq!(n.pool.gateway().to_string(), "10.244.3.1");
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
        for field in ["podCIDR", "nonMasqueradeCIDR"] {
            for bad in ["100.96.300.0/24", "100.96.3.0/33", "100.96.3.0"] {
                let json = serde_json::json!({"podCIDR": "10.1.0.0/24", field: bad});
                let e = serde_json::from_value::<KubenetConfig>(json)
                    .expect_err(bad)
                    .to_string();
                assert!(
                    e.contains(&format!("{bad:?} is not an IPv4 CIDR")),
                    "{field}={bad}: {e}"
                );
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
    fn table_names_are_nft_safe() {
        assert_eq!(nft_table_for("br-pods.1"), "cni_suite_br_pods_1");
    }
}
