//! Hub behaviour: replay, seam, reset, overflow, limits, eviction.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;

use super::*;

fn hub() -> Hub {
    Hub::new(HubConfig::default())
}

fn chans(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// `(id, event, data)` of one frame.
pub(super) fn parse(frame: &Bytes) -> (String, Option<String>, String) {
    let text = std::str::from_utf8(frame).expect("utf-8 frame");
    let (mut id, mut event, mut data) = (String::new(), None, Vec::new());
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("id: ") {
            id = v.to_owned();
        } else if let Some(v) = line.strip_prefix("event: ") {
            event = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("data: ") {
            data.push(v);
        }
    }
    (id, event, data.join("\n"))
}

fn seq_of(frame: &Bytes) -> u64 {
    parse(frame).0.parse::<EventId>().expect("event id").seq
}

fn id_of(frame: &Bytes) -> String {
    parse(frame).0
}

/// Drain what is ready now without waiting.
pub(super) fn ready(sub: &mut Subscription) -> Vec<Bytes> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut out = Vec::new();
    while let std::task::Poll::Ready(Some(f)) = sub.poll_recv(&mut cx) {
        out.push(f);
    }
    out
}

#[test]
fn publish_assigns_monotonic_ids_and_moves_the_cursor() {
    let h = hub();
    assert_eq!(h.cursor().seq, 0);
    let a = h.publish("a", Some("x"), "1".into());
    let b = h.publish("b", None, serde_json::json!({"k": 1}).into());
    assert_eq!((a.seq, b.seq), (1, 2));
    assert_eq!(a.boot, h.boot());
    assert_eq!(h.cursor(), b);
    assert_ne!(hub().boot(), h.boot(), "each hub has its own boot");
}

