//! `[proxy]`: how unpoll talks to clients and to the upstream.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use serde::Deserialize;

use crate::config::{ConfigErrors, join, parse_duration, parse_size};

/// The `[proxy]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxyConfig {
    connect_timeout: Option<String>,
    response_timeout: Option<String>,
    read_timeout: Option<String>,
    max_upstream_connections: Option<usize>,
    pool_max_idle: Option<usize>,
    pool_idle_timeout: Option<String>,
    header_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    send_timeout: Option<String>,
    max_connections: Option<usize>,
    max_header_bytes: Option<String>,
    preserve_host: Option<bool>,
    via: Option<bool>,
    shutdown_grace: Option<String>,
    trusted_proxies: Option<Vec<String>>,
    client: Option<bool>,
    direct_streams: Option<bool>,
}

/// Validated `[proxy]` settings. Defaults are documented in `config.toml.example`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    /// TCP connect timeout to the upstream.
    pub connect_timeout: Duration,
    /// Time the upstream has to send response headers (the body may stream longer).
    pub response_timeout: Duration,
    /// Longest silence between two reads of an upstream response body (nginx
    /// `proxy_read_timeout`); past it the client's response is aborted.
    pub read_timeout: Duration,
    /// Upstream connections open at most (idle and busy); past it requests wait for one,
    /// within `connect_timeout`, then get 503.
    pub max_upstream_connections: usize,
    /// Idle keep-alive connections kept to the upstream.
    pub pool_max_idle: usize,
    /// How long an idle upstream connection is kept. Below gunicorn's 2 s keep-alive so we
    /// rarely write on a connection the upstream is closing.
    pub pool_idle_timeout: Duration,
    /// Time a client has to send a complete request head (slowloris).
    pub header_read_timeout: Duration,
    /// A client connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// A client that accepts no byte of its response for this long is disconnected (a
    /// reader too slow to keep up, or gone without a FIN).
    pub send_timeout: Duration,
    /// Concurrent client connections; past it, new connections wait in the kernel backlog.
    pub max_connections: usize,
    /// Largest request head accepted; larger → 431.
    pub max_header_bytes: usize,
    /// Forward the client's Host header (true) or the upstream's authority (false).
    pub preserve_host: bool,
    /// Add `Via: 1.1 unpoll` to forwarded requests and responses.
    pub via: bool,
    /// On SIGTERM, how long in-flight requests may take to finish.
    pub shutdown_grace: Duration,
    /// Proxies in front of unpoll whose `X-Forwarded-For` entries are believed when finding
    /// the client address (limits, logs). Empty by default: the TCP peer is the client.
    pub trusted_proxies: Vec<IpNet>,
    /// Serve the browser client (`/_unpoll/client.js`, `.mjs`, `.d.ts`) before any rule.
    /// Off: those paths are proxied.
    pub client: bool,
    /// HTTP/1.1 event streams leave hyper once their head is out and are written by
    /// `server::handoff` (a few KiB per idle subscriber instead of hyper's 16 KiB of
    /// buffers). Off: every stream stays in hyper, the fallback should a hyper upgrade break
    /// the hand-off's assumptions. Read as each connection starts.
    pub direct_streams: bool,
    /// Clients reach the main listener over TLS (`[tls]` is present): forwarded requests
    /// say `X-Forwarded-Proto: https`. Not a key of `[proxy]`; set from `[tls]`.
    pub client_tls: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(60),
            max_upstream_connections: 256,
            pool_max_idle: 64,
            pool_idle_timeout: Duration::from_secs(1),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_header_bytes: 64 * 1024,
            preserve_host: true,
            via: false,
            shutdown_grace: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
            client: true,
            direct_streams: true,
            client_tls: false,
        }
    }
}

/// Smallest head buffer hyper accepts.
const MIN_HEADER_BYTES: u64 = 8 * 1024;

impl RawProxyConfig {
    /// Validate, recording every error under `path`.
    pub fn validate(self, path: &str, errors: &mut ConfigErrors) -> ProxyConfig {
        let d = ProxyConfig::default();
        let mut dur = |key: &str, raw: Option<String>, default: Duration| match raw {
            None => default,
            Some(text) => match parse_duration(&text) {
                Ok(v) if !v.is_zero() => v,
                Ok(_) => {
                    errors.push(join(path, key), "must be greater than zero");
                    default
                }
                Err(e) => {
                    errors.push(join(path, key), e);
                    default
                }
            },
        };
        let connect_timeout = dur("connect_timeout", self.connect_timeout, d.connect_timeout);
        let response_timeout = dur(
            "response_timeout",
            self.response_timeout,
            d.response_timeout,
        );
        let read_timeout = dur("read_timeout", self.read_timeout, d.read_timeout);
        let pool_idle_timeout = dur(
            "pool_idle_timeout",
            self.pool_idle_timeout,
            d.pool_idle_timeout,
        );
        let header_read_timeout = dur(
            "header_read_timeout",
            self.header_read_timeout,
            d.header_read_timeout,
        );
        let idle_timeout = dur("idle_timeout", self.idle_timeout, d.idle_timeout);
        let send_timeout = dur("send_timeout", self.send_timeout, d.send_timeout);
        let shutdown_grace = dur("shutdown_grace", self.shutdown_grace, d.shutdown_grace);

        let max_header_bytes = match self.max_header_bytes {
            None => d.max_header_bytes,
            Some(text) => match parse_size(&text) {
                Ok(n) if n >= MIN_HEADER_BYTES => n as usize,
                Ok(_) => {
                    errors.push(join(path, "max_header_bytes"), "must be at least 8KiB");
                    d.max_header_bytes
                }
                Err(e) => {
                    errors.push(join(path, "max_header_bytes"), e);
                    d.max_header_bytes
                }
            },
        };
        let max_connections = match self.max_connections {
            Some(0) => {
                errors.push(join(path, "max_connections"), "must be at least 1");
                d.max_connections
            }
            Some(n) => n,
            None => d.max_connections,
        };
        let max_upstream_connections = match self.max_upstream_connections {
            Some(0) => {
                errors.push(join(path, "max_upstream_connections"), "must be at least 1");
                d.max_upstream_connections
            }
            Some(n) => n,
            None => d.max_upstream_connections,
        };
        let trusted_proxies = self
            .trusted_proxies
            .unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(i, text)| {
                parse_net(text)
                    .map_err(|e| errors.push(format!("{}[{i}]", join(path, "trusted_proxies")), e))
                    .ok()
            })
            .collect();
        ProxyConfig {
            connect_timeout,
            response_timeout,
            read_timeout,
            max_upstream_connections,
            pool_max_idle: self.pool_max_idle.unwrap_or(d.pool_max_idle),
            pool_idle_timeout,
            header_read_timeout,
            idle_timeout,
            send_timeout,
            max_connections,
            max_header_bytes,
            preserve_host: self.preserve_host.unwrap_or(d.preserve_host),
            via: self.via.unwrap_or(d.via),
            shutdown_grace,
            trusted_proxies,
            client: self.client.unwrap_or(d.client),
            direct_streams: self.direct_streams.unwrap_or(d.direct_streams),
            client_tls: false,
        }
    }
}

/// A CIDR (`10.0.0.0/8`) or a single address (`10.0.0.1`).
fn parse_net(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("invalid address or CIDR {text:?} (write e.g. \"10.0.0.0/8\")"))
}
