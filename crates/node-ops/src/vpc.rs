//! vpc-route on a node, without linking it: its node state file for the doctor (read with a
//! struct of the few fields used, no EC2 call: the doctor must work on a node without
//! credentials), and deregistration for teardown by running the installed `vpc-route` binary,
//! so that `cni-suite` never waits for the AWS SDK's 15-minute compile.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::Value;

use crate::Error;

/// vpc-routes' `DEFAULT_DATA_DIR`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/vpc-route";

/// The plugin binary's name in a CNI bin dir.
pub const BINARY: &str = "vpc-route";

/// vpc-routes' `DEFAULT_DEADLINE_SECONDS`: how long one deregistration may talk to EC2.
const DEFAULT_DEADLINE_SECONDS: u64 = 20;

/// Process start, IMDS and the runtime on top of the plugin's own deadline.
const EXEC_MARGIN: Duration = Duration::from_secs(15);

/// The node state format this reads (vpc-routes' `STATE_VERSION`).
const STATE_VERSION: u64 = 1;

/// What the node state file says, for a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VpcState {
    /// The file read.
    pub path: PathBuf,
    /// `podCIDR` registered.
    pub pod_cidr: String,
    /// (table id, route in place, problem).
    pub tables: Vec<(String, bool, Option<String>)>,
    /// Source/destination check seen off on the ENI.
    pub source_dest_check_off: bool,
    /// Seconds since EC2 last confirmed it.
    pub age_seconds: Option<u64>,
}

impl VpcState {
    /// Registered in every table with source/dest check off (vpc-routes' `is_complete`).
    pub fn is_complete(&self) -> bool {
        self.source_dest_check_off && !self.tables.is_empty() && self.tables.iter().all(|t| t.1)
    }
}

/// The fields of vpc-routes' `NodeState` (node.json) the doctor reports; others are ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeFile {
    #[serde(rename = "podCIDR")]
    pod_cidr: String,
    #[serde(default)]
    tables: Vec<TableFile>,
    #[serde(default)]
    source_dest_check_off: bool,
    verified_at: Option<u64>,
}

#[derive(Deserialize)]
struct TableFile {
    id: String,
    #[serde(default)]
    registered: bool,
    problem: Option<String>,
}

/// The state file of a `vpc-route` conflist entry.
pub fn state_path(entry: &Value) -> PathBuf {
    PathBuf::from(entry["dataDir"].as_str().unwrap_or(DEFAULT_DATA_DIR)).join("node.json")
}

/// Reads the node state of a `vpc-route` entry: Ok(None) when the node never registered.
pub fn node_state(entry: &Value) -> Result<Option<VpcState>, String> {
    let path = state_path(entry);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    // The version first: another format's fields may not decode as this one's.
    let v: Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if v["version"].as_u64() != Some(STATE_VERSION) {
        return Err(format!(
            "{}: format version {} (this build reads {STATE_VERSION})",
            path.display(),
            v["version"]
        ));
    }
    let file: NodeFile =
        serde_json::from_value(v).map_err(|e| format!("{}: {e}", path.display()))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    Ok(Some(VpcState {
        pod_cidr: file.pod_cidr,
        tables: file
            .tables
            .into_iter()
            .map(|t| (t.id, t.registered, t.problem))
            .collect(),
        source_dest_check_off: file.source_dest_check_off,
        age_seconds: file.verified_at.map(|t| now.saturating_sub(t)),
        path,
    }))
}

/// The `vpc-route` binary in the first of `bin_dirs` holding an executable one.
pub fn find_binary(bin_dirs: &[PathBuf]) -> Option<PathBuf> {
    bin_dirs
        .iter()
        .map(|d| d.join(BINARY))
        .find(|p| crate::bin_dir::is_executable(p))
}

