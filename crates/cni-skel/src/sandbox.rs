//! `CNI_NETNS` checked before a plugin runs: it must open, be a network namespace, and not be
//! the plugin's own, which a plugin would otherwise configure as if it were a pod's.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

use cni_spec::{CniError, Code};

/// `NS_GET_NSTYPE` from linux/nsfs.h: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// The namespace file of the calling process's network namespace.
const OWN_NETNS: &str = "/proc/self/ns/net";

/// Refuses (code 4, naming `CNI_NETNS`) a path that cannot be opened, is not a network
/// namespace, or is the plugin's own network namespace: the node's, where an ADD would move
/// a veth end and add a default route. Namespaces are compared by device and inode, so a
/// bind mount of the node's namespace is caught as well as `/proc/self/ns/net`.
pub fn check_netns(path: &str) -> Result<(), CniError> {
    // O_NONBLOCK: open(2) of a FIFO would block until a writer came.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| refused(path, format!("cannot be opened: {e}")))?;
    // SAFETY: the fd is the file opened above; NS_GET_NSTYPE takes no argument, so the
    // kernel reads and writes none of our memory.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind != libc::CLONE_NEWNET {
        return Err(refused(path, "is not a network namespace".into()));
    }
    let theirs = file
        .metadata()
        .map_err(|e| refused(path, format!("cannot be read: {e}")))?;
    let own = std::fs::metadata(OWN_NETNS).map_err(|e| {
        CniError::new(
            Code::IoFailure,
            format!("cannot read the plugin's own network namespace {OWN_NETNS}"),
        )
        .with_details(e.to_string())
    })?;
    if (theirs.dev(), theirs.ino()) == (own.dev(), own.ino()) {
        return Err(refused(
            path,
            "is the plugin's own network namespace (the node's), not a pod's".into(),
        ));
    }
    Ok(())
}

fn refused(path: &str, why: String) -> CniError {
    CniError::new(
        Code::InvalidEnvironment,
        format!("CNI_NETNS {path:?} {why}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(path: &str) -> CniError {
        match check_netns(path) {
            Ok(()) => panic!("{path} was accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn the_own_namespace_is_refused_by_any_path() {
        for path in [
            "/proc/self/ns/net",
            "/proc/thread-self/ns/net",
            "/proc/1/ns/net",
        ] {
            // /proc/1 is another process, in the same namespace unless the test runs in a
            // container of its own; compare to be sure what is expected.
            let same = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
                == std::fs::metadata(OWN_NETNS)
                    .ok()
                    .map(|m| (m.dev(), m.ino()));
            if !same {
                continue;
            }
            let e = refusal(path);
            assert_eq!(e.code, Code::InvalidEnvironment, "{path}");
            assert!(e.msg.starts_with("CNI_NETNS "), "{}", e.msg);
            assert!(e.msg.contains("own network namespace"), "{}", e.msg);
        }
    }

    #[test]
    fn other_files_are_refused_naming_the_variable() {
        for (path, why) in [
            ("/etc/passwd", "is not a network namespace"),
            ("/proc/self/ns/mnt", "is not a network namespace"),
            ("/nonexistent/netns", "cannot be opened"),
        ] {
            let e = refusal(path);
            assert_eq!(e.code, Code::InvalidEnvironment, "{path}");
            assert!(e.msg.starts_with("CNI_NETNS "), "{}", e.msg);
            assert!(e.msg.contains(why), "{path}: {}", e.msg);
        }
    }
}
