//! Leases on disk, in host-local's layout, with an attachment index for O(1) lookup.
//!
//! Layout of `<dataDir>/<network>/`:
//! - `<address>`: one file per leased address, IPv4 or IPv6 (named as Go prints it, which is
//!   RFC 5952's form, as Rust's), holding `<container id>\r\n<ifname>`, created by `link(2)`
//!   from a complete temp file, so it exists only with its content and an address can never
//!   be held twice (host-local's format: its tools and habits keep working);
//! - `last_reserved_ip.<i>`: the last address handed out from range `i` of the network's
//!   [`Ranges`], for round-robin (a hint only, overwritten in place: see
//!   `write_last_reserved`); host-local numbers its range sets the same way, and an IPv4-only
//!   network has only `last_reserved_ip.0`, as before dual-stack;
//! - `lock`: flock'd for every operation (the same lock file host-local takes);
//! - `attachments/<container id>@<ifname>`: the addresses of that attachment, one per line
//!   (one per range; an IPv4-only network writes the one line earlier releases wrote).
//!   host-local walks the whole directory to find a container's address; this index makes
//!   lookup and release cost the same at 1 or 250 pods.
//!
//! Allocation looks at the address after the last one handed out (one `stat`, free in the
//! usual round-robin case); only when that one is taken does it list the directory once (one
//! or two `getdents` calls for a /24) instead of a `stat` per taken address, so its system
//! calls do not grow with the number of pods.
//!
//! An attachment lock serializes the verbs of one (container id, ifname): a byte-range OFD
//! lock on the `lock` file at an offset hashed from both, taken for a whole ADD or DEL. Two
//! ADDs of the same pod (a runtime retrying after a timeout) then run one after the other
//! instead of sharing a lease that the loser's rollback would release under the winner. OFD
//! locks and host-local's flock on the same file do not interact, and the kernel drops both
//! when a killed process's file is closed.
//!
//! Crash ordering: the index entry is written (with every address of the attachment) before
//! the address files, and the address files are removed before the index entry, so every
//! address file has an index entry at every instant. An index entry without its address file is stale and is ignored or cleaned.
//! Writes are not fsync'd: a killed process loses nothing the kernel already has, and a power
//! loss reboots the node with every pod on it (an empty file then holds its address for no one
//! until GC).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, Flock, FlockArg};

use crate::pool::{Pool, Ranges};
use crate::Error;

const LAST_RESERVED: &str = "last_reserved_ip.";
const LOCK: &str = "lock";
const INDEX_DIR: &str = "attachments";
const LINE_BREAK: &str = "\r\n";

/// Who holds a lease: (container id, ifname).
pub type Owner = (String, String);

/// The leases of one network on this node.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    lock: File,
}

/// An attachment's address in one range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The address.
    pub address: IpAddr,
    /// True when the attachment already held it before this call.
    pub existing: bool,
}

/// An attachment's addresses: one per range of the network, in the ranges' order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The addresses, `addresses[i]` from range `i`.
    pub addresses: Vec<IpAddr>,
    /// True when the attachment already held every one of them before this call.
    pub existing: bool,
}

/// Holds one attachment's lock (see the module docs); dropped, it unlocks.
#[derive(Debug)]
pub struct AttachmentLock<'a> {
    store: &'a Store,
    offset: i64,
}

impl Drop for AttachmentLock<'_> {
    fn drop(&mut self) {
        let _ = self
            .store
            .range_lock(self.offset, libc::F_UNLCK as libc::c_short, false);
    }
}

/// Holds the store's flock, on a duplicate of the lock file's descriptor (the same open file
/// description, so the same lock); dropped, it unlocks and closes the duplicate. nix's unlock
/// panics if flock(2) fails, which LOCK_UN on a descriptor we hold does not.
type Locked = Flock<File>;