#[test]
fn live_delivery_shares_one_encoded_frame_and_filters_by_channel() {
    let h = hub();
    let mut s1 = h.subscribe(&chans(&["bot:1"]), None, None).unwrap();
    let mut s2 = h.subscribe(&chans(&["bot:1"]), None, None).unwrap();
    let mut other = h.subscribe(&chans(&["bot:2"]), None, None).unwrap();
    let id = h.publish("bot:1", Some("msg"), serde_json::json!({"t": "hi"}).into());
    let f1 = ready(&mut s1);
    let f2 = ready(&mut s2);
    assert_eq!(f1.len(), 1);
    assert_eq!(f1[0].as_ptr(), f2[0].as_ptr(), "encoded once, bytes shared");
    assert_eq!(
        parse(&f1[0]),
        (id.to_string(), Some("msg".into()), r#"{"t":"hi"}"#.into())
    );
    assert!(
        ready(&mut other).is_empty(),
        "bot:2 never sees bot:1 events"
    );
}

#[test]
fn replay_across_two_channels_in_id_order() {
    let h = hub();
    let start = h.cursor().to_string();
    let mut published = Vec::new();
    for i in 0..6 {
        let ch = ["a", "b", "c"][i % 3];
        published.push((ch, h.publish(ch, None, format!("{i}").into())));
    }
    let mut sub = h
        .subscribe(&chans(&["b", "a"]), Some(&start), None)
        .unwrap();
    let got: Vec<String> = ready(&mut sub).iter().map(|f| parse(f).0).collect();
    let want: Vec<String> = published
        .iter()
        .filter(|(ch, _)| *ch != "c")
        .map(|(_, id)| id.to_string())
        .collect();
    assert_eq!(got, want);
    assert_eq!(sub.reset_reason(), None);
    // From the middle: only what came after.
    let mut sub = h
        .subscribe(&chans(&["a", "b"]), Some(&published[2].1.to_string()), None)
        .unwrap();
    let got: Vec<u64> = ready(&mut sub).iter().map(seq_of).collect();
    assert_eq!(got, vec![4, 5]);
}

#[test]
fn cursor_equal_to_position_replays_and_resets_nothing() {
    let h = hub();
    h.publish("a", None, "old".into());
    let cursor = h.cursor().to_string();
    let mut sub = h.subscribe(&chans(&["a"]), Some(&cursor), None).unwrap();
    assert!(ready(&mut sub).is_empty());
    let id = h.publish("a", None, "new".into());
    let got = ready(&mut sub);
    assert_eq!(got.len(), 1);
    assert_eq!(parse(&got[0]).0, id.to_string());
}

fn assert_reset(sub: &mut Subscription, reason: &str, h: &Hub) {
    let frames = ready(sub);
    assert_eq!(frames.len(), 1, "exactly one reset, no partial replay");
    let (id, event, data) = parse(&frames[0]);
    assert_eq!(event.as_deref(), Some(RESET_EVENT));
    assert_eq!(id, h.cursor().to_string(), "the reset carries the position");
    let data: serde_json::Value = serde_json::from_str(&data).unwrap();
    assert_eq!(data["reason"], reason);
    assert_eq!(sub.reset_reason(), Some(reason));
}

#[test]
fn evicted_foreign_unparsable_and_future_ids_reset() {
    let h = Hub::new(HubConfig {
        history_max_events: 2,
        ..HubConfig::default()
    });
    let first = h.publish("a", None, "1".into());
    for i in 2..=4 {
        h.publish("a", None, format!("{i}").into());
    }
    let mut sub = h
        .subscribe(&chans(&["a"]), Some(&first.to_string()), None)
        .unwrap();
    assert_reset(&mut sub, "evicted", &h);

    let foreign = hub().publish("a", None, "x".into()).to_string();
    let mut sub = h.subscribe(&chans(&["a"]), Some(&foreign), None).unwrap();
    assert_reset(&mut sub, "other_boot", &h);

    let mut sub = h.subscribe(&chans(&["a"]), Some("garbage"), None).unwrap();
    assert_reset(&mut sub, "unparsable_id", &h);

    let future = EventId {
        boot: h.boot(),
        seq: 99,
    }
    .to_string();
    let mut sub = h.subscribe(&chans(&["a"]), Some(&future), None).unwrap();
    assert_reset(&mut sub, "unknown_id", &h);

    // The last two are still in history: a resume from event 2 is complete.
    let two = EventId {
        boot: h.boot(),
        seq: 2,
    }
    .to_string();
    let mut sub = h.subscribe(&chans(&["a"]), Some(&two), None).unwrap();
    assert_eq!(
        ready(&mut sub).iter().map(seq_of).collect::<Vec<_>>(),
        [3, 4]
    );
}

#[test]
fn hub_wide_byte_bound_evicts_oldest_across_channels() {
    let h = Hub::new(HubConfig {
        history_max_bytes: 200,
        ..HubConfig::default()
    });
    let start = h.cursor().to_string();
    for i in 0..20 {
        h.publish(
            if i % 2 == 0 { "a" } else { "b" },
            None,
            "x".repeat(20).into(),
        );
    }
    let stats = h.stats(10);
    assert!(stats.history_bytes <= 200, "{}", stats.history_bytes);
    assert!(stats.history_events > 0);
    let mut sub = h.subscribe(&chans(&["a"]), Some(&start), None).unwrap();
    assert_reset(&mut sub, "evicted", &h);
}

#[tokio::test(start_paused = true)]
async fn history_expires_by_age_and_idle_channels_are_dropped() {
    let h = Hub::new(HubConfig {
        history_max_age: Duration::from_secs(60),
        channel_idle_ttl: Duration::from_secs(60),
        ..HubConfig::default()
    });
    let start = h.cursor().to_string();
    h.publish("a", None, "1".into());
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(h.sweep(), 0);
    assert_eq!(h.stats(1).history_events, 1);
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(h.sweep(), 1, "no subscriber, no history: dropped");
    let stats = h.stats(1);
    assert_eq!(
        (stats.channels, stats.history_events, stats.history_bytes),
        (0, 0, 0)
    );
    // The channel is gone but what it lost is not forgotten.
    let mut sub = h.subscribe(&chans(&["a"]), Some(&start), None).unwrap();
    assert_reset(&mut sub, "evicted", &h);
}

#[test]
fn unsubscribe_on_drop_frees_channels_and_limits() {
    let h = hub();
    let ip: IpAddr = "10.0.0.1".parse().unwrap();
    let sub = h
        .subscribe(&chans(&["a", "b", "a"]), None, Some(ip))
        .unwrap();
    assert_eq!(sub.channels().collect::<Vec<_>>(), ["a", "b"]);
    let s = h.stats(10);
    assert_eq!((s.subscribers, s.channels, s.client_addresses), (1, 2, 1));
    drop(sub);
    let s = h.stats(10);
    assert_eq!((s.subscribers, s.channels, s.client_addresses), (0, 0, 0));
    assert_eq!(
        h.metrics()
            .disconnects
            .get_or_create(&ReasonLabels {
                reason: "client_closed"
            })
            .get(),
        1
    );
}

/// A subscriber that stops reading is cut once its channel's history no longer holds what
/// it has not read (queue 4, history 4: events 1–4 queued, 5 onwards left in history, 5
/// evicted by event 9, noticed at event 10); the others keep receiving.
#[test]
fn slow_subscriber_is_disconnected_at_its_bound_while_others_keep_receiving() {
    let h = Hub::new(HubConfig {
        subscriber_queue: 4,
        history_max_events: 4,
        ..HubConfig::default()
    });
    let mut slow = h.subscribe(&chans(&["a"]), None, None).unwrap();
    let mut fast = h.subscribe(&chans(&["a"]), None, None).unwrap();
    let mut got = Vec::new();
    for i in 0..9 {
        h.publish("a", None, format!("{i}").into());
        got.extend(ready(&mut fast));
    }
    assert_eq!(slow.closed(), None, "behind its queue, not behind history");
    h.publish("a", None, "9".into());
    got.extend(ready(&mut fast));
    assert_eq!(
        got.iter().map(seq_of).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(slow.closed(), Some(CloseReason::Overflow));
    assert!(
        ready(&mut slow).is_empty(),
        "its queue was freed; the stream ends"
    );
    assert_eq!(h.metrics().dropped.get(), 4, "the 4 queued frames");
    drop(slow);
    assert_eq!(
        h.metrics()
            .disconnects
            .get_or_create(&ReasonLabels { reason: "overflow" })
            .get(),
        1
    );
    assert_eq!(h.stats(1).subscribers, 1);
}

/// Issue 10 item 10: a burst far larger than the queue does not cut a subscriber. It takes
/// its queue, then reads the rest from history, in order, across its channels, then is live
/// again.
#[test]
fn a_burst_larger_than_the_queue_is_read_from_history_in_order() {
    let h = Hub::new(HubConfig {
        subscriber_queue: 4,
        ..HubConfig::default()
    });
    let mut sub = h.subscribe(&chans(&["a", "b"]), None, None).unwrap();
    for i in 0..500 {
        h.publish(
            if i % 3 == 0 { "b" } else { "a" },
            None,
            format!("{i}").into(),
        );
    }
    h.publish("other", None, "not mine".into());
    let got = ready(&mut sub);
    assert_eq!(sub.closed(), None);
    assert_eq!(
        got.iter().map(seq_of).collect::<Vec<_>>(),
        (1..=500).collect::<Vec<_>>()
    );
    assert_eq!(h.metrics().delivered.get(), 500);
    let next = h.publish("a", None, "live".into());
    assert_eq!(
        ready(&mut sub).iter().map(seq_of).collect::<Vec<_>>(),
        [next.seq]
    );
}

/// A burst larger than what history holds cuts a subscriber that had not read it yet: its
/// client resumes from its last id and gets a `reset`.
#[test]
fn falling_behind_history_ends_the_stream_while_catching_up() {
    let h = Hub::new(HubConfig {
        subscriber_queue: 4,
        history_max_events: 10,
        ..HubConfig::default()
    });
    let mut sub = h.subscribe(&chans(&["a"]), None, None).unwrap();
    for i in 0..15 {
        h.publish("a", None, format!("{i}").into());
    }
    // Event 5, the first it did not queue, fell out of history with event 15 (no publish
    // has noticed yet: the next one would).
    assert_eq!(sub.closed(), None);
    let got = ready(&mut sub);
    assert_eq!(got.iter().map(seq_of).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(sub.closed(), Some(CloseReason::Overflow));
    let again = h
        .subscribe(&chans(&["a"]), Some(&id_of(&got[3])), None)
        .unwrap();
    assert_eq!(again.reset_reason(), Some("evicted"));
}

#[test]
fn reset_matching_resets_live_subscribers_once_and_poisons_older_resumes() {
    let h = hub();
    let before = h.publish("reservas:1", None, "x".into()).to_string();
    let mut both = h
        .subscribe(&chans(&["reservas:1", "reservas:2"]), None, None)
        .unwrap();
    let mut other = h.subscribe(&chans(&["bot:1"]), None, None).unwrap();
    assert_eq!(h.reset_matching("reservas:*", "listener reconnected"), 1);
    let frames = ready(&mut both);
    assert_eq!(frames.len(), 1, "one reset even with two matching channels");
    let (_, event, data) = parse(&frames[0]);
    assert_eq!(event.as_deref(), Some("reset"));
    assert!(data.contains("listener reconnected"));
    assert!(ready(&mut other).is_empty());
    // A client resuming from before the loss must not get a silent gap, on an existing
    // channel or on one created later.
    let mut late = h
        .subscribe(&chans(&["reservas:1"]), Some(&before), None)
        .unwrap();
    assert_reset(&mut late, "evicted", &h);
    let mut new = h
        .subscribe(&chans(&["reservas:9"]), Some(&before), None)
        .unwrap();
    assert_reset(&mut new, "evicted", &h);
}

#[test]
fn limits_refuse_with_retry_after() {
    let h = Hub::new(HubConfig {
        max_subscribers: 3,
        max_subscribers_per_channel: 2,
        max_subscribers_per_ip: 1,
        max_channels_per_subscription: 2,
        ..HubConfig::default()
    });
    let ip1: IpAddr = "10.0.0.1".parse().unwrap();
    let ip2: IpAddr = "10.0.0.2".parse().unwrap();
    let _a = h.subscribe(&chans(&["a"]), None, Some(ip1)).unwrap();
    let e = h.subscribe(&chans(&["b"]), None, Some(ip1)).unwrap_err();
    assert_eq!(e.as_str(), "max_subscribers_per_ip");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(5)));
    let _b = h.subscribe(&chans(&["a"]), None, Some(ip2)).unwrap();
    let e = h.subscribe(&chans(&["a"]), None, None).unwrap_err();
    assert_eq!(e.as_str(), "max_subscribers_per_channel");
    let _c = h.subscribe(&chans(&["c"]), None, None).unwrap();
    let e = h.subscribe(&chans(&["d"]), None, None).unwrap_err();
    assert_eq!(e.as_str(), "max_subscribers");
    let e = h
        .subscribe(&chans(&["x", "y", "z"]), None, None)
        .unwrap_err();
    assert_eq!((e.as_str(), e.retry_after()), ("too_many_channels", None));
    assert_eq!(
        h.subscribe(&[], None, None).unwrap_err(),
        SubscribeError::NoChannels
    );
    assert_eq!(
        h.metrics()
            .rejected
            .get_or_create(&ReasonLabels {
                reason: "max_subscribers"
            })
            .get(),
        1
    );
}

#[test]
fn max_channels_bounds_channels_without_silent_gaps() {
    let h = Hub::new(HubConfig {
        max_channels: 1,
        ..HubConfig::default()
    });
    let _a = h.subscribe(&chans(&["a"]), None, None).unwrap();
    let before = h.cursor().to_string();
    let e = h.subscribe(&chans(&["b"]), None, None).unwrap_err();
    assert_eq!(e.as_str(), "max_channels");
    h.publish("b", None, "nobody listens, no room".into());
    assert_eq!(h.metrics().unstored.get(), 1);
    assert_eq!(h.stats(5).channels, 1);
    drop(_a);
    let mut sub = h.subscribe(&chans(&["b"]), Some(&before), None).unwrap();
    assert_reset(&mut sub, "evicted", &h);
}

#[test]
fn stats_lists_the_busiest_channels_first() {
    let h = hub();
    let _s: Vec<_> = ["a", "b", "b", "c", "c", "c"]
        .iter()
        .map(|c| h.subscribe(&chans(&[c]), None, None).unwrap())
        .collect();
    let top: Vec<(String, usize)> = h
        .stats(2)
        .top_channels
        .into_iter()
        .map(|c| (c.name, c.subscribers))
        .collect();
    assert_eq!(top, [("c".to_string(), 3), ("b".to_string(), 2)]);
}

/// Subscribing while another thread publishes: the replay/live seam has no gap and no
/// duplicate, across two channels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seam_has_no_gap_and_no_duplicate_under_concurrent_publish() {
    // A queue that holds everything, and one that overflows into history all the time.
    for queue in [N as usize, 16] {
        seam_under_concurrent_publish(queue).await;
    }
}

