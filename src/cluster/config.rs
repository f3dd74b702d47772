//! `[cluster]`: the Redis several unpoll instances share, as written and validated.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigErrors, join, parse_duration};

/// Defaults, documented in `config.toml.example`.
pub mod defaults {
    /// Key and channel prefix: several deployments can share one Redis.
    pub const PREFIX: &str = "unpoll:";
    /// First reconnect delay; doubles per failed attempt.
    pub const RECONNECT_MIN: &str = "100ms";
    /// Cap of the reconnect delay.
    pub const RECONNECT_MAX: &str = "5s";
    /// How long a channel's stream (its shared history) outlives its last event.
    pub const STREAM_TTL: &str = "24h";
    /// Time for one Redis command (connect, publish, read history).
    pub const TIMEOUT: &str = "3s";
    /// How long an instance keeps reading a channel after its last local subscriber left,
    /// so a client that reconnects at once does not pay a resubscribe and a history read.
    pub const LINGER: &str = "10s";
    /// Events waiting to be written to Redis; full → published locally only (see README).
    pub const QUEUE: usize = 10_000;
    /// How long a `[[notify]]`/`[mqtt]` lease lasts without renewal: the takeover time
    /// when its holder dies.
    pub const LEASE_TTL: &str = "5s";
    /// How often an instance publishes its per-channel subscriber counts and reads the
    /// others' (`[[stream]] limits.per_channel`); a dead instance's counts expire after 3×.
    pub const LIMIT_SYNC: &str = "1s";
}

/// The `[cluster]` section as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClusterConfig {
    redis: Option<String>,
    prefix: Option<String>,
    node_id: Option<String>,
    reconnect_min: Option<String>,
    reconnect_max: Option<String>,
    stream_ttl: Option<String>,
    timeout: Option<String>,
    linger: Option<String>,
    queue: Option<usize>,
    lease_ttl: Option<String>,
    limit_sync: Option<String>,
}

/// Validated `[cluster]` settings.
#[derive(Clone, PartialEq)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port/db` (may carry a password: never logged).
    pub redis: String,
    /// Prefix of every key and pub/sub channel unpoll uses.
    pub prefix: String,
    /// This instance's name in `/stats` and logs.
    pub node_id: String,
    /// First reconnect delay (doubled per failure, with jitter).
    pub reconnect_min: Duration,
    /// Largest reconnect delay.
    pub reconnect_max: Duration,
    /// Expiry of a channel's stream after its last event.
    pub stream_ttl: Duration,
    /// Deadline of one Redis command.
    pub timeout: Duration,
    /// How long a channel without local subscribers is still followed.
    pub linger: Duration,
    /// Bound of the queue of events waiting for Redis.
    pub queue: usize,
    /// Lifetime of a consumer lease without renewal (renewed every 30% of it).
    pub lease_ttl: Duration,
    /// Period of the per-channel limit counts' exchange.
    pub limit_sync: Duration,
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("redis", &redact(&self.redis))
            .field("prefix", &self.prefix)
            .field("node_id", &self.node_id)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("stream_ttl", &self.stream_ttl)
            .field("timeout", &self.timeout)
            .field("linger", &self.linger)
            .field("queue", &self.queue)
            .field("lease_ttl", &self.lease_ttl)
            .field("limit_sync", &self.limit_sync)
            .finish()
    }
}

/// The URL with any password replaced by `***`, for logs and `unpoll check`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            if userinfo.contains(':') {
                format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
            } else {
                format!("{}***{}", &url[..scheme + 3], &url[at..])
            }
        }
        _ => url.to_string(),
    }
}

/// `<host name>-<pid>`: distinct for every process of a deployment.
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unpoll".to_string());
    format!("{host}-{}", std::process::id())
}

