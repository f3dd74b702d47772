//! `[cluster]`: several real unpoll instances in front of real upstreams, sharing the real
//! Redis of this machine (or a private one the test kills).

mod common;

use std::time::Duration;

use common::redis::{PrivateRedis, redis_url, unique_prefix};
use common::sse::{SseClient, publish};
use common::{Unpoll, Upstream, client, eventually, get_text};
use serde_json::json;

const TOKEN: &str = "t0ken";
const T: Duration = Duration::from_secs(10);

fn config(redis: &str, prefix: &str, node: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
token = "{TOKEN}"

[cluster]
redis = "{redis}"
prefix = "{prefix}"
node_id = "{node}"
reconnect_min = "50ms"
reconnect_max = "300ms"

[[stream]]
path = "/events/{{chan}}"
channels = ["{{path.chan}}"]
auth = "none"

[[cache]]
path = "/messages"
ttl = "60s"
vary = []
tags = ["messages"]

[[watch]]
path = "/inbox"
interval = "1h"
min_interval = "10ms"
vary = []
tags = ["messages"]

[[tap]]
path = "/send"
channel = "chat"
purge = ["messages"]
"#
    )
}

/// Start `n` instances of one cluster and wait until each has joined it.
async fn cluster(upstream: &Upstream, redis: &str, prefix: &str, n: usize) -> Vec<Unpoll> {
    let mut nodes = Vec::new();
    for i in 0..n {
        let node = Unpoll::start(&upstream.url(), &config(redis, prefix, &format!("n{i}"))).await;
        nodes.push(node);
    }
    for node in &nodes {
        wait_ready(node).await;
    }
    nodes
}

async fn wait_ready(node: &Unpoll) {
    eventually(T, "the instance joins the cluster", || async {
        node.app.readiness.is_ready()
    })
    .await;
}

async fn publish_on(node: &Unpoll, channel: &str, data: serde_json::Value) -> String {
    let answer = publish(
        &client(),
        &node.admin_url("/publish"),
        TOKEN,
        json!({ "channel": channel, "event": "e", "data": data }),
    )
    .await;
    answer["id"].as_str().expect("an id").to_string()
}

