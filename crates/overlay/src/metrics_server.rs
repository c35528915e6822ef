//! The agent's `/metrics` (Prometheus text) and `/healthz` over plain HTTP, on a thread of its
//! own that only reads [`Telemetry`].

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::telemetry::Telemetry;
use crate::Error;

/// Binds `addr` and serves from a thread; the bound address (port 0 picks one).
pub fn serve(addr: SocketAddr, telemetry: Arc<Telemetry>) -> Result<SocketAddr, Error> {
    let listener = TcpListener::bind(addr)
        .map_err(|e| Error::Config(format!("metricsAddress {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::Config(format!("metricsAddress {addr}: {e}")))?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let _ = answer(conn, &telemetry);
            }
        })
        .map_err(|e| Error::Runtime(format!("cannot start the metrics thread: {e}")))?;
    Ok(bound)
}

fn answer(mut conn: TcpStream, telemetry: &Telemetry) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut head = [0u8; 1024];
    let n = conn.read(&mut head)?;
    let line = String::from_utf8_lossy(&head[..n]);
    let mut words = line.split_whitespace();
    let (status, kind, body) = match (words.next(), words.next()) {
        (Some("GET"), Some("/metrics")) => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            telemetry.render(),
        ),
        (Some("GET"), Some("/healthz")) => match telemetry.health() {
            Ok(()) => ("200 OK", "text/plain", "ok\n".to_string()),
            Err(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
        },
        (Some("GET"), _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".to_string(),
        ),
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
