//! Several unpoll instances sharing channels, history and purges through Redis
//! (`[cluster]`). Without that section none of this runs and Redis is not needed.
//!
//! # How an event travels
//!
//! Every publish (tap, `/publish`, notify, MQTT) goes to one ordered queue; a writer task
//! runs [`scripts::PUBLISH`] for each: Redis numbers it (`INCR`), appends it to the
//! channel's stream (`XADD MAXLEN ~ history`, for replay on any instance) and `PUBLISH`es
//! it on the channel's pub/sub channel. Every instance that has local subscribers on that
//! channel has `SUBSCRIBE`d to it on its one pub/sub connection and applies what arrives to
//! its hub ([`Hub::apply`](crate::hub::Hub::apply)), in Redis's order, so ids
//! (`<epoch>-<seq>`) are the same everywhere and a `Last-Event-ID` resumes on any instance.
//!
//! Why pub/sub for the live path and streams for history, not `XREAD` on every stream:
//! one pub/sub connection follows any number of channels with one push per event, and an
//! instance receives only the channels it subscribed; `XREAD BLOCK` on 10,000 streams means
//! re-sending 10,000 keys and ids per call (or one blocked connection per batch of
//! streams). Measurements are in BENCHMARKS.md.
//!
//! # Starting to follow a channel
//!
//! The first local subscriber of a channel makes this instance `SUBSCRIBE`, then read the
//! channel's stream with [`scripts::HISTORY`], which also publishes a barrier to this
//! instance: once the reader has passed it, every event up to the read position has been
//! applied, so the history read and the live events meet exactly
//! ([`Hub::backfill`](crate::hub::Hub::backfill)).
//!
//! # Consumers
//!
//! `[[notify]]` consumers run only on the instance holding a lease (`lease.rs`). In outbox
//! mode the publish script remembers the last row published per outbox, so a new holder
//! resuming from an older saved position publishes no row twice.
//!
//! # Per-channel limits
//!
//! `[[stream]] limits.per_channel` counts the subscribers of every instance: each
//! publishes its counts and reads the others' every `limit_sync` (`counts.rs`).
//!
//! # Losing Redis
//!
//! The hub continues alone in a fresh id space ([`Hub::rebase`](crate::hub::Hub::rebase):
//! every subscriber gets one `reset`), local publishes reach local subscribers, `/readyz`
//! answers 503, and the instance reconnects with capped backoff. Back in the cluster it
//! rebases again onto the cluster's epoch (another `reset`: events of other instances were
//! missed) and purges its tagged cache entries (purges of other instances were missed).

pub mod config;
mod counts;
mod lease;
mod scripts;
mod sink;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admin::readiness::Readiness;
use crate::hub::{Backfill, Boot, EventData, EventId, Hub, glob};
use crate::sink::{HubSink, Sink};
use crate::sources::backoff::Backoff;
pub use config::ClusterConfig;
pub use sink::ClusterSink;

/// The readiness component name: `/readyz` says `cluster: <reason>`.
pub const READINESS: &str = "cluster";

/// Lost-event marks kept in Redis (like the hub's own, see `hub/state.rs`).
const LOST_MARKS: usize = 64;

/// One instance's membership of the cluster.
pub struct Cluster {
    config: ClusterConfig,
    hub: Hub,
    /// This instance's cache and watchers, purged (and the watchers concerned refetched)
    /// when another instance purges, and wholly after time away from Redis.
    local: HubSink,
    /// Where this membership reports itself not ready (component [`READINESS`]), and the
    /// leased consumers theirs.
    readiness: Arc<Readiness>,
    /// Events read per channel when starting to follow it: the hub's per-channel history.
    history_count: usize,
    keys: Keys,
    shared: Mutex<Shared>,
    /// Serializes `SUBSCRIBE`/`UNSUBSCRIBE` with the follow table, so an unfollow cannot
    /// overtake a follow of the same channel on the wire.
    subscribing: tokio::sync::Mutex<()>,
    jobs: mpsc::Sender<Job>,
    jobs_rx: Mutex<Option<mpsc::Receiver<Job>>>,
    /// Per-channel limit counts (see `counts.rs`), apart from `shared`: admissions take it.
    counts: Mutex<counts::Table>,
    /// This process's life in the cluster: counts written under an older one do not count.
    incarnation: String,
}

/// Redis names, from the prefix.
struct Keys {
    epoch: String,
    seq: String,
    lost: String,
    lost_floor: String,
    reset: String,
    purge: String,
    node: String,
    events: String,
    stream: String,
    /// Followed by `<outbox>/<consumer>`: the last outbox row published.
    outbox: String,
    /// Followed by `<rule> <channel>`: per-node subscriber counts.
    limit: String,
    /// Followed by a node id: its incarnation while it is alive.
    alive: String,
}

