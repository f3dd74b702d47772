//! `unpoll demo`: the built-in chat app behind unpoll answers the page, the stream and the
//! dashboard; a posted message reaches a stream subscriber and every watcher of the list;
//! polls are answered once; the dashboard's stream counts what was saved; its token rules.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::process::{Spawned, binary};
use common::sse::SseClient;
use common::{client, eventually};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;
use unpoll::demo::{Chat, Demo};

const WAIT: Duration = Duration::from_secs(10);

/// The demo in this process, on port-0 listeners.
struct Running {
    main: String,
    admin: String,
    chat: Arc<Chat>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn start() -> Running {
        let shutdown = CancellationToken::new();
        let any = "127.0.0.1:0".parse().unwrap();
        let demo = Demo::bind(any, any, shutdown.clone()).await.expect("bind");
        Running {
            main: format!("http://{}", demo.main),
            admin: format!("http://{}", demo.admin),
            chat: demo.chat.clone(),
            shutdown,
            task: tokio::spawn(demo.run()),
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("demo task");
    }
}

async fn post_json(url: &str, body: Value) -> reqwest::Response {
    client().post(url).json(&body).send().await.expect("POST")
}

#[tokio::test]
async fn the_demo_answers_the_page_the_stream_and_the_dashboard() {
    let demo = Running::start().await;
    let http = client();

    let page = http.get(format!("{}/", demo.main)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(
        page.contains("<script src=\"/_unpoll/client.js\">"),
        "{page}"
    );
    assert!(
        page.contains("client.watch(\"/api/messages\""),
        "the page watches the list: {page}"
    );
    let client_js = http
        .get(format!("{}/_unpoll/client.js", demo.main))
        .send()
        .await
        .unwrap();
    assert_eq!(client_js.status(), 200);

    let stream = SseClient::open(&http, &format!("{}/api/messages/events", demo.main), None).await;
    assert_eq!(stream.status, 200);
    assert!(
        stream.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );

    let dashboard = http.get(format!("{}/", demo.admin)).send().await.unwrap();
    assert_eq!(dashboard.status(), 200);
    assert!(
        dashboard.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    let html = dashboard.text().await.unwrap();
    assert!(
        html.contains("/dashboard/stream"),
        "the page opens the stats stream"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external assets"
    );

    let mut stats = SseClient::open(&http, &format!("{}/dashboard/stream", demo.admin), None).await;
    assert_eq!(stats.status, 200);
    let first: Value = serde_json::from_str(&stats.next(WAIT).await.data).unwrap();
    assert!(
        first["history"].is_array(),
        "the first frame carries the history: {first}"
    );
    assert_eq!(first["stats"]["streams"][0]["path"], "/api/messages/events");
    assert_eq!(first["stats"]["streams"][0]["subscribers"], 1);
    let second: Value = serde_json::from_str(&stats.next(WAIT).await.data).unwrap();
    assert!(
        second["history"].is_null(),
        "later frames carry one sample: {second}"
    );
    assert!(second["sample"]["client"].is_u64());
    demo.stop().await;
}

#[tokio::test]
async fn a_post_is_pushed_to_a_stream_subscriber_and_the_list_is_fetched_once() {
    let demo = Running::start().await;
    let http = client();
    let messages = format!("{}/api/messages", demo.main);
    let mut sub = SseClient::open(&http, &format!("{messages}/events"), None).await;
    assert_eq!(sub.status, 200);

    let created = post_json(&messages, json!({"text": "hello from JSON"})).await;
    assert_eq!(created.status(), 201);
    let event = sub.next(WAIT).await;
    assert_eq!(event.event, "posted");
    assert_eq!(
        serde_json::from_str::<Value>(&event.data).unwrap(),
        json!({"text": "hello from JSON"})
    );

    let form = http
        .post(&messages)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("text=hello+from+a+form")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 201);
    let event = sub.next(WAIT).await;
    assert_eq!(
        serde_json::from_str::<Value>(&event.data).unwrap(),
        json!({"text": "hello from a form"})
    );

    // An invalid post reaches the app, which refuses it: nothing is published.
    let empty = post_json(&messages, json!({"text": "  "})).await;
    assert_eq!(empty.status(), 400);

    // Twenty pages polling at once: the app answers one request, and it has both messages.
    let before = demo.chat.list_requests();
    let polls = (0..20).map(|_| {
        let http = http.clone();
        let url = messages.clone();
        async move {
            http.get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    });
    for body in futures::future::join_all(polls).await {
        let texts: Vec<&str> = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap())
            .collect();
        assert_eq!(texts, ["hello from JSON", "hello from a form"]);
    }
    assert_eq!(demo.chat.list_requests() - before, 1);

    // A new message purges the cached list: the next poll sees it.
    post_json(&messages, json!({"text": "third"})).await;
    sub.next(WAIT).await;
    let body: Value = http
        .get(&messages)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["messages"].as_array().unwrap().len(), 3);
    assert_eq!(demo.chat.list_requests() - before, 2);
    sub.assert_quiet(Duration::from_millis(200)).await;
    demo.stop().await;
}

/// A watch stream of the list (what the page's `unpoll.watch` opens).
async fn watch_list(http: &reqwest::Client, url: &str) -> SseClient {
    SseClient::send(http.get(url).header("accept", "text/event-stream")).await
}

fn texts_of(event: &eventsource_stream::Event) -> Vec<String> {
    let body: Value = serde_json::from_str(&event.data).unwrap();
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn every_page_watching_the_list_gets_each_new_list_from_one_fetch() {
    let demo = Running::start().await;
    let http = client();
    let messages = format!("{}/api/messages", demo.main);
    let before = demo.chat.list_requests();
    let mut pages = Vec::new();
    for _ in 0..3 {
        let mut page = watch_list(&http, &messages).await;
        assert_eq!(page.status, 200);
        assert!(
            texts_of(&page.next(WAIT).await).is_empty(),
            "the list first"
        );
        pages.push(page);
    }
    // One watcher for the shared key: one fetch for the three pages.
    assert_eq!(demo.chat.list_requests() - before, 1);

    let created = post_json(&messages, json!({"text": "hello, watchers"})).await;
    assert_eq!(created.status(), 201);
    for page in &mut pages {
        assert_eq!(texts_of(&page.next(WAIT).await), ["hello, watchers"]);
    }
    // The tap's purge made the watcher refetch once for everyone; a plain poll is answered
    // from the entry it stored.
    assert_eq!(demo.chat.list_requests() - before, 2);
    let poll: Value = http
        .get(&messages)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(poll["messages"][0]["text"], "hello, watchers");
    assert_eq!(demo.chat.list_requests() - before, 2);
    let stats: Value = http
        .get(format!("{}/stats", demo.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["watch"]["subscribers"], 3, "{stats}");
    assert_eq!(stats["watch"]["keys"], 1, "{stats}");
    demo.stop().await;
}

#[tokio::test]
async fn the_dashboard_stream_counts_requests_saved() {
    let demo = Running::start().await;
    let http = client();
    let mut stats = SseClient::open(&http, &format!("{}/dashboard/stream", demo.admin), None).await;
    stats.next(WAIT).await;
    for _ in 0..5 {
        let resp = http
            .get(format!("{}/api/messages", demo.main))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    // Summed over the samples that follow: 5 client requests, 1 upstream, 4 saved.
    let (mut client_requests, mut upstream, mut saved) = (0, 0, 0);
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = Value::Null;
    // A request's counters may land in two consecutive samples: read until all have.
    while (client_requests, upstream, saved) != (5, 1, 4) && tokio::time::Instant::now() < deadline
    {
        last = serde_json::from_str(&stats.next(WAIT).await.data).unwrap();
        client_requests += last["sample"]["client"].as_u64().unwrap();
        upstream += last["sample"]["upstream"].as_u64().unwrap();
        saved += last["sample"]["saved"].as_u64().unwrap();
    }
    assert_eq!((client_requests, upstream, saved), (5, 1, 4), "{last}");
    assert_eq!(last["stats"]["cache"]["upstream_requests_saved"], 4);
    demo.stop().await;
}

#[tokio::test]
async fn dashboard_streams_are_bounded() {
    let demo = Running::start().await;
    let http = client();
    let url = format!("{}/dashboard/stream", demo.admin);
    let mut open = Vec::new();
    for _ in 0..unpoll::admin::live::MAX_STREAMS {
        let s = SseClient::open(&http, &url, None).await;
        assert_eq!(s.status, 200);
        open.push(s);
    }
    let refused = http.get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    drop(open.pop());
    eventually(WAIT, "a slot frees when a stream closes", || async {
        http.get(&url).send().await.unwrap().status() == 200
    })
    .await;
    demo.stop().await;
}

#[tokio::test]
async fn off_loopback_the_dashboard_takes_the_token_in_the_query_and_never_logs_it() {
    let upstream = common::Upstream::builder().route("/", "app").run().await;
    let config = format!(
        "listen = \"127.0.0.1:0\"\nupstream = \"{}\"\n[admin]\nlisten = \"0.0.0.0:0\"\ntoken = \"s3cret-dash\"\n",
        upstream.url()
    );
    let unpoll = Spawned::start(&config).await;
    let http = client();
    let admin = format!("http://127.0.0.1:{}", unpoll.admin.port());
    assert_eq!(
        http.get(format!("{admin}/")).send().await.unwrap().status(),
        401
    );
    assert_eq!(
        http.get(format!("{admin}/?token=wrong"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        http.get(format!("{admin}/?token=s3cret-dash"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let mut stream = SseClient::open(
        &http,
        &format!("{admin}/dashboard/stream?token=s3cret-dash"),
        None,
    )
    .await;
    assert_eq!(stream.status, 200);
    stream.next(WAIT).await;
    // The query token is for the page and its stream only.
    assert_eq!(
        http.get(format!("{admin}/stats?token=s3cret-dash"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let bearer = http
        .get(format!("{admin}/"))
        .bearer_auth("s3cret-dash")
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);
    drop(stream);
    eventually(
        WAIT,
        "the access log has the dashboard requests",
        || async { unpoll.log().matches("path=/dashboard/stream").count() == 1 },
    )
    .await;
    assert!(!unpoll.log().contains("s3cret-dash"), "{}", unpoll.log());
}

#[tokio::test]
async fn the_cli_prints_its_urls_and_its_config() {
    let printed = tokio::process::Command::new(binary())
        .args(["demo", "--print-config"])
        .output()
        .await
        .unwrap();
    assert!(printed.status.success());
    assert_eq!(
        String::from_utf8(printed.stdout).unwrap(),
        unpoll::demo::CONFIG
    );

    // An admin listener off loopback needs a token the demo does not set: a config error.
    let refused = tokio::process::Command::new(binary())
        .args(["demo", "--listen", "127.0.0.1:0", "--admin", "0.0.0.0:0"])
        .output()
        .await
        .unwrap();
    assert_eq!(refused.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("admin.token"));

    let mut child = tokio::process::Command::new(binary())
        .args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut urls = Vec::new();
    while urls.len() < 3 {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("a line in time")
            .unwrap()
            .expect("stdout open");
        if let Some(at) = line.find("http://") {
            urls.push(line[at..].split_whitespace().next().unwrap().to_string());
        }
    }
    let (chat, dashboard, app) = (&urls[0], &urls[1], &urls[2]);
    let through: Value = client()
        .get(format!("{chat}api/messages"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(through, json!({"messages": []}));
    let html = common::get_text(dashboard).await;
    assert!(html.contains("/dashboard/stream"));
    let direct = client()
        .get(format!("{app}api/messages"))
        .send()
        .await
        .unwrap();
    assert!(
        direct.headers().get("unpoll-cursor").is_none(),
        "the app's own address bypasses unpoll"
    );
    child.kill().await.unwrap();
}

/// The next frame of a dashboard stream whose `sources` satisfy `check`.
async fn frame_where(stream: &mut SseClient, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let frame: Value = serde_json::from_str(&stream.next(WAIT).await.data).unwrap();
        if check(&frame["sources"]) {
            return frame;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}; last: {frame}"
        );
    }
}

#[tokio::test]
async fn the_dashboard_shows_the_state_of_a_configured_mqtt_broker() {
    let upstream = common::Upstream::builder().route("/", "app").run().await;
    // A broker that does not answer, then the machine's broker.
    let section = |url: &str| {
        format!(
            "[mqtt]\nurl = \"{url}\"\nclient_id = \"{}\"\nreconnect_min = \"20ms\"\nreconnect_max = \"200ms\"\nconnect_timeout = \"2s\"\n",
            common::pg::unique("dash")
        )
    };
    let closed = format!("mqtt://127.0.0.1:{}", common::mqtt::free_port());
    let down = common::Unpoll::start(&upstream.url(), &section(&closed)).await;
    let mut stream = SseClient::open(&client(), &down.admin_url("/dashboard/stream"), None).await;
    let frame = frame_where(&mut stream, "mqtt shown as down", |s| s[0]["ok"] == false).await;
    assert_eq!(frame["sources"][0]["name"], "mqtt");
    assert!(
        frame["sources"][0]["state"].as_str().unwrap().len() > 3,
        "{frame}"
    );
    down.stop().await;

    let up = common::Unpoll::start(&upstream.url(), &section(&common::mqtt::broker_url())).await;
    let mut stream = SseClient::open(&client(), &up.admin_url("/dashboard/stream"), None).await;
    frame_where(&mut stream, "mqtt shown as connected", |s| {
        s[0]["ok"] == true && s[0]["state"] == "connected"
    })
    .await;
    up.stop().await;
}
