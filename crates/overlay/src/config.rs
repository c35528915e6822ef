//! vxlan-overlay's configuration, shared by the CNI plugin and the agent (one conflist).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;

use crate::Error;

/// The plugin's own fields of a `vxlan-overlay` network configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OverlayConfig {
    /// The cluster's pod range, split into node subnets (required).
    #[serde(
        rename = "clusterCIDR",
        default,
        deserialize_with = "cni_spec::cidr::optional_ipv4"
    )]
    pub cluster_cidr: Option<Ipv4Net>,
    /// Prefix length of each node's subnet (default 24).
    #[serde(default = "default_subnet_len")]
    pub subnet_len: u8,
    /// IPv6 pod subnets over the overlay besides the IPv4 ones (flannel's `EnableIPv6`):
    /// each node leases an IPv6 subnet of `ipv6Network` too, under flannel's dual-stack key
    /// `<v4>-<len>&<v6>-<len>`, and programs its peers on a second VXLAN device.
    #[serde(rename = "enableIPv6", default)]
    pub enable_ipv6: bool,
    /// The cluster's IPv6 pod range (flannel's `IPv6Network`), required with `enableIPv6`.
    #[serde(rename = "ipv6Network", default)]
    pub ipv6_network: Option<Ipv6Net>,
    /// Prefix length of each node's IPv6 subnet (flannel's `IPv6SubnetLen`, default 64).
    #[serde(rename = "ipv6SubnetLen", default = "default_ipv6_subnet_len")]
    pub ipv6_subnet_len: u8,
    /// The IPv6 VXLAN device (default `vxlan-v6.<vni>`, as flannel's `flannel-v6.<vni>`
    /// beside `flannel.<vni>`).
    #[serde(rename = "ipv6Device", default)]
    pub ipv6_device: Option<String>,
    /// Where the agent takes this node's subnet and its peers from: `etcd` (the default:
    /// subnet leases in etcd, flannel's etcd record format) or `kubernetes` (each node's
    /// `spec.podCIDR` and flannel's node annotations, as flannel's kube subnet manager).
    #[serde(default)]
    pub registry: RegistryKind,
    /// With `registry: kubernetes`: the kubeconfig the agent authenticates with; absent, the
    /// in-cluster service account (`KUBERNETES_SERVICE_HOST`/`_PORT`, the mounted token and
    /// CA).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// With `registry: kubernetes`: this node's Node name when the `NODE_NAME` environment
    /// variable is unset (the hostname when both are).
    #[serde(default)]
    pub node_name: Option<String>,
    /// etcd v3 endpoints (URLs); empty with `peersFile` for the static mode.
    #[serde(default)]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix in etcd (default `/cni-suite/network`; records in flannel's format below it).
    #[serde(default = "default_prefix")]
    pub etcd_prefix: String,
    /// Subnet lease TTL in seconds (default 30); renewed every third of it.
    #[serde(rename = "leaseTTL", default = "default_ttl")]
    pub lease_ttl: u64,
    /// Release the lease when the agent gets SIGTERM (default true).
    #[serde(default = "yes")]
    pub release_on_exit: bool,
    /// Static peers (JSON list of {subnet, underlay, vtepMac}) instead of etcd.
    pub peers_file: Option<PathBuf>,
    /// Where the agent writes the node's lease in flannel's subnet.env format (default
    /// `<dataDir>/subnet.env`).
    pub subnet_file: Option<PathBuf>,
    /// Node bridge for pods (default `cbr0`).
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// Whether pods' default route goes through this network (kubenet-bridge's field:
    /// `auto`, `always`, `never`; default `auto`).
    #[serde(default)]
    pub default_route: pod_bridge::DefaultRoute,
    /// VXLAN network identifier (default 1).
    #[serde(default = "default_vni")]
    pub vni: u32,
    /// VXLAN UDP port (default 8472, the Linux and flannel default).
    #[serde(default = "default_port")]
    pub port: u16,
    /// VXLAN device name (default `vxlan.<vni>`).
    pub device: Option<String>,
    /// Underlay interface (default: the one carrying the default route).
    pub underlay_interface: Option<String>,
    /// Underlay address family, `ipv4` or `ipv6`; unset = IPv4 when the underlay has an IPv4
    /// default route (or, with `underlayInterface`, an IPv4 address), else IPv6. Pods stay
    /// IPv4 either way.
    pub underlay_family: Option<UnderlayFamilyConfig>,
    /// Pod and VXLAN MTU; 0 = underlay MTU − 50 (− 70 over IPv6).
    #[serde(default)]
    pub mtu: u32,
    /// Tx checksum offload on the VXLAN device: unset = off on kernels before 5.7 (whose VXLAN
    /// path could send packets with bad checksums: the problem flannel and Calico work around)
    /// and on from 5.7, where turning it off costs about 5x throughput (measured here).
    #[serde(default)]
    pub tx_checksum_offload: Option<bool>,
    /// Masquerade pod traffic leaving clusterCIDR (default true).
    #[serde(default = "yes")]
    pub ip_masq: bool,
    /// Node state (agent state and the default subnet file); default `/var/lib/cni/vxlan-overlay`.
    pub data_dir: Option<PathBuf>,
    /// Pods' IPAM state root (default `/var/lib/cni/networks`).
    pub ipam_dir: Option<PathBuf>,
    /// Seconds between full reconciles (default 30).
    #[serde(default = "default_resync")]
    pub resync_seconds: u64,
    /// CA bundle (PEM) that signs the etcd members' certificates; needed for `https://`
    /// endpoints (flannel's `etcd-cafile`).
    #[serde(rename = "etcdCAFile", default)]
    pub etcd_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's client-certificate authentication, with
    /// `etcdKeyFile` (flannel's `etcd-certfile`).
    #[serde(rename = "etcdCertFile", default)]
    pub etcd_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM) (flannel's `etcd-keyfile`).
    #[serde(rename = "etcdKeyFile", default)]
    pub etcd_key_file: Option<PathBuf>,
    /// etcd user for etcd's own authentication, with `etcdPassword`.
    #[serde(default)]
    pub etcd_username: Option<String>,
    /// That user's password.
    #[serde(default)]
    pub etcd_password: Option<String>,
    /// Where the agent serves Prometheus metrics (`/metrics`) and `/healthz`, `host:port`;
    /// off unless set.
    #[serde(default)]
    pub metrics_address: Option<std::net::SocketAddr>,
}

