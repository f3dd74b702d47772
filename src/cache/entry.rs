//! A stored response, its freshness, and the rules for what may be stored or shared.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use tokio::time::Instant;

use super::config::CacheRule;
use super::key::{VariantKey, VaryNames};
use crate::body::{Body, empty, full};

/// `Cache-Status` (RFC 9211).
pub static CACHE_STATUS: header::HeaderName = header::HeaderName::from_static("cache-status");
/// The hub position when the response was produced (see the hub's cursor).
pub static UNPOLL_CURSOR: header::HeaderName = header::HeaderName::from_static("unpoll-cursor");

/// Bytes counted per entry on top of its key, headers and body (the struct, the Arc, the
/// store's own bookkeeping), so many tiny entries cannot exceed the budget.
pub const ENTRY_OVERHEAD: usize = 512;

/// A complete upstream response held in memory.
#[derive(Debug)]
pub struct Entry {
    /// Upstream status.
    pub status: StatusCode,
    /// Upstream headers, hop-by-hop removed.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// The upstream's ETag, or a strong one made from the body.
    pub etag: HeaderValue,
    /// When the upstream response arrived.
    pub stored_at: Instant,
    /// Tag generation the fill started in (see `tags.rs`).
    pub generation: u64,
    /// Rendered tags.
    pub tags: Vec<String>,
    /// `Unpoll-Cursor` value: the hub position before the upstream was asked.
    pub cursor: HeaderValue,
    /// Which requests it answers among the variants of its key: the headers its `Vary`
    /// names and the filling request's values of them.
    pub variant: Variant,
    /// Copied from the rule at fill time.
    pub ttl: Duration,
    /// Copied from the rule at fill time.
    pub stale_while_revalidate: Duration,
    /// Copied from the rule at fill time.
    pub stale_if_error: Duration,
    /// Copied from the rule at fill time: the key is shared by every client (the rule's key
    /// does not vary on Cookie or Authorization), so anyone can add variants to it. Decides
    /// what a full key does (see `variants::MAX_VARIANTS`).
    pub shared_key: bool,
    /// When a lookup last found this entry usable: the cache's clock in milliseconds
    /// ([`Entry::hit`]), 0 while never. On a full shared key the least recently hit
    /// variant gives way.
    last_hit: AtomicU64,
}

/// The secondary key of an entry (RFC 9111 §4.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Variant {
    /// The headers the response named in `Vary`.
    pub names: VaryNames,
    /// The filling request's values of them.
    pub key: VariantKey,
}

impl Variant {
    /// The variant a request with `headers` selects among responses varying on `names`.
    pub fn select(names: &VaryNames, headers: &HeaderMap) -> Variant {
        Variant {
            key: VariantKey::new(names, headers),
            names: names.clone(),
        }
    }

    /// Bytes held, for the memory budget.
    pub fn len(&self) -> usize {
        self.names.len() + self.key.len()
    }

    /// True for a response that varies on nothing but the rule's key.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Where an entry is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Within `ttl`: served as is.
    Fresh,
    /// Past `ttl`, within `stale_while_revalidate`: served while one refresh runs.
    StaleRevalidate,
    /// Past both, within `stale_if_error`: served only if the upstream fails.
    StaleIfError,
    /// Useless.
    Expired,
}

impl Freshness {
    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Freshness::Fresh => "fresh",
            Freshness::StaleRevalidate => "stale-while-revalidate",
            Freshness::StaleIfError => "stale-if-error",
            Freshness::Expired => "expired",
        }
    }
}

