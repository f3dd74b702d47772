//! Client-side protocol behaviour: WebSocket upgrades, h2c, malformed and oversized
//! requests, slow and idle clients, the connection cap, cancellation.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::upstream::text;
use common::{Unpoll, Upstream, client, eventually};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Send raw bytes on a new connection and read until the server closes or `limit` passes.
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8], limit: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn websocket_echo_passes_through() {
    // A real WebSocket echo server as the upstream.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        ws.send(msg).await.unwrap();
                    }
                }
            });
        }
    });
    let unpoll = Unpoll::start(&format!("http://{ws_addr}"), "").await;
    let (mut ws, resp) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws/chat/1/", unpoll.addr))
            .await
            .expect("websocket handshake through unpoll");
    assert_eq!(resp.status(), 101);
    for i in 0..20 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), format!("hello {i}"));
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_data().as_ref(),
        [0u8, 1, 2, 255]
    );
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn h2c_prior_knowledge_on_the_same_port() {
    let upstream = Upstream::builder()
        .handler("/v", |req| async move {
            text(
                200,
                format!(
                    "{:?} {}",
                    req.version(),
                    req.headers()["host"].to_str().unwrap()
                ),
            )
        })
        .run()
        .await;
    let unpoll = Unpoll::start(&upstream.url(), "").await;
    let h2 = common::reqwest_builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2.get(unpoll.url("/v")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    // The upstream always gets HTTP/1.1, with the :authority as Host.
    assert_eq!(
        resp.text().await.unwrap(),
        format!("HTTP/1.1 {}", unpoll.addr)
    );
    let resp = client().get(unpoll.url("/v")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
}

#[tokio::test]
async fn malformed_request_is_400_and_huge_head_is_431() {
    let upstream = Upstream::builder().route("/", "ok").run().await;
    let unpoll = Unpoll::start(&upstream.url(), "[proxy]\nmax_header_bytes = \"16KiB\"").await;
    let out = raw_exchange(unpoll.addr, b"GARBAGE\r\n\r\n", Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");

    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(32 * 1024)
    );
    let out = raw_exchange(unpoll.addr, big.as_bytes(), Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    assert_eq!(upstream.total(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn slow_header_senders_are_cut_off() {
    let upstream = Upstream::builder().route("/", "ok").run().await;
    let unpoll = Unpoll::start(&upstream.url(), "[proxy]\nheader_read_timeout = \"300ms\"").await;
    let mut stream = TcpStream::connect(unpoll.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    // Never finish the head: unpoll must close the connection on its own.
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    assert!(
        closed.is_ok(),
        "connection still open after the header read timeout"
    );
    assert_eq!(upstream.total(), 0);
}

/// A kept-alive connection answers a second request after a pause shorter than
/// `idle_timeout` (so it was not closed after the first response), then closes on its own
/// once idle.
#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let upstream = Upstream::builder().route("/", "ok").run().await;
    let unpoll = Unpoll::start(&upstream.url(), "[proxy]\nidle_timeout = \"2s\"").await;
    let mut stream = TcpStream::connect(unpoll.addr).await.unwrap();
    let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    stream.write_all(request).await.unwrap();
    let first = common::read_until(&mut stream, "\r\n\r\nok", Duration::from_secs(5)).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // A pause well inside idle_timeout: the connection must still be there.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.write_all(request).await.unwrap();
    let second = common::read_until(&mut stream, "\r\n\r\nok", Duration::from_secs(5)).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert_eq!(upstream.total(), 2, "both requests were proxied");
    // Then nothing: unpoll closes the idle connection (EOF, no more bytes).
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "idle connection was not closed");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
}

#[tokio::test]
async fn connections_past_the_cap_wait_for_a_slot() {
    let upstream = Upstream::builder().route("/", "ok").run().await;
    let unpoll = Unpoll::start(&upstream.url(), "[proxy]\nmax_connections = 1").await;
    let mut first = TcpStream::connect(unpoll.addr).await.unwrap();
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = first.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    // The second connection is accepted by the kernel but not served while the first holds
    // the only slot.
    let mut second = TcpStream::connect(unpoll.addr).await.unwrap();
    second
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
    assert!(waited.is_err(), "second connection was served past the cap");
    assert_eq!(upstream.total(), 1);

    drop(first);
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), second.read_to_end(&mut out))
        .await
        .expect("second connection served once the slot freed")
        .unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
}

/// Counts upstream handlers dropped before they finished: hyper drops the service future
/// when the connection from unpoll goes away.
struct DropCounter(Arc<AtomicUsize>);
impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn client_going_away_cancels_the_upstream_request() {
    let cancelled = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let (c, s) = (cancelled.clone(), started.clone());
    let upstream = Upstream::builder()
        .handler("/slow", move |_req| {
            let (c, s) = (c.clone(), s.clone());
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                let guard = DropCounter(c);
                tokio::time::sleep(Duration::from_secs(30)).await;
                std::mem::forget(guard);
                text(200, "too late")
            }
        })
        .run()
        .await;
    let unpoll = Unpoll::start(&upstream.url(), "").await;
    let mut stream = TcpStream::connect(unpoll.addr).await.unwrap();
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "upstream handler started", || {
        let s = started.clone();
        async move { s.load(Ordering::SeqCst) == 1 }
    })
    .await;
    drop(stream);
    eventually(Duration::from_secs(5), "upstream request cancelled", || {
        let c = cancelled.clone();
        async move { c.load(Ordering::SeqCst) == 1 }
    })
    .await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_after_the_send_timeout() {
    // The upstream streams forever; count the chunks it could hand over.
    let sent = Arc::new(AtomicUsize::new(0));
    let gone = Arc::new(AtomicUsize::new(0));
    let (s, g) = (sent.clone(), gone.clone());
    let upstream = Upstream::builder()
        .handler("/forever", move |_req| {
            let (s, g) = (s.clone(), g.clone());
            async move {
                let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(1);
                tokio::spawn(async move {
                    let chunk = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
                    while tx.send(chunk.clone()).await.is_ok() {
                        s.fetch_add(1, Ordering::SeqCst);
                    }
                    // unpoll dropped the response: the client was cut off.
                    g.fetch_add(1, Ordering::SeqCst);
                });
                let mut rx = rx;
                let body = futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
                    .map(|b| Ok::<_, std::io::Error>(hyper::body::Frame::data(b)));
                http::Response::new(http_body_util::BodyExt::boxed_unsync(
                    http_body_util::BodyExt::map_err(http_body_util::StreamBody::new(body), |e| {
                        e.into()
                    }),
                ))
            }
        })
        .run()
        .await;
    let unpoll = Unpoll::start(&upstream.url(), "[proxy]\nsend_timeout = \"300ms\"").await;
    let mut stream = TcpStream::connect(unpoll.addr).await.unwrap();
    stream
        .write_all(b"GET /forever HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    // Never read: the kernel buffers fill, unpoll's writes block, the timeout fires.
    eventually(
        Duration::from_secs(10),
        "the stalled client is disconnected",
        || {
            let g = gone.clone();
            async move { g.load(Ordering::SeqCst) == 1 }
        },
    )
    .await;
    assert!(sent.load(Ordering::SeqCst) > 0);
    drop(stream);
}
