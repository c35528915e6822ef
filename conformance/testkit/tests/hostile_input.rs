//! Hostile input and hostile state for `kubenet-bridge`: names that try to leave the state
//! directory, `CNI_NETNS` paths that are not network namespaces, state files swapped for
//! symlinks, a bridge name taken by another kind of link, a full disk under `dataDir`, and 20
//! ADDs racing to create the bridge. Each case checks the CNI error code the README promises
//! and, as much, what the plugin did not do: the filesystem outside `dataDir`, the file a
//! symlink points at, the foreign link and the lease files are compared before and after.
//!
//! Every case runs in its own node namespace with its own `dataDir`, inside a temp directory
//! nested two levels deep, so a path that escapes `dataDir` by `../..` still lands somewhere
//! the test watches.
//!
//! ```text
//! cargo build --release -p kubenet-bridge
//! cargo test --release -p cni-testkit --test hostile_input
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::{symlink, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use cni_testkit::leases::LeaseDir;
use cni_testkit::netns::Node;
use cni_testkit::plugin::{bin_dir, plugin_binary, Expect, PluginOutput, PluginRun};
use cni_testkit::pod::Pod;
use cni_testkit::{require_root, unique_link_name, unique_name, version_at_least, SPEC_VERSIONS};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde_json::{json, Value};
use tempfile::TempDir;

const PLUGIN: &str = "kubenet-bridge";
const POD_CIDR: &str = "10.244.9.0/24";
const IFNAME: &str = "eth0";

/// CNI error codes (SPEC.md, and the README's own).
mod code {
    pub const INVALID_ENVIRONMENT: u64 = 4;
    pub const IO_FAILURE: u64 = 5;
    pub const INVALID_NETWORK_CONFIG: u64 = 7;
    pub const NOT_A_BRIDGE: u64 = 103;
}

/// Names that try to leave the directory they are joined to.
const ESCAPING_NAMES: [&str; 9] = [
    "../../etc/x",
    "../x",
    "a/../../b",
    "/etc/x",
    "..",
    ".",
    ".hidden",
    "x/y",
    "x\u{0}y",
];

/// A node running kubenet-bridge at one spec version, its state in `<outer>/a/b/data`.
struct HostileNode {
    version: &'static str,
    node: Node,
    program: PathBuf,
    /// The watched tree: `dataDir` is two levels below it.
    outer: TempDir,
    data_dir: PathBuf,
    name: String,
    bridge: String,
    plugin: Value,
}

impl HostileNode {
    fn new(version: &'static str) -> HostileNode {
        HostileNode::with_data_dir(version, |outer| outer.join("a/b/data"))
    }

    /// A node whose `dataDir` is `data_dir(outer)`; `<outer>/a/b` exists, the rest is left
    /// for the plugin to create.
    fn with_data_dir(
        version: &'static str,
        data_dir: impl FnOnce(&Path) -> PathBuf,
    ) -> HostileNode {
        require_root();
        let program = plugin_binary(PLUGIN);
        let node = Node::new();
        let outer = tempfile::Builder::new()
            .prefix("cnit-hostile-")
            .tempdir()
            .expect("cannot create a temp dir");
        fs::create_dir_all(outer.path().join("a/b")).expect("cannot create a/b");
        let data_dir = data_dir(outer.path());
        let name = unique_name("cnit-host-");
        let bridge = unique_link_name("kh");
        let plugin = json!({
            "type": PLUGIN, "bridge": bridge, "podCIDR": POD_CIDR, "ipMasq": false,
            "hairpinMode": true, "dataDir": data_dir,
        });
        HostileNode {
            version,
            node,
            program,
            outer,
            data_dir,
            name,
            bridge,
            plugin,
        }
    }

    fn ctx(&self, what: &str) -> String {
        format!("[{}] {what}", self.version)
    }

    fn leases(&self) -> LeaseDir {
        LeaseDir::new(&self.data_dir, &self.name)
    }

    /// The network's state directory, `<dataDir>/<name>`.
    fn state_dir(&self) -> PathBuf {
        self.data_dir.join(&self.name)
    }

    /// The single-plugin config at this node's version, with `name` as the network name.
    fn config_named(&self, name: &str) -> Value {
        let mut conf = self.plugin.clone();
        conf["cniVersion"] = json!(self.version);
        conf["name"] = json!(name);
        conf
    }

    fn config(&self) -> Value {
        self.config_named(&self.name)
    }

    /// A run of `verb` with this node's config; GC gets an empty `cni.dev/valid-attachments`
    /// (no pod is valid), since a GC without the list is refused.
    fn run(&self, verb: &str) -> PluginRun {
        let mut config = self.config();
        if verb == "GC" {
            config["cni.dev/valid-attachments"] = json!([]);
        }
        PluginRun::new(&self.program, &self.node)
            .command(verb)
            .cni_path(&bin_dir().to_string_lossy())
            .config(&config)
    }

    fn attachment(&self, verb: &str, id: &str, netns: &Path) -> PluginRun {
        self.run(verb).container_id(id).netns(netns).ifname(IFNAME)
    }

    fn add(&self, pod: &Pod) -> PluginOutput {
        self.attachment("ADD", &pod.id, &pod.netns.path()).exec()
    }

    fn del(&self, pod: &Pod) -> PluginOutput {
        self.attachment("DEL", &pod.id, &pod.netns.path()).exec()
    }

    /// ADD of `pod`, asserting success; returns the pod's address.
    fn add_ok(&self, pod: &Pod, what: &str) -> Ipv4Addr {
        let result = self.add(pod).expect_success(&self.ctx(what));
        result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{}: no address in {result}", self.ctx(what)))
    }

    /// The node's veths.
    fn veths(&self) -> Vec<String> {
        self.node
            .netns()
            .links_of_kind("veth")
            .into_iter()
            .map(|l| l.name)
            .collect()
    }

    /// Lease files and who they name: address → file content.
    fn lease_contents(&self) -> BTreeMap<Ipv4Addr, String> {
        let leases = self.leases();
        leases
            .reserved_addresses()
            .into_iter()
            .map(|a| {
                let content = fs::read_to_string(leases.lease_file(a)).unwrap_or_default();
                (a, content)
            })
            .collect()
    }

    /// Asserts that no lease file names `id` and no veth of it is on the node.
    fn assert_holds_nothing_for(&self, id: &str, ctx: &str, veths_before: &[String]) {
        let leases = self.lease_contents();
        assert!(
            !leases.values().any(|c| c.starts_with(&format!("{id}\r\n"))),
            "{ctx}: a failed ADD left a lease for {id}: {leases:?}"
        );
        let veths = self.veths();
        assert_eq!(veths, veths_before, "{ctx}: a failed ADD left a veth");
    }
}

/// "ok", or the CNI error code and message, for the log of outcomes.
fn outcome(out: &PluginOutput) -> String {
    if out.status.success() {
        return "ok".into();
    }
    match out.json() {
        Some(e) => format!(
            "code {} ({})",
            e["code"],
            e["msg"].as_str().unwrap_or_default()
        ),
        None => out.describe(),
    }
}

/// One entry of a directory tree snapshot: kind, mode, size, and content for small files or
/// target for symlinks.
type Snapshot = BTreeMap<PathBuf, (char, u32, u64, Vec<u8>)>;

/// Everything under `root`, without following symlinks.
fn snapshot(root: &Path) -> Snapshot {
    let mut out = Snapshot::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            let ft = meta.file_type();
            let (kind, data) = if ft.is_dir() {
                todo.push(path.clone());
                ('d', Vec::new())
            } else if ft.is_symlink() {
                let target = fs::read_link(&path).unwrap_or_default();
                ('l', target.into_os_string().into_encoded_bytes())
            } else if ft.is_file() && meta.len() <= 4096 {
                ('f', fs::read(&path).unwrap_or_default())
            } else {
                ('o', Vec::new())
            };
            out.insert(path, (kind, meta.mode() & 0o7777, meta.len(), data));
        }
    }
    out
}

