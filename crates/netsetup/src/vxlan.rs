//! The VXLAN device of an overlay and its per-peer state: neighbour (VTEP address → MAC),
//! FDB (MAC → remote underlay address) and route (remote subnet via VTEP address, onlink).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::link::{self, Link, Mac};
use crate::socket::{first_error, Request, Socket};
use crate::Error;

/// Settings of the VXLAN device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanSpec {
    /// Device name.
    pub name: String,
    /// VXLAN network identifier.
    pub vni: u32,
    /// UDP destination port.
    pub port: u16,
    /// Local underlay address (source of encapsulated packets): IFLA_VXLAN_LOCAL for IPv4,
    /// IFLA_VXLAN_LOCAL6 for IPv6 (the device then encapsulates in IPv6 only).
    pub local: IpAddr,
    /// Underlay link index.
    pub underlay_index: u32,
    /// VTEP MAC, kept across restarts so peers' entries stay valid.
    pub mac: Mac,
    /// Device MTU (underlay MTU less the encapsulation).
    pub mtu: u32,
}

/// The settings of an existing VXLAN device, as the kernel reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct VxlanState {
    vni: Option<u32>,
    port: Option<u16>,
    local: Option<IpAddr>,
    underlay: Option<u32>,
    learning: Option<bool>,
}

fn vxlan_state(msg: &LinkMessage) -> VxlanState {
    let mut st = VxlanState::default();
    for attr in &msg.attributes {
        let LinkAttribute::LinkInfo(infos) = attr else {
            continue;
        };
        for info in infos {
            let LinkInfo::Data(InfoData::Vxlan(list)) = info else {
                continue;
            };
            for v in list {
                match v {
                    InfoVxlan::Id(id) => st.vni = Some(*id),
                    InfoVxlan::Port(p) => st.port = Some(*p),
                    InfoVxlan::Local(l) => st.local = Some(IpAddr::V4(*l)),
                    InfoVxlan::Local6(l) => st.local = Some(IpAddr::V6(*l)),
                    InfoVxlan::Link(l) => st.underlay = Some(*l),
                    InfoVxlan::Learning(l) => st.learning = Some(*l),
                    _ => {}
                }
            }
        }
    }
    st
}

fn get_link_message(sock: &mut Socket, name: &str) -> Result<Option<LinkMessage>, Error> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    match sock.request(Request::new(
        RouteNetlinkMessage::GetLink(msg),
        0,
        format!("get link {name}"),
    )) {
        Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l),
            _ => None,
        })),
        Err(Error::Netlink { source, .. }) if link::is_no_device(&source) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Makes sure the VXLAN device exists with these settings (learning off), up, with `address`.
/// A device whose settings differ is deleted and created anew; a non-VXLAN link of that
/// name is refused. Returns the device and whether it was (re)created.
pub fn ensure_vxlan(
    sock: &mut Socket,
    spec: &VxlanSpec,
    address: Ipv4Net,
) -> Result<(Link, bool), Error> {
    ensure_vxlan_with(sock, spec, IpNet::V4(address))
}

/// [`ensure_vxlan`] with an address of either family: the IPv6 device of a dual-stack
/// overlay carries its subnet's IPv6 VTEP address (a /128, as flannel's `flannel-v6.<vni>`).
pub fn ensure_vxlan_with(
    sock: &mut Socket,
    spec: &VxlanSpec,
    address: IpNet,
) -> Result<(Link, bool), Error> {
    let mut created = false;
    let existing = get_link_message(sock, &spec.name)?;
    let reuse = match &existing {
        None => false,
        Some(msg) => {
            let l = Link::from_message(msg);
            if l.kind.as_deref() != Some("vxlan") {
                return Err(Error::WrongKind {
                    name: spec.name.clone(),
                    kind: l.kind.unwrap_or_else(|| "device".into()),
                    expected: "vxlan",
                });
            }
            let st = vxlan_state(msg);
            let same = st.vni == Some(spec.vni)
                && st.port == Some(spec.port)
                && st.local == Some(spec.local)
                && st.underlay == Some(spec.underlay_index)
                && st.learning == Some(false)
                && l.mac == spec.mac
                && l.mtu == spec.mtu;
            if !same {
                log::info!(
                    "vxlan device {} differs from {spec:?} ({st:?}): recreating",
                    spec.name
                );
                sock.request(link::delete_link(&spec.name))?;
            }
            same
        }
    };
    if !reuse {
        let mut msg = LinkMessage::default();
        msg.attributes
            .push(LinkAttribute::IfName(spec.name.clone()));
        msg.attributes
            .push(LinkAttribute::Address(spec.mac.to_vec()));
        msg.attributes.push(LinkAttribute::Mtu(spec.mtu));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::Id(spec.vni),
                match spec.local {
                    IpAddr::V4(l) => InfoVxlan::Local(l),
                    IpAddr::V6(l) => InfoVxlan::Local6(l),
                },
                InfoVxlan::Link(spec.underlay_index),
                InfoVxlan::Port(spec.port),
                InfoVxlan::Learning(false),
            ])),
        ]));
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        sock.request(Request::new(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | netlink_packet_core::NLM_F_EXCL,
            format!("create vxlan {}", spec.name),
        ))?;
        created = true;
    }
    let dev = link::get_link(sock, &spec.name)?.ok_or_else(|| Error::Netlink {
        what: format!("find {} after creating it", spec.name),
        source: std::io::Error::from_raw_os_error(libc::ENODEV),
    })?;
    let replies = sock.batch(vec![
        link::set_flags(dev.index, true, false),
        add_vtep_address(dev.index, address),
    ])?;
    first_error(replies, |_, _| false)?;
    Ok((dev, created))
}

