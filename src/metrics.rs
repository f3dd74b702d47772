//! Prometheus metrics of the proxy core, in a registry owned by the instance
//! rather than a process-global recorder: tests start several servers in one process and
//! each must count only its own traffic.
//!
//! Every subsystem registers its own metrics struct into the same registry at start-up
//! (`Cache`, `Hub`, sources); the admin listener renders it.

use std::borrow::Cow;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of `unpoll_http_requests`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `1xx` … `5xx`.
    pub class: &'static str,
    /// `proxy` for plain forwarding, else the rule (`cache[0]`, `stream[1]`).
    pub rule: Cow<'static, str>,
}

/// Labels of `unpoll_upstream_errors`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// What failed: `connect`, `timeout`, `protocol`.
    pub kind: &'static str,
}

/// Labels of `unpoll_config_reloads`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Labels of `unpoll_tls_handshakes`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// `h2` or `http1` (the protocol ALPN chose), `failed` or `timeout`.
    pub result: &'static str,
}

/// The proxy core's metrics.
#[derive(Clone)]
pub struct ProxyMetrics {
    /// Responses by status class and rule.
    pub requests: Family<RequestLabels, Counter>,
    /// Time from sending a request upstream to receiving its response head.
    pub upstream_duration: Histogram,
    /// Upstream responses received: the count of `upstream_duration`, which prometheus-client
    /// does not let us read. Not registered (it would repeat the histogram's `_count`); the
    /// dashboard reads it.
    pub upstream_responses: Counter,
    /// Upstream failures by kind.
    pub upstream_errors: Family<ErrorLabels, Counter>,
    /// Client connections open now (both listeners).
    pub open_connections: Gauge,
    /// Connections to the upstream open now, idle and busy.
    pub upstream_connections: Gauge,
    /// Time requests waited for an upstream connection at `proxy.max_upstream_connections`
    /// (observed only for requests that had to wait; its count is the number of waits).
    pub upstream_connection_wait: Histogram,
    /// Config reloads by result.
    pub reloads: Family<ReloadLabels, Counter>,
    /// SSE streams open now, by `[[stream]]` rule.
    pub stream_subscribers: Family<RuleLabels, Gauge>,
    /// SSE responses open now, single or multiplexed: a `/_unpoll/multi` stream carrying ten
    /// subscriptions is one (and ten in `stream_subscribers`).
    pub stream_connections: Gauge,
    /// TLS handshakes on the main listener by result: each successful one is a client
    /// connection, so with h2 a browser's tabs of one origin count once.
    pub tls_handshakes: Family<HandshakeLabels, Counter>,
}

/// Labels of per-rule gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    /// `stream[0]`, ...
    pub rule: String,
}

impl ProxyMetrics {
    /// Create and register in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = ProxyMetrics {
            requests: Family::default(),
            // 0.5 ms … ~16 s
            upstream_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            upstream_responses: Counter::default(),
            upstream_errors: Family::default(),
            open_connections: Gauge::default(),
            upstream_connections: Gauge::default(),
            // 1 ms … ~16 s
            upstream_connection_wait: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            reloads: Family::default(),
            stream_subscribers: Family::default(),
            stream_connections: Gauge::default(),
            tls_handshakes: Family::default(),
        };
        registry.register(
            "unpoll_http_requests",
            "Responses sent to clients, by status class and rule",
            m.requests.clone(),
        );
        registry.register(
            "unpoll_upstream_duration_seconds",
            "Time until the upstream's response head arrived",
            m.upstream_duration.clone(),
        );
        registry.register(
            "unpoll_upstream_errors",
            "Upstream requests that failed, by kind",
            m.upstream_errors.clone(),
        );
        registry.register(
            "unpoll_open_connections",
            "Client connections open now",
            m.open_connections.clone(),
        );
        registry.register(
            "unpoll_upstream_connections",
            "Connections to the upstream open now, idle and busy",
            m.upstream_connections.clone(),
        );
        registry.register(
            "unpoll_upstream_connection_wait_seconds",
            "Time requests waited for an upstream connection at max_upstream_connections",
            m.upstream_connection_wait.clone(),
        );
        registry.register(
            "unpoll_config_reloads",
            "Configuration reloads, by result",
            m.reloads.clone(),
        );
        registry.register(
            "unpoll_stream_subscribers",
            "SSE streams open now, by stream rule",
            m.stream_subscribers.clone(),
        );
        registry.register(
            "unpoll_stream_connections",
            "SSE responses open now (a multiplexed stream counts once)",
            m.stream_connections.clone(),
        );
        registry.register(
            "unpoll_tls_handshakes",
            "TLS handshakes on the main listener, by result (h2, http1, failed, timeout)",
            m.tls_handshakes.clone(),
        );
        m
    }

    /// The open-streams gauge of stream rule `rule`.
    pub fn stream_subscribers(&self, rule: &str) -> Gauge {
        self.stream_subscribers.get_or_create_owned(&RuleLabels {
            rule: rule.to_owned(),
        })
    }

    /// The per-class counters of one rule, resolved once so the request path does no map
    /// look-up or allocation.
    pub fn rule_counters(&self, rule: Cow<'static, str>) -> RuleCounters {
        const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        RuleCounters(CLASSES.map(|class| {
            self.requests.get_or_create_owned(&RequestLabels {
                class,
                rule: rule.clone(),
            })
        }))
    }

    /// Count one upstream error.
    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&ErrorLabels { kind })
            .inc();
    }
}

/// Response counters of one rule by status class.
#[derive(Clone, Debug)]
pub struct RuleCounters([Counter; 5]);

impl RuleCounters {
    /// Count a response with `status`.
    pub fn count(&self, status: u16) {
        let i = usize::from(status / 100).clamp(1, 5) - 1;
        self.0[i].inc();
    }

    /// Responses counted, all classes.
    pub fn total(&self) -> u64 {
        self.0.iter().map(Counter::get).sum()
    }
}
