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

    /// True when nothing is stored (never kept in the store).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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
