//! The `runtime-cni` check: kubelet or containerd set up to run CNI plugins from the suite's
//! bin and conf dirs.

use std::path::PathBuf;

use super::report::Check;
use super::Options;
use crate::runtime;

/// kops: "kubelet is running with the --network-plugin=cni option" (before 1.24); after it,
/// the runtime (containerd) runs CNI with its own bin and conf dirs.
pub(super) fn check_runtime(opts: &Options, kubelet: Option<&runtime::Kubelet>) -> Check {
    const NAME: &str = "runtime-cni";
    if let Some(k) = kubelet {
        match k.network_plugin.as_deref() {
            Some("cni") => {
                for (flag, dir, want) in [
                    ("--cni-bin-dir", &k.cni_bin_dir, &opts.bin_dir),
                    ("--cni-conf-dir", &k.cni_conf_dir, &opts.conf_dir),
                ] {
                    if let Some(dir) = dir {
                        if !runtime::same_dir(dir, want) {
                            return Check::fail(
                                NAME,
                                format!("kubelet (pid {}) has {flag}={} but the suite is installed in {}", k.pid, dir.display(), want.display()),
                                format!("set kubelet's {flag} to {} or install there", want.display()),
                            );
                        }
                    }
                }
                return Check::ok(NAME, format!("kubelet (pid {}) runs with --network-plugin=cni", k.pid));
            }
            Some(other) => {
                return Check::fail(
                    NAME,
                    format!("kubelet (pid {}) runs with --network-plugin={other}, not cni: CNI plugins are never called", k.pid),
                    "kops: set `networking: cni: {}` in the cluster spec and roll the nodes; by hand: --network-plugin=cni",
                )
            }
            // 1.24+: the flag is gone and the runtime runs CNI; judged below.
            None => {}
        }
    }
    let text = match std::fs::read_to_string(&opts.containerd_config) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return match kubelet {
                Some(k) => Check::warn(
                    NAME,
                    format!("kubelet (pid {}) has no --network-plugin (Kubernetes 1.24+: the runtime runs CNI) and there is no containerd config at {}", k.pid, opts.containerd_config.display()),
                    "point --containerd-config at the runtime's config (CRI-O: check [crio.network] network_dir/plugin_dirs by hand)",
                ),
                None => Check::skip(
                    NAME,
                    format!("no kubelet running and no containerd config at {}", opts.containerd_config.display()),
                ),
            };
        }
        Err(e) => {
            return Check::fail(
                NAME,
                format!("cannot read {}: {e}", opts.containerd_config.display()),
                "run as root",
            )
        }
    };
    let c = match runtime::containerd_cni(&text) {
        Ok(c) => c,
        Err(e) => {
            return Check::fail(
                NAME,
                format!(
                    "{} is not valid TOML: {e}",
                    opts.containerd_config.display()
                ),
                "fix the file; `containerd config default` prints a valid one",
            )
        }
    };
    if c.cri_disabled {
        return Check::fail(
            NAME,
            format!(
                "{} disables the CRI plugin (disabled_plugins): kubelet cannot run pods through it",
                opts.containerd_config.display()
            ),
            "remove \"cri\" from disabled_plugins and restart containerd",
        );
    }
    if !c
        .bin_dirs
        .iter()
        .any(|d| runtime::same_dir(d, &opts.bin_dir))
    {
        return Check::fail(
            NAME,
            format!(
                "containerd looks for CNI plugins in {} but the suite is installed in {}",
                join_paths(&c.bin_dirs),
                opts.bin_dir.display()
            ),
            format!(
                "set bin_dir = \"{}\" in the CRI plugin's cni section and restart containerd",
                opts.bin_dir.display()
            ),
        );
    }
    if !runtime::same_dir(&c.conf_dir, &opts.conf_dir) {
        return Check::fail(
            NAME,
            format!(
                "containerd reads network configs from {} but the suite's are in {}",
                c.conf_dir.display(),
                opts.conf_dir.display()
            ),
            format!(
                "set conf_dir = \"{}\" in the CRI plugin's cni section and restart containerd",
                opts.conf_dir.display()
            ),
        );
    }
    if let Some(t) = &c.conf_template {
        match std::fs::read_to_string(t) {
            Ok(s) if !s.contains("{{.PodCIDR}}") && !s.contains("{{.PodCIDRRanges}}") => {
                return Check::warn(
                    NAME,
                    format!("conf_template {} does not use {{{{.PodCIDR}}}}: every node gets the same pod range", t.display()),
                    "write \"podCIDR\": \"{{.PodCIDR}}\" in the template (packaging/examples/kubenet-bridge.conflist.template)",
                )
            }
            Ok(_) => {}
            Err(e) => {
                return Check::warn(
                    NAME,
                    format!("conf_template {}: {e}", t.display()),
                    "install the template or remove conf_template",
                )
            }
        }
    }
    Check::ok(
        NAME,
        format!(
            "containerd (config version {}) runs CNI: bin_dir {}, conf_dir {}{}",
            c.version,
            join_paths(&c.bin_dirs),
            c.conf_dir.display(),
            c.conf_template
                .as_ref()
                .map(|t| format!(", conf_template {}", t.display()))
                .unwrap_or_default()
        ),
    )
}

fn join_paths(p: &[PathBuf]) -> String {
    p.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
