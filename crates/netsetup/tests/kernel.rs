//! netsetup against the real kernel, each test in network namespaces of its own (made with
//! `ip netns add`, removed on drop even when the test fails). Needs root: without it the tests
//! fail, they never pass by returning early.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use netsetup::link::{self, BridgeSpec, VethSpec};
use netsetup::masquerade::{self, MasqueradeSpec};
use netsetup::{Error, Netns, Socket};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A named network namespace that is deleted on drop.
struct TempNetns {
    name: String,
}

impl TempNetns {
    fn new(tag: &str) -> TempNetns {
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "kernel tests need root: run them as root"
        );
        let name = format!(
            "nst-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(st.success(), "ip netns add {name}");
        TempNetns { name }
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    fn open(&self) -> Netns {
        Netns::open(&self.path()).unwrap()
    }

    fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for TempNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
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
    let node = TempNetns::new("br");
    let mut sock = node.open().socket().unwrap();
    let first = link::ensure_bridge(&mut sock, &bridge("tbr0")).unwrap();
    let again = link::ensure_bridge(&mut sock, &bridge("tbr0")).unwrap();
    assert_eq!(first.index, again.index);
    assert_eq!(first.mac, again.mac);
    assert_eq!(again.kind.as_deref(), Some("bridge"));
    assert_eq!(again.mtu, 1400);
    assert!(node.ip(&["-br", "link", "show", "tbr0"]).contains("UP"));
}

#[test]
fn racing_bridge_creations_all_succeed_with_one_bridge() {
    let node = TempNetns::new("race");
    let ns = node.open();
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
    let node = TempNetns::new("nb");
    node.ip(&["link", "add", "tbr2", "type", "veth", "peer", "tbr2p"]);
    let mut sock = node.open().socket().unwrap();
    let err = link::ensure_bridge(&mut sock, &bridge("tbr2")).unwrap_err();
    assert!(
        matches!(err, Error::NotABridge { ref kind, .. } if kind == "veth"),
        "{err}"
    );
    assert!(node.ip(&["-d", "link", "show", "tbr2"]).contains("veth"));
}

#[test]
fn veth_peer_is_created_inside_the_pod_namespace_and_deleted_by_host_name() {
    let node = TempNetns::new("vn");
    let pod = TempNetns::new("vp");
    let pod_ns = pod.open();
    let mut sock = node.open().socket().unwrap();
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
            &node.name,
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
    let node = TempNetns::new("ar");
    let mut sock: Socket = node.open().socket().unwrap();
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
    let node = TempNetns::new("nft");
    let _inside = node.open().enter().unwrap();
    let spec = MasqueradeSpec {
        table: "cni_suite_test",
        pod_cidr: "10.124.0.0/24".parse().unwrap(),
        non_masquerade: "10.0.0.0/8".parse().unwrap(),
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

#[test]
fn a_fresh_namespace_without_a_main_table_lists_no_routes() {
    // A strict dump of a table that does not exist yet fails with ENOENT in the kernel; a
    // fresh node namespace (lo down, no route at all) must read as "no routes".
    let node = TempNetns::new("fresh");
    let mut sock = node.open().socket().unwrap();
    assert_eq!(link::routes_v4(&mut sock).unwrap(), vec![]);
    assert_eq!(link::default_route_mtu(&mut sock).unwrap(), None);
}
