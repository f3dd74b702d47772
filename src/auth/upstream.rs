//! `auth = "upstream"`: ask the app, with the client's Cookie and Authorization, whether it
//! may see `auth_path`. With `token_query`, a token in the query (an EventSource cannot send
//! headers) is the Authorization, `Bearer <token>`; [`UpstreamAuth::strip_token`] keeps it
//! from the app everywhere else. Decisions are cached per (credentials, resolved path) and concurrent
//! checks of one key share one upstream request, so a reconnect storm of one user's tabs
//! costs one call.
//!
//! A list value (`?botId=1,2`, `?botId=1&botId=2`) subscribes to one channel per value, so
//! `auth_path` is rendered once per value the same way ([`crate::template::Template::render_each`] over the
//! same request variables) and every distinct path must be allowed. A list never reaches the
//! app joined: `/api/bots/1%2C2` would be bot 1 to an app that reads an id's leading integer.

use std::borrow::Cow;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use moka::future::Cache;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use super::config::UpstreamAuthConfig;
use super::error::{AuthError, UpstreamFailure};
use super::metrics::AuthMetrics;
use crate::body::empty;
use crate::proxy::UpstreamError;
use crate::proxy::config::ProxyConfig;
use crate::proxy::forward::upstream_request;
use crate::proxy::headers::X_FORWARDED_FOR;
use crate::proxy::upstream::UpstreamClient;
use crate::route::PathParams;
use crate::template::{RenderEachError, RequestVars, Source, Vars};

/// Bytes of cached decisions per rule (keys are the credentials and the path). Full: moka
/// evicts the least useful entries (TinyLFU); an evicted user's next subscribe asks again.
pub const DECISION_CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// Bytes of an auth response body read so its connection can go back to the pool; a
/// longer body is dropped (and its connection closed) instead.
const DRAIN_LIMIT: usize = 64 * 1024;

/// How long draining that body may take.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Everything `encodeURIComponent` encodes: a value can neither end a path segment nor
/// start a query, whichever part of `auth_path` it lands in.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The upstream checker of one rule.
pub struct UpstreamAuth {
    config: UpstreamAuthConfig,
    rule: String,
    /// Decisions by (credentials, path): allowed, or the 401/403/404 to pass on. Failures
    /// are not cached. Bounded by [`DECISION_CACHE_BYTES`]; entries live `auth_cache`.
    /// Also the coalescing point: moka runs one init per key and hands its result to every
    /// concurrent caller.
    cache: Cache<CheckKey, Decision>,
    metrics: AuthMetrics,
}

impl std::fmt::Debug for UpstreamAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamAuth")
            .field("rule", &self.rule)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The credentials, host and resolved path a decision is about (the host too: one app may
/// serve several tenants by name). No `Debug`: it holds cookies.
#[derive(Clone, PartialEq, Eq, Hash)]
struct CheckKey {
    path: String,
    host: Option<Bytes>,
    cookie: Option<Bytes>,
    authorization: Option<Bytes>,
}

/// A cached decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Allow,
    Deny(StatusCode),
}

/// What a check needs from the subscribing request, kept by the stream for re-checks.
#[derive(Clone)]
pub struct CheckRequest {
    /// One key per distinct rendered `auth_path`, all with the same credentials; every one
    /// must be allowed.
    keys: Vec<CheckKey>,
    /// Host and X-Forwarded-For of the client request, so the app sees the same forwarding
    /// headers on the auth request as on a proxied one.
    headers: HeaderMap,
    peer: IpAddr,
    client: UpstreamClient,
    proxy: ProxyConfig,
}

