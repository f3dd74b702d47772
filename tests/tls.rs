//! `[tls]`: the main listener over TLS with real rustls clients (reqwest, and hyper's h2
//! client where a test needs per-stream flow control), certificates made by rcgen.

mod common;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_rustls::TlsConnector;

use common::process::{Spawned, binary};
use common::sse::SseClient;
use common::tls::Pki;
use common::{Unpoll, Upstream, eventually, metric};

const T: Duration = Duration::from_secs(10);
const TOKEN: &str = "tls-test-token";

fn rules(hub: &str) -> String {
    format!(
        "[hub]\n{hub}\n\
         [[cache]]\npath = \"/messages\"\nttl = \"30s\"\n\
         [[stream]]\npath = \"/events\"\nchannels = [\"news\"]\nauth = \"none\"\n"
    )
}

async fn upstream() -> Upstream {
    Upstream::builder()
        .route("/hello", "hi")
        .handler("/proto", |req| async move {
            let proto = req.headers()["x-forwarded-proto"]
                .to_str()
                .unwrap()
                .to_string();
            common::upstream::text(200, proto)
        })
        .route("/messages", "[1,2,3]")
        .run()
        .await
}

fn handshakes(metrics: &str, result: &str) -> f64 {
    metric(
        metrics,
        &format!("unpoll_tls_handshakes_total{{result=\"{result}\"}}"),
    )
}

/// A fresh CA and a 90-day certificate, an upstream, and unpoll in front of it speaking
/// TLS: [`rules`] with `hub` settings, `[tls]` with `tls`'s extra lines.
async fn start(hub: &str, tls: &str) -> (Pki, Upstream, Unpoll) {
    let pki = Pki::new();
    pki.install(&pki.issue(1, 90));
    let upstream = upstream().await;
    let config = format!("{}{}", rules(hub), pki.section(tls));
    let unpoll = Unpoll::start(&upstream.url(), &config).await;
    (pki, upstream, unpoll)
}

