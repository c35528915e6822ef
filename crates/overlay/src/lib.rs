//! Flannel-style VXLAN overlay: the `vxlan-overlay` CNI plugin (pods on the node bridge,
//! addressed from this node's subnet) and its agent (subnet leases in etcd, the VTEP, and the
//! neighbour, FDB entry and route of every peer).

pub mod agent;
pub mod config;
pub mod dataplane;
pub mod etcd_access;
pub mod lease;
pub mod metrics_server;
pub mod peer_sync;
pub mod peers;
pub mod plugin;
pub mod registry;
pub mod state;
pub mod subnet_file;
pub mod telemetry;

use std::path::{Path, PathBuf};

use cni_spec::{Code, ErrorCode};
use ipnet::{Ipv4Net, Ipv6Net};

pub use config::OverlayConfig;
pub use plugin::VxlanOverlay;

/// What can go wrong in the overlay.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The agent has not leased a subnet for this node yet.
    #[error("no subnet leased for this node yet ({0} is missing): the vxlan-overlay agent must run first")]
    NoLease(PathBuf),
    /// Attaching the pod failed.
    #[error(transparent)]
    Pod(#[from] pod_bridge::Error),
    /// A dataplane step failed.
    #[error(transparent)]
    Net(#[from] netsetup::Error),
    /// etcd failed or is unreachable.
    #[error("etcd: {}", error_chain(.0))]
    Etcd(#[from] etcd_client::Error),
    /// etcd could not be reached or refused us, in words naming what to fix (the TLS file,
    /// the endpoints).
    #[error("etcd: {0}")]
    EtcdAccess(String),
    /// Every subnet of the cluster is leased.
    #[error("no free /{subnet_len} left in {cluster}")]
    Exhausted {
        /// The cluster CIDR.
        cluster: Ipv4Net,
        /// The subnet length.
        subnet_len: u8,
    },
    /// Every IPv6 subnet of the cluster is leased.
    #[error("no free /{subnet_len} left in {cluster}")]
    Exhausted6 {
        /// The cluster's IPv6 range.
        cluster: Ipv6Net,
        /// The IPv6 subnet length.
        subnet_len: u8,
    },
    /// etcd holds a different network configuration.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A state file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The metrics endpoint could not be set up on `metricsAddress`.
    #[error("metricsAddress {addr}: {source}")]
    Metrics {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The async runtime could not start.
    #[error("runtime: {0}")]
    Runtime(String),
    /// A registry of another crate (the Kubernetes API of `overlay-kube`) failed for good,
    /// in its own words.
    #[error("{0}")]
    Registry(String),
}

/// An error with its causes, `a: b: c` (tonic's own text is only "transport error").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl Error {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The one place the overlay's errors get their CNI code.
impl ErrorCode for Error {
    fn code(&self) -> Code {
        match self {
            Error::Pod(e) => e.code(),
            Error::Net(e) => e.code(),
            Error::Config(_) | Error::Conflict(_) => Code::InvalidNetworkConfig,
            Error::NoLease(_) | Error::Etcd(_) | Error::EtcdAccess(_) | Error::Registry(_) => {
                Code::TryAgainLater
            }
            Error::Exhausted { .. } | Error::Exhausted6 { .. } => Code::RangeExhausted,
            Error::Io { .. } | Error::Metrics { .. } | Error::Runtime(_) => Code::IoFailure,
        }
    }
}