#[tokio::test]
async fn an_event_published_on_one_instance_reaches_all_with_one_id() {
    let upstream = Upstream::builder().run().await;
    let prefix = unique_prefix("fanout");
    let nodes = cluster(&upstream, &redis_url(), &prefix, 3).await;
    let http = client();
    let mut subs = Vec::new();
    for node in &nodes {
        subs.push(SseClient::open(&http, &node.url("/events/room"), None).await);
    }
    let id = publish_on(&nodes[0], "room", json!({"n": 1})).await;
    for (i, sub) in subs.iter_mut().enumerate() {
        let e = sub.next(T).await;
        assert_eq!(
            (e.id.as_str(), e.data.as_str()),
            (id.as_str(), r#"{"n":1}"#),
            "node {i}"
        );
    }
    // And the other way round, from the last instance, with a name that needs the same
    // cleaning as on a lone instance.
    let answer = publish(
        &client(),
        &nodes[2].admin_url("/publish"),
        TOKEN,
        json!({ "channel": "room", "event": "two\nlines", "data": "x\ny" }),
    )
    .await;
    for sub in &mut subs {
        let e = sub.next(T).await;
        assert_eq!(e.id, answer["id"].as_str().unwrap());
        assert_eq!(
            (e.event.as_str(), e.data.as_str()),
            ("two lines", "\"x\\ny\"")
        );
    }
    // /stats names the node.
    let stats = nodes[1].stats().await;
    assert_eq!(stats["cluster"]["node_id"], "n1");
    assert_eq!(stats["cluster"]["connected"], true);
}

#[tokio::test]
async fn a_client_moving_to_another_instance_continues_exactly() {
    let upstream = Upstream::builder().run().await;
    let prefix = unique_prefix("move");
    let nodes = cluster(&upstream, &redis_url(), &prefix, 3).await;
    let http = client();
    let mut on_a = SseClient::open(&http, &nodes[0].url("/events/doc"), None).await;
    let first = publish_on(&nodes[1], "doc", json!(1)).await;
    assert_eq!(on_a.next(T).await.id, first);
    drop(on_a);
    // Published while the client is away, from two instances and interleaved with
    // another channel's events.
    let mut missed = Vec::new();
    for i in 2..=6 {
        let from = &nodes[i % 2];
        missed.push(publish_on(from, "doc", json!(i)).await);
        publish_on(from, "other", json!(i)).await;
    }
    // C never had a subscriber of "doc": it reads the channel's history from Redis.
    let mut on_c = SseClient::open(&http, &nodes[2].url("/events/doc"), Some(&first)).await;
    for (i, id) in missed.iter().enumerate() {
        let e = on_c.next(T).await;
        assert_eq!(e.event, "e", "no reset: {e:?}");
        assert_eq!((&e.id, e.data.as_str()), (id, (i + 2).to_string().as_str()));
    }
    let live = publish_on(&nodes[0], "doc", json!(7)).await;
    assert_eq!(on_c.next(T).await.id, live, "then live, without a gap");

    // A resume from before what Redis holds is a reset, not a silent gap: an id of another
    // epoch (another cluster, or Redis lost its data) resets.
    let mut stale =
        SseClient::open(&http, &nodes[2].url("/events/doc"), Some("000000000001-1")).await;
    assert_eq!(stale.next(T).await.event, "reset");
}

/// A purge relayed from another instance reaches this one's watchers too, not only its
/// cache: the watcher of A refetches on B's tap (counted at the app; the interval is 1h).
#[tokio::test]
async fn a_tap_on_one_instance_refetches_the_watchers_of_another() {
    let upstream = Upstream::builder()
        .route("/inbox", "{}")
        .route("/send", "ok")
        .run()
        .await;
    let prefix = unique_prefix("watch");
    let nodes = cluster(&upstream, &redis_url(), &prefix, 2).await;
    let mut tab = common::sse::SseClient::send(
        client()
            .get(nodes[0].url("/inbox"))
            .header("accept", "text/event-stream"),
    )
    .await;
    tab.next(T).await;
    assert_eq!(upstream.hits("/inbox"), 1);
    let resp = client().post(nodes[1].url("/send")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    eventually(T, "A's watcher refetched on B's tap", || async {
        upstream.hits("/inbox") == 2
    })
    .await;
}

#[tokio::test]
async fn a_tap_on_one_instance_purges_the_cache_of_another() {
    let upstream = Upstream::builder()
        .route("/messages", "[]")
        .route("/send", "ok")
        .run()
        .await;
    let prefix = unique_prefix("purge");
    let nodes = cluster(&upstream, &redis_url(), &prefix, 2).await;
    let http = client();
    get_text(&nodes[0].url("/messages")).await;
    get_text(&nodes[0].url("/messages")).await;
    assert_eq!(upstream.hits("/messages"), 1, "the second read is cached");
    let resp = http.post(nodes[1].url("/send")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    eventually(T, "A's entry purged by B's tap", || async {
        get_text(&nodes[0].url("/messages")).await;
        upstream.hits("/messages") == 2
    })
    .await;
    get_text(&nodes[0].url("/messages")).await;
    assert_eq!(
        upstream.hits("/messages"),
        2,
        "cached again after the refetch"
    );
}

#[tokio::test]
async fn losing_redis_resets_subscribers_and_local_events_still_flow() {
    let mut redis = PrivateRedis::start().await;
    let upstream = Upstream::builder().run().await;
    let prefix = unique_prefix("restart");
    let nodes = cluster(&upstream, &redis.url(), &prefix, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let http = client();
    let mut sub = SseClient::open(&http, &a.url("/events/x"), None).await;
    let before = publish_on(b, "x", json!("before")).await;
    assert_eq!(sub.next(T).await.id, before);

    redis.kill().await;
    let e = sub.next(T).await;
    assert_eq!(e.event, "reset", "continuity lost: {e:?}");
    eventually(T, "readyz says why", || async {
        let resp = http.get(a.admin_url("/readyz")).send().await.unwrap();
        resp.status() == 503 && resp.text().await.unwrap().contains("cluster: ")
    })
    .await;
    // Published on A while Redis is down: A's own subscribers still get it.
    let local = publish_on(a, "x", json!("local")).await;
    let e = sub.next(T).await;
    assert_eq!(
        (e.id.as_str(), e.data.as_str()),
        (local.as_str(), r#""local""#)
    );

    redis.restart().await;
    wait_ready(a).await;
    wait_ready(b).await;
    let e = sub.next(T).await;
    assert_eq!(
        e.event, "reset",
        "rejoining: what others published meanwhile was missed"
    );
    let after = publish_on(b, "x", json!("after")).await;
    let e = sub.next(T).await;
    assert_eq!(
        (e.id.as_str(), e.data.as_str()),
        (after.as_str(), r#""after""#)
    );
}

/// Measurement, not a check (`cargo test --release --test cluster -- --ignored --nocapture`):
/// one instance follows 10,000 channels (SUBSCRIBE + history read each), then publishes
/// events through Redis; prints the time per follow and per publish and Redis's CPU per
/// script call (INFO commandstats). Numbers are recorded in BENCHMARKS.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_following_10000_channels() {
    let upstream = Upstream::builder().run().await;
    let prefix = unique_prefix("measure");
    let nodes = cluster(&upstream, &redis_url(), &prefix, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let ca = a.app.cluster.clone().expect("cluster");
    let cb = b.app.cluster.clone().expect("cluster");
    let mut redis = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut redis)
        .await
        .unwrap();
    let channels: Vec<String> = (0..10_000).map(|i| format!("c{i}")).collect();
    let started = std::time::Instant::now();
    let mut holds = Vec::new();
    for ch in &channels {
        holds.push(ca.follow(std::slice::from_ref(ch), None).await);
    }
    let follow = started.elapsed();
    let mut subs = Vec::new();
    for ch in channels.iter().step_by(100) {
        subs.push(
            a.app
                .handles
                .hub
                .subscribe(std::slice::from_ref(ch), None, None)
                .unwrap(),
        );
    }
    let n = 2_000u64;
    let started = std::time::Instant::now();
    for i in 0..n {
        let ch = &channels[(i as usize * 37) % channels.len()];
        cb.publish(ch, None, &unpoll::hub::EventData::Text(i.to_string()))
            .await;
    }
    let publish = started.elapsed();
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut redis)
        .await
        .unwrap();
    println!(
        "follow: {:?} per channel ({follow:?} for 10,000); publish (sequential, B): {:?} per event",
        follow / 10_000,
        publish / n as u32
    );
    for line in stats.lines().filter(|l| {
        [
            "evalsha",
            "eval:",
            "subscribe",
            "publish",
            "xadd",
            "xrevrange",
            "incr",
        ]
        .iter()
        .any(|c| l.contains(&format!("cmdstat_{c}")))
    }) {
        println!("{line}");
    }
    println!("a stats: {}", a.stats().await["cluster"]);
    drop(holds);
}

/// `[[notify]]` in outbox mode on two instances: one consumes at a time; when it stops,
/// the other takes over; every row is published exactly once.
#[tokio::test]
async fn one_instance_consumes_the_outbox_and_another_takes_over() {
    use common::pg::{RecordingSink, database_url, insert_rows, make_outbox, pool, unique};
    let db = pool().await;
    let listen = unique("cl_wake");
    let outbox = make_outbox(&db, &listen).await;
    let prefix = unique_prefix("lease");
    let extra = |node: &str| {
        format!(
            "{}[postgres]\nurl = \"{}\"\nreconnect_min = \"20ms\"\nreconnect_max = \"200ms\"\n\
             outbox_poll = \"200ms\"\n\n[[notify]]\nlisten = \"{listen}\"\noutbox = \"{outbox}\"\n",
            config(&redis_url(), &prefix, node),
            database_url(),
        )
    };
    let upstream = Upstream::builder().run().await;
    let sinks = [
        std::sync::Arc::new(RecordingSink::default()),
        std::sync::Arc::new(RecordingSink::default()),
    ];
    let a = Unpoll::start_with_sink(&upstream.url(), &extra("a"), sinks[0].clone()).await;
    let b = Unpoll::start_with_sink(&upstream.url(), &extra("b"), sinks[1].clone()).await;
    wait_ready(&a).await;
    wait_ready(&b).await;
    let ns = |sink: &RecordingSink| -> Vec<i64> {
        sink.events()
            .iter()
            .map(|(_, _, d)| d["n"].as_i64().expect("n"))
            .collect()
    };
    let total = || ns(&sinks[0]).len() + ns(&sinks[1]).len();
    insert_rows(&db, &outbox, 1, 10).await;
    eventually(Duration::from_secs(20), "10 rows published", || async {
        total() >= 10
    })
    .await;
    let holder = if ns(&sinks[0]).is_empty() { 1 } else { 0 };
    assert!(ns(&sinks[1 - holder]).is_empty(), "one consumer at a time");
    let (stopped, other) = if holder == 0 { (a, b) } else { (b, a) };
    stopped.stop().await;
    insert_rows(&db, &outbox, 11, 20).await;
    eventually(
        Duration::from_secs(20),
        "the other instance takes over",
        || async { total() >= 20 },
    )
    .await;
    let mut all = ns(&sinks[holder]);
    all.extend(ns(&sinks[1 - holder]));
    assert_eq!(all, (1..=20).collect::<Vec<_>>(), "each row once, in order");
    assert_eq!(ns(&sinks[1 - holder]), (11..=20).collect::<Vec<_>>());
    drop(other);
}

/// `[mqtt]` on two instances: only the lease holder is connected, so a message becomes one
/// event, not one per instance.
#[tokio::test]
async fn an_mqtt_message_is_published_once_by_the_cluster() {
    use common::mqtt::{Publisher, broker_url};
    use common::pg::unique;
    let prefix = unique_prefix("mqtt");
    let topic = unique("cl");
    let client_id = unique("unpoll-cl");
    let extra = |node: &str| {
        format!(
            "{}[mqtt]\nurl = \"{}\"\nclient_id = \"{client_id}\"\nreconnect_min = \"20ms\"\n\
             reconnect_max = \"200ms\"\n\n[[topic]]\ntopic = \"{topic}/{{id}}\"\n\
             channel = \"dev:{{topic.id}}\"\n",
            config(&redis_url(), &prefix, node),
            broker_url(),
        )
    };
    let upstream = Upstream::builder().run().await;
    let a = Unpoll::start(&upstream.url(), &extra("a")).await;
    let b = Unpoll::start(&upstream.url(), &extra("b")).await;
    let holds_lease = |node: &Unpoll| {
        let app = node.app.clone();
        async move {
            let stats = app.cluster.as_ref().unwrap().stats();
            stats["leases"].as_array().is_some_and(|l| !l.is_empty())
        }
    };
    eventually(
        T,
        "one instance holds the lease and both are ready",
        || async {
            (holds_lease(&a).await || holds_lease(&b).await)
                && a.app.readiness.is_ready()
                && b.app.readiness.is_ready()
        },
    )
    .await;
    assert!(
        !(holds_lease(&a).await && holds_lease(&b).await),
        "one holder"
    );
    let http = client();
    let mut sub = SseClient::open(&http, &a.url("/events/dev:1"), None).await;
    let mut publisher = Publisher::shared().await;
    publisher.publish(&format!("{topic}/1"), r#"{"n":1}"#).await;
    publisher.publish(&format!("{topic}/1"), r#"{"n":2}"#).await;
    assert_eq!(sub.next(T).await.data, r#"{"n":1}"#);
    assert_eq!(sub.next(T).await.data, r#"{"n":2}"#, "not twice");
    drop(b);
}

/// `[[notify]]` in outbox mode on two instances that are real processes: the lease holder
/// is killed with SIGKILL (no release, no last cursor save) while rows keep coming; the
/// other takes over within `lease_ttl` plus a renew period, and a subscriber on a third
/// instance sees every row exactly once, in order: before, during and after the kill.
#[tokio::test]
async fn killing_the_lease_holder_loses_and_duplicates_no_outbox_row() {
    use common::pg::{database_url, exec, insert_rows, make_outbox, pool, unique};
    use common::process::Spawned;
    use std::collections::HashSet;
    let db = pool().await;
    let listen = unique("cl_kill");
    let outbox = make_outbox(&db, &listen).await;
    let prefix = unique_prefix("kill");
    let upstream = Upstream::builder().run().await;
    let consumer = |node: &str| {
        // A short lease for a fast takeover, in the template's [cluster] section.
        let cluster = config(&redis_url(), &prefix, node).replace(
            "reconnect_max = \"300ms\"\n",
            "reconnect_max = \"300ms\"\nlease_ttl = \"1s\"\n",
        );
        format!(
            "listen = \"127.0.0.1:0\"\nupstream = \"{}\"\n{cluster}\
             [postgres]\nurl = \"{}\"\nreconnect_min = \"20ms\"\nreconnect_max = \"200ms\"\n\
             outbox_poll = \"100ms\"\n\n[[notify]]\nlisten = \"{listen}\"\noutbox = \"{outbox}\"\n",
            upstream.url(),
            database_url(),
        )
    };
    let mut procs = vec![
        Spawned::start(&consumer("a")).await,
        Spawned::start(&consumer("b")).await,
    ];
    // The subscriber's instance consumes nothing: it only follows the channel.
    let watcher = Unpoll::start(&upstream.url(), &config(&redis_url(), &prefix, "c")).await;
    wait_ready(&watcher).await;
    let http = client();
    let lease_of = |stats: &serde_json::Value| {
        stats["cluster"]["leases"]
            .as_array()
            .is_some_and(|l| l.iter().any(|n| n == "notify"))
    };
    let holder = |procs: &[Spawned]| {
        let urls: Vec<String> = procs
            .iter()
            .map(|p| format!("http://{}/stats", p.admin))
            .collect();
        async move {
            let mut holders = Vec::new();
            for (i, url) in urls.iter().enumerate() {
                let stats: serde_json::Value = serde_json::from_str(&get_text(url).await).unwrap();
                if lease_of(&stats) {
                    holders.push(i);
                }
            }
            holders
        }
    };
    eventually(T, "one process holds the notify lease", || async {
        holder(&procs).await.len() == 1
    })
    .await;
    let mut sub = SseClient::open(&http, &watcher.url("/events/ob"), None).await;
    let mut seen: Vec<(String, i64)> = Vec::new();
    // Before: rows 1..=30.
    insert_rows(&db, &outbox, 1, 30).await;
    read_rows(&mut sub, &mut seen, 30).await;
    let killed = holder(&procs).await[0];

    // During: rows 31..=150, one transaction each, while the holder is killed.
    let inserter = {
        let db = db.clone();
        let outbox = outbox.clone();
        tokio::spawn(async move {
            for n in 31..=150 {
                insert_rows(&db, &outbox, n, n).await;
                // Spread over the kill and the takeover (about 1.3 s), not a wait for a
                // condition: a paced writer.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    read_rows(&mut sub, &mut seen, 40).await;
    let mut dead = procs.remove(killed);
    dead.signal("KILL");
    let _ = dead.child.wait().await;
    // Also as if the kill had landed between publishing a batch and saving the position:
    // the saved position goes back to row 10, so the new holder reads rows 11.. again and
    // must skip those already published.
    exec(
        &db,
        &format!(
            "UPDATE unpoll_outbox_cursors SET last_id = least(last_id, 10) WHERE outbox = '{outbox}'"
        ),
    )
    .await;
    inserter.await.unwrap();

    // After: the survivor holds the lease; rows up to 150, then a last one (151). Events of
    // one channel arrive in order, so a duplicate of any row would come before 151.
    eventually(T, "the other process takes the lease over", || async {
        holder(&procs).await == vec![0]
    })
    .await;
    insert_rows(&db, &outbox, 151, 151).await;
    read_rows(&mut sub, &mut seen, 151).await;
    let ns: Vec<i64> = seen.iter().map(|(_, n)| *n).collect();
    assert_eq!(ns, (1..=151).collect::<Vec<_>>(), "each row once, in order");
    let ids: HashSet<&str> = seen.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), 151, "distinct ids");
    drop(procs);
}

/// Read `row` events into `seen` (id, n) until it holds `n`; anything else fails the test.
async fn read_rows(sub: &mut SseClient, seen: &mut Vec<(String, i64)>, n: usize) {
    while seen.len() < n {
        let e = sub.next(Duration::from_secs(20)).await;
        assert_eq!(e.event, "row", "only rows, no reset: {e:?}");
        let v: serde_json::Value = serde_json::from_str(&e.data).unwrap();
        seen.push((e.id, v["n"].as_i64().expect("n")));
    }
}

/// `limits.per_channel` counts the subscribers of every instance: 2 on A and 1 on B fill a
/// limit of 3 for both; when one leaves, either admits again; an instance that stops
/// stops counting once its entries expire.
#[tokio::test]
async fn per_channel_limits_count_the_whole_cluster() {
    // Rules are named by their place in the file.
    const RULE: &str = "stream[1]";
    let upstream = Upstream::builder().run().await;
    let prefix = unique_prefix("limits");
    let a = Unpoll::start(&upstream.url(), &limited(&redis_url(), &prefix, "a")).await;
    let b = Unpoll::start(&upstream.url(), &limited(&redis_url(), &prefix, "b")).await;
    wait_ready(&a).await;
    wait_ready(&b).await;
    let http = client();
    let open = |node: &Unpoll| {
        let req = http.get(node.url("/limited/room"));
        async move { SseClient::send(req).await }
    };
    let counts = |node: &Unpoll| {
        node.app
            .cluster
            .as_ref()
            .unwrap()
            .cluster_count(RULE, "room")
    };
    let a1 = open(&a).await;
    let a2 = open(&a).await;
    let b1 = open(&b).await;
    assert_eq!((a1.status, a2.status, b1.status), (200, 200, 200));
    eventually(T, "both instances know the cluster's 3", || async {
        counts(&a) == Some((2, 1)) && counts(&b) == Some((1, 2))
    })
    .await;
    assert_eq!(open(&a).await.status, 429, "a 4th on A");
    assert_eq!(open(&b).await.status, 429, "a 4th on B");
    // A channel nobody holds yet is admitted: the limit is per channel.
    assert_eq!(
        SseClient::send(http.get(b.url("/limited/other")))
            .await
            .status,
        200
    );

    drop(a1);
    eventually(T, "B learns that A has one left", || async {
        counts(&b) == Some((1, 1))
    })
    .await;
    let b2 = open(&b).await;
    assert_eq!(b2.status, 200, "room again, on B");
    eventually(T, "A learns of B's second", || async {
        counts(&a) == Some((1, 2))
    })
    .await;
    assert_eq!(open(&a).await.status, 429, "full again, seen from A");

    // A stops without a word: its count expires (3 × limit_sync) and B has room again.
    drop(a2);
    drop(a);
    eventually(T, "A's count expires", || async {
        counts(&b) == Some((2, 0))
    })
    .await;
    let b3 = open(&b).await;
    assert_eq!(b3.status, 200);
    assert_eq!(open(&b).await.status, 429, "B alone holds 3");
    let stats = b.stats().await;
    assert_eq!(stats["cluster"]["limits"]["local_only"], false);
    drop((b1, b2, b3));
}

/// [`config`] plus `/limited/{chan}` (rule `stream[1]`) with `per_channel = 3`, counts
/// exchanged every 100 ms.
fn limited(redis: &str, prefix: &str, node: &str) -> String {
    config(redis, prefix, node).replace(
        "reconnect_max = \"300ms\"\n",
        "reconnect_max = \"300ms\"\nlimit_sync = \"100ms\"\n",
    ) + "\n[[stream]]\npath = \"/limited/{chan}\"\nchannels = [\"{path.chan}\"]\n\
         auth = \"none\"\nlimits = { per_channel = 3 }\n"
}

/// Redis down: per-channel limits fall back to each instance's own count, and say so.
#[tokio::test]
async fn per_channel_limits_fall_back_to_local_counts_without_redis() {
    let mut redis = PrivateRedis::start().await;
    let upstream = Upstream::builder().run().await;
    let prefix = unique_prefix("limits_down");
    let a = Unpoll::start(&upstream.url(), &limited(&redis.url(), &prefix, "a")).await;
    let b = Unpoll::start(&upstream.url(), &limited(&redis.url(), &prefix, "b")).await;
    wait_ready(&a).await;
    wait_ready(&b).await;
    let http = client();
    let open = |node: &Unpoll| {
        let req = http.get(node.url("/limited/room"));
        async move { SseClient::send(req).await }
    };
    let held = [open(&a).await, open(&a).await, open(&b).await];
    assert!(held.iter().all(|s| s.status == 200));
    eventually(T, "A knows B's subscriber", || async {
        a.app
            .cluster
            .as_ref()
            .unwrap()
            .cluster_count("stream[1]", "room")
            == Some((2, 1))
    })
    .await;
    assert_eq!(open(&a).await.status, 429);
    redis.kill().await;
    eventually(T, "A says its limits are local only", || async {
        a.stats().await["cluster"]["limits"]["local_only"] == true
    })
    .await;
    assert_eq!(
        open(&a).await.status,
        200,
        "2 here < 3: B's one is not known any more"
    );
}

/// Made-up channel names from clients the rule's auth refuses cost no Redis call and no
/// tracked entry: the first look at a channel's cluster count comes after auth.
#[tokio::test]
async fn refused_subscribers_track_no_shared_limit_counts() {
    let upstream = Upstream::builder().run().await;
    let prefix = unique_prefix("limits_refused");
    let config = limited(&redis_url(), &prefix, "a")
        + "\n[jwt]\nsecret = \"a-secret-of-at-least-32-bytes-0123456789\"\n\n\
           [[stream]]\npath = \"/guarded/{chan}\"\nchannels = [\"{path.chan}\"]\n\
           auth = \"jwt\"\nlimits = { per_channel = 3 }\n";
    let a = Unpoll::start(&upstream.url(), &config).await;
    wait_ready(&a).await;
    let http = client();
    for i in 0..20 {
        let req = http.get(a.url(&format!("/guarded/made-up-{i}")));
        assert_eq!(SseClient::send(req).await.status, 401, "no token");
    }
    assert_eq!(a.stats().await["cluster"]["limits"]["channels"], 0);
    // An admitted subscriber is tracked, so the check above could see entries.
    let held = SseClient::send(http.get(a.url("/limited/room"))).await;
    assert_eq!(held.status, 200);
    eventually(T, "the admitted channel is tracked", || async {
        a.stats().await["cluster"]["limits"]["channels"] == 1
    })
    .await;
}
