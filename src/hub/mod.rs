//! The channel hub: channels made on demand, each with a bounded history, fanning events
//! out to bounded subscriber queues, with replay from a `Last-Event-ID`.
//!
//! - [`Hub::publish`] assigns `<boot>-<seq>`, encodes the SSE frame once and queues the same
//!   `Bytes` to every subscriber of the channel.
//! - [`Hub::subscribe`] replays what a client missed, in id order across its channels, then
//!   goes live with no gap and no duplicate; when it cannot, the client gets one `reset`.
//! - [`Subscription`] unregisters itself on drop.
//!
//! One mutex guards the state; see `state.rs` for why that is the design, not a shortcut.
//! `model_tests.rs` checks the promise (each event once, in order, or one `reset`; never a
//! silent gap) on random sequences of operations against a model.

pub(crate) mod config;
mod error;
mod event;
pub(crate) mod glob;
mod id;
mod metrics;
mod mirror;
mod state;
mod stats;
mod subscriber;
mod subscription;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use config::HubConfig;
pub(crate) use error::SubscribeError;
pub use event::EventData;
pub(crate) use event::{RESET_EVENT, ResetReason};
pub(crate) use id::Boot;
pub use id::EventId;
pub(crate) use metrics::HubMetrics;
pub use metrics::ReasonLabels;
#[cfg(test)]
pub(crate) use metrics::SkipLabels;
pub(crate) use mirror::Backfill;
pub(crate) use subscriber::CloseReason;
pub(crate) use subscription::Subscription;

use crate::sse::encode;
use state::{Entry, State};
use subscriber::{Push, QueueBounds};

/// The hub. Cheap to clone: clones share one hub.
#[derive(Clone, Debug)]
pub struct Hub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The id space of `seq`: fixed for a lone instance; in a cluster the shared epoch, or
    /// a fresh local boot while Redis is unreachable (see `mirror.rs`). Written under the
    /// state lock, read without it.
    boot: AtomicU64,
    config: HubConfig,
    /// All channels, histories and subscriber registrations. Held while publishing (seq
    /// assignment + history + fan-out) so every subscriber receives events in seq order and
    /// subscribe sees either all of an event or none of it. Never held across an await.
    state: Mutex<State>,
    /// Copy of `State::seq`, written under the lock, read without it by [`Hub::cursor`].
    cursor: AtomicU64,
    metrics: HubMetrics,
}

impl Hub {
    /// A hub with a fresh boot id and metrics of its own (registered nowhere).
    pub fn new(config: HubConfig) -> Hub {
        Hub::with_metrics(config, HubMetrics::default())
    }

    /// A hub with a fresh boot id that counts into `metrics`.
    pub fn with_metrics(config: HubConfig, metrics: HubMetrics) -> Hub {
        Hub {
            inner: Arc::new(Inner {
                boot: AtomicU64::new(Boot::generate().raw()),
                config,
                state: Mutex::new(State::default()),
                cursor: AtomicU64::new(0),
                metrics,
            }),
        }
    }

    /// Its settings.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// Its metrics; register them once with [`HubMetrics::register`].
    pub fn metrics(&self) -> &HubMetrics {
        &self.inner.metrics
    }

    /// This hub's boot id.
    pub fn boot(&self) -> Boot {
        self.inner.boot()
    }

    /// The hub position now: the id of the last event published (`<boot>-0` before any).
    /// Sent as `Unpoll-Cursor`; a stream opened with it as Last-Event-ID receives exactly
    /// the events published after this call.
    pub fn cursor(&self) -> EventId {
        EventId {
            boot: self.inner.boot(),
            seq: self.inner.cursor.load(Ordering::Acquire),
        }
    }

    /// Publish an event on `channel` and return its id.
    pub fn publish(&self, channel: &str, event: Option<&str>, data: EventData) -> EventId {
        let text = data.as_text();
        let mut state = self.inner.lock();
        state.seq += 1;
        let id = EventId {
            boot: self.inner.boot(),
            seq: state.seq,
        };
        self.inner.publish_locked(state, id, channel, event, &text);
        id
    }

