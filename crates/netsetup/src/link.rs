//! Links, addresses and routes: typed requests to batch on a [`Socket`], and the few lookups
//! that need an answer first.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::address::{
    AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoVeth, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::netns::Netns;
use crate::socket::{Request, Socket};
use crate::Error;

/// A MAC address.
pub type Mac = [u8; 6];

/// What we need to know of a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Hardware address (zeros when it has none).
    pub mac: Mac,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// In promiscuous mode.
    pub promisc: bool,
    /// `kind` of the link ("bridge", "veth", "vxlan"), if it has one.
    pub kind: Option<String>,
    /// Index of its master (the bridge of a bridge port).
    pub master: Option<u32>,
}

impl Link {
    pub(crate) fn from_message(msg: &LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mac: [0; 6],
            mtu: 0,
            up: msg.header.flags.contains(LinkFlags::Up),
            promisc: msg.header.flags.contains(LinkFlags::Promisc),
            kind: None,
            master: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(a) if a.len() == 6 => link.mac.copy_from_slice(a),
                LinkAttribute::Mtu(m) => link.mtu = *m,
                LinkAttribute::Controller(m) => link.master = Some(*m),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            link.kind = Some(kind_name(kind));
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

fn kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Bridge => "bridge".into(),
        InfoKind::Veth => "veth".into(),
        InfoKind::Vxlan => "vxlan".into(),
        InfoKind::Dummy => "dummy".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn link_by_name_message(name: &str) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    msg
}

/// Looks a link up by name; `None` when there is none.
pub fn get_link(sock: &mut Socket, name: &str) -> Result<Option<Link>, Error> {
    let req = Request::new(
        RouteNetlinkMessage::GetLink(link_by_name_message(name)),
        0,
        format!("get link {name}"),
    );
    match sock.request(req) {
        Ok(replies) => Ok(replies.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
            _ => None,
        })),
        Err(Error::Netlink { source, .. }) if source.raw_os_error() == Some(libc::ENODEV) => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Looks a link up by index; `None` when there is none.
pub fn get_link_by_index(sock: &mut Socket, index: u32) -> Result<Option<Link>, Error> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    let req = Request::new(
        RouteNetlinkMessage::GetLink(msg),
        0,
        format!("get link {index}"),
    );
    match sock.request(req) {
        Ok(replies) => Ok(replies.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
            _ => None,
        })),
        Err(Error::Netlink { source, .. }) if is_no_device(&source) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The MTU of the link that carries the default route, if there is one.
pub fn default_route_mtu(sock: &mut Socket) -> Result<Option<u32>, Error> {
    let Some(oif) = routes_v4(sock)?
        .into_iter()
        .find(|r| r.dst.prefix_len() == 0)
        .and_then(|r| r.oif)
    else {
        return Ok(None);
    };
    Ok(get_link_by_index(sock, oif)?.map(|l| l.mtu))
}

/// Settings of the node bridge.
#[derive(Clone, Debug)]
pub struct BridgeSpec<'a> {
    /// Bridge name.
    pub name: &'a str,
    /// MTU to create it with (0: the MTU of the default route's link, else 1500).
    pub mtu: u32,
    /// Put it in promiscuous mode.
    pub promisc: bool,
}

