//! The network configurations in a CNI conf dir, as runtimes load them, and the suite's
//! networks they describe: bridge, IPAM directory, masquerade table, log file, agent state.

use std::fs;
use std::path::{Path, PathBuf};

use pod_bridge::config::nft_table_for;
use pod_bridge::{BridgeNetwork, KubenetConfig};
use serde_json::Value;

use crate::SUITE_PLUGINS;

/// One file of the conf dir.
#[derive(Clone, Debug)]
pub struct ConfFile {
    /// Its path.
    pub path: PathBuf,
    /// The parsed list, or why it does not parse.
    pub parsed: Result<ConfList, String>,
}

pub use cni_spec::ConfList;

/// True when one of the list's plugins is ours.
pub fn is_suite(list: &ConfList) -> bool {
    list.types().iter().any(|t| SUITE_PLUGINS.contains(t))
}

/// The files a runtime loads from `dir`, in the order it tries them (libcni: `.conf`,
/// `.conflist` and `.json`, sorted by name; containerd and CRI-O use the first one).
pub fn load_dir(dir: &Path) -> std::io::Result<Vec<ConfFile>> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conf" | "conflist" | "json")
                )
        })
        .collect();
    paths.sort();
    Ok(paths
        .into_iter()
        .map(|path| {
            let parsed = fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| parse(&b));
            ConfFile { path, parsed }
        })
        .collect())
}

/// Parses a conflist, or a single plugin config as a list of one; the error is the reason
/// in words.
pub fn parse(bytes: &[u8]) -> Result<ConfList, String> {
    ConfList::parse(bytes).map_err(|e| e.msg)
}

/// Which of our plugins a network attaches pods with.
#[derive(Clone, Debug)]
pub enum Kind {
    /// `kubenet-bridge`.
    Kubenet(Box<KubenetConfig>),
    /// `vxlan-overlay`.
    Overlay(Box<overlay::OverlayConfig>),
}

/// One of our networks, resolved from its conflist entry.
#[derive(Clone, Debug)]
pub struct SuiteNetwork {
    /// The conflist it comes from.
    pub file: PathBuf,
    /// The network name (names the IPAM directory and the results cache entries).
    pub name: String,
    /// The attaching plugin's entry, as written.
    pub entry: Value,
    /// Its parsed configuration.
    pub kind: Kind,
    /// `vpc-route` entries chained in the same list.
    pub vpc_route: Option<Value>,
}

impl SuiteNetwork {
    /// The node bridge.
    pub fn bridge(&self) -> &str {
        match &self.kind {
            Kind::Kubenet(c) => &c.bridge,
            Kind::Overlay(c) => &c.bridge,
        }
    }

    /// The masquerade table of its bridge.
    pub fn nft_table(&self) -> String {
        nft_table_for(self.bridge())
    }

    /// IPAM state root; leases live in `<root>/<name>`.
    pub fn ipam_root(&self) -> PathBuf {
        let dir = match &self.kind {
            Kind::Kubenet(c) => c.data_dir.clone(),
            Kind::Overlay(c) => c.ipam_dir.clone(),
        };
        dir.unwrap_or_else(|| PathBuf::from(pod_bridge::config::DEFAULT_DATA_DIR))
    }

    /// The IPAM directory of this network.
    pub fn ipam_dir(&self) -> PathBuf {
        self.ipam_root().join(&self.name)
    }

    /// `logFile`, if set.
    pub fn log_file(&self) -> Option<PathBuf> {
        self.entry["logFile"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    }

    /// The plugin type.
    pub fn plugin(&self) -> &'static str {
        match self.kind {
            Kind::Kubenet(_) => "kubenet-bridge",
            Kind::Overlay(_) => "vxlan-overlay",
        }
    }

    /// The resolved network (pool, gateway, masquerade); for vxlan-overlay this needs the
    /// agent's subnet file.
    pub fn resolve(&self) -> Result<BridgeNetwork, String> {
        match &self.kind {
            Kind::Kubenet(c) => c.resolve(&self.name).map_err(|e| e.to_string()),
            Kind::Overlay(c) => {
                overlay::plugin::bridge_network(c, &self.name).map_err(|e| e.to_string())
            }
        }
    }
}

/// Our networks in the conf files, with the config errors of entries that do not decode.
pub fn suite_networks(files: &[ConfFile]) -> (Vec<SuiteNetwork>, Vec<(PathBuf, String)>) {
    let mut nets = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        let Ok(list) = &f.parsed else { continue };
        let vpc_route = list.entry("vpc-route").cloned();
        for p in &list.plugins {
            let kind = match p["type"].as_str() {
                Some("kubenet-bridge") => serde_json::from_value::<KubenetConfig>(p.clone())
                    .map(|c| Kind::Kubenet(Box::new(c))),
                Some("vxlan-overlay") => {
                    serde_json::from_value::<overlay::OverlayConfig>(p.clone())
                        .map(|c| Kind::Overlay(Box::new(c)))
                }
                _ => continue,
            };
            match kind {
                Ok(kind) => nets.push(SuiteNetwork {
                    file: f.path.clone(),
                    name: list.name.clone(),
                    entry: p.clone(),
                    kind,
                    vpc_route: vpc_route.clone(),
                }),
                Err(e) => errors.push((f.path.clone(), e.to_string())),
            }
        }
    }
    (nets, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_lists_and_single_configs() {
        let l = parse(br#"{"cniVersion":"1.0.0","name":"k","plugins":[{"type":"kubenet-bridge","podCIDR":"10.1.0.0/24"},{"type":"portmap"}]}"#).unwrap();
        assert_eq!(l.types(), ["kubenet-bridge", "portmap"]);
        assert!(is_suite(&l));
        let one = parse(br#"{"cniVersion":"0.4.0","name":"b","type":"bridge"}"#).unwrap();
        assert_eq!(one.types(), ["bridge"]);
        assert!(!is_suite(&one));
        assert!(parse(b"{").is_err());
        assert!(parse(br#"{"cniVersion":"1.0.0","name":"x","plugins":[]}"#).is_err());
        assert!(parse(br#"{"cniVersion":"1.0.0","name":"x","plugins":[{}]}"#).is_err());
    }

    #[test]
    fn finds_suite_networks_and_their_state() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("10-k.conflist"),
            br#"{"cniVersion":"1.0.0","name":"k","plugins":[
                {"type":"kubenet-bridge","bridge":"br7","podCIDR":"10.1.0.0/24","dataDir":"/x","logFile":"/l"},
                {"type":"vpc-route","clusterName":"c"}]}"#,
        )
        .unwrap();
        fs::write(
            dir.path().join("20-other.conf"),
            br#"{"cniVersion":"0.4.0","name":"o","type":"bridge"}"#,
        )
        .unwrap();
        fs::write(dir.path().join("README"), b"ignored").unwrap();
        let files = load_dir(dir.path()).unwrap();
        assert_eq!(files.len(), 2);
        let (nets, errors) = suite_networks(&files);
        assert!(errors.is_empty());
        assert_eq!(nets.len(), 1);
        let n = &nets[0];
        assert_eq!(n.bridge(), "br7");
        assert_eq!(n.nft_table(), "cni_suite_br7");
        assert_eq!(n.ipam_dir(), PathBuf::from("/x/k"));
        assert_eq!(n.log_file(), Some(PathBuf::from("/l")));
        assert!(n.vpc_route.is_some());
        assert_eq!(
            n.resolve().unwrap().pool().gateway().to_string(),
            "10.1.0.1"
        );
    }
}
