//! The configuration: one TOML file → an immutable, validated [`Config`].
//!
//! Loading goes raw TOML → `${VAR}` expansion → one serde struct per section
//! (`deny_unknown_fields`) → validation that collects *every* error with its key path →
//! typed settings. Each concern owns its section's raw and typed structs (`proxy::config`,
//! `admin::config`, ...); this module only assembles them.

mod errors;
pub(crate) mod reload;
mod sections;
mod units;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use http::Uri;
use http::uri::{Authority, Scheme};

pub use errors::ConfigErrors;
pub(crate) use errors::join;
pub(crate) use sections::{Sections, deserialize};
pub(crate) use units::{duration_at, parse_duration, parse_size};

use crate::admin::config::{AdminConfig, RawAdminConfig};
use crate::auth::{GenericStreamConfig, JwtConfig, RawGenericStream, RawJwtConfig};
use crate::cache::{CacheRule, RawCacheRule};
use crate::cluster::config::{ClusterConfig, RawClusterConfig};
use crate::hub::config::{HubConfig, RawHubConfig};
use crate::logging::{LogConfig, RawLogConfig};
use crate::proxy::config::{ProxyConfig, RawProxyConfig};
use crate::sources::mqtt::config::{RawMqttConfig, RawTopicRule};
use crate::sources::mqtt::{MqttConfig, TopicRule};
use crate::sources::postgres::config::{RawNotifyRule, RawPostgresConfig};
use crate::sources::postgres::{NotifyRule, PostgresConfig};
use crate::stream::{RawStreamRule, StreamRule};
use crate::tap::{RawTapRule, TapRule};
use crate::tls::{RawTlsConfig, TlsConfig};
use crate::watch::{RawWatchRule, WatchRule};

/// The whole validated configuration. Immutable: a reload builds a new one.
#[derive(Debug, Clone)]
pub struct Config {
    /// Main listener (app traffic).
    pub listen: SocketAddr,
    /// The app unpoll sits in front of.
    pub upstream: Upstream,
    /// Runtime worker threads; 0 = one per CPU this process may use.
    pub workers: usize,
    /// `[admin]`.
    pub admin: AdminConfig,
    /// `[proxy]`.
    pub proxy: ProxyConfig,
    /// `[log]`.
    pub log: LogConfig,
    /// `[postgres]`: needed by `[[notify]]` rules.
    pub postgres: Option<PostgresConfig>,
    /// `[[notify]]` rules: Postgres NOTIFY and outbox sources.
    pub notify: Vec<NotifyRule>,
    /// `[mqtt]`: the broker `[[topic]]` rules subscribe at. Read at start only.
    pub mqtt: Option<MqttConfig>,
    /// `[[topic]]` rules: MQTT messages become events. Reloadable.
    pub topics: Vec<TopicRule>,
    /// Memory budget of all `[[cache]]` entries together, in bytes. Read at start only.
    pub cache_size: u64,
    /// `[[cache]]` rules, in file order.
    pub caches: Vec<CacheRule>,
    /// `[hub]`: history, queue and subscriber limits. Read at start only.
    pub hub: HubConfig,
    /// `[[stream]]` rules, in file order.
    pub streams: Vec<StreamRule>,
    /// `[[tap]]` rules, in file order.
    pub taps: Vec<TapRule>,
    /// `[[watch]]` rules, in file order.
    pub watches: Vec<WatchRule>,
    /// `[jwt]`: token verification for `auth = "jwt"` rules and the generic stream.
    pub jwt: Option<JwtConfig>,
    /// `[generic_stream]`: `/_unpoll/sse?channel=…`.
    pub generic_stream: GenericStreamConfig,
    /// `[cluster]`: the Redis shared with other instances. Read at start only.
    pub cluster: Option<ClusterConfig>,
    /// `[tls]`: the main listener speaks TLS. Present or absent: read at start only; the
    /// certificate and key are re-read on reload.
    pub tls: Option<TlsConfig>,
    /// The file this came from, re-read on SIGHUP; `None` when built from a string.
    pub source: Option<PathBuf>,
}

