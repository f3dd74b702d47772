//! The hub's shared state: channels with their history and subscribers, and the hub-wide
//! history order used for the count, byte and age bounds. Guarded by one mutex in
//! [`Hub`](super::Hub): publishing assigns the sequence number and fans out under it, which
//! is what makes every subscriber see events in id order across channels and makes the seam
//! between replay and live delivery exact.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use slab::Slab;
use tokio::time::Instant;

use super::config::HubConfig;
use super::glob;
use super::subscriber::SubShared;

/// One event kept for replay.
#[derive(Debug)]
pub(crate) struct Entry {
    pub seq: u64,
    /// The encoded frame, shared with every subscriber it was queued to.
    pub frame: Bytes,
}

/// A channel: exists while it has subscribers or recent history.
#[derive(Debug)]
pub(crate) struct Channel {
    /// Most recent events, oldest first. Bounded by `history_max_events` here and by the
    /// hub-wide bounds through [`State::fifo`]; full → oldest evicted, `gap_floor` raised.
    /// Read by resuming clients and by subscribers whose queue filled up (they catch up from
    /// here rather than holding a copy of a burst each; see `subscriber.rs`).
    pub history: VecDeque<Entry>,
    /// Subscribers' queues. The slab key is kept by the subscription to unregister in O(1).
    pub subscribers: Slab<Arc<SubShared>>,
    /// A resume from seq `s` is complete for this channel only if `s >= gap_floor`: every
    /// event of this channel after `gap_floor` is still in `history`.
    pub gap_floor: u64,
    /// Last publish, subscribe or unsubscribe; idle channels are dropped after a TTL.
    pub last_active: Instant,
}

/// Position of one history entry in the hub-wide order.
#[derive(Debug)]
pub(crate) struct FifoEntry {
    seq: u64,
    channel: Arc<str>,
    at: Instant,
}

/// Where "a source lost events" marks are kept for channels that do not exist yet. Full:
/// the oldest mark is folded into `dropped_floor` (resets more often, never less).
const MAX_LOST_MARKS: usize = 64;

/// Everything behind the hub's mutex.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Last assigned sequence number (0 before the first event).
    pub seq: u64,
    pub channels: HashMap<Arc<str>, Channel>,
    /// Every history entry in seq order, for the hub-wide bounds. May hold entries already
    /// evicted from their channel (by its own count bound or its drop); those are skipped.
    /// Bounded by `history_max_total`; full → oldest evicted.
    fifo: VecDeque<FifoEntry>,
    /// Live history entries and their bytes, all channels.
    pub history_events: usize,
    pub history_bytes: usize,
    /// A channel that does not exist has no record of what it lost: a resume from before
    /// this seq gets a reset on it. Raised when a channel is dropped with its history.
    pub dropped_floor: u64,
    /// `(pattern, seq)`: a source lost events on matching channels up to `seq`.
    lost_marks: VecDeque<(Box<str>, u64)>,
    /// Subscriptions open, in total and per client address (entries removed at zero).
    pub subscribers: usize,
    pub per_ip: HashMap<IpAddr, u32>,
    /// Last sweep forced by a full channel table; such sweeps walk every channel under the
    /// lock, so they are rate-limited to one per [`FORCED_SWEEP_EVERY`].
    last_forced_sweep: Option<Instant>,
}

