//! The store against a real directory: leases, idempotency, release, GC, round-robin,
//! exhaustion, host-local compatibility, and concurrent reservation from many processes' worth
//! of threads.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::fs;
use std::net::IpAddr;
use std::sync::Arc;

use node_ipam::{Error, Pool, Store};

fn pool(s: &str) -> Pool {
    Pool::new(s.parse::<ipnet::IpNet>().unwrap(), None).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn reserves_in_host_local_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), "net1").unwrap();
    let r = store.reserve(&pool("10.1.0.0/24"), "ctr1", "eth0").unwrap();
    assert_eq!(r.address, ip("10.1.0.2"));
    assert!(!r.existing);
    let dir = tmp.path().join("net1");
    assert_eq!(
        fs::read_to_string(dir.join("10.1.0.2")).unwrap(),
        "ctr1\r\neth0"
    );
    assert_eq!(
        fs::read_to_string(dir.join("last_reserved_ip.0")).unwrap(),
        "10.1.0.2"
    );
    assert!(dir.join("lock").exists());
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(dir.join("10.1.0.2"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let mode = fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn second_reserve_of_the_same_attachment_returns_the_same_address() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), "n").unwrap();
    let p = pool("10.1.0.0/24");
    let a = store.reserve(&p, "ctr1", "eth0").unwrap();
    let b = store.reserve(&p, "ctr1", "eth0").unwrap();
    assert_eq!(a.address, b.address);
    assert!(b.existing);
    let c = store.reserve(&p, "ctr1", "eth1").unwrap();
    assert_ne!(a.address, c.address);
    assert_eq!(store.leases().unwrap().len(), 2);
}

#[test]
fn release_is_idempotent_and_addresses_are_not_reused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), "n").unwrap();
    let p = pool("10.1.0.0/24");
    let a = store.reserve(&p, "a", "eth0").unwrap().address;
    assert_eq!(store.release("a", "eth0").unwrap(), vec![a]);
    assert_eq!(store.release("a", "eth0").unwrap(), Vec::<IpAddr>::new());
    assert_eq!(
        store.release("never", "eth0").unwrap(),
        Vec::<IpAddr>::new()
    );
    let b = store.reserve(&p, "b", "eth0").unwrap().address;
    assert_ne!(a, b, "a freed address must not be handed out again at once");
    assert!(!tmp.path().join("n").join(a.to_string()).exists());
}

#[test]
fn exhaustion_is_a_clear_error_and_wraps_round_robin_after_release() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), "n").unwrap();
    let p = pool("10.1.0.0/29");
    let got: Vec<_> = (0..5)
        .map(|i| store.reserve(&p, &format!("c{i}"), "eth0").unwrap().address)
        .collect();
    assert_eq!(got.len(), 5);
    assert!(!store.has_free(&p).unwrap());
    let err = store.reserve(&p, "c5", "eth0").unwrap_err();
    assert!(matches!(err, Error::Exhausted { capacity: 5, .. }), "{err}");
    assert!(err.to_string().contains("10.1.0.0/29"));
    assert!(store.lookup("c5", "eth0").unwrap().is_empty());
    store.release("c2", "eth0").unwrap();
    assert!(store.has_free(&p).unwrap());
    assert_eq!(store.reserve(&p, "c6", "eth0").unwrap().address, got[2]);
}

