//! The one listener connection for every `[[notify]]` channel, and the loop that notices
//! every gap in it.
//!
//! sqlx's `PgListener::recv()` reconnects quietly: notifications sent while it was
//! disconnected are lost and nothing says so. This loop uses `try_recv()` with
//! `eager_reconnect(false)`, so a lost connection surfaces as `Ok(None)` (clean close, e.g.
//! `pg_terminate_backend`) or `Err` (reset, timeout); either way it drops the listener and
//! builds a fresh one on a fresh one-connection pool (a dead connection never goes back into
//! a pool), with capped exponential backoff and jitter between failed attempts. Once
//! LISTENing again it reports the gap: subscribers of every channel a NOTIFY rule can
//! produce get `reset`, the tags those rules purge are purged by pattern, and outbox readers
//! catch up right away (they lose nothing, so they need no reset).
//!
//! A connection can also die silently (a NAT or firewall dropping state, a partitioned
//! network): no reset, no EOF, just nothing. So the listener also LISTENs on a private
//! probe channel and NOTIFYs it from a second connection every `probe_interval`; when
//! nothing at all arrives for two intervals plus `connect_timeout`, the connection counts as
//! lost. (`try_recv` is cancel-safe: sqlx only consumes a message once it is complete.)

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use sqlx::postgres::{PgListener, PgNotification, PgPool, PgPoolOptions};
use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::config::PostgresConfig;
use super::metrics::{ListenLabels, PostgresMetrics, RuleLabels};
use super::rules::{NotifyRule, RuleMode, parse_payload};
use super::{PostgresError, READINESS};
use crate::admin::readiness::Readiness;
use crate::sources::Sink;
use crate::sources::backoff::Backoff;

/// Data of the `reset` sent after a reconnect.
pub const LOST_REASON: &str = "the Postgres listener reconnected; notifications sent while it \
                               was disconnected are lost: refetch your state";

/// What a connection attempt is for, for logs and readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Never connected yet.
    Starting,
    /// Lost the connection; reconnecting.
    Reconnecting,
}

impl State {
    /// Label for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Reconnecting => "reconnecting",
        }
    }
}

/// The listener task's state.
pub struct Listener {
    /// Cancelled once at shutdown.
    pub(super) shutdown: CancellationToken,
    /// Where the connection state is reported (not ready while down).
    pub(super) readiness: Arc<Readiness>,
    /// Connection and reconnect settings (read at start; a change needs a restart).
    pub(super) config: PostgresConfig,
    /// Every `[[notify]]` rule, in file order (indexes key `outbox_wakeups`).
    pub(super) rules: Arc<[NotifyRule]>,
    /// Where events, resets and purges go (the hub and the cache).
    pub(super) sink: Arc<dyn Sink>,
    /// Counters and gauges shared with the outbox readers (cheap clones of one registry
    /// entry each).
    pub(super) metrics: PostgresMetrics,
    /// Wake-up of each outbox reader, by rule index: a NOTIFY on the rule's channel or a
    /// reconnect. `Notify` stores one permit, so wake-ups during a read fold into one more
    /// read instead of queueing.
    pub(super) outbox_wakeups: HashMap<usize, Arc<Notify>>,
}

impl Listener {
    /// Run until shutdown.
    pub async fn run(self) {
        let probe = format!("unpoll_probe_{:016x}", fastrand::u64(..));
        let mut channels: BTreeSet<&str> = self.rules.iter().map(|r| r.listen.as_str()).collect();
        channels.insert(&probe);
        // The probe's own connection: it must not share the listener's.
        let probe_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.config.connect_timeout)
            .connect_lazy_with(self.config.options.clone());
        let silence_limit = self.config.probe_interval * 2 + self.config.connect_timeout;
        let mut backoff = Backoff::new(self.config.reconnect_min, self.config.reconnect_max);
        let mut state = State::Starting;
        // An instance that could not connect at start may have subscribers (it serves
        // while Postgres is away) whose state missed changes: treat that like a gap too.
        let mut gap = false;
        loop {
            let mut listener = match self.connect(&channels).await {
                Ok(l) => l,
                Err(e) => {
                    gap = true;
                    self.metrics.connect_failures.inc();
                    let delay = backoff.next_delay();
                    let reason = format!("{}: {e}", state.as_str());
                    tracing::warn!(
                        state = state.as_str(),
                        url = %super::config::redact(&self.config.url),
                        cause = %e,
                        retry_in = ?delay,
                        "cannot connect the Postgres listener"
                    );
                    self.readiness.set(READINESS, Some(reason));
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => continue,
                        _ = self.shutdown.cancelled() => return,
                    }
                }
            };
            if state == State::Reconnecting {
                self.metrics.reconnects.inc();
            }
            backoff.reset();
            self.metrics.connected.set(1);
            self.readiness.set(READINESS, None);
            tracing::info!(channels = ?channels, gap, "Postgres listener connected");
            if gap {
                self.report_gap();
            }
            // Outbox readers read after every (re)connect: whatever was committed while
            // the wake-ups could not arrive.
            for wake in self.outbox_wakeups.values() {
                wake.notify_one();
            }