const N: u64 = 20_000;

async fn seam_under_concurrent_publish(queue: usize) {
    let h = Hub::new(HubConfig {
        subscriber_queue: queue,
        subscriber_queue_bytes: usize::MAX,
        history_max_events: N as usize,
        ..HubConfig::default()
    });
    let start = h.cursor().to_string();
    let publisher = {
        let h = h.clone();
        std::thread::spawn(move || {
            for i in 0..N {
                h.publish(
                    if i % 2 == 0 { "a" } else { "b" },
                    None,
                    format!("{i}").into(),
                );
            }
        })
    };
    // Subscribe at several points during the run, each resuming from the first event.
    let mut subs = Vec::new();
    while subs.len() < 8 {
        let seen = h.cursor().seq;
        subs.push(
            h.subscribe(&chans(&["a", "b"]), Some(&start), None)
                .unwrap(),
        );
        while h.cursor().seq == seen && h.cursor().seq < N {
            std::hint::spin_loop();
        }
    }
    publisher.join().unwrap();
    for mut sub in subs {
        let mut expected = 1;
        while expected <= N {
            let frame = tokio::time::timeout(Duration::from_secs(10), sub.recv())
                .await
                .expect("next frame in time")
                .expect("open");
            assert_eq!(seq_of(&frame), expected, "gap or duplicate at the seam");
            expected += 1;
        }
    }
}
