//! The `CNI_*` environment: which verb, which container, which netns and interface.

use std::fmt;

use crate::args::CniArgs;
use crate::error::{CniError, Code};

/// The verb a runtime asks for in `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container.
    Del,
    /// Verify an attachment.
    Check,
    /// Report supported versions.
    Version,
    /// Report whether ADD can be served.
    Status,
    /// Release what is not in the valid attachments.
    Gc,
}

impl Command {
    /// The verb as it appears in `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated `CNI_*` environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Env {
    /// `CNI_CONTAINERID`; present for ADD, DEL and CHECK.
    pub container_id: String,
    /// `CNI_NETNS`; present for ADD and CHECK, optional on DEL (empty when absent).
    pub netns: String,
    /// `CNI_IFNAME`; present for ADD, DEL and CHECK.
    pub ifname: String,
    /// `CNI_ARGS`, raw.
    pub args: String,
    /// `CNI_ARGS`, parsed (ADD and CHECK; empty for DEL, which needs none of them).
    pub cni_args: CniArgs,
    /// `CNI_PATH`, raw.
    pub path: String,
}

/// Reads the verb from `CNI_COMMAND`.
pub fn command_from<'a>(
    mut lookup: impl FnMut(&str) -> Option<&'a str>,
) -> Result<Command, CniError> {
    match lookup("CNI_COMMAND") {
        None | Some("") => Err(CniError::new(
            Code::InvalidEnvironment,
            "CNI_COMMAND is not set",
        )),
        Some(s) => Command::parse(s).ok_or_else(|| {
            CniError::new(
                Code::InvalidEnvironment,
                format!("unknown CNI_COMMAND {s:?}"),
            )
            .with_details("expected one of ADD, DEL, CHECK, VERSION, STATUS, GC")
        }),
    }
}

impl Env {
    /// Reads and validates the variables `command` needs through `lookup`.
    pub fn from_lookup<'a>(
        command: Command,
        mut lookup: impl FnMut(&str) -> Option<&'a str>,
    ) -> Result<Env, CniError> {
        let attach = matches!(command, Command::Add | Command::Del | Command::Check);
        let mut env = Env {
            args: lookup("CNI_ARGS").unwrap_or_default().to_string(),
            path: lookup("CNI_PATH").unwrap_or_default().to_string(),
            ..Env::default()
        };
        if !attach {
            return Ok(env);
        }
        env.container_id = required(&mut lookup, "CNI_CONTAINERID")?;
        validate_container_id(&env.container_id)?;
        env.ifname = required(&mut lookup, "CNI_IFNAME")?;
        validate_ifname(&env.ifname)?;
        env.netns = match command {
            Command::Del => lookup("CNI_NETNS").unwrap_or_default().to_string(),
            _ => required(&mut lookup, "CNI_NETNS")?,
        };
        if !env.netns.is_empty() && !env.netns.starts_with('/') {
            return Err(CniError::new(
                Code::InvalidEnvironment,
                format!("CNI_NETNS {:?} is not an absolute path", env.netns),
            ));
        }
        // DEL reads no argument, and a DEL refused for them would leave the runtime retrying
        // it forever: only ADD and CHECK hold the runtime to libcni's rules.
        if command != Command::Del {
            env.cni_args = CniArgs::parse(&env.args)?;
        }
        Ok(env)
    }

    /// Reads and validates the process environment.
    pub fn from_process(command: Command) -> Result<Env, CniError> {
        let vars: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| k.starts_with("CNI_"))
            .collect();
        Env::from_lookup(command, |key| {
            vars.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
        })
    }
}

fn required<'a>(
    lookup: &mut impl FnMut(&str) -> Option<&'a str>,
    key: &str,
) -> Result<String, CniError> {
    match lookup(key) {
        Some(v) if !v.is_empty() => Ok(v.to_string()),
        _ => Err(CniError::new(
            Code::InvalidEnvironment,
            format!("{key} is not set"),
        )),
    }
}