/// The upstream app: scheme, authority and an optional base path prepended to every
/// forwarded path (`http://127.0.0.1:8000/app` → `/x` goes to `/app/x`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Always `http` (TLS to the upstream is not supported: a sidecar talks to its app on
    /// loopback or a private network).
    pub scheme: Scheme,
    /// `host:port` of the upstream.
    pub authority: Authority,
    /// Prefix without a trailing slash; empty for none.
    pub base_path: String,
}

impl Upstream {
    fn parse(text: &str) -> Result<Upstream, String> {
        let uri: Uri = text
            .parse()
            .map_err(|_| format!("invalid URL {text:?} (write e.g. \"http://127.0.0.1:8000\")"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "{text:?}: https upstreams are not supported; unpoll talks plain HTTP to \
                     the app it sits beside"
                ));
            }
            _ => return Err(format!("{text:?}: the URL must start with http://")),
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("{text:?}: missing host"))?;
        if uri.query().is_some() {
            return Err(format!(
                "{text:?}: an upstream URL cannot carry a query string"
            ));
        }
        Ok(Upstream {
            scheme: Scheme::HTTP,
            authority,
            base_path: uri.path().trim_end_matches('/').to_string(),
        })
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.base_path)
    }
}

/// Read and validate the file at `path`, expanding `${VAR}` from the process environment.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let mut errors = ConfigErrors::default();
        errors.push("", format!("cannot read {}: {e}", path.display()));
        errors
    })?;
    let mut config = parse(&text, &|name| std::env::var(name).ok())?;
    config.source = Some(path.to_path_buf());
    Ok(config)
}

/// Parse and validate a config file's text; `env` resolves `${VAR}`.
pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let mut value = match text.parse::<toml::Table>() {
        Ok(table) => toml::Value::Table(table),
        Err(e) => {
            errors.push("", format!("invalid TOML: {}", e.to_string().trim()));
            return Err(errors);
        }
    };
    sections::expand_env(&mut value, "", env, &mut errors);
    let toml::Value::Table(table) = value else {
        unreachable!("expand_env keeps the value's kind")
    };

    let mut s = Sections::new(table, &mut errors);
    let listen = s.take::<String>("listen");
    let upstream = s.take::<String>("upstream");
    let workers = s.take::<usize>("workers").unwrap_or(0);
    let admin = s.take::<RawAdminConfig>("admin").unwrap_or_default();
    let proxy = s.take::<RawProxyConfig>("proxy").unwrap_or_default();
    let log = s.take::<RawLogConfig>("log").unwrap_or_default();
    let postgres = s.take::<RawPostgresConfig>("postgres");
    let notify = s.take_rules::<RawNotifyRule>("notify");
    let mqtt = s.take::<RawMqttConfig>("mqtt");
    let topics = s.take_rules::<RawTopicRule>("topic");
    let cache_size = s.take::<String>("cache_size");
    let caches = s.take_rules::<RawCacheRule>("cache");
    let hub = s.take::<RawHubConfig>("hub").unwrap_or_default();
    let streams = s.take_rules::<RawStreamRule>("stream");
    let taps = s.take_rules::<RawTapRule>("tap");
    let watches = s.take_rules::<RawWatchRule>("watch");
    let jwt = s.take::<RawJwtConfig>("jwt");
    let cluster = s.take::<RawClusterConfig>("cluster");
    let tls = s.take::<RawTlsConfig>("tls");
    let generic_stream = s
        .take::<RawGenericStream>("generic_stream")
        .unwrap_or_default();
    s.finish();

    let listen = match listen.as_deref() {
        None => {
            errors.push("listen", "required (e.g. listen = \"0.0.0.0:8080\")");
            None
        }
        Some(text) => text
            .parse::<SocketAddr>()
            .map_err(|_| {
                errors.push(
                    "listen",
                    format!("invalid address {text:?} (write e.g. \"0.0.0.0:8080\")"),
                )
            })
            .ok(),
    };
    let upstream = match upstream.as_deref() {
        None => {
            errors.push(
                "upstream",
                "required (e.g. upstream = \"http://127.0.0.1:8000\")",
            );
            None
        }
        Some(text) => Upstream::parse(text)
            .map_err(|e| errors.push("upstream", e))
            .ok(),
    };
    let admin = admin.validate("admin", &mut errors);
    let mut proxy = proxy.validate("proxy", &mut errors);
    let log = log.validate("log", &mut errors);
    let (postgres, notify) =
        crate::sources::postgres::config::validate(postgres, notify, &mut errors);
    let (mqtt, topics) = crate::sources::mqtt::config::validate(mqtt, topics, &mut errors);
    let cache_size = crate::cache::config::cache_size(cache_size, &mut errors);
    let caches: Vec<CacheRule> = caches
        .into_iter()
        .filter_map(|(path, raw)| raw.validate(&path, &mut errors))
        .collect();
    let hub = hub.validate("hub", &mut errors);
    let cluster = cluster.and_then(|c| c.validate("cluster", &mut errors));
    // Present but invalid still counts: its own errors say what is wrong.
    proxy.client_tls = tls.is_some();
    let tls = tls.and_then(|t| t.validate("tls", &mut errors));
    // Present but invalid still counts as present: its own errors say what is wrong.
    let jwt_section = jwt.is_some();
    let jwt = jwt.and_then(|j| j.validate("jwt", &mut errors));
    let streams: Vec<StreamRule> = streams
        .into_iter()
        .filter_map(|(path, raw)| raw.validate(&path, jwt_section, &mut errors))
        .collect();
    let taps: Vec<TapRule> = taps
        .into_iter()
        .filter_map(|(path, raw)| raw.validate(&path, &mut errors))
        .collect();
    let watches: Vec<WatchRule> = watches
        .into_iter()
        .filter_map(|(path, raw)| raw.validate(&path, &mut errors))
        .collect();
    let generic_stream = generic_stream.validate("generic_stream", jwt_section, &mut errors);

    match (listen, upstream) {
        (Some(listen), Some(upstream)) if errors.is_empty() => Ok(Config {
            listen,
            upstream,
            workers,
            admin,
            proxy,
            log,
            postgres,
            notify,
            mqtt,
            topics,
            cache_size,
            caches,
            hub,
            streams,
            taps,
            watches,
            jwt,
            generic_stream,
            cluster,
            tls,
            source: None,
        }),
        _ => Err(errors),
    }
}