/// Wait until the hub has `n` subscribers.
async fn subscribers(unpoll: &Unpoll, n: usize) {
    eventually(T, &format!("{n} subscribers"), || async {
        unpoll.app.handles.hub.stats(0).subscribers == n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_caches_and_streams_over_tls_with_h1_and_h2() {
    let (pki, upstream, unpoll) = start("", "").await;

    for (fills, h2, version) in [
        (1, false, reqwest::Version::HTTP_11),
        // A Host line (h1) and an `:authority` (h2) name the same host, so the same key
        // (cache::key): the h2 client is served the h1 client's entry.
        (1, true, reqwest::Version::HTTP_2),
    ] {
        let http = pki.client(h2);
        let resp = http.get(unpoll.https_url("/hello")).send().await.unwrap();
        assert_eq!(resp.version(), version);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "hi");
        let proto = http.get(unpoll.https_url("/proto")).send().await.unwrap();
        assert_eq!(proto.text().await.unwrap(), "https");

        for _ in 0..3 {
            let resp = http
                .get(unpoll.https_url("/messages"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.version(), version);
            assert_eq!(resp.text().await.unwrap(), "[1,2,3]");
        }
        assert_eq!(
            upstream.hits("/messages"),
            fills,
            "cached after the first fill"
        );

        let mut stream = SseClient::open(&http, &unpoll.https_url("/events"), None).await;
        assert_eq!(stream.status, 200);
        subscribers(&unpoll, 1).await;
        unpoll
            .app
            .handles
            .hub
            .publish("news", Some("n"), format!("over {version:?}").into());
        let event = stream.next(T).await;
        assert_eq!(event.event, "n");
        assert_eq!(event.data, format!("over {version:?}"));
        drop(stream);
        subscribers(&unpoll, 0).await;
    }
    let m = unpoll.metrics().await;
    // reqwest may open a second HTTP/1.1 connection when a request follows a response
    // whose connection is not back in its pool yet (hyper-util's pool, client side).
    assert!(handshakes(&m, "http1") >= 1.0, "{m}");
    assert_eq!(handshakes(&m, "h2"), 1.0, "h2 multiplexes all on one: {m}");
    // Plain HTTP to a TLS listener is a failed handshake, not a request.
    assert!(
        common::client()
            .get(unpoll.url("/hello"))
            .send()
            .await
            .is_err()
    );
    eventually(T, "the failed handshake counted", || async {
        handshakes(&unpoll.metrics().await, "failed") == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_carries_ten_concurrent_streams_on_one_connection() {
    let (pki, _upstream, unpoll) = start("", "").await;
    let http = pki.client(true);
    // The connection first (a browser's page load): concurrent requests on a client with
    // no connection yet would each start one before ALPN says h2.
    let page = http.get(unpoll.https_url("/hello")).send().await.unwrap();
    assert_eq!(page.version(), reqwest::Version::HTTP_2);
    let url = unpoll.https_url("/events");
    let mut streams =
        futures::future::join_all((0..10).map(|_| SseClient::open(&http, &url, None))).await;
    assert!(streams.iter().all(|s| s.status == 200));
    subscribers(&unpoll, 10).await;
    unpoll
        .app
        .handles
        .hub
        .publish("news", Some("n"), "to all".into());
    for stream in streams.iter_mut() {
        assert_eq!(stream.next(T).await.data, "to all");
    }
    let m = unpoll.metrics().await;
    assert_eq!(
        handshakes(&m, "h2"),
        1.0,
        "one connection for ten streams: {m}"
    );
    assert_eq!(handshakes(&m, "http1"), 0.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_http_answers_308_to_the_https_url() {
    let (pki, upstream, unpoll) = start("", "redirect_http = \"127.0.0.1:0\"").await;
    let redirect = unpoll.redirect.expect("redirect listener");
    let http = common::reqwest_builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = http
        .post(format!("http://{redirect}/a/b?c=1&d"))
        .header("host", "example.test:80")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 308);
    assert_eq!(
        resp.headers()["location"],
        format!("https://example.test:{}/a/b?c=1&d", unpoll.addr.port()).as_str()
    );
    assert_eq!(upstream.total(), 0, "a redirect never reaches the app");

    // Followed, it lands on the TLS listener.
    let follow = common::reqwest_builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(pki.ca_pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let resp = follow
        .get(format!("http://127.0.0.1:{}/hello", redirect.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.url().scheme(), "https");
    assert_eq!(resp.text().await.unwrap(), "hi");
}

/// A client that opens a connection and never completes the handshake is dropped after
/// `tls.handshake_timeout`, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_closed_after_handshake_timeout() {
    use tokio::io::AsyncReadExt;
    let (_pki, _upstream, unpoll) = start("", "handshake_timeout = \"200ms\"").await;
    let mut silent = tokio::net::TcpStream::connect(unpoll.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(T, silent.read(&mut buf))
        .await
        .expect("closed by the server");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let m = unpoll.metrics().await;
    assert_eq!(handshakes(&m, "timeout"), 1.0, "{m}");
    eventually(T, "the connection released", || async {
        metric(&unpoll.metrics().await, "unpoll_open_connections") <= 1.0
    })
    .await;
}

/// An h2 stream whose client stops reading is reset (RST_STREAM) once its subscription
/// fell behind, while a sibling stream on the same connection keeps receiving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_slow_subscriber_is_reset_while_its_sibling_keeps_receiving() {
    let (pki, _upstream, unpoll) = start("subscriber_queue = 4\nhistory_max_events = 4", "").await;

    // hyper's h2 client releases flow-control credit only as a body is read: a small
    // stream window makes an unread stream stall, a large connection window keeps the
    // sibling flowing.
    let tcp = tokio::net::TcpStream::connect(unpoll.addr).await.unwrap();
    let connector = TlsConnector::from(pki.rustls_client(&[b"h2"]));
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(16 * 1024)
        .initial_connection_window_size(16 * 1024 * 1024)
        .adaptive_window(false)
        .handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let connection = tokio::spawn(conn);
    let get = |path: &str| {
        http::Request::get(format!("https://127.0.0.1:{}{path}", unpoll.addr.port()))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap()
    };

    let slow = send.send_request(get("/events")).await.unwrap();
    assert_eq!(slow.status(), 200);
    let mut slow = slow.into_body();
    let fast = send.send_request(get("/events")).await.unwrap();
    assert_eq!(fast.status(), 200);
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let reader = tokio::spawn(async move {
        let mut body = fast.into_body();
        let mut text = String::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.unwrap().into_data() else {
                continue;
            };
            text.push_str(std::str::from_utf8(&data).unwrap());
            let _ = seen_tx.send(text.matches("event: big\n").count());
        }
    });
    subscribers(&unpoll, 2).await;

    // 60 events of 4 KiB, each awaited on the fast stream: 240 KiB, far past the slow
    // stream's 16 KiB window, hyper's 64 KiB send buffer, its queue and history.
    let payload = "x".repeat(4096);
    let mut fast_count = 0;
    for i in 0..60 {
        unpoll
            .app
            .handles
            .hub
            .publish("news", Some("big"), format!("{i} {payload}").into());
        while fast_count <= i {
            fast_count = tokio::time::timeout(T, seen.recv())
                .await
                .expect("the fast stream keeps receiving")
                .expect("the fast stream is open");
        }
    }

    // Reading the slow stream now gives what was in flight, then its reset.
    let end = tokio::time::timeout(T, async {
        loop {
            match slow.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Some(e),
                None => return None,
            }
        }
    })
    .await
    .expect("the slow stream ends");
    let err = end.expect("an error (a reset), not a clean end");
    let err = format!("{err:?}");
    assert!(
        err.contains("Reset") && err.contains("INTERNAL_ERROR") && err.contains("Remote"),
        "{err}"
    );

    // The connection and its other stream are untouched.
    unpoll
        .app
        .handles
        .hub
        .publish("news", Some("big"), "after".into());
    while fast_count < 61 {
        fast_count = tokio::time::timeout(T, seen.recv())
            .await
            .expect("the sibling still receives")
            .expect("the sibling is open");
    }
    let hello = send.send_request(get("/hello")).await.unwrap();
    assert_eq!(hello.status(), 200);
    assert!(!connection.is_finished());
    let m = unpoll.metrics().await;
    assert_eq!(handshakes(&m, "h2"), 1.0, "{m}");
    let disconnects = unpoll
        .app
        .handles
        .hub
        .metrics()
        .disconnects
        .get_or_create(&unpoll::hub::ReasonLabels { reason: "overflow" })
        .get();
    assert_eq!(disconnects, 1);
    reader.abort();
}

fn check(config: &std::path::Path) -> std::process::Output {
    std::process::Command::new(binary())
        .args(["check", "--config"])
        .arg(config)
        .output()
        .unwrap()
}

fn config_file(pki: &Pki) -> std::path::PathBuf {
    let path = pki.dir.path().join("unpoll.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:1\"\n{}",
            pki.section("")
        ),
    )
    .unwrap();
    path
}

#[test]
fn check_refuses_a_key_that_is_not_the_certificates() {
    let pki = Pki::new();
    let (a, b) = (pki.issue(1, 90), pki.issue(2, 90));
    std::fs::write(pki.cert_path(), &a.cert_pem).unwrap();
    std::fs::write(pki.key_path(), &b.key_pem).unwrap();
    let out = check(&config_file(&pki));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    let expected = format!(
        "tls.key: {} does not match the certificate in {}",
        pki.key_path().display(),
        pki.cert_path().display()
    );
    assert!(stderr.contains(&expected), "{stderr}");

    std::fs::remove_file(pki.key_path()).unwrap();
    let out = check(&config_file(&pki));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "tls.key: cannot read {}",
            pki.key_path().display()
        )),
        "{stderr}"
    );

    std::fs::write(pki.key_path(), "not pem").unwrap();
    std::fs::write(pki.cert_path(), "").unwrap();
    let stderr = String::from_utf8_lossy(&check(&config_file(&pki)).stderr).to_string();
    assert!(stderr.contains("tls.cert: "), "{stderr}");
    assert!(stderr.contains("no CERTIFICATE"), "{stderr}");
}

#[test]
fn check_warns_about_a_certificate_that_expires_within_14_days() {
    let pki = Pki::new();
    pki.install(&pki.issue(1, 5));
    let out = check(&config_file(&pki));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: tls.cert: ") && stderr.contains("expires in 4 day(s)"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("(TLS, h2 and http/1.1"));

    pki.install(&pki.issue(2, 90));
    let out = check(&config_file(&pki));
    assert_eq!(out.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));
}

/// The DER certificate a fresh connection is shown.
async fn presented(pki: &Pki, url: &str) -> Vec<u8> {
    let resp = pki.client(true).get(url).send().await.unwrap();
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .expect("the peer certificate")
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_certificate_and_open_streams_keep_receiving() {
    let pki = Pki::new();
    let first = pki.issue(1, 90);
    pki.install(&first);
    let upstream = upstream().await;
    let config = format!(
        "listen = \"127.0.0.1:0\"\nupstream = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n{}{}",
        upstream.url(),
        rules(""),
        pki.section("")
    );
    let unpoll = Spawned::start(&config).await;
    let https = |path: &str| format!("https://{}{path}", unpoll.addr);
    assert_eq!(presented(&pki, &https("/hello")).await, first.der);

    let http = pki.client(true);
    let mut open = SseClient::open(&http, &https("/events"), None).await;
    let publish = |data: &'static str| {
        let admin = format!("http://{}/publish", unpoll.admin);
        async move {
            common::sse::publish(
                &common::client(),
                &admin,
                TOKEN,
                serde_json::json!([{"channel": "news", "event": "n", "data": data}]),
            )
            .await
        }
    };
    eventually(T, "the stream's subscription", || async {
        metric(&unpoll.metrics().await, "unpoll_stream_connections") == 1.0
    })
    .await;
    publish("before").await;
    assert_eq!(open.next(T).await.data, "\"before\"");

    let second = pki.issue(2, 90);
    pki.install(&second);
    unpoll.signal("HUP");
    eventually(T, "the reload", || async {
        metric(
            &unpoll.metrics().await,
            "unpoll_config_reloads_total{result=\"ok\"}",
        ) == 1.0
    })
    .await;
    assert_eq!(presented(&pki, &https("/hello")).await, second.der);
    publish("after").await;
    assert_eq!(
        open.next(T).await.data,
        "\"after\"",
        "the open stream survived"
    );

    // A broken pair (a certificate with another's key) keeps the running one.
    let (third, fourth) = (pki.issue(3, 90), pki.issue(4, 90));
    std::fs::write(pki.cert_path(), &third.cert_pem).unwrap();
    std::fs::write(pki.key_path(), &fourth.key_pem).unwrap();
    unpoll.signal("HUP");
    eventually(T, "the failed reload", || async {
        metric(
            &unpoll.metrics().await,
            "unpoll_config_reloads_total{result=\"error\"}",
        ) == 1.0
    })
    .await;
    assert_eq!(presented(&pki, &https("/hello")).await, second.der);
    let log = unpoll.log();
    assert!(
        log.contains("config reload failed") && log.contains("tls.key"),
        "{log}"
    );
    assert!(log.contains(&pki.key_path().display().to_string()), "{log}");
    publish("still").await;
    assert_eq!(open.next(T).await.data, "\"still\"");
    // The h2 connection of `open` and one per `presented` (three).
    let m = unpoll.metrics().await;
    assert_eq!(handshakes(&m, "h2"), 4.0, "{m}");
}

/// Open `per_connection` event streams on each of `connections` h2 connections over TLS
/// and read each one's first frame (its body is then registered and idle). Returns what
/// keeps them open.
async fn open_h2_streams(
    pki: &Pki,
    addr: std::net::SocketAddr,
    connections: usize,
    per_connection: usize,
) -> Vec<(
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
    Vec<hyper::body::Incoming>,
)> {
    let client = pki.rustls_client(&[b"h2"]);
    let opens = (0..connections).map(|_| {
        let client = client.clone();
        tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let tls = TlsConnector::from(client).connect(name, tcp).await.unwrap();
            let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .handshake(TokioIo::new(tls))
                .await
                .unwrap();
            tokio::spawn(conn);
            let streams = (0..per_connection).map(|_| {
                let mut send = send.clone();
                async move {
                    let req = http::Request::get(format!("https://{addr}/events"))
                        .body(http_body_util::Empty::<Bytes>::new())
                        .unwrap();
                    let resp = send.send_request(req).await.unwrap();
                    assert_eq!(resp.status(), 200);
                    let mut body = resp.into_body();
                    let first = body.frame().await.unwrap().unwrap();
                    assert_eq!(first.into_data().unwrap(), "retry: 2000\n\n");
                    body
                }
            });
            let bodies = futures::future::join_all(streams).await;
            (send, bodies)
        })
    });
    futures::future::join_all(opens)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
}

