//! The composition root: builds every part of one unpoll instance from the config and
//! wires them together. The metrics come first, then the parts that own them, then the
//! [`Handles`] the request handlers get. Only the top of the crate (`lib.rs`, `main.rs`,
//! `server/`) sees the [`App`]; the admin endpoints get [`AdminHandles`], everything below
//! the narrow handles it uses.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminHandles;
use crate::admin::live::Live;
use crate::admin::readiness::Readiness;
use crate::auth::{AuthMetrics, SharedCounts};
use crate::cache::{Cache, CacheMetrics};
use crate::cluster::{Cluster, ClusterSink};
use crate::config::{Config, ConfigErrors};
use crate::handles::Handles;
use crate::hub::{Hub, HubMetrics};
use crate::metrics::{ProxyMetrics, ReloadLabels};
use crate::sink::{HubSink, Sink};
use crate::snapshot::Snapshot;
use crate::sources::mqtt::{MqttMetrics, TopicRule};
use crate::sources::postgres::PostgresMetrics;
use crate::sources::{SourceHandles, mqtt, postgres};
use crate::tls::Tls;
use crate::watch::{WatchHandles, WatchMetrics, Watches};

/// One unpoll instance.
pub struct App {
    /// Current config snapshot; swapped whole by [`App::reload`], read lock-free per request.
    snapshot: Arc<ArcSwap<Snapshot>>,
    /// All metrics of this instance (not a global: tests run several instances).
    registry: Arc<Registry>,
    /// What the request handlers use: the hub, the cache, the sink over both, the proxy
    /// metrics, the shutdown signal.
    pub handles: Handles,
    /// Metrics of the Postgres source (registered even when unused, so dashboards see
    /// zeros rather than gaps).
    pub(crate) postgres: PostgresMetrics,
    /// Metrics of the MQTT source (registered even when unused).
    pub(crate) mqtt: MqttMetrics,
    /// The `[[topic]]` rules, for the MQTT source: [`App::reload`] sends new ones, the
    /// source subscribes and unsubscribes the difference.
    pub(crate) topic_rules: tokio::sync::watch::Sender<Arc<[TopicRule]>>,
    /// Metrics of subscribe auth and limits.
    pub auth_metrics: AuthMetrics,
    /// Membership of a cluster of instances sharing Redis (`[cluster]`), if configured.
    /// Read at start only.
    pub cluster: Option<Arc<Cluster>>,
    /// Not-ready components; `/readyz` is 200 only when there is none.
    pub readiness: Arc<Readiness>,
    /// Process start, for `/stats`.
    pub(crate) started: Instant,
    /// The dashboard's recent samples and its open streams (bounded).
    pub(crate) live: Arc<Live>,
    /// TLS of the main listener (`[tls]`), if configured; present or absent for the life
    /// of the process, its certificate swapped by [`App::reload`].
    pub(crate) tls: Option<Arc<Tls>>,
}

impl App {
    /// Build the application for `config`; `shutdown` ends it.
    pub fn new(config: Config, shutdown: CancellationToken) -> Arc<App> {
        // Every metric first: the parts below are handed theirs.
        let mut registry = Registry::default();
        let metrics = ProxyMetrics::register(&mut registry);
        let postgres = PostgresMetrics::register(&mut registry);
        crate::logging::register_metrics(&mut registry);
        let mqtt = MqttMetrics::register(&mut registry);
        let hub_metrics = HubMetrics::default();
        hub_metrics.register(&mut registry);
        let cache_metrics = CacheMetrics::default();
        cache_metrics.register(&mut registry);
        let auth_metrics = AuthMetrics::register(&mut registry);
        let watch_metrics = WatchMetrics::default();
        watch_metrics.register(&mut registry);

        let (topic_rules, _) = tokio::sync::watch::channel(Arc::from(config.topics.clone()));
        let readiness = Arc::new(Readiness::default());
        if config.mqtt.is_some() {
            readiness.set(
                mqtt::READINESS,
                Some("starting: not connected yet".to_string()),
            );
        }
        if config.postgres.is_some() && !config.notify.is_empty() {
            // Not ready from the first instant, before the source's task has even run.
            let reason = "starting: not connected yet".to_string();
            readiness.set(postgres::READINESS, Some(reason));
        }
        let hub = Hub::with_metrics(config.hub.clone(), hub_metrics);
        let cache = Arc::new(Cache::new(config.cache_size, cache_metrics));
        // Lives as long as the instance, so a reload keeps open watch streams
        // (`hub.max_watch_keys` applies at start only).
        let watches = Arc::new(Watches::new(config.hub.max_watch_keys, watch_metrics));
        let local = HubSink::new(hub.clone(), cache.clone(), watches.clone());
        let cluster = config
            .cluster
            .clone()
            .map(|c| Cluster::new(c, hub.clone(), local.clone(), readiness.clone()));
        // In a cluster every publisher delivers through it; alone, to the hub and cache.
        let sink: Arc<dyn Sink> = match &cluster {
            Some(cluster) => Arc::new(ClusterSink::new(cluster.clone(), local)),
            None => Arc::new(local),
        };
        let tls = config.tls.as_ref().map(|c| Arc::new(Tls::new(c)));
        let shared = shared_counts(&cluster);
        let snapshot = Snapshot::build(config, &metrics, &auth_metrics, shared.as_ref());
        let snapshots = Arc::new(ArcSwap::from_pointee(snapshot));
        let watch = WatchHandles {
            watches,
            cache: cache.clone(),
            hub: hub.clone(),
            snapshots: snapshots.clone(),
            stream_connections: metrics.stream_connections.clone(),
            shutdown: shutdown.clone(),
        };
        Arc::new(App {
            snapshot: snapshots,
            registry: Arc::new(registry),
            handles: Handles {
                hub,
                cache,
                sink,
                metrics,
                shutdown,
                watch,
            },
            postgres,
            mqtt,
            topic_rules,
            auth_metrics,
            cluster,
            readiness,
            started: Instant::now(),
            live: Default::default(),
            tls,
        })
    }

