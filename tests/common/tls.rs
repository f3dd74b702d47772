//! Certificates for TLS tests, made with rcgen: a CA, and server certificates it signs
//! for `127.0.0.1` and `localhost`, written as PEM files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SerialNumber};

/// A test CA; the PEM files it issues live in `dir`.
pub struct Pki {
    /// Where `cert.pem`, `key.pem` and `ca.pem` are written.
    pub dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// One issued server certificate.
pub struct Leaf {
    /// Its PEM.
    pub cert_pem: String,
    /// Its key's PEM.
    pub key_pem: String,
    /// Its DER, as a client sees it in the handshake.
    pub der: Vec<u8>,
}

impl Pki {
    /// A new CA (ECDSA P-256) in a new temp dir, its certificate in `ca.pem`.
    pub fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "unpoll test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca }
    }

    /// The CA certificate's PEM.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A server certificate with `serial`, valid until `days` from now.
    pub fn issue(&self, serial: u64, days: i64) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params.serial_number = Some(SerialNumber::from(serial));
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(days);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// Write `leaf` as `cert.pem` and `key.pem` (replacing them, as a renewal does).
    pub fn install(&self, leaf: &Leaf) {
        write_atomic(&self.cert_path(), &leaf.cert_pem);
        write_atomic(&self.key_path(), &leaf.key_pem);
    }

    /// `DIR/cert.pem`.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// `DIR/key.pem`.
    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    /// A `[tls]` section for the installed pair, with `extra` lines.
    pub fn section(&self, extra: &str) -> String {
        format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n{extra}\n",
            self.cert_path().display(),
            self.key_path().display()
        )
    }

    /// A reqwest client trusting only this CA: `h2` (ALPN h2 and http/1.1; h2 chosen) or
    /// HTTP/1.1 only.
    pub fn client(&self, h2: bool) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.ca_pem().as_bytes()).unwrap();
        let builder = super::reqwest_builder()
            .no_proxy()
            .tls_certs_only([ca])
            .tls_info(true);
        let builder = if h2 { builder } else { builder.http1_only() };
        builder.build().expect("reqwest client")
    }

    /// A rustls client config trusting only this CA, offering `alpn`.
    pub fn rustls_client(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        install_ring();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// The process-wide rustls provider the clients use: ring, as the server does.
pub fn install_ring() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Replace `path` by rename, as editors and cert renewal tools do.
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
