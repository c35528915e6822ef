//! The peers this node programs: what etcd's records ask for, what is programmed now, and the
//! deltas between them, so a watch event touches only the peers it names.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::Ipv4Net;
use netsetup::vxlan::PeerEntry;

use crate::dataplane::peer_entry;
use crate::registry::{Change, NodeRecord};

/// How one peer changes: absent before (`old` None), absent after (`new` None), or both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delta {
    /// What is programmed now.
    pub old: Option<PeerEntry>,
    /// What should be.
    pub new: Option<PeerEntry>,
}

/// Which records are this node's peers, and what is programmed for them.
#[derive(Debug)]
pub struct PeerTable {
    me: IpAddr,
    vni: u32,
    programmed: HashMap<Ipv4Net, PeerEntry>,
}

impl PeerTable {
    /// The table of the node whose underlay address is `me`, on VXLAN network `vni`; nothing
    /// programmed yet.
    pub fn new(me: IpAddr, vni: u32) -> PeerTable {
        PeerTable {
            me,
            vni,
            programmed: HashMap::new(),
        }
    }

    /// The peer a record makes, if it is one: not this node, on our VNI, with an underlay
    /// address of our family (a VXLAN device encapsulates in one family only) and a valid
    /// MAC.
    pub fn peer_of(&self, subnet: Ipv4Net, record: Option<&NodeRecord>) -> Option<PeerEntry> {
        let r = record?;
        if r.is_node(self.me) || r.backend.vni != self.vni {
            return None;
        }
        match r.underlay_like(self.me) {
            Some(ip) => peer_entry(subnet, ip, &r.backend.vtep_mac),
            None => {
                log::debug!(
                    "peer {subnet} has no underlay address of the family of {}: skipped",
                    self.me
                );
                None
            }
        }
    }

    /// The peers of a full list of records.
    pub fn peers_of(&self, records: &[(Ipv4Net, NodeRecord)]) -> Vec<PeerEntry> {
        records
            .iter()
            .filter_map(|(s, r)| self.peer_of(*s, Some(r)))
            .collect()
    }

    /// The deltas that watch changes ask for, against what is programmed: several changes of
    /// one subnet in a burst collapse into the last, and a change that leaves a peer as it is
    /// yields nothing.
    pub fn deltas(&self, changes: &[Change]) -> Vec<Delta> {
        let mut last: BTreeMap<Ipv4Net, Option<PeerEntry>> = BTreeMap::new();
        for c in changes {
            match c {
                Change::Put(s, r) => last.insert(s.trunc(), self.peer_of(*s, r.as_ref())),
                Change::Delete(s) => last.insert(s.trunc(), None),
            };
        }
        last.into_iter()
            .filter_map(|(subnet, new)| {
                let old = self.programmed.get(&subnet).copied();
                (old != new).then_some(Delta { old, new })
            })
            .collect()
    }

    /// Records that `deltas` are now programmed.
    pub fn applied(&mut self, deltas: &[Delta]) {
        for d in deltas {
            match (d.old, d.new) {
                (_, Some(p)) => {
                    self.programmed.insert(p.subnet, p);
                }
                (Some(p), None) => {
                    self.programmed.remove(&p.subnet);
                }
                (None, None) => {}
            }
        }
    }

    /// Records that exactly `peers` are programmed (after a full reconcile).
    pub fn replaced(&mut self, peers: &[PeerEntry]) {
        self.programmed = peers.iter().map(|p| (p.subnet, *p)).collect();
    }

    /// How many peers are programmed.
    pub fn len(&self) -> usize {
        self.programmed.len()
    }

    /// Whether no peer is programmed.
    pub fn is_empty(&self) -> bool {
        self.programmed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ip: &str, mac: &str) -> NodeRecord {
        NodeRecord::new(ip.parse().unwrap(), 1, mac.into())
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn deltas_touch_only_the_named_peers_and_collapse_bursts() {
        let mut t = PeerTable::new("172.30.0.1".parse().unwrap(), 1);
        let a = net("10.244.2.0/24");
        let b = net("10.244.3.0/24");
        let mine = net("10.244.1.0/24");
        let d = t.deltas(&[
            Change::Put(a, Some(rec("172.30.0.2", "aa:00:00:00:00:02"))),
            Change::Put(b, Some(rec("172.30.0.3", "aa:00:00:00:00:03"))),
            Change::Put(mine, Some(rec("172.30.0.1", "aa:00:00:00:00:01"))),
        ]);
        assert_eq!(d.len(), 2, "our own record is no peer: {d:?}");
        assert!(d.iter().all(|d| d.old.is_none() && d.new.is_some()));
        t.applied(&d);
        assert_eq!(t.len(), 2);

        // The same record again is no change; a new MAC is one; put then delete is a removal.
        assert!(t
            .deltas(&[Change::Put(a, Some(rec("172.30.0.2", "aa:00:00:00:00:02")))])
            .is_empty());
        let d = t.deltas(&[
            Change::Put(a, Some(rec("172.30.0.2", "aa:00:00:00:00:22"))),
            Change::Put(b, Some(rec("172.30.0.3", "aa:00:00:00:00:33"))),
            Change::Delete(b),
        ]);
        assert_eq!(d.len(), 2, "{d:?}");
        let a_delta = d.iter().find(|d| d.new.is_some()).unwrap();
        assert_eq!(a_delta.old.unwrap().vtep_mac, [0xaa, 0, 0, 0, 0, 2]);
        assert_eq!(a_delta.new.unwrap().vtep_mac, [0xaa, 0, 0, 0, 0, 0x22]);
        let b_delta = d.iter().find(|d| d.new.is_none()).unwrap();
        assert_eq!(b_delta.old.unwrap().subnet, b);
        t.applied(&d);
        assert_eq!(t.len(), 1);

        // A malformed record, another VNI, or a delete of an unknown subnet.
        let mut other_vni = rec("172.30.0.4", "aa:00:00:00:00:04");
        other_vni.backend.vni = 7;
        let d = t.deltas(&[
            Change::Put(a, None),
            Change::Put(net("10.244.4.0/24"), Some(other_vni)),
            Change::Delete(net("10.244.9.0/24")),
        ]);
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(d[0].new.is_none() && d[0].old.is_some());
        t.applied(&d);
        assert!(t.is_empty());
    }
}
