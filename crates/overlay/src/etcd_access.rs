//! How the agent reaches etcd: the members, TLS (CA, client certificate and key, read from
//! their files at every connect so rotated files are picked up without a restart), user and
//! password, and the timeouts every call is bounded by.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

use crate::config::OverlayConfig;
use crate::registry::Registry;
use crate::Error;

/// The bound on connecting and on every single etcd call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// etcd's members and how to authenticate to them.
#[derive(Clone, Debug)]
pub struct EtcdAccess {
    endpoints: Vec<String>,
    prefix: String,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    user: Option<(String, String)>,
}

/// What identifies the contents of the TLS files without reading them: a change of any
/// (rotation by rename or in place) changes it.
pub type Fingerprint = Vec<Option<(SystemTime, u64, u64)>>;

impl EtcdAccess {
    /// The access the configuration describes.
    pub fn from_config(cfg: &OverlayConfig) -> EtcdAccess {
        EtcdAccess {
            endpoints: cfg.etcd_endpoints.clone(),
            prefix: cfg.etcd_prefix.clone(),
            ca_file: cfg.etcd_ca_file.clone(),
            cert_file: cfg.etcd_cert_file.clone(),
            key_file: cfg.etcd_key_file.clone(),
            user: cfg.etcd_username.clone().zip(cfg.etcd_password.clone()),
        }
    }

    /// Whether the members are reached over TLS.
    pub fn tls(&self) -> bool {
        self.ca_file.is_some()
    }

    /// The TLS files' modification times, sizes and inodes.
    pub fn fingerprint(&self) -> Fingerprint {
        use std::os::unix::fs::MetadataExt;
        [&self.ca_file, &self.cert_file, &self.key_file]
            .into_iter()
            .flatten()
            .map(|p| {
                let m = std::fs::metadata(p).ok()?;
                Some((m.modified().ok()?, m.len(), m.ino()))
            })
            .collect()
    }

    /// Connects (lazily: the first call opens the connection), with the TLS files as they
    /// are now. Requests need a leader, so a member cut off from the others answers at once
    /// instead of serving stale watches.
    pub async fn connect(&self) -> Result<Registry, Error> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(CALL_TIMEOUT)
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), CALL_TIMEOUT)
            .with_require_leader(true);
        if let Some(ca) = &self.ca_file {
            let mut tls = TlsOptions::new()
                .ca_certificate(Certificate::from_pem(read_pem("etcdCAFile", ca)?));
            if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
                tls = tls.identity(Identity::from_pem(
                    read_pem("etcdCertFile", cert)?,
                    read_pem("etcdKeyFile", key)?,
                ));
            }
            opts = opts.with_tls(tls);
        }
        if let Some((user, password)) = &self.user {
            opts = opts.with_user(user, password);
        }
        let client = tokio::time::timeout(
            CALL_TIMEOUT,
            etcd_client::Client::connect(&self.endpoints, Some(opts)),
        )
        .await
        .map_err(|_| Error::EtcdAccess(format!("connecting to {:?} timed out", self.endpoints)))?
        .map_err(|e| self.describe(&e))?;
        Ok(Registry::new(client, &self.prefix))
    }

    /// [`describe`](Self::describe) for an etcd error from the registry; others unchanged.
    pub fn explain(&self, e: Error) -> Error {
        match e {
            Error::Etcd(inner) => self.describe(&inner),
            other => other,
        }
    }

    /// An etcd error in words an operator can act on: the whole chain of causes (tonic's
    /// own text is only "transport error"), and for TLS failures the file to look at.
    pub fn describe(&self, e: &etcd_client::Error) -> Error {
        let text = crate::error_chain(e);
        let shown = |p: &Option<PathBuf>| {
            p.as_deref()
                .map_or("(not set)".to_string(), |p| p.display().to_string())
        };
        let lower = text.to_ascii_lowercase();
        let hint = if lower.contains("unknownissuer")
            || lower.contains("invalid peer certificate")
            || lower.contains("certificate verify failed")
        {
            Some(format!(
                "the etcd member's certificate is not signed by the CA in etcdCAFile {}",
                shown(&self.ca_file)
            ))
        } else if lower.contains("certificaterequired")
            || lower.contains("certificate required")
            || lower.contains("badcertificate")
            || lower.contains("bad certificate")
            || lower.contains("unknownca")
        {
            Some(match (&self.cert_file, &self.key_file) {
                (Some(cert), Some(key)) => format!(
                    "etcd refused this client's certificate: etcdCertFile {} (with etcdKeyFile {}) must be a client certificate signed by a CA the members trust",
                    cert.display(),
                    key.display()
                ),
                _ => "etcd asks for a client certificate and none is set: set etcdCertFile and etcdKeyFile"
                    .to_string(),
            })
        } else if self.tls()
            && self.cert_file.is_none()
            && (lower.contains("connection closed") || lower.contains("canceled"))
        {
            // TLS 1.3: the member checks the client certificate after the handshake and
            // closes the connection without a word the client can read.
            Some(
                "etcd closed the TLS connection: if the members require client certificates \
                 (--client-cert-auth), set etcdCertFile and etcdKeyFile"
                    .to_string(),
            )
        } else if self.tls() && (lower.contains("tls") || lower.contains("handshake")) {
            Some(format!(
                "TLS with etcd failed (etcdCAFile {}, etcdCertFile {})",
                shown(&self.ca_file),
                shown(&self.cert_file)
            ))
        } else {
            None
        };
        match hint {
            Some(h) => Error::EtcdAccess(format!("{h}: {text}")),
            None => Error::EtcdAccess(text),
        }
    }
}

/// Reads a PEM file the configuration names, the error naming the field and the file.
fn read_pem(field: &str, path: &Path) -> Result<Vec<u8>, Error> {
    let pem = std::fs::read(path)
        .map_err(|e| Error::Config(format!("{field} {}: {e}", path.display())))?;
    if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(Error::Config(format!(
            "{field} {}: not a PEM file",
            path.display()
        )));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(extra: &str) -> EtcdAccess {
        let cfg: OverlayConfig = serde_json::from_str(&format!(
            r#"{{"clusterCIDR":"10.244.0.0/16","etcdEndpoints":["https://10.0.0.1:2379"]{extra}}}"#
        ))
        .unwrap();
        EtcdAccess::from_config(&cfg)
    }

    #[test]
    fn unreadable_or_non_pem_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("ca.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let missing = dir.path().join("missing.pem");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let a = access(&format!(r#","etcdCAFile":"{}""#, missing.display()));
        let e = rt.block_on(a.connect()).err().unwrap().to_string();
        assert!(e.contains("etcdCAFile") && e.contains("missing.pem"), "{e}");
        let a = access(&format!(r#","etcdCAFile":"{}""#, junk.display()));
        let e = rt.block_on(a.connect()).err().unwrap().to_string();
        assert!(e.contains("not a PEM file") && e.contains("ca.pem"), "{e}");
    }

    #[test]
    fn fingerprint_changes_when_a_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let a = access(&format!(r#","etcdCAFile":"{}""#, ca.display()));
        let before = a.fingerprint();
        assert!(before[0].is_some());
        let next = dir.path().join("ca.pem.new");
        std::fs::write(&next, "-----BEGIN CERTIFICATE-----\nlonger\n").unwrap();
        std::fs::rename(&next, &ca).unwrap();
        assert_ne!(a.fingerprint(), before);
    }
}
