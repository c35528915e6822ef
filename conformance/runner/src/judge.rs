//! Judging what a plugin printed: success, a spec error object, or a crash.
//!
//! The rules, from SPEC.md "Errors" and "Error" of each version:
//! - a plugin exits 0 on success and non-zero on failure (MUST);
//! - on failure it prints an error object on stdout with `code` and `msg`. 0.3.x and 0.4.0
//!   define errors that way ("Errors are indicated by a non-zero return code and the following
//!   JSON being printed to stdout"); 1.0.0 relaxed it to "should", so a missing object is a
//!   MUST violation before 1.0.0 and a SHOULD violation from 1.0.0 on;
//! - its `cniVersion` is the one of the configuration (SHOULD, part of the error object);
//! - the code is the well-known one for the problem (SHOULD: the spec reserves 1-99 but does
//!   not bind a code to each input problem, and 100+ are the plugin's own);
//! - code 4's message "must contain the names of invalid variables" (MUST; the variable's
//!   name itself, in the message or its details);
//! - whatever the input, a panic or a stack trace is a bug: a MUST failure in any case.

use std::os::unix::process::ExitStatusExt;

use serde_json::Value;

use crate::runtime::{shorten, ChainRun, Invocation};
use crate::verdict::{Findings, Level, Step};
use crate::{crash_marker, version_at_least};

/// Why an invocation counts as a crash, if it does: killed by a signal, or a crash marker in
/// its output.
pub fn crash(inv: &Invocation) -> Option<String> {
    if let Some(signal) = inv.output.status.signal() {
        return Some(format!(
            "{} {} was killed by signal {signal}",
            inv.plugin, inv.verb
        ));
    }
    let out = &inv.output;
    crash_marker(&out.stdout, &out.stderr).map(|m| {
        format!(
            "{} {} crashed ({m:?} in its output): {}",
            inv.plugin,
            inv.verb,
            inv.describe()
        )
    })
}

/// Records a MUST violation for every crashed step.
pub fn no_crash<'a>(f: &mut Findings, steps: impl IntoIterator<Item = &'a Invocation>) {
    for inv in steps {
        if let Some(why) = crash(inv) {
            f.must(false, || why);
        }
    }
}

/// Expects `inv` to succeed at `level`: exit 0, no crash. Returns stdout as JSON, or
/// `Value::Null` when it is empty; stdout that is not JSON is a violation at `level`.
pub fn success(f: &mut Findings, level: Level, what: &str, inv: &Invocation) -> Step<Value> {
    no_crash(f, [inv]);
    if !inv.output.status.success() {
        return f.fatal(
            level,
            format!("{what}: expected success, {}", inv.describe()),
        );
    }
    if inv.output.stdout.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&inv.output.stdout).or_else(|e| {
        f.fatal(
            level,
            format!("{what}: stdout is not JSON ({e}): {}", inv.describe()),
        )
    })
}

/// Expects every plugin of a list run to succeed at `level`; returns the final result
/// (`Value::Null` for verbs without one).
pub fn chain_success(f: &mut Findings, level: Level, what: &str, run: &ChainRun) -> Step<Value> {
    no_crash(f, &run.steps);
    if let Some(why) = &run.halted {
        let last = run
            .steps
            .last()
            .map(Invocation::describe)
            .unwrap_or_default();
        return f.fatal(level, format!("{what}: {why}: {last}"));
    }
    Ok(run.result.clone().unwrap_or(Value::Null))
}

/// What a refused input must produce.
#[derive(Debug, Clone, Copy)]
pub struct Refusal<'a> {
    /// How binding the refusal itself is.
    pub level: Level,
    /// The well-known codes that fit the problem (several where the spec allows several).
    pub codes: &'a [u64],
    /// The `cniVersion` of the configuration sent, when it was valid and advertised: the
    /// error object should echo it.
    pub input_version: Option<&'a str>,
    /// The `CNI_*` variable at fault, which a code 4 message must name.
    pub variable: Option<&'static str>,
}

/// Judges a call that should have been refused; `version` is the case's spec version, `what`
/// names the call in messages (its verb).
pub fn refusal(f: &mut Findings, version: &str, what: &str, inv: &Invocation, expect: &Refusal) {
    no_crash(f, [inv]);
    if inv.output.status.success() {
        f.check(expect.level, false, || {
            format!("{what} accepted: {}", inv.describe())
        });
        return;
    }
    error_object(f, version, what, inv, expect);
}

/// Judges the error object of a failed call; for failures with no expected code (pass an
/// empty `codes`), only its shape.
pub fn error_object(
    f: &mut Findings,
    version: &str,
    what: &str,
    inv: &Invocation,
    expect: &Refusal,
) {
    let object_level = if version_at_least(version, "1.0.0") {
        Level::Should
    } else {
        Level::Must
    };
    let Some(err) = serde_json::from_str::<Value>(&inv.output.stdout)
        .ok()
        .filter(Value::is_object)
    else {
        f.check(object_level, false, || {
            format!("{what}: no JSON error object on stdout: {}", inv.describe())
        });
        return;
    };
    let Some(code) = err.get("code").and_then(Value::as_u64) else {
        f.check(object_level, false, || {
            format!(
                "{what}: error object has no integer code: {}",
                inv.describe()
            )
        });
        return;
    };
    let msg = err.get("msg").and_then(Value::as_str).unwrap_or_default();
    f.check(object_level, !msg.is_empty(), || {
        format!("{what}: error object has no msg: {}", inv.describe())
    });
    if !expect.codes.is_empty() {
        f.should(expect.codes.contains(&code), || {
            format!(
                "{what}: code {code}, expected {}: {}",
                codes_text(expect.codes),
                shorten(msg, 200)
            )
        });
    }
    match err.get("cniVersion").and_then(Value::as_str) {
        None | Some("") => {
            f.should(false, || format!("{what}: error object has no cniVersion"));
        }
        Some(got) => {
            if let Some(input) = expect.input_version {
                f.should(got == input, || {
                    format!("{what}: error cniVersion {got:?}, the configuration's is {input:?}")
                });
            }
        }
    }
    if let (4, Some(variable)) = (code, expect.variable) {
        let details = err
            .get("details")
            .and_then(Value::as_str)
            .unwrap_or_default();
        f.must(
            names_variable(&format!("{msg} {details}"), variable),
            || {
                format!(
                    "{what}: code 4 message must name the invalid variable {variable}: {:?}",
                    shorten(msg, 200)
                )
            },
        );
    }
}

