//! A three-member etcd 3.4 cluster (Debian's `etcd`) with TLS everywhere, as production runs
//! it: each member in its own network namespace on the overlay test underlay, certificates
//! made by the test ([`crate::pki`]), client certificates required on the client port, peer
//! TLS with client certificates between members. A test can kill a member (SIGKILL), start it
//! again on its data, cut it off the underlay with a firewall rule, and find the leader.
//!
//! Members are `m1`..`m3` at host [`MEMBER_HOSTS`] of the underlay (172.30.0.101-103, unused
//! by the other overlay tests). Each listens for clients on its underlay address and on
//! 127.0.0.1 in its namespace (what `etcdctl` uses); the certificates name both. Every
//! process is killed and every namespace deleted when the guard is dropped.

use std::fs::{self, File};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::etcd::{tail, Etcdctl, CLIENT_PORT, ETCD, ETCDCTL, START_TIMEOUT};
use crate::netns::Netns;
use crate::overlay::Underlay;
use crate::pki::{write_bundle, CertAuthority, KeyPair};
use crate::{eventually, unique_name};

/// Host numbers of the members on the underlay.
pub const MEMBER_HOSTS: [u8; 3] = [101, 102, 103];
/// etcd's peer port.
pub const PEER_PORT: u16 = 2380;
/// The nftables table a cut-off member's namespace holds while it is cut off.
const CUT_TABLE: &str = "cnit_cut";

/// One member: its namespace, address, certificate and (while running) process.
struct Member {
    name: String,
    addr: IpAddr,
    identity: KeyPair,
    dir: PathBuf,
    child: Option<Child>,
    cut: bool,
    // Last: the process must be gone before its namespace is deleted.
    netns: Netns,
}

impl Member {
    fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn client_url(&self) -> String {
        format!("https://{}", SocketAddr::new(self.addr, CLIENT_PORT))
    }

    /// The client URL of its loopback listener, for etcdctl inside its namespace.
    fn loopback_url(&self) -> String {
        let lo = if self.addr.is_ipv6() {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        };
        format!("https://{}", SocketAddr::new(lo, CLIENT_PORT))
    }

    fn peer_url(&self) -> String {
        format!("https://{}", SocketAddr::new(self.addr, PEER_PORT))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        // Never panics: this may run while a failed test unwinds.
        self.kill();
    }
}

/// A running three-member TLS etcd cluster; every member killed and every namespace deleted
/// when dropped.
pub struct EtcdCluster {
    // Declared first: members (processes, namespaces) go before their files.
    members: Vec<Member>,
    ca: CertAuthority,
    ctl_identity: KeyPair,
    client_trust: PathBuf,
    token: String,
    dir: TempDir,
}

impl EtcdCluster {
    /// Starts three members on `underlay` and waits until each answers; clients must present
    /// a certificate signed by the cluster's CA ([`ca`](Self::ca)) or by one of
    /// `client_cas`. Panics if a member is not healthy within [`START_TIMEOUT`].
    pub fn start_on(underlay: &Underlay, client_cas: &[&CertAuthority]) -> EtcdCluster {
        assert!(
            Path::new(ETCD).is_file() && Path::new(ETCDCTL).is_file(),
            "{ETCD} or {ETCDCTL} missing: run conformance/scripts/install-test-deps.sh"
        );
        let dir = tempfile::Builder::new()
            .prefix("cnit-etcdc-")
            .tempdir()
            .expect("cannot create the cluster's directory");
        let pki = dir.path().join("pki");
        fs::create_dir(&pki).expect("cannot create the pki directory");
        let ca = CertAuthority::new(&pki, "cluster-ca");
        let ctl_identity = ca.issue_client("etcdctl");
        let mut members = Vec::new();
        for (i, host) in MEMBER_HOSTS.into_iter().enumerate() {
            let name = format!("m{}", i + 1);
            let netns = Netns::new("cnit-etcdm-");
            let addr = underlay.addr(host);
            underlay.connect(&netns, addr);
            let loopback = if addr.is_ipv6() {
                IpAddr::V6(Ipv6Addr::LOCALHOST)
            } else {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            };
            let identity = ca.issue_server(&name, &[addr, loopback]);
            let member_dir = dir.path().join(&name);
            fs::create_dir(&member_dir).expect("cannot create a member directory");
            members.push(Member {
                name,
                addr,
                identity,
                dir: member_dir,
                child: None,
                cut: false,
                netns,
            });
        }
        let mut cluster = EtcdCluster {
            members,
            client_trust: pki.join("client-trust.pem"),
            ca,
            ctl_identity,
            token: unique_name("cnit-etcdc-"),
            dir,
        };
        cluster.set_client_trust(client_cas);
        // All three first: a member waits for the others before it can answer anything.
        for m in 0..cluster.members.len() {
            cluster.spawn(m);
        }
        for m in 0..cluster.members.len() {
            cluster.wait_healthy(m);
        }
        cluster
    }

