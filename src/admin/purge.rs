//! `POST /purge {"tags": [...]}` on the admin listener: invalidate cached entries by tag
//! (and any fill of them in flight).

use http::{Request, Response, StatusCode};
use serde::Deserialize;

use super::json;
use crate::body::Body;
use crate::proxy::error_response;
use crate::sink::Sink;

/// Largest purge request body.
pub const MAX_PURGE_BODY: usize = 64 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeBody {
    tags: Vec<String>,
}

/// Handle `POST /purge` (the bearer token is checked by the caller).
pub async fn purge<B>(sink: &dyn Sink, req: Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let bytes = match super::read_body(req, MAX_PURGE_BODY).await {
        Ok(bytes) => bytes,
        Err(resp) => return resp,
    };
    let body: PurgeBody = match serde_json::from_slice(&bytes) {
        Ok(b) => b,
        Err(e) => {
            let message = format!("malformed JSON: {e} (expected {{\"tags\": [\"...\"]}})");
            return error_response(StatusCode::BAD_REQUEST, &message);
        }
    };
    if body.tags.iter().any(|t| t.is_empty()) {
        return error_response(StatusCode::BAD_REQUEST, "tags must not be empty strings");
    }
    sink.purge(&body.tags);
    json(StatusCode::OK, &serde_json::json!({ "purged": body.tags }))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::{Request, StatusCode};
    use http_body_util::Full;

    use super::purge;
    use crate::sink::recording::{Delivery, Recorder};

    async fn post(sink: &Recorder, body: &'static str) -> StatusCode {
        purge(sink, Request::new(Full::new(Bytes::from(body))))
            .await
            .status()
    }

    #[tokio::test]
    async fn purges_the_tags_in_the_cache() {
        let sink = Recorder::new();
        assert_eq!(
            post(&sink, r#"{"tags": ["a", "b:1"]}"#).await,
            StatusCode::OK
        );
        assert_eq!(
            sink.log(),
            vec![Delivery::Purge(vec!["a".into(), "b:1".into()])]
        );
        assert_eq!(sink.cache.metrics.purges.get(), 2);
    }

    #[tokio::test]
    async fn a_bad_body_purges_nothing() {
        let sink = Recorder::new();
        for body in [r#"{"tags": ["a", ""]}"#, r#"{"tag": ["a"]}"#, "not json"] {
            assert_eq!(post(&sink, body).await, StatusCode::BAD_REQUEST, "{body}");
        }
        assert_eq!(sink.log(), vec![]);
        assert_eq!(sink.cache.metrics.purges.get(), 0);
    }
}
