//! Taps, the publish API, cursor handoff and slow subscribers, end to end.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::sse::{SseClient, publish};
use common::upstream::text;
use common::{Unpoll, Upstream, client, metric};
use http_body_util::BodyExt;
use serde_json::json;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "t0ken";
const T: Duration = Duration::from_secs(10);

const CONFIG: &str = r#"
[admin]
listen = "127.0.0.1:0"
token = "t0ken"

[hub]
HUB

[[stream]]
path = "/events/{chan}"
channels = ["{path.chan}"]
auth = "none"

[[tap]]
path = "/twilio/webhook"
channel = "twilio"
event = "new_message"
data = { from = "{form.From}", body = "{form.Body}", sid = "{query.sid}" }
purge = ["twilio", "conv:{form.From}"]
max_body = "1KiB"

[[tap]]
path = "/fail"
channel = "twilio"

[[tap]]
method = "PUT"
path = "/items/{id}"
channel = "items"
event = "updated"
"#;

/// Bodies the upstream received, in order.
type Bodies = Arc<Mutex<Vec<Bytes>>>;

async fn start(hub: &str) -> (Upstream, Unpoll, Bodies) {
    let bodies: Bodies = Arc::default();
    let record = |bodies: &Bodies, status: u16| {
        let bodies = bodies.clone();
        move |req: http::Request<hyper::body::Incoming>| {
            let bodies = bodies.clone();
            async move {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                bodies.lock().unwrap().push(body);
                text(status, "<Response/>")
            }
        }
    };
    let upstream = Upstream::builder()
        .handler("/twilio/webhook", record(&bodies, 200))
        .handler("/fail", record(&bodies, 500))
        .handler("/items/7", record(&bodies, 204))
        .run()
        .await;
    let unpoll = Unpoll::start(&upstream.url(), &CONFIG.replace("HUB", hub)).await;
    (upstream, unpoll, bodies)
}

