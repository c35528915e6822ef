//! A benchmark's output files (`<name>.json`, `<name>.md`, and a chart `<name>.svg`) and the
//! facts about the machine every report states.

use std::path::Path;

use serde_json::Value;

/// Writes `<stem>.json` (pretty), `<stem>.md` and, when given, `<stem>.svg` into `out`
/// (created if missing).
pub fn write(
    out: &Path,
    stem: &str,
    doc: &Value,
    markdown: &str,
    svg: Option<&str>,
) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let json = serde_json::to_string_pretty(doc).map_err(|e| format!("{stem}.json: {e}"))?;
    let files = [
        ("json", Some(json.as_str())),
        ("md", Some(markdown)),
        ("svg", svg),
    ];
    for (ext, text) in files {
        if let Some(text) = text {
            let path = out.join(format!("{stem}.{ext}"));
            std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// The running kernel's release (`uname -r`), empty if unreadable.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The number of CPUs this process may run on (0 if unknown).
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn writes_json_markdown_and_the_optional_chart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("results");
        let doc = json!({"x": 1});
        write(&out, "a", &doc, "| x |\n", None).expect("write");
        let back: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("a.json")).expect("read"))
                .expect("JSON");
        assert_eq!(back, doc);
        assert_eq!(
            std::fs::read_to_string(out.join("a.md")).expect("read"),
            "| x |\n"
        );
        assert!(!out.join("a.svg").exists(), "no chart was given");
        write(&out, "b", &doc, "", Some("<svg/>")).expect("write");
        assert_eq!(
            std::fs::read_to_string(out.join("b.svg")).expect("read"),
            "<svg/>"
        );
    }

    #[test]
    fn the_kernel_release_is_read() {
        assert!(!kernel_release().is_empty());
    }
}
