//! The micro-cache for polling endpoints: keyed per user by default, concurrent misses
//! coalesced into one upstream request, entries tagged and purged by events, memory bounded
//! by `cache_size`.
//!
//! `serve.rs` is the Cache arm of the handler; `lock.rs` the coalescing; `tags.rs` purge
//! generations; `entry.rs` what is stored and when it may be; `variants.rs` the responses
//! of one key that differ by the headers the app names in `Vary`.

pub mod config;
pub mod entry;
pub mod key;
pub mod lock;
pub mod metrics;
pub mod serve;
pub mod tags;
pub mod variants;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use config::{CacheRule, RawCacheRule};
pub use entry::Entry;
use entry::Freshness;
pub use key::CacheKey;
pub use metrics::CacheMetrics;

use http::HeaderMap;
use key::VariantKey;
use lock::Locks;
use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use tags::TagGenerations;
use variants::Variants;

/// The shared cache of one unpoll instance (all `[[cache]]` rules).
pub struct Cache {
    /// The variants of each key, weighted in bytes, capped at `cache_size`. Full policy:
    /// moka evicts by TinyLFU (rarely used keys first, with all their variants); evicted
    /// entries are counted.
    store: moka::sync::Cache<CacheKey, Arc<Variants>>,
    /// Purge generations of tags.
    tags: TagGenerations,
    /// Keys being fetched now.
    pub locks: Locks,
    /// Counters and gauges.
    pub metrics: CacheMetrics,
    /// `cache_size` in bytes.
    budget: u64,
    /// The clock of [`Entry::hit`]: milliseconds since the cache was made.
    started: std::time::Instant,
}

/// Entries live this long past their last useful moment, so a slightly late request still
/// finds the stale entry rather than a miss.
const EXPIRY_MARGIN: Duration = Duration::from_secs(1);

struct Lifetime;

/// A key lives as long as its longest-lived variant, recomputed on every change (a
/// refreshed entry must not inherit its predecessor's expiry).
impl moka::Expiry<CacheKey, Arc<Variants>> for Lifetime {
    fn expire_after_create(
        &self,
        _: &CacheKey,
        variants: &Arc<Variants>,
        _: Instant,
    ) -> Option<Duration> {
        Some(variants.remaining_lifetime() + EXPIRY_MARGIN)
    }

    fn expire_after_update(
        &self,
        _: &CacheKey,
        variants: &Arc<Variants>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(variants.remaining_lifetime() + EXPIRY_MARGIN)
    }
}

/// Why [`Cache::insert`] did not store an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// One of its tags was purged while it was fetched.
    Purged,
    /// Larger than the whole budget.
    TooLarge,
    /// Its key is per-user and already holds [`variants::MAX_VARIANTS`] usable variants.
    VariantsFull,
}

impl Cache {
    /// A cache of at most `budget` bytes that counts into `metrics`.
    pub fn new(budget: u64, metrics: CacheMetrics) -> Cache {
        let evictions = metrics.evictions.clone();
        let store = moka::sync::Cache::builder()
            .max_capacity(budget)
            .weigher(|key: &CacheKey, variants: &Arc<Variants>| {
                u32::try_from(key.len() + variants.weight()).unwrap_or(u32::MAX)
            })
            .expire_after(Lifetime)
            .eviction_listener(move |_, variants: Arc<Variants>, cause| {
                if cause == RemovalCause::Size {
                    evictions.inc_by(variants.len() as u64);
                }
            })
            .build();
        Cache {
            store,
            tags: TagGenerations::default(),
            locks: Locks::default(),
            metrics,
            budget,
            started: std::time::Instant::now(),
        }
    }

    /// Now on the clock of [`Entry::hit`]: from 1, so 0 stays "never hit".
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    /// The entry that a request with `headers` selects among the variants of `key`, unless
    /// a purge of one of its tags made it invalid. Finding it is a hit for the full policy
    /// of a shared key (see [`variants::MAX_VARIANTS`]).
    pub fn get(&self, key: &CacheKey, headers: &HeaderMap) -> Option<Arc<Entry>> {
        let variants = self.store.get(key)?;
        let entry = variants.select(headers)?;
        if self.tags.valid(&entry.tags, entry.generation) {
            entry.hit(self.now_ms());
            return Some(entry.clone());
        }
        // Drop the purged variant now rather than weigh it until the key expires; the
        // check runs again inside, against whatever the key holds by then.
        let entry = entry.clone();
        self.store.entry(key.clone()).and_compute_with(|current| {
            match current.map(|c| c.into_value()) {
                Some(c) if c.select(headers).is_some_and(|e| Arc::ptr_eq(e, &entry)) => {
                    match c.without(&entry) {
                        Some(rest) => Op::Put(Arc::new(rest)),
                        None => Op::Remove,
                    }
                }
                _ => Op::Nop,
            }
        });
        None
    }

