//! `[[watch]]` rules: a polling GET that is also a stream of its body.
//!
//! The poll side of a watched path *is* a cache rule (same key, same entries, same tags), so
//! a watch rule is validated by building the [`CacheRule`] it implies through the cache's
//! own validation: its `path`, `vary`, `tags` and `max_body` errors carry this rule's key
//! paths (`watch[0].tags[1]`) and no check is written twice.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::cache::{CacheRule, RawCacheRule};
use crate::config::{ConfigErrors, join, parse_duration};

/// How long a poll of a rule with `interval = "0s"` and no `ttl` stays cached: until a purge
/// of its tags, in practice (an entry that old is evicted by the cache budget long before).
pub const UNTIL_PURGE: Duration = Duration::from_secs(365 * 24 * 3600);

/// A `[[watch]]` rule as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWatchRule {
    path: String,
    interval: Option<String>,
    min_interval: Option<String>,
    ttl: Option<String>,
    tags: Option<Vec<String>>,
    vary: Option<Vec<String>>,
    event: Option<String>,
    max_body: Option<String>,
    inject: Option<bool>,
    token_query: Option<String>,
}

/// A validated `[[watch]]` rule.
#[derive(Debug, Clone)]
pub struct WatchRule {
    /// `watch[N]`, for metrics, logs and the key.
    pub name: String,
    /// Refetch this often when nothing signalled a change (plus up to a tenth of it as
    /// jitter); zero: only purges of `tags` and source gaps refetch.
    pub interval: Duration,
    /// At most one refetch per key this often: a burst of purges is one fetch.
    pub min_interval: Duration,
    /// The SSE `event:` name; `None` sends unnamed events (`onmessage`).
    pub event: Option<String>,
    /// With `inject = true`, the path: unpoll adds the browser client, told to watch it, to
    /// the app's HTML pages (`watch::inject`), so a page's own polls of it stay in the
    /// browser.
    pub inject: Option<String>,
    /// The cache rule plain polls of the path are served by, and whose key, tags, `vary`
    /// and `max_body` the watchers use: `ttl` is the rule's `ttl`, else `interval`, else
    /// [`UNTIL_PURGE`].
    pub cache: CacheRule,
    /// `token_query`: this query parameter, when present, is the fetches' (and the key's)
    /// `Authorization: Bearer`, and never reaches the app (an EventSource cannot send
    /// headers).
    pub token_query: Option<String>,
}

/// Default `interval`.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Default `min_interval`.
const DEFAULT_MIN_INTERVAL: Duration = Duration::from_millis(200);

impl RawWatchRule {
    /// Validate, recording every error under `path` (`watch[2]`).
    pub fn validate(self, path: &str, errors: &mut ConfigErrors) -> Option<WatchRule> {
        let before = errors.len();
        let mut dur = |key: &str, raw: Option<String>, default: Duration| match raw {
            None => Some(default),
            Some(text) => parse_duration(&text)
                .map_err(|e| errors.push(join(path, key), e))
                .ok(),
        };
        let interval = dur("interval", self.interval.clone(), DEFAULT_INTERVAL);
        let min_interval = dur(
            "min_interval",
            self.min_interval.clone(),
            DEFAULT_MIN_INTERVAL,
        );
        let ttl = match self.ttl.clone() {
            None => None,
            Some(text) => match parse_duration(&text) {
                Ok(d) if d.is_zero() => {
                    errors.push(join(path, "ttl"), "must be greater than zero");
                    None
                }
                Ok(d) => Some(d),
                Err(e) => {
                    errors.push(join(path, "ttl"), e);
                    None
                }
            },
        };
        if let (Some(interval), Some(min)) = (interval, min_interval)
            && !interval.is_zero()
            && min > interval
        {
            errors.push(
                join(path, "min_interval"),
                format!(
                    "{min:?} is longer than interval ({interval:?}): the interval could never \
                     refetch on time"
                ),
            );
        }
        if let Some(event) = &self.event
            && (event.is_empty() || event.contains(['\r', '\n']))
        {
            errors.push(
                join(path, "event"),
                "must be a non-empty name on one line (omit it for unnamed events)",
            );
        }
        let inject = self.inject.unwrap_or(false).then(|| self.path.clone());
        if inject.is_some() && (self.path.contains('{') || self.path.ends_with('*')) {
            errors.push(
                join(path, "inject"),
                "needs a path without `{…}` or `*` segments: the page is told one URL to watch",
            );
        }
        let token_query = self.token_query.clone().filter(|name| {
            let key = join(path, "token_query");
            if !crate::auth::token_query_name_ok(name, &key, errors) {
                return false;
            }
            // The token becomes the Authorization header: unless that header splits the
            // key, one user's token would fetch the body every other user is served.
            let keyed = self
                .vary
                .as_ref()
                .is_none_or(|vary| vary.iter().any(|h| h.eq_ignore_ascii_case("authorization")));
            if !keyed {
                errors.push(
                    key,
                    "needs Authorization in vary: the token is sent as Authorization, and \
                     the key must tell users apart",
                );
            }
            keyed
        });
        let cache_ttl = ttl
            .or(interval.filter(|i| !i.is_zero()))
            .unwrap_or(UNTIL_PURGE);
        let cache = self.cache_rule(path, cache_ttl, errors);
        if errors.len() > before {
            return None;
        }
        Some(WatchRule {
            name: path.to_string(),
            interval: interval?,
            min_interval: min_interval?,
            event: self.event.clone(),
            inject,
            cache: cache?,
            token_query,
        })
    }

