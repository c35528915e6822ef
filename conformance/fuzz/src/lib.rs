//! The properties each fuzz target checks, one function per target, so that libFuzzer (the
//! `fuzz_targets/` binaries) and `cargo test` (replaying the seed corpus on stable, without
//! libFuzzer) run exactly the same code.
//!
//! Every function takes untrusted bytes, as a runtime or an operator would hand them to a
//! plugin, and panics on a property violation. A panic is what libFuzzer reports as a crash;
//! beyond "no panic", each one checks what the plugins rely on: a parsed name cannot escape a
//! directory, an error carries the code the README promises, and a result survives conversion
//! to every spec version and back.

use std::path::Path;

use cni_spec::result::ResultError;
use cni_spec::{command_from, Code, CniResult, Command, Env, NetConf, Route, Version, SUPPORTED};
use node_ipam::Pool;
use overlay::subnet_file::SubnetEnv;
use overlay::OverlayConfig;
use pod_bridge::KubenetConfig;
use serde_json::{Map, Value};

/// Every verb, for checking the environment against each.
const COMMANDS: [Command; 6] = [
    Command::Add,
    Command::Del,
    Command::Check,
    Command::Version,
    Command::Status,
    Command::Gc,
];

/// Whether `name` is safe as one path component under a state directory: not empty, no `/`
/// or NUL, not `.`/`..`, no leading dot (hidden and temp files), only `[A-Za-z0-9_.-]`.
///
/// Written independently of `cni_spec::env::is_valid_identifier`, so a bug there shows here.
fn is_safe_component(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Stdin of a plugin: [`NetConf::parse`], then each plugin's own config decoding and
/// resolution, as the skeleton and the plugins do before any I/O.
pub fn netconf(data: &[u8]) {
    if let Some(hint) = cni_spec::version_hint(data) {
        assert!(hint.len() < 16, "version hint {hint:?} is not bounded");
    }
    let conf = match NetConf::parse(data) {
        Ok(conf) => conf,
        Err(e) => {
            assert!(
                [
                    Code::IncompatibleVersion,
                    Code::DecodingFailure,
                    Code::InvalidNetworkConfig
                ]
                .contains(&e.code),
                "NetConf::parse failed with code {} (README: 1, 6 or 7): {e}",
                e.code
            );
            assert!(!e.msg.is_empty(), "error without a message: {e:?}");
            let printed = e.to_json("1.0.0");
            assert_eq!(printed["code"], e.code.as_u32(), "error object: {printed}");
            return;
        }
    };
    assert!(
        is_safe_component(&conf.name),
        "network name {:?} accepted, but it names the directory <dataDir>/<name>",
        conf.name
    );
    assert!(!conf.plugin_type.is_empty(), "empty type accepted");
    assert!(SUPPORTED.contains(&conf.cni_version));
    if let Some(prev) = &conf.prev_result {
        prev.validate()
            .unwrap_or_else(|e| panic!("prevResult accepted but invalid: {e}"));
        assert!(conf.prev_result_raw.is_some());
    }
    if let Some(valid) = &conf.valid_attachments {
        // Attachments are only compared with lease owners, never used as paths; just touch.
        let _ = valid.iter().map(|a| a.container_id.len()).sum::<usize>();
    }
    kubenet_config(&conf);
    overlay_config(&conf);
}

/// `kubenet-bridge`'s config: decode errors are code 7; a resolved network has a safe state
/// directory, a valid bridge name, an nft-safe table name and a pool that never offers the
/// gateway.
fn kubenet_config(conf: &NetConf) {
    let cfg = match conf.plugin_config::<KubenetConfig>() {
        Ok(cfg) => cfg,
        Err(e) => {
            assert_eq!(e.code, Code::InvalidNetworkConfig, "{e}");
            return;
        }
    };
    let Ok(net) = cfg.resolve(&conf.name) else {
        return;
    };
    cni_spec::validate_ifname(&net.bridge)
        .unwrap_or_else(|e| panic!("bridge {:?} accepted: {e}", net.bridge));
    assert!(!net.bridge.is_empty());
    assert!(
        net.nft_table
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        "table name {:?} is not nft-safe",
        net.nft_table
    );
    let state = net.data_dir.join(&net.name);
    assert_eq!(
        state.parent(),
        Some(net.data_dir.as_path()),
        "state directory {} escapes dataDir {}",
        state.display(),
        net.data_dir.display()
    );
    check_pool(net.pool());
}

/// `vxlan-overlay`'s config: decode errors are code 7; validation never panics, and what it
/// accepts is usable.
fn overlay_config(conf: &NetConf) {
    let cfg = match conf.plugin_config::<OverlayConfig>() {
        Ok(cfg) => cfg,
        Err(e) => {
            assert_eq!(e.code, Code::InvalidNetworkConfig, "{e}");
            return;
        }
    };
    let _ = cfg.subnet_file();
    let _ = cfg.data_dir();
    if cfg.validate().is_err() {
        return;
    }
    let cluster = cfg
        .cluster()
        .unwrap_or_else(|e| panic!("validate() passed but cluster() fails: {e}"));
    assert!(
        (cluster.prefix_len()..=30).contains(&cfg.subnet_len),
        "subnetLen {} accepted for {cluster}",
        cfg.subnet_len
    );
    cni_spec::validate_ifname(&cfg.device())
        .unwrap_or_else(|e| panic!("device {:?} accepted: {e}", cfg.device()));
    assert!((1..1 << 24).contains(&cfg.vni), "vni {} accepted", cfg.vni);
    assert!(cfg.etcd_prefix.starts_with('/'));
}

/// The first few candidates of a pool lie in its subnet and are never the gateway.
fn check_pool(pool: &Pool) {
    for addr in pool.candidates(None).take(4) {
        assert!(pool.contains(addr), "{addr} offered by {pool:?}");
        assert_ne!(addr, pool.gateway(), "gateway offered by {pool:?}");
    }
}

/// A conflist, split as libcni splits it: each plugin gets the list's `name` and
/// `cniVersion` (and a `prevResult` from the plugin before it, when that one is a result).
/// The whole list, fed to a plugin by mistake, must be refused without a panic too.
pub fn conflist(data: &[u8]) {
    netconf(data);
    let Ok(Value::Object(list)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Some(Value::Array(plugins)) = list.get("plugins") else {
        return;
    };
    let mut prev: Option<Value> = None;
    for plugin in plugins {
        let Value::Object(entry) = plugin else {
            continue;
        };
        let mut conf: Map<String, Value> = entry.clone();
        for key in ["name", "cniVersion", "disableCheck", "disableGC"] {
            if let Some(v) = list.get(key) {
                conf.insert(key.into(), v.clone());
            }
        }
        if let Some(p) = prev.take() {
            conf.insert("prevResult".into(), p);
        }
        let bytes = Value::Object(conf).to_string().into_bytes();
        netconf(&bytes);
        // A plugin entry may carry a result to pass on (tests do); use it as the next
        // plugin's prevResult, as a runtime passes results down a chain.
        prev = entry.get("result").cloned();
    }
}

/// Drops what `version` cannot carry, as [`CniResult::to_json`] does.
fn downgrade(result: &CniResult, version: Version) -> CniResult {
    let mut r = result.clone();
    if version < Version::V1_1_0 {
        for i in &mut r.interfaces {
            i.mtu = None;
            i.socket_path.clear();
            i.pci_id.clear();
        }
        for route in &mut r.routes {
            *route = Route::new(route.dst, route.gw);
        }
    }
    r
}

/// A prevResult or cached result: a result that parses must convert to every version, parse
/// back (from text, as the next plugin reads it) to the same data less what that version
/// lacks, print identically again, and pass as a `prevResult` in a config.
pub fn result(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let parsed = match CniResult::from_json(&value) {
        Ok(r) => r,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            if let ResultError::InterfaceIndex { index, count, .. } = e {
                assert!(index >= count);
            }
            return;
        }
    };
    for version in SUPPORTED {
        let printed = parsed.to_json(version);
        assert_eq!(printed["cniVersion"], version.as_str());
        if let Some(ips) = printed.get("ips").and_then(Value::as_array) {
            for ip in ips {
                assert_eq!(
                    ip.get("version").is_some(),
                    version.ips_carry_version(),
                    "[{version}] ips[].version presence: {printed}"
                );
            }
        }
        let text = printed.to_string();
        let reread: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("[{version}] printed result is not JSON ({e}): {text}"));
        let back = CniResult::from_json(&reread).unwrap_or_else(|e| {
            panic!("[{version}] printed result does not parse back: {e}\n{text}")
        });
        assert_eq!(
            back,
            downgrade(&parsed, version),
            "[{version}] round trip changed the result: {text}"
        );
        assert_eq!(
            back.to_json(version),
            printed,
            "[{version}] printing is not stable"
        );
        let mut conf =
            serde_json::json!({"cniVersion": version.as_str(), "name": "fuzz", "type": "t"});
        conf["prevResult"] = printed;
        let conf = NetConf::parse(conf.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("[{version}] prevResult refused: {e}"));
        assert_eq!(conf.prev_result.as_ref(), Some(&back));
    }
}