/// Finds the bridge, or creates it with a fixed MAC and up. A link of that name that is not a
/// bridge is an error and is left alone. Two ADDs racing to create it both succeed.
pub fn ensure_bridge(sock: &mut Socket, spec: &BridgeSpec) -> Result<Link, Error> {
    let existing = match get_link(sock, spec.name)? {
        Some(link) => link,
        None => {
            let mut msg = link_by_name_message(spec.name);
            // A bridge takes the lowest MAC of its ports unless it has one of its own; pods
            // would then see the gateway's MAC change as pods come and go, and their ARP
            // caches stall traffic until they expire.
            msg.attributes
                .push(LinkAttribute::Address(random_local_mac().to_vec()));
            // MTU 0: that of the link carrying the default route, as kubenet did; pods then
            // take the bridge's.
            let mtu = match spec.mtu {
                0 => default_route_mtu(sock)?.unwrap_or(1500),
                m => m,
            };
            msg.attributes.push(LinkAttribute::Mtu(mtu));
            msg.attributes
                .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                    InfoKind::Bridge,
                )]));
            msg.header.flags = LinkFlags::Up;
            msg.header.change_mask = LinkFlags::Up;
            let create = Request::new(
                RouteNetlinkMessage::NewLink(msg),
                NLM_F_CREATE | NLM_F_EXCL,
                format!("create bridge {}", spec.name),
            );
            match sock.request(create) {
                Ok(_) => {}
                Err(Error::Netlink { source, .. }) if is_exists(&source) => {}
                Err(e) => return Err(e),
            }
            get_link(sock, spec.name)?.ok_or_else(|| Error::Netlink {
                what: format!("find bridge {} after creating it", spec.name),
                source: io::Error::from_raw_os_error(libc::ENODEV),
            })?
        }
    };
    if existing.kind.as_deref() != Some("bridge") {
        return Err(Error::NotABridge {
            name: spec.name.to_string(),
            kind: existing.kind.unwrap_or_else(|| "device".into()),
        });
    }
    if !existing.up || (spec.promisc && !existing.promisc) {
        sock.request(set_flags(existing.index, true, spec.promisc))?;
    }
    Ok(existing)
}

/// A request that sets a link up (and promiscuous when asked).
pub fn set_flags(index: u32, up: bool, promisc: bool) -> Request {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    if up {
        msg.header.flags |= LinkFlags::Up;
        msg.header.change_mask |= LinkFlags::Up;
    }
    if promisc {
        msg.header.flags |= LinkFlags::Promisc;
        msg.header.change_mask |= LinkFlags::Promisc;
    }
    Request::new(
        RouteNetlinkMessage::SetLink(msg),
        0,
        format!("set link {index} up"),
    )
}

/// The two ends of a pod's veth pair.
#[derive(Clone, Debug)]
pub struct VethSpec<'a> {
    /// Name of the host end.
    pub host_name: &'a str,
    /// MAC of the host end.
    pub host_mac: Mac,
    /// Name of the pod end (CNI_IFNAME).
    pub peer_name: &'a str,
    /// MAC of the pod end.
    pub peer_mac: Mac,
    /// Namespace the pod end is created in.
    pub peer_netns: &'a Netns,
    /// MTU of both ends.
    pub mtu: u32,
    /// Bridge the host end joins.
    pub master: u32,
    /// Hairpin mode on the host end's bridge port (a pod reaching itself through a service).
    pub hairpin: bool,
}

/// Requests that create a veth pair with its peer directly in the pod's namespace (it never
/// appears on the host), join the host end to the bridge with hairpin, and bring it up.
///
/// The peer is created down: on this kernel a veth peer created already up in another
/// namespace fails with ENOTCONN, so it is brought up from inside, with [`set_flags`].
pub fn create_veth(spec: &VethSpec) -> Vec<Request> {
    let mut peer = link_by_name_message(spec.peer_name);
    peer.attributes
        .push(LinkAttribute::Address(spec.peer_mac.to_vec()));
    peer.attributes.push(LinkAttribute::Mtu(spec.mtu));
    peer.attributes
        .push(LinkAttribute::NetNsFd(std::os::fd::AsRawFd::as_raw_fd(
            &std::os::fd::AsFd::as_fd(spec.peer_netns),
        )));
    let mut host = link_by_name_message(spec.host_name);
    host.attributes
        .push(LinkAttribute::Address(spec.host_mac.to_vec()));
    host.attributes.push(LinkAttribute::Mtu(spec.mtu));
    host.attributes.push(LinkAttribute::Controller(spec.master));
    host.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ]));
    let create = Request::new(
        RouteNetlinkMessage::NewLink(host),
        NLM_F_CREATE | NLM_F_EXCL,
        format!(
            "create veth {} (pod end {})",
            spec.host_name, spec.peer_name
        ),
    );
    // Bridge-port options need the master set already, so they go in a second message that
    // finds the link by name (its index is not known until the kernel answers).
    let mut port = link_by_name_message(spec.host_name);
    port.attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::PortData(
            InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(spec.hairpin)]),
        )]));
    port.header.flags = LinkFlags::Up;
    port.header.change_mask = LinkFlags::Up;
    let configure = Request::new(
        RouteNetlinkMessage::NewLink(port),
        0,
        format!("bring up {} as a bridge port", spec.host_name),
    );
    vec![create, configure]
}