/// The `registry` values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistryKind {
    /// Subnet leases and peer records in etcd (`etcdEndpoints`), or a static `peersFile`.
    #[default]
    Etcd,
    /// The Kubernetes API: `spec.podCIDR` as the subnet, node annotations for the VTEP.
    Kubernetes,
}

/// The `underlayFamily` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnderlayFamilyConfig {
    /// Encapsulate in IPv4.
    Ipv4,
    /// Encapsulate in IPv6.
    Ipv6,
}

fn default_subnet_len() -> u8 {
    24
}
fn default_ipv6_subnet_len() -> u8 {
    64
}
fn default_prefix() -> String {
    "/cni-suite/network".into()
}
fn default_ttl() -> u64 {
    30
}
fn default_bridge() -> String {
    "cbr0".into()
}
fn default_vni() -> u32 {
    1
}
fn default_port() -> u16 {
    8472
}
fn default_resync() -> u64 {
    30
}
fn yes() -> bool {
    true
}

/// Default node state directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/vxlan-overlay";

impl OverlayConfig {
    /// The cluster CIDR, required.
    pub fn cluster(&self) -> Result<Ipv4Net, Error> {
        let c = self
            .cluster_cidr
            .ok_or_else(|| Error::Config("clusterCIDR is required".into()))?
            .trunc();
        if self.subnet_len < c.prefix_len() || self.subnet_len > 30 {
            return Err(Error::Config(format!(
                "subnetLen {} must be between clusterCIDR's prefix /{} and 30",
                self.subnet_len,
                c.prefix_len()
            )));
        }
        Ok(c)
    }

    /// The cluster's IPv6 range with `enableIPv6`, `None` without; refused when
    /// `enableIPv6` lacks `ipv6Network` or `ipv6SubnetLen` does not fit it.
    pub fn cluster6(&self) -> Result<Option<Ipv6Net>, Error> {
        if !self.enable_ipv6 {
            return Ok(None);
        }
        let c = self
            .ipv6_network
            .ok_or_else(|| Error::Config("enableIPv6 needs ipv6Network".into()))?
            .trunc();
        // /126 at most, as flannel: a subnet needs room for the VTEP address and pods.
        if self.ipv6_subnet_len < c.prefix_len() || self.ipv6_subnet_len > 126 {
            return Err(Error::Config(format!(
                "ipv6SubnetLen {} must be between ipv6Network's prefix /{} and 126",
                self.ipv6_subnet_len,
                c.prefix_len()
            )));
        }
        Ok(Some(c))
    }