    /// The key concurrent misses of a request with `headers` coalesce on: its variant of
    /// `key` as far as the stored variants tell (the rule's key alone when none is stored:
    /// then waiters check the response they get, see [`Entry::serves`]).
    pub fn lock_key(&self, key: &CacheKey, headers: &HeaderMap) -> CacheKey {
        match self.store.get(key) {
            Some(variants) => key.with_variant(&VariantKey::new(variants.names(), headers)),
            None => key.with_variant(&VariantKey::default()),
        }
    }

    /// Store `entry` as a variant of `key`, unless one of its tags was purged since its
    /// fill started (the generation check), it exceeds the budget, or the key's variants
    /// are full and it is per-user (counted); a full shared key evicts its least recently
    /// hit variant instead (counted).
    pub fn insert(&self, key: CacheKey, entry: Arc<Entry>) -> Result<(), NotStored> {
        if !self.tags.valid(&entry.tags, entry.generation) {
            return Err(NotStored::Purged);
        }
        if key.len() + entry.weight() > self.budget as usize {
            return Err(NotStored::TooLarge);
        }
        let mut result = Err(NotStored::VariantsFull);
        let mut evicted = false;
        let usable = |e: &Entry| {
            e.freshness() != Freshness::Expired && self.tags.valid(&e.tags, e.generation)
        };
        self.store.entry(key).and_compute_with(|current| {
            let current = current.map(|c| c.into_value());
            match Variants::with(current.as_deref(), entry, usable) {
                Ok(added) => {
                    result = Ok(());
                    evicted = added.evicted.is_some();
                    Op::Put(Arc::new(added.variants))
                }
                Err(variants::Full) => Op::Nop,
            }
        });
        match result {
            Ok(()) => {
                self.metrics.stored.inc();
                if evicted {
                    self.metrics.variants_evicted.inc();
                }
                self.refresh_gauges();
            }
            Err(NotStored::VariantsFull) => {
                self.metrics.variants_refused.inc();
            }
            Err(_) => {}
        }
        result
    }

    /// Whether no purge of `entry`'s tags happened since its fill started.
    pub fn is_current(&self, entry: &Entry) -> bool {
        self.tags.valid(&entry.tags, entry.generation)
    }

    /// The tag generation a fill starting now belongs to.
    pub fn generation(&self) -> u64 {
        self.tags.current()
    }

    /// Purge every entry tagged with one of `tags` (and any fill of them in flight).
    pub fn purge(&self, tags: &[String]) {
        if tags.is_empty() {
            return;
        }
        self.tags.purge(tags);
        self.metrics.purges.inc_by(tags.len() as u64);
    }

    /// Purge every entry with a tag matching `pattern` (`*` wildcards), used when a source
    /// lost events and cannot say which tags they would have purged.
    pub fn purge_glob(&self, pattern: &str) {
        self.tags.purge_glob(pattern);
        self.metrics.purges.inc();
    }

    /// Run the store's pending maintenance (evictions, expirations) now and update gauges;
    /// moka otherwise does it lazily on later operations.
    pub fn maintain(&self) {
        self.store.run_pending_tasks();
        self.refresh_gauges();
    }

    fn refresh_gauges(&self) {
        let bytes = i64::try_from(self.store.weighted_size()).unwrap_or(i64::MAX);
        let entries = i64::try_from(self.store.entry_count()).unwrap_or(i64::MAX);
        self.metrics.stored_bytes.set(bytes);
        self.metrics.entries.set(entries);
    }

    /// The `cache` section of `/stats`.
    pub fn stats(&self) -> serde_json::Value {
        self.maintain();
        let m = &self.metrics;
        let hits = m.hits.get() + m.stale.get() + m.coalesced.get();
        let lookups = hits + m.misses.get();
        serde_json::json!({
            "budget_bytes": self.budget,
            "stored_bytes": m.stored_bytes.get(),
            "entries": m.entries.get(),
            "hits": m.hits.get(),
            "misses": m.misses.get(),
            "coalesced": m.coalesced.get(),
            "stale_served": m.stale.get(),
            "passes": m.passes.get(),
            "evictions": m.evictions.get(),
            "variants_refused": m.variants_refused.get(),
            "variants_evicted": m.variants_evicted.get(),
            "purges": m.purges.get(),
            "hit_ratio": if lookups == 0 { 0.0 } else { hits as f64 / lookups as f64 },
            "upstream_requests_saved": m.upstream_requests_saved.get(),
        })
    }
}