impl std::fmt::Debug for CheckRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The path may carry query values and the key carries credentials: neither logged.
        f.debug_struct("CheckRequest")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl UpstreamAuth {
    /// The checker of rule `rule` (its name, for logs).
    pub fn new(config: UpstreamAuthConfig, rule: String, metrics: AuthMetrics) -> Self {
        let mut builder = Cache::builder().max_capacity(DECISION_CACHE_BYTES).weigher(
            |k: &CheckKey, _: &Decision| {
                let len = k.path.len()
                    + k.host.as_ref().map_or(0, Bytes::len)
                    + k.cookie.as_ref().map_or(0, Bytes::len)
                    + k.authorization.as_ref().map_or(0, Bytes::len);
                u32::try_from(len + 64).unwrap_or(u32::MAX)
            },
        );
        if !config.cache.is_zero() {
            builder = builder.time_to_live(config.cache);
        }
        UpstreamAuth {
            config,
            rule,
            cache: builder.build(),
            metrics,
        }
    }

    /// How often open streams are re-checked.
    pub fn reauth(&self) -> Option<Duration> {
        self.config.reauth
    }

    /// Resolve `auth_path` for a request, once per value of its list-valued variables, and
    /// keep what a check needs.
    pub fn request(
        &self,
        parts: &http::request::Parts,
        params: &PathParams,
        peer: IpAddr,
        client: &UpstreamClient,
        proxy: &ProxyConfig,
    ) -> Result<CheckRequest, AuthError> {
        let vars = RequestVars::head(params, &parts.uri, &parts.headers);
        let paths = render_paths(&self.config, &vars)?;
        let mut headers = HeaderMap::new();
        let host = parts.headers.get(header::HOST).cloned().or_else(|| {
            let authority = parts.uri.authority()?;
            HeaderValue::from_str(authority.as_str()).ok()
        });
        if let Some(host) = &host {
            headers.insert(header::HOST, host.clone());
        }
        for v in parts.headers.get_all(&X_FORWARDED_FOR) {
            headers.append(&X_FORWARDED_FOR, v.clone());
        }
        let cookie = joined_cookies(&parts.headers);
        if let Some(c) = &cookie {
            headers.insert(header::COOKIE, c.clone());
        }
        // A token in the query, when the rule names one, is what the client authenticates
        // with: it replaces an Authorization header rather than being one more credential.
        let from_query = match &self.config.token_query {
            Some(name) => query_bearer(name, parts.uri.query())?,
            None => None,
        };
        let authorization =
            from_query.or_else(|| parts.headers.get(header::AUTHORIZATION).cloned());
        if let Some(a) = &authorization {
            headers.insert(header::AUTHORIZATION, a.clone());
        }
        let bytes = |v: &HeaderValue| Bytes::copy_from_slice(v.as_bytes());
        let (host, cookie, authorization) = (
            host.as_ref().map(bytes),
            cookie.as_ref().map(bytes),
            authorization.as_ref().map(bytes),
        );
        let keys = paths
            .into_iter()
            .map(|path| CheckKey {
                path,
                host: host.clone(),
                cookie: cookie.clone(),
                authorization: authorization.clone(),
            })
            .collect();
        Ok(CheckRequest {
            keys,
            headers,
            peer,
            client: client.clone(),
            proxy: proxy.clone(),
        })
    }

    /// `uri` without the rule's `token_query` parameter, for a request that goes on to the
    /// app (a stream request its rule does not apply to is proxied).
    pub fn strip_token(&self, uri: &mut Uri) {
        if let Some(name) = &self.config.token_query {
            strip_query_param(uri, name);
        }
    }

    /// Is access allowed to every path of `req`? Each path from the cache when a decision
    /// for these credentials and path is fresh, else by asking the app once for all
    /// concurrent callers; the paths are asked at the same time. A refusal of any path wins
    /// over a failure to get an answer for another, so a re-check ends access when the app
    /// clearly says no to one of them.
    pub async fn check(&self, req: &CheckRequest) -> Result<(), AuthError> {
        let results =
            futures_util::future::join_all(req.keys.iter().map(|key| self.check_one(req, key)))
                .await;
        let mut failure = None;
        for result in results {
            match result {
                Ok(Decision::Allow) => {}
                Ok(Decision::Deny(status)) => return Err(AuthError::Denied { status }),
                Err(f) => {
                    failure.get_or_insert(f);
                }
            }
        }
        match failure {
            Some(f) => Err(AuthError::Upstream(f)),
            None => Ok(()),
        }
    }

    async fn check_one(
        &self,
        req: &CheckRequest,
        key: &CheckKey,
    ) -> Result<Decision, UpstreamFailure> {
        let result = self
            .cache
            .try_get_with(key.clone(), self.ask(req, &key.path))
            .await;
        if self.config.cache.is_zero() {
            // Not cached: the entry only served the callers that waited on this check.
            self.cache.invalidate(key).await;
        }
        result.map_err(|failure| *failure)
    }

    async fn ask(&self, req: &CheckRequest, path: &str) -> Result<Decision, UpstreamFailure> {
        self.metrics.upstream_checks.inc();
        let uri: Uri = path.parse().map_err(|_| UpstreamFailure::Unreachable)?;
        let mut head = Request::new(());
        *head.method_mut() = Method::GET;
        *head.uri_mut() = uri;
        *head.headers_mut() = req.headers.clone();
        let (parts, ()) = head.into_parts();
        let upstream_req = upstream_request(&req.client, &req.proxy, parts, empty(), req.peer);
        let resp = match req.client.send(upstream_req).await {
            Ok(resp) => resp,
            Err(e) => {
                tracing::warn!(rule = %self.rule, cause = %e, "auth check: upstream failed");
                return Err(UpstreamFailure::from(&e));
            }
        };
        let status = resp.status();
        // Read a short body so the connection returns to the pool; the content is unused.
        let drain = Limited::new(resp.into_body(), DRAIN_LIMIT).collect();
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
        match status {
            s if s.is_success() => Ok(Decision::Allow),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => {
                Ok(Decision::Deny(status))
            }
            other => {
                tracing::warn!(rule = %self.rule, status = other.as_u16(), "auth check: unexpected status");
                Err(UpstreamFailure::Status(other))
            }
        }
    }
}

