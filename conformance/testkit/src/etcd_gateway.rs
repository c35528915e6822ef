//! etcd's JSON gRPC gateway (`/v3/kv/...`) and its `/metrics`, spoken over one plain HTTP/1.1
//! keep-alive connection from inside etcd's namespace: thousands of writes a second without an
//! etcd client library (and its async runtime) in the test crate, or an `etcdctl` run each.
//!
//! Writes go through the gateway as `Put`, `DeleteRange` and `Txn` requests, which etcd counts
//! in its own `grpc_server_started_total`; a test that never reads through the gateway can
//! therefore attribute every `Range` request in that counter to the agents it runs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::etcd::{EtcdServer, CLIENT_PORT};
use crate::netns;

/// Bound on connecting, and on each read and write of a request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// etcd's default `--max-txn-ops`: the most operations one transaction may hold.
pub const MAX_TXN_OPS: usize = 128;

/// A keep-alive HTTP/1.1 connection to etcd's client port at 127.0.0.1 inside its namespace.
pub struct EtcdGateway {
    netns_path: PathBuf,
    conn: BufReader<TcpStream>,
}

impl EtcdGateway {
    /// Connects to `etcd`'s client port; panics if that fails within [`REQUEST_TIMEOUT`].
    pub fn connect(etcd: &EtcdServer) -> EtcdGateway {
        let netns_path = etcd.netns().path();
        let conn = BufReader::new(connect_in(&netns_path));
        EtcdGateway { netns_path, conn }
    }

    /// Writes `key` = `value`; returns the store revision of the write.
    pub fn put(&mut self, key: &str, value: &str) -> i64 {
        let body = json!({"key": base64(key.as_bytes()), "value": base64(value.as_bytes())});
        let resp = self.call_json("/v3/kv/put", &body);
        revision(&resp)
    }

    /// Deletes `key`; returns how many keys were deleted (0 or 1).
    pub fn delete(&mut self, key: &str) -> u64 {
        let body = json!({"key": base64(key.as_bytes())});
        deleted(&self.call_json("/v3/kv/deleterange", &body))
    }

    /// Deletes every key starting with `prefix`; returns how many were deleted.
    pub fn delete_prefix(&mut self, prefix: &str) -> u64 {
        let body = json!({
            "key": base64(prefix.as_bytes()),
            "range_end": base64(&prefix_end(prefix.as_bytes())),
        });
        deleted(&self.call_json("/v3/kv/deleterange", &body))
    }

    /// Writes every pair, [`MAX_TXN_OPS`] to a transaction (unconditional, so each succeeds):
    /// for filling etcd quickly where one revision per key does not matter.
    pub fn put_all(&mut self, kvs: &[(String, String)]) {
        for chunk in kvs.chunks(MAX_TXN_OPS) {
            let ops: Vec<Value> = chunk
                .iter()
                .map(|(k, v)| {
                    json!({"request_put": {"key": base64(k.as_bytes()), "value": base64(v.as_bytes())}})
                })
                .collect();
            let resp = self.call_json("/v3/kv/txn", &json!({"success": ops}));
            assert!(
                resp["succeeded"].as_bool() == Some(true),
                "etcd transaction of {} puts did not succeed: {resp}",
                chunk.len()
            );
        }
    }

    /// etcd's Prometheus text (`GET /metrics`).
    pub fn metrics(&mut self) -> String {
        let body = self.request("GET", "/metrics", None);
        String::from_utf8_lossy(&body).into_owned()
    }

    /// `POST path` with a JSON body; panics unless etcd answers 200 with JSON.
    fn call_json(&mut self, path: &str, body: &Value) -> Value {
        let text = body.to_string();
        let resp = self.request("POST", path, Some(text.as_bytes()));
        serde_json::from_slice(&resp).unwrap_or_else(|e| {
            panic!(
                "etcd {path}: answer is not JSON ({e}): {}",
                String::from_utf8_lossy(&resp)
            )
        })
    }

    /// One request; reconnects and sends it again once if the connection turns out closed
    /// before any answer arrived (etcd may drop an idle keep-alive connection).
    fn request(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> Vec<u8> {
        match self.try_request(method, path, body) {
            Ok(resp) => resp,
            Err(Failure::Closed(_)) => {
                self.conn = BufReader::new(connect_in(&self.netns_path));
                self.try_request(method, path, body)
                    .unwrap_or_else(|f| panic!("etcd {method} {path} after reconnecting: {f}"))
            }
            Err(f) => panic!("etcd {method} {path}: {f}"),
        }
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Vec<u8>, Failure> {
        let body = body.unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{CLIENT_PORT}\r\nContent-Length: {}\r\n",
            body.len()
        )
        .into_bytes();
        if method == "POST" {
            req.extend_from_slice(b"Content-Type: application/json\r\n");
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(body);
        self.conn
            .get_mut()
            .write_all(&req)
            .map_err(|e| Failure::Closed(e.to_string()))?;
        let mut status = String::new();
        match self.conn.read_line(&mut status) {
            Ok(0) => return Err(Failure::Closed("connection closed".into())),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(Failure::Closed(e.to_string()))
            }
            Err(e) => return Err(Failure::Io(e.to_string())),
        }
        let code = status.split_whitespace().nth(1).unwrap_or_default();
        let (mut length, mut chunked) = (None, false);
        loop {
            let mut line = String::new();
            if self.read_line(&mut line)? == 0 {
                return Err(Failure::Io("connection closed in the headers".into()));
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse::<usize>().ok();
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = value.eq_ignore_ascii_case("chunked");
                }
            }
        }
        let resp = if chunked {
            self.read_chunked()?
        } else {
            let n = length.ok_or_else(|| Failure::Io("no Content-Length".into()))?;
            let mut buf = vec![0; n];
            self.conn
                .read_exact(&mut buf)
                .map_err(|e| Failure::Io(e.to_string()))?;
            buf
        };
        if code != "200" {
            return Err(Failure::Status(format!(
                "{} {}",
                status.trim(),
                String::from_utf8_lossy(&resp)
            )));
        }
        Ok(resp)
    }

