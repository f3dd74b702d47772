//! The polling cache end to end: real unpoll, real upstreams, real clients; counts, not
//! timings.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::upstream::text;
use common::{Unpoll, Upstream, client, eventually, metric};

const T: Duration = Duration::from_secs(10);

fn status_of(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// An upstream whose `/messages` answers with the caller's cookie, after `delay`.
async fn per_user_upstream(delay: Duration) -> Upstream {
    Upstream::builder()
        .handler("/messages", |req| async move {
            let who = req
                .headers()
                .get("cookie")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_else(|| "nobody".into());
            text(200, format!("messages of {who}"))
        })
        .delay("/messages", delay)
        .run()
        .await
}

#[tokio::test]
async fn five_hundred_concurrent_cold_requests_make_one_upstream_request() {
    let upstream = per_user_upstream(Duration::from_millis(200)).await;
    let unpoll = Unpoll::start(
        &upstream.url(),
        "[[cache]]\npath = \"/messages\"\nttl = \"30s\"",
    )
    .await;
    let http = client();
    let requests = (0..500).map(|_| {
        let (http, url) = (http.clone(), unpoll.url("/messages"));
        tokio::spawn(async move {
            let resp = http.get(url).send().await.unwrap();
            (status_of(&resp), resp.text().await.unwrap())
        })
    });
    let results = futures::future::join_all(requests).await;
    assert_eq!(upstream.hits("/messages"), 1);
    let mut collapsed = 0;
    for r in results {
        let (status, body) = r.unwrap();
        assert_eq!(body, "messages of nobody");
        collapsed += usize::from(status.contains("collapsed"));
    }
    assert!(collapsed > 0, "waiters were woken with the shared response");
    let m = unpoll.metrics().await;
    assert_eq!(
        metric(&m, "unpoll_upstream_requests_saved_total"),
        499.0,
        "{m}"
    );
}

#[tokio::test]
async fn each_user_gets_their_own_entry_unless_the_rule_shares() {
    let upstream = per_user_upstream(Duration::from_millis(100)).await;
    let unpoll = Unpoll::start(
        &upstream.url(),
        "[[cache]]\npath = \"/messages\"\nttl = \"30s\"",
    )
    .await;
    let http = client();
    let requests = (0..100).flat_map(|user| {
        (0..5).map({
            let http = http.clone();
            let url = unpoll.url("/messages");
            move |_| {
                let (http, url) = (http.clone(), url.clone());
                tokio::spawn(async move {
                    let resp = http
                        .get(url)
                        .header("cookie", format!("session=u{user}"))
                        .send()
                        .await
                        .unwrap();
                    (user, resp.text().await.unwrap())
                })
            }
        })
    });
    for r in futures::future::join_all(requests.collect::<Vec<_>>()).await {
        let (user, body) = r.unwrap();
        assert_eq!(
            body,
            format!("messages of session=u{user}"),
            "user {user} got someone else's data"
        );
    }
    assert_eq!(upstream.hits("/messages"), 100);

    let shared = per_user_upstream(Duration::from_millis(100)).await;
    let unpoll = Unpoll::start(
        &shared.url(),
        "[[cache]]\npath = \"/messages\"\nttl = \"30s\"\nvary = []",
    )
    .await;
    let requests = (0..500).map(|i| {
        let (http, url) = (http.clone(), unpoll.url("/messages"));
        tokio::spawn(async move {
            http.get(url)
                .header("cookie", format!("session=u{}", i % 100))
                .send()
                .await
                .unwrap()
                .status()
        })
    });
    for r in futures::future::join_all(requests).await {
        assert_eq!(r.unwrap(), 200);
    }
    assert_eq!(shared.hits("/messages"), 1);
}

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    let upstream = per_user_upstream(Duration::ZERO).await;
    let unpoll = Unpoll::start(
        &upstream.url(),
        "[[cache]]\npath = \"/messages\"\nttl = \"300ms\"",
    )
    .await;
    let http = client();
    let first = http.get(unpoll.url("/messages")).send().await.unwrap();
    assert_eq!(
        status_of(&first),
        "unpoll; fwd=miss; fwd-status=200; stored"
    );
    assert!(first.headers().contains_key("unpoll-cursor"));
    let second = http.get(unpoll.url("/messages")).send().await.unwrap();
    assert!(
        status_of(&second).starts_with("unpoll; hit"),
        "{}",
        status_of(&second)
    );
    assert_eq!(second.headers()["age"], "0");
    assert_eq!(upstream.hits("/messages"), 1);
    eventually(T, "the entry expires and is fetched again", || async {
        http.get(unpoll.url("/messages")).send().await.unwrap();
        upstream.hits("/messages") == 2
    })
    .await;
}

