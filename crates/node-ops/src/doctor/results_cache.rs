//! The `results-cache` check: libcni's cached results of the suite's networks whose pod is
//! gone, read through [`crate::libcni_cache`].

use std::collections::BTreeSet;

use pod_bridge::attach::host_veth_name;

use super::report::Check;
use super::{file_name, Options};
use crate::kernel::Links;
use crate::libcni_cache::{self, CachedResult};
use crate::netconf::SuiteNetwork;

/// libcni's cached results of our networks whose pod is gone.
pub(super) fn check_results_cache(opts: &Options, nets: &[SuiteNetwork], links: &Links) -> Check {
    const NAME: &str = "results-cache";
    let dir = libcni_cache::results_dir(&opts.cache_dir);
    let names: BTreeSet<&str> = nets.iter().map(|n| n.name.as_str()).collect();
    let entries = match libcni_cache::read_results(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Check::skip(
                NAME,
                format!(
                    "{} does not exist (no runtime has cached a result here)",
                    dir.display()
                ),
            )
        }
        Err(e) => return Check::warn(NAME, format!("{}: {e}", dir.display()), "run as root"),
    };
    let ours: Vec<&CachedResult> = entries
        .iter()
        .filter(|r| names.contains(r.network.as_str()))
        .collect();
    let stale: Vec<String> = ours
        .iter()
        .filter(|r| {
            links
                .get(&host_veth_name(&r.container_id, &r.ifname))
                .is_none()
        })
        .map(|r| file_name(&r.path))
        .collect();
    if stale.is_empty() {
        Check::ok(
            NAME,
            format!(
                "{} cached result(s) of the suite's networks, none stale",
                ours.len()
            ),
        )
    } else {
        Check::warn(
            NAME,
            format!("{} cached result(s) for pods that are gone: {}", stale.len(), stale.join(", ")),
            "the runtime never sent DEL for them; `cni-suite teardown` or removing the files clears them",
        )
    }
}
