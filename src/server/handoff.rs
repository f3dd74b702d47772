//! The life of a client connection, and the hand-off of an HTTP/1.1 event stream (or of
//! an upgraded connection) from hyper to unpoll.
//!
//! # Why streams leave hyper
//!
//! An idle SSE subscriber sits for minutes or hours and a server holds tens of thousands.
//! Through hyper each one keeps two 8 KiB connection buffers; written by unpoll it costs
//! about 2.5 KiB ([`super::direct_sse`]). `[proxy] direct_streams = false` turns both ways
//! out of hyper off (the fallback should a hyper upgrade break what this file relies on).
//!
//! # The connection's life ([`Life`])
//!
//! ```text
//! FirstHead ──(h2c preface, or not a stream)──────────────▶ Hyper ──(stream head out)──▶ HandedOff
//!     │                                                      ▲  │
//!     └──(bodiless HTTP/1.1 GET of a stream path)──▶ Direct ─┘  └──(101 answered)──▶ Upgraded
//!                                       (the rule does not apply)
//! ```
//!
//! Every state may also end the connection. Each state's work runs in a box of its own,
//! freed before the next starts: what stays for an idle stream is only the last one.
//!
//! `Upgraded` is a WebSocket stream (`stream/websocket.rs`): its handler leaves an
//! [`UpgradedTask`] in the connection's [`Slot`] through
//! [`crate::sse::ConnectionAbort::after_upgrade`]; after the `101` hyper hands the socket
//! to the task's `hyper::upgrade::on` and its connection ends, and the task then runs on
//! the connection's own task, so an upgraded connection keeps its `max_connections` slot
//! and is waited for at shutdown.
//!
//! # How a stream started in hyper leaves it
//!
//! A stream requested after other requests on a kept-alive connection (browsers reusing a
//! connection, pooling proxies) is answered by hyper, which writes its head with chunked
//! framing. Then:
//! 1. [`park`]: the service's HTTP/1.1 event-stream response keeps its real body in the
//!    connection's [`Slot`]; hyper gets a stand-in body.
//! 2. hyper encodes the head into its write buffer and polls the body for data: the
//!    stand-in marks the head encoded and never yields.
//! 3. In that same poll of the connection hyper writes its buffer and flushes the socket;
//!    [`FlushWatch`] records each write (`unflushed`) and each completed flush.
//! 4. [`until_handoff`] checks after every poll of the connection that returned `Pending`:
//!    once the head is encoded and nothing written is unflushed, hyper holds no byte of the
//!    response. The connection is taken from hyper (its buffers dropped) and [`stream`]
//!    writes the body, chunked, as hyper would have.
//!
//! # Invariants
//!
//! - **H1 (hyper, private):** the body is first polled in the poll of the connection that
//!   encodes the head, and that poll goes on to write the buffer before returning. So when
//!   the stand-in has been polled and the poll returned, the head was handed to the socket
//!   (or a write of it is pending and `unflushed` is set).
//! - **H2 (hyper, private):** a write is followed by `poll_flush`, in the same poll or the
//!   one that finishes the write. So `unflushed` clears once the head is out.
//! - **U1:** only HTTP/1.1 requests park: HTTP/1.0 has no chunked framing, and an HTTP/2
//!   connection carries other requests.
//! - **U2:** HTTP/1.1 serves one request at a time, so nothing else of hyper's is in flight
//!   when the stream's head is; bytes the client sent after the stream's request (an event
//!   source sends none) are dropped with hyper's read buffer.
//! - **U3:** the parked body is taken at most once; a connection that ends before the
//!   hand-off drops it, and the request's settlement (access log, idle accounting) with it.
//! - **U4:** an upgrade's task runs only once hyper's connection has ended (hyper gives the
//!   socket to `hyper::upgrade::on` after writing the `101`, then ends); if the connection
//!   ended without upgrading, the task's `hyper::upgrade::on` fails and it ends at once.
//!   The task holds the connection's [`Activity`] (its abort), so it is always taken from
//!   the slot, run or dropped, never left there.
//!
//! `tests::hyper_keeps_what_the_hand_off_relies_on` checks H1 and H2 against the hyper in
//! `Cargo.lock`, with a fast and a slow reader: it fails loudly after a hyper upgrade that
//! changes either (then set `direct_streams = false` until this file is mended).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http::request::Parts;
use tokio::io::{AsyncRead, AsyncWrite};

