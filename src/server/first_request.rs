//! The first request head of a connection, read before hyper sees the socket.
//!
//! Two decisions need it: HTTP/2 (the h2c preface) or HTTP/1, and whether the request opens
//! an event stream that unpoll serves without hyper ([`super::direct_sse`]). Everything
//! else goes to hyper with the bytes read so far replayed in front of the socket
//! ([`Rewind`]), so hyper parses, limits and answers it exactly as if it had read it
//! itself: a malformed or oversized head gets hyper's 400 or 431.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING, UPGRADE};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use super::forward_io::forward_io;

/// The client's opening bytes of an h2c connection (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Header lines parsed here; hyper's own default limit is 100. More: left to hyper.
const MAX_HEADERS: usize = 100;

/// First read size, doubled while a head needs more. The buffer is allocated before the
/// first byte arrives (a fresh socket reports readable at once), so connections opened
/// ahead of their requests (browser preconnects, proxies' spare connections) each hold
/// it: kept small. Freed once hyper has replayed it or a direct stream has parsed it.
const FIRST_READ: usize = 1024;

/// What the first bytes of a connection asked for.
pub(super) enum FirstRequest {
    /// The client closed or failed before a request head was complete.
    Gone,
    /// Serve the connection with hyper, replaying `prefix`.
    Hyper { prefix: Bytes, http2: bool },
    /// A complete, bodiless HTTP/1.1 GET, alone in `prefix`, whose path `direct` accepted.
    Direct { parts: Box<Parts>, prefix: Bytes },
}

/// Read the first request head from `io`, at most `limit` bytes of it; `direct` says
/// whether a GET to a path (without query) is served without hyper.
pub(super) async fn read<S, F>(io: &mut S, limit: usize, direct: F) -> FirstRequest
where
    S: AsyncRead + Unpin,
    F: Fn(&Method, &str, Option<&HeaderMap>) -> bool,
{
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(buf.len());
        }
        match io.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return FirstRequest::Gone,
            Ok(_) => {}
        }
        match examine(&buf, limit, &direct) {
            Verdict::NeedMore => {}
            Verdict::Hyper { http2 } => {
                return FirstRequest::Hyper {
                    prefix: buf.freeze(),
                    http2,
                };
            }
            Verdict::Direct(parts) => {
                return FirstRequest::Direct {
                    parts,
                    prefix: buf.freeze(),
                };
            }
        }
    }
}

/// Whether a GET of a path, with its headers once they are read (`None` before), may be
/// served on the direct path.
type DirectTest<'a> = dyn Fn(&Method, &str, Option<&HeaderMap>) -> bool + 'a;

enum Verdict {
    NeedMore,
    Hyper { http2: bool },
    Direct(Box<Parts>),
}

/// Decide on the bytes read so far. Synchronous so the header array lives on the stack,
/// never in the connection's future.
fn examine(buf: &[u8], limit: usize, direct: &DirectTest<'_>) -> Verdict {
    if buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(buf) {
        return Verdict::NeedMore;
    }
    if buf.starts_with(H2_PREFACE) {
        return Verdict::Hyper { http2: true };
    }
    let http1 = Verdict::Hyper { http2: false };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            // Bytes after the head are a body or a pipelined request: hyper's business.
            if len != buf.len() || req.method != Some("GET") || req.version != Some(1) {
                return http1;
            }
            match direct_parts(&req, direct) {
                Some(parts) => Verdict::Direct(Box::new(parts)),
                None => http1,
            }
        }
        Ok(httparse::Status::Partial) => {
            // The request line alone can rule the direct path out: no need to wait for the
            // rest of the head.
            if let (Some(method), Some(target)) = (req.method, req.path)
                && !(method == "GET" && target_accepted(target, direct))
            {
                return http1;
            }
            if buf.len() >= limit {
                http1
            } else {
                Verdict::NeedMore
            }
        }
        Err(_) => http1,
    }
}

