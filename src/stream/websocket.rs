//! The WebSocket transport of `[[stream]]` rules: the same request, gate (limits, then
//! auth), hub subscription and resume as the SSE stream, answered with `101` and one text
//! frame per event, `{"id":…,"event":…,"data":…}` (the multiplexed stream's fields, so a
//! client parses both alike; a reset is the frame with `"event":"reset"`).
//!
//! Everything is decided before the upgrade: a refusal is the HTTP answer an SSE request
//! would get (401, 403, 429 with `Retry-After`…), never a socket opened and then closed.
//! After the `101` the connection's own task (`sse::ConnectionAbort::after_upgrade`)
//! runs the session, so a WebSocket holds its `proxy.max_connections` slot, is
//! waited for at shutdown and keeps `proxy.send_timeout` on its writes.
//!
//! Bounds, and what happens when they are hit:
//! - Sending: the hub's per-subscriber queue, with the SSE stream's slow-consumer policy
//!   (a subscriber behind what history holds is closed with 1013; a write blocked for
//!   `proxy.send_timeout`, or blocked when its queue overflows, drops the connection).
//!   Frames are at most `MAX_OUT_FRAME` (16 KiB): tungstenite's write buffer keeps its largest
//!   size, so a larger event is split into several frames of one message.
//! - Receiving: unpoll is one-way, client messages are read and discarded; one larger than
//!   [`MAX_CLIENT_MESSAGE`] closes with 1009. The read buffer starts at `READ_BUFFER`
//!   (256) bytes.
//! - Liveness: a ping every `heartbeat`; a client that has sent nothing (no pong) by the
//!   next one is gone, and the connection is dropped.
//!
//! Close codes: 1001 shutdown, 1013 too slow (resume with `?last_event_id=`), 4000 access
//! ended (reason `expired` or `revoked`), 1009 client message too big.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use http::header::{CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::request::Parts;
use http::{Method, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use super::Admitted;
use super::multi::Counted;
use crate::auth::Grant;
use crate::body::{Body, empty};
use crate::hub::{CloseReason, Subscription};
use crate::proxy::error_response;
use crate::sse::ConnectionAbort;

/// The largest message a client may send (unpoll reads and drops them): control frames
/// (pong, close) are at most 125 bytes, so this leaves room for an application's keepalive
/// text without letting a client make unpoll buffer much.
pub const MAX_CLIENT_MESSAGE: usize = 4096;

/// Initial read buffer of a socket. tungstenite allocates its whole read buffer up front
/// (128 KiB by default), which tens of thousands of idle sockets cannot afford; a client
/// only sends pongs, so a small one that grows for the rare larger message is enough.
const READ_BUFFER: usize = 256;

/// Largest frame written; larger events are split (see [`send`]).
const MAX_OUT_FRAME: usize = 16 * 1024;

/// How long a closing socket waits for the client's close frame after sending its own,
/// before dropping the connection.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// `4000`: access ended (token expired or the app revoked it on a re-check).
const ACCESS_ENDED: u16 = 4000;

/// Whether `parts` asks for a WebSocket (RFC 6455 §4.1 over HTTP/1.1: `GET`, `Upgrade:
/// websocket`, `Connection: upgrade`). Only such requests can be upgraded by hyper; an
/// HTTP/2 request never is one.
pub fn is_websocket(parts: &Parts) -> bool {
    parts.method == Method::GET
        && parts.version == Version::HTTP_11
        && crate::proxy::headers::is_upgrade(&parts.headers)
        && parts
            .headers
            .get(UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// What the handshake needs from the request, checked before the gate runs (a malformed
/// handshake costs no auth call): the `Sec-WebSocket-Accept` value, the upgrade to await
/// and the connection to hand the socket over on.
pub(crate) struct Handshake {
    accept: HeaderValue,
    on_upgrade: OnUpgrade,
    connection: ConnectionAbort,
}

/// Why a handshake is refused before the gate runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadHandshake {
    /// `Sec-WebSocket-Version` is not 13: 426 naming 13 (RFC 6455 §4.4).
    Version,
    /// No `Sec-WebSocket-Key`: 400.
    NoKey,
    /// The connection cannot be handed over (not hyper's HTTP/1): 400.
    NotUpgradable,
    /// A page of another origin, not in the rule's `origins`: 403. Browsers send the
    /// user's cookies with any page's WebSocket and apply no CORS to it, so without this
    /// a foreign page could read a logged-in user's stream (cross-site WebSocket
    /// hijacking).
    Origin,
}

impl BadHandshake {
    /// The answer.
    pub(crate) fn into_response(self) -> Response<Body> {
        let (status, why) = match self {
            BadHandshake::Version => (
                StatusCode::UPGRADE_REQUIRED,
                "only WebSocket version 13 is supported",
            ),
            BadHandshake::NoKey => (StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing"),
            BadHandshake::NotUpgradable => (
                StatusCode::BAD_REQUEST,
                "this connection cannot be upgraded",
            ),
            BadHandshake::Origin => (StatusCode::FORBIDDEN, "origin not allowed"),
        };
        let mut resp = error_response(status, why);
        if self == BadHandshake::Version {
            resp.headers_mut().insert(
                http::header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        resp
    }
}

impl Handshake {
    /// Check the handshake of `parts` (a request [`is_websocket`] accepted); `origins`:
    /// the rule's other allowed page origins.
    pub(crate) fn check(parts: &Parts, origins: &[String]) -> Result<Handshake, BadHandshake> {
        if !origin_allowed(&parts.headers, origins) {
            return Err(BadHandshake::Origin);
        }
        let version = parts.headers.get(http::header::SEC_WEBSOCKET_VERSION);
        if version.is_none_or(|v| v != "13") {
            return Err(BadHandshake::Version);
        }
        let key = parts
            .headers
            .get(SEC_WEBSOCKET_KEY)
            .ok_or(BadHandshake::NoKey)?;
        let (Some(on_upgrade), Some(connection)) = (
            parts.extensions.get::<OnUpgrade>(),
            parts.extensions.get::<ConnectionAbort>(),
        ) else {
            return Err(BadHandshake::NotUpgradable);
        };
        // Cannot fail: the key is base64 (A-Z a-z 0-9 + / =), all valid header bytes.
        let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .expect("base64 is a valid header value");
        Ok(Handshake {
            accept,
            on_upgrade: on_upgrade.clone(),
            connection: connection.clone(),
        })
    }

    /// The `101` for `admitted`; the socket is served by the connection's task once hyper
    /// has sent it.
    pub(crate) fn accept(
        self,
        admitted: Admitted,
        shutdown: CancellationToken,
        connections: Gauge,
    ) -> Response<Body> {
        let session = Session::new(admitted, shutdown, connections);
        let connection = self.connection.clone();
        let on_upgrade = self.on_upgrade;
        self.connection.after_upgrade(Box::pin(async move {
            match on_upgrade.await {
                Ok(upgraded) => session.run(TokioIo::new(upgraded), connection).await,
                Err(e) => tracing::debug!(cause = %e, "websocket upgrade did not complete"),
            }
        }));
        let mut resp = Response::new(empty());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = resp.headers_mut();
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(SEC_WEBSOCKET_ACCEPT, self.accept);
        resp
    }
}

/// An admitted WebSocket stream, waiting for its socket.
struct Session {
    sub: Subscription,
    heartbeat: Duration,
    shutdown: CancellationToken,
    /// Held for the session's life; its `ended` future closes it with 4000.
    grant: Grant,
    /// The rule's open-streams gauge and the server's open stream connections, counted
    /// from the `101` on, decremented on drop.
    _counted: [Counted; 2],
}

impl Session {
    fn new(admitted: Admitted, shutdown: CancellationToken, connections: Gauge) -> Session {
        let Admitted {
            sub,
            grant,
            options,
            subscribers,
        } = admitted;
        Session {
            sub,
            heartbeat: options.heartbeat.max(Duration::from_millis(100)),
            shutdown,
            grant,
            _counted: [Counted::new(subscribers), Counted::new(connections)],
        }
    }

    /// Serve the socket until the subscription, the access, the client or the server ends
    /// it.
    async fn run<S>(self, io: S, connection: ConnectionAbort)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let Session {
            mut sub,
            heartbeat,
            shutdown,
            grant,
            _counted,
        } = self;
        let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config())).await;
        let mut ended = grant.ended();
        let mut ping = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Whether the client has been silent since the last ping.
        let mut silent = false;
        let (code, reason) = loop {
            let message = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    sub.close(CloseReason::Shutdown);
                    break (CloseCode::Away, "server shutting down");
                }
                reason = &mut ended => {
                    tracing::debug!(reason = reason.as_str(), "access ended; closing the websocket");
                    break (CloseCode::from(ACCESS_ENDED), reason.as_str());
                }
                frame = sub.recv() => match frame {
                    Some(frame) => Outgoing::Event(text_frame(&frame)),
                    // Only overflow closes a subscription while it is served (shutdown is
                    // the branch above): the client was too slow.
                    None => break (CloseCode::Again, "too slow; resume from your last id"),
                },
                read = ws.next() => match read {
                    Some(Ok(Message::Close(_))) => {
                        // tungstenite queued the reply; flush it and go.
                        let _ = ws.flush().await;
                        return;
                    }
                    Some(Ok(_)) => {
                        silent = false;
                        continue;
                    }
                    Some(Err(WsError::Capacity(_))) => break (CloseCode::Size, "message too big"),
                    Some(Err(_)) | None => return,
                },
                _ = ping.tick() => {
                    if silent {
                        tracing::debug!("websocket client answered no ping; dropping it");
                        return;
                    }
                    silent = true;
                    Outgoing::Ping
                }
            };
            // A write blocked on a client that stopped reading ends with
            // `proxy.send_timeout`, or at once when its subscription overflows meanwhile.
            // Nearly every write completes at once; only a blocked one watches for the
            // abort (whose future is boxed).
            let mut sending = std::pin::pin!(send(&mut ws, message));
            let written = match sending.as_mut().now_or_never() {
                Some(written) => written,
                None => tokio::select! {
                    biased;
                    _ = connection.aborted() => return,
                    written = sending => written,
                },
            };
            if written.is_err() {
                return;
            }
        };
        // Unsubscribed and out of the counts now, not after the closing handshake.
        drop((sub, ended, grant, _counted));
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        // The close frame, then the client's (bounded: a gone client is not waited for).
        let closing = async {
            if ws.close(Some(frame)).await.is_ok() {
                while let Some(Ok(_)) = ws.next().await {}
            }
        };
        let _ = tokio::time::timeout(CLOSE_WAIT, closing).await;
    }
}

