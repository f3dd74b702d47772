//! Errors of the request path and the one place that maps them to HTTP responses.

use http::{Response, StatusCode, header};

use super::pool::PoolError;
use crate::auth::AuthError;
use crate::body::{Body, full};

/// Why a request to the upstream failed. Knowing the source is what lets the cache serve
/// stale on upstream errors as data, not string matching.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Refused, unreachable, DNS failure.
    #[error("upstream unreachable: {0}")]
    Connect(#[source] std::io::Error),
    /// The TCP connect did not finish within `proxy.connect_timeout`.
    #[error("upstream connect timed out")]
    ConnectTimeout,
    /// No response head within `proxy.response_timeout`.
    #[error("upstream response timed out")]
    Timeout,
    /// `proxy.max_upstream_connections` were busy for all of `proxy.connect_timeout`.
    #[error("all upstream connections busy")]
    Saturated,
    /// The connection broke or the upstream spoke invalid HTTP.
    #[error("upstream connection failed: {0}")]
    Protocol(#[source] hyper::Error),
}

impl From<PoolError> for UpstreamError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Connect { source, .. } => UpstreamError::Connect(source),
            PoolError::ConnectTimeout(_) => UpstreamError::ConnectTimeout,
            PoolError::Saturated(_) => UpstreamError::Saturated,
            PoolError::Http(e) => UpstreamError::Protocol(e),
        }
    }
}

impl UpstreamError {
    /// Label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::ConnectTimeout => "connect_timeout",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Saturated => "saturated",
            UpstreamError::Protocol(_) => "protocol",
        }
    }
}

/// Everything that can end a request with an error response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The upstream failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The request cannot be forwarded as it is.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// A subscribe was refused (auth or limits).
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl ProxyError {
    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Upstream(UpstreamError::Timeout | UpstreamError::ConnectTimeout) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::Upstream(UpstreamError::Saturated) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Auth(e) => e.status(),
        }
    }

    /// A short text that names the cause without leaking internals (no addresses, no
    /// library messages: those go to the log).
    fn public_message(&self) -> std::borrow::Cow<'static, str> {
        match self {
            ProxyError::Auth(e) => e.public_message().into(),
            other => other.fixed_message().into(),
        }
    }

    /// The message of errors whose text does not depend on the request (everything but
    /// auth refusals), shareable with requests waiting on the same upstream fetch.
    pub fn fixed_message(&self) -> &'static str {
        match self {
            ProxyError::Upstream(UpstreamError::Connect(_)) => "upstream unreachable",
            ProxyError::Upstream(UpstreamError::ConnectTimeout) => "upstream connect timed out",
            ProxyError::Upstream(UpstreamError::Timeout) => "upstream response timed out",
            ProxyError::Upstream(UpstreamError::Saturated) => {
                "all upstream connections busy (proxy.max_upstream_connections)"
            }
            ProxyError::Upstream(UpstreamError::Protocol(_)) => "upstream connection failed",
            ProxyError::BadRequest(why) => why,
            ProxyError::Auth(_) => "refused",
        }
    }

    /// The response sent to the client.
    pub fn into_response(self) -> Response<Body> {
        let mut resp = error_response(self.status(), &self.public_message());
        if let ProxyError::Auth(e) = &self {
            let headers = resp.headers_mut();
            if let Some(wait) = e.retry_after() {
                headers.insert(
                    header::RETRY_AFTER,
                    header::HeaderValue::from(wait.as_secs().max(1)),
                );
            }
            if matches!(e, AuthError::MissingToken | AuthError::InvalidToken { .. }) {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer realm=\"unpoll\""),
                );
            }
        }
        resp
    }
}

/// A short `text/plain` error response: `unpoll: <message>`.
pub fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    let mut resp = Response::new(full(format!("unpoll: {message}\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}