/// Absolute paths an escaping name could reach if it were joined without checks; none of them
/// may appear during the test.
fn escape_targets() -> Vec<PathBuf> {
    ["/etc/x", "/etc/x@eth0", "/b", "/b@eth0", "/x", "/x@eth0"]
        .iter()
        .map(PathBuf::from)
        .filter(|p| fs::symlink_metadata(p).is_err())
        .collect()
}

#[test]
fn container_ids_and_ifnames_that_escape_the_state_directory_are_refused() {
    let targets = escape_targets();
    for version in SPEC_VERSIONS {
        let hn = HostileNode::new(version);
        let pod = Pod::new();
        // A first ADD so the state directory and its index exist to be escaped from.
        hn.add_ok(&pod, "add a pod");
        let before = snapshot(hn.outer.path());
        let veths = hn.veths();
        let mut verbs = vec!["ADD", "DEL"];
        if version_at_least(version, "0.4.0") {
            verbs.push("CHECK");
        }
        for verb in &verbs {
            for id in ESCAPING_NAMES.iter().filter(|n| !n.contains('\0')) {
                let ctx = hn.ctx(&format!("{verb} with CNI_CONTAINERID {id:?}"));
                hn.attachment(verb, id, &pod.netns.path())
                    .exec()
                    .expect_cni_error_code(&ctx, code::INVALID_ENVIRONMENT, Some(version));
            }
            for ifname in ["../x", "..", ".", "a/b", "/x"] {
                let ctx = hn.ctx(&format!("{verb} with CNI_IFNAME {ifname:?}"));
                hn.run(verb)
                    .container_id(&pod.id)
                    .netns(&pod.netns.path())
                    .ifname(ifname)
                    .exec()
                    .expect_cni_error_code(&ctx, code::INVALID_ENVIRONMENT, Some(version));
            }
        }
        assert_eq!(
            snapshot(hn.outer.path()),
            before,
            "{}",
            hn.ctx("refused requests changed files under the watched tree")
        );
        assert_eq!(
            hn.veths(),
            veths,
            "{}",
            hn.ctx("refused requests changed veths")
        );
        for t in &targets {
            assert!(
                fs::symlink_metadata(t).is_err(),
                "{}: {} was created",
                hn.ctx("escape"),
                t.display()
            );
        }
        hn.del(&pod).expect_success(&hn.ctx("del the pod"));
    }
}

