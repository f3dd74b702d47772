//! Taps whose events carry the app's answer (`{response.json.…}`, `{response.header.…}`),
//! and `POST /publish` with `purge`, end to end against real upstream servers.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::sse::{SseClient, publish};
use common::upstream::{TestBody, text};
use common::{Unpoll, Upstream, client, eventually, metric};
use futures::StreamExt;
use futures::channel::mpsc;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::json;
use tokio::io::AsyncWriteExt;

const TOKEN: &str = "t0ken";
const T: Duration = Duration::from_secs(10);

const CONFIG: &str = r#"
[admin]
listen = "127.0.0.1:0"
token = "t0ken"

[[stream]]
path = "/events/{chan}"
channels = ["{path.chan}"]
auth = "none"

[[tap]]
path = "/reservations"
channel = "reservas:{json.business_id}"
event = "created"
data = { id = "{response.json.id}", at = "{response.json.created_at}", location = "{response.header.Location}", name = "{json.name}" }

[[tap]]
path = "/uploads"
channel = "uploads"
data = { at = "{response.header.Location}" }

[[tap]]
path = "/export"
channel = "exports"
data = { rows = "{response.json.rows}" }
max_body = "4KiB"
"#;

/// An answer the test streams by hand: the handler's body is whatever the test sends.
type Held = Arc<Mutex<Option<mpsc::UnboundedReceiver<Bytes>>>>;

fn held_body(held: &Held) -> TestBody {
    let rx = held.lock().unwrap().take().expect("one streamed answer");
    StreamBody::new(rx.map(|b| Ok(Frame::data(b)))).boxed_unsync()
}

/// The reservations app: `POST /reservations` creates one and answers 201 with its id and
/// `Location`; `?case=` answers without one of them.
async fn app(held: Held) -> Upstream {
    let next_id = Arc::new(Mutex::new(41));
    Upstream::builder()
        .handler("/reservations", move |req: http::Request<_>| {
            let next_id = next_id.clone();
            async move {
                let case = req.uri().query().unwrap_or("").to_string();
                let id = {
                    let mut n = next_id.lock().unwrap();
                    *n += 1;
                    *n
                };
                let body = json!({"id": id, "created_at": "2026-11-30T10:00:00Z"}).to_string();
                let (body, content_type) = match case.as_str() {
                    "html" => ("<p>created</p>".to_string(), "text/html"),
                    "no_id" => (json!({"ok": true}).to_string(), "application/json"),
                    _ => (body, "application/json"),
                };
                let mut resp = text(201, body);
                resp.headers_mut()
                    .insert("content-type", content_type.parse().unwrap());
                if case != "no_location" {
                    let location = format!("/reservations/{id}");
                    resp.headers_mut()
                        .insert("location", location.parse().unwrap());
                }
                resp
            }
        })
        .handler("/uploads", |_req| async {
            let mut resp = text(201, "stored");
            resp.headers_mut()
                .insert("location", "/files/9".parse().unwrap());
            resp
        })
        .handler("/export", move |_req| {
            let body = held_body(&held);
            async move {
                let mut resp = http::Response::new(body);
                resp.headers_mut()
                    .insert("content-type", "application/json".parse().unwrap());
                resp
            }
        })
        .run()
        .await
}

async fn start() -> (Upstream, Unpoll, mpsc::UnboundedSender<Bytes>) {
    let (tx, rx) = mpsc::unbounded();
    let upstream = app(Arc::new(Mutex::new(Some(rx)))).await;
    let unpoll = Unpoll::start(&upstream.url(), CONFIG).await;
    (upstream, unpoll, tx)
}

fn skipped(m: &str, rule: &str, reason: &str) -> f64 {
    metric(
        m,
        &format!("unpoll_rule_skipped_total{{rule=\"{rule}\",reason=\"{reason}\"}}"),
    )
}

