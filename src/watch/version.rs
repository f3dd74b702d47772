//! One version of a watched body and the SSE event that carries it.

use bytes::Bytes;
use http::StatusCode;
use http::header::{self, HeaderValue};

use crate::cache::Entry;
use crate::cache::entry::body_etag;
use crate::sse::encode;

/// What every subscriber of a key should have now.
#[derive(Debug, Clone)]
pub enum State {
    /// The current body, shared: every subscriber reading it clones a pointer.
    Body(std::sync::Arc<Version>),
    /// A refetch was refused (401, 403, 404): the streams end with `access_ended`.
    Ended(StatusCode),
}

/// One version of a watched body.
#[derive(Debug, Clone)]
pub struct Version {
    /// The SSE `id`: the app's strong ETag, or else a hash of the body (quotes removed).
    /// A client resuming with this `Last-Event-ID` already has the body.
    pub id: String,
    /// The event, in chunks; a one-line body is sent from the entry's own bytes, so a key's
    /// body is held once, by the cache entry and the watcher together.
    pub frame: Vec<Bytes>,
}

impl Version {
    /// The version of `entry`'s body, sent as `event` (unnamed when `None`).
    pub fn of(entry: &Entry, event: Option<&str>) -> Version {
        let etag = if entry.etag.as_bytes().starts_with(b"W/") {
            // A weak ETag may stay the same when bytes change: the subscriber would miss them.
            body_etag(&entry.body)
        } else {
            entry.etag.clone()
        };
        let id = String::from_utf8_lossy(etag.as_bytes())
            .trim_matches('"')
            .to_string();
        let data = data_of(entry);
        let frame = match std::str::from_utf8(&data) {
            Ok(text) => match encode::event_sharing(&id, event, data.clone()) {
                Some(parts) => parts.to_vec(),
                None => vec![encode::event(&id, event, text)],
            },
            // SSE is UTF-8: the browser would decode invalid bytes as U+FFFD anyway.
            Err(_) => vec![encode::event(&id, event, &String::from_utf8_lossy(&data))],
        };
        Version { id, frame }
    }
}

/// The event data of `entry`: its body, without the trailing line break that servers put
/// after a JSON document (it would become an empty second `data:` line).
fn data_of(entry: &Entry) -> Bytes {
    let json = entry
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v: &HeaderValue| v.to_str().ok())
        .is_some_and(|ct| {
            let mime = ct.split(';').next().unwrap_or("").trim();
            mime.eq_ignore_ascii_case("application/json") || mime.ends_with("+json")
        });
    let body = &entry.body;
    if !json {
        return body.clone();
    }
    let end = body
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    body.slice(..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(content_type: &str, etag: Option<&str>, body: &'static [u8]) -> Entry {
        let raw: crate::cache::RawCacheRule = toml::from_str("path = \"/m\"").unwrap();
        let rule = raw.validate("watch[0]", &mut Default::default()).unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        if let Some(tag) = etag {
            headers.insert(header::ETAG, tag.parse().unwrap());
        }
        Entry::new(
            &rule,
            StatusCode::OK,
            headers,
            Bytes::from_static(body),
            0,
            Vec::new(),
            HeaderValue::from_static(""),
        )
    }

    fn text(v: &Version) -> String {
        String::from_utf8(v.frame.concat()).unwrap()
    }

    #[test]
    fn compact_json_is_one_data_line_from_the_entry_bytes() {
        let e = entry("application/json", Some("\"abc\""), b"{\"n\":1}\n");
        let v = Version::of(&e, Some("update"));
        assert_eq!(v.id, "abc");
        assert_eq!(text(&v), "id: abc\nevent: update\ndata: {\"n\":1}\n\n");
        assert_eq!(v.frame[1].as_ptr(), e.body.as_ptr(), "body not copied");
    }

    #[test]
    fn other_text_is_split_per_the_sse_rules() {
        let e = entry("text/plain", Some("\"x\""), b"a\r\nb\n");
        assert_eq!(
            text(&Version::of(&e, None)),
            "id: x\ndata: a\ndata: b\ndata: \n\n"
        );
    }

    #[test]
    fn weak_or_missing_etags_give_way_to_a_body_hash() {
        let a = Version::of(&entry("text/plain", Some("W/\"same\""), b"one"), None);
        let b = Version::of(&entry("text/plain", Some("W/\"same\""), b"two"), None);
        assert_ne!(a.id, b.id);
        let c = Version::of(&entry("text/plain", None, b"one"), None);
        assert_eq!(a.id, c.id);
        assert!(!a.id.contains('"'));
    }
}
