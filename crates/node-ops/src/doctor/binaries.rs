//! The suite's binaries: the `bin-dir` check (installed, runnable, one release) and
//! `cni-suite-location`, and what each plugin answers to VERSION, as a runtime asks it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::report::Check;
use super::Options;
use crate::bin_dir::is_executable;
use crate::{kernel, runtime, SUITE_PLUGINS};

/// How long a plugin may take to answer VERSION or `--version`.
const EXEC_LIMIT: Duration = Duration::from_secs(5);

/// The suite's binaries in the bin dir: present, executable, answering `--version`, all
/// from one release.
pub(super) fn check_bin_dir(opts: &Options) -> Check {
    const NAME: &str = "bin-dir";
    if !opts.bin_dir.is_dir() {
        return Check::fail(
            NAME,
            format!("{} does not exist", opts.bin_dir.display()),
            "install the plugins (packaging/kubernetes/install-cni.sh, or the .deb)",
        );
    }
    let mut found = Vec::new();
    let mut missing = Vec::new();
    let mut versions = BTreeSet::new();
    for name in SUITE_PLUGINS {
        let p = opts.bin_dir.join(name);
        if !p.exists() {
            missing.push(name);
            continue;
        }
        if !is_executable(&p) {
            return Check::fail(
                NAME,
                format!("{} is not executable", p.display()),
                format!("chmod 0755 {}", p.display()),
            );
        }
        match kernel::run(Command::new(&p).arg("--version").env_clear(), EXEC_LIMIT) {
            Ok((true, out, _)) => {
                let first = out.lines().next().unwrap_or("").trim().to_string();
                if let Some(v) = first.split_whitespace().nth(1) {
                    versions.insert(v.to_string());
                }
                found.push(first);
            }
            Ok((false, _, err)) => {
                return Check::fail(
                    NAME,
                    format!("{} --version failed: {}", p.display(), err.trim()),
                    "reinstall it: the file may be truncated or built for another architecture",
                )
            }
            Err(e) => {
                return Check::fail(
                    NAME,
                    format!("{} does not run: {e}", p.display()),
                    "reinstall it: the file may be truncated or built for another architecture",
                )
            }
        }
    }
    if found.is_empty() {
        return Check::fail(
            NAME,
            format!("no suite plugin in {}", opts.bin_dir.display()),
            "install the plugins (packaging/kubernetes/install-cni.sh, or the .deb)",
        );
    }
    let msg = format!(
        "{} in {}{}",
        found.join(", "),
        opts.bin_dir.display(),
        if missing.is_empty() {
            String::new()
        } else {
            format!(" (not installed: {})", missing.join(", "))
        }
    );
    if versions.len() > 1 || !versions.contains(&opts.suite_version) {
        return Check::warn(
            NAME,
            format!(
                "{msg}; versions differ from each other or from cni-suite {}",
                opts.suite_version
            ),
            "install one release's binaries together (a half-finished upgrade?)",
        );
    }
    Check::ok(NAME, msg)
}

/// Runtimes may exec every file in the bin dir (podman calls VERSION on each): the operator
/// command belongs elsewhere.
pub(super) fn check_location(opts: &Options) -> Check {
    const NAME: &str = "cni-suite-location";
    match std::env::current_exe() {
        Ok(exe)
            if exe
                .parent()
                .is_some_and(|d| runtime::same_dir(d, &opts.bin_dir)) =>
        {
            Check::warn(
                NAME,
                format!(
                    "{} is inside the CNI bin dir: runtimes that probe every plugin will exec it",
                    exe.display()
                ),
                "install cni-suite in /usr/sbin (the .deb does), not in the CNI bin dir",
            )
        }
        Ok(exe) => Check::ok(
            NAME,
            format!("{} is outside the CNI bin dir", exe.display()),
        ),
        Err(e) => Check::skip(NAME, format!("cannot locate this binary: {e}")),
    }
}

/// What VERSION said per binary, so each plugin runs once.
#[derive(Default)]
pub(super) struct VersionCache(BTreeMap<PathBuf, Result<Vec<String>, String>>);

impl VersionCache {
    pub(super) fn supported(&mut self, bin: &Path, asked: &str) -> Result<Vec<String>, String> {
        self.0
            .entry(bin.to_path_buf())
            .or_insert_with(|| plugin_versions(bin, asked))
            .clone()
    }
}

/// Execs `bin` with CNI_COMMAND=VERSION, as a runtime does, and returns `supportedVersions`.
pub fn plugin_versions(bin: &Path, asked: &str) -> Result<Vec<String>, String> {
    let stdin = serde_json::json!({ "cniVersion": asked }).to_string();
    let (ok, out, err) = kernel::run_with_stdin(
        Command::new(bin)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", "VERSION"),
        Some(stdin.as_bytes()),
        EXEC_LIMIT,
    )
    .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(out.trim()).map_err(|_| {
        format!(
            "VERSION printed no JSON (exit ok={ok}): {} {}",
            out.trim(),
            err.trim()
        )
    })?;
    if !ok {
        return Err(format!(
            "VERSION failed: {}",
            v["msg"].as_str().unwrap_or(out.trim())
        ));
    }
    Ok(v["supportedVersions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect())
}