#[test]
fn container_id_too_long_for_a_file_name_is_refused_cleanly() {
    let hn = HostileNode::new("1.0.0");
    let pod = Pod::new();
    let id = "a".repeat(300);
    let ctx = hn.ctx("ADD with a 300-byte container id");
    hn.attachment("ADD", &id, &pod.netns.path())
        .exec()
        .expect_cni_error_code(&ctx, code::INVALID_ENVIRONMENT, Some("1.0.0"));
    hn.assert_holds_nothing_for(&id, &ctx, &[]);
    assert!(!pod.netns.has_link(IFNAME), "{ctx}: pod got an interface");
    hn.attachment("DEL", &id, &pod.netns.path())
        .exec()
        .expect_cni_error_code(&ctx, code::INVALID_ENVIRONMENT, Some("1.0.0"));
}

#[test]
fn network_names_that_escape_the_data_dir_are_refused() {
    let targets = escape_targets();
    for version in SPEC_VERSIONS {
        let hn = HostileNode::new(version);
        let pod = Pod::new();
        let before = snapshot(hn.outer.path());
        let mut verbs = vec!["ADD", "DEL"];
        if version_at_least(version, "0.4.0") {
            verbs.push("CHECK");
        }
        if version_at_least(version, "1.1.0") {
            verbs.extend(["GC", "STATUS"]);
        }
        for verb in &verbs {
            for name in ESCAPING_NAMES {
                let ctx = hn.ctx(&format!("{verb} with network name {name:?}"));
                hn.attachment(verb, &pod.id, &pod.netns.path())
                    .config(&hn.config_named(name))
                    .exec()
                    .expect_cni_error_code(&ctx, code::INVALID_NETWORK_CONFIG, Some(version));
            }
        }
        assert_eq!(
            snapshot(hn.outer.path()),
            before,
            "{}",
            hn.ctx("refused requests created files under the watched tree")
        );
        assert!(hn.veths().is_empty(), "{}", hn.ctx("veth created"));
        assert!(
            !hn.node.netns().has_link(&hn.bridge),
            "{}",
            hn.ctx("refused requests created the bridge")
        );
        for t in &targets {
            assert!(
                fs::symlink_metadata(t).is_err(),
                "{}: {} was created",
                hn.ctx("escape"),
                t.display()
            );
        }
    }
}

