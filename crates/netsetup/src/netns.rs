//! Network namespaces: open one by path (checking that it is one), and step into it on the
//! calling thread with a guard that always steps back.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
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

    /// Takes the namespace's route lock: an exclusive flock on the namespace itself (its nsfs
    /// inode), so every path to one namespace (`/var/run/netns/x`, `/proc/PID/ns/net`) is the
    /// same lock, it lives exactly as long as the namespace, and nothing is left on disk.
    /// Plugins attaching one pod to several networks at once (runtimes run a pod's networks
    /// concurrently) decide under it which one installs the default route. Waits at most
    /// `timeout`, then fails with [`Error::Busy`].
    pub fn lock_routes(&self, timeout: Duration) -> Result<NetnsLock, Error> {
        let deadline = Instant::now() + timeout;
        let fd = self.fd.try_clone().map_err(|source| Error::Netns {
            path: self.path.clone(),
            source,
        })?;
        let mut fd = fd;
        loop {
            match Flock::lock(fd, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(NetnsLock { _lock: lock }),
                Err((back, Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                    fd = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((_, Errno::EWOULDBLOCK)) => {
                    return Err(Error::Busy(format!(
                        "network namespace {} stayed locked by another plugin for {timeout:?}",
                        self.path.display()
                    )))
                }
                Err((_, e)) => {
                    return Err(Error::Netns {
                        path: self.path.clone(),
                        source: e.into(),
                    })
                }
            }
        }
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

/// A namespace's route lock ([`Netns::lock_routes`]), released when dropped.
#[must_use = "the lock is released when dropped"]
#[derive(Debug)]
pub struct NetnsLock {
    _lock: Flock<OwnedFd>,
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
