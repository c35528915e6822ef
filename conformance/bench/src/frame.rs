//! The frame of `vxlan-bench`'s and `vxlan-scale-bench`'s `main`: `--version`, root, Ctrl-C,
//! the run timed, the report written and printed.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{interrupt, report};

/// A bench as its `main` runs it.
pub struct Bench<'a> {
    /// The binary's name, for `--version`.
    pub name: &'a str,
    /// The one CNI spec version it speaks (`--version`'s second line).
    pub spec_version: &'a str,
    /// Where the report goes, and its files' stem (`<out>/<stem>.json`, ...).
    pub out: &'a Path,
    pub stem: &'a str,
    /// The report's markdown from its JSON and how long the bench took.
    pub markdown: fn(&Value, Duration) -> String,
    /// The chart from the JSON, if the bench draws one.
    pub chart: Option<fn(&Value) -> String>,
}

impl Bench<'_> {
    /// With `version`, prints the version banner and returns `None`. Otherwise needs root,
    /// makes Ctrl-C unwind through the guards, runs `run`, writes its report files, prints
    /// the markdown and returns the JSON. Panics (after cleaning up) when a step fails.
    pub fn main(&self, version: bool, run: impl FnOnce() -> Value) -> Option<Value> {
        if version {
            println!(
                "{}",
                cni_testkit::version_banner(self.name, &[self.spec_version])
            );
            return None;
        }
        cni_testkit::require_root();
        interrupt::install().unwrap_or_else(|e| panic!("{e}"));
        let started = Instant::now();
        let doc = run();
        let md = (self.markdown)(&doc, started.elapsed());
        let svg = self.chart.map(|chart| chart(&doc));
        report::write(self.out, self.stem, &doc, &md, svg.as_deref())
            .unwrap_or_else(|e| panic!("{e}"));
        print!("{md}");
        Some(doc)
    }
}
