//! Tests of the `cni-conformance` runner binary, exec'd as a user would: against our
//! kubenet-bridge and vxlan-overlay (every MUST passes at every version, and no SHOULD warns),
//! as a conflist and as a single binary with its config (`--plugin --config`), Debian's reference
//! `bridge` + `host-local` (MUST failures exactly where the README says the reference falls
//! short, 1.1.0 skipped because it does not advertise it, its SHOULD shortcomings warnings), a
//! chain of kubenet-bridge and the reference `tuning`, and small plugins broken on purpose,
//! generated into a tempdir as shell wrappers around kubenet-bridge: the runner must exit 1 and
//! name the case each breaks (or warn, for the SHOULDs of `CNI_ARGS`).
//!
//! Run as root after building the plugins and the runner (another package, so cargo does not
//! build it for this test):
//! ```text
//! export CARGO_TARGET_DIR=/var/tmp/cni-suite-target
//! cargo build --release --workspace --bins
//! cargo test --release -p cni-testkit --test runner -- --nocapture
//! ```
//! `--nocapture` shows each run's table.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use cni_testkit::plugin::{bin_dir, plugin_binary, reference_plugin, REFERENCE_PLUGIN_DIR};
use cni_testkit::require_root;
use serde_json::{json, Value};
use tempfile::TempDir;

/// The runner binary, next to the plugins (`cargo build --release -p cni-conformance`).
fn runner() -> PathBuf {
    plugin_binary("cni-conformance")
}

/// What one run of the runner produced.
struct RunnerRun {
    status: ExitStatus,
    stdout: String,
    report: Value,
}

impl RunnerRun {
    /// The `results` cells of the JSON report.
    fn cells(&self) -> Vec<&Value> {
        self.report["results"]
            .as_array()
            .into_iter()
            .flatten()
            .collect()
    }

    /// The outcome (`pass`, `warn`, `fail`, `skip`) of `case` at `version`.
    fn outcome(&self, case: &str, version: &str) -> String {
        self.cells()
            .into_iter()
            .find(|c| c["case"] == case && c["version"] == version)
            .and_then(|c| c["outcome"].as_str())
            .unwrap_or_else(|| {
                panic!(
                    "no cell for [{version}] {case} in the report:\n{}",
                    self.stdout
                )
            })
            .to_owned()
    }

    /// `[version] case: reason` of every cell with `outcome`.
    fn with_outcome(&self, outcome: &str) -> Vec<String> {
        self.cells()
            .into_iter()
            .filter(|c| c["outcome"] == outcome)
            .map(|c| {
                format!(
                    "[{}] {}: {}",
                    text(&c["version"]),
                    text(&c["case"]),
                    text(&c["reason"])
                )
            })
            .collect()
    }

    /// Asserts exit 0 and no MUST failure, with the failures in the message.
    fn assert_every_must_passed(&self, what: &str) {
        let failures = self.with_outcome("fail");
        assert!(
            self.status.success() && failures.is_empty() && self.report["passed"] == true,
            "{what}: expected every MUST to pass, runner exited {}; failures:\n{}\n\n{}",
            self.status,
            failures.join("\n"),
            self.stdout
        );
    }

    /// The cases that failed at one version or more.
    fn failed_cases(&self) -> BTreeSet<String> {
        self.cells()
            .into_iter()
            .filter(|c| c["outcome"] == "fail")
            .map(|c| text(&c["case"]).to_owned())
            .collect()
    }

    /// Asserts exit 1 with MUST failures in exactly the cases `expected`: a known shortfall
    /// that no longer fails, or a new one, both mean the README's list needs a look.
    fn assert_fails_exactly(&self, what: &str, expected: &BTreeSet<String>) {
        assert_eq!(
            self.status.code(),
            Some(1),
            "{what}: runner exit\n{}",
            self.stdout
        );
        let failed = self.failed_cases();
        assert_eq!(
            &failed,
            expected,
            "{what}: MUST failures differ from the known shortfalls:\n{}",
            self.with_outcome("fail").join("\n")
        );
    }

