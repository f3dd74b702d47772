//! Accepting client connections: HTTP/1.1 and h2c (prior knowledge) on one port, upgrades,
//! a cap on concurrent connections, header-read and idle timeouts, graceful shutdown.
//! With `[tls]` the main listener's connections first complete a TLS handshake
//! (`tls.rs`): ALPN `h2` goes to hyper's HTTP/2, anything else lives as a plain
//! connection does, over the TLS stream.
//!
//! Each connection's first request head is read here ([`first_request`]) to pick HTTP/1 or
//! HTTP/2 and to serve event streams without hyper ([`direct_sse`]); all else is hyper's,
//! until an HTTP/1.1 event stream leaves it. The connection's life and the hand-off are in
//! [`handoff`].

mod activity;
mod direct_sse;
mod first_request;
mod forward_io;
mod handoff;
mod observe;
mod send_timeout;
pub mod signals;
mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, Method, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) use activity::{Activity, RequestGuard};
pub(crate) use send_timeout::SendTimeout;
pub(crate) use tls::serve_redirects;

use crate::admin;
use crate::app::App;
use crate::body::Body;
use crate::proxy::forward::UpstreamTime;
use crate::sse::ConnectionAbort;
use direct_sse::Framing;
use first_request::{FirstRequest, Rewind};
use handoff::{FlushWatch, Life};
use observe::{AccessLog, TrackedBody};

/// Which listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listener {
    /// App traffic: rules and proxying.
    Main,
    /// Metrics, health, stats, publish, purge.
    Admin,
}

impl Listener {
    /// Label for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Main => "main",
            Listener::Admin => "admin",
        }
    }
}

/// Accept connections on `listener` until shutdown, serving each on its own task tracked by
/// `tasks` (so shutdown can wait for them).
pub(crate) async fn serve(
    listener: TcpListener,
    kind: Listener,
    app: Arc<App>,
    tasks: TaskTracker,
) {
    // Past the cap we stop calling accept(): new connections wait in the kernel's listen
    // backlog until a slot frees (and are refused by the kernel once the backlog is full),
    // which sheds load without unpoll spending memory on them.
    let max = app.snapshot().config.proxy.max_connections;
    let slots = Arc::new(Semaphore::new(max));
    while let Some((permit, stream, peer)) =
        accept(&listener, &slots, &app.handles.shutdown, kind.as_str()).await
    {
        let app = app.clone();
        // The admin listener stays plain HTTP (on loopback).
        let tls = match kind {
            Listener::Main => app.tls.clone(),
            Listener::Admin => None,
        };
        tasks.spawn(async move {
            app.handles.metrics.open_connections.inc();
            let _ = stream.set_nodelay(true);
            let send_timeout = app.snapshot().config.proxy.send_timeout;
            // Under TLS too the timeout watches the socket: a client that accepts no
            // encrypted byte for `send_timeout` is gone whatever rustls buffers.
            let io = SendTimeout::new(stream, send_timeout);
            // Boxed: the task that every idle stream keeps is then a pointer, not the
            // largest state of a connection's life, and a plain connection carries no room
            // for a TLS one's.
            match tls {
                None => {
                    Box::pin(serve_connection(
                        Life::FirstHead(io),
                        peer,
                        kind,
                        app.clone(),
                    ))
                    .await;
                }
                Some(tls) => Box::pin(serve_tls(io, tls, peer, kind, app.clone())).await,
            }
            app.handles.metrics.open_connections.dec();
            drop(permit);
        });
    }
}

/// A TLS connection's life: the handshake, then what follows it on the decrypted stream.
/// Not an `async fn`, for the reason given at [`serve_connection`].
// Written out on purpose: see the doc comment.
#[allow(clippy::manual_async_fn)]
fn serve_tls(
    io: SendTimeout<TcpStream>,
    tls: Arc<crate::tls::Tls>,
    peer: SocketAddr,
    kind: Listener,
    app: Arc<App>,
) -> impl Future<Output = ()> + Send {
    async move {
        let handshake = Box::pin(tls::handshake(io, &tls, peer, &app));
        let life = handshake.await;
        drop(tls);
        if let Some(life) = life {
            serve_connection(life, peer, kind, app).await;
        }
    }
}

