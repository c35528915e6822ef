//! vxlan-overlay on the Kubernetes API (`"registry": "kubernetes"`), as flannel's kube subnet
//! manager: the node's subnet is its Node's `spec.podCIDR` (allocated by the
//! controller-manager), its VTEP is published in flannel's node annotations through the
//! nodes/status subresource, its `NetworkUnavailable` condition is cleared, and every other
//! Node carrying those annotations is kept programmed as a peer from a list + watch of Nodes.
//!
//! Linked into `vxlan-overlay-agent` (and `cni-suite` for its doctor) only: the per-pod plugin
//! never loads the Kubernetes client.

pub mod annotations;
pub mod api_access;
pub mod inspect;
pub mod node_sync;
pub mod own_node;

use std::time::Duration;

use overlay::OverlayConfig;

use crate::api_access::ApiAccess;
use crate::node_sync::NodeSync;

/// What can go wrong on the Kubernetes side of the overlay.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The overlay itself (configuration, dataplane, state files).
    #[error(transparent)]
    Overlay(#[from] overlay::Error),
    /// No client could be configured from the kubeconfig or the in-cluster service account.
    #[error("kubernetes client configuration ({from}): {message}")]
    ClientConfig {
        /// Where the configuration was read from.
        from: String,
        /// What is wrong with it.
        message: String,
    },
    /// The API server refused the agent's credentials or their rights.
    #[error(
        "kubernetes: {what}: {message}: the agent's ServiceAccount needs the ClusterRole of \
         packaging/kubernetes/vxlan-overlay-kubernetes.yaml (nodes get, list, watch; \
         nodes/status patch) and a valid token"
    )]
    Denied {
        /// What was asked for.
        what: String,
        /// The API server's answer (HTTP code, reason and message).
        message: String,
    },
    /// An API call failed (the server is unreachable, or answered with an error).
    #[error("kubernetes: {what}: {message}")]
    Api {
        /// What was asked for.
        what: String,
        /// The error, with its causes.
        message: String,
    },
    /// An API call got no answer in time.
    #[error("kubernetes: {what}: no answer within {after:?}")]
    Timeout {
        /// What was asked for.
        what: String,
        /// The bound.
        after: Duration,
    },
    /// This node's Node object cannot be used (a podCIDR outside clusterCIDR, no IPv4 range).
    #[error("Node {node}: {problem}")]
    Node {
        /// The Node's name.
        node: String,
        /// What is wrong.
        problem: String,
    },
}

impl Error {
    /// Whether retrying cannot help (refused credentials or rights, a bad Node or config).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Error::Denied { .. } | Error::Node { .. } | Error::ClientConfig { .. }
        ) || matches!(self, Error::Overlay(overlay::Error::Config(_)))
    }
}

impl From<Error> for overlay::Error {
    fn from(e: Error) -> overlay::Error {
        match e {
            Error::Overlay(e) => e,
            other => overlay::Error::Registry(other.to_string()),
        }
    }
}

/// Runs the agent with the Kubernetes registry until SIGTERM or SIGINT.
pub fn run(cfg: OverlayConfig) -> Result<(), overlay::Error> {
    let run_cfg = cfg.clone();
    overlay::agent::run_with_source(run_cfg, async move |start| {
        let access = ApiAccess::from_config(&cfg).await?;
        let node_name = access.node_name().to_string();
        log::info!(
            "registry kubernetes: API server {}, Node {node_name}",
            access.server()
        );
        tokio::spawn(own_node::take_subnet(
            access.clone(),
            cfg.clone(),
            start.vtep.clone(),
            start.telemetry.clone(),
            start.subnet_events,
        ));
        Ok(NodeSync::new(access, start.table, start.telemetry))
    })
}
