//! Event sources: what publishes events onto channels besides taps and the publish API.
//!
//! - [`postgres`]: `LISTEN`/`NOTIFY` and an outbox table (`[[notify]]` rules).
//! - [`mqtt`]: messages of an MQTT broker (`[[topic]]` rules).
//! - [`backoff`]: the reconnect delays both use; [`mapping`]: what their rules share.
//!
//! A source talks to the rest of unpoll only through a [`Sink`] (defined in
//! [`crate::sink`], below every publisher): publish an event, tell a channel's subscribers
//! that events were lost, purge cache tags. It reports readiness and watches shutdown
//! through its [`SourceHandles`].

pub(crate) mod backoff;
pub(crate) mod mapping;
pub(crate) mod mqtt;
pub mod postgres;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use crate::sink::Sink;

use crate::admin::readiness::Readiness;

/// What a source task gets of the instance.
#[derive(Clone)]
pub struct SourceHandles {
    /// Cancelled once at shutdown: the source disconnects and its task ends.
    pub shutdown: CancellationToken,
    /// Where the source reports itself not ready while it has no connection.
    pub readiness: Arc<Readiness>,
    /// Where events, resets and purges go (the hub and the cache, or a test's recorder).
    pub sink: Arc<dyn Sink>,
}