impl Store {
    /// Opens (creating, mode 0700) `<data_dir>/<network>`. `network` must already be a valid
    /// identifier (no `/`), as the CNI skeleton checks.
    pub fn open(data_dir: &Path, network: &str) -> Result<Store, Error> {
        if network.is_empty() || network.contains('/') || network == "." || network == ".." {
            return Err(Error::InvalidName(network.to_string()));
        }
        let dir = data_dir.join(network);
        create_dir(&dir)?;
        // The network directory itself must not be a symlink: every lease, the lock and the
        // index would be written wherever it points. (dataDir above it may be one: operators
        // move /var/lib that way.)
        if !is_real_dir(&dir)? {
            return Err(Error::io(&dir, std::io::ErrorKind::NotFound.into()));
        }
        let lock_path = dir.join(LOCK);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        let store = Store { dir, lock };
        let index = store.dir.join(INDEX_DIR);
        // Not is_dir: a symlink planted in place of the index would send every index write
        // to the directory it points at.
        if !is_real_dir(&index)? {
            let _held = store.lock()?;
            store.build_index()?;
        }
        Ok(store)
    }

    /// The directory holding the leases.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> Result<Locked, Error> {
        let path = || self.dir.join(LOCK);
        let dup = self.lock.try_clone().map_err(|e| Error::io(&path(), e))?;
        Flock::lock(dup, FlockArg::LockExclusive)
            .map_err(|(_, errno)| Error::io(&path(), std::io::Error::from(errno)))
    }

    /// Waits for and takes the lock of one attachment, held until the guard is dropped; ADD
    /// and DEL of the same (container id, ifname) hold it for their whole run.
    pub fn lock_attachment(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<AttachmentLock<'_>, Error> {
        let offset = attachment_offset(container_id, ifname);
        self.range_lock(offset, libc::F_WRLCK as libc::c_short, true)
            .map_err(|e| Error::io(&self.dir.join(LOCK), e))?;
        Ok(AttachmentLock {
            store: self,
            offset,
        })
    }

    /// Takes the attachment's lock only if nobody holds it (GC skips an attachment whose ADD
    /// or DEL is running).
    fn try_lock_attachment(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<AttachmentLock<'_>>, Error> {
        let offset = attachment_offset(container_id, ifname);
        match self.range_lock(offset, libc::F_WRLCK as libc::c_short, false) {
            Ok(()) => Ok(Some(AttachmentLock {
                store: self,
                offset,
            })),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => {
                Ok(None)
            }
            Err(e) => Err(Error::io(&self.dir.join(LOCK), e)),
        }
    }

    /// One byte of the lock file at `offset`, locked (`F_WRLCK`) or unlocked (`F_UNLCK`)
    /// with an open-file-description lock; `wait` blocks until it is free.
    fn range_lock(&self, offset: i64, kind: libc::c_short, wait: bool) -> std::io::Result<()> {
        let fl = libc::flock {
            l_type: kind,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: offset,
            l_len: 1,
            // OFD locks require 0 here.
            l_pid: 0,
        };
        loop {
            let arg = if wait {
                FcntlArg::F_OFD_SETLKW(&fl)
            } else {
                FcntlArg::F_OFD_SETLK(&fl)
            };
            match fcntl(&self.lock, arg) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(errno) => return Err(errno.into()),
            }
        }
    }

    /// Returns the attachment's address in `pool` (a network of one range), reserving the
    /// next free one round-robin if it has none. Fails with [`Error::Exhausted`] when every
    /// address is leased.
    pub fn reserve(
        &self,
        pool: &Pool,
        container_id: &str,
        ifname: &str,
    ) -> Result<Reservation, Error> {
        let lease = self.reserve_ranges(&Ranges::one(*pool), &[], container_id, ifname)?;
        Ok(Reservation {
            address: lease.addresses[0],
            existing: lease.existing,
        })
    }

    /// Leases `address` of `pool` (a network of one range) as [`Store::reserve_ranges`]
    /// leases a requested address.
    pub fn reserve_requested(
        &self,
        pool: &Pool,
        address: IpAddr,
        container_id: &str,
        ifname: &str,
    ) -> Result<Reservation, Error> {
        let lease = self.reserve_ranges(&Ranges::one(*pool), &[address], container_id, ifname)?;
        Ok(Reservation {
            address: lease.addresses[0],
            existing: lease.existing,
        })
    }

    /// Returns the attachment's addresses, one per range of `ranges`, reserving what it lacks:
    /// the address of `requested` in that range's family if there is one (`CNI_ARGS` `IP=`,
    /// the `ips` capability; host-local honours such a request the same way), else the next
    /// free one round-robin. A range with no free address fails with [`Error::Exhausted`]
    /// naming it; a requested address outside its range, reserved, held by another
    /// attachment, or different from the one the attachment holds already fails with
    /// [`Error::RequestedUnavailable`]. A failed call leases nothing new.
    ///
    /// The index entry is written once with every address, before their address files are
    /// linked; an attachment whose index names an address with no address file (a crash in
    /// between) gets that address again if nobody took it meanwhile.
    pub fn reserve_ranges(
        &self,
        ranges: &Ranges,
        requested: &[IpAddr],
        container_id: &str,
        ifname: &str,
    ) -> Result<Lease, Error> {
        for want in requested {
            let range = ranges.for_family(*want);
            if !range.is_some_and(|p| p.contains(*want)) {
                return Err(Error::RequestedUnavailable {
                    address: *want,
                    why: match range {
                        Some(p) => format!(
                            "not a leasable address of {} (gateway {})",
                            p.subnet(),
                            p.gateway()
                        ),
                        None => "no pod range of its address family".into(),
                    },
                });
            }
        }
        let _held = self.lock()?;
        let owner = owner_line(container_id, ifname);
        let index = self.index_path(container_id, ifname)?;
        let held = read_addrs(&index)?;
        // Per range: the address, and whether its file is ours already.
        let mut plan: Vec<(IpAddr, bool)> = Vec::with_capacity(ranges.pools().len());
        for (i, pool) in ranges.pools().iter().enumerate() {
            let want = requested.iter().copied().find(|a| pool.same_family(*a));
            let unavailable = |why: String| Error::RequestedUnavailable {
                address: want.unwrap_or(pool.gateway()),
                why,
            };
            if let Some(mine) = held.iter().copied().find(|a| pool.contains(*a)) {
                match self.owner_of(mine)? {
                    Some(o) if o == owner => {
                        if let Some(w) = want.filter(|w| *w != mine) {
                            return Err(Error::RequestedUnavailable {
                                address: w,
                                why: format!(
                                    "{container_id}/{ifname} holds {mine} already: DEL it first"
                                ),
                            });
                        }
                        plan.push((mine, true));
                        continue;
                    }
                    // The index entry was written but its address file not (a crash in
                    // between): finish the job if nobody took the address meanwhile.
                    None if want.is_none_or(|w| w == mine) => {
                        plan.push((mine, false));
                        continue;
                    }
                    _ => {}
                }
            }
            let address = match want {
                Some(w) => match self.owner_of(w)? {
                    Some(holder) => {
                        return Err(unavailable(format!(
                            "leased to {}",
                            holder.replace(LINE_BREAK, "/")
                        )))
                    }
                    None => w,
                },
                None => self.next_free(pool, i, &[])?,
            };
            plan.push((address, false));
        }
        let addresses: Vec<IpAddr> = plan.iter().map(|(a, _)| *a).collect();
        if plan.iter().all(|(_, ours)| *ours) {
            return Ok(Lease {
                addresses,
                existing: true,
            });
        }
        self.link_plan(ranges, requested, &owner, &index, &held, plan)
    }

    /// Writes the index entry with the planned addresses, then links the address files that
    /// are not ours yet and records each as its range's last reserved. An address linked
    /// meanwhile by a writer that does not take the lock is replaced by the next free one.
    /// On failure, the files linked here and the index entry are put back as they were.
    fn link_plan(
        &self,
        ranges: &Ranges,
        requested: &[IpAddr],
        owner: &str,
        index: &Path,
        held: &[IpAddr],
        mut plan: Vec<(IpAddr, bool)>,
    ) -> Result<Lease, Error> {
        let mut linked: Vec<IpAddr> = Vec::new();
        let undo = |linked: &[IpAddr]| {
            for a in linked {
                let _ = remove_file(&self.addr_path(*a));
            }
            let _ = if held.is_empty() {
                remove_file(index)
            } else {
                write_atomic(index, addrs_text(held).as_bytes())
            };
        };
        let mut lost: Vec<IpAddr> = Vec::new();
        let mut i = 0;
        let mut index_written = false;
        // One complete temp file holding the owner, linked to every new address (a dual-stack
        // attachment's two address files are two names of one inode: the same content, and
        // one file creation less per ADD, the costliest step of the store).
        let mut owner_file: Option<OwnerFile> = None;
        while i < plan.len() {
            let (address, ours) = plan[i];
            if ours {
                i += 1;
                continue;
            }
            if !index_written {
                let addresses: Vec<IpAddr> = plan.iter().map(|(a, _)| *a).collect();
                if let Err(e) = write_atomic(index, addrs_text(&addresses).as_bytes()) {
                    undo(&linked);
                    return Err(e);
                }
                index_written = true;
            }
            let source = match &owner_file {
                Some(f) => f,
                None => match OwnerFile::write(&self.dir, owner) {
                    Ok(f) => owner_file.insert(f),
                    Err(e) => {
                        undo(&linked);
                        return Err(e);
                    }
                },
            };
            match self.link_address(&source.0, address) {
                Ok(true) => {}
                Ok(false) if !requested.contains(&address) => {
                    lost.push(address);
                    match self.next_free(&ranges.pools()[i], i, &lost) {
                        Ok(next) => {
                            plan[i].0 = next;
                            index_written = false;
                            continue;
                        }
                        Err(e) => {
                            undo(&linked);
                            return Err(e);
                        }
                    }
                }
                Ok(false) => {
                    undo(&linked);
                    return Err(Error::RequestedUnavailable {
                        address,
                        why: "leased meanwhile by another attachment".into(),
                    });
                }
                Err(e) => {
                    undo(&linked);
                    return Err(e);
                }
            }
            linked.push(address);
            // A full disk here: the reservation holds nothing (see `write_last_reserved`).
            if let Err(e) = self.write_last_reserved(i, address) {
                undo(&linked);
                return Err(e);
            }
            i += 1;
        }
        Ok(Lease {
            addresses: plan.iter().map(|(a, _)| *a).collect(),
            existing: false,
        })
    }

    /// The next free address of range `i` round-robin after its last reserved one, passing
    /// over `skip`.
    fn next_free(&self, pool: &Pool, i: usize, skip: &[IpAddr]) -> Result<IpAddr, Error> {
        let last = read_addr(&self.last_reserved_path(i))?;
        let mut taken = Taken::Unknown;
        for address in pool.candidates(last) {
            if skip.contains(&address) || self.is_taken(address, &mut taken)? {
                continue;
            }
            return Ok(address);
        }
        Err(Error::Exhausted {
            subnet: pool.subnet(),
            capacity: pool.capacity(),
        })
    }

    fn last_reserved_path(&self, range: usize) -> PathBuf {
        self.dir.join(format!("{LAST_RESERVED}{range}"))
    }

    /// Whether `address` has a lease file. The first question costs one `stat`; once an
    /// address turns out taken, the directory is listed once and the rest are answered from
    /// that list (see the module docs).
    fn is_taken(&self, address: IpAddr, taken: &mut Taken) -> Result<bool, Error> {
        match taken {
            Taken::Listed(set) => Ok(set.contains(&address)),
            Taken::Unknown => {
                let exists = match self.addr_path(address).symlink_metadata() {
                    Ok(_) => true,
                    Err(e) if e.kind() == ErrorKind::NotFound => false,
                    Err(e) => return Err(Error::io(&self.addr_path(address), e)),
                };
                if exists {
                    *taken = Taken::Listed(self.leased_addresses()?);
                }
                Ok(exists)
            }
        }
    }

    /// The addresses that have a lease file, from one listing of the directory.
    fn leased_addresses(&self) -> Result<HashSet<IpAddr>, Error> {
        Ok(read_dir(&self.dir)?
            .iter()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect())
    }

    /// The attachment's addresses (one per range it holds one in; empty when none).
    pub fn lookup(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, Error> {
        let _held = self.lock()?;
        self.lookup_locked(container_id, ifname)
    }

    fn lookup_locked(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, Error> {
        let index = self.index_path(container_id, ifname)?;
        let owner = owner_line(container_id, ifname);
        let mut out = Vec::new();
        for address in read_addrs(&index)? {
            if self.owner_of(address)?.as_deref() == Some(owner.as_str()) {
                out.push(address);
            }
        }
        Ok(out)
    }

    /// Releases the attachment's addresses, returning them; empty when it held none (DEL is
    /// idempotent).
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, Error> {
        let _held = self.lock()?;
        let addresses = self.lookup_locked(container_id, ifname)?;
        for address in &addresses {
            remove_file(&self.addr_path(*address))?;
        }
        remove_file(&self.index_path(container_id, ifname)?)?;
        Ok(addresses)
    }

    /// Releases every lease whose (container id, ifname) is not in `valid`, drops stale index
    /// entries and leftover temp files. Returns the released addresses.
    ///
    /// `before_release` runs for each stale owner before its lease goes (to remove what the
    /// attachment left on the node), under the store's lock and the attachment's, so no ADD
    /// or DEL of it runs meanwhile; an attachment whose ADD or DEL is running right now is not
    /// stale and is left alone. If `before_release` fails, GC stops with that error.
    pub fn gc<E: From<Error>>(
        &self,
        valid: &HashSet<Owner>,
        mut before_release: impl FnMut(&Owner) -> Result<(), E>,
    ) -> Result<Vec<IpAddr>, E> {
        let _held = self.lock()?;
        let mut released = Vec::new();
        for (address, owner) in self.leases()? {
            let _attachment = match &owner {
                Some(o) if valid.contains(o) => continue,
                Some(o) => match self.try_lock_attachment(&o.0, &o.1)? {
                    Some(guard) => {
                        before_release(o)?;
                        Some(guard)
                    }
                    None => continue,
                },
                None => None,
            };
            remove_file(&self.addr_path(address))?;
            released.push(address);
        }
        let index_dir = self.dir.join(INDEX_DIR);
        for entry in read_dir(&index_dir)? {
            let name = entry.file_name();
            let Some((id, ifname)) = name.to_str().and_then(|n| n.split_once('@')) else {
                remove_file(&entry.path())?;
                continue;
            };
            let live = read_addrs(&entry.path())?
                .into_iter()
                .any(|a| self.owner_of(a).ok().flatten() == Some(owner_line(id, ifname)));
            if !live {
                remove_file(&entry.path())?;
            }
        }
        for entry in read_dir(&self.dir)? {
            if entry.file_name().to_string_lossy().starts_with(".tmp.") {
                remove_file(&entry.path())?;
            }
        }
        released.sort();
        Ok(released)
    }

    /// Every leased address with its owner (None for an empty or unreadable file).
    pub fn leases(&self) -> Result<Vec<(IpAddr, Option<Owner>)>, Error> {
        let mut out = Vec::new();
        for entry in read_dir(&self.dir)? {
            let Some(address) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            let owner = self.owner_of(address)?.as_deref().and_then(parse_owner);
            out.push((address, owner));
        }
        out.sort();
        Ok(out)
    }

    /// True when `pool` (a network of one range) has at least one free address.
    pub fn has_free(&self, pool: &Pool) -> Result<bool, Error> {
        Ok(self.exhausted(&Ranges::one(*pool))?.is_empty())
    }

    /// The ranges with no free address left, looking in each round-robin from its last
    /// reserved one (one `stat`, or one listing of the directory when that address is taken).
    pub fn exhausted(&self, ranges: &Ranges) -> Result<Vec<Pool>, Error> {
        let _held = self.lock()?;
        let mut out = Vec::new();
        for (i, pool) in ranges.pools().iter().enumerate() {
            match self.next_free(pool, i, &[]) {
                Ok(_) => {}
                Err(Error::Exhausted { .. }) => out.push(*pool),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn addr_path(&self, address: IpAddr) -> PathBuf {
        self.dir.join(address.to_string())
    }

    fn index_path(&self, container_id: &str, ifname: &str) -> Result<PathBuf, Error> {
        let name = format!("{container_id}@{ifname}");
        // Both parts are validated by the CNI skeleton; this guard keeps the store safe on
        // its own (no path separators, no '.'/'..', within NAME_MAX).
        if container_id.is_empty()
            || container_id.starts_with('.')
            || name.contains('/')
            || name.contains('\0')
            || name.len() > 255
        {
            return Err(Error::InvalidName(name));
        }
        Ok(self.dir.join(INDEX_DIR).join(name))
    }

    /// Content of the address file: `<id>\r\n<ifname>`, or None when there is none.
    fn owner_of(&self, address: IpAddr) -> Result<Option<String>, Error> {
        read_small(&self.addr_path(address)).map(|o| o.map(|s| s.trim().to_string()))
    }

    /// Creates the address file with its content in one step, as a link to the complete
    /// owner file `tmp`; false if it is taken.
    fn link_address(&self, tmp: &Path, address: IpAddr) -> Result<bool, Error> {
        let target = self.addr_path(address);
        match fs::hard_link(tmp, &target) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::io(&target, e)),
        }
    }

    /// Overwrites `last_reserved_ip.<range>` in place (one `pwrite`, then a shortening
    /// `ftruncate` only when the old address was longer), in host-local's format. If it
    /// fails (a full disk), the caller removes the address file and the index entry again,
    /// so a failed reservation holds nothing. Not temp + rename like
    /// every other state file: this one is only the round-robin hint, so a torn or stale value
    /// can never hand out an address twice (`link(2)` decides that), while on ext4 a rename
    /// over an existing file makes the kernel allocate the new file's blocks at once
    /// (`auto_da_alloc`): 0.5 ms of a 3 ms ADD here, measured with `strace -T`.
    fn write_last_reserved(&self, range: usize, address: IpAddr) -> Result<(), Error> {
        use std::os::unix::fs::FileExt;
        let path = self.last_reserved_path(range);
        let text = address.to_string();
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        file.write_all_at(text.as_bytes(), 0)
            .map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if len > text.len() as u64 {
            file.set_len(text.len() as u64)
                .map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    }

    /// Builds the index from address files written by host-local or an older version.
    fn build_index(&self) -> Result<(), Error> {
        let index = self.dir.join(INDEX_DIR);
        create_dir(&index)?;
        let mut by_owner: std::collections::BTreeMap<Owner, Vec<IpAddr>> = Default::default();
        for (address, owner) in self.leases()? {
            if let Some(owner) = owner {
                by_owner.entry(owner).or_default().push(address);
            }
        }
        for ((id, ifname), addresses) in by_owner {
            if let Ok(path) = self.index_path(&id, &ifname) {
                write_atomic(&path, addrs_text(&addresses).as_bytes())?;
            }
        }
        Ok(())
    }
}

/// A complete temp file holding an owner line, the source of `link(2)` for address files;
/// removed when dropped (one a killed process leaves is replaced by the next process with its
/// pid, and removed by GC).
struct OwnerFile(PathBuf);

impl OwnerFile {
    fn write(dir: &Path, owner: &str) -> Result<OwnerFile, Error> {
        let tmp = dir.join(format!(".tmp.{}", std::process::id()));
        write_new(&tmp, owner.as_bytes())?;
        Ok(OwnerFile(tmp))
    }
}

impl Drop for OwnerFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// What a search for a free address knows of the taken ones.
enum Taken {
    /// Nothing yet: ask the file system about one address.
    Unknown,
    /// Every address with a lease file, from one listing.
    Listed(HashSet<IpAddr>),
}

/// A stable 64-bit hash of an attachment (FNV-1a of container id, NUL, ifname): it places the
/// attachment's lock here and names its host veth in pod-bridge.
pub fn attachment_hash(container_id: &str, ifname: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([0u8]).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Where in the lock file an attachment's lock lives: one of 2^20 offsets, so two
/// attachments share a lock (and wait for each other) only rarely.
fn attachment_offset(container_id: &str, ifname: &str) -> i64 {
    (attachment_hash(container_id, ifname) % (1 << 20)) as i64
}

fn owner_line(container_id: &str, ifname: &str) -> String {
    format!("{}{LINE_BREAK}{ifname}", container_id.trim())
}

/// Whether `path` is a directory itself (false when it does not exist); a symlink or any
/// other file there is an error, since state must never be written through one.
fn is_real_dir(path: &Path) -> Result<bool, Error> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(true),
        Ok(_) => Err(Error::io(
            path,
            std::io::Error::other("not a directory (symlinks are not followed)"),
        )),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}

fn create_dir(dir: &Path) -> Result<(), Error> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) => Err(Error::io(dir, e)),
    }
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, Error> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    entries
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::io(dir, e))
}

