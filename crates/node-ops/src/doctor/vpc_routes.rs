//! The `vpc-routes:<network>` check: vpc-route's registration as its node state file
//! records it, read through [`crate::vpc`] (no EC2 call).

use pod_bridge::BridgeNetwork;
use serde_json::Value;

use super::ipam::{lease_count, LeaseFile};
use super::report::Check;
use crate::netconf::SuiteNetwork;
use crate::vpc;

/// vpc-route's registration as its node state file records it (seam: see [`vpc`]).
pub(super) fn check_vpc(
    net: &SuiteNetwork,
    entry: &Value,
    resolved: Option<&BridgeNetwork>,
    leases: &Result<Vec<LeaseFile>, String>,
) -> Check {
    let name = format!("vpc-routes:{}", net.name);
    match vpc::node_state(entry) {
        Ok(None) if lease_count(leases) > 0 => Check::warn(
            name,
            format!("pods are attached but {} is missing: the pod CIDR may not be routed in the VPC", vpc::state_path(entry).display()),
            "look for vpc-route errors (codes 110-113) in the runtime's log; `aws ec2 describe-route-tables` shows the routes",
        ),
        Ok(None) => Check::skip(name, "not registered yet: the first pod ADD registers the node's pod CIDR"),
        Err(e) => Check::fail(name, e, "remove the file: it is a cache, the next ADD rereads EC2"),
        Ok(Some(s)) => {
            let tables: Vec<String> = s
                .tables
                .iter()
                .map(|(id, ok, problem)| match (ok, problem) {
                    (true, _) => format!("{id} ok"),
                    (false, Some(p)) => format!("{id} MISSING ({p})"),
                    (false, None) => format!("{id} MISSING"),
                })
                .collect();
            let age = s.age_seconds.map(|a| format!(", verified {a} s ago")).unwrap_or_default();
            if let Some(r) = resolved {
                let served: std::collections::BTreeSet<String> =
                    r.ranges.pools().iter().map(|p| p.subnet().to_string()).collect();
                let registered: std::collections::BTreeSet<String> = s.pod_cidrs.iter().cloned().collect();
                if served != registered {
                    return Check::fail(
                        name,
                        format!(
                            "registered {} but the bridge serves {}",
                            s.pod_cidr,
                            served.iter().cloned().collect::<Vec<_>>().join(", ")
                        ),
                        "the podCIDRs of kubenet-bridge and vpc-route must be the node's pod CIDR",
                    );
                }
            }
            if s.is_complete() {
                Check::ok(name, format!("{} routed in {}{age}", s.pod_cidr, tables.join(", ")))
            } else {
                Check::fail(
                    name,
                    format!(
                        "{}: {}{}{age}",
                        s.pod_cidr,
                        tables.join(", "),
                        if s.source_dest_check_off { "" } else { "; source/dest check still on" }
                    ),
                    "see the problem per table: route quota (request an increase), a conflicting route, or IAM permissions",
                )
            }
        }
    }
}
