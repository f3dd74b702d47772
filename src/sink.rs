//! Where events are delivered: the [`Sink`] trait every publisher talks to (sources, taps,
//! the publish API), and [`HubSink`], its implementation over this instance's hub, cache
//! and watchers.
//!
//! Keeping that coupling in one small trait lets publishers be tested against a recording
//! sink and wired to the hub and the cache in one place. It sits below the sources, taps
//! and admin endpoints that use it, so none of them depends on another.

use std::any::Any;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::cache::Cache;
use crate::hub::{EventData, EventId, Hub};
use crate::watch::Watches;

/// Where a publisher delivers what it learns.
pub trait Sink: Send + Sync + 'static {
    /// Publish one event on `channel`; its id, when the sink assigns ids (a hub does).
    fn publish(&self, channel: &str, event: Option<&str>, data: EventData) -> Option<EventId>;
    /// Send `reset` (with `reason`) to every subscriber of a channel matching `glob`
    /// (`reservas:*`); returns how many subscribers were told.
    fn reset(&self, glob: &str, reason: &str) -> usize;
    /// Purge cache entries carrying any of `tags` (including fills of them in flight), and
    /// refetch the watched keys carrying them.
    fn purge(&self, tags: &[String]);
    /// Purge cache entries with a tag matching `glob` (`*` wildcards): what a source does
    /// when it lost events and cannot tell which tags they concerned. Watched keys with
    /// such a tag are refetched.
    fn purge_glob(&self, glob: &str);

    /// [`Sink::publish`], waiting for the id the event gets where ids are assigned
    /// elsewhere (a cluster numbers events in Redis): what `POST /publish` answers with.
    fn publish_confirmed<'a>(
        &'a self,
        channel: &'a str,
        event: Option<&'a str>,
        data: EventData,
    ) -> BoxFuture<'a, Option<EventId>> {
        Box::pin(std::future::ready(self.publish(channel, event, data)))
    }

    /// Publish row `row` of an outbox read by one consumer (`outbox` names both): where
    /// several instances may read that outbox in turn (a cluster, under a lease), a row
    /// that one of them already published is skipped, so a new reader that resumes from a
    /// saved position older than what its predecessor published publishes nothing twice.
    /// [`Sink::publish`] by default: one process never re-reads a row in a run.
    fn publish_row(
        &self,
        _outbox: &str,
        _row: i64,
        channel: &str,
        event: Option<&str>,
        data: EventData,
    ) -> Option<EventId> {
        self.publish(channel, event, data)
    }

    /// Wait until everything published before has reached its destination (a cluster
    /// queues events for Redis): an outbox reader saves its position only after it, so a
    /// crash never loses a queued row. At once by default.
    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    /// A subscriber is about to subscribe to `channels` (resuming after `last_event_id`):
    /// where events reach the hub from elsewhere (a cluster), start receiving them. The
    /// subscription keeps what this returns as long as it lives. Nothing by default.
    fn follow<'a>(
        &'a self,
        _channels: &'a [String],
        _last_event_id: Option<&'a str>,
    ) -> BoxFuture<'a, Option<Box<dyn Any + Send + Sync>>> {
        Box::pin(std::future::ready(None))
    }

    /// What `/stats` shows of the sink beyond the hub and the cache (a cluster: its
    /// membership); nothing by default.
    fn stats(&self) -> Option<serde_json::Value> {
        None
    }
}

/// The sink of a running instance: its hub, its cache and its watchers. Every purge (taps,
/// `POST /purge`, `/publish` "purge", `[[notify]]` purges, a source's gap) comes through
/// here, so a watched key is refetched whenever its cache entry is purged.
#[derive(Clone)]
pub struct HubSink {
    hub: Hub,
    cache: Arc<Cache>,
    watches: Arc<Watches>,
}

impl HubSink {
    /// The sink that publishes on `hub`, purges `cache` and wakes the `watches` concerned.
    pub fn new(hub: Hub, cache: Arc<Cache>, watches: Arc<Watches>) -> HubSink {
        HubSink {
            hub,
            cache,
            watches,
        }
    }
}

impl Sink for HubSink {
    fn publish(&self, channel: &str, event: Option<&str>, data: EventData) -> Option<EventId> {
        Some(self.hub.publish(channel, event, data))
    }

    fn reset(&self, glob: &str, reason: &str) -> usize {
        self.hub.reset_matching(glob, reason)
    }

    fn purge(&self, tags: &[String]) {
        self.cache.purge(tags);
        self.watches.purged(tags);
    }

    fn purge_glob(&self, glob: &str) {
        self.cache.purge_glob(glob);
        self.watches.gap(glob);
    }
}

/// A sink for unit tests that records every delivery, in order, and passes it on to a real
/// [`HubSink`], so a test can check both what a publisher asked for and what the hub and
/// the cache then hold.
#[cfg(test)]
pub(crate) mod recording {
    use std::sync::{Arc, Mutex, PoisonError};

    use super::{HubSink, Sink};
    use crate::cache::{Cache, CacheMetrics};
    use crate::hub::{EventData, EventId, Hub, HubConfig};
    use crate::watch::{WatchMetrics, Watches};

    /// One delivery, as the publisher made it.
    #[derive(Debug, Clone, PartialEq)]
    pub enum Delivery {
        /// `publish(channel, event, data)`.
        Publish(String, Option<String>, EventData),
        /// `reset(glob, _)`.
        Reset(String),
        /// `purge(tags)`.
        Purge(Vec<String>),
        /// `purge_glob(glob)`.
        PurgeGlob(String),
    }

    /// Records, then delivers to its own hub and cache.
    pub struct Recorder {
        /// Where events go.
        pub hub: Hub,
        /// What purges purge.
        pub cache: Arc<Cache>,
        /// The watchers purges wake.
        pub watches: Arc<Watches>,
        inner: HubSink,
        log: Mutex<Vec<Delivery>>,
    }

    impl Recorder {
        /// A recorder over a fresh hub, a 1 MiB cache and no watcher yet.
        pub fn new() -> Arc<Recorder> {
            let hub = Hub::new(HubConfig::default());
            let cache = Arc::new(Cache::new(1 << 20, CacheMetrics::default()));
            let max_keys = HubConfig::default().max_watch_keys;
            let watches = Arc::new(Watches::new(max_keys, WatchMetrics::default()));
            Arc::new(Recorder {
                inner: HubSink::new(hub.clone(), cache.clone(), watches.clone()),
                hub,
                cache,
                watches,
                log: Mutex::default(),
            })
        }

        /// Every delivery so far.
        pub fn log(&self) -> Vec<Delivery> {
            self.log
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        }

        fn record(&self, delivery: Delivery) {
            self.log
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(delivery);
        }
    }

    impl Sink for Recorder {
        fn publish(&self, channel: &str, event: Option<&str>, data: EventData) -> Option<EventId> {
            let owned = (channel.to_owned(), event.map(str::to_owned), data.clone());
            self.record(Delivery::Publish(owned.0, owned.1, owned.2));
            self.inner.publish(channel, event, data)
        }

        fn reset(&self, glob: &str, reason: &str) -> usize {
            self.record(Delivery::Reset(glob.to_owned()));
            self.inner.reset(glob, reason)
        }

        fn purge(&self, tags: &[String]) {
            self.record(Delivery::Purge(tags.to_vec()));
            self.inner.purge(tags);
        }

        fn purge_glob(&self, glob: &str) {
            self.record(Delivery::PurgeGlob(glob.to_owned()));
            self.inner.purge_glob(glob);
        }
    }
}