/// A request that puts a VTEP address on device `index` (replacing it if present). An IPv6
/// one skips duplicate address detection (IFA_F_NODAD): it is unique by its lease, and a
/// tentative address would neither source nor take packets for the second DAD lasts (on a
/// VXLAN device without a multicast FDB entry DAD's solicitations go nowhere anyway).
pub fn add_vtep_address(index: u32, address: IpNet) -> Request {
    let mut request = link::add_address(index, address, true);
    if let (IpNet::V6(_), RouteNetlinkMessage::NewAddress(msg)) = (address, &mut request.message) {
        msg.header.flags |= AddressHeaderFlags::Nodad;
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    request
}

/// One peer as programmed on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerEntry {
    /// The peer's pod subnet.
    pub subnet: Ipv4Net,
    /// The peer's VTEP address (its subnet's network address, as flannel does).
    pub vtep_ip: Ipv4Addr,
    /// The peer's VTEP MAC.
    pub vtep_mac: Mac,
    /// The peer's underlay address (of the device's family).
    pub underlay: IpAddr,
}

/// What the kernel holds for the device: neighbours, FDB entries and routes.
#[derive(Clone, Debug, Default)]
pub struct DeviceState {
    /// (VTEP address, MAC) of permanent neighbours.
    pub neighbours: Vec<(Ipv4Addr, Mac)>,
    /// (MAC, underlay address) of FDB entries with a remote.
    pub fdb: Vec<(Mac, IpAddr)>,
    /// (subnet, gateway) of routes out of the device.
    pub routes: Vec<(Ipv4Net, Option<Ipv4Addr>)>,
}

/// Reads the neighbours, FDB entries and routes of device `index`.
pub fn device_state(sock: &mut Socket, index: u32) -> Result<DeviceState, Error> {
    let NeighbourDump { neighbours, fdb } = neighbour_dump(sock, index, AddressFamily::Inet)?;
    let mut st = DeviceState {
        neighbours: neighbours
            .into_iter()
            .filter_map(|(ip, mac)| match ip {
                IpAddr::V4(ip) => Some((ip, mac)),
                IpAddr::V6(_) => None,
            })
            .collect(),
        fdb,
        routes: Vec::new(),
    };
    for r in link::routes_v4(sock)? {
        if r.oif == Some(index) && r.gw.is_some() {
            st.routes.push((r.dst, r.gw));
        }
    }
    Ok(st)
}

