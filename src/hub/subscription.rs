//! Subscribing: limits, the replay-or-reset decision, registration, and the
//! [`Subscription`] handle whose drop unregisters it.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::time::Instant;

use super::state::State;
use super::subscriber::{CloseReason, Pop, SubShared};
use super::{EventId, Hub, Inner, RESET_EVENT, ResetReason, SubscribeError};
use crate::sse::encode;

/// Where a new subscription starts.
enum Start {
    /// Live from now: no Last-Event-ID, or one equal to the hub position.
    Live,
    /// Replay every event after this seq, then live.
    Replay(u64),
    /// One `reset`, then live.
    Reset(ResetReason),
}

/// An open subscription: replayed frames, then live frames, in id order. Dropping it
/// unregisters it from every channel (and frees its limit slots).
#[derive(Debug)]
pub struct Subscription {
    hub: Arc<Inner>,
    /// Its queue, also referenced from each channel's subscriber slab.
    shared: Arc<SubShared>,
    /// `(channel, slab key)` of each registration, undone on drop.
    keys: Box<[(Arc<str>, usize)]>,
    /// Counted against `max_subscribers_per_ip`; released on drop.
    ip: Option<IpAddr>,
    /// Frames from history (or the single reset) sent before anything from the queue.
    replay: std::vec::IntoIter<Bytes>,
    /// Hub position when it subscribed.
    start: EventId,
    /// Why it began with a reset, if it did.
    reset: Option<&'static str>,
    /// Whatever must live as long as the subscription (the cluster's hold on its channels).
    held: Option<Held>,
}

/// See [`Subscription::hold`].
struct Held(#[allow(dead_code)] Box<dyn std::any::Any + Send + Sync>);

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Held")
    }
}

impl Hub {
    /// Subscribe `client` to `channels` (duplicates ignored), resuming after
    /// `last_event_id` when given.
    pub fn subscribe(
        &self,
        channels: &[String],
        last_event_id: Option<&str>,
        client: Option<IpAddr>,
    ) -> Result<Subscription, SubscribeError> {
        let inner = &self.inner;
        let config = &inner.config;
        let mut names: Vec<&str> = channels.iter().map(String::as_str).collect();
        names.sort_unstable();
        names.dedup();
        if names.is_empty() {
            return Err(SubscribeError::NoChannels);
        }
        if names.len() > config.max_channels_per_subscription {
            return Err(SubscribeError::TooManyChannels {
                count: names.len(),
                max: config.max_channels_per_subscription,
            });
        }
        let now = Instant::now();
        let mut state = inner.lock();
        if let Err(e) = check_limits(&mut state, inner, &names, client, now) {
            drop(state);
            inner.metrics.rejected(e.as_str());
            return Err(e);
        }
        let start = EventId {
            boot: inner.boot(),
            seq: state.seq,
        };
        let replay = match decide(&state, inner, &names, last_event_id) {
            Start::Live => Ok(Vec::new()),
            Start::Replay(after) => Ok(collect_replay(&state, &names, after)),
            Start::Reset(reason) => Err(reason),
        };
        let shared = Arc::new(SubShared::default());
        let keys: Box<[(Arc<str>, usize)]> = names
            .iter()
            .map(|name| {
                let ch = state.channel_mut(name, now);
                ch.last_active = now;
                let key = ch.subscribers.insert(shared.clone());
                let name = state
                    .channels
                    .get_key_value(*name)
                    .map_or_else(|| Arc::from(*name), |(k, _)| k.clone());
                (name, key)
            })
            .collect();
        state.subscribers += 1;
        if let Some(ip) = client {
            *state.per_ip.entry(ip).or_insert(0) += 1;
        }
        inner.update_gauges(&state);
        drop(state);

        let (replay, reset) = match replay {
            Ok(frames) => (frames, None),
            Err(reason) => {
                let frame = encode::event(&start.to_string(), Some(RESET_EVENT), &reason.data());
                inner.metrics.reset(reason.as_str(), 1);
                (vec![frame], Some(reason.as_str()))
            }
        };
        inner.metrics.delivered.inc_by(replay.len() as u64);
        Ok(Subscription {
            hub: inner.clone(),
            shared,
            keys,
            ip: client,
            replay: replay.into_iter(),
            start,
            reset,
            held: None,
        })
    }
}

