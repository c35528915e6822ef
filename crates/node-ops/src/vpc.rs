//! vpc-route on a node: its node state file for the doctor (read as JSON, no EC2 call: the
//! doctor must work on a node without credentials), and deregistration for teardown (through
//! `vpc-routes`, which calls EC2).

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// vpc-routes' `DEFAULT_DATA_DIR`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/vpc-route";

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
    let v: Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if v["version"] != 1 {
        return Err(format!(
            "{}: format version {} (this build reads 1)",
            path.display(),
            v["version"]
        ));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    Ok(Some(VpcState {
        pod_cidr: v["podCIDR"].as_str().unwrap_or("").to_string(),
        tables: v["tables"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                (
                    t["id"].as_str().unwrap_or("?").to_string(),
                    t["registered"].as_bool().unwrap_or(false),
                    t["problem"].as_str().map(str::to_string),
                )
            })
            .collect(),
        source_dest_check_off: v["sourceDestCheckOff"].as_bool().unwrap_or(false),
        age_seconds: v["verifiedAt"].as_u64().map(|t| now.saturating_sub(t)),
        path,
    }))
}

/// Deletes this node's routes from the cluster's route tables; returns the plan carried out.
pub fn deregister(entry: &Value) -> Result<String, crate::Error> {
    let wired = |e: String| crate::Error::Remote(format!("deregistering VPC routes: {e}"));
    let config = vpc_routes::Config::from_value(entry.clone()).map_err(|e| wired(e.to_string()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| wired(e.to_string()))?;
    rt.block_on(async {
        let registrar = vpc_routes::Registrar::connect(config).await?;
        registrar.deregister().await
    })
    .map(|plan| plan.to_string())
    .map_err(|e| wired(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(s.tables.len(), 2);
        assert!(!s.is_complete());
        assert_eq!(s.tables[1].2.as_deref(), Some("quota"));
        // Not a valid vpc-route config (no clusterName/podCIDR): refused before any EC2 call.
        assert!(deregister(&entry).is_err());
    }
}
