//! Bad input: each case spoils one thing a runtime sends (stdin, a `CNI_*` variable, the verb
//! for the version, `prevResult`) and expects a refusal: non-zero exit, the error object, the
//! well-known code, no crash (see [`crate::judge`] for the levels of each part).
//!
//! A refusal is a MUST where succeeding would claim work the plugin cannot have done:
//! undecodable configuration, a version it cannot speak, an unknown verb, a required attachment
//! variable missing, an interface name breaking the spec's rules ("if the plugin is unable to
//! use this interface name it must return an error"), a namespace it cannot enter, a CHECK
//! whose `prevResult` it cannot decode. It is a SHOULD where the spec only binds the runtime
//! and a success does no harm: no `CNI_COMMAND` at all (nothing was asked; Go's skel prints
//! its "about" text and exits 0, for humans running the binary), a configuration without
//! `type`, a container id with illegal characters, verbs newer than the configuration's
//! version, a `prevResult` of an unknown version that still reads as the configuration's (no
//! rule says a plugin must refuse it; libcni never sends one, as it converts cached results
//! to the configuration's version).
//!
//! `CNI_NETNS` naming the plugin's own network namespace (`/proc/self/ns/net`, or a bind
//! mount of the namespace the runtime runs plugins in) is a MUST refusal by this runner's
//! reading: the spec has the runtime execute plugins "in the runtime's networking domain" and
//! create "a new network namespace for the container", so that namespace is no container's,
//! and an ADD accepting it reconfigures the node as if it were a pod. `CNI_ARGS` that libcni's
//! `LoadArgs` refuses (a pair without `=`, an unknown key without `IgnoreUnknown`) is a
//! SHOULD: the spec only describes the variable's format.
//!
//! Where the spec allows several codes the case accepts each, and its name lists them:
//! `(3 or 4)` for a namespace path that does not exist ("container unknown or does not exist"
//! or "invalid necessary environment variables"); `(6 or 7)` for a missing field, which is a
//! decoding failure to decoders that require fields and an invalid configuration to others;
//! `(1 or 4)` for STATUS and GC below 1.1.0, which a plugin that knows the verb refuses for the
//! version and one that does not know it refuses as an unknown `CNI_COMMAND`.
//!
//! With several plugins in the list every case runs against each; a chained plugin is given
//! the bad input after the plugins before it ADDed the pod, so it also gets a real
//! `prevResult`.

use serde_json::{json, Value};

use super::{Case, CaseCtx};
use crate::judge::{self, codes_text, Refusal};
use crate::kernel;
use crate::network::NetworkList;
use crate::runtime::{PluginCall, Pod};
use crate::verdict::{skip, CaseLevel, Findings, Level, Step};
use crate::{unique_name, version_at_least};

/// What must exist before the bad call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    /// No attachment at all (STATUS, GC).
    Nothing,
    /// A pod, with the plugins before this one ADDed.
    Pod,
    /// A pod with the whole list ADDed; the call gets the final result as `prevResult`.
    Attached,
}

/// One spoiled input.
struct BadInput {
    /// What is wrong, as the table shows it.
    label: &'static str,
    /// `CNI_COMMAND` before spoiling.
    verb: &'static str,
    setup: Setup,
    /// The well-known codes that fit.
    codes: &'static [u64],
    level: CaseLevel,
    /// The variable at fault, which a code 4 message must name.
    variable: Option<&'static str>,
    /// Whether the configuration sent still has a valid, advertised `cniVersion`, which the
    /// error object should then echo.
    echo_version: bool,
    /// Why the input does not apply to plugin `index` at this version, if it does not.
    applies: fn(&CaseCtx, usize) -> Result<(), String>,
    spoil: fn(&CaseCtx, usize, &mut PluginCall),
}

fn always(_: &CaseCtx, _: usize) -> Result<(), String> {
    Ok(())
}

fn before_0_4_0(ctx: &CaseCtx, _: usize) -> Result<(), String> {
    match version_at_least(ctx.version(), "0.4.0") {
        true => Err("CHECK exists from 0.4.0 on".into()),
        false => Ok(()),
    }
}

fn from_0_4_0(ctx: &CaseCtx, _: usize) -> Result<(), String> {
    match version_at_least(ctx.version(), "0.4.0") {
        true => Ok(()),
        false => Err("CHECK does not exist before 0.4.0 (see \"CHECK before 0.4.0\")".into()),
    }
}

