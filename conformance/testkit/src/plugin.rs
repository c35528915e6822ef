//! Where the suite's plugin binaries are: ours next to the test binary (the same cargo target
//! directory), Debian's reference plugins in /usr/lib/cni. Running them is the runner's
//! [`cni_conformance::plugin`], re-exported here, with the assertions tests make on a
//! plugin's output ([`Expect`]).

use std::path::{Path, PathBuf};

use serde_json::Value;

pub use cni_conformance::plugin::{run_with_stdin, PluginOutput, PluginRun, RUN_TIMEOUT};

/// Where Debian's `containernetworking-plugins` installs the reference plugins.
pub const REFERENCE_PLUGIN_DIR: &str = "/usr/lib/cni";

/// Directory holding our built plugin binaries: `$CNI_SUITE_BIN_DIR`, or else the cargo profile
/// directory this test binary was built into (`…/release/deps/<test>` → `…/release`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CNI_SUITE_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("cannot locate the running test binary");
    let deps = exe.parent().expect("test binary has no parent directory");
    let profile = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("deps directory has no parent")
    } else {
        deps
    };
    profile.to_path_buf()
}

/// Path of our plugin binary `name` in [`bin_dir`]; panics with the build command if it is
/// missing, since cargo does not build other packages' binaries for these tests.
pub fn plugin_binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "plugin binary {} not found: build it first with `cargo build --release -p {name}` \
         (with the same CARGO_TARGET_DIR), or point CNI_SUITE_BIN_DIR at its directory",
        path.display()
    );
    path
}

/// The commit of the previous release, whose state on disk the new binaries must read (the
/// rolling-upgrade tests): `conformance/previous-release`.
pub const PREVIOUS_RELEASE: &str = include_str!("../../previous-release");

/// Where `conformance/scripts/build-previous-release.sh` keeps the previous release's plugin
/// binaries: `$CNI_SUITE_PREVIOUS_BIN_DIR`, or else
/// `${CNI_SUITE_PEERS:-/var/tmp/cni-suite-peers}/release-<commit>`.
pub fn previous_release_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CNI_SUITE_PREVIOUS_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let peers = std::env::var_os("CNI_SUITE_PEERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/cni-suite-peers"));
    peers.join(format!("release-{}", PREVIOUS_RELEASE.trim()))
}

/// Path of the previous release's plugin binary `name`; panics with the command that builds it
/// if it is missing (the test command runs that script before the tests).
pub fn previous_release_binary(name: &str) -> PathBuf {
    let path = previous_release_dir().join(name);
    assert!(
        path.is_file(),
        "previous release's {} not found: run conformance/scripts/build-previous-release.sh",
        path.display()
    );
    path
}

/// Path of a Debian reference plugin (`bridge`, `portmap`, ...); panics if it is missing.
pub fn reference_plugin(name: &str) -> PathBuf {
    let path = Path::new(REFERENCE_PLUGIN_DIR).join(name);
    assert!(
        path.is_file(),
        "reference plugin {} not found: run conformance/scripts/install-test-deps.sh",
        path.display()
    );
    path
}

/// The error object the CNI spec requires on stdout when a plugin fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// `cniVersion` of the error object.
    pub cni_version: String,
    /// `code`: 1-99 are the spec's, 100 and up the plugin's own.
    pub code: u64,
    /// `msg`, never empty.
    pub msg: String,
}

/// Assertions on what a plugin printed, for tests: each fails the test with the plugin's exit
/// status and output. (The runner judges the same things without panicking, in its own terms.)
pub trait Expect {
    /// Asserts exit 0 and returns stdout as JSON (`Value::Null` if stdout is empty, as it may
    /// be for DEL, CHECK and STATUS). `ctx` names the case, like `[1.0.0] add pod a`.
    fn expect_success(&self, ctx: &str) -> Value;

    /// Asserts a spec-shaped failure: non-zero exit, and on stdout a JSON object with string
    /// `cniVersion`, integer `code` and non-empty `msg`. Returns the error.
    fn expect_cni_error(&self, ctx: &str) -> CniError;

    /// [`expect_cni_error`](Self::expect_cni_error) with a given `code`, and, when
    /// `input_version` is given, the `cniVersion` the spec requires: "the same version supplied
    /// on input".
    fn expect_cni_error_code(&self, ctx: &str, code: u64, input_version: Option<&str>) -> CniError;
}

impl Expect for PluginOutput {
    fn expect_success(&self, ctx: &str) -> Value {
        assert!(
            self.status.success(),
            "{ctx}: expected success, {}",
            self.describe()
        );
        assert_no_panic(self, ctx);
        if self.stdout.trim().is_empty() {
            return Value::Null;
        }
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{ctx}: stdout is not JSON ({e}); {}", self.describe()))
    }

    fn expect_cni_error(&self, ctx: &str) -> CniError {
        assert!(
            !self.status.success(),
            "{ctx}: expected failure, {}",
            self.describe()
        );
        assert_no_panic(self, ctx);
        let json = self
            .json()
            .unwrap_or_else(|| panic!("{ctx}: error is not JSON on stdout; {}", self.describe()));
        let field = |name: &str| json.get(name).cloned().unwrap_or(Value::Null);
        let cni_version = field("cniVersion")
            .as_str()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| panic!("{ctx}: error lacks cniVersion; {}", self.describe()))
            .to_owned();
        let code = field("code")
            .as_u64()
            .unwrap_or_else(|| panic!("{ctx}: error lacks integer code; {}", self.describe()));
        let msg = field("msg")
            .as_str()
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| panic!("{ctx}: error lacks msg; {}", self.describe()))
            .to_owned();
        CniError {
            cni_version,
            code,
            msg,
        }
    }

    fn expect_cni_error_code(&self, ctx: &str, code: u64, input_version: Option<&str>) -> CniError {
        let err = self.expect_cni_error(ctx);
        assert_eq!(
            err.code,
            code,
            "{ctx}: wrong error code; {}",
            self.describe()
        );
        if let Some(version) = input_version {
            assert_eq!(
                err.cni_version,
                version,
                "{ctx}: error cniVersion must echo the input's; {}",
                self.describe()
            );
        }
        err
    }
}

/// A panic is a bug whatever the input: Rust prints "panicked" on stderr, our skeleton's
/// panic guard prints code 199 "internal error (a bug ..." (see [`crate::CRASH_MARKERS`]).
fn assert_no_panic(out: &PluginOutput, ctx: &str) {
    let marker = crate::crash_marker(&out.stdout, &out.stderr);
    assert!(
        marker.is_none(),
        "{ctx}: plugin crashed ({marker:?} in its output); {}",
        out.describe()
    );
}
