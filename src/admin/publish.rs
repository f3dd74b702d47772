//! `POST /publish` on the admin listener: one event `{"channel", "event"?, "data"?}` or a
//! batch (a JSON array of them), for apps that want to push. Answers with the ids.

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
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
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_PUBLISH_BODY as u64) {
        return too_large();
    }
    let bytes = match Limited::new(req.into_body(), MAX_PUBLISH_BODY)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Err(e) => {
            tracing::debug!(cause = %e, "reading a publish request failed");
            return error_response(StatusCode::BAD_REQUEST, "could not read the request body");
        }
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

fn too_large() -> Response<Body> {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("publish body larger than {MAX_PUBLISH_BODY} bytes"),
    )
}
