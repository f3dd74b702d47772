//! The client to the upstream app: the keep-alive [`Pool`] plus timeouts, metrics and the
//! one retry. One client per config snapshot (a reload that changes pool settings builds a
//! new one; the old pool drains as its last requests finish).

use std::time::{Duration, Instant};

use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response};

use super::config::ProxyConfig;
use super::error::UpstreamError;
use super::pool::{Pool, PoolSettings, PooledBody, SendError};
use crate::body::{Body, empty};
use crate::config::Upstream;
use crate::metrics::ProxyMetrics;

/// Client for the upstream app.
#[derive(Clone)]
pub struct UpstreamClient {
    pool: Pool,
    upstream: Upstream,
    response_timeout: Duration,
    metrics: ProxyMetrics,
}

impl UpstreamClient {
    /// Build the client and its pool from the `[proxy]` settings.
    pub fn new(upstream: Upstream, config: &ProxyConfig, metrics: ProxyMetrics) -> Self {
        let pool = Pool::new(PoolSettings {
            authority: upstream.authority.to_string(),
            connect_timeout: config.connect_timeout,
            max_idle: config.pool_max_idle,
            idle_timeout: config.pool_idle_timeout,
            read_timeout: config.read_timeout,
            max_connections: config.max_upstream_connections,
            metrics: metrics.clone(),
        });
        UpstreamClient {
            pool,
            upstream,
            response_timeout: config.response_timeout,
            metrics,
        }
    }

    /// The request target sent upstream for a client's path and query: origin-form, the
    /// upstream's base path prepended (the host goes in the Host header).
    pub fn uri_for(&self, path_and_query: Option<&PathAndQuery>) -> Uri {
        let mut parts = http::uri::Parts::default();
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
        // Cannot fail: a path alone is a valid origin-form URI.
        Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
    }

    /// The upstream's `host:port`, for `preserve_host = false`.
    pub fn authority(&self) -> &http::uri::Authority {
        &self.upstream.authority
    }

    /// Send a request and wait for the response head, within `response_timeout`.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<PooledBody>, UpstreamError> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.response_timeout, self.exchange(req))
            .await
            .unwrap_or(Err(UpstreamError::Timeout));
        match &result {
            Ok(_) => {
                self.metrics
                    .upstream_duration
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.upstream_responses.inc();
            }
            Err(e) => self.metrics.upstream_error(e.kind()),
        }
        result
    }

    /// One exchange on a pooled connection, sent again on a new connection when the pooled
    /// one turns out to be dead: always when the request never left, and for a bodiless
    /// idempotent request when the connection broke after it was written (the upstream
    /// closed an idle keep-alive connection as we wrote on it: it cannot have acted on it).
    async fn exchange(&self, req: Request<Body>) -> Result<Response<PooledBody>, UpstreamError> {
        let conn = self.pool.checkout().await?;
        if !conn.reused {
            return conn
                .send(req)
                .await
                .map_err(|e| UpstreamError::Protocol(e.error));
        }
        let again = retryable(&req).then(|| clone_head(&req));
        let req = match conn.send(req).await {
            Ok(resp) => return Ok(resp),
            Err(SendError {
                unsent: Some(req),
                error,
            }) => {
                tracing::debug!(cause = %error, "pooled upstream connection closed; sending on a new one");
                req
            }
            Err(SendError { error, .. }) => match again {
                Some(req) if connection_broke(&error) => {
                    tracing::debug!(cause = %error, "pooled upstream connection broke; retrying once");
                    req
                }
                _ => return Err(UpstreamError::Protocol(error)),
            },
        };
        let conn = Box::pin(self.pool.connect()).await?;
        conn.send(req)
            .await
            .map_err(|e| UpstreamError::Protocol(e.error))
    }
}

/// The connection closed or reset under the request, as opposed to the upstream answering
/// something invalid.
fn connection_broke(error: &hyper::Error) -> bool {
    use std::error::Error as _;
    if error.is_incomplete_message() || error.is_canceled() || error.is_closed() {
        return true;
    }
    let mut source = error.source();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionAborted
            );
        }
        source = e.source();
    }
    false
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
