//! netsetup against the real kernel, each test in network namespaces of its own (made with
//! `ip netns add`, removed on drop even when the test fails). Needs root: without it the tests
//! fail, they never pass by returning early.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use cni_testkit::netns::Netns as TempNetns;
use cni_testkit::require_root;
use ipnet::{IpNet, Ipv4Net};
use netsetup::link::{self, BridgeSpec, VethSpec};
use netsetup::masquerade::{self, MasqueradeSpec};
use netsetup::vxlan::{self, PeerEntry, UnderlayFamily, VxlanSpec};
use netsetup::{Error, Netns, Socket};

/// A namespace of the test kit's (deleted on drop, even when the test fails), after checking
/// that this runs as root.
fn temp_netns(tag: &str) -> TempNetns {
    require_root();
    TempNetns::new(&format!("nst-{tag}-"))
}

/// The namespace opened by netsetup, the code under test.
fn open(ns: &TempNetns) -> Netns {
    Netns::open(&ns.path()).unwrap()
}

/// What `ip -n <ns> args...` printed on stdout.
fn ip_stdout(ns: &TempNetns, args: &[&str]) -> String {
    String::from_utf8_lossy(&ns.ip(args).stdout).into_owned()
}

fn bridge(name: &str) -> BridgeSpec<'_> {
    BridgeSpec {
        name,
        mtu: 1400,
        promisc: false,
    }
}

#[test]
fn ensure_bridge_creates_once_and_finds_it_again() {
    let node = temp_netns("br");
    let mut sock = open(&node).socket().unwrap();
    let first = link::ensure_bridge(&mut sock, &bridge("tbr0")).unwrap();
    let again = link::ensure_bridge(&mut sock, &bridge("tbr0")).unwrap();
    assert_eq!(first.index, again.index);
    assert_eq!(first.mac, again.mac);
    assert_eq!(again.kind.as_deref(), Some("bridge"));
    assert_eq!(again.mtu, 1400);
    assert!(ip_stdout(&node, &["-br", "link", "show", "tbr0"]).contains("UP"));
}

#[test]
fn racing_bridge_creations_all_succeed_with_one_bridge() {
    let node = temp_netns("race");
    let ns = open(&node);
    let indexes: Vec<u32> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    let mut sock = ns.socket().unwrap();
                    link::ensure_bridge(&mut sock, &bridge("tbr1"))
                        .unwrap()
                        .index
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(indexes.windows(2).all(|w| w[0] == w[1]), "{indexes:?}");
}

#[test]
fn a_non_bridge_link_with_the_bridge_name_is_refused_and_left_alone() {
    let node = temp_netns("nb");
    node.ip_ok(&["link", "add", "tbr2", "type", "veth", "peer", "tbr2p"]);
    let mut sock = open(&node).socket().unwrap();
    let err = link::ensure_bridge(&mut sock, &bridge("tbr2")).unwrap_err();
    assert!(
        matches!(err, Error::NotABridge { ref kind, .. } if kind == "veth"),
        "{err}"
    );
    assert!(ip_stdout(&node, &["-d", "link", "show", "tbr2"]).contains("veth"));
}

