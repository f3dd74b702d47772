//! `POST /publish` on the admin listener: one event `{"channel", "event"?, "data"?,
//! "purge"?}` or a batch (a JSON array of them), for apps that want to push. Each event's
//! `purge` tags are purged just before it is published, so a client that refetches on the
//! event never reads the entry it replaces. Answers with the ids.

use http::{Request, Response, StatusCode};
use serde::Deserialize;

use super::json;
use crate::body::Body;
use crate::hub::EventData;
use crate::proxy::error_response;
use crate::sink::Sink;

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
pub async fn publish<B>(sink: &dyn Sink, req: Request<B>) -> Response<Body>
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
            sink.purge(&tags);
        }
        let id = sink
            .publish_confirmed(&e.channel, e.event.as_deref(), EventData::Json(e.data))
            .await;
        ids.push(id.map_or_else(String::new, |id| id.to_string()));
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
    use bytes::Bytes;
    use http::{Request, StatusCode};
    use http_body_util::{BodyExt, Full};
    use serde_json::json;

    use super::{publish, purge_tags};
    use crate::hub::EventData;
    use crate::sink::recording::{Delivery, Recorder};

    /// POST `body` to the handler; the status and the answer's text.
    async fn post(sink: &Recorder, body: serde_json::Value) -> (StatusCode, String) {
        let req = Request::new(Full::new(Bytes::from(body.to_string())));
        let resp = publish(sink, req).await;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    fn json_of(text: &str) -> serde_json::Value {
        serde_json::from_str(text).unwrap()
    }

    #[tokio::test]
    async fn purges_then_publishes_through_the_sink_and_answers_the_id() {
        let sink = Recorder::new();
        let mut sub = sink.hub.subscribe(&["c".to_string()], None, None).unwrap();
        let event = json!({"channel": "c", "event": "e", "data": {"a": 1}, "purge": ["t"]});
        let (status, answer) = post(&sink, event).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            sink.log(),
            vec![
                Delivery::Purge(vec!["t".into()]),
                Delivery::Publish(
                    "c".into(),
                    Some("e".into()),
                    EventData::Json(json!({"a": 1}))
                ),
            ]
        );
        assert_eq!(sink.cache.metrics.purges.get(), 1);
        // The answered id is the id the subscriber receives.
        let id = sink.hub.cursor().to_string();
        assert_eq!(json_of(&answer), json!({ "id": id }));
        let frame = sub.recv().await.unwrap();
        let frame = std::str::from_utf8(&frame).unwrap();
        assert!(frame.starts_with(&format!("id: {id}\n")), "{frame}");
    }

    #[tokio::test]
    async fn a_batch_answers_every_id_in_order() {
        let sink = Recorder::new();
        let batch = json!([{"channel": "a"}, {"channel": "b", "data": "x"}]);
        let (status, answer) = post(&sink, batch).await;
        assert_eq!(status, StatusCode::OK);
        let ids: Vec<String> = serde_json::from_value(json_of(&answer)["ids"].clone()).unwrap();
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[1], sink.hub.cursor().to_string());
        assert_eq!(sink.log().len(), 2);
    }

    #[tokio::test]
    async fn one_bad_event_in_a_batch_changes_nothing() {
        let sink = Recorder::new();
        let batch = json!([{"channel": "a", "purge": ["t"]}, {"channel": "b", "purge": [1]}]);
        let (status, answer) = post(&sink, batch).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(answer.contains("event 1"), "{answer}");
        assert_eq!(sink.log(), vec![]);
        assert_eq!(sink.hub.cursor().seq, 0);
    }

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