/// Once stale, every request is answered at once from the stale entry while exactly one
/// background request refreshes it. The refresh is held at the upstream until the count is
/// taken, so a slow machine cannot let the refreshed entry go stale again in between.
#[tokio::test]
async fn stale_while_revalidate_serves_stale_and_refreshes_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    // Every answer after the first waits for a permit: the refresh lands only when the
    // test says so.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let upstream = {
        let (calls, gate) = (calls.clone(), gate.clone());
        Upstream::builder()
            .handler("/messages", move |_req| {
                let (calls, gate) = (calls.clone(), gate.clone());
                async move {
                    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                    if n > 1 {
                        gate.acquire().await.unwrap().forget();
                    }
                    text(200, format!("version {n}"))
                }
            })
            .run()
            .await
    };
    let unpoll = Unpoll::start(
        &upstream.url(),
        "[[cache]]\npath = \"/messages\"\nttl = \"100ms\"\nstale_while_revalidate = \"60s\"",
    )
    .await;
    let http = client();
    let first = http.get(unpoll.url("/messages")).send().await.unwrap();
    assert_eq!(first.text().await.unwrap(), "version 1");
    eventually(T, "a stale answer", || async {
        let resp = http.get(unpoll.url("/messages")).send().await.unwrap();
        status_of(&resp).contains("stale-while-revalidate")
    })
    .await;
    eventually(T, "the background refresh reaches the upstream", || async {
        upstream.hits("/messages") == 2
    })
    .await;
    let burst = (0..20).map(|_| {
        let (http, url) = (http.clone(), unpoll.url("/messages"));
        tokio::spawn(async move {
            let resp = http.get(url).send().await.unwrap();
            (status_of(&resp), resp.text().await.unwrap())
        })
    });
    for answer in futures::future::join_all(burst).await {
        let (status, body) = answer.unwrap();
        assert_eq!(body, "version 1");
        assert!(status.contains("stale-while-revalidate"), "{status}");
    }
    assert_eq!(
        upstream.hits("/messages"),
        2,
        "exactly one background refresh"
    );
    gate.add_permits(100);
    eventually(T, "the background refresh lands", || async {
        let resp = http.get(unpoll.url("/messages")).send().await.unwrap();
        resp.text().await.unwrap() == "version 2"
    })
    .await;
}

#[tokio::test]
async fn stale_if_error_covers_a_stopped_upstream() {
    let upstream = per_user_upstream(Duration::ZERO).await;
    let unpoll = Unpoll::start(
        &upstream.url(),
        "[[cache]]\npath = \"/messages\"\nttl = \"200ms\"\nstale_if_error = \"60s\"",
    )
    .await;
    let http = client();
    http.get(unpoll.url("/messages")).send().await.unwrap();
    upstream.stop();
    eventually(T, "stale served while the upstream is down", || async {
        let resp = http.get(unpoll.url("/messages")).send().await.unwrap();
        let status = status_of(&resp);
        resp.status() == 200
            && status.contains("detail=stale-if-error")
            && resp.text().await.unwrap() == "messages of nobody"
    })
    .await;
    // Without the window, the same failure is a 502.
    let other = Unpoll::start(
        &upstream.url(),
        "[[cache]]\npath = \"/messages\"\nttl = \"200ms\"",
    )
    .await;
    assert_eq!(
        http.get(other.url("/messages"))
            .send()
            .await
            .unwrap()
            .status(),
        502
    );
}