/// A request without `Origin` is no browser page's (browsers always send it on a
/// WebSocket) and is allowed; a page's must be of the request's own host, or listed.
fn origin_allowed(headers: &http::HeaderMap, origins: &[String]) -> bool {
    let Some(origin) = headers.get(http::header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if origins
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let authority = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok());
    matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
}

/// What the session writes next.
enum Outgoing {
    /// One event's text message.
    Event(String),
    /// The heartbeat.
    Ping,
}

/// Write `message` and flush. An event larger than [`MAX_OUT_FRAME`] goes out as several
/// frames of one message (RFC 6455 §5.4; clients reassemble them): tungstenite copies
/// each frame into a write buffer that keeps its largest size for the socket's life, so
/// this bounds what a socket holds after a large event.
async fn send<S>(ws: &mut WebSocketStream<S>, message: Outgoing) -> Result<(), WsError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let text = match message {
        Outgoing::Ping => return ws.send(Message::Ping(Bytes::new())).await,
        Outgoing::Event(text) if text.len() <= MAX_OUT_FRAME => {
            return ws.send(Message::Text(text.into())).await;
        }
        Outgoing::Event(text) => Bytes::from(text),
    };
    let mut start = 0;
    while start < text.len() {
        let end = (start + MAX_OUT_FRAME).min(text.len());
        let opcode = if start == 0 {
            Data::Text
        } else {
            Data::Continue
        };
        let frame = Frame::message(
            text.slice(start..end),
            OpCode::Data(opcode),
            end == text.len(),
        );
        ws.feed(Message::Frame(frame)).await?;
        start = end;
    }
    ws.flush().await
}