/// Idle memory of an h2 event stream over TLS, its share of the connection included:
/// 10,000 streams over 100 and over 10 connections, in a fresh process each. Prints the
/// numbers BENCHMARKS.md records (release build: `cargo test --release --test tls --
/// --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "RSS measurement: run by `benches/run memory` (BENCHMARKS.md)"]
async fn idle_h2_streams_cost_at_most_4_kib_each() {
    const STREAMS: usize = 10_000;
    let pki = Pki::new();
    pki.install(&pki.issue(1, 90));
    let upstream = upstream().await;
    let mut results = Vec::new();
    for connections in [100, 10] {
        let config = format!(
            "listen = \"127.0.0.1:0\"\nupstream = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             {}[hub]\nmax_subscribers_per_ip = 20000\nmax_subscribers_per_channel = 20000\n\
             [[stream]]\npath = \"/events\"\nchannels = [\"fan\"]\nauth = \"none\"\n",
            upstream.url(),
            pki.section("max_concurrent_streams = 1000")
        );
        let unpoll = Spawned::start(&config).await;
        let open = || async { metric(&unpoll.metrics().await, "unpoll_stream_connections") };
        // The first connection and streams pay for one-time allocations (the channel,
        // runtime and allocator slabs, rustls' and h2's statics).
        let _warm = open_h2_streams(&pki, unpoll.addr, 2, 50).await;
        eventually(T, "the warm-up streams", || async { open().await == 100.0 }).await;
        let before = unpoll.rss();
        let _streams = open_h2_streams(&pki, unpoll.addr, connections, STREAMS / connections).await;
        eventually(Duration::from_secs(60), "all streams", || async {
            open().await == (100 + STREAMS) as f64
        })
        .await;
        let after = unpoll.rss();
        let per_stream = after.saturating_sub(before) / STREAMS as u64;
        eprintln!(
            "{STREAMS} idle h2 streams over {connections} TLS connections: RSS +{} KiB, \
             {per_stream} bytes per stream",
            after.saturating_sub(before) / 1024
        );
        results.push((connections, per_stream));
    }
    for (connections, per_stream) in results {
        assert!(
            per_stream <= 4096,
            "over {connections} connections an idle h2 stream costs {per_stream} bytes"
        );
    }
}