#[tokio::test]
async fn a_tap_event_carries_the_id_and_location_of_the_apps_201() {
    let (upstream, unpoll, _tx) = start().await;
    let http = client();
    let mut s = SseClient::open(&http, &unpoll.url("/events/reservas:3"), None).await;
    let resp = http
        .post(unpoll.url("/reservations"))
        .header("accept-encoding", "gzip")
        .json(&json!({"business_id": 3, "name": "Ana"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["location"], "/reservations/42");
    assert_eq!(
        resp.text().await.unwrap(),
        r#"{"created_at":"2026-11-30T10:00:00Z","id":42}"#,
        "the client gets the app's answer unchanged"
    );
    let e = s.next(T).await;
    assert_eq!(e.event, "created");
    let data: serde_json::Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(
        data,
        json!({"id": 42, "at": "2026-11-30T10:00:00Z", "location": "/reservations/42", "name": "Ana"}),
        "a lone {{response.json.…}} keeps its JSON type"
    );
    assert_eq!(
        upstream.last().headers["accept-encoding"],
        "identity",
        "the answer is asked uncompressed so its JSON can be read"
    );

    // Headers only: published at once, the request's Accept-Encoding untouched.
    let mut s = SseClient::open(&http, &unpoll.url("/events/uploads"), None).await;
    let resp = http
        .post(unpoll.url("/uploads"))
        .header("accept-encoding", "gzip")
        .body("file")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let e = s.next(T).await;
    assert_eq!(e.data, r#"{"at":"/files/9"}"#);
    assert_eq!(upstream.last().headers["accept-encoding"], "gzip");
}

#[tokio::test]
async fn a_missing_answer_value_publishes_nothing_and_is_counted() {
    let (_upstream, unpoll, _tx) = start().await;
    let http = client();
    let mut s = SseClient::open(&http, &unpoll.url("/events/reservas:3"), None).await;
    for case in ["html", "no_id", "no_location", "ok"] {
        let resp = http
            .post(unpoll.url(&format!("/reservations?{case}")))
            .json(&json!({"business_id": 3, "name": case}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        resp.bytes().await.unwrap();
    }
    let e = s.next(T).await;
    let data: serde_json::Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(
        data["name"], "ok",
        "the first event is the complete answer's"
    );
    eventually(T, "three answers counted as missing a value", || async {
        skipped(&unpoll.metrics().await, "tap[0]", "missing_value") == 3.0
    })
    .await;
    let m = unpoll.metrics().await;
    assert_eq!(metric(&m, "unpoll_hub_events_published_total"), 1.0);
}

#[tokio::test]
async fn the_answer_streams_to_the_client_and_the_event_follows_its_end() {
    let (_upstream, unpoll, tx) = start().await;
    let http = client();
    let mut s = SseClient::open(&http, &unpoll.url("/events/exports"), None).await;
    tx.unbounded_send(Bytes::from_static(b"{\"rows\": 12, "))
        .unwrap();
    let mut resp = http.post(unpoll.url("/export")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // The app has sent only part of its answer: the client already has it.
    let first = tokio::time::timeout(T, resp.chunk())
        .await
        .expect("the first part while the app holds the rest")
        .unwrap()
        .unwrap();
    assert_eq!(first, "{\"rows\": 12, ");
    let m = unpoll.metrics().await;
    assert_eq!(metric(&m, "unpoll_hub_events_published_total"), 0.0);
    tx.unbounded_send(Bytes::from_static(b"\"done\": true}"))
        .unwrap();
    drop(tx);
    let rest = resp.bytes().await.unwrap();
    assert_eq!(rest, "\"done\": true}");
    let e = s.next(T).await;
    assert_eq!(e.data, r#"{"rows":12}"#);
}

/// The app made the change: a client that hangs up mid-answer does not cost the others
/// their event.
#[tokio::test]
async fn a_client_gone_mid_answer_still_gets_the_event_published() {
    let (_upstream, unpoll, tx) = start().await;
    let http = client();
    let mut s = SseClient::open(&http, &unpoll.url("/events/exports"), None).await;
    let connections = || unpoll.app.handles.metrics.open_connections.get();
    eventually(T, "the stream's connection counted", || async {
        connections() == 1
    })
    .await;
    tx.unbounded_send(Bytes::from_static(b"{\"rows\": 5, "))
        .unwrap();
    let mut raw = tokio::net::TcpStream::connect(unpoll.addr).await.unwrap();
    raw.write_all(b"POST /export HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    common::read_until(&mut raw, "{\"rows\": 5, ", T).await;
    drop(raw);
    eventually(T, "unpoll closed the hung-up connection", || async {
        connections() == 1
    })
    .await;
    // Fails only if unpoll stopped reading the app's answer (the app then sees a hang-up).
    let _ = tx.unbounded_send(Bytes::from_static(b"\"done\": true}"));
    drop(tx);
    let e = s.next(T).await;
    assert_eq!(e.data, r#"{"rows":5}"#);
}

#[tokio::test]
async fn an_answer_over_max_body_still_streams_whole_and_is_not_kept() {
    let (_upstream, unpoll, tx) = start().await;
    let http = client();
    let mut s = SseClient::open(&http, &unpoll.url("/events/exports"), None).await;
    let chunk: Bytes = format!("[{}],", "7,".repeat(511)).into();
    let mut sent = b"{\"rows\": 64, \"data\": [".to_vec();
    tx.unbounded_send(Bytes::copy_from_slice(&sent)).unwrap();
    let resp = http.post(unpoll.url("/export")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    for _ in 0..64 {
        tx.unbounded_send(chunk.clone()).unwrap();
        sent.extend_from_slice(&chunk);
    }
    tx.unbounded_send(Bytes::from_static(b"[]]}")).unwrap();
    sent.extend_from_slice(b"[]]}");
    drop(tx);
    let received = resp.bytes().await.unwrap();
    assert_eq!(received.len(), sent.len());
    assert!(
        received == sent,
        "the client got the 64 KiB answer unchanged"
    );
    eventually(T, "the answer counted as too large", || async {
        skipped(&unpoll.metrics().await, "tap[2]", "response_too_large") == 1.0
    })
    .await;
    s.assert_quiet(Duration::from_millis(200)).await;
    let m = unpoll.metrics().await;
    assert_eq!(metric(&m, "unpoll_hub_events_published_total"), 0.0);
}

const CACHE_CONFIG: &str = r#"
[admin]
listen = "127.0.0.1:0"
token = "t0ken"

[[stream]]
path = "/events/{chan}"
channels = ["{path.chan}"]
auth = "none"

[[cache]]
path = "/reservations"
ttl = "1h"
vary = []
tags = ["reservas"]
"#;

/// An app that publishes from its own code: one `/publish` with `purge` replaces
/// `/purge` + `/publish`, and a client refetching on the event reads fresh data.
#[tokio::test]
async fn publish_with_purge_purges_before_the_event() {
    let version = Arc::new(Mutex::new(1));
    let v = version.clone();
    let upstream = Upstream::builder()
        .handler("/reservations", move |_req| {
            let v = *v.lock().unwrap();
            async move { text(200, format!("v{v}")) }
        })
        .run()
        .await;
    let unpoll = Unpoll::start(&upstream.url(), CACHE_CONFIG).await;
    let http = client();
    let list = unpoll.url("/reservations");
    let get = || async { http.get(&list).send().await.unwrap().text().await.unwrap() };
    assert_eq!(get().await, "v1");
    assert_eq!(get().await, "v1");
    assert_eq!(
        upstream.hits("/reservations"),
        1,
        "the second read was a hit"
    );

    let mut s = SseClient::open(&http, &unpoll.url("/events/reservas"), None).await;
    *version.lock().unwrap() = 2;
    let admin = unpoll.admin_url("/publish");
    publish(
        &http,
        &admin,
        TOKEN,
        json!({"channel": "reservas", "event": "changed", "purge": ["reservas"]}),
    )
    .await;
    assert_eq!(s.next(T).await.event, "changed");
    assert_eq!(get().await, "v2", "a refetch on the event is fresh");
    assert_eq!(upstream.hits("/reservations"), 2);

    // Invalid purges: 400 with a clear message, nothing published, nothing purged.
    for (body, message) in [
        (
            json!({"channel": "reservas", "purge": "reservas"}),
            "event 0: purge must be an array of tag strings",
        ),
        (
            json!([{"channel": "reservas", "purge": ["reservas"]}, {"channel": "x", "purge": [3]}]),
            "event 1: purge must be an array of tag strings",
        ),
    ] {
        let resp = http
            .post(&admin)
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let text = resp.text().await.unwrap();
        assert!(text.contains(message), "{text}");
    }
    *version.lock().unwrap() = 3;
    assert_eq!(get().await, "v2", "nothing was purged");
    let m = unpoll.metrics().await;
    assert_eq!(metric(&m, "unpoll_hub_events_published_total"), 1.0);
    assert_eq!(metric(&m, "unpoll_cache_purges_total"), 1.0);
}
