//! The command line of `cni-conformance`.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use crate::SPEC_VERSIONS;

/// How many ADDs the parallel case runs at once unless told otherwise.
pub const DEFAULT_PARALLEL: usize = 20;

/// The usage text of `--help` and of usage errors.
pub const USAGE: &str = "\
usage: cni-conformance --conflist <file> --cni-path <dir[:dir...]> [options]
       cni-conformance --plugin <binary> --config <file> [--cni-path <dir[:dir...]>] [options]

Runs the CNI spec's cases against a network configuration list (or one plugin), in fresh
network namespaces, at every spec version from 0.3.0 to 1.1.0 that its plugins advertise, and
prints a table of case x version. Exits 0 when no MUST failed, 1 when one did, 2 on a usage or
setup error. Needs root.

options:
  --conflist <file>     a conflist (or a single network config, run as a list of one); each
                        plugin is the executable named by its type on the CNI path
  --plugin <binary>     the executable of a single plugin, with --config <file> its config
  --cni-path <dirs>     where plugins and their delegates are (CNI_PATH); default $CNI_PATH,
                        and with --plugin the binary's directory
  --versions <list>     spec versions to run, comma-separated (default all: 0.3.0,0.3.1,0.4.0,1.0.0,1.1.0)
  --parallel <n>        concurrent ADDs in the parallel case (default 20)
  --json <file>         also write the report as JSON
  -h, --help            this text
  -V, --version         the runner's version and the spec versions it tests

The network name gets a per-run suffix at every version, so state a plugin keeps per network
(IPAM leases, which GC releases) is the run's own; state directories the configuration names
(dataDir...) are used as they are.";

/// What to run against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A conflist file.
    Conflist(PathBuf),
    /// One plugin executable and its configuration file.
    Plugin {
        /// The executable.
        binary: PathBuf,
        /// Its configuration.
        config: PathBuf,
    },
}

/// The options of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// What to run against.
    pub target: Target,
    /// `CNI_PATH`, split.
    pub cni_path: Vec<PathBuf>,
    /// The spec versions to run, oldest first.
    pub versions: Vec<&'static str>,
    /// Concurrent ADDs of the parallel case.
    pub parallel: usize,
    /// Where to write the JSON report.
    pub json: Option<PathBuf>,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A run.
    Run(Options),
    /// `--help`.
    Help,
    /// `--version`.
    Version,
}

/// A command line the runner cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Parses the arguments after the program name; `env_cni_path` is `$CNI_PATH`.
pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    env_cni_path: Option<OsString>,
) -> Result<Command, UsageError> {
    let mut conflist = None;
    let mut plugin = None;
    let mut config = None;
    let mut cni_path = None;
    let mut versions = None;
    let mut parallel = None;
    let mut json = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let arg = arg
            .into_string()
            .map_err(|a| UsageError(format!("argument {a:?} is not UTF-8")))?;
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(OsString::from(value)))
            }
            _ => (arg, None),
        };
        if flag == "-h" || flag == "--help" {
            return Ok(Command::Help);
        }
        if flag == "-V" || flag == "--version" {
            return Ok(Command::Version);
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| UsageError(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--conflist" => conflist = Some(PathBuf::from(value()?)),
            "--plugin" => plugin = Some(PathBuf::from(value()?)),
            "--config" => config = Some(PathBuf::from(value()?)),
            "--cni-path" => cni_path = Some(value()?),
            "--versions" => versions = Some(parse_versions(&value()?.to_string_lossy())?),
            "--parallel" => parallel = Some(parse_parallel(&value()?.to_string_lossy())?),
            "--json" => json = Some(PathBuf::from(value()?)),
            other => return Err(UsageError(format!("unknown argument {other:?}"))),
        }
    }
    let target = match (conflist, plugin, config) {
        (Some(file), None, None) => Target::Conflist(file),
        (None, Some(binary), Some(config)) => Target::Plugin { binary, config },
        (None, Some(_), None) => return Err(UsageError("--plugin needs --config".into())),
        (None, None, Some(_)) => return Err(UsageError("--config needs --plugin".into())),
        (None, None, None) => {
            return Err(UsageError(
                "give --conflist, or --plugin and --config".into(),
            ))
        }
        _ => {
            return Err(UsageError(
                "--conflist and --plugin exclude each other".into(),
            ))
        }
    };
    let cni_path = match (cni_path.or(env_cni_path), &target) {
        (Some(path), _) => std::env::split_paths(&path)
            .filter(|p| !p.as_os_str().is_empty())
            .collect(),
        (None, Target::Plugin { binary, .. }) => binary
            .parent()
            .map(|d| vec![d.to_path_buf()])
            .unwrap_or_default(),
        (None, Target::Conflist(_)) => Vec::new(),
    };
    if cni_path.is_empty() {
        return Err(UsageError(
            "--cni-path is needed (or CNI_PATH in the environment)".into(),
        ));
    }
    Ok(Command::Run(Options {
        target,
        cni_path,
        versions: versions.unwrap_or_else(|| SPEC_VERSIONS.to_vec()),
        parallel: parallel.unwrap_or(DEFAULT_PARALLEL),
        json,
    }))
}

