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

/// Variants kept per key. Expired and purged ones make room first. Then, when all of them
/// are still usable:
///
/// - on a **shared** key (the rule's key does not vary on Cookie or Authorization: every
///   client reaches the same variants), the least recently *hit* variant is evicted for the
///   new one (counted in `unpoll_cache_variants_evicted_total`); never-hit variants go
///   first, the oldest of them first. Refusing there would let any client stop the caching
///   of the key for everyone by sending eight made-up `rsc` values; with eviction its junk
///   variants, which nobody hits, push out only each other, while the variants clients
///   poll are hit and stay.
/// - on a **per-user** key, the new variant is refused (not stored, counted in
///   `unpoll_cache_variants_refused_total`): only that user can fill it, and refusing keeps
///   the variants they poll from being pushed out by their own one-off header values.
pub const MAX_VARIANTS: usize = 8;

/// The stored responses of one key. All vary on the same headers: a response naming other
/// headers replaces them (the app changed what it varies on).
#[derive(Debug, Default)]
pub struct Variants {
    names: VaryNames,
    entries: Vec<Arc<Entry>>,
}

/// Why an entry was not added to a key's variants: a per-user key was full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// A key's variants with a new entry, and the variant it evicted, if any.
#[derive(Debug)]
pub struct Added {
    /// The new set.
    pub variants: Variants,
    /// The least recently hit variant that gave way (a full shared key).
    pub evicted: Option<Arc<Entry>>,
}

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
    /// keeping only the others that `usable` still accepts; when [`MAX_VARIANTS`] remain,
    /// the full policy of `entry.shared_key`'s kind (see [`MAX_VARIANTS`]).
    pub fn with(
        current: Option<&Variants>,
        entry: Arc<Entry>,
        usable: impl Fn(&Entry) -> bool,
    ) -> Result<Added, Full> {
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
        let mut evicted = None;
        if entries.len() >= MAX_VARIANTS {
            if !entry.shared_key {
                return Err(Full);
            }
            // The first of the least recently hit: entries are in the order they were
            // stored, so among never-hit variants the oldest goes.
            let (oldest, _) = entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_hit())
                .ok_or(Full)?;
            evicted = Some(entries.remove(oldest));
        }
        let names = entry.variant.names.clone();
        entries.push(entry);
        Ok(Added {
            variants: Variants { names, entries },
            evicted,
        })
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

    /// A per-user rule's entry (the default key: Cookie, Authorization).
    fn entry(vary: &'static str, rsc: &'static str) -> Arc<Entry> {
        entry_of("path = \"/m\"", vary, rsc)
    }

    /// A shared rule's entry (`vary = []`).
    fn shared(rsc: &'static str) -> Arc<Entry> {
        entry_of("path = \"/m\"\nvary = []", "rsc", rsc)
    }

    fn entry_of(rule: &str, vary: &'static str, rsc: &'static str) -> Arc<Entry> {
        let raw: crate::cache::RawCacheRule = toml::from_str(rule).unwrap();
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
            variants = Some(
                Variants::with(variants.as_ref(), entry("rsc", v), |_| true)
                    .unwrap()
                    .variants,
            );
        }
        let full = variants.unwrap();
        assert_eq!(full.len(), MAX_VARIANTS);
        assert_eq!(
            Variants::with(Some(&full), entry("rsc", values[8]), |_| true).unwrap_err(),
            Full
        );
        // A newer response of a stored variant replaces it, full or not.
        let newer = entry("rsc", "3");
        let replaced = Variants::with(Some(&full), newer.clone(), |_| true)
            .unwrap()
            .variants;
        assert_eq!(replaced.len(), MAX_VARIANTS);
        assert!(Arc::ptr_eq(replaced.select(&rsc("3")).unwrap(), &newer));
        // Unusable variants (expired, purged) make room.
        let stale = full.select(&rsc("0")).unwrap().clone();
        let room = Variants::with(Some(&full), entry("rsc", "8"), |e| {
            !std::ptr::eq(e, &*stale)
        })
        .unwrap()
        .variants;
        assert!(room.select(&rsc("0")).is_none());
        assert!(room.select(&rsc("8")).is_some());
        assert!(room.select(&HeaderMap::new()).is_none());
    }

    #[test]
    fn a_response_varying_on_other_headers_replaces_them_all() {
        let add = |current: Option<&Variants>, e| Variants::with(current, e, |_| true).unwrap();
        let one = add(None, entry("rsc", "1")).variants;
        let two = add(Some(&one), entry("rsc", "2")).variants;
        let other = add(Some(&two), entry("rsc, accept", "1")).variants;
        assert_eq!(other.len(), 1);
        assert!(other.select(&rsc("2")).is_none());
        assert!(other.without(other.select(&rsc("1")).unwrap()).is_none());
    }

    #[test]
    fn a_full_shared_key_evicts_its_least_recently_hit_variant() {
        let mut variants = None::<Variants>;
        let values = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
        for v in &values[..MAX_VARIANTS] {
            let added = Variants::with(variants.as_ref(), shared(v), |_| true).unwrap();
            assert!(added.evicted.is_none());
            variants = Some(added.variants);
        }
        let full = variants.unwrap();
        // Hit "0" (the oldest) and "1", "1" later; the others never.
        full.select(&rsc("0")).unwrap().hit(5);
        full.select(&rsc("1")).unwrap().hit(9);
        // Never-hit variants go first, the oldest of them first.
        let added = Variants::with(Some(&full), shared("8"), |_| true).unwrap();
        assert!(Arc::ptr_eq(
            added.evicted.as_ref().unwrap(),
            full.select(&rsc("2")).unwrap()
        ));
        let next = added.variants;
        assert_eq!(next.len(), MAX_VARIANTS);
        for v in ["0", "1", "8"] {
            assert!(next.select(&rsc(v)).is_some(), "{v} kept");
        }
        // Once every variant was hit, the least recently hit one goes.
        for (i, v) in ["3", "4", "5", "6", "7", "8"].iter().enumerate() {
            next.select(&rsc(v)).unwrap().hit(10 + i as u64);
        }
        let added = Variants::with(Some(&next), shared("9"), |_| true).unwrap();
        assert!(Arc::ptr_eq(
            added.evicted.as_ref().unwrap(),
            next.select(&rsc("0")).unwrap()
        ));
        assert!(added.variants.select(&rsc("1")).is_some());
        assert!(added.variants.select(&rsc("9")).is_some());
    }
}