/// For comparison: idle HTTP/1.1 event streams over TLS, one connection each (written
/// outside hyper, as on plain HTTP): the TLS session's own state is most of their cost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "RSS measurement: run by `benches/run memory` (BENCHMARKS.md)"]
async fn idle_h1_streams_over_tls_memory() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const STREAMS: usize = 2_000;
    let pki = Pki::new();
    pki.install(&pki.issue(1, 90));
    let upstream = upstream().await;
    let config = format!(
        "listen = \"127.0.0.1:0\"\nupstream = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         {}[hub]\nmax_subscribers_per_ip = 20000\n\
         [[stream]]\npath = \"/events\"\nchannels = [\"fan\"]\nauth = \"none\"\n",
        upstream.url(),
        pki.section("")
    );
    let unpoll = Spawned::start(&config).await;
    let client = pki.rustls_client(&[b"http/1.1"]);
    let addr = unpoll.addr;
    let open = |n: usize| {
        let client = client.clone();
        async move {
            let mut streams = Vec::with_capacity(n);
            for _ in 0..n {
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
                let mut tls = TlsConnector::from(client.clone())
                    .connect(name, tcp)
                    .await
                    .unwrap();
                tls.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(13).any(|w| w == b"retry: 2000\n\n") {
                    let n = tls.read(&mut buf).await.unwrap();
                    assert!(n > 0, "EOF: {}", String::from_utf8_lossy(&head));
                    head.extend_from_slice(&buf[..n]);
                }
                streams.push(tls);
            }
            streams
        }
    };
    let _warm = open(50).await;
    let before = unpoll.rss();
    let _streams = open(STREAMS).await;
    let after = unpoll.rss();
    let per_stream = after.saturating_sub(before) / STREAMS as u64;
    eprintln!(
        "{STREAMS} idle HTTP/1.1 streams over TLS, one connection each: {per_stream} bytes per stream"
    );
    // The TLS session's buffers dominate; well under what hyper's HTTP/1 connection with
    // its two 8 KiB buffers would add on top.
    assert!(
        per_stream <= 24 * 1024,
        "an idle HTTP/1.1 stream over TLS costs {per_stream} bytes"
    );
}

/// `[tls]` takes a restart: a reload that drops it leaves the listener on TLS, and the
/// app must still be told its clients use https.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_without_tls_still_tells_the_app_its_clients_use_https() {
    let (pki, upstream, unpoll) = start("", "").await;
    let warnings = unpoll.reload(&upstream.url(), &rules(""));
    assert!(warnings.iter().any(|w| w.contains("tls")), "{warnings:?}");
    let proto = pki
        .client(false)
        .get(unpoll.https_url("/proto"))
        .send()
        .await
        .unwrap();
    assert_eq!(proto.text().await.unwrap(), "https");
}
