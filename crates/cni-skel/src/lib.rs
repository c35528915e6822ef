//! CNI plugin skeleton: reads `CNI_*` and stdin, calls one [`Plugin`], prints a result or the
//! spec's error object, and logs one line per verb.
//!
//! This is the only place where errors become the spec's error object: plugins return their
//! own error type, which says its [`Code`] through [`ErrorCode`] (one `impl` per crate), and
//! [`error_object`] builds the message and details from it.

pub mod log_file;
pub mod sandbox;

use std::io::{Read, Write};
use std::sync::OnceLock;
use std::time::Instant;

use cni_spec::{
    Attachment, CniError, CniResult, Code, Command, Env, ErrorCode, NetConf, Version, SUPPORTED,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use cni_spec;

/// What ADD prints.
#[derive(Debug)]
pub enum AddOutput {
    /// What this plugin set up; printed merged onto the `prevResult` when there is one.
    Result(CniResult),
    /// The `prevResult` received, unchanged (chained plugins that add nothing).
    PrevResult,
}

/// One invocation: the verb, its environment and the parsed configuration.
#[derive(Debug)]
pub struct Request<C> {
    /// The verb.
    pub command: Command,
    /// The validated `CNI_*` variables (empty fields for STATUS and GC).
    pub env: Env,
    /// The common configuration fields.
    pub conf: NetConf,
    /// The plugin's own configuration, decoded from the same object.
    pub config: C,
}

/// A CNI plugin: one method per verb; VERSION is answered by the skeleton.
pub trait Plugin {
    /// The plugin's own configuration fields.
    type Config: DeserializeOwned;
    /// The plugin's error type; converted to a spec error once, here ([`error_object`]).
    type Error: ErrorCode;

    /// Attaches the container. Must roll back what it created when it fails.
    fn add(&self, req: &Request<Self::Config>) -> Result<AddOutput, Self::Error>;
    /// Detaches the container; succeeds when it is already gone. Returns a note for the
    /// log line (e.g. the released address).
    fn del(&self, req: &Request<Self::Config>) -> Result<Option<String>, Self::Error>;
    /// Verifies the attachment against `prevResult`.
    fn check(&self, req: &Request<Self::Config>) -> Result<(), Self::Error>;
    /// Says whether ADD can be served now.
    fn status(&self, req: &Request<Self::Config>) -> Result<(), Self::Error>;
    /// Releases everything not in `valid`. Returns a note for the log line.
    fn gc(
        &self,
        req: &Request<Self::Config>,
        valid: &[Attachment],
    ) -> Result<Option<String>, Self::Error>;
    /// Validates a configuration the way ADD would before touching the node, for
    /// `--check-config FILE` (installers check a conflist with the binary that will read it).
    /// `config` has already decoded as [`Plugin::Config`]; the default accepts it, and a
    /// plugin overrides this with the checks its verbs run first.
    fn check_config(&self, conf: &NetConf, config: &Self::Config) -> Result<(), Self::Error> {
        let _ = (conf, config);
        Ok(())
    }
}

/// Static facts about a plugin binary for `--help` and `--version`.
#[derive(Clone, Copy, Debug)]
pub struct About {
    /// Binary name.
    pub name: &'static str,
    /// Crate version.
    pub version: &'static str,
    /// One paragraph: what it does.
    pub summary: &'static str,
}

/// What the process should exit with.
pub type ExitCode = i32;

/// Runs the plugin on the process's environment, stdin and stdout. `--help`, `--version` and
/// `--check-config FILE` in argv are answered without CNI. Returns the exit code.
pub fn run<P: Plugin>(plugin: &P, about: &About) -> ExitCode {
    install_panic_guard();
    // args_os: a non-UTF-8 argument must not panic before anything is printed.
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if let Some(code) = answer_flags(&args, about) {
        return code;
    }
    if args.first().map(String::as_str) == Some("--check-config") {
        return check_config_command(plugin, args.get(1).map(String::as_str), about);
    }
    let mut stdin = Vec::new();
    let command_var = std::env::var("CNI_COMMAND").ok();
    let command = cni_spec::command_from(|_| command_var.as_deref());
    let read = std::io::stdin().read_to_end(&mut stdin);
    let version_hint =
        cni_spec::version_hint(&stdin).unwrap_or_else(|| Version::LATEST.to_string());
    let _ = PANIC_VERSION.set(version_hint.clone());
    let outcome = match (command, read) {
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => {
            Err(CniError::new(Code::IoFailure, "cannot read stdin").with_details(e.to_string()))
        }
        (Ok(command), Ok(_)) => dispatch(plugin, command, &stdin, about),
    };
    let mut out = std::io::stdout().lock();
    match outcome {
        // DEL, CHECK, STATUS and GC print nothing when they succeed.
        Ok(Value::Null) => 0,
        Ok(value) => {
            let _ = writeln!(out, "{value}");
            0
        }
        Err(e) => {
            let _ = writeln!(out, "{}", e.to_json(&version_hint));
            1
        }
    }
}

fn answer_flags(args: &[String], about: &About) -> Option<ExitCode> {
    let first = args.first()?;
    match first.as_str() {
        "--version" | "-V" | "version" => {
            println!(
                "{} {}",
                about.name,
                cni_spec::version_text(about.version, &SUPPORTED.map(Version::as_str))
            );
            Some(0)
        }
        "--help" | "-h" | "help" => {
            println!(
                "{name} {version}: a CNI plugin\n\n{summary}\n\n\
                 Runtimes run it with CNI_COMMAND (ADD, DEL, CHECK, VERSION, STATUS, GC), \
                 CNI_CONTAINERID,\nCNI_NETNS, CNI_IFNAME and CNI_PATH in the environment and \
                 the network configuration on stdin.\n\nOptions:\n  --help     this text\n  \
                 --version  version and CNI spec versions\n  \
                 --check-config FILE  validate this plugin's entry of a conflist (or a single \
                 config) as ADD would, without touching the node; exit 1 with the plugin's \
                 message when it is refused",
                name = about.name,
                version = about.version,
                summary = about.summary
            );
            Some(0)
        }
        _ => None,
    }
}

/// `--check-config FILE`: this plugin's entry of the conflist (or the single config) in
/// FILE, given `cniVersion` and `name` as a runtime passes them, decoded and checked with
/// [`Plugin::check_config`]. Prints `FILE: ok` and returns 0, or prints the refusal on stderr
/// (the spec error's message, details and code) and returns 1; 2 for a usage error.
fn check_config_command<P: Plugin>(plugin: &P, path: Option<&str>, about: &About) -> ExitCode {
    let Some(path) = path else {
        eprintln!("{}: --check-config needs a file", about.name);
        return 2;
    };
    match check_config_file(plugin, std::path::Path::new(path), about.name) {
        Ok(()) => {
            println!("{path}: ok");
            0
        }
        Err(e) => {
            let details = if e.details.is_empty() {
                String::new()
            } else {
                format!(": {}", e.details)
            };
            eprintln!(
                "{}: {path}: {}{details} (code {})",
                about.name, e.msg, e.code
            );
            1
        }
    }
}

fn check_config_file<P: Plugin>(
    plugin: &P,
    path: &std::path::Path,
    plugin_type: &str,
) -> Result<(), CniError> {
    let bytes = std::fs::read(path).map_err(|e| {
        CniError::new(Code::IoFailure, format!("cannot read {}", path.display()))
            .with_details(e.to_string())
    })?;
    let list = cni_spec::ConfList::parse(&bytes)?;
    let mut entry = list.entry(plugin_type).cloned().ok_or_else(|| {
        CniError::new(
            Code::InvalidNetworkConfig,
            format!("no plugin of type {plugin_type:?} in it"),
        )
    })?;
    // What libcni adds to each plugin's object of a list before it execs the plugin.
    if let Value::Object(m) = &mut entry {
        m.insert("cniVersion".into(), Value::from(list.cni_version.as_str()));
        m.insert("name".into(), Value::from(list.name.as_str()));
    }
    let stdin = serde_json::to_vec(&entry).map_err(|e| {
        CniError::new(Code::DecodingFailure, "cannot encode the entry").with_details(e.to_string())
    })?;
    let conf = NetConf::parse(&stdin)?;
    let config: P::Config = conf.plugin_config()?;
    plugin.check_config(&conf, &config).map_err(error_object)
}

fn dispatch<P: Plugin>(
    plugin: &P,
    command: Command,
    stdin: &[u8],
    about: &About,
) -> Result<Value, CniError> {
    if command == Command::Version {
        return Ok(version_info(stdin));
    }
    let conf = NetConf::parse_with(stdin, command == Command::Del)?;
    let v = conf.cni_version;
    if command == Command::Check && !v.has_check() {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            format!("CHECK needs cniVersion 0.4.0 or later, config has {v}"),
        ));
    }
    if matches!(command, Command::Status | Command::Gc) && !v.has_status_and_gc() {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            format!("{command} needs cniVersion 1.1.0 or later, config has {v}"),
        ));
    }
    log_file::init(&conf.raw, about.name);
    let started = Instant::now();
    // A request refused before the plugin runs (bad CNI_* variables, an invalid plugin
    // config, GC without its list) still gets its log line: the operator sees the rejected
    // pod, not silence.
    let checked = Env::from_process(command).and_then(|env| {
        // ADD and CHECK work inside the namespace; DEL finds what it removes without it
        // (the namespace may be gone already).
        if matches!(command, Command::Add | Command::Check) {
            sandbox::check_netns(&env.netns)?;
        }
        let config: P::Config = conf.plugin_config()?;
        if command == Command::Gc && conf.valid_attachments.is_none() && !conf.disable_gc {
            // Without the list every attachment would look stale: refuse rather than tear
            // down every pod of the network.
            return Err(CniError::new(
                Code::InvalidNetworkConfig,
                "GC needs cni.dev/valid-attachments",
            )
            .with_details("an empty list releases everything; a missing one is refused"));
        }
        Ok((env, config))
    });
    let (env, config) = match checked {
        Ok(v) => v,
        Err(e) => {
            if command != Command::Status {
                log_file::rejected_line(command, &conf.name, started.elapsed(), &e);
            }
            return Err(e);
        }
    };
    let req = Request {
        command,
        env,
        conf,
        config,
    };
    let (outcome, note) = match command {
        Command::Add => match plugin.add(&req).map_err(error_object) {
            Ok(AddOutput::Result(result)) => {
                let note = result
                    .ips
                    .iter()
                    .map(|ip| ip.address.to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                // A plugin given a prevResult MUST print it with its own changes included:
                // the earlier plugins' interfaces, addresses, routes and DNS stay.
                let printed = match &req.conf.prev_result {
                    Some(prev) => result.merged_onto(prev),
                    None => result,
                };
                (Ok(printed.to_json(v)), Some(note))
            }
            Ok(AddOutput::PrevResult) => (Ok(prev_result_output(&req.conf)), None),
            Err(e) => (Err(e), None),
        },
        Command::Del => split_note(plugin.del(&req).map_err(error_object)),
        Command::Check => (
            if req.conf.disable_check {
                Ok(Value::Null)
            } else {
                plugin
                    .check(&req)
                    .map_err(error_object)
                    .map(|()| Value::Null)
            },
            None,
        ),
        Command::Status => (
            plugin
                .status(&req)
                .map_err(error_object)
                .map(|()| Value::Null),
            None,
        ),
        Command::Gc => {
            if req.conf.disable_gc {
                (Ok(Value::Null), Some("disableGC set".to_string()))
            } else {
                let valid = req.conf.valid_attachments.as_deref().unwrap_or_default();
                split_note(plugin.gc(&req, valid).map_err(error_object))
            }
        }
        Command::Version => return Ok(version_info(stdin)),
    };
    if command != Command::Status {
        log_file::verb_line(&req, started.elapsed(), note.as_deref(), &outcome);
    }
    outcome
}

