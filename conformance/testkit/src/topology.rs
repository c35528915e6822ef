//! Networks around a node that pods send traffic to, for observing masquerade: an "outside"
//! network (172.31.0.0/24, beyond the cluster) and an "inside" one (10.250.0.0/24: in the
//! cluster's 10.0.0.0/8, outside any test podCIDR), each a namespace joined to the node by a
//! veth.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::netns::{Netns, Node};

/// The node's address on the outside network.
pub const OUTSIDE_NODE_ADDR: Ipv4Net = net(Ipv4Addr::new(172, 31, 0, 1), 24);
/// The outside host's address.
pub const OUTSIDE_HOST_ADDR: Ipv4Net = net(Ipv4Addr::new(172, 31, 0, 2), 24);
/// The node's address on the inside network.
pub const INSIDE_NODE_ADDR: Ipv4Net = net(Ipv4Addr::new(10, 250, 0, 1), 24);
/// The inside host's address.
pub const INSIDE_HOST_ADDR: Ipv4Net = net(Ipv4Addr::new(10, 250, 0, 2), 24);

const fn net(addr: Ipv4Addr, prefix: u8) -> Ipv4Net {
    match Ipv4Net::new(addr, prefix) {
        Ok(net) => net,
        Err(_) => panic!("invalid prefix length"),
    }
}

/// An outside and an inside host, each joined to a node by a veth, with default routes back
/// through the node (so reverse-path filtering accepts un-masqueraded sources).
pub struct NodeNeighbours {
    /// The host beyond the cluster, at [`OUTSIDE_HOST_ADDR`].
    pub outside: Netns,
    /// The in-cluster host, at [`INSIDE_HOST_ADDR`].
    pub inside: Netns,
}

impl NodeNeighbours {
    /// Creates both hosts and links them to `node` (links `out0` and `in0` on the node).
    pub fn connect(node: &Node) -> NodeNeighbours {
        let outside = Netns::new("cnit-outside-");
        let inside = Netns::new("cnit-inside-");
        let node_ns = node.netns();
        node_ns.connect_veth(
            "out0",
            OUTSIDE_NODE_ADDR,
            &outside,
            "eth0",
            OUTSIDE_HOST_ADDR,
        );
        node_ns.connect_veth("in0", INSIDE_NODE_ADDR, &inside, "eth0", INSIDE_HOST_ADDR);
        outside.ip_ok(&[
            "route",
            "add",
            "default",
            "via",
            &OUTSIDE_NODE_ADDR.addr().to_string(),
        ]);
        inside.ip_ok(&[
            "route",
            "add",
            "default",
            "via",
            &INSIDE_NODE_ADDR.addr().to_string(),
        ]);
        NodeNeighbours { outside, inside }
    }
}
