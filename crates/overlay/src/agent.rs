//! `vxlan-overlay agent`: leases this node's subnet (on a thread of its own, see
//! [`crate::lease`]), publishes the VTEP, and keeps every peer programmed from etcd's watch
//! (see [`crate::peer_sync`]), with a full reconcile at start and periodically, so a missed
//! event never leaves stale state. When etcd is unreachable the dataplane stays as it is and
//! the agent reconnects; metrics and `/healthz` are served when `metricsAddress` is set.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use netsetup::link::{self, Mac};
use netsetup::vxlan::PeerEntry;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::{interval, MissedTickBehavior};

use crate::config::{OverlayConfig, RegistryKind};
use crate::dataplane::{
    self, detect_underlay, detect_underlay6, ipv6_shares_the_device, overlay_mtu, peer_entry,
    Dataplane, Underlay,
};
use crate::etcd_access::{EtcdAccess, CALL_TIMEOUT};
use crate::lease::{LeaseEvent, LeaseKeeper, LeaseTerms};
use crate::metrics_server;
use crate::peer_sync::PeerSync;
use crate::peers::{PeerTable, Peers};
use crate::registry::{Lease, NodeRecord, Ranges, Registry};
use crate::state::NodeState;
use crate::subnet_file::SubnetEnv;
use crate::telemetry::Telemetry;
use crate::Error;

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(cfg: OverlayConfig) -> Result<(), Error> {
    cfg.validate()?;
    // The main thread: the watch, and the netlink socket (used from this thread only). The
    // lease and the metrics have threads of their own.
    let rt = current_thread_runtime()?;
    rt.block_on(async move {
        if cfg.registry == RegistryKind::Kubernetes {
            Err(Error::Config(
                "registry kubernetes is served by vxlan-overlay-agent (the overlay-kube crate)"
                    .into(),
            ))
        } else if cfg.etcd_endpoints.is_empty() {
            run_static(&cfg).await
        } else {
            run_etcd(&cfg).await
        }
    })
}

/// A one-thread runtime with timers and I/O: the agent's main thread (the watch and the
/// netlink socket stay on it), its lease thread and its one-shot etcd commands each run one.
pub(crate) fn current_thread_runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Runtime(e.to_string()))
}

/// Where the agent's peers come from: etcd's subnet records ([`PeerSync`]) or, in the
/// agent binary, the cluster's Node objects (the `overlay-kube` crate). The agent's loop
/// ([`run_with_source`]) calls [`step`](Self::step) before each wait, waits on
/// [`next`](Self::next) beside signals, subnet news and the resync timer, and hands what
/// woke it to [`handle`](Self::handle).
// The agent's runtime is single-threaded: the futures need no `Send` bound.
#[allow(async_fn_in_trait)]
pub trait PeerSource {
    /// What woke the agent from the source.
    type Wake;
    /// Does what is due (a full list and reconcile when asked for, a watch when there is
    /// none); failures are logged and retried later, the dataplane kept as it is.
    async fn step(&mut self, plane: &mut Dataplane);
    /// The next news; pends while there is nothing to wait for.
    async fn next(&mut self) -> Self::Wake;
    /// Applies what woke the agent.
    fn handle(&mut self, plane: &mut Dataplane, wake: Self::Wake);
    /// Asks for a full reconcile at the next step (a new subnet, a new dataplane).
    fn request_full(&mut self);
    /// The periodic resync is due.
    fn resync(&mut self);
}

impl PeerSource for PeerSync {
    type Wake = crate::peer_sync::Wake;

    async fn step(&mut self, plane: &mut Dataplane) {
        PeerSync::step(self, plane).await
    }

    async fn next(&mut self) -> Self::Wake {
        PeerSync::next(self).await
    }

    fn handle(&mut self, plane: &mut Dataplane, wake: Self::Wake) {
        PeerSync::handle(self, plane, wake)
    }

    fn request_full(&mut self) {
        PeerSync::request_full(self)
    }

    fn resync(&mut self) {
        self.check_files();
        self.request_full();
    }
}

/// What a peer source needs of this node: its VTEP as its peers must see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalVtep {
    /// The underlay address the IPv4 device encapsulates from (the node's `PublicIP`).
    pub underlay: IpAddr,
    /// The IPv4 device's MAC, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// The IPv6 device's underlay address and MAC, on a dual-stack network.
    pub ipv6: Option<(IpAddr, String)>,
}