use super::activity::Activity;
use super::direct_sse::{self, Framing, Streaming};
use super::first_request::Rewind;
use super::forward_io::forward_io;
use super::observe::TrackedBody;
use crate::sse::UpgradedTask;

/// Where a connection is in its life; each state owns what it needs to go on.
pub(super) enum Life<S> {
    /// Reading the first request head, before hyper sees the socket.
    FirstHead(S),
    /// hyper serves the connection, the bytes read so far replayed in front.
    Hyper { io: Rewind<S>, http2: bool },
    /// The first request opens an event stream that unpoll serves without hyper.
    Direct {
        parts: Box<Parts>,
        prefix: Bytes,
        io: S,
    },
    /// An event stream hyper started: its body and connection, taken from hyper.
    HandedOff(Box<Handoff<Rewind<S>>>),
    /// A connection hyper upgraded (`101`): the task serving it (U4).
    Upgraded(UpgradedTask),
}

impl<S> Life<S> {
    /// Label for logs.
    pub(super) fn as_str(&self) -> &'static str {
        match self {
            Life::FirstHead(_) => "first_head",
            Life::Hyper { .. } => "hyper",
            Life::Direct { .. } => "direct",
            Life::HandedOff(_) => "handed_off",
            Life::Upgraded(_) => "upgraded",
        }
    }
}

/// A stream whose head hyper wrote: its body and the connection, taken from hyper.
pub(super) struct Handoff<S> {
    streaming: Streaming,
    io: S,
}

/// A connection's hand-off state (lives in its [`Activity`]).
#[derive(Default)]
pub(super) struct Slot {
    /// The body of an event stream whose head hyper is writing. Boxed: every HTTP/1
    /// connection has this slot, few use it.
    parked: Mutex<Option<Box<TrackedBody>>>,
    /// Set once hyper has encoded the parked stream's head into its buffer (H1).
    head_encoded: AtomicBool,
    /// Whether bytes were written to the socket since the last completed flush, i.e.
    /// whether hyper may still hold part of a response (H2).
    unflushed: AtomicBool,
    /// What serves the connection once hyper has answered `101` and ended (U4).
    upgraded: Mutex<Option<UpgradedTask>>,
}

impl Slot {
    fn park(&self, body: TrackedBody) {
        *self.parked.lock().unwrap_or_else(PoisonError::into_inner) = Some(Box::new(body));
    }

    /// The parked stream body, if any (U3: at most once).
    pub(super) fn take(&self) -> Option<TrackedBody> {
        self.parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .map(|body| *body)
    }

    /// Keep `task` to serve the connection after its upgrade (U4).
    pub(super) fn upgraded(&self, task: UpgradedTask) {
        *self.upgraded.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
    }

    /// The task an upgrade left, if any.
    pub(super) fn take_upgraded(&self) -> Option<UpgradedTask> {
        self.upgraded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Whether the connection can leave hyper now: a parked stream's head is encoded and
    /// everything hyper wrote is flushed.
    fn ready(&self) -> bool {
        self.head_encoded.load(Ordering::Relaxed) && !self.unflushed.load(Ordering::Relaxed)
    }
}

/// An HTTP/1.1 event stream leaves hyper once its head is written: its body is parked in
/// the connection's `activity` and hyper gets a stand-in that never yields. Any other
/// response is returned as it is.
pub(super) fn park(resp: Response<TrackedBody>, activity: Arc<Activity>) -> Response<TrackedBody> {
    if resp.status() != http::StatusCode::OK
        || resp.extensions().get::<crate::sse::EventStream>().is_none()
    {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    activity.handoff.park(body);
    let stand_in = TrackedBody::untracked(crate::body::boxed(StandIn {
        activity: Some(activity),
    }));
    Response::from_parts(parts, stand_in)
}

/// The body hyper gets in place of a stream's: it marks the head encoded, then never
/// yields (H1).
struct StandIn {
    activity: Option<Arc<Activity>>,
}

impl http_body::Body for StandIn {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Some(activity) = self.activity.take() {
            activity.handoff.head_encoded.store(true, Ordering::Relaxed);
        }
        Poll::Pending
    }
}

/// Poll `conn` until it ends (`Some(output)`) or a parked stream can leave hyper (`None`).
pub(super) fn until_handoff<'a, C>(
    mut conn: Pin<&'a mut C>,
    activity: &'a Activity,
) -> impl Future<Output = Option<C::Output>> + 'a
where
    C: Future,
{
    std::future::poll_fn(move |cx| match conn.as_mut().poll(cx) {
        Poll::Ready(out) => Poll::Ready(Some(out)),
        // H1 and H2: checked after each poll, in which hyper encodes, writes and flushes.
        Poll::Pending if activity.handoff.ready() => Poll::Ready(None),
        Poll::Pending => Poll::Pending,
    })
}

