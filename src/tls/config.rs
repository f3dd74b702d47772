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

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_pair(dir: &std::path::Path, days: i64) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
        let cert = params.self_signed(&key).unwrap();
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    fn validate(text: &str) -> Result<TlsConfig, String> {
        let raw: RawTlsConfig = toml::from_str(text).unwrap();
        let mut errors = ConfigErrors::default();
        let config = raw.validate("tls", &mut errors);
        match config {
            Some(config) if errors.is_empty() => Ok(config),
            _ => Err(errors.to_string()),
        }
    }

    #[test]
    fn a_matching_pair_loads_with_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pem_pair(dir.path(), 90);
        let text = format!("cert = {:?}\nkey = {:?}", cert, key);
        let config = validate(&text).unwrap();
        assert_eq!(
            config.max_concurrent_streams,
            DEFAULT_MAX_CONCURRENT_STREAMS
        );
        assert_eq!(config.handshake_timeout, DEFAULT_HANDSHAKE_TIMEOUT);
        assert_eq!(config.redirect_http, None);
        assert!(config.warnings(SystemTime::now()).is_empty());
        // 90 days from now, seen from 80 days on: a warning naming the file.
        let later = SystemTime::now() + Duration::from_secs(80 * 86_400);
        let warnings = config.warnings(later);
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].0, "tls.cert");
        assert!(
            warnings[0].1.contains("expires in 9 day(s)"),
            "{warnings:?}"
        );
        let expired = SystemTime::now() + Duration::from_secs(91 * 86_400);
        assert!(config.warnings(expired)[0].1.contains("expired on"));
    }

    #[test]
    fn every_problem_is_named_by_its_key() {
        let errors = validate(
            "max_concurrent_streams = 0\nhandshake_timeout = \"0s\"\n\
                               redirect_http = \"nowhere\"",
        )
        .unwrap_err();
        for expected in [
            "tls.cert: required",
            "tls.key: required",
            "tls.redirect_http: invalid address \"nowhere\"",
            "tls.max_concurrent_streams: must be at least 1",
            "tls.handshake_timeout: must be more than 0s",
        ] {
            assert!(errors.contains(expected), "{expected:?} in {errors}");
        }

        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = pem_pair(dir.path(), 90);
        let other = tempfile::tempdir().unwrap();
        let (_, other_key) = pem_pair(other.path(), 90);
        let errors = validate(&format!("cert = {cert:?}\nkey = {other_key:?}")).unwrap_err();
        assert!(
            errors.starts_with(&format!("tls.key: {} does not match", other_key.display())),
            "{errors}"
        );
        let errors = validate(&format!("cert = {other_key:?}\nkey = {other_key:?}")).unwrap_err();
        assert!(
            errors.contains("tls.cert: ") && errors.contains("no CERTIFICATE"),
            "{errors}"
        );
    }

    /// The commented-out `[tls]` example of `config.toml.example` shows the defaults.
    #[test]
    fn example_file_section_shows_the_defaults() {
        let text = include_str!("../../config.toml.example");
        let start = text.find("# [tls]\n").expect("[tls] example");
        let end = start + text[start..].find("[admin]").expect("[admin] follows");
        let keys: String = text[start..end]
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.contains(" = "))
            .map(|l| format!("{l}\n"))
            .collect();
        let raw: RawTlsConfig = toml::from_str(&keys).unwrap();
        assert_eq!(
            raw.max_concurrent_streams,
            Some(DEFAULT_MAX_CONCURRENT_STREAMS)
        );
        assert_eq!(
            parse_duration(raw.handshake_timeout.as_deref().unwrap()),
            Ok(DEFAULT_HANDSHAKE_TIMEOUT)
        );
        assert!(raw.cert.is_some() && raw.key.is_some() && raw.redirect_http.is_some());
    }
}
