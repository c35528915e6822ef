//! The checks of a vxlan-overlay network on the Kubernetes registry (`"registry":
//! "kubernetes"`), through the agent's own client and credentials (its `kubeconfig`, else the
//! in-cluster service account): `kube-pod-cidr:` (this node's Node has a podCIDR, the one in
//! subnet.env), `kube-annotations:` (its flannel annotations match the local VTEP) and
//! `kube-peers:` (every peer Node is programmed on the VXLAN device).

use netsetup::link::{self, Mac};
use netsetup::vxlan;
use netsetup::Socket;
use overlay::peers::PeerTable;
use overlay::OverlayConfig;
use overlay_kube::inspect::{node_view, NodeView};

use super::report::Check;
use crate::netconf::SuiteNetwork;

/// The three checks, in order.
pub(super) fn check_kube_registry(net: &SuiteNetwork, cfg: &OverlayConfig) -> Vec<Check> {
    let names = [
        format!("kube-pod-cidr:{}", net.name),
        format!("kube-annotations:{}", net.name),
        format!("kube-peers:{}", net.name),
    ];
    let view = match node_view(cfg) {
        Ok(v) => v,
        Err(e) => {
            return names
                .into_iter()
                .map(|n| {
                    Check::fail(
                        n,
                        format!("cannot read the Nodes: {e}"),
                        "check the agent's kubeconfig (or service account), its RBAC and the API server",
                    )
                })
                .collect()
        }
    };
    let [cidr_name, annotations_name, peers_name] = names;
    vec![
        check_pod_cidr(cidr_name, cfg, &view),
        check_annotations(annotations_name, cfg, &view),
        check_peers(peers_name, cfg, &view),
    ]
}

fn check_pod_cidr(name: String, cfg: &OverlayConfig, view: &NodeView) -> Check {
    let Some(cidr) = view.pod_cidr else {
        return Check::fail(
            name,
            format!("Node {} has no IPv4 spec.podCIDR", view.name),
            "run kube-controller-manager with --allocate-node-cidrs and --cluster-cidr = clusterCIDR",
        );
    };
    let leased = overlay::subnet_file::SubnetEnv::read(&cfg.subnet_file())
        .ok()
        .flatten()
        .map(|env| env.subnet.trunc());
    match leased {
        Some(l) if l != cidr => Check::fail(
            name,
            format!(
                "Node {} has podCIDR {cidr}, but {} says {l}",
                view.name,
                cfg.subnet_file().display()
            ),
            "restart the agent: it rewrites subnet.env from the podCIDR",
        ),
        None => Check::fail(
            name,
            format!(
                "Node {} has podCIDR {cidr}, but {} is missing",
                view.name,
                cfg.subnet_file().display()
            ),
            "is the agent running?",
        ),
        Some(_) => Check::ok(
            name,
            format!("Node {} has podCIDR {cidr}, as subnet.env", view.name),
        ),
    }
}

/// The VXLAN device's MAC, if it exists.
fn device_mac(device: &str) -> Option<(u32, Mac)> {
    let mut sock = Socket::new().ok()?;
    let l = link::get_link(&mut sock, device).ok()??;
    Some((l.index, l.mac))
}

fn check_annotations(name: String, cfg: &OverlayConfig, view: &NodeView) -> Check {
    let Some(record) = &view.record else {
        return Check::fail(
            name,
            format!(
                "Node {} carries no usable flannel.alpha.coreos.com/ annotations (kube-subnet-manager, backend-type, backend-data, public-ip)",
                view.name
            ),
            "restart the agent: it publishes them at start",
        );
    };
    let Some((_, mac)) = device_mac(&cfg.device()) else {
        return Check::fail(
            name,
            format!("no device {} on this node", cfg.device()),
            "restart the agent: it creates the device",
        );
    };
    let local = link::mac_string(&mac);
    if !record.backend.vtep_mac.eq_ignore_ascii_case(&local) || record.backend.vni != cfg.vni {
        return Check::fail(
            name,
            format!(
                "Node {} publishes VNI {} VTEP MAC {}, the device {} has VNI {} MAC {local}",
                view.name,
                record.backend.vni,
                record.backend.vtep_mac,
                cfg.device(),
                cfg.vni
            ),
            "restart the agent: it republishes the annotations",
        );
    }
    Check::ok(
        name,
        format!(
            "Node {} publishes VNI {}, VTEP MAC {local}, public IP {}",
            view.name,
            record.backend.vni,
            record.identity()
        ),
    )
}

fn check_peers(name: String, cfg: &OverlayConfig, view: &NodeView) -> Check {
    let underlay = match overlay::dataplane::detect_underlay(cfg) {
        Ok(u) => u,
        Err(e) => {
            return Check::fail(
                name,
                format!("no underlay: {e}"),
                "check underlayInterface and the default route",
            )
        }
    };
    let Some((index, _)) = device_mac(&cfg.device()) else {
        return Check::fail(
            name,
            format!("no device {} on this node", cfg.device()),
            "restart the agent: it creates the device",
        );
    };
    let state = match Socket::new().and_then(|mut s| vxlan::device_state(&mut s, index)) {
        Ok(s) => s,
        Err(e) => {
            return Check::fail(
                name,
                format!("cannot read {}: {e}", cfg.device()),
                "run as root",
            )
        }
    };
    let records: Vec<_> = view.peers.iter().map(|(_, s, r)| (*s, r.clone())).collect();
    let peers = PeerTable::new(underlay.ip, cfg.vni).peers_of(&records);
    let missing: Vec<String> = peers
        .v4
        .iter()
        .filter(|p| {
            !(state.neighbours.contains(&(p.vtep_ip, p.vtep_mac))
                && state.fdb.contains(&(p.vtep_mac, p.underlay))
                && state.routes.contains(&(p.subnet, Some(p.vtep_ip))))
        })
        .map(|p| format!("{} via {}", p.subnet, p.underlay))
        .collect();
    if missing.is_empty() {
        Check::ok(
            name,
            format!(
                "{} peer Node(s), all programmed on {}",
                peers.v4.len(),
                cfg.device()
            ),
        )
    } else {
        Check::fail(
            name,
            format!(
                "{} of {} peer Node(s) not programmed on {}: {}",
                missing.len(),
                peers.v4.len(),
                cfg.device(),
                missing.join(", ")
            ),
            "the agent applies Node changes within seconds: is it running and watching (its log)?",
        )
    }
}
