//! Kernel settings under /proc/sys, read first and written only when they differ.

use std::fs;
use std::path::Path;

use crate::Error;

/// Sets `path` (under /proc/sys) to `value` unless it already holds it. Applies to the
/// network namespace of the calling thread's /proc mount.
pub fn ensure(path: &str, value: &str) -> Result<(), Error> {
    let p = Path::new(path);
    let current = fs::read_to_string(p).map_err(|source| Error::Sysctl {
        path: path.to_string(),
        source,
    })?;
    if current.trim() == value {
        return Ok(());
    }
    fs::write(p, value).map_err(|source| Error::Sysctl {
        path: path.to_string(),
        source,
    })
}

/// Turns IPv4 forwarding on: pods' traffic leaves through the node.
pub fn ensure_ip_forward() -> Result<(), Error> {
    ensure("/proc/sys/net/ipv4/ip_forward", "1")
}

const IPV6_FORWARDING: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

/// Whether IPv6 forwarding is on (`net.ipv6.conf.all.forwarding`): one read, the whole cost
/// of [`ensure_ipv6_forward`] once it is.
pub fn ipv6_forwarding() -> Result<bool, Error> {
    let current = fs::read_to_string(IPV6_FORWARDING).map_err(|source| Error::Sysctl {
        path: IPV6_FORWARDING.to_string(),
        source,
    })?;
    Ok(current.trim() != "0")
}

/// Turns IPv6 forwarding on. Forwarding makes the kernel ignore router advertisements on
/// every interface whose `accept_ra` is 1 (the default), so a node that learned its IPv6
/// default route from them would lose it when the route expires: `uplink` (the interface
/// holding the node's IPv6 default route, if any) gets `accept_ra=2` first, which accepts
/// them with forwarding on. An `accept_ra` of 0 (the operator's choice) or 2 is left alone.
/// Nothing is read or written past the one read of `forwarding` once it is on.
pub fn ensure_ipv6_forward(
    uplink: impl FnOnce() -> Result<Option<String>, Error>,
) -> Result<(), Error> {
    if ipv6_forwarding()? {
        return Ok(());
    }
    if let Some(name) = uplink()? {
        let path = format!("/proc/sys/net/ipv6/conf/{name}/accept_ra");
        let current = fs::read_to_string(&path).map_err(|source| Error::Sysctl {
            path: path.clone(),
            source,
        })?;
        if current.trim() == "1" {
            ensure(&path, "2")?;
        }
    }
    ensure(IPV6_FORWARDING, "1")
}

/// Opens a per-interface sysctl file of the calling thread's current network namespace for
/// writing: opened inside a pod's namespace, it stays bound to it after the thread steps
/// back out.
pub fn open_for_write(path: &str) -> Result<fs::File, Error> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|source| Error::Sysctl {
            path: path.to_string(),
            source,
        })
}

/// Writes `value` to a sysctl file opened with [`open_for_write`].
pub fn write_opened(file: &mut fs::File, path: &str, value: &str) -> Result<(), Error> {
    use std::io::Write;
    file.write_all(value.as_bytes())
        .map_err(|source| Error::Sysctl {
            path: path.to_string(),
            source,
        })
}