    /// Asserts that no SHOULD case warned: our plugins follow the spec's good practice too.
    fn assert_no_warning(&self, what: &str) {
        let warnings = self.with_outcome("warn");
        assert!(
            warnings.is_empty(),
            "{what}: expected no SHOULD warning, got:\n{}\n\n{}",
            warnings.join("\n"),
            self.stdout
        );
    }

    /// Asserts exit 1 and a MUST failure of `case` at `version`, named in the printed table.
    fn assert_fails(&self, case: &str, version: &str) {
        assert_eq!(
            self.status.code(),
            Some(1),
            "the runner must exit 1 on a MUST failure:\n{}",
            self.stdout
        );
        assert_eq!(
            self.outcome(case, version),
            "fail",
            "[{version}] {case} must fail:\n{}",
            self.stdout
        );
        assert!(
            self.stdout.contains(&format!("[{version}] {case}: ")),
            "the printed failures must name [{version}] {case}:\n{}",
            self.stdout
        );
    }

    /// Asserts the run left no namespace behind: every pod and node namespace it made is named
    /// after its process id, which its run tag `cc<pid>` carries.
    fn assert_no_namespace_left(&self) {
        let pid = text(&self.report["runTag"])
            .trim_start_matches("cc")
            .to_owned();
        let out = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns list");
        let leftovers: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| {
                n.starts_with(&format!("cnct-pod-{pid}-"))
                    || n.starts_with(&format!("cnit-node-{pid}-"))
            })
            .map(str::to_owned)
            .collect();
        assert!(
            leftovers.is_empty(),
            "the runner left namespaces behind: {leftovers:?}"
        );
    }
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// A scratch directory for one test: configs, state, generated plugins, the JSON report.
struct Workspace {
    dir: TempDir,
}