            let mut last_heard = Instant::now();
            let mut probe_tick = tokio::time::interval_at(
                last_heard + self.config.probe_interval,
                self.config.probe_interval,
            );
            probe_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let lost = loop {
                let received = tokio::select! {
                    r = listener.try_recv() => r,
                    _ = probe_tick.tick() => {
                        self.send_probe(&probe_pool, &probe);
                        continue;
                    }
                    _ = tokio::time::sleep_until(last_heard + silence_limit) => {
                        break PostgresError::Silent(silence_limit);
                    }
                    _ = self.shutdown.cancelled() => return,
                };
                match received {
                    Ok(Some(n)) => {
                        last_heard = Instant::now();
                        if n.channel() != probe {
                            self.dispatch(&n);
                        }
                    }
                    Ok(None) => break PostgresError::Closed,
                    Err(e) => break PostgresError::Sql(e),
                }
            };
            drop(listener);
            gap = true;
            state = State::Reconnecting;
            self.metrics.connected.set(0);
            self.readiness
                .set(READINESS, Some(format!("listener connection lost: {lost}")));
            tracing::warn!(cause = %lost, "Postgres listener connection lost; reconnecting");
        }
    }

    /// A fresh one-connection pool and a listener on every channel, within
    /// `connect_timeout`.
    async fn connect(&self, channels: &BTreeSet<&str>) -> Result<PgListener, PostgresError> {
        let timeout = self.config.connect_timeout;
        let attempt = async {
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(timeout)
                .max_lifetime(None)
                .idle_timeout(None)
                .connect_lazy_with(self.config.options.clone());
            let mut listener = PgListener::connect_with(&pool).await?;
            // Surface a lost connection to us instead of reconnecting inside try_recv.
            listener.eager_reconnect(false);
            listener.listen_all(channels.iter().copied()).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r.map_err(PostgresError::Sql),
            Err(_) => Err(PostgresError::Timeout(timeout)),
        }
    }

    /// NOTIFY the probe channel from the probe connection, in the background (a slow or
    /// failed probe simply does not arrive; the silence limit decides).
    fn send_probe(&self, pool: &PgPool, channel: &str) {
        let (pool, channel) = (pool.clone(), channel.to_string());
        let timeout = self.config.connect_timeout;
        tokio::spawn(async move {
            let sent = sqlx::query("SELECT pg_notify($1, '')")
                .bind(channel)
                .execute(&pool);
            match tokio::time::timeout(timeout, sent).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(cause = %e, "listener probe not sent"),
                Err(_) => tracing::debug!("listener probe timed out"),
            }
        });
    }

    /// Route one notification to its rules.
    fn dispatch(&self, n: &PgNotification) {
        let listen = n.channel();
        self.metrics
            .notifications
            .get_or_create(&ListenLabels {
                listen: listen.to_string(),
            })
            .inc();
        // Parsed at most once, and only if a NOTIFY-mode rule needs it.
        let mut payload = None;
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.listen != listen {
                continue;
            }
            if let RuleMode::Outbox { .. } = rule.mode {
                if let Some(wake) = self.outbox_wakeups.get(&i) {
                    wake.notify_one();
                }
                continue;
            }
            let parsed = payload.get_or_insert_with(|| {
                let parsed = parse_payload(n.payload());
                if let Err(e) = &parsed {
                    self.metrics.malformed.inc();
                    tracing::warn!(
                        listen,
                        cause = %e,
                        bytes = n.payload().len(),
                        "malformed NOTIFY payload dropped"
                    );
                }
                parsed
            });
            let mapped = match parsed {
                Ok(p) => rule.map_payload(p),
                Err(e) => Err(e.clone()),
            };
            match mapped {
                Ok(m) => {
                    // Purge first: a client reacting to the event must poll fresh data.
                    if !m.purge.is_empty() {
                        self.sink.purge(&m.purge);
                    }
                    self.sink
                        .publish(&m.channel, m.event.as_deref(), m.data.into());
                    self.metrics
                        .published
                        .get_or_create(&RuleLabels {
                            rule: rule.key.clone(),
                        })
                        .inc();
                }
                Err(e) => {
                    self.metrics.drop(&rule.key, e.as_str());
                    if e.as_str() != "malformed" {
                        tracing::info!(rule = %rule.key, listen, cause = %e, "notification skipped");
                    }
                }
            }
        }
    }

    /// After a gap: tell subscribers of every channel NOTIFY rules can produce, and purge
    /// every tag they can purge, so the next poll is fresh.
    fn report_gap(&self) {
        let notify_rules = self
            .rules
            .iter()
            .filter(|r| matches!(r.mode, RuleMode::Notify));
        let mut channels = BTreeSet::new();
        let mut tags = BTreeSet::new();
        for rule in notify_rules {
            channels.extend(rule.channel_glob());
            tags.extend(rule.purge_globs());
        }
        // Purge before the resets: a reset client refetches at once and must miss the cache.
        for glob in &tags {
            self.sink.purge_glob(glob);
        }
        let mut told = 0;
        for glob in &channels {
            told += self.sink.reset(glob, LOST_REASON);
        }
        self.metrics.resets.inc_by(told as u64);
        tracing::warn!(
            channels = ?channels,
            tags = ?tags,
            subscribers = told,
            "notifications may have been lost while disconnected: subscribers reset, tags purged"
        );
    }
}
