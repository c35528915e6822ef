//! Network namespaces: open one by path (checking that it is one), and step into it on the
//! calling thread with a guard that always steps back.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

use crate::socket::Socket;
use crate::Error;

/// `NS_GET_NSTYPE` from linux/nsfs.h: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// An open network namespace.
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    path: PathBuf,
}

impl Netns {
    /// Opens the namespace at `path` (a bind mount under /var/run/netns, or /proc/PID/ns/net)
    /// and checks that it is a network namespace, not some other file.
    pub fn open(path: &Path) -> Result<Netns, Error> {
        // O_NONBLOCK: open(2) of a FIFO blocks until a writer comes, which would hang the
        // plugin on a bogus CNI_NETNS before the type check below could refuse it.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| Error::Netns {
                path: path.to_path_buf(),
                source,
            })?;
        // nix has no NS_GET_NSTYPE call.
        // SAFETY: the fd is the open file above; NS_GET_NSTYPE takes no argument, so the
        // kernel reads and writes none of our memory.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if kind != libc::CLONE_NEWNET {
            return Err(Error::NotANetns(path.to_path_buf()));
        }
        Ok(Netns {
            fd: file.into(),
            path: path.to_path_buf(),
        })
    }

    /// The calling thread's current network namespace.
    pub fn current() -> Result<Netns, Error> {
        Netns::open(Path::new("/proc/thread-self/ns/net"))
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the calling thread into this namespace until the guard is dropped.
    pub fn enter(&self) -> Result<NetnsGuard, Error> {
        let home = Netns::current()?;
        setns(&self.fd, CloneFlags::CLONE_NEWNET).map_err(|e| Error::Netns {
            path: self.path.clone(),
            source: e.into(),
        })?;
        Ok(NetnsGuard { home })
    }

    /// Opens an rtnetlink socket inside this namespace; the thread returns at once and the
    /// socket keeps working in the namespace it was opened in.
    pub fn socket(&self) -> Result<Socket, Error> {
        let _inside = self.enter()?;
        Socket::new()
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Returns the thread to the namespace it came from when dropped.
#[must_use = "the thread leaves the namespace when the guard is dropped"]
pub struct NetnsGuard {
    home: Netns,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.home.fd, CloneFlags::CLONE_NEWNET) {
            // The thread would go on in the wrong namespace: stopping is the only safe thing.
            log::error!(
                "cannot return to network namespace {}: {e}",
                self.home.path.display()
            );
            std::process::abort();
        }
    }
}
