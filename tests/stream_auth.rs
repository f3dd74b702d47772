//! Stream auth end to end: real SSE clients through the real unpoll, a real app answering
//! the auth checks, events published through the admin API.

mod common;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::auth::{SECRET, hs256, now};
use common::sse::publish;
use common::upstream::text;
use common::{Unpoll, Upstream, client};
use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};

const T: Duration = Duration::from_secs(10);
const ADMIN: &str = "admin-t0ken";

type Events = Pin<Box<dyn Stream<Item = Event> + Send>>;

/// Open `url` with `headers`; the status and, on 200, the events.
async fn open(url: &str, headers: &[(&str, &str)]) -> (u16, Option<String>, Events) {
    let mut req = client().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let events = resp
        .bytes_stream()
        .eventsource()
        .filter_map(|e| async move { e.ok() })
        .filter(|e| futures::future::ready(!e.data.is_empty()));
    (status, retry_after, Box::pin(events))
}

async fn next(events: &mut Events) -> Option<Event> {
    tokio::time::timeout(T, events.next())
        .await
        .expect("an event or the end in time")
}

/// The app: user `a` may watch bot 1 (until revoked), nobody may watch bot 2.
async fn bots_app(revoked: Arc<AtomicBool>) -> Upstream {
    Upstream::builder()
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
        .await
}

fn upstream_rule(extra: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{ADMIN}\"\n[[stream]]\npath = \"/bots/events\"\n\
         channels = [\"bot:{{query.botId}}\"]\nauth = \"upstream\"\nauth_path = \"/api/bots/{{query.botId}}\"\n{extra}"
    )
}

#[tokio::test]
async fn upstream_auth_lets_a_user_see_only_their_bots() {
    let revoked = Arc::new(AtomicBool::new(false));
    let app = bots_app(revoked.clone()).await;
    let unpoll = Unpoll::start(
        &app.url(),
        &upstream_rule("reauth = \"300ms\"\nauth_cache = \"0s\""),
    )
    .await;
    let (status, _, mut a1) =
        open(&unpoll.url("/bots/events?botId=1"), &[("cookie", "user=a")]).await;
    assert_eq!(status, 200);
    let (status, _, _) = open(&unpoll.url("/bots/events?botId=2"), &[("cookie", "user=a")]).await;
    assert_eq!(status, 403, "the app's refusal is passed through");
    let (status, _, _) = open(&unpoll.url("/bots/events?botId=1"), &[]).await;
    assert_eq!(status, 401);

    let http = client();
    let admin = unpoll.admin_url("/publish");
    publish(
        &http,
        &admin,
        ADMIN,
        serde_json::json!({"channel": "bot:2", "event": "m", "data": "secret of bot 2"}),
    )
    .await;
    publish(
        &http,
        &admin,
        ADMIN,
        serde_json::json!({"channel": "bot:1", "event": "m", "data": "hello bot 1"}),
    )
    .await;
    let e = next(&mut a1).await.expect("bot 1's event");
    assert_eq!(
        e.data, "\"hello bot 1\"",
        "bot 2's event never reached user a"
    );

    // Access revoked in the app: the open stream ends after the next re-check, saying why.
    revoked.store(true, Ordering::SeqCst);
    let mut ended = false;
    while let Some(e) = next(&mut a1).await {
        if e.event == "access_ended" {
            ended = true;
        }
    }
    assert!(ended, "the stream told the client why it closed");
}

#[tokio::test]
async fn a_reconnect_storm_of_one_user_costs_one_auth_call() {
    let app = bots_app(Arc::new(AtomicBool::new(false))).await;
    let unpoll = Unpoll::start(&app.url(), &upstream_rule("auth_cache = \"30s\"")).await;
    let url = unpoll.url("/bots/events?botId=1");
    let opens = (0..300).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { open(&url, &[("cookie", "user=a")]).await.0 })
    });
    for status in futures::future::join_all(opens).await {
        assert_eq!(status.unwrap(), 200);
    }
    assert_eq!(app.hits("/api/bots/1"), 1);
}

fn jwt_rules(extra: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{ADMIN}\"\n[jwt]\nsecret = \"{SECRET}\"\nleeway = \"0s\"\n\
         [generic_stream]\nenabled = true\n[[stream]]\npath = \"/bots/events\"\n\
         channels = [\"bot:{{query.botId}}\"]\nauth = \"jwt\"\n{extra}"
    )
}