#[test]
fn veth_peer_is_created_inside_the_pod_namespace_and_deleted_by_host_name() {
    let node = temp_netns("vn");
    let pod = temp_netns("vp");
    let pod_ns = open(&pod);
    let mut sock = open(&node).socket().unwrap();
    let br = link::ensure_bridge(&mut sock, &bridge("tbr3")).unwrap();
    let reqs = link::create_veth(&VethSpec {
        host_name: "tveth0",
        host_mac: [2, 0, 0, 0, 0, 1],
        peer_name: "eth0",
        peer_mac: [0x0a, 0x58, 10, 0, 0, 2],
        peer_netns: &pod_ns,
        mtu: 1400,
        master: br.index,
        hairpin: true,
    });
    let replies = sock.batch(reqs).unwrap();
    netsetup::socket::first_error(replies, |_, _| false).unwrap();
    let host_end = link::get_link(&mut sock, "tveth0").unwrap().unwrap();
    assert_eq!(host_end.master, Some(br.index));
    assert!(host_end.up);
    assert!(
        link::get_link(&mut sock, "eth0").unwrap().is_none(),
        "peer leaked onto the host"
    );
    let mut inside = pod_ns.socket().unwrap();
    let peer = link::get_link(&mut inside, "eth0").unwrap().unwrap();
    assert_eq!(link::mac_string(&peer.mac), "0a:58:0a:00:00:02");
    assert_eq!(peer.mtu, 1400);
    let hairpin = Command::new("ip")
        .args([
            "netns",
            "exec",
            node.name(),
            "cat",
            "/sys/class/net/tveth0/brport/hairpin_mode",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&hairpin.stdout).trim(), "1");
    sock.request(link::delete_link("tveth0")).unwrap();
    assert!(link::get_link(&mut inside, "eth0").unwrap().is_none());
    match sock.request(link::delete_link("tveth0")) {
        Err(Error::Netlink { source, .. }) => assert!(link::is_no_device(&source)),
        other => panic!("second delete: {:?}", other.map(|_| ())),
    }
}

#[test]
fn addresses_and_routes_are_set_and_listed() {
    let node = temp_netns("ar");
    let mut sock: Socket = open(&node).socket().unwrap();
    let br = link::ensure_bridge(&mut sock, &bridge("tbr4")).unwrap();
    let addr = "10.123.0.1/24".parse().unwrap();
    for replace in [true, true] {
        sock.request(link::add_address(br.index, addr, replace))
            .unwrap();
    }
    assert!(sock
        .request(link::add_address(br.index, addr, false))
        .is_err());
    assert_eq!(link::addresses(&mut sock, br.index).unwrap(), vec![addr]);
    sock.request(link::add_route(
        br.index,
        "0.0.0.0/0".parse().unwrap(),
        Some("10.123.0.254".parse().unwrap()),
        false,
    ))
    .unwrap();
    let routes = link::routes_v4(&mut sock).unwrap();
    assert!(routes
        .iter()
        .any(|r| r.dst.prefix_len() == 0 && r.gw == Some("10.123.0.254".parse().unwrap())));
    assert_eq!(link::default_route_mtu(&mut sock).unwrap(), Some(1400));
}

#[test]
fn not_a_netns_is_refused() {
    let err = Netns::open(std::path::Path::new("/proc/self/ns/uts")).unwrap_err();
    assert!(matches!(err, Error::NotANetns(_)), "{err}");
    let err = Netns::open(std::path::Path::new("/etc/hostname")).unwrap_err();
    assert!(matches!(err, Error::NotANetns(_)), "{err}");
    assert!(Netns::open(std::path::Path::new("/var/run/netns/does-not-exist")).is_err());
}

#[test]
fn masquerade_table_is_created_found_replaced_and_removed() {
    let node = temp_netns("nft");
    let _inside = open(&node).enter().unwrap();
    let keep = ["10.0.0.0/8".parse().unwrap()];
    let spec = MasqueradeSpec {
        table: "cni_suite_test",
        pod_cidr: "10.124.0.0/24".parse().unwrap(),
        non_masquerade: &keep,
        bridge: "tbr5",
    };
    assert_eq!(masquerade::table_comment("cni_suite_test").unwrap(), None);
    masquerade::ensure_masquerade(&spec).unwrap();
    let first = masquerade::table_comment("cni_suite_test")
        .unwrap()
        .unwrap();
    assert!(first.contains("src=10.124.0.0/24"), "{first}");
    masquerade::ensure_masquerade(&spec).unwrap();
    let changed = MasqueradeSpec {
        pod_cidr: "10.125.0.0/24".parse().unwrap(),
        ..spec.clone()
    };
    masquerade::ensure_masquerade(&changed).unwrap();
    let second = masquerade::table_comment("cni_suite_test")
        .unwrap()
        .unwrap();
    assert!(second.contains("src=10.125.0.0/24"), "{second}");
    let rules = Command::new("nft")
        .args(["list", "table", "ip", "cni_suite_test"])
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        rules.contains("ip saddr 10.125.0.0/24 ip daddr != 10.0.0.0/8"),
        "{rules}"
    );
    assert!(!rules.contains("10.124.0.0"), "old rule left: {rules}");
    assert!(masquerade::remove_masquerade("cni_suite_test").unwrap());
    assert!(!masquerade::remove_masquerade("cni_suite_test").unwrap());
    assert_eq!(masquerade::table_comment("cni_suite_test").unwrap(), None);
}