/// `4`, `4 or 7`, `1, 6 or 7`.
pub fn codes_text(codes: &[u64]) -> String {
    let texts: Vec<String> = codes.iter().map(u64::to_string).collect();
    match texts.split_last() {
        None => "any code".to_owned(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// Whether an error message names `variable`: the spec asks for "the names of invalid
/// variables", so the name itself (`CNI_NETNS`), not a word for it ("namespace"), which a
/// message about a failed step uses as well.
fn names_variable(text: &str, variable: &str) -> bool {
    text.contains(variable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::PluginOutput;
    use crate::verdict::Outcome;
    use std::process::ExitStatus;

    fn inv(code: i32, stdout: &str, stderr: &str) -> Invocation {
        Invocation {
            plugin: "p".into(),
            verb: "ADD".into(),
            output: PluginOutput {
                status: ExitStatus::from_raw(code << 8),
                stdout: stdout.into(),
                stderr: stderr.into(),
            },
        }
    }

    const IFNAME_REFUSAL: Refusal<'static> = Refusal {
        level: Level::Must,
        codes: &[4],
        input_version: Some("1.0.0"),
        variable: Some("CNI_IFNAME"),
    };

    #[test]
    fn a_well_formed_refusal_passes() {
        let mut f = Findings::default();
        let out = r#"{"cniVersion":"1.0.0","code":4,"msg":"CNI_IFNAME \"a/b\" is invalid"}"#;
        refusal(
            &mut f,
            "1.0.0",
            "bad ifname",
            &inv(1, out, ""),
            &IFNAME_REFUSAL,
        );
        assert_eq!(f.outcome(None), Outcome::Pass);
    }

    #[test]
    fn a_wrong_code_warns_and_an_acceptance_or_panic_fails() {
        let mut f = Findings::default();
        let out = r#"{"code":999,"msg":"interface name is too long"}"#;
        refusal(
            &mut f,
            "1.0.0",
            "bad ifname",
            &inv(1, out, ""),
            &IFNAME_REFUSAL,
        );
        assert!(
            matches!(f.outcome(None), Outcome::Warn(w) if w.contains("code 999") && w.contains("no cniVersion"))
        );

        let mut f = Findings::default();
        refusal(
            &mut f,
            "1.0.0",
            "bad ifname",
            &inv(0, "{}", ""),
            &IFNAME_REFUSAL,
        );
        assert!(matches!(f.outcome(None), Outcome::Fail(r) if r.contains("accepted")));

        let mut f = Findings::default();
        let panic = "thread 'main' panicked at src/main.rs:1:1:";
        refusal(
            &mut f,
            "1.0.0",
            "bad ifname",
            &inv(101, "", panic),
            &IFNAME_REFUSAL,
        );
        assert!(matches!(f.outcome(None), Outcome::Fail(r) if r.contains("crashed")));
    }

    #[test]
    fn code_4_must_name_the_variable_and_objects_are_musts_before_1_0_0() {
        let mut f = Findings::default();
        let out = r#"{"cniVersion":"1.0.0","code":4,"msg":"bad input"}"#;
        refusal(
            &mut f,
            "1.0.0",
            "bad ifname",
            &inv(1, out, ""),
            &IFNAME_REFUSAL,
        );
        assert!(matches!(f.outcome(None), Outcome::Fail(r) if r.contains("must name")));

        let mut f = Findings::default();
        refusal(
            &mut f,
            "0.4.0",
            "bad ifname",
            &inv(1, "oops", ""),
            &IFNAME_REFUSAL,
        );
        assert!(matches!(f.outcome(None), Outcome::Fail(_)));
        let mut f = Findings::default();
        refusal(
            &mut f,
            "1.0.0",
            "bad ifname",
            &inv(1, "oops", ""),
            &IFNAME_REFUSAL,
        );
        assert!(matches!(f.outcome(None), Outcome::Warn(_)));
    }

    #[test]
    fn a_word_for_the_variable_is_not_its_name() {
        let netns = Refusal {
            variable: Some("CNI_NETNS"),
            ..IFNAME_REFUSAL
        };
        let judged = |msg: &str| {
            let mut f = Findings::default();
            let out = serde_json::json!({"cniVersion": "1.0.0", "code": 4, "msg": msg});
            refusal(
                &mut f,
                "1.0.0",
                "ADD",
                &inv(1, &out.to_string(), ""),
                &netns,
            );
            f.outcome(None)
        };
        assert!(matches!(
            judged("network namespace /x: No such file or directory"),
            Outcome::Fail(r) if r.contains("must name the invalid variable CNI_NETNS")
        ));
        assert_eq!(judged("CNI_NETNS \"/x\" cannot be opened"), Outcome::Pass);
    }

    #[test]
    fn codes_read_as_a_list() {
        assert_eq!(codes_text(&[4]), "4");
        assert_eq!(codes_text(&[3, 4]), "3 or 4");
        assert_eq!(codes_text(&[1, 6, 7]), "1, 6 or 7");
    }
}
