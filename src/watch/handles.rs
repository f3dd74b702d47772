//! What the watch arm and its watchers use of the instance.

use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

use super::Watches;
use crate::cache::Cache;
use crate::hub::Hub;
use crate::snapshot::Snapshot;

/// What the watch arm and its watchers use of the instance. Cheap to clone (every field is
/// shared); a watcher task owns one for its whole life.
#[derive(Clone)]
pub struct WatchHandles {
    /// The registry of watchers (purges reach it through the sink).
    pub watches: Arc<Watches>,
    /// The cache whose coalescing fill every refetch goes through, and that serves polls.
    pub(crate) cache: Arc<Cache>,
    /// Its cursor goes into `Unpoll-Cursor` of the entries a refetch fills; its
    /// `retry_after` into a 429.
    pub(crate) hub: Hub,
    /// The current config snapshot: a reload since a watcher started applies to its
    /// fetches.
    pub(crate) snapshots: Arc<ArcSwap<Snapshot>>,
    /// `unpoll_stream_connections`: a watch stream is one.
    pub(crate) stream_connections: Gauge,
    /// Ends every watcher and watch stream.
    pub(crate) shutdown: CancellationToken,
}