/// The IPv6 rule lives in an ip6 table of the same name, found and removed apart from the
/// IPv4 one.
#[test]
fn ipv6_masquerade_goes_to_an_ip6_table_beside_the_ip_one() {
    let node = temp_netns("nft6");
    let _inside = open(&node).enter().unwrap();
    let keep4 = ["10.0.0.0/8".parse().unwrap()];
    let keep6 = ["fd00:10::/32".parse().unwrap()];
    let v4 = MasqueradeSpec {
        table: "cni_suite_ds",
        pod_cidr: "10.124.0.0/24".parse().unwrap(),
        non_masquerade: &keep4,
        bridge: "tbr6",
    };
    let v6 = MasqueradeSpec {
        pod_cidr: "fd00:10:124::/64".parse().unwrap(),
        non_masquerade: &keep6,
        ..v4.clone()
    };
    masquerade::ensure_masquerade(&v4).unwrap();
    masquerade::ensure_masquerade(&v6).unwrap();
    assert_eq!(
        masquerade::table_comment_of("cni_suite_ds", true).unwrap(),
        Some(v6.fingerprint())
    );
    assert_eq!(
        masquerade::table_comment("cni_suite_ds").unwrap(),
        Some(v4.fingerprint())
    );
    let rules = Command::new("nft")
        .args(["list", "table", "ip6", "cni_suite_ds"])
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        rules.contains("ip6 saddr fd00:10:124::/64 ip6 daddr != fd00:10::/32"),
        "{rules}"
    );
    assert!(masquerade::remove_masquerade_of("cni_suite_ds", true).unwrap());
    assert_eq!(
        masquerade::table_comment_of("cni_suite_ds", true).unwrap(),
        None
    );
    assert!(
        masquerade::table_comment("cni_suite_ds").unwrap().is_some(),
        "the ip table stays"
    );
    assert!(masquerade::remove_masquerade("cni_suite_ds").unwrap());
}

/// IPv6 addresses are added without DAD (usable at once), IPv6 routes via a gateway are
/// installed and listed, and an exclusive second default route of a family is EEXIST.
#[test]
fn ipv6_addresses_skip_dad_and_routes_of_both_families_are_listed() {
    let node = temp_netns("v6addr");
    let mut sock = open(&node).socket().unwrap();
    node.ip_ok(&[
        "link", "add", "v6d0", "type", "veth", "peer", "name", "v6d0p",
    ]);
    node.ip_ok(&["link", "set", "v6d0p", "up"]);
    node.ip_ok(&["link", "set", "v6d0", "up"]);
    let dev = link::get_link(&mut sock, "v6d0").unwrap().unwrap();
    let addr: IpNet = "fd00:10:77::5/64".parse().unwrap();
    sock.request(link::add_address(dev.index, addr, false))
        .unwrap();
    let shown = node
        .ip_json(&["-6", "addr", "show", "dev", "v6d0"])
        .unwrap();
    let entry = shown[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["local"] == "fd00:10:77::5")
        .cloned()
        .unwrap();
    assert!(entry.get("tentative").is_none(), "{entry}");
    assert_eq!(entry["nodad"], true, "{entry}");
    // Beside the link-local address the kernel adds by itself.
    assert!(link::addresses_of(&mut sock, dev.index, true)
        .unwrap()
        .contains(&addr));
    let gw: std::net::IpAddr = "fd00:10:77::1".parse().unwrap();
    let any: IpNet = "::/0".parse().unwrap();
    sock.request(link::add_route_ip(dev.index, any, Some(gw), false))
        .unwrap();
    let again = sock.request(link::add_route_ip(
        dev.index,
        any,
        Some("fd00:10:77::2".parse().unwrap()),
        false,
    ));
    assert!(
        matches!(&again, Err(Error::Netlink { source, .. }) if link::is_exists(source)),
        "an exclusive second IPv6 default route must be EEXIST, not multipath: {again:?}"
    );
    let routes = link::routes(&mut sock, true).unwrap();
    assert!(
        routes
            .iter()
            .any(|r| r.dst == any && r.gw == Some(gw) && r.oif == Some(dev.index)),
        "{routes:?}"
    );
    assert_eq!(
        link::default_route_oif(&mut sock, true).unwrap(),
        Some(dev.index)
    );
}

