//! `[[stream]]` rules: an SSE endpoint at a path of the app, subscribing the client to
//! channels resolved from the request.

use std::time::Duration;

use serde::Deserialize;

use crate::auth::{RawRuleAuth, RawStreamLimits, RuleAuthConfig, StreamLimits};
use crate::config::{ConfigErrors, join, parse_duration};
use crate::route::PathPattern;
use crate::template::{Source, Template};

/// Template variables a stream's channel names may use.
pub const STREAM_SOURCES: &[Source] = &[Source::Path, Source::Query, Source::Header];

/// A `[[stream]]` rule as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStreamRule {
    path: String,
    channels: Vec<String>,
    auth: Option<String>,
    auth_path: Option<String>,
    auth_cache: Option<String>,
    reauth: Option<String>,
    token_query: Option<String>,
    limits: Option<RawStreamLimits>,
    heartbeat: Option<String>,
    retry: Option<String>,
    max_channels: Option<usize>,
    transports: Option<Vec<String>>,
    origins: Option<Vec<String>>,
}

/// A validated `[[stream]]` rule.
#[derive(Debug, Clone)]
pub struct StreamRule {
    /// `stream[i]`, for logs and metrics.
    pub name: String,
    /// Where the stream is served (GET).
    pub path: PathPattern,
    /// Channel name templates; a list-valued query expands to one channel per value.
    pub channels: Vec<Template>,
    /// Who may subscribe: required, `"none"` written out.
    pub auth: RuleAuthConfig,
    /// This rule's subscriber caps and connection rate (the hub's global ones apply too).
    pub limits: StreamLimits,
    /// Interval of heartbeat comments. Default 15 s.
    pub heartbeat: Duration,
    /// The `retry:` hint. Default 2 s.
    pub retry: Duration,
    /// Channels one request may expand to (`device_ids=A,B,...`), and the auth paths it may
    /// ask with `auth = "upstream"`; more → 400. Default 16.
    pub max_channels: usize,
    /// How clients may open it. Default both.
    pub transports: Transports,
    /// Page origins (`https://app.example.com`, or `*`) whose WebSockets are accepted
    /// besides the request's own host. Default none: a browser's WebSocket carries the
    /// user's cookies from any page, so only same-origin pages may open one.
    pub origins: Vec<String>,
}

/// The transports a `[[stream]]` rule is served over: `transports = ["sse", "websocket"]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transports {
    /// `GET` answered with `text/event-stream`.
    pub sse: bool,
    /// `GET` with `Upgrade: websocket` answered with `101` and one text frame per event.
    pub websocket: bool,
}

impl Default for Transports {
    fn default() -> Self {
        Transports {
            sse: true,
            websocket: true,
        }
    }
}

impl Transports {
    /// Parse the list as written under `key`; an empty list or an unknown name is an error.
    fn validate(raw: Option<Vec<String>>, key: &str, errors: &mut ConfigErrors) -> Transports {
        let Some(names) = raw else {
            return Transports::default();
        };
        if names.is_empty() {
            errors.push(key, "at least one of \"sse\", \"websocket\" is needed");
            return Transports::default();
        }
        let mut t = Transports {
            sse: false,
            websocket: false,
        };
        for (i, name) in names.iter().enumerate() {
            match name.as_str() {
                "sse" => t.sse = true,
                "websocket" => t.websocket = true,
                other => errors.push(
                    format!("{key}[{i}]"),
                    format!("unknown transport {other:?} (expected \"sse\" or \"websocket\")"),
                ),
            }
        }
        t
    }
}

impl RawStreamRule {
    /// Validate, recording every error under `path` (`stream[i]`); `jwt`: whether a `[jwt]`
    /// section is written (see [`RawRuleAuth::validate`]).
    pub fn validate(self, path: &str, jwt: bool, errors: &mut ConfigErrors) -> Option<StreamRule> {
        let before = errors.len();
        let pattern = PathPattern::parse(&self.path)
            .map_err(|e| errors.push(join(path, "path"), e))
            .ok();
        if self.channels.is_empty() {
            errors.push(
                join(path, "channels"),
                "at least one channel template is needed",
            );
        }
        let channels: Vec<Template> = self
            .channels
            .iter()
            .enumerate()
            .filter_map(|(i, text)| {
                let key = format!("{}[{i}]", join(path, "channels"));
                let t = Template::parse(text, STREAM_SOURCES)
                    .map_err(|e| errors.push(&key, e))
                    .ok()?;
                check_path_vars(&t, pattern.as_ref(), &key, errors);
                Some(t)
            })
            .collect();
        let params: Vec<&str> = pattern
            .as_ref()
            .map(|p| p.param_names().collect())
            .unwrap_or_default();
        let mut auth = RawRuleAuth {
            auth: self.auth,
            auth_path: self.auth_path,
            auth_cache: self.auth_cache,
            reauth: self.reauth,
            token_query: self.token_query,
        }
        .validate(path, &params, jwt, errors);
        let limits = self
            .limits
            .unwrap_or_default()
            .validate(&join(path, "limits"), errors);
        let mut dur = |key: &str, raw: Option<String>, default: Duration| match raw {
            None => default,
            Some(text) => match parse_duration(&text) {
                Ok(v) if v >= Duration::from_millis(100) => v,
                Ok(_) => {
                    errors.push(join(path, key), "must be at least 100ms");
                    default
                }
                Err(e) => {
                    errors.push(join(path, key), e);
                    default
                }
            },
        };
        let heartbeat = dur("heartbeat", self.heartbeat, Duration::from_secs(15));
        let retry = dur("retry", self.retry, Duration::from_secs(2));
        let max_channels = match self.max_channels {
            Some(0) => {
                errors.push(join(path, "max_channels"), "must be at least 1");
                1
            }
            Some(n) => n,
            None => 16,
        };
        let transports = Transports::validate(self.transports, &join(path, "transports"), errors);
        let origins = self.origins.unwrap_or_default();
        for (i, origin) in origins.iter().enumerate() {
            let valid = origin == "*"
                || ["http://", "https://"].iter().any(|scheme| {
                    origin
                        .strip_prefix(scheme)
                        .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
                });
            if !valid {
                errors.push(
                    format!("{}[{i}]", join(path, "origins")),
                    format!("{origin:?}: write scheme://host[:port] (no path) or \"*\""),
                );
            }
        }
        if let RuleAuthConfig::Upstream(upstream) = &mut auth {
            check_auth_path_vars(&channels, &upstream.path, &join(path, "auth_path"), errors);
            upstream.max_paths = max_channels;
        }
        if errors.len() > before {
            return None;
        }
        Some(StreamRule {
            name: path.to_string(),
            path: pattern?,
            channels,
            auth,
            limits,
            heartbeat,
            retry,
            max_channels,
            transports,
            origins,
        })
    }
}

