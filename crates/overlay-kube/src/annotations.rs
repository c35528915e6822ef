//! flannel's node annotations (its kube subnet manager, prefix `flannel.alpha.coreos.com/`),
//! read into the overlay's [`NodeRecord`] and written from it, byte for byte as flannel
//! writes them, so nodes running flanneld and nodes running this agent see each other.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::Node;
use overlay::registry::{NodeRecord, VxlanData};
use serde_json::{json, Value};

/// flannel's default annotation prefix (`--kube-annotation-prefix`).
pub const PREFIX: &str = "flannel.alpha.coreos.com/";
/// `"vxlan"`: the backend.
pub const BACKEND_TYPE: &str = "flannel.alpha.coreos.com/backend-type";
/// `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}`: the IPv4 device.
pub const BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";
/// The same for the IPv6 device, on a dual-stack network.
pub const BACKEND_V6_DATA: &str = "flannel.alpha.coreos.com/backend-v6-data";
/// The IPv4 underlay address the node's VXLAN traffic comes from.
pub const PUBLIC_IP: &str = "flannel.alpha.coreos.com/public-ip";
/// The IPv6 underlay address.
pub const PUBLIC_IPV6: &str = "flannel.alpha.coreos.com/public-ipv6";
/// An operator's override of `public-ip` (published instead of the detected address).
pub const PUBLIC_IP_OVERWRITE: &str = "flannel.alpha.coreos.com/public-ip-overwrite";
/// An operator's override of `public-ipv6`.
pub const PUBLIC_IPV6_OVERWRITE: &str = "flannel.alpha.coreos.com/public-ipv6-overwrite";
/// `"true"`: the node is managed this way; flannel ignores Nodes without it, so does this.
pub const KUBE_SUBNET_MANAGER: &str = "flannel.alpha.coreos.com/kube-subnet-manager";

/// The reason of the `NetworkUnavailable=False` condition this agent sets (flannel's is
/// `FlannelIsUp`).
pub const CONDITION_REASON: &str = "VxlanOverlayIsUp";
/// Its message.
pub const CONDITION_MESSAGE: &str = "vxlan-overlay-agent is running on this node";

/// A Node's pod ranges: `spec.podCIDRs`, or `spec.podCIDR` when that list is empty (as
/// flannel reads them): its IPv4 and IPv6 ranges, if any. `Err` for a range that does not
/// parse, or more than two.
pub fn pod_cidrs(node: &Node) -> Result<(Option<Ipv4Net>, Option<Ipv6Net>), String> {
    let spec = node.spec.as_ref();
    let mut ranges: Vec<String> = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
    if ranges.is_empty() {
        ranges.extend(spec.and_then(|s| s.pod_cidr.clone()));
    }
    if ranges.len() > 2 {
        return Err(format!(
            "podCIDRs {ranges:?}: at most one IPv4 and one IPv6 range"
        ));
    }
    let (mut v4, mut v6) = (None, None);
    for r in &ranges {
        match r.parse::<IpNet>() {
            Ok(IpNet::V4(n)) => v4 = Some(n.trunc()),
            Ok(IpNet::V6(n)) => v6 = Some(n.trunc()),
            Err(e) => return Err(format!("podCIDR {r:?}: {e}")),
        }
    }
    Ok((v4, v6))
}

fn annotation<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// The peer record a Node makes, keyed by its IPv4 pod range, as flannel's `nodeToLease`
/// reads it: `kube-subnet-manager: "true"`, backend type `vxlan`, an IPv4 pod range,
/// `backend-data` and `public-ip` (or `public-ipv6` on an IPv6 underlay), with
/// `backend-v6-data`, `public-ipv6` and the IPv6 pod range when present. `None` for a Node
/// that is no usable peer (not managed, another backend, no pod range, unreadable data).
pub fn node_record(node: &Node) -> Option<(Ipv4Net, NodeRecord)> {
    if annotation(node, KUBE_SUBNET_MANAGER) != Some("true") {
        return None;
    }
    let backend_type = annotation(node, BACKEND_TYPE)?;
    if backend_type != "vxlan" {
        return None;
    }
    let (v4, v6) = pod_cidrs(node).ok()?;
    let subnet = v4?;
    let backend: VxlanData = serde_json::from_str(annotation(node, BACKEND_DATA)?).ok()?;
    let public_ip = match annotation(node, PUBLIC_IP) {
        Some(ip) => ip.parse::<Ipv4Addr>().ok()?,
        None => Ipv4Addr::UNSPECIFIED,
    };
    let public_ipv6 = annotation(node, PUBLIC_IPV6).and_then(|ip| ip.parse::<Ipv6Addr>().ok());
    if public_ip.is_unspecified() && public_ipv6.is_none() {
        return None;
    }
    let backend_v6 = annotation(node, BACKEND_V6_DATA)
        .and_then(|d| serde_json::from_str::<Option<VxlanData>>(d).ok())
        .flatten();
    Some((
        subnet,
        NodeRecord {
            public_ip,
            public_ipv6,
            backend_type: backend_type.to_string(),
            backend,
            backend_v6,
            ipv6_subnet: v6.filter(|_| backend_v6_present(node)),
        },
    ))
}