impl Entry {
    /// Build an entry; the ETag is the upstream's or made from the body.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rule: &CacheRule,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        generation: u64,
        tags: Vec<String>,
        cursor: HeaderValue,
    ) -> Entry {
        // Stored for the entry's life: not as slices of the upstream connection's buffer.
        let headers = crate::proxy::headers::detached(&headers);
        let etag = headers
            .get(header::ETAG)
            .cloned()
            .unwrap_or_else(|| body_etag(&body));
        Entry {
            status,
            headers,
            body,
            etag,
            stored_at: Instant::now(),
            generation,
            tags,
            cursor,
            variant: Variant::default(),
            ttl: rule.ttl,
            stale_while_revalidate: rule.stale_while_revalidate,
            stale_if_error: rule.stale_if_error,
            shared_key: !rule.varies_on_credentials(),
            last_hit: AtomicU64::new(0),
        }
    }

    /// Record a hit at `now_ms` (the cache's clock, from 1). Written only when the
    /// millisecond changed, so a hot entry's many hits do not all write the shared line.
    pub fn hit(&self, now_ms: u64) {
        if self.last_hit.load(Ordering::Relaxed) != now_ms {
            self.last_hit.store(now_ms, Ordering::Relaxed);
        }
    }

    /// When it was last hit (the cache's clock in milliseconds), 0 if never.
    pub fn last_hit(&self) -> u64 {
        self.last_hit.load(Ordering::Relaxed)
    }

    /// Age now.
    pub fn age(&self) -> Duration {
        self.stored_at.elapsed()
    }

    /// Freshness now.
    pub fn freshness(&self) -> Freshness {
        let age = self.age();
        if age < self.ttl {
            Freshness::Fresh
        } else if age < self.ttl + self.stale_while_revalidate {
            Freshness::StaleRevalidate
        } else if age < self.ttl + self.stale_if_error {
            Freshness::StaleIfError
        } else {
            Freshness::Expired
        }
    }

    /// How long the store keeps it: after this it can serve nobody.
    pub fn lifetime(&self) -> Duration {
        self.ttl + self.stale_while_revalidate.max(self.stale_if_error)
    }

    /// Is this the variant a request with `headers` selects?
    pub fn serves(&self, headers: &HeaderMap) -> bool {
        self.variant.is_empty() || VariantKey::new(&self.variant.names, headers) == self.variant.key
    }

    /// Bytes counted against the budget (key excluded).
    pub fn weight(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        ENTRY_OVERHEAD
            + self.variant.len()
            + headers
            + self.body.len()
            + self.tags.iter().map(String::len).sum::<usize>()
    }

    /// The response to a client, from its own conditions (see [`Conditions`]): 412 when
    /// `If-Match` or `If-Unmodified-Since` fails, 304 when `If-None-Match` matches (or,
    /// without it, `If-Modified-Since` finds nothing newer), 206 or
    /// 416 for a single `Range`, no body for HEAD.
    pub fn respond(&self, cond: &Conditions, head: bool, status: String) -> Response<Body> {
        let resp = match self.evaluate(cond, head) {
            Answer::Full => self.full(head),
            Answer::NotModified => self.not_modified(),
            Answer::PreconditionFailed => bare(StatusCode::PRECONDITION_FAILED),
            Answer::Partial(start, end) => self.partial(start, end),
            Answer::Unsatisfiable => {
                let mut resp = bare(StatusCode::RANGE_NOT_SATISFIABLE);
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", self.body.len())) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                resp
            }
        };
        self.decorate(resp, status)
    }

    /// RFC 9110 §13.2.2 order: If-Match, else If-Unmodified-Since; If-None-Match, else
    /// If-Modified-Since; then
    /// Range (with If-Range). Preconditions only apply to a 2xx entry (§13.2.1), Range only
    /// to a GET of a 200.
    fn evaluate(&self, cond: &Conditions, head: bool) -> Answer {
        if self.status.is_success() {
            if !cond.if_match.is_empty() {
                if !cond
                    .if_match
                    .iter()
                    .any(|v| list_matches(v, &self.etag, true))
                {
                    return Answer::PreconditionFailed;
                }
            } else if let (Some(since), Some(modified)) =
                (cond.if_unmodified_since, self.last_modified())
                && modified > since
            {
                return Answer::PreconditionFailed;
            }
        }
        if cond.if_none_match.is_empty() {
            if let (true, Some(since), Some(modified)) = (
                self.status.is_success(),
                cond.if_modified_since,
                self.last_modified(),
            ) && modified <= since
            {
                return Answer::NotModified;
            }
        } else if cond
            .if_none_match
            .iter()
            .any(|v| list_matches(v, &self.etag, false))
        {
            return Answer::NotModified;
        }
        let Some(range) = cond.range.as_ref() else {
            return Answer::Full;
        };
        if head || self.status != StatusCode::OK {
            return Answer::Full;
        }
        if let Some(if_range) = &cond.if_range
            && !self.if_range_holds(if_range)
        {
            return Answer::Full;
        }
        match single_range(range, self.body.len()) {
            Some(Ok((start, end))) => Answer::Partial(start, end),
            Some(Err(())) => Answer::Unsatisfiable,
            None => Answer::Full,
        }
    }

    fn last_modified(&self) -> Option<SystemTime> {
        let v = self.headers.get(header::LAST_MODIFIED)?.to_str().ok()?;
        httpdate::parse_http_date(v).ok()
    }

    /// `If-Range`: an entity tag by strong comparison, or a date equal to Last-Modified.
    fn if_range_holds(&self, if_range: &HeaderValue) -> bool {
        let Ok(v) = if_range.to_str() else {
            return false;
        };
        let v = v.trim();
        if v.starts_with('"') || v.starts_with("W/") {
            return list_matches(if_range, &self.etag, true) && !v.starts_with("W/");
        }
        match (httpdate::parse_http_date(v), self.last_modified()) {
            (Ok(date), Some(modified)) => date == modified,
            _ => false,
        }
    }

    fn full(&self, head: bool) -> Response<Body> {
        let mut resp = Response::new(if head {
            empty()
        } else {
            full(self.body.clone())
        });
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers.clone();
        if head {
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(self.body.len()));
        }
        resp
    }

    fn not_modified(&self) -> Response<Body> {
        let mut resp = bare(StatusCode::NOT_MODIFIED);
        let headers = resp.headers_mut();
        // RFC 9110 §15.4.5: the validator and caching headers, no content headers.
        for name in [
            header::CACHE_CONTROL,
            header::EXPIRES,
            header::VARY,
            header::DATE,
        ] {
            if let Some(v) = self.headers.get(&name) {
                headers.insert(name, v.clone());
            }
        }
        resp
    }

    /// Bytes `start..=end` of the body.
    fn partial(&self, start: usize, end: usize) -> Response<Body> {
        let mut resp = Response::new(full(self.body.slice(start..=end)));
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        *resp.headers_mut() = self.headers.clone();
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end + 1 - start));
        let range = format!("bytes {start}-{end}/{}", self.body.len());
        if let Ok(v) = HeaderValue::from_str(&range) {
            headers.insert(header::CONTENT_RANGE, v);
        }
        resp
    }

    /// The headers every answer from the entry carries.
    fn decorate(&self, mut resp: Response<Body>, status: String) -> Response<Body> {
        let headers = resp.headers_mut();
        headers.insert(header::ETAG, self.etag.clone());
        headers.insert(header::AGE, HeaderValue::from(self.age().as_secs()));
        headers.insert(&UNPOLL_CURSOR, self.cursor.clone());
        if let Ok(v) = HeaderValue::from_str(&status) {
            headers.insert(&CACHE_STATUS, v);
        }
        resp
    }
}

