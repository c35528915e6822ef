//! Node subnets in etcd v3, in flannel's record format: leasing with compare-and-swap, lease
//! renewal, listing and watching peers.
//!
//! Keys: `<prefix>/config` holds `{"Network", "SubnetLen", "Backend": {"Type": "vxlan"}}`;
//! `<prefix>/subnets/<a.b.c.d>-<len>` holds `{"PublicIP", "BackendType": "vxlan",
//! "BackendData": {"VNI", "VtepMAC"}}`, attached to the owner's etcd lease so it disappears
//! when the node stops renewing it. A node on an IPv6 underlay also writes `PublicIPv6`, the
//! field of flannel's `LeaseAttrs` for it, with `PublicIP` 0.0.0.0 (what flannel's `ip.IP4`
//! holds when a node has no IPv4 address).
//!
//! Dual-stack (`enableIPv6`, flannel's `EnableIPv6`): the key names both subnets,
//! `<prefix>/subnets/<a.b.c.d>-<len>&<x:x::>-<len>` (flannel's `MakeSubnetKey`, read back as
//! its `ParseSubnetKey` does), the record adds `BackendV6Data` (`VNI`, and the `VtepMAC` of
//! the IPv6 device) and `PublicIPv6` (the IPv6 device's underlay address, when it has one);
//! `<prefix>/config` adds `EnableIPv6`, `IPv6Network`, `IPv6SubnetLen` (flannel's
//! `subnet.Config`). flannel's etcd manager always leases an IPv4 subnet too, so does this.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
    WatchResponse, WatchStream,
};
use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::Error;

/// One node's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// IPv4 underlay address: the node's identity on an IPv4 underlay; 0.0.0.0 on IPv6.
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    /// IPv6 underlay address: the node's identity on an IPv6 underlay.
    #[serde(
        rename = "PublicIPv6",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub public_ipv6: Option<Ipv6Addr>,
    /// Always "vxlan".
    #[serde(rename = "BackendType")]
    pub backend_type: String,
    /// VNI and VTEP MAC.
    #[serde(rename = "BackendData")]
    pub backend: VxlanData,
    /// VNI and VTEP MAC of the node's IPv6 device (dual-stack nodes only).
    #[serde(
        rename = "BackendV6Data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_v6: Option<VxlanData>,
    /// The node's IPv6 pod subnet: not a field of the JSON but the `&<v6>-<len>` part of the
    /// record's key, filled in when the record is read (as flannel's `ParseSubnetKey` gives
    /// its lease `IPv6Subnet`).
    #[serde(skip)]
    pub ipv6_subnet: Option<Ipv6Net>,
}

/// The VXLAN part of a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanData {
    /// VXLAN network identifier.
    #[serde(rename = "VNI")]
    pub vni: u32,
    /// VTEP MAC, `aa:bb:cc:dd:ee:ff`.
    #[serde(rename = "VtepMAC")]
    pub vtep_mac: String,
}

impl NodeRecord {
    /// The record a node on underlay address `underlay` publishes.
    pub fn new(underlay: IpAddr, vni: u32, vtep_mac: String) -> NodeRecord {
        let (public_ip, public_ipv6) = match underlay {
            IpAddr::V4(v4) => (v4, None),
            IpAddr::V6(v6) => (Ipv4Addr::UNSPECIFIED, Some(v6)),
        };
        NodeRecord {
            public_ip,
            public_ipv6,
            backend_type: "vxlan".into(),
            backend: VxlanData { vni, vtep_mac },
            backend_v6: None,
            ipv6_subnet: None,
        }
    }

    /// This record with the node's IPv6 device: its MAC in `BackendV6Data`, and its underlay
    /// address as `PublicIPv6` when that is an IPv6 one (flannel's IPv6 FDB entries point at
    /// `PublicIPv6`; an IPv6 device over an IPv4 underlay is reached at `PublicIP`).
    pub fn with_ipv6_device(mut self, underlay: IpAddr, vtep_mac: String) -> NodeRecord {
        if let IpAddr::V6(v6) = underlay {
            self.public_ipv6 = Some(v6);
        }
        self.backend_v6 = Some(VxlanData {
            vni: self.backend.vni,
            vtep_mac,
        });
        self
    }

