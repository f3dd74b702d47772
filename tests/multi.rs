//! `/_unpoll/multi` end to end: real SSE clients through the real unpoll, a real app
//! answering the auth checks, events published through the admin API.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::sse::{SseClient, publish};
use common::upstream::text;
use common::{Unpoll, Upstream, client, eventually, metric};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(10);
const ADMIN: &str = "admin-t0ken";

/// `/bots/events` needs the app's yes (user `a` may watch bot 1 until revoked, nobody bot
/// 2), re-checked every 200 ms; `/news/events` is open, at most 2 streams per address.
fn config(hub: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
token = "{ADMIN}"

[hub]
{hub}

[[stream]]
path = "/bots/events"
channels = ["bot:{{query.botId}}"]
auth = "upstream"
auth_path = "/api/bots/{{query.botId}}"
reauth = "200ms"
auth_cache = "0s"

[[stream]]
path = "/news/events"
channels = ["news:{{query.topic}}"]
auth = "none"
heartbeat = "100ms"
limits = {{ per_ip = 2, retry_after = "7s" }}
"#
    )
}

async fn start(hub: &str, revoked: Arc<AtomicBool>) -> (Upstream, Unpoll) {
    let app = Upstream::builder()
        .handler("/api/bots/1", move |req| {
            let revoked = revoked.clone();
            async move {
                let cookie = req.headers().get("cookie").and_then(|v| v.to_str().ok());
                match cookie {
                    Some("user=a") if !revoked.load(Ordering::SeqCst) => text(200, "[]"),
                    Some(_) => text(403, "forbidden"),
                    None => text(401, "login"),
                }
            }
        })
        .handler("/api/bots/2", |_| async { text(403, "forbidden") })
        .run()
        .await;
    let unpoll = Unpoll::start(&app.url(), &config(hub)).await;
    (app, unpoll)
}

/// The multi URL for `subs` (each percent-encoded as the client does).
fn multi_url(unpoll: &Unpoll, subs: &[&str]) -> String {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(subs.iter().map(|s| ("s", *s)))
        .finish();
    unpoll.url(&format!("/_unpoll/multi?{query}"))
}

/// Open a multi stream with the cookie of user `a`.
async fn open(url: &str) -> SseClient {
    let http = common::reqwest_builder()
        .no_proxy()
        .default_headers(
            [(reqwest::header::COOKIE, "user=a".parse().unwrap())]
                .into_iter()
                .collect(),
        )
        .build()
        .unwrap();
    SseClient::open(&http, url, None).await
}

/// The next message's JSON, heartbeats included; every multi message is unnamed and has no
/// id.
async fn next_any(s: &mut SseClient) -> Value {
    let e = s.next(T).await;
    assert_eq!(e.event, "message", "{e:?}");
    assert_eq!(e.id, "", "no id on a multi stream: {e:?}");
    serde_json::from_str(&e.data).unwrap_or_else(|err| panic!("{err}: {}", e.data))
}

/// The next message that is not a heartbeat.
async fn next(s: &mut SseClient) -> Value {
    loop {
        let m = next_any(s).await;
        if m.get("hb").is_none() {
            return m;
        }
    }
}

/// The next message that is not a heartbeat, or `None` when the stream ended.
async fn next_or_end(s: &mut SseClient) -> Option<Value> {
    loop {
        let e = s.next_or_end(T).await?;
        let m: Value = serde_json::from_str(&e.data).expect("JSON data");
        if m.get("hb").is_none() {
            return Some(m);
        }
    }
}

