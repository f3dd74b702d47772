//! Streams end to end: real SSE clients over sockets against the real server.

mod common;

use std::time::Duration;

use common::sse::{SseClient, publish};
use common::{Unpoll, Upstream, client, eventually, metric, read_until};
use futures::future::join_all;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "t0ken";
const T: Duration = Duration::from_secs(10);

fn config(hub: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
token = "{TOKEN}"

[hub]
{hub}

[[stream]]
path = "/bots/events"
channels = ["bot:{{query.botId}}"]
auth = "none"

[[stream]]
path = "/devices/events"
channels = ["device:{{query.device_ids}}"]
auth = "none"
max_channels = 4

[[stream]]
path = "/multi/events"
channels = ["a", "b"]
auth = "none"
heartbeat = "100ms"
"#
    )
}

async fn start(hub: &str) -> (Upstream, Unpoll) {
    let upstream = Upstream::builder()
        .route("/bots/events", "proxied")
        .run()
        .await;
    let unpoll = Unpoll::start(&upstream.url(), &config(hub)).await;
    (upstream, unpoll)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publish_reaches_each_of_1000_subscribers_exactly_once_in_order() {
    let (_up, unpoll) = start("max_subscribers_per_ip = 5000").await;
    let http = client();
    let url1 = unpoll.url("/bots/events?botId=1");
    let url2 = unpoll.url("/bots/events?botId=2");
    let mut bot1 = join_all((0..1000).map(|_| SseClient::open(&http, &url1, None))).await;
    let mut bot2 = join_all((0..10).map(|_| SseClient::open(&http, &url2, None))).await;
    assert!(bot1.iter().all(|s| s.status == 200));
    assert_eq!(
        bot1[0].headers["content-type"],
        "text/event-stream; charset=utf-8"
    );
    assert_eq!(bot1[0].headers["cache-control"], "no-cache");
    assert_eq!(bot1[0].headers["x-accel-buffering"], "no");
    assert_eq!(unpoll.app.handles.hub.stats(0).subscribers, 1010);

    let admin = unpoll.admin_url("/publish");
    let answer = publish(
        &http,
        &admin,
        TOKEN,
        json!([
            {"channel": "bot:1", "event": "msg", "data": {"n": 1}},
            {"channel": "bot:2", "event": "msg", "data": {"n": "other"}},
            {"channel": "bot:1", "event": "msg", "data": {"n": 2}},
        ]),
    )
    .await;
    let ids: Vec<String> = serde_json::from_value(answer["ids"].clone()).unwrap();
    assert_eq!(ids.len(), 3);

    let got = join_all(bot1.iter_mut().map(|s| async move {
        let a = s.next(T).await;
        let b = s.next(T).await;
        (a.id, a.data, b.id, b.data)
    }))
    .await;
    for g in &got {
        assert_eq!(
            g,
            &(
                ids[0].clone(),
                r#"{"n":1}"#.to_string(),
                ids[2].clone(),
                r#"{"n":2}"#.to_string()
            )
        );
    }
    for s in &mut bot2 {
        let e = s.next(T).await;
        assert_eq!((e.id.as_str(), e.event.as_str()), (ids[1].as_str(), "msg"));
    }
    // Exactly once: nothing more for anyone.
    publish(
        &http,
        &admin,
        TOKEN,
        json!({"channel": "bot:1", "data": "end"}),
    )
    .await;
    for s in bot1.iter_mut().take(50) {
        assert_eq!(s.next(T).await.data, "\"end\"");
    }
    let m = unpoll.metrics().await;
    assert_eq!(metric(&m, "unpoll_hub_events_published_total"), 4.0);
    assert_eq!(
        metric(&m, "unpoll_stream_subscribers{rule=\"stream[0]\"}"),
        1010.0
    );
    drop(bot1);
    drop(bot2);
    eventually(T, "every stream unsubscribed", || async {
        unpoll.app.handles.hub.stats(0).subscribers == 0
    })
    .await;
}

#[tokio::test]
async fn list_valued_query_subscribes_to_each_value_with_a_cap() {
    let (_up, unpoll) = start("").await;
    let http = client();
    let mut s = SseClient::open(&http, &unpoll.url("/devices/events?device_ids=A,B"), None).await;
    assert_eq!(s.status, 200);
    let admin = unpoll.admin_url("/publish");
    for ch in ["device:C", "device:A", "device:B"] {
        publish(&http, &admin, TOKEN, json!({"channel": ch, "data": ch})).await;
    }
    assert_eq!(s.next(T).await.data, "\"device:A\"");
    assert_eq!(s.next(T).await.data, "\"device:B\"");
    let too_many = http
        .get(unpoll.url("/devices/events?device_ids=1,2,3,4,5"))
        .send()
        .await
        .unwrap();
    assert_eq!(too_many.status(), 400);
}

#[tokio::test]
async fn missing_template_value_means_the_rule_does_not_apply() {
    let (up, unpoll) = start("").await;
    let resp = client()
        .get(unpoll.url("/bots/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "proxied");
    assert_eq!(up.hits("/bots/events"), 1);
    let m = unpoll.metrics().await;
    assert_eq!(
        metric(
            &m,
            "unpoll_rule_skipped_total{rule=\"stream[0]\",reason=\"missing_value\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn last_event_id_replays_across_two_channels_and_foreign_ids_reset() {
    let (_up, unpoll) = start("").await;
    let http = client();
    let admin = unpoll.admin_url("/publish");
    let start = unpoll.app.handles.hub.cursor().to_string();
    let ids = publish(
        &http,
        &admin,
        TOKEN,
        json!([
            {"channel": "a", "data": 1}, {"channel": "x", "data": 2},
            {"channel": "b", "data": 3}, {"channel": "a", "data": 4},
        ]),
    )
    .await["ids"]
        .clone();
    let url = unpoll.url("/multi/events");
    // Header form (what browsers send on reconnect).
    let mut s = SseClient::open(&http, &url, Some(&start)).await;
    for (i, data) in [(0, "1"), (2, "3"), (3, "4")] {
        let e = s.next(T).await;
        assert_eq!(
            (e.id.as_str(), e.data.as_str()),
            (ids[i].as_str().unwrap(), data)
        );
    }
    // Query form (a cursor from a first fetch), from the middle.
    let from = ids[2].as_str().unwrap();
    let mut s = SseClient::open(&http, &format!("{url}?last_event_id={from}"), None).await;
    assert_eq!(s.next(T).await.data, "4");
    // An id from another run of the server.
    let mut s = SseClient::open(&http, &url, Some("0123456789ab-3")).await;
    let e = s.next(T).await;
    assert_eq!(e.event, "reset");
    assert!(e.data.contains("other_boot"), "{}", e.data);
    assert_eq!(e.id, unpoll.app.handles.hub.cursor().to_string());
    publish(&http, &admin, TOKEN, json!({"channel": "b", "data": 5})).await;
    assert_eq!(
        s.next(T).await.data,
        "5",
        "live after the reset, nothing replayed"
    );
}

#[tokio::test]
async fn evicted_id_gives_reset() {
    let (_up, unpoll) = start("history_max_events = 2").await;
    let http = client();
    let admin = unpoll.admin_url("/publish");
    let first = publish(&http, &admin, TOKEN, json!({"channel": "a", "data": 0})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    for i in 1..4 {
        publish(&http, &admin, TOKEN, json!({"channel": "a", "data": i})).await;
    }
    let mut s = SseClient::open(&http, &unpoll.url("/multi/events"), Some(&first)).await;
    let e = s.next(T).await;
    assert_eq!(e.event, "reset");
    assert!(e.data.contains("evicted"), "{}", e.data);
}

#[tokio::test]
async fn heartbeats_and_retry_are_on_the_wire() {
    let (_up, unpoll) = start("").await;
    let mut resp = client()
        .get(unpoll.url("/multi/events"))
        .send()
        .await
        .unwrap();
    let mut raw = Vec::new();
    let deadline = tokio::time::Instant::now() + T;
    while raw.windows(3).filter(|w| w == b":\n\n").count() < 2 {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("heartbeats in time")
            .unwrap()
            .expect("stream open");
        raw.extend_from_slice(&chunk);
    }
    assert!(
        raw.starts_with(b"retry: 2000\n\n"),
        "{:?}",
        String::from_utf8_lossy(&raw)
    );
}

#[tokio::test]
async fn limits_answer_429_with_retry_after() {
    let (_up, unpoll) = start("max_subscribers_per_channel = 2\nretry_after = \"7s\"").await;
    let http = client();
    let url = unpoll.url("/bots/events?botId=9");
    let _a = SseClient::open(&http, &url, None).await;
    let _b = SseClient::open(&http, &url, None).await;
    let c = http.get(&url).send().await.unwrap();
    assert_eq!(c.status(), 429);
    assert_eq!(c.headers()["retry-after"], "7");
    let other = SseClient::open(&http, &unpoll.url("/bots/events?botId=10"), None).await;
    assert_eq!(other.status, 200);
    let m = unpoll.metrics().await;
    assert_eq!(
        metric(
            &m,
            "unpoll_hub_rejected_total{reason=\"max_subscribers_per_channel\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let (_up, unpoll) = start("").await;
    let http = client();
    let mut s = SseClient::open(&http, &unpoll.url("/bots/events?botId=1"), None).await;
    let app = unpoll.app.clone();
    let stop = tokio::spawn(unpoll.stop());
    assert!(s.next_or_end(T).await.is_none(), "the stream ended cleanly");
    stop.await.unwrap();
    assert_eq!(app.handles.hub.stats(0).subscribers, 0);
}

#[tokio::test]
async fn open_streams_and_history_survive_a_reload() {
    let (up, unpoll) = start("").await;
    let http = client();
    let mut s = SseClient::open(&http, &unpoll.url("/bots/events?botId=1"), None).await;
    let admin = unpoll.admin_url("/publish");
    publish(
        &http,
        &admin,
        TOKEN,
        json!({"channel": "bot:1", "data": "before"}),
    )
    .await;
    assert_eq!(s.next(T).await.data, "\"before\"");
    let warnings = unpoll.reload(&up.url(), &config("history_max_events = 5"));
    assert_eq!(
        warnings,
        ["hub.history_max_events changed; takes effect on restart"]
    );
    publish(
        &http,
        &admin,
        TOKEN,
        json!({"channel": "bot:1", "data": "after"}),
    )
    .await;
    assert_eq!(s.next(T).await.data, "\"after\"");
}

/// A stream asked for as its connection's first request is served outside hyper: its body
/// ends with the connection (`Connection: close`, no chunk framing). Asked for on a reused
/// keep-alive connection it is hyper's and chunked. A first request whose stream rule does
/// not apply is handed to hyper and proxied. Both streams carry the same frames and both
/// end cleanly on shutdown.
#[tokio::test]
async fn streams_on_fresh_and_reused_connections_carry_the_same_frames() {
    fresh_and_reused_streams(true).await;
}

/// `[proxy] direct_streams = false`: every stream stays in hyper, chunked, the first
/// request's too, and delivers the same frames.
#[tokio::test]
async fn streams_stay_in_hyper_when_direct_streams_is_off() {
    fresh_and_reused_streams(false).await;
}

async fn fresh_and_reused_streams(direct_streams: bool) {
    let upstream = Upstream::builder()
        .route("/bots/events", "proxied")
        .run()
        .await;
    let unpoll = Unpoll::start(
        &upstream.url(),
        &format!(
            "{}\n[proxy]\ndirect_streams = {direct_streams}\n",
            config("")
        ),
    )
    .await;
    let mut fresh = TcpStream::connect(unpoll.addr).await.unwrap();
    fresh
        .write_all(b"GET /bots/events?botId=7 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // A chunk ends with a CRLF after its data.
    let retry = if direct_streams {
        "retry: 2000\n\n"
    } else {
        "retry: 2000\n\n\r\n"
    };
    let fresh_head = read_until(&mut fresh, retry, T).await;
    assert!(
        fresh_head.starts_with("HTTP/1.1 200 OK\r\n"),
        "{fresh_head}"
    );
    assert!(fresh_head.contains("\r\ncontent-type: text/event-stream"));
    assert!(fresh_head.contains("\r\ndate: "), "{fresh_head}");
    // Served by unpoll: delimited by the connection's end; by hyper: chunked.
    assert_eq!(
        fresh_head.contains("\r\nconnection: close\r\n"),
        direct_streams,
        "{fresh_head}"
    );
    assert_eq!(
        fresh_head.contains("transfer-encoding: chunked"),
        !direct_streams,
        "{fresh_head}"
    );
    assert!(fresh_head.ends_with(retry), "{fresh_head}");

    // No botId: the rule does not apply, the upstream answers, the connection stays open.
    let mut reused = TcpStream::connect(unpoll.addr).await.unwrap();
    reused
        .write_all(b"GET /bots/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let proxied = read_until(&mut reused, "proxied", T).await;
    assert!(proxied.starts_with("HTTP/1.1 200 OK\r\n"), "{proxied}");
    reused
        .write_all(b"GET /bots/events?botId=7 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let reused_head = read_until(&mut reused, "retry: 2000\n\n\r\n", T).await;
    assert!(
        reused_head.contains("transfer-encoding: chunked"),
        "{reused_head}"
    );
    eventually(T, "both subscribed", || async {
        unpoll.app.handles.hub.stats(0).subscribers == 2
    })
    .await;

    let http = client();
    let id = publish(
        &http,
        &unpoll.admin_url("/publish"),
        TOKEN,
        json!({"channel": "bot:7", "data": "hi"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let frame = format!("id: {id}\ndata: \"hi\"\n\n");
    let chunk = format!("{:X}\r\n{frame}\r\n", frame.len());
    let fresh_frame = if direct_streams { &frame } else { &chunk };
    let fresh_end = if direct_streams { "\n\n" } else { "\n\n\r\n" };
    assert_eq!(&read_until(&mut fresh, fresh_end, T).await, fresh_frame);
    assert_eq!(read_until(&mut reused, "\n\n\r\n", T).await, chunk);

    let stop = tokio::spawn(unpoll.stop());
    let mut rest = Vec::new();
    tokio::time::timeout(T, fresh.read_to_end(&mut rest))
        .await
        .expect("the fresh stream ends on shutdown")
        .unwrap();
    let fresh_rest = if direct_streams { "" } else { "0\r\n\r\n" };
    assert_eq!(String::from_utf8_lossy(&rest), fresh_rest);
    let end = read_until(&mut reused, "0\r\n\r\n", T).await;
    assert_eq!(end, "0\r\n\r\n");
    stop.await.unwrap();
}

/// Over HTTP/2 (h2c) a stream stays with hyper, next to the connection's other requests:
/// two streams and a proxied request on one client's connection, each stream gets its
/// event.
#[tokio::test]
async fn streams_over_h2c_share_the_connection() {
    let (_up, unpoll) = start("").await;
    let h2 = common::reqwest_builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let mut a = SseClient::open(&h2, &unpoll.url("/bots/events?botId=1"), None).await;
    let mut b = SseClient::open(&h2, &unpoll.url("/bots/events?botId=2"), None).await;
    let proxied = h2.get(unpoll.url("/bots/events")).send().await.unwrap();
    assert_eq!(proxied.version(), reqwest::Version::HTTP_2);
    assert_eq!(proxied.text().await.unwrap(), "proxied");
    let admin = unpoll.admin_url("/publish");
    let http = client();
    publish(
        &http,
        &admin,
        TOKEN,
        json!({"channel": "bot:2", "data": "two"}),
    )
    .await;
    publish(
        &http,
        &admin,
        TOKEN,
        json!({"channel": "bot:1", "data": "one"}),
    )
    .await;
    assert_eq!(a.next(T).await.data, "\"one\"");
    assert_eq!(b.next(T).await.data, "\"two\"");
    assert_eq!(
        a.headers["content-type"],
        "text/event-stream; charset=utf-8"
    );
}

/// Issue 10 item 10: a burst is not slowness. One `/publish` array of 5,000 events, far
/// more than the queue (the default 256) holds: readers that keep reading get all of them,
/// in order, on the stream they opened (a disconnect ends `SseClient` and fails `next`).
/// The queue's overflow is read from history, which must hold the batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_that_keep_up_survive_a_5000_event_batch() {
    const BATCH: usize = 5_000;
    let (_up, unpoll) = start("history_max_events = 10000").await;
    let http = client();
    let mut readers = Vec::new();
    for _ in 0..2 {
        readers.push(SseClient::open(&http, &unpoll.url("/bots/events?botId=1"), None).await);
    }
    eventually(T, "both subscribed", || async {
        unpoll.app.handles.hub.stats(0).subscribers == 2
    })
    .await;
    let readers: Vec<_> = readers
        .into_iter()
        .map(|mut reader| {
            tokio::spawn(async move {
                let mut data = Vec::with_capacity(BATCH);
                for _ in 0..BATCH {
                    data.push(reader.next(T).await.data);
                }
                (reader, data)
            })
        })
        .collect();
    let batch: Vec<_> = (0..BATCH)
        .map(|i| json!({"channel": "bot:1", "data": i}))
        .collect();
    publish(&http, &unpoll.admin_url("/publish"), TOKEN, json!(batch)).await;
    let expected: Vec<String> = (0..BATCH).map(|i| i.to_string()).collect();
    let mut open = Vec::new();
    for reader in join_all(readers).await {
        let (reader, data) = reader.unwrap();
        assert_eq!(data, expected, "all of the batch, in order");
        open.push(reader);
    }
    let m = unpoll.metrics().await;
    assert_eq!(
        metric(&m, "unpoll_hub_disconnects_total{reason=\"overflow\"}"),
        0.0
    );
    assert_eq!(
        unpoll.app.handles.hub.stats(0).subscribers,
        2,
        "still connected"
    );
}