    /// The node's underlay address of the family of `like` (the family this node's VXLAN
    /// device speaks), if it has one.
    pub fn underlay_like(&self, like: IpAddr) -> Option<IpAddr> {
        match like {
            IpAddr::V4(_) => {
                (!self.public_ip.is_unspecified()).then_some(IpAddr::V4(self.public_ip))
            }
            IpAddr::V6(_) => self.public_ipv6.map(IpAddr::V6),
        }
    }

    /// Whether this is the record of the node whose underlay address is `node`.
    pub fn is_node(&self, node: IpAddr) -> bool {
        self.underlay_like(node) == Some(node)
    }

    /// The address the record identifies its node by: IPv6 when it has no IPv4 one.
    pub fn identity(&self) -> IpAddr {
        match (self.public_ip.is_unspecified(), self.public_ipv6) {
            (true, Some(v6)) => IpAddr::V6(v6),
            _ => IpAddr::V4(self.public_ip),
        }
    }
}

/// A subnet held by this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The subnet.
    pub subnet: Ipv4Net,
    /// The IPv6 subnet, on a dual-stack network.
    pub ipv6_subnet: Option<Ipv6Net>,
    /// The etcd lease id the record is attached to.
    pub id: i64,
}

/// What a node asks of the registry: its IPv4 subnets, and on a dual-stack network its IPv6
/// ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ranges {
    /// The cluster's IPv4 range.
    pub cluster: Ipv4Net,
    /// Its node subnets' prefix length.
    pub subnet_len: u8,
    /// The cluster's IPv6 range and its node subnets' prefix length (`enableIPv6`).
    pub ipv6: Option<(Ipv6Net, u8)>,
}

impl Ranges {
    /// Whether a stored (IPv4, IPv6) subnet pair is one these ranges would lease.
    fn fits(&self, subnet: Ipv4Net, subnet6: Option<Ipv6Net>) -> bool {
        let v4 = subnet.prefix_len() == self.subnet_len && self.cluster.contains(&subnet);
        let v6 = match (self.ipv6, subnet6) {
            (None, None) => true,
            (Some((c, len)), Some(s)) => s.prefix_len() == len && c.contains(&s),
            _ => false,
        };
        v4 && v6
    }
}

/// A subnet key as stored, with its parsed record.
struct Stored {
    subnet: Ipv4Net,
    subnet6: Option<Ipv6Net>,
    node: Option<NodeRecord>,
    mod_revision: i64,
    create_revision: i64,
}

/// A connection to etcd under one prefix.
pub struct Registry {
    client: Client,
    prefix: String,
}

/// `<prefix>/subnets/10.244.1.0-24`.
pub fn subnet_key(prefix: &str, subnet: Ipv4Net) -> String {
    format!(
        "{}/subnets/{}-{}",
        prefix.trim_end_matches('/'),
        subnet.network(),
        subnet.prefix_len()
    )
}

/// The key of a node's record: [`subnet_key`] alone, or flannel's dual-stack form
/// `<prefix>/subnets/10.244.1.0-24&fd00:10:244:1::-64` (`MakeSubnetKey`: the IPv6 network
/// address in Go's `net.IP` text, which is RFC 5952's, as Rust prints it).
pub fn lease_key(prefix: &str, subnet: Ipv4Net, subnet6: Option<Ipv6Net>) -> String {
    let v4 = subnet_key(prefix, subnet);
    match subnet6 {
        Some(s6) => format!("{v4}&{}-{}", s6.network(), s6.prefix_len()),
        None => v4,
    }
}

/// Reads a key as flannel's `ParseSubnetKey` does
/// (`(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$`): the IPv4 subnet, and the IPv6 one
/// when the key has it.
fn parse_subnet_key(prefix: &str, key: &str) -> Option<(Ipv4Net, Option<Ipv6Net>)> {
    let rest = key.strip_prefix(&format!("{}/subnets/", prefix.trim_end_matches('/')))?;
    let (v4, v6) = match rest.split_once('&') {
        Some((v4, v6)) => (v4, Some(v6)),
        None => (rest, None),
    };
    let (ip, len) = v4.split_once('-')?;
    let subnet = Ipv4Net::new(ip.parse().ok()?, len.parse().ok()?).ok()?;
    let subnet6 = match v6 {
        None => None,
        Some(v6) => {
            let (ip, len) = v6.rsplit_once('-')?;
            if !ip
                .chars()
                .all(|c| c == ':' || c.is_ascii_digit() || ('a'..='f').contains(&c))
            {
                return None;
            }
            Some(Ipv6Net::new(ip.parse().ok()?, len.parse().ok()?).ok()?)
        }
    };
    Some((subnet, subnet6))
}

