//! The Tap arm of the handler: forward the request unchanged (streamed, with a bounded copy
//! of its body), and when the upstream answers 2xx, publish the rule's event and purge its
//! tags. The app's own validation decides; unpoll only listens.

pub mod config;
pub mod event;
pub mod tee;

use std::net::IpAddr;
use std::time::Duration;

use http::header::HeaderValue;
use http::{HeaderName, Request, Response};
use hyper::body::Incoming;

pub use config::{RawTapRule, TapRule};

use crate::app::{App, Snapshot};
use crate::body::{Body, boxed};
use crate::proxy::ProxyError;
use crate::proxy::forward::{client_response, upstream_request};
use tee::{Copy, TeeBody};

/// The hub position after the response was produced (and its event, if any, published).
pub const UNPOLL_CURSOR: HeaderName = HeaderName::from_static("unpoll-cursor");

/// How long to wait, after a 2xx response head, for the request body to finish streaming
/// to the upstream. Upstreams almost always read the whole body before answering; one that
/// does not gets no event rather than a stuck response.
const BODY_GRACE: Duration = Duration::from_secs(5);

/// Forward `req` under `rule` and publish on success.
pub async fn handle(
    app: &App,
    snapshot: &Snapshot,
    rule: &TapRule,
    params: crate::route::PathParams,
    req: Request<Incoming>,
    client_ip: IpAddr,
) -> Result<Response<Body>, ProxyError> {
    let (parts, body) = req.into_parts();
    // Kept for the event's templates; the originals go upstream untouched.
    let uri = parts.uri.clone();
    let headers = parts.headers.clone();
    let (tee, copy) = TeeBody::new(body, rule.max_body);
    let upstream_req = upstream_request(
        &snapshot.upstream,
        &snapshot.config.proxy,
        parts,
        boxed(tee),
        client_ip,
    );
    let resp = snapshot.upstream.send(upstream_req).await?;
    let metrics = app.hub.metrics();
    if resp.status().is_success() {
        match tokio::time::timeout(BODY_GRACE, copy).await {
            Ok(Ok(Copy::Complete(body))) => {
                let request = event::TapRequest {
                    params: &params,
                    query: uri.query(),
                    headers: &headers,
                    body: &body,
                };
                match event::build(rule, &request) {
                    Ok(ev) => {
                        app.hub.publish(&ev.channel, ev.event.as_deref(), ev.data);
                        app.purge_tags(&ev.purge);
                    }
                    Err(missing) => {
                        tracing::debug!(rule = %rule.name, cause = %missing, "tap does not apply");
                        metrics.skip(&rule.name, "missing_value");
                    }
                }
            }
            Ok(Ok(Copy::TooLarge)) => metrics.skip(&rule.name, "body_too_large"),
            Ok(Err(_)) | Err(_) => metrics.skip(&rule.name, "body_incomplete"),
        }
    } else {
        metrics.skip(&rule.name, "upstream_status");
    }
    let mut resp = client_response(resp, &snapshot.config.proxy);
    if let Ok(v) = HeaderValue::from_str(&app.hub.cursor().to_string()) {
        resp.headers_mut().insert(UNPOLL_CURSOR, v);
    }
    Ok(resp)
}