fn check_limits(
    state: &mut State,
    inner: &Inner,
    names: &[&str],
    client: Option<IpAddr>,
    now: Instant,
) -> Result<(), SubscribeError> {
    let config = &inner.config;
    let retry_after = config.retry_after;
    if state.subscribers >= config.max_subscribers {
        return Err(SubscribeError::HubFull { retry_after });
    }
    if let Some(ip) = client
        && state.per_ip.get(&ip).copied().unwrap_or(0) as usize >= config.max_subscribers_per_ip
    {
        return Err(SubscribeError::IpFull { retry_after });
    }
    let mut missing = 0;
    for name in names {
        match state.channels.get(*name) {
            Some(ch) if ch.subscribers.len() >= config.max_subscribers_per_channel => {
                return Err(SubscribeError::ChannelFull {
                    channel: (*name).to_owned(),
                    retry_after,
                });
            }
            Some(_) => {}
            None => missing += 1,
        }
    }
    if missing > 0 && state.channels.len() + missing > config.max_channels {
        state.forced_sweep(now, config);
        if state.channels.len() + missing > config.max_channels {
            return Err(SubscribeError::ChannelsFull { retry_after });
        }
    }
    Ok(())
}

/// Replay, reset or live, decided under the lock so nothing is published in between.
fn decide(state: &State, inner: &Inner, names: &[&str], last_event_id: Option<&str>) -> Start {
    let Some(text) = last_event_id.map(str::trim).filter(|t| !t.is_empty()) else {
        return Start::Live;
    };
    let Ok(id) = text.parse::<EventId>() else {
        return Start::Reset(ResetReason::Unparsable);
    };
    if id.boot != inner.boot() {
        return Start::Reset(ResetReason::OtherBoot);
    }
    if id.seq > state.seq {
        return Start::Reset(ResetReason::Unknown);
    }
    if id.seq == state.seq {
        return Start::Live;
    }
    let complete = names.iter().all(|name| {
        let floor = match state.channels.get(*name) {
            Some(ch) => ch.gap_floor,
            None => state.floor_for_new(name),
        };
        id.seq >= floor
    });
    if complete {
        Start::Replay(id.seq)
    } else {
        Start::Reset(ResetReason::Evicted)
    }
}

/// Every stored event after `after` on `names`, in seq order across channels.
fn collect_replay(state: &State, names: &[&str], after: u64) -> Vec<Bytes> {
    let mut entries: Vec<(u64, Bytes)> = Vec::new();
    for name in names {
        if let Some(ch) = state.channels.get(*name) {
            let from = ch.history.partition_point(|e| e.seq <= after);
            entries.extend(ch.history.range(from..).map(|e| (e.seq, e.frame.clone())));
        }
    }
    entries.sort_unstable_by_key(|(seq, _)| *seq);
    entries.into_iter().map(|(_, frame)| frame).collect()
}

