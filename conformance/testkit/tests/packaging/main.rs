//! Packaging and the operator command, black-box, one file per topic: [`release`]
//! (`packaging/release.sh`: tarball and .deb), [`installer`] (`install-cni.sh` into temp dirs),
//! [`doctor`] and [`teardown`] (`cni-suite` in a node namespace, and on a vxlan-overlay node of
//! a real overlay: etcd and agents from `cni_testkit::overlay`, nothing made by hand, with the
//! nodes in [`node`]), and [`binaries`] (every workspace binary's `--help`/`--version`). This
//! file holds what they share: running commands and comparing file trees.
//!
//! Run as root, after `cargo build --release --workspace --bins` (every binary is required):
//! ```text
//! cargo test --release -p cni-testkit --test packaging
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cni_testkit::cnitool::LIBCNI_RESULT_CACHE;
use cni_testkit::etcd::Etcdctl;
use cni_testkit::http;
use cni_testkit::netns::{Netns, Node};
use cni_testkit::overlay::{OverlayCluster, OverlayNode, BRIDGE, DEVICE, ETCD_PREFIX};
use cni_testkit::plugin::{bin_dir, plugin_binary, reference_plugin, PluginRun};
use cni_testkit::{eventually, repo_root, require_root, unique_link_name, unique_name};
use serde_json::{json, Value};
use tempfile::TempDir;

mod binaries;
mod doctor;
mod installer;
mod node;
mod release;
mod teardown;

use node::*;

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The cargo target dir the test binary was built in (`<dir>/<triple>/release/deps/<test>`).
fn target_dir() -> PathBuf {
    bin_dir()
        .parent()
        .and_then(Path::parent)
        .expect("bin dir is <target>/<triple>/release")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn run_ok(cmd: &mut Command) -> Output {
    let o = run(cmd);
    assert!(o.status.success(), "{cmd:?} failed: {}", text(&o));
    o
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn write(path: &Path, content: impl AsRef<[u8]>) {
    if let Some(d) = path.parent() {
        fs::create_dir_all(d).expect("create dir");
    }
    fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn copy_exec(from: &Path, to_dir: &Path) {
    fs::create_dir_all(to_dir).expect("create bin dir");
    let to = to_dir.join(from.file_name().expect("file name"));
    fs::copy(from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    fs::set_permissions(&to, fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Every file below `dir` (relative path → (size, inode, mtime)), for "nothing changed".
fn tree(dir: &Path) -> BTreeMap<String, (u64, u64, i64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let m = fs::symlink_metadata(&p).expect("metadata");
            let rel = p
                .strip_prefix(dir)
                .expect("below dir")
                .display()
                .to_string();
            if m.is_dir() {
                stack.push(p);
                out.insert(format!("{rel}/"), (0, m.ino(), 0));
            } else {
                out.insert(
                    rel,
                    (m.len(), m.ino(), m.mtime_nsec() + m.mtime() * 1_000_000_000),
                );
            }
        }
    }
    out
}

/// Whether `name` is an executable on PATH (or in the system directories).
fn has_program(name: &str) -> bool {
    run(Command::new("sh").args(["-c", &format!("command -v {name}")]))
        .status
        .success()
}
