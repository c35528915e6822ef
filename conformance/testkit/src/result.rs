//! Checks on an ADD result against the CNI spec version it was requested in.
//!
//! The shape rules (SPEC.md "Success" for each version): `cniVersion` echoes the request;
//! `ips[].version` ("4"/"6") exists before 1.0.0 and was removed in 1.0.0; `interfaces[]`
//! lists the links the plugin created, the one inside the pod carrying `sandbox` = the netns
//! path; `ips[].interface` indexes into `interfaces` and must point at the pod's interface,
//! since that is where the address lives.

use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use serde_json::Value;

use crate::version_at_least;

/// What an ADD for one attachment must have produced.
#[derive(Debug, Clone)]
pub struct ExpectedAttachment<'a> {
    /// Spec version of the request.
    pub version: &'a str,
    /// `CNI_IFNAME` of the request.
    pub ifname: &'a str,
    /// `CNI_NETNS` of the request.
    pub netns_path: &'a Path,
    /// The range the pod's address must come from.
    pub pod_cidr: Ipv4Net,
    /// The gateway the result must name.
    pub gateway: Ipv4Addr,
}

/// Asserts that `result` is a well-formed ADD result for `expected` and returns the pod's
/// address (with its prefix length). `ctx` prefixes every message, like `[1.0.0] add pod a`.
pub fn check_add_result(ctx: &str, result: &Value, expected: &ExpectedAttachment) -> Ipv4Net {
    let version = expected.version;
    assert_eq!(
        result["cniVersion"].as_str(),
        Some(version),
        "{ctx}: result cniVersion must echo the request: {result}"
    );

    let interfaces = result["interfaces"]
        .as_array()
        .unwrap_or_else(|| panic!("{ctx}: result has no interfaces array: {result}"));
    let netns_path = expected.netns_path.to_string_lossy();
    let pod_if = interfaces
        .iter()
        .position(|i| i["name"].as_str() == Some(expected.ifname))
        .unwrap_or_else(|| {
            panic!(
                "{ctx}: interfaces lack the pod interface {}: {result}",
                expected.ifname
            )
        });
    assert_eq!(
        interfaces[pod_if]["sandbox"].as_str(),
        Some(netns_path.as_ref()),
        "{ctx}: pod interface must carry sandbox = netns path: {result}"
    );
    for (i, iface) in interfaces.iter().enumerate() {
        assert!(
            iface["name"].as_str().is_some_and(|n| !n.is_empty()),
            "{ctx}: interfaces[{i}] has no name: {result}"
        );
    }

    let ips = result["ips"]
        .as_array()
        .filter(|ips| !ips.is_empty())
        .unwrap_or_else(|| panic!("{ctx}: result has no ips: {result}"));
    let mut pod_address = None;
    for (i, ip) in ips.iter().enumerate() {
        if version_at_least(version, "1.0.0") {
            assert!(
                ip.get("version").is_none(),
                "{ctx}: ips[{i}].version was removed in 1.0.0: {result}"
            );
        } else {
            assert_eq!(
                ip["version"].as_str(),
                Some("4"),
                "{ctx}: ips[{i}].version \"4\" is required before 1.0.0: {result}"
            );
        }
        let index = ip["interface"]
            .as_u64()
            .unwrap_or_else(|| panic!("{ctx}: ips[{i}].interface missing: {result}"));
        assert!(
            usize::try_from(index).is_ok_and(|idx| idx < interfaces.len()),
            "{ctx}: ips[{i}].interface {index} is not an index into interfaces: {result}"
        );
        assert_eq!(
            usize::try_from(index).ok(),
            Some(pod_if),
            "{ctx}: ips[{i}].interface must point at the pod interface: {result}"
        );
        let address: Ipv4Net = ip["address"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{ctx}: ips[{i}].address is not an IPv4 CIDR: {result}"));
        assert!(
            expected.pod_cidr.contains(&address.addr()),
            "{ctx}: address {address} is outside podCIDR {}: {result}",
            expected.pod_cidr
        );
        assert_eq!(
            address.prefix_len(),
            expected.pod_cidr.prefix_len(),
            "{ctx}: address {address} must carry podCIDR's prefix length: {result}"
        );
        assert!(
            address.addr() != expected.gateway
                && address.addr() != expected.pod_cidr.network()
                && address.addr() != expected.pod_cidr.broadcast(),
            "{ctx}: address {address} is the gateway, network or broadcast address: {result}"
        );
        assert_eq!(
            ip["gateway"].as_str(),
            Some(expected.gateway.to_string().as_str()),
            "{ctx}: ips[{i}].gateway: {result}"
        );
        pod_address.get_or_insert(address);
    }

    let routes = result["routes"].as_array().cloned().unwrap_or_default();
    let gateway = expected.gateway.to_string();
    assert!(
        routes.iter().any(|r| r["dst"].as_str() == Some("0.0.0.0/0")
            && r["gw"].as_str() == Some(gateway.as_str())),
        "{ctx}: routes lack the default route via {gateway}: {result}"
    );

    pod_address.expect("ips is non-empty")
}

/// The first address in a result's `ips`, without prefix length.
pub fn first_address(result: &Value) -> Option<Ipv4Addr> {
    let cidr: Ipv4Net = result["ips"].get(0)?["address"].as_str()?.parse().ok()?;
    Some(cidr.addr())
}

/// The names of a result's interfaces, in order.
pub fn interface_names(result: &Value) -> Vec<String> {
    result["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["name"].as_str().map(str::to_owned))
        .collect()
}

/// The interface the plugin reports on the host side: the first one without `sandbox` that is
/// not `bridge`.
pub fn host_veth_name(result: &Value, bridge: &str) -> Option<String> {
    result["interfaces"]
        .as_array()?
        .iter()
        .filter(|i| i.get("sandbox").is_none_or(|s| s.as_str() == Some("")))
        .filter_map(|i| i["name"].as_str())
        .find(|name| *name != bridge)
        .map(str::to_owned)
}