    /// The IPv6 VXLAN device name.
    pub fn device6(&self) -> String {
        self.ipv6_device
            .clone()
            .unwrap_or_else(|| format!("vxlan-v6.{}", self.vni))
    }

    /// Node state directory.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
    }

    /// The subnet file path.
    pub fn subnet_file(&self) -> PathBuf {
        self.subnet_file
            .clone()
            .unwrap_or_else(|| self.data_dir().join("subnet.env"))
    }

    /// The VXLAN device name.
    pub fn device(&self) -> String {
        self.device
            .clone()
            .unwrap_or_else(|| format!("vxlan.{}", self.vni))
    }

    /// Checks what both the plugin and the agent need.
    pub fn validate(&self) -> Result<(), Error> {
        self.cluster()?;
        if self.cluster6()?.is_some() {
            cni_spec::validate_ifname(&self.device6()).map_err(|_| {
                Error::Config(format!(
                    "ipv6Device {:?} is not a valid interface name",
                    self.device6()
                ))
            })?;
            if self.etcd_endpoints.is_empty() && self.registry == RegistryKind::Etcd {
                return Err(Error::Config(
                    "enableIPv6 needs etcdEndpoints or registry kubernetes: a peersFile lists \
                     IPv4 subnets only"
                        .into(),
                ));
            }
            if self.device6() == self.device() {
                return Err(Error::Config(format!(
                    "ipv6Device and device are both {:?}: the IPv6 device is a second one",
                    self.device()
                )));
            }
        }
        pod_bridge::config::validate_bridge_name(&self.bridge)
            .map_err(|e| Error::Config(e.to_string()))?;
        cni_spec::validate_ifname(&self.device()).map_err(|_| {
            Error::Config(format!(
                "device {:?} is not a valid interface name",
                self.device()
            ))
        })?;
        if self.vni == 0 || self.vni >= 1 << 24 {
            return Err(Error::Config(format!(
                "vni {} is not in 1..16777215",
                self.vni
            )));
        }
        if self.lease_ttl < 3 {
            return Err(Error::Config("leaseTTL must be at least 3 seconds".into()));
        }
        if self.registry == RegistryKind::Kubernetes {
            if !self.etcd_endpoints.is_empty() || self.peers_file.is_some() {
                return Err(Error::Config(
                    "registry kubernetes takes no etcdEndpoints or peersFile: the subnets and \
                     peers come from the Node objects"
                        .into(),
                ));
            }
            return Ok(());
        }
        if self.etcd_endpoints.is_empty() && self.peers_file.is_none() {
            return Err(Error::Config(
                "either etcdEndpoints or peersFile is needed".into(),
            ));
        }
        if !self.etcd_prefix.starts_with('/') {
            return Err(Error::Config("etcdPrefix must start with '/'".into()));
        }
        self.validate_etcd_security()
    }

    /// TLS and authentication settings that fit together: a certificate with its key, a
    /// CA for `https://` endpoints and only then, a user with a password.
    fn validate_etcd_security(&self) -> Result<(), Error> {
        if self.etcd_cert_file.is_some() != self.etcd_key_file.is_some() {
            return Err(Error::Config(
                "etcdCertFile and etcdKeyFile go together: set both or neither".into(),
            ));
        }
        if self.etcd_username.is_some() != self.etcd_password.is_some() {
            return Err(Error::Config(
                "etcdUsername and etcdPassword go together: set both or neither".into(),
            ));
        }
        let https = self
            .etcd_endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        if https > 0 && https < self.etcd_endpoints.len() {
            return Err(Error::Config(
                "etcdEndpoints mixes https:// and plain endpoints".into(),
            ));
        }
        let tls = self.etcd_ca_file.is_some() || self.etcd_cert_file.is_some();
        if https > 0 && self.etcd_ca_file.is_none() {
            return Err(Error::Config(
                "https:// etcdEndpoints need etcdCAFile (the CA that signed the members' certificates)"
                    .into(),
            ));
        }
        if tls && https == 0 && !self.etcd_endpoints.is_empty() {
            return Err(Error::Config(
                "etcdCAFile/etcdCertFile are set but etcdEndpoints are not https://".into(),
            ));
        }
        Ok(())
    }
}

