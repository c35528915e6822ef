//! The node state cache in `dataDir`: what was registered, where, when; written atomically.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::ec2::Family;
use crate::error::Error;
use crate::node::NodeIdentity;
use crate::retry::Deadline;

/// The node state format this build reads and writes (`version` in node.json). Bumped when
/// the file's meaning changes; other versions are ignored by the plugin (re-read from EC2).
pub const STATE_VERSION: u32 = 1;
/// The node state's file name in `dataDir`.
pub const STATE_FILE: &str = "node.json";
const LOCK_FILE: &str = "node.lock";

/// One route table as last seen. The top-level fields are the IPv4 family, as in the
/// release before IPv6 (so its node.json reads unchanged, and a node rolled back reads this
/// one); the IPv6 family, when the node has an IPv6 pod range, is `ipv6`. AWS counts the
/// route quota per family, so each family has its own count and fullness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TableState {
    /// `rtb-...`
    pub id: String,
    /// IPv4 routes counted against the quota when last read (after our own change).
    pub routes: usize,
    /// Whether the node's IPv4 route was in place (`true` when the node has no IPv4 pod
    /// range: nothing to register).
    pub registered: bool,
    /// IPv4 registration failed on the quota: what STATUS reports without asking EC2.
    #[serde(default)]
    pub full: bool,
    /// Why the IPv4 route is not in place, when it is not (quota, conflict).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// The IPv6 family, when the node has an IPv6 pod range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<FamilyState>,
}

/// One address family of a table as last seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FamilyState {
    /// Routes of this family counted against the quota when last read.
    pub routes: usize,
    /// Whether the node's route of this family was in place.
    pub registered: bool,
    /// Registration failed on the quota.
    #[serde(default)]
    pub full: bool,
    /// Why not, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl TableState {
    /// A table with nothing registered yet: each family is set with [`Self::set`]. The IPv4
    /// fields start as "nothing to register" with the table's IPv4 route count.
    pub fn new(id: &str, ipv4_routes: usize) -> Self {
        TableState {
            id: id.to_string(),
            routes: ipv4_routes,
            registered: true,
            full: false,
            problem: None,
            ipv6: None,
        }
    }

    /// Record one family.
    pub fn set(&mut self, family: Family, state: FamilyState) {
        match family {
            Family::Ipv4 => {
                self.routes = state.routes;
                self.registered = state.registered;
                self.full = state.full;
                self.problem = state.problem;
            }
            Family::Ipv6 => self.ipv6 = Some(state),
        }
    }

    /// One family as recorded; `None` for IPv6 when the node has no IPv6 range.
    pub fn family(&self, family: Family) -> Option<FamilyState> {
        match family {
            Family::Ipv4 => Some(FamilyState {
                routes: self.routes,
                registered: self.registered,
                full: self.full,
                problem: self.problem.clone(),
            }),
            Family::Ipv6 => self.ipv6.clone(),
        }
    }

    /// Every route of the node in place in this table, both families.
    pub fn is_registered(&self) -> bool {
        self.registered && self.ipv6.as_ref().is_none_or(|f| f.registered)
    }

    /// The first problem recorded, of either family.
    pub fn first_problem(&self) -> Option<&str> {
        self.problem
            .as_deref()
            .or(self.ipv6.as_ref().and_then(|f| f.problem.as_deref()))
    }
}

/// What this node registered, cached so that a warm ADD needs no EC2 call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeState {
    /// File format version.
    pub version: u32,
    /// `clusterName` at registration.
    pub cluster_name: String,
    /// The IPv4 pod range at registration (`podCIDR`, as in the release before IPv6; absent
    /// on an IPv6-only node).
    #[serde(rename = "podCIDR", default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<Ipv4Net>,
    /// The IPv6 pod range at registration, when the node has one.
    #[serde(
        rename = "ipv6PodCIDR",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub pod_cidr_v6: Option<Ipv6Net>,
    /// `routeTableIds` at registration (empty: tag lookup).
    #[serde(default)]
    pub route_table_ids: Vec<String>,
    /// The node, so a warm ADD needs no IMDS request either.
    pub node: NodeIdentity,
    /// Every table the route belongs in.
    pub tables: Vec<TableState>,
    /// Whether source/destination checking was seen off on the ENI.
    pub source_dest_check_off: bool,
    /// When EC2 last confirmed all of this (seconds since the epoch).
    pub verified_at: u64,
    /// The kernel boot id then: a stop/start makes EC2 blackhole the route (and gc may delete
    /// it), so a reboot forces a revalidation.
    #[serde(default)]
    pub boot_id: String,
}

