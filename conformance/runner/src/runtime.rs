//! Executing a network configuration list the way libcni does (SPEC.md section 3): ADD runs
//! the plugins in order, each given the previous plugin's result as `prevResult`; CHECK runs
//! them in order and DEL in reverse, each given the final ADD result; a failure halts the
//! list. Every plugin runs inside the case's node namespace, for a pod in its own namespace.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;

use serde_json::Value;

use crate::netns::{Netns, Node};
use crate::network::NetworkList;
use crate::plugin::{PluginOutput, PluginRun};
use crate::{unique_name, version_at_least};

/// The interface name the runner asks plugins to create in pods.
pub const POD_IFNAME: &str = "eth0";

/// Who an attachment belongs to: the `(CNI_CONTAINERID, CNI_IFNAME)` pair that identifies it,
/// and the namespace path given as `CNI_NETNS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentId {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_NETNS`.
    pub netns_path: PathBuf,
}

/// A pod sandbox: a fresh network namespace and the container id a runtime gives it.
#[derive(Debug)]
pub struct Pod {
    /// The pod's namespace (deleted when dropped).
    pub netns: Netns,
    /// The attachment this pod's ADD creates.
    pub id: AttachmentId,
}

impl Pod {
    /// A new pod namespace with a unique container id and [`POD_IFNAME`].
    pub fn new() -> Pod {
        let netns = Netns::new("cnct-pod-");
        let id = AttachmentId {
            container_id: unique_name("cnct"),
            ifname: POD_IFNAME.to_owned(),
            netns_path: netns.path(),
        };
        Pod { netns, id }
    }
}

impl Default for Pod {
    fn default() -> Self {
        Pod::new()
    }
}

/// One plugin execution, built up like a runtime would; cases may alter any part of it to
/// make a bad input.
#[derive(Debug, Clone)]
pub struct PluginCall {
    /// The plugin's `type`.
    pub plugin: String,
    /// The executable.
    pub program: PathBuf,
    /// The `CNI_*` variables passed (nothing else but `PATH` reaches the plugin).
    pub env: BTreeMap<&'static str, String>,
    /// The configuration sent on stdin.
    pub config: Value,
    /// Raw stdin sent instead of `config`, for undecodable input.
    pub raw_stdin: Option<Vec<u8>>,
}

impl PluginCall {
    /// Sets a `CNI_*` variable.
    pub fn set(&mut self, key: &'static str, value: impl Into<String>) -> &mut Self {
        self.env.insert(key, value.into());
        self
    }

    /// Removes a `CNI_*` variable.
    pub fn unset(&mut self, key: &'static str) -> &mut Self {
        self.env.remove(key);
        self
    }

    /// `CNI_COMMAND` of this call.
    pub fn verb(&self) -> &str {
        match self.env.get("CNI_COMMAND").map(String::as_str) {
            None => "(no CNI_COMMAND)",
            Some("") => "(empty CNI_COMMAND)",
            Some(verb) => verb,
        }
    }

    /// Runs the plugin inside `node`.
    pub fn exec(&self, node: &Node) -> Invocation {
        let mut run = PluginRun::new(&self.program, node);
        for (&key, value) in &self.env {
            run = run.env(key, value);
        }
        run = match &self.raw_stdin {
            Some(bytes) => run.stdin_bytes(bytes),
            None => run.config(&self.config),
        };
        Invocation {
            plugin: self.plugin.clone(),
            verb: self.verb().to_owned(),
            output: run.exec(),
        }
    }
}

/// One plugin execution and what it printed.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The plugin's `type`.
    pub plugin: String,
    /// `CNI_COMMAND` it ran with.
    pub verb: String,
    /// Exit status, stdout, stderr.
    pub output: PluginOutput,
}

impl Invocation {
    /// `<plugin> <VERB>: exit 1; stdout: …; stderr: …` on one line, each stream cut to a
    /// readable length.
    pub fn describe(&self) -> String {
        let status = match (self.output.status.code(), self.output.status.signal()) {
            (Some(code), _) => format!("exit {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            (None, None) => self.output.status.to_string(),
        };
        format!(
            "{} {}: {status}; stdout: {}; stderr: {}",
            self.plugin,
            self.verb,
            shorten(&one_line(&self.output.stdout), 400),
            shorten(&one_line(&self.output.stderr), 300)
        )
    }
}

/// `text` with every run of whitespace (newlines of pretty-printed JSON included) made one
/// space.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What running a whole list for one attachment produced.
#[derive(Debug, Clone, Default)]
pub struct ChainRun {
    /// Every plugin execution, in the order run.
    pub steps: Vec<Invocation>,
    /// Why the list halted, if it did: a plugin failed, or printed a result that is not JSON.
    pub halted: Option<String>,
    /// For ADD: the result of the last plugin, which the runtime stores.
    pub result: Option<Value>,
}

impl ChainRun {
    /// Whether every plugin succeeded.
    pub fn succeeded(&self) -> bool {
        self.halted.is_none()
    }
}

/// A runtime executing one network list at one spec version inside one node namespace.
#[derive(Debug)]
pub struct Runtime<'a> {
    /// The list under test.
    pub list: &'a NetworkList,
    /// The spec version the list's `cniVersion` is rewritten to.
    pub version: &'static str,
    /// The network name plugins see (the list's name with a per-run suffix).
    pub net_name: String,
    /// The node namespace plugins run in.
    pub node: Node,
}