impl Keys {
    fn new(config: &ClusterConfig) -> Keys {
        let p = &config.prefix;
        Keys {
            epoch: format!("{p}epoch"),
            seq: format!("{p}seq"),
            lost: format!("{p}lost"),
            lost_floor: format!("{p}lostfloor"),
            reset: format!("{p}reset"),
            purge: format!("{p}purge"),
            node: format!("{p}node:{}", config.node_id),
            events: format!("{p}ev:"),
            stream: format!("{p}h:"),
            outbox: format!("{p}outbox:"),
            limit: format!("{p}limit:"),
            alive: format!("{p}alive:"),
        }
    }
}

#[derive(Default)]
struct Shared {
    /// Set while connected.
    link: Option<Link>,
    /// Why not connected (for `/readyz`); `None` when connected.
    down: Option<String>,
    /// Channels followed, with their local holders.
    follows: HashMap<Arc<str>, Follow>,
    /// Barriers waited for, by token.
    barriers: HashMap<u64, oneshot::Sender<()>>,
    next_token: u64,
    /// Events published only locally because the queue to Redis was full.
    overflowed: u64,
    /// Leases this instance holds (see `lease.rs`).
    leases: std::collections::BTreeSet<String>,
}

struct Follow {
    holders: usize,
    /// When the last holder left; unfollowed after `linger`.
    idle_since: Option<Instant>,
    /// `SUBSCRIBE`d on the current connection.
    subscribed: bool,
    /// Its history was read on the current connection.
    synced: bool,
}

/// The current connection.
#[derive(Clone)]
struct Link {
    cmd: MultiplexedConnection,
    sink: PubSubSink,
    epoch: Boot,
    /// Cancelled when any user of the link sees it fail.
    lost: CancellationToken,
}

impl Link {
    /// The id `<epoch>` `<seq>` of a message or script answer, which must be in this link's
    /// epoch: anything else means Redis lost its data (the epoch key was created anew), and
    /// the link must be left.
    fn checked_id(&self, epoch: &str, seq: &str) -> Result<EventId, Failure> {
        let boot: Boot = epoch.parse().map_err(|_| LOST_DATA.to_string())?;
        let seq: u64 = seq.parse().map_err(|_| LOST_DATA.to_string())?;
        if boot != self.epoch {
            return Err(LOST_DATA.to_string());
        }
        Ok(EventId { boot, seq })
    }
}

/// Work for the writer, in publish order.
enum Job {
    Event {
        channel: String,
        event: Option<String>,
        data: String,
        /// An outbox row (`<outbox>/<consumer>`, row id): skipped if published already.
        once: Option<(String, i64)>,
        reply: Option<oneshot::Sender<EventId>>,
    },
    /// Answered when every job queued before it is done.
    Flush(oneshot::Sender<()>),
    Reset {
        pattern: String,
        reason: String,
    },
    Purge {
        kind: PurgeKind,
        value: String,
    },
}

#[derive(Clone, Copy)]
enum PurgeKind {
    Tags,
    Glob,
}

impl PurgeKind {
    fn as_str(self) -> &'static str {
        match self {
            PurgeKind::Tags => "tags",
            PurgeKind::Glob => "glob",
        }
    }
}

/// Keeps channels followed while a subscription holds it.
pub struct FollowHold {
    cluster: Arc<Cluster>,
    channels: Vec<Arc<str>>,
}

impl Drop for FollowHold {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut shared = self.cluster.lock();
        for name in &self.channels {
            if let Some(f) = shared.follows.get_mut(name) {
                f.holders = f.holders.saturating_sub(1);
                if f.holders == 0 {
                    f.idle_since = Some(now);
                }
            }
        }
    }
}

type Failure = String;

fn failure(what: &str, e: impl std::fmt::Display) -> Failure {
    format!("{what}: {e}")
}

