//! [`ClusterSink`]: the [`Sink`] of an instance in a cluster. Publishers (taps, `/publish`,
//! sources) and the stream gate talk to the sink and never learn about Redis.

use std::any::Any;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::Cluster;
use crate::hub::{EventData, EventId};
use crate::sink::{HubSink, Sink};

/// Publishes and resets through the cluster (every instance delivers them, under the same
/// id); purges here at once and on the other instances through the cluster.
pub struct ClusterSink {
    cluster: Arc<Cluster>,
    /// This instance's hub and cache.
    local: HubSink,
}

impl ClusterSink {
    /// The sink of `cluster` over this instance's `local` hub and cache.
    pub fn new(cluster: Arc<Cluster>, local: HubSink) -> ClusterSink {
        ClusterSink { cluster, local }
    }
}

impl Sink for ClusterSink {
    /// Queued for Redis without waiting, in publish order: no id yet.
    fn publish(&self, channel: &str, event: Option<&str>, data: EventData) -> Option<EventId> {
        self.cluster.publish_nowait(channel, event, data);
        None
    }

    /// Relayed: every instance resets its subscribers when the relay comes back, so none
    /// is counted here.
    fn reset(&self, glob: &str, reason: &str) -> usize {
        self.cluster.reset(glob, reason);
        0
    }

    fn purge(&self, tags: &[String]) {
        self.local.purge(tags);
        self.cluster.purge_tags(tags);
    }

    fn purge_glob(&self, glob: &str) {
        self.local.purge_glob(glob);
        self.cluster.purge_glob(glob);
    }

    fn publish_row(
        &self,
        outbox: &str,
        row: i64,
        channel: &str,
        event: Option<&str>,
        data: EventData,
    ) -> Option<EventId> {
        self.cluster
            .publish_nowait_once(Some((outbox, row)), channel, event, data);
        None
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.cluster.flush())
    }

    fn publish_confirmed<'a>(
        &'a self,
        channel: &'a str,
        event: Option<&'a str>,
        data: EventData,
    ) -> BoxFuture<'a, Option<EventId>> {
        Box::pin(async move { Some(self.cluster.publish(channel, event, &data).await) })
    }

    fn follow<'a>(
        &'a self,
        channels: &'a [String],
        last_event_id: Option<&'a str>,
    ) -> BoxFuture<'a, Option<Box<dyn Any + Send + Sync>>> {
        Box::pin(async move {
            let hold = self.cluster.follow(channels, last_event_id).await;
            Some(Box::new(hold) as Box<dyn Any + Send + Sync>)
        })
    }

    fn stats(&self) -> Option<serde_json::Value> {
        Some(self.cluster.stats())
    }
}