/// `{path.NAME}` must name a `{NAME}` segment of the rule's own pattern.
pub fn check_path_vars(
    t: &Template,
    pattern: Option<&PathPattern>,
    key: &str,
    errors: &mut ConfigErrors,
) {
    let Some(pattern) = pattern else { return };
    for (source, name) in t.variables() {
        if source == Source::Path && !pattern.param_names().any(|p| p == name) {
            errors.push(
                key,
                format!("{{path.{name}}}: the path pattern {pattern} has no {{{name}}} segment"),
            );
        }
    }
}

/// Every variable a channel is made of must be in `auth_path` too: the app is asked about
/// each value a channel is rendered from, so a value it never sees cannot pick a channel
/// (`channels = ["bot:{query.botId}"]` with `auth_path = "/api/me"` would let anyone with a
/// session read every bot).
fn check_auth_path_vars(
    channels: &[Template],
    auth_path: &Template,
    key: &str,
    errors: &mut ConfigErrors,
) {
    let same = |(s1, n1): (Source, &str), (s2, n2): (Source, &str)| {
        s1 == s2
            && match s1 {
                // Header names are case-insensitive: {header.X-Bot} is {header.x-bot}.
                Source::Header => n1.eq_ignore_ascii_case(n2),
                _ => n1 == n2,
            }
    };
    let mut reported: Vec<(Source, &str)> = Vec::new();
    for (i, channel) in channels.iter().enumerate() {
        for var in channel.variables() {
            let checked = auth_path.variables().any(|a| same(a, var));
            if checked || reported.iter().any(|r| same(*r, var)) {
                continue;
            }
            reported.push(var);
            errors.push(
                key,
                format!(
                    "does not use {{{}.{}}}, which channels[{i}] ({:?}) is made of: the app \
                     must be asked about every value a channel is rendered from",
                    var.0.as_str(),
                    var.1,
                    channel.as_str()
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse_rules as parse;

    #[test]
    fn valid_rule_with_defaults() {
        let c = parse("[[stream]]\npath = \"/c/{id}/events\"\nchannels = [\"chat:{path.id}\"]\nauth = \"none\"").unwrap();
        let s = &c.streams[0];
        assert_eq!((s.name.as_str(), s.auth.as_str()), ("stream[0]", "none"));
        assert_eq!(s.heartbeat, std::time::Duration::from_secs(15));
        assert_eq!(s.max_channels, 16);
        assert_eq!(s.transports, super::Transports::default());
        assert!(s.transports.sse && s.transports.websocket);
    }

    #[test]
    fn transports_can_be_narrowed() {
        let c = parse("[[stream]]\npath = \"/a\"\nchannels = [\"a\"]\nauth = \"none\"\ntransports = [\"websocket\"]").unwrap();
        let t = c.streams[0].transports;
        assert!(!t.sse && t.websocket);
    }

    #[test]
    fn every_error_has_its_key_path() {
        let errors = parse(
            r#"
            [hub]
            subscriber_queue = 0
            history_max_age = "soon"
            max_multi = 0
            [[stream]]
            path = "/a"
            channels = ["x:{form.a}", "{path.nope}"]
            heartbeat = "1ms"
            [[stream]]
            path = "/b"
            channels = ["b"]
            auth = "jwt"
            [[stream]]
            path = "/c"
            channels = []
            auth = "none"
            extra = 1
            [[stream]]
            path = "/d"
            channels = ["d"]
            auth = "none"
            transports = ["sse", "carrier-pigeon"]
            [[stream]]
            path = "/e"
            channels = ["e"]
            auth = "none"
            transports = []
            origins = ["https://ok.example", "ok.example", "https://a.example/path"]
            "#,
        )
        .unwrap_err();
        for expected in [
            "hub.subscriber_queue: must be at least 1",
            "hub.history_max_age: invalid duration",
            "hub.max_multi: must be at least 1",
            "stream[0].channels[0]: template \"x:{form.a}\": {form.a} is not available here",
            "stream[0].channels[1]: {path.nope}: the path pattern /a has no {nope} segment",
            "stream[0].auth: required",
            "stream[0].heartbeat: must be at least 100ms",
            "stream[1].auth: \"jwt\" needs a [jwt] section",
            "stream[2].extra: unknown field `extra`",
            "stream[3].transports[1]: unknown transport \"carrier-pigeon\"",
            "stream[4].transports: at least one of",
            "stream[4].origins[1]: \"ok.example\": write scheme://host[:port]",
            "stream[4].origins[2]: \"https://a.example/path\"",
        ] {
            assert!(
                errors.contains(expected),
                "{expected:?} missing in:\n{errors}"
            );
        }
    }
}