#[tokio::test]
async fn twilio_form_webhook_answered_200_publishes_the_mapped_event_and_purges() {
    let (_up, unpoll, bodies) = start("").await;
    let http = client();
    let mut s = SseClient::open(&http, &unpoll.url("/events/twilio"), None).await;
    let form = "From=%2B15551234&Body=hola%20%C3%B1&MessageSid=SM1";
    let resp = http
        .post(unpoll.url("/twilio/webhook?sid=SM1"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let cursor = resp.headers()["unpoll-cursor"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(resp.text().await.unwrap(), "<Response/>");
    assert_eq!(
        bodies.lock().unwrap()[0],
        form,
        "the upstream got the body unchanged"
    );
    let e = s.next(T).await;
    assert_eq!(e.event, "new_message");
    assert_eq!(e.id, cursor, "the cursor includes the tap's own event");
    let data: serde_json::Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(
        data,
        json!({"from": "+15551234", "body": "hola ñ", "sid": "SM1"})
    );
    let m = unpoll.metrics().await;
    assert_eq!(metric(&m, "unpoll_cache_purges_total"), 2.0);
}

#[tokio::test]
async fn no_event_on_500_or_past_max_body_and_the_body_still_goes_through() {
    let (_up, unpoll, bodies) = start("").await;
    let http = client();
    let mut s = SseClient::open(&http, &unpoll.url("/events/twilio"), None).await;
    let resp = http
        .post(unpoll.url("/fail"))
        .header("content-type", "application/json")
        .body(r#"{"a":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    let large = format!("From=x&Body={}", "y".repeat(4096));
    let resp = http
        .post(unpoll.url("/twilio/webhook?sid=1"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(large.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(bodies.lock().unwrap()[1], large, "forwarded whole");
    // A chunked body over the limit too (no Content-Length to decide up front).
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        (0..8).map(|_| Ok(Bytes::from(vec![b'z'; 512]))).collect();
    let resp = http
        .post(unpoll.url("/twilio/webhook?sid=2"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(bodies.lock().unwrap()[2].len(), 4096);
    s.assert_quiet(Duration::from_millis(300)).await;
    let m = unpoll.metrics().await;
    assert_eq!(
        metric(
            &m,
            "unpoll_rule_skipped_total{rule=\"tap[1]\",reason=\"upstream_status\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "unpoll_rule_skipped_total{rule=\"tap[0]\",reason=\"body_too_large\"}"
        ),
        2.0
    );
    assert_eq!(metric(&m, "unpoll_hub_events_published_total"), 0.0);
}

#[tokio::test]
async fn json_body_is_the_default_data() {
    let (_up, unpoll, _bodies) = start("").await;
    let http = client();
    let mut s = SseClient::open(&http, &unpoll.url("/events/items"), None).await;
    let resp = http
        .put(unpoll.url("/items/7"))
        .json(&json!({"id": 7, "name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let e = s.next(T).await;
    assert_eq!(e.event, "updated");
    let data: serde_json::Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(data, json!({"id": 7, "name": "x"}));
}

#[tokio::test]
async fn cursor_handoff_gets_exactly_the_events_published_since() {
    let (_up, unpoll, _bodies) = start("").await;
    let http = client();
    let admin = unpoll.admin_url("/publish");
    let resp = http
        .post(unpoll.url("/twilio/webhook?sid=1"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("From=a&Body=first")
        .send()
        .await
        .unwrap();
    let cursor = resp.headers()["unpoll-cursor"]
        .to_str()
        .unwrap()
        .to_string();
    let id = publish(
        &http,
        &admin,
        TOKEN,
        json!({"channel": "twilio", "data": "since"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let url = unpoll.url(&format!("/events/twilio?last_event_id={cursor}"));
    let mut s = SseClient::open(&http, &url, None).await;
    let e = s.next(T).await;
    assert_eq!((e.id.as_str(), e.data.as_str()), (id.as_str(), "\"since\""));
    let marker = publish(
        &http,
        &admin,
        TOKEN,
        json!({"channel": "twilio", "data": "live"}),
    )
    .await;
    let e = s.next(T).await;
    assert_eq!(e.id, marker["id"].as_str().unwrap(), "no duplicate, no gap");
}

#[tokio::test]
async fn publish_api_checks_token_json_and_size() {
    let (_up, unpoll, _bodies) = start("").await;
    let http = client();
    let url = unpoll.admin_url("/publish");
    let no_token = http
        .post(&url)
        .json(&json!({"channel": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 401);
    let wrong = http
        .post(&url)
        .bearer_auth("nope")
        .json(&json!({"channel": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let malformed = http
        .post(&url)
        .bearer_auth(TOKEN)
        .body("{\"channel\":")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    assert!(malformed.text().await.unwrap().contains("malformed JSON"));
    let no_channel = http
        .post(&url)
        .bearer_auth(TOKEN)
        .json(&json!({"event": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_channel.status(), 400);
    let big = json!({"channel": "a", "data": "x".repeat(2 * 1024 * 1024)});
    let too_large = http
        .post(&url)
        .bearer_auth(TOKEN)
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(too_large.status(), 413);
    let batch = publish(
        &http,
        &url,
        TOKEN,
        json!([{"channel": "a", "data": 1}, {"channel": "b", "event": "e", "data": [2]}]),
    )
    .await;
    let ids = batch["ids"].as_array().unwrap();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
    let stats = unpoll.stats().await;
    assert_eq!(stats["hub"]["events_published"], 2);
    assert_eq!(stats["hub"]["cursor"], ids[1]);
}

/// A client that sends its request and never reads: once the socket buffers are full its
/// queue overflows and it is disconnected, while a reading client gets every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_is_disconnected_at_its_bound_while_others_keep_receiving() {
    slow_subscriber_case(false).await;
}

/// The same when the stream is not its connection's first request, so hyper serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_on_a_reused_connection_is_disconnected_too() {
    slow_subscriber_case(true).await;
}

async fn slow_subscriber_case(reused_connection: bool) {
    let (_up, unpoll, _bodies) = start(
        "subscriber_queue = 16\nsubscriber_queue_bytes = \"512KiB\"\nhistory_max_bytes = \"2MiB\"",
    )
    .await;
    let http = client();
    // A small receive buffer so the kernel does not absorb tens of MB first (loopback
    // autotuning allows 32 MiB here), which only makes the test slow.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut slow = socket.connect(unpoll.addr).await.unwrap();
    if reused_connection {
        slow.write_all(b"GET /items/7 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let answer = common::read_until(&mut slow, "\r\n\r\n", T).await;
        assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
    }
    slow.write_all(b"GET /events/fan HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut fast = SseClient::open(&http, &unpoll.url("/events/fan"), None).await;
    common::eventually(T, "both subscribed", || async {
        unpoll.app.handles.hub.stats(0).subscribers == 2
    })
    .await;
    let data = "x".repeat(64 * 1024);
    let admin = unpoll.admin_url("/publish");
    let mut received = 0;
    let mut published = 0;
    let started = Instant::now();
    while unpoll.app.handles.hub.stats(0).subscribers == 2 {
        publish(
            &http,
            &admin,
            TOKEN,
            json!({"channel": "fan", "data": data}),
        )
        .await;
        published += 1;
        assert_eq!(fast.next(T).await.data.len(), data.len() + 2);
        received += 1;
        assert!(published < 2000, "the slow client was never disconnected");
    }
    assert_eq!(received, published, "the reading client missed nothing");
    eprintln!(
        "slow client disconnected after {published} events in {:?}",
        started.elapsed()
    );
    publish(
        &http,
        &admin,
        TOKEN,
        json!({"channel": "fan", "data": "after"}),
    )
    .await;
    assert_eq!(fast.next(T).await.data, "\"after\"");
    let stats = unpoll.app.handles.hub.stats(0);
    assert!(
        stats.history_bytes <= 2 * 1024 * 1024,
        "history bounded: {}",
        stats.history_bytes
    );
    let m = unpoll.metrics().await;
    assert_eq!(
        metric(&m, "unpoll_hub_disconnects_total{reason=\"overflow\"}"),
        1.0
    );
    // Its connection was closed by the server: it reads what was in flight, then EOF (or
    // a reset), and would reconnect with its Last-Event-ID.
    let mut buf = vec![0; 1 << 16];
    tokio::time::timeout(T, async {
        while let Ok(n) = slow.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
    .expect("the server closed the slow connection");
}
