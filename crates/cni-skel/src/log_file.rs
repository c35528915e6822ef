//! The plugin's log: `logFile`/`logLevel` from the config, one line per verb for operators.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cni_spec::CniError;
use log::{Level, LevelFilter, Log, Metadata, Record};
use serde_json::Value;

use crate::Request;

/// Where lines go: the configured file, or stderr for warnings and errors only.
struct Sink {
    file: Option<Mutex<File>>,
    plugin: &'static str,
}

static SINK: OnceLock<Sink> = OnceLock::new();

impl Log for Sink {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        self.write_line(record.level(), &record.args().to_string());
    }

    fn flush(&self) {}
}

impl Sink {
    fn write_line(&self, level: Level, text: &str) {
        let line = format!(
            "{} {:<5} {}: {}\n",
            timestamp(SystemTime::now()),
            level,
            self.plugin,
            text
        );
        match &self.file {
            // One write per line on an O_APPEND file: lines of concurrent plugin runs never
            // interleave.
            Some(file) => {
                if let Ok(mut f) = file.lock() {
                    let _ = f.write_all(line.as_bytes());
                }
            }
            None => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
        }
    }
}

/// Sets up logging from the config's `logFile` and `logLevel` (error, warn, info, debug;
/// default info with a file, warn without). A log file that cannot be opened is reported on
/// stderr and does not fail the verb.
pub fn init(raw: &Value, plugin: &'static str) {
    init_with(raw, plugin, LevelFilter::Warn);
}

/// As [`init`], with the level used when neither `logLevel` nor `logFile` is set (a
/// long-running agent logs `info` to stderr).
pub fn init_with(raw: &Value, plugin: &'static str, default: LevelFilter) {
    let path = raw
        .get("logFile")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty());
    let level = match raw.get("logLevel").and_then(Value::as_str) {
        Some("error") => LevelFilter::Error,
        Some("warn") | Some("warning") => LevelFilter::Warn,
        Some("debug") => LevelFilter::Debug,
        Some("trace") => LevelFilter::Trace,
        Some(_) => LevelFilter::Info,
        None if path.is_some() => LevelFilter::Info.max(default),
        None => default,
    };
    let file = path.and_then(|p| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(p)
            .map_err(|e| eprintln!("{plugin}: cannot open logFile {p}: {e}"))
            .ok()
    });
    let sink = SINK.get_or_init(|| Sink {
        file: file.map(Mutex::new),
        plugin,
    });
    if log::set_logger(sink).is_ok() {
        log::set_max_level(level);
    }
}

/// The one line per ADD, DEL, CHECK and GC: container, netns, ifname, address, duration and
/// outcome.
pub fn verb_line<C>(
    req: &Request<C>,
    took: Duration,
    note: Option<&str>,
    outcome: &Result<Value, CniError>,
) {
    let result = match outcome {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("error {e}"),
    };
    let level = if outcome.is_ok() {
        Level::Info
    } else {
        Level::Error
    };
    log::log!(
        level,
        "{} network={} container={} netns={} ifname={} address={} duration_ms={:.2} outcome={}",
        req.command,
        req.conf.name,
        dash(&req.env.container_id),
        dash(&req.env.netns),
        dash(&req.env.ifname),
        dash(note.unwrap_or_default()),
        took.as_secs_f64() * 1000.0,
        result
    );
}

/// The line for a request refused before the plugin ran (bad `CNI_*` variables, an invalid
/// plugin config): the variables as the runtime set them, escaped, since they were not
/// validated and must not forge log lines.
pub fn rejected_line(command: cni_spec::Command, network: &str, took: Duration, error: &CniError) {
    let var = |key: &str| {
        std::env::var_os(key)
            .map(|v| {
                let v = v.to_string_lossy();
                if v.is_empty() {
                    "-".to_string()
                } else {
                    printable(&v.chars().take(300).collect::<String>())
                }
            })
            .unwrap_or_else(|| "-".to_string())
    };
    log::error!(
        "{} network={} container={} netns={} ifname={} address=- duration_ms={:.2} outcome=error {}",
        command,
        printable(network),
        var("CNI_CONTAINERID"),
        var("CNI_NETNS"),
        var("CNI_IFNAME"),
        took.as_secs_f64() * 1000.0,
        printable(&error.to_string())
    );
}

/// `s` with control characters and whitespace other than a plain space escaped, so that a
/// value cannot start a forged line of its own.
fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escape = c.is_control() || (c.is_whitespace() && c != ' ');
            let text: Vec<char> = if escape {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            text
        })
        .collect()
}

fn dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// RFC 3339 UTC with milliseconds, without a date crate.
fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, dd) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unvalidated_values_cannot_forge_lines() {
        assert_eq!(printable("a\nb\tc d"), "a\\nb\\tc d");
        assert_eq!(printable("../../etc/x"), "../../etc/x");
    }

    #[test]
    fn formats_utc_timestamps() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_456_800_123);
        assert_eq!(timestamp(t), "2026-11-23T18:00:00.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(timestamp(leap), "2000-02-29T00:00:00.000Z");
    }
}