/// Runs `<binary> deregister --config <conflist>` (the binary reads its own entry from the
/// conflist, and credentials from the environment) and returns the plan it printed.
pub fn deregister(binary: &Path, conflist: &Path, entry: &Value) -> Result<String, Error> {
    let deadline = entry["deadlineSeconds"]
        .as_u64()
        .unwrap_or(DEFAULT_DEADLINE_SECONDS);
    let limit = Duration::from_secs(deadline) + EXEC_MARGIN;
    let (ok, stdout, stderr) = crate::kernel::run(
        Command::new(binary)
            .arg("deregister")
            .arg("--config")
            .arg(conflist),
        limit,
    )?;
    if ok {
        return Ok(stdout.trim().to_string());
    }
    Err(Error::Command {
        program: format!(
            "{} deregister --config {}",
            binary.display(),
            conflist.display()
        ),
        detail: [stderr.trim(), stdout.trim()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn reads_vpc_routes_node_state() {
        let dir = tempfile::tempdir().unwrap();
        let entry = serde_json::json!({"type": "vpc-route", "dataDir": dir.path()});
        assert_eq!(node_state(&entry).unwrap(), None);
        std::fs::write(
            dir.path().join("node.json"),
            r#"{"version":1,"clusterName":"c","podCIDR":"10.244.3.0/24","node":{},
               "tables":[{"id":"rtb-1","routes":3,"registered":true},
                         {"id":"rtb-2","routes":50,"registered":false,"full":true,"problem":"quota"}],
               "sourceDestCheckOff":true,"verifiedAt":1}"#,
        )
        .unwrap();
        let s = node_state(&entry).unwrap().unwrap();
        assert_eq!(s.pod_cidr, "10.244.3.0/24");
        assert_eq!(
            s.tables,
            [
                ("rtb-1".to_string(), true, None),
                ("rtb-2".to_string(), false, Some("quota".to_string()))
            ]
        );
        assert!(!s.is_complete());
        assert!(s.age_seconds.is_some_and(|a| a > 0));

        std::fs::write(dir.path().join("node.json"), r#"{"version":2,"podCIDR":7}"#).unwrap();
        let e = node_state(&entry).unwrap_err();
        assert!(e.contains("format version 2"), "{e}");
        std::fs::write(dir.path().join("node.json"), r#"{"version":1,"podCIDR":7}"#).unwrap();
        assert!(node_state(&entry).is_err());
    }

    fn script(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join(BINARY);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn finds_the_first_executable_vpc_route() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let dirs = [a.path().to_path_buf(), b.path().to_path_buf()];
        assert_eq!(find_binary(&dirs), None);
        // Not executable: skipped, as a runtime could not exec it either.
        std::fs::write(a.path().join(BINARY), "").unwrap();
        assert_eq!(find_binary(&dirs), None);
        let in_b = script(b.path(), "exit 0");
        assert_eq!(find_binary(&dirs), Some(in_b));
        let in_a = script(a.path(), "exit 0");
        assert_eq!(find_binary(&dirs), Some(in_a));
    }

    #[test]
    fn deregister_runs_the_binary_and_reports_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let conflist = dir.path().join("10-net.conflist");
        let entry = serde_json::json!({"type": "vpc-route"});
        let ok = script(dir.path(), r#"echo "did delete $1 $2 $3""#);
        assert_eq!(
            deregister(&ok, &conflist, &entry).unwrap(),
            format!("did delete deregister --config {}", conflist.display())
        );

        let failing = script(
            dir.path(),
            "echo 'FAILED to delete 10.244.3.0/24'; echo 'vpc-route deregister: 1 of 2 steps failed' >&2; exit 1",
        );
        let e = deregister(&failing, &conflist, &entry)
            .unwrap_err()
            .to_string();
        assert!(e.contains("deregister --config"), "{e}");
        assert!(e.contains("1 of 2 steps failed"), "{e}");
        assert!(e.contains("FAILED to delete 10.244.3.0/24"), "{e}");
    }
}
