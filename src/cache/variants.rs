//! The variants of one cache key (RFC 9111 §4.1): responses whose `Vary` names request
//! headers outside the rule's key, told apart by the request's values of those headers.
//!
//! The store holds one [`Variants`] per key, so a key's variants are evicted, expired and
//! weighed together, and a lookup is one store read and a scan of at most
//! [`MAX_VARIANTS`] secondary keys.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;

use super::entry::Entry;
use super::key::{VariantKey, VaryNames};

/// Variants kept per key. Full policy: a new variant is refused (not stored, counted in
/// `unpoll_cache_variants_refused_total`) while all of them are still usable; expired and
/// purged ones make room first. Refusing rather than evicting the oldest keeps the
/// variants a client polls from being pushed out by a stream of one-off header values.
pub const MAX_VARIANTS: usize = 8;

/// The stored responses of one key. All vary on the same headers: a response naming other
/// headers replaces them (the app changed what it varies on).
#[derive(Debug, Default)]
pub struct Variants {
    names: VaryNames,
    entries: Vec<Arc<Entry>>,
}

/// Why an entry was not added to a key's variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl Variants {
    /// The headers the stored responses vary on.
    pub fn names(&self) -> &VaryNames {
        &self.names
    }

    /// The entry a request with `headers` selects, if stored.
    pub fn select(&self, headers: &HeaderMap) -> Option<&Arc<Entry>> {
        if self.names.is_empty() {
            // The common case (no Vary beyond the rule's key): one entry, no key to build.
            return self.entries.first();
        }
        let wanted = VariantKey::new(&self.names, headers);
        self.entries.iter().find(|e| e.variant.key == wanted)
    }

    /// These variants with `entry` added (replacing the one of the same secondary key),
    /// keeping only the others that `usable` still accepts.
    pub fn with(
        current: Option<&Variants>,
        entry: Arc<Entry>,
        usable: impl Fn(&Entry) -> bool,
    ) -> Result<Variants, Full> {
        let mut entries: Vec<Arc<Entry>> = current
            .filter(|c| c.names == entry.variant.names)
            .map(|c| {
                c.entries
                    .iter()
                    .filter(|e| e.variant.key != entry.variant.key && usable(e))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if entries.len() >= MAX_VARIANTS {
            return Err(Full);
        }
        let names = entry.variant.names.clone();
        entries.push(entry);
        Ok(Variants { names, entries })
    }

    /// These variants without `entry`; `None` when none is left.
    pub fn without(&self, entry: &Arc<Entry>) -> Option<Variants> {
        let entries: Vec<Arc<Entry>> = self
            .entries
            .iter()
            .filter(|e| !Arc::ptr_eq(e, entry))
            .cloned()
            .collect();
        (!entries.is_empty()).then(|| Variants {
            names: self.names.clone(),
            entries,
        })
    }

    /// Number of stored responses.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes counted against the budget (key excluded).
    pub fn weight(&self) -> usize {
        self.names.len() + self.entries.iter().map(|e| e.weight()).sum::<usize>()
    }

    /// How long the store keeps them: until the last one can serve nobody.
    pub fn remaining_lifetime(&self) -> Duration {
        self.entries
            .iter()
            .map(|e| e.lifetime().saturating_sub(e.age()))
            .max()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::Variant;
    use bytes::Bytes;
    use http::{HeaderValue, StatusCode};

    fn entry(vary: &'static str, rsc: &'static str) -> Arc<Entry> {
        let raw: crate::cache::RawCacheRule = toml::from_str("path = \"/m\"").unwrap();
        let rule = raw.validate("cache[0]", &mut Default::default()).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("vary", HeaderValue::from_static(vary));
        let mut e = Entry::new(
            &rule,
            StatusCode::OK,
            headers,
            Bytes::from_static(b"x"),
            0,
            vec![],
            HeaderValue::from_static("0"),
        );
        let mut request = HeaderMap::new();
        request.insert("rsc", HeaderValue::from_static(rsc));
        e.variant = Variant::select(&VaryNames::of(&e.headers).unwrap(), &request);
        Arc::new(e)
    }

    fn rsc(value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("rsc", HeaderValue::from_static(value));
        h
    }

    #[test]
    fn a_key_holds_at_most_max_variants_and_replaces_its_own() {
        let values: Vec<&'static str> = ["0", "1", "2", "3", "4", "5", "6", "7", "8"].to_vec();
        let mut variants = None::<Variants>;
        for v in &values[..MAX_VARIANTS] {
            variants = Some(Variants::with(variants.as_ref(), entry("rsc", v), |_| true).unwrap());
        }
        let full = variants.unwrap();
        assert_eq!(full.len(), MAX_VARIANTS);
        assert_eq!(
            Variants::with(Some(&full), entry("rsc", values[8]), |_| true).unwrap_err(),
            Full
        );
        // A newer response of a stored variant replaces it, full or not.
        let newer = entry("rsc", "3");
        let replaced = Variants::with(Some(&full), newer.clone(), |_| true).unwrap();
        assert_eq!(replaced.len(), MAX_VARIANTS);
        assert!(Arc::ptr_eq(replaced.select(&rsc("3")).unwrap(), &newer));
        // Unusable variants (expired, purged) make room.
        let stale = full.select(&rsc("0")).unwrap().clone();
        let room = Variants::with(Some(&full), entry("rsc", "8"), |e| {
            !std::ptr::eq(e, &*stale)
        })
        .unwrap();
        assert!(room.select(&rsc("0")).is_none());
        assert!(room.select(&rsc("8")).is_some());
        assert!(room.select(&HeaderMap::new()).is_none());
    }

    #[test]
    fn a_response_varying_on_other_headers_replaces_them_all() {
        let one = Variants::with(None, entry("rsc", "1"), |_| true).unwrap();
        let two = Variants::with(Some(&one), entry("rsc", "2"), |_| true).unwrap();
        let other = Variants::with(Some(&two), entry("rsc, accept", "1"), |_| true).unwrap();
        assert_eq!(other.len(), 1);
        assert!(other.select(&rsc("2")).is_none());
        assert!(other.without(other.select(&rsc("1")).unwrap()).is_none());
    }
}
