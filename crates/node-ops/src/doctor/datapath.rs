//! The kernel's side of the datapath: `ip-forward`, each network's `bridge:` and
//! `masquerade:` table, the overlay's `vxlan:` device, and `br-netfilter` for kube-proxy.

use ipnet::{IpNet, Ipv4Net};
use pod_bridge::BridgeNetwork;

use super::ipam::{lease_count, LeaseFile};
use super::report::{Check, Status};
use crate::kernel::{self, Links};
use crate::netconf::SuiteNetwork;

/// The links of this network namespace cannot be dumped: the link checks cannot run.
pub(super) fn links_unreadable(e: &crate::Error) -> Check {
    Check::fail(
        "netlink",
        format!("cannot list links: {e}"),
        "run as root on the node (or inside its network namespace)",
    )
}

/// Forwarding between the bridge and the node's uplink, which pods need for anything
/// beyond the node.
pub(super) fn check_ip_forward() -> Check {
    const NAME: &str = "ip-forward";
    match kernel::ip_forward() {
        Ok(true) => Check::ok(NAME, "net.ipv4.ip_forward = 1"),
        Ok(false) => Check::fail(
            NAME,
            "net.ipv4.ip_forward = 0: pods cannot reach anything beyond this node",
            "sysctl -w net.ipv4.ip_forward=1 (and find what turned it off: the next ADD turns it on again)",
        ),
        Err(e) => Check::fail(NAME, e.to_string(), "run on the node (needs /proc)"),
    }
}