    /// The sink of this instance's hub and cache, for the sources.
    pub fn sink(&self) -> Arc<dyn Sink> {
        self.handles.sink.clone()
    }

    /// Start every configured source, delivering to `sink`; each stops at shutdown.
    pub(crate) fn start_sources(&self, sink: Arc<dyn Sink>) -> Vec<JoinHandle<()>> {
        let snapshot = self.snapshot();
        let config = &snapshot.config;
        let handles = SourceHandles {
            shutdown: self.handles.shutdown.clone(),
            readiness: self.readiness.clone(),
            sink,
        };
        let mut tasks = Vec::new();
        if let Some(pg) = config
            .postgres
            .clone()
            .filter(|_| !config.notify.is_empty())
        {
            let (handles, metrics, rules) = (
                handles.clone(),
                self.postgres.clone(),
                config.notify.clone(),
            );
            let start = move || {
                postgres::spawn(handles.clone(), metrics.clone(), pg.clone(), rules.clone())
            };
            tasks.extend(self.consume("notify", postgres::READINESS, start));
        }
        // Started whenever [mqtt] is configured, even with no [[topic]] rule yet: rules
        // reload, the connection does not.
        if let Some(mqtt) = config.mqtt.clone() {
            let (metrics, topic_rules) = (self.mqtt.clone(), self.topic_rules.clone());
            let start = move || {
                let rules = topic_rules.subscribe();
                vec![mqtt::spawn(
                    handles.clone(),
                    metrics.clone(),
                    mqtt.clone(),
                    rules,
                )]
            };
            tasks.extend(self.consume("mqtt", mqtt::READINESS, start));
        }
        tasks
    }

    /// Run a consumer `start` starts: at once alone; in a cluster only on the instance
    /// holding lease `name` (each notification or message is then published once, to every
    /// instance, through Redis), reporting as readiness component `readiness`.
    fn consume<F>(
        &self,
        name: &'static str,
        readiness: &'static str,
        start: F,
    ) -> Vec<JoinHandle<()>>
    where
        F: Fn() -> Vec<JoinHandle<()>> + Send + 'static,
    {
        match &self.cluster {
            None => start(),
            Some(cluster) => {
                let shutdown = self.handles.shutdown.clone();
                let lease = cluster.clone().leased(shutdown, name, readiness, start);
                vec![tokio::spawn(lease)]
            }
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// What the admin endpoints and the dashboard read (shared parts, cloned).
    pub(crate) fn admin(&self) -> AdminHandles {
        AdminHandles {
            handles: self.handles.clone(),
            snapshots: self.snapshot.clone(),
            readiness: self.readiness.clone(),
            registry: self.registry.clone(),
            started: self.started,
            live: self.live.clone(),
        }
    }

    /// The metrics registry, for rendering.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Swap in a new config without touching open connections. Settings that only take
    /// effect at start (`config::reload`) are reported, by key path, in the returned list
    /// of warnings.
    pub fn reload(&self, mut config: Config) -> Vec<String> {
        let old = self.snapshot();
        // The main listener keeps speaking what it spoke at start (`[tls]` is start-only):
        // forwarded requests say what the clients really use, whatever the new file says.
        config.proxy.client_tls = self.tls.is_some();
        let mut warnings: Vec<String> =
            crate::config::reload::start_only_changes(&old.config, &config)
                .iter()
                .map(|key| crate::config::reload::restart_warning(key))
                .collect();
        warnings.extend(
            config
                .warnings(std::time::SystemTime::now())
                .into_iter()
                .map(|(key, warning)| format!("{key}: {warning}")),
        );
        // [[topic]] rules apply at once: the MQTT source subscribes the difference.
        self.topic_rules.send_if_modified(|rules| {
            let changed = **rules != *config.topics;
            if changed {
                *rules = Arc::from(config.topics.clone());
            }
            changed
        });
        // The pair was read and checked when `config` was validated; a broken one failed
        // the reload as a whole (`reload_failed`), so handshakes keep the old pair.
        if let (Some(tls), Some(new)) = (&self.tls, &config.tls) {
            tls.set_pair(&new.pair);
            tracing::info!(cert = %new.cert.display(), serial = %new.pair.serial, "TLS certificate loaded");
        }
        let mut snapshot = Snapshot::build(
            config,
            &self.handles.metrics,
            &self.auth_metrics,
            shared_counts(&self.cluster).as_ref(),
        );
        // Streams stay open across a reload, and so do their places under the limits.
        snapshot.carry_counts_from(&self.snapshot.load());
        self.snapshot.store(Arc::new(snapshot));
        self.count_reload(true);
        warnings
    }

    /// Record a reload attempt that failed validation (the old config stays).
    pub(crate) fn reload_failed(&self, errors: &ConfigErrors) {
        self.count_reload(false);
        tracing::error!(errors = %errors, "config reload failed; keeping the running config");
    }

    fn count_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.handles
            .metrics
            .reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
    }
}

/// Where per-channel limits count other instances' subscribers: the cluster, if any.
fn shared_counts(cluster: &Option<Arc<Cluster>>) -> Option<Arc<dyn SharedCounts>> {
    cluster.clone().map(|c| c as Arc<dyn SharedCounts>)
}