#[tokio::test]
async fn jwt_streams_check_channels_and_close_at_exp() {
    let app = Upstream::builder().run().await;
    let unpoll = Unpoll::start(&app.url(), &jwt_rules("")).await;
    let ok = hs256(serde_json::json!({"exp": now() + 3600, "unpoll.subscribe": ["bot:1"]}));
    let (status, _, _) = open(
        &unpoll.url(&format!("/bots/events?botId=1&token={ok}")),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    let bearer = format!("Bearer {ok}");
    let (status, _, _) = open(
        &unpoll.url("/bots/events?botId=1"),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = open(
        &unpoll.url(&format!("/bots/events?botId=2&token={ok}")),
        &[],
    )
    .await;
    assert_eq!(status, 403, "a channel outside the claim");
    let (status, _, _) = open(&unpoll.url("/bots/events?botId=1"), &[]).await;
    assert_eq!(status, 401, "no token");
    let expired = hs256(serde_json::json!({"exp": now() - 10, "unpoll.subscribe": ["bot:*"]}));
    let (status, _, _) = open(
        &unpoll.url(&format!("/bots/events?botId=1&token={expired}")),
        &[],
    )
    .await;
    assert_eq!(status, 401);

    // The generic stream: the client names the channels, the token limits them.
    let generic = format!("/_unpoll/sse?channel=bot:1&token={ok}");
    let (status, _, mut events) = open(&unpoll.url(&generic), &[]).await;
    assert_eq!(status, 200);
    let (status, _, _) = open(
        &unpoll.url(&format!("/_unpoll/sse?channel=bot:2&token={ok}")),
        &[],
    )
    .await;
    assert_eq!(status, 403);
    publish(
        &client(),
        &unpoll.admin_url("/publish"),
        ADMIN,
        serde_json::json!({"channel": "bot:1", "data": 1}),
    )
    .await;
    assert_eq!(next(&mut events).await.unwrap().data, "1");

    // A token expiring in 2 s: the stream ends then, telling the client why.
    let short = hs256(serde_json::json!({"exp": now() + 2, "unpoll.subscribe": ["bot:*"]}));
    let (status, _, mut events) = open(
        &unpoll.url(&format!("/bots/events?botId=1&token={short}")),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    let last = loop {
        match next(&mut events).await {
            Some(e) if e.event == "access_ended" => break Some(e),
            Some(_) => continue,
            None => break None,
        }
    };
    assert!(
        last.is_some_and(|e| e.data.contains("expired")),
        "closed at exp"
    );
}

#[tokio::test]
async fn per_rule_limits_answer_429_with_retry_after() {
    let app = Upstream::builder().run().await;
    let unpoll = Unpoll::start(
        &app.url(),
        "[[stream]]\npath = \"/events\"\nchannels = [\"c\"]\nauth = \"none\"\nlimits = { per_ip = 2, retry_after = \"7s\" }",
    )
    .await;
    let (s1, _, _e1) = open(&unpoll.url("/events"), &[]).await;
    let (s2, _, _e2) = open(&unpoll.url("/events"), &[]).await;
    let (s3, retry, _) = open(&unpoll.url("/events"), &[]).await;
    assert_eq!((s1, s2, s3), (200, 200, 429));
    assert_eq!(retry.as_deref(), Some("7"));
    let m = unpoll.metrics().await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("unpoll_stream_limited_total") && !l.ends_with(" 0")),
        "{m}"
    );
}

/// A reload builds every rule anew while its streams stay open: they must still count, or
/// each reload would let as many streams again past a rule's limits.
#[tokio::test]
async fn per_rule_limits_count_the_streams_open_across_a_reload() {
    let app = Upstream::builder().run().await;
    let rule = |max: usize| {
        format!(
            "[[stream]]\npath = \"/events\"\nchannels = [\"c\"]\nauth = \"none\"\n\
             limits = {{ per_channel = {max}, per_ip = {max}, retry_after = \"3s\" }}"
        )
    };
    let unpoll = Unpoll::start(&app.url(), &rule(2)).await;
    let (s1, _, e1) = open(&unpoll.url("/events"), &[]).await;
    let (s2, _, _e2) = open(&unpoll.url("/events"), &[]).await;
    assert_eq!((s1, s2), (200, 200));
    unpoll.reload(&app.url(), &rule(2));
    let (s3, retry, _) = open(&unpoll.url("/events"), &[]).await;
    assert_eq!(
        s3, 429,
        "the two streams opened before the reload still count"
    );
    assert_eq!(retry.as_deref(), Some("3"));

    // A stream admitted before the reload gives its place back to the reloaded rule.
    drop(e1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let _e4 = loop {
        let (status, _, events) = open(&unpoll.url("/events"), &[]).await;
        if status == 200 {
            break events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no place came free after a stream closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // And the limits themselves are the new config's: raised to 3, one more fits.
    unpoll.reload(&app.url(), &rule(3));
    let (s5, _, _e5) = open(&unpoll.url("/events"), &[]).await;
    let (s6, _, _) = open(&unpoll.url("/events"), &[]).await;
    assert_eq!((s5, s6), (200, 429));
}

/// An app that lets user `a` watch bots 1 and 3, never bot 2, and that reads an id's leading
/// integer (as Rails `find` and PHP `intval` do): `/api/bots/1%2C2` is bot 1 to it.
async fn leading_integer_app() -> Upstream {
    let allow = |allowed: bool| {
        move |req: http::Request<hyper::body::Incoming>| async move {
            let cookie = req.headers().get("cookie").and_then(|v| v.to_str().ok());
            match cookie {
                Some("user=a") if allowed => text(200, "{}"),
                Some(_) => text(403, "forbidden"),
                None => text(401, "login"),
            }
        }
    };
    Upstream::builder()
        .handler("/api/bots/1", allow(true))
        .handler("/api/bots/2", allow(false))
        .handler("/api/bots/3", allow(true))
        .handler("/api/bots/1%2C2", allow(true))
        .handler("/api/bots/1,2", allow(true))
        .run()
        .await
}

/// Issue 10, item 1: a list value (`?botId=1&botId=2`, `?botId=1,2`, `?botId=1%2C2`) subscribes
/// to one channel per value, so every value is asked about; one refusal refuses the stream,
/// and bot 2's events never reach a user the app allows for bot 1 only.
#[tokio::test]
async fn every_value_of_a_list_is_authorised() {
    let app = leading_integer_app().await;
    let unpoll = Unpoll::start(&app.url(), &upstream_rule("auth_cache = \"0s\"")).await;
    let http = client();
    let admin = unpoll.admin_url("/publish");
    let lists = [
        "botId=1&botId=2",
        "botId=1,2",
        "botId=1%2C2",
        "botId=2&botId=1",
    ];
    let mut seen = Vec::new();
    for query in lists {
        let before = app.hits("/api/bots/2");
        let (status, _, mut events) = open(
            &unpoll.url(&format!("/bots/events?{query}")),
            &[("cookie", "user=a")],
        )
        .await;
        let mut leaked = None;
        if status == 200 {
            publish(
                &http,
                &admin,
                ADMIN,
                serde_json::json!({"channel": "bot:2", "event": "m", "data": "secret of bot 2"}),
            )
            .await;
            publish(
                &http,
                &admin,
                ADMIN,
                serde_json::json!({"channel": "bot:1", "event": "m", "data": "hello bot 1"}),
            )
            .await;
            leaked = next(&mut events).await.map(|e| e.data);
        }
        let asked = app.hits("/api/bots/2") - before;
        seen.push((query, status, leaked, asked));
    }
    // Refused, nothing of bot 2 delivered, and the app asked about bot 2 once per subscribe.
    let expected: Vec<_> = lists.iter().map(|q| (*q, 403, None, 1)).collect();
    assert_eq!(seen, expected);
    assert_eq!(
        app.hits("/api/bots/1%2C2"),
        0,
        "a list is never asked joined"
    );
    assert_eq!(app.hits("/api/bots/1,2"), 0, "a list is never asked joined");

    // Every value allowed: the stream opens on each channel.
    for query in ["botId=1&botId=3", "botId=1,3", "botId=1%2C3"] {
        let (status, _, mut events) = open(
            &unpoll.url(&format!("/bots/events?{query}")),
            &[("cookie", "user=a")],
        )
        .await;
        assert_eq!(status, 200, "?{query}");
        for bot in ["bot:3", "bot:1"] {
            publish(
                &http,
                &admin,
                ADMIN,
                serde_json::json!({"channel": bot, "event": "m", "data": bot}),
            )
            .await;
            let e = next(&mut events).await.expect("an event");
            assert_eq!(e.data, format!("\"{bot}\""), "?{query}");
        }
    }
}
