//! The peers this node programs: what etcd's records ask for, what is programmed now, and the
//! deltas between them, so a watch event touches only the peers it names.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::Ipv4Net;
use netsetup::vxlan::{PeerEntry, PeerEntry6};

use crate::dataplane::{peer_entry, peer_entry6};
use crate::registry::{Change, NodeRecord};

/// How one peer changes: absent before (`old` None), absent after (`new` None), or both;
/// on a dual-stack network its IPv6 entry as well (`old6`, `new6`, on the IPv6 device).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delta {
    /// The record's IPv4 subnet (its key).
    pub key: Ipv4Net,
    /// What is programmed now.
    pub old: Option<PeerEntry>,
    /// What should be.
    pub new: Option<PeerEntry>,
    /// The IPv6 entry programmed now.
    pub old6: Option<PeerEntry6>,
    /// The IPv6 entry that should be.
    pub new6: Option<PeerEntry6>,
}

/// The peers of a full list: IPv4 entries, and IPv6 ones on a dual-stack network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peers {
    /// On the IPv4 device.
    pub v4: Vec<PeerEntry>,
    /// On the IPv6 device.
    pub v6: Vec<PeerEntry6>,
}

/// Which records are this node's peers, and what is programmed for them.
#[derive(Debug)]
pub struct PeerTable {
    me: IpAddr,
    /// The IPv6 device's underlay address, on a dual-stack network.
    me6: Option<IpAddr>,
    vni: u32,
    programmed: HashMap<Ipv4Net, PeerEntry>,
    /// IPv6 entries, by the IPv4 subnet of the record (the key's first part).
    programmed6: HashMap<Ipv4Net, PeerEntry6>,
}

impl PeerTable {
    /// The table of the node whose underlay address is `me`, on VXLAN network `vni`; nothing
    /// programmed yet.
    pub fn new(me: IpAddr, vni: u32) -> PeerTable {
        PeerTable {
            me,
            me6: None,
            vni,
            programmed: HashMap::new(),
            programmed6: HashMap::new(),
        }
    }

    /// The table of a dual-stack node whose IPv6 device's underlay address is `me6`.
    pub fn with_ipv6(mut self, me6: IpAddr) -> PeerTable {
        self.me6 = Some(me6);
        self
    }

