//! Pods on a node bridge: the library behind `kubenet-bridge`, and the pod side of
//! `vxlan-overlay`.
//!
//! [`attach`] does the work of each verb on a resolved [`BridgeNetwork`]; [`KubenetBridge`]
//! is the CNI plugin over it; [`Error`] is mapped to CNI codes once, in `From<Error> for
//! CniError`.

pub mod attach;
pub mod config;

use std::net::Ipv4Addr;

use cni_skel::{AddOutput, Plugin, Request};
use cni_spec::{code, Attachment, CniError};

pub use attach::BridgeNetwork;
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
    /// A second ADD for an attachment that is fully set up.
    #[error(
        "{container_id}/{ifname} is already attached with {address}: DEL it before adding it again"
    )]
    AlreadyAttached {
        /// The container.
        container_id: String,
        /// Its interface.
        ifname: String,
        /// Its address.
        address: Ipv4Addr,
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

impl From<Error> for CniError {
    fn from(e: Error) -> CniError {
        let c = match &e {
            Error::Config(_) | Error::NoPrevResult => code::INVALID_NETWORK_CONFIG,
            Error::Ipam(node_ipam::Error::Exhausted { .. }) => code::RANGE_EXHAUSTED,
            Error::Ipam(node_ipam::Error::Io { .. }) => code::IO_FAILURE,
            Error::Ipam(node_ipam::Error::InvalidName(_)) => code::INVALID_ENVIRONMENT,
            Error::Ipam(_) => code::INVALID_NETWORK_CONFIG,
            Error::Net(netsetup::Error::Netns { .. } | netsetup::Error::NotANetns(_)) => {
                code::INVALID_ENVIRONMENT
            }
            Error::Net(netsetup::Error::NotABridge { .. }) => code::NOT_A_BRIDGE,
            Error::Net(netsetup::Error::Firewall(_)) => code::FIREWALL,
            Error::Net(netsetup::Error::Sysctl { .. }) => code::IO_FAILURE,
            Error::Net(_) => code::NETLINK,
            Error::AlreadyAttached { .. } => code::ALREADY_ATTACHED,
            Error::Check(_) => code::CHECK_MISMATCH,
            Error::Unavailable(_) => code::PLUGIN_NOT_AVAILABLE,
        };
        let msg = e.to_string();
        let details = std::error::Error::source(&e)
            .map(|s| s.to_string())
            .filter(|s| !msg.contains(s.as_str()))
            .unwrap_or_default();
        CniError::new(c, msg).with_details(details)
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
        attach::add(&net, &req.env).map(AddOutput::Result)
    }

    fn del(&self, req: &Request<KubenetConfig>) -> Result<Option<String>, Error> {
        let net = req.config.resolve(&req.conf.name)?;
        Ok(attach::del(&net, &req.env)?.map(|a| a.to_string()))
    }

    fn check(&self, req: &Request<KubenetConfig>) -> Result<(), Error> {
        let net = req.config.resolve(&req.conf.name)?;
        let prev = req.conf.prev_result.as_ref().ok_or(Error::NoPrevResult)?;
        attach::check(&net, &req.env, prev)
    }

    fn status(&self, req: &Request<KubenetConfig>) -> Result<(), Error> {
        attach::status(&req.config.resolve(&req.conf.name)?)
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
