//! The cases the runner runs at each spec version, and the context each runs in: a fresh node
//! namespace, the list's plugins, and a record of the attachments it made so that they are
//! deleted afterwards whatever the case found.
//!
//! Like youki's contest (`TestResult::Skipped`, `ConditionalTest`), a case decides itself
//! whether it applies and returns a skip with the reason when it does not; the runner only
//! skips, up front, every case of a version some plugin does not advertise.

mod bad_input;
mod lifecycle;
mod parallel;
pub mod runtime_input;
mod second_network;
mod verbs_1_1;

use std::sync::Mutex;

use serde_json::Value;

use crate::judge;
use crate::netns::Node;
use crate::network::NetworkList;
use crate::runtime::{AttachmentId, ChainRun, Invocation, PluginCall, Pod, Runtime};
use crate::shape::{check_add_result, PodView, ResultFacts};
use crate::verdict::{skip, CaseLevel, Findings, Level, Step};
use crate::version_at_least;

/// What a case does, given its context; records violations in the findings.
pub type CaseFn = Box<dyn Fn(&CaseCtx, &mut Findings) -> Step<()> + Send + Sync>;

/// One row of the table: a check run at every version.
pub struct Case {
    /// The row's name, like `del: twice`.
    pub name: String,
    /// How binding it is.
    pub level: CaseLevel,
    /// Whether it only runs at versions every plugin advertises (all but VERSION).
    pub needs_support: bool,
    /// The check.
    pub run: CaseFn,
}

impl Case {
    fn new(
        name: impl Into<String>,
        level: CaseLevel,
        run: impl Fn(&CaseCtx, &mut Findings) -> Step<()> + Send + Sync + 'static,
    ) -> Case {
        Case {
            name: name.into(),
            level,
            needs_support: true,
            run: Box::new(run),
        }
    }
}

/// Every case for `list`, in table order. Cases about one plugin (VERSION, bad input) appear
/// once per plugin when the list has several.
pub fn all(list: &NetworkList) -> Vec<Case> {
    let mut cases = Vec::new();
    cases.extend(lifecycle::cases(list));
    cases.extend(runtime_input::cases());
    cases.extend(verbs_1_1::cases());
    cases.push(parallel::case());
    cases.push(second_network::case());
    cases.extend(bad_input::cases(list));
    cases
}

/// Everything a case needs at one spec version.
pub struct CaseCtx<'a> {
    /// The runtime executing the list in the case's own node namespace.
    pub runtime: Runtime<'a>,
    /// `supportedVersions` of each plugin, from its VERSION output.
    pub supported: &'a [Vec<String>],
    /// How many ADDs the parallel case runs at once.
    pub parallel: usize,
    /// Attachments ADDed and not yet DELeted, with their ADD result.
    live: Mutex<Vec<(AttachmentId, Option<Value>)>>,
}

impl<'a> CaseCtx<'a> {
    /// A context with a fresh node namespace.
    pub fn new(
        list: &'a NetworkList,
        version: &'static str,
        net_name: String,
        supported: &'a [Vec<String>],
        parallel: usize,
    ) -> CaseCtx<'a> {
        CaseCtx {
            runtime: Runtime {
                list,
                version,
                net_name,
                node: Node::new(),
            },
            supported,
            parallel,
            live: Mutex::new(Vec::new()),
        }
    }

    /// The spec version of this run.
    pub fn version(&self) -> &'static str {
        self.runtime.version
    }

    /// The list under test.
    pub fn list(&self) -> &NetworkList {
        self.runtime.list
    }

    /// The level `level` has at this version.
    pub fn level(&self, level: CaseLevel) -> Level {
        level.at(self.version())
    }

    /// Skips unless this version is `min` or later.
    pub fn require_version(&self, min: &str, why: &str) -> Step<()> {
        if version_at_least(self.version(), min) {
            Ok(())
        } else {
            skip(why)
        }
    }

    /// Runs one plugin call in the node.
    pub fn exec(&self, call: &PluginCall) -> Invocation {
        call.exec(&self.runtime.node)
    }

    /// ADD of the first `count` plugins for `id`; remembered for the final DEL.
    pub fn add_first(&self, count: usize, id: &AttachmentId) -> ChainRun {
        // Remembered before running: a runtime must DEL even after a failed ADD.
        self.remember(id, None);
        let run = self.runtime.add_first(count, id);
        if run.result.is_some() {
            self.remember(id, run.result.clone());
        }
        run
    }

    /// ADD of the whole list for `id`.
    pub fn add(&self, id: &AttachmentId) -> ChainRun {
        self.add_first(self.list().plugins.len(), id)
    }

    /// ADD of the whole list for `id` with `CNI_ARGS` set to `args` for every plugin;
    /// remembered for the final DEL.
    pub fn add_with_args(&self, id: &AttachmentId, args: &str) -> ChainRun {
        self.remember(id, None);
        let run = self
            .runtime
            .add_first_with(self.list().plugins.len(), id, |call| {
                call.set("CNI_ARGS", args);
            });
        if run.result.is_some() {
            self.remember(id, run.result.clone());
        }
        run
    }

    /// ADD of the whole list for `pod`, which must succeed (a MUST everywhere); returns the
    /// final result.
    pub fn add_ok(&self, f: &mut Findings, pod: &Pod) -> Step<Value> {
        let run = self.add(&pod.id);
        judge::chain_success(f, Level::Must, "ADD", &run)
    }

    /// DEL of the whole list for `id`; forgotten when it succeeds.
    pub fn del(
        &self,
        id: &AttachmentId,
        prev_result: Option<&Value>,
        with_netns: bool,
    ) -> ChainRun {
        let run = self
            .runtime
            .del(id, self.runtime.prev_for_del(prev_result), with_netns);
        if run.succeeded() {
            self.forget(id);
        }
        run
    }

    /// CHECK of the whole list for `id` against `prev_result`.
    pub fn check(&self, id: &AttachmentId, prev_result: &Value) -> ChainRun {
        self.runtime.check(id, Some(prev_result))
    }

    /// Records that `id` may hold resources until a DEL succeeds.
    pub fn remember(&self, id: &AttachmentId, result: Option<Value>) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        match live.iter_mut().find(|(known, _)| known == id) {
            Some(entry) => entry.1 = result.or(entry.1.take()),
            None => live.push((id.clone(), result)),
        }
    }

    fn forget(&self, id: &AttachmentId) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|(known, _)| known != id);
    }

    /// DELs every attachment still live, ignoring the outcome: cleanup, not a check.
    pub fn cleanup(&self) {
        let live = std::mem::take(&mut *self.live.lock().unwrap_or_else(|p| p.into_inner()));
        for (id, result) in live.iter().rev() {
            let _ = self
                .runtime
                .del(id, self.runtime.prev_for_del(result.as_ref()), true);
        }
    }

    /// How `pod` looks to the result checks, read from the kernel now.
    pub fn pod_view<'p>(&self, pod: &'p Pod) -> PodView<'p> {
        PodView {
            ifname: &pod.id.ifname,
            netns_path: pod.id.netns_path.to_str().unwrap_or_default(),
            has_interface: pod.netns.has_link(&pod.id.ifname),
        }
    }

    /// What `result` says about `pod`, ignoring its shape violations (the shape case reports
    /// those once).
    pub fn facts(&self, result: &Value, pod: &Pod) -> ResultFacts {
        let mut ignored = Findings::default();
        check_add_result(
            &mut ignored,
            "result",
            self.version(),
            result,
            &self.pod_view(pod),
        )
    }
}
