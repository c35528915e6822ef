//! Address leases from a node's pod ranges (IPv4, IPv6, or one of each), kept on disk in
//! host-local's layout.
//!
//! [`Pool`] says which addresses of one range may be leased, [`Ranges`] orders a network's
//! ranges (one address of each per attachment); [`Store`] holds who leased what, locked and
//! written atomically, with an index that keeps lookup and release O(1).

pub mod pool;
pub mod store;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

pub use pool::{Pool, Ranges};
pub use store::{
    attachment_busy, attachment_hash, parse_owner, read_leases, AttachmentLock, Lease, Owner,
    Reservation, Store,
};

/// What can go wrong with a lease.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Every leasable address of the subnet is taken.
    #[error("no free address in {subnet}: all {capacity} leasable addresses are taken")]
    Exhausted {
        /// The pod range.
        subnet: IpNet,
        /// How many addresses it can lease.
        capacity: u128,
    },
    /// The address a runtime asked for cannot be leased: outside the range, reserved, or
    /// held by another attachment.
    #[error("requested address {address} is unavailable: {why}")]
    RequestedUnavailable {
        /// The address asked for.
        address: IpAddr,
        /// Why it cannot be leased.
        why: String,
    },
    /// The subnet leaves no address to lease.
    #[error(
        "pod CIDR {subnet} is too small: a /30 (IPv4) or /126 (IPv6) or shorter prefix is needed"
    )]
    SubnetTooSmall {
        /// The pod CIDR.
        subnet: IpNet,
    },
    /// The ranges of one network: none, or two of one address family.
    #[error("pod ranges {0:?}: one or two are needed, at most one IPv4 and one IPv6")]
    InvalidRanges(Vec<IpNet>),
    /// The gateway is not a host address of the subnet.
    #[error("gateway {gateway} is not a host address of {subnet}")]
    GatewayOutsideSubnet {
        /// The configured gateway.
        gateway: IpAddr,
        /// The pod CIDR.
        subnet: IpNet,
    },
    /// A name used in a path is not safe there.
    #[error("{0:?} cannot be used in a state file name")]
    InvalidName(String),
    /// A state file or directory could not be read or written.
    #[error("IPAM state {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// The CNI code each failure answers with, when a plugin returns it.
impl cni_spec::ErrorCode for Error {
    fn code(&self) -> cni_spec::Code {
        use cni_spec::Code;
        match self {
            Error::Exhausted { .. } => Code::RangeExhausted,
            Error::RequestedUnavailable { .. } => Code::AddressUnavailable,
            Error::Io { .. } => Code::IoFailure,
            // The container id or ifname from CNI_* cannot name a state file.
            Error::InvalidName(_) => Code::InvalidEnvironment,
            Error::SubnetTooSmall { .. }
            | Error::GatewayOutsideSubnet { .. }
            | Error::InvalidRanges(_) => Code::InvalidNetworkConfig,
        }
    }
}

impl Error {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