/// What [`Entry::respond`] answers.
enum Answer {
    Full,
    NotModified,
    PreconditionFailed,
    /// Bytes `.0..=.1` of the body.
    Partial(usize, usize),
    Unsatisfiable,
}

fn bare(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = status;
    resp
}

/// A client's conditional and range headers. A fill never forwards them (the entry must
/// be the full answer, whoever started it); each client's are answered from the entry.
#[derive(Debug, Default, Clone)]
pub struct Conditions {
    if_match: Vec<HeaderValue>,
    if_none_match: Vec<HeaderValue>,
    if_unmodified_since: Option<SystemTime>,
    if_modified_since: Option<SystemTime>,
    range: Option<HeaderValue>,
    if_range: Option<HeaderValue>,
}

impl Conditions {
    /// The headers that a fill strips and [`Entry::respond`] answers.
    pub const HEADERS: [header::HeaderName; 6] = [
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
        header::RANGE,
    ];

    /// The conditions of a request with `headers`.
    pub fn of(headers: &HeaderMap) -> Conditions {
        let all = |name| headers.get_all(name).iter().cloned().collect::<Vec<_>>();
        // An invalid date is ignored (RFC 9110 §13.1.3, §13.1.4).
        let date = |name| httpdate::parse_http_date(headers.get(name)?.to_str().ok()?).ok();
        let mut ranges = headers.get_all(header::RANGE).iter();
        Conditions {
            if_match: all(header::IF_MATCH),
            if_none_match: all(header::IF_NONE_MATCH),
            if_unmodified_since: date(header::IF_UNMODIFIED_SINCE),
            if_modified_since: date(header::IF_MODIFIED_SINCE),
            // Several Range lines are not a range we serve: ignored.
            range: match (ranges.next(), ranges.next()) {
                (Some(r), None) => Some(r.clone()),
                _ => None,
            },
            if_range: headers.get(header::IF_RANGE).cloned(),
        }
    }
}