/// Whether the running kernel needs tx checksum offload off on VXLAN devices (before 5.7).
pub fn kernel_needs_tx_checksum_off() -> bool {
    match nix::sys::utsname::uname() {
        Ok(u) => release_before_5_7(&u.release().to_string_lossy()),
        // Unknown kernel: the workaround is harmless on a new one.
        Err(_) => true,
    }
}

fn release_before_5_7(release: &str) -> bool {
    let mut parts = release
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) < (5, 7)
}

impl OverlayConfig {
    /// The tx checksum offload setting to apply: the configured one, else by kernel version.
    pub fn tx_checksum(&self) -> bool {
        self.tx_checksum_offload
            .unwrap_or_else(|| !kernel_needs_tx_checksum_off())
    }
}

/// The VTEP address of a node subnet: its network address, as flannel uses.
pub fn vtep_ip(subnet: Ipv4Net) -> Ipv4Addr {
    subnet.network()
}

/// The IPv6 VTEP address of a node's IPv6 subnet: its network address, as flannel's
/// `flannel-v6.<vni>` has (a /128).
pub fn vtep_ip6(subnet: Ipv6Net) -> Ipv6Addr {
    subnet.network()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_registry_needs_no_etcd_and_refuses_it() {
        let k: OverlayConfig = serde_json::from_str(
            r#"{"clusterCIDR":"100.64.0.0/16","registry":"kubernetes",
                "kubeconfig":"/etc/kubernetes/agent.kubeconfig","nodeName":"n1"}"#,
        )
        .unwrap();
        assert_eq!(k.registry, RegistryKind::Kubernetes);
        assert_eq!(k.node_name.as_deref(), Some("n1"));
        assert!(k.validate().is_ok(), "{:?}", k.validate());
        let etcd: OverlayConfig = serde_json::from_str(
            r#"{"clusterCIDR":"100.64.0.0/16","etcdEndpoints":["http://127.0.0.1:2379"]}"#,
        )
        .unwrap();
        assert_eq!(etcd.registry, RegistryKind::Etcd, "etcd stays the default");
        let both: OverlayConfig = serde_json::from_str(
            r#"{"clusterCIDR":"100.64.0.0/16","registry":"kubernetes",
                "etcdEndpoints":["http://127.0.0.1:2379"]}"#,
        )
        .unwrap();
        let e = both.validate().unwrap_err().to_string();
        assert!(
            e.contains("registry kubernetes takes no etcdEndpoints"),
            "{e}"
        );
        assert!(serde_json::from_str::<OverlayConfig>(
            r#"{"clusterCIDR":"100.64.0.0/16","registry":"consul"}"#
        )
        .is_err());
    }

    #[test]
    fn defaults_and_validation() {
        let c: OverlayConfig = serde_json::from_str(
            r#"{"clusterCIDR":"10.244.0.0/16","etcdEndpoints":["http://127.0.0.1:2379"]}"#,
        )
        .unwrap();
        assert_eq!(
            (c.subnet_len, c.vni, c.port, c.lease_ttl),
            (24, 1, 8472, 30)
        );
        assert_eq!(c.device(), "vxlan.1");
        assert_eq!(c.underlay_family, None);
        assert_eq!(
            c.subnet_file(),
            PathBuf::from("/var/lib/cni/vxlan-overlay/subnet.env")
        );
        assert!(c.validate().is_ok());
        let bad: OverlayConfig = serde_json::from_str(
            r#"{"clusterCIDR":"10.244.0.0/16","subnetLen":8,"peersFile":"/x"}"#,
        )
        .unwrap();
        assert!(bad.validate().is_err());
        let none: OverlayConfig =
            serde_json::from_str(r#"{"clusterCIDR":"10.244.0.0/16"}"#).unwrap();
        assert!(none.validate().is_err());
        let v6: OverlayConfig = serde_json::from_str(
            r#"{"clusterCIDR":"10.244.0.0/16","peersFile":"/x","underlayFamily":"ipv6"}"#,
        )
        .unwrap();
        assert_eq!(v6.underlay_family, Some(UnderlayFamilyConfig::Ipv6));
        assert!(serde_json::from_str::<OverlayConfig>(
            r#"{"clusterCIDR":"10.244.0.0/16","peersFile":"/x","underlayFamily":"v6"}"#,
        )
        .is_err());
        let tls = |extra: &str| {
            serde_json::from_str::<OverlayConfig>(&format!(
                r#"{{"clusterCIDR":"10.244.0.0/16","etcdEndpoints":["https://10.0.0.1:2379","https://10.0.0.2:2379"]{extra}}}"#
            ))
            .unwrap()
            .validate()
        };
        assert!(
            tls(r#","etcdCAFile":"/ca.pem","etcdCertFile":"/c.pem","etcdKeyFile":"/k.pem""#)
                .is_ok()
        );
        assert!(tls(r#","etcdCAFile":"/ca.pem""#).is_ok());
        assert!(tls("").is_err(), "https without a CA");
        assert!(tls(r#","etcdCAFile":"/ca.pem","etcdCertFile":"/c.pem""#).is_err());
        assert!(tls(r#","etcdCAFile":"/ca.pem","etcdUsername":"u""#).is_err());
        let plain_with_ca: OverlayConfig = serde_json::from_str(
            r#"{"clusterCIDR":"10.244.0.0/16","etcdEndpoints":["http://10.0.0.1:2379"],"etcdCAFile":"/ca.pem"}"#,
        )
        .unwrap();
        assert!(plain_with_ca.validate().is_err());
        assert!(release_before_5_7("3.10.0-1160.el7.x86_64"));
        assert!(release_before_5_7("5.4.0-150-generic"));
        assert!(!release_before_5_7("5.7.0"));
        assert!(!release_before_5_7("6.18.44-fc-v595"));
    }

    #[test]
    fn ipv6_needs_its_network_and_a_fitting_subnet_length() {
        let parse = |extra: &str| {
            serde_json::from_str::<OverlayConfig>(&format!(
                r#"{{"clusterCIDR":"10.244.0.0/16","peersFile":"/x"{extra}}}"#
            ))
            .unwrap()
        };
        let off = parse("");
        assert_eq!(off.cluster6().unwrap(), None);
        let on = parse(
            r#","enableIPv6":true,"ipv6Network":"fd00:10:244::/56","etcdEndpoints":["http://127.0.0.1:2379"]"#,
        );
        assert_eq!(
            on.cluster6().unwrap(),
            Some("fd00:10:244::/56".parse().unwrap())
        );
        assert_eq!(
            (on.ipv6_subnet_len, on.device6()),
            (64, "vxlan-v6.1".to_string())
        );
        assert!(on.validate().is_ok());
        assert!(
            parse(r#","enableIPv6":true,"ipv6Network":"fd00:10:244::/56""#)
                .validate()
                .is_err(),
            "a peersFile has no IPv6 subnets"
        );
        assert!(parse(r#","enableIPv6":true"#).validate().is_err());
        assert!(
            parse(r#","enableIPv6":true,"ipv6Network":"fd00::/64","ipv6SubnetLen":56"#)
                .validate()
                .is_err()
        );
        assert!(
            parse(r#","enableIPv6":true,"ipv6Network":"fd00::/56","ipv6SubnetLen":127"#)
                .validate()
                .is_err()
        );
        assert!(parse(r#","enableIPv6":true,"ipv6Network":"fd00::/56","etcdEndpoints":["http://e:2379"],"ipv6Device":"vxlan.1""#)
            .validate()
            .is_err());
        assert_eq!(
            vtep_ip6("fd00:10:244:3::/64".parse().unwrap()),
            "fd00:10:244:3::".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn the_dual_stack_example_is_valid() {
        let list: serde_json::Value = serde_json::from_str(include_str!(
            "../../../packaging/examples/vxlan-overlay-dual-stack.conflist"
        ))
        .unwrap();
        let c: OverlayConfig = serde_json::from_value(list["plugins"][0].clone()).unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.cluster6().unwrap(),
            Some("fd00:10:244::/56".parse().unwrap())
        );
    }
}