/// The hand-off, once [`until_handoff`] said it is ready: `io` is the connection hyper
/// gave back (its buffers dropped with it). `None` when no stream was parked.
pub(super) fn take<S>(io: FlushWatch<S>, activity: Arc<Activity>) -> Option<Box<Handoff<S>>> {
    let body = activity.handoff.take()?;
    Some(Box::new(Handoff {
        streaming: Streaming::new(body, activity),
        io: io.inner,
    }))
}

/// Write the rest of a stream that hyper started (its head, with chunked framing).
pub(super) async fn stream<S>(handoff: Box<Handoff<S>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Handoff { streaming, mut io } = *handoff;
    direct_sse::stream_body(streaming, Framing::Chunked, &mut io).await;
}

/// The socket as hyper's HTTP/1 connection gets it: records in the connection's
/// [`Slot`] whether everything written was flushed (H2), so a stream leaves hyper only
/// when hyper holds no unsent byte.
pub(super) struct FlushWatch<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> FlushWatch<S> {
    pub(super) fn new(inner: S, activity: Arc<Activity>) -> Self {
        FlushWatch { inner, activity }
    }

    fn wrote(&self) {
        self.activity
            .handoff
            .unflushed
            .store(true, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FlushWatch<S> {
    forward_io!(poll_read);
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FlushWatch<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.wrote();
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.wrote();
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = polled {
            self.activity
                .handoff
                .unflushed
                .store(false, Ordering::Relaxed);
        }
        polled
    }

    forward_io!(is_write_vectored, poll_shutdown);
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use futures_util::FutureExt;
    use http::Request;
    use http_body_util::StreamBody;
    use hyper::body::Incoming;
    use hyper::server::conn::http1;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::sync::mpsc;

    use super::*;

    type Frames = mpsc::Sender<Result<http_body::Frame<Bytes>, crate::body::BoxError>>;

    /// Bounds a wait that only a broken hand-off makes long.
    const BROKEN: Duration = Duration::from_secs(20);

    /// A real hyper HTTP/1.1 connection (as `serve_hyper` builds it) on an in-memory
    /// socket whose buffer holds `capacity` bytes, answering its one request with an event
    /// stream whose frames come from the returned sender; driven until the hand-off.
    /// Returns the handed-off stream, the client's socket and what the client read of it
    /// while hyper had the connection (read as it came when `read_while_in_hyper`).
    async fn hand_off(
        capacity: usize,
        read_while_in_hyper: bool,
    ) -> (Box<Handoff<DuplexStream>>, DuplexStream, Vec<u8>, Frames) {
        let (mut client, server) = tokio::io::duplex(capacity);
        let activity = Arc::new(Activity::default());
        let (frames, rx) = mpsc::channel(4);
        let rx = Mutex::new(Some(rx));
        let service = {
            let activity = activity.clone();
            hyper::service::service_fn(move |_req: Request<Incoming>| {
                let rx = rx.lock().unwrap().take().expect("one request");
                let body = StreamBody::new(tokio_stream_of(rx));
                let resp = crate::sse::response(TrackedBody::untracked(crate::body::boxed(body)));
                let parked = park(resp, activity.clone());
                async move { Ok::<_, Infallible>(parked) }
            })
        };
        let mut conn = http1::Builder::new()
            .serve_connection(
                TokioIo::new(FlushWatch::new(server, activity.clone())),
                service,
            )
            .with_upgrades();
        let mut seen = Vec::new();
        let driven = {
            let drive = until_handoff(Pin::new(&mut conn), &activity);
            // Alongside hyper: a small socket takes the request only as hyper reads it.
            let read = async {
                client
                    .write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                let mut buf = [0u8; 64];
                if read_while_in_hyper {
                    loop {
                        match client.read(&mut buf).await.unwrap() {
                            0 => break,
                            n => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                }
                std::future::pending::<()>().await;
            };
            tokio::time::timeout(BROKEN, async {
                tokio::select! {
                    driven = drive => driven,
                    () = read => unreachable!(),
                }
            })
            .await
            .expect(
                "hyper never flushed after writing the stream's head (H2 broken): \
                 see server/handoff.rs, or set proxy.direct_streams = false",
            )
        };
        assert!(
            driven.is_none(),
            "the connection ended instead of handing off"
        );
        let io = conn
            .into_parts()
            .expect("an HTTP/1 connection")
            .io
            .into_inner();
        let handoff = take(io, activity).expect("a parked stream");
        (handoff, client, seen, frames)
    }

    fn tokio_stream_of(
        mut rx: mpsc::Receiver<Result<http_body::Frame<Bytes>, crate::body::BoxError>>,
    ) -> impl futures_util::Stream<Item = Result<http_body::Frame<Bytes>, crate::body::BoxError>>
    {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    /// Everything the client can read now, without waiting.
    async fn read_ready(client: &mut DuplexStream, out: &mut Vec<u8>) {
        let mut buf = [0u8; 256];
        while let Some(read) = client.read(&mut buf).now_or_never() {
            match read.unwrap() {
                0 => break,
                n => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    #[tokio::test]
    async fn hyper_keeps_what_the_hand_off_relies_on() {
        // A fast reader (the head fits the socket in one write) and a slow one (a socket of
        // 16 bytes: hyper's writes are partial and wait for the reader).
        for (capacity, read_while_in_hyper) in [(64 * 1024, false), (16, true)] {
            let (handoff, mut client, mut seen, frames) =
                hand_off(capacity, read_while_in_hyper).await;
            // H1: when the stand-in was polled and hyper's poll returned, the head was
            // written whole: the client has it all and hyper holds no byte.
            read_ready(&mut client, &mut seen).await;
            let head = String::from_utf8(seen).unwrap();
            assert!(
                head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"),
                "hyper handed off before writing the whole head (H1 broken; capacity \
                 {capacity}): {head:?}"
            );
            assert!(head.contains("transfer-encoding: chunked"), "{head}");
            // The rest is written here, chunked, as hyper would have.
            let writer = tokio::spawn(stream(handoff));
            frames
                .send(Ok(http_body::Frame::data(Bytes::from_static(
                    b"data: 1\n\n",
                ))))
                .await
                .unwrap();
            drop(frames);
            let mut rest = Vec::new();
            tokio::time::timeout(BROKEN, client.read_to_end(&mut rest))
                .await
                .expect("the handed-off stream ends when its body does")
                .unwrap();
            assert_eq!(rest, b"9\r\ndata: 1\n\n\r\n0\r\n\r\n");
            writer.await.unwrap();
        }
    }

    #[test]
    fn other_responses_stay_in_hyper() {
        let activity = Arc::new(Activity::default());
        let plain = Response::new(TrackedBody::untracked(crate::body::full("x")));
        let resp = park(plain, activity.clone());
        assert!(activity.handoff.take().is_none());
        assert_eq!(resp.status(), 200);
        let mut refused = crate::sse::response(TrackedBody::untracked(crate::body::empty()));
        *refused.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
        park(refused, activity.clone());
        assert!(activity.handoff.take().is_none());
        let stream = crate::sse::response(TrackedBody::untracked(crate::body::empty()));
        park(stream, activity.clone());
        assert!(activity.handoff.take().is_some());
        assert!(activity.handoff.take().is_none(), "taken at most once");
    }
}
