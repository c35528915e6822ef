//! Node subnets in etcd v3, in flannel's record format: leasing with compare-and-swap, lease
//! renewal, listing and watching peers.
//!
//! Keys: `<prefix>/config` holds `{"Network", "SubnetLen", "Backend": {"Type": "vxlan"}}`;
//! `<prefix>/subnets/<a.b.c.d>-<len>` holds `{"PublicIP", "BackendType": "vxlan",
//! "BackendData": {"VNI", "VtepMAC"}}`, attached to the owner's etcd lease so it disappears
//! when the node stops renewing it. A node on an IPv6 underlay also writes `PublicIPv6`, the
//! field of flannel's `LeaseAttrs` for it, with `PublicIP` 0.0.0.0 (what flannel's `ip.IP4`
//! holds when a node has no IPv4 address).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
    WatchResponse, WatchStream,
};
use ipnet::Ipv4Net;
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
        }
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
    /// The etcd lease id the record is attached to.
    pub id: i64,
}

/// A subnet key as stored, with its parsed record.
struct Stored {
    subnet: Ipv4Net,
    node: Option<NodeRecord>,
    mod_revision: i64,
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

fn parse_subnet_key(prefix: &str, key: &str) -> Option<Ipv4Net> {
    let rest = key.strip_prefix(&format!("{}/subnets/", prefix.trim_end_matches('/')))?;
    let (ip, len) = rest.split_once('-')?;
    Ipv4Net::new(ip.parse().ok()?, len.parse().ok()?).ok()
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
        let Some(subnet) = kv.key_str().ok().and_then(|k| parse_subnet_key(prefix, k)) else {
            continue;
        };
        news.changes.push((
            kv.mod_revision(),
            match ev.event_type() {
                EventType::Put => Change::Put(
                    subnet,
                    serde_json::from_slice::<NodeRecord>(kv.value())
                        .map_err(|e| log::warn!("ignoring malformed record for {subnet}: {e}"))
                        .ok(),
                ),
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

    /// Writes the network config if absent; fails if another cluster CIDR is recorded there.
    pub async fn ensure_network_config(
        &mut self,
        cluster: Ipv4Net,
        subnet_len: u8,
    ) -> Result<(), Error> {
        let key = format!("{}/config", self.prefix);
        let want = serde_json::json!({"Network": cluster.to_string(), "SubnetLen": subnet_len,
                                      "Backend": {"Type": "vxlan"}});
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
        let v: serde_json::Value = serde_json::from_slice(kv.value()).unwrap_or_default();
        if v["Network"].as_str() != Some(cluster.to_string().as_str()) {
            return Err(Error::Conflict(format!(
                "{key} says Network {}, this node is configured with {cluster}",
                v["Network"]
            )));
        }
        Ok(())
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
                let subnet = parse_subnet_key(&self.prefix, kv.key_str().ok()?)?;
                let node = serde_json::from_slice::<NodeRecord>(kv.value())
                    .map_err(|e| log::warn!("ignoring malformed record for {subnet}: {e}"))
                    .ok();
                Some(Stored {
                    subnet,
                    node,
                    mod_revision: kv.mod_revision(),
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

    /// Leases a subnet for `me`: the one already recorded for its underlay address (a restart
    /// within the TTL), else `preferred` if free, else the first free one. Every claim is a
    /// compare-and-swap, so two nodes never hold the same subnet.
    pub async fn acquire(
        &mut self,
        me: &NodeRecord,
        preferred: Option<Ipv4Net>,
        cluster: Ipv4Net,
        subnet_len: u8,
        ttl: u64,
    ) -> Result<Lease, Error> {
        let grant = self.client.lease_grant(ttl as i64, None).await?;
        let id = grant.id();
        let value = serde_json::to_string(me).map_err(|e| Error::Config(e.to_string()))?;
        let existing = self.records().await?;
        // Our own record from before a restart: take it over with the new lease, but only if
        // it has not changed since we read it.
        for r in &existing {
            let ours = r.node.as_ref().is_some_and(|n| n.is_node(me.identity()));
            if ours && r.subnet.prefix_len() == subnet_len && cluster.contains(&r.subnet) {
                let key = subnet_key(&self.prefix, r.subnet);
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        key.as_str(),
                        CompareOp::Equal,
                        r.mod_revision,
                    )])
                    .and_then([TxnOp::put(
                        key.as_str(),
                        value.as_str(),
                        Some(PutOptions::new().with_lease(id)),
                    )]);
                if self.client.txn(txn).await?.succeeded() {
                    return Ok(Lease {
                        subnet: r.subnet,
                        id,
                    });
                }
            }
        }
        let taken: std::collections::HashSet<Ipv4Net> = existing.iter().map(|r| r.subnet).collect();
        let candidates = preferred
            .filter(|p| p.prefix_len() == subnet_len && cluster.contains(p))
            .into_iter()
            .chain(cluster.subnets(subnet_len).into_iter().flatten());
        for subnet in candidates {
            if taken.contains(&subnet) {
                continue;
            }
            let key = subnet_key(&self.prefix, subnet);
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.as_str(),
                    value.as_str(),
                    Some(PutOptions::new().with_lease(id)),
                )]);
            if self.client.txn(txn).await?.succeeded() {
                return Ok(Lease { subnet, id });
            }
        }
        let _ = self.client.lease_revoke(id).await;
        Err(Error::Exhausted {
            cluster,
            subnet_len,
        })
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
        let key = subnet_key(&self.prefix, lease.subnet);
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
                let key = subnet_key(&self.prefix, r.subnet);
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
        assert_eq!(parse_subnet_key("/cni-suite/network", &k), Some(s));
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
}
