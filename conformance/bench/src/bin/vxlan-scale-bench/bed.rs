//! The test bed: an underlay, etcd on a tmpfs, the gateway the bench writes through, fresh
//! nodes for the agents, and the fake peers' records.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use cni_testkit::etcd::EtcdServer;
use cni_testkit::etcd_gateway::{kv_requests, metric, EtcdGateway};
use cni_testkit::netns::Netns;
use cni_testkit::overlay::{records, subnet_key, OverlayNode, Peer, Underlay};
use ipnet::Ipv4Net;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde_json::json;
use tempfile::TempDir;

use crate::args::MAX_PEERS;

/// The agents' cluster range: room for 65,280 fake /24 subnets (10.1.0.0 up) besides the
/// agent's own, which it leases first-free from 10.0.0.0/24.
const SCALE_CLUSTER_CIDR: &str = "10.0.0.0/8";
/// Size of the tmpfs holding etcd's data (etcd preallocates 64 MB WAL segments).
const TMPFS_SIZE: &str = "size=1g,mode=0700";

/// Fake peer `i`: subnet 10.(1 + i/256).(i % 256).0/24, underlay 198.18.0.0/15 + i + 1
/// (RFC 2544's benchmark range; nothing has these addresses), MAC 0e:5c:<i, 4 bytes>.
pub fn fake_peer(i: usize) -> Peer {
    assert!(i < MAX_PEERS, "fake peer {i} is past {MAX_PEERS}");
    let i = u32::try_from(i).expect("fits u32");
    let third = u8::try_from(1 + i / 256).expect("below 255");
    let fourth = u8::try_from(i % 256).expect("below 256");
    let [a, b, c, d] = i.to_be_bytes();
    Peer {
        subnet: Ipv4Net::new(Ipv4Addr::new(10, third, fourth, 0), 24).expect("valid /24"),
        underlay: IpAddr::V4(Ipv4Addr::from(
            u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i + 1,
        )),
        vtep_mac: format!("0e:5c:{a:02x}:{b:02x}:{c:02x}:{d:02x}"),
    }
}

/// A tmpfs mounted on a fresh temporary directory; unmounted (then the directory removed)
/// when dropped.
pub struct Tmpfs {
    pub dir: TempDir,
}

impl Tmpfs {
    pub fn new() -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("cnit-scale-tmpfs-")
            .tempdir()
            .expect("create the tmpfs mount point");
        mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(TMPFS_SIZE),
        )
        .unwrap_or_else(|e| panic!("mount tmpfs on {}: {e}", dir.path().display()));
        Tmpfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Never panics. etcd is gone by now (the bed drops it first); a lazy unmount still
        // detaches the tmpfs if something kept a file open.
        if let Err(e) = umount2(self.dir.path(), MntFlags::empty()) {
            eprintln!(
                "warning: umount {}: {e}; detaching",
                self.dir.path().display()
            );
            let _ = umount2(self.dir.path(), MntFlags::MNT_DETACH);
        }
    }
}

/// The underlay, etcd on a tmpfs, and a gateway connection to it. Fields drop in order:
/// the connection, etcd (killed), the underlay, then the tmpfs is unmounted.
pub struct Bed {
    pub gw: EtcdGateway,
    pub etcd: EtcdServer,
    pub underlay: Underlay,
    pub tmpfs: Tmpfs,
    pub next_host: u8,
    pub lease_ttl: u64,
}

impl Bed {
    pub fn new(lease_ttl: u64) -> Bed {
        let tmpfs = Tmpfs::new();
        let underlay = Underlay::new();
        let netns = Netns::new("cnit-etcd-");
        let addr = underlay.addr(cni_testkit::overlay::ETCD_HOST);
        underlay.connect(&netns, addr);
        let etcd = EtcdServer::start_in(netns, addr, tmpfs.path());
        let gw = EtcdGateway::connect(&etcd);
        Bed {
            gw,
            etcd,
            underlay,
            tmpfs,
            next_host: 1,
            lease_ttl,
        }
    }

    /// A fresh node (its own namespace and underlay address) whose agent (not started yet)
    /// uses `prefix` and `resync` seconds.
    pub fn node(&mut self, prefix: &str, resync: u64) -> OverlayNode {
        let host = self.next_host;
        self.next_host += 1;
        assert!(host < cni_testkit::overlay::ETCD_HOST, "out of hosts");
        let fields = json!({
            "etcdEndpoints": [self.etcd.endpoint()],
            "etcdPrefix": prefix,
            "clusterCIDR": SCALE_CLUSTER_CIDR,
            "leaseTTL": self.lease_ttl,
            "resyncSeconds": resync,
        });
        OverlayNode::new(&self.underlay, host, &fields)
    }

    /// Writes the records of `peers` under `prefix`, many to a transaction.
    pub fn put_peers<'a>(&mut self, prefix: &str, peers: impl IntoIterator<Item = &'a Peer>) {
        let kvs: Vec<(String, String)> = peers
            .into_iter()
            .map(|p| (subnet_key(prefix, p.subnet), p.record_json(1)))
            .collect();
        self.gw.put_all(&kvs);
    }

    /// etcd's count of Range requests so far (every one of them an agent's: the bench only
    /// writes through the gateway, and reads with etcdctl only outside measured windows).
    pub fn range_requests(&mut self) -> u64 {
        kv_requests(&self.gw.metrics(), "Range")
    }

    /// etcd's own CPU time so far (`process_cpu_seconds_total`): what the agent's reads cost
    /// the cluster's side, besides the bench's writes.
    pub fn etcd_cpu(&mut self) -> Duration {
        let secs = metric(&self.gw.metrics(), "process_cpu_seconds_total", &[]).unwrap_or(0.0);
        Duration::from_secs_f64(secs.max(0.0))
    }

    /// Whether etcd holds exactly `peers` under `prefix` and one record of the agent at
    /// `agent_ip`: its own, still there, so its lease kept being renewed through the work.
    pub fn etcd_holds(&self, prefix: &str, peers: &BTreeSet<Peer>, agent_ip: IpAddr) -> bool {
        records(&self.etcd, prefix).is_some_and(|r| {
            let (own, fakes): (Vec<Peer>, Vec<Peer>) =
                r.into_iter().partition(|p| p.underlay == agent_ip);
            own.len() == 1 && fakes.into_iter().collect::<BTreeSet<_>>() == *peers
        })
    }
}

/// Brings the records under `prefix` from `current` to exactly `want` (deletes one by one,
/// puts in transactions).
pub fn set_records(bed: &mut Bed, prefix: &str, current: &BTreeSet<Peer>, want: &BTreeSet<Peer>) {
    for p in current.difference(want) {
        bed.gw.delete(&subnet_key(prefix, p.subnet));
    }
    let add: Vec<&Peer> = want.difference(current).collect();
    bed.put_peers(prefix, add);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_peers_are_distinct_and_outside_the_agents_subnet() {
        let a = fake_peer(0);
        assert_eq!(a.subnet.to_string(), "10.1.0.0/24");
        assert_eq!(a.underlay.to_string(), "198.18.0.1");
        assert_eq!(a.vtep_mac, "0e:5c:00:00:00:00");
        let b = fake_peer(MAX_PEERS - 1);
        assert_eq!(b.subnet.to_string(), "10.254.255.0/24");
        let set: BTreeSet<Ipv4Net> = (0..3000).map(|i| fake_peer(i).subnet).collect();
        assert_eq!(set.len(), 3000);
    }
}