    /// The `[[cache]]` rule the watched path's polls are served by, validated by the cache.
    fn cache_rule(
        &self,
        path: &str,
        ttl: Duration,
        errors: &mut ConfigErrors,
    ) -> Option<CacheRule> {
        let mut table = toml::Table::new();
        table.insert("path".into(), self.path.clone().into());
        table.insert("methods".into(), vec!["GET", "HEAD"].into());
        table.insert("ttl".into(), format!("{}ms", ttl.as_millis()).into());
        if let Some(vary) = &self.vary {
            table.insert("vary".into(), vary.clone().into());
        }
        if let Some(tags) = &self.tags {
            table.insert("tags".into(), tags.clone().into());
        }
        if let Some(max_body) = &self.max_body {
            table.insert("max_body".into(), max_body.clone().into());
        }
        let raw: RawCacheRule =
            crate::config::deserialize(toml::Value::Table(table), path, errors)?;
        raw.validate(path, errors)
    }
}

/// The tag `inject = true` rules add to the app's HTML pages:
/// `<script src="/_unpoll/client.js" data-unpoll-watch="/a /b">`, the paths in file order;
/// `None` when no rule injects or the client is not served (`[proxy] client = false`).
/// Built once per config snapshot (`Snapshot::build`), never per response.
pub fn inject_tag(rules: &[WatchRule], client_served: bool) -> Option<Arc<str>> {
    if !client_served {
        return None;
    }
    let paths: Vec<&str> = rules.iter().filter_map(|w| w.inject.as_deref()).collect();
    if paths.is_empty() {
        return None;
    }
    let watched = escape_attribute(&paths.join(" "));
    let prefix = crate::proxy::config::CLIENT_PREFIX;
    Some(
        format!("<script src=\"{prefix}client.js\" data-unpoll-watch=\"{watched}\"></script>")
            .into(),
    )
}

