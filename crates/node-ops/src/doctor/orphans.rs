//! The `orphan-*:<network>` checks: one side of an attachment still held while another side
//! has forgotten it. A pod veth on the bridge with no lease, a cached result (libcni's) with
//! no lease, a lease with no cached result. The `ipam:` check covers the fourth direction (a
//! lease whose veth is gone). Attachments whose ADD or DEL holds the lock are skipped, as the
//! plugin's GC skips them.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, SystemTime};

use pod_bridge::attach::host_veth_name;

use super::ipam::LeaseFile;
use super::report::Check;
use super::{file_name, Options};
use crate::kernel::Links;
use crate::libcni_cache::CachedResult;
use crate::netconf::SuiteNetwork;
use crate::teardown::is_suite_veth;

/// What the veth and lease checks know of libcni's cache: its entries of this network, or
/// why there is no cache to compare with.
pub(super) type CacheEntries<'a> = Result<Vec<&'a CachedResult>, String>;

/// Whether (container id, ifname)'s ADD or DEL runs now; an unreadable lock file counts as
/// not busy (the other checks report the IPAM directory itself).
fn busy(ipam_dir: &Path, container_id: &str, ifname: &str) -> bool {
    node_ipam::attachment_busy(ipam_dir, container_id, ifname).unwrap_or(false)
}