fn target_accepted(target: &str, direct: &DirectTest<'_>) -> bool {
    Uri::try_from(target).is_ok_and(|uri| direct(&Method::GET, uri.path(), None))
}

/// The request as hyper would have built it, when it qualifies for the direct path: no
/// body, no upgrade, nothing that does not convert cleanly (hyper answers that).
fn direct_parts(req: &httparse::Request<'_, '_>, direct: &DirectTest<'_>) -> Option<Parts> {
    let uri = Uri::try_from(req.path?).ok()?;
    if !direct(&Method::GET, uri.path(), None) {
        return None;
    }
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    let mut hosts = 0;
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        let has_body = (name == CONTENT_LENGTH && value != "0") || name == TRANSFER_ENCODING;
        // Two Host lines: hyper's path answers 400 (`proxy::headers::normalize_host`).
        hosts += usize::from(name == HOST);
        if has_body || name == UPGRADE || hosts > 1 {
            return None;
        }
        headers.append(name, value);
    }
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = Method::GET;
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    parts.headers = headers;
    // An absolute-form target's authority replaces Host, as on hyper's path.
    crate::proxy::headers::normalize_host(&mut parts.headers, &parts.uri).ok()?;
    // Some streams are told by a header (a watched path asks for `Accept:
    // text/event-stream`).
    direct(&Method::GET, parts.uri.path(), Some(&parts.headers)).then_some(parts)
}

