//! The agent's node state on disk: its subnet and VTEP MAC, kept across restarts.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::Error;

/// What the agent remembers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeState {
    /// The subnet last leased.
    pub subnet: Option<Ipv4Net>,
    /// The VTEP MAC, `aa:bb:..`.
    pub vtep_mac: Option<String>,
    /// The IPv6 subnet last leased (dual-stack networks; absent before, so the file of a
    /// release without IPv6 reads, and is written, unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_subnet: Option<Ipv6Net>,
    /// The IPv6 device's MAC, kept across restarts as the IPv4 device's is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_vtep_mac: Option<String>,
}

impl NodeState {
    /// Reads `path`; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<NodeState, Error> {
        match fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(NodeState::default()),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Writes `path` atomically.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| Error::Config(e.to_string()))?;
        write_atomic(path, &json)
    }
}

/// Replaces `path` through [`state_file::write`] (temp, fsync, rename, fsync of the
/// directory), creating its directory 0700 if needed; files are 0600.
pub fn write_atomic(path: &Path, content: &[u8]) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(dir, e))?;
    state_file::write(path, content).map_err(|e| Error::io(path, e))
}
