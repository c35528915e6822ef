//! The `vxlan-overlay` CNI plugin: pods join the node bridge exactly as with kubenet-bridge
//! (the same `pod-bridge` code), addressed from the subnet the agent leased.

use std::path::PathBuf;

use cni_skel::{AddOutput, Plugin, Request};
use cni_spec::{Attachment, NetConf};
use ipnet::IpNet;
use node_ipam::{Pool, Ranges};
use pod_bridge::config::{nft_table_for, DEFAULT_DATA_DIR};
use pod_bridge::{attach, BridgeNetwork};

use crate::config::OverlayConfig;
use crate::subnet_file::SubnetEnv;
use crate::Error;

/// The `vxlan-overlay` CNI plugin.
#[derive(Debug, Default)]
pub struct VxlanOverlay;

fn ipam_dir(cfg: &OverlayConfig) -> PathBuf {
    cfg.ipam_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
}

/// The pods' network from the agent's subnet file; [`Error::NoLease`] before the agent has
/// leased a subnet (the runtime retries: code 11).
pub fn bridge_network(cfg: &OverlayConfig, name: &str) -> Result<BridgeNetwork, Error> {
    cfg.validate()?;
    let path = cfg.subnet_file();
    let env = SubnetEnv::read(&path)?.ok_or(Error::NoLease(path))?;
    let mut pools = vec![Pool::new(env.subnet.trunc(), Some(env.gateway().into()))
        .map_err(pod_bridge::Error::from)?];
    let mut cluster: Vec<IpNet> = vec![env.network.into()];
    // A dual-stack lease (FLANNEL_IPV6_SUBNET): pods get an address of each family, the
    // IPv6 one from the node's IPv6 subnet with its first address as gateway, as flannel's
    // subnet.env names it.
    if let (Some(subnet6), Some(gateway6)) = (env.ipv6_subnet, env.gateway6()) {
        pools.push(
            Pool::new(subnet6.trunc(), Some(gateway6.into())).map_err(pod_bridge::Error::from)?,
        );
        cluster.extend(env.ipv6_network.map(IpNet::V6));
    }
    let ranges = Ranges::new(pools).map_err(pod_bridge::Error::from)?;
    Ok(BridgeNetwork {
        name: name.to_string(),
        bridge: cfg.bridge.clone(),
        ranges,
        mtu: if cfg.mtu > 0 { cfg.mtu } else { env.mtu },
        hairpin: true,
        promisc: false,
        masquerade_outside: (cfg.ip_masq && env.ipmasq).then_some(cluster),
        nft_table: nft_table_for(&cfg.bridge),
        data_dir: ipam_dir(cfg),
        default_route: cfg.default_route,
    })
}

/// For DEL and GC, which must work with no lease (the agent gone, the node being drained):
/// only the IPAM directory and the veth names matter, so any pool will do.
fn teardown_network(cfg: &OverlayConfig, name: &str) -> Result<BridgeNetwork, Error> {
    match bridge_network(cfg, name) {
        Err(Error::NoLease(_)) => {
            let cluster = cfg.cluster()?;
            let mut pools = vec![Pool::new(cluster, None).map_err(pod_bridge::Error::from)?];
            if let Some(cluster6) = cfg.cluster6()? {
                pools.push(Pool::new(cluster6, None).map_err(pod_bridge::Error::from)?);
            }
            Ok(BridgeNetwork {
                name: name.to_string(),
                bridge: cfg.bridge.clone(),
                ranges: Ranges::new(pools).map_err(pod_bridge::Error::from)?,
                mtu: cfg.mtu,
                hairpin: true,
                promisc: false,
                masquerade_outside: None,
                nft_table: nft_table_for(&cfg.bridge),
                data_dir: ipam_dir(cfg),
                default_route: cfg.default_route,
            })
        }
        other => other,
    }
}

impl Plugin for VxlanOverlay {
    type Config = OverlayConfig;
    type Error = Error;

    fn add(&self, req: &Request<OverlayConfig>) -> Result<AddOutput, Error> {
        let net = bridge_network(&req.config, &req.conf.name)?;
        let wants = req.conf.attachment_request(&req.env.cni_args);
        Ok(AddOutput::Result(attach::add(&net, &req.env, &wants)?))
    }

    fn del(&self, req: &Request<OverlayConfig>) -> Result<Option<String>, Error> {
        let net = teardown_network(&req.config, &req.conf.name)?;
        let released = attach::del(&net, &req.env)?;
        Ok((!released.is_empty()).then(|| pod_bridge::addresses_text(&released)))
    }

    fn check(&self, req: &Request<OverlayConfig>) -> Result<(), Error> {
        let net = bridge_network(&req.config, &req.conf.name)?;
        let prev = req
            .conf
            .prev_result
            .as_ref()
            .ok_or(pod_bridge::Error::NoPrevResult)?;
        Ok(attach::check(&net, &req.env, prev)?)
    }

    fn status(&self, req: &Request<OverlayConfig>) -> Result<(), Error> {
        let net = bridge_network(&req.config, &req.conf.name).map_err(|e| match e {
            Error::NoLease(p) => Error::Pod(pod_bridge::Error::Unavailable(format!(
                "no subnet leased yet ({} missing): is the agent running?",
                p.display()
            ))),
            other => other,
        })?;
        Ok(attach::status(&net)?)
    }

    /// What the plugin and the agent both check before anything else (clusterCIDR against
    /// subnetLen, names, etcd settings); the agent's lease is not needed for that.
    fn check_config(&self, _conf: &NetConf, config: &OverlayConfig) -> Result<(), Error> {
        config.validate()
    }

    fn gc(
        &self,
        req: &Request<OverlayConfig>,
        valid: &[Attachment],
    ) -> Result<Option<String>, Error> {
        let net = teardown_network(&req.config, &req.conf.name)?;
        let freed = attach::gc(&net, valid)?;
        Ok(Some(format!("released {freed:?}")))
    }
}