/// A comma-separated list of spec versions the runner knows, returned oldest first.
fn parse_versions(text: &str) -> Result<Vec<&'static str>, UsageError> {
    let mut versions = Vec::new();
    for wanted in text.split(',').map(str::trim).filter(|v| !v.is_empty()) {
        let known = SPEC_VERSIONS
            .iter()
            .find(|v| **v == wanted)
            .ok_or_else(|| {
                UsageError(format!(
                    "spec version {wanted:?} is not one of {}",
                    SPEC_VERSIONS.join(", ")
                ))
            })?;
        if !versions.contains(known) {
            versions.push(*known);
        }
    }
    if versions.is_empty() {
        return Err(UsageError("--versions lists no version".into()));
    }
    versions.sort_by_key(|v| SPEC_VERSIONS.iter().position(|k| k == v));
    Ok(versions)
}

fn parse_parallel(text: &str) -> Result<usize, UsageError> {
    match text.parse::<usize>() {
        Ok(n) if (2..=500).contains(&n) => Ok(n),
        _ => Err(UsageError(format!(
            "--parallel {text:?} is not a number from 2 to 500"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn conflist_runs_take_every_option() {
        let cmd = parse(
            args(&[
                "--conflist",
                "n.conflist",
                "--cni-path=/a:/b",
                "--versions",
                "1.1.0,0.3.0",
                "--parallel",
                "8",
                "--json",
                "r.json",
            ]),
            None,
        );
        assert_eq!(
            cmd,
            Ok(Command::Run(Options {
                target: Target::Conflist("n.conflist".into()),
                cni_path: vec!["/a".into(), "/b".into()],
                versions: vec!["0.3.0", "1.1.0"],
                parallel: 8,
                json: Some("r.json".into()),
            }))
        );
    }

    #[test]
    fn plugin_runs_default_to_the_binary_directory_and_all_versions() {
        let Ok(Command::Run(opts)) = parse(
            args(&["--plugin", "/opt/cni/bin/x", "--config", "x.conf"]),
            None,
        ) else {
            panic!("expected a run");
        };
        assert_eq!(opts.cni_path, vec![PathBuf::from("/opt/cni/bin")]);
        assert_eq!(opts.versions, SPEC_VERSIONS.to_vec());
        assert_eq!(opts.parallel, DEFAULT_PARALLEL);
    }

    #[test]
    fn bad_command_lines_say_what_is_wrong() {
        let err = |a: &[&str]| parse(args(a), None).expect_err("usage error").0;
        assert!(err(&["--conflist", "x"]).contains("--cni-path"));
        assert!(
            err(&["--conflist", "x", "--cni-path", "/a", "--versions", "0.2.0"]).contains("0.2.0")
        );
        assert!(err(&["--plugin", "x"]).contains("--config"));
        assert!(err(&["--frob"]).contains("unknown"));
        assert_eq!(parse(args(&["--help"]), None), Ok(Command::Help));
        assert_eq!(
            parse(args(&["--conflist", "x", "-V"]), None),
            Ok(Command::Version)
        );
        assert!(parse(args(&["--conflist", "x"]), Some("/opt/cni/bin".into())).is_ok());
    }
}
