//! The auth settings: `auth`, `auth_path`, `auth_cache` and `reauth` of a stream rule, the
//! `[jwt]` section, and `[generic_stream]`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use super::rate::Rate;
use crate::config::{ConfigErrors, join, parse_duration};
use crate::template::{Source, Template};

/// The auth keys of a `[[stream]]` rule as written. The stream rule's raw struct carries
/// these fields and hands them over for validation.
#[derive(Debug, Default)]
pub struct RawRuleAuth {
    /// `"none"`, `"upstream"` or `"jwt"`; required (no silent default).
    pub auth: Option<String>,
    /// Upstream auth: the path asked, a template (`/api/bots/{query.botId}`).
    pub auth_path: Option<String>,
    /// Upstream auth: how long a decision is reused (`"10s"`, `"0s"` = off).
    pub auth_cache: Option<String>,
    /// Upstream auth: how often an open stream is re-checked (`"0s"` = never).
    pub reauth: Option<String>,
    /// Upstream auth: the query parameter that carries a bearer token (`"token"`).
    pub token_query: Option<String>,
}

/// Who may subscribe to one stream rule.
#[derive(Debug, Clone)]
pub enum RuleAuthConfig {
    /// Anyone (written explicitly as `auth = "none"`).
    None,
    /// Ask the app with the client's credentials.
    Upstream(UpstreamAuthConfig),
    /// A JWT verified with the `[jwt]` settings.
    Jwt,
}

impl RuleAuthConfig {
    /// The mode as written in the config (`none`, `upstream`, `jwt`).
    pub fn as_str(&self) -> &'static str {
        match self {
            RuleAuthConfig::None => "none",
            RuleAuthConfig::Upstream(_) => "upstream",
            RuleAuthConfig::Jwt => "jwt",
        }
    }
}

/// Validated upstream-auth settings of one rule.
#[derive(Debug, Clone)]
pub struct UpstreamAuthConfig {
    /// The path (and optional query) asked; values are percent-encoded when rendered.
    pub path: Template,
    /// How long a decision for one (credentials, path) is reused; zero = not cached (in-flight
    /// checks are still shared). Default 10 s.
    pub cache: Duration,
    /// Re-check interval of open streams; `None` = never. Default 60 s.
    pub reauth: Option<Duration>,
    /// Distinct paths one subscribe may ask (one per value of a list); more → 400. The
    /// stream rule sets its `max_channels`; default [`DEFAULT_MAX_AUTH_PATHS`].
    pub max_paths: usize,
    /// The query parameter whose value is sent to `auth_path` as `Authorization: Bearer`
    /// (an EventSource cannot send headers); it never reaches the app otherwise.
    pub token_query: Option<String>,
}

/// Default `max_paths`: the default `max_channels` of a stream rule.
pub const DEFAULT_MAX_AUTH_PATHS: usize = 16;

/// Default `auth_cache`.
pub const DEFAULT_AUTH_CACHE: Duration = Duration::from_secs(10);
/// Default `reauth`.
pub const DEFAULT_REAUTH: Duration = Duration::from_secs(60);

