//! The long-lived parts of one instance that request handlers use. The composition root
//! ([`app`](crate::app)) builds them once; a handler takes the [`Handles`] (or only the
//! parts it needs), never the whole instance, so each handler can be driven by a unit test
//! with parts built in the test.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::cache::Cache;
use crate::hub::Hub;
use crate::metrics::ProxyMetrics;
use crate::sink::Sink;
use crate::watch::WatchHandles;

/// Cheap to clone: every field shares one instance's part.
#[derive(Clone)]
pub struct Handles {
    /// Channels, history and subscribers. Lives as long as the instance: a reload keeps
    /// every open stream and the history (its `[hub]` settings apply at start only).
    pub hub: Hub,
    /// The polling cache shared by all `[[cache]]` rules. Lives as long as the instance
    /// (its `cache_size` applies at start only).
    pub cache: Arc<Cache>,
    /// Where taps and the publish API deliver: the hub and the cache above.
    pub(crate) sink: Arc<dyn Sink>,
    /// Metrics of the proxy core.
    pub metrics: ProxyMetrics,
    /// Cancelled once on SIGTERM/SIGINT (or by a test): every stream and upgraded
    /// connection watches it.
    pub shutdown: CancellationToken,
    /// What `[[watch]]` rules use: the watchers (purged through the sink) and the parts
    /// above they refetch and stream with.
    pub watch: WatchHandles,
}

/// A whole set of handles for unit tests, built without a server.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use arc_swap::ArcSwap;
    use prometheus_client::registry::Registry;
    use tokio_util::sync::CancellationToken;

    use super::Handles;
    use crate::auth::AuthMetrics;
    use crate::metrics::ProxyMetrics;
    use crate::sink::recording::Recorder;
    use crate::snapshot::Snapshot;
    use crate::watch::WatchHandles;

    /// Handles whose sink is a [`Recorder`] (its hub and cache are the handles' own), and
    /// the snapshot of a config made of `rules`.
    pub fn instance(rules: &str) -> (Handles, Arc<Recorder>, Arc<Snapshot>) {
        let mut registry = Registry::default();
        let metrics = ProxyMetrics::register(&mut registry);
        let auth_metrics = AuthMetrics::register(&mut registry);
        let config = crate::config::parse_rules(rules).expect("valid rules");
        let snapshot = Arc::new(Snapshot::build(config, &metrics, &auth_metrics, None));
        let recorder = Recorder::new();
        let shutdown = CancellationToken::new();
        let watch = WatchHandles {
            watches: recorder.watches.clone(),
            cache: recorder.cache.clone(),
            hub: recorder.hub.clone(),
            snapshots: Arc::new(ArcSwap::new(snapshot.clone())),
            stream_connections: metrics.stream_connections.clone(),
            shutdown: shutdown.clone(),
        };
        let handles = Handles {
            hub: recorder.hub.clone(),
            cache: recorder.cache.clone(),
            sink: recorder.clone(),
            metrics,
            shutdown,
            watch,
        };
        (handles, recorder, snapshot)
    }
}
