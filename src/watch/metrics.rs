//! Watch metrics: how many keys are watched and by whom, why and how often the upstream
//! was asked, what changed, and how many polls the streams replaced.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// What made a watcher refetch its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The first subscriber of a key.
    Initial,
    /// The rule's interval passed with no other trigger.
    Interval,
    /// One of the key's tags was purged (a tap, a `[[notify]]` purge, `POST /purge`).
    Tag,
    /// A source lost events that may have concerned the key's tags (Postgres reconnect).
    Gap,
}

impl Trigger {
    /// Label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Initial => "initial",
            Trigger::Interval => "interval",
            Trigger::Tag => "tag",
            Trigger::Gap => "gap",
        }
    }
}

/// What a refetch found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// A new body: pushed to every subscriber.
    Changed,
    /// The body subscribers already have: nothing sent.
    Unchanged,
    /// 5xx, timeout, refused, too large: the last body stays, retried at the next trigger.
    Failed,
    /// 401/403/404: the key's streams end with `access_ended`.
    AccessEnded,
}

impl Found {
    /// Label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Found::Changed => "changed",
            Found::Unchanged => "unchanged",
            Found::Failed => "failed",
            Found::AccessEnded => "access_ended",
        }
    }
}

/// Labels of `unpoll_watch_fetches`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabels {
    /// [`Trigger::as_str`].
    pub trigger: &'static str,
}

/// Labels of `unpoll_watch_results`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// [`Found::as_str`].
    pub result: &'static str,
}

/// Counters and gauges of every watcher. Cloning shares them.
#[derive(Clone, Default, Debug)]
pub struct WatchMetrics {
    /// Keys watched now (one watcher each).
    pub keys: Gauge,
    /// Watch streams open now.
    pub subscribers: Gauge,
    /// Refetches by trigger (a fresh cache entry may answer one without the upstream).
    pub fetches: Family<TriggerLabels, Counter>,
    /// Refetch results.
    pub results: Family<ResultLabels, Counter>,
    /// Events sent to subscribers (one per subscriber per change).
    pub pushes: Counter,
    /// Polls the streams replaced: subscribers × time watched / interval, minus the
    /// refetches made. Also added to `unpoll_upstream_requests_saved`.
    pub polls_saved: Counter,
    /// Watch streams refused because `hub.max_watch_keys` keys are watched.
    pub rejected: Counter,
}

impl WatchMetrics {
    /// Register every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("unpoll_watch");
        r.register("keys", "Keys watched now", self.keys.clone());
        r.register(
            "subscribers",
            "Watch streams open now",
            self.subscribers.clone(),
        );
        r.register(
            "fetches",
            "Watcher refetches by trigger",
            self.fetches.clone(),
        );
        r.register("results", "Watcher refetch results", self.results.clone());
        r.register(
            "pushes",
            "Events sent to watch subscribers",
            self.pushes.clone(),
        );
        r.register(
            "polls_saved",
            "Polls replaced by watch streams, minus the refetches made",
            self.polls_saved.clone(),
        );
        r.register(
            "rejected",
            "Watch streams refused at hub.max_watch_keys",
            self.rejected.clone(),
        );
    }

    /// Count a refetch and what it found.
    pub fn fetched(&self, trigger: Trigger, found: Found) {
        let trigger = trigger.as_str();
        self.fetches.get_or_create(&TriggerLabels { trigger }).inc();
        let result = found.as_str();
        self.results.get_or_create(&ResultLabels { result }).inc();
    }

    /// The `watch` section of `/stats`.
    pub fn stats(&self) -> serde_json::Value {
        let fetches = |trigger| self.fetches.get_or_create(&TriggerLabels { trigger }).get();
        let results = |result| self.results.get_or_create(&ResultLabels { result }).get();
        serde_json::json!({
            "keys": self.keys.get(),
            "subscribers": self.subscribers.get(),
            "fetches": {
                "initial": fetches("initial"),
                "interval": fetches("interval"),
                "tag": fetches("tag"),
                "gap": fetches("gap"),
            },
            "changed": results("changed"),
            "unchanged": results("unchanged"),
            "failed": results("failed"),
            "access_ended": results("access_ended"),
            "pushes": self.pushes.get(),
            "polls_saved": self.polls_saved.get(),
            "rejected": self.rejected.get(),
        })
    }
}
