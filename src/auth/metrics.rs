//! Metrics of subscription auth and limits, registered into the app's registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::error::Limit;

/// Labels of `unpoll_auth_decisions`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `none`, `upstream` or `jwt`.
    pub mode: &'static str,
    /// `allowed` or an [`AuthError::as_str`](super::AuthError::as_str) label.
    pub result: &'static str,
}

/// Labels of `unpoll_stream_limited`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// Which limit: [`Limit::as_str`].
    pub limit: &'static str,
}

/// Labels of `unpoll_stream_access_ended`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndedLabels {
    /// `expired` or `revoked`.
    pub reason: &'static str,
}

/// Auth and limit metrics. Cheap to clone: clones share the counters.
#[derive(Clone, Debug, Default)]
pub struct AuthMetrics {
    /// Subscribe decisions by auth mode and result.
    pub decisions: Family<DecisionLabels, Counter>,
    /// Requests actually sent to the upstream's auth path (after cache and coalescing):
    /// compared with `decisions{mode="upstream"}` it shows what the cache saves.
    pub upstream_checks: Counter,
    /// Subscriptions refused by a per-rule limit.
    pub limited: Family<LimitLabels, Counter>,
    /// Open streams closed because access ended (token expired, access revoked).
    pub ended: Family<EndedLabels, Counter>,
}

impl AuthMetrics {
    /// Create and register in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = AuthMetrics::default();
        registry.register(
            "unpoll_auth_decisions",
            "Stream subscribe decisions, by auth mode and result",
            m.decisions.clone(),
        );
        registry.register(
            "unpoll_auth_upstream_checks",
            "Auth requests sent to the upstream (after caching and coalescing)",
            m.upstream_checks.clone(),
        );
        registry.register(
            "unpoll_stream_limited",
            "Stream subscriptions refused with 429, by limit",
            m.limited.clone(),
        );
        registry.register(
            "unpoll_stream_access_ended",
            "Open streams closed because access ended, by reason",
            m.ended.clone(),
        );
        m
    }

    /// Count one decision.
    pub fn decision(&self, mode: &'static str, result: &'static str) {
        self.decisions
            .get_or_create(&DecisionLabels { mode, result })
            .inc();
    }

    /// Count one refusal by `limit`.
    pub fn limited(&self, limit: Limit) {
        self.limited
            .get_or_create(&LimitLabels {
                limit: limit.as_str(),
            })
            .inc();
    }

    /// Refusals by `limit` so far.
    pub fn limited_count(&self, limit: Limit) -> u64 {
        self.limited
            .get_or_create(&LimitLabels {
                limit: limit.as_str(),
            })
            .get()
    }
}
