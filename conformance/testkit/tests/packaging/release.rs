//! `packaging/release.sh`: the tarball whose SHA256SUMS verify, all three plugins and
//! cni-suite in it, binaries that run, and the .deb's layout.

use super::*;

#[test]
fn release_tarball_verifies_and_its_binaries_run() {
    require_root();
    let out = TempDir::new_in("/var/tmp").expect("temp dir");
    // --no-build: pack the binaries the test command built once and the other suites test (a
    // cargo run from inside this test would see cargo test's environment and rebuild).
    let o = run(Command::new("bash")
        .arg(repo_root().join("packaging/release.sh"))
        .args(["--no-build", "--out"])
        .arg(out.path())
        .env("CARGO_TARGET_DIR", target_dir()));
    assert!(o.status.success(), "release.sh failed: {}", text(&o));
    let log = stdout(&o);

    let tgz_name = format!("cni-suite-linux-amd64-{VERSION}.tgz");
    let tgz = out.path().join(&tgz_name);
    assert!(
        tgz.is_file(),
        "{} missing; release.sh said:\n{log}",
        tgz.display()
    );
    run_ok(
        Command::new("sha256sum")
            .args(["-c", &format!("{tgz_name}.sha256")])
            .current_dir(out.path()),
    );

    let x = TempDir::new().expect("temp dir");
    run_ok(
        Command::new("tar")
            .arg("xzf")
            .arg(&tgz)
            .arg("-C")
            .arg(x.path()),
    );
    let root = x.path().join(format!("cni-suite-{VERSION}"));
    let sums = fs::read_to_string(root.join("SHA256SUMS")).expect("SHA256SUMS in the tarball");
    run_ok(
        Command::new("sha256sum")
            .args(["-c", "--strict", "SHA256SUMS"])
            .current_dir(&root),
    );
    // Every release carries all three plugins and the operator command, and nothing else in
    // bin/ (a runtime may exec every file of the CNI bin dir).
    let plugins = ["kubenet-bridge", "vpc-route", "vxlan-overlay"];
    let mut in_bin: Vec<String> = fs::read_dir(root.join("bin"))
        .expect("bin/ in the tarball")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    in_bin.sort();
    assert_eq!(in_bin, plugins, "bin/ of the tarball");
    for (rel, name) in plugins.iter().map(|p| (format!("bin/{p}"), *p)).chain([
        ("sbin/cni-suite".to_string(), "cni-suite"),
        (
            "sbin/vxlan-overlay-agent".to_string(),
            "vxlan-overlay-agent",
        ),
    ]) {
        assert!(
            sums.contains(&format!("  {rel}\n")),
            "SHA256SUMS does not cover {rel}:\n{sums}"
        );
        let bin = root.join(&rel);
        let mode = fs::metadata(&bin).expect("binary").permissions().mode();
        assert_eq!(mode & 0o777, 0o755, "{rel} mode");
        let v = run_ok(Command::new(&bin).arg("--version"));
        let v = stdout(&v);
        assert!(
            v.starts_with(&format!("{name} {VERSION}\n")),
            "{rel} --version: {v}"
        );
        assert!(
            v.contains("1.1.0"),
            "{rel} --version names no CNI versions: {v}"
        );
        let ldd = run(Command::new("ldd").arg(&bin));
        let l = format!("{}{}", stdout(&ldd), String::from_utf8_lossy(&ldd.stderr));
        assert!(
            l.contains("statically linked") || l.contains("not a dynamic executable"),
            "{rel} is not static: {l}"
        );
    }
    for f in [
        "examples/kubenet.conflist",
        "examples/kops-cluster.yaml",
        "examples/containerd-config.toml",
        "examples/kubenet-bridge.conflist.template",
        "examples/podman-containers.conf",
        "examples/podman-kubenet.conflist",
        "examples/vxlan-overlay.conflist",
        "examples/kubenet-vpc-route.conflist",
        "kubernetes/daemonset.yaml",
        "kubernetes/vxlan-overlay-kubernetes.yaml",
        "kubernetes/conflists/vxlan-overlay-kubernetes.conflist.in",
        "kubernetes/install-cni.sh",
        "kubernetes/Containerfile",
        "kubernetes/conflists/kubenet.conflist.in",
    ] {
        assert!(root.join(f).is_file(), "{f} missing from the tarball");
        assert!(
            sums.contains(&format!("  {f}\n")),
            "SHA256SUMS does not cover {f}"
        );
    }
    for f in fs::read_dir(root.join("examples"))
        .expect("examples")
        .flatten()
    {
        let p = f.path();
        if p.extension().is_some_and(|e| e == "conflist") {
            serde_json::from_slice::<Value>(&fs::read(&p).expect("read"))
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()));
        }
    }
    // The Containerfile's own check of its build context, run on the tarball's layout as the
    // image has it (/opt/cni-suite/{bin,conflists,install-cni.sh,SHA256SUMS}).
    let image = TempDir::new().expect("temp dir");
    let opt = image.path().join("opt/cni-suite");
    fs::create_dir_all(&opt).expect("mkdir");
    run_ok(
        Command::new("cp")
            .arg("-r")
            .arg(root.join("bin"))
            .arg(opt.join("bin")),
    );
    run_ok(
        Command::new("cp")
            .arg("-r")
            .arg(root.join("kubernetes/conflists"))
            .arg(opt.join("conflists")),
    );
    fs::copy(
        root.join("kubernetes/install-cni.sh"),
        opt.join("install-cni.sh"),
    )
    .expect("copy");
    fs::copy(root.join("SHA256SUMS"), opt.join("SHA256SUMS")).expect("copy");
    let containerfile =
        fs::read_to_string(root.join("kubernetes/Containerfile")).expect("Containerfile");
    let check = containerfile
        .split("RUN cd /opt/cni-suite && ")
        .nth(1)
        .and_then(|s| s.split("\\\n && ln").next())
        .expect("the Containerfile verifies SHA256SUMS")
        .replace("\\\n", " ");
    let o = run_ok(Command::new("sh").args(["-c", &check]).current_dir(&opt));
    assert!(
        stdout(&o).contains("bin/kubenet-bridge: OK"),
        "{}",
        text(&o)
    );

    // The sums are checked, not decoration: a changed byte is caught.
    let victim = root.join("bin/kubenet-bridge");
    let mut bytes = fs::read(&victim).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&victim, bytes).expect("write");
    let o = run(Command::new("sha256sum")
        .args(["-c", "--quiet", "SHA256SUMS"])
        .current_dir(&root));
    assert!(!o.status.success(), "a corrupted binary passed SHA256SUMS");

    // The .deb: plugins in the CNI bin dir, the operator command outside it, docs.
    let deb = out.path().join(format!("cni-suite_{VERSION}-1_amd64.deb"));
    assert!(
        deb.is_file(),
        "{} missing; release.sh said:\n{log}",
        deb.display()
    );
    let contents = stdout(&run_ok(
        Command::new("dpkg-deb").arg("--contents").arg(&deb),
    ));
    for p in plugins.iter().map(|p| format!("./opt/cni/bin/{p}")).chain([
        "./usr/sbin/cni-suite".to_string(),
        "./usr/sbin/vxlan-overlay-agent".to_string(),
        "./usr/share/doc/cni-suite/examples/kops-cluster.yaml".to_string(),
        "./usr/share/doc/cni-suite/examples/kubenet-bridge.conflist.template".to_string(),
        "./usr/share/doc/cni-suite/kubernetes/daemonset.yaml".to_string(),
    ]) {
        assert!(
            contents.lines().any(|l| l.ends_with(&format!(" {p}"))),
            "{p} not in the .deb:\n{contents}"
        );
    }
    // Exactly the three plugins in the CNI bin dir: cni-suite stays out of it.
    let mut deb_bin: Vec<&str> = contents
        .lines()
        .filter_map(|l| l.split_whitespace().last()?.strip_prefix("./opt/cni/bin/"))
        .filter(|f| !f.is_empty())
        .collect();
    deb_bin.sort_unstable();
    assert_eq!(deb_bin, plugins, "/opt/cni/bin of the .deb:\n{contents}");
    let fields = stdout(&run_ok(Command::new("dpkg-deb").arg("--field").arg(&deb)));
    assert!(fields.contains("Package: cni-suite\n"), "{fields}");
    assert!(
        fields.contains(&format!("Version: {VERSION}-1\n")),
        "{fields}"
    );
    assert!(fields.contains("Depends: nftables"), "{fields}");
    // What a packager reads first: a one-line synopsis under 80 characters naming the
    // contents, then a long description.
    let synopsis = fields
        .lines()
        .find_map(|l| l.strip_prefix("Description: "))
        .unwrap_or_else(|| panic!("no Description: {fields}"));
    assert!(
        synopsis.len() < 80,
        "synopsis of {} characters: {synopsis:?}",
        synopsis.len()
    );
    for part in ["kubenet-bridge", "vpc-route", "vxlan-overlay", "cni-suite"] {
        assert!(
            synopsis.contains(part),
            "the synopsis does not name {part}: {synopsis:?}"
        );
    }
    let long: String = fields
        .lines()
        .skip_while(|l| !l.starts_with("Description: "))
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .collect();
    assert!(
        long.len() > 300,
        "the long description is too short: {long:?}"
    );
    // lintian (Debian's package checker) finds no error; the warnings left are the ones the
    // README lists with their reasons (a new one needs a fix or a reason there).
    assert!(
        has_program("lintian"),
        "lintian is needed: run conformance/scripts/install-test-deps.sh"
    );
    let o = run(Command::new("lintian")
        .args(["--tag-display-limit", "0"])
        .arg(&deb));
    let report = stdout(&o);
    let tags = |kind: &str| -> std::collections::BTreeSet<String> {
        report
            .lines()
            .filter(|l| l.starts_with(kind))
            .filter_map(|l| l.split_whitespace().nth(2))
            .map(str::to_string)
            .collect()
    };
    assert!(tags("E: ").is_empty(), "lintian errors: {}", text(&o));
    let known: std::collections::BTreeSet<String> = LINTIAN_WARNINGS_EXPLAINED
        .iter()
        .map(|t| t.to_string())
        .collect();
    let unexplained: Vec<String> = tags("W: ").difference(&known).cloned().collect();
    assert!(
        unexplained.is_empty(),
        "lintian warnings the README does not explain: {unexplained:?}\n{}",
        text(&o)
    );
    assert!(
        !report.contains("dir-or-file-in-opt"),
        "the override for /opt/cni/bin is not applied: {}",
        text(&o)
    );
    let ex = TempDir::new().expect("temp dir");
    run_ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(ex.path()));
    let v = stdout(&run_ok(
        Command::new(ex.path().join("usr/sbin/cni-suite")).arg("--version"),
    ));
    assert!(v.starts_with(&format!("cni-suite {VERSION}")), "{v}");
}

/// The lintian warnings the .deb keeps, each explained in the README's packaging section.
const LINTIAN_WARNINGS_EXPLAINED: &[&str] = &[
    "initial-upload-closes-no-bugs",
    "no-manual-page",
    "shared-library-lacks-prerequisites",
];
