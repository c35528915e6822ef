//! The CNI bin dir as a runtime sees it: which plugin files in it can be exec'd. The doctor
//! checks the suite's binaries with it, teardown finds `vpc-route` with it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// True when `p` is a regular file with an execute bit set, so a runtime can exec it.
pub fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_with_an_execute_bit_count() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("plugin");
        assert!(!is_executable(&p), "missing");
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(!is_executable(&p), "0644");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(is_executable(&p), "0700");
        assert!(!is_executable(dir.path()), "a directory");
    }
}