#[test]
fn gc_frees_what_is_not_valid_and_cleans_stale_index_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), "n").unwrap();
    let p = pool("10.1.0.0/24");
    let a = store.reserve(&p, "a", "eth0").unwrap().address;
    let b = store.reserve(&p, "b", "eth0").unwrap().address;
    let dir = tmp.path().join("n");
    // A crash between writing the index and the address file leaves this behind.
    fs::write(dir.join("attachments").join("ghost@eth0"), "10.1.0.99").unwrap();
    fs::write(dir.join(".tmp.4242"), "x").unwrap();
    let valid: HashSet<_> = [("a".to_string(), "eth0".to_string())].into();
    let mut stale = Vec::new();
    let released = store
        .gc(&valid, |owner| {
            stale.push(owner.clone());
            Ok::<(), Error>(())
        })
        .unwrap();
    assert_eq!(released, vec![b]);
    assert_eq!(stale, vec![("b".to_string(), "eth0".to_string())]);
    assert_eq!(store.lookup("a", "eth0").unwrap(), vec![a]);
    assert_eq!(store.lookup("b", "eth0").unwrap(), Vec::<IpAddr>::new());
    assert!(!dir.join("attachments").join("ghost@eth0").exists());
    assert!(!dir.join("attachments").join("b@eth0").exists());
    assert!(!dir.join(".tmp.4242").exists());
}

#[test]
fn a_crash_after_the_index_write_is_finished_by_the_retry() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), "n").unwrap();
    let p = pool("10.1.0.0/24");
    let dir = tmp.path().join("n");
    fs::write(dir.join("attachments").join("a@eth0"), "10.1.0.7").unwrap();
    let r = store.reserve(&p, "a", "eth0").unwrap();
    assert_eq!(r.address, ip("10.1.0.7"));
    assert_eq!(
        fs::read_to_string(dir.join("10.1.0.7")).unwrap(),
        "a\r\neth0"
    );
    // The same situation, but another container took the address meanwhile.
    fs::write(dir.join("attachments").join("b@eth0"), "10.1.0.7").unwrap();
    let r = store.reserve(&p, "b", "eth0").unwrap();
    assert_ne!(r.address, ip("10.1.0.7"));
    assert_eq!(store.lookup("a", "eth0").unwrap(), vec![ip("10.1.0.7")]);
}

#[test]
fn adopts_a_host_local_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("10.1.0.5"), "old\r\neth0").unwrap();
    fs::write(dir.join("last_reserved_ip.0"), "10.1.0.5").unwrap();
    let store = Store::open(tmp.path(), "n").unwrap();
    assert_eq!(store.lookup("old", "eth0").unwrap(), vec![ip("10.1.0.5")]);
    let next = store.reserve(&pool("10.1.0.0/24"), "new", "eth0").unwrap();
    assert_eq!(next.address, ip("10.1.0.6"));
    assert_eq!(store.release("old", "eth0").unwrap(), vec![ip("10.1.0.5")]);
}

#[test]
fn rejects_names_that_escape_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    for bad in ["..", "a/b", "", "."] {
        assert!(Store::open(tmp.path(), bad).is_err(), "{bad:?}");
    }
    let store = Store::open(tmp.path(), "n").unwrap();
    let p = pool("10.1.0.0/24");
    assert!(store.reserve(&p, "../../etc/x", "eth0").is_err());
    assert!(store.reserve(&p, "a", "x/../../y").is_err());
}

#[test]
fn concurrent_reservations_never_share_an_address() {
    let tmp = tempfile::tempdir().unwrap();
    let p = pool("10.1.0.0/24");
    let root = Arc::new(tmp.path().to_path_buf());
    let handles: Vec<_> = (0..40)
        .map(|i| {
            let root = Arc::clone(&root);
            std::thread::spawn(move || {
                // A store per thread, as every plugin process opens its own.
                let store = Store::open(&root, "n").unwrap();
                store.reserve(&p, &format!("c{i}"), "eth0").unwrap().address
            })
        })
        .collect();
    let got: HashSet<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(got.len(), 40);
}