/// The `Authorization: Bearer <token>` that the first non-empty `name=<token>` of `query`
/// stands for (`None` without one), marked sensitive so no header dump shows it. A token
/// that cannot be a header value is refused without being echoed. Any request unpoll
/// makes to the app on a client's behalf with a `token_query` sends this and
/// [`strip_query_param`]s the URL it forwards.
pub fn query_bearer(name: &str, query: Option<&str>) -> Result<Option<HeaderValue>, AuthError> {
    let Some(token) = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v)
    else {
        return Ok(None);
    };
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| AuthError::BadRequest("the query token is not a valid header value".into()))?;
    value.set_sensitive(true);
    Ok(Some(value))
}

/// Remove every `name=…` pair (name compared decoded, as the app would read it) from the
/// query of `uri`, keeping the other pairs byte for byte and in order.
pub fn strip_query_param(uri: &mut Uri, name: &str) {
    let Some(query) = uri.query() else { return };
    let is_name = |pair: &&str| {
        let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
        form_urlencoded::parse(key.as_bytes())
            .next()
            .is_some_and(|(k, _)| k == name)
    };
    if !query.split('&').any(|p| is_name(&p)) {
        return;
    }
    let kept: Vec<&str> = query.split('&').filter(|p| !is_name(p)).collect();
    let path_and_query = if kept.is_empty() {
        uri.path().to_string()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    // Built from a valid URI minus some of its query: always parses.
    if let Ok(pq) = path_and_query.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(stripped) = Uri::from_parts(parts) {
            *uri = stripped;
        }
    }
}

/// Every Cookie header as one value (HTTP/2 sends one header per cookie).
fn joined_cookies(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut values = headers.get_all(header::COOKIE).iter();
    let first = values.next()?;
    let rest: Vec<&[u8]> = values.map(HeaderValue::as_bytes).collect();
    if rest.is_empty() {
        return Some(first.clone());
    }
    let mut joined = first.as_bytes().to_vec();
    for r in rest {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(r);
    }
    HeaderValue::from_bytes(&joined).ok()
}

