//! The binary's life: `check`, SIGHUP reload, SIGTERM drain, bounded memory on huge bodies,
//! and in-process reloads that never cut an open stream.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::process::{Spawned, binary};
use common::upstream::text;
use common::{Unpoll, Upstream, client, eventually, metric};
use futures::StreamExt;
use http_body_util::BodyExt;

fn config(upstream: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[proxy]\nshutdown_grace = \"10s\"\n"
    )
}

#[test]
fn check_accepts_the_example_and_lists_every_error() {
    let out = std::process::Command::new(binary())
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml.example"),
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("upstream  http://127.0.0.1:8000"),
        "{summary}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "listen = \"nowhere\"\nupstream = \"ftp://x\"\nextra = 1\n[proxy]\nidle_timeout = \"5 sec\"\nconnect_timeout = \"0s\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(binary())
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let errors = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "5 error(s)",
        "listen: invalid address \"nowhere\"",
        "upstream: \"ftp://x\": the URL must start with http://",
        "extra: unknown key",
        "proxy.idle_timeout: invalid duration \"5 sec\"",
        "proxy.connect_timeout: must be greater than zero",
    ] {
        assert!(
            errors.contains(expected),
            "{expected:?} missing in:\n{errors}"
        );
    }

    // Running on an invalid file is the same exit code, and UNPOLL_CONFIG is read.
    let out = std::process::Command::new(binary())
        .env("UNPOLL_CONFIG", &bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

/// A `[jwt]` section with a too-short secret is one error: its rules and the generic stream
/// do not also claim the section is missing.
#[test]
fn check_reports_a_short_jwt_secret_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwt.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:8080\"\nupstream = \"http://127.0.0.1:8000\"\n\
         [jwt]\nsecret = \"too-short\"\n\
         [generic_stream]\nenabled = true\n\
         [[stream]]\npath = \"/events\"\nchannels = [\"a\"]\nauth = \"jwt\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(binary())
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(errors.contains("1 error(s)"), "{errors}");
    assert!(errors.contains("jwt.secret: "), "{errors}");
    assert!(!errors.contains("needs a [jwt] section"), "{errors}");
}