#[test]
fn a_fresh_namespace_without_a_main_table_lists_no_routes() {
    // A strict dump of a table that does not exist yet fails with ENOENT in the kernel; a
    // fresh node namespace (only lo up, no route in its main table) must read as "no routes".
    let node = temp_netns("fresh");
    let mut sock = open(&node).socket().unwrap();
    assert_eq!(link::routes_v4(&mut sock).unwrap(), vec![]);
    assert_eq!(link::default_route_mtu(&mut sock).unwrap(), None);
}

/// A veth `name` in `node` (its peer `<name>p` up too, so the link has carrier) holding
/// `addrs`; IPv6 ones without duplicate address detection, so they are usable at once.
/// Returns its index.
fn underlay_link(node: &TempNetns, sock: &mut Socket, name: &str, addrs: &[&str]) -> u32 {
    node.ip_ok(&[
        "link",
        "add",
        name,
        "type",
        "veth",
        "peer",
        &format!("{name}p"),
    ]);
    for a in addrs {
        if a.contains(':') {
            node.ip_ok(&["-6", "addr", "add", a, "dev", name, "nodad"]);
        } else {
            node.ip_ok(&["addr", "add", a, "dev", name]);
        }
    }
    node.ip_ok(&["link", "set", &format!("{name}p"), "up"]);
    node.ip_ok(&["link", "set", name, "up"]);
    link::get_link(sock, name).unwrap().unwrap().index
}

