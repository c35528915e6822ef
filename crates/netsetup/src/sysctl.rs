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