/// Whether an ADD or DEL of (container id, ifname) holds its attachment lock in the IPAM
/// directory `dir` right now: a probe (`F_OFD_GETLK`) that takes no lock and creates nothing,
/// for tools that must skip attachments being changed, as GC does. False when `dir` has no
/// lock file.
pub fn attachment_busy(dir: &Path, container_id: &str, ifname: &str) -> Result<bool, Error> {
    let path = dir.join(LOCK);
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let mut fl = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: attachment_offset(container_id, ifname),
        l_len: 1,
        // OFD locks require 0 here.
        l_pid: 0,
    };
    fcntl(&file, FcntlArg::F_OFD_GETLK(&mut fl)).map_err(|errno| Error::io(&path, errno.into()))?;
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// The owner a lease file names: `<container id>\r\n<ifname>` (host-local's format), each
/// part trimmed; None for an empty or malformed file.
pub fn parse_owner(content: &str) -> Option<Owner> {
    let (id, ifname) = content.split_once(LINE_BREAK)?;
    Some((id.trim().to_string(), ifname.trim().to_string()))
}

/// The lease files of the IPAM directory `dir` (a network's, `<dataDir>/<name>`) with their
/// owners, sorted by address, read without taking the lock or creating anything: for tools
/// that inspect or clean a node. A missing directory holds none; a file that cannot be read
/// has no owner.
pub fn read_leases(dir: &Path) -> Result<Vec<(IpAddr, Option<Owner>)>, Error> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Some(address) = e.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let owner = read_small(&e.path())
            .ok()
            .flatten()
            .as_deref()
            .and_then(parse_owner);
        out.push((address, owner));
    }
    out.sort();
    Ok(out)
}