#[tokio::test]
async fn personal_uncacheable_and_failed_responses_are_not_stored() {
    let upstream = Upstream::builder()
        .handler("/cookie", |_| async {
            let mut r = text(200, "with cookie");
            r.headers_mut().insert("set-cookie", "s=1".parse().unwrap());
            r
        })
        .handler("/nostore", |_| async {
            let mut r = text(200, "no-store");
            r.headers_mut()
                .insert("cache-control", "no-store".parse().unwrap());
            r
        })
        .handler("/error", |_| async { text(500, "boom") })
        .handler("/big", |_| async { text(200, "x".repeat(100 * 1024)) })
        .run()
        .await;
    let unpoll = Unpoll::start(
        &upstream.url(),
        "[[cache]]\npath = \"/*\"\nttl = \"30s\"\nmax_body = \"1KiB\"",
    )
    .await;
    let http = client();
    for path in ["/cookie", "/nostore", "/error", "/big"] {
        for _ in 0..2 {
            let resp = http.get(unpoll.url(path)).send().await.unwrap();
            let status = status_of(&resp);
            let body = resp.text().await.unwrap();
            assert!(
                !status.contains("stored") && !status.contains("hit"),
                "{path}: {status}"
            );
            if path == "/big" {
                assert_eq!(body.len(), 100 * 1024, "oversized body passed whole");
            }
        }
        assert_eq!(upstream.hits(path), 2, "{path} must not be stored");
    }
}

#[tokio::test]
async fn when_the_single_fetch_fails_every_waiter_gets_its_answer_at_once() {
    // A 500 is shared with the waiters (one upstream request, not a stampede).
    let upstream = Upstream::builder()
        .handler("/error", |_| async { text(500, "boom") })
        .delay("/error", Duration::from_millis(200))
        .run()
        .await;
    let unpoll = Unpoll::start(&upstream.url(), "[[cache]]\npath = \"/*\"\nttl = \"30s\"").await;
    let http = client();
    let burst = (0..50).map(|_| {
        let (http, url) = (http.clone(), unpoll.url("/error"));
        tokio::spawn(async move { http.get(url).send().await.unwrap().status() })
    });
    for s in futures::future::join_all(burst).await {
        assert_eq!(s.unwrap(), 500);
    }
    assert_eq!(upstream.hits("/error"), 1);

    // A personal response (Set-Cookie) cannot be shared: the waiters all go upstream
    // together, never one after the other.
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (f, p) = (in_flight.clone(), peak.clone());
    let upstream = Upstream::builder()
        .handler("/me", move |_| {
            let (f, p) = (f.clone(), p.clone());
            async move {
                let now = f.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
                f.fetch_sub(1, Ordering::SeqCst);
                let mut r = text(200, "mine");
                r.headers_mut().insert("set-cookie", "s=1".parse().unwrap());
                r
            }
        })
        .run()
        .await;
    let unpoll = Unpoll::start(&upstream.url(), "[[cache]]\npath = \"/*\"\nttl = \"30s\"").await;
    let burst = (0..20).map(|_| {
        let (http, url) = (http.clone(), unpoll.url("/me"));
        tokio::spawn(async move { http.get(url).send().await.unwrap().text().await.unwrap() })
    });
    for body in futures::future::join_all(burst).await {
        assert_eq!(body.unwrap(), "mine");
    }
    assert_eq!(upstream.hits("/me"), 20);
    assert!(
        peak.load(Ordering::SeqCst) >= 10,
        "waiters went upstream one by one (peak concurrency {})",
        peak.load(Ordering::SeqCst)
    );
}

const TAGGED: &str = r#"
[admin]
listen = "127.0.0.1:0"
token = "t0ken"

[[cache]]
path = "/chats/{id}/messages"
ttl = "60s"
tags = ["chat:{path.id}"]

[[tap]]
method = "POST"
path = "/chats/{id}/messages"
channel = "chat:{path.id}"
event = "message"
purge = ["chat:{path.id}"]
"#;

async fn chat_upstream(delay: Duration) -> Upstream {
    Upstream::builder()
        .handler("/chats/1/messages", |_| async { text(200, "chat 1") })
        .handler("/chats/2/messages", |_| async { text(200, "chat 2") })
        .delay("/chats/1/messages", delay)
        .run()
        .await
}

