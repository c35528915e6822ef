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

/// How long one plugin (or cnitool) run may take before it is killed and the run fails; generous
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

impl PluginOutput {
    /// stdout parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.stdout).ok()
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