/// Wait for a free slot of `slots`, then accept one connection on `listener` (`label` names
/// it in logs); `None` once `shutdown` is cancelled. The permit is held for the
/// connection's life.
pub(super) async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    shutdown: &CancellationToken,
    label: &str,
) -> Option<(OwnedSemaphorePermit, TcpStream, SocketAddr)> {
    let permit = tokio::select! {
        p = slots.clone().acquire_owned() => p.ok()?,
        _ = shutdown.cancelled() => return None,
    };
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => return Some((permit, stream, peer)),
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(listener = label, cause = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.cancelled() => return None,
        }
    }
}

/// Run a connection's [`Life`] from `life` to its end; `S` is the plain socket or its TLS
/// stream.
///
/// Not an `async fn`: an async fn moves each argument into a local of its body and keeps
/// both places in the future (rust-lang/rust#62958), 144 bytes here for the life of every
/// connection. An `async move` block uses what it captured in place.
// Written out on purpose: see the doc comment.
#[allow(clippy::manual_async_fn)]
fn serve_connection<S>(
    mut life: Life<S>,
    peer: SocketAddr,
    kind: Listener,
    app: Arc<App>,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async move {
        let app = &app;
        // Each state's work is boxed (bound by `let`, so no temporary outlives it): what stays
        // for the life of a stream is only the last one, and hyper's state is freed before a
        // handed-off stream starts.
        loop {
            tracing::trace!(peer = %peer, state = life.as_str(), "connection");
            let next = match life {
                Life::FirstHead(io) => {
                    let step = Box::pin(first_head(io, kind, app));
                    step.await
                }
                Life::Hyper { io, http2 } => {
                    let step = Box::pin(serve_hyper(io, http2, peer, kind, app));
                    step.await
                }
                Life::Direct { parts, prefix, io } => {
                    let step = Box::pin(direct(parts, prefix, io, peer, app));
                    step.await
                }
                Life::HandedOff(handoff) => {
                    let step = Box::pin(handoff::stream(handoff));
                    step.await;
                    None
                }
                Life::Upgraded(task) => {
                    task.await;
                    None
                }
            };
            let Some(next) = next else { return };
            life = next;
        }
    }
}

/// Read the first request head: the connection goes to hyper or, for an event stream
/// that `proxy.direct_streams` lets unpoll serve, to [`direct`]. `None`: the client went
/// away, was too slow (`header_read_timeout`) or unpoll is shutting down.
async fn first_head<S>(mut io: S, kind: Listener, app: &Arc<App>) -> Option<Life<S>>
where
    S: AsyncRead + Unpin,
{
    let (header_read_timeout, limit, direct_streams) = {
        let config = &app.snapshot().config.proxy;
        (
            config.header_read_timeout,
            config.max_header_bytes,
            config.direct_streams,
        )
    };
    // Only the main listener has streams; the snapshot is not held across the read.
    let direct = |method: &http::Method, path: &str, headers: Option<&HeaderMap>| {
        direct_streams
            && kind == Listener::Main
            && crate::routing::is_stream(&app.snapshot(), method, path, headers)
    };
    let read = tokio::time::timeout(
        header_read_timeout,
        first_request::read(&mut io, limit, direct),
    );
    // A connection that has sent nothing yet has nothing to drain: it closes at once on
    // shutdown, as hyper closes its idle ones.
    let first = tokio::select! {
        first = read => first.ok()?,
        _ = app.handles.shutdown.cancelled() => return None,
    };
    match first {
        FirstRequest::Gone => None,
        FirstRequest::Hyper { prefix, http2 } => Some(Life::Hyper {
            io: Rewind::new(prefix, io),
            http2,
        }),
        FirstRequest::Direct { parts, prefix } => Some(Life::Direct { parts, prefix, io }),
    }
}

/// Serve an event stream without hyper: open it, write its head, then its body until it
/// ends. When the stream rule does not apply after all (a template value is missing) the
/// connection goes to hyper, which proxies the request.
///
/// Not an `async fn`, for the reason given at [`serve_connection`]: the socket would be held
/// twice for the stream's life.
// Written out on purpose: see the doc comment.
#[allow(clippy::manual_async_fn)]
fn direct<S>(
    parts: Box<http::request::Parts>,
    prefix: bytes::Bytes,
    mut io: S,
    peer: SocketAddr,
    app: &Arc<App>,
) -> impl Future<Output = Option<Life<S>>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async move {
        let open = Box::pin(direct_sse::open(app, parts, peer));
        let Some(opened) = open.await else {
            return Some(Life::Hyper {
                io: Rewind::new(prefix, io),
                http2: false,
            });
        };
        drop(prefix);
        let head = Box::pin(direct_sse::write_head(opened, &mut io));
        let streaming = head.await?;
        let body = Box::pin(direct_sse::stream_body(streaming, Framing::Close, &mut io));
        body.await;
        None
    }
}

