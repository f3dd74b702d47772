//! Cache keys: rule, the Host the client named, path, query and the bytes of the rule's
//! `vary` headers; and under one such key, the [`VariantKey`] of the headers the stored
//! response itself named in `Vary` (RFC 9111 §4.1).
//!
//! Every part is the request's raw bytes, length-prefixed, so no two different requests
//! build the same key: not through lossy text (cookie bytes that are not UTF-8), not
//! through joining (two `Cookie` lines against one line holding both). The key is kept
//! whole (not hashed) as the store's key, so a hash collision can never serve one user
//! another user's entry; its length is counted against the cache budget.

use std::fmt;
use std::sync::Arc;

use http::Uri;
use http::header::{self, HeaderMap, HeaderName};
use percent_encoding::percent_decode;

use super::config::CacheRule;

/// A cache key. HEAD and GET share it (HEAD is answered from the GET entry).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(Arc<[u8]>);

/// Query framing: sorted pairs, or (with a `;` in it) the query as received.
const QUERY_SORTED: u8 = 0;
const QUERY_RAW: u8 = 1;

impl CacheKey {
    /// The key of a request for `uri` with `headers` under `rule`.
    pub fn new(rule: &CacheRule, uri: &Uri, headers: &HeaderMap) -> Self {
        let path = uri.path();
        let query = uri.query().unwrap_or("");
        let mut key = Framed(Vec::with_capacity(
            64 + rule.name.len() + path.len() + query.len(),
        ));
        key.field(rule.name.as_bytes());
        // The Host the client named is forwarded (Host with `preserve_host`, else
        // X-Forwarded-Host) and apps reflect it in links and redirects: it is part of every
        // key. It is the host the app is told, as `proxy::headers::normalize_host` makes
        // it: the target's authority when there is one (HTTP/2's `:authority`, an
        // absolute-form target), else the Host lines. So an HTTP/1.1 and an HTTP/2 client
        // of the same URL share the key.
        match uri.authority() {
            Some(authority) => key.values([authority.as_str().as_bytes()]),
            None => key.values(headers.get_all(header::HOST).iter().map(|v| v.as_bytes())),
        }
        key.field(path.as_bytes());
        key.query(query);
        for name in &rule.vary {
            key.field(name.as_str().as_bytes());
            // Every line, in order: an absent header, an empty one and two lines differ.
            key.values(headers.get_all(name).iter().map(|v| v.as_bytes()));
        }
        CacheKey(key.0.into())
    }

    /// The key of one variant under this key: what concurrent misses coalesce on.
    pub fn with_variant(&self, variant: &VariantKey) -> CacheKey {
        let mut key = Framed(Vec::with_capacity(self.0.len() + variant.len() + 4));
        key.0.extend_from_slice(&self.0);
        key.field(&variant.0);
        CacheKey(key.0.into())
    }

    /// Bytes the key occupies, for the memory budget.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for an empty key (never built by [`CacheKey::new`]).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey(\"{}\")", self.0.escape_ascii())
    }
}

/// The headers a response names in `Vary`, lowercase, sorted and without repeats, so two
/// responses listing them differently vary on the same thing. Names that are not valid
/// header names are left out: no request can carry them, so every request has them absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VaryNames(Arc<[HeaderName]>);

impl VaryNames {
    /// The names of every `Vary` line of `headers`; `None` for `Vary: *` (the response
    /// depends on something no request header shows: it matches no other request).
    pub fn of(headers: &HeaderMap) -> Option<VaryNames> {
        let mut names = Vec::new();
        for line in headers.get_all(header::VARY) {
            for name in line.as_bytes().split(|&b| b == b',') {
                let name = name.trim_ascii();
                if name == b"*" {
                    return None;
                }
                if let Ok(name) = HeaderName::from_bytes(name) {
                    names.push(name);
                }
            }
        }
        names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        names.dedup();
        Some(VaryNames(names.into()))
    }

