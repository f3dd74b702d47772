//! The hub as a mirror of a cluster's sequence (`[cluster]`, see `crate::cluster`): ids are
//! assigned by Redis, in one order for every instance, and applied here in that order.
//!
//! The cluster layer is the only writer of the sequence in that mode; it calls:
//! - [`Hub::apply`] / [`Hub::apply_reset`] for each event or loss, in Redis order;
//! - [`Hub::advance`] at a barrier: every event of a followed channel up to that position
//!   has been applied, so the hub position may jump over events of other channels;
//! - [`Hub::backfill`] when it starts following a channel: its history from Redis;
//! - [`Hub::rebase`] when continuity is lost (Redis down or back, or its data lost): every
//!   subscriber gets one `reset` and ids continue in another id space.

use tokio::time::Instant;

use super::state::Entry;
use super::{Boot, EventId, Hub, RESET_EVENT, ResetReason};
use crate::sse::encode;

/// One event of a channel's shared history.
#[derive(Debug, Clone, PartialEq)]
pub struct Backfill {
    /// Its position in the cluster sequence.
    pub seq: u64,
    /// Its event name, if any.
    pub event: Option<String>,
    /// Its `data` text, as published.
    pub data: String,
}

impl Hub {
    /// Publish event `id`, numbered by the cluster. Ignored (false) when `id` is of another
    /// id space or not after the hub position: the caller lost continuity and rebases.
    pub fn apply(&self, id: EventId, channel: &str, event: Option<&str>, text: &str) -> bool {
        let inner = &*self.inner;
        let mut state = inner.lock();
        if id.boot != inner.boot() || id.seq <= state.seq {
            return false;
        }
        // The positions skipped are events of channels this hub does not follow: a channel
        // it has no record of cannot replay them.
        state.dropped_floor = state.dropped_floor.max(id.seq - 1);
        state.seq = id.seq;
        inner.publish_locked(state, id, channel, event, text);
        true
    }

    /// [`Hub::reset_matching`] at position `id`, numbered by the cluster. `None` when `id`
    /// does not follow the hub position (see [`Hub::apply`]).
    pub fn apply_reset(&self, id: EventId, pattern: &str, reason: &str) -> Option<usize> {
        let inner = &*self.inner;
        let mut state = inner.lock();
        if id.boot != inner.boot() || id.seq <= state.seq {
            return None;
        }
        state.dropped_floor = state.dropped_floor.max(id.seq - 1);
        state.seq = id.seq;
        Some(inner.reset_locked(state, id, pattern, reason))
    }

    /// Move the hub position to `id` if it is ahead: every event up to it that concerns
    /// this hub has been applied. False when `id` is of another id space.
    pub fn advance(&self, id: EventId) -> bool {
        let inner = &*self.inner;
        let mut state = inner.lock();
        if id.boot != inner.boot() {
            return false;
        }
        if id.seq > state.seq {
            // As in `apply`: what was skipped concerns channels this hub does not follow.
            state.dropped_floor = state.dropped_floor.max(id.seq);
            state.seq = id.seq;
            inner
                .cursor
                .store(id.seq, std::sync::atomic::Ordering::Release);
        }
        true
    }

    /// Continue in id space `boot` from position `seq`: all history is forgotten and every
    /// subscriber gets one `reset` (data says `reason`) with id `<boot>-<seq>`, after
    /// which it receives the events after `seq`. Returns the subscribers reset.
    pub fn rebase(&self, boot: Boot, seq: u64, reason: &str) -> usize {
        let inner = &*self.inner;
        let reason = ResetReason::SourceLost(reason.to_owned());
        let mut state = inner.lock();
        inner
            .boot
            .store(boot.raw(), std::sync::atomic::Ordering::Release);
        state.seq = seq;
        state.clear_history(seq);
        inner
            .cursor
            .store(seq, std::sync::atomic::Ordering::Release);
        let id = EventId { boot, seq };
        let frame = encode::event(&id.to_string(), Some(RESET_EVENT), &reason.data());
        let mut count = 0;
        for ch in state.channels.values() {
            for (_, sub) in ch.subscribers.iter() {
                if sub.push_reset(&frame, seq) {
                    count += 1;
                }
            }
        }
        inner.update_gauges(&state);
        drop(state);
        inner.metrics.reset(reason.as_str(), count as u64);
        count
    }

    /// This hub stops receiving `channel`'s events: a resume from before now on it resets
    /// until its history is read again.
    pub fn invalidate(&self, channel: &str) {
        let mut state = self.inner.lock();
        let seq = state.seq;
        if let Some(ch) = state.channels.get_mut(channel) {
            ch.gap_floor = ch.gap_floor.max(seq);
        }
    }

