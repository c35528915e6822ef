//! Attaching a pod to the node bridge and detaching it: the work behind ADD, DEL, CHECK,
//! STATUS and GC, shared by kubenet-bridge and vxlan-overlay.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use cni_spec::{Attachment, AttachmentRequest, CniResult, Env, Interface, IpConfig, Route};
use ipnet::{IpNet, Ipv4Net};
use netsetup::link::{self, BridgeSpec, VethSpec};
use netsetup::masquerade::{self, MasqueradeSpec};
use netsetup::{sysctl, Netns, Socket};
use node_ipam::{attachment_hash, Pool, Store};

use crate::Error;

/// A node bridge network, resolved from a plugin's config.
#[derive(Clone, Debug)]
pub struct BridgeNetwork {
    /// The CNI network name (names the IPAM directory).
    pub name: String,
    /// The bridge.
    pub bridge: String,
    /// The node's pod CIDR with its gateway.
    pub pool: Pool,
    /// Pod MTU; 0 picks the bridge's, or for a new bridge the default route's link's.
    pub mtu: u32,
    /// Hairpin on the pods' bridge ports.
    pub hairpin: bool,
    /// Bridge in promiscuous mode.
    pub promisc: bool,
    /// Masquerade traffic to destinations outside this CIDR; None turns masquerade off.
    pub masquerade_outside: Option<Ipv4Net>,
    /// The nftables table for the masquerade rule.
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
    /// Installed when the pod has no IPv4 default route yet; the pod's first network gets it.
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

    fn gateway_net(&self) -> IpNet {
        let prefix = self.pool.subnet().prefix_len();
        IpNet::V4(Ipv4Net::new(self.pool.gateway(), prefix).unwrap_or(self.pool.subnet()))
    }
}

/// The name of the host end of a pod's veth: a hash of (container id, ifname), so DEL finds
/// it without the pod's namespace. 15 bytes, never the 12 of the reference bridge plugin's
/// random `vethXXXXXXXX` names.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    format!("veth{:011x}", attachment_hash(container_id, ifname) >> 20)
}

/// The pod end's MAC, derived from its address as kubenet and the reference plugins do
/// (`0a:58:` + the IPv4 octets), so it is stable for an address.
fn pod_mac(ip: Ipv4Addr) -> link::Mac {
    let o = ip.octets();
    [0x0a, 0x58, o[0], o[1], o[2], o[3]]
}

/// The host end's MAC: locally administered, from the same hash as its name.
fn host_mac(container_id: &str, ifname: &str) -> link::Mac {
    let h = attachment_hash(container_id, ifname).to_be_bytes();
    [0x02, h[0], h[1], h[2], h[3], h[4]]
}

/// The address the runtime asked for, if it asked: one IPv4 address of the pod CIDR, with the
/// CIDR's prefix length if it gives one (the range serves one address per attachment, as
/// host-local's single range does).
fn requested_address(
    net: &BridgeNetwork,
    wants: &AttachmentRequest,
) -> Result<Option<Ipv4Addr>, Error> {
    let subnet = net.pool.subnet();
    let refuse = |why: String| Err(Error::RequestedAddress(why));
    match wants.ips[..] {
        [] => Ok(None),
        [one] => match one.addr {
            std::net::IpAddr::V4(addr) if one.prefix.is_none_or(|p| p == subnet.prefix_len()) => {
                Ok(Some(addr))
            }
            std::net::IpAddr::V4(addr) => refuse(format!(
                "{addr}/{} does not match the pod CIDR {subnet}",
                one.prefix.unwrap_or_default()
            )),
            std::net::IpAddr::V6(addr) => refuse(format!(
                "{addr} is not in the pod CIDR {subnet} (IPv4 only)"
            )),
        },
        _ => refuse(format!(
            "{} addresses asked for; the pod CIDR {subnet} gives one per attachment",
            wants.ips.len()
        )),
    }
}

