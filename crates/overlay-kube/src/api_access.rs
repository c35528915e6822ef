//! The agent's access to the API server: a client from the configured kubeconfig or the
//! in-cluster service account, this node's name, and every call it makes bounded by a
//! timeout, its errors in words naming what to fix.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, ObjectList, Patch, PatchParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use overlay::OverlayConfig;

use crate::Error;

/// The bound of every single API call (get, list, patch).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a watch lasts on the server's side (`timeoutSeconds`) before it is resumed.
pub const WATCH_SECONDS: u32 = 60;
/// How long the agent waits for the next watch message before it takes the watch as lost:
/// the server ends a quiet watch after [`WATCH_SECONDS`], so a longer silence is a dead
/// connection.
pub const WATCH_SILENCE: Duration = Duration::from_secs(WATCH_SECONDS as u64 + 15);
/// How long connecting to the API server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A stream of watch events of Nodes.
pub type NodeEvents = BoxStream<'static, kube::Result<WatchEvent<Node>>>;

/// The API server, as this node's agent talks to it.
#[derive(Clone)]
pub struct ApiAccess {
    nodes: Api<Node>,
    node_name: String,
    server: String,
}

impl ApiAccess {
    /// The client the configuration asks for: `kubeconfig` when set, else the in-cluster
    /// service account; this node's name from `NODE_NAME`, else `nodeName`, else the
    /// hostname.
    pub async fn from_config(cfg: &OverlayConfig) -> Result<ApiAccess, Error> {
        let mut config = match &cfg.kubeconfig {
            Some(path) => kubeconfig(path).await?,
            None => Config::incluster().map_err(|e| Error::ClientConfig {
                from: "the in-cluster service account (KUBERNETES_SERVICE_HOST, \
                       /var/run/secrets/kubernetes.io/serviceaccount)"
                    .into(),
                message: error_chain(&e),
            })?,
        };
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        // Each call has its own bound (CALL_TIMEOUT, WATCH_SILENCE): no read timeout of the
        // connection, which would cut a quiet watch.
        config.read_timeout = None;
        config.write_timeout = Some(CALL_TIMEOUT);
        let server = config.cluster_url.to_string();
        // kube's `ring` feature asks for ring, but a workspace build (CI's `cargo build
        // --workspace`) also turns on rustls's aws-lc-rs through the AWS SDK of vpc-route,
        // and rustls then refuses to pick one and panics at the first TLS connection. Name
        // ring once per process; a second install (another client) fails harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::try_from(config).map_err(|e| Error::ClientConfig {
            from: server.clone(),
            message: error_chain(&e),
        })?;
        Ok(ApiAccess {
            nodes: Api::all(client),
            node_name: node_name(cfg)?,
            server,
        })
    }

    /// This node's Node name.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The API server's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// This node's Node, `None` when it does not exist (yet).
    pub async fn own_node(&self) -> Result<Option<Node>, Error> {
        let what = format!("getting Node {}", self.node_name);
        bounded(&what, CALL_TIMEOUT, self.nodes.get_opt(&self.node_name)).await
    }

    /// Every Node, with the list's resourceVersion.
    pub async fn list_nodes(&self) -> Result<ObjectList<Node>, Error> {
        bounded(
            "listing Nodes",
            CALL_TIMEOUT * 3,
            self.nodes.list(&ListParams::default()),
        )
        .await
    }

    /// A watch of every Node from `resource_version`, ended by the server after
    /// [`WATCH_SECONDS`], with bookmarks (the resourceVersion stays fresh on a quiet cluster).
    pub async fn watch_nodes(&self, resource_version: &str) -> Result<NodeEvents, Error> {
        // Bookmarks are on by default.
        let params = WatchParams::default().timeout(WATCH_SECONDS);
        let stream = bounded(
            "watching Nodes",
            CALL_TIMEOUT,
            self.nodes.watch(&params, resource_version),
        )
        .await?;
        Ok(stream.boxed())
    }

    /// A strategic merge patch of this node's Node through the nodes/status subresource
    /// (flannel's `PatchStatus`: annotations and conditions both go this way).
    pub async fn patch_own_status(
        &self,
        what: &str,
        patch: &serde_json::Value,
    ) -> Result<(), Error> {
        let what = format!("{what} (patch of nodes/{}/status)", self.node_name);
        bounded(
            &what,
            CALL_TIMEOUT,
            self.nodes.patch_status(
                &self.node_name,
                &PatchParams::default(),
                &Patch::Strategic(patch),
            ),
        )
        .await
        .map(|_| ())
    }
}

/// A client configuration from the kubeconfig at `path` (its current context).
async fn kubeconfig(path: &Path) -> Result<Config, Error> {
    let from = || path.display().to_string();
    let file = Kubeconfig::read_from(path).map_err(|e| Error::ClientConfig {
        from: from(),
        message: error_chain(&e),
    })?;
    Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::ClientConfig {
            from: from(),
            message: error_chain(&e),
        })
}

/// `NODE_NAME` (the DaemonSet's downward API), else `nodeName`, else the hostname.
fn node_name(cfg: &OverlayConfig) -> Result<String, Error> {
    if let Some(n) = std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()) {
        return Ok(n);
    }
    if let Some(n) = cfg.node_name.clone().filter(|n| !n.is_empty()) {
        return Ok(n);
    }
    let path = Path::new("/proc/sys/kernel/hostname");
    let host = std::fs::read_to_string(path).map_err(|e| {
        Error::Overlay(overlay::Error::Config(format!(
            "no NODE_NAME, no nodeName, and the hostname is unreadable ({}: {e})",
            path.display()
        )))
    })?;
    Ok(host.trim().to_string())
}

/// `call`, bounded by `after`; its error in words (a refusal as [`Error::Denied`]).
async fn bounded<T>(
    what: &str,
    after: Duration,
    call: impl Future<Output = kube::Result<T>>,
) -> Result<T, Error> {
    match tokio::time::timeout(after, call).await {
        Err(_) => Err(Error::Timeout {
            what: what.to_string(),
            after,
        }),
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(describe(what, &e)),
    }
}

/// An API error in words: 401 and 403 as [`Error::Denied`], the rest as [`Error::Api`].
pub fn describe(what: &str, e: &kube::Error) -> Error {
    match e {
        kube::Error::Api(status) if status.code == 401 || status.code == 403 => Error::Denied {
            what: what.to_string(),
            message: format!("{} {}: {}", status.code, status.reason, status.message),
        },
        kube::Error::Api(status) => Error::Api {
            what: what.to_string(),
            message: format!("{} {}: {}", status.code, status.reason, status.message),
        },
        other => Error::Api {
            what: what.to_string(),
            message: error_chain(other),
        },
    }
}

/// An error with its causes, `a: b: c`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}
