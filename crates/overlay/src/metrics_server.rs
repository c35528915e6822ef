//! The agent's HTTP endpoint on `metricsAddress`: `GET /metrics` (the OpenMetrics text of
//! [`Telemetry::render`]) and `GET /healthz` (200 `ok`, or 503 with the reason).
//!
//! One std thread serves one connection at a time, each bounded by [`CONNECTION_DEADLINE`]
//! and a [`MAX_HEAD`]-byte request head, so a stuck or hostile client costs at most that
//! much of this thread and nothing of the agent: the server only reads [`Telemetry`]
//! (atomics and short-held locks), never waits on the agent's threads. No HTTP crate and no
//! async runtime: two read-only paths need neither.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::telemetry::Telemetry;
use crate::Error;

/// What `/metrics` answers with: the OpenMetrics text format, which is what prometheus-client
/// writes (`# EOF` at the end, counters with `_total`).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The longest one connection may take, from accept to the last byte written: a slow client
/// (one byte a second) cannot hold the only serving thread longer than this.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(2);

/// The largest request head read; a scraper's or the kubelet's is a few hundred bytes.
pub const MAX_HEAD: usize = 8 * 1024;

/// Pause after a failed accept (out of file descriptors, say), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Binds `addr` (port 0 picks a free one) and serves `/metrics` and `/healthz` from
/// `telemetry` on a thread of its own; returns the address bound.
pub fn serve(addr: SocketAddr, telemetry: Arc<Telemetry>) -> Result<SocketAddr, Error> {
    let listener = TcpListener::bind(addr).map_err(|source| Error::Metrics { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| Error::Metrics { addr, source })?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || accept_loop(&listener, &telemetry))
        .map_err(|source| Error::Metrics { addr, source })?;
    Ok(bound)
}

fn accept_loop(listener: &TcpListener, telemetry: &Telemetry) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Err(e) = handle(stream, telemetry) {
                    log::debug!("metrics: connection from {peer}: {e}");
                }
            }
            Err(e) => {
                log::warn!("metrics: accept failed: {e}");
                std::thread::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}

/// One response: status line, content type, body.
struct Response {
    status: &'static str,
    content_type: &'static str,
    body: String,
    allow: bool,
}

impl Response {
    fn text(status: &'static str, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            allow: false,
        }
    }
}

fn handle(mut stream: TcpStream, telemetry: &Telemetry) -> io::Result<()> {
    let deadline = Instant::now() + CONNECTION_DEADLINE;
    stream.set_write_timeout(Some(CONNECTION_DEADLINE))?;
    let (response, head_only) = match read_head(&mut stream, deadline) {
        Ok(head) => route(&head, telemetry),
        Err(HeadError::TooLarge) => (
            Response::text(
                "431 Request Header Fields Too Large",
                "request head too large\n",
            ),
            false,
        ),
        Err(HeadError::Malformed) => (Response::text("400 Bad Request", "bad request\n"), false),
        // Timed out or gone: nobody to answer.
        Err(HeadError::Io(e)) => return Err(e),
    };
    let mut out = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    if response.allow {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&response.body);
    }
    stream.write_all(out.as_bytes())?;
    stream.flush()
}

/// The method and path of a request, the query string dropped.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    method: String,
    path: String,
}

#[derive(Debug)]
enum HeadError {
    TooLarge,
    Malformed,
    Io(io::Error),
}

/// Reads up to the blank line ending the request head, within `deadline` and [`MAX_HEAD`].
fn read_head(stream: &mut TcpStream, deadline: Instant) -> Result<Head, HeadError> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head_end(&buf) {
            return parse_head(&buf[..end]);
        }
        if buf.len() >= MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head not complete in time",
            )));
        }
        stream.set_read_timeout(Some(left)).map_err(HeadError::Io)?;
        let want = chunk.len().min(MAX_HEAD - buf.len());
        match stream.read(&mut chunk[..want]) {
            Ok(0) if buf.is_empty() => {
                return Err(HeadError::Io(io::ErrorKind::UnexpectedEof.into()))
            }
            // HTTP/1.0 clients may half-close after a head without the blank line.
            Ok(0) => return parse_head(&buf),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(HeadError::Io(e)),
        }
    }
}

/// Where the head ends (`\r\n\r\n`, or `\n\n` from lenient clients).
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n"))
}

fn parse_head(head: &[u8]) -> Result<Head, HeadError> {
    let text = std::str::from_utf8(head).map_err(|_| HeadError::Malformed)?;
    let line = text.lines().next().ok_or(HeadError::Malformed)?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed);
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Err(HeadError::Malformed);
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Ok(Head {
        method: method.to_string(),
        path: path.to_string(),
    })
}

