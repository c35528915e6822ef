//! libcni's results cache: the result of each ADD that containerd, CRI-O, podman and cnitool
//! keep in `<cache dir>/results`, read for the doctor (stale entries) and teardown (the
//! suite's entries to remove).

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Where libcni (containerd, CRI-O, podman, cnitool) caches results: `<dir>/results`.
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/cni";

/// The results directory of libcni's cache dir `cache_dir`.
pub fn results_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("results")
}

/// One file of libcni's results cache.
#[derive(Clone, Debug)]
pub struct CachedResult {
    /// The file.
    pub path: PathBuf,
    /// `networkName`.
    pub network: String,
    /// `containerId`.
    pub container_id: String,
    /// `ifName`.
    pub ifname: String,
}

/// The entries of libcni's results cache dir (`{"kind":"cniCacheV1","containerId",
/// "ifName","networkName",...}`), sorted by file name; files in other formats are left out.
pub fn read_results(dir: &Path) -> std::io::Result<Vec<CachedResult>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)?.flatten() {
        let Ok(bytes) = std::fs::read(e.path()) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
            continue;
        };
        let (Some(net), Some(id), Some(ifname)) = (
            v["networkName"].as_str(),
            v["containerId"].as_str(),
            v["ifName"].as_str(),
        ) else {
            continue;
        };
        out.push(CachedResult {
            path: e.path(),
            network: net.to_string(),
            container_id: id.to_string(),
            ifname: ifname.to_string(),
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cni_cache_v1_entries_and_leaves_out_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let res = results_dir(dir.path());
        assert_eq!(
            read_results(&res).unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
        std::fs::create_dir(&res).unwrap();
        std::fs::write(
            res.join("k-abc-eth0"),
            r#"{"kind":"cniCacheV1","containerId":"abc","ifName":"eth0","networkName":"k"}"#,
        )
        .unwrap();
        std::fs::write(res.join("junk"), "x").unwrap();
        let r = read_results(&res).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].network, "k");
        assert_eq!(r[0].container_id, "abc");
        assert_eq!(r[0].ifname, "eth0");
        assert_eq!(r[0].path, res.join("k-abc-eth0"));
    }
}