/// Serve a connection with hyper: HTTP/1.1 (with upgrades) or HTTP/2, with the idle
/// timeout, graceful shutdown and response-initiated aborts. An HTTP/1.1 event stream
/// ends hyper's part ([`handoff`]): the connection is returned with the stream's body.
/// After an upgrade, the task that serves the upgraded connection is returned (U4).
async fn serve_hyper<S>(
    io: Rewind<S>,
    http2: bool,
    peer: SocketAddr,
    kind: Listener,
    app: &Arc<App>,
) -> Option<Life<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    // Read for the builders, then dropped on both paths: a connection held open for
    // hours must not keep its first config (and its certificate pair) past reloads.
    let snapshot = app.snapshot();
    let config = &snapshot.config.proxy;
    let direct_streams = config.direct_streams;
    let service = {
        let app = app.clone();
        let activity = activity.clone();
        service_fn(move |req: Request<Incoming>| {
            // On HTTP/2 the other streams of the connection are innocent: no abort.
            let abort = (req.version() <= http::Version::HTTP_11)
                .then(|| ConnectionAbort::new(activity.clone()));
            // hyper frames a body of unknown length with chunks only for HTTP/1.1 clients
            // (handoff U1).
            let hand_off = (direct_streams && req.version() == http::Version::HTTP_11)
                .then(|| activity.clone());
            let app = app.clone();
            let guard = RequestGuard::begin(activity.clone());
            async move {
                // Boxed: on HTTP/2 hyper keeps this future's allocation (its task) for as
                // long as the response body streams, sized for its largest state; boxed,
                // the handler's state is freed once the head is out and an idle h2 event
                // stream keeps a pointer, not the handler's whole stack.
                let resp = Box::pin(respond(&app, kind, req, peer, guard, abort)).await;
                Ok::<_, Infallible>(match hand_off {
                    Some(activity) => handoff::park(resp, activity),
                    None => resp,
                })
            }
        })
    };
    let idle_timeout = config.idle_timeout;
    if http2 {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX));
        h2_tuning(&mut builder, &snapshot.config);
        drop(snapshot);
        let conn = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let drain = |c: Pin<&mut _>| http2::Connection::graceful_shutdown(c);
        drive(conn, drain, &activity, idle_timeout, peer, app).await;
        return None;
    }
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes.max(8192));
    drop(snapshot);
    let mut conn = builder
        .serve_connection(TokioIo::new(FlushWatch::new(io, activity.clone())), service)
        .with_upgrades();
    let drain = |c: Pin<&mut _>| http1::UpgradeableConnection::graceful_shutdown(c);
    let driven = drive(
        Pin::new(&mut conn),
        drain,
        &activity,
        idle_timeout,
        peer,
        app,
    )
    .await;
    let next = match driven {
        // After a `101` hyper hands the socket to the upgrade's waiter and ends (handoff U4).
        Driven::Ended => activity.handoff.take_upgraded().map(Life::Upgraded),
        // Dropping hyper's side of the connection frees its buffers (handoff U2).
        Driven::HandOff => conn
            .into_parts()
            .and_then(|parts| handoff::take(parts.io.into_inner(), activity.clone()))
            .map(Life::HandedOff),
    };
    // A stream parked by a connection that ended first holds the connection's activity
    // (handoff U3), as does an upgrade's task when the connection handed off instead (U4).
    drop(activity.handoff.take());
    drop(activity.handoff.take_upgraded());
    next
}