/// The permanent neighbours of one family (`Inet` or `Inet6`) on device `index`, as (address,
/// MAC), and its FDB entries with a remote, as (MAC, underlay address): both dumps in one
/// batch.
fn neighbour_dump(
    sock: &mut Socket,
    index: u32,
    family: AddressFamily,
) -> Result<NeighbourDump, Error> {
    let dump = |family| {
        let mut m = NeighbourMessage::default();
        m.header.family = family;
        // Strict dump checking filters IP neighbours by the NDA_IFINDEX attribute (a header
        // ifindex is refused) and FDB entries by the header's ifindex.
        if family == AddressFamily::Bridge {
            m.header.ifindex = index;
        } else {
            m.attributes.push(NeighbourAttribute::IfIndex(index));
        }
        Request::new(
            RouteNetlinkMessage::GetNeighbour(m),
            NLM_F_DUMP,
            "list neighbours",
        )
    };
    let (mut neighbours, mut fdb) = (Vec::new(), Vec::new());
    let replies = sock.batch(vec![dump(family), dump(AddressFamily::Bridge)])?;
    for list in first_error(replies, |_, _| false)? {
        for m in list {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
            };
            if n.header.ifindex != index {
                continue;
            }
            let mut dst: Option<IpAddr> = None;
            let mut mac = None;
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                        dst = Some(IpAddr::V4(*ip))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => {
                        dst = Some(IpAddr::V6(*ip))
                    }
                    // FDB entries (family bridge) carry the remote address as raw bytes, 4 or
                    // 16 of them (the kernel's vxlan_nla_get_addr tells them apart the same way).
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                        dst = match b.len() {
                            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
                            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
                            _ => None,
                        }
                    }
                    NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                        let mut m = [0u8; 6];
                        m.copy_from_slice(l);
                        mac = Some(m);
                    }
                    _ => {}
                }
            }
            match (n.header.family, dst, mac) {
                (AddressFamily::Bridge, Some(ip), Some(mac)) => fdb.push((mac, ip)),
                (f, Some(ip), Some(mac))
                    if f == family && n.header.state == NeighbourState::Permanent =>
                {
                    neighbours.push((ip, mac))
                }
                _ => {}
            }
        }
    }
    Ok(NeighbourDump { neighbours, fdb })
}

/// What [`neighbour_dump`] found on a device.
struct NeighbourDump {
    /// (address, MAC) of the permanent neighbours of the family asked for.
    neighbours: Vec<(IpAddr, Mac)>,
    /// (MAC, underlay address) of FDB entries with a remote.
    fdb: Vec<(Mac, IpAddr)>,
}

fn neigh(index: u32, family: AddressFamily, dst: IpAddr, mac: Mac, fdb: bool) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family;
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    if fdb {
        m.header.flags = NeighbourFlags::Own;
    }
    let dst = match dst {
        IpAddr::V4(ip) => NeighbourAddress::Inet(ip),
        IpAddr::V6(ip) => NeighbourAddress::Inet6(ip),
    };
    m.attributes.push(NeighbourAttribute::Destination(dst));
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    m
}

/// Requests that program one peer: neighbour, FDB entry and route (replacing what differs).
pub fn add_peer(index: u32, p: &PeerEntry) -> Vec<Request> {
    let mut route = match link::add_route(index, p.subnet, Some(p.vtep_ip), true).message {
        RouteNetlinkMessage::NewRoute(r) => r,
        _ => RouteMessage::default(),
    };
    route.header.table = RouteHeader::RT_TABLE_MAIN;
    vec![
        Request::new(
            RouteNetlinkMessage::NewNeighbour(neigh(
                index,
                AddressFamily::Inet,
                IpAddr::V4(p.vtep_ip),
                p.vtep_mac,
                false,
            )),
            NLM_F_CREATE | NLM_F_REPLACE,
            format!(
                "neighbour {} -> {}",
                p.vtep_ip,
                link::mac_string(&p.vtep_mac)
            ),
        ),
        Request::new(
            RouteNetlinkMessage::NewNeighbour(neigh(
                index,
                AddressFamily::Bridge,
                p.underlay,
                p.vtep_mac,
                true,
            )),
            NLM_F_CREATE | NLM_F_REPLACE,
            format!("fdb {} -> {}", link::mac_string(&p.vtep_mac), p.underlay),
        ),
        Request::new(
            RouteNetlinkMessage::NewRoute(route),
            NLM_F_CREATE | NLM_F_REPLACE,
            format!("route {} via {} onlink", p.subnet, p.vtep_ip),
        ),
    ]
}

/// A request that removes a neighbour.
pub fn del_neighbour(index: u32, ip: Ipv4Addr, mac: Mac) -> Request {
    Request::new(
        RouteNetlinkMessage::DelNeighbour(neigh(
            index,
            AddressFamily::Inet,
            IpAddr::V4(ip),
            mac,
            false,
        )),
        0,
        format!("delete neighbour {ip}"),
    )
}

/// A request that removes an FDB entry.
pub fn del_fdb(index: u32, mac: Mac, underlay: IpAddr) -> Request {
    Request::new(
        RouteNetlinkMessage::DelNeighbour(neigh(index, AddressFamily::Bridge, underlay, mac, true)),
        0,
        format!("delete fdb {} -> {underlay}", link::mac_string(&mac)),
    )
}

/// A request that removes a route out of device `index`.
pub fn del_route(index: u32, dst: Ipv4Net, gw: Option<Ipv4Addr>) -> Request {
    let mut msg = match link::add_route(index, dst, gw, false).message {
        RouteNetlinkMessage::NewRoute(r) => r,
        _ => RouteMessage::default(),
    };
    msg.attributes
        .retain(|a| !matches!(a, RouteAttribute::Gateway(_)) || gw.is_some());
    Request::new(
        RouteNetlinkMessage::DelRoute(msg),
        0,
        format!("delete route {dst}"),
    )
}