/// A record read from etcd, with the IPv6 subnet of its key.
fn parse_record(subnet: Ipv4Net, subnet6: Option<Ipv6Net>, value: &[u8]) -> Option<NodeRecord> {
    serde_json::from_slice::<NodeRecord>(value)
        .map(|mut r| {
            r.ipv6_subnet = subnet6;
            r
        })
        .map_err(|e| log::warn!("ignoring malformed record for {subnet}: {e}"))
        .ok()
}

/// One change of a subnet key, as the watch reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The key was written: its record, or None when the value does not parse (the subnet is
    /// then no usable peer).
    Put(Ipv4Net, Option<NodeRecord>),
    /// The key was deleted (released, or its lease expired).
    Delete(Ipv4Net),
}

/// What one watch response says.
#[derive(Debug, Default)]
pub struct WatchNews {
    /// The subnet changes, in order, each with the revision it happened at.
    pub changes: Vec<(i64, Change)>,
    /// The revision everything up to which has now been seen (the last event's, or a
    /// progress notification's header), if the response tells.
    pub revision: Option<i64>,
    /// etcd ended the watch: its start revision was compacted away (a full list is needed).
    pub compacted: bool,
    /// etcd ended the watch for another reason (it can be resumed).
    pub canceled: bool,
}

/// Reads one watch response: changes of subnet keys (other keys are ignored) and the
/// revision seen. The header of a "created" response is not taken as progress: events
/// between the watch's start revision and it are still to come.
pub fn watch_news(prefix: &str, resp: &WatchResponse) -> WatchNews {
    let mut news = WatchNews {
        compacted: resp.canceled() && resp.compact_revision() > 0,
        canceled: resp.canceled(),
        ..WatchNews::default()
    };
    for ev in resp.events() {
        let Some(kv) = ev.kv() else { continue };
        news.revision = news.revision.max(Some(kv.mod_revision()));
        let Some((subnet, subnet6)) = kv.key_str().ok().and_then(|k| parse_subnet_key(prefix, k))
        else {
            continue;
        };
        news.changes.push((
            kv.mod_revision(),
            match ev.event_type() {
                EventType::Put => Change::Put(subnet, parse_record(subnet, subnet6, kv.value())),
                EventType::Delete => Change::Delete(subnet),
            },
        ));
    }
    if resp.events().is_empty() && !resp.created() && !resp.canceled() {
        news.revision = resp.header().map(|h| h.revision());
    }
    news
}

