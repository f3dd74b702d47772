//! A certificate chain and its private key, read from PEM files and checked against each
//! other; the expiry `unpoll check` warns about.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// `unpoll check` warns when the certificate expires within this many days.
pub const EXPIRY_WARNING_DAYS: u64 = 14;

/// A loaded, matching certificate chain and key.
#[derive(Clone)]
pub struct CertPair {
    /// What rustls signs handshakes with.
    pub certified: Arc<CertifiedKey>,
    /// The end-entity certificate's `notAfter`.
    pub not_after: SystemTime,
    /// The end-entity certificate's serial number, hex (for logs).
    pub serial: String,
}

impl fmt::Debug for CertPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("CertPair")
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// Which file a problem is in: errors are reported at `tls.cert` or `tls.key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// `tls.cert`.
    Cert,
    /// `tls.key`.
    Key,
}

impl Part {
    /// The config key.
    pub fn key(self) -> &'static str {
        match self {
            Part::Cert => "cert",
            Part::Key => "key",
        }
    }
}

impl CertPair {
    /// Read `cert` (a PEM chain, end-entity first) and `key` (PKCS#8, PKCS#1 or SEC1 PEM)
    /// and check that the key is the certificate's.
    pub fn load(cert: &Path, key: &Path) -> Result<CertPair, (Part, String)> {
        let chain = read_chain(cert).map_err(|e| (Part::Cert, e))?;
        let key_der = read_key(key).map_err(|e| (Part::Key, e))?;
        let (not_after, serial) = validity(&chain[0]).map_err(|e| {
            (
                Part::Cert,
                format!("{}: unreadable certificate: {e}", cert.display()),
            )
        })?;
        let provider = super::provider();
        let certified = CertifiedKey::from_der(chain, key_der, &provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => (
                Part::Key,
                format!(
                    "{} does not match the certificate in {}",
                    key.display(),
                    cert.display()
                ),
            ),
            e => (Part::Key, format!("{}: unusable key: {e}", key.display())),
        })?;
        Ok(CertPair {
            certified: Arc::new(certified),
            not_after,
            serial,
        })
    }

    /// A warning when the certificate expires within [`EXPIRY_WARNING_DAYS`] of `now` (or
    /// has expired).
    pub fn expiry_warning(&self, now: SystemTime) -> Option<String> {
        let date = httpdate::fmt_http_date(self.not_after);
        match self.not_after.duration_since(now) {
            Err(_) => Some(format!("the certificate expired on {date}")),
            Ok(left) if left < Duration::from_secs(EXPIRY_WARNING_DAYS * 86_400) => {
                let days = left.as_secs() / 86_400;
                Some(format!(
                    "the certificate expires in {days} day(s), on {date}"
                ))
            }
            Ok(_) => None,
        }
    }
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let chain = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: invalid PEM: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no CERTIFICATE block (a PEM chain, the server's certificate first)",
            path.display()
        ));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => format!(
            "{}: no PRIVATE KEY block (PKCS#8, RSA or EC, PEM)",
            path.display()
        ),
        e => format!("{}: invalid PEM: {e}", path.display()),
    })
}

/// `notAfter` and the serial of a DER certificate.
fn validity(cert: &CertificateDer<'_>) -> Result<(SystemTime, String), String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|e| e.to_string())?;
    let secs = parsed.validity().not_after.timestamp();
    // Dates before 1970 are expired in any case.
    let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    Ok((not_after, parsed.raw_serial_as_string()))
}
