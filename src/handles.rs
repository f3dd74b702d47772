//! The long-lived parts of one instance that request handlers use. The composition root
//! ([`App`](crate::App)) builds them once; a handler takes the [`Handles`] (or only the
//! parts it needs), never the whole `App`, so each handler can be driven by a unit test
//! with parts built in the test.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::cache::Cache;
use crate::hub::Hub;
use crate::metrics::ProxyMetrics;
use crate::sink::Sink;

/// Cheap to clone: every field shares one instance's part.
#[derive(Clone)]
pub struct Handles {
    /// Channels, history and subscribers. Lives as long as the instance: a reload keeps
    /// every open stream and the history.
    pub hub: Hub,
    /// The polling cache shared by all `[[cache]]` rules. Lives as long as the instance.
    pub cache: Arc<Cache>,
    /// Where taps and the publish API deliver: the hub and the cache above.
    pub sink: Arc<dyn Sink>,
    /// Metrics of the proxy core.
    pub metrics: ProxyMetrics,
    /// Cancelled once on SIGTERM/SIGINT (or by a test): every stream and upgraded
    /// connection watches it.
    pub shutdown: CancellationToken,
}