#[tokio::test]
async fn sighup_reloads_a_valid_file_and_keeps_the_old_on_a_bad_one() {
    let a = Upstream::builder().route("/who", "a").run().await;
    let b = Upstream::builder().route("/who", "b").run().await;
    let unpoll = Spawned::start(&config(&a.url())).await;
    let http = client();
    let who = || async {
        http.get(unpoll.url("/who"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    assert_eq!(who().await, "a");

    std::fs::write(&unpoll.config, config(&b.url())).unwrap();
    unpoll.signal("HUP");
    eventually(Duration::from_secs(10), "reload to upstream b", || async {
        who().await == "b"
    })
    .await;

    std::fs::write(&unpoll.config, "listen = \"127.0.0.1:0\"\nupstream = 42\n").unwrap();
    unpoll.signal("HUP");
    eventually(Duration::from_secs(10), "failed reload counted", || async {
        let m = unpoll.metrics().await;
        metric(&m, "unpoll_config_reloads_total{result=\"error\"}") == 1.0
    })
    .await;
    assert_eq!(who().await, "b", "a bad file keeps the running config");
    assert!(
        unpoll.log().contains("config reload failed"),
        "{}",
        unpoll.log()
    );
}

/// The signal handlers are installed before the `listening` line: a SIGHUP sent the moment
/// it appears reloads the file. Installed by a task spawned after that line, they could come
/// too late under load, and SIGHUP's default action killed the process (a later request then
/// failed with "error sending request"). Several starts, as a lost race is not certain.
#[tokio::test]
async fn a_sighup_sent_as_soon_as_it_is_listening_reloads() {
    let upstream = Upstream::builder().route("/who", "a").run().await;
    for _ in 0..5 {
        let mut unpoll = Spawned::start(&config(&upstream.url())).await;
        unpoll.signal("HUP");
        let log = unpoll.log.clone();
        let child = &mut unpoll.child;
        eventually(Duration::from_secs(10), "the reload", || {
            let exited = child.try_wait().unwrap();
            let reloaded = log.lock().unwrap().contains("config reloaded");
            async move {
                assert_eq!(exited, None, "SIGHUP killed unpoll");
                reloaded
            }
        })
        .await;
    }
}

/// A reload applies what it can and names, by key path, each start-only setting it
/// changed (they take effect on restart); a reloadable one changed alongside is not named.
#[tokio::test]
async fn sighup_warns_about_each_start_only_setting_it_changed() {
    let upstream = Upstream::builder().route("/who", "a").run().await;
    let unpoll = Spawned::start(&config(&upstream.url())).await;
    let changed = format!(
        "workers = 3\n{}max_connections = 7\nidle_timeout = \"9s\"\n[hub]\nhistory_max_events = 9\n",
        config(&upstream.url())
    );
    std::fs::write(&unpoll.config, changed).unwrap();
    unpoll.signal("HUP");
    eventually(Duration::from_secs(10), "the reload", || async {
        metric(
            &unpoll.metrics().await,
            "unpoll_config_reloads_total{result=\"ok\"}",
        ) == 1.0
    })
    .await;
    let log = unpoll.log();
    for key in ["workers", "proxy.max_connections", "hub.history_max_events"] {
        let line = format!("{key} changed; takes effect on restart");
        assert_eq!(log.matches(&line).count(), 1, "{line}: {log}");
    }
    assert!(!log.contains("idle_timeout changed"), "{log}");
    assert!(!log.contains("listen changed"), "{log}");
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let upstream = Upstream::builder()
        .route("/slow", "finished")
        .delay("/slow", Duration::from_millis(800))
        .run()
        .await;
    // A long header-read timeout: the silent connection below must be closed by the
    // shutdown itself, not by that timer.
    let text = format!("{}header_read_timeout = \"60s\"\n", config(&upstream.url()));
    let mut unpoll = Spawned::start(&text).await;
    let mut silent = tokio::net::TcpStream::connect(unpoll.addr).await.unwrap();
    let url = unpoll.url("/slow");
    let in_flight = tokio::spawn(async move { client().get(url).send().await?.text().await });
    eventually(
        Duration::from_secs(5),
        "request reached the upstream",
        || async { upstream.hits("/slow") == 1 },
    )
    .await;
    unpoll.signal("TERM");
    // New connections are refused once the listener is closed.
    let addr = unpoll.addr;
    eventually(Duration::from_secs(5), "listener closed", || async move {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    // A connection that never sent a request has nothing to drain: closed at once.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        use tokio::io::AsyncReadExt;
        silent.read_to_end(&mut rest).await
    })
    .await;
    assert!(
        closed.is_ok(),
        "the silent connection was not closed on SIGTERM"
    );
    assert_eq!(in_flight.await.unwrap().unwrap(), "finished");
    let status = tokio::time::timeout(Duration::from_secs(10), unpoll.child.wait())
        .await
        .expect("unpoll exits after draining")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// Issue 10 item 8: with stderr a pipe whose reader has gone, every log write fails (EPIPE).
/// tracing reported that with `eprintln!`, which panicked: requests got empty replies and
/// the signal task died logging "SIGTERM", so the process never stopped. Also with the
/// access log off (the SIGTERM line alone was enough).
#[tokio::test]
async fn a_closed_stderr_neither_fails_requests_nor_blocks_shutdown() {
    let upstream = Upstream::builder().route("/ok", "fine").run().await;
    for access in [true, false] {
        let text = format!("{}[log]\naccess = {access}\n", config(&upstream.url()));
        let mut unpoll = Spawned::start(&text).await;
        unpoll.close_stderr().await;
        let http = client();
        for _ in 0..3 {
            let response = http.get(unpoll.url("/ok")).send().await.unwrap();
            assert_eq!(response.status(), 200, "access log {access}");
            assert_eq!(response.text().await.unwrap(), "fine");
        }
        if access {
            // The access lines are written by the logging task after the responses: wait
            // for the count rather than read it once.
            eventually(
                Duration::from_secs(10),
                "three access lines dropped and counted",
                || async {
                    metric(&unpoll.metrics().await, "unpoll_log_write_errors_total") >= 3.0
                },
            )
            .await;
        }
        unpoll.signal("TERM");
        let status = tokio::time::timeout(Duration::from_secs(10), unpoll.child.wait())
            .await
            .expect("unpoll exits on SIGTERM with a closed stderr")
            .unwrap();
        assert_eq!(status.code(), Some(0), "access log {access}: {status:?}");
    }
}

/// A stderr nobody reads (a log shipper that hangs) fills the pipe; writing log lines in
/// place then blocked the runtime: with one worker every request hung, and SIGTERM too.
/// 5,000 requests write about 1 MB of access lines: past the 64 KiB pipe buffer and the
/// writer queue of 4,096 lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stderr_nobody_reads_neither_blocks_requests_nor_shutdown() {
    let upstream = Upstream::builder().route("/ok", "fine").run().await;
    let text = format!("workers = 1\n{}", config(&upstream.url()));
    let mut unpoll = Spawned::start(&text).await;
    unpoll.pause_stderr();
    let http = client();
    for i in 0..5000 {
        let response = tokio::time::timeout(Duration::from_secs(5), async {
            http.get(unpoll.url("/ok")).send().await?.text().await
        })
        .await
        .unwrap_or_else(|_| panic!("request {i} hung"))
        .unwrap();
        assert_eq!(response, "fine");
    }
    let m = unpoll.metrics().await;
    assert!(
        metric(&m, "unpoll_log_write_errors_total") > 0.0,
        "lines that found the queue full are dropped and counted:\n{m}"
    );
    unpoll.signal("TERM");
    let status = tokio::time::timeout(Duration::from_secs(10), unpoll.child.wait())
        .await
        .expect("unpoll exits on SIGTERM with a stuck stderr")
        .unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
}

const BIG: usize = 256 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

fn big_stream() -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    futures::stream::iter((0..BIG / CHUNK).map(move |_| Ok(chunk.clone())))
}

#[tokio::test]
async fn quarter_gigabyte_bodies_stream_with_bounded_memory() {
    let upstream = Upstream::builder()
        .handler("/download", |_req| async {
            let body = http_body_util::StreamBody::new(
                big_stream().map(|r| r.map(hyper::body::Frame::data)),
            );
            http::Response::new(body.map_err(|e| e.into()).boxed_unsync())
        })
        .handler("/upload", |req| async move {
            // Count the bytes without keeping them.
            let mut body = req.into_body();
            let mut n = 0usize;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    n += data.len();
                }
            }
            text(200, n.to_string())
        })
        .run()
        .await;
    let unpoll = Spawned::start(&config(&upstream.url())).await;
    let http = client();

    let resp = http
        .post(unpoll.url("/upload"))
        .body(reqwest::Body::wrap_stream(big_stream()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), BIG.to_string());

    let resp = http.get(unpoll.url("/download")).send().await.unwrap();
    let mut stream = resp.bytes_stream();
    let mut n = 0usize;
    while let Some(chunk) = stream.next().await {
        n += chunk.unwrap().len();
    }
    assert_eq!(n, BIG);

    let peak = unpoll.peak_rss();
    eprintln!("unpoll peak RSS after 2 × 256 MiB: {} KiB", peak / 1024);
    assert!(
        peak < 48 * 1024 * 1024,
        "unpoll's peak RSS was {} MiB while moving 2 × 256 MiB",
        peak / 1024 / 1024
    );
}

