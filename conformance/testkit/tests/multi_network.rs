//! Pods on two networks (Multus and podman attach a second conflist on `eth1`): kubenet-bridge
//! attaches a second network on another interface with its own bridge and podCIDR, the pod
//! keeps exactly one working default route (`defaultRoute`: `auto`, `always`, `never`), also
//! when a runtime attaches both networks at once, and DEL, CHECK and GC of one network leave
//! the other alone.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use cni_conformance::kernel::default_routes_v4;
use cni_testkit::leases::LeaseDir;
use cni_testkit::netns::Node;
use cni_testkit::plugin::{bin_dir, plugin_binary, Expect, PluginRun};
use cni_testkit::pod::Pod;
use cni_testkit::traffic::ping;
use cni_testkit::{eventually, require_root, unique_link_name, unique_name};
use serde_json::{json, Value};
use tempfile::TempDir;

const VERSION: &str = "1.1.0";

/// One network of the node: its own bridge, podCIDR, dataDir and interface name in pods.
struct Network {
    config: Value,
    ifname: &'static str,
    gateway: Ipv4Addr,
    leases: LeaseDir,
    _data: TempDir,
}

impl Network {
    fn new(third_octet: u8, ifname: &'static str, default_route: &str) -> Network {
        let data = tempfile::Builder::new()
            .prefix("cnit-mn-")
            .tempdir()
            .expect("cannot create a dataDir");
        let name = unique_name("cnit-mn-");
        let config = json!({
            "cniVersion": VERSION, "name": name, "type": "kubenet-bridge",
            "bridge": unique_link_name("mn"), "podCIDR": format!("10.245.{third_octet}.0/24"),
            "ipMasq": false, "defaultRoute": default_route,
            "dataDir": data.path(), "logFile": data.path().join("kubenet-bridge.log"),
        });
        Network {
            leases: LeaseDir::new(data.path(), &name),
            config,
            ifname,
            gateway: Ipv4Addr::new(10, 245, third_octet, 1),
            _data: data,
        }
    }
}

struct MultiNode {
    node: Node,
    program: PathBuf,
}

impl MultiNode {
    fn new() -> MultiNode {
        require_root();
        MultiNode {
            node: Node::new(),
            program: plugin_binary("kubenet-bridge"),
        }
    }

    fn run(&self, verb: &str, net: &Network, pod: &Pod) -> PluginRun {
        PluginRun::new(&self.program, &self.node)
            .command(verb)
            .cni_path(&bin_dir().to_string_lossy())
            .container_id(&pod.id)
            .netns(&pod.netns.path())
            .ifname(net.ifname)
            .config(&net.config)
    }

    fn add(&self, net: &Network, pod: &Pod, ctx: &str) -> Value {
        self.run("ADD", net, pod).exec().expect_success(ctx)
    }

    fn check(&self, net: &Network, pod: &Pod, result: &Value, ctx: &str) {
        let mut config = net.config.clone();
        config["prevResult"] = result.clone();
        self.run("CHECK", net, pod)
            .config(&config)
            .exec()
            .expect_success(ctx);
    }

    fn del(&self, net: &Network, pod: &Pod, ctx: &str) {
        self.run("DEL", net, pod).exec().expect_success(ctx);
    }
}

fn address_of(result: &Value) -> Ipv4Addr {
    result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {result}"))
}

fn has_default_route(result: &Value) -> bool {
    result["routes"]
        .as_array()
        .is_some_and(|r| r.iter().any(|r| r["dst"] == "0.0.0.0/0"))
}

