//! The store with two ranges (IPv4 + IPv6) and with one IPv6 range: host-local's layout per
//! range set, the index of one line per address, the upgrade from an IPv4-only directory,
//! crash recovery, exhaustion per family, requested addresses, GC, concurrency.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::fs;
use std::net::IpAddr;
use std::sync::Arc;

use node_ipam::{Error, Pool, Ranges, Store};

fn pool(s: &str) -> Pool {
    Pool::new(s.parse::<ipnet::IpNet>().unwrap(), None).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn dual() -> Ranges {
    Ranges::new(vec![pool("10.1.0.0/24"), pool("fd00:10:1::/64")]).unwrap()
}

#[test]
fn one_address_per_range_in_host_local_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), "net1").unwrap();
    let lease = store.reserve_ranges(&dual(), &[], "ctr1", "eth0").unwrap();
    assert_eq!(lease.addresses, [ip("10.1.0.2"), ip("fd00:10:1::2")]);
    assert!(!lease.existing);
    let dir = tmp.path().join("net1");
    // host-local: a file per address named as Go prints it, a last_reserved_ip per range set.
    for name in ["10.1.0.2", "fd00:10:1::2"] {
        assert_eq!(fs::read_to_string(dir.join(name)).unwrap(), "ctr1\r\neth0");
    }
    // One file creation for both: the two names share the owner file's inode.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(dir.join("10.1.0.2")).unwrap().nlink(), 2);
    assert!(!fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with(".tmp")));
    assert_eq!(
        fs::read_to_string(dir.join("last_reserved_ip.0")).unwrap(),
        "10.1.0.2"
    );
    assert_eq!(
        fs::read_to_string(dir.join("last_reserved_ip.1")).unwrap(),
        "fd00:10:1::2"
    );
    assert_eq!(
        fs::read_to_string(dir.join("attachments/ctr1@eth0")).unwrap(),
        "10.1.0.2\nfd00:10:1::2"
    );
    let again = store.reserve_ranges(&dual(), &[], "ctr1", "eth0").unwrap();
    assert_eq!(again.addresses, lease.addresses);
    assert!(again.existing);
    let next = store.reserve_ranges(&dual(), &[], "ctr2", "eth0").unwrap();
    assert_eq!(next.addresses, [ip("10.1.0.3"), ip("fd00:10:1::3")]);
    assert_eq!(store.lookup("ctr1", "eth0").unwrap(), lease.addresses);
    assert_eq!(store.release("ctr1", "eth0").unwrap(), lease.addresses);
    assert!(store.lookup("ctr1", "eth0").unwrap().is_empty());
    assert!(!dir.join("fd00:10:1::2").exists() && !dir.join("10.1.0.2").exists());
    // Round-robin per family: neither freed address comes back at once.
    let third = store.reserve_ranges(&dual(), &[], "ctr3", "eth0").unwrap();
    assert_eq!(third.addresses, [ip("10.1.0.4"), ip("fd00:10:1::4")]);
}

#[test]
fn the_ranges_order_is_the_addresses_order_and_names_the_hint_files() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), "n").unwrap();
    let v6_first = Ranges::new(vec![pool("fd00:10:1::/64"), pool("10.1.0.0/24")]).unwrap();
    let lease = store.reserve_ranges(&v6_first, &[], "c", "eth0").unwrap();
    assert_eq!(lease.addresses, [ip("fd00:10:1::2"), ip("10.1.0.2")]);
    let dir = store.dir();
    assert_eq!(
        fs::read_to_string(dir.join("last_reserved_ip.0")).unwrap(),
        "fd00:10:1::2"
    );
    assert_eq!(
        fs::read_to_string(dir.join("last_reserved_ip.1")).unwrap(),
        "10.1.0.2"
    );
}

#[test]
fn ipv6_only_uses_range_set_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), "n").unwrap();
    let v6 = Ranges::new(vec![pool("fd00:10:2::/120")]).unwrap();
    let lease = store.reserve_ranges(&v6, &[], "c", "eth0").unwrap();
    assert_eq!(lease.addresses, [ip("fd00:10:2::2")]);
    assert_eq!(
        fs::read_to_string(store.dir().join("last_reserved_ip.0")).unwrap(),
        "fd00:10:2::2"
    );
    assert!(!store.dir().join("last_reserved_ip.1").exists());
}