impl Cluster {
    /// Membership for `hub` and `cache`; nothing connects before [`Cluster::run`]. Not
    /// ready (in `readiness`) until it has joined.
    pub fn new(
        config: ClusterConfig,
        hub: Hub,
        local: HubSink,
        readiness: Arc<Readiness>,
    ) -> Arc<Cluster> {
        let (jobs, rx) = mpsc::channel(config.queue);
        let down = "starting: not connected to Redis yet".to_string();
        readiness.set(READINESS, Some(down.clone()));
        Arc::new(Cluster {
            keys: Keys::new(&config),
            history_count: hub.config().history_max_events.max(1),
            hub,
            local,
            readiness,
            shared: Mutex::new(Shared {
                down: Some(down),
                ..Shared::default()
            }),
            subscribing: tokio::sync::Mutex::new(()),
            jobs,
            jobs_rx: Mutex::new(Some(rx)),
            counts: Mutex::default(),
            incarnation: Boot::generate().to_string(),
            config,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Record why this instance is out of the cluster (`None`: it is in), for `/readyz`.
    fn set_down(&self, shared: &mut Shared, why: Option<String>) {
        self.readiness.set(READINESS, why.clone());
        shared.down = why;
    }

    fn link(&self) -> Option<Link> {
        self.lock().link.clone()
    }

    /// This instance's name.
    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// Why it is not part of the cluster now, if it is not.
    pub fn not_ready(&self) -> Option<String> {
        self.lock().down.clone()
    }

    /// For `/stats`.
    pub fn stats(&self) -> serde_json::Value {
        let shared = self.lock();
        serde_json::json!({
            "node_id": self.config.node_id,
            "connected": shared.link.is_some(),
            "epoch": shared.link.as_ref().map(|l| l.epoch.to_string()),
            "followed_channels": shared.follows.len(),
            "published_locally_queue_full": shared.overflowed,
            "leases": shared.leases,
            "limits": self.limit_stats(),
        })
    }

    /// Publish through Redis and return the cluster id; the local hub alone (with a local
    /// id) while Redis is unreachable.
    pub async fn publish(&self, channel: &str, event: Option<&str>, data: &EventData) -> EventId {
        let (reply, answer) = oneshot::channel();
        let job = Job::Event {
            channel: channel.to_owned(),
            event: event.map(one_line),
            data: data.as_text().into_owned(),
            once: None,
            reply: Some(reply),
        };
        if self.jobs.send(job).await.is_ok()
            && let Ok(id) = answer.await
        {
            return id;
        }
        // The writer is gone (shutting down).
        self.hub.publish(channel, event, data.clone())
    }

    /// [`Cluster::publish`] without waiting for the id, for callers that cannot wait
    /// (sources, taps). A full queue means Redis cannot keep up: the event is published
    /// locally only (other instances miss it; counted in `/stats`).
    pub fn publish_nowait(&self, channel: &str, event: Option<&str>, data: EventData) {
        self.publish_nowait_once(None, channel, event, data);
    }

    /// [`Cluster::publish_nowait`] of outbox row `once` (`<outbox>/<consumer>`, row id):
    /// skipped in Redis if that row was published already.
    pub fn publish_nowait_once(
        &self,
        once: Option<(&str, i64)>,
        channel: &str,
        event: Option<&str>,
        data: EventData,
    ) {
        let job = Job::Event {
            channel: channel.to_owned(),
            event: event.map(one_line),
            data: data.as_text().into_owned(),
            once: once.map(|(outbox, row)| (outbox.to_owned(), row)),
            reply: None,
        };
        if let Err(e) = self.jobs.try_send(job) {
            if matches!(e, mpsc::error::TrySendError::Full(_)) {
                self.lock().overflowed += 1;
                tracing::warn!(
                    channel,
                    "cluster queue full: event published on this instance only"
                );
            }
            self.hub.publish(channel, event, data);
        }
    }

    /// Wait until every job queued before has been written to Redis (or, Redis being
    /// unreachable, applied here).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.jobs.send(Job::Flush(done)).await.is_ok() {
            // An error: the writer is gone (shutting down), nothing more will be written.
            let _ = wait.await;
        }
    }

    /// A source lost events on channels matching `pattern`: every instance resets them.
    pub fn reset(&self, pattern: &str, reason: &str) {
        let job = Job::Reset {
            pattern: pattern.to_owned(),
            reason: reason.to_owned(),
        };
        if self.jobs.try_send(job).is_err() {
            self.hub.reset_matching(pattern, reason);
        }
    }

    /// Tell the other instances to purge `tags` (this one already did).
    pub fn purge_tags(&self, tags: &[String]) {
        let value = serde_json::to_string(tags).unwrap_or_default();
        self.relay_purge(PurgeKind::Tags, value);
    }

    /// Tell the other instances to purge tags matching `pattern`.
    pub fn purge_glob(&self, pattern: &str) {
        self.relay_purge(PurgeKind::Glob, pattern.to_owned());
    }

    fn relay_purge(&self, kind: PurgeKind, value: String) {
        if self.jobs.try_send(Job::Purge { kind, value }).is_err() {
            tracing::warn!("cluster queue full: a purge reached this instance only");
        }
    }

    /// Follow `channels` for a subscriber about to subscribe (resuming after
    /// `last_event_id`): subscribed in Redis and their history read, so the hub can replay
    /// and then deliver live. Hold the result as long as the subscription lives. Never
    /// fails: without Redis the hub answers alone (and resets what it cannot replay).
    pub async fn follow(
        self: &Arc<Self>,
        channels: &[String],
        last_event_id: Option<&str>,
    ) -> FollowHold {
        let names: Vec<Arc<str>> = channels.iter().map(|c| Arc::from(c.as_str())).collect();
        let ready = {
            let mut shared = self.lock();
            let mut ready = true;
            for name in &names {
                let f = shared.follows.entry(name.clone()).or_insert(Follow {
                    holders: 0,
                    idle_since: None,
                    subscribed: false,
                    synced: false,
                });
                f.holders += 1;
                f.idle_since = None;
                ready &= f.subscribed && f.synced;
            }
            ready
        };
        let hold = FollowHold {
            cluster: self.clone(),
            channels: names,
        };
        let Some(link) = self.link() else {
            return hold;
        };
        if !ready && let Err(e) = self.start_following(&link, &hold.channels).await {
            self.lose(&link, &e);
            return hold;
        }
        // A client coming from another instance may hold an id this one has not reached
        // yet: wait until it has, rather than answer "unknown id".
        let ahead = last_event_id
            .and_then(|t| t.trim().parse::<EventId>().ok())
            .is_some_and(|id| id.boot == link.epoch && id.seq > self.hub.cursor().seq);
        if ahead && let Err(e) = self.barrier(&link).await {
            self.lose(&link, &e);
        }
        hold
    }

    async fn start_following(&self, link: &Link, names: &[Arc<str>]) -> Result<(), Failure> {
        let _serial = self.subscribing.lock().await;
        let (to_subscribe, to_sync) = {
            let shared = self.lock();
            let mut subscribe = Vec::new();
            let mut sync = Vec::new();
            for name in names {
                if let Some(f) = shared.follows.get(name) {
                    if !f.subscribed {
                        subscribe.push(name.clone());
                    }
                    if !f.synced {
                        sync.push(name.clone());
                    }
                }
            }
            (subscribe, sync)
        };
        if !to_subscribe.is_empty() {
            let channels: Vec<String> = to_subscribe
                .iter()
                .map(|n| format!("{}{n}", self.keys.events))
                .collect();
            let mut sink = link.sink.clone();
            tokio::time::timeout(self.config.timeout, sink.subscribe(channels))
                .await
                .map_err(|e| failure("SUBSCRIBE", e))?
                .map_err(|e| failure("SUBSCRIBE", e))?;
            let mut shared = self.lock();
            for name in &to_subscribe {
                if let Some(f) = shared.follows.get_mut(name) {
                    f.subscribed = true;
                }
            }
        }
        for name in to_sync {
            self.read_history(link, &name).await?;
            if let Some(f) = self.lock().follows.get_mut(&name) {
                f.synced = true;
            }
        }
        Ok(())
    }

    /// A fresh barrier token and its completion.
    fn new_barrier(&self) -> (u64, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let mut shared = self.lock();
        shared.next_token += 1;
        let token = shared.next_token;
        shared.barriers.insert(token, tx);
        (token, rx)
    }

    async fn wait_barrier(&self, token: u64, rx: oneshot::Receiver<()>) -> Result<(), Failure> {
        let passed = tokio::time::timeout(self.config.timeout, rx).await;
        self.lock().barriers.remove(&token);
        match passed {
            Ok(Ok(())) => Ok(()),
            _ => Err("a barrier did not come back on the pub/sub connection".to_string()),
        }
    }

    /// Wait until the reader has applied every event numbered before now.
    async fn barrier(&self, link: &Link) -> Result<(), Failure> {
        let (token, rx) = self.new_barrier();
        let mut cmd = link.cmd.clone();
        let (epoch, _seq): (String, u64) = scripts::BARRIER
            .key(&self.keys.epoch)
            .key(&self.keys.seq)
            .arg(Boot::generate().to_string())
            .arg(&self.keys.node)
            .arg(token)
            .invoke_async(&mut cmd)
            .await
            .map_err(|e| failure("barrier", e))?;
        if epoch != link.epoch.to_string() {
            return Err(LOST_DATA.to_string());
        }
        self.wait_barrier(token, rx).await
    }

    /// Read `channel`'s stream into the hub (see the module docs).
    async fn read_history(&self, link: &Link, channel: &str) -> Result<(), Failure> {
        type Reply = (
            String,
            u64,
            String,
            String,
            Vec<String>,
            Vec<(String, Vec<String>)>,
        );
        let (token, rx) = self.new_barrier();
        let mut cmd = link.cmd.clone();
        let (epoch, seq, deleted, lost_floor, marks, entries): Reply = scripts::HISTORY
            .key(&self.keys.epoch)
            .key(&self.keys.seq)
            .key(format!("{}{channel}", self.keys.stream))
            .key(&self.keys.lost)
            .key(&self.keys.lost_floor)
            .arg(Boot::generate().to_string())
            .arg(&self.keys.node)
            .arg(token)
            .arg(self.history_count)
            .invoke_async(&mut cmd)
            .await
            .map_err(|e| failure("reading a channel's history", e))?;
        if epoch != link.epoch.to_string() {
            return Err(LOST_DATA.to_string());
        }
        self.wait_barrier(token, rx).await?;
        let mut floor = stream_seq(&deleted).max(lost_floor.parse().unwrap_or(0));
        for mark in &marks {
            if let Some((s, pattern)) = mark.split_once(' ')
                && glob::matches(pattern, channel)
            {
                floor = floor.max(s.parse().unwrap_or(u64::MAX));
            }
        }
        let full = entries.len() >= self.history_count;
        let mut events: Vec<Backfill> = entries
            .into_iter()
            .map(|(id, fields)| backfill_entry(&id, &fields))
            .collect();
        events.reverse();
        if full && let Some(oldest) = events.first() {
            // Older events may exist that were not read.
            floor = floor.max(oldest.seq.saturating_sub(1));
        }
        if !self.hub.backfill(link.epoch, channel, (seq, floor), events) {
            return Err("the hub left the cluster's id space".to_string());
        }
        Ok(())
    }

    /// `link` failed (`why`): leave the cluster (once) and let [`Cluster::run`] reconnect.
    fn lose(&self, link: &Link, why: &str) {
        let mut shared = self.lock();
        let current = shared.link.as_ref().is_some_and(|l| l.lost == link.lost);
        if !current {
            return;
        }
        shared.link = None;
        self.set_down(&mut shared, Some(format!("lost Redis: {why}")));
        for f in shared.follows.values_mut() {
            f.subscribed = false;
            f.synced = false;
        }
        link.lost.cancel();
        // Under the lock, so no publish is numbered between leaving and rebasing.
        let seq = self.hub.cursor().seq;
        let told = self.hub.rebase(
            Boot::generate(),
            seq,
            "cluster: lost the connection to Redis; events of other instances may be missing",
        );
        drop(shared);
        tracing::warn!(cause = %why, subscribers_reset = told, "left the cluster");
    }

    /// Connect, follow, reconnect with capped backoff, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(jobs) = self
            .jobs_rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        let writer = tokio::spawn(self.clone().write(jobs, shutdown.clone()));
        let unfollower = tokio::spawn(self.clone().unfollow_idle(shutdown.clone()));
        let limits = tokio::spawn(self.clone().sync_limits(shutdown.clone()));
        let mut backoff = Backoff::new(self.config.reconnect_min, self.config.reconnect_max);
        let mut connected_before = false;
        loop {
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => break,
                outcome = self.session(&mut backoff, connected_before) => outcome,
            };
            match outcome {
                Ok(()) => break,
                Err((link, why)) => {
                    connected_before |= link.is_some();
                    match link {
                        Some(link) => self.lose(&link, &why),
                        None => {
                            let down = Some(format!("cannot reach Redis: {why}"));
                            self.set_down(&mut self.lock(), down);
                            tracing::warn!(cause = %why, "cannot reach Redis");
                        }
                    }
                }
            }
            let delay = backoff.next_delay();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        let _ = tokio::join!(writer, unfollower, limits);
    }