    /// The IPv6 entry a record makes, if it is a peer with an IPv6 subnet, a
    /// `BackendV6Data` of our VNI and an underlay address of our IPv6 device's family.
    pub fn peer6_of(&self, subnet: Ipv4Net, record: Option<&NodeRecord>) -> Option<PeerEntry6> {
        let me6 = self.me6?;
        let r = record?;
        if r.is_node(self.me) {
            return None;
        }
        let (subnet6, data) = (r.ipv6_subnet?, r.backend_v6.as_ref()?);
        if data.vni != self.vni {
            return None;
        }
        match r.underlay_like(me6) {
            Some(ip) => peer_entry6(subnet6, ip, &data.vtep_mac),
            None => {
                log::debug!(
                    "peer {subnet} ({subnet6}) has no underlay address of the family of {me6}: \
                     its IPv6 subnet is skipped"
                );
                None
            }
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
    pub fn peers_of(&self, records: &[(Ipv4Net, NodeRecord)]) -> Peers {
        Peers {
            v4: records
                .iter()
                .filter_map(|(s, r)| self.peer_of(*s, Some(r)))
                .collect(),
            v6: records
                .iter()
                .filter_map(|(s, r)| self.peer6_of(*s, Some(r)))
                .collect(),
        }
    }

    /// The deltas that watch changes ask for, against what is programmed: several changes of
    /// one subnet in a burst collapse into the last, and a change that leaves a peer as it is
    /// yields nothing.
    pub fn deltas(&self, changes: &[Change]) -> Vec<Delta> {
        type Wanted = (Option<PeerEntry>, Option<PeerEntry6>);
        let mut last: BTreeMap<Ipv4Net, Wanted> = BTreeMap::new();
        for c in changes {
            match c {
                Change::Put(s, r) => last.insert(
                    s.trunc(),
                    (self.peer_of(*s, r.as_ref()), self.peer6_of(*s, r.as_ref())),
                ),
                Change::Delete(s) => last.insert(s.trunc(), (None, None)),
            };
        }
        last.into_iter()
            .filter_map(|(subnet, (new, new6))| {
                let old = self.programmed.get(&subnet).copied();
                let old6 = self.programmed6.get(&subnet).copied();
                (old != new || old6 != new6).then_some(Delta {
                    key: subnet,
                    old,
                    new,
                    old6,
                    new6,
                })
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
            match d.new6 {
                Some(p) => self.programmed6.insert(d.key, p),
                None => self.programmed6.remove(&d.key),
            };
        }
    }

    /// Records that exactly `peers` are programmed (after a full reconcile). `records` are
    /// the records they came from (the IPv6 entries are kept by their record's IPv4 subnet).
    pub fn replaced(&mut self, records: &[(Ipv4Net, NodeRecord)], peers: &Peers) {
        self.programmed = peers.v4.iter().map(|p| (p.subnet, *p)).collect();
        self.programmed6 = records
            .iter()
            .filter_map(|(s, r)| Some((s.trunc(), self.peer6_of(*s, Some(r))?)))
            .collect();
    }

    /// How many peers are programmed.
    pub fn len(&self) -> usize {
        self.programmed.len()
    }

    /// Whether no peer is programmed.
    pub fn is_empty(&self) -> bool {
        self.programmed.is_empty()
    }

    /// How many IPv6 peer entries are programmed.
    pub fn len6(&self) -> usize {
        self.programmed6.len()
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

    #[test]
    fn ipv6_entries_follow_the_key_and_backend_v6_data() {
        let dual = |ip: &str, ip6: &str, n: u8, subnet6: &str| {
            let mut r = NodeRecord::new(ip.parse().unwrap(), 1, format!("aa:00:00:00:00:{n:02x}"))
                .with_ipv6_device(ip6.parse().unwrap(), format!("aa:00:00:00:01:{n:02x}"));
            r.ipv6_subnet = Some(subnet6.parse().unwrap());
            r
        };
        let mut t = PeerTable::new("172.30.0.1".parse().unwrap(), 1)
            .with_ipv6("fd00:30::1".parse().unwrap());
        let a = net("10.244.2.0/24");
        let b = net("10.244.3.0/24");
        let d = t.deltas(&[
            Change::Put(
                a,
                Some(dual("172.30.0.2", "fd00:30::2", 2, "fd00:10:244:2::/64")),
            ),
            // A peer of ours without IPv6 (an older release): IPv4 only.
            Change::Put(b, Some(rec("172.30.0.3", "aa:00:00:00:00:03"))),
        ]);
        assert_eq!(d.len(), 2, "{d:?}");
        let a6 = d
            .iter()
            .find(|d| d.key == a)
            .and_then(|d| d.new6)
            .expect("IPv6 entry");
        assert_eq!(a6.subnet.to_string(), "fd00:10:244:2::/64");
        assert_eq!(a6.vtep_ip.to_string(), "fd00:10:244:2::");
        assert_eq!(a6.vtep_mac, [0xaa, 0, 0, 0, 1, 2]);
        assert_eq!(
            a6.underlay.to_string(),
            "fd00:30::2",
            "PublicIPv6, as flannel's FDB"
        );
        assert!(d
            .iter()
            .find(|d| d.key == b)
            .is_some_and(|d| d.new6.is_none()));
        t.applied(&d);
        assert_eq!((t.len(), t.len6()), (2, 1));

        // The IPv6 subnet changes (a new key for the same IPv4 subnet): one delta, old and
        // new IPv6 entries; deleting the record takes both entries away.
        let d = t.deltas(&[Change::Put(
            a,
            Some(dual("172.30.0.2", "fd00:30::2", 2, "fd00:10:244:9::/64")),
        )]);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].old, d[0].new, "the IPv4 entry stays");
        assert_ne!(d[0].old6, d[0].new6);
        t.applied(&d);
        let d = t.deltas(&[Change::Delete(a)]);
        assert!(d[0].new.is_none() && d[0].new6.is_none() && d[0].old6.is_some());
        t.applied(&d);
        assert_eq!((t.len(), t.len6()), (1, 0));

        // A node without the IPv6 table (IPv4 only) programs no IPv6 entry.
        let plain = PeerTable::new("172.30.0.1".parse().unwrap(), 1);
        let d = plain.deltas(&[Change::Put(
            a,
            Some(dual("172.30.0.2", "fd00:30::2", 2, "fd00:10:244:2::/64")),
        )]);
        assert!(d[0].new6.is_none());
    }
}
