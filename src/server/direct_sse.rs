//! Event streams served without hyper.
//!
//! An SSE subscriber sits idle for minutes or hours, and a server holds tens of thousands.
//! Through hyper each one kept two 8 KiB connection buffers (hyper's fixed initial read and
//! write buffer sizes): about 22 KiB per subscriber, of which the hub's share is under
//! 1 KiB. So a bodiless HTTP/1.1 GET that routes to a stream, when it is the first request
//! of its connection, is served here: the head parsed by [`super::first_request`], the same
//! gate and hub subscription as through hyper, the response head written once, then each
//! frame written straight from the hub's shared bytes. The body is delimited by the end of
//! the connection (`Connection: close`, RFC 9112 §6.3), which is how an event stream ends
//! anyway, so there is no chunk framing to add and nothing to copy. What stays per idle
//! subscriber is this task, its socket, its subscription and its heartbeat timer.
//!
//! A stream requested later on a keep-alive connection that hyper serves (what browsers
//! behind a pooling proxy, and browsers reusing an idle connection, send) starts in hyper:
//! hyper writes the head, with chunked framing, and then the connection leaves hyper
//! ([`super::handoff`]) and the frames are written here, chunked. HTTP/2 streams stay with
//! hyper: their connection carries other requests.

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, DATE};
use http::request::Parts;
use http::response::Parts as ResponseParts;
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::activity::{Activity, RequestGuard};
use super::observe::TrackedBody;
use super::{Arrival, Listener};
use crate::app::App;
use crate::sse::ConnectionAbort;

/// A stream that passed routing: its response (the stream, or a refusal such as 401/429)
/// and the connection's activity, through which an overflowing subscriber ends it.
pub(super) struct Opened {
    response: http::Response<TrackedBody>,
    activity: Arc<Activity>,
}

/// Run the stream rule for `parts`. `None`: the rule does not apply to this request (a
/// template value is missing) and the connection goes to hyper, which proxies it.
pub(super) async fn open(app: &Arc<App>, parts: Box<Parts>, peer: SocketAddr) -> Option<Opened> {
    let mut parts = *parts;
    let activity = Arc::new(Activity::default());
    parts
        .extensions
        .insert(ConnectionAbort::new(activity.clone()));
    let guard = RequestGuard::begin(activity.clone());
    let arrival = Arrival::note(app, &parts.method, &parts.uri, &parts.headers, peer);
    let snapshot = app.snapshot();
    let response = crate::routing::open_stream(&app.handles, snapshot, &parts, peer.ip()).await?;
    Some(Opened {
        response: arrival.track(response, Listener::Main, guard),
        activity,
    })
}

/// Write the response head to `io`. What is left to send is the body, through
/// [`stream_body`]; `None` when the client is already gone.
pub(super) async fn write_head<S>(opened: Opened, io: &mut S) -> Option<Streaming>
where
    S: AsyncWrite + Unpin,
{
    let Opened { response, activity } = opened;
    let (head, body) = response.into_parts();
    let head = encode_head(head, body.size_hint().exact());
    write(io, &activity, &head).await.ok()?;
    Some(Streaming { body, activity })
}

/// A response whose head is written.
pub(super) struct Streaming {
    body: TrackedBody,
    activity: Arc<Activity>,
}

/// How the body's end is marked on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// By closing the connection (the head said `Connection: close`).
    Close,
    /// Chunked transfer coding (hyper wrote the head and chose it).
    Chunked,
}

impl Streaming {
    /// A body whose head is already out (hyper wrote it: [`super::handoff`]).
    pub(super) fn new(body: TrackedBody, activity: Arc<Activity>) -> Streaming {
        Streaming { body, activity }
    }
}