/// What [`run_with_source`] gives the code that makes the peer source.
pub struct SourceStart {
    /// This node's VTEP.
    pub vtep: LocalVtep,
    /// The agent's metrics.
    pub telemetry: Arc<Telemetry>,
    /// Where the subnet is reported ([`LeaseEvent::Leased`] sets the dataplane up and writes
    /// subnet.env; [`LeaseEvent::Fatal`] stops the agent).
    pub subnet_events: tokio::sync::mpsc::UnboundedSender<LeaseEvent>,
    /// The peer table to keep (this node's addresses and VNI filled in).
    pub table: PeerTable,
}

/// Runs the agent with a peer source of another crate until SIGTERM or SIGINT: the node's
/// VTEP is found and the metrics served here, then `start` makes the source (and whatever
/// reports the subnet on [`SourceStart::subnet_events`]) on the agent's runtime.
pub fn run_with_source<S: PeerSource>(
    cfg: OverlayConfig,
    start: impl AsyncFnOnce(SourceStart) -> Result<S, Error>,
) -> Result<(), Error> {
    cfg.validate()?;
    let rt = current_thread_runtime()?;
    rt.block_on(async move {
        let (node, _) = node(&cfg)?;
        let mut term =
            signal(SignalKind::terminate()).map_err(|e| Error::Runtime(e.to_string()))?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| Error::Runtime(e.to_string()))?;
        let telemetry = Arc::new(Telemetry::new(Duration::from_secs(
            cfg.resync_seconds.max(1),
        )));
        if let Some(addr) = cfg.metrics_address {
            let bound = metrics_server::serve(addr, telemetry.clone())?;
            log::info!("serving /metrics and /healthz on {bound}");
        }
        let (events, mut subnet_events) = tokio::sync::mpsc::unbounded_channel();
        let source = start(SourceStart {
            vtep: LocalVtep {
                underlay: node.underlay.ip,
                mac: link::mac_string(&node.mac),
                ipv6: node
                    .ipv6
                    .as_ref()
                    .map(|(u6, m6)| (u6.ip, link::mac_string(m6))),
            },
            telemetry,
            subnet_events: events,
            table: peer_table(&cfg, &node),
        })
        .await?;
        keep_peers(&cfg, &node, source, &mut subnet_events, &mut term, &mut int).await
    })
}

fn peer_table(cfg: &OverlayConfig, node: &Node) -> PeerTable {
    let table = PeerTable::new(node.underlay.ip, cfg.vni);
    match &node.ipv6 {
        Some((u6, _)) => table.with_ipv6(u6.ip),
        None => table,
    }
}

/// What the agent knows of itself.
struct Node {
    underlay: Underlay,
    mac: Mac,
    /// The IPv6 device's underlay and MAC, on a dual-stack network.
    ipv6: Option<(Underlay, Mac)>,
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
    let ipv6 = match cfg.cluster6()? {
        None => None,
        Some(_) => {
            let underlay6 = detect_underlay6(&underlay)?;
            let mac6 = if ipv6_shares_the_device(&underlay, &underlay6) {
                log::info!(
                    "IPv6 subnets on {} too (IPv6 over {}: the same underlay family)",
                    cfg.device(),
                    underlay6.ip
                );
                mac
            } else {
                let mac6 = state
                    .ipv6_vtep_mac
                    .as_deref()
                    .and_then(dataplane::parse_mac)
                    .unwrap_or_else(link::random_local_mac);
                log::info!(
                    "IPv6 device {} over {}, vtep mac {}",
                    cfg.device6(),
                    underlay6.ip,
                    link::mac_string(&mac6)
                );
                mac6
            };
            Some((underlay6, mac6))
        }
    };
    Ok((
        Node {
            underlay,
            mac,
            ipv6,
            state_path,
        },
        state,
    ))
}

/// The pods' MTU: the IPv4 device's, or the smaller of both devices' on a dual-stack network
/// (one pod interface carries both families).
fn pod_mtu(cfg: &OverlayConfig, node: &Node) -> u32 {
    let v4 = overlay_mtu(cfg, &node.underlay);
    match &node.ipv6 {
        Some((u6, _)) => v4.min(overlay_mtu(cfg, u6)),
        None => v4,
    }
}

