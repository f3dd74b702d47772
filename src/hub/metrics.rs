//! Prometheus metrics of the hub. Created with the hub (so a hub works without a registry,
//! as in unit tests) and registered into the instance's registry at start-up.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels carrying one reason (`overflow`, `client_closed`, `evicted`, `per_ip`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The `as_str()` of the reason's enum.
    pub reason: &'static str,
}

/// The hub's metrics. Cloning shares the underlying counters.
#[derive(Clone, Default, Debug)]
pub struct HubMetrics {
    /// Subscriptions open now.
    pub subscribers: Gauge,
    /// Channels tracked now (with subscribers or history).
    pub channels: Gauge,
    /// Events kept in history now, all channels.
    pub history_events: Gauge,
    /// Bytes of encoded frames kept in history now.
    pub history_bytes: Gauge,
    /// Events published.
    pub published: Counter,
    /// Frames queued to subscribers (one per event per subscriber, replay included).
    pub delivered: Counter,
    /// Frames dropped from the queue of a subscriber disconnected for being too slow.
    pub dropped: Counter,
    /// Subscriptions ended, by reason (`overflow`, `client_closed`, `shutdown`).
    pub disconnects: Family<ReasonLabels, Counter>,
    /// `reset` events sent, by reason.
    pub resets: Family<ReasonLabels, Counter>,
    /// Subscriptions refused, by limit.
    pub rejected: Family<ReasonLabels, Counter>,
    /// Events that got no history because the hub was at `max_channels`.
    pub unstored: Counter,
    /// Stream, tap and source rules that did not apply to a request or notification (a
    /// template variable had no value, a body was too large), by rule and reason.
    pub skipped: Family<SkipLabels, Counter>,
}

/// Labels of `unpoll_rule_skipped`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkipLabels {
    /// `stream[0]`, `tap[2]`, ...
    pub rule: String,
    /// `missing_value`, `body_too_large`, `upstream_status`, ...
    pub reason: &'static str,
}

impl HubMetrics {
    /// Register (clones sharing the counters) into `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry;
        r.register(
            "unpoll_hub_subscribers",
            "Stream subscriptions open now",
            self.subscribers.clone(),
        );
        r.register(
            "unpoll_hub_channels",
            "Channels tracked now",
            self.channels.clone(),
        );
        r.register(
            "unpoll_hub_history_events",
            "Events kept in history for replay, all channels",
            self.history_events.clone(),
        );
        r.register(
            "unpoll_hub_history_bytes",
            "Bytes of encoded events kept in history",
            self.history_bytes.clone(),
        );
        r.register(
            "unpoll_hub_events_published",
            "Events published",
            self.published.clone(),
        );
        r.register(
            "unpoll_hub_events_delivered",
            "Events queued to subscribers, replay included",
            self.delivered.clone(),
        );
        r.register(
            "unpoll_hub_events_dropped",
            "Events dropped with the queue of a subscriber that was too slow",
            self.dropped.clone(),
        );
        r.register(
            "unpoll_hub_disconnects",
            "Subscriptions ended, by reason",
            self.disconnects.clone(),
        );
        r.register(
            "unpoll_hub_resets",
            "Reset events sent, by reason",
            self.resets.clone(),
        );
        r.register(
            "unpoll_hub_rejected",
            "Subscriptions refused by a limit, by limit",
            self.rejected.clone(),
        );
        r.register(
            "unpoll_hub_events_unstored",
            "Events kept out of history because the hub tracked max_channels channels",
            self.unstored.clone(),
        );
        r.register(
            "unpoll_rule_skipped",
            "Rules that did not apply (missing template value, body too large, ...)",
            self.skipped.clone(),
        );
    }

    /// Count a rule that did not apply.
    pub fn skip(&self, rule: &str, reason: &'static str) {
        let labels = SkipLabels {
            rule: rule.to_owned(),
            reason,
        };
        self.skipped.get_or_create(&labels).inc();
    }

    pub(crate) fn disconnect(&self, reason: super::CloseReason) {
        let reason = reason.as_str();
        self.disconnects
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub(crate) fn reset(&self, reason: &'static str, n: u64) {
        if n > 0 {
            self.resets
                .get_or_create(&ReasonLabels { reason })
                .inc_by(n);
        }
    }

    pub(crate) fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
    }
}