/// ADD: node-level setup (bridge, forwarding, masquerade), then a lease (the address the
/// runtime asked for, if it did), a veth pair with its pod end configured (with the MAC the
/// runtime asked for, if it did). Everything this call created is removed again if a step
/// fails.
pub fn add(net: &BridgeNetwork, env: &Env, wants: &AttachmentRequest) -> Result<CniResult, Error> {
    // Checked before anything changes on the node.
    let requested = requested_address(net, wants)?;
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
    sysctl::ensure_ip_forward()?;
    ensure_masquerade(net)?;
    let mtu = match net.mtu {
        0 if bridge.mtu > 0 => bridge.mtu,
        0 => 1500,
        m => m,
    };

    let store = net.store()?;
    // Held to the end of the ADD: a second ADD of the same pod waits, then finds it attached.
    let _attachment = store.lock_attachment(&env.container_id, &env.ifname)?;
    let lease = match requested {
        Some(address) => {
            store.reserve_requested(&net.pool, address, &env.container_id, &env.ifname)?
        }
        None => store.reserve(&net.pool, &env.container_id, &env.ifname)?,
    };
    let host_name = host_veth_name(&env.container_id, &env.ifname);
    if lease.existing && link::get_link(&mut host, &host_name)?.is_some() {
        return Err(Error::AlreadyAttached {
            container_id: env.container_id.clone(),
            ifname: env.ifname.clone(),
            address: lease.address,
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
        address: lease.address,
        mac: wants.mac,
    };
    attach(&add, &mut host, undo)
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
    /// The leased address.
    address: Ipv4Addr,
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
        address,
        mac,
    } = *add;
    let peer_mac = mac.unwrap_or_else(|| pod_mac(address));
    let host_mac = host_mac(&env.container_id, &env.ifname);
    let mut batch = vec![link::add_address(bridge.index, net.gateway_net(), true)];
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
    undo.veth_created = replies.get(1).is_some_and(|(_, r)| r.is_ok());
    netsetup::socket::first_error(replies, |_, _| false)?;
    let prefix = net.pool.subnet().prefix_len();
    let pod_addr = Ipv4Net::new(address, prefix).map_err(|e| Error::Config(e.to_string()))?;
    let default_route = configure_pod(
        netns,
        &env.ifname,
        pod_addr,
        net.pool.gateway(),
        net.default_route,
    )?;
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
        ips: vec![IpConfig {
            address: IpNet::V4(pod_addr),
            gateway: Some(net.pool.gateway().into()),
            interface: Some(2),
        }],
        // Only the route this ADD installed: CHECK verifies every route of the result.
        routes: default_route
            .then(|| {
                Route::new(
                    IpNet::V4(Ipv4Net::default()),
                    Some(net.pool.gateway().into()),
                )
            })
            .into_iter()
            .collect(),
        dns: Default::default(),
    })
}

/// Inside the pod: interface up, its address, and the default route via the gateway as
/// `default_route` says; returns whether this ADD installed it. One socket opened in the
/// namespace, one lookup, one batch.
fn configure_pod(
    netns: &Netns,
    ifname: &str,
    addr: Ipv4Net,
    gateway: Ipv4Addr,
    default_route: DefaultRoute,
) -> Result<bool, Error> {
    let mut pod = netns.socket()?;
    let peer = link::get_link(&mut pod, ifname)?.ok_or_else(|| Error::PodLinkMissing {
        ifname: ifname.to_string(),
        netns: netns.path().to_path_buf(),
    })?;
    let mut batch = vec![
        link::set_flags(peer.index, true, false),
        link::add_address(peer.index, IpNet::V4(addr), false),
    ];
    // No lookup and no lock: the kernel decides. An exclusive add of a default route fails
    // with EEXIST when the pod has one (its other network's), atomically, so two networks
    // attached at once cannot both install one, and `auto` costs nothing over a plain add.
    match default_route {
        DefaultRoute::Never => {}
        DefaultRoute::Always => batch.push(link::replace_route(
            peer.index,
            Ipv4Net::default(),
            Some(gateway),
        )),
        DefaultRoute::Auto => batch.push(link::add_route(
            peer.index,
            Ipv4Net::default(),
            Some(gateway),
            false,
        )),
    }
    let mut installed = default_route != DefaultRoute::Never;
    for (i, (what, reply)) in pod.batch(batch)?.into_iter().enumerate() {
        match reply {
            Ok(_) => {}
            Err(e) if i == DEFAULT_ROUTE_REQUEST && link::is_exists(&e) => {
                if default_route == DefaultRoute::Auto {
                    installed = false;
                } else {
                    return Err(netsetup::Error::Netlink { what, source: e }.into());
                }
            }
            Err(source) => return Err(netsetup::Error::Netlink { what, source }.into()),
        }
    }
    Ok(installed)
}

