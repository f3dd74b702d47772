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

use std::io::Write as _;
use std::net::SocketAddr;
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
pub(super) async fn stream_body<S>(streaming: Streaming, framing: Framing, io: &mut S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Streaming { mut body, activity } = streaming;
    // The client sends nothing more on a stream's connection; reading is how its going
    // away is noticed while the stream is idle. Anything it does send is discarded.
    let mut scratch = [0u8; 16];
    loop {
        // No abort to watch here: an overflowing subscription ends the body by itself.
        let frame = tokio::select! {
            biased;
            frame = body.frame() => frame,
            read = io.read(&mut scratch) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
        };
        let data = match frame {
            Some(Ok(frame)) => match frame.into_data() {
                // An empty chunk would end a chunked body.
                Ok(data) if !data.is_empty() => data,
                _ => continue,
            },
            // An overflow: its connection was aborted; no clean end that would look like
            // a finished response.
            Some(Err(_)) => return,
            None => break,
        };
        let chunked;
        let bytes: &[u8] = match framing {
            Framing::Close => &data,
            Framing::Chunked => {
                chunked = chunk(&data);
                &chunked
            }
        };
        if write(io, &activity, bytes).await.is_err() {
            return;
        }
    }
    // A clean end (shutdown, refusal): the last chunk, then the FIN now rather than on drop.
    if framing == Framing::Chunked && write(io, &activity, b"0\r\n\r\n").await.is_err() {
        return;
    }
    let _ = io.shutdown().await;
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
    tokio::select! {
        biased;
        _ = activity.aborted() => Err(()),
        written = write => written.map_err(|_| ()),
    }
}

/// `data` as one chunk of the chunked transfer coding.
fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 12);
    let _ = write!(out, "{:X}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
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