/// Checks the spec's rule for container ids (and network names): a letter or digit first,
/// then letters, digits, `_`, `.` or `-`. This also keeps ids from escaping a directory when
/// they are used in file names.
pub fn is_valid_identifier(id: &str) -> bool {
    let mut chars = id.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The longest container id accepted. Runtimes use 64 hex digits; state files are named
/// `<container id>@<ifname>`, and 239 + 1 + 15 bytes is the kernel's 255-byte file name
/// limit, so a longer id is refused here, before anything is set up on the node.
pub const MAX_CONTAINER_ID_LEN: usize = 239;

fn validate_container_id(id: &str) -> Result<(), CniError> {
    if id.len() > MAX_CONTAINER_ID_LEN {
        Err(CniError::new(
            Code::InvalidEnvironment,
            format!(
                "CNI_CONTAINERID is {} bytes long, at most {MAX_CONTAINER_ID_LEN} are accepted",
                id.len()
            ),
        ))
    } else if is_valid_identifier(id) {
        Ok(())
    } else {
        Err(CniError::new(
            Code::InvalidEnvironment,
            format!("invalid CNI_CONTAINERID {id:?}"),
        )
        .with_details("must start with a letter or digit, then letters, digits, '_', '.' or '-'"))
    }
}

/// Checks the kernel's rules for an interface name, as the spec repeats them.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let why = if name.len() > 15 {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("'.' and '..' are not allowed")
    } else if name.contains('/') || name.contains(':') {
        Some("'/' and ':' are not allowed")
    } else if name.chars().any(char::is_whitespace) {
        Some("whitespace is not allowed")
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(CniError::new(
            Code::InvalidEnvironment,
            format!("invalid CNI_IFNAME {name:?}: {why}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl FnMut(&str) -> Option<&'a str> {
        move |k| pairs.iter().find(|(key, _)| *key == k).map(|(_, v)| *v)
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
    ];

    #[test]
    fn accepts_a_complete_add() {
        let e = Env::from_lookup(Command::Add, env(ADD)).unwrap();
        assert_eq!(e.container_id, "abc123");
        assert_eq!(e.ifname, "eth0");
    }

    #[test]
    fn netns_is_optional_on_del_only() {
        let pairs = [("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0")];
        assert!(Env::from_lookup(Command::Del, env(&pairs)).is_ok());
        let e = Env::from_lookup(Command::Add, env(&pairs)).unwrap_err();
        assert_eq!(e.code, Code::InvalidEnvironment);
        assert!(Env::from_lookup(Command::Check, env(&pairs)).is_err());
    }

    #[test]
    fn rejects_bad_ifnames() {
        for bad in [
            "",
            "0123456789abcdef",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
        ] {
            let pairs = [
                ("CNI_CONTAINERID", "abc"),
                ("CNI_NETNS", "/n"),
                ("CNI_IFNAME", bad),
            ];
            let e = Env::from_lookup(Command::Add, env(&pairs)).unwrap_err();
            assert_eq!(e.code, Code::InvalidEnvironment, "{bad:?}");
        }
        assert!(validate_ifname("0123456789abcde").is_ok());
    }

    #[test]
    fn rejects_bad_container_ids() {
        for bad in ["-x", "_x", ".x", "../../etc/x", "a/b", "a b", ""] {
            let pairs = [
                ("CNI_CONTAINERID", bad),
                ("CNI_NETNS", "/n"),
                ("CNI_IFNAME", "eth0"),
            ];
            let e = Env::from_lookup(Command::Add, env(&pairs)).unwrap_err();
            assert_eq!(e.code, Code::InvalidEnvironment, "{bad:?}");
        }
        assert!(is_valid_identifier("a1._-Z"));
        let longest = "a".repeat(MAX_CONTAINER_ID_LEN);
        let too_long = "a".repeat(MAX_CONTAINER_ID_LEN + 1);
        let with_id = |id: &str| {
            let pairs = [
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", "/n"),
                ("CNI_IFNAME", "eth0"),
            ];
            Env::from_lookup(Command::Del, env(&pairs)).map(|e| e.container_id.len())
        };
        assert_eq!(with_id(&longest), Ok(MAX_CONTAINER_ID_LEN));
        assert_eq!(
            with_id(&too_long).unwrap_err().code,
            Code::InvalidEnvironment
        );
    }

    #[test]
    fn cni_args_are_parsed_for_add_and_check_and_ignored_by_del() {
        let with_args = |args: &'static str| {
            let mut pairs = ADD.to_vec();
            pairs.push(("CNI_ARGS", args));
            pairs
        };
        let ok = with_args("IgnoreUnknown=1;K8S_POD_NAME=web;FOO=bar");
        let e = Env::from_lookup(Command::Add, env(&ok)).unwrap();
        assert_eq!(e.cni_args.pod_name.as_deref(), Some("web"));
        let bad = with_args("FOO=bar");
        for command in [Command::Add, Command::Check] {
            let e = Env::from_lookup(command, env(&bad)).unwrap_err();
            assert_eq!(e.code, Code::InvalidEnvironment);
            assert!(e.msg.contains("CNI_ARGS"), "{}", e.msg);
        }
        let del = Env::from_lookup(Command::Del, env(&bad)).unwrap();
        assert_eq!(del.args, "FOO=bar");
        assert_eq!(del.cni_args, CniArgs::default());
    }

    #[test]
    fn commands_parse_and_unknown_ones_fail() {
        assert_eq!(command_from(env(&[("CNI_COMMAND", "GC")])), Ok(Command::Gc));
        assert_eq!(command_from(env(&[])).unwrap_err().code, 4);
        assert_eq!(
            command_from(env(&[("CNI_COMMAND", "add")]))
                .unwrap_err()
                .code,
            4
        );
    }
}