#[tokio::test]
async fn purge_by_tag_from_the_admin_api_and_from_a_tap() {
    let upstream = chat_upstream(Duration::ZERO).await;
    let unpoll = Unpoll::start(&upstream.url(), TAGGED).await;
    let http = client();
    let get = |chat: u32| {
        let (http, url) = (http.clone(), unpoll.url(&format!("/chats/{chat}/messages")));
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    get(1).await;
    get(2).await;
    get(1).await;
    assert_eq!(upstream.total(), 2);

    let purge = |token: &str| {
        http.post(unpoll.admin_url("/purge"))
            .bearer_auth(token)
            .json(&serde_json::json!({"tags": ["chat:1"]}))
            .send()
    };
    assert_eq!(purge("wrong").await.unwrap().status(), 401);
    assert_eq!(purge("t0ken").await.unwrap().status(), 200);
    get(1).await;
    get(2).await;
    assert_eq!(
        upstream.hits("/chats/1/messages"),
        2,
        "purged tag refetched"
    );
    assert_eq!(upstream.hits("/chats/2/messages"), 1, "other tag kept");

    // A tap's 2xx purges the same way (the internal call event sources use).
    get(1).await;
    assert_eq!(upstream.hits("/chats/1/messages"), 2, "cached again");
    let tap = http
        .post(unpoll.url("/chats/1/messages"))
        .json(&serde_json::json!({"text": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(tap.status(), 200);
    assert_eq!(
        upstream.hits("/chats/1/messages"),
        3,
        "the POST went upstream"
    );
    assert_eq!(get(1).await, "chat 1");
    assert_eq!(
        upstream.hits("/chats/1/messages"),
        4,
        "the tap purged chat:1"
    );
    get(2).await;
    assert_eq!(upstream.hits("/chats/2/messages"), 1, "chat:2 untouched");
}

#[tokio::test]
async fn a_purge_racing_an_in_flight_fill_keeps_that_fill_out_of_the_cache() {
    let upstream = chat_upstream(Duration::from_millis(300)).await;
    let unpoll = Unpoll::start(&upstream.url(), TAGGED).await;
    let http = client();
    let url = unpoll.url("/chats/1/messages");
    let fill = tokio::spawn({
        let (http, url) = (http.clone(), url.clone());
        async move { http.get(url).send().await.unwrap() }
    });
    eventually(T, "the fill reached the upstream", || async {
        upstream.hits("/chats/1/messages") == 1
    })
    .await;
    let purged = http
        .post(unpoll.admin_url("/purge"))
        .bearer_auth("t0ken")
        .json(&serde_json::json!({"tags": ["chat:1"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(purged.status(), 200);
    let raced = fill.await.unwrap();
    assert_eq!(
        status_of(&raced),
        "unpoll; fwd=miss; fwd-status=200",
        "not stored"
    );
    http.get(&url).send().await.unwrap();
    assert_eq!(
        upstream.hits("/chats/1/messages"),
        2,
        "the raced fill was not served from the cache"
    );
}

#[tokio::test]
async fn if_none_match_is_answered_304_without_the_upstream_and_head_uses_the_get_entry() {
    let upstream = per_user_upstream(Duration::ZERO).await;
    let unpoll = Unpoll::start(
        &upstream.url(),
        "[[cache]]\npath = \"/messages\"\nttl = \"30s\"",
    )
    .await;
    let http = client();
    let first = http.get(unpoll.url("/messages")).send().await.unwrap();
    let etag = first.headers()["etag"].clone();
    assert!(
        etag.to_str().unwrap().starts_with("\"u"),
        "strong ETag made from the body"
    );
    let again = http
        .get(unpoll.url("/messages"))
        .header("if-none-match", etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"], etag);
    assert!(again.text().await.unwrap().is_empty());
    let head = http.head(unpoll.url("/messages")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], "18");
    assert_eq!(upstream.hits("/messages"), 1);
}

#[tokio::test]
async fn stored_bytes_stay_within_cache_size() {
    let upstream = Upstream::builder()
        .handler("/items", |req| async move {
            let q = req.uri().query().unwrap_or("").to_string();
            text(200, format!("{q}{}", "x".repeat(2048)))
        })
        .run()
        .await;
    let unpoll = Unpoll::start(
        &upstream.url(),
        "cache_size = \"64KiB\"\n[[cache]]\npath = \"/items\"\nttl = \"60s\"\nvary = []",
    )
    .await;
    let http = client();
    for i in 0..200 {
        let resp = http
            .get(unpoll.url(&format!("/items?i={i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    unpoll.app.handles.cache.maintain();
    let stats = unpoll.stats().await;
    let cache = &stats["cache"];
    assert!(
        cache["stored_bytes"].as_u64().unwrap() <= 64 * 1024,
        "{cache}"
    );
    assert!(cache["entries"].as_u64().unwrap() > 0, "{cache}");
    assert!(cache["evictions"].as_u64().unwrap() > 0, "{cache}");
}
