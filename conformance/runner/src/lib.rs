//! `cni-conformance`: a black-box runner of the CNI spec's cases against any plugin or
//! conflist, like youki's contest runner takes any `--runtime`.
//!
//! It knows the spec, not this suite: its only crate of ours is cni-spec, for the shared
//! `--version` text, and it judges what plugins print with its own reading of the spec
//! ([`shape`], [`judge`]), so a bug in the suite's types cannot hide behind them. What a runtime
//! needs to run plugins is public, for the suite's test kit (cni-testkit) to build on: named
//! network namespaces that delete themselves ([`netns`]) and plugin execution with the CNI
//! environment ([`plugin`]).
//!
//! For every spec version from 0.3.0 to 1.1.0 that was asked for, the runner rewrites the
//! list's `cniVersion` (and suffixes its name, so plugin state per network is the run's own)
//! and runs each case in a fresh node namespace, where plugins are exec'd as if it were the
//! host, with a fresh pod namespace per attachment. Plugins are executed like libcni does
//! ([`runtime`]). Each case records the MUST and SHOULD requirements it finds violated
//! ([`verdict`]); cases that do not apply are skipped with the reason, and every case of a
//! version some plugin does not advertise is skipped. The [`report`] is a table of case x
//! version; the run fails when any MUST was violated.
//!
//! A panic inside the runner itself (an `ip` command failing, a plugin outliving its timeout)
//! fails that case only, with the panic's message as the reason.

pub mod cases;
pub mod cli;
pub mod judge;
pub mod kernel;
pub mod netns;
pub mod network;
pub mod plugin;
pub mod report;
pub mod runtime;
pub mod shape;
pub mod verdict;

use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use serde_json::json;

use crate::cases::{Case, CaseCtx};
use crate::cli::{Command, Options, Target, USAGE};
use crate::netns::Node;
use crate::network::{LoadError, NetworkList};
use crate::report::{PluginInfo, Report, Row};
use crate::runtime::PluginCall;
use crate::verdict::{Findings, Outcome};

/// The CNI spec versions the runner knows, oldest first (the ones the suite's plugins speak too);
/// the cases loop over these.
pub const SPEC_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// `--version` of this package's binaries: `<name> <version>`, then the spec versions it
/// speaks, in the shape every binary of the suite prints (shared through cni-spec).
pub fn version_banner(name: &str, spoken: &[&str]) -> String {
    format!(
        "{name} {}",
        cni_spec::version_text(env!("CARGO_PKG_VERSION"), spoken)
    )
}

/// Longest interface name the kernel accepts (IFNAMSIZ 16, minus the terminating NUL).
pub const MAX_IFNAME_LEN: usize = 15;

/// Markers of a crash in a plugin's stdout or stderr: a Rust panic ("panicked"), a Rust
/// backtrace, a Go panic's goroutine dump, a Python traceback, and the panic guard of our own
/// plugins' skeleton (cni-skel), which turns a panic into code 199 with "internal error (a
/// bug" on stdout and "internal error: <message> at <file:line>" on stderr, so the word
/// "panicked" never appears.
pub const CRASH_MARKERS: [&str; 5] = [
    "panicked",
    "stack backtrace:",
    "goroutine 1 [",
    "Traceback (most recent call last)",
    "internal error (a bug",
];

/// The crash marker found in a plugin's output, if any (see [`CRASH_MARKERS`]).
pub fn crash_marker(stdout: &str, stderr: &str) -> Option<&'static str> {
    CRASH_MARKERS
        .iter()
        .copied()
        .find(|m| stdout.contains(m) || stderr.contains(m))
}

/// A name no other test, in this process or another, uses at the same time: `prefix` followed
/// by the process id and a per-process counter, in hex, like `cnit-node-1f3a-2`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}-{n:x}", std::process::id())
}

/// A [`unique_name`] that is also a valid interface name (bridge names, network names that
/// end up in link names): panics if it would be longer than [`MAX_IFNAME_LEN`], so keep
/// prefixes to 5 bytes or fewer.
pub fn unique_link_name(prefix: &str) -> String {
    let name = unique_name(prefix);
    assert!(
        name.len() <= MAX_IFNAME_LEN,
        "unique name {name:?} is longer than {MAX_IFNAME_LEN} bytes: use a shorter prefix"
    );
    name
}

/// Whether spec version `version` is `min` or later (`"0.4.0"`-style dotted triples).
///
/// Panics on a malformed version, which would be a bug in the test itself.
pub fn version_at_least(version: &str, min: &str) -> bool {
    fn parse(v: &str) -> [u32; 3] {
        let parts: Vec<u32> = v
            .split('.')
            .map(|p| {
                p.parse()
                    .unwrap_or_else(|_| panic!("bad spec version {v:?}"))
            })
            .collect();
        parts
            .try_into()
            .unwrap_or_else(|_| panic!("spec version {v:?} is not major.minor.patch"))
    }
    parse(version) >= parse(min)
}

