//! The one broker connection for every `[[topic]]` rule, and the loop that keeps it.
//!
//! rumqttc's `EventLoop::poll()` does all the I/O (nothing is sent or received unless it is
//! polled) and reconnects by itself on the next poll after an error; this loop puts capped
//! exponential backoff with jitter between failed attempts and keeps readiness, metrics and
//! subscriptions in step.
//!
//! Continuity: unpoll connects with clean session off, so the broker keeps its
//! subscriptions and queues QoS 1 messages while unpoll is away; CONNACK's
//! `session_present` says whether it did. After a gap (a lost connection, or a failed first
//! attempt while unpoll already served subscribers):
//! - session present: the queued QoS 1 messages arrive now; only QoS 0 rules (never
//!   queued) may have lost messages, so only their channels get `reset`;
//! - session lost (broker restarted without persistence, session expired, client id
//!   taken over): every rule's channels get `reset` and every rule's tags are purged by
//!   pattern, and every filter is subscribed again.
//!
//! Rules reload with the config (a watch channel the composition root sends on reload): the loop
//! subscribes and unsubscribes the difference. The poll future is never cancelled for
//! that (only at shutdown): a reload only queues requests, which the same poll sends.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnAck, Event, EventLoop, MqttOptions, NetworkOptions, Outgoing, Packet, Publish,
    QoS, SubAck, SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::READINESS;
use super::config::MqttConfig;
use super::metrics::{MqttMetrics, RuleLabels, TopicLabels};
use super::rules::{Qos, TopicRule, filter_matches, parse_payload, subscriptions};
use crate::admin::readiness::Readiness;
use crate::sources::Sink;
use crate::sources::backoff::Backoff;

/// Data of the `reset` sent when messages may have been lost.
pub const LOST_REASON: &str = "the MQTT connection was lost and the broker could not keep \
                               every message meanwhile: refetch your state";

/// Requests (subscribe, unsubscribe) waiting for the event loop to send them. Full: the
/// rest of a subscription change waits for the next turn of the loop (see `sync`).
const REQUEST_CAPACITY: usize = 64;

/// How long a shutdown waits for the DISCONNECT to be sent.
const DISCONNECT_WAIT: Duration = Duration::from_secs(1);

/// The MQTT source task's state.
pub struct Listener {
    /// Cancelled once at shutdown.
    pub(super) shutdown: CancellationToken,
    /// Where the connection state is reported (not ready while down).
    pub(super) readiness: Arc<Readiness>,
    /// Connection settings (read at start; a change needs a restart).
    pub(super) config: MqttConfig,
    /// The `[[topic]]` rules, replaced on reload.
    pub(super) rules: watch::Receiver<Arc<[TopicRule]>>,
    /// Where events, resets and purges go.
    pub(super) sink: Arc<dyn Sink>,
    /// Counters and gauges.
    pub(super) metrics: MqttMetrics,
}

/// Subscription state of the broker's session, as far as unpoll asked for it.
struct Subscriptions {
    /// What the current rules need.
    wanted: BTreeMap<String, Qos>,
    /// What was requested of the broker in this session.
    requested: BTreeMap<String, Qos>,
}

impl Subscriptions {
    /// Queue the requests that turn `requested` into `wanted`, as far as the request
    /// channel has room; what does not fit is retried on the next call.
    /// Returns whether a SUBSCRIBE was queued.
    fn sync(&mut self, client: &AsyncClient) -> bool {
        let stale: Vec<String> = self
            .requested
            .keys()
            .filter(|f| !self.wanted.contains_key(*f))
            .cloned()
            .collect();
        for filter in stale {
            if client.try_unsubscribe(filter.clone()).is_err() {
                return false;
            }
            tracing::info!(filter, "MQTT unsubscribe");
            self.requested.remove(&filter);
        }
        let new: Vec<SubscribeFilter> = self
            .wanted
            .iter()
            .filter(|(f, q)| self.requested.get(*f) != Some(*q))
            .map(|(f, q)| SubscribeFilter::new(f.clone(), qos(*q)))
            .collect();
        if new.is_empty() {
            return false;
        }
        let filters: Vec<String> = new.iter().map(|s| s.path.clone()).collect();
        if client.try_subscribe_many(new).is_err() {
            return false;
        }
        tracing::info!(?filters, "MQTT subscribe");
        for f in filters {
            if let Some(q) = self.wanted.get(&f) {
                self.requested.insert(f, *q);
            }
        }
        true
    }
}