/// Render `auth_path` once per value of its list-valued variables (every combination, as
/// the channels are), every value percent-encoded as a URL component; distinct paths in
/// order. Values that are dot segments (`..` would walk up the app's path) or hold a comma
/// are refused, as are more than `config.max_paths` paths.
pub(super) fn render_paths(
    config: &UpstreamAuthConfig,
    vars: &RequestVars<'_>,
) -> Result<Vec<String>, AuthError> {
    let encoded = Encoded(vars);
    for (source, name) in config.path.variables() {
        for v in encoded.decoded_all(source, name) {
            if v == "." || v == ".." {
                return Err(AuthError::BadRequest(format!(
                    "{{{}.{name}}} may not be {v:?}",
                    source.as_str()
                )));
            }
            // A query list is split before it gets here; a path segment or header with a
            // comma is one channel name but would read as a list (or as its first id) to
            // the app: never ask about it.
            if v.contains(',') {
                return Err(AuthError::BadRequest(format!(
                    "{{{}.{name}}} may not contain a comma",
                    source.as_str()
                )));
            }
        }
    }
    let mut paths = config
        .path
        .render_each(&encoded, config.max_paths)
        .map_err(|e| match e {
            RenderEachError::Missing(missing) => AuthError::BadRequest(missing.to_string()),
            RenderEachError::TooMany { cap } => {
                AuthError::BadRequest(format!("more than {cap} auth paths to check"))
            }
        })?;
    let mut seen = std::collections::HashSet::with_capacity(paths.len());
    paths.retain(|p| seen.insert(p.clone()));
    Ok(paths)
}

/// The request's variables as `auth_path` sees them: each value decoded to what the user
/// meant, then percent-encoded so it can neither end a path segment nor start a query.
struct Encoded<'a, 'b>(&'a RequestVars<'b>);

impl Encoded<'_, '_> {
    /// Every value as the user meant it (path segments arrive still percent-encoded). The
    /// same list [`crate::template::Template::render_each`] renders the channels from.
    fn decoded_all(&self, source: Source, name: &str) -> Vec<String> {
        self.0
            .get_all(source, name)
            .into_iter()
            .map(|v| match source {
                Source::Path => percent_decode_str(&v).decode_utf8_lossy().into_owned(),
                _ => v.into_owned(),
            })
            .collect()
    }
}

fn encode(v: &str) -> Cow<'static, str> {
    Cow::Owned(utf8_percent_encode(v, COMPONENT).to_string())
}

impl Vars for Encoded<'_, '_> {
    /// Only the first value: `render_paths` renders through [`Vars::get_all`], so a list
    /// is never joined into one path.
    fn get(&self, source: Source, name: &str) -> Option<Cow<'_, str>> {
        self.decoded_all(source, name).first().map(|v| encode(v))
    }

    fn get_all(&self, source: Source, name: &str) -> Vec<Cow<'_, str>> {
        self.decoded_all(source, name)
            .iter()
            .map(|v| encode(v))
            .collect()
    }
}

