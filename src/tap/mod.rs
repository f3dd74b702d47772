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

use crate::body::{Body, boxed};
use crate::handles::Handles;
use crate::hub::Hub;
use crate::proxy::ProxyError;
use crate::proxy::forward::{client_response, upstream_request};
use crate::sink::Sink;
use crate::snapshot::Snapshot;
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

/// Forward `req` under `rule` and publish on success (through `handles.sink`).
pub async fn handle(
    handles: &Handles,
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
    let metrics = handles.hub.metrics();
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
            resp = tee_response(handles, rule, request, resp);
        }
        Some(request) => {
            let response = TapResponse {
                headers: Some(resp.headers()),
                body: None,
            };
            publish(
                &handles.hub,
                handles.sink.as_ref(),
                rule,
                &request,
                &response,
            );
        }
        None => {}
    }
    // After the event when it was published above. An event that waits for the answer's
    // body follows the cursor instead, so a stream resumed from it gets that event too:
    // a duplicate of what the client knows at worst, never a gap.
    if let Ok(v) = HeaderValue::from_str(&handles.hub.cursor().to_string()) {
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
    handles: &Handles,
    rule: &TapRule,
    request: OwnedRequest,
    resp: Response<Body>,
) -> Response<Body> {
    let (parts, body) = resp.into_parts();
    let (tee, copy) = TeeBody::new(body, rule.max_body);
    let response_headers = rule.reads_response_headers.then(|| parts.headers.clone());
    let (hub, sink) = (handles.hub.clone(), Arc::clone(&handles.sink));
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
                publish(&hub, sink.as_ref(), &rule, &request, &response);
            }
            Ok(Copy::TooLarge) => hub.metrics().skip(&rule.name, "response_too_large"),
            // The upstream failed mid-body, or stalled past ANSWER_GRACE after the client
            // went away.
            Err(_) => hub.metrics().skip(&rule.name, "response_incomplete"),
        }
    });
    Response::from_parts(parts, boxed(FinishOnDrop::new(tee, ANSWER_GRACE)))
}

/// Build and publish `rule`'s event into `sink`, purging its tags first: a client that
/// refetches on the event must not read the entry it replaces. A skipped event is counted
/// in `hub`'s metrics.
fn publish(
    hub: &Hub,
    sink: &dyn Sink,
    rule: &TapRule,
    request: &OwnedRequest,
    response: &TapResponse<'_>,
) {
    let req = event::TapRequest {
        params: &request.params,
        query: request.uri.query(),
        headers: &request.headers,
        body: &request.body,
    };
    match event::build(rule, &req, response) {
        Ok(ev) => {
            sink.purge(&ev.purge);
            sink.publish(&ev.channel, ev.event.as_deref(), ev.data);
        }
        Err(missing) => {
            tracing::debug!(rule = %rule.name, cause = %missing, "tap does not apply");
            hub.metrics().skip(&rule.name, "missing_value");
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::header::{CONTENT_TYPE, HeaderValue};
    use http::{HeaderMap, Method};
    use serde_json::json;

    use super::{OwnedRequest, TapResponse, publish};
    use crate::handles::testing::instance;
    use crate::hub::{EventData, SkipLabels};
    use crate::sink::recording::Delivery;
    use crate::snapshot::routes::Action;

    const RULES: &str = r#"
        [[tap]]
        path = "/hooks/{id}"
        channel = "room:{path.id}"
        event = "msg"
        data = { text = "{json.text}" }
        purge = ["room:{path.id}"]
    "#;

    /// Run the publish step of the tap at `path` for a JSON request `body`.
    fn tap(path: &str, body: serde_json::Value) -> (Vec<Delivery>, u64, crate::hub::Hub) {
        let (handles, recorder, snapshot) = instance(RULES);
        let route = snapshot.routes.resolve(&Method::POST, path);
        let Action::Tap(t) = route.action else {
            panic!("{path} is not tapped");
        };
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let request = OwnedRequest {
            params: route.params.clone(),
            uri: path.parse().unwrap(),
            headers,
            body: Bytes::from(body.to_string()),
        };
        let response = TapResponse {
            headers: None,
            body: None,
        };
        publish(
            &handles.hub,
            handles.sink.as_ref(),
            &t.rule,
            &request,
            &response,
        );
        let labels = SkipLabels {
            rule: t.rule.name.clone(),
            reason: "missing_value",
        };
        let skipped = handles.hub.metrics().skipped.get_or_create(&labels).get();
        (recorder.log(), skipped, handles.hub)
    }

    #[tokio::test]
    async fn purges_then_publishes_the_rules_event_through_the_sink() {
        let (log, skipped, hub) = tap("/hooks/7", json!({"text": "hi"}));
        assert_eq!(
            log,
            vec![
                Delivery::Purge(vec!["room:7".into()]),
                Delivery::Publish(
                    "room:7".into(),
                    Some("msg".into()),
                    EventData::Json(json!({"text": "hi"}))
                ),
            ]
        );
        assert_eq!(skipped, 0);
        assert_eq!(hub.cursor().seq, 1, "the event reached the hub");
    }

    #[tokio::test]
    async fn a_missing_value_publishes_nothing_and_is_counted() {
        let (log, skipped, hub) = tap("/hooks/7", json!({"other": 1}));
        assert_eq!(log, vec![]);
        assert_eq!(skipped, 1);
        assert_eq!(hub.cursor().seq, 0);
    }
}
