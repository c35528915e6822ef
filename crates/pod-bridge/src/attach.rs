//! Attaching a pod to the node bridge and detaching it: the work behind ADD, DEL, CHECK,
//! STATUS and GC, shared by kubenet-bridge and vxlan-overlay.
//!
//! A network has one or two pod ranges ([`Ranges`]: IPv4, IPv6, or one of each); per range
//! the bridge holds its gateway, the pod one address and (per `defaultRoute`) one default
//! route, and the node forwards and masquerades that family.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use cni_spec::{Attachment, AttachmentRequest, CniResult, Env, Interface, IpConfig, Route};
use ipnet::IpNet;
use netsetup::link::{self, BridgeSpec, VethSpec};
use netsetup::masquerade::{self, MasqueradeSpec};
use netsetup::{sysctl, Netns, Socket};
use node_ipam::{attachment_hash, Pool, Ranges, Store};

use crate::Error;

/// A node bridge network, resolved from a plugin's config.
#[derive(Clone, Debug)]
pub struct BridgeNetwork {
    /// The CNI network name (names the IPAM directory).
    pub name: String,
    /// The bridge.
    pub bridge: String,
    /// The node's pod ranges with their gateways, in the order of the pod's addresses.
    pub ranges: Ranges,
    /// Pod MTU; 0 picks the bridge's, or for a new bridge the default route's link's.
    pub mtu: u32,
    /// Hairpin on the pods' bridge ports.
    pub hairpin: bool,
    /// Bridge in promiscuous mode.
    pub promisc: bool,
    /// Masquerade traffic to destinations outside these CIDRs (each range's family keeps
    /// those of its own family; none of a family masquerades every destination off the
    /// bridge); None turns masquerade off.
    pub masquerade_outside: Option<Vec<IpNet>>,
    /// The nftables table for the masquerade rule (its IPv4 and IPv6 tables share the name).
    pub nft_table: String,
    /// IPAM state root; the network's leases live in `<data_dir>/<name>`.
    pub data_dir: PathBuf,
    /// Whether the pod's default route goes through this network.
    pub default_route: DefaultRoute,
}

/// Which network of a pod with several (Multus, podman: one conflist per interface) carries
/// its default route. The config field `defaultRoute`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultRoute {
    /// Installed when the pod has no default route of that family yet; the pod's first
    /// network gets it (per family: IPv4 and IPv6 are decided apart).
    #[default]
    Auto,
    /// Installed, replacing one another network put there.
    Always,
    /// Never installed: the pod reaches this network's subnet only.
    Never,
}

impl BridgeNetwork {
    fn store(&self) -> Result<Store, Error> {
        Ok(Store::open(&self.data_dir, &self.name)?)
    }

    /// The network of one range (the overlay's, which gives each node one subnet).
    pub fn pool(&self) -> &Pool {
        self.ranges.primary()
    }
}

/// The addresses as a list for messages: `10.244.1.2, fd00:10:244:1::2`.
pub fn addresses_text(addresses: &[IpAddr]) -> String {
    addresses
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The name of the host end of a pod's veth: a hash of (container id, ifname), so DEL finds
/// it without the pod's namespace. 15 bytes, never the 12 of the reference bridge plugin's
/// random `vethXXXXXXXX` names.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    format!("veth{:011x}", attachment_hash(container_id, ifname) >> 20)
}

/// The pod end's MAC, derived from its address as kubenet and the reference plugins do
/// (`0a:58:` + the IPv4 octets), so it is stable for an address; an IPv6-only pod's from the
/// last four bytes of its IPv6 address the same way.
fn pod_mac(ip: IpAddr) -> link::Mac {
    let o = match ip {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(a) => {
            let b = a.octets();
            [b[12], b[13], b[14], b[15]]
        }
    };
    [0x0a, 0x58, o[0], o[1], o[2], o[3]]
}

/// The host end's MAC: locally administered, from the same hash as its name.
fn host_mac(container_id: &str, ifname: &str) -> link::Mac {
    let h = attachment_hash(container_id, ifname).to_be_bytes();
    [0x02, h[0], h[1], h[2], h[3], h[4]]
}

