//! A model-based test of the hub's promise to every subscriber: each event of its channels
//! exactly once, in id order, or one `reset`; never a silent gap.
//!
//! Random sequences of publish, subscribe (live, resuming from any position, or from another
//! boot's id), reconnect from the last id seen, reads, drops, sweeps, reset-by-pattern and
//! time passing run against a hub with tiny limits (history, queues, channels), so that
//! history eviction, expiry, idle channels, unstored events, queue overflow and catch-up
//! all happen. The model is only the log of what was published: every frame a subscriber
//! reads is checked against it, and at the end every open subscriber must have read up to
//! the last event of its channels.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;

use super::tests::{parse, ready};
use super::*;

const CHANNELS: [&str; 4] = ["a", "b1", "b2", "c"];
const PATTERNS: [&str; 3] = ["a", "b*", "*"];

/// Small enough that every bound is hit within a few dozen operations.
fn config() -> HubConfig {
    HubConfig {
        history_max_events: 3,
        history_max_total: 7,
        history_max_age: Duration::from_secs(30),
        subscriber_queue: 2,
        channel_idle_ttl: Duration::from_secs(60),
        max_channels: 3,
        ..HubConfig::default()
    }
}

#[derive(Debug, Clone)]
enum From {
    /// No Last-Event-ID: live from now.
    Now,
    /// This hub's id at a position between 0 and the current one (taken modulo).
    Position(u64),
    /// An id of another boot of unpoll.
    Foreign,
}

#[derive(Debug, Clone)]
enum Op {
    Publish(usize),
    Subscribe {
        channels: Vec<usize>,
        from: From,
    },
    /// Drop subscriber `n` (modulo) and subscribe again from the last id it read, as a
    /// browser's EventSource does after its connection ended.
    Reconnect(usize),
    Read(usize),
    Drop(usize),
    Sweep,
    Reset(usize),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let from = prop_oneof![
        2 => Just(From::Now),
        3 => any::<u64>().prop_map(From::Position),
        1 => Just(From::Foreign),
    ];
    prop_oneof![
        8 => (0..CHANNELS.len()).prop_map(Op::Publish),
        3 => (proptest::collection::vec(0..CHANNELS.len(), 1..3), from)
            .prop_map(|(channels, from)| Op::Subscribe { channels, from }),
        2 => any::<usize>().prop_map(Op::Reconnect),
        4 => any::<usize>().prop_map(Op::Read),
        1 => any::<usize>().prop_map(Op::Drop),
        1 => Just(Op::Sweep),
        1 => (0..PATTERNS.len()).prop_map(Op::Reset),
        2 => (1u64..=45).prop_map(Op::Advance),
    ]
}

/// What was published: each position of the sequence is an event on a channel or a loss
/// on the channels matching a pattern (a reset by pattern takes a position of its own).
#[derive(Default)]
struct Log {
    events: BTreeMap<u64, &'static str>,
    losses: BTreeMap<u64, &'static str>,
}

impl Log {
    /// The first position strictly between `after` and `before` that a subscriber of
    /// `channels` must not pass silently: an event of its channels, or a loss on them (which
    /// only a reset may stand for).
    fn missed(&self, channels: &[&str], after: u64, before: u64) -> Option<u64> {
        if before <= after + 1 {
            return None;
        }
        let event = self
            .events
            .range(after + 1..before)
            .find(|(_, ch)| channels.contains(ch))
            .map(|(seq, _)| *seq);
        let loss = self
            .losses
            .range(after + 1..before)
            .find(|(_, pattern)| channels.iter().any(|ch| glob::matches(pattern, ch)))
            .map(|(seq, _)| *seq);
        event.into_iter().chain(loss).min()
    }
}

/// One subscriber as the model sees it.
struct Subscriber {
    sub: Subscription,
    channels: Vec<&'static str>,
    /// Position of the last frame it read (an event or a reset), or where it started.
    pos: u64,
    /// Started from another boot's id: its first frame must be a reset.
    must_reset_first: bool,
    read_any: bool,
}

impl Subscriber {
    /// Read what is ready and check each frame against the log.
    fn read(&mut self, hub: &Hub, log: &Log) -> Result<(), TestCaseError> {
        for frame in ready(&mut self.sub) {
            self.check(hub, log, &frame)?;
        }
        Ok(())
    }

