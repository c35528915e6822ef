//! Node operations behind the `cni-suite` command: `doctor` checks a node the way the kops
//! "Validating CNI installation" list does (and more), `teardown` plans and removes what the
//! suite created on a node.
//!
//! Everything is derived from the network configurations in the CNI conf dir ([`netconf`]):
//! the suite's networks name their bridges, VXLAN devices, IPAM directories, log files and
//! agent state, so nothing belonging to another provider is ever looked at or removed.
//! Both commands work on the network namespace they run in (`ip netns exec` for tests).

pub mod bin_dir;
pub mod doctor;
pub mod kernel;
pub mod libcni_cache;
pub mod logs;
pub mod netconf;
pub mod runtime;
pub mod teardown;
pub mod vpc;

use std::path::{Path, PathBuf};

pub use doctor::report::{Check, Report, Status};

/// Plugin types of this suite; other types in a conflist belong to someone else.
pub const SUITE_PLUGINS: [&str; 3] = ["kubenet-bridge", "vxlan-overlay", "vpc-route"];

/// What can go wrong while acting on the node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read, written or removed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A netlink or nftables step failed.
    #[error(transparent)]
    Net(#[from] netsetup::Error),
    /// An external command failed or could not be run.
    #[error("{program}: {detail}")]
    Command {
        /// The command.
        program: String,
        /// What went wrong.
        detail: String,
    },
    /// Something refuses to be removed safely.
    #[error("refused: {0}")]
    Refused(String),
    /// A step that talks to the cluster (EC2, etcd) failed.
    #[error("{0}")]
    Remote(String),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