#[test]
fn a_dense_range_is_searched_from_one_listing_and_finds_every_hole() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), "n").unwrap();
    let p = pool("10.1.0.0/27");
    let all: Vec<_> = (0..p.capacity())
        .map(|i| store.reserve(&p, &format!("c{i}"), "eth0").unwrap().address)
        .collect();
    assert_eq!(all.len(), 29);
    assert_eq!(all[28], ip("10.1.0.30"));
    assert!(!store.has_free(&p).unwrap());
    // Two holes behind the last reserved address: the search wraps, finds .2 taken, lists
    // the directory and must still find both, in round-robin order.
    store.release("c3", "eth0").unwrap();
    store.release("c20", "eth0").unwrap();
    assert!(store.has_free(&p).unwrap());
    assert_eq!(store.reserve(&p, "x", "eth0").unwrap().address, all[3]);
    assert_eq!(store.reserve(&p, "y", "eth0").unwrap().address, all[20]);
    assert!(matches!(
        store.reserve(&p, "z", "eth0").unwrap_err(),
        Error::Exhausted { .. }
    ));
}

#[test]
fn a_symlinked_network_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, tmp.path().join("n")).unwrap();
    let err = Store::open(tmp.path(), "n").unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written through it"
    );
}

#[test]
fn an_attachment_lock_makes_a_second_holder_wait_and_gc_skip_it() {
    let tmp = tempfile::tempdir().unwrap();
    let p = pool("10.1.0.0/24");
    // Stores opened separately, as two plugin processes do: separate lock file descriptions.
    let first = Store::open(tmp.path(), "n").unwrap();
    let a = first.reserve(&p, "a", "eth0").unwrap().address;
    first.reserve(&p, "b", "eth0").unwrap();
    let held = first.lock_attachment("a", "eth0").unwrap();

    let root = tmp.path().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let second = Store::open(&root, "n").unwrap();
        let _lock = second.lock_attachment("a", "eth0").unwrap();
        tx.send(()).unwrap();
    });
    assert!(
        rx.recv_timeout(std::time::Duration::from_millis(300))
            .is_err(),
        "a second lock of the same attachment was granted while the first is held"
    );

    // GC from a third store while "a" is busy: "b" goes, "a" (mid-ADD) stays.
    let third = Store::open(tmp.path(), "n").unwrap();
    let released = third.gc(&HashSet::new(), |_| Ok::<(), Error>(())).unwrap();
    assert_eq!(released.len(), 1);
    assert_eq!(third.lookup("a", "eth0").unwrap(), vec![a]);
    assert_eq!(third.lookup("b", "eth0").unwrap(), Vec::<IpAddr>::new());

    // Another attachment's lock is independent.
    let _other = third.lock_attachment("c", "eth0").unwrap();
    drop(held);
    rx.recv_timeout(std::time::Duration::from_secs(5))
        .expect("the waiter got the lock once it was released");
    waiter.join().unwrap();
    let released = third.gc(&HashSet::new(), |_| Ok::<(), Error>(())).unwrap();
    assert_eq!(released, vec![a]);
}

#[test]
fn attachment_busy_sees_a_held_lock_without_taking_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    // No directory, no lock file: nothing is busy, and nothing is created.
    assert!(!node_ipam::attachment_busy(&dir, "a", "eth0").unwrap());
    assert!(!dir.exists());
    let store = Store::open(tmp.path(), "n").unwrap();
    assert!(!node_ipam::attachment_busy(&dir, "a", "eth0").unwrap());
    let held = store.lock_attachment("a", "eth0").unwrap();
    assert!(node_ipam::attachment_busy(&dir, "a", "eth0").unwrap());
    assert!(!node_ipam::attachment_busy(&dir, "a", "eth1").unwrap());
    // The probe took nothing: another holder still gets the lock at once after the release.
    drop(held);
    assert!(!node_ipam::attachment_busy(&dir, "a", "eth0").unwrap());
    let other = Store::open(tmp.path(), "n").unwrap();
    let _again = other.lock_attachment("a", "eth0").unwrap();
    assert!(node_ipam::attachment_busy(&dir, "a", "eth0").unwrap());
}

