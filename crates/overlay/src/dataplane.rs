//! The node's VXLAN dataplane: the VTEP device, and one neighbour, FDB entry and route per
//! peer, reconciled against the desired peers (anything else on the device is removed).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use netsetup::link::{self, Mac};
use netsetup::socket::first_error;
use netsetup::vxlan::{self, PeerEntry, PeerEntry6, UnderlayFamily, VxlanSpec};
use netsetup::{Link, Socket};
use serde::Deserialize;

use crate::config::{vtep_ip, vtep_ip6, OverlayConfig, UnderlayFamilyConfig};
use crate::peers::{Delta, Peers};
use crate::Error;

/// FDB entries: (MAC, underlay address).
type FdbSet = HashSet<(Mac, IpAddr)>;

/// The VTEP of this node: the IPv4 device, and on a dual-stack network the IPv6 one.
pub struct Dataplane {
    sock: Socket,
    device: Link,
    device6: Option<Link>,
}

/// How a reconcile changed the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Peers (re)programmed.
    pub added: usize,
    /// Stale entries removed (neighbours, FDB entries and routes).
    pub removed: usize,
}

/// The underlay as the agent sees it.
#[derive(Clone, Debug)]
pub struct Underlay {
    /// The link.
    pub link: Link,
    /// Its address (IPv4 or IPv6): the node's identity, and the VXLAN device's family.
    pub ip: IpAddr,
}

/// Finds the underlay: `underlayInterface`, or the link of the default route; the address
/// family as `underlayFamily` says (unset: IPv4 when there is one, else IPv6).
pub fn detect_underlay(cfg: &OverlayConfig) -> Result<Underlay, Error> {
    let mut sock = Socket::new()?;
    let family = match cfg.underlay_family {
        None => UnderlayFamily::PreferIpv4,
        Some(UnderlayFamilyConfig::Ipv4) => UnderlayFamily::Ipv4,
        Some(UnderlayFamilyConfig::Ipv6) => UnderlayFamily::Ipv6,
    };
    let (link, ip) = vxlan::underlay(&mut sock, cfg.underlay_interface.as_deref(), family)?;
    Ok(Underlay { link, ip })
}

/// The underlay of the IPv6 device on a dual-stack network, as flannel's `flannel-v6.<vni>`
/// takes it: the node's IPv6 address (the underlay's own when it is IPv6, else the first
/// global IPv6 address of the underlay link), so flannel peers reach it at `PublicIPv6`.
/// Without one the IPv6 device encapsulates over the IPv4 underlay (peers of ours reach it
/// at `PublicIP`; flanneld cannot); all nodes must end up in the same family.
pub fn detect_underlay6(underlay: &Underlay) -> Result<Underlay, Error> {
    if underlay.ip.is_ipv6() {
        return Ok(underlay.clone());
    }
    let mut sock = Socket::new()?;
    let v6 = link::global_addresses(&mut sock, underlay.link.index)?
        .into_iter()
        .find(IpAddr::is_ipv6);
    Ok(Underlay {
        link: underlay.link.clone(),
        ip: v6.unwrap_or(underlay.ip),
    })
}

/// Whether the IPv6 subnets ride on the IPv4 device: when both encapsulate in the same
/// underlay family. The kernel refuses a second VXLAN device with the same VNI and port in
/// the same family (EEXIST), and flannel never needs one (its `flannel-v6.<vni>` is always
/// over IPv6, its `flannel.<vni>` over IPv4); one device carries inner IPv4 and IPv6 alike,
/// so the IPv6 neighbours, routes and VTEP address go on it, and its MAC is the record's
/// `BackendV6Data.VtepMAC` as well.
pub fn ipv6_shares_the_device(underlay: &Underlay, underlay6: &Underlay) -> bool {
    underlay.ip.is_ipv6() == underlay6.ip.is_ipv6()
}

/// Bytes VXLAN adds over an IPv4 underlay: outer IPv4 (20) + UDP (8) + VXLAN (8) + the inner
/// Ethernet header (14).
pub const VXLAN_OVERHEAD_V4: u32 = 50;
/// Over IPv6 the outer IP header is 40 bytes.
pub const VXLAN_OVERHEAD_V6: u32 = 70;

