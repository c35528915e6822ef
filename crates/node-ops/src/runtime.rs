//! Is the container runtime set to use CNI, with our directories? containerd's CRI settings
//! from its config.toml, and kubelet's `--network-plugin` (before Kubernetes 1.24, kubelet
//! ran the network plugin itself; kops' first troubleshooting item).

use std::path::{Path, PathBuf};

use toml::Value;

use crate::kernel::Process;

/// containerd's CNI settings, as its CRI plugin reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerdCni {
    /// Config format version (1, 2 for containerd 1.x, 3 for 2.x).
    pub version: i64,
    /// Where it looks for plugin binaries (`bin_dir`, or 2.1's `bin_dirs`).
    pub bin_dirs: Vec<PathBuf>,
    /// Where it reads network configs.
    pub conf_dir: PathBuf,
    /// The template it renders with the node's pod CIDR, if any.
    pub conf_template: Option<PathBuf>,
    /// How many conf files it loads (1: only the first).
    pub max_conf_num: i64,
    /// The CRI plugin is switched off (`disabled_plugins`): kubelet cannot use this containerd.
    pub cri_disabled: bool,
}

const DEFAULT_BIN_DIR: &str = "/opt/cni/bin";
const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";

/// Reads containerd's CNI settings from the text of its config.toml. Unset keys take
/// containerd's defaults.
pub fn containerd_cni(text: &str) -> Result<ContainerdCni, String> {
    let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let version = doc.get("version").and_then(Value::as_integer).unwrap_or(1);
    let plugins = doc.get("plugins").and_then(Value::as_table);
    // The CRI plugin's id changed with the config format: v1 "cri", v2
    // "io.containerd.grpc.v1.cri", v3 (containerd 2.x) "io.containerd.cri.v1.runtime".
    let (cri_id, cni) = match version {
        3 => (
            "io.containerd.cri.v1.runtime",
            plugins
                .and_then(|p| p.get("io.containerd.cri.v1.runtime"))
                .and_then(|c| c.get("cni")),
        ),
        2 => (
            "io.containerd.grpc.v1.cri",
            plugins
                .and_then(|p| p.get("io.containerd.grpc.v1.cri"))
                .and_then(|c| c.get("cni")),
        ),
        _ => (
            "cri",
            plugins
                .and_then(|p| p.get("cri"))
                .and_then(|c| c.get("cni")),
        ),
    };
    let s = |key: &str| cni.and_then(|c| c.get(key)).and_then(Value::as_str);
    let mut bin_dirs: Vec<PathBuf> = cni
        .and_then(|c| c.get("bin_dirs"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default();
    if bin_dirs.is_empty() {
        bin_dirs.push(PathBuf::from(s("bin_dir").unwrap_or(DEFAULT_BIN_DIR)));
    }
    let disabled = doc
        .get("disabled_plugins")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .any(|p| p == "cri" || p == cri_id || p == "io.containerd.grpc.v1.cri")
        })
        .unwrap_or(false);
    Ok(ContainerdCni {
        version,
        bin_dirs,
        conf_dir: PathBuf::from(s("conf_dir").unwrap_or(DEFAULT_CONF_DIR)),
        conf_template: s("conf_template")
            .filter(|t| !t.is_empty())
            .map(PathBuf::from),
        max_conf_num: cni
            .and_then(|c| c.get("max_conf_num"))
            .and_then(Value::as_integer)
            .unwrap_or(1),
        cri_disabled: disabled,
    })
}

/// kubelet's network settings from its command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kubelet {
    /// Its pid.
    pub pid: u32,
    /// `--network-plugin` (removed in 1.24: None there).
    pub network_plugin: Option<String>,
    /// `--cni-bin-dir`.
    pub cni_bin_dir: Option<PathBuf>,
    /// `--cni-conf-dir`.
    pub cni_conf_dir: Option<PathBuf>,
}

/// Finds kubelet among `procs` and reads its flags (`--flag=value` or `--flag value`).
pub fn kubelet(procs: &[Process]) -> Option<Kubelet> {
    let p = procs.iter().find(|p| {
        p.program() == "kubelet"
            || (p.program() == "hyperkube" && p.argv.get(1).is_some_and(|a| a == "kubelet"))
    })?;
    let flag = |name: &str| -> Option<String> {
        let eq = format!("--{name}=");
        let bare = format!("--{name}");
        let mut it = p.argv.iter();
        while let Some(a) = it.next() {
            if let Some(v) = a.strip_prefix(&eq) {
                return Some(v.to_string());
            }
            if *a == bare {
                return it.next().cloned();
            }
        }
        None
    };
    Some(Kubelet {
        pid: p.pid,
        network_plugin: flag("network-plugin"),
        cni_bin_dir: flag("cni-bin-dir").map(PathBuf::from),
        cni_conf_dir: flag("cni-conf-dir").map(PathBuf::from),
    })
}

/// True when two paths name the same directory (symlinks and trailing slashes resolved when
/// they exist).
pub fn same_dir(a: &Path, b: &Path) -> bool {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.components().collect());
    canon(a) == canon(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_containerd_v2_cni_settings() {
        let c = containerd_cni(
            r#"version = 2
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "x"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/tmp/b"
    conf_dir = "/tmp/c"
    conf_template = "/etc/t"
    max_conf_num = 1
"#,
        )
        .unwrap();
        assert_eq!(c.bin_dirs, [PathBuf::from("/tmp/b")]);
        assert_eq!(c.conf_dir, PathBuf::from("/tmp/c"));
        assert_eq!(c.conf_template, Some(PathBuf::from("/etc/t")));
        assert!(!c.cri_disabled);
    }

    #[test]
    fn defaults_v3_bin_dirs_and_disabled_cri() {
        let d = containerd_cni("version = 2\n").unwrap();
        assert_eq!(d.bin_dirs, [PathBuf::from("/opt/cni/bin")]);
        assert_eq!(d.conf_dir, PathBuf::from("/etc/cni/net.d"));
        let v3 = containerd_cni(
            "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.cni]\nbin_dirs = ['/a', '/b']\n",
        )
        .unwrap();
        assert_eq!(v3.bin_dirs.len(), 2);
        let off = containerd_cni("disabled_plugins = [\"cri\"]\n").unwrap();
        assert!(off.cri_disabled);
        assert!(containerd_cni("not toml [").is_err());
    }

    #[test]
    fn reads_kubelet_flags_both_ways() {
        let procs = vec![
            Process {
                pid: 1,
                argv: vec!["/sbin/init".into()],
            },
            Process {
                pid: 7,
                argv: [
                    "/usr/local/bin/kubelet",
                    "--network-plugin=cni",
                    "--cni-bin-dir",
                    "/opt/cni/bin",
                ]
                .map(String::from)
                .to_vec(),
            },
        ];
        let k = kubelet(&procs).unwrap();
        assert_eq!(k.pid, 7);
        assert_eq!(k.network_plugin.as_deref(), Some("cni"));
        assert_eq!(k.cni_bin_dir, Some(PathBuf::from("/opt/cni/bin")));
        assert_eq!(k.cni_conf_dir, None);
        assert!(kubelet(&procs[..1]).is_none());
    }
}
