//! The shape of ADD and VERSION results at each spec version (SPEC.md "Result"/"Success" and
//! "Version" of 0.3.0 to 1.1.0), judged without knowing the plugin: no expected range, no
//! expected gateway. `cni_testkit::result::check_add_result` judges a bridge plugin against its
//! known podCIDR and gateway and panics on the first problem; these checks record every
//! problem at its level instead, so one run reports all of them.
//!
//! Levels: what the spec defines as the result's content is a MUST (`cniVersion` echoing the
//! input, types of the fields, `ips[].interface` indexing `interfaces`, `ips[].version` before
//! 1.0.0, the pod's interface listed with its `sandbox`); what it words as "should" (the
//! `sandbox` being the `CNI_NETNS` value, interface indexes filled in) and fields a version
//! does not define (`ips[].version` from 1.0.0, 1.1.0's MTUs in older results) are SHOULDs.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value};

use crate::verdict::{Findings, Level};
use crate::version_at_least;

/// The pod an ADD result is about.
#[derive(Debug, Clone, Copy)]
pub struct PodView<'a> {
    /// `CNI_IFNAME` of the ADD.
    pub ifname: &'a str,
    /// `CNI_NETNS` of the ADD.
    pub netns_path: &'a str,
    /// Whether the pod's namespace holds a link named `ifname` after the ADD.
    pub has_interface: bool,
}

/// A route of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultRoute {
    /// `dst`.
    pub dst: IpNet,
    /// `gw`, if given.
    pub gw: Option<IpAddr>,
}

/// What a well-formed part of an ADD result says.
#[derive(Debug, Clone, Default)]
pub struct ResultFacts {
    /// Index of the pod's interface in `interfaces`.
    pub pod_interface: Option<usize>,
    /// Every address in `ips`.
    pub addresses: Vec<IpNet>,
    /// The addresses `ips[].interface` puts on the pod's interface.
    pub pod_addresses: Vec<IpNet>,
    /// Every `ips[].gateway`.
    pub gateways: Vec<IpAddr>,
    /// `routes`.
    pub routes: Vec<ResultRoute>,
    /// `interfaces[].name`, in order.
    pub interface_names: Vec<String>,
}

const TOP_KEYS: &[&str] = &["cniVersion", "interfaces", "ips", "routes", "dns"];
const INTERFACE_KEYS: &[&str] = &["name", "mac", "sandbox"];
const INTERFACE_KEYS_1_1: &[&str] = &["mtu", "socketPath", "pciID"];
const IP_KEYS: &[&str] = &["address", "gateway", "interface"];
const ROUTE_KEYS: &[&str] = &["dst", "gw"];
const ROUTE_KEYS_1_1: &[&str] = &["mtu", "advmss", "priority", "table", "scope"];
const DNS_KEYS: &[&str] = &["nameservers", "domain", "search", "options"];