/// A client socket as hyper gets it: the bytes already read from it put back in front.
pub(super) struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub(super) fn new(prefix: Bytes, inner: S) -> Self {
        Rewind { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Free the first read's buffer now, not when the connection ends.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    forward_io!(
        poll_write,
        poll_write_vectored,
        is_write_vectored,
        poll_flush,
        poll_shutdown,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only_sub(_: &Method, path: &str, _: Option<&HeaderMap>) -> bool {
        path.starts_with("/sub/")
    }

    fn verdict(bytes: &[u8]) -> &'static str {
        match examine(bytes, 1024, &only_sub) {
            Verdict::NeedMore => "more",
            Verdict::Hyper { http2: true } => "h2",
            Verdict::Hyper { http2: false } => "h1",
            Verdict::Direct(_) => "direct",
        }
    }

    #[test]
    fn stream_gets_are_direct_and_keep_their_head() {
        let head = b"GET /sub/a?last_event_id=x-1 HTTP/1.1\r\nHost: h\r\nCookie: a=1\r\n\r\n";
        let Verdict::Direct(parts) = examine(head, 1024, &only_sub) else {
            panic!("not direct");
        };
        assert_eq!(parts.uri, "/sub/a?last_event_id=x-1");
        assert_eq!(parts.headers["cookie"], "a=1");
        assert_eq!(parts.version, Version::HTTP_11);
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        assert_eq!(verdict(b"GET /api HTTP/1.1\r\nHost: h\r\n\r\n"), "h1");
        assert_eq!(verdict(b"POST /sub/a HTTP/1.1\r\nHost: h\r\n\r\n"), "h1");
        assert_eq!(verdict(b"GET /sub/a HTTP/1.0\r\n\r\n"), "h1");
        assert_eq!(
            verdict(b"GET /sub/a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"),
            "h1"
        );
        assert_eq!(
            verdict(b"GET /sub/a HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"),
            "h1"
        );
        // Pipelined second request.
        assert_eq!(
            verdict(b"GET /sub/a HTTP/1.1\r\n\r\nGET /x HTTP/1.1\r\n\r\n"),
            "h1"
        );
        assert_eq!(verdict(b"GET /sub/a HTTP/1.1\r\nBad Header\r\n\r\n"), "h1");
        assert_eq!(verdict(H2_PREFACE), "h2");
    }

    #[test]
    fn partial_heads_wait_only_while_they_may_be_streams() {
        assert_eq!(verdict(b"PRI * HTTP/2"), "more");
        assert_eq!(verdict(b"GET /sub/a HTTP/1.1\r\nHost:"), "more");
        // The request line already rules it out.
        assert_eq!(verdict(b"GET /api HTTP/1.1\r\nHost:"), "h1");
        // Past the limit hyper answers 431.
        let mut big = b"GET /sub/a HTTP/1.1\r\nX: ".to_vec();
        big.resize(2000, b'a');
        assert_eq!(verdict(&big), "h1");
    }

    /// Property: on generated request heads (methods, targets, header names and values
    /// with odd bytes, Content-Length / Transfer-Encoding combinations), whenever the head
    /// is served on the direct path, hyper's own parser accepts the same bytes as the same
    /// request: method, target, version, headers (after the Host rule both paths apply)
    /// and no body. Whatever the direct path does not take goes to hyper, which decides.
    mod against_hyper {
        use std::convert::Infallible;
        use std::sync::{Arc, Mutex};
        use std::time::Duration;

        use http_body::Body as _;
        use hyper::body::Incoming;
        use hyper_util::rt::TokioIo;
        use proptest::prelude::*;
        use tokio::io::AsyncWriteExt;

        use super::*;

        fn any_path(_: &Method, _: &str, _: Option<&HeaderMap>) -> bool {
            true
        }

        /// What hyper made of `head`: the first request's parts and whether it had no
        /// body, or `None` when it refused it (or saw no complete request).
        fn hyper_view(rt: &tokio::runtime::Runtime, head: &[u8]) -> Option<(Parts, bool)> {
            rt.block_on(async {
                let (mut client, server) = tokio::io::duplex(1 << 16);
                let seen = Arc::new(Mutex::new(None));
                let record = seen.clone();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let record = record.clone();
                    async move {
                        let bodiless = req.body().is_end_stream();
                        let (parts, _) = req.into_parts();
                        let mut first = record.lock().unwrap();
                        if first.is_none() {
                            *first = Some((parts, bodiless));
                        }
                        Ok::<_, Infallible>(http::Response::new(
                            http_body_util::Empty::<Bytes>::new(),
                        ))
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(server), service);
                client.write_all(head).await.unwrap();
                // Kept open (a half-closed client makes hyper drop the request): hyper
                // either calls the service or answers an error and closes.
                let parsed = async {
                    while seen.lock().unwrap().is_none() {
                        tokio::task::yield_now().await;
                    }
                };
                tokio::select! {
                    _ = conn => {}
                    () = parsed => {}
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                drop(client);
                seen.lock().unwrap().take()
            })
        }

        fn method() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                16 => Just(b"GET".to_vec()),
                1 => Just(b"get".to_vec()),
                1 => Just(b"POST".to_vec()),
                1 => Just(b"HEAD".to_vec()),
                1 => Just(b"G\x7fT".to_vec()),
                1 => proptest::collection::vec(any::<u8>(), 1..5),
            ]
        }

        fn target() -> impl Strategy<Value = Vec<u8>> {
            let start = prop_oneof![
                Just(b"/sub/a".to_vec()),
                Just(b"/sub/a".to_vec()),
                Just(b"/".to_vec()),
                Just(b"*".to_vec()),
                Just(b"//x".to_vec()),
                Just(b"http://evil.example/sub/a".to_vec()),
                Just(b"http://u@h:1/x".to_vec()),
                Just(b"h.example:80".to_vec()),
            ];
            let tail = prop_oneof![
                Just(Vec::new()),
                Just(Vec::new()),
                Just(b"?x=%C3%A9".to_vec()),
                Just(b"?a=1&a=2".to_vec()),
                Just(b"%zz".to_vec()),
                Just(b"#frag".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..4),
            ];
            (start, tail).prop_map(|(mut s, t)| {
                s.extend(t);
                s
            })
        }

        fn odd_bytes() -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec(
                prop_oneof![
                    40 => 0x20u8..0x7f,
                    2 => Just(b'\t'),
                    4 => 0x80u8..=0xff,
                    1 => Just(0x7fu8),
                    1 => Just(0u8),
                    1 => Just(b'\r'),
                    1 => Just(b'\n'),
                ],
                0..8,
            )
        }

        fn header() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
            let name = prop_oneof![
                4 => Just(b"Host".to_vec()),
                4 => Just(b"Cookie".to_vec()),
                4 => Just(b"X-A".to_vec()),
                2 => Just(b"Content-Length".to_vec()),
                2 => Just(b"Transfer-Encoding".to_vec()),
                1 => Just(b"content-length".to_vec()),
                1 => Just(b"Upgrade".to_vec()),
                1 => Just(b"Connection".to_vec()),
                1 => Just(b"Content-Length ".to_vec()),
                1 => odd_bytes(),
            ];
            let value = prop_oneof![
                6 => odd_bytes(),
                1 => Just(b"0".to_vec()),
                1 => Just(b"00".to_vec()),
                1 => Just(b"+0".to_vec()),
                1 => Just(b"0, 0".to_vec()),
                1 => Just(b"5".to_vec()),
                1 => Just(b"chunked".to_vec()),
                1 => Just(b"gzip, chunked".to_vec()),
                1 => Just(b"websocket".to_vec()),
                1 => Just(b"a.example".to_vec()),
                1 => Just(b" spaced\t".to_vec()),
            ];
            (name, value)
        }

        fn head() -> impl Strategy<Value = Vec<u8>> {
            let version = prop_oneof![
                24 => Just(b"HTTP/1.1".to_vec()),
                1 => Just(b"HTTP/1.0".to_vec()),
                1 => Just(b"HTTP/2.0".to_vec()),
                1 => Just(b"http/1.1".to_vec()),
            ];
            let eol = prop_oneof![8 => Just(b"\r\n".to_vec()), 1 => Just(b"\n".to_vec())];
            let body = prop_oneof![
                16 => Just(Vec::new()),
                1 => Just(b"hello".to_vec()),
                1 => Just(b"0\r\n\r\n".to_vec()),
            ];
            (
                method(),
                target(),
                version,
                proptest::collection::vec(header(), 0..5),
                eol,
                body,
            )
                .prop_map(|(method, target, version, headers, eol, body)| {
                    let mut out = method;
                    out.push(b' ');
                    out.extend(target);
                    out.push(b' ');
                    out.extend(version);
                    out.extend(&eol);
                    for (name, value) in headers {
                        out.extend(name);
                        out.extend(b": ");
                        out.extend(value);
                        out.extend(&eol);
                    }
                    out.extend(&eol);
                    out.extend(body);
                    out
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                cases: 1000,
                failure_persistence: None,
                ..ProptestConfig::default()
            })]

            #[test]
            fn direct_heads_are_what_hyper_parses(head in head()) {
                let Verdict::Direct(direct) = examine(&head, 64 * 1024, &any_path) else {
                    // Not served here: hyper reads it, exactly as if it had read it itself.
                    return Ok(());
                };
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let view = hyper_view(&rt, &head);
                let Some((mut parts, bodiless)) = view else {
                    return Err(TestCaseError::fail("direct path took a head hyper refuses"));
                };
                // The rule proxy::handle applies to hyper's requests before anything else.
                let host = crate::proxy::headers::normalize_host(&mut parts.headers, &parts.uri);
                prop_assert!(host.is_ok(), "hyper's path refuses it: {:?}", host);
                prop_assert_eq!(&direct.method, &parts.method);
                prop_assert_eq!(&direct.uri, &parts.uri);
                prop_assert_eq!(direct.version, parts.version);
                prop_assert_eq!(&direct.headers, &parts.headers);
                prop_assert!(bodiless, "hyper saw a body");
            }
        }
    }

    #[tokio::test]
    async fn rewind_replays_then_reads_through() {
        let inner: &[u8] = b" world";
        let mut io = Rewind::new(Bytes::from_static(b"hello"), inner);
        let mut out = String::new();
        io.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }
}