/// One IPv6 peer as programmed on the IPv6 device of a dual-stack overlay (flannel's
/// `flannel-v6.<vni>`): the peer's IPv6 pod subnet via its IPv6 VTEP address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerEntry6 {
    /// The peer's IPv6 pod subnet.
    pub subnet: Ipv6Net,
    /// The peer's IPv6 VTEP address (its subnet's network address, as flannel does).
    pub vtep_ip: Ipv6Addr,
    /// The MAC of the peer's IPv6 device (flannel's `BackendV6Data.VtepMAC`).
    pub vtep_mac: Mac,
    /// The peer's underlay address (of the IPv6 device's underlay family).
    pub underlay: IpAddr,
}

/// What the kernel holds for an IPv6 device: IPv6 neighbours, FDB entries, IPv6 routes.
#[derive(Clone, Debug, Default)]
pub struct DeviceState6 {
    /// (VTEP address, MAC) of permanent IPv6 neighbours.
    pub neighbours: Vec<(Ipv6Addr, Mac)>,
    /// (MAC, underlay address) of FDB entries with a remote.
    pub fdb: Vec<(Mac, IpAddr)>,
    /// (subnet, gateway) of IPv6 routes out of the device with a gateway.
    pub routes: Vec<(Ipv6Net, Ipv6Addr)>,
}

/// Reads the IPv6 neighbours, FDB entries and IPv6 routes of device `index`.
pub fn device_state6(sock: &mut Socket, index: u32) -> Result<DeviceState6, Error> {
    let NeighbourDump { neighbours, fdb } = neighbour_dump(sock, index, AddressFamily::Inet6)?;
    let mut st = DeviceState6 {
        neighbours: neighbours
            .into_iter()
            .filter_map(|(ip, mac)| match ip {
                IpAddr::V6(ip) => Some((ip, mac)),
                IpAddr::V4(_) => None,
            })
            .collect(),
        fdb,
        routes: Vec::new(),
    };
    for r in link::routes(sock, true)? {
        if let (IpNet::V6(dst), Some(IpAddr::V6(gw)), Some(i)) = (r.dst, r.gw, r.oif) {
            if i == index {
                st.routes.push((dst, gw));
            }
        }
    }
    Ok(st)
}

/// The IPv6 route `dst` via `gw`, onlink, out of device `index`, in the main table.
fn route6(index: u32, dst: Ipv6Net, gw: Ipv6Addr) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header = RouteHeader {
        address_family: AddressFamily::Inet6,
        destination_prefix_length: dst.prefix_len(),
        table: RouteHeader::RT_TABLE_MAIN,
        protocol: RouteProtocol::Boot,
        scope: RouteScope::Universe,
        kind: RouteType::Unicast,
        flags: RouteFlags::Onlink,
        ..RouteHeader::default()
    };
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet6(
            dst.network(),
        )));
    msg.attributes
        .push(RouteAttribute::Gateway(RouteAddress::Inet6(gw)));
    msg.attributes.push(RouteAttribute::Oif(index));
    msg
}

/// Requests that program one IPv6 peer: IPv6 neighbour, FDB entry and IPv6 route (replacing
/// what differs), as flannel's AddV6ARP, AddV6FDB and its onlink route on `flannel-v6.<vni>`.
pub fn add_peer6(index: u32, p: &PeerEntry6) -> Vec<Request> {
    vec![
        Request::new(
            RouteNetlinkMessage::NewNeighbour(neigh(
                index,
                AddressFamily::Inet6,
                IpAddr::V6(p.vtep_ip),
                p.vtep_mac,
                false,
            )),
            NLM_F_CREATE | NLM_F_REPLACE,
            format!(
                "neighbour {} -> {}",
                p.vtep_ip,
                link::mac_string(&p.vtep_mac)
            ),
        ),
        Request::new(
            RouteNetlinkMessage::NewNeighbour(neigh(
                index,
                AddressFamily::Bridge,
                p.underlay,
                p.vtep_mac,
                true,
            )),
            NLM_F_CREATE | NLM_F_REPLACE,
            format!("fdb {} -> {}", link::mac_string(&p.vtep_mac), p.underlay),
        ),
        Request::new(
            RouteNetlinkMessage::NewRoute(route6(index, p.subnet, p.vtep_ip)),
            NLM_F_CREATE | NLM_F_REPLACE,
            format!("route {} via {} onlink", p.subnet, p.vtep_ip),
        ),
    ]
}

