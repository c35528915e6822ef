//! vpc-route on a node: its node state for the doctor, read with vpc-routes' own types (the
//! SDK-free core: no EC2 call, so the doctor works on a node without credentials), and
//! deregistration for teardown by running the installed `vpc-route` binary, which alone
//! links the AWS SDK (vpc-routes-aws).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use vpc_routes::{StateStore, DEFAULT_DATA_DIR, DEFAULT_DEADLINE_SECONDS};

use crate::Error;

/// The plugin binary's name in a CNI bin dir.
pub const BINARY: &str = "vpc-route";

/// Process start, IMDS and the runtime on top of the plugin's own deadline.
const EXEC_MARGIN: Duration = Duration::from_secs(15);

/// What the node state file says, for a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VpcState {
    /// The file read.
    pub path: PathBuf,
    /// The pod ranges registered, for a report (`10.244.3.0/24, fd00:10:244:3::/64`).
    pub pod_cidr: String,
    /// The pod ranges registered, one per family.
    pub pod_cidrs: Vec<String>,
    /// (table id, route in place, problem).
    pub tables: Vec<(String, bool, Option<String>)>,
    /// Source/destination check seen off on the ENI.
    pub source_dest_check_off: bool,
    /// Seconds since EC2 last confirmed it.
    pub age_seconds: Option<u64>,
    /// [`vpc_routes::NodeState::is_complete`], as the plugin judges it.
    complete: bool,
}

impl VpcState {
    /// Registered in every table with source/dest check off.
    pub fn is_complete(&self) -> bool {
        self.complete
    }
}

/// The node state store of a `vpc-route` conflist entry: its `dataDir`, else the plugin's
/// default. Read from the raw entry, not a parsed `vpc_routes::Config`: the doctor reports
/// the state even when another key of the entry is invalid.
fn store(entry: &Value) -> StateStore {
    StateStore::new(entry["dataDir"].as_str().unwrap_or(DEFAULT_DATA_DIR))
}

/// The state file of a `vpc-route` conflist entry.
pub fn state_path(entry: &Value) -> PathBuf {
    store(entry).path()
}

/// Reads the node state of a `vpc-route` entry: Ok(None) when the node never registered; an
/// error naming the file when it is unreadable or another format version.
pub fn node_state(entry: &Value) -> Result<Option<VpcState>, String> {
    let Some(state) = store(entry).read().map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    Ok(Some(VpcState {
        path: state_path(entry),
        pod_cidr: state
            .pod_cidrs()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        pod_cidrs: state.pod_cidrs().iter().map(ToString::to_string).collect(),
        tables: state
            .tables
            .iter()
            .map(|t| {
                (
                    t.id.clone(),
                    t.is_registered(),
                    t.first_problem().map(str::to_string),
                )
            })
            .collect(),
        source_dest_check_off: state.source_dest_check_off,
        age_seconds: Some(state.age().as_secs()),
        complete: state.is_complete(),
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

    /// node.json as vpc-route 0.1.0 writes it (one table full, so not complete).
    const RELEASE_0_1_0_NODE_JSON: &str = r#"{
  "version": 1,
  "clusterName": "c",
  "podCIDR": "10.244.3.0/24",
  "routeTableIds": [],
  "node": {
    "instanceId": "i-1",
    "region": "us-east-1",
    "eniId": "eni-1",
    "vpcId": "vpc-1"
  },
  "tables": [
    {
      "id": "rtb-1",
      "routes": 3,
      "registered": true,
      "full": false
    },
    {
      "id": "rtb-2",
      "routes": 50,
      "registered": false,
      "full": true,
      "problem": "quota"
    }
  ],
  "sourceDestCheckOff": true,
  "verifiedAt": 1,
  "bootId": "b"
}"#;

    #[test]
    fn reads_vpc_routes_node_state() {
        let dir = tempfile::tempdir().unwrap();
        let entry = serde_json::json!({"type": "vpc-route", "dataDir": dir.path()});
        assert_eq!(state_path(&entry), dir.path().join("node.json"));
        assert_eq!(node_state(&entry).unwrap(), None);
        std::fs::write(dir.path().join("node.json"), RELEASE_0_1_0_NODE_JSON).unwrap();
        let s = node_state(&entry).unwrap().unwrap();
        assert_eq!(s.path, dir.path().join("node.json"));
        assert_eq!(s.pod_cidr, "10.244.3.0/24");
        assert_eq!(
            s.tables,
            [
                ("rtb-1".to_string(), true, None),
                ("rtb-2".to_string(), false, Some("quota".to_string()))
            ]
        );
        assert!(s.source_dest_check_off);
        assert!(!s.is_complete());
        assert!(s.age_seconds.is_some_and(|a| a > 0));
        let complete =
            RELEASE_0_1_0_NODE_JSON.replace(r#""registered": false"#, r#""registered": true"#);
        std::fs::write(dir.path().join("node.json"), complete).unwrap();
        assert!(node_state(&entry).unwrap().unwrap().is_complete());

        std::fs::write(dir.path().join("node.json"), r#"{"version":2,"podCIDR":7}"#).unwrap();
        let e = node_state(&entry).unwrap_err();
        assert!(e.contains("format version 2"), "{e}");
        std::fs::write(dir.path().join("node.json"), r#"{"version":1,"podCIDR":7}"#).unwrap();
        assert!(node_state(&entry).is_err());
    }

    #[test]
    fn reads_a_dual_stack_node_state_with_both_ranges_and_either_familys_problem() {
        let dir = tempfile::tempdir().unwrap();
        let entry = serde_json::json!({"type": "vpc-route", "dataDir": dir.path()});
        let dual = RELEASE_0_1_0_NODE_JSON
            .replace(
                r#""podCIDR": "10.244.3.0/24","#,
                r#""podCIDR": "10.244.3.0/24", "ipv6PodCIDR": "fd00:10:244:3::/64","#,
            )
            .replace(
                r#""registered": true,"#,
                r#""registered": true, "ipv6": {"routes": 1, "registered": false, "problem": "v6 conflict"},"#,
            );
        std::fs::write(dir.path().join("node.json"), dual).unwrap();
        let s = node_state(&entry).unwrap().unwrap();
        assert_eq!(s.pod_cidr, "10.244.3.0/24, fd00:10:244:3::/64");
        assert_eq!(s.pod_cidrs, ["10.244.3.0/24", "fd00:10:244:3::/64"]);
        assert_eq!(
            s.tables[0],
            ("rtb-1".to_string(), false, Some("v6 conflict".to_string())),
            "the IPv4 route is there, the IPv6 one is not"
        );
    }

    #[test]
    fn default_data_dir_is_the_plugins() {
        let entry = serde_json::json!({"type": "vpc-route"});
        assert_eq!(
            state_path(&entry),
            Path::new("/var/lib/cni/vpc-route/node.json")
        );
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