    /// One connection's life. `Err` carries the link (if it was established) and why it
    /// ended; `Ok` on shutdown.
    async fn session(
        &self,
        backoff: &mut Backoff,
        connected_before: bool,
    ) -> Result<(), (Option<Link>, Failure)> {
        let (link, mut messages) = self.connect().await.map_err(|e| (None, e))?;
        backoff.reset();
        tracing::info!(
            redis = %config::redact(&self.config.redis),
            node_id = %self.config.node_id,
            epoch = %link.epoch,
            "joined the cluster"
        );
        if connected_before {
            // Purges of other instances were missed while away.
            self.local.purge_glob("*");
        }
        loop {
            tokio::select! {
                _ = link.lost.cancelled() => {
                    return Err((Some(link), "a command failed".to_string()));
                }
                msg = messages.next() => {
                    let Some(msg) = msg else {
                        return Err((Some(link), "the pub/sub connection closed".to_string()));
                    };
                    if let Err(e) = self.on_message(&link, &msg) {
                        return Err((Some(link), e));
                    }
                }
            }
        }
    }

    /// Open both connections, subscribe everything followed, and rebase the hub onto the
    /// cluster at a barrier.
    async fn connect(&self) -> Result<(Link, redis::aio::PubSubStream), Failure> {
        let t = self.config.timeout;
        let client =
            redis::Client::open(self.config.redis.as_str()).map_err(|e| failure("URL", e))?;
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(t))
            .set_response_timeout(Some(t));
        let mut cmd = client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .map_err(|e| failure("connect", e))?;
        let pubsub = tokio::time::timeout(t, client.get_async_pubsub())
            .await
            .map_err(|e| failure("connect (pub/sub)", e))?
            .map_err(|e| failure("connect (pub/sub)", e))?;
        let (mut sink, mut messages) = pubsub.split();
        let _serial = self.subscribing.lock().await;
        let mut channels = vec![
            self.keys.node.clone(),
            self.keys.reset.clone(),
            self.keys.purge.clone(),
        ];
        let mut subscribed: std::collections::HashSet<Arc<str>> = Default::default();
        let mut pending: Vec<Arc<str>> = self.lock().follows.keys().cloned().collect();
        // Until no channel is followed that is not subscribed: a subscriber may arrive (and
        // follow, without a connection) at any point before the link is published below.
        let (epoch, seq, mut shared) = loop {
            channels.extend(pending.iter().map(|n| format!("{}{n}", self.keys.events)));
            if !channels.is_empty() {
                tokio::time::timeout(t, sink.subscribe(std::mem::take(&mut channels)))
                    .await
                    .map_err(|e| failure("SUBSCRIBE", e))?
                    .map_err(|e| failure("SUBSCRIBE", e))?;
            }
            subscribed.extend(pending.drain(..));
            let (epoch, seq) = self.connect_barrier(&mut cmd, &mut messages).await?;
            let shared = self.lock();
            pending = shared
                .follows
                .keys()
                .filter(|n| !subscribed.contains(*n))
                .cloned()
                .collect();
            if pending.is_empty() {
                break (epoch, seq, shared);
            }
        };
        let link = Link {
            cmd,
            sink,
            epoch,
            lost: CancellationToken::new(),
        };
        // Under the lock with the link published: no follow can miss it, and everything
        // delivered after the barrier is numbered after the reset.
        let told = self.hub.rebase(
            epoch,
            seq,
            "cluster: joined; events published while this instance was away may be missing",
        );
        for f in shared.follows.values_mut() {
            f.subscribed = true;
            f.synced = false;
        }
        shared.link = Some(link.clone());
        self.set_down(&mut shared, None);
        drop(shared);
        if told > 0 {
            tracing::info!(subscribers_reset = told, "rebased onto the cluster");
        }
        Ok((link, messages))
    }

    /// The cluster position, once the pub/sub connection has delivered everything before
    /// it (discarded: the reset of the rebase covers it).
    async fn connect_barrier(
        &self,
        cmd: &mut MultiplexedConnection,
        messages: &mut redis::aio::PubSubStream,
    ) -> Result<(Boot, u64), Failure> {
        let t = self.config.timeout;
        let token = {
            let mut shared = self.lock();
            shared.next_token += 1;
            shared.next_token
        };
        let (epoch, seq): (String, u64) = scripts::BARRIER
            .key(&self.keys.epoch)
            .key(&self.keys.seq)
            .arg(Boot::generate().to_string())
            .arg(&self.keys.node)
            .arg(token)
            .invoke_async(cmd)
            .await
            .map_err(|e| failure("barrier", e))?;
        let epoch: Boot = epoch
            .parse()
            .map_err(|_| format!("{} holds {epoch:?}, not an epoch", self.keys.epoch))?;
        let expected = format!("{token}\n");
        tokio::time::timeout(t, async {
            while let Some(msg) = messages.next().await {
                if msg.get_channel_name() == self.keys.node
                    && msg.get_payload_bytes().starts_with(expected.as_bytes())
                {
                    return Ok(());
                }
            }
            Err("the pub/sub connection closed".to_string())
        })
        .await
        .map_err(|e| failure("barrier", e))??;
        Ok((epoch, seq))
    }

    /// Apply one pub/sub message. `Err` when the cluster's sequence started over.
    fn on_message(&self, link: &Link, msg: &redis::Msg) -> Result<(), Failure> {
        let channel = msg.get_channel_name();
        let payload = String::from_utf8_lossy(msg.get_payload_bytes());
        if let Some(name) = channel.strip_prefix(&self.keys.events) {
            let Some([ep, seq, event, data]) = fields(&payload) else {
                return Ok(());
            };
            let id = link.checked_id(ep, seq)?;
            let event = (!event.is_empty()).then_some(event);
            self.hub.apply(id, name, event, data);
        } else if channel == self.keys.node {
            let Some([token, ep, seq]) = fields(&payload) else {
                return Ok(());
            };
            self.hub.advance(link.checked_id(ep, seq)?);
            let waiter = token
                .parse::<u64>()
                .ok()
                .and_then(|t| self.lock().barriers.remove(&t));
            if let Some(waiter) = waiter {
                let _ = waiter.send(());
            }
        } else if channel == self.keys.reset {
            let Some([ep, seq, pattern, reason]) = fields(&payload) else {
                return Ok(());
            };
            self.hub
                .apply_reset(link.checked_id(ep, seq)?, pattern, reason);
        } else if channel == self.keys.purge {
            let Some([node, kind, value]) = fields(&payload) else {
                return Ok(());
            };
            if node == self.config.node_id {
                return Ok(());
            }
            if kind == PurgeKind::Tags.as_str() {
                let tags: Vec<String> = serde_json::from_str(value).unwrap_or_default();
                self.local.purge(&tags);
            } else if kind == PurgeKind::Glob.as_str() {
                self.local.purge_glob(value);
            }
        }
        Ok(())
    }

    /// Run queued jobs in order; each on the hub alone when Redis is unreachable.
    async fn write(self: Arc<Self>, mut jobs: mpsc::Receiver<Job>, shutdown: CancellationToken) {
        loop {
            let job = tokio::select! {
                _ = shutdown.cancelled() => return,
                job = jobs.recv() => match job {
                    Some(job) => job,
                    None => return,
                },
            };
            let job = match job {
                Job::Flush(done) => {
                    let _ = done.send(());
                    continue;
                }
                job => job,
            };
            let link = self.link();
            let mut outcome = Err(None);
            if let Some(link) = &link {
                outcome =
                    match tokio::time::timeout(self.config.timeout, self.send(link, &job)).await {
                        Ok(Ok(id)) => Ok(id),
                        Ok(Err(e)) => Err(Some(e)),
                        Err(_) => Err(Some("Redis did not answer in time".to_string())),
                    };
            }
            let id = match outcome {
                Ok(id) => id,
                Err(why) => {
                    if let (Some(link), Some(why)) = (&link, why) {
                        self.lose(link, &why);
                    }
                    self.apply_locally(&job)
                }
            };
            if let (
                Job::Event {
                    reply: Some(reply), ..
                },
                Some(id),
            ) = (job, id)
            {
                let _ = reply.send(id);
            }
        }
    }

    /// Run one job in Redis; the event's cluster id for an event.
    async fn send(&self, link: &Link, job: &Job) -> Result<Option<EventId>, Failure> {
        let mut cmd = link.cmd.clone();
        let keys = &self.keys;
        let check = |ep: String, seq: u64| {
            if ep == link.epoch.to_string() {
                Ok(Some(EventId {
                    boot: link.epoch,
                    seq,
                }))
            } else {
                Err(LOST_DATA.to_string())
            }
        };
        match job {
            Job::Event {
                channel,
                event,
                data,
                once,
                ..
            } => {
                let ttl = u64::try_from(self.config.stream_ttl.as_millis()).unwrap_or(u64::MAX);
                let (mark, row) = match once {
                    Some((outbox, row)) => (format!("{}{outbox}", keys.outbox), row.to_string()),
                    // Unused by the script; a key of ours all the same.
                    None => (keys.seq.clone(), String::new()),
                };
                let (ep, seq): (String, u64) = scripts::PUBLISH
                    .key(&keys.epoch)
                    .key(&keys.seq)
                    .key(format!("{}{channel}", keys.stream))
                    .key(mark)
                    .arg(Boot::generate().to_string())
                    .arg(format!("{}{channel}", keys.events))
                    .arg(event.as_deref().unwrap_or(""))
                    .arg(data)
                    .arg(self.history_count)
                    .arg(ttl)
                    .arg(row)
                    .invoke_async(&mut cmd)
                    .await
                    .map_err(|e| failure("publish", e))?;
                if seq == 0 {
                    tracing::debug!(channel, "outbox row published already: skipped");
                    return check(ep, seq).map(|_| None);
                }
                check(ep, seq)
            }
            Job::Reset { pattern, reason } => {
                let (ep, seq): (String, u64) = scripts::RESET
                    .key(&keys.epoch)
                    .key(&keys.seq)
                    .key(&keys.lost)
                    .key(&keys.lost_floor)
                    .arg(Boot::generate().to_string())
                    .arg(&keys.reset)
                    .arg(pattern)
                    .arg(reason)
                    .arg(LOST_MARKS)
                    .invoke_async(&mut cmd)
                    .await
                    .map_err(|e| failure("reset", e))?;
                check(ep, seq)
            }
            Job::Purge { kind, value } => {
                let message = format!("{}\n{}\n{value}", self.config.node_id, kind.as_str());
                redis::cmd("PUBLISH")
                    .arg(&keys.purge)
                    .arg(message)
                    .query_async::<()>(&mut cmd)
                    .await
                    .map_err(|e| failure("purge", e))?;
                Ok(None)
            }
            // Answered by the writer before it gets here.
            Job::Flush(_) => Ok(None),
        }
    }

    /// What a job does on this instance alone.
    fn apply_locally(&self, job: &Job) -> Option<EventId> {
        match job {
            Job::Event {
                channel,
                event,
                data,
                ..
            } => Some(
                self.hub
                    .publish(channel, event.as_deref(), EventData::Text(data.clone())),
            ),
            Job::Reset { pattern, reason } => {
                self.hub.reset_matching(pattern, reason);
                None
            }
            // This instance purged already; the others will purge everything on rejoining.
            Job::Purge { .. } => None,
            Job::Flush(_) => None,
        }
    }

    /// Stop following channels nobody here has held for `linger`.
    async fn unfollow_idle(self: Arc<Self>, shutdown: CancellationToken) {
        let period = (self.config.linger / 2).max(Duration::from_millis(100));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let _serial = self.subscribing.lock().await;
            let now = Instant::now();
            let idle: Vec<(Arc<str>, bool)> = {
                let mut shared = self.lock();
                let linger = self.config.linger;
                let idle: Vec<(Arc<str>, bool)> = shared
                    .follows
                    .iter()
                    .filter(|(_, f)| {
                        f.holders == 0
                            && f.idle_since
                                .is_some_and(|at| now.saturating_duration_since(at) >= linger)
                    })
                    .map(|(name, f)| (name.clone(), f.subscribed))
                    .collect();
                for (name, _) in &idle {
                    shared.follows.remove(name);
                }
                idle
            };
            if idle.is_empty() {
                continue;
            }
            let subscribed: Vec<String> = idle
                .iter()
                .filter(|(_, s)| *s)
                .map(|(n, _)| format!("{}{n}", self.keys.events))
                .collect();
            if !subscribed.is_empty()
                && let Some(link) = self.link()
            {
                let mut sink = link.sink.clone();
                let done = tokio::time::timeout(self.config.timeout, sink.unsubscribe(subscribed));
                if !matches!(done.await, Ok(Ok(()))) {
                    self.lose(&link, "UNSUBSCRIBE failed");
                }
            }
            for (name, _) in &idle {
                // Its history here stops being complete from now on.
                self.hub.invalidate(name);
            }
        }
    }
}