/// A request that deletes a link by name (its veth peer goes with it).
pub fn delete_link(name: &str) -> Request {
    Request::new(
        RouteNetlinkMessage::DelLink(link_by_name_message(name)),
        0,
        format!("delete link {name}"),
    )
}

/// A request that adds `address` (with its prefix) to link `index`; with `replace`, an
/// address already there is not an error.
///
/// An IPv6 address is added with `IFA_F_NODAD`: every address we add comes from a lease or a
/// subnet lease, unique by construction, and duplicate address detection would leave it
/// tentative (unusable as a source, its prefix route without a usable gateway) for about a
/// second after the ADD returned.
pub fn add_address(index: u32, address: IpNet, replace: bool) -> Request {
    let mut msg = AddressMessage::default();
    msg.header.family = family(address.addr());
    msg.header.prefix_len = address.prefix_len();
    msg.header.index = index;
    if address.addr().is_ipv6() {
        msg.header.flags = AddressHeaderFlags::Nodad;
    }
    msg.attributes.push(AddressAttribute::Local(address.addr()));
    msg.attributes
        .push(AddressAttribute::Address(address.addr()));
    if let IpNet::V4(v4) = address {
        if v4.prefix_len() < 31 {
            msg.attributes
                .push(AddressAttribute::Broadcast(v4.broadcast()));
        }
    }
    let flags = if replace {
        NLM_F_CREATE | NLM_F_REPLACE
    } else {
        NLM_F_CREATE | NLM_F_EXCL
    };
    Request::new(
        RouteNetlinkMessage::NewAddress(msg),
        flags,
        format!("add address {address} to link {index}"),
    )
}

/// A request that adds an IPv4 route `dst` via `gw` out of link `index` in the main table.
pub fn add_route(index: u32, dst: Ipv4Net, gw: Option<Ipv4Addr>, onlink: bool) -> Request {
    add_route_ip(index, IpNet::V4(dst), gw.map(IpAddr::V4), onlink)
}

/// A request that installs the IPv4 route `dst` via `gw` out of link `index` in the main table,
/// replacing one to the same destination (another interface's default route, say).
pub fn replace_route(index: u32, dst: Ipv4Net, gw: Option<Ipv4Addr>) -> Request {
    replace_route_ip(index, IpNet::V4(dst), gw.map(IpAddr::V4))
}

/// [`add_route`] for either family (`gw`, when given, of `dst`'s family). With `NLM_F_EXCL`
/// both families answer `EEXIST` when a route to `dst` of the same metric exists (IPv6 would
/// otherwise add it beside the other as a multipath route).
pub fn add_route_ip(index: u32, dst: IpNet, gw: Option<IpAddr>, onlink: bool) -> Request {
    route_request(index, dst, gw, onlink, NLM_F_CREATE | NLM_F_EXCL, "add")
}

/// [`replace_route`] for either family.
pub fn replace_route_ip(index: u32, dst: IpNet, gw: Option<IpAddr>) -> Request {
    route_request(
        index,
        dst,
        gw,
        false,
        NLM_F_CREATE | NLM_F_REPLACE,
        "replace",
    )
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

fn route_request(
    index: u32,
    dst: IpNet,
    gw: Option<IpAddr>,
    onlink: bool,
    flags: u16,
    verb: &str,
) -> Request {
    let mut msg = RouteMessage::default();
    msg.header = RouteHeader {
        address_family: family(dst.addr()),
        destination_prefix_length: dst.prefix_len(),
        table: RouteHeader::RT_TABLE_MAIN,
        protocol: RouteProtocol::Boot,
        scope: if gw.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        },
        kind: RouteType::Unicast,
        ..RouteHeader::default()
    };
    if onlink {
        msg.header.flags = RouteFlags::Onlink;
    }
    if dst.prefix_len() > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(route_address(dst.network())));
    }
    if let Some(gw) = gw {
        msg.attributes
            .push(RouteAttribute::Gateway(route_address(gw)));
    }
    msg.attributes.push(RouteAttribute::Oif(index));
    Request::new(
        RouteNetlinkMessage::NewRoute(msg),
        flags,
        format!(
            "{verb} route {dst} via {} dev {index}",
            gw.map_or("-".into(), |g| g.to_string())
        ),
    )
}

