//! Where the suite's plugin binaries are: ours next to the test binary (the same cargo target
//! directory), Debian's reference plugins in /usr/lib/cni. Running them is the runner's
//! [`cni_conformance::plugin`], re-exported here.

use std::path::{Path, PathBuf};

pub use cni_conformance::plugin::{run_with_stdin, CniError, PluginOutput, PluginRun, RUN_TIMEOUT};

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
