//! MQTT as an event source: `[[topic]]` rules turn messages of a broker into events.
//!
//! - [`config`]: `[mqtt]` and `[[topic]]`, validated with key paths.
//! - [`rules`]: topic patterns, their subscription filters, message → event and tags (pure).
//! - [`listener`]: the one broker connection (persistent session, QoS 1), its reconnect
//!   loop with backoff, the `reset` when the broker lost messages, and rule reloads.
//! - [`metrics`].

pub mod config;
pub mod listener;
pub mod metrics;
pub mod rules;

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::MqttConfig;
pub use metrics::MqttMetrics;
pub use rules::TopicRule;

use crate::sources::SourceHandles;

/// The readiness component name (see [`readiness::MQTT`](crate::admin::readiness::MQTT)).
pub const READINESS: &str = crate::admin::readiness::MQTT;

/// Start the broker connection; it stops at shutdown. `rules` carries the `[[topic]]` rules
/// and every reload of them. Until connected `/readyz` reports `mqtt` as not ready (from
/// the instance's start on); unpoll keeps serving and proxying meanwhile.
pub fn spawn(
    handles: SourceHandles,
    metrics: MqttMetrics,
    config: MqttConfig,
    rules: watch::Receiver<Arc<[TopicRule]>>,
) -> JoinHandle<()> {
    let listener = listener::Listener {
        shutdown: handles.shutdown,
        readiness: handles.readiness,
        metrics,
        config,
        rules,
        sink: handles.sink,
    };
    tokio::spawn(listener.run())
}