impl Registry {
    /// A registry over a connected client, under `prefix`.
    pub fn new(client: Client, prefix: &str) -> Registry {
        Registry {
            client,
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    /// Writes the network config if absent; fails if another cluster CIDR (or IPv6 network)
    /// is recorded there. A record without IPv6 gets this node's IPv6 fields added (a cluster
    /// turned dual-stack), so flanneld nodes reading it lease IPv6 subnets too.
    pub async fn ensure_network_config(&mut self, ranges: &Ranges) -> Result<(), Error> {
        let key = format!("{}/config", self.prefix);
        let mut want = serde_json::json!({"Network": ranges.cluster.to_string(),
                                          "SubnetLen": ranges.subnet_len,
                                          "Backend": {"Type": "vxlan"}});
        if let Some((net6, len6)) = ranges.ipv6 {
            want["EnableIPv6"] = true.into();
            want["IPv6Network"] = net6.to_string().into();
            want["IPv6SubnetLen"] = len6.into();
        }
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), want.to_string(), None)])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let resp = self.client.txn(txn).await?;
        if resp.succeeded() {
            return Ok(());
        }
        let existing = self.client.get(key.as_str(), None).await?;
        let Some(kv) = existing.kvs().first() else {
            return Ok(());
        };
        let mut v: serde_json::Value = serde_json::from_slice(kv.value()).unwrap_or_default();
        let cluster = ranges.cluster;
        if v["Network"].as_str() != Some(cluster.to_string().as_str()) {
            return Err(Error::Conflict(format!(
                "{key} says Network {}, this node is configured with {cluster}",
                v["Network"]
            )));
        }
        let Some((net6, len6)) = ranges.ipv6 else {
            return Ok(());
        };
        let recorded6 = v["IPv6Network"]
            .as_str()
            .and_then(|t| t.parse::<Ipv6Net>().ok());
        match recorded6 {
            Some(r) if r == net6 && v["EnableIPv6"] == true => Ok(()),
            Some(r) if r != net6 => Err(Error::Conflict(format!(
                "{key} says IPv6Network {r}, this node is configured with {net6}"
            ))),
            _ => {
                v["EnableIPv6"] = true.into();
                v["IPv6Network"] = net6.to_string().into();
                v["IPv6SubnetLen"] = len6.into();
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        key.as_str(),
                        CompareOp::Equal,
                        kv.mod_revision(),
                    )])
                    .and_then([TxnOp::put(key.as_str(), v.to_string(), None)]);
                // Lost to another writer: whatever it wrote is read again next time.
                if self.client.txn(txn).await?.succeeded() {
                    log::info!("{key}: IPv6Network {net6} added (the cluster is dual-stack now)");
                }
                Ok(())
            }
        }
    }

    /// Every key under `<prefix>/subnets/` that names a subnet, with its record when the
    /// value parses (a malformed record still holds its subnet).
    async fn records(&mut self) -> Result<Vec<Stored>, Error> {
        Ok(self.records_at().await?.0)
    }

    /// [`records`](Self::records) and the store revision they were read at.
    async fn records_at(&mut self) -> Result<(Vec<Stored>, i64), Error> {
        let prefix = format!("{}/subnets/", self.prefix);
        let resp = self
            .client
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let stored = resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let (subnet, subnet6) = parse_subnet_key(&self.prefix, kv.key_str().ok()?)?;
                Some(Stored {
                    subnet,
                    subnet6,
                    node: parse_record(subnet, subnet6, kv.value()),
                    mod_revision: kv.mod_revision(),
                    create_revision: kv.create_revision(),
                })
            })
            .collect();
        Ok((stored, revision))
    }

    /// Every node record, by subnet, and the revision of the read: a watch from the next
    /// revision misses nothing that came after it.
    pub async fn list(&mut self) -> Result<(Vec<(Ipv4Net, NodeRecord)>, i64), Error> {
        let (stored, revision) = self.records_at().await?;
        let records = stored
            .into_iter()
            .filter_map(|r| Some((r.subnet, r.node?)))
            .collect();
        Ok((records, revision))
    }

    /// Leases a subnet for `me` (and an IPv6 one with `ranges.ipv6`): the one already
    /// recorded for its underlay address (a restart within the TTL), else `preferred` if
    /// free, else the first free one. Every claim is a compare-and-swap, so two nodes never
    /// hold the same IPv4 subnet: the claim of `10.244.1.0/24` checks that no key names it,
    /// alone or with any IPv6 subnet. Two nodes that claimed the same IPv6 subnet at once
    /// (their keys differ) are told apart after the claim: the later record gives it up.
    pub async fn acquire(
        &mut self,
        me: &NodeRecord,
        preferred: (Option<Ipv4Net>, Option<Ipv6Net>),
        ranges: &Ranges,
        ttl: u64,
    ) -> Result<Lease, Error> {
        let grant = self.client.lease_grant(ttl as i64, None).await?;
        let id = grant.id();
        let value = serde_json::to_string(me).map_err(|e| Error::Config(e.to_string()))?;
        let with_lease = || Some(PutOptions::new().with_lease(id));
        let existing = self.records().await?;
        // Our own record from before a restart: take it over with the new lease, but only if
        // it has not changed since we read it. A record of ours from before the cluster
        // turned dual-stack (no IPv6 subnet in its key) moves, in the same transaction, to a
        // key with an IPv6 subnet, keeping its IPv4 subnet.
        for r in &existing {
            let ours = r.node.as_ref().is_some_and(|n| n.is_node(me.identity()));
            if !ours {
                continue;
            }
            let old_key = lease_key(&self.prefix, r.subnet, r.subnet6);
            let same_check =
                Compare::mod_revision(old_key.as_str(), CompareOp::Equal, r.mod_revision);
            if ranges.fits(r.subnet, r.subnet6) {
                let txn = Txn::new().when([same_check]).and_then([TxnOp::put(
                    old_key.as_str(),
                    value.as_str(),
                    with_lease(),
                )]);
                if self.client.txn(txn).await?.succeeded() {
                    return Ok(Lease {
                        subnet: r.subnet,
                        ipv6_subnet: r.subnet6,
                        id,
                    });
                }
            } else if r.subnet.prefix_len() == ranges.subnet_len
                && ranges.cluster.contains(&r.subnet)
            {
                // The IPv4 subnet fits, the IPv6 part does not (none yet, or one this
                // network no longer has): keep the first, take a new second.
                let Some(subnet6) =
                    self.free_ipv6(&existing, ranges, preferred.1, &Default::default())
                else {
                    continue;
                };
                let key = lease_key(&self.prefix, r.subnet, subnet6);
                let txn = Txn::new()
                    .when([
                        same_check,
                        Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
                    ])
                    .and_then([
                        TxnOp::delete(old_key.as_str(), None),
                        TxnOp::put(key.as_str(), value.as_str(), with_lease()),
                    ]);
                if self.client.txn(txn).await?.succeeded() {
                    let lease = Lease {
                        subnet: r.subnet,
                        ipv6_subnet: subnet6,
                        id,
                    };
                    log::info!("moved {old_key} to {key}");
                    if self.ipv6_claim_holds(&lease).await? {
                        return Ok(lease);
                    }
                }
            }
        }
        let taken: std::collections::HashSet<Ipv4Net> = existing.iter().map(|r| r.subnet).collect();
        let candidates = preferred
            .0
            .filter(|p| p.prefix_len() == ranges.subnet_len && ranges.cluster.contains(p))
            .into_iter()
            .chain(
                ranges
                    .cluster
                    .subnets(ranges.subnet_len)
                    .into_iter()
                    .flatten(),
            );
        let mut lost6: std::collections::HashSet<Ipv6Net> = std::collections::HashSet::new();
        let mut no_ipv6_left = false;
        for subnet in candidates {
            if taken.contains(&subnet) {
                continue;
            }
            let Some(subnet6) = self.free_ipv6(&existing, ranges, preferred.1, &lost6) else {
                no_ipv6_left = true;
                break;
            };
            let key = lease_key(&self.prefix, subnet, subnet6);
            // No key names this IPv4 subnet, alone or with an IPv6 one.
            let v4_prefix = subnet_key(&self.prefix, subnet);
            let txn = Txn::new()
                .when([
                    Compare::create_revision(v4_prefix.as_str(), CompareOp::Equal, 0).with_prefix(),
                ])
                .and_then([TxnOp::put(key.as_str(), value.as_str(), with_lease())]);
            if self.client.txn(txn).await?.succeeded() {
                let lease = Lease {
                    subnet,
                    ipv6_subnet: subnet6,
                    id,
                };
                if self.ipv6_claim_holds(&lease).await? {
                    return Ok(lease);
                }
                lost6.extend(subnet6);
            }
        }
        let _ = self.client.lease_revoke(id).await;
        match ranges.ipv6 {
            Some((cluster, subnet_len)) if no_ipv6_left => Err(Error::Exhausted6 {
                cluster,
                subnet_len,
            }),
            _ => Err(Error::Exhausted {
                cluster: ranges.cluster,
                subnet_len: ranges.subnet_len,
            }),
        }
    }

    /// The IPv6 subnet to claim next: `Some(None)` without IPv6; else the first that no
    /// record holds and `exclude` (lost in a claim) does not name, `preferred` first, and
    /// `None` when there is none left.
    fn free_ipv6(
        &self,
        existing: &[Stored],
        ranges: &Ranges,
        preferred: Option<Ipv6Net>,
        exclude: &std::collections::HashSet<Ipv6Net>,
    ) -> Option<Option<Ipv6Net>> {
        let Some((cluster6, len6)) = ranges.ipv6 else {
            return Some(None);
        };
        let taken: std::collections::HashSet<Ipv6Net> =
            existing.iter().filter_map(|r| r.subnet6).collect();
        preferred
            .filter(|p| p.prefix_len() == len6 && cluster6.contains(p))
            .into_iter()
            .chain(cluster6.subnets(len6).into_iter().flatten())
            .find(|s| !taken.contains(s) && !exclude.contains(s))
            .map(Some)
    }

    /// After a claim: whether no other record got the same IPv6 subnet first. If one did
    /// (two nodes claiming at once under different keys), ours is deleted and false returned.
    async fn ipv6_claim_holds(&mut self, lease: &Lease) -> Result<bool, Error> {
        let Some(subnet6) = lease.ipv6_subnet else {
            return Ok(true);
        };
        let records = self.records().await?;
        let key = lease_key(&self.prefix, lease.subnet, lease.ipv6_subnet);
        let Some(mine) = records
            .iter()
            .find(|r| r.subnet == lease.subnet && r.subnet6 == lease.ipv6_subnet)
        else {
            return Ok(false);
        };
        let earlier = records.iter().any(|r| {
            r.subnet6 == Some(subnet6)
                && r.subnet != lease.subnet
                && r.create_revision < mine.create_revision
        });
        if !earlier {
            return Ok(true);
        }
        log::warn!("{subnet6} was claimed by another node at the same time; taking another");
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                mine.mod_revision,
            )])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        self.client.txn(txn).await?;
        Ok(false)
    }

    /// Renews the lease once; false when etcd says it has expired.
    pub async fn renew(&mut self, lease: &Lease) -> Result<bool, Error> {
        // etcd answers a keep-alive for a lease it does not know (expired while we could not
        // reach it, or lost with etcd's data) with TTL 0, and etcd-client 0.21 turns that
        // first answer into `LeaseKeepAliveError("lease not found")` inside
        // `lease_keep_alive` (rpc/lease.rs), so the `ttl() > 0` check below never sees it.
        // Treated as an error, the agent retried the dead lease forever and never published
        // its subnet again. Its only other LeaseKeepAliveError is a failed send on its local
        // channel, after which claiming the subnet again is harmless too.
        let (mut keeper, mut stream) = match self.client.lease_keep_alive(lease.id).await {
            Ok(pair) => pair,
            Err(etcd_client::Error::LeaseKeepAliveError(_)) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        keeper.keep_alive().await?;
        match stream.message().await? {
            Some(resp) => Ok(resp.ttl() > 0),
            None => Ok(false),
        }
    }

    /// True while our record is still in etcd with our lease.
    pub async fn holds(&mut self, lease: &Lease) -> Result<bool, Error> {
        let key = lease_key(&self.prefix, lease.subnet, lease.ipv6_subnet);
        let resp = self.client.get(key.as_str(), None).await?;
        Ok(resp.kvs().first().is_some_and(|kv| kv.lease() == lease.id))
    }

    /// Revokes the lease: the record is deleted at once and peers remove the node.
    pub async fn release(&mut self, lease: &Lease) -> Result<(), Error> {
        self.client.lease_revoke(lease.id).await?;
        Ok(())
    }

    /// Deletes every subnet record whose `PublicIP` is `node` (teardown of a node whose agent
    /// is gone); returns the subnets released.
    pub async fn release_node(&mut self, node: IpAddr) -> Result<Vec<Ipv4Net>, Error> {
        let mut released = Vec::new();
        for r in self.records().await? {
            if r.node.as_ref().is_some_and(|n| n.is_node(node)) {
                let key = lease_key(&self.prefix, r.subnet, r.subnet6);
                // Only the record we read: a node that took the subnet since keeps it.
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        key.as_str(),
                        CompareOp::Equal,
                        r.mod_revision,
                    )])
                    .and_then([TxnOp::delete(key.as_str(), None)]);
                if self.client.txn(txn).await?.succeeded() {
                    released.push(r.subnet);
                }
            }
        }
        Ok(released)
    }

    /// Watches every change under `<prefix>/subnets/` from `revision` on (events etcd has
    /// already applied are replayed, so nothing between a list and the watch is lost).
    pub async fn watch(&mut self, revision: i64) -> Result<WatchStream, Error> {
        let prefix = format!("{}/subnets/", self.prefix);
        // Progress notifications move the revision on while nothing changes, so a watch
        // resumed after a quiet hour does not start from a compacted revision.
        let opts = WatchOptions::new()
            .with_prefix()
            .with_progress_notify()
            .with_start_revision(revision);
        Ok(self.client.watch(prefix.as_str(), Some(opts)).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_flannel() {
        let s: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        let k = subnet_key("/cni-suite/network/", s);
        assert_eq!(k, "/cni-suite/network/subnets/10.244.3.0-24");
        assert_eq!(parse_subnet_key("/cni-suite/network", &k), Some((s, None)));
        assert_eq!(
            parse_subnet_key("/cni-suite/network", "/other/subnets/10.0.0.0-24"),
            None
        );
        let v4: IpAddr = "172.30.0.1".parse().unwrap();
        let rec = NodeRecord::new(v4, 1, "aa:bb:cc:dd:ee:01".into());
        let json = serde_json::to_string(&rec).unwrap();
        assert!(json.contains("\"PublicIP\":\"172.30.0.1\""), "{json}");
        assert!(!json.contains("PublicIPv6"), "{json}");
        assert!(json.contains("\"VtepMAC\":\"aa:bb:cc:dd:ee:01\""), "{json}");
        assert!(rec.is_node(v4) && rec.identity() == v4);

        // IPv6 underlay: flannel's PublicIPv6, PublicIP 0.0.0.0; two such nodes differ.
        let v6: IpAddr = "fd00:30::1".parse().unwrap();
        let rec6 = NodeRecord::new(v6, 1, "aa:bb:cc:dd:ee:02".into());
        let json = serde_json::to_string(&rec6).unwrap();
        assert!(json.contains("\"PublicIP\":\"0.0.0.0\""), "{json}");
        assert!(json.contains("\"PublicIPv6\":\"fd00:30::1\""), "{json}");
        assert_eq!(serde_json::from_str::<NodeRecord>(&json).unwrap(), rec6);
        assert!(rec6.is_node(v6) && rec6.identity() == v6);
        assert!(!rec6.is_node("fd00:30::2".parse().unwrap()));
        assert!(!rec6.is_node("0.0.0.0".parse().unwrap()));
        assert_eq!(rec6.underlay_like(v4), None);
        // A dual-stack flannel record serves both families; a null PublicIPv6 reads as none.
        let dual: NodeRecord = serde_json::from_str(
            r#"{"PublicIP":"172.30.0.3","PublicIPv6":"fd00:30::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:03"}}"#,
        )
        .unwrap();
        assert_eq!(dual.underlay_like(v6), Some("fd00:30::3".parse().unwrap()));
        assert_eq!(dual.underlay_like(v4), Some("172.30.0.3".parse().unwrap()));
        let null6: NodeRecord = serde_json::from_str(
            r#"{"PublicIP":"172.30.0.4","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:04"}}"#,
        )
        .unwrap();
        assert_eq!(null6.public_ipv6, None);
    }

    /// A dual-stack flanneld's record, as Go's `json.Marshal` of its `lease.LeaseAttrs`
    /// (pkg/lease/lease.go: `PublicIP ip.IP4`, `PublicIPv6 *ip.IP6`, `BackendType`,
    /// `BackendData`, `BackendV6Data`, the last three `omitempty`) writes it, with the vxlan
    /// backend's `vxlanLeaseAttrs{VNI, VtepMAC}` (pkg/backend/vxlan), under the key of its
    /// `MakeSubnetKey` (pkg/subnet/subnet.go).
    const FLANNEL_DUAL_STACK_KEY: &str =
        "/coreos.com/network/subnets/10.244.3.0-24&fd00:10:244:3::-64";
    const FLANNEL_DUAL_STACK_RECORD: &str = r#"{"PublicIP":"172.30.0.3","PublicIPv6":"fd00:30::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:03"},"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:13"}}"#;
    /// The same flanneld without IPv6: `PublicIPv6` is a nil pointer, marshalled `null`.
    const FLANNEL_IPV4_RECORD: &str = r#"{"PublicIP":"172.30.0.4","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:04"}}"#;

    #[test]
    fn dual_stack_keys_and_records_read_as_flannel_writes_them() {
        let prefix = "/coreos.com/network";
        let (v4, v6) = parse_subnet_key(prefix, FLANNEL_DUAL_STACK_KEY).expect("dual key");
        assert_eq!(v4, "10.244.3.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(v6, Some("fd00:10:244:3::/64".parse().unwrap()));
        assert_eq!(lease_key(prefix, v4, v6), FLANNEL_DUAL_STACK_KEY);
        assert_eq!(
            lease_key(prefix, v4, None),
            "/coreos.com/network/subnets/10.244.3.0-24"
        );
        // Not flannel's pattern (upper case, garbage, a missing length): no subnet.
        for bad in [
            "/coreos.com/network/subnets/10.244.3.0-24&FD00::-64",
            "/coreos.com/network/subnets/10.244.3.0-24&fd00::",
            "/coreos.com/network/subnets/10.244.3.0-24&zz::-64",
        ] {
            assert_eq!(parse_subnet_key(prefix, bad), None, "{bad}");
        }

        let r = parse_record(v4, v6, FLANNEL_DUAL_STACK_RECORD.as_bytes()).expect("record");
        assert_eq!(r.ipv6_subnet, v6);
        assert_eq!(r.public_ip, Ipv4Addr::new(172, 30, 0, 3));
        assert_eq!(r.public_ipv6, Some("fd00:30::3".parse().unwrap()));
        let data6 = r.backend_v6.clone().expect("BackendV6Data");
        assert_eq!(
            (data6.vni, data6.vtep_mac.as_str()),
            (1, "aa:bb:cc:dd:ee:13")
        );
        // Our serialization has flannel's field names; the key part is not in the JSON.
        let ours: serde_json::Value = serde_json::to_value(&r).unwrap();
        let theirs: serde_json::Value = serde_json::from_str(FLANNEL_DUAL_STACK_RECORD).unwrap();
        assert_eq!(ours, theirs);

        let old = parse_record(v4, None, FLANNEL_IPV4_RECORD.as_bytes()).expect("IPv4 record");
        assert_eq!((old.backend_v6.clone(), old.ipv6_subnet), (None, None));

        // Ours on an IPv4 underlay with an IPv6 address: PublicIPv6 is the IPv6 device's.
        let me = NodeRecord::new("172.30.0.1".parse().unwrap(), 1, "aa:00:00:00:00:01".into())
            .with_ipv6_device("fd00:30::1".parse().unwrap(), "aa:00:00:00:00:11".into());
        let json: serde_json::Value = serde_json::to_value(&me).unwrap();
        assert_eq!(json["PublicIPv6"], "fd00:30::1");
        assert_eq!(json["BackendV6Data"]["VtepMAC"], "aa:00:00:00:00:11");
        // Its IPv6 device over the IPv4 underlay (no IPv6 address): no PublicIPv6.
        let v4_only = NodeRecord::new("172.30.0.2".parse().unwrap(), 1, "aa:00:00:00:00:02".into())
            .with_ipv6_device("172.30.0.2".parse().unwrap(), "aa:00:00:00:00:12".into());
        assert_eq!(v4_only.public_ipv6, None);
        assert!(v4_only.backend_v6.is_some());
    }

    #[test]
    fn ranges_fit_only_records_of_both_families_when_dual_stack() {
        let dual = Ranges {
            cluster: "10.244.0.0/16".parse().unwrap(),
            subnet_len: 24,
            ipv6: Some(("fd00:10:244::/56".parse().unwrap(), 64)),
        };
        let v4: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        let v6: Ipv6Net = "fd00:10:244:3::/64".parse().unwrap();
        assert!(dual.fits(v4, Some(v6)));
        assert!(
            !dual.fits(v4, None),
            "an IPv4-only record moves to a dual key"
        );
        assert!(!dual.fits(v4, Some("fd00:99::/64".parse().unwrap())));
        assert!(!dual.fits(v4, Some("fd00:10:244:3::/72".parse().unwrap())));
        let single = Ranges { ipv6: None, ..dual };
        assert!(single.fits(v4, None));
        assert!(!single.fits(v4, Some(v6)));
    }
}
