//! The upstream side under hostile or failing conditions: a body that goes silent, a
//! connection still uploading when its response ends, a burst past the connection cap,
//! request bodies and Host headers forwarded as RFC 9112 says.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Unpoll, client, metric};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Read one request head from `socket`, byte by byte (tests only). `None`: closed first.
async fn read_head(socket: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if socket.read(&mut byte).await.unwrap_or(0) == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// A raw upstream that answers every request with `response` and then keeps the
/// connection open, silent, until unpoll closes it. Counts the requests it got.
async fn silent_upstream(response: &'static [u8]) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                while read_head(&mut socket).await.is_some() {
                    counted.fetch_add(1, Ordering::SeqCst);
                    socket.write_all(response).await.unwrap();
                }
            });
        }
    });
    (addr, requests)
}

/// The upstream sends its head and 7 of 100 bytes, then nothing: past `read_timeout`
/// the client's response is aborted (an error, not a clean short body), whether the
/// upstream framed it with Content-Length or chunked; the timeout is counted.
#[tokio::test]
async fn a_silent_upstream_body_is_aborted_after_the_read_timeout() {
    for response in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n1234567"[..],
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n7\r\n1234567\r\n"[..],
    ] {
        let (addr, requests) = silent_upstream(response).await;
        let unpoll = Unpoll::start(
            &format!("http://{addr}"),
            "[proxy]\nread_timeout = \"300ms\"",
        )
        .await;
        let resp = client().get(unpoll.url("/slow")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = tokio::time::timeout(Duration::from_secs(10), resp.bytes())
            .await
            .expect("the body ends within the read timeout, not never");
        assert!(body.is_err(), "a truncated body must not end cleanly");
        assert_eq!(requests.load(Ordering::SeqCst), 1);
        let metrics = unpoll.metrics().await;
        assert_eq!(
            metric(
                &metrics,
                "unpoll_upstream_errors_total{kind=\"read_timeout\"}"
            ),
            1.0
        );
    }
}

/// On a cache rule the silent body is not stored: the client gets 502 and the next
/// request asks the upstream again.
#[tokio::test]
async fn a_silent_upstream_body_is_never_cached() {
    let (addr, requests) =
        silent_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n1234567").await;
    let unpoll = Unpoll::start(
        &format!("http://{addr}"),
        "[proxy]\nread_timeout = \"300ms\"\n[[cache]]\npath = \"/feed\"\nttl = \"30s\"",
    )
    .await;
    for round in 1..=2 {
        let resp = tokio::time::timeout(
            Duration::from_secs(10),
            client().get(unpoll.url("/feed")).send(),
        )
        .await
        .expect("answered within the read timeout")
        .unwrap();
        assert_eq!(resp.status(), 502);
        assert_eq!(requests.load(Ordering::SeqCst), round);
    }
    let metrics = unpoll.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "unpoll_upstream_errors_total{kind=\"read_timeout\"}"
        ),
        2.0
    );
}

/// The app answers an upload with 413 after its first bytes while the client is still
/// sending the rest. That connection must not serve the next request (it would be written
/// behind the rest of the upload and time out): the next client is answered by the app on
/// another connection.
#[tokio::test]
async fn a_connection_still_uploading_is_not_lent_to_the_next_request() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                while let Some(head) = read_head(&mut socket).await {
                    // A finished upload's body is read whole before answering.
                    if head.starts_with("POST /form") {
                        let mut body = [0u8; 3];
                        socket.read_exact(&mut body).await.unwrap();
                    }
                    let answer: &[u8] = if head.starts_with("POST /upload") {
                        b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nbig!"
                    } else {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext"
                    };
                    socket.write_all(answer).await.unwrap();
                }
            });
        }
    });
    let unpoll = Unpoll::start(
        &format!("http://{addr}"),
        "[proxy]\nresponse_timeout = \"2s\"",
    )
    .await;

    // A request whose body was sent whole leaves its connection reusable.
    let resp = client()
        .post(unpoll.url("/form"))
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "next");
    let resp = client().get(unpoll.url("/next")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "next");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    // The uploader sends its head and 10 of 1,000,000 bytes, then stalls (still open).
    let mut uploader = TcpStream::connect(unpoll.addr).await.unwrap();
    uploader
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 1000000\r\n\r\n0123456789",
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("big!") {
        let n = uploader.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the 413 arrived");
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 413"));

    for _ in 0..3 {
        let resp = client().get(unpoll.url("/next")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "next");
    }
    // The first connection (lent to the upload, then closed) plus one for the GETs.
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    drop(uploader);
}

