//! The doctor's verdicts: one [`Check`] per thing looked at, printed for people or as JSON.

use std::fmt::Write as _;

use serde::Serialize;

/// The verdict of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// As it should be.
    Ok,
    /// Not needed here, or cannot be checked from this node; the message says why.
    Skip,
    /// Works now but needs attention.
    Warn,
    /// Broken: pods on this node are (or will be) affected.
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Skip => "skip",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One check: what was looked at, the verdict, what was found, and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable identifier, like `bridge:cbr0` or `ip-forward`.
    pub name: String,
    /// The verdict.
    pub status: Status,
    /// What was found.
    pub message: String,
    /// How to fix it (warn and fail only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Check {
    fn new(name: impl Into<String>, status: Status, message: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status,
            message: message.into(),
            hint: None,
        }
    }

    /// A passing check.
    pub fn ok(name: impl Into<String>, message: impl Into<String>) -> Check {
        Check::new(name, Status::Ok, message)
    }

    /// A check that does not apply, with the reason.
    pub fn skip(name: impl Into<String>, reason: impl Into<String>) -> Check {
        Check::new(name, Status::Skip, reason)
    }

    /// A warning with its fix.
    pub fn warn(
        name: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Check {
        Check::new(name, Status::Warn, message).with_hint(hint)
    }

    /// A failure with its fix.
    pub fn fail(
        name: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Check {
        Check::new(name, Status::Fail, message).with_hint(hint)
    }

    fn with_hint(mut self, hint: impl Into<String>) -> Check {
        let hint = hint.into();
        self.hint = (!hint.is_empty()).then_some(hint);
        self
    }
}

/// Every check of one doctor run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// In the order they ran.
    pub checks: Vec<Check>,
}

/// Counts per verdict, for the summary line and JSON.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Passed.
    pub ok: usize,
    /// Skipped.
    pub skip: usize,
    /// Warnings.
    pub warn: usize,
    /// Failures.
    pub fail: usize,
}

impl Report {
    /// Adds a check.
    pub fn push(&mut self, check: Check) {
        self.checks.push(check);
    }

    /// Counts per verdict.
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for c in &self.checks {
            match c.status {
                Status::Ok => s.ok += 1,
                Status::Skip => s.skip += 1,
                Status::Warn => s.warn += 1,
                Status::Fail => s.fail += 1,
            }
        }
        s
    }

    /// True when no check failed.
    pub fn passed(&self) -> bool {
        self.summary().fail == 0
    }

    /// The check named `name`, if it ran.
    pub fn get(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// One line per check, hints indented below, and a summary.
    pub fn to_text(&self) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let mut out = String::new();
        for c in &self.checks {
            let _ = writeln!(
                out,
                "[{:>4}] {:<width$}  {}",
                c.status.label(),
                c.name,
                c.message
            );
            if let Some(h) = &c.hint {
                let _ = writeln!(out, "       {:<width$}  fix: {h}", "");
            }
        }
        let s = self.summary();
        let _ = writeln!(
            out,
            "\n{} ok, {} skipped, {} warnings, {} failures",
            s.ok, s.skip, s.warn, s.fail
        );
        out
    }

    /// `{"passed", "summary", "checks": [{name, status, message, hint?}]}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "passed": self.passed(),
            "summary": self.summary(),
            "checks": self.checks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_fails_the_report_and_shows_its_fix() {
        let mut r = Report::default();
        r.push(Check::ok("a", "fine"));
        r.push(Check::skip("b", "no kubeconfig"));
        assert!(r.passed());
        r.push(Check::fail("c", "broken", "do this"));
        assert!(!r.passed());
        let text = r.to_text();
        assert!(text.contains("[FAIL] c"), "{text}");
        assert!(text.contains("fix: do this"), "{text}");
        let json = r.to_json();
        assert_eq!(json["summary"]["fail"], 1);
        assert_eq!(json["checks"][2]["status"], "fail");
        assert!(json["checks"][0].get("hint").is_none());
    }
}