/// The node bridge: exists, is a bridge, is up, carries the gateway address.
pub(super) fn check_bridge(
    net: &SuiteNetwork,
    resolved: Option<&BridgeNetwork>,
    leases: &Result<Vec<LeaseFile>, String>,
    links: &mut Links,
) -> Check {
    let name = format!("bridge:{}", net.bridge());
    let pods = lease_count(leases);
    let Some(link) = links.get(net.bridge()).cloned() else {
        return if pods > 0 {
            Check::fail(
                name,
                format!("missing, but {pods} pod(s) of network {:?} hold leases: their traffic is down", net.name),
                "recreate the pods (their DEL+ADD recreates the bridge); `cni-suite teardown --yes` clears the node",
            )
        } else {
            Check::skip(name, "not created yet: the first pod ADD creates it")
        };
    };
    if link.kind.as_deref() != Some("bridge") {
        return Check::fail(
            name,
            format!(
                "is a {}, not a bridge: every ADD fails (code 103)",
                link.kind.as_deref().unwrap_or("device")
            ),
            "delete or rename that link, or set \"bridge\" to another name",
        );
    }
    if !link.up {
        return Check::fail(
            name,
            "is down: pods have no gateway",
            format!("ip link set {} up", net.bridge()),
        );
    }
    let ports = links.ports_of(link.index).len();
    let Some(net) = resolved else {
        return Check::ok(
            name,
            format!(
                "up, {ports} port(s), mtu {} (gateway unknown until the network resolves)",
                link.mtu
            ),
        );
    };
    // One gateway per range: a dual-stack bridge carries both, and a pod of the family
    // whose gateway is missing has no default route of that family.
    let gateways: Vec<IpNet> = net.ranges.pools().iter().map(|p| p.gateway_net()).collect();
    let shown = |list: &[IpNet]| {
        list.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match links.addresses(link.index) {
        Ok(a) => {
            let missing: Vec<IpNet> = gateways
                .iter()
                .filter(|gw| !a.contains(gw))
                .copied()
                .collect();
            if missing.is_empty() {
                return Check::ok(
                    name,
                    format!(
                        "up, gateway {}, {ports} port(s), mtu {}",
                        shown(&gateways),
                        link.mtu
                    ),
                );
            }
            Check::fail(
                name,
                format!(
                    "lacks the gateway address {} (has {}): pods have no default route target",
                    shown(&missing),
                    shown(&a)
                ),
                format!(
                    "{} (the next ADD adds it too)",
                    missing
                        .iter()
                        .map(|gw| format!("ip addr add {gw} dev {}", net.bridge))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            )
        }
        Err(e) => Check::fail(
            name,
            format!("cannot read its addresses: {e}"),
            "run as root",
        ),
    }
}

/// The masquerade table of each range's family (`ip` for IPv4, `ip6` for IPv6, one name)
/// exists with the fingerprint of this network's settings; a dual-stack network's verdict is
/// the worse of its two tables'.
pub(super) fn check_masquerade(
    net: &SuiteNetwork,
    resolved: Option<&BridgeNetwork>,
    leases: &Result<Vec<LeaseFile>, String>,
    tables: &Result<Vec<String>, crate::Error>,
    tables6: &Result<Vec<String>, crate::Error>,
) -> Check {
    let table = net.nft_table();
    let name = format!("masquerade:{table}");
    let Some(r) = resolved else {
        return Check::skip(
            name,
            format!(
                "network {:?} does not resolve yet (see its other checks)",
                net.name
            ),
        );
    };
    let verdicts: Vec<Check> = r
        .ranges
        .pools()
        .iter()
        .map(|pool| {
            let v6 = pool.is_ipv6();
            check_masquerade_family(
                &name,
                &table,
                r,
                pool,
                leases,
                if v6 { tables6 } else { tables },
            )
        })
        .collect();
    if verdicts.len() == 1 {
        return verdicts
            .into_iter()
            .next()
            .unwrap_or_else(|| Check::skip(name, "no range"));
    }
    let worst = verdicts
        .iter()
        .map(|c| c.status)
        .max()
        .unwrap_or(Status::Skip);
    let message = verdicts
        .iter()
        .map(|c| c.message.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    let hint = verdicts
        .iter()
        .filter(|c| c.status == worst)
        .find_map(|c| c.hint.clone());
    Check {
        name,
        status: worst,
        message,
        hint,
    }
}

/// The masquerade verdict of one family's table (`table ip6 <name>` for an IPv6 range).
fn check_masquerade_family(
    name: &str,
    table: &str,
    r: &BridgeNetwork,
    pool: &node_ipam::Pool,
    leases: &Result<Vec<LeaseFile>, String>,
    tables: &Result<Vec<String>, crate::Error>,
) -> Check {
    let v6 = pool.is_ipv6();
    let (family, label) = if v6 { ("ip6", "IPv6: ") } else { ("ip", "") };
    // An IPv4-only network keeps the messages it had before dual-stack; a dual-stack one
    // names the family of each part.
    let label = if r.ranges.pools().len() > 1 && !v6 {
        "IPv4: "
    } else {
        label
    };
    let comment = match netsetup::masquerade::table_comment_of(table, v6) {
        Ok(c) => c,
        Err(e) => {
            return Check::warn(
                name,
                format!("{label}cannot read nftables: {e}"),
                "run as root",
            )
        }
    };
    let exists = comment.is_some() || tables.as_ref().is_ok_and(|t| t.iter().any(|t| t == table));
    let Some(keep) = &r.masquerade_outside else {
        return if exists {
            Check::warn(
                name,
                format!(
                    "{label}ipMasq is off but the table exists: pod traffic is still masqueraded"
                ),
                format!("nft delete table {family} {table} (the next ADD removes it too)"),
            )
        } else {
            Check::ok(name, format!("{label}ipMasq off and no table"))
        };
    };
    let keep: Vec<IpNet> = keep
        .iter()
        .filter(|c| pool.same_family(c.addr()))
        .copied()
        .collect();
    let want = netsetup::masquerade::MasqueradeSpec {
        table,
        pod_cidr: pool.subnet(),
        non_masquerade: &keep,
        bridge: &r.bridge,
    }
    .fingerprint();
    match comment {
        Some(c) if c == want => Check::ok(name, format!("{label}present: {c}")),
        Some(c) => Check::fail(
            name,
            format!("{label}holds {c:?}, this network wants {want:?}"),
            "two networks share the bridge with different settings, or the config changed: the next ADD reprograms it",
        ),
        None if exists => Check::fail(
            name,
            format!("{label}present without the suite's fingerprint comment"),
            format!("nft delete table {family} {table}; the next ADD recreates it"),
        ),
        None if lease_count(leases) > 0 => Check::fail(
            name,
            format!("{label}missing although pods are attached: their traffic to outside the cluster is not masqueraded"),
            "the next ADD recreates it; find what flushed the ruleset (`nft flush ruleset`, a firewall service)",
        ),
        None => Check::skip(name, format!("{label}not created yet: the first pod ADD creates it")),
    }
}

/// The VXLAN device: exists, is VXLAN, up, carries the VTEP address; its peer routes.
pub(super) fn check_vxlan(cfg: &overlay::OverlayConfig, links: &mut Links) -> Check {
    let dev = cfg.device();
    let name = format!("vxlan:{dev}");
    let env = overlay::subnet_file::SubnetEnv::read(&cfg.subnet_file())
        .ok()
        .flatten();
    let Some(link) = links.get(&dev).cloned() else {
        return match env {
            Some(_) => Check::fail(
                name,
                "missing although a subnet is leased: no traffic to other nodes",
                "restart the vxlan-overlay agent: it recreates the device",
            ),
            None => Check::skip(
                name,
                "not created yet: the agent creates it after leasing a subnet",
            ),
        };
    };
    if link.kind.as_deref() != Some("vxlan") {
        return Check::fail(
            name,
            format!(
                "is a {}, not VXLAN",
                link.kind.as_deref().unwrap_or("device")
            ),
            "delete it, or set \"device\" to another name",
        );
    }
    if !link.up {
        return Check::fail(
            name,
            "is down: no traffic to other nodes",
            format!("ip link set {dev} up (or restart the agent)"),
        );
    }
    let Some(env) = env else {
        return Check::warn(
            name,
            "up, but no subnet file: stale from an earlier run?",
            "restart the agent",
        );
    };
    let vtep = IpNet::V4(
        Ipv4Net::new(overlay::config::vtep_ip(env.subnet.trunc()), 32).unwrap_or_default(),
    );
    let addrs = match links.addresses(link.index) {
        Ok(a) => a,
        Err(e) => return Check::fail(name, format!("cannot read addresses: {e}"), "run as root"),
    };
    if !addrs.contains(&vtep) {
        return Check::fail(
            name,
            format!("lacks its VTEP address {vtep}"),
            "restart the agent: it sets the address",
        );
    }
    let peers = netsetup::vxlan::device_state(links.socket(), link.index)
        .map(|s| s.routes.len().to_string())
        .unwrap_or_else(|e| format!("? ({e})"));
    Check::ok(
        name,
        format!("up, VTEP {vtep}, mtu {}, {peers} peer route(s)", link.mtu),
    )
}

/// kube-proxy's service rules only see pod-to-pod traffic on a bridge through br_netfilter.
pub(super) fn check_br_netfilter(kubelet_running: bool) -> Check {
    const NAME: &str = "br-netfilter";
    if !kubelet_running {
        return Check::skip(
            NAME,
            "no kubelet on this node: kube-proxy's need for br_netfilter not checked",
        );
    }
    match std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables") {
        Ok(v) if v.trim() == "1" => Check::ok(NAME, "net.bridge.bridge-nf-call-iptables = 1"),
        Ok(_) => Check::warn(
            NAME,
            "net.bridge.bridge-nf-call-iptables = 0: services between pods on this bridge break",
            "sysctl -w net.bridge.bridge-nf-call-iptables=1",
        ),
        Err(_) => Check::warn(
            NAME,
            "br_netfilter is not loaded: services between pods on this bridge break",
            "modprobe br_netfilter (and list it in /etc/modules-load.d)",
        ),
    }
}
