//! Metrics of the Postgres source.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels naming a `[[notify]]` rule.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    /// `notify[0]`.
    pub rule: String,
}

/// Labels of notifications that were dropped.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// `notify[0]`.
    pub rule: String,
    /// `malformed`, `missing_value`, `empty_channel`.
    pub reason: &'static str,
}

/// Metrics of the Postgres source (one listener connection, its rules and outboxes).
#[derive(Clone, Default)]
pub struct PostgresMetrics {
    /// 1 while the listener connection is up and LISTENing.
    pub connected: Gauge,
    /// Reconnections after a lost connection (each one is a possible gap).
    pub reconnects: Counter,
    /// Failed connection attempts.
    pub connect_failures: Counter,
    /// Notifications received, by Postgres channel.
    pub notifications: Family<ListenLabels, Counter>,
    /// Notifications or rows not published, by rule and reason.
    pub dropped: Family<DropLabels, Counter>,
    /// Payloads that were not a JSON object (also in `dropped`).
    pub malformed: Counter,
    /// Events published, by rule.
    pub published: Family<RuleLabels, Counter>,
    /// `reset` events sent to subscribers after a gap.
    pub resets: Counter,
    /// Outbox rows committed but not yet delivered, by rule (measured on each poll).
    pub outbox_lag_rows: Family<RuleLabels, Gauge>,
    /// Age in seconds of the oldest undelivered outbox row, by rule.
    pub outbox_lag_seconds: Family<RuleLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Outbox rows deleted by retention, by rule.
    pub outbox_deleted: Family<RuleLabels, Counter>,
    /// Failed outbox passes (query errors, missing table), by rule; each is retried with
    /// backoff.
    pub outbox_errors: Family<RuleLabels, Counter>,
}

/// Labels naming a Postgres NOTIFY channel.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenLabels {
    /// The Postgres channel.
    pub listen: String,
}

impl PostgresMetrics {
    /// Create and register in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = PostgresMetrics::default();
        let r = registry.sub_registry_with_prefix("unpoll_postgres");
        r.register(
            "connected",
            "1 while the NOTIFY listener connection is up",
            m.connected.clone(),
        );
        r.register(
            "reconnects",
            "Listener reconnections after a lost connection",
            m.reconnects.clone(),
        );
        r.register(
            "connect_failures",
            "Failed listener connection attempts",
            m.connect_failures.clone(),
        );
        r.register(
            "notifications",
            "Notifications received, by Postgres channel",
            m.notifications.clone(),
        );
        r.register(
            "dropped",
            "Notifications or outbox rows not published, by rule and reason",
            m.dropped.clone(),
        );
        r.register(
            "malformed_payloads",
            "NOTIFY payloads that were not a JSON object",
            m.malformed.clone(),
        );
        r.register(
            "published",
            "Events published, by rule",
            m.published.clone(),
        );
        r.register(
            "resets",
            "Reset events sent to subscribers after the listener lost notifications",
            m.resets.clone(),
        );
        r.register(
            "outbox_lag_rows",
            "Outbox rows committed but not yet delivered",
            m.outbox_lag_rows.clone(),
        );
        r.register(
            "outbox_lag_seconds",
            "Age of the oldest undelivered outbox row",
            m.outbox_lag_seconds.clone(),
        );
        r.register(
            "outbox_deleted",
            "Delivered outbox rows deleted by retention",
            m.outbox_deleted.clone(),
        );
        r.register(
            "outbox_errors",
            "Failed outbox reads, retried with backoff",
            m.outbox_errors.clone(),
        );
        m
    }

    /// Count a notification or row that was not published.
    pub fn drop(&self, rule: &str, reason: &'static str) {
        self.dropped
            .get_or_create(&DropLabels {
                rule: rule.to_string(),
                reason,
            })
            .inc();
    }
}