/// Socket settings: see [`MAX_CLIENT_MESSAGE`] and [`READ_BUFFER`]. Frames are written at
/// once (no write-side batching: each is one event, sent as it comes).
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_CLIENT_MESSAGE))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE))
}

/// A hub frame as one WebSocket text message.
fn text_frame(frame: &[u8]) -> String {
    let mut out = String::with_capacity(frame.len() + 32);
    out.push('{');
    super::multi::push_event_fields(&mut out, frame);
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{RESET_EVENT, ResetReason};
    use crate::sse::encode;

    #[test]
    fn events_become_one_json_object_each() {
        let frame = encode::event("ab-1", Some("position"), r#"{"lat":1.5}"#);
        assert_eq!(
            text_frame(&frame),
            r#"{"id":"ab-1","event":"position","data":{"lat":1.5}}"#
        );
        let frame = encode::event("ab-2", None, "two\nlines");
        assert_eq!(
            text_frame(&frame),
            r#"{"id":"ab-2","event":null,"data":"two\nlines"}"#
        );
        let reset = ResetReason::Evicted;
        let frame = encode::event("ab-3", Some(RESET_EVENT), &reset.data());
        let json: serde_json::Value = serde_json::from_str(&text_frame(&frame)).unwrap();
        assert_eq!(json["event"], "reset");
        assert_eq!(json["data"]["reason"], "evicted");
    }

    /// (opcode byte, payload length) of each server frame in `wire` (unmasked, lengths
    /// under 64 KiB).
    fn frames(mut wire: &[u8]) -> Vec<(u8, usize)> {
        let mut out = Vec::new();
        while !wire.is_empty() {
            let (len, header) = match wire[1] & 0x7f {
                126 => (usize::from(u16::from_be_bytes([wire[2], wire[3]])), 4),
                n => (usize::from(n), 2),
            };
            out.push((wire[0], len));
            wire = &wire[header + len..];
        }
        out
    }

    #[tokio::test]
    async fn a_large_event_goes_out_in_frames_of_at_most_16_kib() {
        use tokio::io::AsyncReadExt;
        let (server, mut client) = tokio::io::duplex(1 << 20);
        let mut ws = WebSocketStream::from_raw_socket(server, Role::Server, Some(config())).await;
        let text = "é".repeat(20_000); // 40,000 bytes, code points split across frames
        send(&mut ws, Outgoing::Event(text.clone())).await.unwrap();
        send(&mut ws, Outgoing::Event("small".into()))
            .await
            .unwrap();
        drop(ws);
        let mut wire = Vec::new();
        client.read_to_end(&mut wire).await.unwrap();
        // Text (not final), continuation (not final), continuation (final), then a whole
        // text frame: FIN is the high bit, the opcode the low nibble.
        assert_eq!(
            frames(&wire),
            [
                (0x01, 16_384),
                (0x00, 16_384),
                (0x80, 40_000 - 2 * 16_384),
                (0x81, 5)
            ]
        );
    }

    #[test]
    fn a_page_of_another_origin_needs_to_be_listed() {
        let headers = |origin: Option<&str>| {
            let mut h = http::HeaderMap::new();
            h.insert("host", HeaderValue::from_static("app.example:8080"));
            if let Some(o) = origin {
                h.insert("origin", HeaderValue::from_str(o).unwrap());
            }
            h
        };
        let listed = ["https://other.example".to_string()];
        assert!(origin_allowed(&headers(None), &[]), "not a browser");
        assert!(origin_allowed(
            &headers(Some("http://App.example:8080")),
            &[]
        ));
        assert!(origin_allowed(
            &headers(Some("https://app.example:8080")),
            &[]
        ));
        assert!(!origin_allowed(&headers(Some("https://evil.example")), &[]));
        assert!(
            !origin_allowed(&headers(Some("https://app.example")), &[]),
            "port differs"
        );
        assert!(!origin_allowed(&headers(Some("null")), &[]));
        assert!(origin_allowed(
            &headers(Some("https://other.example")),
            &listed
        ));
        assert!(!origin_allowed(
            &headers(Some("http://other.example")),
            &listed
        ));
        assert!(origin_allowed(
            &headers(Some("https://evil.example")),
            &["*".into()]
        ));
        assert_eq!(
            BadHandshake::Origin.into_response().status(),
            StatusCode::FORBIDDEN
        );
    }

    fn parts(request: http::request::Builder) -> Parts {
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn only_a_get_with_upgrade_websocket_is_a_websocket() {
        let ws = || {
            http::Request::get("/x")
                .header("upgrade", "WebSocket")
                .header("connection", "keep-alive, Upgrade")
        };
        assert!(is_websocket(&parts(ws())));
        assert!(!is_websocket(&parts(ws().method("POST"))));
        assert!(!is_websocket(&parts(ws().version(Version::HTTP_2))));
        assert!(!is_websocket(&parts(
            http::Request::get("/x").header("upgrade", "websocket")
        )));
        assert!(!is_websocket(&parts(
            http::Request::get("/x")
                .header("upgrade", "h2c")
                .header("connection", "upgrade")
        )));
    }

    #[test]
    fn handshake_wants_version_13_and_a_key() {
        let base = || {
            http::Request::get("/x")
                .header("upgrade", "websocket")
                .header("connection", "upgrade")
        };
        let err = Handshake::check(&parts(base().header("sec-websocket-key", "x")), &[]);
        let resp = err.err().unwrap().into_response();
        assert_eq!(resp.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(resp.headers()["sec-websocket-version"], "13");
        let err = Handshake::check(&parts(base().header("sec-websocket-version", "13")), &[]);
        assert_eq!(err.err(), Some(BadHandshake::NoKey));
        assert_eq!(
            BadHandshake::NoKey.into_response().status(),
            StatusCode::BAD_REQUEST
        );
        // Both fine, but not on a connection hyper could hand over.
        let err = Handshake::check(
            &parts(
                base()
                    .header("sec-websocket-version", "13")
                    .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ),
            &[],
        );
        assert_eq!(err.err(), Some(BadHandshake::NotUpgradable));
        // The RFC 6455 §1.3 example key.
        assert_eq!(
            derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