/// Per-stream send buffer of an HTTP/2 connection: what hyper may queue for a stream
/// beyond what the client's flow-control window lets out. Event frames are small; a
/// stream whose client stops reading stops being polled once this is queued, its hub
/// queue overflows, and it is reset (RST_STREAM) when next polled. Bounds a connection's
/// worst case at `max_concurrent_streams` × this.
const H2_MAX_SEND_BUF: usize = 64 * 1024;
/// Per-stream receive window we advertise: request bodies (uploads through the proxy) may
/// run this far ahead of the upstream. Windows are credit, not allocations: an idle
/// stream costs nothing for them.
const H2_STREAM_WINDOW: u32 = 256 * 1024;
/// Connection receive window: several uploads at once at full speed.
const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;
/// PING interval on an HTTP/2 connection, and how long the answer may take: finds clients
/// gone without a FIN while all their streams are idle (TCP would not notice for hours).
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// hyper's HTTP/2 settings for unpoll: many cheap, mostly idle event streams per
/// connection (BENCHMARKS.md, "TLS and HTTP/2").
fn h2_tuning(builder: &mut http2::Builder<TokioExecutor>, config: &crate::Config) {
    let max_streams = config
        .tls
        .as_ref()
        .map_or(crate::tls::config::DEFAULT_MAX_CONCURRENT_STREAMS, |t| {
            t.max_concurrent_streams
        });
    builder
        .max_concurrent_streams(max_streams)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .adaptive_window(false)
        .max_send_buf_size(H2_MAX_SEND_BUF)
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
}

/// How a hyper connection's run ended.
enum Driven {
    /// The connection closed, failed, was aborted or drained.
    Ended,
    /// An event stream's head is out: the connection leaves hyper.
    HandOff,
}

/// Run a hyper connection until it ends or hands off a stream: drain it gracefully on
/// shutdown or once idle for `idle_timeout`, drop it at once when a response aborts it.
async fn drive<C>(
    mut conn: Pin<&mut C>,
    drain: impl Fn(Pin<&mut C>),
    activity: &Activity,
    idle_timeout: Duration,
    peer: SocketAddr,
    app: &App,
) -> Driven
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    let mut draining = false;
    loop {
        let polled = handoff::until_handoff(conn.as_mut(), activity);
        tokio::select! {
            res = polled => {
                return match res {
                    None => Driven::HandOff,
                    Some(Err(e)) => {
                        tracing::debug!(peer = %peer, cause = %e, "connection ended with an error");
                        Driven::Ended
                    }
                    Some(Ok(())) => Driven::Ended,
                };
            }
            _ = app.handles.shutdown.cancelled(), if !draining => {
                drain(conn.as_mut());
                draining = true;
            }
            _ = activity.aborted() => {
                tracing::debug!(peer = %peer, "connection aborted by its response");
                return Driven::Ended;
            }
            _ = activity.idle_for(idle_timeout), if !draining => {
                drain(conn.as_mut());
                draining = true;
            }
        }
    }
}

async fn respond(
    app: &Arc<App>,
    kind: Listener,
    req: Request<Incoming>,
    peer: SocketAddr,
    guard: RequestGuard,
    abort: Option<ConnectionAbort>,
) -> Response<TrackedBody> {
    let arrival = Arrival::note(app, req.method(), req.uri(), req.headers(), peer);
    let resp = match kind {
        Listener::Main => {
            crate::routing::handle(&app.handles, app.snapshot(), req, peer.ip(), abort).await
        }
        Listener::Admin => admin::handle(&app.admin(), req).await,
    };
    arrival.track(resp, kind, guard)
}

/// The access-log line of a request, begun when it arrives (the request moves on to the
/// handler) and finished with its response; `None` inside when access logging is off,
/// since this runs on every request. Boxed, so that a request's future keeps a pointer,
/// not the line's room, and the one allocation goes on to the response body.
struct Arrival(Option<Box<AccessLog>>);

impl Arrival {
    fn note(app: &App, method: &Method, uri: &Uri, headers: &HeaderMap, peer: SocketAddr) -> Self {
        let snapshot = app.snapshot();
        if !snapshot.config.log.access {
            return Arrival(None);
        }
        let client = crate::proxy::client_ip::client_ip(
            peer.ip(),
            headers,
            &snapshot.config.proxy.trusted_proxies,
        );
        Arrival(Some(Box::new(AccessLog {
            method: method.clone(),
            path: uri.path().to_string(),
            client,
            started: Instant::now(),
            // The response's, set by `track`.
            status: http::StatusCode::OK,
            listener: "",
            upstream: None,
        })))
    }

    /// Wrap `resp`'s body so the request settles (log line, idle accounting) when it ends.
    fn track(
        self,
        resp: Response<Body>,
        kind: Listener,
        guard: RequestGuard,
    ) -> Response<TrackedBody> {
        let log = self.0.map(|mut log| {
            log.status = resp.status();
            log.listener = kind.as_str();
            log.upstream = resp.extensions().get::<UpstreamTime>().map(|t| t.0);
            log
        });
        resp.map(|body| TrackedBody::new(body, log, guard))
    }
}
