//! A single-member etcd 3.4 (Debian's `etcd-server`) running in its own network namespace,
//! that a test can kill, restart (with or without its data) and read with `etcdctl`.
//!
//! The server listens on its underlay address (what agents use) and on 127.0.0.1 inside its
//! namespace (what `etcdctl` uses), so its ports never meet anything outside the test. Its data
//! directory is a temporary directory; the process is killed when the guard is dropped.
//!
//! [`Etcdctl`] is what the tests read and write etcd with, for this server and for the
//! three-member TLS cluster of [`crate::etcd_cluster`] alike.

use std::fs::{self, File};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::eventually;
use crate::netns::Netns;

/// Debian's etcd server binary (package `etcd-server`).
pub const ETCD: &str = "/usr/bin/etcd";
/// Debian's etcd v3 client (package `etcd-client`).
pub const ETCDCTL: &str = "/usr/bin/etcdctl";
/// etcd's client port.
pub const CLIENT_PORT: u16 = 2379;
/// How long a (re)started etcd may take to elect itself and answer: a single member waits
/// one election timeout (1 s by default) first.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running (or deliberately stopped) etcd in `netns`; killed, with its namespace deleted
/// and its data removed, when dropped.
pub struct EtcdServer {
    child: Option<Child>,
    addr: IpAddr,
    dir: TempDir,
    // Declared last: the process must be gone before its namespace is deleted, or it would
    // keep running in a namespace no one can reach.
    netns: Netns,
}

impl EtcdServer {
    /// Starts etcd in `netns` (already connected to the underlay and holding `addr`) and waits
    /// until it answers; panics if it does not within [`START_TIMEOUT`].
    pub fn start(netns: Netns, addr: IpAddr) -> EtcdServer {
        EtcdServer::start_in(netns, addr, &std::env::temp_dir())
    }

    /// [`start`](Self::start) with etcd's directory (data and log) created inside `parent`:
    /// a tmpfs, say, so that a benchmark measures etcd's work rather than the disk's fsyncs.
    pub fn start_in(netns: Netns, addr: IpAddr, parent: &Path) -> EtcdServer {
        assert!(
            Path::new(ETCD).is_file() && Path::new(ETCDCTL).is_file(),
            "{ETCD} or {ETCDCTL} missing: run conformance/scripts/install-test-deps.sh"
        );
        let dir = tempfile::Builder::new()
            .prefix("cnit-etcd-")
            .tempdir_in(parent)
            .unwrap_or_else(|e| {
                panic!(
                    "cannot create etcd's directory in {}: {e}",
                    parent.display()
                )
            });
        let mut server = EtcdServer {
            child: None,
            addr,
            dir,
            netns,
        };
        server.start_again();
        server
    }

    /// The client URL agents are configured with.
    pub fn endpoint(&self) -> String {
        // SocketAddr brackets an IPv6 address, as a URL needs.
        format!("http://{}", SocketAddr::new(self.addr, CLIENT_PORT))
    }

    /// etcd's namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// The data directory (inside the guard's temporary directory).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills etcd with SIGKILL (a crash: nothing is flushed or handed over) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Deletes the data directory of a stopped server: the next start is a member that lost
    /// everything (leases and records included). Panics if etcd is running.
    pub fn wipe_data(&mut self) {
        assert!(!self.is_running(), "wipe_data needs etcd stopped");
        let data = self.data_dir();
        if data.exists() {
            fs::remove_dir_all(&data)
                .unwrap_or_else(|e| panic!("cannot remove {}: {e}", data.display()));
        }
    }

    /// Starts etcd (again) on its data directory and waits until it answers; panics if it
    /// does not within [`START_TIMEOUT`]. On existing data `--initial-cluster-state new` is
    /// ignored and the member resumes.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "etcd is already running");
        let log_path = self.log_path();
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()));
        let log_err = log.try_clone().expect("cannot duplicate the log file");
        let peer = "http://127.0.0.1:2380";
        let clients = format!("{},http://127.0.0.1:{CLIENT_PORT}", self.endpoint());
        // `ip netns exec` execs etcd in place (no fork), so the child's pid is etcd's.
        let child = self
            .netns
            .command(ETCD)
            .args(["--name", "cnit-etcd", "--data-dir"])
            .arg(self.data_dir())
            .args(["--listen-client-urls", &clients])
            .args(["--advertise-client-urls", &self.endpoint()])
            .args(["--listen-peer-urls", peer])
            .args(["--initial-advertise-peer-urls", peer])
            .args(["--initial-cluster", &format!("cnit-etcd={peer}")])
            .args(["--initial-cluster-state", "new"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {ETCD}: {e}"));
        self.child = Some(child);
        let healthy = eventually(START_TIMEOUT, || {
            self.ctl(&["endpoint", "health"]).status.success()
        });
        assert!(
            healthy,
            "etcd did not become healthy within {START_TIMEOUT:?}; log:\n{}",
            self.log_tail(30)
        );
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }
}

