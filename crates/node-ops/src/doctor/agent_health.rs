//! The doctor's look at the vxlan-overlay agent's own verdict: `GET /healthz` on the
//! conflist's `metricsAddress` (and a few figures from `/metrics` for the message), over a
//! plain HTTP/1.0 std `TcpStream` with a bounded time and size.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::report::Check;
use crate::kernel;
use crate::netconf::SuiteNetwork;

/// The longest one request may take, connect to last byte: the agent answers from memory
/// in microseconds, and serves one connection at a time for at most 2 s.
pub const REQUEST_LIMIT: Duration = Duration::from_secs(3);

/// The largest response read (the metrics text is a few KiB).
const MAX_RESPONSE: u64 = 1 << 20;

/// A response: status code and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The HTTP status code.
    pub status: u16,
    /// The body.
    pub body: String,
}

/// Where to connect for a server bound to `addr`: a wildcard bind is reached on loopback.
pub fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// `GET path` from `addr` within [`REQUEST_LIMIT`].
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Reply> {
    use std::io::{Error, ErrorKind};
    let deadline = Instant::now() + REQUEST_LIMIT;
    let mut s = TcpStream::connect_timeout(&addr, REQUEST_LIMIT)?;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| Error::new(ErrorKind::TimedOut, "no complete answer in time"))
    };
    s.set_write_timeout(Some(left()?))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nUser-Agent: cni-suite-doctor\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    let mut limited = (&mut s).take(MAX_RESPONSE);
    let mut chunk = [0u8; 8192];
    loop {
        limited.get_mut().set_read_timeout(Some(left()?))?;
        match limited.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| Error::new(ErrorKind::InvalidData, "not an HTTP response"))?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| Error::new(ErrorKind::InvalidData, "no HTTP status line"))?;
    Ok(Reply {
        status,
        body: body.to_string(),
    })
}

/// The value of the unlabelled sample `name` in a Prometheus/OpenMetrics text.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let mut parts = l.split_whitespace();
        (parts.next() == Some(name))
            .then(|| parts.next()?.parse().ok())
            .flatten()
    })
}

/// The key figures of `/metrics`, for the check's message.
fn figures(metrics: &str) -> String {
    let num = |name: &str| sample(metrics, name);
    let mut parts = Vec::new();
    if let Some(p) = num("vxlan_overlay_peers_programmed") {
        parts.push(format!("{p} peer(s) programmed"));
    }
    if let Some(s) = num("vxlan_overlay_seconds_since_last_sync") {
        parts.push(format!("last sync {s:.1} s ago"));
    }
    if let Some(r) = num("vxlan_overlay_full_reconciles_total") {
        parts.push(format!("{r} full reconcile(s)"));
    }
    if let Some(e) = num("vxlan_overlay_etcd_errors_total") {
        parts.push(format!("{e} etcd error(s)"));
    }
    if parts.is_empty() {
        "no vxlan_overlay_* figures in /metrics".into()
    } else {
        parts.join(", ")
    }
}

/// The agent's `/healthz` on `metricsAddress`: ok on 200, a failure with the agent's reason
/// on 503, a failure with the fix when nothing answers.
pub fn check(net: &SuiteNetwork, cfg: &overlay::OverlayConfig) -> Check {
    let name = format!("agent-health:{}", net.name);
    let Some(bound) = cfg.metrics_address else {
        return Check::skip(
            name,
            "no metricsAddress in the vxlan-overlay entry: the agent serves no /healthz",
        );
    };
    let addr = reachable(bound);
    let url = format!("http://{addr}/healthz");
    let reply = match get(addr, "/healthz") {
        Ok(r) => r,
        Err(e) => {
            let running = kernel::overlay_agents();
            let who = if running.is_empty() {
                "no vxlan-overlay agent runs in this network namespace".to_string()
            } else {
                format!(
                    "an agent runs (pid {}) but not with this metricsAddress, or it is stuck",
                    running
                        .iter()
                        .map(|p| p.pid.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                )
            };
            return Check::fail(
                name,
                format!("nothing answers on {url} ({e}): {who}"),
                format!(
                    "start the agent (the vxlan-overlay DaemonSet, or `vxlan-overlay-agent --config {}`); if it runs, its log names the address it serves on (\"serving /metrics and /healthz on\"), which must be metricsAddress {bound}",
                    net.file.display()
                ),
            );
        }
    };
    let metrics = get(addr, "/metrics")
        .ok()
        .filter(|m| m.status == 200)
        .map(|m| figures(&m.body))
        .unwrap_or_else(|| "/metrics unreadable".into());
    match reply.status {
        200 => Check::ok(name, format!("{url}: ok; {metrics}")),
        503 => {
            let reason = reply.body.trim();
            let hint = if reason.contains("lease") {
                "the agent holds no subnet lease: it cannot reach etcd or renew its lease (see the agent-etcd check and the agent's log); peers drop this node once the lease expires"
            } else {
                "the agent has not matched etcd for 3 x resyncSeconds: etcd is unreachable (etcd errors above; see the agent-etcd check) or its reconciles fail (its log names the failing step); restarting it forces a full reconcile"
            };
            Check::fail(name, format!("{url}: 503 {reason}; {metrics}"), hint)
        }
        other => Check::fail(
            name,
            format!(
                "{url}: unexpected HTTP {other}: {}",
                reply.body.trim().chars().take(200).collect::<String>()
            ),
            format!("is something else listening on {bound}? The agent answers 200 or 503 there"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-shot server answering `response` to the first request.
    fn answer_once(response: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(response.as_bytes());
        });
        addr
    }

    #[test]
    fn reads_status_and_body_and_samples() {
        let addr = answer_once(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 21\r\n\r\nno subnet lease held\n",
        );
        let r = get(addr, "/healthz").unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "no subnet lease held\n");
        let text = "# TYPE vxlan_overlay_peers_programmed gauge\nvxlan_overlay_peers_programmed 7\nvxlan_overlay_peers_programmed_x 1\nvxlan_overlay_seconds_since_last_sync 2.5\n# EOF\n";
        assert_eq!(sample(text, "vxlan_overlay_peers_programmed"), Some(7.0));
        assert_eq!(sample(text, "vxlan_overlay_missing"), None);
        assert_eq!(figures(text), "7 peer(s) programmed, last sync 2.5 s ago");
    }

    #[test]
    fn a_silent_server_times_out_and_wildcards_map_to_loopback() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let started = Instant::now();
        assert!(
            get(addr, "/healthz").is_err(),
            "a server that never answers"
        );
        assert!(started.elapsed() < REQUEST_LIMIT + Duration::from_secs(1));
        drop(l);
        assert_eq!(
            reachable("0.0.0.0:9472".parse().unwrap()),
            "127.0.0.1:9472".parse().unwrap()
        );
        assert_eq!(
            reachable("[::]:9472".parse().unwrap()),
            "[::1]:9472".parse().unwrap()
        );
        assert_eq!(
            reachable("10.0.0.1:9472".parse().unwrap()),
            "10.0.0.1:9472".parse().unwrap()
        );
    }
}