fn escape_attribute(value: &str) -> String {
    value
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> Result<WatchRule, String> {
        let raw: RawWatchRule = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut errors = ConfigErrors::default();
        let rule = raw.validate("watch[1]", &mut errors);
        rule.ok_or_else(|| errors.to_string())
    }

    #[test]
    fn defaults_are_per_user_and_poll_every_five_seconds() {
        let r = rule("path = \"/inbox\"").unwrap();
        assert_eq!(r.interval, Duration::from_secs(5));
        assert_eq!(r.min_interval, Duration::from_millis(200));
        assert_eq!(r.event, None);
        assert_eq!(r.cache.name, "watch[1]");
        assert_eq!(
            r.cache.ttl,
            Duration::from_secs(5),
            "polls cached for interval"
        );
        assert!(r.cache.varies_on_credentials());
        assert_eq!(r.cache.max_body, 1024 * 1024);
    }

    #[test]
    fn signals_only_rules_cache_until_purged_or_for_their_ttl() {
        let r = rule("path = \"/inbox\"\ninterval = \"0s\"\ntags = [\"t\"]").unwrap();
        assert!(r.interval.is_zero());
        assert_eq!(r.cache.ttl, UNTIL_PURGE);
        let r = rule("path = \"/inbox\"\ninterval = \"0s\"\nttl = \"30s\"").unwrap();
        assert_eq!(r.cache.ttl, Duration::from_secs(30));
    }

    #[test]
    fn token_query_needs_a_plain_name_and_authorization_in_the_key() {
        let r = rule("path = \"/inbox\"\ntoken_query = \"token\"").unwrap();
        assert_eq!(r.token_query.as_deref(), Some("token"));
        let r = rule("path = \"/inbox\"\nvary = [\"authorization\"]\ntoken_query = \"t\"");
        assert!(r.is_ok(), "{r:?}");
        let err = rule("path = \"/inbox\"\nvary = []\ntoken_query = \"token\"").unwrap_err();
        assert!(
            err.contains("watch[1].token_query: needs Authorization in vary"),
            "{err}"
        );
        let err = rule("path = \"/inbox\"\ntoken_query = \"a b\"").unwrap_err();
        assert!(err.contains("watch[1].token_query: \"a b\""), "{err}");
    }

    #[test]
    fn every_error_has_its_key_path() {
        let err = rule(
            "path = \"/chats/{id}\"\ninterval = \"5 s\"\nmin_interval = \"x\"\nttl = \"0s\"\n\
             tags = [\"chat:{path.nope}\"]\nvary = [\"bad header\"]\nevent = \"a\\nb\"\n\
             max_body = \"lots\"",
        )
        .unwrap_err();
        for expected in [
            "watch[1].interval: invalid duration \"5 s\"",
            "watch[1].min_interval: invalid duration \"x\"",
            "watch[1].ttl: must be greater than zero",
            "watch[1].tags[0]: {path.nope} is not a segment of the rule's path",
            "watch[1].vary[0]: invalid header name",
            "watch[1].event: must be a non-empty name",
            "watch[1].max_body: invalid size \"lots\"",
        ] {
            assert!(err.contains(expected), "{expected:?} missing in:\n{err}");
        }
        let err = rule("path = \"/chats/{id}\"\ninject = true").unwrap_err();
        assert!(
            err.contains("watch[1].inject: needs a path without"),
            "{err}"
        );
        assert_eq!(
            rule("path = \"/inbox\"\ninject = true")
                .unwrap()
                .inject
                .as_deref(),
            Some("/inbox")
        );
        let err = rule("path = \"/a\"\ninterval = \"1s\"\nmin_interval = \"2s\"").unwrap_err();
        assert!(err.contains("watch[1].min_interval: 2s is longer"), "{err}");
        assert!(
            rule("path = \"/a\"\nbogus = 1")
                .unwrap_err()
                .contains("bogus")
        );
    }

    #[test]
    fn the_inject_tag_lists_the_injecting_paths_escaped() {
        let rules: Vec<WatchRule> = [
            "path = \"/a\"\ninject = true",
            "path = \"/quiet\"",
            "path = \"/b&c\"\ninject = true",
        ]
        .iter()
        .map(|text| rule(text).unwrap())
        .collect();
        assert_eq!(
            inject_tag(&rules, true).as_deref(),
            Some("<script src=\"/_unpoll/client.js\" data-unpoll-watch=\"/a /b&amp;c\"></script>")
        );
        assert_eq!(inject_tag(&rules, false), None, "the client is not served");
        assert_eq!(inject_tag(&rules[1..2], true), None, "no rule injects");
        assert_eq!(escape_attribute("/a?x=\"1\"&b"), "/a?x=&quot;1&quot;&amp;b");
    }
}