/// VXLAN and pod MTU: `mtu` if set, else the underlay's less the encapsulation of its family.
pub fn overlay_mtu(cfg: &OverlayConfig, underlay: &Underlay) -> u32 {
    if cfg.mtu > 0 {
        return cfg.mtu;
    }
    let overhead = if underlay.ip.is_ipv6() {
        VXLAN_OVERHEAD_V6
    } else {
        VXLAN_OVERHEAD_V4
    };
    underlay.link.mtu.saturating_sub(overhead)
}

impl Dataplane {
    /// Creates (or keeps) the VXLAN device for `subnet` with `mac`, up, with the subnet's VTEP
    /// address, and sets tx checksum offload as configured.
    pub fn setup(
        cfg: &OverlayConfig,
        underlay: &Underlay,
        subnet: Ipv4Net,
        mac: Mac,
    ) -> Result<Dataplane, Error> {
        let mut sock = Socket::new()?;
        let spec = VxlanSpec {
            name: cfg.device(),
            vni: cfg.vni,
            port: cfg.port,
            local: underlay.ip,
            underlay_index: underlay.link.index,
            mac,
            mtu: overlay_mtu(cfg, underlay),
        };
        let vtep = Ipv4Net::new(vtep_ip(subnet), 32).map_err(|e| Error::Config(e.to_string()))?;
        let (device, created) = vxlan::ensure_vxlan(&mut sock, &spec, vtep)?;
        if created {
            log::info!(
                "created {} (vni {}, port {}, local {}, mtu {})",
                spec.name,
                spec.vni,
                spec.port,
                spec.local,
                spec.mtu
            );
        }
        set_tx_checksum(cfg, &spec.name)?;
        Ok(Dataplane {
            sock,
            device,
            device6: None,
        })
    }

    /// Adds (or keeps) the IPv6 side of a dual-stack network. When `underlay6` is of another
    /// family than the IPv4 device's underlay (flannel's case: `flannel.<vni>` over IPv4,
    /// `flannel-v6.<vni>` over IPv6), a second device `vxlan-v6.<vni>` with its own MAC
    /// `mac6`; when it is of the same family, the IPv4 device itself carries the IPv6
    /// subnets too (see [`ipv6_shares_the_device`]). Either way the device gets the IPv6
    /// subnet's VTEP address as a /128.
    pub fn setup_ipv6(
        &mut self,
        cfg: &OverlayConfig,
        underlay: &Underlay,
        underlay6: &Underlay,
        subnet6: Ipv6Net,
        mac6: Mac,
    ) -> Result<(), Error> {
        let vtep =
            Ipv6Net::new(vtep_ip6(subnet6), 128).map_err(|e| Error::Config(e.to_string()))?;
        if ipv6_shares_the_device(underlay, underlay6) {
            let replies = self.sock.batch(vec![vxlan::add_vtep_address(
                self.device.index,
                IpNet::V6(vtep),
            )])?;
            first_error(replies, |_, _| false)?;
            log::info!("{} carries {subnet6} too (VTEP {vtep})", self.device.name);
            self.device6 = Some(self.device.clone());
            return Ok(());
        }
        let spec = VxlanSpec {
            name: cfg.device6(),
            vni: cfg.vni,
            port: cfg.port,
            local: underlay6.ip,
            underlay_index: underlay6.link.index,
            mac: mac6,
            mtu: overlay_mtu(cfg, underlay6),
        };
        let (device, created) = vxlan::ensure_vxlan_with(&mut self.sock, &spec, IpNet::V6(vtep))?;
        if created {
            log::info!(
                "created {} (vni {}, port {}, local {}, mtu {}) for {subnet6}",
                spec.name,
                spec.vni,
                spec.port,
                spec.local,
                spec.mtu
            );
        }
        set_tx_checksum(cfg, &spec.name)?;
        self.device6 = Some(device);
        Ok(())
    }

    /// Whether the IPv6 side shares the IPv4 device.
    fn shared(&self) -> bool {
        self.device6
            .as_ref()
            .is_some_and(|d| d.index == self.device.index)
    }