/// A request that removes an IPv6 neighbour.
pub fn del_neighbour6(index: u32, ip: Ipv6Addr, mac: Mac) -> Request {
    Request::new(
        RouteNetlinkMessage::DelNeighbour(neigh(
            index,
            AddressFamily::Inet6,
            IpAddr::V6(ip),
            mac,
            false,
        )),
        0,
        format!("delete neighbour {ip}"),
    )
}

/// A request that removes an IPv6 route out of device `index`.
pub fn del_route6(index: u32, dst: Ipv6Net, gw: Ipv6Addr) -> Request {
    Request::new(
        RouteNetlinkMessage::DelRoute(route6(index, dst, gw)),
        0,
        format!("delete route {dst}"),
    )
}

/// Turns tx checksum offload on or off on `name` (ethtool's ETHTOOL_STXCSUM), the fix for
/// kernels and NICs that send VXLAN packets with bad inner checksums.
pub fn set_tx_checksum(name: &str, on: bool) -> Result<(), Error> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_STXCSUM: u32 = 0x17;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: u32::from(on),
    };
    let mut req = IfReq {
        name: [0; 16],
        data: &mut value,
        _pad: [0; 16],
    };
    let n = name.len().min(15);
    req.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsRawFd;
    // A datagram socket used only for this ioctl; closed when dropped.
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|errno| Error::Io {
        what: "socket for ethtool".into(),
        source: errno.into(),
    })?;
    // nix has no ethtool call.
    // SAFETY: SIOCETHTOOL reads the ifreq and the ethtool_value it points to (both alive until
    // this returns) and writes only into the ethtool_value; the fd is the open socket above.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req) };
    let err = std::io::Error::last_os_error();
    if rc < 0 {
        return Err(Error::Io {
            what: format!("ethtool tx-checksumming {name}"),
            source: err,
        });
    }
    Ok(())
}

/// Which address family the underlay uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnderlayFamily {
    /// IPv4 when the underlay has it (a default route, or an address on the named
    /// interface), else IPv6: dual-stack nodes keep the IPv4 encapsulation flannel uses.
    #[default]
    PreferIpv4,
    /// IPv4 only.
    Ipv4,
    /// IPv6 only.
    Ipv6,
}

impl UnderlayFamily {
    /// The families to try, in order (true = IPv6).
    fn order(self) -> &'static [bool] {
        match self {
            UnderlayFamily::PreferIpv4 => &[false, true],
            UnderlayFamily::Ipv4 => &[false],
            UnderlayFamily::Ipv6 => &[true],
        }
    }

    fn describe(self) -> &'static str {
        match self {
            UnderlayFamily::PreferIpv4 => "IPv4 or IPv6",
            UnderlayFamily::Ipv4 => "IPv4",
            UnderlayFamily::Ipv6 => "IPv6",
        }
    }
}

/// The underlay: the link `name`, or else the one carrying the default route, with its first
/// global address of `family` (IPv4 before IPv6 unless told otherwise).
pub fn underlay(
    sock: &mut Socket,
    name: Option<&str>,
    family: UnderlayFamily,
) -> Result<(Link, IpAddr), Error> {
    let no_device = |what: String| Error::Netlink {
        what,
        source: std::io::Error::from_raw_os_error(libc::ENODEV),
    };
    let no_address = |l: &Link| Error::Netlink {
        what: format!(
            "find a global {} address on underlay {}",
            family.describe(),
            l.name
        ),
        source: std::io::Error::from_raw_os_error(libc::EADDRNOTAVAIL),
    };
    if let Some(n) = name {
        let l = link::get_link(sock, n)?
            .ok_or_else(|| no_device(format!("find the underlay interface {n}")))?;
        let addrs = link::global_addresses(sock, l.index)?;
        let ip = family
            .order()
            .iter()
            .find_map(|v6| addrs.iter().find(|a| a.is_ipv6() == *v6).copied())
            .ok_or_else(|| no_address(&l))?;
        return Ok((l, ip));
    }
    // From the default route: the first family (in preference order) whose default route's
    // link has an address of that family.
    for &v6 in family.order() {
        let Some(oif) = link::default_route_oif(sock, v6)? else {
            continue;
        };
        let Some(l) = link::get_link_by_index(sock, oif)? else {
            continue;
        };
        let addrs = link::global_addresses(sock, l.index)?;
        if let Some(ip) = addrs.iter().find(|a| a.is_ipv6() == v6) {
            return Ok((l, *ip));
        }
    }
    Err(no_device(format!(
        "find the underlay interface from the {} default route",
        family.describe()
    )))
}
