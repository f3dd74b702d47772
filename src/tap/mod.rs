//! The Tap arm of the handler: forward the request unchanged (streamed, with a bounded copy
//! of its body), and when the upstream answers 2xx, purge the rule's tags and publish its
//! event. The app's own validation decides; unpoll only listens. When a template reads the
//! answer's JSON (`{response.json.…}`), the answer streams to the client through a second
//! bounded copy and the event follows its last byte.

pub mod config;
pub mod event;
pub mod tee;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, HeaderValue};
use http::{HeaderMap, HeaderName, Request, Response};
use hyper::body::Incoming;

pub use config::{RawTapRule, TapRule};

use crate::app::{App, Snapshot};
use crate::body::{Body, boxed};
use crate::proxy::ProxyError;
use crate::proxy::forward::{client_response, upstream_request};
use event::TapResponse;
use tee::{Copy, FinishOnDrop, TeeBody};

/// The hub position after the response was produced: after its event, unless the event waits
/// for the answer's body (`{response.json.…}`), which it then precedes.
pub const UNPOLL_CURSOR: HeaderName = HeaderName::from_static("unpoll-cursor");

/// How long to wait, after a 2xx response head, for the request body to finish streaming
/// to the upstream. Upstreams almost always read the whole body before answering; one that
/// does not gets no event rather than a stuck response.
const BODY_GRACE: Duration = Duration::from_secs(5);

/// How long the rest of an answer whose event needs it is read after its client went away.
/// The app has made the change; the other subscribers should hear of it. Past this, the
/// event is dropped (counted `response_incomplete`).
const ANSWER_GRACE: Duration = Duration::from_secs(10);

/// Forward `req` under `rule` and publish on success.
pub async fn handle(
    app: &Arc<App>,
    snapshot: &Snapshot,
    rule: &TapRule,
    params: crate::route::PathParams,
    req: Request<Incoming>,
    client_ip: IpAddr,
) -> Result<Response<Body>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    // Kept for the event's templates; the originals go upstream untouched.
    let uri = parts.uri.clone();
    let headers = parts.headers.clone();
    if rule.reads_response_body {
        // The answer's JSON must be readable as it streams by: ask for it uncompressed
        // (mutation answers are small; the client gets the same body, just not encoded).
        parts
            .headers
            .insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    }
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
    let request = if resp.status().is_success() {
        match tokio::time::timeout(BODY_GRACE, copy).await {
            Ok(Ok(Copy::Complete(body))) => Some(OwnedRequest {
                params,
                uri,
                headers,
                body,
            }),
            Ok(Ok(Copy::TooLarge)) => {
                metrics.skip(&rule.name, "body_too_large");
                None
            }
            Ok(Err(_)) | Err(_) => {
                metrics.skip(&rule.name, "body_incomplete");
                None
            }
        }
    } else {
        metrics.skip(&rule.name, "upstream_status");
        None
    };
    let mut resp = client_response(resp, &snapshot.config.proxy);
    match request {
        Some(request) if rule.reads_response_body => {
            resp = tee_response(app, rule, request, resp);
        }
        Some(request) => {
            let response = TapResponse {
                headers: Some(resp.headers()),
                body: None,
            };
            publish(app, rule, &request, &response);
        }
        None => {}
    }
    // After the event when it was published above. An event that waits for the answer's
    // body follows the cursor instead, so a stream resumed from it gets that event too:
    // a duplicate of what the client knows at worst, never a gap.
    if let Ok(v) = HeaderValue::from_str(&app.hub.cursor().to_string()) {
        resp.headers_mut().insert(UNPOLL_CURSOR, v);
    }
    Ok(resp)
}

/// What the event needs of the request, owned, for an event that waits for the answer.
struct OwnedRequest {
    params: crate::route::PathParams,
    uri: http::Uri,
    headers: HeaderMap,
    body: Bytes,
}

/// Stream `resp` to the client through a tee, and publish once its body has ended (a task
/// that lives no longer than the body: the tee's sender goes with it).
fn tee_response(
    app: &Arc<App>,
    rule: &TapRule,
    request: OwnedRequest,
    resp: Response<Body>,
) -> Response<Body> {
    let (parts, body) = resp.into_parts();
    let (tee, copy) = TeeBody::new(body, rule.max_body);
    let response_headers = rule.reads_response_headers.then(|| parts.headers.clone());
    let app = Arc::clone(app);
    // Cloned once per tapped request whose event needs the answer: the task outlives the
    // config snapshot's borrow.
    let rule = rule.clone();
    tokio::spawn(async move {
        match copy.await {
            Ok(Copy::Complete(body)) => {
                let response = TapResponse {
                    headers: response_headers.as_ref(),
                    body: Some(&body),
                };
                publish(&app, &rule, &request, &response);
            }
            Ok(Copy::TooLarge) => app.hub.metrics().skip(&rule.name, "response_too_large"),
            // The upstream failed mid-body, or stalled past ANSWER_GRACE after the client
            // went away.
            Err(_) => app.hub.metrics().skip(&rule.name, "response_incomplete"),
        }
    });
    Response::from_parts(parts, boxed(FinishOnDrop::new(tee, ANSWER_GRACE)))
}

/// Build and publish `rule`'s event, purging its tags first: a client that refetches on
/// the event must not read the entry it replaces.
fn publish(app: &App, rule: &TapRule, request: &OwnedRequest, response: &TapResponse<'_>) {
    let req = event::TapRequest {
        params: &request.params,
        query: request.uri.query(),
        headers: &request.headers,
        body: &request.body,
    };
    match event::build(rule, &req, response) {
        Ok(ev) => {
            app.purge_tags(&ev.purge);
            app.publish_nowait(&ev.channel, ev.event.as_deref(), ev.data);
        }
        Err(missing) => {
            tracing::debug!(rule = %rule.name, cause = %missing, "tap does not apply");
            app.hub.metrics().skip(&rule.name, "missing_value");
        }
    }
}