    fn read_line(&mut self, line: &mut String) -> Result<usize, Failure> {
        self.conn
            .read_line(line)
            .map_err(|e| Failure::Io(e.to_string()))
    }

    fn read_chunked(&mut self) -> Result<Vec<u8>, Failure> {
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            self.read_line(&mut size)?;
            let size = size.trim().split(';').next().unwrap_or_default();
            let n = usize::from_str_radix(size, 16)
                .map_err(|e| Failure::Io(format!("chunk size {size:?}: {e}")))?;
            let mut chunk = vec![0; n + 2]; // the data and its CRLF
            self.conn
                .read_exact(&mut chunk)
                .map_err(|e| Failure::Io(e.to_string()))?;
            if n == 0 {
                // The last chunk: "0\r\n" then an empty trailer line, already read above.
                return Ok(body);
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Why a request failed.
#[derive(Debug)]
enum Failure {
    /// The connection was closed before an answer started: worth one reconnect.
    Closed(String),
    Io(String),
    Status(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Closed(e) => write!(f, "connection closed ({e})"),
            Failure::Io(e) => write!(f, "{e}"),
            Failure::Status(e) => write!(f, "answered {e}"),
        }
    }
}

/// A TCP connection to 127.0.0.1:[`CLIENT_PORT`] in the namespace at `netns_path`, made on a
/// thread inside it so that the socket belongs to that namespace while this process stays
/// where it is.
fn connect_in(netns_path: &Path) -> TcpStream {
    let addr = SocketAddr::from(([127, 0, 0, 1], CLIENT_PORT));
    let stream = netns::on_thread_inside(netns_path, || {
        TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)
    })
    .unwrap_or_else(|e| panic!("cannot enter {}: {e}", netns_path.display()))
    .unwrap_or_else(|e| panic!("cannot connect to etcd's gateway at {addr}: {e}"));
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(REQUEST_TIMEOUT)))
        .and_then(|()| stream.set_nodelay(true))
        .expect("set socket options");
    stream
}

/// The value of the counter or gauge `name{labels}` in Prometheus text, summed over every
/// series whose labels include all of `labels`; `None` if no series matches.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once('}') {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None if rest.starts_with(' ') => ("", rest),
            None => continue, // a longer metric name sharing this prefix
        };
        let has = |(k, v): &(&str, &str)| {
            label_text
                .split(',')
                .any(|pair| pair == format!("{k}=\"{v}\""))
        };
        if labels.iter().all(has) {
            if let Ok(x) = value.trim().parse::<f64>() {
                *sum.get_or_insert(0.0) += x;
            }
        }
    }
    sum
}

/// The gRPC requests etcd has started for `method` of its KV service (`Range`, `Put`,
/// `DeleteRange`, `Txn`), from its `/metrics` text; 0 if absent.
pub fn kv_requests(metrics_text: &str, method: &str) -> u64 {
    metric(
        metrics_text,
        "grpc_server_started_total",
        &[("grpc_method", method), ("grpc_service", "etcdserverpb.KV")],
    )
    .map_or(0, |x| x as u64)
}

/// Standard base64 with padding: how the gateway carries keys and values.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The end of the key range holding every key that starts with `prefix` (etcd's
/// `clientv3.GetPrefixRangeEnd`): the prefix with its last byte below 0xff incremented.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}

/// The revision in a gateway answer's header (int64 fields are JSON strings there).
fn revision(resp: &Value) -> i64 {
    int_field(&resp["header"]["revision"])
        .unwrap_or_else(|| panic!("etcd answer without a header revision: {resp}"))
}

/// `deleted` of a DeleteRange answer; absent means 0 (proto3 JSON omits zero values).
fn deleted(resp: &Value) -> u64 {
    int_field(&resp["deleted"]).map_or(0, |n| u64::try_from(n).unwrap_or(0))
}

fn int_field(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn prefix_end_increments_the_last_byte_below_0xff() {
        assert_eq!(prefix_end(b"/a/subnets/"), b"/a/subnets0".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b".to_vec());
        assert_eq!(prefix_end(&[0xff]), vec![0]);
    }

    #[test]
    fn metrics_sum_the_series_that_carry_the_labels() {
        let text = "# TYPE grpc_server_started_total counter\n\
            grpc_server_started_total{grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 7\n\
            grpc_server_started_total{grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 3\n\
            grpc_server_started_total_other{grpc_method=\"Range\"} 100\n\
            process_resident_memory_bytes 1.5e+07\n";
        assert_eq!(kv_requests(text, "Range"), 7);
        assert_eq!(kv_requests(text, "Txn"), 0);
        assert_eq!(
            metric(text, "grpc_server_started_total", &[("grpc_type", "unary")]),
            Some(10.0)
        );
        assert_eq!(
            metric(text, "process_resident_memory_bytes", &[]),
            Some(1.5e7)
        );
    }
}