/// Records every shape violation of ADD result `result` at spec `version`; `what` names it
/// in messages ("final ADD result", "ADD result of portmap"). Returns what it says.
pub fn check_add_result(
    f: &mut Findings,
    what: &str,
    version: &str,
    result: &Value,
    pod: &PodView,
) -> ResultFacts {
    let mut facts = ResultFacts::default();
    let Some(top) = result.as_object() else {
        f.must(false, || format!("{what} is not a JSON object: {result}"));
        return facts;
    };
    let v1_1 = version_at_least(version, "1.1.0");
    let v1 = version_at_least(version, "1.0.0");
    f.must(
        top.get("cniVersion").and_then(Value::as_str) == Some(version),
        || {
            format!(
                "{what}: cniVersion {} must be the input's {version:?}",
                top.get("cniVersion")
                    .map_or("missing".to_owned(), Value::to_string)
            )
        },
    );
    unknown_keys(f, what, "result", top, TOP_KEYS, &[], version);

    let interfaces = array_field(f, what, top, "interfaces");
    for (i, iface) in interfaces.iter().enumerate() {
        let at = format!("{what}: interfaces[{i}]");
        let Some(iface) = iface.as_object() else {
            f.must(false, || format!("{at} is not an object"));
            facts.interface_names.push(String::new());
            continue;
        };
        let name = iface
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        f.must(!name.is_empty(), || format!("{at} has no name"));
        facts.interface_names.push(name.to_owned());
        if let Some(mac) = iface.get("mac") {
            match mac.as_str() {
                None => {
                    f.must(false, || format!("{at}.mac is not a string"));
                }
                Some(mac) => {
                    f.should(mac.is_empty() || is_mac(mac), || {
                        format!("{at}.mac {mac:?} is not a MAC address")
                    });
                }
            }
        }
        if let Some(sandbox) = iface.get("sandbox") {
            f.must(sandbox.is_string(), || {
                format!("{at}.sandbox is not a string")
            });
        }
        let v1_1_only: &[&str] = if v1_1 { INTERFACE_KEYS_1_1 } else { &[] };
        unknown_keys(
            f,
            &at,
            "interface",
            iface,
            INTERFACE_KEYS,
            v1_1_only,
            version,
        );
    }
    facts.pod_interface = interfaces.iter().position(|i| {
        i["name"].as_str() == Some(pod.ifname)
            && i["sandbox"].as_str().is_some_and(|s| !s.is_empty())
    });
    if pod.has_interface {
        match facts.pod_interface {
            None => {
                f.must(false, || {
                    format!(
                        "{what}: the pod holds {} but interfaces lack it with its sandbox (required for container interfaces): {result}",
                        pod.ifname
                    )
                });
            }
            Some(i) => {
                let sandbox = interfaces[i]["sandbox"].as_str().unwrap_or_default();
                f.should(sandbox == pod.netns_path, || {
                    format!(
                        "{what}: interfaces[{i}].sandbox {sandbox:?} should be CNI_NETNS {:?}",
                        pod.netns_path
                    )
                });
            }
        }
    }

    let ips = array_field(f, what, top, "ips");
    for (i, ip) in ips.iter().enumerate() {
        let at = format!("{what}: ips[{i}]");
        let Some(ip) = ip.as_object() else {
            f.must(false, || format!("{at} is not an object"));
            continue;
        };
        let address = ip
            .get("address")
            .and_then(Value::as_str)
            .and_then(|a| a.parse::<IpNet>().ok());
        f.must(address.is_some(), || {
            format!(
                "{at}.address {} is not an address in CIDR notation",
                show(ip.get("address"))
            )
        });
        if let Some(gateway) = ip.get("gateway") {
            match gateway.as_str().and_then(|g| g.parse::<IpAddr>().ok()) {
                Some(gw) => {
                    // A gateway of the other family cannot be the next hop of this address
                    // (a dual-stack result pairs each address with its own family's).
                    if let Some(address) = address {
                        f.must(address.addr().is_ipv4() == gw.is_ipv4(), || {
                            format!(
                                "{at}.gateway {gw} is not of the family of its address {address}"
                            )
                        });
                        f.should(
                            address.addr().is_ipv4() != gw.is_ipv4() || address.contains(&gw),
                            || {
                                format!(
                                    "{at}.gateway {gw} is outside its address's subnet {address}"
                                )
                            },
                        );
                    }
                    facts.gateways.push(gw);
                }
                None => {
                    f.must(false, || {
                        format!("{at}.gateway {gateway} is not an IP address")
                    });
                }
            }
        }
        let mut on_pod_interface = false;
        match ip.get("interface") {
            None => {
                f.should(!pod.has_interface, || {
                    format!("{at} has no interface index (the plugin should fill it in)")
                });
            }
            Some(index) => match index.as_u64().and_then(|n| usize::try_from(n).ok()) {
                Some(n) if n < interfaces.len() => {
                    on_pod_interface = Some(n) == facts.pod_interface
                }
                _ => {
                    f.must(false, || {
                        format!(
                            "{at}.interface {index} is not an index into interfaces ({} long)",
                            interfaces.len()
                        )
                    });
                }
            },
        }
        if v1 {
            f.should(!ip.contains_key("version"), || {
                format!("{at}.version was removed in 1.0.0")
            });
        } else {
            let family = address.map(|a| if a.addr().is_ipv4() { "4" } else { "6" });
            let given = ip.get("version").and_then(Value::as_str);
            f.must(
                given.is_some() && (family.is_none() || given == family),
                || {
                    format!(
                    "{at}.version must be \"4\" or \"6\" matching the address before 1.0.0, is {}",
                    show(ip.get("version"))
                )
                },
            );
        }
        let version_key: &[&str] = if v1 { &[] } else { &["version"] };
        unknown_keys(f, &at, "ip", ip, IP_KEYS, version_key, version);
        if let Some(address) = address {
            facts.addresses.push(address);
            if on_pod_interface {
                facts.pod_addresses.push(address);
            }
        }
    }

    for (i, route) in array_field(f, what, top, "routes").iter().enumerate() {
        let at = format!("{what}: routes[{i}]");
        let Some(route) = route.as_object() else {
            f.must(false, || format!("{at} is not an object"));
            continue;
        };
        let dst = route
            .get("dst")
            .and_then(Value::as_str)
            .and_then(|d| d.parse::<IpNet>().ok());
        f.must(dst.is_some(), || {
            format!("{at}.dst {} is not a CIDR", show(route.get("dst")))
        });
        let gw = match route.get("gw") {
            None => None,
            Some(gw) => {
                let parsed = gw.as_str().and_then(|g| g.parse::<IpAddr>().ok());
                f.must(parsed.is_some(), || {
                    format!("{at}.gw {gw} is not an IP address")
                });
                parsed
            }
        };
        if let (Some(dst), Some(gw)) = (dst, gw) {
            f.must(dst.addr().is_ipv4() == gw.is_ipv4(), || {
                format!("{at}.gw {gw} is not of the family of its dst {dst}")
            });
        }
        let v1_1_only: &[&str] = if v1_1 { ROUTE_KEYS_1_1 } else { &[] };
        unknown_keys(f, &at, "route", route, ROUTE_KEYS, v1_1_only, version);
        if let Some(dst) = dst {
            facts.routes.push(ResultRoute { dst, gw });
        }
    }

    if let Some(dns) = top.get("dns") {
        check_dns(f, what, dns, version);
    }
    facts
}