impl RawRuleAuth {
    /// Validate, recording every error under `path` (the rule's key path). `params` are the
    /// `{name}` segments of the rule's path pattern, for `{path.NAME}` in `auth_path`.
    /// `jwt`: whether a `[jwt]` section is written, valid or not (an invalid one reports its
    /// own errors; saying it is missing too would be a false second error).
    pub fn validate(
        self,
        path: &str,
        params: &[&str],
        jwt: bool,
        errors: &mut ConfigErrors,
    ) -> RuleAuthConfig {
        let mode = self.auth.as_deref();
        if mode != Some("upstream") {
            for (key, set) in [
                ("auth_path", self.auth_path.is_some()),
                ("auth_cache", self.auth_cache.is_some()),
                ("reauth", self.reauth.is_some()),
                ("token_query", self.token_query.is_some()),
            ] {
                if set {
                    errors.push(join(path, key), "only applies with auth = \"upstream\"");
                }
            }
        }
        match mode {
            None => {
                errors.push(
                    join(path, "auth"),
                    "required: \"upstream\" (ask the app), \"jwt\", or \"none\" to let anyone \
                     subscribe",
                );
                RuleAuthConfig::None
            }
            Some("none") => RuleAuthConfig::None,
            Some("jwt") => {
                if !jwt {
                    errors.push(join(path, "auth"), "\"jwt\" needs a [jwt] section");
                }
                RuleAuthConfig::Jwt
            }
            // On an error the placeholder `None` never runs: the config is refused.
            Some("upstream") => self
                .validate_upstream(path, params, errors)
                .map_or(RuleAuthConfig::None, RuleAuthConfig::Upstream),
            Some(other) => {
                errors.push(
                    join(path, "auth"),
                    format!("unknown auth {other:?} (expected \"none\", \"upstream\" or \"jwt\")"),
                );
                RuleAuthConfig::None
            }
        }
    }

    fn validate_upstream(
        self,
        path: &str,
        params: &[&str],
        errors: &mut ConfigErrors,
    ) -> Option<UpstreamAuthConfig> {
        let key = join(path, "auth_path");
        let template = match self.auth_path.as_deref() {
            None => {
                errors.push(
                    &key,
                    "required with auth = \"upstream\" (e.g. \"/api/bots/{query.botId}\")",
                );
                None
            }
            Some(text) if !text.starts_with('/') => {
                errors.push(&key, format!("{text:?} must start with /"));
                None
            }
            Some(text) => Template::parse(text, &[Source::Path, Source::Query, Source::Header])
                .map_err(|e| errors.push(&key, e))
                .ok(),
        };
        let token_query = self
            .token_query
            .filter(|name| token_query_name_ok(name, &join(path, "token_query"), errors));
        if let Some(t) = &template {
            for (source, name) in t.variables() {
                if source == Source::Path && !params.contains(&name) {
                    errors.push(
                        &key,
                        format!("{{path.{name}}}: the rule's path has no {{{name}}} segment"),
                    );
                }
                if source == Source::Query && token_query.as_deref() == Some(name) {
                    errors.push(
                        &key,
                        format!(
                            "{{query.{name}}} is the token_query: the token goes to the app \
                             as Authorization: Bearer, never in the path asked"
                        ),
                    );
                }
            }
        }
        let mut dur = |k: &str, raw: Option<String>, default: Duration| match raw {
            None => default,
            Some(text) => parse_duration(&text)
                .map_err(|e| errors.push(join(path, k), e))
                .unwrap_or(default),
        };
        let cache = dur("auth_cache", self.auth_cache, DEFAULT_AUTH_CACHE);
        let reauth = dur("reauth", self.reauth, DEFAULT_REAUTH);
        Some(UpstreamAuthConfig {
            path: template?,
            cache,
            reauth: (!reauth.is_zero()).then_some(reauth),
            max_paths: DEFAULT_MAX_AUTH_PATHS,
            token_query,
        })
    }
}

/// The `[jwt]` section as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwtConfig {
    algorithm: Option<String>,
    secret: Option<String>,
    public_key_file: Option<PathBuf>,
    issuer: Option<String>,
    audience: Option<String>,
    cookie: Option<String>,
    query_param: Option<String>,
    claim: Option<String>,
    leeway: Option<String>,
}