/// An etcd a test reads and writes with `etcdctl`: the single [`EtcdServer`] or the
/// three-member TLS cluster. Only [`ctl`](Etcdctl::ctl) differs (where etcdctl runs, with
/// which flags); the record and lease helpers are shared.
pub trait Etcdctl {
    /// The client URLs agents are configured with.
    fn endpoints(&self) -> Vec<String>;

    /// Runs `etcdctl <args>` against a live member, bounded by a 3 s command timeout; panics
    /// only if etcdctl cannot be started.
    fn ctl(&self, args: &[&str]) -> Output;

    /// The last `lines` lines of etcd's log (of every member), for failure messages.
    fn log_tail(&self, lines: usize) -> String;

    /// [`ctl`](Etcdctl::ctl) that panics, with etcdctl's stderr, unless it succeeds; returns stdout.
    fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "etcdctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every key under `prefix` with its value, in key order; `None` when etcd does not answer.
    ///
    /// Values must be single-line (JSON records are), since etcdctl prints key and value on
    /// alternate lines.
    fn get_prefix(&self, prefix: &str) -> Option<Vec<(String, String)>> {
        let out = self.ctl(&["get", "--prefix", prefix]);
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        Some(
            lines
                .chunks(2)
                .filter(|kv| kv.len() == 2)
                .map(|kv| (kv[0].to_owned(), kv[1].to_owned()))
                .collect(),
        )
    }

    /// The etcd lease id `key` is attached to (0 = none); `None` if the key does not exist or
    /// etcd does not answer.
    fn key_lease(&self, key: &str) -> Option<i64> {
        let out = self.ctl(&["get", key, "-w", "json"]);
        if !out.status.success() {
            return None;
        }
        let json: Value = serde_json::from_slice(&out.stdout).ok()?;
        let kv = json["kvs"].as_array()?.first()?;
        Some(kv["lease"].as_i64().unwrap_or(0))
    }

    /// The seconds lease `id` has left; `None` once it has expired or been revoked (etcd
    /// reports TTL -1), or when etcd does not answer.
    fn lease_remaining(&self, id: i64) -> Option<i64> {
        let out = self.ctl(&["lease", "timetolive", &format!("{id:x}"), "-w", "json"]);
        if !out.status.success() {
            return None;
        }
        let json: Value = serde_json::from_slice(&out.stdout).ok()?;
        json["ttl"].as_i64().filter(|ttl| *ttl >= 0)
    }

    /// Writes `key` = `value`, attached to etcd lease `lease` when given.
    fn put(&self, key: &str, value: &str, lease: Option<i64>) {
        let lease_arg = lease.map(|l| format!("--lease={l:x}"));
        let mut args = vec!["put"];
        if let Some(l) = &lease_arg {
            args.push(l);
        }
        // `--` so that a value starting with '-' is not an option.
        args.extend(["--", key, value]);
        self.ctl_ok(&args);
    }

    /// Grants a lease of `ttl` seconds and returns its id.
    fn lease_grant(&self, ttl: u64) -> i64 {
        let out = self.ctl_ok(&["lease", "grant", &ttl.to_string()]);
        // "lease 694d7a3c4e1f2a05 granted with TTL(6s)"
        out.split_whitespace()
            .nth(1)
            .and_then(|id| i64::from_str_radix(id, 16).ok())
            .unwrap_or_else(|| panic!("cannot read the lease id from {out:?}"))
    }

    /// Revokes lease `id`: every key attached to it is deleted at once.
    fn lease_revoke(&self, id: i64) {
        self.ctl_ok(&["lease", "revoke", &format!("{id:x}")]);
    }
}

impl Etcdctl for EtcdServer {
    fn endpoints(&self) -> Vec<String> {
        vec![self.endpoint()]
    }

    fn ctl(&self, args: &[&str]) -> Output {
        self.netns
            .command(ETCDCTL)
            .env("ETCDCTL_API", "3")
            .args([
                &format!("--endpoints=http://127.0.0.1:{CLIENT_PORT}"),
                "--dial-timeout=2s",
                "--command-timeout=3s",
            ])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {ETCDCTL}: {e}"))
    }

    fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path(), lines)
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        // Never panics: this may run while a failed test unwinds.
        self.kill();
    }
}

/// The last `lines` lines of the text file at `path`, or a note that it cannot be read.
pub fn tail(path: &Path, lines: usize) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}
