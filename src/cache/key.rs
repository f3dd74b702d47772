//! Cache keys: rule, path, normalised query and the values of the rule's `vary` headers.
//!
//! The key is kept whole (not hashed) as the store's key, so a hash collision can never
//! serve one user another user's entry.

use std::sync::Arc;

use http::HeaderMap;

use super::config::CacheRule;

/// A cache key. HEAD and GET share it (HEAD is answered from the GET entry).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(Arc<str>);

impl CacheKey {
    /// The key of a request under `rule`.
    pub fn new(rule: &CacheRule, path: &str, query: Option<&str>, headers: &HeaderMap) -> Self {
        let mut key = String::with_capacity(64 + path.len() + query.map_or(0, str::len));
        key.push_str(&rule.name);
        key.push('\n');
        key.push_str(path);
        key.push('\n');
        if let Some(query) = query.filter(|q| !q.is_empty()) {
            // Sorted parameters: `?b=2&a=1` and `?a=1&b=2` are one entry.
            let mut pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            pairs.sort();
            let mut ser = form_urlencoded::Serializer::new(String::new());
            ser.extend_pairs(pairs);
            key.push_str(&ser.finish());
        }
        for name in &rule.vary {
            key.push('\n');
            key.push_str(name.as_str());
            // Every value, in order; an absent header and an empty one differ.
            for value in headers.get_all(name) {
                key.push_str(if key.ends_with(':') { "," } else { ":" });
                key.push_str(&String::from_utf8_lossy(value.as_bytes()));
            }
        }
        CacheKey(key.into())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(vary: &str) -> CacheRule {
        let raw: super::super::config::RawCacheRule =
            toml::from_str(&format!("path = \"/m\"\n{vary}")).unwrap();
        raw.validate("cache[0]", &mut Default::default()).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn query_order_does_not_matter() {
        let r = rule("");
        let h = HeaderMap::new();
        assert_eq!(
            CacheKey::new(&r, "/m", Some("b=2&a=1"), &h),
            CacheKey::new(&r, "/m", Some("a=1&b=2"), &h)
        );
        assert_ne!(
            CacheKey::new(&r, "/m", Some("a=1"), &h),
            CacheKey::new(&r, "/m", Some("a=2"), &h)
        );
        assert_eq!(
            CacheKey::new(&r, "/m", Some(""), &h),
            CacheKey::new(&r, "/m", None, &h)
        );
    }

    #[test]
    fn users_get_their_own_keys_unless_shared() {
        let r = rule("");
        let a = headers(&[("cookie", "session=a")]);
        let b = headers(&[("cookie", "session=b")]);
        let none = HeaderMap::new();
        let empty = headers(&[("cookie", "")]);
        assert_ne!(
            CacheKey::new(&r, "/m", None, &a),
            CacheKey::new(&r, "/m", None, &b)
        );
        assert_ne!(
            CacheKey::new(&r, "/m", None, &none),
            CacheKey::new(&r, "/m", None, &empty)
        );
        let auth = headers(&[("authorization", "Bearer x")]);
        assert_ne!(
            CacheKey::new(&r, "/m", None, &none),
            CacheKey::new(&r, "/m", None, &auth)
        );
        let shared = rule("vary = []");
        assert_eq!(
            CacheKey::new(&shared, "/m", None, &a),
            CacheKey::new(&shared, "/m", None, &b)
        );
    }
}