    /// Bytes held, for the memory budget.
    pub fn len(&self) -> usize {
        self.0.iter().map(|n| n.as_str().len() + 8).sum()
    }

    /// True when the response varies on nothing but the rule's key.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The secondary key: a request's values of a response's [`VaryNames`], every line as
/// raw bytes, framed like the primary key so an absent header, an empty one and two lines
/// all differ.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct VariantKey(Arc<[u8]>);

impl VariantKey {
    /// The variant a request with `headers` selects among responses varying on `names`.
    pub fn new(names: &VaryNames, headers: &HeaderMap) -> VariantKey {
        let mut key = Framed(Vec::new());
        for name in names.0.iter() {
            key.values(headers.get_all(name).iter().map(|v| v.as_bytes()));
        }
        VariantKey(key.0.into())
    }

    /// Bytes the key occupies, for the memory budget.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for a response that varies on nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for VariantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VariantKey(\"{}\")", self.0.escape_ascii())
    }
}

/// A key under construction: every field is its length (4 bytes) then its bytes.
struct Framed(Vec<u8>);

impl Framed {
    fn number(&mut self, n: usize) {
        // Header lines, paths and queries are bounded by `max_header_bytes`, far below 4 GiB.
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&n.to_le_bytes());
    }

    fn field(&mut self, bytes: &[u8]) {
        self.number(bytes.len());
        self.0.extend_from_slice(bytes);
    }

    /// A count, then each value framed.
    fn values<'a>(&mut self, values: impl IntoIterator<Item = &'a [u8]>) {
        // The count goes first but is known last: reserve its 4 bytes, then fill them in.
        let at = self.0.len();
        self.number(0);
        let mut n = 0u32;
        for v in values {
            self.field(v);
            n = n.saturating_add(1);
        }
        self.0[at..at + 4].copy_from_slice(&n.to_le_bytes());
    }

    /// The query's pairs sorted by name only, stably: `?b=2&a=1` and `?a=1&b=2` are one
    /// entry, but the values of one name keep their order, because apps read the first (or
    /// the last) and `?a=evil&a=good` must not share an entry with `?a=good&a=evil`. Names
    /// compare decoded (`%61` is `a` to the app); each pair is kept as received.
    fn query(&mut self, query: &str) {
        if query.contains(';') {
            // Some frameworks also split on `;`, others do not: no reordering is safe for
            // both, so such a query is keyed exactly as received.
            self.0.push(QUERY_RAW);
            self.field(query.as_bytes());
            return;
        }
        self.0.push(QUERY_SORTED);
        let mut pairs: Vec<(Vec<u8>, &str)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| (decoded_name(p), p))
            .collect();
        // `sort_by` is stable.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        self.values(pairs.iter().map(|(_, p)| p.as_bytes()));
    }
}

