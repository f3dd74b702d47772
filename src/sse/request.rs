//! The HTTP side of a stream: where the resume id comes from and the response headers.

use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

/// `Last-Event-ID`, sent by browsers when they reconnect.
pub const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
/// Asks nginx and similar proxies not to buffer the stream.
pub const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");
/// The query parameter that carries a cursor on the first connection.
pub const LAST_EVENT_ID_PARAM: &str = "last_event_id";

/// The id to resume after: the `Last-Event-ID` header (sent by the browser on reconnect,
/// so newer than the URL's) or else `?last_event_id=` (a cursor from the first fetch).
pub fn last_event_id(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(v) = headers.get(&LAST_EVENT_ID)
        && let Ok(text) = v.to_str()
        && !text.trim().is_empty()
    {
        return Some(text.trim().to_owned());
    }
    let query = query?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, v)| k == LAST_EVENT_ID_PARAM && !v.trim().is_empty())
        .map(|(_, v)| v.trim().to_owned())
}

/// Set the headers of an SSE response.
pub fn set_headers(headers: &mut HeaderMap) {
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
}

/// Marks a response as an event stream (an extension): the server may write its body
/// outside hyper.
#[derive(Debug, Clone, Copy)]
pub struct EventStream;

/// A `200` SSE response around `body`.
pub fn response<B>(body: B) -> http::Response<B> {
    let mut resp = http::Response::new(body);
    set_headers(resp.headers_mut());
    resp.extensions_mut().insert(EventStream);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_wins_over_query() {
        let mut h = HeaderMap::new();
        assert_eq!(
            last_event_id(&h, Some("a=1&last_event_id=x-2")),
            Some("x-2".into())
        );
        h.insert(LAST_EVENT_ID, HeaderValue::from_static(" y-3 "));
        assert_eq!(
            last_event_id(&h, Some("last_event_id=x-2")),
            Some("y-3".into())
        );
    }

    #[test]
    fn absent_or_empty_is_none() {
        let mut h = HeaderMap::new();
        assert_eq!(last_event_id(&h, None), None);
        assert_eq!(last_event_id(&h, Some("last_event_id=")), None);
        h.insert(LAST_EVENT_ID, HeaderValue::from_static(""));
        assert_eq!(
            last_event_id(&h, Some("last_event_id=ab%2D1")),
            Some("ab-1".into())
        );
    }

    #[test]
    fn response_headers() {
        let r = response(());
        assert_eq!(
            r.headers()[CONTENT_TYPE],
            "text/event-stream; charset=utf-8"
        );
        assert_eq!(r.headers()[CACHE_CONTROL], "no-cache");
        assert_eq!(r.headers()[X_ACCEL_BUFFERING], "no");
    }
}