    /// The IPv6 device, on a dual-stack network.
    pub fn device6(&self) -> Option<&Link> {
        self.device6.as_ref()
    }

    /// The device.
    pub fn device(&self) -> &Link {
        &self.device
    }

    /// Makes the devices hold exactly `peers`: programs what is missing or different and
    /// removes what no peer accounts for.
    pub fn reconcile(&mut self, peers: &Peers) -> Result<Changes, Error> {
        // On a shared device the FDB holds the entries of both sides: neither removes the
        // other's.
        let (keep4, keep6): (FdbSet, FdbSet) = if self.shared() {
            (
                peers.v6.iter().map(|p| (p.vtep_mac, p.underlay)).collect(),
                peers.v4.iter().map(|p| (p.vtep_mac, p.underlay)).collect(),
            )
        } else {
            Default::default()
        };
        let mut c = self.reconcile_v4(&peers.v4, &keep4)?;
        if self.device6.is_some() {
            let c6 = self.reconcile_v6(&peers.v6, &keep6)?;
            c.added += c6.added;
            c.removed += c6.removed;
        }
        Ok(c)
    }

    /// The IPv6 device's half of [`Self::reconcile`].
    fn reconcile_v6(
        &mut self,
        peers: &[PeerEntry6],
        keep_fdb: &HashSet<(Mac, IpAddr)>,
    ) -> Result<Changes, Error> {
        let Some(device) = &self.device6 else {
            return Ok(Changes::default());
        };
        let index = device.index;
        let st = vxlan::device_state6(&mut self.sock, index)?;
        let neigh: HashSet<(Ipv6Addr, Mac)> = st.neighbours.iter().copied().collect();
        let fdb: HashSet<(Mac, IpAddr)> = st.fdb.iter().copied().collect();
        let routes: HashSet<(Ipv6Net, Ipv6Addr)> = st.routes.iter().copied().collect();
        let mut batch = Vec::new();
        let mut changes = Changes::default();
        for p in peers {
            let complete = neigh.contains(&(p.vtep_ip, p.vtep_mac))
                && fdb.contains(&(p.vtep_mac, p.underlay))
                && routes.contains(&(p.subnet, p.vtep_ip));
            if !complete {
                batch.extend(vxlan::add_peer6(index, p));
                changes.added += 1;
            }
        }
        let want_neigh: HashSet<(Ipv6Addr, Mac)> =
            peers.iter().map(|p| (p.vtep_ip, p.vtep_mac)).collect();
        let want_fdb: HashSet<(Mac, IpAddr)> = peers
            .iter()
            .map(|p| (p.vtep_mac, p.underlay))
            .chain(keep_fdb.iter().copied())
            .collect();
        let want_routes: HashSet<(Ipv6Net, Ipv6Addr)> =
            peers.iter().map(|p| (p.subnet, p.vtep_ip)).collect();
        for (ip, mac) in neigh.difference(&want_neigh) {
            batch.push(vxlan::del_neighbour6(index, *ip, *mac));
            changes.removed += 1;
        }
        for (mac, ip) in fdb.difference(&want_fdb) {
            batch.push(vxlan::del_fdb(index, *mac, *ip));
            changes.removed += 1;
        }
        for (dst, gw) in routes.difference(&want_routes) {
            batch.push(vxlan::del_route6(index, *dst, *gw));
            changes.removed += 1;
        }
        if !batch.is_empty() {
            let replies = self.sock.batch(batch)?;
            first_error(replies, already_gone)?;
        }
        Ok(changes)
    }

