//! `[tls]`: the certificate and key of the main listener, the optional plain-HTTP
//! redirect listener, and the HTTP/2 settings of TLS connections.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::pair::CertPair;
use crate::config::{ConfigErrors, join, parse_duration};

/// Default `tls.max_concurrent_streams`: well above a browser's needs for one origin
/// (Chromium opens one stream per tab's event source, page and assets), and the bound on
/// one connection's idle streams.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 256;
/// Default `tls.handshake_timeout`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The `[tls]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTlsConfig {
    cert: Option<String>,
    key: Option<String>,
    redirect_http: Option<String>,
    max_concurrent_streams: Option<u32>,
    handshake_timeout: Option<String>,
}

/// Validated `[tls]` settings, with the pair read from `cert` and `key`.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM certificate chain, end-entity first. Re-read on reload.
    pub cert: PathBuf,
    /// PEM private key. Re-read on reload.
    pub key: PathBuf,
    /// A plain HTTP listener answering `308` to the same URL over https. Start-only.
    pub redirect_http: Option<SocketAddr>,
    /// Streams a client may open at once on one HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// Time a client has to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// The pair read from `cert` and `key` when this config was validated.
    pub pair: CertPair,
}

impl RawTlsConfig {
    /// Validate, reading the pair; every problem is pushed at its key under `path`.
    pub fn validate(self, path: &str, errors: &mut ConfigErrors) -> Option<TlsConfig> {
        let mut file = |key: &str, value: Option<String>| match value.filter(|v| !v.is_empty()) {
            Some(v) => Some(PathBuf::from(v)),
            None => {
                errors.push(
                    join(path, key),
                    format!("required: a PEM file path (e.g. {key} = \"/etc/unpoll/{key}.pem\")"),
                );
                None
            }
        };
        let cert = file("cert", self.cert);
        let key = file("key", self.key);
        let redirect_http = self.redirect_http.and_then(|text| {
            text.parse::<SocketAddr>()
                .map_err(|_| {
                    errors.push(
                        join(path, "redirect_http"),
                        format!("invalid address {text:?} (write e.g. \"0.0.0.0:80\")"),
                    )
                })
                .ok()
        });
        let max_concurrent_streams = self
            .max_concurrent_streams
            .unwrap_or(DEFAULT_MAX_CONCURRENT_STREAMS);
        if max_concurrent_streams == 0 {
            errors.push(join(path, "max_concurrent_streams"), "must be at least 1");
        }
        let handshake_timeout = match self.handshake_timeout.as_deref() {
            None => DEFAULT_HANDSHAKE_TIMEOUT,
            Some(text) => match parse_duration(text) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    errors.push(join(path, "handshake_timeout"), "must be more than 0s");
                    DEFAULT_HANDSHAKE_TIMEOUT
                }
                Err(e) => {
                    errors.push(join(path, "handshake_timeout"), e);
                    DEFAULT_HANDSHAKE_TIMEOUT
                }
            },
        };
        let (cert, key) = (cert?, key?);
        let pair = CertPair::load(&cert, &key)
            .map_err(|(part, message)| errors.push(join(path, part.key()), message))
            .ok()?;
        Some(TlsConfig {
            cert,
            key,
            redirect_http,
            max_concurrent_streams,
            handshake_timeout,
            pair,
        })
    }
}

impl TlsConfig {
    /// Warnings for `unpoll check` and the logs: the certificate expires soon.
    pub fn warnings(&self, now: SystemTime) -> Vec<(String, String)> {
        self.pair
            .expiry_warning(now)
            .map(|w| {
                (
                    "tls.cert".to_string(),
                    format!("{}: {w}", self.cert.display()),
                )
            })
            .into_iter()
            .collect()
    }
}
