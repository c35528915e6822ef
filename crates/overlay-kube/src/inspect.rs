//! What `cni-suite doctor` reads of the Kubernetes registry: this node's Node (its pod range
//! and annotations) and the peers every other Node makes.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use overlay::registry::NodeRecord;
use overlay::OverlayConfig;

use crate::annotations::{node_record, pod_cidrs};
use crate::api_access::ApiAccess;
use crate::Error;

/// The registry as seen from this node.
#[derive(Clone, Debug)]
pub struct NodeView {
    /// This node's Node name.
    pub name: String,
    /// Its IPv4 pod range, if the controller-manager set one.
    pub pod_cidr: Option<Ipv4Net>,
    /// Its annotations (all of them).
    pub annotations: BTreeMap<String, String>,
    /// The record its annotations make (as its peers read it), if they make one.
    pub record: Option<NodeRecord>,
    /// Every other Node that is a peer: name, IPv4 pod range, record.
    pub peers: Vec<(String, Ipv4Net, NodeRecord)>,
}

/// Reads this node's Node and every peer, on a one-thread runtime (the operator command is
/// not async); every call bounded as the agent's are.
pub fn node_view(cfg: &OverlayConfig) -> Result<NodeView, Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Overlay(overlay::Error::Runtime(e.to_string())))?;
    rt.block_on(async {
        let access = ApiAccess::from_config(cfg).await?;
        let name = access.node_name().to_string();
        let own = access.own_node().await?.ok_or_else(|| Error::Node {
            node: name.clone(),
            problem: "no such Node".into(),
        })?;
        let list = access.list_nodes().await?;
        let peers = list
            .items
            .iter()
            .filter(|n| n.metadata.name.as_deref() != Some(name.as_str()))
            .filter_map(|n| {
                let (subnet, record) = node_record(n)?;
                Some((n.metadata.name.clone()?, subnet, record))
            })
            .collect();
        Ok(NodeView {
            pod_cidr: pod_cidrs(&own).ok().and_then(|(v4, _)| v4),
            annotations: own.metadata.annotations.clone().unwrap_or_default(),
            record: node_record(&own).map(|(_, r)| r),
            peers,
            name,
        })
    })
}