/// Validated JWT settings, shared by every `auth = "jwt"` rule and the generic stream.
#[derive(Clone)]
pub struct JwtConfig {
    /// The only algorithm accepted; comes from the config, never from a token's header.
    pub algorithm: Algorithm,
    /// HS256 secret or RS256/ES256 public key. Never logged.
    pub key: DecodingKey,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// Cookie that may carry the token; `None` = none.
    pub cookie: Option<String>,
    /// Query parameter that may carry the token (EventSource cannot send headers); `None`
    /// = none. Default `token`.
    pub query_param: Option<String>,
    /// Claim listing the channel patterns the token may subscribe to: a top-level key of
    /// that exact name, else a dotted path (`unpoll.subscribe`). Default `unpoll.subscribe`.
    pub claim: String,
    /// Clock skew tolerated on `exp` and `nbf`. Default 5 s.
    pub leeway: Duration,
}

impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field("algorithm", &self.algorithm)
            .field("key", &"<redacted>")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("cookie", &self.cookie)
            .field("query_param", &self.query_param)
            .field("claim", &self.claim)
            .field("leeway", &self.leeway)
            .finish()
    }
}

/// Shortest HS256 secret accepted: RFC 7518 §3.2 requires a key of at least the hash size.
const MIN_SECRET_BYTES: usize = 32;

impl RawJwtConfig {
    /// Validate (reading the public key file), recording every error under `path`.
    pub fn validate(self, path: &str, errors: &mut ConfigErrors) -> Option<JwtConfig> {
        let algorithm = match self.algorithm.as_deref().unwrap_or("HS256") {
            "HS256" => Algorithm::HS256,
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            other => {
                errors.push(
                    join(path, "algorithm"),
                    format!("unsupported algorithm {other:?} (expected HS256, RS256 or ES256)"),
                );
                return None;
            }
        };
        let key = match algorithm {
            Algorithm::HS256 => {
                if self.public_key_file.is_some() {
                    errors.push(join(path, "public_key_file"), "only for RS256 and ES256");
                }
                match self.secret.as_deref() {
                    Some(s) if s.len() >= MIN_SECRET_BYTES => {
                        Some(DecodingKey::from_secret(s.as_bytes()))
                    }
                    Some(_) => {
                        errors.push(
                            join(path, "secret"),
                            format!("must be at least {MIN_SECRET_BYTES} bytes for HS256"),
                        );
                        None
                    }
                    None => {
                        errors.push(join(path, "secret"), "required for HS256");
                        None
                    }
                }
            }
            _ => {
                if self.secret.is_some() {
                    errors.push(join(path, "secret"), "only for HS256");
                }
                self.public_key(path, algorithm, errors)
            }
        };
        let leeway = match self.leeway {
            None => Duration::from_secs(5),
            Some(text) => parse_duration(&text)
                .map_err(|e| errors.push(join(path, "leeway"), e))
                .ok()?,
        };
        let claim = self.claim.unwrap_or_else(|| "unpoll.subscribe".to_string());
        if claim.is_empty() {
            errors.push(join(path, "claim"), "must not be empty");
        }
        let non_empty = |v: Option<String>| v.filter(|s| !s.is_empty());
        Some(JwtConfig {
            algorithm,
            key: key?,
            issuer: non_empty(self.issuer),
            audience: non_empty(self.audience),
            cookie: non_empty(self.cookie),
            query_param: match self.query_param {
                None => Some("token".to_string()),
                v => non_empty(v),
            },
            claim,
            leeway,
        })
    }

    fn public_key(
        &self,
        path: &str,
        algorithm: Algorithm,
        errors: &mut ConfigErrors,
    ) -> Option<DecodingKey> {
        let key_path = join(path, "public_key_file");
        let Some(file) = &self.public_key_file else {
            errors.push(
                key_path,
                format!("required for {algorithm:?} (a PEM public key)"),
            );
            return None;
        };
        let pem = std::fs::read(file)
            .map_err(|e| errors.push(&key_path, format!("cannot read {}: {e}", file.display())))
            .ok()?;
        let key = match algorithm {
            Algorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
            _ => DecodingKey::from_ec_pem(&pem),
        };
        key.map_err(|e| {
            errors.push(
                &key_path,
                format!(
                    "{} is not a {algorithm:?} public key in PEM: {e}",
                    file.display()
                ),
            )
        })
        .ok()
    }
}