/// Parse `rules` after a minimal `listen`/`upstream` header, for the rule modules' tests.
#[cfg(test)]
pub(crate) fn parse_rules(rules: &str) -> Result<Config, String> {
    let text = format!("listen = \"127.0.0.1:1\"\nupstream = \"http://a\"\n{rules}");
    parse(&text, &|_| None).map_err(|e| e.to_string())
}

impl Config {
    /// Problems that do not stop unpoll but need the operator soon, as (key path, message):
    /// a certificate that expires within 14 days.
    pub fn warnings(&self, now: std::time::SystemTime) -> Vec<(String, String)> {
        self.tls
            .as_ref()
            .map(|tls| tls.warnings(now))
            .unwrap_or_default()
    }

    /// The short summary `unpoll check` prints: listeners, upstream and rules.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        match &self.tls {
            Some(tls) => {
                let _ = writeln!(
                    out,
                    "listen    {} (TLS, h2 and http/1.1; certificate {}, serial {})",
                    self.listen,
                    tls.cert.display(),
                    tls.pair.serial
                );
                if let Some(redirect) = tls.redirect_http {
                    let _ = writeln!(out, "redirect  {redirect} → https");
                }
            }
            None => {
                let _ = writeln!(out, "listen    {}", self.listen);
            }
        }
        let _ = writeln!(out, "admin     {}", self.admin.listen);
        let _ = writeln!(out, "upstream  {}", self.upstream);
        if let Some(pg) = &self.postgres {
            let _ = writeln!(
                out,
                "postgres  {}",
                crate::sources::postgres::config::redact(&pg.url)
            );
        }
        for rule in &self.notify {
            let _ = writeln!(
                out,
                "{:<9} listen {} ({}) → {}",
                rule.key,
                rule.listen,
                rule.mode.as_str(),
                rule.channel
                    .as_ref()
                    .map_or("<row channel>", |c| c.as_str())
            );
        }
        if let Some(cluster) = &self.cluster {
            let _ = writeln!(
                out,
                "cluster   {} as {}",
                crate::cluster::config::redact(&cluster.redis),
                cluster.node_id
            );
        }
        if let Some(mqtt) = &self.mqtt {
            let _ = writeln!(out, "mqtt      {} as {}", mqtt.url, mqtt.client_id);
        }
        for rule in &self.topics {
            let _ = writeln!(
                out,
                "{:<9} topic {} → {}",
                rule.key,
                rule.topic.as_str(),
                rule.channel
            );
        }
        for rule in &self.streams {
            let channels: Vec<&str> = rule.channels.iter().map(|t| t.as_str()).collect();
            let _ = writeln!(
                out,
                "{:<9} GET {} → channels {} (auth {})",
                rule.name,
                rule.path,
                channels.join(", "),
                rule.auth.as_str()
            );
        }
        for rule in &self.caches {
            let vary: Vec<&str> = rule.vary.iter().map(|h| h.as_str()).collect();
            let _ = writeln!(
                out,
                "{:<9} GET {} → cached {:?} (vary: {})",
                rule.name,
                rule.path,
                rule.ttl,
                if vary.is_empty() {
                    "shared".to_string()
                } else {
                    vary.join(", ")
                }
            );
        }
        for rule in &self.taps {
            let _ = writeln!(
                out,
                "{:<9} {} {} → channel {}",
                rule.name, rule.method, rule.path, rule.channel
            );
        }
        for rule in &self.watches {
            let interval = if rule.interval.is_zero() {
                "on purge only".to_string()
            } else {
                format!("every {:?}", rule.interval)
            };
            let _ = writeln!(
                out,
                "{:<9} GET {} → watched {interval}, tags [{}]",
                rule.name,
                rule.cache.path,
                rule.cache
                    .tags
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = parse(
            "listen = \"127.0.0.1:8080\"\nupstream = \"http://127.0.0.1:8000/app/\"",
            &no_env,
        )
        .unwrap();
        assert_eq!(c.upstream.base_path, "/app");
        assert_eq!(c.upstream.authority.as_str(), "127.0.0.1:8000");
        assert_eq!(c.proxy, ProxyConfig::default());
        assert_eq!(c.admin.listen, "127.0.0.1:9090".parse().unwrap());
    }

    #[test]
    fn every_error_is_listed_with_its_path() {
        let text = r#"
            listen = "nowhere"
            bogus = 1
            [proxy]
            connect_timeout = "5 sec"
            max_header_bytes = "1KiB"
            typo = true
            [admin]
            listen = "0.0.0.0:9090"
        "#;
        let errors = parse(text, &no_env).unwrap_err().to_string();
        for expected in [
            "listen: invalid address \"nowhere\"",
            "bogus: unknown key",
            "proxy.typo: unknown field `typo`",
            "upstream: required",
            "admin.token: required when admin.listen",
        ] {
            assert!(
                errors.contains(expected),
                "{expected:?} missing in:\n{errors}"
            );
        }
        // [proxy] failed to deserialize as a whole, so its field errors come from serde;
        // a well-formed [proxy] reports each field:
        let text = "listen = \"127.0.0.1:1\"\nupstream = \"http://a\"\n[proxy]\nconnect_timeout = \"5 sec\"\nmax_header_bytes = \"1KiB\"";
        let errors = parse(text, &no_env).unwrap_err().to_string();
        assert!(errors.contains("proxy.connect_timeout: invalid duration \"5 sec\""));
        assert!(errors.contains("proxy.max_header_bytes: must be at least 8KiB"));
    }

    #[test]
    fn wrong_type_names_the_field() {
        let text = "listen = \"127.0.0.1:1\"\nupstream = \"http://a\"\n[proxy]\nvia = \"yes\"";
        let errors = parse(text, &no_env).unwrap_err().to_string();
        assert!(errors.starts_with("proxy.via: invalid type"), "{errors}");
    }

    #[test]
    fn https_upstream_is_refused() {
        let errors = parse(
            "listen = \"127.0.0.1:1\"\nupstream = \"https://a\"",
            &no_env,
        )
        .unwrap_err()
        .to_string();
        assert!(
            errors.contains("https upstreams are not supported"),
            "{errors}"
        );
    }
}