/// A raw upstream that answers each request after `delay`, keeping connections alive, and
/// counts the connections it accepted.
async fn slow_upstream(delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                while read_head(&mut socket).await.is_some() {
                    tokio::time::sleep(delay).await;
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if socket.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// A burst of 60 concurrent cold misses on distinct keys opens at most
/// `max_upstream_connections` upstream connections; the rest wait for one and all succeed;
/// the waits are counted.
#[tokio::test]
async fn a_burst_opens_at_most_max_upstream_connections() {
    let (addr, accepted) = slow_upstream(Duration::from_millis(50)).await;
    let unpoll = Unpoll::start(
        &format!("http://{addr}"),
        "[proxy]\nmax_upstream_connections = 4\nconnect_timeout = \"10s\"\n\
         [[cache]]\npath = \"/item/{id}\"\nttl = \"30s\"",
    )
    .await;
    let http = client();
    let requests = (0..60).map(|i| {
        let http = http.clone();
        let url = unpoll.url(&format!("/item/{i}"));
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    });
    let statuses = futures::future::join_all(requests).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert!(
        accepted.load(Ordering::SeqCst) <= 4,
        "opened {} upstream connections",
        accepted.load(Ordering::SeqCst)
    );
    let metrics = unpoll.metrics().await;
    assert!(metric(&metrics, "unpoll_upstream_connections") <= 4.0);
    assert!(
        metric(&metrics, "unpoll_upstream_connection_wait_seconds_count") >= 1.0,
        "waits are counted"
    );
}

/// At the cap, a request that gets no connection within `connect_timeout` is answered 503
/// with a body naming the cause.
#[tokio::test]
async fn past_the_cap_a_request_gets_503_after_connect_timeout() {
    let (addr, _) = slow_upstream(Duration::from_secs(30)).await;
    let unpoll = Unpoll::start(
        &format!("http://{addr}"),
        "[proxy]\nmax_upstream_connections = 1\nconnect_timeout = \"300ms\"",
    )
    .await;
    let http = client();
    let holder = tokio::spawn(http.get(unpoll.url("/hold")).send());
    common::eventually(
        Duration::from_secs(5),
        "the first request holds the connection",
        || async { metric(&unpoll.metrics().await, "unpoll_upstream_connections") == 1.0 },
    )
    .await;
    let resp = http.get(unpoll.url("/other")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.text().await.unwrap(),
        "unpoll: all upstream connections busy (proxy.max_upstream_connections)\n"
    );
    let metrics = unpoll.metrics().await;
    assert_eq!(
        metric(&metrics, "unpoll_upstream_errors_total{kind=\"saturated\"}"),
        1.0
    );
    holder.abort();
}

/// Send `request` on a new connection to unpoll and read until it closes (the requests
/// below ask for `Connection: close`) or 10 s pass.
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// An upstream that answers with the method, target and body it received.
async fn echo_upstream() -> common::Upstream {
    use http_body_util::BodyExt;
    common::Upstream::builder()
        .handler("/echo", |req| async move {
            let head = format!("{} {}", req.method(), req.uri());
            let body = req.into_body().collect().await.unwrap().to_bytes();
            common::upstream::text(200, format!("{head} [{}]", String::from_utf8_lossy(&body)))
        })
        .run()
        .await
}

/// A GET body reaches the app whatever its framing: chunked as well as Content-Length.
#[tokio::test]
async fn a_get_body_is_forwarded_chunked_or_not() {
    let upstream = echo_upstream().await;
    let unpoll = Unpoll::start(&upstream.url(), "").await;
    let by_length = raw(
        unpoll.addr,
        b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert!(by_length.ends_with("GET /echo [hello]"), "{by_length}");
    let chunked = raw(
        unpoll.addr,
        b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert!(chunked.ends_with("GET /echo [hello world]"), "{chunked}");
}

/// An absolute-form target's authority replaces the client's Host (RFC 9112 §3.2.2);
/// two Host headers are refused with 400 and never reach the app, on the proxied path
/// and on a stream path (which unpoll parses itself before hyper).
#[tokio::test]
async fn absolute_form_sets_host_and_two_hosts_are_refused() {
    let upstream = echo_upstream().await;
    let unpoll = Unpoll::start(
        &upstream.url(),
        "[[stream]]\npath = \"/events\"\nchannels = [\"news\"]\nauth = \"none\"",
    )
    .await;
    let resp = raw(
        unpoll.addr,
        b"GET http://other.example/echo HTTP/1.1\r\nHost: good.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.ends_with("GET /echo []"), "{resp}");
    let seen = upstream.last();
    assert_eq!(seen.headers.get_all("host").iter().count(), 1);
    assert_eq!(seen.headers["host"], "other.example");
    assert_eq!(seen.headers["x-forwarded-host"], "other.example");

    for target in ["/echo", "/events"] {
        let resp = raw(
            unpoll.addr,
            format!(
                "GET {target} HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{target}: {resp}");
        assert!(
            resp.contains("more than one Host header"),
            "{target}: {resp}"
        );
    }
    assert_eq!(upstream.total(), 1);
}