/// `ip -d -j link show <name>`'s `info_data` of a VXLAN link.
fn vxlan_info(node: &TempNetns, name: &str) -> serde_json::Value {
    let out = ip_stdout(node, &["-d", "-j", "link", "show", name]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["linkinfo"]["info_data"].clone()
}

#[test]
fn vxlan_device_is_kept_when_equal_and_recreated_when_vni_port_or_local_differ() {
    let node = temp_netns("vx");
    let mut sock = open(&node).socket().unwrap();
    let ul = underlay_link(
        &node,
        &mut sock,
        "ul0",
        &["10.126.0.1/24", "10.126.0.2/24", "fd00:126::1/64"],
    );
    let vtep: Ipv4Net = "10.127.0.0/32".parse().unwrap();
    let mut spec = VxlanSpec {
        name: "tvx0".into(),
        vni: 7,
        port: 4789,
        local: "10.126.0.1".parse().unwrap(),
        underlay_index: ul,
        mac: [0x02, 0, 0, 0, 0, 0x07],
        // Below both limits (underlay − 50 over IPv4, − 70 over IPv6): the kernel clamps a
        // larger MTU, and the device would then never look equal.
        mtu: 1400,
    };
    let (first, created) = vxlan::ensure_vxlan(&mut sock, &spec, vtep).unwrap();
    assert!(created);
    let info = vxlan_info(&node, "tvx0");
    assert_eq!(
        (
            info["id"].as_u64(),
            info["port"].as_u64(),
            info["local"].as_str(),
            info["learning"].as_bool()
        ),
        (Some(7), Some(4789), Some("10.126.0.1"), Some(false)),
        "{info}"
    );
    assert_eq!(first.mtu, 1400);
    assert_eq!(link::mac_string(&first.mac), "02:00:00:00:00:07");

    // The same settings again: the very same device (its FDB and routes would survive).
    let (again, created) = vxlan::ensure_vxlan(&mut sock, &spec, vtep).unwrap();
    assert!(!created, "an equal device must be kept");
    assert_eq!(again.index, first.index);

    // Each setting that differs makes a new device, which carries the new setting, the
    // VTEP address and is up.
    let mut previous = first.index;
    type Change = fn(&mut VxlanSpec);
    let changes: [(&str, Change, &str, serde_json::Value); 4] = [
        ("vni", |s| s.vni = 8, "id", serde_json::json!(8)),
        ("port", |s| s.port = 8472, "port", serde_json::json!(8472)),
        (
            "local",
            |s| s.local = "10.126.0.2".parse().unwrap(),
            "local",
            serde_json::json!("10.126.0.2"),
        ),
        (
            "local (IPv6)",
            |s| s.local = "fd00:126::1".parse().unwrap(),
            "local6",
            serde_json::json!("fd00:126::1"),
        ),
    ];
    for (what, change, key, want) in changes {
        change(&mut spec);
        let (dev, created) = vxlan::ensure_vxlan(&mut sock, &spec, vtep).unwrap();
        assert!(created, "{what} differs: the device must be recreated");
        assert_ne!(dev.index, previous, "{what}: still the old device");
        let info = vxlan_info(&node, "tvx0");
        assert_eq!(info[key], want, "{what}: {info}");
        assert!(dev.up, "{what}: recreated device is down");
        assert_eq!(
            link::addresses(&mut sock, dev.index).unwrap(),
            vec![IpNet::V4(vtep)],
            "{what}: VTEP address"
        );
        let (kept, created) = vxlan::ensure_vxlan(&mut sock, &spec, vtep).unwrap();
        assert!(
            !created && kept.index == dev.index,
            "{what}: not kept after"
        );
        previous = dev.index;
    }
    // Over IPv6 only local6 is set.
    let info = vxlan_info(&node, "tvx0");
    assert!(info.get("local").is_none(), "{info}");
}

#[test]
fn vxlan_fdb_entries_to_ipv4_and_ipv6_remotes_are_programmed_read_and_removed() {
    let node = temp_netns("fdb");
    let mut sock = open(&node).socket().unwrap();
    let ul = underlay_link(&node, &mut sock, "ul0", &["fd00:131::1/64"]);
    let spec = VxlanSpec {
        name: "tvx1".into(),
        vni: 1,
        port: 8472,
        local: "fd00:131::1".parse().unwrap(),
        underlay_index: ul,
        mac: [0x02, 0, 0, 0, 0, 0x01],
        mtu: 1430,
    };
    let (dev, _) = vxlan::ensure_vxlan(&mut sock, &spec, "10.132.1.0/32".parse().unwrap()).unwrap();
    let peer = PeerEntry {
        subnet: "10.132.2.0/24".parse().unwrap(),
        vtep_ip: "10.132.2.0".parse().unwrap(),
        vtep_mac: [0x02, 0, 0, 0, 0, 0x02],
        underlay: "fd00:131::2".parse().unwrap(),
    };
    let replies = sock.batch(vxlan::add_peer(dev.index, &peer)).unwrap();
    netsetup::socket::first_error(replies, |_, _| false).unwrap();
    let st = vxlan::device_state(&mut sock, dev.index).unwrap();
    assert_eq!(st.fdb, vec![(peer.vtep_mac, peer.underlay)]);
    assert_eq!(st.neighbours, vec![(peer.vtep_ip, peer.vtep_mac)]);
    assert_eq!(st.routes, vec![(peer.subnet, Some(peer.vtep_ip))]);
    let fdb = Command::new("bridge")
        .args(["-n", node.name(), "fdb", "show", "dev", "tvx1"])
        .output()
        .unwrap();
    let fdb = String::from_utf8_lossy(&fdb.stdout);
    assert!(
        fdb.contains("02:00:00:00:00:02 dst fd00:131::2"),
        "fdb: {fdb}"
    );
    sock.request(vxlan::del_fdb(dev.index, peer.vtep_mac, peer.underlay))
        .unwrap();
    assert!(vxlan::device_state(&mut sock, dev.index)
        .unwrap()
        .fdb
        .is_empty());
}

/// `ethtool -k <dev>`'s `tx-checksumming` line in `node`.
fn tx_checksumming(node: &TempNetns, dev: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", node.name(), "ethtool", "-k", dev])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ethtool -k {dev}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("tx-checksumming:"))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn tx_checksum_offload_is_turned_off_and_on() {
    let node = temp_netns("csum");
    let mut sock = open(&node).socket().unwrap();
    let ul = underlay_link(&node, &mut sock, "ul0", &["10.133.0.1/24"]);
    let spec = VxlanSpec {
        name: "tvx2".into(),
        vni: 1,
        port: 8472,
        local: "10.133.0.1".parse().unwrap(),
        underlay_index: ul,
        mac: [0x02, 0, 0, 0, 0, 0x03],
        mtu: 1450,
    };
    vxlan::ensure_vxlan(&mut sock, &spec, "10.134.0.0/32".parse().unwrap()).unwrap();
    assert_eq!(tx_checksumming(&node, "tvx2"), "tx-checksumming: on");
    // The ioctl acts in the calling thread's namespace, as in the agent (which runs in the
    // node's namespace).
    let inside = open(&node).enter().unwrap();
    vxlan::set_tx_checksum("tvx2", false).unwrap();
    assert_eq!(tx_checksumming(&node, "tvx2"), "tx-checksumming: off");
    vxlan::set_tx_checksum("tvx2", true).unwrap();
    assert_eq!(tx_checksumming(&node, "tvx2"), "tx-checksumming: on");
    let err = vxlan::set_tx_checksum("nosuchdev0", false).unwrap_err();
    assert!(
        matches!(err, Error::Io { ref source, .. } if source.raw_os_error() == Some(libc::ENODEV)),
        "{err}"
    );
    drop(inside);
}

#[test]
fn underlay_is_the_named_interface_or_the_default_route_link_of_the_chosen_family() {
    use std::net::IpAddr;
    let node = temp_netns("ul");
    let mut sock = open(&node).socket().unwrap();
    let ul0 = underlay_link(
        &node,
        &mut sock,
        "ul0",
        &["10.128.0.1/24", "fd00:128::1/64"],
    );
    let ul1 = underlay_link(
        &node,
        &mut sock,
        "ul1",
        &["10.129.0.1/24", "fd00:129::1/64"],
    );
    let ul2 = underlay_link(&node, &mut sock, "ul2", &[]);
    node.ip_ok(&["route", "add", "default", "via", "10.128.0.254"]);
    node.ip_ok(&["-6", "route", "add", "default", "via", "fd00:129::fe"]);
    let pick = |sock: &mut Socket, name, family| {
        vxlan::underlay(sock, name, family).map(|(l, ip)| (l.index, ip))
    };
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    use UnderlayFamily::{Ipv4, Ipv6, PreferIpv4};

    // From the default routes: IPv4 preferred, IPv6 when asked for.
    assert_eq!(
        pick(&mut sock, None, PreferIpv4).unwrap(),
        (ul0, ip("10.128.0.1"))
    );
    assert_eq!(
        pick(&mut sock, None, Ipv6).unwrap(),
        (ul1, ip("fd00:129::1"))
    );
    // underlayInterface overrides the default route: that interface's address.
    assert_eq!(
        pick(&mut sock, Some("ul1"), PreferIpv4).unwrap(),
        (ul1, ip("10.129.0.1"))
    );
    assert_eq!(
        pick(&mut sock, Some("ul1"), Ipv6).unwrap(),
        (ul1, ip("fd00:129::1"))
    );
    assert_eq!(
        pick(&mut sock, Some("ul0"), Ipv4).unwrap(),
        (ul0, ip("10.128.0.1"))
    );
    // An interface with only a link-local IPv6 address has nothing to encapsulate from.
    assert!(pick(&mut sock, Some("ul2"), PreferIpv4).is_err());
    assert!(pick(&mut sock, Some("nosuchdev0"), PreferIpv4).is_err());
    // An IPv6-only node: the IPv6 default route's link.
    node.ip_ok(&["route", "del", "default"]);
    assert_eq!(
        pick(&mut sock, None, PreferIpv4).unwrap(),
        (ul1, ip("fd00:129::1"))
    );
    assert!(pick(&mut sock, None, Ipv4).is_err());
    // An interface with IPv6 only picks IPv6 unless IPv4 is required.
    node.ip_ok(&["-6", "addr", "add", "fd00:130::1/64", "dev", "ul2", "nodad"]);
    assert_eq!(
        pick(&mut sock, Some("ul2"), PreferIpv4).unwrap(),
        (ul2, ip("fd00:130::1"))
    );
    assert!(pick(&mut sock, Some("ul2"), Ipv4).is_err());
}

/// Peer `i` (0..65536) of the big-batch test: subnet 10.(64 + i/256).(i%256).0/24.
fn big_batch_peer(i: u32) -> PeerEntry {
    let (hi, lo) = ((64 + i / 256) as u8, (i % 256) as u8);
    PeerEntry {
        subnet: Ipv4Net::new([10, hi, lo, 0].into(), 24).unwrap(),
        vtep_ip: [10, hi, lo, 0].into(),
        vtep_mac: [0x0a, 0x58, 0, hi, lo, 1],
        underlay: std::net::IpAddr::from([172, 31, hi, lo]),
    }
}

#[test]
fn a_batch_of_15000_requests_fits_the_socket_buffer_and_every_reply_arrives() {
    // One send of this many requests overflowed the receive buffer (ENOBUFS) and lost
    // acknowledgements, after which the next receive waited forever. Batches now go out in
    // chunks whose replies fit; every one of the 15,000 must be acknowledged.
    let node = temp_netns("big");
    let mut sock = open(&node).socket().unwrap();
    let ul = underlay_link(&node, &mut sock, "ul0", &["172.30.9.1/24"]);
    let spec = VxlanSpec {
        name: "tvxbig".into(),
        vni: 3,
        port: 8472,
        local: "172.30.9.1".parse().unwrap(),
        underlay_index: ul,
        mac: [0x02, 0, 0, 0, 0, 0x09],
        mtu: 1450,
    };
    let (dev, _) = vxlan::ensure_vxlan(&mut sock, &spec, "10.63.0.0/32".parse().unwrap()).unwrap();
    let peers: Vec<PeerEntry> = (0..5000).map(big_batch_peer).collect();
    let requests: Vec<_> = peers
        .iter()
        .flat_map(|p| vxlan::add_peer(dev.index, p))
        .collect();
    assert_eq!(requests.len(), 15_000);
    let replies = sock.batch(requests).unwrap();
    assert_eq!(replies.len(), 15_000);
    netsetup::socket::first_error(replies, |_, _| false).unwrap();
    let st = vxlan::device_state(&mut sock, dev.index).unwrap();
    assert_eq!(
        (st.neighbours.len(), st.fdb.len(), st.routes.len()),
        (5000, 5000, 5000)
    );
    let routes = ip_stdout(&node, &["route", "show", "dev", "tvxbig"]);
    assert_eq!(routes.lines().count(), 5000, "the kernel's own view");

    // The same socket keeps working: remove them all in one batch, and a failing request in
    // the middle of a chunk (a route that is not there) is reported on its own.
    let mut deletes: Vec<_> = peers
        .iter()
        .flat_map(|p| {
            [
                vxlan::del_neighbour(dev.index, p.vtep_ip, p.vtep_mac),
                vxlan::del_fdb(dev.index, p.vtep_mac, p.underlay),
                vxlan::del_route(dev.index, p.subnet, Some(p.vtep_ip)),
            ]
        })
        .collect();
    let missing = big_batch_peer(6000);
    deletes.insert(
        7000,
        vxlan::del_route(dev.index, missing.subnet, Some(missing.vtep_ip)),
    );
    let replies = sock.batch(deletes).unwrap();
    let failed: Vec<&str> = replies
        .iter()
        .filter(|(_, r)| r.is_err())
        .map(|(what, _)| what.as_str())
        .collect();
    assert_eq!(
        failed,
        vec![format!("delete route {}", missing.subnet).as_str()]
    );
    let st = vxlan::device_state(&mut sock, dev.index).unwrap();
    assert!(st.neighbours.is_empty() && st.fdb.is_empty() && st.routes.is_empty());
}
