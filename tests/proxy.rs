//! The proxy foundation end to end: real unpoll on port 0, real upstreams, real clients.

mod common;

use std::time::Duration;

use common::upstream::{full, text};
use common::{Unpoll, Upstream, client};
use http_body_util::BodyExt;

/// An upstream that describes the request it got: method, path+query, body length.
async fn echo_upstream() -> Upstream {
    Upstream::builder()
        .handler("/echo", |req| async move {
            let method = req.method().to_string();
            let uri = req.uri().to_string();
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            text(200, format!("{method} {uri} {}", body.len()))
        })
        .handler("/status", |req| async move {
            let code = req
                .uri()
                .query()
                .and_then(|q| q.parse().ok())
                .unwrap_or(200);
            text(code, "")
        })
        .handler("/cookies", |_| async {
            let mut r = text(200, "two cookies");
            r.headers_mut().append("set-cookie", "a=1".parse().unwrap());
            r.headers_mut().append("set-cookie", "b=2".parse().unwrap());
            r
        })
        .run()
        .await
}

#[tokio::test]
async fn forwards_every_method_with_query_and_body() {
    let upstream = echo_upstream().await;
    let unpoll = Unpoll::start(&upstream.url(), "").await;
    let http = client();
    for method in [
        "GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND",
    ] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let body = if method == "GET" { "" } else { "0123456789" };
        let resp = http
            .request(m, unpoll.url("/echo?b=2&a=1&a=3"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{method}");
        assert_eq!(
            resp.text().await.unwrap(),
            format!("{method} /echo?b=2&a=1&a=3 {}", body.len())
        );
    }
    let head = http.head(unpoll.url("/echo")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(upstream.hits("/echo"), 8);
}

#[tokio::test]
async fn passes_statuses_and_multi_valued_headers() {
    let upstream = echo_upstream().await;
    let unpoll = Unpoll::start(&upstream.url(), "").await;
    let http = client();
    for code in [200u16, 201, 204, 301, 304, 400, 404, 418, 500, 503] {
        let resp = http
            .get(unpoll.url(&format!("/status?{code}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), code);
    }
    let resp = http.get(unpoll.url("/cookies")).send().await.unwrap();
    let cookies: Vec<_> = resp.headers().get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    let metrics = unpoll.metrics().await;
    assert_eq!(
        common::metric(
            &metrics,
            "unpoll_http_requests_total{class=\"5xx\",rule=\"proxy\"}"
        ),
        2.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn sets_forwarded_headers_strips_hop_by_hop_and_keeps_host() {
    let upstream = echo_upstream().await;
    let unpoll = Unpoll::start(&upstream.url(), "").await;
    client()
        .get(unpoll.url("/echo"))
        .header("host", "app.example")
        .header("x-forwarded-for", "203.0.113.9")
        .header("connection", "x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("x-app", "kept")
        .send()
        .await
        .unwrap();
    let seen = upstream.last().headers;
    assert_eq!(seen["host"], "app.example");
    assert_eq!(seen["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "app.example");
    assert_eq!(seen["x-app"], "kept");
    assert!(!seen.contains_key("x-private"));
    assert!(!seen.contains_key("keep-alive"));
    assert!(!seen.contains_key("via"));

    let unpoll = Unpoll::start(
        &upstream.url(),
        "[proxy]\npreserve_host = false\nvia = true",
    )
    .await;
    let resp = client()
        .get(unpoll.url("/echo"))
        .header("host", "app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["via"], "1.1 unpoll");
    let seen = upstream.last().headers;
    assert_eq!(seen["host"], upstream.addr.to_string());
    assert_eq!(seen["x-forwarded-host"], "app.example");
    assert_eq!(seen["via"], "1.1 unpoll");
}

#[tokio::test]
async fn upstream_base_path_is_prepended() {
    let upstream = Upstream::builder().route("/app/echo", "based").run().await;
    let unpoll = Unpoll::start(&format!("{}/app/", upstream.url()), "").await;
    let resp = client().get(unpoll.url("/echo")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "based");
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_upstream_is_504() {
    // A port with nothing behind it: bind, read the port, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let unpoll = Unpoll::start(&format!("http://{dead}"), "").await;
    let resp = client().get(unpoll.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let body = resp.text().await.unwrap();
    assert_eq!(body, "unpoll: upstream unreachable\n");
    assert!(!body.contains("127.0.0.1"), "no internals in error bodies");

    let slow = Upstream::builder()
        .route("/slow", "late")
        .delay("/slow", Duration::from_secs(5))
        .run()
        .await;
    let unpoll = Unpoll::start(&slow.url(), "[proxy]\nresponse_timeout = \"200ms\"").await;
    let resp = client().get(unpoll.url("/slow")).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    assert_eq!(
        resp.text().await.unwrap(),
        "unpoll: upstream response timed out\n"
    );
    let metrics = unpoll.metrics().await;
    assert_eq!(
        common::metric(&metrics, "unpoll_upstream_errors_total{kind=\"timeout\"}"),
        1.0
    );
}

#[tokio::test]
async fn streams_chunked_bodies_both_ways() {
    let upstream = Upstream::builder()
        .handler("/stream", |req| async move {
            // Echo the request body back as it arrives, chunk by chunk.
            let body = req.into_body().map_err(|e| e.into());
            let mut r = http::Response::new(http_body_util::combinators::UnsyncBoxBody::new(body));
            *r.status_mut() = http::StatusCode::OK;
            r
        })
        .run()
        .await;
    let unpoll = Unpoll::start(&upstream.url(), "").await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
    let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
    let resp_fut = client().post(unpoll.url("/stream")).body(body).send();
    let sender = tokio::spawn(async move {
        for i in 0..50 {
            tx.send(Ok(bytes::Bytes::from(format!("chunk{i};"))))
                .await
                .unwrap();
        }
    });
    let resp = resp_fut.await.unwrap();
    sender.await.unwrap();
    let got = resp.text().await.unwrap();
    let want: String = (0..50).map(|i| format!("chunk{i};")).collect();
    assert_eq!(got, want);
    let _ = full("");
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// An upstream that answers the first request of each connection without announcing a
/// close, then drops the connection when a second request arrives on it: the race of an
/// app closing an idle keep-alive connection just as unpoll reuses it. A bodiless GET is
/// sent again on a new connection; a POST with a body is not (the app may have acted on
/// it) and gets 502. Counted on the upstream side: connections accepted, requests dropped.
#[tokio::test]
async fn requests_on_a_connection_the_upstream_dropped_are_resent_only_when_safe() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let (a, d) = (accepted.clone(), dropped.clone());
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            a.fetch_add(1, Ordering::SeqCst);
            let d = d.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .unwrap();
                if socket.read(&mut byte).await.unwrap_or(0) > 0 {
                    d.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    let unpoll = Unpoll::start(&upstream, "").await;
    let http = client();
    let get = || async { http.get(unpoll.url("/x")).send().await.unwrap() };

    let first = get().await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.text().await.unwrap(), "ok");
    let post = http
        .post(unpoll.url("/x"))
        .body("charge the card")
        .send()
        .await
        .unwrap();
    assert_eq!(
        post.status(),
        502,
        "a request with a body is not sent twice"
    );
    for _ in 0..2 {
        let resp = get().await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "ok");
    }
    // GET (new conn 1), POST (conn 1, dropped), GET (new conn 2), GET (conn 2, dropped,
    // then new conn 3).
    assert_eq!(dropped.load(Ordering::SeqCst), 2);
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}
