//! Postgres as an event source: `LISTEN`/`NOTIFY` (`[[notify]]` rules), an outbox table
//! that loses nothing, and the `sql-trigger` generator.
//!
//! - [`config`]: `[postgres]` and `[[notify]]`, validated with key paths.
//! - [`rules`]: payload or outbox row → event and tags (pure).
//! - [`listener`]: the one listener connection and its gap-detecting reconnect loop.
//! - [`outbox`]: in-order, at-least-once delivery of outbox rows (and why ids are in commit
//!   order).
//! - [`trigger`]: the SQL `unpoll sql-trigger` prints.
//! - [`metrics`]; reconnect delays come from [`crate::sources::backoff`].

pub(crate) mod config;
pub(crate) mod listener;
pub(crate) mod metrics;
pub(crate) mod outbox;
pub(crate) mod rules;
pub mod trigger;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub(crate) use config::PostgresConfig;
pub(crate) use metrics::PostgresMetrics;
pub(crate) use rules::NotifyRule;

use crate::sources::SourceHandles;

/// The readiness component name (see [`readiness::POSTGRES`](crate::admin::readiness::POSTGRES)).
pub(crate) const READINESS: &str = crate::admin::readiness::POSTGRES;

/// Why the listener connection failed or ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PostgresError {
    /// The server closed the connection (e.g. `pg_terminate_backend`, restart).
    #[error("the server closed the connection")]
    Closed,
    /// Connecting took longer than `connect_timeout`.
    #[error("no connection within {0:?}")]
    Timeout(Duration),
    /// Nothing arrived, not even the listener's own probe, for this long.
    #[error("nothing received for {0:?}, not even the probe: connection presumed dead")]
    Silent(Duration),
    /// Any other error from the driver.
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

/// Start the listener and one reader per outbox rule; all stop at shutdown. Until the
/// listener is connected `/readyz` reports `postgres` as not ready (from the instance's start on);
/// unpoll keeps serving and proxying meanwhile.
pub(crate) fn spawn(
    handles: SourceHandles,
    metrics: PostgresMetrics,
    config: PostgresConfig,
    rules: Vec<NotifyRule>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    let mut outbox_wakeups = HashMap::new();
    for (i, rule) in rules.iter().enumerate() {
        if let rules::RuleMode::Outbox { table } = &rule.mode {
            let wake = Arc::new(Notify::new());
            outbox_wakeups.insert(i, wake.clone());
            let reader = outbox::OutboxReader {
                shutdown: handles.shutdown.clone(),
                config: config.clone(),
                rule: rule.clone(),
                table: table.clone(),
                sink: handles.sink.clone(),
                metrics: metrics.clone(),
                wake,
            };
            tasks.push(tokio::spawn(reader.run()));
        }
    }
    let listener = listener::Listener {
        shutdown: handles.shutdown,
        readiness: handles.readiness,
        config,
        rules: rules.into(),
        sink: handles.sink,
        metrics,
        outbox_wakeups,
    };
    tasks.push(tokio::spawn(listener.run()));
    tasks
}