impl NodeState {
    /// Registered in every table (both families), with source/dest check off.
    pub fn is_complete(&self) -> bool {
        self.source_dest_check_off
            && !self.tables.is_empty()
            && self.tables.iter().all(TableState::is_registered)
    }

    /// The pod ranges registered, IPv4 first.
    pub fn pod_cidrs(&self) -> Vec<IpNet> {
        self.pod_cidr
            .map(IpNet::V4)
            .into_iter()
            .chain(self.pod_cidr_v6.map(IpNet::V6))
            .collect()
    }

    /// Whether a warm ADD may trust this state: complete, made for this config, younger than
    /// `stateMaxAgeSeconds`, from this boot.
    pub fn is_fresh_for(&self, config: &Config) -> bool {
        self.version == STATE_VERSION
            && self.is_complete()
            && self.cluster_name == config.cluster_name
            && self.pod_cidr == config.pod_cidr
            && self.pod_cidr_v6 == config.pod_cidr_v6
            && self.route_table_ids == config.route_table_ids
            && self.node.matches(config)
            && self.age() < config.state_max_age()
            && self.is_same_boot()
    }

    /// Written during this boot of the kernel.
    pub fn is_same_boot(&self) -> bool {
        self.boot_id == boot_id()
    }

    /// Time since EC2 last confirmed it.
    pub fn age(&self) -> Duration {
        Duration::from_secs(now_secs().saturating_sub(self.verified_at))
    }

    pub(crate) fn new(config: &Config, node: NodeIdentity) -> Self {
        NodeState {
            version: STATE_VERSION,
            cluster_name: config.cluster_name.clone(),
            pod_cidr: config.pod_cidr,
            pod_cidr_v6: config.pod_cidr_v6,
            route_table_ids: config.route_table_ids.clone(),
            node,
            tables: Vec::new(),
            source_dest_check_off: false,
            verified_at: now_secs(),
            boot_id: boot_id(),
        }
    }
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Why node.json is not a [`NodeState`] this build can use.
enum Format {
    /// Another format version.
    Version(u32),
    /// Not JSON, or not this version's fields.
    Decode(serde_json::Error),
}

/// The one reading of node.json: the version first, since another format's fields may not
/// decode as this one's, then the whole state.
fn parse(bytes: &[u8]) -> Result<NodeState, Format> {
    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    let v: Version = serde_json::from_slice(bytes).map_err(Format::Decode)?;
    if v.version != STATE_VERSION {
        return Err(Format::Version(v.version));
    }
    serde_json::from_slice(bytes).map_err(Format::Decode)
}

/// The state file and its lock in `dataDir`.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

/// Held while a process changes the node's routes: kubelet runs many ADDs at once, and only
/// one of them should talk to EC2 while the others wait and then find the state warm.
#[derive(Debug)]
pub(crate) struct StateLock {
    _file: File,
}

impl StateStore {
    /// The store in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StateStore { dir: dir.into() }
    }

    /// Path of the state file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// The cached state; `None` if there is none, or if it is unreadable or from another
    /// format version (it is only a cache: EC2 is the truth).
    pub fn load(&self) -> Result<Option<NodeState>, Error> {
        let path = self.path();
        let Some(bytes) = self.bytes()? else {
            return Ok(None);
        };
        match parse(&bytes) {
            Ok(s) => Ok(Some(s)),
            Err(Format::Version(v)) => {
                log::info!("{}: version {v}, ignored", path.display());
                Ok(None)
            }
            Err(Format::Decode(e)) => {
                log::warn!("{}: unreadable ({e}), ignored", path.display());
                Ok(None)
            }
        }
    }

    /// The state as it is on disk, for a report (`cni-suite doctor`): `None` if there is
    /// none, [`Error::StateFormat`] when it is another format version or does not decode.
    pub fn read(&self) -> Result<Option<NodeState>, Error> {
        let Some(bytes) = self.bytes()? else {
            return Ok(None);
        };
        parse(&bytes).map(Some).map_err(|f| Error::StateFormat {
            path: self.path(),
            reason: match f {
                Format::Version(v) => {
                    format!("format version {v} (this build reads {STATE_VERSION})")
                }
                Format::Decode(e) => e.to_string(),
            },
        })
    }

