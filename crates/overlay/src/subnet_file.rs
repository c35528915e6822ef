//! The node's lease in flannel's `subnet.env` format, written by the agent and read by the
//! plugin on every ADD (so existing flannel tooling can read it too).

use std::fs;
use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;

use crate::Error;

/// The contents of subnet.env.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK`: the cluster CIDR.
    pub network: Ipv4Net,
    /// `FLANNEL_SUBNET`: the node subnet, written as gateway/prefix as flannel does.
    pub subnet: Ipv4Net,
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

    /// Renders the file.
    pub fn render(&self) -> String {
        format!(
            "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}\nFLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.network, self.subnet, self.mtu, self.ipmasq
        )
    }

    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<SubnetEnv, String> {
        let mut network = None;
        let mut subnet = None;
        let mut mtu = None;
        let mut ipmasq = false;
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim();
            match k.trim() {
                "FLANNEL_NETWORK" => network = v.parse().ok(),
                "FLANNEL_SUBNET" => subnet = v.parse().ok(),
                "FLANNEL_MTU" => mtu = v.parse().ok(),
                "FLANNEL_IPMASQ" => ipmasq = v == "true",
                _ => {}
            }
        }
        Ok(SubnetEnv {
            network: network.ok_or("FLANNEL_NETWORK missing or invalid")?,
            subnet: subnet.ok_or("FLANNEL_SUBNET missing or invalid")?,
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
            mtu: 1450,
            ipmasq: true,
        };
        let text = s.render();
        assert!(text.contains("FLANNEL_SUBNET=10.244.3.1/24\n"));
        assert_eq!(SubnetEnv::parse(&text).unwrap(), s);
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 244, 3, 1));
        assert!(SubnetEnv::parse("FLANNEL_NETWORK=10.0.0.0/8\n").is_err());
    }
}
