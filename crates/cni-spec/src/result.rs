//! The ADD result, held in its newest shape and written or read in any supported version.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::version::Version;

/// The outcome of an ADD: interfaces, addresses, routes and DNS, in the 1.1.0 shape.
///
/// Older versions are produced by [`CniResult::to_json`], which drops what a version lacks
/// and adds `ips[].version` before 1.0.0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    /// Interfaces created or used, indexed by `ips[].interface`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Addresses assigned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    /// Routes installed in the sandbox.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// DNS settings for the sandbox.
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

/// One interface in a result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// Hardware address, `aa:bb:cc:dd:ee:ff`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for an interface inside the sandbox; empty on the host.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    /// Socket path for userspace interfaces (1.1.0).
    #[serde(
        default,
        rename = "socketPath",
        skip_serializing_if = "String::is_empty"
    )]
    pub socket_path: String,
    /// PCI id of a device interface (1.1.0).
    #[serde(default, rename = "pciID", skip_serializing_if = "String::is_empty")]
    pub pci_id: String,
}

/// One address in a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with its prefix length, e.g. `10.244.1.5/24`.
    pub address: IpNet,
    /// Default gateway for this address's subnet, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces` of the interface holding the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// One route in a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination network.
    pub dst: IpNet,
    /// Next hop; absent means the default gateway of the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// Route MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Advertised MSS (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    /// Route priority (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// Routing table (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// Route scope (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