    fn bytes(&self) -> Result<Option<Vec<u8>>, Error> {
        let path = self.path();
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::state(path, e)),
        }
    }

    /// Writes atomically and durably ([`state_file::write`]: temp file, fsync, rename, fsync
    /// of the directory), so a crash leaves the old or the new state, never half of one.
    pub fn save(&self, state: &NodeState) -> Result<(), Error> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::state(&self.dir, e))?;
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| Error::state(self.path(), std::io::Error::other(e)))?;
        state_file::write(&self.path(), &bytes).map_err(|e| Error::state(self.path(), e))
    }

    /// Forget the state (deregister).
    pub fn remove(&self) -> Result<(), Error> {
        match std::fs::remove_file(self.path()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::state(self.path(), e)),
        }
    }

    /// Take the node lock, polling so that waiting never blocks a tokio worker and never
    /// outlives the deadline.
    pub(crate) async fn lock(&self, deadline: &Deadline) -> Result<StateLock, Error> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::state(&self.dir, e))?;
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::state(&path, e))?;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(StateLock { _file: file }),
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(e)) => return Err(Error::state(&path, e)),
            }
            if deadline.remaining() < Duration::from_millis(50) {
                return Err(Error::state(
                    &path,
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "another vpc-route process held the node lock until the deadline",
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    fn config(dir: &Path) -> Config {
        Config::from_value(json!({
            "clusterName": "c1", "podCIDR": "10.244.3.0/24", "clusterCIDR": "10.244.0.0/16",
            "dataDir": dir, "instanceId": "i-1", "region": "us-east-1", "eniId": "eni-1",
            "vpcId": "vpc-1"
        }))
        .expect("config")
    }

    fn node() -> NodeIdentity {
        NodeIdentity {
            instance_id: "i-1".into(),
            region: "us-east-1".into(),
            eni_id: "eni-1".into(),
            vpc_id: "vpc-1".into(),
            subnet_id: None,
        }
    }

    #[test]
    fn save_load_roundtrip_and_freshness() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        let store = StateStore::new(dir.path());
        assert_eq!(store.load().expect("load"), None);
        let mut state = NodeState::new(&config, node());
        state.tables.push(TableState::new("rtb-1", 3));
        state.source_dest_check_off = true;
        store.save(&state).expect("save");
        let back = store.load().expect("load").expect("some");
        assert_eq!(back, state);
        assert!(back.is_fresh_for(&config));

        let mut other = config.clone();
        other.pod_cidr = Some("10.244.4.0/24".parse().expect("cidr"));
        assert!(!back.is_fresh_for(&other), "podCIDR changed");
        let mut old = back.clone();
        old.verified_at -= config.state_max_age_seconds + 1;
        assert!(!old.is_fresh_for(&config), "too old");
        let mut rebooted = back;
        rebooted.boot_id = "other-boot".into();
        assert!(!rebooted.is_fresh_for(&config), "rebooted");
    }

    /// node.json as vpc-route 0.1.0 writes it (`to_vec_pretty`), byte for byte: a node
    /// upgraded in place must keep its warm ADD, and a rollback must read what this build
    /// writes.
    const RELEASE_0_1_0_NODE_JSON: &str = r#"{
  "version": 1,
  "clusterName": "c1",
  "podCIDR": "10.244.3.0/24",
  "routeTableIds": [],
  "node": {
    "instanceId": "i-0abc",
    "region": "us-east-1",
    "eniId": "eni-0def",
    "vpcId": "vpc-01",
    "subnetId": "subnet-01"
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
      "problem": "route table rtb-2 is full"
    }
  ],
  "sourceDestCheckOff": true,
  "verifiedAt": 1764806400,
  "bootId": "5f1c2d9e-7b3a-4e51-9c1d-2a3b4c5d6e7f"
}"#;

    #[test]
    fn reads_and_writes_the_released_node_json_byte_for_byte() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::new(dir.path());
        std::fs::write(store.path(), RELEASE_0_1_0_NODE_JSON).expect("write");
        let expected = NodeState {
            version: 1,
            cluster_name: "c1".into(),
            pod_cidr: Some("10.244.3.0/24".parse().expect("cidr")),
            pod_cidr_v6: None,
            route_table_ids: vec![],
            node: NodeIdentity {
                instance_id: "i-0abc".into(),
                region: "us-east-1".into(),
                eni_id: "eni-0def".into(),
                vpc_id: "vpc-01".into(),
                subnet_id: Some("subnet-01".into()),
            },
            tables: vec![
                TableState {
                    id: "rtb-1".into(),
                    routes: 3,
                    registered: true,
                    full: false,
                    problem: None,
                    ipv6: None,
                },
                TableState {
                    id: "rtb-2".into(),
                    routes: 50,
                    registered: false,
                    full: true,
                    problem: Some("route table rtb-2 is full".into()),
                    ipv6: None,
                },
            ],
            source_dest_check_off: true,
            verified_at: 1_764_806_400,
            boot_id: "5f1c2d9e-7b3a-4e51-9c1d-2a3b4c5d6e7f".into(),
        };
        assert_eq!(store.load().expect("load"), Some(expected.clone()));
        assert_eq!(store.read().expect("read"), Some(expected.clone()));
        store.save(&expected).expect("save");
        let written = std::fs::read_to_string(store.path()).expect("read back");
        assert_eq!(written, RELEASE_0_1_0_NODE_JSON);
    }

    #[test]
    fn read_names_another_version_and_garbage_load_ignores_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::new(dir.path());
        assert_eq!(store.read().expect("read"), None);
        std::fs::write(store.path(), br#"{"version":2,"podCIDR":7}"#).expect("write");
        let e = store.read().expect_err("version 2");
        assert!(matches!(e, Error::StateFormat { .. }), "{e:?}");
        assert!(
            e.to_string()
                .contains("format version 2 (this build reads 1)"),
            "{e}"
        );
        assert_eq!(store.load().expect("load"), None);
        std::fs::write(store.path(), br#"{"version":1,"podCIDR":7}"#).expect("write");
        let e = store.read().expect_err("version 1, wrong fields");
        assert!(matches!(e, Error::StateFormat { .. }), "{e:?}");
        assert_eq!(store.load().expect("load"), None);
    }

    #[test]
    fn unreadable_state_is_ignored_not_fatal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::new(dir.path());
        std::fs::write(store.path(), b"{half").expect("write");
        assert_eq!(store.load().expect("load"), None);
        store.remove().expect("remove");
        store.remove().expect("remove twice");
    }

    /// node.json as vpc-route 0.1.0 decodes it, field for field (its NodeState and
    /// TableState; serde ignores the fields it does not know).
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)] // decoded to prove it decodes
    struct Release010NodeState {
        version: u32,
        cluster_name: String,
        #[serde(rename = "podCIDR")]
        pod_cidr: Ipv4Net,
        #[serde(default)]
        route_table_ids: Vec<String>,
        node: NodeIdentity,
        tables: Vec<Release010TableState>,
        source_dest_check_off: bool,
        verified_at: u64,
        #[serde(default)]
        boot_id: String,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Release010TableState {
        id: String,
        routes: usize,
        registered: bool,
        #[serde(default)]
        full: bool,
        #[serde(default)]
        problem: Option<String>,
    }

    #[test]
    fn dual_stack_state_round_trips_and_the_previous_release_reads_its_ipv4_half() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config::from_value(json!({
            "clusterName": "c1", "podCIDRs": ["10.244.3.0/24", "fd00:10:244:3::/64"],
            "clusterCIDRs": ["10.244.0.0/16", "fd00:10:244::/56"], "dataDir": dir.path(),
            "instanceId": "i-1", "region": "us-east-1", "eniId": "eni-1", "vpcId": "vpc-1"
        }))
        .expect("config");
        let store = StateStore::new(dir.path());
        let mut state = NodeState::new(&config, node());
        let mut table = TableState::new("rtb-1", 3);
        table.set(
            Family::Ipv6,
            FamilyState {
                routes: 7,
                registered: false,
                full: true,
                problem: Some("full".into()),
            },
        );
        state.tables.push(table);
        state.source_dest_check_off = true;
        store.save(&state).expect("save");
        let back = store.load().expect("load").expect("some");
        assert_eq!(back, state);
        assert!(!back.is_complete(), "the IPv6 route is missing");
        assert!(back.tables[0].registered, "the IPv4 route is in place");
        assert_eq!(back.tables[0].first_problem(), Some("full"));
        assert_eq!(back.pod_cidrs().len(), 2);
        let mut v4_only = config.clone();
        v4_only.pod_cidr_v6 = None;
        assert!(!back.is_fresh_for(&v4_only), "the ranges differ");

        // A node rolled back to 0.1.0 reads the IPv4 half: its warm ADD stays warm.
        let text = std::fs::read(store.path()).expect("read");
        let old: Release010NodeState = serde_json::from_slice(&text).expect("0.1.0 decodes it");
        assert_eq!(old.pod_cidr.to_string(), "10.244.3.0/24");
        assert!(old.tables[0].registered && !old.tables[0].full);
    }
}
