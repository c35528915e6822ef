//! The vxlan-overlay agent's checks: `agent:` (running, its lease in subnet.env),
//! `agent-etcd:` (its record as the other nodes see it) and `agent-log:`; its `/healthz` is
//! [`super::agent_health`].

use std::time::SystemTime;

use super::report::Check;
use super::Options;
use crate::kernel;
use crate::logs;
use crate::netconf::SuiteNetwork;

/// The vxlan-overlay agent: running, its lease in subnet.env, its state in agent.json.
pub(super) fn check_agent(net: &SuiteNetwork, cfg: &overlay::OverlayConfig) -> Check {
    let name = format!("agent:{}", net.name);
    let subnet_file = cfg.subnet_file();
    let agents = kernel::overlay_agents();
    let env = match overlay::subnet_file::SubnetEnv::read(&subnet_file) {
        Ok(Some(e)) => e,
        Ok(None) => {
            return Check::fail(
                name,
                format!("no subnet leased: {} is missing{}", subnet_file.display(), if agents.is_empty() { " and no agent runs" } else { "" }),
                "run `vxlan-overlay-agent --config <conflist>` (the vxlan-overlay DaemonSet); ADDs fail with code 11 until it leases a subnet",
            )
        }
        Err(e) => return Check::fail(name, e.to_string(), "delete the file and restart the agent: it rewrites it"),
    };
    let state_path = cfg.data_dir().join("agent.json");
    let state = overlay::state::NodeState::load(&state_path);
    let subnet = env.subnet.trunc();
    if let Ok(st) = &state {
        if st.subnet.is_some_and(|s| s != subnet) {
            return Check::warn(
                name,
                format!(
                    "{} says {subnet}, {} says {}",
                    subnet_file.display(),
                    state_path.display(),
                    st.subnet.map(|s| s.to_string()).unwrap_or_default()
                ),
                "restart the agent: it rewrites both",
            );
        }
    }
    if agents.is_empty() {
        return Check::fail(
            name,
            format!("leased {subnet} ({}) but no agent runs: the etcd lease expires after leaseTTL ({} s) and peers drop this node", subnet_file.display(), cfg.lease_ttl),
            "start the vxlan-overlay DaemonSet (vxlan-overlay-agent --config <conflist>)",
        );
    }
    let pids: Vec<String> = agents.iter().map(|p| p.pid.to_string()).collect();
    Check::ok(
        name,
        format!(
            "agent pid {}; leased {subnet} of {}, MTU {} ({}){}",
            pids.join(","),
            env.network,
            env.mtu,
            subnet_file.display(),
            match state {
                Ok(st) => format!(", VTEP MAC {}", st.vtep_mac.unwrap_or_default()),
                Err(e) => format!(", {e}"),
            }
        ),
    )
}

/// The agent's record in etcd, as the other nodes see it: present, for the subnet in
/// subnet.env, with the VTEP MAC the agent keeps. (A static `peersFile` has no record.)
pub(super) fn check_agent_record(net: &SuiteNetwork, cfg: &overlay::OverlayConfig) -> Check {
    let name = format!("agent-etcd:{}", net.name);
    if cfg.etcd_endpoints.is_empty() {
        return Check::skip(name, "no etcdEndpoints: peers come from peersFile");
    }
    let endpoints = cfg.etcd_endpoints.join(",");
    let (me, records) = match overlay::agent::node_records(cfg) {
        Ok(found) => found,
        Err(e) => {
            return Check::warn(
                name,
                format!("cannot read the subnet records from {endpoints}: {e}"),
                "the dataplane keeps working while etcd is away, but no node learns of changes: check etcd and this node's route to it",
            )
        }
    };
    let Some((subnet, record)) = records.iter().find(|(_, r)| r.is_node(me)) else {
        return Check::fail(
            name,
            format!(
                "no subnet record for this node ({me}) among the {} in {endpoints}: the other nodes drop its routes",
                records.len()
            ),
            "restart the agent (it re-leases its subnet); is it running, and does it reach etcd?",
        );
    };
    let leased = overlay::subnet_file::SubnetEnv::read(&cfg.subnet_file())
        .ok()
        .flatten()
        .map(|env| env.subnet.trunc());
    if leased.is_some_and(|l| l != *subnet) {
        return Check::fail(
            name,
            format!(
                "etcd records {subnet} for {me}, but {} says {}",
                cfg.subnet_file().display(),
                leased.map(|l| l.to_string()).unwrap_or_default()
            ),
            "restart the agent: it rewrites subnet.env from its lease",
        );
    }
    let state = overlay::state::NodeState::load(&cfg.data_dir().join("agent.json")).ok();
    let kept_mac = state.and_then(|s| s.vtep_mac);
    if kept_mac
        .as_deref()
        .is_some_and(|m| !m.eq_ignore_ascii_case(&record.backend.vtep_mac))
    {
        return Check::warn(
            name,
            format!(
                "etcd records VTEP MAC {} for {subnet}, the agent keeps {}",
                record.backend.vtep_mac,
                kept_mac.unwrap_or_default()
            ),
            "restart the agent: it republishes its record",
        );
    }
    Check::ok(
        name,
        format!(
            "{subnet} recorded for {me} (VNI {}, VTEP MAC {}); {} other node(s) in {endpoints}",
            record.backend.vni,
            record.backend.vtep_mac,
            records.len() - 1
        ),
    )
}

pub(super) fn check_agent_log(net: &SuiteNetwork, opts: &Options) -> Check {
    let name = format!("agent-log:{}", net.name);
    let Some(path) = net.log_file() else {
        return Check::skip(name, "no logFile: the agent logs to stderr (kubectl -n kube-system logs <vxlan-overlay pod>)");
    };
    let lines = match logs::tail(&path) {
        Ok(l) => l,
        Err(e) => {
            return Check::warn(
                name,
                format!("{}: {e}", path.display()),
                "has the agent started? (it opens logFile first)",
            )
        }
    };
    let s = logs::summarize(
        &lines,
        "vxlan-overlay agent",
        None,
        SystemTime::now(),
        opts.log_window,
    );
    if let Some(last) = s.recent_errors.last() {
        return Check::warn(
            name,
            format!(
                "{} agent ERROR line(s) recently; last: {last}",
                s.recent_errors.len()
            ),
            "see the agent's log for the failing etcd or netlink step",
        );
    }
    if s.lines == 0 {
        return Check::warn(
            name,
            format!("{} holds no agent line", path.display()),
            "has the agent started with this conflist?",
        );
    }
    Check::ok(
        name,
        format!(
            "{} agent line(s), no ERROR in the last {} min",
            s.lines,
            opts.log_window.as_secs() / 60
        ),
    )
}
