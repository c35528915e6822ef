//! Verdicts: how one case came out at one spec version, from the MUST and SHOULD checks it made.
//!
//! A case records every requirement it finds violated in [`Findings`], each at the level the
//! spec states it with (RFC 2119 words, as SPEC.md uses them). A violated MUST fails the case
//! and the run; a violated SHOULD only warns. A case can also stop early: [`Stop::Skip`] when
//! it does not apply (with the reason), [`Stop::Failed`] when a violation already recorded
//! makes the rest of the case meaningless.

use std::fmt;

use crate::version_at_least;

/// How binding a requirement is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Good practice ("should"): a violation is a warning.
    Should,
    /// Required ("must"): a violation fails the run.
    Must,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Should => "SHOULD",
            Level::Must => "MUST",
        })
    }
}

/// The level a case is listed under in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaseLevel {
    /// A MUST at every version.
    Must,
    /// A SHOULD at every version.
    Should,
    /// A rule the spec tightened: SHOULD before this version, MUST from it on (1.0.0 made
    /// repeated DELs and DEL without `CNI_NETNS` mandatory).
    MustFrom(&'static str),
}

impl CaseLevel {
    /// The level that applies at spec `version`.
    pub fn at(self, version: &str) -> Level {
        match self {
            CaseLevel::Must => Level::Must,
            CaseLevel::Should => Level::Should,
            CaseLevel::MustFrom(from) if version_at_least(version, from) => Level::Must,
            CaseLevel::MustFrom(_) => Level::Should,
        }
    }

    /// `MUST`, `SHOULD` or `MUST>=1.0.0`, as printed in the table.
    pub fn label(self) -> String {
        match self {
            CaseLevel::Must => "MUST".to_owned(),
            CaseLevel::Should => "SHOULD".to_owned(),
            CaseLevel::MustFrom(from) => format!("MUST>={from}"),
        }
    }
}

/// How a case came out at one version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every check held.
    Pass,
    /// Only SHOULDs were violated; the reason lists them.
    Warn(String),
    /// A MUST was violated; the reason lists the violations.
    Fail(String),
    /// The case does not apply; the reason says why.
    Skip(String),
}

impl Outcome {
    /// `pass`, `warn`, `FAIL` or `skip`, as printed in the table and the JSON report.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Warn(_) => "warn",
            Outcome::Fail(_) => "FAIL",
            Outcome::Skip(_) => "skip",
        }
    }

    /// The reason, empty for a pass.
    pub fn reason(&self) -> &str {
        match self {
            Outcome::Pass => "",
            Outcome::Warn(r) | Outcome::Fail(r) | Outcome::Skip(r) => r,
        }
    }
}

/// Why a case stopped before its end.
#[derive(Debug)]
pub enum Stop {
    /// The case does not apply here, for this reason.
    Skip(String),
    /// A violation recorded in the [`Findings`] ends the case.
    Failed,
}

/// The result of one step of a case; `?` ends the case on [`Stop`].
pub type Step<T> = Result<T, Stop>;

/// Ends a case as not applicable.
pub fn skip<T>(reason: impl Into<String>) -> Step<T> {
    Err(Stop::Skip(reason.into()))
}

/// The violations one case found, in the order found.
#[derive(Debug, Default)]
pub struct Findings {
    violations: Vec<(Level, String)>,
}

impl Findings {
    /// Records a violation of `level` unless `holds`; returns `holds`. `what` describes the
    /// violation and is only built when needed.
    pub fn check(&mut self, level: Level, holds: bool, what: impl FnOnce() -> String) -> bool {
        if !holds {
            self.violations.push((level, what()));
        }
        holds
    }

    /// [`check`](Self::check) at MUST.
    pub fn must(&mut self, holds: bool, what: impl FnOnce() -> String) -> bool {
        self.check(Level::Must, holds, what)
    }

    /// [`check`](Self::check) at SHOULD.
    pub fn should(&mut self, holds: bool, what: impl FnOnce() -> String) -> bool {
        self.check(Level::Should, holds, what)
    }

    /// Records a violation and ends the case: for failures after which nothing else can be
    /// judged (an ADD that failed leaves nothing to CHECK).
    pub fn fatal<T>(&mut self, level: Level, what: String) -> Step<T> {
        self.violations.push((level, what));
        Err(Stop::Failed)
    }

    /// Whether a MUST was violated so far.
    pub fn has_must_violation(&self) -> bool {
        self.violations.iter().any(|(l, _)| *l == Level::Must)
    }

    /// The outcome: a fail if any MUST was violated (SHOULD violations are appended to its
    /// reason), else a warning if any SHOULD was, else the skip the case ended with, else a
    /// pass.
    pub fn outcome(self, stop: Option<Stop>) -> Outcome {
        let join = |level: Level| {
            self.violations
                .iter()
                .filter(|(l, _)| *l == level)
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        };
        let musts = join(Level::Must);
        let shoulds = join(Level::Should);
        match (musts.is_empty(), shoulds.is_empty(), stop) {
            (false, true, _) => Outcome::Fail(musts),
            (false, false, _) => Outcome::Fail(format!("{musts}; also (SHOULD): {shoulds}")),
            (true, false, _) => Outcome::Warn(shoulds),
            (true, true, Some(Stop::Skip(reason))) => Outcome::Skip(reason),
            (true, true, _) => Outcome::Pass,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn must_violations_fail_and_should_violations_warn() {
        let mut f = Findings::default();
        f.should(false, || "slow".into());
        assert_eq!(f.outcome(None), Outcome::Warn("slow".into()));

        let mut f = Findings::default();
        f.should(false, || "slow".into());
        f.must(false, || "broken".into());
        assert_eq!(
            f.outcome(None),
            Outcome::Fail("broken; also (SHOULD): slow".into())
        );

        let f = Findings::default();
        assert_eq!(
            f.outcome(Some(Stop::Skip("n/a".into()))),
            Outcome::Skip("n/a".into())
        );
    }

    #[test]
    fn tightened_rules_are_musts_only_from_their_version() {
        let level = CaseLevel::MustFrom("1.0.0");
        assert_eq!(level.at("0.4.0"), Level::Should);
        assert_eq!(level.at("1.1.0"), Level::Must);
        assert_eq!(level.label(), "MUST>=1.0.0");
    }
}