    /// Make `events` (ascending, the channel's shared history up to `upto`, complete after
    /// `floor`) the history of `channel` up to `upto`. False when the hub has moved to
    /// another id space since they were read.
    pub fn backfill(
        &self,
        boot: Boot,
        channel: &str,
        (upto, floor): (u64, u64),
        events: Vec<Backfill>,
    ) -> bool {
        let inner = &*self.inner;
        let entries: Vec<Entry> = events
            .into_iter()
            .filter(|e| e.seq <= upto)
            .map(|e| Entry {
                seq: e.seq,
                frame: encode::event(
                    &EventId { boot, seq: e.seq }.to_string(),
                    e.event.as_deref(),
                    &e.data,
                ),
            })
            .collect();
        let mut state = inner.lock();
        if boot != inner.boot() {
            return false;
        }
        state.replace_history(
            channel,
            entries,
            (upto, floor),
            Instant::now(),
            &inner.config,
        );
        inner.update_gauges(&state);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::HubConfig;

    fn hub() -> Hub {
        Hub::new(HubConfig::default())
    }

    fn ev(seq: u64, data: &str) -> Backfill {
        Backfill {
            seq,
            event: None,
            data: data.to_string(),
        }
    }

    fn drain(sub: &mut crate::hub::Subscription) -> Vec<String> {
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let mut out = Vec::new();
        while let std::task::Poll::Ready(Some(f)) = sub.poll_recv(&mut cx) {
            out.push(String::from_utf8_lossy(&f).into_owned());
        }
        out
    }

    #[test]
    fn applied_ids_are_the_clusters_and_stale_ones_are_refused() {
        let h = hub();
        let epoch: Boot = "00000000abcd".parse().unwrap();
        h.rebase(epoch, 10, "test");
        let mut sub = h.subscribe(&["a".to_string()], None, None).unwrap();
        assert!(h.apply(
            EventId {
                boot: epoch,
                seq: 12
            },
            "a",
            None,
            "x"
        ));
        assert!(!h.apply(
            EventId {
                boot: epoch,
                seq: 12
            },
            "a",
            None,
            "dup"
        ));
        assert!(!h.apply(
            EventId {
                boot: Boot::generate(),
                seq: 13
            },
            "a",
            None,
            "other"
        ));
        let frames = drain(&mut sub);
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert!(frames[0].starts_with("id: 00000000abcd-12\n"), "{frames:?}");
        assert_eq!(h.cursor().to_string(), "00000000abcd-12");
    }

    #[test]
    fn backfilled_history_replays_and_its_floor_is_kept() {
        let h = hub();
        let epoch: Boot = "0000000000e1".parse().unwrap();
        h.rebase(epoch, 0, "test");
        // Live event 9 arrived before the history read that covers up to 7.
        assert!(h.apply(
            EventId {
                boot: epoch,
                seq: 9
            },
            "a",
            None,
            "nine"
        ));
        assert!(h.backfill(epoch, "a", (7, 2), vec![ev(3, "three"), ev(7, "seven")]));
        assert!(h.advance(EventId {
            boot: epoch,
            seq: 20
        }));
        let mut sub = h
            .subscribe(&["a".to_string()], Some("0000000000e1-2"), None)
            .unwrap();
        let data: Vec<String> = drain(&mut sub)
            .iter()
            .map(|f| {
                f.lines()
                    .find(|l| l.starts_with("data:"))
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(data, ["data: three", "data: seven", "data: nine"]);
        let sub = h
            .subscribe(&["a".to_string()], Some("0000000000e1-1"), None)
            .unwrap();
        assert_eq!(sub.reset_reason(), Some("evicted"), "1 is before the floor");
    }

    #[test]
    fn rebase_resets_every_subscriber_once_and_forgets_history() {
        let h = hub();
        let mut sub = h
            .subscribe(&["a".to_string(), "b".to_string()], None, None)
            .unwrap();
        h.publish("a", None, "x".into());
        let epoch: Boot = "000000000fff".parse().unwrap();
        assert_eq!(h.rebase(epoch, 40, "cluster: lost Redis"), 1);
        let frames = drain(&mut sub);
        assert_eq!(frames.len(), 2);
        assert!(
            frames[1].starts_with("id: 000000000fff-40\nevent: reset\n"),
            "{frames:?}"
        );
        let again = h
            .subscribe(&["a".to_string()], Some("000000000fff-39"), None)
            .unwrap();
        assert_eq!(again.reset_reason(), Some("evicted"));
    }
}