fn backend_v6_present(node: &Node) -> bool {
    annotation(node, BACKEND_V6_DATA).is_some_and(|d| d != "null")
}

/// The annotations a node publishes for `me`, as flannel's `AcquireLease` writes them:
/// `backend-type`, `backend-data`, `public-ip` (the `public-ip-overwrite` annotation's value
/// when the Node has one), `backend-v6-data` and `public-ipv6` on a dual-stack network, and
/// `kube-subnet-manager: "true"`.
pub fn own_annotations(node: &Node, me: &NodeRecord) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    a.insert(BACKEND_TYPE.to_string(), "vxlan".to_string());
    a.insert(BACKEND_DATA.to_string(), backend_json(&me.backend));
    let public_ip = annotation(node, PUBLIC_IP_OVERWRITE)
        .filter(|o| !o.is_empty())
        .map(str::to_string)
        .or_else(|| (!me.public_ip.is_unspecified()).then(|| me.public_ip.to_string()));
    if let Some(ip) = public_ip {
        a.insert(PUBLIC_IP.to_string(), ip);
    }
    if let Some(v6) = &me.backend_v6 {
        a.insert(BACKEND_V6_DATA.to_string(), backend_json(v6));
    }
    let public_ipv6 = annotation(node, PUBLIC_IPV6_OVERWRITE)
        .filter(|o| !o.is_empty())
        .map(str::to_string)
        .or_else(|| me.public_ipv6.map(|ip| ip.to_string()));
    if let Some(ip) = public_ipv6 {
        a.insert(PUBLIC_IPV6.to_string(), ip);
    }
    a.insert(KUBE_SUBNET_MANAGER.to_string(), "true".to_string());
    a
}

/// `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}`, the field order and spelling of flannel's
/// `vxlanLeaseAttrs` as Go's encoding/json writes it.
pub fn backend_json(data: &VxlanData) -> String {
    json!({"VNI": data.vni, "VtepMAC": data.vtep_mac}).to_string()
}