    /// The IPv4 device's half of [`Self::reconcile`].
    fn reconcile_v4(
        &mut self,
        peers: &[PeerEntry],
        keep_fdb: &HashSet<(Mac, IpAddr)>,
    ) -> Result<Changes, Error> {
        let index = self.device.index;
        let st = vxlan::device_state(&mut self.sock, index)?;
        log::debug!("device {} holds {st:?}; want {peers:?}", self.device.name);
        let neigh: HashSet<(Ipv4Addr, Mac)> = st.neighbours.iter().copied().collect();
        let fdb: HashSet<(Mac, IpAddr)> = st.fdb.iter().copied().collect();
        let routes: HashSet<(Ipv4Net, Option<Ipv4Addr>)> = st.routes.iter().copied().collect();
        let mut batch = Vec::new();
        let mut changes = Changes::default();
        for p in peers {
            let complete = neigh.contains(&(p.vtep_ip, p.vtep_mac))
                && fdb.contains(&(p.vtep_mac, p.underlay))
                && routes.contains(&(p.subnet, Some(p.vtep_ip)));
            if !complete {
                batch.extend(vxlan::add_peer(index, p));
                changes.added += 1;
            }
        }
        let want_neigh: HashSet<(Ipv4Addr, Mac)> =
            peers.iter().map(|p| (p.vtep_ip, p.vtep_mac)).collect();
        let want_fdb: HashSet<(Mac, IpAddr)> = peers
            .iter()
            .map(|p| (p.vtep_mac, p.underlay))
            .chain(keep_fdb.iter().copied())
            .collect();
        let want_routes: HashSet<(Ipv4Net, Option<Ipv4Addr>)> =
            peers.iter().map(|p| (p.subnet, Some(p.vtep_ip))).collect();
        for (ip, mac) in neigh.difference(&want_neigh) {
            batch.push(vxlan::del_neighbour(index, *ip, *mac));
            changes.removed += 1;
        }
        for (mac, ip) in fdb.difference(&want_fdb) {
            batch.push(vxlan::del_fdb(index, *mac, *ip));
            changes.removed += 1;
        }
        for (dst, gw) in routes.difference(&want_routes) {
            batch.push(vxlan::del_route(index, *dst, *gw));
            changes.removed += 1;
        }
        if !batch.is_empty() {
            let replies = self.sock.batch(batch)?;
            // An entry already gone is what a delete wanted.
            first_error(replies, already_gone)?;
        }
        Ok(changes)
    }
}

impl Dataplane {
    /// Applies watch deltas: removals first (so a MAC or subnet that moves to another peer in
    /// the same burst is deleted before it is added again), then additions and changes, in one
    /// batch (sent in bounded chunks). Nothing is read back: what is programmed is known.
    pub fn apply(&mut self, deltas: &[Delta]) -> Result<Changes, Error> {
        let index = self.device.index;
        let index6 = self.device6.as_ref().map(|d| d.index);
        let shared = self.shared();
        let mut batch = Vec::new();
        let mut changes = Changes::default();
        for d in deltas {
            // On a shared device an FDB entry one side drops may be one the other keeps.
            let kept = |mac: Mac, ip: IpAddr| {
                shared
                    && (d.new.is_some_and(|n| (n.vtep_mac, n.underlay) == (mac, ip))
                        || d.new6
                            .is_some_and(|n| (n.vtep_mac, n.underlay) == (mac, ip)))
            };
            let del_fdb = |batch: &mut Vec<_>, index: u32, mac: Mac, ip: IpAddr| {
                if !kept(mac, ip) {
                    batch.push(vxlan::del_fdb(index, mac, ip));
                }
            };
            if let Some(index6) = index6 {
                match (d.old6, d.new6) {
                    (Some(o), None) => {
                        batch.push(vxlan::del_neighbour6(index6, o.vtep_ip, o.vtep_mac));
                        del_fdb(&mut batch, index6, o.vtep_mac, o.underlay);
                        batch.push(vxlan::del_route6(index6, o.subnet, o.vtep_ip));
                    }
                    (Some(o), Some(n)) => {
                        if o.vtep_mac != n.vtep_mac {
                            del_fdb(&mut batch, index6, o.vtep_mac, o.underlay);
                        }
                        // A new IPv6 subnet for the same record: the old route and
                        // neighbour go (they are keyed by the old subnet and address).
                        if o.subnet != n.subnet {
                            batch.push(vxlan::del_neighbour6(index6, o.vtep_ip, o.vtep_mac));
                            batch.push(vxlan::del_route6(index6, o.subnet, o.vtep_ip));
                        }
                    }
                    (None, _) => {}
                }
            }
            match (d.old, d.new) {
                (Some(o), None) => {
                    batch.push(vxlan::del_neighbour(index, o.vtep_ip, o.vtep_mac));
                    del_fdb(&mut batch, index, o.vtep_mac, o.underlay);
                    batch.push(vxlan::del_route(index, o.subnet, Some(o.vtep_ip)));
                    changes.removed += 1;
                }
                // The FDB entry is keyed by MAC: a new MAC leaves the old entry behind. The
                // neighbour (keyed by address) and the route (by subnet) are replaced.
                (Some(o), Some(n)) if o.vtep_mac != n.vtep_mac => {
                    del_fdb(&mut batch, index, o.vtep_mac, o.underlay);
                }
                _ => {}
            }
        }
        for d in deltas {
            if let Some(n) = d.new {
                batch.extend(vxlan::add_peer(index, &n));
                changes.added += 1;
            }
            if let (Some(index6), Some(n)) = (index6, d.new6) {
                batch.extend(vxlan::add_peer6(index6, &n));
            }
        }
        if !batch.is_empty() {
            let replies = self.sock.batch(batch)?;
            first_error(replies, already_gone)?;
        }
        Ok(changes)
    }
}

