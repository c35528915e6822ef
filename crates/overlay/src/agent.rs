//! `vxlan-overlay agent`: leases this node's subnet, keeps the lease alive, publishes the
//! VTEP, and keeps every peer programmed: a full reconcile at start, on every change etcd
//! reports, and periodically, so a missed event never leaves stale state. When etcd is
//! unreachable the dataplane stays as it is and the agent reconnects.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ipnet::Ipv4Net;
use netsetup::link::{self, Mac};
use netsetup::vxlan::PeerEntry;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::{interval, timeout, MissedTickBehavior};

use crate::config::OverlayConfig;
use crate::dataplane::{self, detect_underlay, overlay_mtu, peer_entry, Dataplane, Underlay};
use crate::registry::{NodeRecord, Registry};
use crate::state::NodeState;
use crate::subnet_file::SubnetEnv;
use crate::Error;

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(cfg: OverlayConfig) -> Result<(), Error> {
    cfg.validate()?;
    // One thread: the agent's work is small, and netlink sockets are used from this thread only.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Runtime(e.to_string()))?;
    rt.block_on(async move {
        if cfg.etcd_endpoints.is_empty() {
            run_static(&cfg).await
        } else {
            run_etcd(&cfg).await
        }
    })
}

/// What the agent knows of itself.
struct Node {
    underlay: Underlay,
    mac: Mac,
    state_path: std::path::PathBuf,
}

fn node(cfg: &OverlayConfig) -> Result<(Node, NodeState), Error> {
    let underlay = detect_underlay(cfg)?;
    let state_path = cfg.data_dir().join("agent.json");
    let state = NodeState::load(&state_path)?;
    let mac = state
        .vtep_mac
        .as_deref()
        .and_then(dataplane::parse_mac)
        .unwrap_or_else(link::random_local_mac);
    log::info!(
        "node {} on {} (mtu {}), vtep mac {}",
        underlay.ip,
        underlay.link.name,
        underlay.link.mtu,
        link::mac_string(&mac)
    );
    Ok((
        Node {
            underlay,
            mac,
            state_path,
        },
        state,
    ))
}

fn publish(cfg: &OverlayConfig, node: &Node, subnet: Ipv4Net) -> Result<(), Error> {
    NodeState {
        subnet: Some(subnet),
        vtep_mac: Some(link::mac_string(&node.mac)),
    }
    .save(&node.state_path)?;
    let cluster = cfg.cluster()?;
    let gateway = Ipv4Addr::from(u32::from(subnet.network()) + 1);
    SubnetEnv {
        network: cluster,
        subnet: Ipv4Net::new(gateway, subnet.prefix_len())
            .map_err(|e| Error::Config(e.to_string()))?,
        mtu: overlay_mtu(cfg, &node.underlay),
        ipmasq: cfg.ip_masq,
    }
    .write(&cfg.subnet_file())?;
    log::info!("leased {subnet}; wrote {}", cfg.subnet_file().display());
    Ok(())
}

async fn run_static(cfg: &OverlayConfig) -> Result<(), Error> {
    let path = cfg
        .peers_file
        .clone()
        .ok_or_else(|| Error::Config("peersFile is needed without etcdEndpoints".into()))?;
    let (mut node, _) = node(cfg)?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| Error::Runtime(e.to_string()))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Error::Runtime(e.to_string()))?;
    let mut tick = interval(Duration::from_secs(cfg.resync_seconds.max(1)));
    let mut plane: Option<(Dataplane, Ipv4Net)> = None;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = tick.tick() => {}
        }
        let peers = dataplane::read_peers_file(&path)?;
        let me = peers
            .iter()
            .find(|p| p.underlay == node.underlay.ip)
            .ok_or_else(|| {
                Error::Config(format!(
                    "{} has no entry for this node ({})",
                    path.display(),
                    node.underlay.ip
                ))
            })?;
        let subnet = me.subnet.trunc();
        node.mac = dataplane::parse_mac(&me.vtep_mac)
            .ok_or_else(|| Error::Config(format!("bad vtepMac {:?}", me.vtep_mac)))?;
        if plane.as_ref().map(|(_, s)| *s) != Some(subnet) {
            plane = Some((
                Dataplane::setup(cfg, &node.underlay, subnet, node.mac)?,
                subnet,
            ));
            publish(cfg, &node, subnet)?;
        }
        let others: Vec<PeerEntry> = peers
            .iter()
            .filter(|p| p.underlay != node.underlay.ip)
            .filter_map(|p| peer_entry(p.subnet, p.underlay, &p.vtep_mac))
            .collect();
        if let Some((dp, _)) = plane.as_mut() {
            let c = dp.reconcile(&others)?;
            if c != Default::default() {
                log::info!("reconciled {} peers: {c:?}", others.len());
            }
        }
    }
}

