//! Reading IPAM state in host-local's on-disk layout, which kubenet-bridge shares: in
//! `<dataDir>/<network name>/`, one file per reserved address, named by the address and
//! holding `containerid\r\nifname`, next to `last_reserved_ip.0` and `lock`.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The lease directory of one network: `<dataDir>/<network name>`.
#[derive(Debug, Clone)]
pub struct LeaseDir {
    path: PathBuf,
}

/// Who holds a reserved address, as its lease file records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    /// `CNI_CONTAINERID` of the ADD that reserved it.
    pub container_id: String,
    /// `CNI_IFNAME` of the ADD that reserved it.
    pub ifname: String,
}

impl LeaseDir {
    /// The lease directory of network `net_name` under `data_dir`.
    pub fn new(data_dir: &Path, net_name: &str) -> LeaseDir {
        LeaseDir {
            path: data_dir.join(net_name),
        }
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file that records `addr`'s reservation.
    pub fn lease_file(&self, addr: Ipv4Addr) -> PathBuf {
        self.path.join(addr.to_string())
    }

    /// Whether a lease file for `addr` exists.
    pub fn is_reserved(&self, addr: Ipv4Addr) -> bool {
        self.lease_file(addr).exists()
    }

    /// Every address with a lease file, sorted; empty if the directory does not exist yet.
    pub fn reserved_addresses(&self) -> Vec<Ipv4Addr> {
        let Ok(entries) = fs::read_dir(&self.path) else {
            return Vec::new();
        };
        let mut addrs: Vec<Ipv4Addr> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        addrs.sort();
        addrs
    }

    /// The address recorded in `last_reserved_ip.0`, where host-local resumes its search.
    pub fn last_reserved(&self) -> Option<Ipv4Addr> {
        let text = fs::read_to_string(self.path.join("last_reserved_ip.0")).ok()?;
        text.trim().parse().ok()
    }

    /// The holder recorded in `addr`'s lease file, if there is one.
    ///
    /// Panics if the file exists but is not `containerid\r\nifname`.
    pub fn holder(&self, addr: Ipv4Addr) -> Option<LeaseHolder> {
        let file = self.lease_file(addr);
        let content = fs::read_to_string(&file).ok()?;
        let (container_id, ifname) = content.split_once("\r\n").unwrap_or_else(|| {
            panic!(
                "lease file {} holds {content:?}, not host-local's \"containerid\\r\\nifname\"",
                file.display()
            )
        });
        Some(LeaseHolder {
            container_id: container_id.to_owned(),
            ifname: ifname.to_owned(),
        })
    }
}
