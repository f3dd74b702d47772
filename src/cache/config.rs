//! `cache_size` and `[[cache]]` rules: which polling endpoints are cached, for how long,
//! and per what.

use std::time::Duration;

use http::{HeaderName, Method, StatusCode};
use serde::Deserialize;

use crate::config::{ConfigErrors, join, parse_duration, parse_size};
use crate::route::PathPattern;
use crate::template::{Source, Template};

/// Default memory budget of all cache entries together.
pub const DEFAULT_CACHE_SIZE: u64 = 256 * 1024 * 1024;

/// A `[[cache]]` rule as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCacheRule {
    path: String,
    methods: Option<Vec<String>>,
    ttl: Option<String>,
    stale_while_revalidate: Option<String>,
    stale_if_error: Option<String>,
    vary: Option<Vec<String>>,
    tags: Option<Vec<String>>,
    statuses: Option<Vec<u16>>,
    max_body: Option<String>,
    lock_timeout: Option<String>,
}

/// A validated `[[cache]]` rule.
#[derive(Debug, Clone)]
pub struct CacheRule {
    /// `cache[N]`, for metrics, logs and the cache key.
    pub name: String,
    /// Requests it applies to.
    pub path: PathPattern,
    /// GET, HEAD or both (HEAD is answered from the GET entry).
    pub methods: Vec<Method>,
    /// How long an entry is fresh. The operator's value is the truth: an upstream
    /// `Cache-Control: max-age` never stretches it.
    pub ttl: Duration,
    /// After `ttl`, how long a stale entry is served while one background request refreshes it.
    pub stale_while_revalidate: Duration,
    /// After `ttl`, how long a stale entry is served when the upstream fails (refused, timed
    /// out, 5xx).
    pub stale_if_error: Duration,
    /// Request headers whose values are part of the key. Default Cookie and Authorization:
    /// one user's entry is never served to another. Empty: shared by all users.
    pub vary: Vec<HeaderName>,
    /// Tags of each entry (templates over path, query and headers), purged by events.
    pub tags: Vec<Template>,
    /// Upstream statuses that are stored.
    pub statuses: Vec<StatusCode>,
    /// Larger bodies pass through whole and uncached.
    pub max_body: usize,
    /// How long a request waits for another's in-flight fetch of the same key before going
    /// upstream itself.
    pub lock_timeout: Duration,
}

impl CacheRule {
    /// Does the key vary on the client's credentials (so `private` responses may be stored)?
    pub fn varies_on_credentials(&self) -> bool {
        self.vary
            .iter()
            .any(|h| h == http::header::COOKIE || h == http::header::AUTHORIZATION)
    }
}

/// Validate the top-level `cache_size`.
pub fn cache_size(raw: Option<String>, errors: &mut ConfigErrors) -> u64 {
    match raw {
        None => DEFAULT_CACHE_SIZE,
        Some(text) => parse_size(&text).unwrap_or_else(|e| {
            errors.push("cache_size", e);
            DEFAULT_CACHE_SIZE
        }),
    }
}