/// A node upgraded in place: its IPv4-only directory (written by the release before
/// dual-stack, or by host-local) keeps its pods, and a pod of the old config stays IPv4-only
/// while new pods of a dual-stack config get both.
#[test]
fn an_ipv4_only_directory_of_the_previous_release_keeps_its_pods() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    fs::create_dir_all(dir.join("attachments")).unwrap();
    fs::write(dir.join("10.1.0.5"), "old\r\neth0").unwrap();
    fs::write(dir.join("attachments/old@eth0"), "10.1.0.5").unwrap();
    fs::write(dir.join("last_reserved_ip.0"), "10.1.0.5").unwrap();
    let store = Store::open(tmp.path(), "n").unwrap();
    assert_eq!(store.lookup("old", "eth0").unwrap(), [ip("10.1.0.5")]);
    // The IPv4-only config of the new release: the same answer, the same bytes.
    let v4 = Ranges::one(pool("10.1.0.0/24"));
    let same = store.reserve_ranges(&v4, &[], "old", "eth0").unwrap();
    assert!(same.existing);
    assert_eq!(same.addresses, [ip("10.1.0.5")]);
    let new = store.reserve_ranges(&dual(), &[], "new", "eth0").unwrap();
    assert_eq!(new.addresses, [ip("10.1.0.6"), ip("fd00:10:1::2")]);
    assert_eq!(store.release("old", "eth0").unwrap(), [ip("10.1.0.5")]);
    assert_eq!(
        fs::read_to_string(dir.join("attachments/new@eth0")).unwrap(),
        "10.1.0.6\nfd00:10:1::2"
    );
}

/// host-local with two range sets writes no index: it is built on first use, one entry per
/// attachment holding both its addresses.
#[test]
fn a_dual_stack_host_local_directory_is_indexed_on_first_use() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    fs::create_dir_all(&dir).unwrap();
    for (name, owner) in [
        ("10.1.0.2", "a\r\neth0"),
        ("fd00:10:1::2", "a\r\neth0"),
        ("10.1.0.3", "b\r\neth0"),
        ("fd00:10:1::3", "b\r\neth0"),
    ] {
        fs::write(dir.join(name), owner).unwrap();
    }
    fs::write(dir.join("last_reserved_ip.0"), "10.1.0.3").unwrap();
    fs::write(dir.join("last_reserved_ip.1"), "fd00:10:1::3").unwrap();
    let store = Store::open(tmp.path(), "n").unwrap();
    assert_eq!(
        store.lookup("a", "eth0").unwrap(),
        [ip("10.1.0.2"), ip("fd00:10:1::2")]
    );
    let c = store.reserve_ranges(&dual(), &[], "c", "eth0").unwrap();
    assert_eq!(c.addresses, [ip("10.1.0.4"), ip("fd00:10:1::4")]);
    assert_eq!(store.leases().unwrap().len(), 6);
}

/// A process killed after the index entry and before (some of) its address files: the
/// retried ADD finishes with the same addresses; nothing is held twice meanwhile.
#[test]
fn a_crash_between_index_and_address_files_is_completed_with_the_same_addresses() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), "n").unwrap();
    let dir = store.dir().to_path_buf();
    fs::write(dir.join("attachments/c@eth0"), "10.1.0.9\nfd00:10:1::9").unwrap();
    fs::write(dir.join("10.1.0.9"), "c\r\neth0").unwrap();
    // Only the IPv4 file made it: lookup vouches for what is really held.
    assert_eq!(store.lookup("c", "eth0").unwrap(), [ip("10.1.0.9")]);
    let done = store.reserve_ranges(&dual(), &[], "c", "eth0").unwrap();
    assert_eq!(done.addresses, [ip("10.1.0.9"), ip("fd00:10:1::9")]);
    assert!(!done.existing);
    assert_eq!(
        fs::read_to_string(dir.join("fd00:10:1::9")).unwrap(),
        "c\r\neth0"
    );
    // The stale half of another crashed attachment whose IPv6 address was taken meanwhile.
    fs::write(dir.join("attachments/d@eth0"), "fd00:10:1::9").unwrap();
    let d = store.reserve_ranges(&dual(), &[], "d", "eth0").unwrap();
    assert_ne!(d.addresses[1], ip("fd00:10:1::9"));
    let released = store.gc(&HashSet::new(), |_| Ok::<(), Error>(())).unwrap();
    assert_eq!(released.len(), 4);
    assert_eq!(fs::read_dir(dir.join("attachments")).unwrap().count(), 0);
}

