//! Named network namespaces (`ip netns`) that delete themselves, and what lives inside them.
//!
//! A [`Netns`] is both a pod sandbox (its path is what `CNI_NETNS` names) and the building
//! block of a [`Node`], the namespace a plugin runs in as if it were the host. State is read
//! back with `ip -j`, so assertions see the kernel's view.

use std::ffi::OsStr;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use ipnet::Ipv4Net;
use nix::sched::CloneFlags;
use serde_json::Value;

use crate::unique_name;

/// Where `ip netns add` bind-mounts named namespaces.
pub const NETNS_RUN_DIR: &str = "/var/run/netns";

/// Serialises `ip netns add` within the process: the first call on a fresh machine turns
/// `/var/run/netns` into a shared mount point, and two racing first calls can stack mounts.
static CREATE_LOCK: Mutex<()> = Mutex::new(());

/// A named network namespace, deleted (with every link inside it) when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
    deleted: bool,
}

impl Netns {
    /// Creates a namespace named `prefix` + a unique suffix, with its loopback up.
    ///
    /// Panics if `ip netns add` fails (not root, or iproute2 missing).
    pub fn new(prefix: &str) -> Netns {
        let name = unique_name(prefix);
        {
            let _serialised = CREATE_LOCK
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let out = run_output(Command::new("ip").args(["netns", "add", &name]));
            assert!(
                out.status.success(),
                "ip netns add {name} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Constructed before the next step so that a failure below still deletes it.
        let netns = Netns {
            name,
            deleted: false,
        };
        netns.ip_ok(&["link", "set", "lo", "up"]);
        netns
    }

    /// The namespace's name, as `ip netns` lists it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file: what a runtime passes as `CNI_NETNS`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_RUN_DIR).join(&self.name)
    }

    /// A command that runs `program` inside this namespace (`ip netns exec`).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `program args...` inside the namespace; panics only if it cannot be started.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        run_output(self.command(program).args(args))
    }

    /// Runs `ip -n <this> args...`; panics only if `ip` cannot be started.
    pub fn ip(&self, args: &[&str]) -> Output {
        run_output(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Runs `ip -n <this> args...` and panics, with its stderr, if it fails.
    pub fn ip_ok(&self, args: &[&str]) {
        let out = self.ip(args);
        assert!(
            out.status.success(),
            "ip -n {} {} failed: {}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `ip -j -n <this> args...` parsed as JSON; `None` when the command fails (for example
    /// because the device it names does not exist).
    pub fn ip_json(&self, args: &[&str]) -> Option<Value> {
        let out = run_output(Command::new("ip").args(["-j", "-n", &self.name]).args(args));
        if !out.status.success() {
            return None;
        }
        // `ip -j` prints nothing at all for an empty dump.
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Some(Value::Array(Vec::new()));
        }
        let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "ip -j -n {} {} printed invalid JSON ({e}): {}",
                self.name,
                args.join(" "),
                String::from_utf8_lossy(&out.stdout)
            )
        });
        Some(json)
    }

