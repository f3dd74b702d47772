//! The Stream arm of the handler: resolve a `[[stream]]` rule's channels from the request,
//! subscribe to the hub (replaying from `Last-Event-ID`), answer with an SSE body.

pub mod config;

use std::net::IpAddr;

use http::header::{HeaderValue, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use prometheus_client::metrics::gauge::Gauge;

pub use config::{RawStreamRule, StreamAuth, StreamRule};

use crate::app::App;
use crate::body::{Body, boxed};
use crate::hub::SubscribeError;
use crate::proxy::error_response;
use crate::route::PathParams;
use crate::server::ConnectionAbort;
use crate::sse::{SseBody, SseOptions};
use crate::template::{RenderEachError, RequestVars};

/// What the Stream arm decided.
pub enum Outcome {
    /// Answer with this (the stream, or 400/429).
    Respond(Response<Body>),
    /// A template variable had no value: the rule does not apply and the request is
    /// proxied (logged and counted), never subscribed to a wrong channel.
    NotApplicable,
}

/// Open a stream for `req` under `rule`; `subscribers` counts the rule's open streams.
pub fn open<B>(
    app: &App,
    rule: &StreamRule,
    subscribers: &Gauge,
    params: &PathParams,
    req: &Request<B>,
    client_ip: IpAddr,
) -> Outcome {
    let vars = RequestVars {
        path: params,
        query: req.uri().query(),
        headers: req.headers(),
        form: None,
        json: None,
    };
    let mut channels = Vec::new();
    for template in &rule.channels {
        match template.render_each(&vars, rule.max_channels) {
            Ok(names) => channels.extend(names),
            Err(RenderEachError::Missing(missing)) => {
                tracing::debug!(rule = %rule.name, cause = %missing, "stream rule does not apply");
                app.hub.metrics().skip(&rule.name, "missing_value");
                return Outcome::NotApplicable;
            }
            Err(RenderEachError::TooMany { cap }) => {
                let message = format!("too many channels requested (at most {cap})");
                return Outcome::Respond(error_response(StatusCode::BAD_REQUEST, &message));
            }
        }
    }
    if channels.len() > rule.max_channels {
        let message = format!(
            "too many channels requested (at most {})",
            rule.max_channels
        );
        return Outcome::Respond(error_response(StatusCode::BAD_REQUEST, &message));
    }
    let last_event_id = crate::sse::last_event_id(req.headers(), req.uri().query());
    let sub = match app
        .hub
        .subscribe(&channels, last_event_id.as_deref(), Some(client_ip))
    {
        Ok(sub) => sub,
        Err(e) => return Outcome::Respond(refused(rule, &e)),
    };
    if let Some(abort) = req.extensions().get::<ConnectionAbort>() {
        let abort = abort.clone();
        sub.on_overflow(move || abort.abort());
    }
    let options = SseOptions {
        heartbeat: rule.heartbeat,
        retry: rule.retry,
    };
    let body = SseBody::new(sub, options, app.shutdown.clone()).counted(subscribers.clone());
    Outcome::Respond(crate::sse::response(boxed(body)))
}

/// 429 with `Retry-After` for a limit, 400 for a bad request.
fn refused(rule: &StreamRule, e: &SubscribeError) -> Response<Body> {
    tracing::info!(rule = %rule.name, reason = e.as_str(), "stream refused");
    match e.retry_after() {
        Some(after) => {
            let mut resp = error_response(StatusCode::TOO_MANY_REQUESTS, &e.to_string());
            let secs = after.as_secs().max(1).to_string();
            if let Ok(v) = HeaderValue::from_str(&secs) {
                resp.headers_mut().insert(RETRY_AFTER, v);
            }
            resp
        }
        None => error_response(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}