/// The peers from etcd records, without this node: their underlay addresses of this node's
/// family (a VXLAN device encapsulates in one family only, so a node with no address of it
/// cannot be reached and is left out).
fn peers_of(records: &[(Ipv4Net, NodeRecord)], me: IpAddr, vni: u32) -> Vec<PeerEntry> {
    records
        .iter()
        .filter(|(_, r)| !r.is_node(me) && r.backend.vni == vni)
        .filter_map(|(s, r)| match r.underlay_like(me) {
            Some(ip) => peer_entry(*s, ip, &r.backend.vtep_mac),
            None => {
                log::debug!("peer {s} has no underlay address of the family of {me}: skipped");
                None
            }
        })
        .collect()
}

async fn connect(cfg: &OverlayConfig) -> Result<Registry, Error> {
    Registry::connect(
        &cfg.etcd_endpoints,
        &cfg.etcd_prefix,
        Duration::from_secs(3),
    )
    .await
}

async fn run_etcd(cfg: &OverlayConfig) -> Result<(), Error> {
    let (node, state) = node(cfg)?;
    let cluster = cfg.cluster()?;
    let me = NodeRecord::new(node.underlay.ip, cfg.vni, link::mac_string(&node.mac));
    let mut term = signal(SignalKind::terminate()).map_err(|e| Error::Runtime(e.to_string()))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Error::Runtime(e.to_string()))?;
    let ttl = cfg.lease_ttl;

    // Until the first lease there is nothing to keep: retry etcd with backoff.
    let mut backoff = Duration::from_millis(200);
    let (mut reg, mut lease) = loop {
        let attempt = async {
            let mut reg = connect(cfg).await?;
            reg.ensure_network_config(cluster, cfg.subnet_len).await?;
            let lease = reg
                .acquire(&me, state.subnet, cluster, cfg.subnet_len, ttl)
                .await?;
            Ok::<_, Error>((reg, lease))
        };
        match attempt.await {
            Ok(v) => break v,
            Err(e @ (Error::Conflict(_) | Error::Exhausted { .. })) => return Err(e),
            Err(e) => log::warn!("etcd not ready ({e}); retrying in {backoff:?}"),
        }
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    };
    let mut plane = Dataplane::setup(cfg, &node.underlay, lease.subnet, node.mac)?;
    publish(cfg, &node, lease.subnet)?;

    let mut renew = interval(Duration::from_secs((ttl / 3).max(1)));
    renew.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut resync = interval(Duration::from_secs(cfg.resync_seconds.max(1)));
    resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut watch = None;
    let call = Duration::from_secs(3);
    loop {
        let mut full_sync = false;
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = renew.tick() => {
                match timeout(call, reg.renew(&lease)).await {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) => {
                        log::warn!("lease on {} expired; claiming it again", lease.subnet);
                        match timeout(call, reg.acquire(&me, Some(lease.subnet), cluster, cfg.subnet_len, ttl)).await {
                            Ok(Ok(l)) => {
                                if l.subnet != lease.subnet {
                                    // Another node took our subnet while we were away: pods
                                    // here keep their addresses only if we start over.
                                    log::error!("subnet {} was taken by another node; now {}", lease.subnet, l.subnet);
                                    plane = Dataplane::setup(cfg, &node.underlay, l.subnet, node.mac)?;
                                    publish(cfg, &node, l.subnet)?;
                                }
                                lease = l;
                                full_sync = true;
                            }
                            Ok(Err(e)) => log::warn!("re-lease failed: {e}"),
                            Err(_) => log::warn!("re-lease timed out"),
                        }
                    }
                    Ok(Err(e)) => {
                        log::warn!("etcd unreachable ({e}); keeping the dataplane, reconnecting");
                        watch = None;
                        if let Ok(Ok(r)) = timeout(call, connect(cfg)).await {
                            reg = r;
                        }
                    }
                    Err(_) => {
                        log::warn!("lease renewal timed out; keeping the dataplane");
                        watch = None;
                    }
                }
            }
            _ = resync.tick() => full_sync = true,
            ev = next_event(&mut watch) => {
                match ev {
                    Some(true) => full_sync = true,
                    Some(false) => {}
                    None => watch = None,
                }
            }
        }
        // Without a watch, events may have been missed: list, then watch from the revision
        // after the list, so a change between the two is still reported.
        full_sync |= watch.is_none();
        if full_sync {
            match timeout(call, reg.list()).await {
                Ok(Ok((records, revision))) => {
                    let peers = peers_of(&records, node.underlay.ip, cfg.vni);
                    match plane.reconcile(&peers) {
                        Ok(c) if c != Default::default() => {
                            log::info!("reconciled {} peers: {c:?}", peers.len())
                        }
                        Ok(_) => {}
                        Err(e) => log::error!("reconcile failed: {e}"),
                    }
                    if watch.is_none() {
                        match timeout(call, reg.watch(revision + 1)).await {
                            Ok(Ok(w)) => watch = Some(w),
                            Ok(Err(e)) => log::debug!("watch not established: {e}"),
                            Err(_) => log::debug!("watch timed out"),
                        }
                    }
                }
                Ok(Err(e)) => log::warn!("cannot list peers ({e}); keeping the dataplane"),
                Err(_) => log::warn!("listing peers timed out; keeping the dataplane"),
            }
        }
    }
    if cfg.release_on_exit {
        match timeout(call, reg.release(&lease)).await {
            Ok(Ok(())) => log::info!("released {}", lease.subnet),
            Ok(Err(e)) => log::warn!("cannot release {}: {e}", lease.subnet),
            Err(_) => log::warn!("releasing {} timed out", lease.subnet),
        }
    }
    Ok(())
}

