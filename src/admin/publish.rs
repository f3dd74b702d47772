//! `POST /publish` on the admin listener: one event `{"channel", "event"?, "data"?,
//! "purge"?}` or a batch (a JSON array of them), for apps that want to push. Each event's
//! `purge` tags are purged just before it is published, so a client that refetches on the
//! event never reads the entry it replaces. Answers with the ids.

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
    /// Checked by hand ([`purge_tags`]): inside the untagged [`PublishBody`], a serde type
    /// error would only say that no variant matched.
    #[serde(default)]
    purge: Option<serde_json::Value>,
}

/// The tags of an event's `purge`: an array of non-empty strings, or absent.
fn purge_tags(purge: Option<serde_json::Value>) -> Result<Vec<String>, &'static str> {
    const EXPECTED: &str = "purge must be an array of tag strings, e.g. [\"reservas:1\"]";
    match purge {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                serde_json::Value::String(tag) if !tag.is_empty() => Ok(tag),
                serde_json::Value::String(_) => Err("purge: tags must not be empty strings"),
                _ => Err(EXPECTED),
            })
            .collect(),
        Some(_) => Err(EXPECTED),
    }
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
                 \"data\": ..., \"purge\": [\"tag\"]}} or an array of them)"
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
    // Everything is checked before anything is purged or published: a 400 changes nothing.
    let mut checked = Vec::with_capacity(events.len());
    for (i, mut e) in events.into_iter().enumerate() {
        match purge_tags(e.purge.take()) {
            Ok(tags) => checked.push((e, tags)),
            Err(why) => {
                let message = format!("event {i}: {why}");
                return error_response(StatusCode::BAD_REQUEST, &message);
            }
        }
    }
    let mut ids: Vec<String> = Vec::with_capacity(checked.len());
    for (e, tags) in checked {
        if !tags.is_empty() {
            app.purge_tags(&tags);
        }
        let id = app
            .publish(&e.channel, e.event.as_deref(), EventData::Json(e.data))
            .await;
        ids.push(id.to_string());
    }
    let body = if batch {
        serde_json::json!({ "ids": ids })
    } else {
        serde_json::json!({ "id": ids[0] })
    };
    json(StatusCode::OK, &body)
}

#[cfg(test)]
mod tests {
    use super::purge_tags;
    use serde_json::json;

    #[test]
    fn purge_is_an_array_of_tag_strings() {
        assert_eq!(purge_tags(None), Ok(vec![]));
        assert_eq!(purge_tags(Some(json!(null))), Ok(vec![]));
        assert_eq!(
            purge_tags(Some(json!(["a", "b:1"]))),
            Ok(vec!["a".to_string(), "b:1".to_string()])
        );
        for bad in [json!("a"), json!([1]), json!({"a": 1}), json!([["a"]])] {
            let err = purge_tags(Some(bad)).unwrap_err();
            assert!(err.contains("array of tag strings"), "{err}");
        }
        assert!(purge_tags(Some(json!([""]))).unwrap_err().contains("empty"));
    }
}
