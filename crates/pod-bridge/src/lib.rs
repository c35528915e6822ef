//! Pods on a node bridge: the library behind `kubenet-bridge`, and the pod side of
//! `vxlan-overlay`.
//!
//! [`attach`] does the work of each verb on a resolved [`BridgeNetwork`]; [`KubenetBridge`]
//! is the CNI plugin over it; [`Error`] says its CNI code once, in its `ErrorCode` impl.

pub mod attach;
pub mod config;

use cni_skel::{AddOutput, Plugin, Request};
use cni_spec::{Attachment, Code, ErrorCode, NetConf};

pub use attach::{addresses_text, BridgeNetwork, DefaultRoute};
pub use config::KubenetConfig;

/// What can go wrong attaching a pod.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A lease could not be taken or released.
    #[error(transparent)]
    Ipam(#[from] node_ipam::Error),
    /// The kernel refused a step.
    #[error(transparent)]
    Net(#[from] netsetup::Error),
    /// The address the runtime asked for cannot be served by this range.
    #[error("requested address unavailable: {0}")]
    RequestedAddress(String),
    /// A second ADD for an attachment that is fully set up.
    #[error(
        "{container_id}/{ifname} is already attached with {addresses}: DEL it before adding it again"
    )]
    AlreadyAttached {
        /// The container.
        container_id: String,
        /// Its interface.
        ifname: String,
        /// Its addresses, as a list.
        addresses: String,
    },
    /// ADD created the pod's veth end in its namespace, and the kernel then did not show it
    /// there: a setup failure (code 101), not a CHECK mismatch.
    #[error("{ifname} did not appear in {}", .netns.display())]
    PodLinkMissing {
        /// The pod's interface.
        ifname: String,
        /// The pod's network namespace.
        netns: std::path::PathBuf,
    },
    /// CHECK found a difference.
    #[error("check failed: {0}")]
    Check(String),
    /// CHECK needs a prevResult.
    #[error("CHECK needs a prevResult")]
    NoPrevResult,
    /// STATUS: ADD cannot be served.
    #[error("not available: {0}")]
    Unavailable(String),
}

/// The one place pod-bridge's errors get their CNI code; the lease and kernel errors carry
/// their own crates' codes.
impl ErrorCode for Error {
    fn code(&self) -> Code {
        match self {
            Error::Config(_) | Error::NoPrevResult => Code::InvalidNetworkConfig,
            Error::Ipam(e) => e.code(),
            Error::Net(e) => e.code(),
            Error::PodLinkMissing { .. } => Code::Netlink,
            Error::AlreadyAttached { .. } => Code::AlreadyAttached,
            Error::RequestedAddress(_) => Code::AddressUnavailable,
            Error::Check(_) => Code::CheckMismatch,
            Error::Unavailable(_) => Code::PluginNotAvailable,
        }
    }
}

/// The `kubenet-bridge` CNI plugin.
#[derive(Debug, Default)]
pub struct KubenetBridge;

impl Plugin for KubenetBridge {
    type Config = KubenetConfig;
    type Error = Error;

    fn add(&self, req: &Request<KubenetConfig>) -> Result<AddOutput, Error> {
        let net = req.config.resolve(&req.conf.name)?;
        let wants = req.conf.attachment_request(&req.env.cni_args);
        attach::add(&net, &req.env, &wants).map(AddOutput::Result)
    }

    fn del(&self, req: &Request<KubenetConfig>) -> Result<Option<String>, Error> {
        let net = req.config.resolve(&req.conf.name)?;
        let released = attach::del(&net, &req.env)?;
        Ok((!released.is_empty()).then(|| attach::addresses_text(&released)))
    }

    fn check(&self, req: &Request<KubenetConfig>) -> Result<(), Error> {
        let net = req.config.resolve(&req.conf.name)?;
        let prev = req.conf.prev_result.as_ref().ok_or(Error::NoPrevResult)?;
        attach::check(&net, &req.env, prev)
    }

    fn status(&self, req: &Request<KubenetConfig>) -> Result<(), Error> {
        attach::status(&req.config.resolve(&req.conf.name)?)
    }

    /// What ADD resolves before touching the node: the pod ranges (a /30 or larger IPv4, a
    /// /126 or larger IPv6, at most one of each), the gateway in its range, the bridge name.
    fn check_config(&self, conf: &NetConf, config: &KubenetConfig) -> Result<(), Error> {
        config.resolve(&conf.name).map(drop)
    }

    fn gc(
        &self,
        req: &Request<KubenetConfig>,
        valid: &[Attachment],
    ) -> Result<Option<String>, Error> {
        let net = req.config.resolve(&req.conf.name)?;
        let freed = attach::gc(&net, valid)?;
        Ok(Some(format!("released {freed:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_veth_missing_after_add_is_a_setup_failure_not_a_check_mismatch() {
        let e = Error::PodLinkMissing {
            ifname: "eth0".into(),
            netns: "/run/netns/p".into(),
        };
        assert_eq!(e.code(), Code::Netlink);
        let obj = cni_skel::error_object(e);
        assert_eq!(obj.code, 101);
        assert_eq!(obj.msg, "eth0 did not appear in /run/netns/p");
        assert_eq!(Error::Check("x".into()).code(), 104);
    }

    #[test]
    fn wrapped_errors_keep_their_crates_codes_and_causes() {
        let e = Error::Ipam(node_ipam::Error::Exhausted {
            subnet: "10.0.0.0/30".parse().unwrap_or_default(),
            capacity: 1,
        });
        assert_eq!(e.code(), Code::RangeExhausted);
        let e = Error::Net(netsetup::Error::NotABridge {
            name: "cbr0".into(),
            kind: "dummy".into(),
        });
        assert_eq!(e.code(), Code::NotABridge);
        let e = Error::Net(netsetup::Error::Netns {
            path: "/x".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
        let obj = cni_skel::error_object(e);
        assert_eq!(obj.code, Code::InvalidEnvironment);
        // The cause is in the message already, so it is not repeated as details.
        assert!(obj.msg.starts_with("network namespace /x: "), "{}", obj.msg);
        assert!(obj.details.is_empty(), "{}", obj.details);
    }
}