impl RawCacheRule {
    /// Validate, recording every error under `path` (`cache[2]`).
    pub fn validate(self, path: &str, errors: &mut ConfigErrors) -> Option<CacheRule> {
        let before = errors.len();
        let pattern = PathPattern::parse(&self.path)
            .map_err(|e| errors.push(join(path, "path"), e))
            .ok();
        let mut dur = |key: &str, raw: Option<String>, default: Duration| match raw {
            None => default,
            Some(text) => parse_duration(&text).unwrap_or_else(|e| {
                errors.push(join(path, key), e);
                default
            }),
        };
        let ttl = dur("ttl", self.ttl, Duration::from_secs(1));
        let stale_while_revalidate = dur(
            "stale_while_revalidate",
            self.stale_while_revalidate,
            Duration::ZERO,
        );
        let stale_if_error = dur("stale_if_error", self.stale_if_error, Duration::ZERO);
        let lock_timeout = dur("lock_timeout", self.lock_timeout, Duration::from_secs(10));
        if ttl.is_zero() {
            errors.push(join(path, "ttl"), "must be greater than zero");
        }

        let methods = match self.methods {
            None => vec![Method::GET, Method::HEAD],
            Some(list) => list
                .iter()
                .enumerate()
                .filter_map(|(i, m)| match m.to_ascii_uppercase().as_str() {
                    "GET" => Some(Method::GET),
                    "HEAD" => Some(Method::HEAD),
                    _ => {
                        errors.push(
                            format!("{}[{i}]", join(path, "methods")),
                            format!(
                                "{m:?}: only GET and HEAD are cached (other methods carry a \
                                 body the key does not include)"
                            ),
                        );
                        None
                    }
                })
                .collect(),
        };
        let vary = match self.vary {
            None => vec![http::header::COOKIE, http::header::AUTHORIZATION],
            Some(list) => list
                .iter()
                .enumerate()
                .filter_map(|(i, h)| {
                    HeaderName::from_bytes(h.as_bytes())
                        .map_err(|_| {
                            errors.push(
                                format!("{}[{i}]", join(path, "vary")),
                                format!("invalid header name {h:?}"),
                            )
                        })
                        .ok()
                })
                .collect(),
        };
        let params: Vec<String> = pattern
            .as_ref()
            .map(|p| p.param_names().map(str::to_string).collect())
            .unwrap_or_default();
        let tags = self
            .tags
            .unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(i, text)| {
                let key = format!("{}[{i}]", join(path, "tags"));
                let t = Template::parse(text, &[Source::Path, Source::Query, Source::Header])
                    .map_err(|e| errors.push(key.clone(), e))
                    .ok()?;
                for (source, name) in t.variables() {
                    if source == Source::Path && !params.iter().any(|p| p == name) {
                        errors.push(
                            key.clone(),
                            format!("{{path.{name}}} is not a segment of the rule's path"),
                        );
                        return None;
                    }
                }
                Some(t)
            })
            .collect();
        let statuses = self
            .statuses
            .unwrap_or_else(|| vec![200])
            .iter()
            .enumerate()
            .filter_map(|(i, code)| {
                StatusCode::from_u16(*code)
                    .ok()
                    .filter(|s| !s.is_informational())
                    .or_else(|| {
                        errors.push(
                            format!("{}[{i}]", join(path, "statuses")),
                            format!("{code} is not a cacheable status"),
                        );
                        None
                    })
            })
            .collect();
        let max_body = match self.max_body {
            None => 1024 * 1024,
            Some(text) => parse_size(&text).map(|n| n as usize).unwrap_or_else(|e| {
                errors.push(join(path, "max_body"), e);
                0
            }),
        };
        if errors.len() > before {
            return None;
        }
        Some(CacheRule {
            name: path.to_string(),
            path: pattern?,
            methods,
            ttl,
            stale_while_revalidate,
            stale_if_error,
            vary,
            tags,
            statuses,
            max_body,
            lock_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> Result<CacheRule, String> {
        let raw: RawCacheRule = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut errors = ConfigErrors::default();
        let rule = raw.validate("cache[2]", &mut errors);
        rule.ok_or_else(|| errors.to_string())
    }

    #[test]
    fn defaults_are_safe() {
        let r = rule("path = \"/messages\"").unwrap();
        assert_eq!(r.vary, [http::header::COOKIE, http::header::AUTHORIZATION]);
        assert_eq!(r.methods, [Method::GET, Method::HEAD]);
        assert_eq!(r.statuses, [StatusCode::OK]);
        assert_eq!(r.ttl, Duration::from_secs(1));
        assert!(r.varies_on_credentials());
        assert!(
            !rule("path = \"/m\"\nvary = []")
                .unwrap()
                .varies_on_credentials()
        );
    }

    #[test]
    fn every_error_has_its_key_path() {
        let err = rule(
            "path = \"/chats/{id}\"\nttl = \"5 sec\"\nmethods = [\"POST\"]\n\
             tags = [\"chat:{path.nope}\", \"{form.x}\"]\nstatuses = [100]\nvary = [\"bad header\"]",
        )
        .unwrap_err();
        for expected in [
            "cache[2].ttl: invalid duration \"5 sec\"",
            "cache[2].methods[0]: \"POST\": only GET and HEAD are cached",
            "cache[2].tags[0]: {path.nope} is not a segment of the rule's path",
            "cache[2].tags[1]: template \"{form.x}\"",
            "cache[2].statuses[0]: 100 is not a cacheable status",
            "cache[2].vary[0]: invalid header name",
        ] {
            assert!(err.contains(expected), "{expected:?} missing in:\n{err}");
        }
    }
}