/// Applies `txChecksumOffload` (or the kernel's default) to device `name`.
fn set_tx_checksum(cfg: &OverlayConfig, name: &str) -> Result<(), Error> {
    match vxlan::set_tx_checksum(name, cfg.tx_checksum()) {
        Ok(()) => Ok(()),
        // Asked for explicitly: running with the other setting would silently cost the
        // throughput (or the checksums) the operator chose it for.
        Err(e) if cfg.tx_checksum_offload.is_some() => Err(e.into()),
        Err(e) => {
            log::warn!("cannot set tx checksum offload on {name}: {e}");
            Ok(())
        }
    }
}

/// A delete of an entry that is not there (ENOENT, ENODEV, or ESRCH for a route) did what it
/// wanted.
fn already_gone(what: &str, e: &std::io::Error) -> bool {
    what.starts_with("delete") && (link::is_no_device(e) || e.raw_os_error() == Some(libc::ESRCH))
}

/// One line of a static peers file.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StaticPeer {
    /// The node's pod subnet.
    pub subnet: Ipv4Net,
    /// Its underlay address (IPv4 or IPv6, the family of the nodes' underlay).
    pub underlay: IpAddr,
    /// Its VTEP MAC.
    pub vtep_mac: String,
}

/// Reads a static peers file (a JSON list of `{subnet, underlay, vtepMac}`).
pub fn read_peers_file(path: &Path) -> Result<Vec<StaticPeer>, Error> {
    let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<Mac> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    parts.try_into().ok()
}

/// A peer entry from a subnet, underlay address and MAC text; None when the MAC is invalid.
pub fn peer_entry(subnet: Ipv4Net, underlay: IpAddr, mac: &str) -> Option<PeerEntry> {
    Some(PeerEntry {
        subnet: subnet.trunc(),
        vtep_ip: vtep_ip(subnet.trunc()),
        vtep_mac: parse_mac(mac)?,
        underlay,
    })
}

/// An IPv6 peer entry from an IPv6 subnet, underlay address and MAC text; None when the MAC
/// is invalid.
pub fn peer_entry6(subnet: Ipv6Net, underlay: IpAddr, mac: &str) -> Option<PeerEntry6> {
    Some(PeerEntry6 {
        subnet: subnet.trunc(),
        vtep_ip: vtep_ip6(subnet.trunc()),
        vtep_mac: parse_mac(mac)?,
        underlay,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_and_peers_use_the_subnet_address_as_vtep() {
        assert_eq!(
            parse_mac("0a:58:0a:f4:01:05"),
            Some([0x0a, 0x58, 0x0a, 0xf4, 1, 5])
        );
        assert_eq!(parse_mac("0a:58"), None);
        assert_eq!(parse_mac("zz:58:0a:f4:01:05"), None);
        let p = peer_entry(
            "10.244.5.0/24".parse().unwrap(),
            "172.30.0.5".parse().unwrap(),
            "aa:bb:cc:dd:ee:ff",
        )
        .unwrap();
        assert_eq!(p.vtep_ip, Ipv4Addr::new(10, 244, 5, 0));
    }
}