/// Why a run could not start or finish (exit status 2).
#[derive(Debug)]
pub enum RunnerError {
    /// The command line is wrong.
    Usage(cli::UsageError),
    /// Not root: namespaces cannot be created.
    NotRoot,
    /// The configuration or a plugin cannot be loaded.
    Load(LoadError),
    /// The JSON report cannot be written.
    WriteJson {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl fmt::Display for RunnerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunnerError::Usage(e) => write!(f, "{e}"),
            RunnerError::NotRoot => {
                f.write_str("must run as root: every case creates network namespaces")
            }
            RunnerError::Load(e) => write!(f, "{e}"),
            RunnerError::WriteJson { path, source } => {
                write!(f, "cannot write {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for RunnerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RunnerError::Usage(e) => Some(e),
            RunnerError::Load(e) => Some(e),
            RunnerError::WriteJson { source, .. } => Some(source),
            RunnerError::NotRoot => None,
        }
    }
}

/// The binary's `main`: parses `args` (without the program name), runs, prints the table on
/// stdout, writes the JSON report, and returns 0 (no MUST failed), 1 (one did) or 2 (usage or
/// setup error, printed on stderr).
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let options = match cli::parse(args, std::env::var_os("CNI_PATH")) {
        Ok(Command::Help) => {
            let _ = writeln!(std::io::stdout(), "{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            let text = crate::version_banner("cni-conformance", &crate::SPEC_VERSIONS);
            let _ = writeln!(std::io::stdout(), "{text}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Run(options)) => options,
        Err(e) => {
            eprintln!("cni-conformance: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run_and_report(&options) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("cni-conformance: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs, prints the table, writes the JSON; returns whether no MUST failed.
fn run_and_report(options: &Options) -> Result<bool, RunnerError> {
    let report = run(options)?;
    let mut stdout = std::io::stdout().lock();
    // A closed stdout (`| head`) must not hide the verdict in the exit status.
    let _ = report.print(&mut stdout);
    let _ = stdout.flush();
    if let Some(path) = &options.json {
        let text = serde_json::to_string_pretty(&report.to_json()).unwrap_or_default();
        std::fs::write(path, text + "\n").map_err(|source| RunnerError::WriteJson {
            path: path.clone(),
            source,
        })?;
    }
    Ok(report.passed())
}

/// Runs every case at every version of `options` and returns the report.
pub fn run(options: &Options) -> Result<Report, RunnerError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(RunnerError::NotRoot);
    }
    let list = match &options.target {
        Target::Conflist(path) => NetworkList::from_conflist(path, &options.cni_path),
        Target::Plugin { binary, config } => {
            NetworkList::from_plugin(binary, config, &options.cni_path)
        }
    }
    .map_err(RunnerError::Load)?;
    let run_tag = format!("cc{:x}", std::process::id());
    let _quiet = QuietPanics::install();

    let probed: Vec<Result<Vec<String>, String>> = (0..list.plugins.len())
        .map(|index| probe_supported_versions(&list, index, &options.versions))
        .collect();
    let supported: Vec<Vec<String>> = probed
        .iter()
        .map(|p| p.clone().unwrap_or_default())
        .collect();
    let plugins = list
        .plugins
        .iter()
        .zip(&probed)
        .map(|(p, s)| PluginInfo {
            kind: p.kind.clone(),
            binary: p.binary.display().to_string(),
            supported: s.clone(),
        })
        .collect();
    let mut report = Report::new(&list, &run_tag, &options.versions, plugins);
    let cases = cases::all(&list);
    report.rows = cases
        .iter()
        .map(|c| Row {
            case: c.name.clone(),
            level: c.level,
            outcomes: Vec::new(),
        })
        .collect();

    for &version in &options.versions {
        let net_name = format!("{}-{run_tag}-{}", list.name, version.replace('.', ""));
        let unadvertised = unadvertised_reason(&list, &probed, version);
        eprintln!(
            "cni-conformance: {}: running {} cases at {version}",
            list.kinds(),
            cases.len()
        );
        for (case, row) in cases.iter().zip(report.rows.iter_mut()) {
            let outcome = match (&unadvertised, case.needs_support) {
                (Some(reason), true) => Outcome::Skip(reason.clone()),
                _ => run_case(
                    case,
                    &list,
                    version,
                    &net_name,
                    &supported,
                    options.parallel,
                ),
            };
            row.outcomes.push(outcome);
        }
    }
    Ok(report)
}

/// Why `version` cannot be run, if a plugin does not advertise it.
fn unadvertised_reason(
    list: &NetworkList,
    probed: &[Result<Vec<String>, String>],
    version: &str,
) -> Option<String> {
    let reasons: Vec<String> = list
        .plugins
        .iter()
        .zip(probed)
        .filter_map(|(plugin, supported)| match supported {
            Ok(versions) if versions.iter().any(|v| v == version) => None,
            Ok(versions) => Some(format!(
                "{} does not advertise {version} (supportedVersions: {})",
                plugin.kind,
                versions.join(", ")
            )),
            Err(why) => Some(format!("{}: VERSION failed ({why})", plugin.kind)),
        })
        .collect();
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

/// Asks plugin `index` for its `supportedVersions`, sending each requested version in turn
/// (newest first) until one VERSION call succeeds; the VERSION case judges the answers.
fn probe_supported_versions(
    list: &NetworkList,
    index: usize,
    versions: &[&'static str],
) -> Result<Vec<String>, String> {
    let attempt = panic::catch_unwind(AssertUnwindSafe(|| {
        let node = Node::new();
        let plugin = &list.plugins[index];
        let mut last_error = String::new();
        for version in versions.iter().rev() {
            let mut call = PluginCall {
                plugin: plugin.kind.clone(),
                program: plugin.binary.clone(),
                env: Default::default(),
                config: json!({ "cniVersion": version }),
                raw_stdin: None,
            };
            call.set("CNI_COMMAND", "VERSION");
            let inv = call.exec(&node);
            let listed = serde_json::from_str::<serde_json::Value>(&inv.output.stdout)
                .ok()
                .and_then(|v| v["supportedVersions"].as_array().cloned())
                .map(|l| {
                    l.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect::<Vec<_>>()
                });
            match listed {
                Some(listed) if inv.output.status.success() => return Ok(listed),
                _ => last_error = inv.describe(),
            }
        }
        Err(last_error)
    }));
    attempt.unwrap_or_else(|payload| Err(panic_message(&payload)))
}

/// Runs one case at one version in a fresh context; DELs whatever it left attached.
fn run_case(
    case: &Case,
    list: &NetworkList,
    version: &'static str,
    net_name: &str,
    supported: &[Vec<String>],
    parallel: usize,
) -> Outcome {
    let ctx = match panic::catch_unwind(AssertUnwindSafe(|| {
        CaseCtx::new(list, version, net_name.to_owned(), supported, parallel)
    })) {
        Ok(ctx) => ctx,
        Err(payload) => return Outcome::Fail(format!("runner error: {}", panic_message(&payload))),
    };
    let mut findings = Findings::default();
    let ran = panic::catch_unwind(AssertUnwindSafe(|| (case.run)(&ctx, &mut findings)));
    let cleaned = panic::catch_unwind(AssertUnwindSafe(|| ctx.cleanup()));
    let outcome = match ran {
        Ok(step) => findings.outcome(step.err()),
        Err(payload) => {
            findings.must(false, || {
                format!("runner error: {}", panic_message(&payload))
            });
            findings.outcome(None)
        }
    };
    if let Err(payload) = cleaned {
        eprintln!(
            "cni-conformance: [{version}] {}: cleanup failed: {}",
            case.name,
            panic_message(&payload)
        );
    }
    outcome
}

/// Where and why the last panic happened, recorded by [`QuietPanics`].
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// The message of a caught panic, with its location when the hook recorded it.
fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "unknown panic".to_owned());
    let location = LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()).take();
    match location {
        Some(at) => format!("{message} (at {at})"),
        None => message,
    }
}

/// Replaces the panic hook for the run: the runner catches its own panics and reports them as
/// case failures, so the default hook's "thread panicked" lines would only confuse a reader
/// of the table (and anyone grepping it for plugin panics). Restores the hook when dropped.
struct QuietPanics {
    previous: Option<PanicHook>,
}

/// A panic hook, as `std::panic::take_hook` returns it.
type PanicHook = Box<dyn Fn(&panic::PanicHookInfo<'_>) + Sync + Send + 'static>;

impl QuietPanics {
    fn install() -> QuietPanics {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(|info| {
            let at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()));
            *LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner()) = at;
        }));
        QuietPanics {
            previous: Some(previous),
        }
    }
}

impl Drop for QuietPanics {
    fn drop(&mut self) {
        if let Some(previous) = self.previous.take() {
            panic::set_hook(previous);
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert!(version_at_least("1.0.0", "0.4.0"));
        assert!(version_at_least("0.4.0", "0.4.0"));
        assert!(!version_at_least("0.3.1", "0.4.0"));
        assert!(version_at_least("0.10.0", "0.4.0"));
    }

    #[test]
    fn unique_names_differ_and_fit_an_interface_name() {
        let a = unique_link_name("kb");
        let b = unique_link_name("kb");
        assert_ne!(a, b);
        assert!(a.len() <= MAX_IFNAME_LEN);
    }
}
