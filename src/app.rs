//! The running application: the current config snapshot (swapped atomically on reload), the
//! metrics registry, readiness and the shutdown signal. Every subsystem hangs off [`App`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthMetrics, Authorizer, JwtAuth};
use crate::cache::Cache;
use crate::cluster::Cluster;
use crate::config::{Config, ConfigErrors};
use crate::hub::{EventData, EventId, Hub};
use crate::metrics::{ProxyMetrics, ReloadLabels};
use crate::proxy::routes::Routes;
use crate::proxy::upstream::UpstreamClient;
use crate::sources::mqtt::{MqttMetrics, TopicRule};
use crate::sources::postgres::PostgresMetrics;

/// Everything that a config reload replaces at once. A request loads one snapshot and keeps
/// it to the end, so a reload never mixes old and new rules within one request.
pub struct Snapshot {
    /// The validated config.
    pub config: Config,
    /// Compiled rules.
    pub routes: Routes,
    /// Pooled client to the upstream.
    pub upstream: UpstreamClient,
    /// The `[jwt]` verifier shared by every `auth = "jwt"` rule, if configured.
    pub jwt: Option<Arc<JwtAuth>>,
    /// The gate of `/_unpoll/sse`, when `[generic_stream] enabled` (always JWT).
    pub generic_stream: Option<Authorizer>,
}

/// The shared state of one unpoll instance.
pub struct App {
    /// Current config snapshot; swapped whole by [`App::reload`], read lock-free per request.
    snapshot: ArcSwap<Snapshot>,
    /// All metrics of this instance (not a global: tests run several instances).
    registry: Registry,
    /// Metrics of the proxy core.
    pub metrics: ProxyMetrics,
    /// Metrics of the Postgres source (registered even when unused, so dashboards see
    /// zeros rather than gaps).
    pub postgres: PostgresMetrics,
    /// Metrics of the MQTT source (registered even when unused).
    pub mqtt: MqttMetrics,
    /// The `[[topic]]` rules, for the MQTT source: [`App::reload`] sends new ones, the
    /// source subscribes and unsubscribes the difference.
    pub topic_rules: tokio::sync::watch::Sender<Arc<[TopicRule]>>,
    /// Channels, history and subscribers. Lives as long as the instance: a reload keeps
    /// every open stream and the history (its `[hub]` settings apply at start only).
    pub hub: Hub,
    /// The polling cache shared by all `[[cache]]` rules. Lives as long as the instance
    /// (its `cache_size` applies at start only).
    pub cache: Cache,
    /// Metrics of subscribe auth and limits.
    pub auth_metrics: AuthMetrics,
    /// Membership of a cluster of instances sharing Redis (`[cluster]`), if configured.
    /// Read at start only.
    pub cluster: Option<Arc<Cluster>>,
    /// Not-ready reasons by component; `/readyz` is 200 only when empty.
    readiness: Mutex<BTreeMap<&'static str, String>>,
    /// Cancelled once on SIGTERM/SIGINT (or by a test): every long-lived loop and stream
    /// watches it.
    pub shutdown: CancellationToken,
    /// Process start, for `/stats`.
    pub started: Instant,
}

impl App {
    /// Build the application for `config`; `shutdown` ends it.
    pub fn new(config: Config, shutdown: CancellationToken) -> Arc<App> {
        let mut registry = Registry::default();
        let metrics = ProxyMetrics::register(&mut registry);
        let postgres = PostgresMetrics::register(&mut registry);
        crate::logging::register_metrics(&mut registry);
        let mqtt = MqttMetrics::register(&mut registry);
        let (topic_rules, _) = tokio::sync::watch::channel(Arc::from(config.topics.clone()));
        let mut readiness = BTreeMap::new();
        if config.mqtt.is_some() {
            readiness.insert(
                crate::sources::mqtt::READINESS,
                "starting: not connected yet".to_string(),
            );
        }
        if config.postgres.is_some() && !config.notify.is_empty() {
            // Not ready from the first instant, before the source's task has even run.
            readiness.insert(
                crate::sources::postgres::READINESS,
                "starting: not connected yet".to_string(),
            );
        }
        let hub = Hub::new(config.hub.clone());
        hub.metrics().register(&mut registry);
        let cluster = config.cluster.clone().map(|c| Cluster::new(c, hub.clone()));
        let cache = Cache::new(config.cache_size, &mut registry);
        let auth_metrics = AuthMetrics::register(&mut registry);
        let snapshot = Snapshot::build(config, &metrics, &auth_metrics);
        Arc::new(App {
            cache,
            snapshot: ArcSwap::from_pointee(snapshot),
            registry,
            metrics,
            postgres,
            mqtt,
            topic_rules,
            hub,
            readiness: Mutex::new(readiness),
            auth_metrics,
            cluster,
            shutdown,
            started: Instant::now(),
        })
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The metrics registry, for rendering.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Swap in a new config without touching open connections. Settings that only take
    /// effect at start (listen addresses, workers, log format) are reported in the returned
    /// list of warnings.
    pub fn reload(&self, config: Config) -> Vec<String> {
        let old = self.snapshot();
        let mut warnings = Vec::new();
        if old.config.listen != config.listen {
            warnings.push(format!(
                "listen changed ({} → {}): restart unpoll to apply it",
                old.config.listen, config.listen
            ));
        }
        if old.config.admin.listen != config.admin.listen {
            warnings.push(format!(
                "admin.listen changed ({} → {}): restart unpoll to apply it",
                old.config.admin.listen, config.admin.listen
            ));
        }
        if old.config.workers != config.workers {
            warnings.push("workers changed: restart unpoll to apply it".to_string());
        }
        if old.config.postgres != config.postgres || old.config.notify != config.notify {
            warnings
                .push("[postgres] or [[notify]] changed: restart unpoll to apply it".to_string());
        }
        if old.config.mqtt != config.mqtt {
            warnings.push("[mqtt] changed: restart unpoll to apply it".to_string());
        }
        // [[topic]] rules apply at once: the MQTT source subscribes the difference.
        self.topic_rules.send_if_modified(|rules| {
            let changed = **rules != *config.topics;
            if changed {
                *rules = Arc::from(config.topics.clone());
            }
            changed
        });
        if old.config.cache_size != config.cache_size {
            warnings.push("cache_size changed: restart unpoll to apply it".to_string());
        }
        if old.config.cluster != config.cluster {
            warnings.push("[cluster] changed: restart unpoll to apply it".to_string());
        }
        if old.config.hub != config.hub {
            warnings.push("[hub] changed: restart unpoll to apply it".to_string());
        }
        if old.config.log.format != config.log.format {
            warnings.push("log.format changed: restart unpoll to apply it".to_string());
        }
        self.snapshot.store(Arc::new(Snapshot::build(
            config,
            &self.metrics,
            &self.auth_metrics,
        )));
        self.count_reload(true);
        warnings
    }

    /// Record a reload attempt that failed validation (the old config stays).
    pub fn reload_failed(&self, errors: &ConfigErrors) {
        self.count_reload(false);
        tracing::error!(errors = %errors, "config reload failed; keeping the running config");
    }

    fn count_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.metrics
            .reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
    }