fn publish(
    cfg: &OverlayConfig,
    node: &Node,
    subnet: Ipv4Net,
    subnet6: Option<Ipv6Net>,
) -> Result<(), Error> {
    NodeState {
        subnet: Some(subnet),
        vtep_mac: Some(link::mac_string(&node.mac)),
        ipv6_subnet: subnet6,
        // Only a device of its own has a MAC of its own to keep (a shared one is the IPv4
        // device's).
        ipv6_vtep_mac: node
            .ipv6
            .as_ref()
            .filter(|(_, m)| *m != node.mac)
            .map(|(_, m)| link::mac_string(m)),
    }
    .save(&node.state_path)?;
    let cluster = cfg.cluster()?;
    let gateway = Ipv4Addr::from(u32::from(subnet.network()) + 1);
    // flannel's FLANNEL_IPV6_SUBNET is the subnet's first address after the network one.
    let subnet6_env = subnet6
        .map(|s| Ipv6Net::new(Ipv6Addr::from(u128::from(s.network()) + 1), s.prefix_len()))
        .transpose()
        .map_err(|e| Error::Config(e.to_string()))?;
    SubnetEnv {
        network: cluster,
        subnet: Ipv4Net::new(gateway, subnet.prefix_len())
            .map_err(|e| Error::Config(e.to_string()))?,
        ipv6_network: subnet6.and(cfg.cluster6()?),
        ipv6_subnet: subnet6_env,
        mtu: pod_mtu(cfg, node),
        ipmasq: cfg.ip_masq,
    }
    .write(&cfg.subnet_file())?;
    match subnet6 {
        Some(s6) => log::info!(
            "leased {subnet} and {s6}; wrote {}",
            cfg.subnet_file().display()
        ),
        None => log::info!("leased {subnet}; wrote {}", cfg.subnet_file().display()),
    }
    Ok(())
}

/// The dataplane for a lease: the IPv4 device, and the IPv6 one when the lease has an IPv6
/// subnet.
fn dataplane_for(cfg: &OverlayConfig, node: &Node, lease: &Lease) -> Result<Dataplane, Error> {
    let mut dp = Dataplane::setup(cfg, &node.underlay, lease.subnet, node.mac)?;
    if let (Some(s6), Some((u6, mac6))) = (lease.ipv6_subnet, &node.ipv6) {
        dp.setup_ipv6(cfg, &node.underlay, u6, s6, *mac6)?;
    }
    Ok(dp)
}

async fn run_static(cfg: &OverlayConfig) -> Result<(), Error> {
    let path = cfg
        .peers_file
        .clone()
        .ok_or_else(|| Error::Config("peersFile is needed without etcdEndpoints".into()))?;
    let (mut node, _) = node(cfg)?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| Error::Runtime(e.to_string()))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Error::Runtime(e.to_string()))?;
    let resync_every = Duration::from_secs(cfg.resync_seconds.max(1));
    let telemetry = Arc::new(Telemetry::new(resync_every));
    if let Some(addr) = cfg.metrics_address {
        let bound = metrics_server::serve(addr, telemetry.clone())?;
        log::info!("serving /metrics and /healthz on {bound}");
    }
    let mut tick = interval(resync_every);
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
            publish(cfg, &node, subnet, None)?;
            telemetry.set_lease(Some(subnet));
        }
        let others: Vec<PeerEntry> = peers
            .iter()
            .filter(|p| p.underlay != node.underlay.ip)
            .filter_map(|p| peer_entry(p.subnet, p.underlay, &p.vtep_mac))
            .collect();
        if let Some((dp, _)) = plane.as_mut() {
            let started = std::time::Instant::now();
            let c = dp.reconcile(&Peers {
                v4: others.clone(),
                v6: Vec::new(),
            })?;
            telemetry.full_reconciles.inc();
            telemetry
                .full_reconcile_seconds
                .observe(started.elapsed().as_secs_f64());
            telemetry.peers_programmed.set(others.len() as i64);
            telemetry.synced();
            if c != Default::default() {
                log::info!("reconciled {} peers: {c:?}", others.len());
            }
        }
    }
}

