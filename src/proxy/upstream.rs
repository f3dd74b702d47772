//! The keep-alive client to the upstream app: one pooled hyper-util legacy client per config
//! snapshot (a reload that changes pool settings builds a new one; the old pool drains as its
//! last requests finish).

use std::time::Instant;

use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::config::ProxyConfig;
use super::error::UpstreamError;
use crate::body::{Body, empty};
use crate::config::Upstream;
use crate::metrics::ProxyMetrics;

/// Client for the upstream app.
#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<HttpConnector, Body>,
    upstream: Upstream,
    response_timeout: std::time::Duration,
    metrics: ProxyMetrics,
}

impl UpstreamClient {
    /// Build the client and its pool from the `[proxy]` settings.
    pub fn new(upstream: Upstream, config: &ProxyConfig, metrics: ProxyMetrics) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle)
            .build(connector);
        UpstreamClient {
            client,
            upstream,
            response_timeout: config.response_timeout,
            metrics,
        }
    }

    /// The absolute upstream URI for a client's path and query (base path prepended).
    pub fn uri_for(&self, path_and_query: Option<&PathAndQuery>) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.upstream.scheme.clone());
        parts.authority = Some(self.upstream.authority.clone());
        parts.path_and_query = Some(match (self.upstream.base_path.as_str(), path_and_query) {
            // The common case reuses the client's already-parsed path (a cheap clone).
            ("", Some(pq)) => pq.clone(),
            ("", None) => PathAndQuery::from_static("/"),
            (base, pq) => {
                let pq = pq.map_or("/", PathAndQuery::as_str);
                // Cannot fail: a validated prefix followed by an already-parsed path.
                format!("{base}{pq}")
                    .parse()
                    .unwrap_or_else(|_| PathAndQuery::from_static("/"))
            }
        });
        // Cannot fail: scheme, authority and path are all present and valid.
        Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
    }

    /// The upstream's `host:port`, for `preserve_host = false`.
    pub fn authority(&self) -> &http::uri::Authority {
        &self.upstream.authority
    }

    /// Send a request and wait for the response head, within `response_timeout`.
    ///
    /// A bodiless idempotent request whose pooled connection broke (the upstream closed an
    /// idle keep-alive connection as we wrote on it) is retried once on a fresh connection:
    /// the upstream cannot have acted on it.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, UpstreamError> {
        let retry = retryable(&req).then(|| clone_head(&req));
        match self.send_once(req).await {
            Err(UpstreamError::Protocol(err)) => match retry {
                Some(again) => {
                    tracing::debug!(cause = %err, "upstream connection broke; retrying once");
                    self.send_once(again).await
                }
                None => Err(UpstreamError::Protocol(err)),
            },
            other => other,
        }
    }

    async fn send_once(&self, req: Request<Body>) -> Result<Response<Incoming>, UpstreamError> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.response_timeout, self.client.request(req)).await;
        let result = match result {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(UpstreamError::from_client(e)),
            Err(_) => Err(UpstreamError::Timeout),
        };
        match &result {
            Ok(_) => self
                .metrics
                .upstream_duration
                .observe(started.elapsed().as_secs_f64()),
            Err(e) => self.metrics.upstream_error(e.kind()),
        }
        result
    }
}

fn retryable(req: &Request<Body>) -> bool {
    use http_body::Body as _;
    let idempotent = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    );
    idempotent && req.body().is_end_stream()
}

fn clone_head(req: &Request<Body>) -> Request<Body> {
    let mut again = Request::new(empty());
    *again.method_mut() = req.method().clone();
    *again.uri_mut() = req.uri().clone();
    *again.version_mut() = req.version();
    *again.headers_mut() = req.headers().clone();
    again
}