#[test]
fn last_reserved_is_rewritten_exactly_when_the_address_gets_shorter() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), "n").unwrap();
    let last = tmp.path().join("n").join("last_reserved_ip.0");
    fs::write(&last, "10.1.0.254").unwrap();
    let r = store.reserve(&pool("10.1.0.0/24"), "a", "eth0").unwrap();
    assert_eq!(r.address, ip("10.1.0.2"), "round-robin wraps past .254");
    // host-local's format: the address alone, no padding or stale tail.
    assert_eq!(fs::read_to_string(&last).unwrap(), "10.1.0.2");
}

#[test]
fn read_leases_sees_what_the_store_holds_without_touching_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(node_ipam::read_leases(&tmp.path().join("net1"))
        .unwrap()
        .is_empty());
    assert!(
        !tmp.path().join("net1").exists(),
        "reading must create nothing"
    );
    let store = Store::open(tmp.path(), "net1").unwrap();
    let p = pool("10.1.0.0/24");
    let a = store.reserve(&p, "abc", "eth0").unwrap().address;
    let b = store.reserve(&p, "def", "net1").unwrap().address;
    // A file host-local or a crash left empty holds an address for no one.
    fs::write(store.dir().join("10.1.0.200"), "").unwrap();
    let read = node_ipam::read_leases(store.dir()).unwrap();
    assert_eq!(read, store.leases().unwrap());
    assert_eq!(
        read,
        [
            (a, Some(("abc".to_string(), "eth0".to_string()))),
            (b, Some(("def".to_string(), "net1".to_string()))),
            (ip("10.1.0.200"), None),
        ]
    );
    assert_eq!(
        node_ipam::parse_owner("abc\r\neth0\n"),
        Some(("abc".into(), "eth0".into()))
    );
    assert_eq!(node_ipam::parse_owner("abc"), None);
}

#[test]
fn a_requested_address_is_leased_once_and_refused_when_taken_or_outside() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), "n").unwrap();
    let p = pool("10.1.0.0/24");
    let r = store
        .reserve_requested(&p, ip("10.1.0.42"), "ctr1", "eth0")
        .unwrap();
    assert_eq!((r.address, r.existing), (ip("10.1.0.42"), false));
    assert_eq!(
        fs::read_to_string(tmp.path().join("n/10.1.0.42")).unwrap(),
        "ctr1\r\neth0"
    );
    assert_eq!(store.lookup("ctr1", "eth0").unwrap(), vec![ip("10.1.0.42")]);
    // A retried ADD of the same attachment gets it back.
    let again = store
        .reserve_requested(&p, ip("10.1.0.42"), "ctr1", "eth0")
        .unwrap();
    assert!(again.existing);
    // Another attachment asking for it is refused, naming the holder.
    match store.reserve_requested(&p, ip("10.1.0.42"), "ctr2", "eth0") {
        Err(Error::RequestedUnavailable { address, why }) => {
            assert_eq!(address, ip("10.1.0.42"));
            assert!(why.contains("ctr1/eth0"), "{why}");
        }
        other => panic!("taken address: {other:?}"),
    }
    assert_eq!(store.lookup("ctr2", "eth0").unwrap(), Vec::<IpAddr>::new());
    // The holder cannot switch to another address without a DEL.
    assert!(matches!(
        store.reserve_requested(&p, ip("10.1.0.43"), "ctr1", "eth0"),
        Err(Error::RequestedUnavailable { .. })
    ));
    // Outside the range, the network, the gateway and the broadcast address are refused.
    for bad in ["10.2.0.5", "10.1.0.0", "10.1.0.1", "10.1.0.255"] {
        let e = store
            .reserve_requested(&p, ip(bad), "ctr3", "eth0")
            .unwrap_err();
        assert!(
            matches!(e, Error::RequestedUnavailable { .. }),
            "{bad}: {e}"
        );
        assert_eq!(cni_spec::ErrorCode::code(&e), 106, "{bad}");
    }
    assert_eq!(store.leases().unwrap().len(), 1);
    // Round-robin goes on after the requested address.
    let next = store.reserve(&p, "ctr4", "eth0").unwrap();
    assert_eq!(next.address, ip("10.1.0.43"));
}
