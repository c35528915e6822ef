//! The node's lease in flannel's `subnet.env` format, written by the agent and read by the
//! plugin on every ADD (so existing flannel tooling can read it too).

use std::fs;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnet::{Ipv4Net, Ipv6Net};

use crate::Error;

/// The contents of subnet.env.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK`: the cluster CIDR.
    pub network: Ipv4Net,
    /// `FLANNEL_SUBNET`: the node subnet, written as gateway/prefix as flannel does.
    pub subnet: Ipv4Net,
    /// `FLANNEL_IPV6_NETWORK`: the cluster's IPv6 range (dual-stack networks).
    pub ipv6_network: Option<Ipv6Net>,
    /// `FLANNEL_IPV6_SUBNET`: the node's IPv6 subnet, written as gateway/prefix as flannel
    /// does (its first address after the network address).
    pub ipv6_subnet: Option<Ipv6Net>,
    /// `FLANNEL_MTU`: pod MTU.
    pub mtu: u32,
    /// `FLANNEL_IPMASQ`.
    pub ipmasq: bool,
}

impl SubnetEnv {
    /// The gateway: the address part of `FLANNEL_SUBNET`.
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.addr()
    }

    /// The IPv6 gateway: the address part of `FLANNEL_IPV6_SUBNET`.
    pub fn gateway6(&self) -> Option<Ipv6Addr> {
        self.ipv6_subnet.map(|s| s.addr())
    }

    /// Renders the file, its keys in flannel's order (`WriteSubnetFile`).
    pub fn render(&self) -> String {
        let mut text = format!(
            "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}\n",
            self.network, self.subnet
        );
        if let (Some(network), Some(subnet)) = (self.ipv6_network, self.ipv6_subnet) {
            text.push_str(&format!(
                "FLANNEL_IPV6_NETWORK={network}\nFLANNEL_IPV6_SUBNET={subnet}\n"
            ));
        }
        text.push_str(&format!(
            "FLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.mtu, self.ipmasq
        ));
        text
    }

    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<SubnetEnv, String> {
        let mut network = None;
        let mut subnet = None;
        let mut mtu = None;
        let mut ipmasq = false;
        let (mut ipv6_network, mut ipv6_subnet) = (None, None);
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim();
            match k.trim() {
                "FLANNEL_NETWORK" => network = v.parse().ok(),
                "FLANNEL_SUBNET" => subnet = v.parse().ok(),
                "FLANNEL_MTU" => mtu = v.parse().ok(),
                "FLANNEL_IPV6_NETWORK" => {
                    ipv6_network =
                        Some(v.parse().map_err(|_| {
                            format!("FLANNEL_IPV6_NETWORK {v:?} is not an IPv6 CIDR")
                        })?)
                }
                "FLANNEL_IPV6_SUBNET" => {
                    ipv6_subnet =
                        Some(v.parse().map_err(|_| {
                            format!("FLANNEL_IPV6_SUBNET {v:?} is not an IPv6 CIDR")
                        })?)
                }
                "FLANNEL_IPMASQ" => ipmasq = v == "true",
                _ => {}
            }
        }
        Ok(SubnetEnv {
            network: network.ok_or("FLANNEL_NETWORK missing or invalid")?,
            subnet: subnet.ok_or("FLANNEL_SUBNET missing or invalid")?,
            ipv6_network,
            ipv6_subnet,
            mtu: mtu.ok_or("FLANNEL_MTU missing or invalid")?,
            ipmasq,
        })
    }

    /// Reads the file; `Ok(None)` when it does not exist yet (no lease).
    pub fn read(path: &Path) -> Result<Option<SubnetEnv>, Error> {
        match fs::read_to_string(path) {
            Ok(text) => SubnetEnv::parse(&text)
                .map(Some)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Writes the file atomically and durably ([`crate::state::write_atomic`]).
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        crate::state::write_atomic(path, self.render().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_flannel_format() {
        let s = SubnetEnv {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.3.1/24".parse().unwrap(),
            ipv6_network: None,
            ipv6_subnet: None,
            mtu: 1450,
            ipmasq: true,
        };
        let text = s.render();
        assert!(text.contains("FLANNEL_SUBNET=10.244.3.1/24\n"));
        assert_eq!(SubnetEnv::parse(&text).unwrap(), s);
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 244, 3, 1));
        assert!(SubnetEnv::parse("FLANNEL_NETWORK=10.0.0.0/8\n").is_err());
    }

    /// subnet.env of a dual-stack flanneld, as its `WriteSubnetFile` writes it (IPv4 keys,
    /// then the IPv6 ones, then MTU and masquerade).
    const FLANNEL_DUAL_STACK_SUBNET_ENV: &str = "FLANNEL_NETWORK=10.244.0.0/16\n\
        FLANNEL_SUBNET=10.244.3.1/24\n\
        FLANNEL_IPV6_NETWORK=fd00:10:244::/56\n\
        FLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\n\
        FLANNEL_MTU=1450\n\
        FLANNEL_IPMASQ=true\n";

    #[test]
    fn dual_stack_keys_round_trip_in_flannels_order() {
        let s = SubnetEnv::parse(FLANNEL_DUAL_STACK_SUBNET_ENV).unwrap();
        assert_eq!(s.ipv6_network, Some("fd00:10:244::/56".parse().unwrap()));
        assert_eq!(s.gateway6(), Some("fd00:10:244:3::1".parse().unwrap()));
        assert_eq!(s.render(), FLANNEL_DUAL_STACK_SUBNET_ENV);
        assert!(SubnetEnv::parse(
            &FLANNEL_DUAL_STACK_SUBNET_ENV.replace("fd00:10:244:3::1/64", "x")
        )
        .is_err());
    }
}
