//! HTTP GETs from inside a network namespace with curl, the way an operator on the node (or
//! the kubelet's probe) reaches an endpoint bound there: the agent's `/metrics` and `/healthz`.

use std::net::SocketAddr;

use crate::netns::Netns;

/// The longest one GET may take (curl's `--max-time`), connect included.
pub const GET_TIMEOUT_SECS: u32 = 5;

/// What an endpoint answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The HTTP status code.
    pub status: u16,
    /// The `Content-Type` header (empty when absent).
    pub content_type: String,
    /// The body.
    pub body: String,
}

/// `GET http://<addr><path>` inside `netns`; `Err` with curl's message when nothing answers
/// (refused, timed out) or curl cannot run.
pub fn get(netns: &Netns, addr: SocketAddr, path: &str) -> Result<Reply, String> {
    let url = format!("http://{addr}{path}");
    let o = netns
        .command("curl")
        .args(["-sS", "--max-time", &GET_TIMEOUT_SECS.to_string()])
        // Status and content type after the body, on a line of their own.
        .args(["-w", "\n%{http_code} %{content_type}", "-g", &url])
        .output()
        .map_err(|e| {
            format!("cannot run curl (conformance/scripts/install-test-deps.sh installs it): {e}")
        })?;
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.status.success() {
        return Err(format!(
            "curl {url}: exit {:?}: {}",
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    let (body, trailer) = out
        .rsplit_once('\n')
        .ok_or_else(|| format!("curl {url}: no status line in {out:?}"))?;
    let (code, content_type) = trailer.split_once(' ').unwrap_or((trailer, ""));
    let status = code
        .parse()
        .map_err(|_| format!("curl {url}: status {code:?} is not a number"))?;
    Ok(Reply {
        status,
        content_type: content_type.to_string(),
        body: body.to_string(),
    })
}
