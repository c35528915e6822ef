//! The verbs 1.1.0 added: STATUS ("a plugin must exit with a zero return code if the plugin
//! is ready to service ADD requests") and GC, which is given `cni.dev/valid-attachments` and
//! may release everything else. libcni 1.2 also passes the draft name `cni.dev/attachments`
//! (containernetworking/cni#1101); so does the runner.

use serde_json::json;

use super::{Case, CaseCtx};
use crate::judge;
use crate::kernel;
use crate::runtime::Pod;
use crate::verdict::{CaseLevel, Findings, Level, Step};

/// The 1.1.0 cases.
pub fn cases() -> Vec<Case> {
    vec![
        Case::new("status: ready", CaseLevel::Must, status_ready),
        Case::new(
            "gc: keeps valid attachments",
            CaseLevel::Must,
            gc_keeps_valid_attachments,
        ),
    ]
}

/// STATUS of each plugin succeeds: the runner's node can serve ADDs (the ADD cases show it).
fn status_ready(ctx: &CaseCtx, f: &mut Findings) -> Step<()> {
    ctx.require_version("1.1.0", "STATUS exists from 1.1.0")?;
    for index in 0..ctx.list().plugins.len() {
        let inv = ctx.exec(&ctx.runtime.call(index, "STATUS", None, None));
        judge::success(f, Level::Must, "STATUS", &inv)?;
    }
    Ok(())
}

/// GC listing only pod A succeeds and leaves A working; pod B's resources should go (seen as
/// B's interface removed, or a later ADD getting B's address).
fn gc_keeps_valid_attachments(ctx: &CaseCtx, f: &mut Findings) -> Step<()> {
    ctx.require_version("1.1.0", "GC exists from 1.1.0")?;
    let (a, b) = (Pod::new(), Pod::new());
    let result_a = ctx.add_ok(f, &a)?;
    let result_b = ctx.add_ok(f, &b)?;
    let held_a = kernel::addresses(&a.netns, &a.id.ifname);
    let held_b = kernel::addresses(&b.netns, &b.id.ifname);
    let valid = json!([{ "containerID": a.id.container_id, "ifname": a.id.ifname }]);
    for index in 0..ctx.list().plugins.len() {
        let mut call = ctx.runtime.call(index, "GC", None, None);
        call.config["cni.dev/valid-attachments"] = valid.clone();
        call.config["cni.dev/attachments"] = valid.clone();
        let inv = ctx.exec(&call);
        judge::success(f, Level::Must, "GC listing pod a only", &inv)?;
    }

    let after_a = kernel::addresses(&a.netns, &a.id.ifname);
    f.must(after_a == held_a, || {
        format!("GC changed valid pod a's addresses from {held_a:?} to {after_a:?}")
    });
    if !ctx.list().disable_check {
        let run = ctx.check(&a.id, &result_a);
        judge::chain_success(f, Level::Must, "CHECK of valid pod a after GC", &run)?;
    }

    let after_b = kernel::addresses(&b.netns, &b.id.ifname);
    let b_released = !held_b.is_empty() && held_b.iter().all(|addr| !after_b.contains(addr));
    if !b_released && !held_b.is_empty() {
        let c = Pod::new();
        let run = ctx.add(&c.id);
        let reused = kernel::addresses(&c.netns, &c.id.ifname)
            .iter()
            .any(|addr| held_b.iter().any(|old| old.addr() == addr.addr()));
        judge::no_crash(f, &run.steps);
        f.should(reused, || {
            format!(
                "nothing shows GC released pod b: it still holds {after_b:?} and a new ADD did not get its address"
            )
        });
    }
    let run = ctx.del(&b.id, Some(&result_b), true);
    judge::chain_success(f, Level::Must, "DEL of pod b after GC released it", &run)?;
    Ok(())
}
