//! The network configuration under test: a conflist (or a single plugin configuration), its
//! plugins found on the CNI path, and the configuration each plugin is executed with at each
//! spec version (SPEC.md section 3, "Deriving execution configuration from plugin
//! configuration").

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// Why a network configuration cannot be run.
#[derive(Debug)]
pub enum LoadError {
    /// The file cannot be read.
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file is not JSON.
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// The configuration lacks something the runner needs (a name, a plugin type...).
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// No executable named after a plugin's `type` on the CNI path.
    PluginNotFound {
        /// The plugin's `type`.
        kind: String,
        /// The directories searched.
        cni_path: Vec<PathBuf>,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Read { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            LoadError::Json { path, source } => {
                write!(f, "{} is not JSON: {source}", path.display())
            }
            LoadError::Invalid { path, what } => write!(f, "{}: {what}", path.display()),
            LoadError::PluginNotFound { kind, cni_path } => write!(
                f,
                "plugin {kind:?}: no executable named {kind} in the CNI path {}",
                join_path(cni_path)
            ),
        }
    }
}

impl std::error::Error for LoadError {}

/// One plugin of the list: its `type`, the executable found for it, and its configuration
/// object as written in the list.
#[derive(Debug, Clone)]
pub struct PluginEntry {
    /// The `type` field: the executable's name.
    pub kind: String,
    /// The executable run for it.
    pub binary: PathBuf,
    /// The plugin configuration object from the list (with `type`, without `name` and
    /// `cniVersion`, which the runtime inserts).
    pub conf: Map<String, Value>,
}

/// A network configuration list, ready to be executed at any spec version.
#[derive(Debug, Clone)]
pub struct NetworkList {
    /// Where it came from, for the report.
    pub source: PathBuf,
    /// The network's `name` as written.
    pub name: String,
    /// `disableCheck`: runtimes must not call CHECK on this network.
    pub disable_check: bool,
    /// The plugins, in ADD order.
    pub plugins: Vec<PluginEntry>,
    /// The directories plugins (and their delegates) are looked up in; `CNI_PATH`.
    pub cni_path: Vec<PathBuf>,
}

impl NetworkList {
    /// Loads a conflist (`{"name", "plugins": [...]}`), or a single plugin configuration
    /// (`{"name", "type", ...}`, which libcni turns into a list of one), and finds every
    /// plugin's executable on `cni_path` as libcni does: the first directory holding an
    /// executable file named after its `type`.
    pub fn from_conflist(path: &Path, cni_path: &[PathBuf]) -> Result<NetworkList, LoadError> {
        let doc = read_json_object(path)?;
        let invalid = |what: String| LoadError::Invalid {
            path: path.to_path_buf(),
            what,
        };
        let entries: Vec<Map<String, Value>> = match doc.get("plugins") {
            Some(Value::Array(plugins)) => plugins
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    p.as_object()
                        .cloned()
                        .ok_or_else(|| invalid(format!("plugins[{i}] is not an object")))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(invalid("\"plugins\" is not a list".into())),
            None => vec![plugin_object_of(&doc)],
        };
        if entries.is_empty() {
            return Err(invalid("\"plugins\" is empty".into()));
        }
        let plugins = entries
            .into_iter()
            .enumerate()
            .map(|(i, conf)| {
                let kind =
                    plugin_kind(&conf).map_err(|what| invalid(format!("plugins[{i}]: {what}")))?;
                let binary =
                    find_plugin(&kind, cni_path).ok_or_else(|| LoadError::PluginNotFound {
                        kind: kind.clone(),
                        cni_path: cni_path.to_vec(),
                    })?;
                Ok(PluginEntry { kind, binary, conf })
            })
            .collect::<Result<_, LoadError>>()?;
        NetworkList::assemble(path, &doc, plugins, cni_path)
    }

    /// A list of one: the single plugin configuration at `config`, run with the executable
    /// `binary` whatever its `type` says.
    pub fn from_plugin(
        binary: &Path,
        config: &Path,
        cni_path: &[PathBuf],
    ) -> Result<NetworkList, LoadError> {
        let doc = read_json_object(config)?;
        if doc.contains_key("plugins") {
            return Err(LoadError::Invalid {
                path: config.to_path_buf(),
                what: "is a conflist: use --conflist for it".into(),
            });
        }
        if !is_executable(binary) {
            return Err(LoadError::Invalid {
                path: binary.to_path_buf(),
                what: "is not an executable file".into(),
            });
        }
        let conf = plugin_object_of(&doc);
        let kind = plugin_kind(&conf).map_err(|what| LoadError::Invalid {
            path: config.to_path_buf(),
            what,
        })?;
        let plugin = PluginEntry {
            kind,
            binary: binary.to_path_buf(),
            conf,
        };
        NetworkList::assemble(config, &doc, vec![plugin], cni_path)
    }