/// The IPv4 addresses on link `index`.
pub fn addresses(sock: &mut Socket, index: u32) -> Result<Vec<IpNet>, Error> {
    addresses_of(sock, index, false)
}

/// The addresses of one family (IPv6 when `v6`) on link `index`.
pub fn addresses_of(sock: &mut Socket, index: u32, v6: bool) -> Result<Vec<IpNet>, Error> {
    let mut msg = AddressMessage::default();
    msg.header.index = index;
    msg.header.family = if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    let replies = sock.request(Request::new(
        RouteNetlinkMessage::GetAddress(msg),
        NLM_F_DUMP,
        format!("list addresses of link {index}"),
    ))?;
    Ok(replies
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                a.attributes.iter().find_map(|attr| match attr {
                    AddressAttribute::Local(ip) | AddressAttribute::Address(ip) => {
                        IpNet::new(*ip, a.header.prefix_len).ok()
                    }
                    _ => None,
                })
            }
            _ => None,
        })
        .collect())
}

/// The global-scope addresses on link `index` that can source packets: IPv4 first, then
/// IPv6 (link-local, deprecated and DAD-failed addresses left out), each in kernel order.
pub fn global_addresses(sock: &mut Socket, index: u32) -> Result<Vec<IpAddr>, Error> {
    let dump = |family| {
        let mut msg = AddressMessage::default();
        msg.header.index = index;
        msg.header.family = family;
        Request::new(
            RouteNetlinkMessage::GetAddress(msg),
            NLM_F_DUMP,
            format!("list addresses of link {index}"),
        )
    };
    // One dump at a time: a netlink socket refuses a second dump (EBUSY) while the first is
    // still being read, as an address dump of several parts is.
    let lists = [
        sock.request(dump(AddressFamily::Inet))?,
        sock.request(dump(AddressFamily::Inet6))?,
    ];
    let unusable = AddressHeaderFlags::Dadfailed | AddressHeaderFlags::Deprecated;
    let mut out = Vec::new();
    for list in lists {
        for m in list {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if a.header.index != index
                || a.header.scope != AddressScope::Universe
                || a.header.flags.intersects(unusable)
            {
                continue;
            }
            // IFA_LOCAL is the address itself on point-to-point links, IFA_ADDRESS the peer;
            // on others they are equal, and IPv6 sends only IFA_ADDRESS.
            let local = a.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                a.attributes.iter().find_map(|attr| match attr {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = addr {
                out.push(ip);
            }
        }
    }
    out.sort_by_key(|ip| ip.is_ipv6());
    Ok(out)
}

/// The output link of the main table's default route of one family (IPv6 when `v6`).
pub fn default_route_oif(sock: &mut Socket, v6: bool) -> Result<Option<u32>, Error> {
    if !v6 {
        return Ok(routes_v4(sock)?
            .into_iter()
            .find(|r| r.dst.prefix_len() == 0)
            .and_then(|r| r.oif));
    }
    let replies = dump_routes(sock, AddressFamily::Inet6, "list IPv6 routes")?;
    Ok(replies.iter().find_map(|m| match m {
        RouteNetlinkMessage::NewRoute(r)
            if r.header.table == RouteHeader::RT_TABLE_MAIN
                && r.header.destination_prefix_length == 0
                && r.header.kind == RouteType::Unicast =>
        {
            r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            })
        }
        _ => None,
    }))
}

/// An IPv4 route of the main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    /// Destination.
    pub dst: Ipv4Net,
    /// Next hop.
    pub gw: Option<Ipv4Addr>,
    /// Output link.
    pub oif: Option<u32>,
}