/// Reads a small state file without following a symlink; None if it does not exist.
fn read_small(path: &Path) -> Result<Option<String>, Error> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut s = String::new();
    file.take(4096)
        .read_to_string(&mut s)
        .map_err(|e| Error::io(path, e))?;
    Ok(Some(s))
}

fn read_addr(path: &Path) -> Result<Option<IpAddr>, Error> {
    Ok(read_small(path)?.and_then(|s| s.trim().parse().ok()))
}

/// The addresses of an index entry, one per line (an entry of a release before dual-stack
/// holds one); none when it does not exist.
fn read_addrs(path: &Path) -> Result<Vec<IpAddr>, Error> {
    Ok(read_small(path)?
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default())
}

/// An index entry's content: the addresses, one per line, with no line break after the last
/// (so an entry of one address is byte for byte what earlier releases wrote).
fn addrs_text(addresses: &[IpAddr]) -> String {
    addresses
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

fn write_new(path: &Path, content: &[u8]) -> Result<(), Error> {
    // A temp file left by a killed process with our pid would block us: replace it.
    remove_file(path)?;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    f.write_all(content).map_err(|e| {
        // A full disk fails the write after the create: leave no empty or torn file behind.
        let _ = fs::remove_file(path);
        Error::io(path, e)
    })
}

/// Temp file + rename: readers see the old or the new content, never a torn one.
fn write_atomic(path: &Path, content: &[u8]) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .unwrap_or(OsStr::new("x"))
        .to_string_lossy();
    let tmp = dir.join(format!(".tmp.{}.{name}", std::process::id()));
    write_new(&tmp, content)?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

fn remove_file(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}