    /// The CA that signed the members' certificates (what agents put in `etcdCAFile`); its
    /// client certificates are always accepted.
    pub fn ca(&self) -> &CertAuthority {
        &self.ca
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a cluster has members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Member `m`'s underlay address.
    pub fn addr(&self, m: usize) -> IpAddr {
        self.members[m].addr
    }

    /// Member `m`'s name (`m1`..).
    pub fn name(&self, m: usize) -> &str {
        &self.members[m].name
    }

    /// Member `m`'s namespace.
    pub fn netns(&self, m: usize) -> &Netns {
        &self.members[m].netns
    }

    /// A directory the test may put files in (removed with the cluster).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sets the CAs whose client certificates the members accept, besides the cluster's own
    /// CA; members read it when they (re)start.
    pub fn set_client_trust(&mut self, client_cas: &[&CertAuthority]) {
        let mut cas = vec![&self.ca];
        cas.extend_from_slice(client_cas);
        write_bundle(&self.client_trust, &cas);
    }

    /// Whether member `m`'s process is running.
    pub fn is_running(&mut self, m: usize) -> bool {
        self.members[m].is_running()
    }

    /// Kills member `m` with SIGKILL (a crash: nothing handed over) and reaps it.
    pub fn kill(&mut self, m: usize) {
        self.members[m].kill();
    }

    /// Starts member `m` again on its data directory and waits until it answers; panics if it
    /// does not within [`START_TIMEOUT`].
    pub fn start(&mut self, m: usize) {
        assert!(
            !self.members[m].is_running(),
            "member {} is already running",
            self.members[m].name
        );
        self.spawn(m);
        self.wait_healthy(m);
    }

    /// Cuts member `m` off the underlay: an nftables table in its namespace drops everything
    /// in and out of its underlay link (loopback stays, so `etcdctl` inside still reaches it).
    /// Established connections are not reset: peers and clients see a black hole.
    pub fn cut_off(&mut self, m: usize) {
        let member = &mut self.members[m];
        assert!(!member.cut, "member {} is already cut off", member.name);
        member.netns.nft_ok(&format!(
            "add table inet {CUT_TABLE}; \
             add chain inet {CUT_TABLE} in {{ type filter hook input priority -10; policy accept; }}; \
             add chain inet {CUT_TABLE} out {{ type filter hook output priority -10; policy accept; }}; \
             add rule inet {CUT_TABLE} in iifname \"eth0\" drop; \
             add rule inet {CUT_TABLE} out oifname \"eth0\" drop"
        ));
        member.cut = true;
    }

    /// Undoes [`cut_off`](Self::cut_off).
    pub fn restore(&mut self, m: usize) {
        let member = &mut self.members[m];
        assert!(member.cut, "member {} is not cut off", member.name);
        member
            .netns
            .nft_ok(&format!("delete table inet {CUT_TABLE}"));
        member.cut = false;
    }

    /// The member that leads, as the reachable members report it (`etcdctl endpoint status`);
    /// `None` while there is no leader or no member answers.
    pub fn leader(&self) -> Option<usize> {
        let reachable: Vec<usize> = (0..self.members.len())
            .filter(|&m| self.members[m].child.is_some() && !self.members[m].cut)
            .collect();
        let urls: Vec<String> = reachable
            .iter()
            .map(|&m| self.members[m].client_url())
            .collect();
        let out = self.etcdctl(
            *reachable.first()?,
            &self.ctl_identity,
            &urls.join(","),
            &["endpoint", "status", "-w", "json"],
        );
        // Members that do not answer are left out (etcdctl then exits non-zero), so read
        // stdout either way.
        let status: Value = serde_json::from_slice(&out.stdout).ok()?;
        // The answer of the highest term wins over a deposed leader's stale claim.
        status
            .as_array()?
            .iter()
            .filter(|s| {
                let st = &s["Status"];
                st["header"]["member_id"].as_u64().is_some()
                    && st["header"]["member_id"] == st["leader"]
            })
            .max_by_key(|s| s["Status"]["raftTerm"].as_u64())
            .and_then(|s| {
                let url = s["Endpoint"].as_str()?;
                reachable
                    .iter()
                    .copied()
                    .find(|&m| self.members[m].client_url() == url)
            })
    }

    /// Waits up to `timeout` for a leader; returns it.
    pub fn wait_leader(&self, timeout: Duration) -> Option<usize> {
        let mut leader = None;
        eventually(timeout, || {
            leader = self.leader();
            leader.is_some()
        });
        leader
    }

    /// Runs `etcdctl <args>` inside member `m`'s namespace against its loopback listener (with
    /// the test's own client certificate), bounded by a 3 s command timeout.
    pub fn ctl_at(&self, m: usize, args: &[&str]) -> Output {
        self.ctl_as(m, &self.ctl_identity, args)
    }

    /// [`ctl_at`](Self::ctl_at) presenting `identity` as the client certificate.
    pub fn ctl_as(&self, m: usize, identity: &KeyPair, args: &[&str]) -> Output {
        self.etcdctl(m, identity, &self.members[m].loopback_url(), args)
    }

    /// etcdctl with the TLS flags inside member `m`'s namespace, against `endpoints`.
    fn etcdctl(&self, m: usize, identity: &KeyPair, endpoints: &str, args: &[&str]) -> Output {
        self.members[m]
            .netns
            .command(ETCDCTL)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .arg(format!("--cacert={}", self.ca.cert().display()))
            .arg(format!("--cert={}", identity.cert.display()))
            .arg(format!("--key={}", identity.key.display()))
            .args(["--dial-timeout=2s", "--command-timeout=3s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {ETCDCTL}: {e}"))
    }

    /// Starts member `m`'s process without waiting for it.
    fn spawn(&mut self, m: usize) {
        let initial_cluster: Vec<String> = self
            .members
            .iter()
            .map(|x| format!("{}={}", x.name, x.peer_url()))
            .collect();
        let ca = self.ca.cert().to_owned();
        let member = &mut self.members[m];
        let log_path = member.log_path();
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()));
        let log_err = log.try_clone().expect("cannot duplicate the log file");
        let clients = format!("{},{}", member.client_url(), member.loopback_url());
        // `ip netns exec` execs etcd in place (no fork), so the child's pid is etcd's. On
        // existing data `--initial-cluster-state new` is ignored and the member resumes.
        let child = member
            .netns
            .command(ETCD)
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(member.dir.join("data"))
            .args(["--listen-client-urls", &clients])
            .args(["--advertise-client-urls", &member.client_url()])
            .args(["--listen-peer-urls", &member.peer_url()])
            .args(["--initial-advertise-peer-urls", &member.peer_url()])
            .args(["--initial-cluster", &initial_cluster.join(",")])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .arg("--client-cert-auth")
            .arg("--trusted-ca-file")
            .arg(&self.client_trust)
            .arg("--cert-file")
            .arg(&member.identity.cert)
            .arg("--key-file")
            .arg(&member.identity.key)
            .arg("--peer-client-cert-auth")
            .arg("--peer-trusted-ca-file")
            .arg(&ca)
            .arg("--peer-cert-file")
            .arg(&member.identity.cert)
            .arg("--peer-key-file")
            .arg(&member.identity.key)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {ETCD}: {e}"));
        member.child = Some(child);
    }

    /// Waits until member `m` answers a health check (a quorum read through it); panics if
    /// it does not within [`START_TIMEOUT`].
    pub fn wait_healthy(&self, m: usize) {
        let healthy = eventually(START_TIMEOUT, || {
            self.ctl_at(m, &["endpoint", "health"]).status.success()
        });
        assert!(
            healthy,
            "etcd member {} did not become healthy within {START_TIMEOUT:?}; logs:\n{}",
            self.members[m].name,
            self.log_tail(20)
        );
    }
}

impl Etcdctl for EtcdCluster {
    fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// Runs etcdctl in the first member that runs and is not cut off, against that member:
    /// during an election it fails like any client would, and callers that poll retry.
    /// Panics if every member is down or cut off (a mistake in the test).
    fn ctl(&self, args: &[&str]) -> Output {
        let m = (0..self.members.len())
            .find(|&m| self.members[m].child.is_some() && !self.members[m].cut)
            .expect("no etcd member is running and reachable");
        self.ctl_at(m, args)
    }

    fn log_tail(&self, lines: usize) -> String {
        self.members
            .iter()
            .map(|m| format!("--- etcd {} log:\n{}", m.name, tail(&m.log_path(), lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