impl Runtime<'_> {
    /// A call of plugin `index` with `CNI_COMMAND`, `CNI_PATH` and, for an attachment,
    /// `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`; its configuration carries `prev_result`.
    pub fn call(
        &self,
        index: usize,
        verb: &str,
        attachment: Option<&AttachmentId>,
        prev_result: Option<&Value>,
    ) -> PluginCall {
        let plugin = &self.list.plugins[index];
        let mut call = PluginCall {
            plugin: plugin.kind.clone(),
            program: plugin.binary.clone(),
            env: BTreeMap::new(),
            config: self
                .list
                .exec_config(index, self.version, &self.net_name, prev_result),
            raw_stdin: None,
        };
        call.set("CNI_COMMAND", verb)
            .set("CNI_PATH", self.list.cni_path_var());
        if let Some(id) = attachment {
            call.set("CNI_CONTAINERID", id.container_id.as_str())
                .set("CNI_NETNS", id.netns_path.to_string_lossy())
                .set("CNI_IFNAME", id.ifname.as_str());
        }
        call
    }

    /// ADD of plugins `0..count` in order, each given the previous result.
    pub fn add_first(&self, count: usize, id: &AttachmentId) -> ChainRun {
        self.add_first_with(count, id, |_| {})
    }

    /// ADD of plugins `0..count` in order, each given the previous result, each call changed
    /// by `adjust` first (`CNI_ARGS`, which a runtime passes to every plugin of the list).
    pub fn add_first_with(
        &self,
        count: usize,
        id: &AttachmentId,
        adjust: impl Fn(&mut PluginCall),
    ) -> ChainRun {
        let mut run = ChainRun::default();
        for index in 0..count {
            let mut call = self.call(index, "ADD", Some(id), run.result.as_ref());
            adjust(&mut call);
            let step = call.exec(&self.node);
            let outcome = if !step.output.status.success() {
                Err(format!("{} failed", step.plugin))
            } else {
                serde_json::from_str::<Value>(&step.output.stdout)
                    .map_err(|e| format!("{} ADD printed no JSON result ({e})", step.plugin))
            };
            run.steps.push(step);
            match outcome {
                Ok(result) => run.result = Some(result),
                Err(why) => {
                    run.halted = Some(why);
                    break;
                }
            }
        }
        run
    }

    /// ADD of the whole list.
    pub fn add(&self, id: &AttachmentId) -> ChainRun {
        self.add_first(self.list.plugins.len(), id)
    }

    /// The `prevResult` a runtime gives DEL: the final ADD result, from 0.4.0 on (libcni
    /// caches results and passes them to DEL only for 0.4.0 and later).
    pub fn prev_for_del<'v>(&self, add_result: Option<&'v Value>) -> Option<&'v Value> {
        add_result.filter(|_| version_at_least(self.version, "0.4.0"))
    }

    /// DEL of the whole list in reverse order; without `CNI_NETNS` when `with_netns` is false.
    pub fn del(
        &self,
        id: &AttachmentId,
        prev_result: Option<&Value>,
        with_netns: bool,
    ) -> ChainRun {
        self.run_each(
            (0..self.list.plugins.len()).rev(),
            "DEL",
            id,
            prev_result,
            with_netns,
        )
    }

    /// CHECK of the whole list in order, each plugin given the final ADD result.
    pub fn check(&self, id: &AttachmentId, prev_result: Option<&Value>) -> ChainRun {
        self.run_each(0..self.list.plugins.len(), "CHECK", id, prev_result, true)
    }

    fn run_each(
        &self,
        order: impl Iterator<Item = usize>,
        verb: &str,
        id: &AttachmentId,
        prev_result: Option<&Value>,
        with_netns: bool,
    ) -> ChainRun {
        let mut run = ChainRun::default();
        for index in order {
            let mut call = self.call(index, verb, Some(id), prev_result);
            if !with_netns {
                call.unset("CNI_NETNS");
            }
            let step = call.exec(&self.node);
            let failed = !step.output.status.success();
            if failed {
                run.halted = Some(format!("{} failed", step.plugin));
            }
            run.steps.push(step);
            if failed {
                break;
            }
        }
        run
    }
}

/// `text` cut to at most `max` bytes (on a character boundary), marked with `…` when cut.
pub fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::shorten;

    #[test]
    fn shorten_cuts_on_char_boundaries() {
        assert_eq!(shorten("abc", 5), "abc");
        assert_eq!(shorten("abcdef", 3), "abc…");
        assert_eq!(shorten("aé", 2), "a…");
    }
}
