//! Metrics of the MQTT source.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels naming a `[[topic]]` rule.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    /// `topic[0]`.
    pub rule: String,
}

/// Labels naming the subscription filter a message came through. Filters come from the
/// config, never from the messages' topics, so the label set stays bounded.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    /// `devices/+/position`, or `""` for a message no rule matches (e.g. just after a
    /// reload unsubscribed it).
    pub topic: String,
}

/// Labels of messages that were not published.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// `topic[0]`.
    pub rule: String,
    /// `malformed`, `missing_value`, `empty_channel`.
    pub reason: &'static str,
}

/// Metrics of the MQTT source (one broker connection and its rules).
#[derive(Clone, Default)]
pub struct MqttMetrics {
    /// 1 while connected to the broker.
    pub connected: Gauge,
    /// Reconnections after a lost connection.
    pub reconnects: Counter,
    /// Failed connection attempts.
    pub connect_failures: Counter,
    /// Messages received, by subscription filter.
    pub messages: Family<TopicLabels, Counter>,
    /// Messages not published, by rule and reason.
    pub dropped: Family<DropLabels, Counter>,
    /// Messages whose payload a rule could not read (also in `dropped`).
    pub malformed: Counter,
    /// Events published, by rule.
    pub published: Family<RuleLabels, Counter>,
    /// `reset` events sent to subscribers after the broker lost unpoll's session.
    pub resets: Counter,
    /// Subscriptions the broker refused (SUBACK failure).
    pub subscribe_failures: Counter,
    /// SUBSCRIBE requests the broker acknowledged (after a connect or a reload).
    pub subscribes: Counter,
}

impl MqttMetrics {
    /// Create and register in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = MqttMetrics::default();
        let r = registry.sub_registry_with_prefix("unpoll_mqtt");
        r.register(
            "connected",
            "1 while the MQTT connection is up",
            m.connected.clone(),
        );
        r.register(
            "reconnects",
            "Reconnections to the broker after a lost connection",
            m.reconnects.clone(),
        );
        r.register(
            "connect_failures",
            "Failed connection attempts to the broker",
            m.connect_failures.clone(),
        );
        r.register(
            "messages",
            "Messages received, by subscription filter",
            m.messages.clone(),
        );
        r.register(
            "dropped",
            "Messages not published, by rule and reason",
            m.dropped.clone(),
        );
        r.register(
            "malformed_payloads",
            "Messages whose payload a rule could not read (not JSON, not an object, not text)",
            m.malformed.clone(),
        );
        r.register(
            "published",
            "Events published, by rule",
            m.published.clone(),
        );
        r.register(
            "resets",
            "Reset events sent to subscribers after messages may have been lost",
            m.resets.clone(),
        );
        r.register(
            "subscribe_failures",
            "Subscriptions the broker refused",
            m.subscribe_failures.clone(),
        );
        r.register(
            "subscribes",
            "SUBSCRIBE requests the broker acknowledged",
            m.subscribes.clone(),
        );
        m
    }

    /// Count a message a rule did not publish.
    pub fn drop(&self, rule: &str, reason: &'static str) {
        self.dropped
            .get_or_create(&DropLabels {
                rule: rule.to_string(),
                reason,
            })
            .inc();
    }
}
