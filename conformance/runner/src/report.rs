//! The run's report: a table of case × version with pass, warn, FAIL or skip, the reasons
//! below it, and the same as JSON for `--json`.

use std::collections::BTreeMap;
use std::io::{self, Write};

use serde_json::{json, Value};

use crate::network::NetworkList;
use crate::verdict::{CaseLevel, Outcome};

/// One plugin of the list, as the report describes it.
#[derive(Debug, Clone)]
pub struct PluginInfo {
    /// `type`.
    pub kind: String,
    /// The executable run.
    pub binary: String,
    /// Its VERSION's `supportedVersions`, or why VERSION could not tell.
    pub supported: Result<Vec<String>, String>,
}

/// One row: a case and its outcome at each version, in the report's version order.
#[derive(Debug, Clone)]
pub struct Row {
    /// The case's name.
    pub case: String,
    /// Its level.
    pub level: CaseLevel,
    /// One outcome per version.
    pub outcomes: Vec<Outcome>,
}

/// Everything a run found.
#[derive(Debug, Clone)]
pub struct Report {
    /// The configuration file.
    pub source: String,
    /// The network's name as written (plugins saw it with a per-run suffix).
    pub network: String,
    /// The suffix added to the network's name at every version.
    pub run_tag: String,
    /// `CNI_PATH`.
    pub cni_path: String,
    /// The plugins.
    pub plugins: Vec<PluginInfo>,
    /// The versions run, oldest first.
    pub versions: Vec<&'static str>,
    /// The rows, in table order.
    pub rows: Vec<Row>,
}

/// Counts of outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Cells that passed.
    pub pass: usize,
    /// Cells with only SHOULD violations.
    pub warn: usize,
    /// Cells with a MUST violation.
    pub fail: usize,
    /// Cells that did not apply.
    pub skip: usize,
}