/// An event name as the SSE encoder writes it (line breaks become spaces): the relayed
/// message separates its fields with line breaks.
fn one_line(event: &str) -> String {
    event.replace(['\r', '\n'], " ")
}

/// The `N` line-separated fields of a relayed message (the last one keeps any further line
/// breaks); `None` for a message with fewer, which is ignored (not one of ours).
fn fields<const N: usize>(payload: &str) -> Option<[&str; N]> {
    let mut parts = payload.splitn(N, '\n');
    let fields: [Option<&str>; N] = std::array::from_fn(|_| parts.next());
    if fields.iter().any(Option::is_none) {
        return None;
    }
    Some(fields.map(|f| f.unwrap_or_default()))
}

const LOST_DATA: &str = "Redis lost its data (a new epoch)";

/// The seq of a stream entry id `<seq>-0` (0 for anything else).
fn stream_seq(id: &str) -> u64 {
    id.split_once('-')
        .and_then(|(s, _)| s.parse().ok())
        .unwrap_or(0)
}

fn backfill_entry(id: &str, fields: &[String]) -> Backfill {
    let mut event = None;
    let mut data = String::new();
    for pair in fields.chunks(2) {
        if let [key, value] = pair {
            match key.as_str() {
                "e" if !value.is_empty() => event = Some(value.clone()),
                "d" => data = value.clone(),
                _ => {}
            }
        }
    }
    Backfill {
        seq: stream_seq(id),
        event,
        data,
    }
}