    /// Purge cache entries carrying any of `tags` (after a tap's 2xx, a notification, or
    /// `POST /purge`), including fills of them in flight.
    pub fn purge_tags(&self, tags: &[String]) {
        self.cache.purge(tags);
        if let Some(cluster) = &self.cluster {
            cluster.purge_tags(tags);
        }
    }

    /// Purge cache entries with a tag matching `pattern` (`*` wildcards): what a source does
    /// when it lost events and cannot tell which tags they concerned.
    pub fn purge_tag_pattern(&self, pattern: &str) {
        self.cache.purge_glob(pattern);
        if let Some(cluster) = &self.cluster {
            cluster.purge_glob(pattern);
        }
    }

    /// Publish an event on `channel` and return its id: through the cluster when there is
    /// one (every instance delivers it, under the same id), else on this hub.
    pub async fn publish(&self, channel: &str, event: Option<&str>, data: EventData) -> EventId {
        match &self.cluster {
            Some(cluster) => cluster.publish(channel, event, &data).await,
            None => self.hub.publish(channel, event, data),
        }
    }

    /// [`App::publish`] for callers that do not wait for the id; in publish order.
    pub fn publish_nowait(&self, channel: &str, event: Option<&str>, data: EventData) {
        match &self.cluster {
            Some(cluster) => cluster.publish_nowait(channel, event, data),
            None => {
                self.hub.publish(channel, event, data);
            }
        }
    }

    /// Reset the subscribers of channels matching `pattern` (a source lost events): on
    /// every instance of the cluster. Returns the subscribers reset here (0 when relayed
    /// through the cluster: they are reset when the relay comes back).
    pub fn reset_channels(&self, pattern: &str, reason: &str) -> usize {
        match &self.cluster {
            Some(cluster) => {
                cluster.reset(pattern, reason);
                0
            }
            None => self.hub.reset_matching(pattern, reason),
        }
    }

    /// Mark `component` not ready (with the reason) or ready (`None`).
    pub fn set_ready(&self, component: &'static str, not_ready: Option<String>) {
        let mut map = self
            .readiness
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match not_ready {
            Some(reason) => {
                map.insert(component, reason);
            }
            None => {
                map.remove(component);
            }
        }
    }

    /// The reasons this instance is not ready; empty when ready.
    pub fn not_ready(&self) -> Vec<(&'static str, String)> {
        let map = self
            .readiness
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out: Vec<(&'static str, String)> =
            map.iter().map(|(k, v)| (*k, v.clone())).collect();
        if let Some(why) = self.cluster.as_ref().and_then(|c| c.not_ready()) {
            out.push((crate::cluster::READINESS, why));
        }
        out
    }
}

impl Snapshot {
    fn build(config: Config, metrics: &ProxyMetrics, auth_metrics: &AuthMetrics) -> Snapshot {
        let jwt = config.jwt.as_ref().map(|j| Arc::new(JwtAuth::new(j)));
        let routes = Routes::build(&config, metrics, auth_metrics, jwt.as_ref());
        let upstream = UpstreamClient::new(config.upstream.clone(), &config.proxy, metrics.clone());
        let generic_stream = config.generic_stream.enabled.then(|| {
            Authorizer::new(
                "generic_stream",
                &crate::auth::RuleAuthConfig::Jwt,
                &config.generic_stream.limits,
                jwt.as_ref(),
                auth_metrics,
            )
        });
        Snapshot {
            config,
            routes,
            upstream,
            jwt,
            generic_stream,
        }
    }
}
