//! The admin listener (loopback by default): health, readiness, metrics, stats, the live
//! dashboard, and the token-protected POST endpoints of later subsystems (publish, purge).

pub(crate) mod auth;
pub(crate) mod config;
pub(crate) mod dashboard;
pub mod live;
pub(crate) mod publish;
pub(crate) mod purge;
pub(crate) mod readiness;

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use prometheus_client::registry::Registry;

use crate::body::{Body, full};
use crate::handles::Handles;
use crate::proxy::error_response;
use crate::snapshot::Snapshot;
use readiness::Readiness;

/// What the admin endpoints and the dashboard read of the instance. Built once by the
/// composition root; cheap to clone (every field is shared), so the dashboard's sampler and
/// streams can own one.
#[derive(Clone)]
pub struct AdminHandles {
    /// The hub, the cache, the sink over both, the proxy metrics, the shutdown signal.
    pub handles: Handles,
    /// The current config snapshot, swapped on reload.
    pub snapshots: Arc<ArcSwap<Snapshot>>,
    /// For `/readyz`, `/stats` and the dashboard's sources.
    pub readiness: Arc<Readiness>,
    /// Rendered by `/metrics`.
    pub registry: Arc<Registry>,
    /// Process start, for the uptime in `/stats`.
    pub started: Instant,
    /// The dashboard's recent samples and its open streams (bounded).
    pub live: Arc<live::Live>,
}

impl AdminHandles {
    /// The current config snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.load_full()
    }
}

/// Handle one request on the admin listener.
pub(crate) async fn handle(parts: &AdminHandles, req: Request<Incoming>) -> Response<Body> {
    let snapshot = parts.snapshot();
    let admin = &snapshot.config.admin;
    // Off loopback, everything but liveness/readiness needs the token (config validation
    // guarantees one is set there).
    let open = matches!(req.uri().path(), "/healthz" | "/readyz");
    if !open
        && !admin.listen.ip().is_loopback()
        && let Err(e) = dashboard::check_access(&req, admin.token.as_deref())
    {
        return e.into_response();
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => readyz(&parts.readiness),
        (&Method::GET, "/metrics") => metrics(&parts.registry),
        (&Method::GET, "/stats") => json(StatusCode::OK, &stats_value(parts)),
        (&Method::GET, "/") => dashboard::page(),
        (&Method::GET, live::STREAM_PATH) => live::stream(parts),
        (&Method::POST, "/publish") => {
            // Publishing needs the token even on loopback: any local process could
            // otherwise inject events into every browser.
            if let Err(e) = auth::check_bearer(req.headers(), admin.token.as_deref()) {
                return e.into_response();
            }
            publish::publish(parts.handles.sink.as_ref(), req).await
        }
        (&Method::POST, "/purge") => {
            if let Err(e) = auth::check_bearer(req.headers(), admin.token.as_deref()) {
                return e.into_response();
            }
            purge::purge(parts.handles.sink.as_ref(), req).await
        }
        (_, "/healthz" | "/readyz" | "/metrics" | "/stats" | "/publish" | "/purge" | "/")
        | (_, live::STREAM_PATH) => {
            error_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error_response(StatusCode::NOT_FOUND, "no such admin endpoint"),
    }
}

fn readyz(readiness: &Readiness) -> Response<Body> {
    let not_ready = readiness.not_ready();
    if not_ready.is_empty() {
        return text(StatusCode::OK, "ready\n");
    }
    let mut body = String::from("not ready\n");
    for (component, reason) in not_ready {
        body.push_str(&format!("{component}: {reason}\n"));
    }
    text(StatusCode::SERVICE_UNAVAILABLE, body)
}

fn metrics(registry: &Registry) -> Response<Body> {
    let mut out = String::with_capacity(8192);
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(cause = %e, "rendering metrics failed");
        return error_response(StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable");
    }
    let mut resp = Response::new(full(out));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

/// Channels listed in `/stats` (the busiest first).
const STATS_TOP_CHANNELS: usize = 20;

/// The `/stats` document (also in every frame of the dashboard's stream).
pub(crate) fn stats_value(parts: &AdminHandles) -> serde_json::Value {
    let (snapshot, handles) = (parts.snapshot(), &parts.handles);
    let metrics = &handles.metrics;
    serde_json::json!({
        "uptime_seconds": parts.started.elapsed().as_secs(),
        "open_connections": metrics.open_connections.get(),
        "stream_connections": metrics.stream_connections.get(),
        "upstream": snapshot.config.upstream.to_string(),
        "ready": parts.readiness.is_ready(),
        "hub": handles.hub.stats(STATS_TOP_CHANNELS),
        "cluster": handles.sink.stats(),
        "cache": handles.cache.stats(),
        "watch": handles.watch.watches.metrics.stats(),
        "streams": snapshot.routes.streams.iter().map(|s| serde_json::json!({
            "rule": s.rule.name,
            "path": s.rule.path.to_string(),
            "subscribers": s.subscribers.get(),
        })).collect::<Vec<_>>(),
    })
}

/// Read a request body of at most `max` bytes: 413 past it (by Content-Length or as it
/// streams), 400 when it cannot be read.
pub(crate) async fn read_body<B>(
    req: Request<B>,
    max: usize,
) -> Result<bytes::Bytes, Response<Body>>
where
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    use http_body_util::{BodyExt, Limited};
    let too_large = || {
        let message = format!("request body over {max} bytes");
        error_response(StatusCode::PAYLOAD_TOO_LARGE, &message)
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => {
            tracing::debug!(cause = %e, "reading an admin request body failed");
            Err(error_response(
                StatusCode::BAD_REQUEST,
                "could not read the request body",
            ))
        }
    }
}

/// A `text/plain` response.
pub(crate) fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
