//! Event sources: what publishes events onto channels besides taps and the publish API.
//!
//! - [`postgres`]: `LISTEN`/`NOTIFY` and an outbox table (`[[notify]]` rules).
//! - [`mqtt`]: messages of an MQTT broker (`[[topic]]` rules).
//! - [`backoff`]: the reconnect delays both use; [`mapping`]: what their rules share.
//!
//! A source talks to the rest of unpoll only through a [`Sink`]: publish an event, tell a
//! channel's subscribers that events were lost, purge cache tags. Keeping that coupling in
//! one small trait lets sources be tested against a recording sink and wired to the hub and
//! the cache in one place ([`AppSink`]).

pub mod backoff;
pub mod mapping;
pub mod mqtt;
pub mod postgres;

use std::sync::Arc;

use serde_json::Value;
use tokio::task::JoinHandle;

use crate::app::App;
use crate::hub::EventData;

/// Where a source delivers what it learns.
pub trait Sink: Send + Sync + 'static {
    /// Publish one event on `channel`.
    fn publish(&self, channel: &str, event: Option<&str>, data: Value);
    /// Send `reset` (with `reason`) to every subscriber of a channel matching `glob`
    /// (`reservas:*`); returns how many subscribers were told.
    fn reset(&self, glob: &str, reason: &str) -> usize;
    /// Purge cache entries carrying any of `tags`.
    fn purge(&self, tags: &[String]);
    /// Purge cache entries with a tag matching `glob`.
    fn purge_glob(&self, glob: &str);
}

/// The sink of a running instance: its hub and its cache.
pub struct AppSink {
    app: Arc<App>,
}

impl AppSink {
    /// The sink for `app`.
    pub fn new(app: &Arc<App>) -> Arc<AppSink> {
        Arc::new(AppSink { app: app.clone() })
    }
}

impl Sink for AppSink {
    fn publish(&self, channel: &str, event: Option<&str>, data: Value) {
        self.app
            .publish_nowait(channel, event, EventData::Json(data));
    }

    fn reset(&self, glob: &str, reason: &str) -> usize {
        self.app.reset_channels(glob, reason)
    }

    fn purge(&self, tags: &[String]) {
        self.app.purge_tags(tags);
    }

    fn purge_glob(&self, glob: &str) {
        self.app.purge_tag_pattern(glob);
    }
}

/// Start every configured source; each stops when `app.shutdown` fires.
pub fn start(app: &Arc<App>, sink: Arc<dyn Sink>) -> Vec<JoinHandle<()>> {
    let snapshot = app.snapshot();
    let config = &snapshot.config;
    let mut tasks = match (&config.postgres, &app.cluster) {
        (Some(pg), None) if !config.notify.is_empty() => {
            postgres::spawn(app.clone(), pg.clone(), config.notify.clone(), sink.clone())
        }
        // In a cluster one instance at a time consumes notifications (each is published
        // once, to every instance, through Redis).
        (Some(pg), Some(cluster)) if !config.notify.is_empty() => {
            let (app2, pg, rules, sink) =
                (app.clone(), pg.clone(), config.notify.clone(), sink.clone());
            let start =
                move || postgres::spawn(app2.clone(), pg.clone(), rules.clone(), sink.clone());
            let lease = cluster
                .clone()
                .leased(app.clone(), "notify", postgres::READINESS, start);
            vec![tokio::spawn(lease)]
        }
        _ => Vec::new(),
    };
    // Started whenever [mqtt] is configured, even with no [[topic]] rule yet: rules
    // reload, the connection does not.
    if let Some(mqtt) = &config.mqtt {
        match &app.cluster {
            None => {
                let rules = app.topic_rules.subscribe();
                tasks.push(mqtt::spawn(app.clone(), mqtt.clone(), rules, sink));
            }
            // As for [[notify]]: every instance would receive each message.
            Some(cluster) => {
                let (app2, mqtt) = (app.clone(), mqtt.clone());
                let start = move || {
                    let rules = app2.topic_rules.subscribe();
                    vec![mqtt::spawn(app2.clone(), mqtt.clone(), rules, sink.clone())]
                };
                let lease = cluster
                    .clone()
                    .leased(app.clone(), "mqtt", mqtt::READINESS, start);
                tasks.push(tokio::spawn(lease));
            }
        }
    }
    tasks
}
