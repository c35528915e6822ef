//! Replaces a small state file atomically and durably: the suite's one way to write its
//! state (the overlay agent's `agent.json` and `subnet.env`, vpc-route's `node.json`).
//!
//! The policy, in full: the content goes to a temp file in the same directory (created with
//! `O_EXCL`, mode 0600), which is fsync'd, renamed over the target, and then the directory is
//! fsync'd. Readers see the old content or the new, never a torn one, and once [`write`]
//! returns the new content survives a killed process and a power loss. Without the fsyncs a
//! rename can reach the disk before the data (XFS, or ext4 without `auto_da_alloc`), and an
//! empty `agent.json` after a power loss stops the agent from starting. The cost, about 5 ms
//! per write on this project's test VM (ext4), is paid by files written once per start or
//! lease, not per pod.
//!
//! node-ipam's per-pod files are not written here: they sit on every ADD's path, where two
//! fsyncs would more than double the ADD, and its crash model (store.rs) needs none.
//!
//! A separate crate because both the overlay and vpc-routes use it, and vpc-routes may
//! depend on none of the suite's plugin crates (it links the AWS SDK; see the workspace
//! Cargo.toml); cni-spec holds no I/O.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Replaces `path` with `content` as the module documents. The directory must exist. On an
/// error the temp file is removed and `path` is unchanged.
pub fn write(path: &Path, content: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = temp_path(dir, path);
    let written = write_synced(&tmp, content).and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(dir)?.sync_all()
}

/// `.<name>.tmp.<pid>.<n>`: unique among this process's threads, and a leftover of a killed
/// process with the same pid is replaced.
fn temp_path(dir: &Path, path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    dir.join(format!(
        ".{name}.tmp.{}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

fn write_synced(tmp: &Path, content: &[u8]) -> io::Result<()> {
    match fs::remove_file(tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    // O_EXCL: never writes through a symlink planted at the temp name.
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)?;
    f.write_all(content)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_the_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("agent.json");
        write(&path, b"{\"a\":1}").unwrap_or_else(|e| panic!("first write: {e}"));
        write(&path, b"{}").unwrap_or_else(|e| panic!("second write: {e}"));
        assert_eq!(fs::read(&path).ok().as_deref(), Some(&b"{}"[..]));
        let mode = fs::metadata(&path).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode.ok(), Some(0o600));
        let names: Vec<_> = fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["agent.json"], "temp files left behind");
    }

    #[test]
    fn a_failed_write_keeps_the_old_content() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("node.json");
        write(&path, b"old").unwrap_or_else(|e| panic!("write: {e}"));
        // A directory in the way of the rename: the write must fail and change nothing.
        let blocked = dir.path().join("sub");
        fs::create_dir(&blocked).unwrap_or_else(|e| panic!("mkdir: {e}"));
        fs::write(blocked.join("x"), b"").unwrap_or_else(|e| panic!("write x: {e}"));
        assert!(write(&blocked, b"new").is_err());
        assert_eq!(fs::read(&path).ok().as_deref(), Some(&b"old"[..]));
        let names: Vec<_> = fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.contains(".tmp.")), "{names:?}");
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let e = write(&dir.path().join("no/such/file"), b"x").err();
        assert_eq!(e.map(|e| e.kind()), Some(io::ErrorKind::NotFound));
    }
}
