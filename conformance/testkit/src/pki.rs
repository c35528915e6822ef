//! Certificate authorities and the certificates they sign, made with `openssl` for TLS tests:
//! an ECDSA P-256 CA, server certificates with IP subject alternative names, client
//! certificates. Everything is written as PEM files into a directory the caller owns.
//!
//! The extensions are the ones strict verifiers insist on: rustls (the agent's TLS) rejects a
//! CA without `basicConstraints CA:TRUE` and an end-entity certificate used outside its
//! extended key usage; Go (etcd) checks `clientAuth` on client certificates. Server
//! certificates carry both `serverAuth` and `clientAuth`, because etcd members present the
//! same certificate as clients of each other (peer TLS) and of themselves (the gRPC gateway).

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// Days every certificate is valid: far longer than a test, short enough to be harmless.
const VALID_DAYS: &str = "2";

/// A certificate and its private key, as PEM files.
#[derive(Clone, Debug)]
pub struct KeyPair {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8, unencrypted).
    pub key: PathBuf,
}

/// A self-signed certificate authority whose certificate and key live in `dir`.
#[derive(Debug)]
pub struct CertAuthority {
    name: String,
    dir: PathBuf,
    pair: KeyPair,
}

impl CertAuthority {
    /// Makes a CA named `name` (its common name and the stem of its files) in `dir`, which
    /// must exist. Panics if openssl fails.
    pub fn new(dir: &Path, name: &str) -> CertAuthority {
        let pair = KeyPair {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
        };
        let ext = write_extensions(
            dir,
            name,
            "basicConstraints = critical, CA:TRUE\n\
             keyUsage = critical, keyCertSign, cRLSign\n\
             subjectKeyIdentifier = hash\n",
        );
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-days",
            VALID_DAYS,
            "-subj",
            &format!("/CN={name}"),
            "-config",
            path_str(&ext),
            "-extensions",
            "ext",
            "-keyout",
            path_str(&pair.key),
            "-out",
            path_str(&pair.cert),
        ]);
        CertAuthority {
            name: name.to_owned(),
            dir: dir.to_owned(),
            pair,
        }
    }

    /// The CA's certificate: what a peer configures to trust it.
    pub fn cert(&self) -> &Path {
        &self.pair.cert
    }

    /// The CA's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A server certificate for `name` valid for the addresses `ips` (also usable as a client
    /// certificate, as etcd members need), signed by this CA.
    pub fn issue_server(&self, name: &str, ips: &[IpAddr]) -> KeyPair {
        let sans: Vec<String> = ips.iter().map(|ip| format!("IP:{ip}")).collect();
        self.issue(
            name,
            &format!(
                "basicConstraints = critical, CA:FALSE\n\
                 keyUsage = critical, digitalSignature\n\
                 extendedKeyUsage = serverAuth, clientAuth\n\
                 subjectAltName = {}\n\
                 authorityKeyIdentifier = keyid\n",
                sans.join(", ")
            ),
        )
    }

    /// A client certificate with common name `name`, signed by this CA.
    pub fn issue_client(&self, name: &str) -> KeyPair {
        self.issue(
            name,
            "basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature\n\
             extendedKeyUsage = clientAuth\n\
             authorityKeyIdentifier = keyid\n",
        )
    }

    /// A key and a certificate for `name` with `extensions`, files `<ca>-<name>.pem` and
    /// `<ca>-<name>-key.pem` (so two CAs can issue the same name in one directory).
    fn issue(&self, name: &str, extensions: &str) -> KeyPair {
        static SERIAL: AtomicU64 = AtomicU64::new(1);
        let stem = format!("{}-{name}", self.name);
        let pair = KeyPair {
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}-key.pem")),
        };
        let csr = self.dir.join(format!("{stem}.csr"));
        let ext = write_extensions(&self.dir, &stem, extensions);
        openssl(&[
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            path_str(&pair.key),
            "-out",
            path_str(&csr),
        ]);
        // Distinct serials per issuer: verifiers may cache or reject duplicates.
        let serial = format!(
            "0x{:x}{:04x}",
            std::process::id(),
            SERIAL.fetch_add(1, Ordering::Relaxed)
        );
        openssl(&[
            "x509",
            "-req",
            "-in",
            path_str(&csr),
            "-CA",
            path_str(&self.pair.cert),
            "-CAkey",
            path_str(&self.pair.key),
            "-set_serial",
            &serial,
            "-days",
            VALID_DAYS,
            "-extfile",
            path_str(&ext),
            "-extensions",
            "ext",
            "-out",
            path_str(&pair.cert),
        ]);
        pair
    }
}

/// Writes the concatenation of the certificates of `cas` to `path` (a CA bundle).
pub fn write_bundle(path: &Path, cas: &[&CertAuthority]) {
    let mut bundle = String::new();
    for ca in cas {
        bundle.push_str(
            &fs::read_to_string(ca.cert())
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", ca.cert().display())),
        );
    }
    fs::write(path, bundle).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// Writes an openssl config with section `[ext]` = `extensions` (and the `[req]` section
/// `openssl req` needs) to `<dir>/<stem>.cnf`.
fn write_extensions(dir: &Path, stem: &str, extensions: &str) -> PathBuf {
    let path = dir.join(format!("{stem}.cnf"));
    let text = format!("[req]\ndistinguished_name = dn\n[dn]\n[ext]\n{extensions}");
    fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl: {e}"));
    assert!(
        out.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}