/// Minimum interval between two sweeps forced by `max_channels`.
pub(crate) const FORCED_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl State {
    /// The gap floor of a channel created now under `name`.
    pub fn floor_for_new(&self, name: &str) -> u64 {
        self.lost_marks
            .iter()
            .filter(|(pattern, _)| glob::matches(pattern, name))
            .map(|&(_, seq)| seq)
            .fold(self.dropped_floor, u64::max)
    }

    /// The channel `name`, created if missing.
    pub fn channel_mut(&mut self, name: &str, now: Instant) -> &mut Channel {
        if !self.channels.contains_key(name) {
            let channel = Channel {
                history: VecDeque::new(),
                subscribers: Slab::new(),
                gap_floor: self.floor_for_new(name),
                last_active: now,
            };
            self.channels.insert(Arc::from(name), channel);
        }
        // Inserted just above if it was missing.
        self.channels.get_mut(name).expect("channel present")
    }

    /// Append an event to `name`'s history and enforce every history bound.
    pub fn store(&mut self, name: &str, entry: Entry, now: Instant, config: &HubConfig) {
        let key = match self.channels.get_key_value(name) {
            Some((k, _)) => k.clone(),
            None => return,
        };
        let len = entry.frame.len();
        let seq = entry.seq;
        let mut evicted_bytes = 0;
        let mut evicted = 0;
        if let Some(ch) = self.channels.get_mut(name) {
            ch.history.push_back(entry);
            while ch.history.len() > config.history_max_events {
                if let Some(old) = ch.history.pop_front() {
                    ch.gap_floor = ch.gap_floor.max(old.seq);
                    evicted_bytes += old.frame.len();
                    evicted += 1;
                }
            }
        }
        self.history_events = self.history_events + 1 - evicted;
        self.history_bytes = self.history_bytes + len - evicted_bytes;
        self.fifo.push_back(FifoEntry {
            seq,
            channel: key,
            at: now,
        });
        while self.fifo.len() > config.history_max_total
            || self.history_bytes > config.history_max_bytes
        {
            if !self.evict_oldest() {
                break;
            }
        }
        self.expire(now, config);
    }

    /// Evict history older than `history_max_age`.
    pub fn expire(&mut self, now: Instant, config: &HubConfig) {
        while let Some(front) = self.fifo.front() {
            if now.saturating_duration_since(front.at) <= config.history_max_age {
                break;
            }
            self.evict_oldest();
        }
    }

    /// Pop the hub-wide oldest entry, evicting it from its channel if still there.
    fn evict_oldest(&mut self) -> bool {
        let Some(front) = self.fifo.pop_front() else {
            return false;
        };
        if let Some(ch) = self.channels.get_mut(&*front.channel)
            && ch.history.front().is_some_and(|e| e.seq == front.seq)
            && let Some(old) = ch.history.pop_front()
        {
            ch.gap_floor = ch.gap_floor.max(old.seq);
            self.history_events -= 1;
            self.history_bytes -= old.frame.len();
        }
        true
    }

    /// Drop channel `name` if it has no subscriber and either no history or no activity for
    /// `idle_ttl`. What it could have replayed is folded into `dropped_floor`.
    pub fn drop_if_idle(&mut self, name: &str, now: Instant, config: &HubConfig) -> bool {
        let Some(ch) = self.channels.get(name) else {
            return false;
        };
        let idle = ch.subscribers.is_empty()
            && (ch.history.is_empty()
                || now.saturating_duration_since(ch.last_active) >= config.channel_idle_ttl);
        if !idle {
            return false;
        }
        if let Some(ch) = self.channels.remove(name) {
            self.forget(&ch);
        }
        true
    }

    fn forget(&mut self, ch: &Channel) {
        let last = ch.history.back().map_or(ch.gap_floor, |e| e.seq);
        self.dropped_floor = self.dropped_floor.max(last);
        self.history_events -= ch.history.len();
        self.history_bytes -= ch.history.iter().map(|e| e.frame.len()).sum::<usize>();
    }

    /// Expire old history and drop idle channels; returns the channels dropped.
    pub fn sweep(&mut self, now: Instant, config: &HubConfig) -> usize {
        self.expire(now, config);
        let idle: Vec<Arc<str>> = self
            .channels
            .iter()
            .filter(|(_, ch)| {
                ch.subscribers.is_empty()
                    && (ch.history.is_empty()
                        || now.saturating_duration_since(ch.last_active) >= config.channel_idle_ttl)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for name in &idle {
            if let Some(ch) = self.channels.remove(name) {
                self.forget(&ch);
            }
        }
        // Stale fifo entries of dropped channels are skipped when they reach the front;
        // compact when they dominate so the fifo's memory follows the live history.
        if self.fifo.len() > 2 * self.history_events + 1024 {
            let channels = &self.channels;
            self.fifo.retain(|f| {
                channels
                    .get(&*f.channel)
                    .is_some_and(|ch| ch.history.front().is_some_and(|e| e.seq <= f.seq))
            });
        }
        idle.len()
    }

    /// Sweep because the channel table is full, at most once per [`FORCED_SWEEP_EVERY`]
    /// (a flood of publishes to new channels must not turn every publish into a full walk).
    pub fn forced_sweep(&mut self, now: Instant, config: &HubConfig) {
        if self
            .last_forced_sweep
            .is_some_and(|at| now.saturating_duration_since(at) < FORCED_SWEEP_EVERY)
        {
            return;
        }
        self.last_forced_sweep = Some(now);
        self.sweep(now, config);
    }

    /// Forget all history: the sequence starts over in another id space (see
    /// `Hub::rebase`). Every resume from before `floor` resets.
    pub fn clear_history(&mut self, floor: u64) {
        for ch in self.channels.values_mut() {
            ch.history = VecDeque::new();
            ch.gap_floor = floor;
        }
        self.fifo = VecDeque::new();
        self.history_events = 0;
        self.history_bytes = 0;
        self.dropped_floor = floor;
        self.lost_marks.clear();
    }

    /// Make `entries` (ascending, all at or below `upto`) the history of `name` up to
    /// `upto`, keeping what it holds after `upto`, complete after `floor`: a channel's
    /// history read from the cluster's shared store. Every bound is enforced after.
    pub fn replace_history(
        &mut self,
        name: &str,
        entries: Vec<Entry>,
        (upto, floor): (u64, u64),
        now: Instant,
        config: &HubConfig,
    ) {
        self.channel_mut(name, now);
        let Some(key) = self.channels.get_key_value(name).map(|(k, _)| k.clone()) else {
            return;
        };
        let Some(ch) = self.channels.get_mut(name) else {
            return;
        };
        // Entries it already had up to `upto` are replaced; their fifo positions go stale
        // and are skipped when they reach the front.
        let keep_from = ch.history.partition_point(|e| e.seq <= upto);
        let removed: Vec<Entry> = ch.history.drain(..keep_from).collect();
        let removed_bytes: usize = removed.iter().map(|e| e.frame.len()).sum();
        let added = entries.len();
        let added_bytes: usize = entries.iter().map(|e| e.frame.len()).sum();
        for entry in entries.into_iter().rev() {
            let at = self.fifo.partition_point(|f| f.seq < entry.seq);
            self.fifo.insert(
                at,
                FifoEntry {
                    seq: entry.seq,
                    channel: key.clone(),
                    at: now,
                },
            );
            ch.history.push_front(entry);
        }
        ch.gap_floor = floor;
        ch.last_active = now;
        let mut evicted = 0;
        let mut evicted_bytes = 0;
        while ch.history.len() > config.history_max_events {
            if let Some(old) = ch.history.pop_front() {
                ch.gap_floor = ch.gap_floor.max(old.seq);
                evicted += 1;
                evicted_bytes += old.frame.len();
            }
        }
        self.history_events = self.history_events + added - removed.len() - evicted;
        self.history_bytes = self.history_bytes + added_bytes - removed_bytes - evicted_bytes;
        while self.fifo.len() > config.history_max_total
            || self.history_bytes > config.history_max_bytes
        {
            if !self.evict_oldest() {
                break;
            }
        }
    }

    /// Record that a source lost events on channels matching `pattern` up to `seq`.
    pub fn mark_lost(&mut self, pattern: &str, seq: u64) {
        if self.lost_marks.len() >= MAX_LOST_MARKS
            && let Some((_, old)) = self.lost_marks.pop_front()
        {
            self.dropped_floor = self.dropped_floor.max(old);
        }
        self.lost_marks.push_back((pattern.into(), seq));
    }
}