    fn assemble(
        path: &Path,
        doc: &Map<String, Value>,
        plugins: Vec<PluginEntry>,
        cni_path: &[PathBuf],
    ) -> Result<NetworkList, LoadError> {
        let name = doc
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| LoadError::Invalid {
                path: path.to_path_buf(),
                what: "has no \"name\"".into(),
            })?
            .to_owned();
        Ok(NetworkList {
            source: path.to_path_buf(),
            name,
            disable_check: doc.get("disableCheck").and_then(Value::as_bool) == Some(true),
            plugins,
            cni_path: cni_path.to_vec(),
        })
    }

    /// `CNI_PATH` as plugins receive it.
    pub fn cni_path_var(&self) -> String {
        join_path(&self.cni_path)
    }

    /// The plugins' types, joined with `+` (`kubenet-bridge+portmap`), to name the list.
    pub fn kinds(&self) -> String {
        self.plugins
            .iter()
            .map(|p| p.kind.as_str())
            .collect::<Vec<_>>()
            .join("+")
    }

    /// The configuration plugin `index` is executed with: its object from the list, with
    /// `cniVersion` and `name` inserted, `prevResult` when given, and `capabilities` removed
    /// (the runner passes no capability arguments, so no `runtimeConfig` is derived).
    pub fn exec_config(
        &self,
        index: usize,
        version: &str,
        net_name: &str,
        prev_result: Option<&Value>,
    ) -> Value {
        let mut conf = self.plugins[index].conf.clone();
        conf.remove("capabilities");
        conf.insert("cniVersion".into(), Value::from(version));
        conf.insert("name".into(), Value::from(net_name));
        if let Some(prev) = prev_result {
            conf.insert("prevResult".into(), prev.clone());
        }
        Value::Object(conf)
    }
}

/// The plugin configuration object of a single-plugin config file: everything but the fields
/// the runtime inserts per execution.
fn plugin_object_of(doc: &Map<String, Value>) -> Map<String, Value> {
    let mut conf = doc.clone();
    for key in [
        "cniVersion",
        "cniVersions",
        "name",
        "disableCheck",
        "disableGC",
    ] {
        conf.remove(key);
    }
    conf
}

/// The `type` of a plugin object; it names a file, so it must not hold a path separator.
fn plugin_kind(conf: &Map<String, Value>) -> Result<String, String> {
    let kind = conf
        .get("type")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or("no \"type\"")?;
    if kind.contains('/') || kind == "." || kind == ".." {
        return Err(format!("type {kind:?} is not a file name"));
    }
    Ok(kind.to_owned())
}

fn read_json_object(path: &Path) -> Result<Map<String, Value>, LoadError> {
    let text = fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    match serde_json::from_slice(&text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(LoadError::Invalid {
            path: path.to_path_buf(),
            what: "is not a JSON object".into(),
        }),
        Err(source) => Err(LoadError::Json {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The first executable file named `kind` in `cni_path`, as libcni's `FindInPath` looks.
pub fn find_plugin(kind: &str, cni_path: &[PathBuf]) -> Option<PathBuf> {
    cni_path
        .iter()
        .map(|dir| dir.join(kind))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Directories joined with `:`, the Linux list separator of `CNI_PATH`.
pub fn join_path(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(dir: &Path, name: &str, value: &Value) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, value.to_string()).expect("write test file");
        path
    }

    fn fake_plugin(dir: &Path, name: &str) {
        let path = dir.join(name);
        fs::write(&path, "#!/bin/sh\n").expect("write fake plugin");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    #[test]
    fn conflist_plugins_are_found_and_get_name_version_and_prev_result() {
        let dir = tempfile::tempdir().expect("tempdir");
        fake_plugin(dir.path(), "first");
        fake_plugin(dir.path(), "second");
        let path = write(
            dir.path(),
            "net.conflist",
            &json!({"cniVersion": "1.0.0", "name": "net", "disableCheck": true, "plugins": [
                {"type": "first", "x": 1},
                {"type": "second", "capabilities": {"portMappings": true}},
            ]}),
        );
        let list = NetworkList::from_conflist(&path, &[dir.path().to_path_buf()]).expect("loads");
        assert_eq!(list.kinds(), "first+second");
        assert!(list.disable_check);
        let prev = json!({"cniVersion": "0.4.0"});
        let conf = list.exec_config(1, "0.4.0", "net-x", Some(&prev));
        assert_eq!(
            conf,
            json!({"type": "second", "cniVersion": "0.4.0", "name": "net-x", "prevResult": prev})
        );
        assert_eq!(
            list.exec_config(0, "1.1.0", "n", None),
            json!({"type": "first", "x": 1, "cniVersion": "1.1.0", "name": "n"})
        );
    }

    #[test]
    fn single_config_becomes_a_list_of_one_and_missing_plugins_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(
            dir.path(),
            "net.conf",
            &json!({"cniVersion": "1.0.0", "name": "net", "type": "absent"}),
        );
        let err = NetworkList::from_conflist(&path, &[dir.path().to_path_buf()])
            .expect_err("absent plugin");
        assert!(
            err.to_string().contains("no executable named absent"),
            "{err}"
        );
        fake_plugin(dir.path(), "absent");
        let list = NetworkList::from_conflist(&path, &[dir.path().to_path_buf()]).expect("loads");
        assert_eq!(list.plugins.len(), 1);
        assert_eq!(
            list.plugins[0].conf,
            json!({"type": "absent"})
                .as_object()
                .cloned()
                .expect("object")
        );
    }
}
