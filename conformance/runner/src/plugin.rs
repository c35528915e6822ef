//! Running a CNI plugin binary the way a runtime does: `CNI_*` environment, network config on
//! stdin, result or error JSON on stdout, inside a node's namespace.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::netns::Node;

/// How long one plugin (or cnitool) run may take before the test kills it and fails; generous
/// because 40 concurrent runs share 2 cores and a lock.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// One invocation of a plugin binary inside a node namespace, built up like a runtime would.
///
/// Only the variables set here (plus a fixed `PATH`) reach the plugin, so a test that leaves
/// one out really tests its absence.
#[derive(Debug, Clone)]
pub struct PluginRun {
    program: PathBuf,
    node_netns: String,
    env: BTreeMap<&'static str, String>,
    stdin: Vec<u8>,
}

impl PluginRun {
    /// A run of `program` inside `node`, with no CNI variables set yet and empty stdin.
    pub fn new(program: &Path, node: &Node) -> PluginRun {
        PluginRun {
            program: program.to_path_buf(),
            node_netns: node.netns().name().to_owned(),
            env: BTreeMap::new(),
            stdin: Vec::new(),
        }
    }

    /// Sets `CNI_COMMAND` (ADD, DEL, CHECK, VERSION, STATUS, GC).
    pub fn command(self, verb: &str) -> Self {
        self.env("CNI_COMMAND", verb)
    }

    /// Sets `CNI_CONTAINERID`.
    pub fn container_id(self, id: &str) -> Self {
        self.env("CNI_CONTAINERID", id)
    }

    /// Sets `CNI_NETNS`.
    pub fn netns(self, path: &Path) -> Self {
        self.env("CNI_NETNS", &path.to_string_lossy())
    }

    /// Sets `CNI_IFNAME`.
    pub fn ifname(self, ifname: &str) -> Self {
        self.env("CNI_IFNAME", ifname)
    }

    /// Sets `CNI_PATH`.
    pub fn cni_path(self, path: &str) -> Self {
        self.env("CNI_PATH", path)
    }

    /// Sets any variable passed to the plugin.
    pub fn env(mut self, key: &'static str, value: &str) -> Self {
        self.env.insert(key, value.to_owned());
        self
    }

    /// Removes a variable set earlier, to test the plugin without it.
    pub fn without(mut self, key: &str) -> Self {
        self.env.remove(key);
        self
    }

    /// The network configuration sent on stdin.
    pub fn config(mut self, config: &Value) -> Self {
        self.stdin = config.to_string().into_bytes();
        self
    }

    /// Raw stdin bytes, for malformed input.
    pub fn stdin_bytes(mut self, bytes: &[u8]) -> Self {
        self.stdin = bytes.to_vec();
        self
    }

    /// Runs the plugin to completion; panics if it cannot be started or outlives
    /// [`RUN_TIMEOUT`].
    pub fn exec(&self) -> PluginOutput {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node_netns])
            .arg(&self.program)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .envs(&self.env);
        run_with_stdin(cmd, &self.stdin)
    }
}

/// What a plugin (or cnitool) run produced.
#[derive(Debug, Clone)]
pub struct PluginOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
}

/// The error object the CNI spec requires on stdout when a plugin fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// `cniVersion` of the error object.
    pub cni_version: String,
    /// `code`: 1-99 are the spec's, 100 and up the plugin's own.
    pub code: u64,
    /// `msg`, never empty.
    pub msg: String,
}

impl PluginOutput {
    /// stdout parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.stdout).ok()
    }

    /// Asserts exit 0 and returns stdout as JSON (`Value::Null` if stdout is empty, as it may
    /// be for DEL, CHECK and STATUS). `ctx` names the case, like `[1.0.0] add pod a`.
    pub fn expect_success(&self, ctx: &str) -> Value {
        assert!(
            self.status.success(),
            "{ctx}: expected success, {}",
            self.describe()
        );
        self.assert_no_panic(ctx);
        if self.stdout.trim().is_empty() {
            return Value::Null;
        }
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{ctx}: stdout is not JSON ({e}); {}", self.describe()))
    }

    /// Asserts a spec-shaped failure: non-zero exit, and on stdout a JSON object with string
    /// `cniVersion`, integer `code` and non-empty `msg`. Returns the error.
    pub fn expect_cni_error(&self, ctx: &str) -> CniError {
        assert!(
            !self.status.success(),
            "{ctx}: expected failure, {}",
            self.describe()
        );
        self.assert_no_panic(ctx);
        let json = self
            .json()
            .unwrap_or_else(|| panic!("{ctx}: error is not JSON on stdout; {}", self.describe()));
        let field = |name: &str| json.get(name).cloned().unwrap_or(Value::Null);
        let cni_version = field("cniVersion")
            .as_str()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| panic!("{ctx}: error lacks cniVersion; {}", self.describe()))
            .to_owned();
        let code = field("code")
            .as_u64()
            .unwrap_or_else(|| panic!("{ctx}: error lacks integer code; {}", self.describe()));
        let msg = field("msg")
            .as_str()
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| panic!("{ctx}: error lacks msg; {}", self.describe()))
            .to_owned();
        CniError {
            cni_version,
            code,
            msg,
        }
    }

    /// [`expect_cni_error`](Self::expect_cni_error) with a given `code`, and, when
    /// `input_version` is given, the `cniVersion` the spec requires: "the same version supplied
    /// on input".
    pub fn expect_cni_error_code(
        &self,
        ctx: &str,
        code: u64,
        input_version: Option<&str>,
    ) -> CniError {
        let err = self.expect_cni_error(ctx);
        assert_eq!(
            err.code,
            code,
            "{ctx}: wrong error code; {}",
            self.describe()
        );
        if let Some(version) = input_version {
            assert_eq!(
                err.cni_version,
                version,
                "{ctx}: error cniVersion must echo the input's; {}",
                self.describe()
            );
        }
        err
    }

    /// A panic is a bug whatever the input: Rust prints "panicked" on stderr, our skeleton's
    /// panic guard prints code 199 "internal error (a bug ..." (see [`crate::CRASH_MARKERS`]).
    fn assert_no_panic(&self, ctx: &str) {
        let marker = crate::crash_marker(&self.stdout, &self.stderr);
        assert!(
            marker.is_none(),
            "{ctx}: plugin crashed ({marker:?} in its output); {}",
            self.describe()
        );
    }

    /// Exit status, stdout and stderr, for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "exit {}; stdout: {}; stderr: {}",
            self.status,
            self.stdout.trim(),
            self.stderr.trim()
        )
    }
}

/// Runs `cmd` with `stdin` piped in, collecting stdout and stderr, killing it after
/// [`RUN_TIMEOUT`].
pub fn run_with_stdin(mut cmd: Command, stdin: &[u8]) -> PluginOutput {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut child_stdin = child.stdin.take().expect("stdin is piped");
    let input = stdin.to_vec();
    // A writer thread, so a plugin that exits without reading stdin cannot block us; its
    // broken-pipe error is expected then and ignored.
    let writer = thread::spawn(move || {
        let _ = child_stdin.write_all(&input);
    });
    let stdout = drain(child.stdout.take().expect("stdout is piped"));
    let stderr = drain(child.stderr.take().expect("stderr is piped"));
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > RUN_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{cmd:?} did not finish within {RUN_TIMEOUT:?}; killed");
            }
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("waiting for {cmd:?}: {e}"),
        }
    };
    let _ = writer.join();
    PluginOutput {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Reads a pipe to its end on a thread, as lossy UTF-8.
fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}