async fn publish_one(unpoll: &Unpoll, channel: &str, event: Option<&str>, data: Value) -> String {
    let mut body = json!({"channel": channel, "data": data});
    if let Some(name) = event {
        body["event"] = json!(name);
    }
    publish(&client(), &unpoll.admin_url("/publish"), ADMIN, body).await["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_subs_of_two_rules_get_their_events_tagged() {
    let (_app, unpoll) = start("", Arc::default()).await;
    let url = multi_url(&unpoll, &["/news/events?topic=x", "/bots/events?botId=1"]);
    let mut s = open(&url).await;
    assert_eq!(s.status, 200);
    assert_eq!(
        s.headers["content-type"],
        "text/event-stream; charset=utf-8"
    );
    // First a heartbeat naming the interval (news: 100 ms) and the hub position.
    let cursor = unpoll.app.handles.hub.cursor().to_string();
    assert_eq!(next_any(&mut s).await, json!({"hb": 100, "pos": cursor}));
    let bot = publish_one(&unpoll, "bot:1", Some("status"), json!({"up": true})).await;
    publish_one(&unpoll, "news:other", None, json!(0)).await;
    let news = publish_one(&unpoll, "news:x", None, json!("headline")).await;
    // Order is kept within a sub, not across subs (they are served round robin), so the
    // two frames may come either way round.
    let mut got = vec![next(&mut s).await, next(&mut s).await];
    got.sort_by_key(|frame| frame["s"].as_u64());
    assert_eq!(
        got,
        vec![
            json!({"s": 0, "id": news, "event": null, "data": "headline"}),
            json!({"s": 1, "id": bot, "event": "status", "data": {"up": true}}),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sub_resumes_from_its_own_last_event_id() {
    let (_app, unpoll) = start("", Arc::default()).await;
    let a1 = publish_one(&unpoll, "news:a", None, json!("a1")).await;
    publish_one(&unpoll, "news:b", None, json!("b1")).await;
    let a2 = publish_one(&unpoll, "news:a", None, json!("a2")).await;
    publish_one(&unpoll, "news:b", None, json!("b2")).await;
    let a3 = publish_one(&unpoll, "news:a", None, json!("a3")).await;
    let cursor = unpoll.app.handles.hub.cursor().to_string();
    let url = multi_url(
        &unpoll,
        &[
            &format!("/news/events?topic=a&last_event_id={a1}"),
            "/news/events?topic=b&last_event_id=0123456789ab-3",
        ],
    );
    let mut s = open(&url).await;
    let mut got: HashMap<u64, Vec<Value>> = HashMap::new();
    for _ in 0..3 {
        let m = next(&mut s).await;
        got.entry(m["s"].as_u64().unwrap()).or_default().push(m);
    }
    // Exactly the continuation after a1, in order.
    assert_eq!(
        got[&0],
        vec![
            json!({"s": 0, "id": a2, "event": null, "data": "a2"}),
            json!({"s": 0, "id": a3, "event": null, "data": "a3"}),
        ]
    );
    // An id from another run: one reset at the hub position, nothing replayed.
    let reset = &got[&1][0];
    assert_eq!(reset["event"], "reset");
    assert_eq!(reset["id"], cursor.as_str());
    assert_eq!(reset["data"]["reason"], "other_boot");
    // Both live afterwards.
    let b3 = publish_one(&unpoll, "news:b", None, json!("b3")).await;
    assert_eq!(
        next(&mut s).await,
        json!({"s": 1, "id": b3, "event": null, "data": "b3"})
    );
    let a4 = publish_one(&unpoll, "news:a", None, json!("a4")).await;
    assert_eq!(
        next(&mut s).await,
        json!({"s": 0, "id": a4, "event": null, "data": "a4"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_sub_gets_an_error_message_and_the_others_stream() {
    let (_app, unpoll) = start("", Arc::default()).await;
    let url = multi_url(&unpoll, &["/bots/events?botId=2", "/bots/events?botId=1"]);
    let mut s = open(&url).await;
    assert_eq!(s.status, 200);
    let error = next(&mut s).await;
    assert_eq!(error["s"], 0);
    assert_eq!(error["error"], 403);
    assert!(error["reason"].is_string(), "{error}");
    publish_one(&unpoll, "bot:2", None, json!("secret")).await;
    let id = publish_one(&unpoll, "bot:1", None, json!("mine")).await;
    assert_eq!(
        next(&mut s).await,
        json!({"s": 1, "id": id, "event": null, "data": "mine"}),
        "bot 2's event is not on the stream"
    );
    assert_eq!(unpoll.app.handles.hub.stats(0).subscribers, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_sub_fails_the_answer_is_the_first_failure() {
    let (_app, unpoll) = start("", Arc::default()).await;
    let http = client();
    let denied_first = multi_url(&unpoll, &["/bots/events?botId=2", "/no/stream"]);
    let resp = http
        .get(&denied_first)
        .header("cookie", "user=a")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let missing_first = multi_url(&unpoll, &["/no/stream", "/bots/events?botId=2"]);
    let resp = http.get(&missing_first).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    // Without a cookie the app says 401 for bot 1: that is the answer.
    let unauthenticated = multi_url(&unpoll, &["/bots/events?botId=1"]);
    let resp = http.get(&unauthenticated).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(unpoll.app.handles.hub.stats(0).subscribers, 0);
}

#[tokio::test]
async fn more_subs_than_max_multi_is_400() {
    let (_app, unpoll) = start("max_multi = 2", Arc::default()).await;
    let http = client();
    let three = multi_url(
        &unpoll,
        &[
            "/news/events?topic=a",
            "/news/events?topic=b",
            "/news/events?topic=c",
        ],
    );
    let resp = http.get(&three).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("max_multi"));
    let none = unpoll.url("/_unpoll/multi");
    assert_eq!(http.get(&none).send().await.unwrap().status(), 400);
    let two = multi_url(&unpoll, &["/news/events?topic=a", "/news/events?topic=b"]);
    assert_eq!(open(&two).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_limits_count_each_sub() {
    let (_app, unpoll) = start("", Arc::default()).await;
    // `/news/events` allows 2 streams per address: the third sub is refused with 429.
    let url = multi_url(
        &unpoll,
        &[
            "/news/events?topic=a",
            "/news/events?topic=b",
            "/news/events?topic=c",
        ],
    );
    let mut s = open(&url).await;
    assert_eq!(s.status, 200);
    let error = next(&mut s).await;
    assert_eq!(
        (error["s"].clone(), error["error"].clone()),
        (json!(2), json!(429))
    );
    // The two open subs hold both places: a single stream of the rule is refused too.
    let resp = client()
        .get(unpoll.url("/news/events?topic=d"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "7");
    drop(s);
    eventually(T, "the multi stream's places are freed", || async {
        let resp = client()
            .get(unpoll.url("/news/events?topic=d"))
            .send()
            .await
            .unwrap();
        resp.status() == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_ended_closes_one_sub_and_the_stream_ends_with_the_last() {
    let revoked = Arc::new(AtomicBool::new(false));
    let (_app, unpoll) = start("", revoked.clone()).await;
    let both = multi_url(&unpoll, &["/bots/events?botId=1", "/news/events?topic=x"]);
    let only_bot = multi_url(&unpoll, &["/bots/events?botId=1"]);
    let mut s = open(&both).await;
    let mut alone = open(&only_bot).await;
    assert_eq!((s.status, alone.status), (200, 200));
    revoked.store(true, Ordering::SeqCst);
    // A stream whose only sub lost access ends after saying so.
    assert_eq!(next(&mut alone).await["event"], "access_ended");
    assert_eq!(next_or_end(&mut alone).await, None, "the stream ended");
    let ended = next(&mut s).await;
    assert_eq!(
        ended,
        json!({"s": 0, "event": "access_ended", "data": {"reason": "revoked", "status": 403}})
    );
    let id = publish_one(&unpoll, "news:x", None, json!("still here")).await;
    publish_one(&unpoll, "bot:1", None, json!("gone")).await;
    let id2 = publish_one(&unpoll, "news:x", None, json!("and here")).await;
    assert_eq!(next(&mut s).await["id"], id.as_str());
    assert_eq!(
        next(&mut s).await["id"],
        id2.as_str(),
        "nothing for the closed sub"
    );
    assert_eq!(
        unpoll.app.handles.hub.stats(0).subscribers,
        1,
        "only news:x is left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_show_one_connection_for_ten_subs() {
    let (_app, unpoll) = start("", Arc::default()).await;
    let subs: Vec<String> = (0..9)
        .map(|i| format!("/bots/events?botId=1&tab={i}"))
        .chain(["/news/events?topic=x".to_string()])
        .collect();
    let subs: Vec<&str> = subs.iter().map(String::as_str).collect();
    let mut s = open(&multi_url(&unpoll, &subs)).await;
    assert_eq!(s.status, 200);
    let stats = unpoll.stats().await;
    assert_eq!(stats["stream_connections"], 1, "{stats}");
    assert_eq!(stats["hub"]["subscribers"], 10, "{stats}");
    let per_rule: HashMap<String, i64> = stats["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["path"].as_str().unwrap().to_string(),
                r["subscribers"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(per_rule["/bots/events"], 9, "{stats}");
    assert_eq!(per_rule["/news/events"], 1, "{stats}");
    // One event on a channel nine subs share: nine messages, one per sub.
    publish_one(&unpoll, "bot:1", None, json!(1)).await;
    let mut seen: Vec<u64> = Vec::new();
    for _ in 0..9 {
        seen.push(next(&mut s).await["s"].as_u64().unwrap());
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..9).collect::<Vec<u64>>());
    drop(s);
    eventually(T, "the connection is no longer counted", || async {
        let stats = unpoll.stats().await;
        stats["stream_connections"] == 0 && stats["hub"]["subscribers"] == 0
    })
    .await;
}

#[tokio::test]
async fn shutdown_ends_a_multi_stream_cleanly() {
    let (_app, unpoll) = start("", Arc::default()).await;
    let mut s = open(&multi_url(&unpoll, &["/news/events?topic=x"])).await;
    assert_eq!(s.status, 200);
    let app = unpoll.app.clone();
    let stop = tokio::spawn(unpoll.stop());
    assert_eq!(next_or_end(&mut s).await, None, "the stream ended cleanly");
    stop.await.unwrap();
    assert_eq!(app.handles.hub.stats(0).subscribers, 0);
    assert_eq!(app.handles.metrics.stream_connections.get(), 0);
}

#[tokio::test]
async fn retry_first_then_visible_heartbeats_at_the_shortest_rules_interval() {
    let (_app, unpoll) = start("", Arc::default()).await;
    // bots: default 15 s heartbeat; news: 100 ms.
    let cursor = unpoll.app.handles.hub.cursor().to_string();
    let url = multi_url(&unpoll, &["/bots/events?botId=1", "/news/events?topic=x"]);
    let mut resp = client()
        .get(&url)
        .header("cookie", "user=a")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut raw = Vec::new();
    let deadline = tokio::time::Instant::now() + T;
    let beat = b"data: {\"hb\":100}\n\n";
    while raw.windows(beat.len()).filter(|w| w == beat).count() < 3 {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("heartbeats in time")
            .unwrap()
            .expect("stream open");
        raw.extend_from_slice(&chunk);
    }
    let first = format!("retry: 2000\n\ndata: {{\"hb\":100,\"pos\":\"{cursor}\"}}\n\n");
    assert!(
        raw.starts_with(first.as_bytes()),
        "{:?}",
        String::from_utf8_lossy(&raw)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_without_events_resumes_from_the_first_heartbeats_position() {
    let (_app, unpoll) = start("", Arc::default()).await;
    publish_one(&unpoll, "news:x", None, json!("before")).await;
    let mut s = open(&multi_url(&unpoll, &["/news/events?topic=x"])).await;
    let pos = next_any(&mut s).await["pos"].as_str().unwrap().to_string();
    drop(s);
    // Published while the client was away: it resumes from `pos` and misses nothing.
    let missed = publish_one(&unpoll, "news:x", None, json!("missed")).await;
    let resume = format!("/news/events?topic=x&last_event_id={pos}");
    let mut s = open(&multi_url(&unpoll, &[&resume])).await;
    assert_eq!(
        next(&mut s).await,
        json!({"s": 0, "id": missed, "event": null, "data": "missed"})
    );
}

/// A multi client that never reads: when one of its subs overflows, the whole stream (its
/// connection) is closed and every sub of it released, as for a slow single stream, while
/// a reading client of the same channel gets every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_multi_client_is_disconnected_with_all_its_subs() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_app, unpoll) = start(
        // Only the overflow may close it: no send timeout within the test.
        "subscriber_queue = 16\nsubscriber_queue_bytes = \"512KiB\"\nhistory_max_bytes = \"2MiB\"\n\
         [proxy]\nsend_timeout = \"1h\"",
        Arc::default(),
    )
    .await;
    // A small receive buffer so the kernel does not absorb tens of MB first.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut slow = socket.connect(unpoll.addr).await.unwrap();
    let url = multi_url(&unpoll, &["/news/events?topic=x", "/bots/events?botId=1"]);
    let path = url.strip_prefix(&unpoll.url("")).unwrap();
    slow.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nCookie: user=a\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut fast = SseClient::open(&client(), &unpoll.url("/news/events?topic=x"), None).await;
    eventually(T, "all subscribed", || async {
        unpoll.app.handles.hub.stats(0).subscribers == 3
    })
    .await;
    let data = "x".repeat(64 * 1024);
    let mut published = 0;
    while unpoll.app.handles.hub.stats(0).subscribers == 3 {
        publish_one(&unpoll, "news:x", None, json!(data)).await;
        published += 1;
        assert_eq!(fast.next(T).await.data.len(), data.len() + 2);
        assert!(published < 500, "the slow client was never disconnected");
    }
    eprintln!("slow multi client disconnected after {published} events");
    eventually(T, "the slow stream and both its subs are gone", || async {
        let stats = unpoll.stats().await;
        stats["hub"]["subscribers"] == 1 && stats["stream_connections"] == 1
    })
    .await;
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
    let id = publish_one(&unpoll, "news:x", None, json!("after")).await;
    assert_eq!(fast.next(T).await.id, id);
}

/// Requested on a kept-alive connection, the multi stream starts in hyper (chunked) and
/// carries the same messages as on a fresh one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_stream_on_a_reused_connection() {
    use tokio::io::AsyncWriteExt;
    let (_app, unpoll) = start("", Arc::default()).await;
    let mut conn = tokio::net::TcpStream::connect(unpoll.addr).await.unwrap();
    conn.write_all(b"GET /api/bots/1 HTTP/1.1\r\nHost: x\r\nCookie: user=a\r\n\r\n")
        .await
        .unwrap();
    let proxied = common::read_until(&mut conn, "[]", T).await;
    assert!(proxied.starts_with("HTTP/1.1 200 OK\r\n"), "{proxied}");
    let url = multi_url(&unpoll, &["/bots/events?botId=1", "/bots/events?botId=2"]);
    let path = url.strip_prefix(&unpoll.url("")).unwrap();
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nCookie: user=a\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = common::read_until(&mut conn, "\"error\":403", T).await;
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    eventually(T, "subscribed", || async {
        unpoll.app.handles.hub.stats(0).subscribers == 1
    })
    .await;
    let id = publish_one(&unpoll, "bot:1", None, json!("hi")).await;
    let message = format!("data: {{\"s\":0,\"id\":\"{id}\",\"event\":null,\"data\":\"hi\"}}\n\n");
    // Chunk framing around it: `<hex size>\r\n<message>\r\n`.
    let framed = format!("{:X}\r\n{message}\r\n", message.len());
    common::read_until(&mut conn, &framed, T).await;
}

/// JWT subs: the token comes from each `s`'s own `token=`, the generic stream is one more
/// kind of `s`, and a sub's token expiring closes that sub only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_subs_use_their_own_token_and_expire_alone() {
    use common::auth::{SECRET, hs256, now};
    let app = Upstream::builder().run().await;
    let unpoll = Unpoll::start(
        &app.url(),
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{ADMIN}\"\n[jwt]\nsecret = \"{SECRET}\"\n\
             leeway = \"0s\"\n[generic_stream]\nenabled = true\n[[stream]]\npath = \"/bots/events\"\n\
             channels = [\"bot:{{query.botId}}\"]\nauth = \"jwt\"\n"
        ),
    )
    .await;
    let long = hs256(json!({"exp": now() + 3600, "unpoll.subscribe": ["bot:1"]}));
    let short = hs256(json!({"exp": now() + 2, "unpoll.subscribe": ["bot:*"]}));
    let generic = format!("/_unpoll/sse?channel=bot:1&token={long}");
    let rule = format!("/bots/events?botId=1&token={short}");
    let outside = format!("/_unpoll/sse?channel=bot:2&token={long}");
    let mut s = open(&multi_url(&unpoll, &[&generic, &rule, &outside])).await;
    assert_eq!(s.status, 200);
    let error = next(&mut s).await;
    assert_eq!(
        (error["s"].clone(), error["error"].clone()),
        (json!(2), json!(403))
    );
    let id = publish_one(&unpoll, "bot:1", None, json!(1)).await;
    let mut first: Vec<u64> = Vec::new();
    for _ in 0..2 {
        let m = next(&mut s).await;
        assert_eq!(m["id"], id.as_str());
        first.push(m["s"].as_u64().unwrap());
    }
    first.sort_unstable();
    assert_eq!(first, vec![0, 1]);
    // The short token's sub ends at its exp; the other goes on.
    assert_eq!(
        next(&mut s).await,
        json!({"s": 1, "event": "access_ended", "data": {"reason": "expired", "status": 401}})
    );
    let id = publish_one(&unpoll, "bot:1", None, json!(2)).await;
    assert_eq!(
        next(&mut s).await,
        json!({"s": 0, "id": id, "event": null, "data": 2})
    );
    assert_eq!(unpoll.app.handles.hub.stats(0).subscribers, 1);
}

// ---- `[[watch]]` subscriptions on a multiplexed stream ----------------------------------

/// The watched app: `GET /inbox` answers each user's inbox version (`Cookie: user=NAME`),
/// 403 for users in `forbidden`, and counts its fetches per user.
#[derive(Default)]
struct Inbox {
    versions: HashMap<String, u64>,
    forbidden: Vec<String>,
    fetches: HashMap<String, usize>,
}

type SharedInbox = Arc<Mutex<Inbox>>;

/// unpoll with [`config`]'s streams and a `/inbox` watch refetched only when its tag
/// `inbox` is purged, in front of an [`Inbox`].
async fn start_watching(hub: &str) -> (Upstream, Unpoll, SharedInbox) {
    let inbox = SharedInbox::default();
    let state = inbox.clone();
    let app = Upstream::builder()
        .handler("/inbox", move |req| {
            let state = state.clone();
            async move {
                let cookie = req.headers().get("cookie").and_then(|v| v.to_str().ok());
                let user = cookie.and_then(|c| c.strip_prefix("user=")).unwrap_or("");
                let mut s = state.lock().unwrap();
                *s.fetches.entry(user.to_string()).or_default() += 1;
                if s.forbidden.iter().any(|f| f == user) {
                    return text(403, "forbidden");
                }
                let v = s.versions.get(user).copied().unwrap_or(0);
                let mut resp = text(200, format!("{{\"user\":\"{user}\",\"v\":{v}}}"));
                resp.headers_mut()
                    .insert("content-type", "application/json".parse().unwrap());
                resp
            }
        })
        .run()
        .await;
    let watch = "\n[[watch]]\npath = \"/inbox\"\ninterval = \"0s\"\ntags = [\"inbox\"]\n\
                 min_interval = \"10ms\"\n";
    let unpoll = Unpoll::start(&app.url(), &(config(hub) + watch)).await;
    (app, unpoll, inbox)
}

/// Open a multi stream as `user`.
async fn open_as(url: &str, user: &str) -> SseClient {
    let req = client().get(url).header("cookie", format!("user={user}"));
    SseClient::send(req).await
}

async fn purge_inbox(unpoll: &Unpoll) {
    let resp = client()
        .post(unpoll.admin_url("/purge"))
        .bearer_auth(ADMIN)
        .json(&json!({ "tags": ["inbox"] }))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "purge: {}", resp.status());
}

fn inbox_fetches(inbox: &SharedInbox, user: &str) -> usize {
    inbox
        .lock()
        .unwrap()
        .fetches
        .get(user)
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_and_a_stream_share_one_multi_stream() {
    let (_app, unpoll, inbox) = start_watching("").await;
    let url = multi_url(&unpoll, &["/news/events?topic=x", "/inbox"]);
    let mut s = open_as(&url, "a").await;
    assert_eq!(s.status, 200);
    // The watch sub starts with the current body, its id the version.
    let first = next(&mut s).await;
    assert_eq!(first["s"], 1, "{first}");
    assert_eq!(first["data"], json!({"user": "a", "v": 0}));
    let v0 = first["id"].as_str().expect("a version").to_string();
    let news = publish_one(&unpoll, "news:x", None, json!("headline")).await;
    assert_eq!(
        next(&mut s).await,
        json!({"s": 0, "id": news, "event": null, "data": "headline"})
    );
    // A change the app makes, signalled by a purge of the watch's tag, is pushed.
    inbox.lock().unwrap().versions.insert("a".into(), 1);
    purge_inbox(&unpoll).await;
    let second = next(&mut s).await;
    assert_eq!(second["s"], 1, "{second}");
    assert_eq!(second["data"], json!({"user": "a", "v": 1}));
    assert_ne!(second["id"], v0.as_str(), "a new version");
    assert_eq!(
        inbox_fetches(&inbox, "a"),
        2,
        "the first fetch and the purge's"
    );
    let stats = unpoll.metrics().await;
    assert_eq!(metric(&stats, "unpoll_watch_subscribers"), 1.0);
    assert_eq!(metric(&stats, "unpoll_stream_connections"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sub_resumes_by_its_version_and_an_equal_one_sends_nothing_at_first() {
    let (_app, unpoll, inbox) = start_watching("").await;
    let mut first = open_as(&multi_url(&unpoll, &["/inbox"]), "a").await;
    let v0 = next(&mut first).await["id"].as_str().unwrap().to_string();
    drop(first);
    // Resumed at the current version: the first message of the stream is the news event
    // published after opening, not the body the client has.
    let current = format!("/inbox?last_event_id={v0}");
    let url = multi_url(&unpoll, &["/news/events?topic=y", &current]);
    let mut s = open_as(&url, "a").await;
    assert_eq!(s.status, 200);
    let news = publish_one(&unpoll, "news:y", None, json!("n")).await;
    assert_eq!(next(&mut s).await["id"], news.as_str(), "no body first");
    inbox.lock().unwrap().versions.insert("a".into(), 1);
    purge_inbox(&unpoll).await;
    let pushed = next(&mut s).await;
    assert_eq!(
        (pushed["s"].clone(), pushed["data"]["v"].clone()),
        (json!(1), json!(1))
    );
    // Resumed at an older version: the current body comes first.
    let stale = format!("/inbox?last_event_id={v0}");
    let mut behind = open_as(&multi_url(&unpoll, &[&stale]), "a").await;
    let caught_up = next(&mut behind).await;
    assert_eq!(caught_up["data"], json!({"user": "a", "v": 1}));
    assert_eq!(caught_up["id"], pushed["id"]);
    // The resume parameter is not the app's: every sub watched one key, fetched once per
    // trigger (the first open's fetch and the purge's).
    assert_eq!(inbox_fetches(&inbox, "a"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sub_is_checked_as_if_opened_alone() {
    let (_app, unpoll, inbox) = start_watching("max_watch_keys = 2").await;
    inbox.lock().unwrap().forbidden.push("b".into());
    let url = multi_url(&unpoll, &["/inbox", "/news/events?topic=x"]);
    // The app's 403 on the first fetch is the sub's answer; the other sub streams.
    let mut denied = open_as(&url, "b").await;
    assert_eq!(denied.status, 200);
    let error = next(&mut denied).await;
    assert_eq!(
        (error["s"].clone(), error["error"].clone()),
        (json!(0), json!(403))
    );
    let news = publish_one(&unpoll, "news:x", None, json!(1)).await;
    assert_eq!(next(&mut denied).await["id"], news.as_str());
    // Alone, a 403 on the first fetch is the whole answer.
    let alone = open_as(&multi_url(&unpoll, &["/inbox"]), "b").await;
    assert_eq!(alone.status, 403);
    // hub.max_watch_keys counts the keys of multi subs as any watch stream's (the news
    // rule allows two streams per address: c and d watch only).
    let mut a = open_as(&url, "a").await;
    assert_eq!(next(&mut a).await["data"]["user"], "a");
    let only_inbox = multi_url(&unpoll, &["/inbox"]);
    let mut c = open_as(&only_inbox, "c").await;
    assert_eq!(next(&mut c).await["data"]["user"], "c");
    let d = open_as(&only_inbox, "d").await;
    assert_eq!(d.status, 429, "the only sub's answer");
    assert!(
        d.headers.contains_key("retry-after"),
        "429 says when to retry"
    );
    // Access ending on a later fetch closes that sub with `access_ended`; the other stays.
    inbox.lock().unwrap().forbidden.push("a".into());
    purge_inbox(&unpoll).await;
    assert_eq!(
        next(&mut a).await,
        json!({"s": 0, "event": "access_ended", "data": {"reason": "revoked", "status": 403}})
    );
    let later = publish_one(&unpoll, "news:x", None, json!(2)).await;
    assert_eq!(next(&mut a).await["id"], later.as_str());
}
