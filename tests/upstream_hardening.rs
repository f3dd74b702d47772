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