/// The error object for a plugin's error: its code, its text as `msg`, and its cause as
/// `details` when the text does not already say it.
pub fn error_object<E: ErrorCode>(e: E) -> CniError {
    let msg = e.to_string();
    let details = e
        .source()
        .map(|s| s.to_string())
        .filter(|s| !msg.contains(s.as_str()))
        .unwrap_or_default();
    CniError::new(e.code(), msg).with_details(details)
}

fn split_note(r: Result<Option<String>, CniError>) -> (Result<Value, CniError>, Option<String>) {
    match r {
        Ok(note) => (Ok(Value::Null), note),
        Err(e) => (Err(e), None),
    }
}

/// The prevResult as received, with `cniVersion` set to the config's (the spec requires the
/// prevResult to be in the config's version already).
fn prev_result_output(conf: &NetConf) -> Value {
    let mut v = conf
        .prev_result_raw
        .clone()
        .unwrap_or_else(|| CniResult::default().to_json(conf.cni_version));
    if let Value::Object(m) = &mut v {
        m.insert("cniVersion".into(), Value::from(conf.cni_version.as_str()));
    }
    v
}

/// `{"cniVersion", "supportedVersions"}`: echoes the asked version when we speak it.
fn version_info(stdin: &[u8]) -> Value {
    let asked = cni_spec::version_hint(stdin)
        .and_then(|v| v.parse::<Version>().ok())
        .unwrap_or(Version::LATEST);
    serde_json::json!({
        "cniVersion": asked.as_str(),
        "supportedVersions": SUPPORTED.map(Version::as_str),
    })
}

/// The `cniVersion` a panic's error object carries: the config's, once stdin is read.
static PANIC_VERSION: OnceLock<String> = OnceLock::new();

/// A panic is a bug, but the runtime must still get the spec's JSON and no stack trace.
fn install_panic_guard() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let err = CniError::new(Code::Internal, "internal error (a bug: please report it)")
            .with_details(format!("{msg} at {at}"));
        let version = PANIC_VERSION
            .get()
            .map_or(Version::LATEST.as_str(), String::as_str);
        let _ = writeln!(std::io::stdout(), "{}", err.to_json(version));
        let _ = writeln!(std::io::stderr(), "internal error: {msg} at {at}");
        std::process::exit(1);
    }));
}