fn check_dns(f: &mut Findings, what: &str, dns: &Value, version: &str) {
    let at = format!("{what}: dns");
    let Some(dns) = dns.as_object() else {
        f.must(false, || format!("{at} is not an object"));
        return;
    };
    for key in ["nameservers", "search", "options"] {
        if let Some(list) = dns.get(key) {
            let strings = list
                .as_array()
                .is_some_and(|l| l.iter().all(Value::is_string));
            f.must(strings, || format!("{at}.{key} is not a list of strings"));
        }
    }
    if let Some(servers) = dns.get("nameservers").and_then(Value::as_array) {
        for server in servers.iter().filter_map(Value::as_str) {
            f.should(server.parse::<IpAddr>().is_ok(), || {
                format!("{at}.nameservers holds {server:?}, not an IP address")
            });
        }
    }
    if let Some(domain) = dns.get("domain") {
        f.must(domain.is_string(), || {
            format!("{at}.domain is not a string")
        });
    }
    unknown_keys(f, &at, "dns", dns, DNS_KEYS, &[], version);
}

/// `key` of `top` as a list; absent is an empty list, anything else a MUST violation.
fn array_field(f: &mut Findings, what: &str, top: &Map<String, Value>, key: &str) -> Vec<Value> {
    match top.get(key) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(other) => {
            f.must(false, || format!("{what}: {key} is not a list: {other}"));
            Vec::new()
        }
    }
}

/// A SHOULD violation for keys the version's result type does not define: runtimes decoding
/// the result at that version drop them, and older runtimes may refuse them.
fn unknown_keys(
    f: &mut Findings,
    at: &str,
    kind: &str,
    object: &Map<String, Value>,
    known: &[&str],
    also_known: &[&str],
    version: &str,
) {
    let unknown: Vec<&str> = object
        .keys()
        .map(String::as_str)
        .filter(|k| !known.contains(k) && !also_known.contains(k))
        .collect();
    f.should(unknown.is_empty(), || {
        format!(
            "{at} has fields the {version} {kind} type does not define: {}",
            unknown.join(", ")
        )
    });
}

fn show(value: Option<&Value>) -> String {
    value.map_or_else(|| "missing".to_owned(), Value::to_string)
}

fn is_mac(text: &str) -> bool {
    let octets: Vec<&str> = text.split(':').collect();
    octets.len() >= 6
        && octets
            .iter()
            .all(|o| o.len() == 2 && o.chars().all(|c| c.is_ascii_hexdigit()))
}

/// How strictly a VERSION result must echo the input's `cniVersion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionEcho {
    /// 1.0.0 and later, for a version the plugin advertises: "cniVersion: the value of
    /// cniVersion specified on input" (MUST).
    Required,
    /// An advertised version before 1.0.0, whose spec calls it "the version of the CNI spec in
    /// use for this output": echoing is good practice (SHOULD).
    Expected,
    /// A version the plugin does not advertise: it cannot answer in it, so any is fine.
    Free,
}