/// One `bytes` range of a body of `len` bytes: `Some(Ok((first, last)))` to serve,
/// `Some(Err(()))` when unsatisfiable (416), `None` to ignore the header (another unit,
/// several ranges, bad syntax: the whole body is served, as RFC 9110 §14.2 allows).
fn single_range(range: &HeaderValue, len: usize) -> Option<Result<(usize, usize), ()>> {
    let v = range.to_str().ok()?.trim();
    let (unit, spec) = v.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return None;
    }
    let (first, last) = spec.trim().split_once('-')?;
    let number = |s: &str| -> Option<Option<u64>> {
        if s.is_empty() {
            Some(None)
        } else if s.bytes().all(|b| b.is_ascii_digit()) {
            // Too many digits for u64: larger than any body.
            Some(Some(s.parse().unwrap_or(u64::MAX)))
        } else {
            None
        }
    };
    let len64 = len as u64;
    match (number(first)?, number(last)?) {
        (Some(first), last) => {
            if last.is_some_and(|l| l < first) {
                return None;
            }
            if first >= len64 {
                return Some(Err(()));
            }
            let last = last.map_or(len64 - 1, |l| l.min(len64 - 1));
            Some(Ok((first as usize, last as usize)))
        }
        (None, Some(suffix)) => {
            if suffix == 0 || len == 0 {
                return Some(Err(()));
            }
            Some(Ok(((len64 - suffix.min(len64)) as usize, len - 1)))
        }
        (None, None) => None,
    }
}

/// Why a response cannot be stored (or shared with waiting requests).
pub fn not_storable(
    rule: &CacheRule,
    status: StatusCode,
    headers: &HeaderMap,
) -> Option<&'static str> {
    not_shareable(rule, headers).or_else(|| (!rule.statuses.contains(&status)).then_some("status"))
}

/// Why a response may not even be handed to the other requests for the same key that
/// waited on it. Such responses are personal (Set-Cookie, private) or match no other
/// request (`Vary: *`). A `Vary` naming other headers is fine: each waiter checks that it
/// selects the same variant ([`Entry::serves`]).
pub fn not_shareable(rule: &CacheRule, headers: &HeaderMap) -> Option<&'static str> {
    if headers.contains_key(header::SET_COOKIE) {
        return Some("set-cookie");
    }
    let directives = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| {
            d.trim()
                .split('=')
                .next()
                .unwrap_or("")
                .to_ascii_lowercase()
        });
    for d in directives {
        if d == "no-store" {
            return Some("no-store");
        }
        if d == "private" && !rule.varies_on_credentials() {
            return Some("private");
        }
    }
    VaryNames::of(headers).is_none().then_some("vary")
}

/// A strong ETag from the body's hash and length.
pub fn body_etag(body: &Bytes) -> HeaderValue {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    let tag = format!("\"u{:016x}-{:x}\"", h.finish(), body.len());
    // Cannot fail: quotes, a letter and hex digits only.
    HeaderValue::from_str(&tag).unwrap_or_else(|_| HeaderValue::from_static("\"u\""))
}

/// `If-None-Match` against an ETag, by weak comparison (RFC 9110 §13.1.2).
pub fn etag_matches(if_none_match: &HeaderValue, etag: &HeaderValue) -> bool {
    list_matches(if_none_match, etag, false)
}