/// The annotations of `wanted` the Node does not carry with the same value yet.
pub fn missing_annotations(
    node: &Node,
    wanted: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    wanted
        .iter()
        .filter(|(k, v)| annotation(node, k) != Some(v.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The strategic merge patch of nodes/status that sets `annotations` (flannel's
/// `CreateTwoWayMergePatch` of the annotations it changed).
pub fn annotations_patch(annotations: &BTreeMap<String, String>) -> Value {
    json!({"metadata": {"annotations": annotations}})
}

/// The strategic merge patch of nodes/status that sets `NetworkUnavailable=False` (merged by
/// condition type; the other conditions stay), stamped `now` (RFC 3339).
pub fn network_available_patch(now: &str) -> Value {
    json!({"status": {"conditions": [{
        "type": "NetworkUnavailable",
        "status": "False",
        "reason": CONDITION_REASON,
        "message": CONDITION_MESSAGE,
        "lastTransitionTime": now,
        "lastHeartbeatTime": now,
    }]}})
}

/// Whether `ip` is `record`'s underlay address of its family.
pub fn record_has_underlay(record: &NodeRecord, ip: IpAddr) -> bool {
    record.underlay_like(ip) == Some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(annotations: &[(&str, &str)], pod_cidrs: &[&str]) -> Node {
        serde_json::from_value(json!({
            "metadata": {
                "name": "n1",
                "annotations": annotations.iter().map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            },
            "spec": {
                "podCIDR": pod_cidrs.first(),
                "podCIDRs": pod_cidrs,
            },
        }))
        .unwrap()
    }

    #[test]
    fn a_flannel_node_reads_as_the_etcd_record_would() {
        // What flanneld v0.27 writes on a vxlan node (annotations copied from a kops node).
        let n = node(
            &[
                (BACKEND_TYPE, "vxlan"),
                (BACKEND_DATA, r#"{"VNI":1,"VtepMAC":"4a:0c:5e:9a:1b:2c"}"#),
                (PUBLIC_IP, "172.20.33.4"),
                (KUBE_SUBNET_MANAGER, "true"),
            ],
            &["100.96.3.0/24"],
        );
        let (subnet, r) = node_record(&n).expect("a peer");
        assert_eq!(subnet.to_string(), "100.96.3.0/24");
        assert_eq!(
            r,
            NodeRecord::new(
                "172.20.33.4".parse().unwrap(),
                1,
                "4a:0c:5e:9a:1b:2c".into()
            )
        );

        // Unmanaged, another backend, no pod range, malformed data: no peer.
        let mut unmanaged = n.clone();
        unmanaged
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(KUBE_SUBNET_MANAGER);
        assert!(node_record(&unmanaged).is_none());
        let mut host_gw = n.clone();
        host_gw
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(BACKEND_TYPE.into(), "host-gw".into());
        assert!(node_record(&host_gw).is_none());
        let mut no_cidr = n.clone();
        no_cidr.spec = None;
        assert!(node_record(&no_cidr).is_none());
        let mut bad = n.clone();
        bad.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(BACKEND_DATA.into(), "{".into());
        assert!(node_record(&bad).is_none());
    }

    #[test]
    fn dual_stack_nodes_carry_the_ipv6_range_and_device() {
        let n = node(
            &[
                (BACKEND_TYPE, "vxlan"),
                (BACKEND_DATA, r#"{"VNI":1,"VtepMAC":"aa:00:00:00:00:02"}"#),
                (
                    BACKEND_V6_DATA,
                    r#"{"VNI":1,"VtepMAC":"aa:00:00:00:01:02"}"#,
                ),
                (PUBLIC_IP, "172.30.0.2"),
                (PUBLIC_IPV6, "fd00:30::2"),
                (KUBE_SUBNET_MANAGER, "true"),
            ],
            &["10.244.2.0/24", "fd00:10:244:2::/64"],
        );
        let (subnet, r) = node_record(&n).expect("a peer");
        assert_eq!(subnet.to_string(), "10.244.2.0/24");
        assert_eq!(r.ipv6_subnet.unwrap().to_string(), "fd00:10:244:2::/64");
        assert_eq!(r.backend_v6.unwrap().vtep_mac, "aa:00:00:00:01:02");
        assert_eq!(r.public_ipv6.unwrap().to_string(), "fd00:30::2");
        assert_eq!(
            pod_cidrs(&node(&[], &["fd00::/64", "10.0.0.0/24"])).unwrap(),
            (
                Some("10.0.0.0/24".parse().unwrap()),
                Some("fd00::/64".parse().unwrap())
            )
        );
        assert!(pod_cidrs(&node(&[], &["10.0.0.0/24", "10.0.1.0/24", "fd00::/64"])).is_err());
    }

    #[test]
    fn published_annotations_are_flannels_and_round_trip() {
        let me = NodeRecord::new("172.30.0.1".parse().unwrap(), 7, "aa:00:00:00:00:01".into());
        let n = node(&[], &["100.64.1.0/24"]);
        let a = own_annotations(&n, &me);
        assert_eq!(
            a[BACKEND_DATA],
            r#"{"VNI":7,"VtepMAC":"aa:00:00:00:00:01"}"#
        );
        assert_eq!(a[BACKEND_TYPE], "vxlan");
        assert_eq!(a[PUBLIC_IP], "172.30.0.1");
        assert_eq!(a[KUBE_SUBNET_MANAGER], "true");
        assert!(!a.contains_key(BACKEND_V6_DATA) && !a.contains_key(PUBLIC_IPV6));
        assert_eq!(missing_annotations(&n, &a).len(), 4);
        let pairs: Vec<(&str, &str)> = a.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let published = node(&pairs, &["100.64.1.0/24"]);
        assert!(missing_annotations(&published, &a).is_empty());
        assert_eq!(node_record(&published).map(|(_, r)| r), Some(me.clone()));

        // public-ip-overwrite wins, as in flannel.
        let over = node(&[(PUBLIC_IP_OVERWRITE, "203.0.113.9")], &["100.64.1.0/24"]);
        assert_eq!(own_annotations(&over, &me)[PUBLIC_IP], "203.0.113.9");
        let patch = annotations_patch(&a);
        assert_eq!(patch["metadata"]["annotations"][PUBLIC_IP], "172.30.0.1");
        let cond = network_available_patch("2026-01-01T00:00:00Z");
        assert_eq!(
            cond["status"]["conditions"][0]["type"],
            "NetworkUnavailable"
        );
        assert_eq!(cond["status"]["conditions"][0]["status"], "False");
    }
}