fn qos(q: Qos) -> QoS {
    match q {
        Qos::AtMostOnce => QoS::AtMostOnce,
        Qos::AtLeastOnce => QoS::AtLeastOnce,
    }
}

impl Listener {
    fn options(&self) -> MqttOptions {
        let c = &self.config;
        let mut o = MqttOptions::new(c.client_id.clone(), c.host.clone(), c.port);
        // Persistent session: the broker keeps subscriptions and queues QoS 1 messages
        // while unpoll is away.
        o.set_clean_session(false);
        o.set_keep_alive(c.keep_alive);
        o.set_max_packet_size(c.max_packet_size, c.max_packet_size);
        if let Some(user) = &c.username {
            o.set_credentials(user.clone(), c.password.clone().unwrap_or_default());
        }
        o
    }

    /// Run until shutdown.
    pub async fn run(mut self) {
        let (client, mut eventloop) = AsyncClient::new(self.options(), REQUEST_CAPACITY);
        let mut network = NetworkOptions::new();
        network.set_connection_timeout(self.config.connect_timeout.as_secs());
        eventloop.set_network_options(network);

        let mut rules: Arc<[TopicRule]> = self.rules.borrow_and_update().clone();
        let mut subs = Subscriptions {
            wanted: subscriptions(&rules),
            requested: BTreeMap::new(),
        };
        let mut backoff = Backoff::new(self.config.reconnect_min, self.config.reconnect_max);
        let mut connected = false;
        let mut ever_connected = false;
        // Subscribers may have missed messages since the last connection.
        let mut gap = false;
        let mut rules_open = true;
        // Waiting for the SUBACK of the subscriptions sent after CONNACK.
        let mut subscribing = false;
        loop {
            let event = {
                let poll = eventloop.poll();
                tokio::pin!(poll);
                loop {
                    tokio::select! {
                        e = &mut poll => break Some(e),
                        changed = self.rules.changed(), if rules_open => {
                            if changed.is_err() {
                                rules_open = false;
                                continue;
                            }
                            rules = self.rules.borrow_and_update().clone();
                            subs.wanted = subscriptions(&rules);
                            tracing::info!(rules = rules.len(), "[[topic]] rules reloaded");
                            if connected {
                                subs.sync(&client);
                            }
                        }
                        _ = self.shutdown.cancelled() => break None,
                    }
                }
            };
            let Some(event) = event else {
                if connected {
                    disconnect(&client, &mut eventloop).await;
                }
                self.metrics.connected.set(0);
                return;
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if !ack.session_present {
                        subs.requested.clear();
                    }
                    // Ready once the broker confirmed the subscriptions (at once when the
                    // session kept them): a message published after /readyz says ready
                    // is delivered.
                    // (A SUBSCRIBE that did not fit in the request channel yet counts as
                    // under way: the trailing sync sends it.)
                    subscribing = subs.sync(&client) || subs.wanted != subs.requested;
                    self.connected(&ack, &rules, gap, ever_connected, subscribing);
                    connected = true;
                    ever_connected = true;
                    gap = false;
                    backoff.reset();
                    continue;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => self.dispatch(&rules, &subs, &p),
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    self.check_suback(&ack);
                    if std::mem::take(&mut subscribing) {
                        self.readiness.set(READINESS, None);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let delay = backoff.next_delay();
                    let reason = if connected {
                        tracing::warn!(cause = %e, retry_in = ?delay, "MQTT connection lost; reconnecting");
                        format!("connection lost: {e}")
                    } else {
                        self.metrics.connect_failures.inc();
                        tracing::warn!(
                            url = %self.config.url,
                            cause = %e,
                            retry_in = ?delay,
                            "cannot connect to the MQTT broker"
                        );
                        let state = if ever_connected {
                            "reconnecting"
                        } else {
                            "starting"
                        };
                        format!("{state}: {e}")
                    };
                    connected = false;
                    subscribing = false;
                    gap = true;
                    self.metrics.connected.set(0);
                    self.readiness.set(READINESS, Some(reason));
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shutdown.cancelled() => return,
                    }
                    continue;
                }
            }
            if connected {
                // Subscriptions that did not fit in the request channel last time.
                subs.sync(&client);
            }
        }
    }

    /// CONNACK: ready again, and tell subscribers what may have been lost.
    fn connected(
        &self,
        ack: &ConnAck,
        rules: &[TopicRule],
        gap: bool,
        reconnect: bool,
        subscribing: bool,
    ) {
        if reconnect {
            self.metrics.reconnects.inc();
        }
        self.metrics.connected.set(1);
        if subscribing {
            self.readiness
                .set(READINESS, Some("connected, subscribing".to_string()));
        } else {
            self.readiness.set(READINESS, None);
        }
        tracing::info!(
            client_id = %self.config.client_id,
            session_present = ack.session_present,
            gap,
            "MQTT connected"
        );
        if !gap {
            return;
        }
        // With the session kept, the broker queued QoS 1 messages; QoS 0 ones are never
        // queued.
        let lost: Vec<&TopicRule> = rules
            .iter()
            .filter(|r| !ack.session_present || r.qos == Qos::AtMostOnce)
            .collect();
        self.report_gap(&lost, ack.session_present);
    }

    /// Tell subscribers of every channel `rules` can produce to refetch, and purge every
    /// tag they can purge.
    fn report_gap(&self, rules: &[&TopicRule], session_present: bool) {
        if rules.is_empty() {
            return;
        }
        let channels: std::collections::BTreeSet<String> =
            rules.iter().map(|r| r.channel_glob()).collect();
        let tags: std::collections::BTreeSet<String> =
            rules.iter().flat_map(|r| r.purge_globs()).collect();
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
            session_present,
            channels = ?channels,
            tags = ?tags,
            subscribers = told,
            "MQTT messages may have been lost while disconnected: subscribers reset, tags purged"
        );
    }

    fn check_suback(&self, ack: &SubAck) {
        self.metrics.subscribes.inc();
        let refused = ack
            .return_codes
            .iter()
            .filter(|c| matches!(c, SubscribeReasonCode::Failure))
            .count();
        if refused > 0 {
            self.metrics.subscribe_failures.inc_by(refused as u64);
            tracing::error!(
                refused,
                "the MQTT broker refused subscriptions (check its ACL for this client)"
            );
        }
    }

    /// Route one message to every rule whose pattern matches its topic.
    fn dispatch(&self, rules: &[TopicRule], subs: &Subscriptions, p: &Publish) {
        let filter = subs
            .wanted
            .keys()
            .find(|f| filter_matches(f, &p.topic))
            .cloned()
            .unwrap_or_default();
        self.metrics
            .messages
            .get_or_create(&TopicLabels { topic: filter })
            .inc();
        // Parsed at most once, and only if a rule matches.
        let mut payload = None;
        let mut malformed_counted = false;
        for rule in rules {
            if rule.topic.captures(&p.topic).is_none() {
                continue;
            }
            let parsed = payload.get_or_insert_with(|| parse_payload(&p.payload));
            let mapped = match parsed {
                Ok(value) => rule.map(&p.topic, value),
                Err(e) => Some(Err(e.clone())),
            };
            match mapped {
                None => {}
                Some(Ok(m)) => {
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
                Some(Err(e)) => {
                    self.metrics.drop(&rule.key, e.as_str());
                    if e.as_str() == "malformed" {
                        if !malformed_counted {
                            malformed_counted = true;
                            self.metrics.malformed.inc();
                        }
                        tracing::warn!(
                            rule = %rule.key,
                            topic = %p.topic,
                            bytes = p.payload.len(),
                            cause = %e,
                            "malformed MQTT payload dropped"
                        );
                    } else {
                        tracing::info!(rule = %rule.key, topic = %p.topic, cause = %e, "MQTT message skipped");
                    }
                }
            }
        }
    }
}

/// Send DISCONNECT (the session stays: clean session is off) and wait briefly for it to
/// leave.
async fn disconnect(client: &AsyncClient, eventloop: &mut EventLoop) {
    if client.try_disconnect().is_err() {
        return;
    }
    let sent = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(DISCONNECT_WAIT, sent).await;
}