#[test]
fn exhaustion_is_per_family_and_leases_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), "n").unwrap();
    let small_v6 = Ranges::new(vec![pool("10.1.0.0/24"), pool("fd00:10:3::/126")]).unwrap();
    for c in ["a", "b"] {
        store.reserve_ranges(&small_v6, &[], c, "eth0").unwrap();
    }
    let exhausted = store.exhausted(&small_v6).unwrap();
    assert_eq!(exhausted, [pool("fd00:10:3::/126")]);
    match store
        .reserve_ranges(&small_v6, &[], "c", "eth0")
        .unwrap_err()
    {
        Error::Exhausted { subnet, capacity } => {
            assert_eq!(subnet.to_string(), "fd00:10:3::/126");
            assert_eq!(capacity, 2);
        }
        other => panic!("{other}"),
    }
    assert!(store.lookup("c", "eth0").unwrap().is_empty());
    assert_eq!(
        store.leases().unwrap().len(),
        4,
        "no IPv4 address left held by c"
    );
    assert!(!store.dir().join("attachments/c@eth0").exists());
    store.release("a", "eth0").unwrap();
    assert!(store.exhausted(&small_v6).unwrap().is_empty());
}

#[test]
fn requested_addresses_are_per_family() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), "n").unwrap();
    let got = store
        .reserve_ranges(&dual(), &[ip("fd00:10:1::42")], "a", "eth0")
        .unwrap();
    assert_eq!(got.addresses, [ip("10.1.0.2"), ip("fd00:10:1::42")]);
    let both = store
        .reserve_ranges(
            &dual(),
            &[ip("10.1.0.50"), ip("fd00:10:1::50")],
            "b",
            "eth0",
        )
        .unwrap();
    assert_eq!(both.addresses, [ip("10.1.0.50"), ip("fd00:10:1::50")]);
    for (bad, who) in [
        (ip("fd00:10:1::42"), "c"),
        (ip("fd00:99::1"), "c"),
        (ip("fd00:10:1::1"), "c"),
        (ip("fd00:10:1::43"), "a"),
    ] {
        let e = store
            .reserve_ranges(&dual(), &[bad], who, "eth0")
            .unwrap_err();
        assert!(
            matches!(e, Error::RequestedUnavailable { .. }),
            "{bad}: {e}"
        );
    }
    let v4_only = Ranges::one(pool("10.1.0.0/24"));
    let e = store
        .reserve_ranges(&v4_only, &[ip("fd00:10:1::7")], "d", "eth0")
        .unwrap_err();
    assert!(
        e.to_string().contains("no pod range of its address family"),
        "{e}"
    );
    assert!(store.lookup("c", "eth0").unwrap().is_empty());
    assert!(store.lookup("d", "eth0").unwrap().is_empty());
}

#[test]
fn concurrent_dual_stack_reservations_never_share_an_address() {
    let tmp = tempfile::tempdir().unwrap();
    let root = Arc::new(tmp.path().to_path_buf());
    let handles: Vec<_> = (0..40)
        .map(|i| {
            let root = Arc::clone(&root);
            std::thread::spawn(move || {
                let store = Store::open(&root, "n").unwrap();
                store
                    .reserve_ranges(&dual(), &[], &format!("c{i}"), "eth0")
                    .unwrap()
                    .addresses
            })
        })
        .collect();
    let got: Vec<Vec<IpAddr>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let v4: HashSet<_> = got.iter().map(|a| a[0]).collect();
    let v6: HashSet<_> = got.iter().map(|a| a[1]).collect();
    assert_eq!((v4.len(), v6.len()), (40, 40));
    assert!(v4.iter().all(IpAddr::is_ipv4) && v6.iter().all(IpAddr::is_ipv6));
}
