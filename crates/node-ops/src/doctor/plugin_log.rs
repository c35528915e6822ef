//! The `log:<network>` check (kops: the provider started without errors, pod create and
//! delete are logged): the plugin's logFile.

use std::time::SystemTime;

use super::ipam::{lease_count, LeaseFile};
use super::report::Check;
use super::{file_name, Options};
use crate::logs;
use crate::netconf::SuiteNetwork;

/// kops: "the CNI provider started without errors" and "logging on a node will display
/// messages on pod create and delete".
pub(super) fn check_log(
    net: &SuiteNetwork,
    leases: &Result<Vec<LeaseFile>, String>,
    opts: &Options,
) -> Check {
    let name = format!("log:{}", net.name);
    let Some(path) = net.log_file() else {
        return Check::warn(
            name,
            format!(
                "no logFile in {}: pod create and delete leave no trace on the node",
                file_name(&net.file)
            ),
            format!(
                "add \"logFile\": \"/var/log/{}.log\" to the {} entry",
                net.plugin(),
                net.plugin()
            ),
        );
    };
    let lines = match logs::tail(&path) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return if lease_count(leases) > 0 {
                Check::warn(name, format!("{} is missing although pods are attached", path.display()), "check that its directory exists and is writable by root (the plugin cannot create directories)")
            } else {
                Check::skip(
                    name,
                    format!("{} not written yet: no pod created", path.display()),
                )
            };
        }
        Err(e) => {
            return Check::warn(
                name,
                format!("{}: {e}", path.display()),
                "run as root (the log is 0600)",
            )
        }
    };
    let s = logs::summarize(
        &lines,
        net.plugin(),
        Some(&net.name),
        SystemTime::now(),
        opts.log_window,
    );
    if let Some(last) = s.recent_errors.last() {
        return Check::warn(
            name,
            format!("{} ERROR line(s) in the last {} min; last: {last}", s.recent_errors.len(), opts.log_window.as_secs() / 60),
            "the line names the failing step; `cni-suite doctor`'s other checks usually show the cause",
        );
    }
    if s.adds == 0 && s.dels == 0 {
        return if lease_count(leases) > 0 {
            Check::warn(
                name,
                format!(
                    "{} shows no ADD or DEL although pods are attached",
                    path.display()
                ),
                "was the log rotated or logLevel set to error?",
            )
        } else {
            Check::skip(name, format!("{}: no pod created yet", path.display()))
        };
    }
    Check::ok(
        name,
        format!(
            "{}: {} ADD, {} DEL logged, no ERROR in the last {} min",
            path.display(),
            s.adds,
            s.dels,
            opts.log_window.as_secs() / 60
        ),
    )
}
