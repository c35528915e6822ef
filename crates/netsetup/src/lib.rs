//! Node and pod network setup over a synchronous rtnetlink socket: links, addresses, routes,
//! network namespaces, sysctls, and the nftables masquerade table.
//!
//! No async runtime and no `ip` command: a CNI plugin is exec'd once per pod, so every
//! thread, fork and round trip shows in pod start-up time. Requests are batched on one
//! [`Socket`] wherever the kernel allows.

pub mod link;
pub mod masquerade;
pub mod netns;
pub mod socket;
pub mod sysctl;
pub mod vxlan;

use std::path::PathBuf;

pub use link::{Link, Mac};
pub use netns::Netns;
pub use socket::{Request, Socket};

/// What can go wrong while setting up the network.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel refused a netlink request.
    #[error("{what}: {source}")]
    Netlink {
        /// The request, in words.
        what: String,
        /// The kernel's errno.
        #[source]
        source: std::io::Error,
    },
    /// A socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// The operation.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A netlink reply did not decode.
    #[error("cannot decode netlink reply: {0}")]
    Decode(String),
    /// A network namespace could not be opened or entered.
    #[error("network namespace {path}: {source}")]
    Netns {
        /// Its path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The path is not a network namespace.
    #[error("{0} is not a network namespace")]
    NotANetns(PathBuf),
    /// A link with the bridge's name exists and is something else.
    #[error("link {name} exists and is a {kind}, not a bridge: refusing to take it over")]
    NotABridge {
        /// The name.
        name: String,
        /// What it is.
        kind: String,
    },
    /// A link with the expected name exists and is of another kind.
    #[error("link {name} exists and is a {kind}, not a {expected}: refusing to take it over")]
    WrongKind {
        /// The name.
        name: String,
        /// What it is.
        kind: String,
        /// What it should be.
        expected: &'static str,
    },
    /// A sysctl could not be read or written.
    #[error("sysctl {path}: {source}")]
    Sysctl {
        /// The /proc/sys path.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// nftables could not be read or programmed.
    #[error("nftables: {0}")]
    Firewall(String),
}

/// The CNI code each failure answers with, when a plugin returns it.
impl cni_spec::ErrorCode for Error {
    fn code(&self) -> cni_spec::Code {
        use cni_spec::Code;
        match self {
            // CNI_NETNS named something that is not a usable network namespace.
            Error::Netns { .. } | Error::NotANetns(_) => Code::InvalidEnvironment,
            Error::NotABridge { .. } => Code::NotABridge,
            Error::Firewall(_) => Code::Firewall,
            Error::Sysctl { .. } => Code::IoFailure,
            Error::Netlink { .. }
            | Error::Io { .. }
            | Error::Decode(_)
            | Error::WrongKind { .. } => Code::Netlink,
        }
    }
}

impl Error {
    fn io(what: &str, source: std::io::Error) -> Self {
        Error::Io {
            what: what.to_string(),
            source,
        }
    }
}