/// Where the default route's request stands in [`configure_pod`]'s batch.
const DEFAULT_ROUTE_REQUEST: usize = 2;

fn ensure_masquerade(net: &BridgeNetwork) -> Result<(), Error> {
    match net.masquerade_outside {
        Some(outside) => masquerade::ensure_masquerade(&MasqueradeSpec {
            table: &net.nft_table,
            pod_cidr: net.pool.subnet(),
            non_masquerade: outside,
            bridge: &net.bridge,
        })?,
        None => {
            masquerade::remove_masquerade(&net.nft_table)?;
        }
    }
    Ok(())
}

/// DEL: removes the pod's veth pair (found by name, so a deleted netns does not matter) and
/// releases its address. Succeeds when either is already gone.
pub fn del(net: &BridgeNetwork, env: &Env) -> Result<Option<Ipv4Addr>, Error> {
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
/// address and its routes all match `prev`.
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
    let ip = prev
        .ips
        .iter()
        .find(|ip| ip.interface == Some(ours))
        .ok_or_else(|| Error::Check(format!("prevResult has no address on {}", env.ifname)))?;
    let leased = net.store()?.lookup(&env.container_id, &env.ifname)?;
    if leased.map(std::net::IpAddr::V4) != Some(ip.address.addr()) {
        return Err(Error::Check(format!(
            "lease of {}/{} is {leased:?}, prevResult says {}",
            env.container_id, env.ifname, ip.address
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
    if !link::addresses(&mut pod, iface.index)?.contains(&ip.address) {
        return Err(Error::Check(format!(
            "{} lacks address {}",
            env.ifname, ip.address
        )));
    }
    let routes = link::routes_v4(&mut pod)?;
    // Only the routes via our gateway are ours to vouch for: the prevResult also carries
    // what earlier plugins of a chain set up (other interfaces, other tables).
    let gateway = std::net::IpAddr::V4(net.pool.gateway());
    for want in prev.routes.iter().filter(|r| r.gw == Some(gateway)) {
        let IpNet::V4(dst) = want.dst else { continue };
        let gw = Some(net.pool.gateway());
        if !routes.iter().any(|r| r.dst == dst && r.gw == gw) {
            return Err(Error::Check(format!("route {dst} via {gw:?} is missing")));
        }
    }
    Ok(())
}

/// STATUS: ADD can be served while the range has a free address.
pub fn status(net: &BridgeNetwork) -> Result<(), Error> {
    if net.store()?.has_free(&net.pool)? {
        Ok(())
    } else {
        Err(Error::Unavailable(format!(
            "no free address in {}",
            net.pool.subnet()
        )))
    }
}

/// GC: releases every lease not in `valid` and removes its veth if one is left (under the
/// store's lock, so an ADD finishing meanwhile keeps its lease).
pub fn gc(net: &BridgeNetwork, valid: &[Attachment]) -> Result<Vec<Ipv4Addr>, Error> {
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