/// The name of a `name=value` pair as an application sees it: `+` is a space, then
/// percent-decoded, as bytes (no UTF-8 decoding, which would be lossy).
fn decoded_name(pair: &str) -> Vec<u8> {
    let name = pair.split_once('=').map_or(pair, |(n, _)| n);
    let spaced: Vec<u8> = name
        .bytes()
        .map(|b| if b == b'+' { b' ' } else { b })
        .collect();
    percent_decode(&spaced).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn rule(name: &str, vary: &str) -> CacheRule {
        let raw: super::super::config::RawCacheRule =
            toml::from_str(&format!("path = \"/m\"\n{vary}")).unwrap();
        raw.validate(name, &mut Default::default()).unwrap()
    }

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    fn key(r: &CacheRule, uri: &str, h: &HeaderMap) -> CacheKey {
        CacheKey::new(r, &uri.parse().unwrap(), h)
    }

    #[test]
    fn query_order_matters_only_within_a_name() {
        let r = rule("m", "");
        let h = HeaderMap::new();
        assert_eq!(key(&r, "/m?b=2&a=1", &h), key(&r, "/m?a=1&b=2", &h));
        assert_ne!(key(&r, "/m?a=1", &h), key(&r, "/m?a=2", &h));
        assert_eq!(key(&r, "/m?", &h), key(&r, "/m", &h));
        assert_ne!(key(&r, "/m?a=1&a=2", &h), key(&r, "/m?a=2&a=1", &h));
        assert_eq!(key(&r, "/m?a=1&b=0&a=2", &h), key(&r, "/m?b=0&a=1&a=2", &h));
        // `%61` is `a` to the app: it keeps its place among the `a`s.
        assert_ne!(key(&r, "/m?%61=1&a=2", &h), key(&r, "/m?a=2&%61=1", &h));
        assert_ne!(key(&r, "/m?a=%FF", &h), key(&r, "/m?a=%FE", &h));
        // With `;` nothing is reordered.
        assert_ne!(key(&r, "/m?b=1;a=1&a=2", &h), key(&r, "/m?a=2&b=1;a=1", &h));
    }

    #[test]
    fn users_get_their_own_keys_unless_shared() {
        let r = rule("m", "");
        let a = headers(&[("cookie", b"session=a")]);
        let b = headers(&[("cookie", b"session=b")]);
        let none = HeaderMap::new();
        let empty = headers(&[("cookie", b"")]);
        assert_ne!(key(&r, "/m", &a), key(&r, "/m", &b));
        assert_ne!(key(&r, "/m", &none), key(&r, "/m", &empty));
        let auth = headers(&[("authorization", b"Bearer x")]);
        assert_ne!(key(&r, "/m", &none), key(&r, "/m", &auth));
        let shared = rule("m", "vary = []");
        assert_eq!(key(&shared, "/m", &a), key(&shared, "/m", &b));
    }

    #[test]
    fn header_bytes_and_lines_are_framed() {
        let r = rule("m", "");
        let ff = headers(&[("cookie", b"s=\xff")]);
        let fe = headers(&[("cookie", b"s=\xfe")]);
        assert_ne!(key(&r, "/m", &ff), key(&r, "/m", &fe));
        let two = headers(&[("cookie", b"x=1"), ("cookie", b"y=2")]);
        for one in [&b"x=1:y=2"[..], b"x=1,y=2", b"x=1y=2"] {
            assert_ne!(
                key(&r, "/m", &two),
                key(&r, "/m", &headers(&[("cookie", one)]))
            );
        }
    }

    #[test]
    fn the_host_is_in_every_key() {
        let shared = rule("m", "vary = []");
        let evil = headers(&[("host", b"evil.example")]);
        let good = headers(&[("host", b"app.example")]);
        assert_ne!(key(&shared, "/m", &evil), key(&shared, "/m", &good));
        assert_ne!(
            key(&shared, "http://evil.example/m", &good),
            key(&shared, "/m", &good)
        );
        // The authority is the host the app is told (it replaces any Host line): an
        // HTTP/2 request (`:authority`, no Host) and an HTTP/1.1 one name the same host.
        let none = headers(&[]);
        assert_eq!(
            key(&shared, "http://app.example/m", &none),
            key(&shared, "/m", &good)
        );
        assert_eq!(
            key(&shared, "http://app.example/m", &evil),
            key(&shared, "/m", &good)
        );
        assert_ne!(key(&shared, "/m", &none), key(&shared, "/m", &good));
    }

    #[test]
    fn vary_names_are_normalized_and_star_matches_nothing() {
        let vary = |lines: &[&[u8]]| {
            let h = headers(&lines.iter().map(|l| ("vary", *l)).collect::<Vec<_>>());
            VaryNames::of(&h)
        };
        let next = vary(&[b"rsc, Next-Router-State-Tree,next-router-prefetch", b"RSC"]).unwrap();
        assert_eq!(
            next,
            vary(&[b"next-router-prefetch", b"next-router-state-tree , rsc,"]).unwrap()
        );
        assert_eq!(next.0.len(), 3);
        assert!(vary(&[]).unwrap().is_empty());
        assert!(vary(&[b"rsc", b" * "]).is_none());
        // Not a header name: no request carries it, so it is left out.
        assert!(vary(&[b"bad name"]).unwrap().is_empty());
    }

    #[test]
    fn a_variant_is_every_line_of_every_named_header() {
        let names = VaryNames::of(&headers(&[("vary", b"rsc, accept-encoding")])).unwrap();
        let variant = |pairs: &[(&str, &[u8])]| VariantKey::new(&names, &headers(pairs));
        let none = variant(&[]);
        assert_ne!(none, variant(&[("rsc", b"")]));
        assert_ne!(
            variant(&[("rsc", b"1")]),
            variant(&[("accept-encoding", b"1")])
        );
        assert_ne!(
            variant(&[("accept-encoding", b"gzip"), ("accept-encoding", b"br")]),
            variant(&[("accept-encoding", b"gzip, br")])
        );
        // Headers the response does not name do not matter.
        assert_eq!(none, variant(&[("cookie", b"a=1"), ("x-other", b"2")]));
        assert_eq!(
            variant(&[("rsc", b"1"), ("cookie", b"a")]),
            variant(&[("rsc", b"1")])
        );
        // A variant key never equals the rule's key with another variant.
        let k = key(&rule("m", ""), "/m", &HeaderMap::new());
        assert_ne!(
            k.with_variant(&none),
            k.with_variant(&variant(&[("rsc", b"1")]))
        );
    }

    /// One generated request: everything a key is made of.
    #[derive(Debug, Clone)]
    struct Input {
        rule: usize,
        host: Vec<Vec<u8>>,
        path: String,
        query: Vec<(&'static str, &'static str)>,
        cookies: Vec<Vec<u8>>,
    }

    impl Input {
        /// What the app can tell apart: pairs stably sorted by name, everything else as is.
        fn canonical(&self) -> impl Eq + fmt::Debug {
            let mut query = self.query.clone();
            query.sort_by_key(|(name, _)| if *name == "%61" { "a" } else { name });
            (
                self.rule,
                self.host.clone(),
                self.path.clone(),
                query,
                self.cookies.clone(),
            )
        }

        fn key(&self, rules: &[CacheRule]) -> CacheKey {
            let query: Vec<String> = self.query.iter().map(|(n, v)| format!("{n}={v}")).collect();
            let uri = format!("{}?{}", self.path, query.join("&"));
            let mut h = HeaderMap::new();
            for v in &self.host {
                h.append(header::HOST, HeaderValue::from_bytes(v).unwrap());
            }
            for v in &self.cookies {
                h.append(header::COOKIE, HeaderValue::from_bytes(v).unwrap());
            }
            CacheKey::new(&rules[self.rule], &uri.parse().unwrap(), &h)
        }
    }

    /// Header value bytes from a small alphabet (so that equal values are generated
    /// often) with separators and bytes that are not UTF-8.
    fn value() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop::sample::select(vec![b'x', b'=', b':', b',', b';', b' ', 0x80, 0xfe, 0xff]),
            0..4,
        )
    }

    fn input() -> impl Strategy<Value = Input> {
        (
            0..2usize,
            prop::collection::vec(value(), 0..3),
            prop::sample::select(vec!["/m", "/m/", "/n"]),
            prop::collection::vec(
                (
                    prop::sample::select(vec!["a", "b", "%61"]),
                    prop::sample::select(vec!["", "1", "2"]),
                ),
                0..4,
            ),
            prop::collection::vec(value(), 0..3),
        )
            .prop_map(|(rule, host, path, query, cookies)| Input {
                rule,
                host,
                path: path.to_string(),
                query,
                cookies,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Keys are equal exactly when the requests are the same to the app.
        #[test]
        fn distinct_requests_distinct_keys(a in input(), b in input()) {
            let rules = [rule("one", ""), rule("two", "")];
            let (ka, kb) = (a.key(&rules), b.key(&rules));
            prop_assert_eq!(a.canonical() == b.canonical(), ka == kb, "{:?} / {:?}", ka, kb);
        }
    }
}
