//! The `ipam:<network>` check: leases whose pod is gone and how full the range is; the
//! leases are read through node-ipam, once per network, for the other checks too.

use std::net::IpAddr;
use std::path::Path;

use pod_bridge::attach::host_veth_name;
use pod_bridge::BridgeNetwork;

use super::report::Check;
use crate::kernel::Links;
use crate::netconf::SuiteNetwork;

/// A lease file: (address, owner (container id, ifname) when the file holds one).
pub(super) type LeaseFile = (IpAddr, Option<node_ipam::Owner>);

/// The leases of an IPAM directory, read without locking or creating anything.
pub(super) fn read_leases(dir: &Path) -> Result<Vec<LeaseFile>, String> {
    node_ipam::read_leases(dir).map_err(|e| e.to_string())
}

pub(super) fn lease_count(leases: &Result<Vec<LeaseFile>, String>) -> usize {
    leases.as_ref().map(Vec::len).unwrap_or(0)
}

/// Leases whose pod is gone (no host veth), and how full the range is.
pub(super) fn check_leases(
    net: &SuiteNetwork,
    resolved: Option<&BridgeNetwork>,
    leases: &Result<Vec<LeaseFile>, String>,
    links: &Links,
) -> Check {
    let name = format!("ipam:{}", net.name);
    let dir = net.ipam_dir();
    let leases = match leases {
        Ok(l) => l,
        Err(e) => return Check::fail(name, e.clone(), "run as root (IPAM state is 0700)"),
    };
    let leaked: Vec<String> = leases
        .iter()
        .filter_map(|(addr, owner)| {
            let (id, ifname) = owner.as_ref()?;
            let veth = host_veth_name(id, ifname);
            links
                .get(&veth)
                .is_none()
                .then(|| format!("{addr} ({}, {ifname}; no {veth})", short(id)))
        })
        .collect();
    if !leaked.is_empty() {
        return Check::fail(
            name,
            format!("{} of {} lease(s) in {} belong to pods that are gone: {}", leaked.len(), leases.len(), dir.display(), leaked.join(", ")),
            "the runtime's GC (CNI 1.1) or a DEL for those containers releases them; by hand: remove those address files (a racing ADD may show here for an instant)",
        );
    }
    if let Some(r) = resolved {
        let cap = usize::try_from(r.pool().capacity()).unwrap_or(usize::MAX);
        if cap > 0 && leases.len() * 10 >= cap * 9 {
            return Check::warn(
                name,
                format!("{} of {cap} addresses of {} leased", leases.len(), r.pool().subnet()),
                "the node runs out of pod addresses soon: fewer pods per node (kubelet --max-pods) or a larger podCIDR",
            );
        }
    }
    if leases.is_empty() {
        Check::ok(name, format!("no leases in {}", dir.display()))
    } else {
        Check::ok(
            name,
            format!(
                "{} lease(s) in {}, each with its pod's veth",
                leases.len(),
                dir.display()
            ),
        )
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_lease_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("10.1.0.2"), "abc\r\neth0").unwrap();
        std::fs::write(dir.path().join("10.1.0.3"), "").unwrap();
        std::fs::write(dir.path().join("last_reserved_ip.0"), "10.1.0.3").unwrap();
        std::fs::create_dir(dir.path().join("attachments")).unwrap();
        let l = read_leases(dir.path()).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].1, Some(("abc".into(), "eth0".into())));
        assert_eq!(l[1].1, None);
        assert!(read_leases(&dir.path().join("nope")).unwrap().is_empty());
    }
}