/// Write the body frame by frame until it ends (the stream closed, shutdown), the client
/// goes away, a write fails (including `proxy.send_timeout`) or the subscriber overflows.
/// This is the state an idle subscriber's connection keeps: keep it small.
///
/// Not an `async fn`: one would keep `streaming` twice, as its argument and as the body
/// and activity taken from it (rust-lang/rust#62958). The values that exist between two
/// awaits only (a frame, the gathered parts) are scoped to blocks that end before the
/// next await, or the future would keep room for them too.
pub(super) fn stream_body<S>(
    streaming: Streaming,
    framing: Framing,
    io: &mut S,
) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Streaming { mut body, activity } = streaming;
    async move {
        // The client sends nothing more on a stream's connection; reading is how its
        // going away is noticed while the stream is idle. Anything it does send is
        // discarded.
        let mut scratch = [0u8; 16];
        loop {
            // No abort to watch here: an overflowing subscription ends the body by itself.
            let first = match tokio::select! {
                biased;
                frame = body.frame() => frame,
                read = io.read(&mut scratch) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                },
            } {
                Some(Ok(frame)) => match frame.into_data() {
                    // An empty chunk would end a chunked body.
                    Ok(data) if !data.is_empty() => data,
                    _ => continue,
                },
                // An overflow: its connection was aborted; no clean end that would look
                // like a finished response.
                Some(Err(_)) => return,
                None => break,
            };
            let Some((bytes, ended)) = gather(&mut body, first, framing) else {
                return;
            };
            if write(io, &activity, &bytes).await.is_err() {
                return;
            }
            if ended {
                break;
            }
        }
        // A clean end (shutdown, refusal): the last chunk, then the FIN now rather than on
        // drop.
        if framing == Framing::Chunked && write(io, &activity, b"0\r\n\r\n").await.is_err() {
            return;
        }
        let _ = io.shutdown().await;
    }
}

/// `first` and every frame of `body` ready after it, as the bytes of one write, and
/// whether the body ended; `None` when it failed (an overflow).
///
/// An event can come in parts (a watched body goes out from its own bytes, between its
/// `id:`/`data:` lines and its end) and events published together are ready together: all
/// that is ready goes out in one write, so a wakeup costs one syscall and one TCP segment,
/// not one per part.
fn gather(body: &mut TrackedBody, first: Bytes, framing: Framing) -> Option<(Bytes, bool)> {
    let mut ready = Ready::new(first);
    let mut ended = false;
    while !ready.is_full() {
        match futures_util::FutureExt::now_or_never(body.frame()) {
            Some(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    ready.push(data);
                }
            }
            Some(Some(Err(_))) => return None,
            Some(None) => {
                ended = true;
                break;
            }
            None => break,
        }
    }
    Some((ready.encode(framing), ended))
}

/// Write all of `bytes`, giving up when the connection is aborted.
async fn write<S>(io: &mut S, activity: &Activity, bytes: &[u8]) -> Result<(), ()>
where
    S: AsyncWrite + Unpin,
{
    let mut write = std::pin::pin!(io.write_all(bytes));
    // Nearly every write completes at once; only a blocked one needs to watch for the
    // abort (whose registration takes a lock each way, per event and subscriber).
    if let Some(written) = futures_util::FutureExt::now_or_never(write.as_mut()) {
        return written.map_err(|_| ());
    }
    // Boxed: the wait is rare, and inline it would size every idle stream's future.
    Box::pin(blocked_write(write, activity)).await
}

/// The rest of a write that could not complete at once, unless the connection is aborted.
async fn blocked_write<F>(write: Pin<&mut F>, activity: &Activity) -> Result<(), ()>
where
    F: Future<Output = std::io::Result<()>>,
{
    tokio::select! {
        biased;
        _ = activity.aborted() => Err(()),
        written = write => written.map_err(|_| ()),
    }
}

/// The frames of a stream that are ready to be written together. Nearly always one: the
/// first is held apart so that a lone frame (each event of a `[[stream]]`, each heartbeat)
/// costs no allocation per subscriber.
struct Ready {
    first: Bytes,
    rest: Vec<Bytes>,
    len: usize,
}

impl Ready {
    /// At most this many bytes are gathered for one write (beyond the first part).
    const MAX_BYTES: usize = 64 * 1024;
    /// At most this many parts.
    const MAX_PARTS: usize = 64;

    fn new(first: Bytes) -> Ready {
        Ready {
            len: first.len(),
            first,
            rest: Vec::new(),
        }
    }

    fn push(&mut self, data: Bytes) {
        self.len += data.len();
        self.rest.push(data);
    }

    fn is_full(&self) -> bool {
        self.len >= Self::MAX_BYTES || 1 + self.rest.len() >= Self::MAX_PARTS
    }

