//! What the kernel holds in a pod's namespace after a plugin ran, read with `ip -j`: its
//! links, the addresses on an interface, its routes. Results are judged against this, not
//! against what the plugin claims.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use crate::netns::Netns;
use crate::shape::ResultRoute;

/// The names of the links in `netns`, except `lo`, sorted.
pub fn links(netns: &Netns) -> Vec<String> {
    let mut names: Vec<String> = netns
        .ip_json(&["link", "show"])
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    names
}

/// The addresses on `ifname` in `netns`, IPv4 and IPv6, without link-local ones (the kernel
/// adds those by itself); empty if the link does not exist.
pub fn addresses(netns: &Netns, ifname: &str) -> Vec<IpNet> {
    let Some(links) = netns.ip_json(&["addr", "show", "dev", ifname]) else {
        return Vec::new();
    };
    let mut found: Vec<IpNet> = links
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|link| link["addr_info"].as_array().into_iter().flatten())
        .filter(|a| a["scope"].as_str() != Some("link"))
        .filter_map(|a| {
            let local: IpAddr = a["local"].as_str()?.parse().ok()?;
            let prefix = u8::try_from(a["prefixlen"].as_u64()?).ok()?;
            IpNet::new(local, prefix).ok()
        })
        .collect();
    found.sort();
    found
}

/// The addresses on `ifname` still in duplicate address detection (`tentative`): not yet
/// usable as a source.
pub fn tentative_addresses(netns: &Netns, ifname: &str) -> Vec<IpNet> {
    let Some(links) = netns.ip_json(&["addr", "show", "dev", ifname]) else {
        return Vec::new();
    };
    links
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|link| link["addr_info"].as_array().into_iter().flatten())
        .filter(|a| a.get("tentative").and_then(Value::as_bool) == Some(true))
        .filter_map(|a| {
            let local: IpAddr = a["local"].as_str()?.parse().ok()?;
            let prefix = u8::try_from(a["prefixlen"].as_u64()?).ok()?;
            IpNet::new(local, prefix).ok()
        })
        .collect()
}

/// Whether `netns` has a route to `route.dst` (via `route.gw` when the result names one), in
/// the main table of either family.
pub fn has_route(netns: &Netns, route: &ResultRoute) -> bool {
    let family = if route.dst.addr().is_ipv4() {
        "-4"
    } else {
        "-6"
    };
    let Some(routes) = netns.ip_json(&[family, "route", "show"]) else {
        return false;
    };
    routes.as_array().into_iter().flatten().any(|r| {
        route_dst(r, family == "-6").is_some_and(|dst| dst == route.dst.trunc())
            && route.gw.is_none_or(|gw| {
                r["gateway"].as_str().and_then(|g| g.parse::<IpAddr>().ok()) == Some(gw)
            })
    })
}

/// The destination of an `ip -j route` entry of the IPv6 table when `v6`: `default`, a CIDR,
/// or a bare host address.
fn route_dst(entry: &Value, v6: bool) -> Option<IpNet> {
    let dst = entry["dst"].as_str()?;
    if dst == "default" {
        let any = if v6 { "::/0" } else { "0.0.0.0/0" };
        return any.parse().ok();
    }
    dst.parse::<IpNet>()
        .ok()
        .or_else(|| dst.parse::<IpAddr>().ok().map(IpNet::from))
        .map(|n| n.trunc())
}

/// The IPv4 default routes of `netns`'s main table, as `(gateway, device)`.
pub fn default_routes_v4(netns: &Netns) -> Vec<(String, String)> {
    netns
        .ip_json(&["-4", "route", "show", "default"])
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let field = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            (field("gateway"), field("dev"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::route_dst;
    use serde_json::json;

    #[test]
    fn route_destinations_read_like_cidrs() {
        assert_eq!(
            route_dst(&json!({"dst": "default", "gateway": "10.0.0.1"}), false),
            "0.0.0.0/0".parse().ok()
        );
        assert_eq!(
            route_dst(&json!({"dst": "10.1.0.0/16"}), false),
            "10.1.0.0/16".parse().ok()
        );
        assert_eq!(
            route_dst(&json!({"dst": "10.1.0.9"}), false),
            "10.1.0.9/32".parse().ok()
        );
    }
}