impl RawClusterConfig {
    /// Validate, recording every error under `path`.
    pub fn validate(self, path: &str, errors: &mut ConfigErrors) -> Option<ClusterConfig> {
        let redis = match self.redis {
            Some(url) if !url.is_empty() => url,
            _ => {
                errors.push(
                    join(path, "redis"),
                    "required (e.g. redis = \"redis://127.0.0.1:6379/0\")",
                );
                return None;
            }
        };
        let url_ok = match redis::Client::open(redis.as_str()) {
            Ok(_) if redis.starts_with("redis://") => true,
            Ok(_) => {
                errors.push(
                    join(path, "redis"),
                    "only redis:// URLs are supported (no TLS, no unix sockets yet)",
                );
                false
            }
            Err(e) => {
                errors.push(
                    join(path, "redis"),
                    format!("invalid Redis URL {:?}: {e}", redact(&redis)),
                );
                false
            }
        };
        let prefix = self.prefix.unwrap_or_else(|| defaults::PREFIX.to_string());
        if prefix.is_empty() || prefix.len() > 64 || prefix.chars().any(char::is_whitespace) {
            errors.push(
                join(path, "prefix"),
                "must be 1 to 64 characters without spaces (e.g. \"unpoll:\")",
            );
        }
        let node_id = self.node_id.unwrap_or_else(default_node_id);
        if node_id.is_empty() || node_id.len() > 128 || node_id.chars().any(char::is_whitespace) {
            errors.push(
                join(path, "node_id"),
                "must be 1 to 128 characters without spaces",
            );
        }
        let mut duration = |key: &str, value: Option<String>, default: &str| {
            parse_duration(value.as_deref().unwrap_or(default)).unwrap_or_else(|e| {
                errors.push(join(path, key), e);
                parse_duration(default).unwrap_or_default()
            })
        };
        let reconnect_min = duration("reconnect_min", self.reconnect_min, defaults::RECONNECT_MIN);
        let reconnect_max = duration("reconnect_max", self.reconnect_max, defaults::RECONNECT_MAX);
        let stream_ttl = duration("stream_ttl", self.stream_ttl, defaults::STREAM_TTL);
        let timeout = duration("timeout", self.timeout, defaults::TIMEOUT);
        let linger = duration("linger", self.linger, defaults::LINGER);
        let lease_ttl = duration("lease_ttl", self.lease_ttl, defaults::LEASE_TTL);
        let limit_sync = duration("limit_sync", self.limit_sync, defaults::LIMIT_SYNC);
        if reconnect_min.is_zero() || reconnect_min > reconnect_max {
            errors.push(
                join(path, "reconnect_min"),
                format!("must be above 0 and at most reconnect_max ({reconnect_max:?})"),
            );
        }
        if stream_ttl < Duration::from_secs(1) {
            errors.push(join(path, "stream_ttl"), "must be at least 1s");
        }
        if timeout.is_zero() {
            errors.push(join(path, "timeout"), "must be above 0");
        }
        if lease_ttl < Duration::from_secs(1) {
            // Below that the renew period (30%) nears a Redis round trip on a busy host and
            // a healthy holder would lose its lease.
            errors.push(join(path, "lease_ttl"), "must be at least 1s");
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&limit_sync) {
            errors.push(join(path, "limit_sync"), "must be between 10ms and 60s");
        }
        let queue = self.queue.unwrap_or(defaults::QUEUE);
        if !(1..=1_000_000).contains(&queue) {
            errors.push(join(path, "queue"), "must be between 1 and 1000000");
        }
        url_ok.then_some(ClusterConfig {
            redis,
            prefix,
            node_id,
            reconnect_min,
            reconnect_max,
            stream_ttl,
            timeout,
            linger,
            queue,
            lease_ttl,
            limit_sync,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse_rules;

    #[test]
    fn defaults_and_env_password() {
        let text = "[cluster]\nredis = \"redis://:${PW}@127.0.0.1:6379/0\"\n";
        let full = format!("listen = \"127.0.0.1:1\"\nupstream = \"http://a\"\n{text}");
        let config =
            crate::config::parse(&full, &|v| (v == "PW").then(|| "s3cret".into())).expect("valid");
        let c = config.cluster.expect("cluster");
        assert_eq!(c.redis, "redis://:s3cret@127.0.0.1:6379/0");
        assert_eq!(c.prefix, "unpoll:");
        assert!(c.node_id.ends_with(&format!("-{}", std::process::id())));
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "password never printed"
        );
    }

    #[test]
    fn every_error_has_its_key_path() {
        let err = parse_rules(
            "[cluster]\nredis = \"http://x\"\nprefix = \"\"\nreconnect_min = \"9s\"\n\
             reconnect_max = \"1s\"\nqueue = 0\nlease_ttl = \"200ms\"\nlimit_sync = \"0s\"\n",
        )
        .unwrap_err();
        for path in [
            "cluster.redis",
            "cluster.prefix",
            "cluster.reconnect_min",
            "cluster.queue",
            "cluster.lease_ttl",
            "cluster.limit_sync",
        ] {
            assert!(err.contains(path), "{path} missing from: {err}");
        }
        let err = parse_rules("[cluster]\nredis = \"redis://h\"\nbogus = 1\n").unwrap_err();
        assert!(err.contains("cluster.bogus"), "{err}");
        let err = parse_rules("[cluster]\nprefix = \"a:\"\n").unwrap_err();
        assert!(err.contains("cluster.redis: required"), "{err}");
    }

    #[test]
    fn without_the_section_there_is_no_cluster() {
        assert!(parse_rules("").unwrap().cluster.is_none());
    }

    #[test]
    fn redacts_passwords() {
        use super::redact;
        assert_eq!(redact("redis://u:p@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://:p@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact("redis://h:1/0"), "redis://h:1/0");
    }
}