    /// The bytes to write: one part alone as it is (the hub's shared bytes, no copy),
    /// several joined; with `Framing::Chunked`, as one chunk.
    fn encode(self, framing: Framing) -> Bytes {
        if framing == Framing::Close && self.rest.is_empty() {
            return self.first;
        }
        let mut out = Vec::with_capacity(self.len + 12);
        if framing == Framing::Chunked {
            let _ = write!(out, "{:X}\r\n", self.len);
        }
        out.extend_from_slice(&self.first);
        for part in &self.rest {
            out.extend_from_slice(part);
        }
        if framing == Framing::Chunked {
            out.extend_from_slice(b"\r\n");
        }
        Bytes::from(out)
    }
}

/// The HTTP/1.1 response head. The body ends with the connection, unless its length is
/// known (a refusal), in which case it is announced.
fn encode_head(head: ResponseParts, length: Option<u64>) -> Bytes {
    let mut out = Vec::with_capacity(256);
    let reason = head.status.canonical_reason().unwrap_or("");
    let _ = write!(out, "HTTP/1.1 {} {reason}\r\n", head.status.as_str());
    for (name, value) in &head.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !head.headers.contains_key(DATE) {
        let _ = write!(
            out,
            "date: {}\r\n",
            httpdate::fmt_http_date(SystemTime::now())
        );
    }
    if let Some(length) = length
        && !head.headers.contains_key(CONTENT_LENGTH)
    {
        let _ = write!(out, "content-length: {length}\r\n");
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Response, StatusCode};

    /// An idle subscriber's connection holds this future for hours: the body and activity
    /// once (not again as the argument they came in), nothing of a past event.
    #[test]
    fn an_idle_stream_holds_little() {
        let (mut io, _client) = tokio::io::duplex(64);
        let streaming = Streaming::new(
            TrackedBody::untracked(crate::body::empty()),
            Arc::new(Activity::default()),
        );
        let body = stream_body(streaming, Framing::Close, &mut io);
        let size = std::mem::size_of_val(&body);
        println!("direct stream body: {size} B");
        assert!(size <= 256, "an idle stream's body future is {size} bytes");
    }

    #[test]
    fn ready_parts_go_out_as_one_write_and_one_chunk() {
        let part = |s: &'static str| Bytes::from_static(s.as_bytes());
        let mut ready = Ready::new(part("id: 1\ndata: "));
        ready.push(part("{\"a\":1}"));
        ready.push(part("\n\n"));
        assert_eq!(
            &ready.encode(Framing::Close)[..],
            b"id: 1\ndata: {\"a\":1}\n\n"
        );

        let mut ready = Ready::new(part("id: 1\ndata: "));
        ready.push(part("{\"a\":1}"));
        ready.push(part("\n\n"));
        let chunk = ready.encode(Framing::Chunked);
        assert_eq!(&chunk[..], b"15\r\nid: 1\ndata: {\"a\":1}\n\n\r\n");

        // A single part on a closing connection is written from its own bytes.
        let shared = part(": ping\n\n");
        let alone = Ready::new(shared.clone()).encode(Framing::Close);
        assert_eq!(alone.as_ptr(), shared.as_ptr());
    }

    #[test]
    fn a_write_gathers_a_bounded_number_of_bytes_and_parts() {
        let mut ready = Ready::new(Bytes::from(vec![b'x'; Ready::MAX_BYTES - 1]));
        assert!(!ready.is_full());
        ready.push(Bytes::from_static(b"y"));
        assert!(ready.is_full());
        let mut ready = Ready::new(Bytes::from_static(b"a"));
        for _ in 1..Ready::MAX_PARTS {
            assert!(!ready.is_full());
            ready.push(Bytes::from_static(b"a"));
        }
        assert!(ready.is_full());
    }

    #[test]
    fn head_says_the_body_ends_with_the_connection() {
        let mut resp = crate::sse::response(());
        resp.headers_mut()
            .insert(DATE, http::HeaderValue::from_static("x"));
        let (head, ()) = resp.into_parts();
        let text = String::from_utf8(encode_head(head, None).to_vec()).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n\
             cache-control: no-cache\r\nx-accel-buffering: no\r\ndate: x\r\n\
             connection: close\r\n\r\n"
        );
    }

    #[test]
    fn refusals_announce_their_length_and_a_date() {
        let mut resp = Response::new(());
        *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        let (head, ()) = resp.into_parts();
        let text = String::from_utf8(encode_head(head, Some(12)).to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.1 429 Too Many Requests\r\ndate: "));
        assert!(text.ends_with("\r\ncontent-length: 12\r\nconnection: close\r\n\r\n"));
    }
}