#[tokio::test]
async fn reload_swaps_rules_without_cutting_an_open_stream() {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let rx = std::sync::Arc::new(tokio::sync::Mutex::new(Some(rx)));
    let a = Upstream::builder()
        .route("/who", "a")
        .handler("/stream", move |_req| {
            let rx = rx.clone();
            async move {
                let mut rx = rx.lock().await.take().expect("one stream");
                let s = futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
                    .map(|b| Ok::<_, std::io::Error>(hyper::body::Frame::data(b)));
                http::Response::new(
                    http_body_util::StreamBody::new(s)
                        .map_err(|e| e.into())
                        .boxed_unsync(),
                )
            }
        })
        .run()
        .await;
    let b = Upstream::builder().route("/who", "b").run().await;
    let unpoll = Unpoll::start(&a.url(), "").await;
    let http = client();
    let resp = http.get(unpoll.url("/stream")).send().await.unwrap();
    let mut stream = resp.bytes_stream();
    tx.send(Bytes::from_static(b"before ")).await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap(), "before ");

    let warnings = unpoll.reload(&b.url(), "");
    assert!(warnings.is_empty(), "{warnings:?}");
    let who = common::get_text(&unpoll.url("/who")).await;
    assert_eq!(who, "b", "new requests use the new config");

    tx.send(Bytes::from_static(b"after")).await.unwrap();
    drop(tx);
    assert_eq!(stream.next().await.unwrap().unwrap(), "after");
    assert!(stream.next().await.is_none(), "stream ended cleanly");
    let m = unpoll.metrics().await;
    assert_eq!(
        metric(&m, "unpoll_config_reloads_total{result=\"ok\"}"),
        1.0
    );
}

#[tokio::test]
async fn access_log_is_one_json_line_per_request_without_the_query() {
    let upstream = Upstream::builder().route("/echo", "hello").run().await;
    let unpoll = Spawned::start(&format!(
        "{}[log]\nformat = \"json\"\n",
        config(&upstream.url())
    ))
    .await;
    let resp = client()
        .get(unpoll.url("/echo?token=s3cr3t-token&x=1"))
        .header("cookie", "session=c00kie-value")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "hello");
    let line = {
        let mut found = None;
        eventually(Duration::from_secs(5), "access log line", || {
            found = unpoll
                .log()
                .lines()
                .find(|l| l.contains("unpoll::access"))
                .map(str::to_string);
            std::future::ready(found.is_some())
        })
        .await;
        found.unwrap()
    };
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/echo");
    assert_eq!(v["status"], 200);
    assert_eq!(v["listener"], "main");
    assert_eq!(v["bytes"], 5);
    assert!(v["duration_ms"].as_f64().is_some());
    assert!(v["upstream_ms"].as_f64().is_some());
    let log = unpoll.log();
    assert!(
        !log.contains("s3cr3t-token") && !log.contains("c00kie-value"),
        "{log}"
    );
}

