//! Every workspace binary answers `--help` and `--version` (the versions it speaks).

use super::*;

/// The binary targets of every workspace package, as cargo lists them: a binary added later
/// is covered (or this test names it) without anyone remembering to list it here.
fn workspace_binaries() -> Vec<String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let o = run_ok(
        Command::new(cargo)
            .args([
                "metadata",
                "--no-deps",
                "--offline",
                "--format-version",
                "1",
            ])
            .current_dir(repo_root()),
    );
    let meta: Value = serde_json::from_slice(&o.stdout).expect("cargo metadata is JSON");
    let mut bins: Vec<String> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.contains(&json!("bin")))
        })
        .filter_map(|t| t["name"].as_str().map(str::to_string))
        .collect();
    bins.sort();
    bins
}

/// The spec versions each binary must say it speaks on `--version`: the plugins, cni-suite
/// (which asks them VERSION) and the runner every version; the benches the one version they
/// configure (cni-bench), attach pods at through cnitool (vxlan-bench) or write the agent's
/// conflist at (vxlan-scale-bench).
fn spoken_versions(bin: &str) -> Vec<&'static str> {
    match bin {
        "kubenet-bridge"
        | "vpc-route"
        | "vxlan-overlay"
        | "vxlan-overlay-agent"
        | "cni-suite"
        | "cni-conformance" => cni_testkit::SPEC_VERSIONS.to_vec(),
        "cni-bench" | "vxlan-bench" | "vxlan-scale-bench" => vec!["1.0.0"],
        other => panic!("binary {other} is new: add the CNI versions it speaks to this test"),
    }
}

#[test]
fn every_binary_answers_help_and_version() {
    let bins = workspace_binaries();
    for b in [
        "kubenet-bridge",
        "vpc-route",
        "vxlan-overlay",
        "vxlan-overlay-agent",
        "cni-suite",
        "cni-conformance",
        "cni-bench",
        "vxlan-bench",
        "vxlan-scale-bench",
    ] {
        assert!(
            bins.iter().any(|x| x == b),
            "cargo metadata lacks {b}: {bins:?}"
        );
    }
    for b in &bins {
        // The test command builds every binary first: a missing one is a failure.
        let p = plugin_binary(b);
        let v = stdout(&run_ok(Command::new(&p).arg("--version").env_clear()));
        let want = format!(
            "{b} {VERSION}\nCNI spec versions: {}\n",
            spoken_versions(b).join(", ")
        );
        assert_eq!(v, want, "{b} --version");
        let h = stdout(&run_ok(Command::new(&p).arg("--help").env_clear()));
        assert!(
            h.len() > 300 && h.contains("--version") && h.contains("--help"),
            "{b} --help must describe the binary and list its options: {h}"
        );
    }
    // The agent's own binary, and the command of earlier releases, which execs it.
    let agent = stdout(&run_ok(
        Command::new(plugin_binary("vxlan-overlay-agent")).arg("--help"),
    ));
    let compat = stdout(&run_ok(
        Command::new(plugin_binary("vxlan-overlay")).args(["agent", "--help"]),
    ));
    assert_eq!(
        compat, agent,
        "vxlan-overlay agent must run vxlan-overlay-agent"
    );
    for want in [
        "usage: vxlan-overlay-agent --config",
        "-c, --config",
        "-h, --help",
        "SIGTERM",
        "etcdEndpoints",
    ] {
        assert!(agent.contains(want), "agent --help lacks {want:?}: {agent}");
    }
    for sub in ["doctor", "teardown"] {
        let h = stdout(&run_ok(
            Command::new(plugin_binary("cni-suite")).args([sub, "--help"]),
        ));
        assert!(
            h.contains("--json") && h.contains("--conf-dir"),
            "cni-suite {sub} --help: {h}"
        );
    }
    let o = run(Command::new(plugin_binary("cni-suite")).arg("no-such-command"));
    assert_eq!(
        o.status.code(),
        Some(2),
        "a usage error exits 2: {}",
        text(&o)
    );
}