impl Workspace {
    fn new() -> Workspace {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("cnct-test-")
            .tempdir()
            .expect("cannot create a tempdir");
        Workspace { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `conflist` and returns its path.
    fn conflist(&self, conflist: &Value) -> PathBuf {
        let path = self.path("net.conflist");
        fs::write(&path, conflist.to_string()).expect("cannot write the conflist");
        path
    }

    /// Writes an executable shell script `bin/<name>` and returns its directory.
    fn script(&self, name: &str, body: &str) -> PathBuf {
        let bin = self.path("bin");
        fs::create_dir_all(&bin).expect("cannot create bin/");
        let path = bin.join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}")).expect("cannot write a plugin script");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        bin
    }

    /// Runs the runner on `conflist` with `cni_path` and `extra` arguments; prints its table.
    fn run(&self, conflist: &Path, cni_path: &[&Path], extra: &[&str]) -> RunnerRun {
        let cni_path = cni_path
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let mut args: Vec<&OsStr> = vec![
            "--conflist".as_ref(),
            conflist.as_os_str(),
            "--cni-path".as_ref(),
            cni_path.as_ref(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        self.run_args(&args)
    }

    /// Runs the runner on one plugin binary with its single network config (`--plugin
    /// --config`, CNI_PATH defaulting to the binary's directory) and `extra` arguments.
    fn run_plugin(&self, binary: &Path, config: &Path, extra: &[&str]) -> RunnerRun {
        let mut args: Vec<&OsStr> = vec![
            "--plugin".as_ref(),
            binary.as_os_str(),
            "--config".as_ref(),
            config.as_os_str(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        self.run_args(&args)
    }

    /// Runs the runner with `args` and `--json`, without CNI_PATH from our environment;
    /// prints its table.
    fn run_args(&self, args: &[&OsStr]) -> RunnerRun {
        let json = self.path("report.json");
        let out = Command::new(runner())
            .args(args)
            .arg("--json")
            .arg(&json)
            .env_remove("CNI_PATH")
            .output()
            .expect("cannot run cni-conformance");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        println!("{stdout}");
        let report = fs::read_to_string(&json)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_else(|| {
                panic!(
                    "the runner wrote no JSON report (exit {}); stderr: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        RunnerRun {
            status: out.status,
            stdout,
            report,
        }
    }

    /// kubenet-bridge's entry of a conflist, with its state in this workspace.
    fn kubenet_plugin(&self, kind: &str) -> Value {
        json!({
            "type": kind, "bridge": "cbr0", "podCIDR": "10.244.1.0/24", "ipMasq": true,
            "dataDir": self.path("ipam"), "logFile": self.path("kubenet-bridge.log"),
        })
    }
}

fn conflist(name: &str, plugins: &[Value]) -> Value {
    json!({"cniVersion": "1.0.0", "name": name, "plugins": plugins})
}

#[test]
fn kubenet_bridge_passes_every_must_at_every_version() {
    let ws = Workspace::new();
    plugin_binary("kubenet-bridge");
    let list = ws.conflist(&conflist("kubenet", &[ws.kubenet_plugin("kubenet-bridge")]));
    let run = ws.run(&list, &[&bin_dir()], &[]);
    run.assert_every_must_passed("kubenet-bridge");
    for case in [
        "add: result shape",
        "gc: keeps valid attachments",
        "status: ready",
        "parallel: ADDs get distinct addresses",
    ] {
        assert_eq!(run.outcome(case, "1.1.0"), "pass", "[1.1.0] {case}");
    }
    run.assert_no_warning("kubenet-bridge");
    run.assert_no_namespace_left();
}

#[test]
fn vxlan_overlay_with_a_static_subnet_file_passes_every_must_at_every_version() {
    let ws = Workspace::new();
    plugin_binary("vxlan-overlay");
    // What the agent would write after leasing 10.244.5.0/24; peers empty (static mode).
    let subnet_file = ws.path("subnet.env");
    fs::write(
        &subnet_file,
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.5.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
    )
    .expect("cannot write subnet.env");
    let peers_file = ws.path("peers.json");
    fs::write(&peers_file, "[]").expect("cannot write peers.json");
    let plugin = json!({
        "type": "vxlan-overlay", "clusterCIDR": "10.244.0.0/16",
        "subnetFile": subnet_file, "peersFile": peers_file,
        "dataDir": ws.path("overlay"), "ipamDir": ws.path("ipam"),
    });
    let list = ws.conflist(&conflist("overlay", &[plugin]));
    let run = ws.run(&list, &[&bin_dir()], &[]);
    run.assert_every_must_passed("vxlan-overlay");
    assert_eq!(run.outcome("gc: keeps valid attachments", "1.1.0"), "pass");
    run.assert_no_warning("vxlan-overlay");
    run.assert_no_namespace_left();
}

/// The bad inputs whose code 4 message from the reference plugins' skeleton (1.1.1) does not
/// contain the variable's name ("invalid characters in containerID", "interface name is too
/// long"): a MUST of the spec ("must contain the names of invalid variables").
const REFERENCE_UNNAMED_VARIABLES: &[&str] = &[
    "CNI_CONTAINERID starting with - (4)",
    "CNI_CONTAINERID with a path (4)",
    "CNI_IFNAME of 16 bytes (4)",
    "CNI_IFNAME \".\" (4)",
    "CNI_IFNAME \"..\" (4)",
    "CNI_IFNAME with / (4)",
    "CNI_IFNAME with : (4)",
    "CNI_IFNAME with a space (4)",
];

/// Where the reference `bridge` falls short of a MUST, beyond [`REFERENCE_UNNAMED_VARIABLES`]
/// (the README's list): it drops a prevResult it is given (1.0.0), and attaches a "pod" in its
/// own namespace.
const REFERENCE_BRIDGE_SHORTFALLS: &[&str] = &[
    "chain: first plugin keeps a prevResult",
    "bad input: CNI_NETNS is the plugin's own namespace (4)",
    "bad input: CNI_NETNS is a bind mount of the plugin's own namespace (4)",
];

#[test]
fn reference_bridge_falls_short_only_where_known_and_skips_1_1_0() {
    let ws = Workspace::new();
    reference_plugin("bridge");
    let plugin = json!({
        "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
        "ipam": {
            "type": "host-local", "subnet": "10.244.9.0/24", "gateway": "10.244.9.1",
            "dataDir": ws.path("ipam"), "routes": [{"dst": "0.0.0.0/0"}],
        },
    });
    let list = ws.conflist(&conflist("reference", &[plugin]));
    let run = ws.run(&list, &[Path::new(REFERENCE_PLUGIN_DIR)], &[]);
    let expected = REFERENCE_BRIDGE_SHORTFALLS
        .iter()
        .map(|c| (*c).to_owned())
        .chain(
            REFERENCE_UNNAMED_VARIABLES
                .iter()
                .map(|c| format!("bad input: {c}")),
        )
        .collect();
    run.assert_fails_exactly("reference bridge", &expected);
    for cell in run
        .cells()
        .into_iter()
        .filter(|c| c["version"] == "1.1.0" && c["case"] != "version: output")
    {
        assert_eq!(cell["outcome"], "skip", "1.1.0 must be skipped: {cell}");
        assert!(
            text(&cell["reason"]).contains("does not advertise 1.1.0"),
            "skip reason: {cell}"
        );
    }
    let warnings = run.with_outcome("warn");
    assert!(
        warnings.iter().any(|w| w.contains("code 999")) && warnings.iter().any(|w| w.contains("no cniVersion")),
        "the reference's known shortcomings (code 999, errors without cniVersion) must show as warnings:\n{}",
        warnings.join("\n")
    );
    eprintln!("reference bridge warnings:\n{}", warnings.join("\n"));
    run.assert_no_namespace_left();
}

/// The runner's per-family cases on a dual-stack and an IPv6-only kubenet-bridge: every
/// MUST passes, the per-family case and the gateway pings (ping and ping6) pass, no warning.
#[test]
fn kubenet_bridge_dual_stack_and_ipv6_only_pass_every_must_at_every_version() {
    for ranges in [
        json!(["10.244.1.0/24", "fd00:10:244:1::/64"]),
        json!(["fd00:10:244:2::/64"]),
    ] {
        let ws = Workspace::new();
        plugin_binary("kubenet-bridge");
        let mut plugin = ws.kubenet_plugin("kubenet-bridge");
        let o = plugin.as_object_mut().expect("object");
        o.remove("podCIDR");
        o.insert("podCIDRs".into(), ranges.clone());
        let list = ws.conflist(&conflist("kubenet-ds", &[plugin]));
        let run = ws.run(&list, &[&bin_dir()], &[]);
        run.assert_every_must_passed(&format!("kubenet-bridge {ranges}"));
        for case in [
            "add: result shape",
            "add: addresses and default routes per family match the kernel",
            "add: pod reaches its gateway",
            "parallel: ADDs get distinct addresses",
        ] {
            for version in ["0.3.1", "1.0.0", "1.1.0"] {
                assert_eq!(
                    run.outcome(case, version),
                    "pass",
                    "[{version}] {case} {ranges}"
                );
            }
        }
        run.assert_no_warning(&format!("kubenet-bridge {ranges}"));
        run.assert_no_namespace_left();
    }
}

/// The reference bridge + host-local with an IPv4 and an IPv6 range set: the same shortfalls
/// as with one range, and the per-family cases pass (it waits for DAD before returning).
#[test]
fn reference_bridge_with_two_ranges_passes_the_per_family_cases() {
    let ws = Workspace::new();
    reference_plugin("bridge");
    let plugin = json!({
        "type": "bridge", "bridge": "cni1", "isGateway": true, "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "ranges": [
                [{"subnet": "10.244.9.0/24", "gateway": "10.244.9.1"}],
                [{"subnet": "fd00:10:244:9::/64", "gateway": "fd00:10:244:9::1"}]
            ],
            "dataDir": ws.path("ipam"),
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
        },
    });
    let list = ws.conflist(&conflist("reference-ds", &[plugin]));
    let run = ws.run(&list, &[Path::new(REFERENCE_PLUGIN_DIR)], &[]);
    let expected = REFERENCE_BRIDGE_SHORTFALLS
        .iter()
        .map(|c| (*c).to_owned())
        .chain(
            REFERENCE_UNNAMED_VARIABLES
                .iter()
                .map(|c| format!("bad input: {c}")),
        )
        .collect();
    run.assert_fails_exactly("reference bridge, two ranges", &expected);
    for case in [
        "add: result shape",
        "add: addresses and default routes per family match the kernel",
        "add: pod reaches its gateway",
    ] {
        assert_eq!(run.outcome(case, "1.0.0"), "pass", "[1.0.0] {case}");
    }
    run.assert_no_namespace_left();
}

#[test]
fn kubenet_bridge_chained_with_reference_tuning_fails_only_tunings_unnamed_variables() {
    let ws = Workspace::new();
    plugin_binary("kubenet-bridge");
    let tuning = json!({"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"}});
    let list = ws.conflist(&conflist(
        "chained",
        &[ws.kubenet_plugin("kubenet-bridge"), tuning],
    ));
    let run = ws.run(
        &list,
        &[&bin_dir(), Path::new(REFERENCE_PLUGIN_DIR)],
        &["--versions", "0.3.1,1.0.0"],
    );
    // kubenet-bridge passes every MUST; tuning's skeleton falls short on code 4 messages.
    let expected = REFERENCE_UNNAMED_VARIABLES
        .iter()
        .map(|c| format!("bad input to tuning: {c}"))
        .collect();
    run.assert_fails_exactly("kubenet-bridge + tuning", &expected);
    for version in ["0.3.1", "1.0.0"] {
        assert_eq!(run.outcome("chain: prevResult passed on", version), "pass");
        assert_eq!(
            run.outcome(
                "bad input to tuning: ADD with a prevResult of the wrong shape (6 or 7)",
                version
            ),
            "warn"
        );
    }
    run.assert_no_namespace_left();
}

/// Writes `bin/<name>`: a shell wrapper around kubenet-bridge (`$REAL`, with a state dir
/// `$STATE`) that breaks one thing; returns its directory.
fn flawed_kubenet(ws: &Workspace, name: &str, flaw: &str) -> PathBuf {
    let real = plugin_binary("kubenet-bridge");
    let state = ws.path("state");
    fs::create_dir_all(&state).expect("cannot create state/");
    let body = flaw
        .replace("$REAL", &format!("'{}'", real.display()))
        .replace("$STATE", &format!("'{}'", state.display()));
    ws.script(name, &body)
}

/// A shell wrapper around kubenet-bridge that breaks one thing, run at 1.0.0.
fn broken_kubenet(name: &str, flaw: &str) -> (Workspace, RunnerRun) {
    let ws = Workspace::new();
    let bin = flawed_kubenet(&ws, name, flaw);
    let list = ws.conflist(&conflist("broken", &[ws.kubenet_plugin(name)]));
    let run = ws.run(&list, &[&bin], &["--versions", "1.0.0", "--parallel", "8"]);
    run.assert_no_namespace_left();
    (ws, run)
}

/// ADD's `ips[].interface` points past the end of `interfaces`.
const BAD_SHAPE: &str = r#"# ADD's ips[].interface points past the end of interfaces.
out=$($REAL); rc=$?
if [ "$CNI_COMMAND" = ADD ] && [ $rc -eq 0 ]; then
    out=$(printf '%s' "$out" | sed 's/"interface":[0-9]*/"interface":7/g')
fi
[ -n "$out" ] && printf '%s\n' "$out"
exit $rc
"#;

#[test]
fn a_wrong_result_shape_fails_the_shape_case() {
    let (_ws, run) = broken_kubenet("kb-bad-shape", BAD_SHAPE);
    run.assert_fails("add: result shape", "1.0.0");
}

/// A single network config (not a list) of kubenet-bridge's `kind` in `ws`.
fn single_config(ws: &Workspace, kind: &str) -> PathBuf {
    let mut config = ws.kubenet_plugin(kind);
    config["cniVersion"] = json!("1.0.0");
    config["name"] = json!("single");
    let path = ws.path("single.conf");
    fs::write(&path, config.to_string()).expect("cannot write the config");
    path
}

#[test]
fn single_plugin_mode_passes_kubenet_bridge_at_every_version() {
    let ws = Workspace::new();
    let binary = plugin_binary("kubenet-bridge");
    let config = single_config(&ws, "kubenet-bridge");
    let run = ws.run_plugin(&binary, &config, &[]);
    run.assert_every_must_passed("kubenet-bridge --plugin");
    for version in ["0.3.0", "1.1.0"] {
        assert_eq!(
            run.outcome("add: result shape", version),
            "pass",
            "[{version}] add: result shape"
        );
    }
    run.assert_no_warning("kubenet-bridge --plugin");
    run.assert_no_namespace_left();
}

#[test]
fn single_plugin_mode_fails_a_broken_plugin() {
    let ws = Workspace::new();
    let bin = flawed_kubenet(&ws, "kb-bad-shape", BAD_SHAPE);
    let config = single_config(&ws, "kb-bad-shape");
    // No --cni-path: the binary's directory is the CNI path.
    let run = ws.run_plugin(
        &bin.join("kb-bad-shape"),
        &config,
        &["--versions", "1.0.0", "--parallel", "8"],
    );
    run.assert_fails("add: result shape", "1.0.0");
    run.assert_no_namespace_left();
}

#[test]
fn a_failing_second_del_fails_the_del_twice_case() {
    let (_ws, run) = broken_kubenet(
        "kb-del-once",
        r#"# A second DEL of an attachment fails.
mark=$STATE/"${CNI_CONTAINERID:-none}-${CNI_IFNAME:-none}"
case "$CNI_COMMAND" in
DEL)
    if [ -e "$mark" ]; then
        echo '{"cniVersion":"1.0.0","code":999,"msg":"already deleted"}'
        exit 1
    fi
    $REAL || exit $?
    : > "$mark" ;;
ADD) rm -f "$mark"; exec $REAL ;;
*) exec $REAL ;;
esac
"#,
    );
    run.assert_fails("del: twice", "1.0.0");
}

#[test]
fn a_panic_on_bad_input_fails_that_case() {
    let (_ws, run) = broken_kubenet(
        "kb-panics",
        r#"# Panics like an unwrap of a missing variable when CNI_IFNAME is unset.
if [ "$CNI_COMMAND" = ADD ] && [ -z "${CNI_IFNAME+set}" ]; then
    echo "thread 'main' panicked at src/main.rs:42:53:" >&2
    echo 'called `Option::unwrap()` on a `None` value' >&2
    exit 101
fi
exec $REAL
"#,
    );
    run.assert_fails("bad input: CNI_IFNAME missing (4)", "1.0.0");
    let reason = run
        .with_outcome("fail")
        .into_iter()
        .find(|f| f.contains("CNI_IFNAME missing"))
        .unwrap_or_default();
    assert!(
        reason.contains("panicked"),
        "the reason must say it panicked: {reason}"
    );
}

#[test]
fn the_same_address_for_concurrent_pods_fails_the_parallel_case() {
    let (_ws, run) = broken_kubenet(
        "kb-private-ipam",
        r##"# IPAM state private to each container: every pod gets the first free address.
sed "s#\"dataDir\":\"\([^\"]*\)\"#\"dataDir\":\"\1/${CNI_CONTAINERID:-none}\"#" | $REAL
"##,
    );
    run.assert_fails("parallel: ADDs get distinct addresses", "1.0.0");
}

#[test]
fn a_chained_plugin_dropping_prev_result_fails_the_chain_case() {
    let ws = Workspace::new();
    plugin_binary("kubenet-bridge");
    let bin = ws.script(
        "drops-prev",
        r#"# A chained plugin whose ADD result drops the prevResult it was given.
case "$CNI_COMMAND" in
VERSION) echo '{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}' ;;
ADD) v=$(sed -n 's/.*"cniVersion":"\([^"]*\)".*/\1/p' | head -n 1)
     printf '{"cniVersion":"%s","interfaces":[],"ips":[]}\n' "$v" ;;
esac
exit 0
"#,
    );
    let list = ws.conflist(&conflist(
        "dropped",
        &[
            ws.kubenet_plugin("kubenet-bridge"),
            json!({"type": "drops-prev"}),
        ],
    ));
    let run = ws.run(
        &list,
        &[&bin_dir(), &bin],
        &["--versions", "1.0.0", "--parallel", "4"],
    );
    run.assert_fails("chain: prevResult passed on", "1.0.0");
    run.assert_no_namespace_left();
}