/// The response to `head`, and whether only its head is sent (HEAD).
fn route(head: &Head, telemetry: &Telemetry) -> (Response, bool) {
    let head_only = head.method == "HEAD";
    if head.method != "GET" && !head_only {
        let mut r = Response::text("405 Method Not Allowed", "only GET and HEAD\n");
        r.allow = true;
        return (r, false);
    }
    let response = match head.path.as_str() {
        "/metrics" => Response {
            status: "200 OK",
            content_type: METRICS_CONTENT_TYPE,
            body: telemetry.render(),
            allow: false,
        },
        "/healthz" => match telemetry.health() {
            Ok(()) => Response::text("200 OK", "ok\n"),
            Err(reason) => Response::text("503 Service Unavailable", format!("{reason}\n")),
        },
        _ => Response::text("404 Not Found", "not found: try /metrics or /healthz\n"),
    };
    (response, head_only)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `request` as is and returns the status code, the head and the body.
    fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request).expect("send");
        let mut reply = String::new();
        s.read_to_string(&mut reply).expect("reply");
        let (head, body) = reply.split_once("\r\n\r\n").expect("a complete response");
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status code");
        (code, head.to_string(), body.to_string())
    }

    fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        exchange(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: test\r\n\r\n").as_bytes(),
        )
    }

    fn server(resync: Duration) -> (Arc<Telemetry>, SocketAddr) {
        let t = Arc::new(Telemetry::new(resync));
        let addr = serve("127.0.0.1:0".parse().unwrap(), t.clone()).expect("serve");
        assert_ne!(addr.port(), 0, "the bound port is returned");
        (t, addr)
    }

    #[test]
    fn metrics_carry_every_metric_name_in_openmetrics_text() {
        let (t, addr) = server(Duration::from_secs(30));
        t.set_lease(Some("10.244.7.0/24".parse().unwrap()));
        t.peers_programmed.set(42);
        t.events_applied.inc_by(5);
        t.full_reconciles.inc();
        t.full_reconcile_seconds.observe(0.02);
        t.lease_renewals.inc();
        t.synced();
        let (code, head, body) = get(addr, "/metrics");
        assert_eq!(code, 200, "{head}\n{body}");
        assert!(
            head.contains(&format!("Content-Type: {METRICS_CONTENT_TYPE}")),
            "{head}"
        );
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
        for name in [
            "vxlan_overlay_peers_programmed 42",
            "vxlan_overlay_events_applied_total 5",
            "vxlan_overlay_full_reconciles_total 1",
            "vxlan_overlay_full_reconcile_duration_seconds_count 1",
            "vxlan_overlay_full_reconcile_duration_seconds_bucket{le=\"0.05\"} 1",
            "vxlan_overlay_etcd_errors_total 0",
            "vxlan_overlay_lease_renewals_total 1",
            "vxlan_overlay_seconds_since_last_sync ",
            "vxlan_overlay_subnet_leased{subnet=\"10.244.7.0/24\"} 1",
        ] {
            assert!(body.contains(name), "/metrics lacks {name:?}:\n{body}");
        }
        assert!(body.ends_with("# EOF\n"), "{body}");
        // HEAD: the same head, no body.
        let (code, head, body) = exchange(addr, b"HEAD /metrics HTTP/1.0\r\n\r\n");
        assert_eq!(code, 200, "{head}");
        assert!(body.is_empty(), "{body}");
    }

    #[test]
    fn healthz_is_200_while_healthy_and_503_with_the_reason() {
        let (t, addr) = server(Duration::from_secs(30));
        let (code, _, body) = get(addr, "/healthz");
        assert_eq!(code, 503, "no lease yet: {body}");
        assert!(body.contains("no subnet lease held"), "{body}");
        t.set_lease(Some("10.244.8.0/24".parse().unwrap()));
        t.synced();
        let (code, head, body) = get(addr, "/healthz?verbose=1");
        assert_eq!((code, body.as_str()), (200, "ok\n"), "{head}");
        assert!(head.contains("Content-Type: text/plain"), "{head}");
        t.set_lease(None);
        let (code, _, body) = get(addr, "/healthz");
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("no subnet lease held"), "{body}");

        // A lease but no sync for 3 x resyncSeconds.
        let (stale, addr) = server(Duration::from_millis(5));
        stale.set_lease(Some("10.244.9.0/24".parse().unwrap()));
        stale.synced();
        std::thread::sleep(Duration::from_millis(30));
        let (code, _, body) = get(addr, "/healthz");
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("no successful sync for"), "{body}");
    }

    #[test]
    fn other_paths_methods_and_bad_requests_are_refused() {
        let (_, addr) = server(Duration::from_secs(30));
        assert_eq!(get(addr, "/").0, 404);
        assert_eq!(get(addr, "/metricsx").0, 404);
        let (code, head, _) =
            exchange(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(code, 405, "{head}");
        assert!(head.contains("Allow: GET, HEAD"), "{head}");
        assert_eq!(exchange(addr, b"nonsense\r\n\r\n").0, 400);
        let mut huge = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
        // Exactly the limit and no blank line: refused without anything left unread (which
        // would make the close a reset).
        huge.resize(MAX_HEAD, b'a');
        assert_eq!(exchange(addr, &huge).0, 431);
        // Still serving after all that.
        assert_eq!(get(addr, "/healthz").0, 503);
    }

    #[test]
    fn a_silent_client_holds_the_server_no_longer_than_the_deadline() {
        let (t, addr) = server(Duration::from_secs(30));
        t.set_lease(Some("10.244.10.0/24".parse().unwrap()));
        t.synced();
        // Connects and says nothing: the next client waits at most the deadline.
        let _silent = TcpStream::connect(addr).expect("connect");
        std::thread::sleep(Duration::from_millis(50));
        let started = Instant::now();
        let (code, _, _) = get(addr, "/healthz");
        assert_eq!(code, 200);
        let waited = started.elapsed();
        assert!(
            waited < CONNECTION_DEADLINE + Duration::from_secs(1),
            "waited {waited:?} behind a silent client"
        );
    }

    #[test]
    fn an_address_in_use_is_an_error_naming_it() {
        let (_, addr) = server(Duration::from_secs(30));
        let err = serve(addr, Arc::new(Telemetry::new(Duration::from_secs(30))))
            .expect_err("the port is taken");
        let text = err.to_string();
        assert!(text.contains(&addr.to_string()), "{text}");
        assert!(text.contains("metricsAddress"), "{text}");
    }
}
