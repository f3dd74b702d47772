//! The one body type every response of unpoll carries.
//!
//! Proxied bodies stream straight from hyper's `Incoming`, cached bodies are `Full<Bytes>`,
//! SSE bodies are endless streams: boxing them behind one type keeps the handler's `match`
//! simple at the cost of one allocation per response.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};

/// Error type carried by boxed bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response (and upstream request) body type used throughout unpoll.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body made of one chunk.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body with no bytes.
pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Box any body whose error converts into [`BoxError`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}