    fn check(&mut self, hub: &Hub, log: &Log, frame: &Bytes) -> Result<(), TestCaseError> {
        let (id, event, _) = parse(frame);
        let id: EventId = id
            .parse()
            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(id.boot, hub.boot(), "frames carry this hub's ids");
        let is_reset = event.as_deref() == Some(RESET_EVENT);
        if self.must_reset_first && !self.read_any {
            prop_assert!(
                is_reset,
                "a foreign id starts with a reset, got {:?}",
                frame
            );
        }
        self.read_any = true;
        if is_reset {
            // One reset stands for whatever was lost before it.
            prop_assert!(
                id.seq >= self.pos,
                "reset {} goes back (at {})",
                id.seq,
                self.pos
            );
            self.pos = id.seq;
            return Ok(());
        }
        let channel = log.events.get(&id.seq).copied();
        prop_assert!(
            channel.is_some_and(|ch| self.channels.contains(&ch)),
            "event {} is not of {:?}",
            id.seq,
            self.channels
        );
        prop_assert!(
            id.seq > self.pos,
            "event {} again or out of order (at {})",
            id.seq,
            self.pos
        );
        let missed = log.missed(&self.channels, self.pos, id.seq);
        prop_assert_eq!(
            missed,
            None,
            "silent gap: {} read after {} on {:?}",
            id.seq,
            self.pos,
            &self.channels
        );
        self.pos = id.seq;
        Ok(())
    }
}

/// Subscribe and record where the subscriber starts; `None` when refused (limits).
fn subscribe(hub: &Hub, channels: Vec<&'static str>, from: &From) -> Option<Subscriber> {
    let names: Vec<String> = channels.iter().map(|c| c.to_string()).collect();
    let position = hub.cursor().seq;
    let (last_event_id, pos, must_reset_first) = match from {
        From::Now => (None, position, false),
        From::Position(p) => {
            let seq = p % (position + 1);
            let id = EventId {
                boot: hub.boot(),
                seq,
            };
            (Some(id.to_string()), seq, false)
        }
        From::Foreign => {
            let other = Hub::new(HubConfig::default()).boot();
            let id = EventId {
                boot: other,
                seq: position,
            };
            (Some(id.to_string()), position, true)
        }
    };
    let sub = hub.subscribe(&names, last_event_id.as_deref(), None).ok()?;
    Some(Subscriber {
        sub,
        channels,
        pos,
        must_reset_first,
        read_any: false,
    })
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let hub = Hub::new(config());
    let mut log = Log::default();
    let mut subs: Vec<Subscriber> = Vec::new();
    let pick = |subs: &Vec<Subscriber>, n: usize| (!subs.is_empty()).then(|| n % subs.len());
    for op in ops {
        match op {
            Op::Publish(c) => {
                let id = hub.publish(CHANNELS[c], None, CHANNELS[c].into());
                log.events.insert(id.seq, CHANNELS[c]);
            }
            Op::Subscribe { channels, from } => {
                let mut names: Vec<&'static str> = channels.iter().map(|&c| CHANNELS[c]).collect();
                names.sort_unstable();
                names.dedup();
                subs.extend(subscribe(&hub, names, &from));
            }
            Op::Reconnect(n) => {
                if let Some(i) = pick(&subs, n) {
                    let old = subs.swap_remove(i);
                    let from = From::Position(old.pos);
                    // Its position is at most the hub's: taken modulo, it stays itself.
                    let channels = old.channels.clone();
                    drop(old);
                    subs.extend(subscribe(&hub, channels, &from));
                }
            }
            Op::Read(n) => {
                if let Some(i) = pick(&subs, n) {
                    subs[i].read(&hub, &log)?;
                }
            }
            Op::Drop(n) => {
                if let Some(i) = pick(&subs, n) {
                    subs.swap_remove(i);
                }
            }
            Op::Sweep => {
                hub.sweep();
            }
            Op::Reset(p) => {
                hub.reset_matching(PATTERNS[p], "lost");
                log.losses.insert(hub.cursor().seq, PATTERNS[p]);
            }
            Op::Advance(secs) => {
                // The clock is paused: it moves only here.
                tokio::time::advance(Duration::from_secs(secs)).await;
            }
        }
    }
    // Everything published reaches every subscriber still open.
    let last = hub.cursor().seq;
    for s in &mut subs {
        s.read(&hub, &log)?;
        if s.sub.closed().is_some() {
            continue;
        }
        let missed = log.missed(&s.channels, s.pos, last + 1);
        prop_assert_eq!(
            missed,
            None,
            "never delivered to an open subscriber of {:?} (at {})",
            &s.channels,
            s.pos
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_subscriber_gets_each_event_once_in_order_or_a_reset(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(run(ops))?;
    }
}