fn before_1_1_0(ctx: &CaseCtx, _: usize) -> Result<(), String> {
    match version_at_least(ctx.version(), "1.1.0") {
        true => Err("STATUS and GC exist from 1.1.0 on".into()),
        false => Ok(()),
    }
}

fn chained_only(_: &CaseCtx, index: usize) -> Result<(), String> {
    match index {
        0 => Err("the first plugin gets no prevResult on ADD".into()),
        _ => Ok(()),
    }
}

/// A spec version older than any the plugin advertises: 0.2.0 or 0.1.0.
fn unadvertised_old_version(ctx: &CaseCtx, index: usize) -> Option<&'static str> {
    ["0.2.0", "0.1.0"]
        .into_iter()
        .find(|v| !ctx.supported[index].iter().any(|s| s == v))
}

fn has_unadvertised_old_version(ctx: &CaseCtx, index: usize) -> Result<(), String> {
    unadvertised_old_version(ctx, index)
        .map(|_| ())
        .ok_or_else(|| "the plugin advertises 0.1.0 and 0.2.0".into())
}

fn remove(call: &mut PluginCall, key: &str) {
    if let Some(conf) = call.config.as_object_mut() {
        conf.remove(key);
    }
}

fn truncated_json(ctx: &CaseCtx, _: usize, call: &mut PluginCall) {
    call.raw_stdin = Some(format!(r#"{{"cniVersion":"{}","name":"#, ctx.version()).into_bytes());
}

/// Every bad input, in table order.
const BAD_INPUTS: &[BadInput] = &[
    BadInput {
        label: "malformed JSON",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[6],
        level: CaseLevel::Must,
        variable: None,
        echo_version: false,
        applies: always,
        spoil: truncated_json,
    },
    BadInput {
        label: "empty stdin",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[6],
        level: CaseLevel::Must,
        variable: None,
        echo_version: false,
        applies: always,
        spoil: |_, _, call| call.raw_stdin = Some(Vec::new()),
    },
    BadInput {
        label: "config is not an object",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[6, 7],
        level: CaseLevel::Must,
        variable: None,
        echo_version: false,
        applies: always,
        spoil: |_, _, call| call.raw_stdin = Some(br#"["not", "an", "object"]"#.to_vec()),
    },
    BadInput {
        label: "config without name",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[6, 7],
        level: CaseLevel::Should,
        variable: None,
        echo_version: true,
        applies: always,
        spoil: |_, _, call| remove(call, "name"),
    },
    BadInput {
        label: "config without type",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[6, 7],
        level: CaseLevel::Should,
        variable: None,
        echo_version: true,
        applies: always,
        spoil: |_, _, call| remove(call, "type"),
    },
    BadInput {
        label: "config without cniVersion",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[1, 6, 7],
        level: CaseLevel::Should,
        variable: None,
        echo_version: false,
        applies: always,
        spoil: |_, _, call| remove(call, "cniVersion"),
    },
    BadInput {
        label: "name with a slash",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[7],
        level: CaseLevel::Should,
        variable: None,
        echo_version: true,
        applies: always,
        spoil: |_, _, call| call.config["name"] = json!("bad/name"),
    },
    BadInput {
        label: "cniVersion 9.9.9",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[1],
        level: CaseLevel::Must,
        variable: None,
        echo_version: false,
        applies: always,
        spoil: |_, _, call| call.config["cniVersion"] = json!("9.9.9"),
    },
    BadInput {
        label: "cniVersion older than advertised",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[1],
        level: CaseLevel::Must,
        variable: None,
        echo_version: false,
        applies: has_unadvertised_old_version,
        spoil: |ctx, index, call| {
            call.config["cniVersion"] = json!(unadvertised_old_version(ctx, index))
        },
    },
    BadInput {
        label: "cniVersion not a version",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[1, 6, 7],
        level: CaseLevel::Must,
        variable: None,
        echo_version: false,
        applies: always,
        spoil: |_, _, call| call.config["cniVersion"] = json!("latest"),
    },
    BadInput {
        label: "CNI_COMMAND missing",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[4],
        level: CaseLevel::Should,
        variable: Some("CNI_COMMAND"),
        echo_version: true,
        applies: always,
        spoil: |_, _, call| {
            call.unset("CNI_COMMAND");
        },
    },
    BadInput {
        label: "CNI_COMMAND empty",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[4],
        level: CaseLevel::Should,
        variable: Some("CNI_COMMAND"),
        echo_version: true,
        applies: always,
        spoil: |_, _, call| {
            call.set("CNI_COMMAND", "");
        },
    },
    BadInput {
        label: "CNI_COMMAND unknown",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[4],
        level: CaseLevel::Must,
        variable: Some("CNI_COMMAND"),
        echo_version: true,
        applies: always,
        spoil: |_, _, call| {
            call.set("CNI_COMMAND", "FROBNICATE");
        },
    },
    BadInput {
        label: "CNI_CONTAINERID missing",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[4],
        level: CaseLevel::Must,
        variable: Some("CNI_CONTAINERID"),
        echo_version: true,
        applies: always,
        spoil: |_, _, call| {
            call.unset("CNI_CONTAINERID");
        },
    },
    BadInput {
        label: "CNI_CONTAINERID empty",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[4],
        level: CaseLevel::Must,
        variable: Some("CNI_CONTAINERID"),
        echo_version: true,
        applies: always,
        spoil: |_, _, call| {
            call.set("CNI_CONTAINERID", "");
        },
    },
    BadInput {
        label: "CNI_CONTAINERID starting with -",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[4],
        level: CaseLevel::Should,
        variable: Some("CNI_CONTAINERID"),
        echo_version: true,
        applies: always,
        spoil: |_, _, call| {
            call.set("CNI_CONTAINERID", "-bad");
        },
    },
    BadInput {
        label: "CNI_CONTAINERID with a path",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[4],
        level: CaseLevel::Should,
        variable: Some("CNI_CONTAINERID"),
        echo_version: true,
        applies: always,
        spoil: |_, _, call| {
            call.set("CNI_CONTAINERID", "../../../tmp/cnct-escape");
        },
    },
    BadInput {
        label: "CNI_NETNS missing",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[4],
        level: CaseLevel::Must,
        variable: Some("CNI_NETNS"),
        echo_version: true,
        applies: always,
        spoil: |_, _, call| {
            call.unset("CNI_NETNS");
        },
    },
    BadInput {
        label: "CNI_NETNS empty",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[4],
        level: CaseLevel::Must,
        variable: Some("CNI_NETNS"),
        echo_version: true,
        applies: always,
        spoil: |_, _, call| {
            call.set("CNI_NETNS", "");
        },
    },
    BadInput {
        label: "CNI_NETNS does not exist",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[3, 4],
        level: CaseLevel::Must,
        variable: Some("CNI_NETNS"),
        echo_version: true,
        applies: always,
        spoil: |_, _, call| {
            call.set(
                "CNI_NETNS",
                format!("/var/run/netns/{}", unique_name("cnct-absent-")),
            );
        },
    },
    BadInput {
        label: "CNI_NETNS is a regular file",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[4],
        level: CaseLevel::Must,
        variable: Some("CNI_NETNS"),
        echo_version: true,
        applies: always,
        spoil: |_, _, call| {
            call.set("CNI_NETNS", "/etc/passwd");
        },
    },
    BadInput {
        label: "CNI_NETNS is a mount namespace",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[4],
        level: CaseLevel::Must,
        variable: Some("CNI_NETNS"),
        echo_version: true,
        applies: always,
        spoil: |_, _, call| {
            call.set("CNI_NETNS", "/proc/self/ns/mnt");
        },
    },
    BadInput {
        label: "CNI_NETNS is the plugin's own namespace",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[4],
        level: CaseLevel::Must,
        variable: Some("CNI_NETNS"),
        echo_version: true,
        applies: always,
        spoil: |_, _, call| {
            call.set("CNI_NETNS", "/proc/self/ns/net");
        },
    },
    BadInput {
        label: "CNI_NETNS is a bind mount of the plugin's own namespace",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[4],
        level: CaseLevel::Must,
        variable: Some("CNI_NETNS"),
        echo_version: true,
        applies: always,
        spoil: |ctx, _, call| {
            call.set(
                "CNI_NETNS",
                ctx.runtime.node.netns().path().to_string_lossy(),
            );
        },
    },
    BadInput {
        label: "CNI_ARGS malformed",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[4],
        level: CaseLevel::Should,
        variable: Some("CNI_ARGS"),
        echo_version: true,
        applies: always,
        spoil: |_, _, call| {
            call.set("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME");
        },
    },
    BadInput {
        label: "CNI_ARGS with an unknown key, no IgnoreUnknown",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[4],
        level: CaseLevel::Should,
        variable: Some("CNI_ARGS"),
        echo_version: true,
        applies: always,
        spoil: |_, _, call| {
            call.set("CNI_ARGS", "CNCT_UNKNOWN_KEY=1");
        },
    },
    BadInput {
        label: "CNI_IFNAME missing",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[4],
        level: CaseLevel::Must,
        variable: Some("CNI_IFNAME"),
        echo_version: true,
        applies: always,
        spoil: |_, _, call| {
            call.unset("CNI_IFNAME");
        },
    },
    BadInput {
        label: "CNI_IFNAME empty",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[4],
        level: CaseLevel::Must,
        variable: Some("CNI_IFNAME"),
        echo_version: true,
        applies: always,
        spoil: |_, _, call| {
            call.set("CNI_IFNAME", "");
        },
    },
    BadInput {
        label: "CNI_IFNAME of 16 bytes",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[4],
        level: CaseLevel::Must,
        variable: Some("CNI_IFNAME"),
        echo_version: true,
        applies: always,
        spoil: |_, _, call| {
            call.set("CNI_IFNAME", "eth0123456789abc");
        },
    },
    BadInput {
        label: "CNI_IFNAME \".\"",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[4],
        level: CaseLevel::Must,
        variable: Some("CNI_IFNAME"),
        echo_version: true,
        applies: always,
        spoil: |_, _, call| {
            call.set("CNI_IFNAME", ".");
        },
    },
    BadInput {
        label: "CNI_IFNAME \"..\"",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[4],
        level: CaseLevel::Must,
        variable: Some("CNI_IFNAME"),
        echo_version: true,
        applies: always,
        spoil: |_, _, call| {
            call.set("CNI_IFNAME", "..");
        },
    },
    BadInput {
        label: "CNI_IFNAME with /",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[4],
        level: CaseLevel::Must,
        variable: Some("CNI_IFNAME"),
        echo_version: true,
        applies: always,
        spoil: |_, _, call| {
            call.set("CNI_IFNAME", "eth/0");
        },
    },
    BadInput {
        label: "CNI_IFNAME with :",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[4],
        level: CaseLevel::Must,
        variable: Some("CNI_IFNAME"),
        echo_version: true,
        applies: always,
        spoil: |_, _, call| {
            call.set("CNI_IFNAME", "eth:0");
        },
    },
    BadInput {
        label: "CNI_IFNAME with a space",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[4],
        level: CaseLevel::Must,
        variable: Some("CNI_IFNAME"),
        echo_version: true,
        applies: always,
        spoil: |_, _, call| {
            call.set("CNI_IFNAME", "eth 0");
        },
    },
    BadInput {
        label: "CHECK before 0.4.0",
        verb: "CHECK",
        setup: Setup::Attached,
        codes: &[1],
        level: CaseLevel::Should,
        variable: None,
        echo_version: true,
        applies: before_0_4_0,
        spoil: |_, _, _| {},
    },
    BadInput {
        label: "STATUS before 1.1.0",
        verb: "STATUS",
        setup: Setup::Nothing,
        codes: &[1, 4],
        level: CaseLevel::Should,
        variable: None,
        echo_version: true,
        applies: before_1_1_0,
        spoil: |_, _, _| {},
    },
    BadInput {
        label: "GC before 1.1.0",
        verb: "GC",
        setup: Setup::Nothing,
        codes: &[1, 4],
        level: CaseLevel::Should,
        variable: None,
        echo_version: true,
        applies: before_1_1_0,
        spoil: |_, _, call| call.config["cni.dev/valid-attachments"] = json!([]),
    },
    BadInput {
        label: "CHECK without prevResult",
        verb: "CHECK",
        setup: Setup::Attached,
        codes: &[6, 7],
        level: CaseLevel::Must,
        variable: None,
        echo_version: true,
        applies: from_0_4_0,
        spoil: |_, _, call| remove(call, "prevResult"),
    },
    BadInput {
        label: "CHECK with a prevResult of the wrong shape",
        verb: "CHECK",
        setup: Setup::Attached,
        codes: &[6, 7],
        level: CaseLevel::Must,
        variable: None,
        echo_version: true,
        applies: from_0_4_0,
        spoil: |ctx, _, call| call.config["prevResult"] = wrong_shape_result(ctx),
    },
    BadInput {
        label: "CHECK with a prevResult of version 9.9.9",
        verb: "CHECK",
        setup: Setup::Attached,
        codes: &[1, 6, 7],
        level: CaseLevel::Should,
        variable: None,
        echo_version: true,
        applies: from_0_4_0,
        spoil: |_, _, call| call.config["prevResult"]["cniVersion"] = json!("9.9.9"),
    },
    BadInput {
        label: "ADD with a prevResult of the wrong shape",
        verb: "ADD",
        setup: Setup::Pod,
        codes: &[6, 7],
        level: CaseLevel::Must,
        variable: None,
        echo_version: true,
        applies: chained_only,
        spoil: |ctx, _, call| call.config["prevResult"] = wrong_shape_result(ctx),
    },
    BadInput {
        label: "DEL with malformed JSON",
        verb: "DEL",
        setup: Setup::Attached,
        codes: &[6],
        level: CaseLevel::Must,
        variable: None,
        echo_version: false,
        applies: always,
        spoil: truncated_json,
    },
];

/// A result whose fields have the wrong types: `interfaces` a string, `ips` a number.
fn wrong_shape_result(ctx: &CaseCtx) -> Value {
    json!({ "cniVersion": ctx.version(), "interfaces": "eth0", "ips": 42 })
}

/// One case per bad input and plugin.
pub fn cases(list: &NetworkList) -> Vec<Case> {
    let several = list.plugins.len() > 1;
    let mut cases = Vec::new();
    for bad in BAD_INPUTS {
        for (index, plugin) in list.plugins.iter().enumerate() {
            let codes = codes_text(bad.codes);
            let name = match several {
                true => format!("bad input to {}: {} ({codes})", plugin.kind, bad.label),
                false => format!("bad input: {} ({codes})", bad.label),
            };
            cases.push(Case::new(name, bad.level, move |ctx, f| {
                refused(ctx, f, bad, index)
            }));
        }
    }
    cases
}

/// Sends `bad` to plugin `index` and judges the refusal; undoes an accepted ADD.
fn refused(ctx: &CaseCtx, f: &mut Findings, bad: &BadInput, index: usize) -> Step<()> {
    if let Err(reason) = (bad.applies)(ctx, index) {
        return skip(reason);
    }
    let pod = Pod::new();
    let prev = match bad.setup {
        Setup::Nothing => None,
        Setup::Pod if index == 0 => {
            ctx.remember(&pod.id, None);
            None
        }
        Setup::Pod => {
            let run = ctx.add_first(index, &pod.id);
            judge::chain_success(f, Level::Must, "ADD of the plugins before it", &run)?;
            run.result
        }
        Setup::Attached => Some(ctx.add_ok(f, &pod)?),
    };
    let attachment = (bad.setup != Setup::Nothing).then_some(&pod.id);
    let mut call = ctx.runtime.call(index, bad.verb, attachment, prev.as_ref());
    let good_config = call.config.clone();
    (bad.spoil)(ctx, index, &mut call);
    let links_before = kernel::links(&pod.netns);
    let inv = ctx.exec(&call);
    let expect = Refusal {
        level: ctx.level(bad.level),
        codes: bad.codes,
        input_version: bad.echo_version.then_some(ctx.version()),
        variable: bad.variable,
    };
    judge::refusal(f, ctx.version(), &inv.verb, &inv, &expect);
    if bad.verb == "ADD" {
        if inv.output.status.success() {
            // Accepted: undo it with the same spoiled variables, as the runtime would.
            let mut undo = call.clone();
            undo.set("CNI_COMMAND", "DEL");
            undo.raw_stdin = None;
            undo.config = good_config;
            let _ = ctx.exec(&undo);
        } else {
            let links_after = kernel::links(&pod.netns);
            f.should(links_after == links_before, || {
                format!("the failed ADD left links {links_after:?} in the pod (before: {links_before:?})")
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::BAD_INPUTS;

    #[test]
    fn at_least_twenty_bad_inputs_with_unique_labels() {
        assert!(BAD_INPUTS.len() >= 20);
        let mut labels: Vec<_> = BAD_INPUTS.iter().map(|b| b.label).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), BAD_INPUTS.len());
    }
}