/// How a failed upstream request answers the auth check.
impl From<&UpstreamError> for UpstreamFailure {
    fn from(e: &UpstreamError) -> Self {
        match e {
            UpstreamError::Timeout | UpstreamError::ConnectTimeout => UpstreamFailure::Timeout,
            _ => UpstreamFailure::Unreachable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::PathPattern;
    use crate::template::Template;

    fn config(path: &str) -> UpstreamAuthConfig {
        UpstreamAuthConfig {
            path: Template::parse(path, &[Source::Path, Source::Query, Source::Header]).unwrap(),
            cache: Duration::from_secs(10),
            reauth: None,
            max_paths: 4,
            token_query: None,
        }
    }

    fn render(
        template: &str,
        pattern: &str,
        path: &str,
        query: &str,
    ) -> Result<Vec<String>, AuthError> {
        let params = PathPattern::parse(pattern).unwrap().matches(path).unwrap();
        let headers = HeaderMap::new();
        let vars = RequestVars {
            path: &params,
            query: Some(query),
            headers: &headers,
            form: None,
            json: None,
        };
        render_paths(&config(template), &vars)
    }

    #[test]
    fn values_are_encoded_and_dot_segments_refused() {
        let t = "/api/bots/{query.botId}/x?chat={path.id}";
        assert_eq!(
            render(t, "/c/{id}", "/c/7", "botId=42").unwrap(),
            ["/api/bots/42/x?chat=7"]
        );
        assert_eq!(
            render(t, "/c/{id}", "/c/a%20b", "botId=1%2F..%2Fadmin%3Fx%3D1%26y").unwrap(),
            ["/api/bots/1%2F..%2Fadmin%3Fx%3D1%26y/x?chat=a%20b"]
        );
        let err = render(t, "/c/{id}", "/c/7", "botId=..").unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        let err = render(t, "/c/{id}", "/c/%2E%2E", "botId=1").unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        let err = render(t, "/c/{id}", "/c/7", "other=1").unwrap_err();
        assert_eq!(err.to_string(), "bad request: no value for {query.botId}");
    }

    #[test]
    fn a_list_is_one_path_per_value_never_joined() {
        let t = "/api/bots/{query.botId}";
        for query in [
            "botId=1&botId=2",
            "botId=1,2",
            "botId=1%2C2",
            "botId=1,,2,&botId=1",
        ] {
            assert_eq!(
                render(t, "/e", "/e", query).unwrap(),
                ["/api/bots/1", "/api/bots/2"],
                "{query}"
            );
        }
        // Every combination when several variables are lists, as for channels.
        assert_eq!(
            render("/b/{query.a}/{query.b}", "/e", "/e", "a=1,2&b=x").unwrap(),
            ["/b/1/x", "/b/2/x"]
        );
        // A dot segment anywhere in the list is refused, not only in the first value.
        let err = render(t, "/e", "/e", "botId=1&botId=..").unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        let err = render(t, "/e", "/e", "botId=1,2,3,4,5").unwrap_err();
        assert_eq!(
            err.to_string(),
            "bad request: more than 4 auth paths to check"
        );
        let err = render(t, "/e", "/e", "botId=,").unwrap_err();
        assert_eq!(err.to_string(), "bad request: no value for {query.botId}");
        // A path segment is one value, not a list: with a comma it is not asked at all.
        for segment in ["1,2", "1%2C2"] {
            let err =
                render("/api/c/{path.id}", "/c/{id}", &format!("/c/{segment}"), "").unwrap_err();
            assert_eq!(
                err.to_string(),
                "bad request: {path.id} may not contain a comma"
            );
        }
    }

    #[test]
    fn a_header_with_a_comma_is_not_asked() {
        let params = PathParams::default();
        let config = config("/api/bots/{header.X-Bot}");
        let paths = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert("x-bot", HeaderValue::from_static(value));
            let vars = RequestVars {
                path: &params,
                query: None,
                headers: &headers,
                form: None,
                json: None,
            };
            render_paths(&config, &vars).map_err(|e| e.to_string())
        };
        assert_eq!(
            paths("1,2").unwrap_err(),
            "bad request: {header.X-Bot} may not contain a comma"
        );
        assert_eq!(paths("1").unwrap(), ["/api/bots/1"]);
    }

    #[test]
    fn the_token_parameter_is_stripped_and_nothing_else() {
        let strip = |uri: &str| {
            let mut uri: Uri = uri.parse().unwrap();
            strip_query_param(&mut uri, "token");
            uri.to_string()
        };
        assert_eq!(strip("/e?botId=1&token=abc"), "/e?botId=1");
        assert_eq!(strip("/e?token=abc"), "/e");
        assert_eq!(strip("/e?t%6Fken=abc&token=d&x=%20&token"), "/e?x=%20");
        assert_eq!(strip("/e?tokens=1&b=2;c"), "/e?tokens=1&b=2;c");
        assert_eq!(strip("http://h:1/e?a=1&token=x"), "http://h:1/e?a=1");
    }

    #[test]
    fn the_query_token_becomes_a_bearer() {
        let bearer = |q: Option<&str>| query_bearer("token", q).map_err(|e| e.to_string());
        assert_eq!(
            bearer(Some("a=1&token=x%2By+z")).unwrap().unwrap(),
            "Bearer x+y z"
        );
        assert!(bearer(Some("token=&t=1")).unwrap().is_none());
        assert!(bearer(None).unwrap().is_none());
        assert_eq!(bearer(Some("token=&token=b")).unwrap().unwrap(), "Bearer b");
        let err = bearer(Some("token=a%0Ab")).unwrap_err();
        assert!(!err.contains("a\nb"), "{err}");
    }

    #[test]
    fn cookies_are_joined() {
        let mut h = HeaderMap::new();
        assert!(joined_cookies(&h).is_none());
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        assert_eq!(joined_cookies(&h).unwrap(), "a=1");
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(joined_cookies(&h).unwrap(), "a=1; b=2");
    }
}