/// The `[generic_stream]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGenericStream {
    enabled: Option<bool>,
    limits: Option<RawStreamLimits>,
}

/// `/_unpoll/sse?channel=…`: the client names the channels, its JWT limits them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GenericStreamConfig {
    /// Serve the generic stream (only with a `[jwt]` section). Default false: the path is
    /// then proxied like any other.
    pub enabled: bool,
    /// Its limits.
    pub limits: StreamLimits,
}

impl RawGenericStream {
    /// Validate, recording every error under `path`; `jwt` as in [`RawRuleAuth::validate`].
    pub fn validate(self, path: &str, jwt: bool, errors: &mut ConfigErrors) -> GenericStreamConfig {
        let enabled = self.enabled.unwrap_or(false);
        if enabled && !jwt {
            errors.push(
                join(path, "enabled"),
                "the generic stream needs a [jwt] section: the token decides the channels",
            );
        }
        GenericStreamConfig {
            enabled,
            limits: self
                .limits
                .unwrap_or_default()
                .validate(&join(path, "limits"), errors),
        }
    }
}

/// The `limits = { ... }` table of a stream rule as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStreamLimits {
    /// See [`StreamLimits::per_channel`].
    pub per_channel: Option<usize>,
    /// See [`StreamLimits::per_ip`].
    pub per_ip: Option<usize>,
    /// See [`StreamLimits::rate`].
    pub rate: Option<String>,
    /// See [`StreamLimits::retry_after`].
    pub retry_after: Option<String>,
}

/// Validated per-rule limits; `None` = no limit of that kind beyond the hub's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamLimits {
    /// Open streams of this rule on one channel. Full → 429.
    pub per_channel: Option<usize>,
    /// Open streams of this rule from one client address. Full → 429.
    pub per_ip: Option<usize>,
    /// New streams of this rule per client address (`"20/1m"`). Over → 429 with the time
    /// until the next one is allowed.
    pub rate: Option<Rate>,
    /// `Retry-After` sent with the per-channel and per-address 429s (the rate's 429 says
    /// exactly when). Default 5 s.
    pub retry_after: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            per_channel: None,
            per_ip: None,
            rate: None,
            retry_after: Duration::from_secs(5),
        }
    }
}

impl RawStreamLimits {
    /// Validate, recording every error under `path`.
    pub fn validate(self, path: &str, errors: &mut ConfigErrors) -> StreamLimits {
        let d = StreamLimits::default();
        let mut positive = |key: &str, v: Option<usize>| match v {
            Some(0) => {
                errors.push(join(path, key), "must be at least 1 (omit it for no limit)");
                None
            }
            v => v,
        };
        let per_channel = positive("per_channel", self.per_channel);
        let per_ip = positive("per_ip", self.per_ip);
        let rate = self.rate.and_then(|text| {
            Rate::parse(&text)
                .map_err(|e| errors.push(join(path, "rate"), e))
                .ok()
        });
        let retry_after = match self.retry_after {
            None => d.retry_after,
            Some(text) => parse_duration(&text)
                .map_err(|e| errors.push(join(path, "retry_after"), e))
                .unwrap_or(d.retry_after),
        };
        StreamLimits {
            per_channel,
            per_ip,
            rate,
            retry_after,
        }
    }
}

/// Is `name` usable as a `token_query` (of a stream or a watch rule)? The value is matched
/// against decoded parameter names; keep the name to characters a URL carries as they are,
/// so what is written is what is matched. Records the error under `key` when not.
pub fn token_query_name_ok(name: &str, key: &str, errors: &mut ConfigErrors) -> bool {
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b));
    if !plain {
        errors.push(
            key,
            format!("{name:?}: a query parameter name (letters, digits, - _ . ~)"),
        );
    }
    plain
}