    /// Runs `nft <script>` inside the namespace (one argument: commands separated by `;`)
    /// and panics, with its stderr, if it fails. Tables live in the namespace and vanish
    /// with it.
    pub fn nft_ok(&self, script: &str) {
        let out = self.run("nft", &[script]);
        assert!(
            out.status.success(),
            "nft {script:?} in netns {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Whether a link named `ifname` exists in this namespace.
    pub fn has_link(&self, ifname: &str) -> bool {
        self.ip(&["link", "show", "dev", ifname]).status.success()
    }

    /// `ip -d -j link show dev <ifname>` for one link (with `linkinfo`, `flags`), if it exists.
    pub fn link_details(&self, ifname: &str) -> Option<Value> {
        self.ip_json(&["-d", "link", "show", "dev", ifname])?
            .as_array()?
            .first()
            .cloned()
    }

    /// The links of one kind (`veth`, `bridge`, `ifb`...) in this namespace.
    pub fn links_of_kind(&self, kind: &str) -> Vec<Link> {
        let links = self
            .ip_json(&["link", "show", "type", kind])
            .unwrap_or_else(|| panic!("ip -n {} link show type {kind} failed", self.name));
        links
            .as_array()
            .map(|links| links.iter().map(Link::from_ip_json).collect())
            .unwrap_or_default()
    }

    /// The IPv4 addresses on `ifname`, empty if the link does not exist.
    pub fn ipv4_addresses(&self, ifname: &str) -> Vec<Ipv4Net> {
        let Some(links) = self.ip_json(&["-4", "addr", "show", "dev", ifname]) else {
            return Vec::new();
        };
        links
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|link| link["addr_info"].as_array().into_iter().flatten())
            .filter_map(|a| {
                let local: Ipv4Addr = a["local"].as_str()?.parse().ok()?;
                let prefix = u8::try_from(a["prefixlen"].as_u64()?).ok()?;
                Ipv4Net::new(local, prefix).ok()
            })
            .collect()
    }

    /// The gateway of the IPv4 default route, if there is one.
    pub fn default_gateway(&self) -> Option<Ipv4Addr> {
        let routes = self.ip_json(&["-4", "route", "show", "default"])?;
        routes
            .as_array()?
            .iter()
            .find_map(|r| r["gateway"].as_str()?.parse().ok())
    }

    /// Writes `value` to `/proc/sys/<key>` as seen from inside the namespace (the `net.*`
    /// sysctls are per namespace). `key` uses slashes: `net/ipv4/ip_forward`.
    pub fn set_sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{key}");
        let out = self.run("sh", &["-c", "echo \"$1\" > \"$2\"", "sh", value, &path]);
        assert!(
            out.status.success(),
            "setting {key}={value} in netns {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Joins this namespace to `peer` with a veth pair: `local_ifname` here with
    /// `local_addr`, `peer_ifname` in `peer` with `peer_addr`, both up.
    ///
    /// The peer end is created directly in `peer`, so it never appears on the host.
    pub fn connect_veth(
        &self,
        local_ifname: &str,
        local_addr: Ipv4Net,
        peer: &Netns,
        peer_ifname: &str,
        peer_addr: Ipv4Net,
    ) {
        self.ip_ok(&[
            "link",
            "add",
            local_ifname,
            "type",
            "veth",
            "peer",
            "name",
            peer_ifname,
            "netns",
            &peer.name,
        ]);
        self.ip_ok(&["addr", "add", &local_addr.to_string(), "dev", local_ifname]);
        self.ip_ok(&["link", "set", local_ifname, "up"]);
        peer.ip_ok(&["addr", "add", &peer_addr.to_string(), "dev", peer_ifname]);
        peer.ip_ok(&["link", "set", peer_ifname, "up"]);
    }

    /// Moves the calling thread into this namespace; see [`enter_thread`].
    pub fn enter_thread(&self) -> std::io::Result<()> {
        enter_thread(&self.path())
    }

    /// Runs `work` on a short-lived thread inside this namespace; see [`on_thread_inside`].
    pub fn on_thread_inside<T: Send>(&self, work: impl FnOnce() -> T + Send) -> std::io::Result<T> {
        on_thread_inside(&self.path(), work)
    }

    /// Deletes the namespace now, panicking if that fails; for tests in which the sandbox
    /// disappears before the runtime calls DEL.
    pub fn delete(mut self) {
        self.deleted = true;
        let out = run_output(Command::new("ip").args(["netns", "del", &self.name]));
        assert!(
            out.status.success(),
            "ip netns del {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        // Never panic here: this may run while a failed test unwinds.
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "warning: ip netns del {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("warning: cannot run ip netns del {}: {e}", self.name),
        }
    }
}

/// Whether `from` reaches `to` by ping: up to three one-second attempts, so a first packet
/// lost to ARP resolution or a link still coming up is not a failure.
pub fn ping(from: &Netns, to: Ipv4Addr) -> bool {
    let to = to.to_string();
    (0..3).any(|_| {
        from.run("ping", &["-c1", "-W1", "-n", "-q", &to])
            .status
            .success()
    })
}

/// [`ping`] for either family (iputils' `ping` takes IPv6 addresses too).
pub fn ping_ip(from: &Netns, to: std::net::IpAddr) -> bool {
    let to = to.to_string();
    (0..3).any(|_| {
        from.run("ping", &["-c1", "-W1", "-n", "-q", &to])
            .status
            .success()
    })
}

/// Moves the calling thread into the network namespace at `path`, for good: setns moves only
/// the calling thread, and the threads it starts afterwards are born in the namespace too. For
/// a process that execs plugins as if the namespace were its host.
pub fn enter_thread(path: &Path) -> std::io::Result<()> {
    let file = File::open(path)?;
    nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}

/// Runs `work` on a short-lived thread that entered the network namespace at `path`, and
/// returns what it returned: sockets it creates belong to that namespace (a socket stays in the
/// namespace it was made in), while the caller stays where it is. A panic in `work` is
/// resumed here.
pub fn on_thread_inside<T: Send>(
    path: &Path,
    work: impl FnOnce() -> T + Send,
) -> std::io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter_thread(path)?;
                Ok(work())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// One link as `ip -j link show` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface name.
    pub name: String,
    /// The bridge (or other master) it is enslaved to.
    pub master: Option<String>,
}

impl Link {
    fn from_ip_json(link: &Value) -> Link {
        Link {
            name: link["ifname"].as_str().unwrap_or_default().to_owned(),
            master: link["master"].as_str().map(str::to_owned),
        }
    }
}

/// A simulated Kubernetes node: a namespace in which plugins run as if it were the host, so
/// the bridge, host-side veths and firewall tables they create are private to the test.
#[derive(Debug)]
pub struct Node {
    netns: Netns,
}

impl Node {
    /// Creates a node namespace with IPv4 forwarding on.
    ///
    /// Forwarding is on because it is on every Kubernetes node (kubeadm's preflight refuses a
    /// node without it) and a fresh namespace starts with it off; the tests exercise the
    /// plugin's own work, not this node setting.
    pub fn new() -> Node {
        let netns = Netns::new("cnit-node-");
        netns.set_sysctl("net/ipv4/ip_forward", "1");
        Node { netns }
    }

    /// The node's namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }
}

impl Default for Node {
    fn default() -> Self {
        Node::new()
    }
}

/// Runs `cmd` to completion, panicking (with the command line) only if it cannot be started.
pub(crate) fn run_output(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (run conformance/scripts/install-test-deps.sh)")
    })
}