impl Report {
    /// A report with no rows yet.
    pub fn new(
        list: &NetworkList,
        run_tag: &str,
        versions: &[&'static str],
        plugins: Vec<PluginInfo>,
    ) -> Report {
        Report {
            source: list.source.display().to_string(),
            network: list.name.clone(),
            run_tag: run_tag.to_owned(),
            cni_path: list.cni_path_var(),
            plugins,
            versions: versions.to_vec(),
            rows: Vec::new(),
        }
    }

    /// How many cells came out each way.
    pub fn tally(&self) -> Tally {
        let mut t = Tally::default();
        for outcome in self.rows.iter().flat_map(|r| &r.outcomes) {
            match outcome {
                Outcome::Pass => t.pass += 1,
                Outcome::Warn(_) => t.warn += 1,
                Outcome::Fail(_) => t.fail += 1,
                Outcome::Skip(_) => t.skip += 1,
            }
        }
        t
    }

    /// Whether no MUST was violated: the run's verdict and exit status.
    pub fn passed(&self) -> bool {
        self.tally().fail == 0
    }

    /// The cells with `label` (`FAIL`, `warn`, `skip`) as `(version, case, reason)`.
    fn cells(&self, label: &str) -> Vec<(&'static str, &str, &str)> {
        let mut cells = Vec::new();
        for row in &self.rows {
            for (version, outcome) in self.versions.iter().zip(&row.outcomes) {
                if outcome.label() == label {
                    cells.push((*version, row.case.as_str(), outcome.reason()));
                }
            }
        }
        cells
    }

    /// Prints the header, the table, failures, warnings, skips grouped by reason, and the
    /// verdict.
    pub fn print(&self, out: &mut impl Write) -> io::Result<()> {
        writeln!(out, "cni-conformance: {} ({})", self.network, self.source)?;
        for p in &self.plugins {
            let supported = match &p.supported {
                Ok(v) => v.join(", "),
                Err(why) => format!("unknown: {why}"),
            };
            writeln!(
                out,
                "  plugin {}: {} (supportedVersions: {supported})",
                p.kind, p.binary
            )?;
        }
        writeln!(
            out,
            "  CNI_PATH={}; network name suffix -{}-<version>",
            self.cni_path, self.run_tag
        )?;
        writeln!(out)?;

        let case_width = self
            .rows
            .iter()
            .map(|r| r.case.chars().count())
            .max()
            .unwrap_or(4)
            .max(4);
        let level_width = self
            .rows
            .iter()
            .map(|r| r.level.label().len())
            .max()
            .unwrap_or(5)
            .max(5);
        write!(out, "{:case_width$}  {:level_width$}", "case", "level")?;
        for v in &self.versions {
            write!(out, "  {v:>6}")?;
        }
        writeln!(out)?;
        for row in &self.rows {
            write!(
                out,
                "{:case_width$}  {:level_width$}",
                row.case,
                row.level.label()
            )?;
            for outcome in &row.outcomes {
                write!(out, "  {:>6}", outcome.label())?;
            }
            writeln!(out)?;
        }

        let fails = self.cells("FAIL");
        if !fails.is_empty() {
            writeln!(out, "\nFailures (MUST):")?;
            for (version, case, reason) in &fails {
                writeln!(out, "  [{version}] {case}: {reason}")?;
            }
        }
        let warns = self.cells("warn");
        if !warns.is_empty() {
            writeln!(out, "\nWarnings (SHOULD):")?;
            for (version, case, reason) in &warns {
                writeln!(out, "  [{version}] {case}: {reason}")?;
            }
        }
        let skips = self.cells("skip");
        if !skips.is_empty() {
            writeln!(out, "\nSkipped:")?;
            let mut by_reason: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
            for (version, case, reason) in &skips {
                by_reason.entry(reason).or_default().push((version, case));
            }
            for (reason, cells) in by_reason {
                let versions: Vec<&str> = self
                    .versions
                    .iter()
                    .copied()
                    .filter(|v| cells.iter().any(|(cv, _)| cv == v))
                    .collect();
                let mut cases: Vec<&str> = cells.iter().map(|(_, c)| *c).collect();
                cases.sort_unstable();
                cases.dedup();
                let which = if cases.len() > 4 {
                    format!("{} cases", cases.len())
                } else {
                    cases.join(", ")
                };
                writeln!(out, "  [{}] {which}: {reason}", versions.join(", "))?;
            }
        }
        let t = self.tally();
        writeln!(
            out,
            "\n{}: {} failed (MUST), {} warnings (SHOULD), {} passed, {} skipped",
            if self.passed() { "PASS" } else { "FAIL" },
            t.fail,
            t.warn,
            t.pass,
            t.skip
        )
    }

    /// The report as JSON: the header fields, one entry per cell in `results`, the tally and
    /// the verdict.
    pub fn to_json(&self) -> Value {
        let results: Vec<Value> = self
            .rows
            .iter()
            .flat_map(|row| {
                self.versions
                    .iter()
                    .zip(&row.outcomes)
                    .map(move |(version, outcome)| {
                        json!({
                            "case": row.case,
                            "level": row.level.label(),
                            "version": version,
                            "outcome": outcome.label().to_ascii_lowercase(),
                            "reason": outcome.reason(),
                        })
                    })
            })
            .collect();
        let plugins: Vec<Value> = self
            .plugins
            .iter()
            .map(|p| match &p.supported {
                Ok(v) => json!({"type": p.kind, "binary": p.binary, "supportedVersions": v}),
                Err(why) => json!({"type": p.kind, "binary": p.binary, "versionError": why}),
            })
            .collect();
        let t = self.tally();
        json!({
            "source": self.source,
            "network": self.network,
            "runTag": self.run_tag,
            "cniPath": self.cni_path,
            "versions": self.versions,
            "plugins": plugins,
            "results": results,
            "summary": {"pass": t.pass, "warn": t.warn, "fail": t.fail, "skip": t.skip},
            "passed": self.passed(),
        })
    }
}