#[test]
fn a_first_plugin_dropping_a_prev_result_fails_from_1_0_0() {
    let (_ws, run) = broken_kubenet(
        "kb-drops-prev",
        r#"# ADD throws away the prevResult it was given, as kubenet-bridge once did.
if [ "$CNI_COMMAND" = ADD ]; then
    jq -c 'del(.prevResult)' | $REAL
    exit $?
fi
exec $REAL
"#,
    );
    run.assert_fails("chain: first plugin keeps a prevResult", "1.0.0");
}

#[test]
fn a_plugin_accepting_its_own_namespace_fails_both_own_namespace_cases() {
    let (_ws, run) = broken_kubenet(
        "kb-own-netns",
        r#"# ADD accepts CNI_NETNS naming its own network namespace (and claims an attachment).
if [ "$CNI_COMMAND" = ADD ] && [ -n "$CNI_NETNS" ] &&
   [ "$(stat -L -c %d:%i "$CNI_NETNS" 2>/dev/null)" = "$(stat -L -c %d:%i /proc/$$/ns/net)" ]; then
    printf '{"cniVersion":"1.0.0","interfaces":[{"name":"%s","sandbox":"%s"}]}
' "$CNI_IFNAME" "$CNI_NETNS"
    exit 0
fi
exec $REAL
"#,
    );
    run.assert_fails(
        "bad input: CNI_NETNS is the plugin's own namespace (4)",
        "1.0.0",
    );
    run.assert_fails(
        "bad input: CNI_NETNS is a bind mount of the plugin's own namespace (4)",
        "1.0.0",
    );
}