impl Subscription {
    /// The next frame: replay first, then live. `Ready(None)` when the subscription has
    /// been closed (overflow: its client should reconnect with its Last-Event-ID).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if let Some(frame) = self.replay.next() {
            return Poll::Ready(Some(frame));
        }
        loop {
            match self.shared.poll_pop(cx) {
                Pop::Frame(frame) => return Poll::Ready(Some(frame)),
                Pop::Pending => return Poll::Pending,
                Pop::Ended => return Poll::Ready(None),
                // Refills the queue, goes live again or closes it: the next pop makes
                // progress either way.
                Pop::CatchUp(after) => self.catch_up(after),
            }
        }
    }

    /// Its queue filled up and was drained: read what it missed after `after` from its
    /// channels' history, at most one queue's worth (the same bounds) at a time, in seq
    /// order across channels. History that no longer holds all of it means this subscriber
    /// fell behind: closed as [`CloseReason::Overflow`], its client resumes and gets a
    /// `reset`. Under the hub lock, so the seam with live publishing is exact.
    fn catch_up(&self, after: u64) {
        let inner = &*self.hub;
        let bounds = inner.bounds();
        let state = inner.lock();
        let behind = self.keys.iter().any(|(name, _)| {
            let floor = state
                .channels
                .get(&**name)
                .map_or_else(|| state.floor_for_new(name), |ch| ch.gap_floor);
            after < floor
        });
        if behind {
            drop(state);
            self.shared.fall_behind();
            return;
        }
        let mut available = 0;
        let mut entries: Vec<(u64, &Bytes)> = Vec::new();
        for (name, _) in self.keys.iter() {
            if let Some(ch) = state.channels.get(&**name) {
                let from = ch.history.partition_point(|e| e.seq <= after);
                available += ch.history.len() - from;
                entries.extend(
                    ch.history
                        .range(from..)
                        .take(bounds.frames)
                        .map(|e| (e.seq, &e.frame)),
                );
            }
        }
        entries.sort_unstable_by_key(|(seq, _)| *seq);
        let (mut frames, mut bytes, mut last) = (Vec::new(), 0, after);
        for (seq, frame) in entries {
            if frames.len() >= bounds.frames
                || (!frames.is_empty() && bytes + frame.len() > bounds.bytes)
            {
                break;
            }
            bytes += frame.len();
            frames.push(frame.clone());
            last = seq;
        }
        let taken = frames.len();
        self.shared.refill(frames, last, taken == available);
        drop(state);
        inner.metrics.delivered.inc_by(taken as u64);
    }

    /// Async form of [`Subscription::poll_recv`].
    pub async fn recv(&mut self) -> Option<Bytes> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The hub position when it subscribed.
    pub fn start(&self) -> EventId {
        self.start
    }

    /// Why it began with a `reset` (`ResetReason::as_str`), if it did.
    pub fn reset_reason(&self) -> Option<&'static str> {
        self.reset
    }

    /// The channels it is registered on.
    pub fn channels(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(name, _)| &**name)
    }

    /// End it for `reason` (the first reason wins); pending frames are still delivered.
    pub fn close(&self, reason: CloseReason) {
        self.shared.close(reason);
    }

    /// Run `hook` (once) if this subscription overflows: the stream layer uses it to close
    /// a connection that is blocked writing to a client that stopped reading.
    pub fn on_overflow(&self, hook: impl FnOnce() + Send + 'static) {
        self.shared.set_on_overflow(Box::new(hook));
    }

    /// Keep `value` until this subscription is dropped: the cluster's hold on its channels
    /// (they are read from Redis while someone here subscribes to them).
    pub fn hold(&mut self, value: impl std::any::Any + Send + Sync) {
        self.held = Some(Held(Box::new(value)));
    }

    /// Why it ended, if it did.
    pub fn closed(&self) -> Option<CloseReason> {
        self.shared.closed()
    }
}

impl futures_util::Stream for Subscription {
    type Item = Bytes;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        self.get_mut().poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let reason = self.shared.closed().unwrap_or(CloseReason::ClientClosed);
        self.shared.close(reason);
        let inner = &*self.hub;
        let now = Instant::now();
        let mut state = inner.lock();
        for (name, key) in self.keys.iter() {
            if let Some(ch) = state.channels.get_mut(&**name) {
                ch.subscribers.try_remove(*key);
                ch.last_active = now;
            }
            state.drop_if_idle(name, now, &inner.config);
        }
        state.subscribers = state.subscribers.saturating_sub(1);
        if let Some(ip) = self.ip
            && let Some(n) = state.per_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                state.per_ip.remove(&ip);
            }
        }
        inner.update_gauges(&state);
        drop(state);
        inner.metrics.disconnect(reason);
    }
}
