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