async fn run_etcd(cfg: &OverlayConfig) -> Result<(), Error> {
    let (node, state) = node(cfg)?;
    let cluster = cfg.cluster()?;
    let mut me = NodeRecord::new(node.underlay.ip, cfg.vni, link::mac_string(&node.mac));
    if let Some((u6, mac6)) = &node.ipv6 {
        me = me.with_ipv6_device(u6.ip, link::mac_string(mac6));
    }
    let mut term = signal(SignalKind::terminate()).map_err(|e| Error::Runtime(e.to_string()))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Error::Runtime(e.to_string()))?;
    let resync_every = Duration::from_secs(cfg.resync_seconds.max(1));
    let telemetry = Arc::new(Telemetry::new(resync_every));
    if let Some(addr) = cfg.metrics_address {
        let bound = metrics_server::serve(addr, telemetry.clone())?;
        log::info!("serving /metrics and /healthz on {bound}");
    }
    let access = EtcdAccess::from_config(cfg);
    let (events, mut lease_events) = tokio::sync::mpsc::unbounded_channel();
    let keeper = LeaseKeeper::spawn(
        access.clone(),
        LeaseTerms {
            me: me.clone(),
            preferred: (state.subnet, state.ipv6_subnet),
            ranges: Ranges {
                cluster,
                subnet_len: cfg.subnet_len,
                ipv6: cfg.cluster6()?.map(|c| (c, cfg.ipv6_subnet_len)),
            },
            ttl: cfg.lease_ttl,
            release_on_exit: cfg.release_on_exit,
        },
        telemetry.clone(),
        events,
    )?;
    let sync = PeerSync::new(access, &cfg.etcd_prefix, peer_table(cfg, &node), telemetry);
    let result = keep_peers(cfg, &node, sync, &mut lease_events, &mut term, &mut int).await;
    keeper.stop();
    result
}

/// The agent's main thread once the subnet is being taken care of (the lease thread, or the
/// Kubernetes source's own-Node task): sets the dataplane up for each subnet reported, and
/// keeps its peers in step with the source until a signal.
async fn keep_peers<S: PeerSource>(
    cfg: &OverlayConfig,
    node: &Node,
    mut sync: S,
    lease_events: &mut tokio::sync::mpsc::UnboundedReceiver<LeaseEvent>,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) -> Result<(), Error> {
    let mut plane: Option<Dataplane> = None;
    let mut resync = interval(Duration::from_secs(cfg.resync_seconds.max(1)));
    resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        if let Some(dp) = plane.as_mut() {
            sync.step(dp).await;
        }
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            ev = lease_events.recv() => match ev {
                Some(LeaseEvent::Leased(lease)) => {
                    plane = Some(dataplane_for(cfg, node, &lease)?);
                    publish(cfg, node, lease.subnet, lease.ipv6_subnet)?;
                    sync.request_full();
                }
                Some(LeaseEvent::Fatal(e)) => return Err(e),
                None => return Err(Error::Runtime("the lease thread stopped".into())),
            },
            _ = resync.tick() => sync.resync(),
            wake = sync.next(), if plane.is_some() => {
                if let Some(dp) = plane.as_mut() {
                    sync.handle(dp, wake);
                }
            }
        }
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
    let rt = current_thread_runtime()?;
    let access = EtcdAccess::from_config(cfg);
    rt.block_on(async {
        let mut reg = access.connect().await?;
        let result = tokio::time::timeout(CALL_TIMEOUT * 2, work(&mut reg))
            .await
            .unwrap_or_else(|_| Err(Error::EtcdAccess("etcd call timed out".into())));
        result.map_err(|e| access.explain(e))
    })
}

/// `vxlan-overlay agent --config <file>`: reads a conflist (or a single plugin config), takes
/// the `vxlan-overlay` entry, sets up logging from its `logFile`/`logLevel`, and runs.
pub fn run_from_conflist(path: &std::path::Path) -> Result<(), Error> {
    run(load_conflist(path)?)
}

/// Reads the `vxlan-overlay` entry of a conflist (or of a single plugin config) and sets up
/// logging from its `logFile`/`logLevel`: what the agent does before it runs.
pub fn load_conflist(path: &std::path::Path) -> Result<OverlayConfig, Error> {
    let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let shown = path.display();
    let list = cni_spec::ConfList::parse(&text)
        .map_err(|e| Error::Config(format!("{shown}: {}", e.msg)))?;
    let entry = list
        .entry("vxlan-overlay")
        .ok_or_else(|| Error::Config(format!("{shown} has no plugin of type vxlan-overlay")))?;
    cni_skel::log_file::init_with(entry, "vxlan-overlay agent", log::LevelFilter::Info);
    serde_json::from_value(entry.clone()).map_err(|e| Error::Config(format!("{shown}: {e}")))
}