/// The IPv4 routes of the main table.
pub fn routes_v4(sock: &mut Socket) -> Result<Vec<RouteEntry>, Error> {
    let replies = dump_routes(sock, AddressFamily::Inet, "list IPv4 routes")?;
    let mut out = Vec::new();
    for m in &replies {
        let RouteNetlinkMessage::NewRoute(r) = m else {
            continue;
        };
        if r.header.table != RouteHeader::RT_TABLE_MAIN {
            continue;
        }
        let mut entry = RouteEntry {
            dst: Ipv4Net::new(Ipv4Addr::UNSPECIFIED, r.header.destination_prefix_length)
                .unwrap_or_default(),
            gw: None,
            oif: None,
        };
        for attr in &r.attributes {
            match attr {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => {
                    entry.dst =
                        Ipv4Net::new(*d, r.header.destination_prefix_length).unwrap_or_default()
                }
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => entry.gw = Some(*g),
                RouteAttribute::Oif(i) => entry.oif = Some(*i),
                _ => {}
            }
        }
        out.push(entry);
    }
    Ok(out)
}

/// A route of the main table, of either family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpRoute {
    /// Destination.
    pub dst: IpNet,
    /// Next hop.
    pub gw: Option<IpAddr>,
    /// Output link.
    pub oif: Option<u32>,
}

/// The unicast routes of one family (IPv6 when `v6`) in the main table.
pub fn routes(sock: &mut Socket, v6: bool) -> Result<Vec<IpRoute>, Error> {
    let (family, what) = if v6 {
        (AddressFamily::Inet6, "list IPv6 routes")
    } else {
        (AddressFamily::Inet, "list IPv4 routes")
    };
    let unspecified = if v6 {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    let mut out = Vec::new();
    for m in &dump_routes(sock, family, what)? {
        let RouteNetlinkMessage::NewRoute(r) = m else {
            continue;
        };
        if r.header.table != RouteHeader::RT_TABLE_MAIN || r.header.kind != RouteType::Unicast {
            continue;
        }
        let prefix = r.header.destination_prefix_length;
        let mut entry = IpRoute {
            dst: IpNet::new(unspecified, prefix).unwrap_or_default(),
            gw: None,
            oif: None,
        };
        for attr in &r.attributes {
            match attr {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => {
                    entry.dst = IpNet::new(IpAddr::V4(*d), prefix).unwrap_or_default()
                }
                RouteAttribute::Destination(RouteAddress::Inet6(d)) => {
                    entry.dst = IpNet::new(IpAddr::V6(*d), prefix).unwrap_or_default()
                }
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => entry.gw = Some(IpAddr::V4(*g)),
                RouteAttribute::Gateway(RouteAddress::Inet6(g)) => entry.gw = Some(IpAddr::V6(*g)),
                RouteAttribute::Oif(i) => entry.oif = Some(*i),
                _ => {}
            }
        }
        out.push(entry);
    }
    Ok(out)
}

/// Every route of one family, all tables (the callers keep the main table's). No table
/// filter: a strict dump of a table that does not exist yet (a fresh namespace has no main
/// table until its first route) fails with ENOENT, which reads here as no route at all.
fn dump_routes(
    sock: &mut Socket,
    family: AddressFamily,
    what: &str,
) -> Result<Vec<RouteNetlinkMessage>, Error> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family;
    match sock.request(Request::new(
        RouteNetlinkMessage::GetRoute(msg),
        NLM_F_DUMP,
        what,
    )) {
        Ok(r) => Ok(r),
        Err(Error::Netlink { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// True for "already exists".
pub fn is_exists(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EEXIST)
}

/// True for "no such device" (a link already gone).
pub fn is_no_device(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENODEV) | Some(libc::ENOENT))
}

/// A random locally administered unicast MAC.
pub fn random_local_mac() -> Mac {
    let mut mac = [0u8; 6];
    // nix has no getrandom, nor std a public one.
    // SAFETY: the pointer and length describe `mac`, a live writable buffer, and getrandom
    // writes at most that many bytes into it.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != mac.len() as isize {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            ^ u128::from(std::process::id());
        mac.copy_from_slice(&t.to_le_bytes()[..6]);
    }
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}