/// An idle SSE subscriber costs the server at most 4 KiB (issue 4's target; about 2.5 KiB
/// measured, see BENCHMARKS.md), whether the stream is its connection's first request or
/// follows a proxied request on a kept-alive connection (hyper writes the head, then the
/// connection leaves hyper). RSS of the real binary before and after opening 400 more
/// streams; 400 keeps the test inside a default 1,024 open-file limit.
#[tokio::test]
#[ignore = "RSS threshold: run by `benches/run memory` (BENCHMARKS.md)"]
async fn idle_subscribers_cost_at_most_4_kib_each() {
    idle_subscriber_memory(false).await;
}

#[tokio::test]
#[ignore = "RSS threshold: run by `benches/run memory` (BENCHMARKS.md)"]
async fn idle_subscribers_on_reused_connections_cost_at_most_4_kib_each() {
    idle_subscriber_memory(true).await;
}

async fn idle_subscriber_memory(reused_connections: bool) {
    use tokio::io::AsyncWriteExt;
    const WARM: usize = 50;
    const N: usize = 400;
    let upstream = Upstream::builder().route("/warm", "warm").run().await;
    let config = format!(
        "{}[hub]\nmax_subscribers_per_ip = 1000\n[[stream]]\npath = \"/events\"\nchannels = [\"fan\"]\nauth = \"none\"\n",
        config(&upstream.url())
    );
    let unpoll = Spawned::start(&config).await;
    let t = Duration::from_secs(10);
    let open = |n: usize| {
        let addr = unpoll.addr;
        async move {
            let mut streams = Vec::with_capacity(n);
            for _ in 0..n {
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                if reused_connections {
                    s.write_all(b"GET /warm HTTP/1.1\r\nHost: x\r\n\r\n")
                        .await
                        .unwrap();
                    common::read_until(&mut s, "warm", t).await;
                }
                s.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                let head = common::read_until(&mut s, "retry: 2000\n\n", t).await;
                assert_eq!(
                    head.contains("transfer-encoding: chunked"),
                    reused_connections,
                    "{head}"
                );
                streams.push(s);
            }
            streams
        }
    };
    // The first streams pay for one-time allocations (the channel, runtime slabs).
    let _warm = open(WARM).await;
    let before = unpoll.rss();
    let _streams = open(N).await;
    let after = unpoll.rss();
    let per_subscriber = after.saturating_sub(before) / N as u64;
    eprintln!(
        "{N} idle subscribers (reused connections: {reused_connections}): {per_subscriber} bytes each"
    );
    assert!(
        per_subscriber <= 4096,
        "an idle subscriber costs {per_subscriber} bytes"
    );
}

/// A connection opened ahead of its first request (browsers preconnect, pooling proxies
/// keep spares) costs at most 4 KiB until it sends something (about 2.5 KiB in a release
/// build; 5.6 KiB when the first read's buffer was 4 KiB).
#[tokio::test]
#[ignore = "RSS threshold: run by `benches/run memory` (BENCHMARKS.md)"]
async fn connections_without_a_request_yet_cost_at_most_4_kib_each() {
    const N: usize = 400;
    let upstream = Upstream::builder().run().await;
    let unpoll = Spawned::start(&config(&upstream.url())).await;
    let open = |n: usize| {
        let addr = unpoll.addr;
        async move {
            let mut sockets = Vec::with_capacity(n);
            for _ in 0..n {
                sockets.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            }
            sockets
        }
    };
    let _warm = open(50).await;
    let open_connections = || async { metric(&unpoll.metrics().await, "unpoll_open_connections") };
    eventually(Duration::from_secs(10), "warm-up accepted", || async {
        open_connections().await >= 50.0
    })
    .await;
    let before = unpoll.rss();
    let _sockets = open(N).await;
    eventually(Duration::from_secs(10), "all accepted", || async {
        open_connections().await >= (50 + N) as f64
    })
    .await;
    let per_connection = unpoll.rss().saturating_sub(before) / N as u64;
    eprintln!("{N} connections without a request: {per_connection} bytes each");
    assert!(
        per_connection <= 4096,
        "a connection without a request costs {per_connection} bytes"
    );
}