/// The next watch message: Some(true) on changes, Some(false) on a message without events,
/// None when the watch ended or failed. Pends forever without a watch.
async fn next_event(watch: &mut Option<etcd_client::WatchStream>) -> Option<bool> {
    match watch {
        None => std::future::pending().await,
        Some(w) => match w.message().await {
            Ok(Some(resp)) if resp.canceled() => None,
            Ok(Some(resp)) => Some(!resp.events().is_empty()),
            Ok(None) | Err(_) => None,
        },
    }
}

/// Deletes this node's subnet records from etcd (teardown after the agent stopped): the node
/// is found by its underlay address, as the agent finds itself. Returns the subnets released.
pub fn release_node_records(cfg: &OverlayConfig) -> Result<Vec<Ipv4Net>, Error> {
    let underlay = detect_underlay(cfg)?;
    with_registry(cfg, async |reg| reg.release_node(underlay.ip).await)
}

/// This node's underlay address and every subnet record in etcd (for `cni-suite doctor`: is
/// this node's lease there, as its peers see it?).
pub fn node_records(cfg: &OverlayConfig) -> Result<(IpAddr, Vec<(Ipv4Net, NodeRecord)>), Error> {
    let underlay = detect_underlay(cfg)?;
    let records = with_registry(cfg, async |reg| Ok(reg.list().await?.0))?;
    Ok((underlay.ip, records))
}

/// Runs `work` against etcd on a one-thread runtime: the operator command is not async.
fn with_registry<T>(
    cfg: &OverlayConfig,
    work: impl AsyncFnOnce(&mut Registry) -> Result<T, Error>,
) -> Result<T, Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Runtime(e.to_string()))?;
    rt.block_on(async {
        let mut reg = connect(cfg).await?;
        work(&mut reg).await
    })
}

/// `vxlan-overlay agent --help`.
pub const AGENT_HELP: &str = "\
usage: vxlan-overlay agent --config <conflist>

The node agent of the vxlan-overlay network: leases this node a subnet of clusterCIDR in etcd
(or takes it from peersFile), writes it to subnetFile (flannel's subnet.env) for the plugin,
creates the VXLAN device and programs a route, ARP and FDB entry per peer, and renews the
lease every leaseTTL/3 seconds. It reads the conflist's vxlan-overlay entry (etcdEndpoints,
etcdPrefix, leaseTTL, releaseOnExit, peersFile, subnetFile, vni, port, device,
underlayInterface, mtu, dataDir, resyncSeconds, logFile, logLevel: see the README), the
same entry the plugin reads. Runs until SIGTERM or SIGINT, then releases its lease unless
releaseOnExit is false; the VXLAN device stays, so pods keep their traffic across restarts.

options:
  -c, --config <file>   the conflist (or single network config) with the vxlan-overlay entry
  -h, --help            this text

vxlan-overlay --version prints the version and the CNI spec versions.";

/// `agent --config <file>`: reads a conflist (or a single plugin config), takes the
/// `vxlan-overlay` entry, sets up logging from its `logFile`/`logLevel`, and runs.
pub fn run_from_args(args: &[String]) -> Result<(), Error> {
    let mut path = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" | "-c" => path = it.next().cloned(),
            "--help" | "-h" => {
                println!("{AGENT_HELP}");
                return Ok(());
            }
            other => return Err(Error::Config(format!("unknown argument {other:?}"))),
        }
    }
    let path = path.ok_or_else(|| Error::Config("--config <conflist> is required".into()))?;
    let text = std::fs::read(&path).map_err(|e| Error::io(std::path::Path::new(&path), e))?;
    let raw: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| Error::Config(format!("{path}: {e}")))?;
    let entry = plugin_entry(&raw)
        .ok_or_else(|| Error::Config(format!("{path} has no plugin of type vxlan-overlay")))?;
    cni_skel::log_file::init_with(entry, "vxlan-overlay agent", log::LevelFilter::Info);
    let cfg: OverlayConfig =
        serde_json::from_value(entry.clone()).map_err(|e| Error::Config(format!("{path}: {e}")))?;
    run(cfg)
}

/// The `vxlan-overlay` entry of a conflist, or the config itself when it is one.
fn plugin_entry(raw: &serde_json::Value) -> Option<&serde_json::Value> {
    match raw.get("plugins").and_then(|p| p.as_array()) {
        Some(list) => list.iter().find(|p| p["type"] == "vxlan-overlay"),
        None => (raw["type"] == "vxlan-overlay").then_some(raw),
    }
}