/// Opens `fifo` for writing (which succeeds only while a reader has it open) once `patience`
/// has passed and the plugin is still running, to unblock a plugin stuck opening it; returns
/// whether it had to.
fn unblock_fifo_reader(fifo: PathBuf, done: Arc<AtomicBool>, patience: Duration) -> bool {
    let started = Instant::now();
    while !done.load(Ordering::SeqCst) {
        if started.elapsed() >= patience {
            let opened = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo);
            if opened.is_ok() {
                return true;
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn cni_netns_that_is_not_a_network_namespace_is_refused() {
    for version in SPEC_VERSIONS {
        let hn = HostileNode::new(version);
        let scratch = tempfile::tempdir().expect("temp dir");
        let regular = scratch.path().join("regular");
        fs::write(&regular, b"not a namespace").expect("write");
        let directory = scratch.path().join("dir");
        fs::create_dir(&directory).expect("mkdir");
        let fifo = scratch.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let cases: [(&str, PathBuf); 7] = [
            ("a regular file", regular),
            ("a directory", directory),
            ("a UTS namespace", PathBuf::from("/proc/self/ns/uts")),
            ("a mount namespace", PathBuf::from("/proc/self/ns/mnt")),
            ("a character device", PathBuf::from("/dev/null")),
            ("a missing path", scratch.path().join("missing")),
            ("a FIFO", fifo.clone()),
        ];
        for (what, path) in &cases {
            let ctx = hn.ctx(&format!("ADD with CNI_NETNS {what} ({})", path.display()));
            let done = Arc::new(AtomicBool::new(false));
            let watcher = {
                let (fifo, done) = (fifo.clone(), done.clone());
                thread::spawn(move || unblock_fifo_reader(fifo, done, Duration::from_secs(3)))
            };
            let out = hn.attachment("ADD", &unique_name("netns-"), path).exec();
            done.store(true, Ordering::SeqCst);
            let blocked = watcher.join().expect("watcher thread");
            assert!(
                !blocked,
                "{ctx}: the plugin blocked opening CNI_NETNS (a FIFO blocks open(2) until a \
                 writer comes: open it O_NONBLOCK); {}",
                out.describe()
            );
            out.expect_cni_error_code(&ctx, code::INVALID_ENVIRONMENT, Some(version));
            assert!(hn.veths().is_empty(), "{ctx}: veth created");
            assert!(hn.lease_contents().is_empty(), "{ctx}: lease taken");
        }
        let ctx = hn.ctx("ADD with a relative CNI_NETNS");
        hn.attachment("ADD", "relative", Path::new("netns/x"))
            .exec()
            .expect_cni_error_code(&ctx, code::INVALID_ENVIRONMENT, Some(version));
    }
}

/// A file outside `dataDir` that a planted symlink points at, with its content and metadata
/// as they were.
struct Outside {
    path: PathBuf,
    before: FileState,
}

/// Mode, length, content and modification time of a file.
type FileState = (u32, u64, Vec<u8>, i64, i64);

impl Outside {
    fn new(hn: &HostileNode, content: &[u8]) -> Outside {
        let path = hn.outer.path().join("outside.txt");
        fs::write(&path, content).expect("write outside file");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        Outside {
            before: snapshot_of(&path),
            path,
        }
    }

    fn assert_unchanged(&self, ctx: &str) {
        assert_eq!(
            snapshot_of(&self.path),
            self.before,
            "{ctx}: the file outside dataDir that a symlink points at was written through"
        );
    }
}

/// The state of one file (not following a symlink).
fn snapshot_of(path: &Path) -> FileState {
    let meta = fs::symlink_metadata(path).expect("outside file exists");
    let content = fs::read(path).expect("read outside file");
    (
        meta.mode(),
        meta.len(),
        content,
        meta.mtime(),
        meta.mtime_nsec(),
    )
}

/// Replaces `file` with a symlink to `target`.
fn plant_symlink(file: &Path, target: &Path) {
    fs::remove_file(file).unwrap_or_else(|e| panic!("rm {}: {e}", file.display()));
    symlink(target, file).expect("symlink");
}

/// What a plugin run may do with a planted symlink: succeed (having replaced the link or not
/// needed the file) or fail with a clean I/O error. Either way the caller checks the file the
/// link points at. The outcome is printed (`--nocapture`) for the README's table.
fn assert_clean_outcome(out: &PluginOutput, ctx: &str, version: &str) {
    eprintln!("{ctx}: {}", outcome(out));
    if out.status.success() {
        out.expect_success(ctx);
    } else {
        out.expect_cni_error_code(ctx, code::IO_FAILURE, Some(version));
    }
}

#[test]
fn state_files_swapped_for_symlinks_are_never_written_through() {
    const VERSION: &str = "1.1.0";
    for victim in ["last_reserved_ip.0", "lock", "lease", "index entry"] {
        let hn = HostileNode::new(VERSION);
        let (a, b) = (Pod::new(), Pod::new());
        let addr_a = hn.add_ok(&a, "add pod a");
        let file = match victim {
            "lease" => hn.leases().lease_file(addr_a),
            "index entry" => hn
                .state_dir()
                .join(format!("attachments/{}@{IFNAME}", a.id)),
            name => hn.state_dir().join(name),
        };
        // An address, so a plugin that reads through the link finds something plausible.
        let outside = Outside::new(&hn, b"10.244.9.200");
        plant_symlink(&file, &outside.path);
        let veths = hn.veths();

        let ctx = hn.ctx(&format!("{victim} is a symlink: ADD of pod b"));
        let out = hn.add(&b);
        assert_clean_outcome(&out, &ctx, VERSION);
        outside.assert_unchanged(&ctx);
        if out.status.success() {
            let addr_b = out.json().and_then(|r| {
                r["ips"][0]["address"]
                    .as_str()?
                    .split('/')
                    .next()?
                    .parse::<Ipv4Addr>()
                    .ok()
            });
            assert_ne!(addr_b, Some(addr_a), "{ctx}: pod b got pod a's address");
            hn.del(&b).expect_success(&format!("{ctx}: del b"));
        } else {
            hn.assert_holds_nothing_for(&b.id, &ctx, &veths);
        }
        for verb in ["DEL", "GC", "STATUS"] {
            let ctx = hn.ctx(&format!("{victim} is a symlink: {verb}"));
            let out = match verb {
                "DEL" => hn.del(&a),
                verb => hn.run(verb).exec(),
            };
            assert_clean_outcome(&out, &ctx, VERSION);
            outside.assert_unchanged(&ctx);
        }
        assert_eq!(
            snapshot(&hn.outer.path().join("a/b"))
                .keys()
                .filter(|p| !p.starts_with(&hn.data_dir))
                .count(),
            0,
            "{}",
            hn.ctx("files created beside dataDir")
        );
    }
}

/// The names in `dir` (a directory a planted symlink points at: it must stay empty).
fn entries_of(dir: &Path) -> Vec<std::ffi::OsString> {
    fs::read_dir(dir)
        .expect("outside dir")
        .flatten()
        .map(|e| e.file_name())
        .collect()
}

#[test]
fn index_directory_swapped_for_a_symlink_is_never_written_through() {
    let hn = HostileNode::new("1.1.0");
    let (a, b) = (Pod::new(), Pod::new());
    hn.add_ok(&a, "add pod a");
    hn.del(&a).expect_success(&hn.ctx("del pod a"));
    let index = hn.state_dir().join("attachments");
    let outside = hn.outer.path().join("outside-dir");
    fs::create_dir(&outside).expect("mkdir");
    fs::remove_dir(&index).expect("index is empty after the DEL");
    symlink(&outside, &index).expect("symlink");
    let ctx = hn.ctx("attachments/ is a symlink to a directory outside: ADD of pod b");
    let out = hn.add(&b);
    eprintln!("{ctx}: {}", outcome(&out));
    let written = entries_of(&outside);
    assert!(
        written.is_empty(),
        "{ctx}: the plugin wrote {written:?} into the directory the symlink points at; {}",
        out.describe()
    );
    if out.status.success() {
        assert!(
            fs::symlink_metadata(&index).is_ok_and(|m| m.is_dir()),
            "{ctx}: succeeded through the symlink"
        );
    } else {
        out.expect_cni_error_code(&ctx, code::IO_FAILURE, Some("1.1.0"));
    }
}

#[test]
fn network_directory_swapped_for_a_symlink_is_never_written_through() {
    // `<dataDir>/<name>` itself replaced by a symlink to a directory outside: every lease,
    // the lock and the index would land there.
    let hn = HostileNode::new("1.1.0");
    let (a, b) = (Pod::new(), Pod::new());
    hn.add_ok(&a, "add pod a");
    hn.del(&a).expect_success(&hn.ctx("del pod a"));
    let outside = hn.outer.path().join("outside-net-dir");
    fs::create_dir(&outside).expect("mkdir");
    fs::remove_dir_all(hn.state_dir()).expect("rm the network directory");
    symlink(&outside, hn.state_dir()).expect("symlink");
    for verb in ["ADD", "DEL", "STATUS", "GC"] {
        let ctx = hn.ctx(&format!("<dataDir>/<name> is a symlink: {verb}"));
        let out = match verb {
            "ADD" => hn.add(&b),
            "DEL" => hn.del(&b),
            verb => hn.run(verb).exec(),
        };
        out.expect_cni_error_code(&ctx, code::IO_FAILURE, Some("1.1.0"));
        let written = entries_of(&outside);
        assert!(
            written.is_empty(),
            "{ctx}: the plugin wrote {written:?} through the symlink"
        );
    }
    assert!(hn.veths().is_empty(), "{}", hn.ctx("a veth was left"));
    assert!(
        !b.netns.has_link(IFNAME),
        "{}",
        hn.ctx("pod b got an interface")
    );
}

#[test]
fn state_files_are_0600_and_directories_0700() {
    // dataDir two levels below an existing directory: the plugin creates both.
    let hn = HostileNode::with_data_dir("1.1.0", |outer| outer.join("a/b/state/networks"));
    let (a, b) = (Pod::new(), Pod::new());
    hn.add_ok(&a, "add pod a");
    hn.add_ok(&b, "add pod b");
    hn.del(&a).expect_success(&hn.ctx("del pod a"));
    hn.run("GC").exec().expect_success(&hn.ctx("gc"));
    let ctx = hn.ctx("modes");
    let mut seen = BTreeSet::new();
    let created = hn.outer.path().join("a/b/state");
    let mut entries = snapshot(&created);
    entries.insert(created.clone(), ('d', mode_of(&created), 0, Vec::new()));
    for (path, (kind, mode, _, _)) in &entries {
        let want = match kind {
            'd' => 0o700,
            'f' => 0o600,
            other => panic!(
                "{ctx}: {} is of kind {other}, not a file or directory",
                path.display()
            ),
        };
        assert_eq!(*mode, want, "{ctx}: {} has mode {mode:o}", path.display());
        seen.insert(*kind);
    }
    assert_eq!(seen, BTreeSet::from(['d', 'f']), "{ctx}: {entries:?}");
    hn.del(&b).expect_success(&hn.ctx("del pod b"));
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").mode() & 0o7777
}

#[test]
fn bridge_name_held_by_another_kind_of_link_is_refused_and_left_alone() {
    // Kinds this kernel has built in (it lacks dummy, macvlan and vlan modules).
    for (kind, create) in [
        ("veth", vec!["type", "veth", "peer", "name", "kh-peer0"]),
        (
            "vxlan",
            vec!["type", "vxlan", "id", "42", "dstport", "4789"],
        ),
        ("ifb", vec!["type", "ifb"]),
    ] {
        let hn = HostileNode::new("1.0.0");
        let ns = hn.node.netns();
        let mut add = vec!["link", "add", hn.bridge.as_str()];
        add.extend(&create);
        ns.ip_ok(&add);
        ns.ip_ok(&["addr", "add", "192.0.2.1/24", "dev", &hn.bridge]);
        ns.ip_ok(&["link", "set", &hn.bridge, "mtu", "1400", "up"]);
        let before_link = ns.link_details(&hn.bridge);
        let before_addrs = ns.ip_json(&["addr", "show", "dev", &hn.bridge]);
        let veths = hn.veths();
        let pod = Pod::new();
        let ctx = hn.ctx(&format!("ADD with bridge = an existing {kind}"));
        hn.add(&pod)
            .expect_cni_error_code(&ctx, code::NOT_A_BRIDGE, Some("1.0.0"));
        assert_eq!(
            ns.link_details(&hn.bridge),
            before_link,
            "{ctx}: link changed"
        );
        assert_eq!(
            ns.ip_json(&["addr", "show", "dev", &hn.bridge]),
            before_addrs,
            "{ctx}: addresses changed"
        );
        assert_eq!(hn.veths(), veths, "{ctx}: veths changed");
        assert!(hn.lease_contents().is_empty(), "{ctx}: lease taken");
        assert!(!pod.netns.has_link(IFNAME), "{ctx}: pod got an interface");
        // DEL of what never attached still succeeds and touches nothing either.
        hn.del(&pod).expect_success(&format!("{ctx}: del"));
        assert_eq!(
            ns.link_details(&hn.bridge),
            before_link,
            "{ctx}: DEL changed the link"
        );
    }
}

/// A tmpfs of `size` mounted on a temp directory, unmounted (lazily) on drop.
struct TmpfsMount {
    dir: TempDir,
}

impl TmpfsMount {
    fn new(size: &str) -> TmpfsMount {
        let dir = tempfile::Builder::new()
            .prefix("cnit-full-")
            .tempdir()
            .expect("temp dir");
        mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(format!("size={size},mode=0700").as_str()),
        )
        .unwrap_or_else(|e| panic!("mount tmpfs on {}: {e}", dir.path().display()));
        TmpfsMount { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system with `filler`, then frees `pages` pages of it.
    fn fill_leaving(&self, pages: u64) {
        let path = self.filler();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("open filler");
        let chunk = [0xa5u8; 4096];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        let len = f.metadata().expect("stat").len();
        let free = pages * 4096;
        assert!(len > free, "filler too small to free {pages} pages");
        f.set_len((len - free) / 4096 * 4096).expect("truncate");
        let probe = nix::sys::statvfs::statvfs(self.path()).expect("statvfs");
        assert_eq!(
            probe.blocks_available(),
            pages,
            "tmpfs should have exactly {pages} free pages"
        );
    }

    fn free(&self) {
        match fs::remove_file(self.filler()) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => panic!("rm filler: {e}"),
        }
    }

    fn filler(&self) -> PathBuf {
        self.path().join("filler")
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        // Never panic: lazily detach, so a plugin still holding a file cannot keep it busy.
        if let Err(e) = umount2(self.dir.path(), MntFlags::MNT_DETACH) {
            eprintln!("warning: umount {}: {e}", self.dir.path().display());
        }
    }
}

/// Every file in `dir` (recursively) that is empty or a temp file: what a torn write leaves.
fn partial_files(dir: &Path) -> Vec<PathBuf> {
    snapshot(dir)
        .into_iter()
        .filter(|(path, (kind, _, len, _))| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            *kind == 'f' && name != "lock" && (*len == 0 || name.starts_with(".tmp."))
        })
        .map(|(path, _)| path)
        .collect()
}

#[test]
fn full_disk_under_data_dir_is_a_clean_io_error_and_recoverable() {
    const VERSION: &str = "1.0.0";
    require_root();
    let tmpfs = TmpfsMount::new("64k");
    let data = tmpfs.path().join("data");
    let hn = HostileNode::with_data_dir(VERSION, |_| data.clone());
    let first = Pod::new();
    hn.add_ok(&first, "add a pod before the disk fills");
    let first_lease = hn.lease_contents();
    let veths = hn.veths();
    let first_entry = hn
        .state_dir()
        .join(format!("attachments/{}@{IFNAME}", first.id));
    let first_entry_before = snapshot_of(&first_entry);

    // 0 free pages fails the first write; 1 and 2 let an ADD's first writes through (index
    // entry, then address file) and fail the next one; 3 are enough.
    let pods: Vec<Pod> = (0..4).map(|_| Pod::new()).collect();
    let mut failed = Vec::new();
    for (pages, pod) in pods.iter().enumerate() {
        let ctx = hn.ctx(&format!("ADD with {pages} free pages under dataDir"));
        tmpfs.fill_leaving(pages as u64);
        let out = hn.add(pod);
        eprintln!("{ctx}: {}", outcome(&out));
        let partial = partial_files(&hn.data_dir);
        assert!(
            partial.is_empty(),
            "{ctx}: empty or temp files left in the state: {partial:?}; {}",
            out.describe()
        );
        if out.status.success() {
            out.expect_success(&ctx);
            hn.del(pod).expect_success(&format!("{ctx}: del"));
        } else {
            out.expect_cni_error_code(&ctx, code::IO_FAILURE, Some(VERSION));
            hn.assert_holds_nothing_for(&pod.id, &ctx, &veths);
            assert!(!pod.netns.has_link(IFNAME), "{ctx}: pod got an interface");
            failed.push(pod);
        }
        let leases = hn.lease_contents();
        assert_eq!(leases, first_lease, "{ctx}: leases changed");
        assert_eq!(
            snapshot_of(&first_entry),
            first_entry_before,
            "{ctx}: the index entry of the pod attached before changed"
        );
        tmpfs.free();
    }
    assert!(
        !failed.is_empty(),
        "{}",
        hn.ctx("no ADD failed on a full disk: the test did not fill it")
    );

    // Space back: the pods that failed attach, and everything comes apart cleanly.
    for pod in &failed {
        hn.add_ok(pod, "add after space was freed");
    }
    for pod in failed.iter().copied().chain([&first]) {
        hn.del(pod)
            .expect_success(&hn.ctx("del after space was freed"));
    }
    assert!(hn.lease_contents().is_empty(), "{}", hn.ctx("leases left"));
    assert!(hn.veths().is_empty(), "{}", hn.ctx("veths left"));
    let partial = partial_files(&hn.data_dir);
    assert!(
        partial.is_empty(),
        "{}: {partial:?}",
        hn.ctx("partial files left")
    );
    let index = snapshot(&hn.state_dir().join("attachments"));
    assert!(
        index.is_empty(),
        "{}: {index:?}",
        hn.ctx("index entries left")
    );
}

#[test]
fn twenty_adds_racing_to_create_the_bridge_all_succeed() {
    const RACERS: usize = 20;
    const ROUNDS: usize = 3;
    for round in 0..ROUNDS {
        let mut hn = HostileNode::new("1.0.0");
        // Masquerade on: the racers also race to create the nftables table.
        hn.plugin["ipMasq"] = json!(true);
        let ctx = hn.ctx(&format!(
            "round {round}: {RACERS} concurrent ADDs on a bare node"
        ));
        assert!(
            !hn.node.netns().has_link(&hn.bridge),
            "{ctx}: bridge exists before"
        );
        let pods: Vec<Pod> = (0..RACERS).map(|_| Pod::new()).collect();
        let start = Barrier::new(RACERS);
        let outputs: Vec<PluginOutput> = thread::scope(|s| {
            let runs: Vec<_> = pods
                .iter()
                .map(|pod| {
                    let (hn, start) = (&hn, &start);
                    s.spawn(move || {
                        let run = hn.attachment("ADD", &pod.id, &pod.netns.path());
                        start.wait();
                        run.exec()
                    })
                })
                .collect();
            runs.into_iter()
                .map(|r| r.join().expect("ADD thread panicked"))
                .collect()
        });
        let mut addresses = BTreeSet::new();
        for (i, out) in outputs.iter().enumerate() {
            let result = out.expect_success(&format!("{ctx}: ADD {i}"));
            let address = result["ips"][0]["address"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(
                addresses.insert(address.clone()),
                "{ctx}: {address} handed out twice"
            );
        }
        let ns = hn.node.netns();
        assert_eq!(ns.links_of_kind("bridge").len(), 1, "{ctx}: one bridge");
        let veths = ns.links_of_kind("veth");
        assert_eq!(veths.len(), RACERS, "{ctx}: one veth per pod");
        assert!(
            veths
                .iter()
                .all(|v| v.master.as_deref() == Some(hn.bridge.as_str())),
            "{ctx}: every veth is a port of {}: {veths:?}",
            hn.bridge
        );
        let gateway_addrs = ns.ipv4_addresses(&hn.bridge);
        assert_eq!(
            gateway_addrs.len(),
            1,
            "{ctx}: the bridge holds the gateway once: {gateway_addrs:?}"
        );
        let tables = ns.run("nft", &["list", "tables"]);
        let tables = String::from_utf8_lossy(&tables.stdout);
        assert_eq!(
            tables.lines().filter(|l| l.contains("cni_suite_")).count(),
            1,
            "{ctx}: one masquerade table: {tables}"
        );
        assert_eq!(
            hn.lease_contents().len(),
            RACERS,
            "{ctx}: one lease per pod"
        );
    }
}