#[test]
fn a_code_4_message_without_the_variable_name_fails() {
    let (_ws, run) = broken_kubenet(
        "kb-vague-errors",
        r#"# Error messages say "the namespace" where they named CNI_NETNS.
out=$($REAL); rc=$?
[ -n "$out" ] && printf '%s
' "$out" | sed 's/CNI_NETNS/the namespace/g'
exit $rc
"#,
    );
    for case in [
        "bad input: CNI_NETNS does not exist (3 or 4)",
        "bad input: CNI_NETNS is a regular file (4)",
        "bad input: CNI_NETNS is the plugin's own namespace (4)",
    ] {
        run.assert_fails(case, "1.0.0");
        let reason = run
            .with_outcome("fail")
            .into_iter()
            .find(|f| f.contains(case))
            .unwrap_or_default();
        assert!(
            reason.contains("must name the invalid variable CNI_NETNS"),
            "{case}: {reason}"
        );
    }
}

#[test]
fn a_plugin_ignoring_cni_args_is_warned_on_every_args_case() {
    let (_ws, run) = broken_kubenet(
        "kb-no-args",
        r#"# CNI_ARGS is never read: malformed text, unknown keys and IP= pass unnoticed.
unset CNI_ARGS
exec $REAL
"#,
    );
    // SHOULDs (libcni's and CONVENTIONS.md's rules, not the spec's): warnings, not failures.
    for case in [
        "bad input: CNI_ARGS malformed (4)",
        "bad input: CNI_ARGS with an unknown key, no IgnoreUnknown (4)",
        "args: IP= gets that address",
        "args: IP= of a taken address refused (code >= 100)",
    ] {
        assert_eq!(run.outcome(case, "1.0.0"), "warn", "[1.0.0] {case}");
    }
    assert_eq!(
        run.outcome("args: IgnoreUnknown and kubelet's keys accepted", "1.0.0"),
        "pass"
    );
}

#[test]
fn a_plugin_refusing_a_second_network_is_warned_on_that_case() {
    let (_ws, run) = broken_kubenet(
        "kb-one-network",
        r#"# What kubenet-bridge did before defaultRoute: a pod with a default route refuses a
# second network.
if [ "$CNI_COMMAND" = ADD ] && [ "$CNI_IFNAME" != eth0 ]; then
    printf '{"cniVersion":"1.0.0","code":101,"msg":"the pod already has a default route"}'
    exit 1
fi
exec $REAL
"#,
    );
    // A SHOULD (the spec names CNI_IFNAME part of an attachment, not a duty to serve two).
    assert_eq!(
        run.outcome("add: a second network on another ifname", "1.0.0"),
        "warn"
    );
    run.assert_every_must_passed("a plugin refusing a second network");
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(runner())
        .args(["--conflist", "/nonexistent.conflist"])
        .env_remove("CNI_PATH")
        .output()
        .expect("cannot run cni-conformance");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cni-path"));
}