#[test]
fn second_network_attaches_beside_the_first_and_each_detaches_alone() {
    let mn = MultiNode::new();
    let (first, second) = (
        Network::new(1, "eth0", "auto"),
        Network::new(2, "eth1", "auto"),
    );
    let (pod, peer) = (Pod::new(), Pod::new());
    let r1 = mn.add(&first, &pod, "add the first network");
    let r2 = mn.add(&second, &pod, "add the second network on eth1");
    let peer2 = mn.add(&second, &peer, "add a peer pod on the second network only");
    assert!(has_default_route(&r1), "the first network's result: {r1}");
    assert!(
        !has_default_route(&r2),
        "auto on a pod that has a default route must not claim one: {r2}"
    );
    assert_eq!(
        default_routes_v4(&pod.netns),
        vec![(first.gateway.to_string(), "eth0".to_owned())],
        "exactly one default route, the first network's"
    );
    mn.check(&first, &pod, &r1, "check the first network");
    mn.check(&second, &pod, &r2, "check the second network");
    assert!(
        ping(&pod.netns, first.gateway),
        "the first gateway is unreachable"
    );
    assert!(
        ping(&pod.netns, address_of(&peer2)),
        "a pod of the second network is unreachable over eth1"
    );

    // DEL of the first network leaves the second attached and reachable.
    mn.del(&first, &pod, "del the first network");
    assert!(!pod.netns.has_link("eth0"), "eth0 survived its DEL");
    assert!(
        !first.leases.is_reserved(address_of(&r1)),
        "the first network kept its lease"
    );
    assert!(
        second.leases.is_reserved(address_of(&r2)),
        "DEL of the first network released the second's lease"
    );
    mn.check(
        &second,
        &pod,
        &r2,
        "check the second network after the first's DEL",
    );
    assert!(
        ping(&pod.netns, address_of(&peer2)),
        "the second network is unreachable after the first's DEL"
    );

    // GC of the second network, listing only the pod: the peer goes, the pod stays.
    let mut config = second.config.clone();
    config["cni.dev/valid-attachments"] = json!([{"containerID": pod.id, "ifname": "eth1"}]);
    PluginRun::new(&mn.program, &mn.node)
        .command("GC")
        .config(&config)
        .exec()
        .expect_success("gc of the second network");
    assert!(second.leases.is_reserved(address_of(&r2)));
    assert!(!second.leases.is_reserved(address_of(&peer2)));
    assert!(
        eventually(Duration::from_secs(5), || !peer.netns.has_link("eth1")),
        "GC left the peer's interface"
    );
    mn.del(&second, &pod, "del the second network");
    assert!(second.leases.reserved_addresses().is_empty());
}

#[test]
fn concurrent_adds_of_two_networks_leave_exactly_one_default_route() {
    let mn = MultiNode::new();
    let (first, second) = (
        Network::new(3, "eth0", "auto"),
        Network::new(4, "eth1", "auto"),
    );
    let pods: Vec<Pod> = (0..12).map(|_| Pod::new()).collect();
    let results: Vec<(Value, Value)> = thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|pod| {
                let (mn, first, second) = (&mn, &first, &second);
                s.spawn(move || {
                    let a = s.spawn(move || mn.add(first, pod, "concurrent add of eth0"));
                    let b = mn.add(second, pod, "concurrent add of eth1");
                    (a.join().expect("eth0 add"), b)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("pod thread"))
            .collect()
    });
    for (pod, (r1, r2)) in pods.iter().zip(&results) {
        let routes = default_routes_v4(&pod.netns);
        assert_eq!(routes.len(), 1, "pod {}: default routes {routes:?}", pod.id);
        let claimed = [has_default_route(r1), has_default_route(r2)];
        assert_eq!(
            claimed.iter().filter(|c| **c).count(),
            1,
            "exactly one result must claim the default route: {r1} {r2}"
        );
        let (gateway, dev) = &routes[0];
        let want = if claimed[0] {
            (first.gateway, "eth0")
        } else {
            (second.gateway, "eth1")
        };
        assert_eq!(
            (gateway.as_str(), dev.as_str()),
            (want.0.to_string().as_str(), want.1),
            "the kernel's default route is not the one the result claims"
        );
        mn.check(&first, pod, r1, "check eth0");
        mn.check(&second, pod, r2, "check eth1");
    }
}

#[test]
fn default_route_always_replaces_and_never_leaves_none() {
    let mn = MultiNode::new();
    let first = Network::new(5, "eth0", "auto");
    let always = Network::new(6, "eth1", "always");
    let never = Network::new(7, "eth2", "never");
    let pod = Pod::new();
    mn.add(&first, &pod, "add the first network");
    let r = mn.add(&always, &pod, "add a defaultRoute always network");
    assert!(has_default_route(&r), "always must claim the route: {r}");
    assert_eq!(
        default_routes_v4(&pod.netns),
        vec![(always.gateway.to_string(), "eth1".to_owned())],
        "always replaces the first network's default route"
    );
    mn.check(&always, &pod, &r, "check the always network");

    let alone = Pod::new();
    let r = mn.add(&never, &alone, "add a defaultRoute never network");
    assert!(!has_default_route(&r), "never must not claim a route: {r}");
    assert!(
        default_routes_v4(&alone.netns).is_empty(),
        "never left a default route: {:?}",
        default_routes_v4(&alone.netns)
    );
    mn.check(&never, &alone, &r, "check the never network");
    assert!(
        ping(&alone.netns, never.gateway),
        "its own subnet stays reachable"
    );
}
