//! `[[watch]]`: a polling endpoint the app does not change becomes a stream of its body.
//! The real unpoll in front of a real upstream "app" whose inbox is per user, watched by
//! real SSE clients; assertions count fetches and events, never time.

mod common;

use std::time::{Duration, Instant};

use common::inbox::{Shared, app, change, fetches, forbid, script};
use common::sse::SseClient;
use common::{Unpoll, Upstream, client, eventually, metric};

const WAIT: Duration = Duration::from_secs(20);

/// The admin token of [`config`].
const TOKEN: &str = "t0ken";

/// unpoll in front of the inbox [`app`], watching `/inbox` with `watch` settings.
async fn start(watch: &str) -> (Upstream, Shared, Unpoll) {
    let (upstream, inbox) = app().await;
    let unpoll = Unpoll::start(&upstream.url(), &config(watch)).await;
    (upstream, inbox, unpoll)
}

fn config(watch: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n\
         [[tap]]\nmethod = \"POST\"\npath = \"/send\"\nchannel = \"sent\"\npurge = [\"inbox\"]\n\n\
         [[watch]]\npath = \"/inbox\"\ntags = [\"inbox\"]\nmin_interval = \"10ms\"\n{watch}\n"
    )
}

async fn watch(unpoll: &Unpoll, user: &str) -> SseClient {
    watch_with(unpoll, user, None).await
}

async fn watch_with(unpoll: &Unpoll, user: &str, last_event_id: Option<&str>) -> SseClient {
    let mut req = client()
        .get(unpoll.url("/inbox"))
        .header("accept", "text/event-stream")
        .header("cookie", format!("user={user}"));
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    SseClient::send(req).await
}

/// A plain poll of `/inbox` as `user` (no `Accept: text/event-stream`).
async fn poll(unpoll: &Unpoll, user: &str) -> reqwest::Response {
    client()
        .get(unpoll.url("/inbox"))
        .header("cookie", format!("user={user}"))
        .send()
        .await
        .unwrap()
}

/// The `v` of an event's JSON body, checking it is `user`'s.
fn version_for(event: &eventsource_stream::Event, user: &str) -> u64 {
    let body: serde_json::Value = serde_json::from_str(&event.data)
        .unwrap_or_else(|e| panic!("event data {:?}: {e}", event.data));
    assert_eq!(body["user"], user, "another user's body: {}", event.data);
    body["v"].as_u64().unwrap()
}

