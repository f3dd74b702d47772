//! Cache metrics: what was answered without the upstream, and what the store holds.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Counters and gauges of the cache.
#[derive(Clone, Default)]
pub struct CacheMetrics {
    /// Fresh hits (including 304s answered from an entry).
    pub hits: Counter,
    /// Requests that found no usable entry.
    pub misses: Counter,
    /// Requests that waited for another request's fetch and got its response.
    pub coalesced: Counter,
    /// Stale entries served (while revalidating, or because the upstream failed).
    pub stale: Counter,
    /// Requests forwarded without the cache (personal or too-large responses, lock timeouts,
    /// missing tag values).
    pub passes: Counter,
    /// Entries stored.
    pub stored: Counter,
    /// Entries evicted to stay within `cache_size`.
    pub evictions: Counter,
    /// Tags and tag patterns purged.
    pub purges: Counter,
    /// Responses not stored because their per-user key already held `MAX_VARIANTS` usable
    /// variants.
    pub variants_refused: Counter,
    /// Variants evicted from a full shared key for a new one (the least recently hit).
    pub variants_evicted: Counter,
    /// Requests answered without an upstream request: the number users came for.
    pub upstream_requests_saved: Counter,
    /// Bytes held, entry overhead included (approximate between maintenance runs).
    pub stored_bytes: Gauge,
    /// Keys held, each with one or more variants (approximate between maintenance runs).
    pub entries: Gauge,
}

impl CacheMetrics {
    /// Register every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("unpoll_cache");
        r.register("hits", "Fresh cache hits, 304s included", self.hits.clone());
        r.register(
            "misses",
            "Requests with no usable entry",
            self.misses.clone(),
        );
        r.register(
            "coalesced",
            "Requests that waited for another's fetch",
            self.coalesced.clone(),
        );
        r.register("stale_served", "Stale entries served", self.stale.clone());
        r.register(
            "passes",
            "Requests forwarded around the cache",
            self.passes.clone(),
        );
        r.register("stored", "Entries stored", self.stored.clone());
        r.register(
            "evictions",
            "Entries evicted to respect cache_size",
            self.evictions.clone(),
        );
        r.register(
            "purges",
            "Tags and tag patterns purged",
            self.purges.clone(),
        );
        r.register(
            "variants_refused",
            "Responses not stored: their per-user key's variants were full",
            self.variants_refused.clone(),
        );
        r.register(
            "variants_evicted",
            "Least recently hit variants evicted from a full shared key",
            self.variants_evicted.clone(),
        );
        r.register(
            "stored_bytes",
            "Bytes held, overhead included",
            self.stored_bytes.clone(),
        );
        r.register(
            "entries",
            "Keys held (each with its variants)",
            self.entries.clone(),
        );
        registry.register(
            "unpoll_upstream_requests_saved",
            "Requests answered without an upstream request",
            self.upstream_requests_saved.clone(),
        );
    }

    /// Count a request answered from the cache.
    pub fn saved(&self, counter: &Counter) {
        counter.inc();
        self.upstream_requests_saved.inc();
    }
}