/// The addresses the runtime asked for, if it asked: at most one per range, each with its
/// range's prefix length if it gives one (a range serves one address per attachment, as
/// host-local's range sets do).
fn requested_addresses(
    net: &BridgeNetwork,
    wants: &AttachmentRequest,
) -> Result<Vec<IpAddr>, Error> {
    let refuse = |why: String| Err(Error::RequestedAddress(why));
    let mut out: Vec<IpAddr> = Vec::with_capacity(wants.ips.len());
    for one in &wants.ips {
        let Some(pool) = net.ranges.for_family(one.addr) else {
            return refuse(format!(
                "{} has no pod range of its family (pod ranges {})",
                one.addr,
                ranges_text(&net.ranges)
            ));
        };
        let subnet = pool.subnet();
        if one.prefix.is_some_and(|p| p != subnet.prefix_len()) {
            return refuse(format!(
                "{}/{} does not match the pod CIDR {subnet}",
                one.addr,
                one.prefix.unwrap_or_default()
            ));
        }
        if out.iter().any(|a| pool.same_family(*a)) {
            return refuse(format!(
                "{} addresses asked for in the pod CIDR {subnet}, which gives one per attachment",
                wants
                    .ips
                    .iter()
                    .filter(|w| pool.same_family(w.addr))
                    .count()
            ));
        }
        out.push(one.addr);
    }
    Ok(out)
}

/// The ranges as a list for messages.
fn ranges_text(ranges: &Ranges) -> String {
    ranges
        .pools()
        .iter()
        .map(|p| p.subnet().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// ADD: node-level setup (bridge, forwarding, masquerade), then a lease (the address the
/// runtime asked for, if it did), a veth pair with its pod end configured (with the MAC the
/// runtime asked for, if it did). Everything this call created is removed again if a step
/// fails.
pub fn add(net: &BridgeNetwork, env: &Env, wants: &AttachmentRequest) -> Result<CniResult, Error> {
    // Checked before anything changes on the node.
    let requested = requested_addresses(net, wants)?;
    let netns = Netns::open(Path::new(&env.netns))?;
    let mut host = Socket::new()?;
    let bridge = link::ensure_bridge(
        &mut host,
        &BridgeSpec {
            name: &net.bridge,
            mtu: net.mtu,
            promisc: net.promisc,
        },
    )?;
    if net.ranges.v4().is_some() {
        sysctl::ensure_ip_forward()?;
    }
    if net.ranges.v6().is_some() {
        sysctl::ensure_ipv6_forward(|| ipv6_uplink(&mut host))?;
    }
    ensure_masquerade(net)?;
    let mtu = match net.mtu {
        0 if bridge.mtu > 0 => bridge.mtu,
        0 => 1500,
        m => m,
    };

    let store = net.store()?;
    // Held to the end of the ADD: a second ADD of the same pod waits, then finds it attached.
    let _attachment = store.lock_attachment(&env.container_id, &env.ifname)?;
    let lease = store.reserve_ranges(&net.ranges, &requested, &env.container_id, &env.ifname)?;
    let host_name = host_veth_name(&env.container_id, &env.ifname);
    if lease.existing && link::get_link(&mut host, &host_name)?.is_some() {
        return Err(Error::AlreadyAttached {
            container_id: env.container_id.clone(),
            ifname: env.ifname.clone(),
            addresses: addresses_text(&lease.addresses),
        });
    }
    let undo = Rollback {
        store: &store,
        env,
        host_name: &host_name,
        veth_created: false,
        armed: true,
    };
    let add = AddContext {
        net,
        env,
        netns: &netns,
        bridge: &bridge,
        mtu,
        addresses: &lease.addresses,
        mac: wants.mac,
    };
    attach(&add, &mut host, undo)
}

/// The name of the link holding the node's IPv6 default route, if there is one: the uplink
/// whose router advertisements must still be accepted once forwarding is on. Asked only
/// when forwarding is off, so once per node.
fn ipv6_uplink(host: &mut Socket) -> Result<Option<String>, netsetup::Error> {
    let Some(index) = link::default_route_oif(host, true)? else {
        return Ok(None);
    };
    Ok(link::get_link_by_index(host, index)?.map(|l| l.name))
}

/// What one ADD attaches, resolved before its veth is made.
struct AddContext<'a> {
    net: &'a BridgeNetwork,
    env: &'a Env,
    /// The pod's network namespace.
    netns: &'a Netns,
    /// The node bridge, as found or created.
    bridge: &'a netsetup::Link,
    /// The pod interface's MTU.
    mtu: u32,
    /// The leased addresses, one per range of `net.ranges`.
    addresses: &'a [IpAddr],
    /// The pod interface's MAC the runtime asked for (`runtimeConfig.mac`, `CNI_ARGS` `MAC`).
    mac: Option<link::Mac>,
}

/// Undoes a failed ADD when dropped: deletes the veth if this ADD created it and releases
/// the lease. [`Rollback::disarm`] on success keeps both. Dropped before the attachment lock,
/// so no other ADD or DEL of the pod sees a half-removed attachment.
struct Rollback<'a> {
    store: &'a Store,
    env: &'a Env,
    host_name: &'a str,
    veth_created: bool,
    armed: bool,
}