#[tokio::test]
async fn ten_users_with_ten_tabs_share_one_fetch_per_user_and_see_each_change_once() {
    let (_upstream, inbox, unpoll) = start("interval = \"500ms\"").await;
    let started = Instant::now();
    let users: Vec<String> = (0..10).map(|u| format!("u{u}")).collect();
    let mut tabs = Vec::new();
    for user in &users {
        for _ in 0..10 {
            tabs.push((user.clone(), watch(&unpoll, user)));
        }
    }
    let mut tabs: Vec<(String, SseClient)> =
        futures::future::join_all(tabs.into_iter().map(|(u, t)| async move { (u, t.await) })).await;
    for (user, tab) in &mut tabs {
        assert_eq!(tab.status, 200);
        assert_eq!(version_for(&tab.next(WAIT).await, user), 0);
    }
    // Three changes per user, each signalled by a purge of the watched tag.
    for round in 1..=3u64 {
        for user in &users {
            change(&inbox, user);
        }
        unpoll.purge(TOKEN, &["inbox"]).await;
        for (user, tab) in &mut tabs {
            // Interval refetches of an unchanged body in between send nothing: the next
            // event is exactly this change.
            assert_eq!(version_for(&tab.next(WAIT).await, user), round, "{user}");
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    for user in &users {
        // At most: the first fetch, one per purge, one per interval elapsed.
        let bound = 1 + 3 + (elapsed / 0.5).ceil() as usize;
        let n = fetches(&inbox, user);
        assert!(
            n <= bound,
            "{user}: {n} fetches in {elapsed:.1}s (bound {bound})"
        );
    }
    let stats = unpoll.stats().await;
    assert_eq!(stats["watch"]["keys"], 10, "{stats}");
    assert_eq!(stats["watch"]["subscribers"], 100, "{stats}");
    assert_eq!(stats["watch"]["pushes"], 400, "{stats}");
    drop(tabs);
    eventually(WAIT, "watchers stop with their last subscriber", || async {
        unpoll.app.handles.watch.watches.is_empty()
    })
    .await;
}

#[tokio::test]
async fn an_unchanged_body_sends_no_event() {
    let (_upstream, inbox, unpoll) = start("interval = \"50ms\"").await;
    let mut tab = watch(&unpoll, "ann").await;
    assert_eq!(version_for(&tab.next(WAIT).await, "ann"), 0);
    eventually(WAIT, "five interval refetches", || async {
        fetches(&inbox, "ann") >= 6
    })
    .await;
    change(&inbox, "ann");
    // The next event is the change: none of the refetches of the same body sent one.
    assert_eq!(version_for(&tab.next(WAIT).await, "ann"), 1);
    let m = unpoll.metrics().await;
    assert!(
        metric(&m, "unpoll_watch_results_total{result=\"unchanged\"}") >= 4.0,
        "{m}"
    );
}

#[tokio::test]
async fn a_tap_purging_the_tag_pushes_the_new_body_without_waiting_for_the_interval() {
    let (_upstream, inbox, unpoll) = start("interval = \"1h\"").await;
    let mut ann = watch(&unpoll, "ann").await;
    let mut bob = watch(&unpoll, "bob").await;
    assert_eq!(version_for(&ann.next(WAIT).await, "ann"), 0);
    assert_eq!(version_for(&bob.next(WAIT).await, "bob"), 0);
    let sent = client()
        .post(unpoll.url("/send?to=ann"))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    assert_eq!(version_for(&ann.next(WAIT).await, "ann"), 1);
    // Bob's watcher carries the tag too: it refetched, found the same body, sent nothing.
    eventually(WAIT, "bob's watcher refetched", || async {
        fetches(&inbox, "bob") == 2
    })
    .await;
    let sent = client()
        .post(unpoll.url("/send?to=bob"))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    assert_eq!(version_for(&bob.next(WAIT).await, "bob"), 1);
    let stats = unpoll.stats().await;
    assert_eq!(stats["watch"]["fetches"]["tag"], 4, "{stats}");
}

#[tokio::test]
async fn a_403_first_answers_403_and_a_403_later_ends_the_stream_with_access_ended() {
    let (_upstream, inbox, unpoll) = start("interval = \"1h\"").await;
    forbid(&inbox, "eve");
    let eve = watch(&unpoll, "eve").await;
    assert_eq!(eve.status, 403);

    let mut bob = watch(&unpoll, "bob").await;
    assert_eq!(bob.status, 200);
    assert_eq!(version_for(&bob.next(WAIT).await, "bob"), 0);
    forbid(&inbox, "bob");
    unpoll.purge(TOKEN, &["inbox"]).await;
    let last = bob.next(WAIT).await;
    assert_eq!(last.event, "access_ended");
    assert!(last.data.contains("\"status\":403"), "{}", last.data);
    assert!(bob.next_or_end(WAIT).await.is_none(), "the stream ends");
    eventually(WAIT, "the watcher is gone", || async {
        unpoll.app.handles.watch.watches.is_empty()
    })
    .await;
    // A new stream asks the app again, and is refused at once.
    assert_eq!(watch(&unpoll, "bob").await.status, 403);
}

#[tokio::test]
async fn a_last_event_id_of_the_current_version_sends_no_duplicate() {
    let (upstream, inbox, unpoll) = start("interval = \"1h\"").await;
    let mut first = watch(&unpoll, "ann").await;
    let seen = first.next(WAIT).await;
    assert!(!seen.id.is_empty());
    let mut resumed = watch_with(&unpoll, "ann", Some(&seen.id)).await;
    let mut stale = watch_with(&unpoll, "ann", Some("an-older-version")).await;
    assert_eq!(version_for(&stale.next(WAIT).await, "ann"), 0);
    // The cursor of a poll, given in the URL: same key as the poll, same rule.
    let mut by_query = SseClient::send(
        client()
            .get(unpoll.url(&format!("/inbox?last_event_id={}", seen.id)))
            .header("accept", "text/event-stream")
            .header("cookie", "user=ann"),
    )
    .await;
    change(&inbox, "ann");
    unpoll.purge(TOKEN, &["inbox"]).await;
    // The first event the resumed streams send is the change, not the body they had.
    let next = resumed.next(WAIT).await;
    assert_eq!(version_for(&next, "ann"), 1);
    assert_ne!(next.id, seen.id);
    assert_eq!(version_for(&by_query.next(WAIT).await, "ann"), 1);
    assert_eq!(version_for(&first.next(WAIT).await, "ann"), 1);
    assert_eq!(fetches(&inbox, "ann"), 2, "one key, one watcher");
    assert!(upstream.recorded().iter().all(|r| r.uri.query().is_none()));
}

#[tokio::test]
async fn two_users_bodies_never_cross() {
    let (upstream, inbox, unpoll) = start("interval = \"1h\"").await;
    // One user by cookie, one by bearer token, interleaved, on the same URL.
    let mut streams = Vec::new();
    for i in 0..6 {
        let req = client()
            .get(unpoll.url("/inbox"))
            .header("accept", "text/event-stream");
        let (user, req) = if i % 2 == 0 {
            ("ann", req.header("cookie", "user=ann"))
        } else {
            ("bob", req.header("authorization", "Bearer bob"))
        };
        streams.push((user, SseClient::send(req).await));
    }
    for (user, s) in &mut streams {
        assert_eq!(version_for(&s.next(WAIT).await, user), 0);
    }
    change(&inbox, "ann");
    unpoll.purge(TOKEN, &["inbox"]).await;
    for (user, s) in &mut streams {
        if *user == "ann" {
            assert_eq!(version_for(&s.next(WAIT).await, user), 1);
        }
    }
    // Each user's fetches carried their own credentials only.
    for r in upstream.recorded() {
        let cookie = r.headers.get("cookie").is_some();
        let bearer = r.headers.get("authorization").is_some();
        assert!(
            cookie != bearer,
            "one credential per fetch: {:?}",
            r.headers
        );
    }
    assert_eq!(fetches(&inbox, "ann"), 2);
    assert_eq!(fetches(&inbox, "bob"), 2);
}

#[tokio::test]
async fn a_500_sends_nothing_and_the_next_change_is_sent() {
    let (_upstream, inbox, unpoll) = start("interval = \"1h\"").await;
    script(&inbox, "ann", &[200, 500]);
    let mut tab = watch(&unpoll, "ann").await;
    assert_eq!(version_for(&tab.next(WAIT).await, "ann"), 0);
    change(&inbox, "ann");
    unpoll.purge(TOKEN, &["inbox"]).await; // answered 500: the last body stays
    eventually(WAIT, "the 500 was fetched", || async {
        fetches(&inbox, "ann") == 2
    })
    .await;
    unpoll.purge(TOKEN, &["inbox"]).await; // 200 with the change
    assert_eq!(version_for(&tab.next(WAIT).await, "ann"), 1);
    let stats = unpoll.stats().await;
    assert_eq!(stats["watch"]["failed"], 1, "{stats}");
    assert_eq!(stats["watch"]["pushes"], 2, "{stats}");
}

#[tokio::test]
async fn a_plain_poll_of_a_watched_url_still_works_and_is_cached() {
    let (_upstream, inbox, unpoll) = start("interval = \"1h\"").await;
    let first = poll(&unpoll, "ann").await;
    assert_eq!(first.status(), 200);
    assert!(
        first.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let vary: Vec<_> = first.headers().get_all("vary").iter().collect();
    assert!(vary.iter().any(|v| *v == "accept"), "{vary:?}");
    assert_eq!(first.text().await.unwrap(), "{\"user\":\"ann\",\"v\":0}\n");
    let second = poll(&unpoll, "ann").await;
    assert!(
        second.headers()["cache-status"]
            .to_str()
            .unwrap()
            .contains("hit"),
        "{:?}",
        second.headers()
    );
    // The stream of the same key starts from the same entry: still one fetch.
    let mut tab = watch(&unpoll, "ann").await;
    assert!(tab.headers.get_all("vary").iter().any(|v| v == "accept"));
    assert_eq!(version_for(&tab.next(WAIT).await, "ann"), 0);
    assert_eq!(fetches(&inbox, "ann"), 1);
    // The watcher's refetch after a purge refreshes the poll's entry too.
    change(&inbox, "ann");
    unpoll.purge(TOKEN, &["inbox"]).await;
    assert_eq!(version_for(&tab.next(WAIT).await, "ann"), 1);
    assert_eq!(
        poll(&unpoll, "ann").await.text().await.unwrap(),
        "{\"user\":\"ann\",\"v\":1}\n"
    );
    assert_eq!(fetches(&inbox, "ann"), 2);
}

#[tokio::test]
async fn past_max_watch_keys_a_new_key_gets_429() {
    let (upstream, _inbox) = app().await;
    let extra = format!("[hub]\nmax_watch_keys = 1\n{}", config("interval = \"1h\""));
    let unpoll = Unpoll::start(&upstream.url(), &extra).await;
    let mut ann = watch(&unpoll, "ann").await;
    assert_eq!(version_for(&ann.next(WAIT).await, "ann"), 0);
    let bob = watch(&unpoll, "bob").await;
    assert_eq!(bob.status, 429);
    assert_eq!(bob.headers["retry-after"], "5");
    // Another tab of a key already watched still joins.
    let mut ann2 = watch(&unpoll, "ann").await;
    assert_eq!(version_for(&ann2.next(WAIT).await, "ann"), 0);
}

#[tokio::test]
async fn a_source_gap_refetches_and_watching_tabs_count_the_polls_they_saved() {
    let (_upstream, inbox, unpoll) = start("interval = \"50ms\"").await;
    let mut tabs = Vec::new();
    for _ in 0..10 {
        tabs.push(watch(&unpoll, "ann").await);
    }
    for tab in &mut tabs {
        assert_eq!(version_for(&tab.next(WAIT).await, "ann"), 0);
    }
    // Ten tabs, one watcher: every interval is one fetch instead of ten polls.
    eventually(WAIT, "interval refetches", || async {
        fetches(&inbox, "ann") >= 6
    })
    .await;
    let stats = unpoll.stats().await;
    assert!(
        stats["watch"]["polls_saved"].as_u64().unwrap() > 0,
        "{stats}"
    );
    assert!(
        stats["cache"]["upstream_requests_saved"].as_u64().unwrap()
            >= stats["watch"]["polls_saved"].as_u64().unwrap(),
        "{stats}"
    );
    // What a source does when it lost notifications (a Postgres reconnect).
    change(&inbox, "ann");
    unpoll.app.sink().purge_glob("inb*");
    for tab in &mut tabs {
        assert_eq!(version_for(&tab.next(WAIT).await, "ann"), 1);
    }
    eventually(WAIT, "a gap refetch counted", || async {
        unpoll.stats().await["watch"]["fetches"]["gap"] == 1
    })
    .await;
}

#[tokio::test]
async fn a_reload_keeps_open_watch_streams_and_shutdown_ends_them() {
    let (upstream, inbox) = app().await;
    let watch_config = config("interval = \"1h\"");
    let unpoll = Unpoll::start(&upstream.url(), &watch_config).await;
    let mut tab = watch(&unpoll, "ann").await;
    assert_eq!(version_for(&tab.next(WAIT).await, "ann"), 0);
    let warnings = unpoll.reload(&upstream.url(), &watch_config);
    assert!(warnings.is_empty(), "{warnings:?}");
    change(&inbox, "ann");
    unpoll.purge(TOKEN, &["inbox"]).await;
    assert_eq!(version_for(&tab.next(WAIT).await, "ann"), 1);
    unpoll.stop().await;
    assert!(tab.next_or_end(WAIT).await.is_none(), "the stream ends");
}

#[tokio::test]
async fn with_interval_zero_only_purges_refetch_and_polls_stay_cached_until_then() {
    let (_upstream, inbox, unpoll) = start("interval = \"0s\"").await;
    let mut tab = watch(&unpoll, "ann").await;
    assert_eq!(version_for(&tab.next(WAIT).await, "ann"), 0);
    change(&inbox, "ann");
    // No interval: the change is not seen, by the stream or the cached poll, until a purge.
    for _ in 0..5 {
        assert_eq!(
            poll(&unpoll, "ann").await.text().await.unwrap(),
            "{\"user\":\"ann\",\"v\":0}\n"
        );
    }
    assert_eq!(fetches(&inbox, "ann"), 1);
    unpoll.purge(TOKEN, &["inbox"]).await;
    assert_eq!(version_for(&tab.next(WAIT).await, "ann"), 1);
    assert_eq!(
        poll(&unpoll, "ann").await.text().await.unwrap(),
        "{\"user\":\"ann\",\"v\":1}\n"
    );
    assert_eq!(fetches(&inbox, "ann"), 2);
}

#[tokio::test]
async fn a_failing_app_on_the_first_fetch_answers_its_status() {
    let (_upstream, inbox, unpoll) = start("interval = \"1h\"").await;
    script(&inbox, "ann", &[503]);
    assert_eq!(watch(&unpoll, "ann").await.status, 503);
    assert!(unpoll.app.handles.watch.watches.is_empty());
    let mut tab = watch(&unpoll, "ann").await;
    assert_eq!(version_for(&tab.next(WAIT).await, "ann"), 0);
}

#[tokio::test]
async fn a_burst_of_purges_is_one_refetch_per_min_interval() {
    let (upstream, inbox) = app().await;
    // min_interval is long, so the whole burst lands within one debounce window.
    let rule = "interval = \"1h\"\n".to_string();
    let text = config(&rule).replace("min_interval = \"10ms\"", "min_interval = \"2s\"");
    let unpoll = Unpoll::start(&upstream.url(), &text).await;
    let mut tab = watch(&unpoll, "ann").await;
    assert_eq!(version_for(&tab.next(WAIT).await, "ann"), 0);
    change(&inbox, "ann");
    for _ in 0..20 {
        unpoll.purge(TOKEN, &["inbox"]).await;
    }
    assert_eq!(version_for(&tab.next(WAIT).await, "ann"), 1);
    // One fetch for the burst, and at most one more for the purges that came while it
    // waited or ran (they may postdate the body it read): never one per purge.
    eventually(WAIT, "the burst's refetches are done", || async {
        unpoll.stats().await["watch"]["fetches"]["tag"] == 2
    })
    .await;
    // The second refetch found the entry the first one stored, unpurged since: the app saw
    // the first fetch and the burst's one (a third only if the burst outlasted 2 s).
    let n = fetches(&inbox, "ann");
    assert!(
        (2..=3).contains(&n),
        "{n} upstream fetches for a burst of 20 purges"
    );
}

/// Issue 16 item 2 on `[[watch]]`: an EventSource cannot send headers, so a JWT app's token
/// comes in the query. With `token_query`, it is the fetches' Bearer and the key's, and the
/// app never sees it in a URL, neither from the stream nor from a plain poll.
#[tokio::test]
async fn token_query_is_the_fetches_bearer_and_never_reaches_the_app_in_a_url() {
    let (upstream, inbox) = app().await;
    let unpoll = Unpoll::start(
        &upstream.url(),
        &config("interval = \"1h\"\ntoken_query = \"token\""),
    )
    .await;
    let open = |token: &'static str| {
        SseClient::send(
            client()
                .get(unpoll.url(&format!("/inbox?token={token}")))
                .header("accept", "text/event-stream"),
        )
    };
    let (mut ann, mut bob) = (open("ann").await, open("bob").await);
    assert_eq!(version_for(&ann.next(WAIT).await, "ann"), 0);
    assert_eq!(version_for(&bob.next(WAIT).await, "bob"), 0);
    change(&inbox, "bob");
    unpoll.purge(TOKEN, &["inbox"]).await;
    assert_eq!(version_for(&bob.next(WAIT).await, "bob"), 1);
    // A plain poll with the same token is the same key: served from the watcher's entry.
    let poll = client()
        .get(unpoll.url("/inbox?token=bob"))
        .send()
        .await
        .unwrap();
    assert_eq!(poll.text().await.unwrap(), "{\"user\":\"bob\",\"v\":1}\n");
    assert_eq!((fetches(&inbox, "ann"), fetches(&inbox, "bob")), (2, 2));
    let recorded = upstream.recorded();
    assert!(!recorded.is_empty());
    for r in recorded {
        assert_eq!(r.uri.query(), None, "the token reached the app: {}", r.uri);
        let auth = r.headers["authorization"].to_str().unwrap();
        assert!(auth == "Bearer ann" || auth == "Bearer bob", "{auth}");
    }
}

/// The next message of a multiplexed stream that is not a heartbeat, as JSON.
async fn next_multi(stream: &mut SseClient) -> serde_json::Value {
    loop {
        let event = stream.next(WAIT).await;
        let message: serde_json::Value = serde_json::from_str(&event.data)
            .unwrap_or_else(|e| panic!("message {:?}: {e}", event.data));
        if message.get("hb").is_none() {
            return message;
        }
    }
}

/// A `[[watch]]` with `token_query` inside `/_unpoll/multi` (what the browser client opens):
/// the `s` URL is checked as if opened alone, so its token is the fetches' Bearer and the
/// key's, and never reaches the app. The multi request itself carries no credentials.
#[tokio::test]
async fn token_query_authorises_a_watch_inside_a_multi_stream() {
    let (upstream, inbox) = app().await;
    let unpoll = Unpoll::start(
        &upstream.url(),
        &config("interval = \"1h\"\ntoken_query = \"token\""),
    )
    .await;
    let multi = |token: &str| {
        let s = format!("/inbox?token={token}");
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("s", &s)
            .finish();
        SseClient::send(client().get(unpoll.url(&format!("/_unpoll/multi?{query}"))))
    };
    let mut ann = multi("ann").await;
    assert_eq!(ann.status, 200);
    let first = next_multi(&mut ann).await;
    assert_eq!(
        (first["s"].clone(), first["data"].clone()),
        (
            serde_json::json!(0),
            serde_json::json!({"user": "ann", "v": 0})
        ),
        "the token is the fetch's Bearer: {first}"
    );
    change(&inbox, "ann");
    unpoll.purge(TOKEN, &["inbox"]).await;
    assert_eq!(
        next_multi(&mut ann).await["data"],
        serde_json::json!({"user": "ann", "v": 1})
    );
    // A single stream with the same token is the same key: it joins the running watcher.
    let mut alone = SseClient::send(
        client()
            .get(unpoll.url("/inbox?token=ann"))
            .header("accept", "text/event-stream"),
    )
    .await;
    assert_eq!(version_for(&alone.next(WAIT).await, "ann"), 1);
    assert_eq!(fetches(&inbox, "ann"), 2, "the first fetch and the purge's");
    assert_eq!(fetches(&inbox, "anonymous"), 0);
    for r in upstream.recorded() {
        assert_eq!(r.uri.query(), None, "the token reached the app: {}", r.uri);
        assert_eq!(r.headers["authorization"], "Bearer ann");
    }
}

/// A watch stream that is its connection's first request is served outside hyper (its
/// head says the body ends with the connection); one asked for after a poll on a
/// kept-alive connection starts in hyper (chunked) and leaves it. On both, each new
/// version goes out whole: one event per write, and on the chunked one, one chunk.
#[tokio::test]
async fn a_watch_stream_first_on_its_connection_or_after_a_poll_gets_each_event_whole() {
    use tokio::io::AsyncWriteExt;
    let (_upstream, _inbox, unpoll) = start("interval = \"1h\"").await;
    let stream_request = |user: &str| {
        format!(
            "GET /inbox HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\
             Cookie: user={user}\r\n\r\n"
        )
    };
    let mut fresh = tokio::net::TcpStream::connect(unpoll.addr).await.unwrap();
    fresh
        .write_all(stream_request("ann").as_bytes())
        .await
        .unwrap();
    // `read_until` returns all it read: each call reads through a whole event.
    let head = common::read_until(&mut fresh, "\"v\":0}\n\n", WAIT).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    assert!(head.contains("\r\nvary: accept\r\n"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");

    let mut reused = tokio::net::TcpStream::connect(unpoll.addr).await.unwrap();
    reused
        .write_all(b"GET /inbox HTTP/1.1\r\nHost: x\r\nCookie: user=bob\r\n\r\n")
        .await
        .unwrap();
    let polled = common::read_until(&mut reused, "}", WAIT).await;
    assert!(polled.starts_with("HTTP/1.1 200 OK\r\n"), "{polled}");
    assert!(polled.contains("\"user\":\"bob\""), "{polled}");
    reused
        .write_all(stream_request("bob").as_bytes())
        .await
        .unwrap();
    let head = common::read_until(&mut reused, "\"v\":0}\n\n\r\n", WAIT).await;
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(head.contains("\r\nvary: accept\r\n"), "{head}");

    for user in ["ann", "bob"] {
        let sent = client()
            .post(unpoll.url(&format!("/send?to={user}")))
            .send()
            .await
            .unwrap();
        assert_eq!(sent.status(), 200);
    }
    let event = common::read_until(&mut fresh, "\n\n", WAIT).await;
    assert!(event.starts_with("id: "), "{event:?}");
    assert!(
        event.contains("\ndata: {\"user\":\"ann\",\"v\":1"),
        "{event:?}"
    );
    // The whole event in one chunk: its size line, then the event, then CRLF.
    let chunk = common::read_until(&mut reused, "\n\n\r\n", WAIT).await;
    let (size, rest) = chunk.split_once("\r\n").expect("a chunk size line");
    let size = usize::from_str_radix(size, 16).unwrap_or_else(|e| panic!("{chunk:?}: {e}"));
    assert_eq!(size + 2, rest.len(), "{chunk:?}");
    assert!(rest.starts_with("id: "), "{chunk:?}");
    assert!(
        rest.contains("\ndata: {\"user\":\"bob\",\"v\":1"),
        "{chunk:?}"
    );
}
