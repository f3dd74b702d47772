//! The micro-cache for polling endpoints: keyed per user by default, concurrent misses
//! coalesced into one upstream request, entries tagged and purged by events, memory bounded
//! by `cache_size`.
//!
//! `serve.rs` is the Cache arm of the handler; `lock.rs` the coalescing; `tags.rs` purge
//! generations; `entry.rs` what is stored and when it may be.

pub mod config;
pub mod entry;
pub mod key;
pub mod lock;
pub mod metrics;
pub mod serve;
pub mod tags;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use config::{CacheRule, RawCacheRule};
pub use entry::Entry;
pub use key::CacheKey;
pub use metrics::CacheMetrics;

use lock::Locks;
use moka::notification::RemovalCause;
use tags::TagGenerations;

/// The shared cache of one unpoll instance (all `[[cache]]` rules).
pub struct Cache {
    /// Entries by key, weighted in bytes, capped at `cache_size`. Full policy: moka evicts
    /// by TinyLFU (rarely used entries first); evictions are counted.
    store: moka::sync::Cache<CacheKey, Arc<Entry>>,
    /// Purge generations of tags.
    tags: TagGenerations,
    /// Keys being fetched now.
    pub locks: Locks,
    /// Counters and gauges.
    pub metrics: CacheMetrics,
    /// `cache_size` in bytes.
    budget: u64,
}

/// Entries live this long past their last useful moment, so a slightly late request still
/// finds the stale entry rather than a miss.
const EXPIRY_MARGIN: Duration = Duration::from_secs(1);

struct Lifetime;

impl moka::Expiry<CacheKey, Arc<Entry>> for Lifetime {
    fn expire_after_create(
        &self,
        _: &CacheKey,
        entry: &Arc<Entry>,
        _: Instant,
    ) -> Option<Duration> {
        Some(entry.lifetime() + EXPIRY_MARGIN)
    }
}

impl Cache {
    /// A cache of at most `budget` bytes that counts into `metrics`.
    pub fn new(budget: u64, metrics: CacheMetrics) -> Cache {
        let evictions = metrics.evictions.clone();
        let store = moka::sync::Cache::builder()
            .max_capacity(budget)
            .weigher(|key: &CacheKey, entry: &Arc<Entry>| {
                u32::try_from(key.len() + entry.weight()).unwrap_or(u32::MAX)
            })
            .expire_after(Lifetime)
            .eviction_listener(move |_, _, cause| {
                if cause == RemovalCause::Size {
                    evictions.inc();
                }
            })
            .build();
        Cache {
            store,
            tags: TagGenerations::default(),
            locks: Locks::default(),
            metrics,
            budget,
        }
    }

    /// The entry for `key`, unless a purge of one of its tags made it invalid.
    pub fn get(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        let entry = self.store.get(key)?;
        if self.tags.valid(&entry.tags, entry.generation) {
            Some(entry)
        } else {
            self.store.invalidate(key);
            None
        }
    }

    /// Store `entry` unless one of its tags was purged since its fill started (the
    /// generation check); returns whether it was stored.
    pub fn insert(&self, key: CacheKey, entry: Arc<Entry>) -> bool {
        if !self.tags.valid(&entry.tags, entry.generation) {
            return false;
        }
        if key.len() + entry.weight() > self.budget as usize {
            return false;
        }
        self.store.insert(key, entry);
        self.metrics.stored.inc();
        self.refresh_gauges();
        true
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
            "purges": m.purges.get(),
            "hit_ratio": if lookups == 0 { 0.0 } else { hits as f64 / lookups as f64 },
            "upstream_requests_saved": m.upstream_requests_saved.get(),
        })
    }
}