/// The `CNI_*` environment, as `KEY=VALUE` lines: [`command_from`] and [`Env::from_lookup`]
/// for every verb. What they accept must be safe to use in file and link names.
pub fn env(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let vars: Vec<(&str, &str)> = text
        .split(['\n', '\0'])
        .filter_map(|line| line.split_once('='))
        .collect();
    // The process environment holds one value per key; the first wins here.
    let lookup = |key: &str| vars.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    match command_from(lookup) {
        Ok(command) => {
            assert_eq!(lookup("CNI_COMMAND"), Some(command.as_str()));
        }
        Err(e) => assert_eq!(e.code, Code::InvalidEnvironment, "{e}"),
    }
    for command in COMMANDS {
        match Env::from_lookup(command, lookup) {
            Ok(env) => check_env(command, &env),
            Err(e) => assert_eq!(e.code, Code::InvalidEnvironment, "[{command}] {e}"),
        }
    }
}

fn check_env(command: Command, env: &Env) {
    if !matches!(command, Command::Add | Command::Del | Command::Check) {
        return;
    }
    assert!(
        is_safe_component(&env.container_id) && env.container_id.len() + 1 + 15 <= 255,
        "[{command}] CNI_CONTAINERID {:?} accepted, but it names state files \
         (`<id>@<ifname>` must fit in 255 bytes)",
        env.container_id
    );
    let ifname = &env.ifname;
    assert!(
        !ifname.is_empty()
            && ifname.len() <= 15
            && ifname != "."
            && ifname != ".."
            && !ifname.contains(['/', ':'])
            && !ifname.chars().any(char::is_whitespace),
        "[{command}] CNI_IFNAME {ifname:?} accepted, but the kernel refuses it"
    );
    // The index entry `attachments/<id>@<ifname>` must stay one component.
    let entry = format!("{}@{ifname}", env.container_id);
    assert_eq!(
        Path::new("attachments").join(&entry).parent(),
        Some(Path::new("attachments")),
        "[{command}] index entry {entry:?} escapes its directory"
    );
    match command {
        Command::Del => assert!(env.netns.is_empty() || env.netns.starts_with('/')),
        _ => assert!(env.netns.starts_with('/'), "[{command}] {:?}", env.netns),
    }
}

