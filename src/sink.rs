//! Where events are delivered: the [`Sink`] trait every publisher talks to (sources, taps,
//! the publish API), and [`HubSink`], its implementation over this instance's hub and
//! cache.
//!
//! Keeping that coupling in one small trait lets publishers be tested against a recording
//! sink and wired to the hub and the cache in one place. It sits below the sources, taps
//! and admin endpoints that use it, so none of them depends on another.

use std::sync::Arc;

use crate::cache::Cache;
use crate::hub::{EventData, EventId, Hub};

/// Where a publisher delivers what it learns.
pub trait Sink: Send + Sync + 'static {
    /// Publish one event on `channel`; its id, when the sink assigns ids (a hub does).
    fn publish(&self, channel: &str, event: Option<&str>, data: EventData) -> Option<EventId>;
    /// Send `reset` (with `reason`) to every subscriber of a channel matching `glob`
    /// (`reservas:*`); returns how many subscribers were told.
    fn reset(&self, glob: &str, reason: &str) -> usize;
    /// Purge cache entries carrying any of `tags` (including fills of them in flight).
    fn purge(&self, tags: &[String]);
    /// Purge cache entries with a tag matching `glob` (`*` wildcards): what a source does
    /// when it lost events and cannot tell which tags they concerned.
    fn purge_glob(&self, glob: &str);
}

/// The sink of a running instance: its hub and its cache.
pub struct HubSink {
    hub: Hub,
    cache: Arc<Cache>,
}

impl HubSink {
    /// The sink that publishes on `hub` and purges `cache`.
    pub fn new(hub: Hub, cache: Arc<Cache>) -> HubSink {
        HubSink { hub, cache }
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
    }

    fn purge_glob(&self, glob: &str) {
        self.cache.purge_glob(glob);
    }
}