    /// Send `reset` (data says `reason`) to every subscriber of a channel matching
    /// `pattern` (`*` wildcards), and make resumes from before now on those channels reset
    /// too. For a source that lost events. The loss takes one position of the sequence (the
    /// reset's id), so the cursor advances. Returns the subscribers reset.
    pub fn reset_matching(&self, pattern: &str, reason: &str) -> usize {
        let mut state = self.inner.lock();
        // The loss takes a position of its own: a client holding the previous position
        // (a cursor, or its last event) has not seen it and must get a reset on resume.
        state.seq += 1;
        let id = EventId {
            boot: self.inner.boot(),
            seq: state.seq,
        };
        self.inner.reset_locked(state, id, pattern, reason)
    }

    /// Expire old history and drop idle channels now (normally done by
    /// [`Hub::run_sweeper`]). Returns the channels dropped.
    pub fn sweep(&self) -> usize {
        let mut state = self.inner.lock();
        let dropped = state.sweep(Instant::now(), &self.inner.config);
        self.inner.update_gauges(&state);
        dropped
    }

    /// Sweep every `sweep_interval` until `shutdown`.
    pub async fn run_sweeper(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.inner.config.sweep_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    self.sweep();
                }
            }
        }
    }
}

impl Inner {
    fn boot(&self) -> Boot {
        Boot::from_raw(self.boot.load(Ordering::Acquire))
    }

    /// Store and fan out event `id` (its seq already taken in `state`), then release the lock.
    fn publish_locked(
        &self,
        mut state: MutexGuard<'_, State>,
        id: EventId,
        channel: &str,
        event: Option<&str>,
        text: &str,
    ) {
        let now = Instant::now();
        let bounds = self.bounds();
        let frame = encode::event(&id.to_string(), event, text);
        let has_room = state.channels.contains_key(channel)
            || state.channels.len() < self.config.max_channels
            || {
                state.forced_sweep(now, &self.config);
                state.channels.len() < self.config.max_channels
            };
        let (mut queued, mut dropped) = (0u64, 0u64);
        if has_room {
            let ch = state.channel_mut(channel, now);
            ch.last_active = now;
            let floor = ch.gap_floor;
            for (_, sub) in ch.subscribers.iter() {
                match sub.push(&frame, id.seq, floor, bounds) {
                    Push::Queued => queued += 1,
                    // Counted as delivered when the subscriber reads it from history.
                    Push::Deferred => {}
                    // Counted as a disconnect when its subscription is dropped.
                    Push::Overflowed(n) => dropped += n as u64,
                    Push::Closed => {}
                }
            }
            let entry = Entry { seq: id.seq, frame };
            state.store(channel, entry, now, &self.config);
        } else {
            // Nobody watches this channel (it would exist otherwise) and there is no room
            // to remember it: resumes from before this event must get a reset.
            state.dropped_floor = id.seq;
            self.metrics.unstored.inc();
        }
        self.cursor.store(id.seq, Ordering::Release);
        self.update_gauges(&state);
        drop(state);
        let m = &self.metrics;
        m.published.inc();
        m.delivered.inc_by(queued);
        m.dropped.inc_by(dropped);
    }

    /// Reset the subscribers of channels matching `pattern` at position `id` (its seq
    /// already taken in `state`), then release the lock.
    fn reset_locked(
        &self,
        mut state: MutexGuard<'_, State>,
        id: EventId,
        pattern: &str,
        reason: &str,
    ) -> usize {
        let reason = ResetReason::SourceLost(reason.to_owned());
        let seq = id.seq;
        self.cursor.store(seq, Ordering::Release);
        let frame = encode::event(&id.to_string(), Some(RESET_EVENT), &reason.data());
        let mut count = 0;
        for (name, ch) in state.channels.iter_mut() {
            if !glob::matches(pattern, name) {
                continue;
            }
            ch.gap_floor = ch.gap_floor.max(seq);
            for (_, sub) in ch.subscribers.iter() {
                if sub.push_reset(&frame, seq) {
                    count += 1;
                }
            }
        }
        state.mark_lost(pattern, seq);
        drop(state);
        self.metrics.reset(reason.as_str(), count as u64);
        count
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation of State leaves it consistent between statements that can panic
        // (none of them allocate-and-fail in practice); keep serving after a panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bounds(&self) -> QueueBounds {
        QueueBounds {
            frames: self.config.subscriber_queue.max(1),
            bytes: self.config.subscriber_queue_bytes,
        }
    }

    fn update_gauges(&self, state: &State) {
        let m = &self.metrics;
        m.subscribers.set(state.subscribers as i64);
        m.channels.set(state.channels.len() as i64);
        m.history_events.set(state.history_events as i64);
        m.history_bytes.set(state.history_bytes as i64);
    }
}

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;