impl Rollback<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self.veth_created {
            // Its own socket: the guard cannot borrow the one attach() works with, and only a
            // failed ADD pays for a second one.
            let deleted =
                Socket::new().and_then(|mut s| s.request(link::delete_link(self.host_name)));
            if let Err(e) = deleted {
                log::error!("rollback: cannot delete {}: {e}", self.host_name);
            }
        }
        if let Err(e) = self.store.release(&self.env.container_id, &self.env.ifname) {
            log::error!(
                "rollback: cannot release lease of {}: {e}",
                self.env.container_id
            );
        }
    }
}

/// Creates the veth pair on the bridge and configures its pod end; `undo` removes what was
/// made unless every step succeeds.
fn attach(add: &AddContext, host: &mut Socket, mut undo: Rollback) -> Result<CniResult, Error> {
    let AddContext {
        net,
        env,
        netns,
        bridge,
        mtu,
        addresses,
        mac,
    } = *add;
    let pools = net.ranges.pools();
    // The MAC follows the IPv4 address when there is one, as before dual-stack.
    let mac_source = net
        .ranges
        .v4()
        .and_then(|v4| addresses.iter().find(|a| v4.contains(**a)))
        .unwrap_or(&addresses[0]);
    let peer_mac = mac.unwrap_or_else(|| pod_mac(*mac_source));
    let host_mac = host_mac(&env.container_id, &env.ifname);
    let mut batch: Vec<_> = pools
        .iter()
        .map(|p| link::add_address(bridge.index, p.gateway_net(), true))
        .collect();
    let veth_request = batch.len();
    batch.extend(link::create_veth(&VethSpec {
        host_name: undo.host_name,
        host_mac,
        peer_name: &env.ifname,
        peer_mac,
        peer_netns: netns,
        mtu,
        master: bridge.index,
        hairpin: net.hairpin,
    }));
    let replies = host.batch(batch)?;
    // The veth exists (and is ours to remove) once its create request succeeded.
    undo.veth_created = replies.get(veth_request).is_some_and(|(_, r)| r.is_ok());
    netsetup::socket::first_error(replies, |_, _| false)?;
    let pod_addrs = pools
        .iter()
        .zip(addresses)
        .map(|(p, a)| {
            IpNet::new(*a, p.subnet().prefix_len()).map_err(|e| Error::Config(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let installed = configure_pod(netns, &env.ifname, pools, &pod_addrs, net.default_route)?;
    let host_name = undo.host_name.to_string();
    undo.disarm();
    Ok(CniResult {
        interfaces: vec![
            Interface {
                name: net.bridge.clone(),
                mac: link::mac_string(&bridge.mac),
                ..Interface::default()
            },
            Interface {
                name: host_name,
                mac: link::mac_string(&host_mac),
                ..Interface::default()
            },
            Interface {
                name: env.ifname.clone(),
                mac: link::mac_string(&peer_mac),
                mtu: Some(mtu),
                sandbox: env.netns.clone(),
                ..Interface::default()
            },
        ],
        ips: pools
            .iter()
            .zip(&pod_addrs)
            .map(|(p, a)| IpConfig {
                address: *a,
                gateway: Some(p.gateway()),
                interface: Some(2),
            })
            .collect(),
        // Only the routes this ADD installed: CHECK verifies every route of the result.
        routes: pools
            .iter()
            .zip(installed)
            .filter(|(_, installed)| *installed)
            .map(|(p, _)| Route::new(default_dst(p), Some(p.gateway())))
            .collect(),
        dns: Default::default(),
    })
}

/// The default destination of a range's family: `0.0.0.0/0` or `::/0`.
fn default_dst(pool: &Pool) -> IpNet {
    match pool.subnet() {
        IpNet::V4(_) => IpNet::V4(Default::default()),
        IpNet::V6(_) => IpNet::V6(Default::default()),
    }
}

const ACCEPT_RA_OFF: &str = "0";

/// Inside the pod: interface up, its addresses (IPv6 ones without DAD, so usable at once),
/// and per range the default route via its gateway as `default_route` says; returns, per
/// range, whether this ADD installed it. One socket opened in the namespace, one lookup, one
/// batch. With an IPv6 range the interface is told, before it comes up, to ignore router
/// advertisements (`accept_ra=0`): the pod's routes are the ones this ADD sets, not what a
/// router on the bridge announces.
fn configure_pod(
    netns: &Netns,
    ifname: &str,
    pools: &[Pool],
    addrs: &[IpNet],
    default_route: DefaultRoute,
) -> Result<Vec<bool>, Error> {
    let v6 = pools.iter().any(Pool::is_ipv6);
    let accept_ra = format!("/proc/sys/net/ipv6/conf/{ifname}/accept_ra");
    let (mut pod, accept_ra_file) = {
        let _inside = netns.enter()?;
        let sock = Socket::new()?;
        // Opened inside, written outside: the file stays bound to the pod's namespace.
        let file = v6.then(|| sysctl::open_for_write(&accept_ra)).transpose()?;
        (sock, file)
    };
    if let Some(mut file) = accept_ra_file {
        sysctl::write_opened(&mut file, &accept_ra, ACCEPT_RA_OFF)?;
    }
    let peer = link::get_link(&mut pod, ifname)?.ok_or_else(|| Error::PodLinkMissing {
        ifname: ifname.to_string(),
        netns: netns.path().to_path_buf(),
    })?;
    let mut batch = vec![link::set_flags(peer.index, true, false)];
    batch.extend(
        addrs
            .iter()
            .map(|a| link::add_address(peer.index, *a, false)),
    );
    let first_route = batch.len();
    // No lookup and no lock: the kernel decides. An exclusive add of a default route fails
    // with EEXIST when the pod has one of that family (its other network's), atomically, so
    // two networks attached at once cannot both install one, and `auto` costs nothing over a
    // plain add.
    for pool in pools {
        let (dst, gw) = (default_dst(pool), Some(pool.gateway()));
        match default_route {
            DefaultRoute::Never => {}
            DefaultRoute::Always => batch.push(link::replace_route_ip(peer.index, dst, gw)),
            DefaultRoute::Auto => batch.push(link::add_route_ip(peer.index, dst, gw, false)),
        }
    }
    let mut installed = vec![default_route != DefaultRoute::Never; pools.len()];
    for (i, (what, reply)) in pod.batch(batch)?.into_iter().enumerate() {
        match reply {
            Ok(_) => {}
            Err(e) if i >= first_route && link::is_exists(&e) => {
                if default_route == DefaultRoute::Auto {
                    installed[i - first_route] = false;
                } else {
                    return Err(netsetup::Error::Netlink { what, source: e }.into());
                }
            }
            Err(source) => return Err(netsetup::Error::Netlink { what, source }.into()),
        }
    }
    Ok(installed)
}

/// The masquerade table of each range's family: programmed when it differs, or removed when
/// masquerade is off. A family the network has no range of is not looked at (an IPv4-only
/// ADD asks for one table, as before dual-stack).
fn ensure_masquerade(net: &BridgeNetwork) -> Result<(), Error> {
    let keeps: Vec<Vec<IpNet>> = net
        .ranges
        .pools()
        .iter()
        .map(|pool| {
            net.masquerade_outside
                .iter()
                .flatten()
                .filter(|c| pool.same_family(c.addr()))
                .copied()
                .collect()
        })
        .collect();
    let wants: Vec<masquerade::Want> = net
        .ranges
        .pools()
        .iter()
        .zip(&keeps)
        .map(|(pool, keep)| match net.masquerade_outside {
            Some(_) => masquerade::Want::Rule(MasqueradeSpec {
                table: &net.nft_table,
                pod_cidr: pool.subnet(),
                non_masquerade: keep,
                bridge: &net.bridge,
            }),
            None => masquerade::Want::Absent {
                table: &net.nft_table,
                v6: pool.is_ipv6(),
            },
        })
        .collect();
    masquerade::ensure_all(&wants)?;
    Ok(())
}

/// DEL: removes the pod's veth pair (found by name, so a deleted netns does not matter) and
/// releases its addresses (returned; none when it held none). Succeeds when either is
/// already gone.
pub fn del(net: &BridgeNetwork, env: &Env) -> Result<Vec<IpAddr>, Error> {
    let store = net.store()?;
    // A DEL sent while the pod's ADD still runs (a runtime's timeout) waits for it, so it
    // removes what that ADD made instead of racing it.
    let _attachment = store.lock_attachment(&env.container_id, &env.ifname)?;
    let mut host = Socket::new()?;
    remove_veth(&mut host, &host_veth_name(&env.container_id, &env.ifname))?;
    Ok(store.release(&env.container_id, &env.ifname)?)
}

fn remove_veth(host: &mut Socket, name: &str) -> Result<(), Error> {
    match host.request(link::delete_link(name)) {
        Ok(_) => Ok(()),
        Err(netsetup::Error::Netlink { source, .. }) if link::is_no_device(&source) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// CHECK: the lease, the host end on the bridge, and inside the pod the interface, its
/// addresses (one per range) and its routes all match `prev`.
pub fn check(net: &BridgeNetwork, env: &Env, prev: &CniResult) -> Result<(), Error> {
    let ours = prev
        .interfaces
        .iter()
        .position(|i| i.name == env.ifname && !i.sandbox.is_empty())
        .ok_or_else(|| {
            Error::Check(format!(
                "prevResult has no sandbox interface {}",
                env.ifname
            ))
        })?;
    // Per range, the prevResult's address on our interface in it.
    let mut want: Vec<IpNet> = Vec::new();
    for pool in net.ranges.pools() {
        let ip = prev
            .ips
            .iter()
            .find(|ip| ip.interface == Some(ours) && pool.contains(ip.address.addr()))
            .ok_or_else(|| {
                Error::Check(format!(
                    "prevResult has no address of {} on {}",
                    pool.subnet(),
                    env.ifname
                ))
            })?;
        want.push(ip.address);
    }
    let mut leased = net.store()?.lookup(&env.container_id, &env.ifname)?;
    leased.sort();
    let mut prev_addrs: Vec<IpAddr> = want.iter().map(IpNet::addr).collect();
    prev_addrs.sort();
    if leased != prev_addrs {
        return Err(Error::Check(format!(
            "lease of {}/{} is [{}], prevResult says [{}]",
            env.container_id,
            env.ifname,
            addresses_text(&leased),
            addresses_text(&prev_addrs)
        )));
    }
    let mut host = Socket::new()?;
    let bridge = link::get_link(&mut host, &net.bridge)?
        .ok_or_else(|| Error::Check(format!("bridge {} is missing", net.bridge)))?;
    let host_name = host_veth_name(&env.container_id, &env.ifname);
    let host_end = link::get_link(&mut host, &host_name)?
        .ok_or_else(|| Error::Check(format!("host end {host_name} is missing")))?;
    if host_end.master != Some(bridge.index) || !host_end.up {
        return Err(Error::Check(format!(
            "{host_name} is not an up port of {}",
            net.bridge
        )));
    }
    let netns = Netns::open(Path::new(&env.netns))?;
    let mut pod = netns.socket()?;
    let iface = link::get_link(&mut pod, &env.ifname)?
        .ok_or_else(|| Error::Check(format!("{} is missing in the pod", env.ifname)))?;
    let want_mac = &prev.interfaces[ours].mac;
    if !iface.up || (!want_mac.is_empty() && *want_mac != link::mac_string(&iface.mac)) {
        return Err(Error::Check(format!(
            "{} is down or its MAC differs from prevResult",
            env.ifname
        )));
    }
    for (pool, address) in net.ranges.pools().iter().zip(&want) {
        let v6 = pool.is_ipv6();
        if !link::addresses_of(&mut pod, iface.index, v6)?.contains(address) {
            return Err(Error::Check(format!(
                "{} lacks address {address}",
                env.ifname
            )));
        }
        // Only the routes via our gateways are ours to vouch for: the prevResult also
        // carries what earlier plugins of a chain set up (other interfaces, other tables).
        let gateway = pool.gateway();
        let mut routes = None;
        for r in prev.routes.iter().filter(|r| r.gw == Some(gateway)) {
            let routes = match &mut routes {
                Some(r) => r,
                None => routes.insert(link::routes(&mut pod, v6)?),
            };
            if !routes
                .iter()
                .any(|k| k.dst == r.dst && k.gw == Some(gateway))
            {
                return Err(Error::Check(format!(
                    "route {} via {gateway} is missing",
                    r.dst
                )));
            }
        }
    }
    Ok(())
}

/// STATUS: ADD can be served while every range has a free address.
pub fn status(net: &BridgeNetwork) -> Result<(), Error> {
    let full = net.store()?.exhausted(&net.ranges)?;
    if full.is_empty() {
        return Ok(());
    }
    Err(Error::Unavailable(format!(
        "no free address in {}",
        full.iter()
            .map(|p| p.subnet().to_string())
            .collect::<Vec<_>>()
            .join(" nor in ")
    )))
}

/// GC: releases every lease not in `valid` and removes its veth if one is left (under the
/// store's lock, so an ADD finishing meanwhile keeps its lease).
pub fn gc(net: &BridgeNetwork, valid: &[Attachment]) -> Result<Vec<IpAddr>, Error> {
    let store = net.store()?;
    let keep: HashSet<(String, String)> = valid
        .iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    let mut host = Socket::new()?;
    store.gc(&keep, |(id, ifname)| {
        remove_veth(&mut host, &host_veth_name(id, ifname))
    })
}