/// An entity-tag list (or `*`) against an ETag; strong comparison (If-Match, If-Range)
/// requires both tags to be strong.
fn list_matches(list: &HeaderValue, etag: &HeaderValue, strong: bool) -> bool {
    let Ok(list) = list.to_str() else {
        return false;
    };
    let ours = etag.to_str().unwrap_or("").trim();
    let weak = |t: &str| t.starts_with("W/");
    if strong && weak(ours) {
        return list.trim() == "*";
    }
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_string();
    let ours = strip(ours);
    list.split(',')
        .map(str::trim)
        .any(|t| t == "*" || (!(strong && weak(t)) && strip(t) == ours))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(extra: &str) -> CacheRule {
        let raw: super::super::config::RawCacheRule =
            toml::from_str(&format!("path = \"/m\"\n{extra}")).unwrap();
        raw.validate("cache[0]", &mut Default::default()).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn storability() {
        let r = rule("");
        let ok = StatusCode::OK;
        assert_eq!(not_storable(&r, ok, &headers(&[])), None);
        assert_eq!(
            not_storable(&r, StatusCode::INTERNAL_SERVER_ERROR, &headers(&[])),
            Some("status")
        );
        assert_eq!(
            not_storable(&r, ok, &headers(&[("set-cookie", "a=1")])),
            Some("set-cookie")
        );
        assert_eq!(
            not_storable(
                &r,
                ok,
                &headers(&[("cache-control", "max-age=5, no-store")])
            ),
            Some("no-store")
        );
        // private is fine when the key varies on credentials, not when shared.
        assert_eq!(
            not_storable(&r, ok, &headers(&[("cache-control", "private")])),
            None
        );
        let shared = rule("vary = []");
        assert_eq!(
            not_storable(&shared, ok, &headers(&[("cache-control", "private")])),
            Some("private")
        );
        // Any Vary is stored, as a variant, except `*`, wherever it is in the list.
        assert_eq!(
            not_storable(&r, ok, &headers(&[("vary", "Accept-Encoding")])),
            None
        );
        assert_eq!(not_storable(&r, ok, &headers(&[("vary", "cookie")])), None);
        assert_eq!(
            not_storable(&r, ok, &headers(&[("vary", "*")])),
            Some("vary")
        );
        assert_eq!(
            not_storable(&r, ok, &headers(&[("vary", "rsc, *")])),
            Some("vary")
        );
        // A 500 is not stored but may be shared with the requests that waited for it.
        assert_eq!(not_shareable(&r, &headers(&[])), None);
    }

    #[test]
    fn etags() {
        let a = body_etag(&Bytes::from_static(b"hello"));
        assert_eq!(a, body_etag(&Bytes::from_static(b"hello")));
        assert_ne!(a, body_etag(&Bytes::from_static(b"hellp")));
        assert!(etag_matches(&a, &a));
        let weak = HeaderValue::from_str(&format!("W/{}", a.to_str().unwrap())).unwrap();
        assert!(etag_matches(&weak, &a));
        let list = HeaderValue::from_str(&format!("\"x\", {}", a.to_str().unwrap())).unwrap();
        assert!(etag_matches(&list, &a));
        assert!(etag_matches(&HeaderValue::from_static("*"), &a));
        assert!(!etag_matches(&HeaderValue::from_static("\"x\""), &a));
    }

    #[test]
    fn byte_ranges() {
        let r = |v: &'static str, len| single_range(&HeaderValue::from_static(v), len);
        assert_eq!(r("bytes=0-0", 16), Some(Ok((0, 0))));
        assert_eq!(r("Bytes = 2-", 16), Some(Ok((2, 15))));
        assert_eq!(r("bytes=-20", 16), Some(Ok((0, 15))));
        assert_eq!(r("bytes=15-15", 16), Some(Ok((15, 15))));
        assert_eq!(r("bytes=16-", 16), Some(Err(())));
        assert_eq!(r("bytes=-0", 16), Some(Err(())));
        assert_eq!(r("bytes=0-", 0), Some(Err(())));
        assert_eq!(r("bytes=-5", 0), Some(Err(())));
        assert_eq!(r("bytes=99999999999999999999999-", 16), Some(Err(())));
        for ignored in [
            "bytes=5-4",
            "items=0-1",
            "bytes=a-b",
            "bytes=-",
            "bytes=0-1,3-4",
        ] {
            assert_eq!(r(ignored, 16), None, "{ignored}");
        }
    }

    #[test]
    fn strong_and_weak_comparison() {
        let strong = HeaderValue::from_static("\"a\"");
        let weak = HeaderValue::from_static("W/\"a\"");
        assert!(list_matches(&strong, &strong, true));
        assert!(!list_matches(&weak, &strong, true));
        assert!(!list_matches(&strong, &weak, true));
        assert!(list_matches(&HeaderValue::from_static("*"), &weak, true));
        assert!(list_matches(&weak, &strong, false));
    }

    #[tokio::test(start_paused = true)]
    async fn freshness_follows_the_rule() {
        let r = rule("ttl = \"2s\"\nstale_while_revalidate = \"3s\"\nstale_if_error = \"10s\"");
        let e = Entry::new(
            &r,
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::new(),
            0,
            vec![],
            HeaderValue::from_static("x"),
        );
        assert_eq!(e.freshness(), Freshness::Fresh);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(e.freshness(), Freshness::StaleRevalidate);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(e.freshness(), Freshness::StaleIfError);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(e.freshness(), Freshness::StaleIfError);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(e.freshness(), Freshness::Expired);
        assert_eq!(e.lifetime(), Duration::from_secs(12));
    }
}
