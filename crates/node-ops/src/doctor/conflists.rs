//! The conf dir's checks: `conf-dir` (the runtime's choice is the suite's), one
//! `conflist:<file>` per file (parses, every plugin installed and speaking its cniVersion),
//! and `config:<file>` for suite entries that do not decode or resolve.

use std::collections::BTreeSet;
use std::path::Path;

use super::binaries::VersionCache;
use super::report::Check;
use super::{file_name, Options};
use crate::bin_dir::is_executable;
use crate::netconf::{self, ConfFile, SuiteNetwork};

/// The conf dir holds a config, and the runtime's choice (the first file) is ours.
pub(super) fn check_conf_dir(opts: &Options, files: &[ConfFile], nets: &[SuiteNetwork]) -> Check {
    const NAME: &str = "conf-dir";
    let Some(first) = files.first() else {
        return Check::fail(
            NAME,
            format!("no network config in {}: the runtime reports NetworkPluginNotReady and the node stays NotReady", opts.conf_dir.display()),
            "install a conflist (packaging/kubernetes/install-cni.sh, the DaemonSet, or containerd's conf_template)",
        );
    };
    let first_is_ours = first.parsed.as_ref().is_ok_and(netconf::is_suite);
    if nets.is_empty() {
        return Check::warn(
            NAME,
            format!(
                "no cni-suite network in {} (the runtime uses {})",
                opts.conf_dir.display(),
                file_name(&first.path)
            ),
            "install the suite's conflist, or run this doctor on a node of the suite",
        );
    }
    if !first_is_ours {
        return Check::warn(
            NAME,
            format!("the runtime uses {} (first by name), not the suite's {}", file_name(&first.path), file_name(&nets[0].file)),
            "remove the other provider's config (kops does not clean up after switching providers) or give ours a name that sorts first",
        );
    }
    Check::ok(
        NAME,
        format!(
            "the runtime uses {} (first of {} in {})",
            file_name(&first.path),
            files.len(),
            opts.conf_dir.display()
        ),
    )
}

/// A conf file parses, and every plugin it names is in the bin dir, executable, and speaks the
/// list's cniVersion.
pub(super) fn check_conf_file(opts: &Options, f: &ConfFile, versions: &mut VersionCache) -> Check {
    let name = format!("conflist:{}", file_name(&f.path));
    let list =
        match &f.parsed {
            Ok(l) => l,
            Err(e) => return Check::fail(
                name,
                format!("does not parse: {e}"),
                "fix or remove it: runtimes skip (containerd) or refuse (podman) invalid configs",
            ),
        };
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for t in list.types() {
        if !seen.insert(t) {
            continue;
        }
        let bin = opts.bin_dir.join(t);
        if !bin.exists() {
            problems.push(format!("plugin {t} is not in {}", opts.bin_dir.display()));
            continue;
        }
        if !is_executable(&bin) {
            problems.push(format!("{} is not executable", bin.display()));
            continue;
        }
        match versions.supported(&bin, &list.cni_version) {
            Ok(v) if v.contains(&list.cni_version) => {}
            Ok(v) => problems.push(format!(
                "{t} speaks {} but the list has cniVersion {}",
                v.join(", "),
                list.cni_version
            )),
            Err(e) => problems.push(format!("{t}: {e}")),
        }
    }
    if problems.is_empty() {
        Check::ok(
            name,
            format!(
                "network {:?}, cniVersion {}: {}: all found, each one's VERSION lists it",
                list.name,
                list.cni_version,
                list.types().join(" → ")
            ),
        )
    } else {
        Check::fail(
            name,
            format!("network {:?}: {}", list.name, problems.join("; ")),
            format!("install the missing plugins into {} (reference plugins: Debian containernetworking-plugins) or fix the list", opts.bin_dir.display()),
        )
    }
}

/// The conf dir cannot be listed: no network config is visible to the runtime either.
pub(super) fn conf_dir_unreadable(opts: &Options, e: &std::io::Error) -> Check {
    Check::fail(
        "conf-dir",
        format!("cannot read {}: {e}", opts.conf_dir.display()),
        "create it and install a conflist (packaging/kubernetes/install-cni.sh)",
    )
}

/// A suite plugin's entry in `path` that does not decode as its configuration.
pub(super) fn config_undecodable(path: &Path, e: &str) -> Check {
    Check::fail(
        format!("config:{}", file_name(path)),
        format!("a suite plugin's settings do not decode: {e}"),
        format!("fix {} (see README's field tables)", path.display()),
    )
}

/// A kubenet-bridge network that decodes but does not resolve (pool, gateway): every ADD
/// fails.
pub(super) fn network_unresolved(net: &SuiteNetwork, e: &str) -> Check {
    Check::fail(
        format!("config:{}", file_name(&net.file)),
        format!("network {:?}: {e}: every ADD fails", net.name),
        format!("fix the kubenet-bridge entry of {}", net.file.display()),
    )
}