/// Pod veths (the suite's names) on the network's bridge whose attachment holds no lease: a
/// fail when the pod's namespace is gone too (nothing will ever DEL it: no lease, no GC
/// finds it), a warn when the namespace is still alive (a pod running without a lease: its
/// address can be handed out again).
pub(super) fn check_veths(
    net: &SuiteNetwork,
    leases: &Result<Vec<LeaseFile>, String>,
    cache: &CacheEntries<'_>,
    links: &Links,
) -> Check {
    let name = format!("orphan-veths:{}", net.name);
    let Ok(leases) = leases else {
        return Check::skip(name, "the leases cannot be read (see the ipam check)");
    };
    let Some(bridge) = links
        .get(net.bridge())
        .filter(|l| l.kind.as_deref() == Some("bridge"))
    else {
        return Check::skip(
            name,
            format!("no bridge {} (see its bridge check)", net.bridge()),
        );
    };
    let leased: BTreeSet<String> = leases
        .iter()
        .filter_map(|(_, owner)| owner.as_ref())
        .map(|(id, ifname)| host_veth_name(id, ifname))
        .collect();
    // The owners the cache knows, by veth name: the only way back from a veth without a
    // lease to the attachment whose lock says whether its ADD or DEL is running.
    let cached_owner: HashMap<String, (&str, &str)> = cache
        .as_ref()
        .map(|entries| {
            entries
                .iter()
                .map(|r| {
                    (
                        host_veth_name(&r.container_id, &r.ifname),
                        (r.container_id.as_str(), r.ifname.as_str()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let ipam_dir = net.ipam_dir();
    let ports: Vec<_> = links
        .ports_of(bridge.index)
        .into_iter()
        .filter(|p| p.kind.as_deref() == Some("veth") && is_suite_veth(&p.name))
        .collect();
    let (mut gone, mut alive, mut skipped) = (Vec::new(), Vec::new(), 0);
    for port in &ports {
        if leased.contains(&port.name) {
            continue;
        }
        if let Some((id, ifname)) = cached_owner.get(&port.name) {
            if busy(&ipam_dir, id, ifname) {
                skipped += 1;
                continue;
            }
        }
        match port.peer_netns {
            None => gone.push(port.name.clone()),
            Some(_) => alive.push(port.name.clone()),
        }
    }
    let busy_note = if skipped > 0 {
        format!(" ({skipped} skipped: their ADD or DEL is running)")
    } else {
        String::new()
    };
    if !gone.is_empty() {
        return Check::fail(
            name,
            format!(
                "{} veth(s) on {} belong to pods that are gone (no lease, no namespace): {}{busy_note}",
                gone.len(),
                net.bridge(),
                gone.join(", ")
            ),
            format!(
                "no DEL or GC finds a veth without a lease: `ip link del {}` removes them; \
                 `cni-suite teardown --yes` clears the whole node",
                gone.join("` and `ip link del ")
            ),
        );
    }
    if !alive.is_empty() {
        return Check::warn(
            name,
            format!(
                "{} veth(s) on {} have no lease while their pod's namespace still exists: {}{busy_note}",
                alive.len(),
                net.bridge(),
                alive.join(", ")
            ),
            "their addresses can be handed to new pods: delete those pods through the runtime \
             (its DEL removes the veth), then let them be recreated",
        );
    }
    Check::ok(
        name,
        format!(
            "{} pod veth(s) on {}, each with its lease{busy_note}",
            ports.len(),
            net.bridge()
        ),
    )
}

/// libcni's cached results of this network whose attachment holds no lease: the runtime
/// believes in a pod the plugin has forgotten (its CHECK and DEL act on nothing).
pub(super) fn check_cached_results(
    net: &SuiteNetwork,
    leases: &Result<Vec<LeaseFile>, String>,
    cache: &CacheEntries<'_>,
) -> Check {
    let name = format!("orphan-results:{}", net.name);
    let (Ok(leases), Ok(entries)) = (leases, cache) else {
        return Check::skip(name, skip_reason(leases, cache));
    };
    let owners: BTreeSet<(&str, &str)> = leases
        .iter()
        .filter_map(|(_, o)| o.as_ref())
        .map(|(id, ifname)| (id.as_str(), ifname.as_str()))
        .collect();
    let ipam_dir = net.ipam_dir();
    let orphans: Vec<String> = entries
        .iter()
        .filter(|r| !owners.contains(&(r.container_id.as_str(), r.ifname.as_str())))
        .filter(|r| !busy(&ipam_dir, &r.container_id, &r.ifname))
        .map(|r| file_name(&r.path))
        .collect();
    if orphans.is_empty() {
        return Check::ok(
            name,
            format!(
                "{} cached result(s) of {:?}, each with its lease",
                entries.len(),
                net.name
            ),
        );
    }
    Check::fail(
        name,
        format!(
            "{} cached result(s) of {:?} have no lease: {}",
            orphans.len(),
            net.name,
            orphans.join(", ")
        ),
        "the runtime still holds these pods: remove them through it (its DEL clears the cache \
         entry), or delete those files when the pods are gone; `cni-suite teardown --yes` \
         clears the whole node",
    )
}

/// Leases of this network older than `--orphan-grace-seconds` with no cached result: no
/// runtime that caches results (containerd, CRI-O, podman) knows the pod, so nothing will
/// DEL it. Younger ones are left alone: libcni writes its cache after ADD returns.
pub(super) fn check_uncached_leases(
    net: &SuiteNetwork,
    leases: &Result<Vec<LeaseFile>, String>,
    cache: &CacheEntries<'_>,
    opts: &Options,
) -> Check {
    let name = format!("orphan-leases:{}", net.name);
    let (Ok(leases), Ok(entries)) = (leases, cache) else {
        return Check::skip(name, skip_reason(leases, cache));
    };
    let cached: BTreeSet<(&str, &str)> = entries
        .iter()
        .map(|r| (r.container_id.as_str(), r.ifname.as_str()))
        .collect();
    let ipam_dir = net.ipam_dir();
    let now = SystemTime::now();
    let (mut orphans, mut young) = (Vec::new(), 0);
    for (addr, owner) in leases {
        let Some((id, ifname)) = owner else { continue };
        if cached.contains(&(id.as_str(), ifname.as_str())) {
            continue;
        }
        let age = std::fs::symlink_metadata(ipam_dir.join(addr.to_string()))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .unwrap_or(Duration::ZERO);
        if age < opts.orphan_grace || busy(&ipam_dir, id, ifname) {
            young += 1;
            continue;
        }
        orphans.push(format!(
            "{addr} ({}, {ifname}; {} s old)",
            id.get(..12).unwrap_or(id),
            age.as_secs()
        ));
    }
    let grace = opts.orphan_grace.as_secs();
    if orphans.is_empty() {
        return Check::ok(
            name,
            format!(
                "{} lease(s), none without a cached result for more than {grace} s ({young} younger or busy)",
                leases.len()
            ),
        );
    }
    Check::fail(
        name,
        format!(
            "{} lease(s) in {} have had no cached result for more than {grace} s: {}",
            orphans.len(),
            ipam_dir.display(),
            orphans.join(", ")
        ),
        "no runtime knows these pods, so none will DEL them: the runtime's GC (CNI 1.1, it \
         sends the attachments it knows) releases them, or a DEL for each (cnitool del); \
         `cni-suite teardown --yes` clears the whole node (a runtime without a results cache, \
         such as a hand-run plugin, shows here too)",
    )
}

fn skip_reason(leases: &Result<Vec<LeaseFile>, String>, cache: &CacheEntries<'_>) -> String {
    match (leases, cache) {
        (Err(_), _) => "the leases cannot be read (see the ipam check)".to_string(),
        (_, Err(why)) => why.clone(),
        _ => String::new(),
    }
}
