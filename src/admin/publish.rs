//! `POST /publish` on the admin listener: one event `{"channel", "event"?, "data"?}` or a
//! batch (a JSON array of them), for apps that want to push. Answers with the ids.

use http::{Request, Response, StatusCode};
use serde::Deserialize;

use super::json;
use crate::app::App;
use crate::body::Body;
use crate::hub::EventData;
use crate::proxy::error_response;

/// Largest publish request body. Past it → 413 (one event's data should be far smaller;
/// large payloads belong in the app, fetched by id).
pub const MAX_PUBLISH_BODY: usize = 1024 * 1024;

/// One event as posted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishEvent {
    channel: String,
    event: Option<String>,
    #[serde(default)]
    data: serde_json::Value,
}

/// A single event or a batch.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PublishBody {
    Batch(Vec<PublishEvent>),
    One(PublishEvent),
}

/// Handle `POST /publish` (the bearer token is checked by the caller).
pub async fn publish<B>(app: &App, req: Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let bytes = match super::read_body(req, MAX_PUBLISH_BODY).await {
        Ok(bytes) => bytes,
        Err(resp) => return resp,
    };
    let parsed: PublishBody = match serde_json::from_slice(&bytes) {
        Ok(p) => p,
        Err(e) => {
            let message = format!(
                "malformed JSON: {e} (expected {{\"channel\": \"...\", \"event\": \"...\", \
                 \"data\": ...}} or an array of them)"
            );
            return error_response(StatusCode::BAD_REQUEST, &message);
        }
    };
    let (events, batch) = match parsed {
        PublishBody::One(e) => (vec![e], false),
        PublishBody::Batch(events) => (events, true),
    };
    if events.is_empty() {
        return error_response(StatusCode::BAD_REQUEST, "empty batch");
    }
    if let Some(i) = events.iter().position(|e| e.channel.trim().is_empty()) {
        let message = format!("event {i}: channel must not be empty");
        return error_response(StatusCode::BAD_REQUEST, &message);
    }
    let ids: Vec<String> = events
        .into_iter()
        .map(|e| {
            app.hub
                .publish(&e.channel, e.event.as_deref(), EventData::Json(e.data))
                .to_string()
        })
        .collect();
    let body = if batch {
        serde_json::json!({ "ids": ids })
    } else {
        serde_json::json!({ "id": ids[0] })
    };
    json(StatusCode::OK, &body)
}