/// flannel's `subnet.env`, which the agent writes and the plugin reads on every ADD: what
/// parses renders and parses back to the same lease, and gives a usable pool or a clean
/// error.
pub fn subnet_env(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(env) = SubnetEnv::parse(text) else {
        return;
    };
    let rendered = env.render();
    let back = SubnetEnv::parse(&rendered)
        .unwrap_or_else(|e| panic!("rendered subnet.env does not parse: {e}\n{rendered}"));
    assert_eq!(back, env, "subnet.env round trip: {rendered}");
    assert_eq!(env.gateway(), env.subnet.addr());
    if let Ok(pool) = Pool::new(env.subnet.trunc(), Some(env.gateway().into())) {
        check_pool(&pool);
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::PathBuf;

    /// Runs `check` on every file of `corpus/<target>/`; panics if there are none.
    fn replay(target: &str, check: fn(&[u8])) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(target);
        let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut count = 0;
        for entry in entries {
            let path = entry.expect("corpus entry").path();
            let data = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            eprintln!("{target}: {}", path.display());
            check(&data);
            count += 1;
        }
        assert!(count > 0, "no seeds in {}", dir.display());
    }

    #[test]
    fn seed_corpus_passes_every_property() {
        replay("netconf", super::netconf);
        replay("conflist", super::conflist);
        replay("result", super::result);
        replay("env", super::env);
        replay("subnet_env", super::subnet_env);
    }
}