/// Records the violations of a VERSION result for input `version`; returns
/// `supportedVersions`.
pub fn check_version_result(
    f: &mut Findings,
    what: &str,
    version: &str,
    result: &Value,
    echo: VersionEcho,
) -> Vec<String> {
    let Some(top) = result.as_object() else {
        f.must(false, || format!("{what} is not a JSON object: {result}"));
        return Vec::new();
    };
    let echoed = top.get("cniVersion").and_then(Value::as_str);
    f.must(echoed.is_some_and(|v| !v.is_empty()), || {
        format!("{what} has no cniVersion: {result}")
    });
    let level = match echo {
        VersionEcho::Required => Some(Level::Must),
        VersionEcho::Expected => Some(Level::Should),
        VersionEcho::Free => None,
    };
    if let (Some(echoed), Some(level)) = (echoed.filter(|v| !v.is_empty()), level) {
        f.check(level, echoed == version, || {
            format!("{what}: cniVersion {echoed:?}, the input's was {version:?}")
        });
    }
    let supported: Option<Vec<String>> = top
        .get("supportedVersions")
        .and_then(Value::as_array)
        .and_then(|l| l.iter().map(|v| v.as_str().map(str::to_owned)).collect());
    let supported = supported.unwrap_or_default();
    f.must(!supported.is_empty(), || {
        format!("{what}: supportedVersions is not a non-empty list of strings: {result}")
    });
    for v in &supported {
        f.should(is_semver_triple(v), || {
            format!("{what}: supportedVersions holds {v:?}, not a major.minor.patch version")
        });
    }
    supported
}

/// Whether `text` is a `major.minor.patch` version of plain numbers.
pub fn is_semver_triple(text: &str) -> bool {
    let parts: Vec<&str> = text.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::Outcome;
    use serde_json::json;

    const POD: PodView<'static> = PodView {
        ifname: "eth0",
        netns_path: "/var/run/netns/p",
        has_interface: true,
    };

    fn result(version: &str) -> Value {
        let mut ip = json!({"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 1});
        if !version_at_least(version, "1.0.0") {
            ip["version"] = json!("4");
        }
        json!({
            "cniVersion": version,
            "interfaces": [
                {"name": "cni0", "mac": "00:11:22:33:44:55"},
                {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/p"},
            ],
            "ips": [ip],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}],
            "dns": {"nameservers": ["10.1.0.1"]},
        })
    }

    #[test]
    fn well_formed_results_pass_at_every_version() {
        for version in crate::SPEC_VERSIONS {
            let mut f = Findings::default();
            let facts = check_add_result(&mut f, "result", version, &result(version), &POD);
            assert_eq!(f.outcome(None), Outcome::Pass, "{version}");
            assert_eq!(facts.pod_interface, Some(1));
            assert_eq!(
                facts.pod_addresses,
                vec!["10.1.0.5/24".parse::<IpNet>().expect("cidr")]
            );
        }
    }

    #[test]
    fn bad_indexes_and_missing_version_fail_while_extra_fields_warn() {
        let mut bad = result("0.4.0");
        bad["ips"][0]["interface"] = json!(7);
        bad["ips"][0]
            .as_object_mut()
            .expect("object")
            .remove("version");
        let mut f = Findings::default();
        check_add_result(&mut f, "result", "0.4.0", &bad, &POD);
        let Outcome::Fail(reason) = f.outcome(None) else {
            panic!("expected a failure");
        };
        assert!(
            reason.contains("interface 7") && reason.contains("version"),
            "{reason}"
        );

        let mut extra = result("1.0.0");
        extra["ips"][0]["version"] = json!("4");
        extra["interfaces"][1]["mtu"] = json!(1500);
        let mut f = Findings::default();
        check_add_result(&mut f, "result", "1.0.0", &extra, &POD);
        assert!(
            matches!(f.outcome(None), Outcome::Warn(w) if w.contains("removed in 1.0.0") && w.contains("mtu"))
        );
    }

    #[test]
    fn a_pod_interface_missing_from_the_result_fails() {
        let mut r = result("1.0.0");
        r["interfaces"][1]["sandbox"] = json!("");
        let mut f = Findings::default();
        check_add_result(&mut f, "result", "1.0.0", &r, &POD);
        assert!(f.has_must_violation());
    }

    #[test]
    fn version_results_need_supported_versions_and_echo() {
        let mut f = Findings::default();
        let out = json!({"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]});
        let supported =
            check_version_result(&mut f, "VERSION", "0.4.0", &out, VersionEcho::Expected);
        assert_eq!(supported, vec!["0.4.0", "1.0.0"]);
        assert!(matches!(f.outcome(None), Outcome::Warn(_)));
        let mut f = Findings::default();
        check_version_result(
            &mut f,
            "VERSION",
            "1.0.0",
            &json!({"cniVersion": "1.0.0"}),
            VersionEcho::Required,
        );
        assert!(f.has_must_violation());
    }
}