impl Route {
    /// A route with only a destination and a next hop.
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Self {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

/// DNS settings in a result or config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers, in order of preference.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// True when nothing is set, so the key is left out of results.
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_empty()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// A result that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    /// The value is not a 0.3.0 or later result (e.g. the 0.2.0 `ip4`/`ip6` shape).
    #[error("result is not in the 0.3.0+ shape: {0}")]
    Shape(String),
    /// A field did not decode.
    #[error("result does not decode: {0}")]
    Decode(#[from] serde_json::Error),
    /// `ips[].interface` points past `interfaces`.
    #[error("ips[{ip}].interface = {index} but there are {count} interfaces")]
    InterfaceIndex {
        /// Position in `ips`.
        ip: usize,
        /// The bad index.
        index: usize,
        /// Number of interfaces.
        count: usize,
    },
}

impl CniResult {
    /// Reads a result written in any supported version (a prevResult, a cached result).
    ///
    /// `ips[].version` is accepted and checked against the address family, not required.
    pub fn from_json(value: &Value) -> Result<Self, ResultError> {
        let obj = value
            .as_object()
            .ok_or_else(|| ResultError::Shape("not a JSON object".into()))?;
        if obj.contains_key("ip4") || obj.contains_key("ip6") {
            return Err(ResultError::Shape(
                "has ip4/ip6 keys of the 0.1.0/0.2.0 result".into(),
            ));
        }
        if let Some(ips) = obj.get("ips").and_then(Value::as_array) {
            for (i, ip) in ips.iter().enumerate() {
                let (Some(v), Some(addr)) = (
                    ip.get("version").and_then(Value::as_str),
                    ip.get("address").and_then(Value::as_str),
                ) else {
                    continue;
                };
                let is_v4 = !addr.contains(':');
                if (v == "4") != is_v4 || !(v == "4" || v == "6") {
                    return Err(ResultError::Shape(format!(
                        "ips[{i}].version {v:?} does not match address {addr}"
                    )));
                }
            }
        }
        let result: CniResult = serde_json::from_value(value.clone())?;
        result.validate()?;
        Ok(result)
    }

    /// Checks that every `ips[].interface` indexes into `interfaces`.
    pub fn validate(&self) -> Result<(), ResultError> {
        for (i, ip) in self.ips.iter().enumerate() {
            if let Some(index) = ip.interface {
                if index >= self.interfaces.len() {
                    return Err(ResultError::InterfaceIndex {
                        ip: i,
                        index,
                        count: self.interfaces.len(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The result a chained plugin prints: `prev` (the prevResult it was given) with `own`
    /// (what this plugin set up) merged in, as the spec asks ("must output it as their result,
    /// with any possible modifications made by that plugin included").
    ///
    /// `own`'s interfaces are appended after `prev`'s, so the `interface` index of each of
    /// `own`'s addresses is shifted by the number of interfaces `prev` has; `prev`'s indexes
    /// stay as they are. Addresses and routes are appended; DNS name servers, search domains
    /// and options are appended where not already present, and `own`'s domain replaces
    /// `prev`'s only when it sets one.
    pub fn merged_onto(&self, prev: &CniResult) -> CniResult {
        let shift = prev.interfaces.len();
        let mut out = prev.clone();
        out.interfaces.extend(self.interfaces.iter().cloned());
        out.ips.extend(self.ips.iter().map(|ip| IpConfig {
            interface: ip.interface.map(|i| i + shift),
            ..ip.clone()
        }));
        out.routes.extend(self.routes.iter().cloned());
        append_missing(&mut out.dns.nameservers, &self.dns.nameservers);
        append_missing(&mut out.dns.search, &self.dns.search);
        append_missing(&mut out.dns.options, &self.dns.options);
        if !self.dns.domain.is_empty() {
            out.dns.domain.clone_from(&self.dns.domain);
        }
        out
    }

    /// Writes the result in `version`'s shape, with `cniVersion` first.
    pub fn to_json(&self, version: Version) -> Value {
        let mut out = Map::new();
        out.insert("cniVersion".into(), Value::from(version.as_str()));
        let newest = version >= Version::V1_1_0;
        if !self.interfaces.is_empty() {
            let list = self
                .interfaces
                .iter()
                .map(|i| {
                    let mut i = i.clone();
                    if !newest {
                        i.mtu = None;
                        i.socket_path.clear();
                        i.pci_id.clear();
                    }
                    to_value(&i)
                })
                .collect();
            out.insert("interfaces".into(), Value::Array(list));
        }
        if !self.ips.is_empty() {
            let list = self
                .ips
                .iter()
                .map(|ip| {
                    let mut v = to_value(ip);
                    if version.ips_carry_version() {
                        let family = if ip.address.addr().is_ipv4() {
                            "4"
                        } else {
                            "6"
                        };
                        if let Value::Object(m) = &mut v {
                            m.insert("version".into(), Value::from(family));
                        }
                    }
                    v
                })
                .collect();
            out.insert("ips".into(), Value::Array(list));
        }
        if !self.routes.is_empty() {
            let list = self
                .routes
                .iter()
                .map(|r| {
                    if newest {
                        to_value(r)
                    } else {
                        to_value(&Route::new(r.dst, r.gw))
                    }
                })
                .collect();
            out.insert("routes".into(), Value::Array(list));
        }
        if !self.dns.is_empty() {
            out.insert("dns".into(), to_value(&self.dns));
        }
        Value::Object(out)
    }
}

/// Appends each of `more` that `list` does not hold yet, keeping `list`'s order first.
fn append_missing(list: &mut Vec<String>, more: &[String]) {
    for item in more {
        if !list.contains(item) {
            list.push(item.clone());
        }
    }
}

/// Serializes one of this module's plain data types, which cannot fail.
fn to_value<T: Serialize>(item: &T) -> Value {
    serde_json::to_value(item).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "cbr0".into(),
                    mac: "02:00:00:00:00:01".into(),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: "0a:58:0a:f4:01:05".into(),
                    mtu: Some(1500),
                    sandbox: "/var/run/netns/p".into(),
                    ..Default::default()
                },
            ],
            ips: vec![IpConfig {
                address: "10.244.1.5/24".parse().unwrap(),
                gateway: Some("10.244.1.1".parse().unwrap()),
                interface: Some(1),
            }],
            routes: vec![Route {
                mtu: Some(1400),
                ..Route::new("0.0.0.0/0".parse().unwrap(), None)
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn old_versions_carry_ip_version_and_lack_new_fields() {
        let v = sample().to_json(Version::V0_3_1);
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][0]["address"], "10.244.1.5/24");
        assert!(v["interfaces"][1].get("mtu").is_none());
        assert!(v["routes"][0].get("mtu").is_none());
        assert!(v.get("dns").is_none());
    }

    #[test]
    fn newest_version_keeps_everything_and_no_ip_version() {
        let v = sample().to_json(Version::V1_1_0);
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(v["interfaces"][1]["mtu"], 1500);
        assert_eq!(v["routes"][0]["mtu"], 1400);
        let v = sample().to_json(Version::V1_0_0);
        assert!(v["ips"][0].get("version").is_none());
        assert!(v["interfaces"][1].get("mtu").is_none());
    }

    #[test]
    fn round_trips_through_every_version() {
        for version in crate::SUPPORTED {
            let back = CniResult::from_json(&sample().to_json(version)).unwrap();
            assert_eq!(back.ips, sample().ips, "{version}");
            assert_eq!(back.interfaces.len(), 2);
        }
    }

    /// A prevResult as an earlier plugin of a chain would leave it: a host interface and a
    /// sandbox interface, an address on each, a route and DNS.
    fn earlier_plugin() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "dummy-host".into(),
                    mac: "02:aa:00:00:00:01".into(),
                    ..Default::default()
                },
                Interface {
                    name: "net1".into(),
                    mac: "02:aa:00:00:00:02".into(),
                    sandbox: "/var/run/netns/p".into(),
                    ..Default::default()
                },
            ],
            ips: vec![
                IpConfig {
                    address: "192.168.50.2/24".parse().unwrap(),
                    gateway: None,
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd00:50::2/64".parse().unwrap(),
                    gateway: Some("fd00:50::1".parse().unwrap()),
                    interface: Some(0),
                },
                IpConfig {
                    address: "192.168.60.2/24".parse().unwrap(),
                    gateway: None,
                    interface: None,
                },
            ],
            routes: vec![Route::new("192.168.0.0/16".parse().unwrap(), None)],
            dns: Dns {
                nameservers: vec!["192.168.50.53".into()],
                domain: "earlier.local".into(),
                search: vec!["earlier.local".into()],
                options: vec!["ndots:2".into()],
            },
        }
    }

    #[test]
    fn merge_appends_own_entries_and_shifts_own_interface_indexes() {
        let prev = earlier_plugin();
        let mut own = sample();
        own.dns = Dns {
            nameservers: vec!["10.96.0.10".into(), "192.168.50.53".into()],
            domain: String::new(),
            search: vec!["cluster.local".into()],
            options: vec!["ndots:2".into(), "edns0".into()],
        };
        let merged = own.merged_onto(&prev);
        assert_eq!(merged.interfaces.len(), 4);
        assert_eq!(merged.interfaces[..2], prev.interfaces[..]);
        assert_eq!(merged.interfaces[2..], own.interfaces[..]);
        // The earlier plugin's addresses keep their indexes, ours point past its interfaces.
        let indexes: Vec<_> = merged.ips.iter().map(|ip| ip.interface).collect();
        assert_eq!(indexes, [Some(1), Some(0), None, Some(3)]);
        assert_eq!(merged.interfaces[3].name, "eth0");
        assert_eq!(merged.ips[3].address, own.ips[0].address);
        assert_eq!(merged.routes.len(), 2);
        assert_eq!(merged.routes[0], prev.routes[0]);
        assert_eq!(merged.routes[1], own.routes[0]);
        assert_eq!(merged.dns.nameservers, ["192.168.50.53", "10.96.0.10"]);
        assert_eq!(merged.dns.domain, "earlier.local");
        assert_eq!(merged.dns.search, ["earlier.local", "cluster.local"]);
        assert_eq!(merged.dns.options, ["ndots:2", "edns0"]);
        merged.validate().unwrap();
    }

    #[test]
    fn merge_onto_an_empty_prev_result_is_the_own_result() {
        assert_eq!(sample().merged_onto(&CniResult::default()), sample());
        let prev = earlier_plugin();
        assert_eq!(CniResult::default().merged_onto(&prev), prev);
        let mut own = CniResult::default();
        own.dns.domain = "cluster.local".into();
        assert_eq!(own.merged_onto(&prev).dns.domain, "cluster.local");
    }

    #[test]
    fn merged_result_reads_back_at_every_version() {
        let merged = sample().merged_onto(&earlier_plugin());
        for version in crate::SUPPORTED {
            let json = merged.to_json(version);
            assert_eq!(json["ips"][3]["interface"], 3, "{version}");
            assert_eq!(json["dns"]["nameservers"][0], "192.168.50.53", "{version}");
            let back = CniResult::from_json(&json).unwrap();
            assert_eq!(back.ips, merged.ips, "{version}");
            assert_eq!(back.dns, merged.dns, "{version}");
            assert_eq!(back.interfaces.len(), 4, "{version}");
            if version.ips_carry_version() {
                assert_eq!(json["ips"][1]["version"], "6", "{version}");
            }
        }
    }

    #[test]
    fn rejects_old_shapes_bad_versions_and_bad_indices() {
        assert!(CniResult::from_json(&json!({"ip4": {"ip": "10.0.0.2/24"}})).is_err());
        assert!(CniResult::from_json(&json!("x")).is_err());
        let bad_family = json!({"ips": [{"version": "6", "address": "10.0.0.2/24"}]});
        assert!(CniResult::from_json(&bad_family).is_err());
        let bad_index =
            json!({"interfaces": [], "ips": [{"address": "10.0.0.2/24", "interface": 3}]});
        assert!(matches!(
            CniResult::from_json(&bad_index),
            Err(ResultError::InterfaceIndex { .. })
        ));
        let bad_addr = json!({"ips": [{"address": "nonsense"}]});
        assert!(CniResult::from_json(&bad_addr).is_err());
    }
}
