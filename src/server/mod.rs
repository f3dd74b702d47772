//! Accepting client connections: HTTP/1.1 and h2c (prior knowledge) on one port, upgrades,
//! a cap on concurrent connections, header-read and idle timeouts, graceful shutdown.
//!
//! Each connection's first request head is read here ([`first_request`]) to pick HTTP/1 or
//! HTTP/2 and to serve event streams without hyper ([`direct_sse`]); all else is hyper's.

mod activity;
mod direct_sse;
mod first_request;
mod observe;
mod send_timeout;
pub mod signals;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use http::{HeaderMap, Method, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

pub use activity::{Activity, RequestGuard};
pub use send_timeout::SendTimeout;

use crate::admin;
use crate::app::App;
use crate::body::Body;
use crate::proxy::forward::UpstreamTime;
use crate::sse::ConnectionAbort;
use direct_sse::{Framing, Handoff, Streaming};
use first_request::{FirstRequest, Rewind};
use observe::{AccessLog, TrackedBody};

/// Which listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
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
pub async fn serve(listener: TcpListener, kind: Listener, app: Arc<App>, tasks: TaskTracker) {
    // Past the cap we stop calling accept(): new connections wait in the kernel's listen
    // backlog until a slot frees (and are refused by the kernel once the backlog is full),
    // which sheds load without unpoll spending memory on them.
    let max = app.snapshot().config.proxy.max_connections;
    let slots = Arc::new(Semaphore::new(max));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = app.handles.shutdown.cancelled() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(listener = kind.as_str(), cause = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = app.handles.shutdown.cancelled() => return,
        };
        let app = app.clone();
        tasks.spawn(async move {
            app.handles.metrics.open_connections.inc();
            serve_connection(stream, peer, kind, &app).await;
            app.handles.metrics.open_connections.dec();
            drop(permit);
        });
    }
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, kind: Listener, app: &Arc<App>) {
    let _ = stream.set_nodelay(true);
    let (header_read_timeout, limit, send_timeout) = {
        let config = &app.snapshot().config.proxy;
        (
            config.header_read_timeout,
            config.max_header_bytes,
            config.send_timeout,
        )
    };
    let mut stream = SendTimeout::new(stream, send_timeout);
    let first = {
        // Only the main listener has streams; the snapshot is not held across the read.
        let direct = |method: &http::Method, path: &str| {
            kind == Listener::Main && crate::routing::is_stream(&app.snapshot(), method, path)
        };
        // Boxed: the read's state is needed only until the head is in.
        let read = Box::pin(tokio::time::timeout(
            header_read_timeout,
            first_request::read(&mut stream, limit, direct),
        ));
        // A connection that has sent nothing yet has nothing to drain: it closes at once
        // on shutdown, as hyper closes its idle ones.
        tokio::select! {
            first = read => match first {
                Ok(first) => first,
                Err(_) => return,
            },
            _ = app.handles.shutdown.cancelled() => return,
        }
    };
    // The long-lived halves are boxed so this task's future stays small for idle streams.
    match first {
        FirstRequest::Gone => {}
        FirstRequest::Hyper { prefix, http2 } => {
            hyper_then_stream(Rewind::new(prefix, stream), http2, peer, kind, app).await;
        }
        FirstRequest::Direct { parts, prefix } => {
            // Each step is its own box (bound by `let`, so no temporary outlives it): what
            // stays for the life of the stream is only the last one.
            let open = Box::pin(direct_sse::open(app, parts, peer));
            let Some(opened) = open.await else {
                hyper_then_stream(Rewind::new(prefix, stream), false, peer, kind, app).await;
                return;
            };
            drop(prefix);
            let head = Box::pin(direct_sse::write_head(opened, &mut stream));
            let Some(streaming) = head.await else {
                return;
            };
            let body = Box::pin(direct_sse::stream_body(
                streaming,
                Framing::Close,
                &mut stream,
            ));
            body.await;
        }
    }
}

/// hyper's part of a connection, then the event stream it handed off, if any: each in a
/// box of its own, hyper's freed before the stream starts.
async fn hyper_then_stream<S>(
    io: Rewind<S>,
    http2: bool,
    peer: SocketAddr,
    kind: Listener,
    app: &Arc<App>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match Box::pin(serve_hyper(io, http2, peer, kind, app)).await {
        Some(AfterHyper::Stream(handoff)) => {
            Box::pin(direct_sse::stream_handed_off(handoff)).await;
        }
        Some(AfterHyper::Upgraded(task)) => task.await,
        None => {}
    }
}

/// What a connection does once hyper is done with it.
enum AfterHyper<S> {
    /// Write the event stream whose head hyper wrote.
    Stream(Box<Handoff<S>>),
    /// Serve the upgraded connection (a WebSocket stream).
    Upgraded(crate::sse::UpgradedTask),
}

/// Serve a connection with hyper: HTTP/1.1 (with upgrades) or HTTP/2, with the idle
/// timeout, graceful shutdown and response-initiated aborts. An HTTP/1.1 event stream
/// ends hyper's part: the connection is returned with the stream's body, for
/// [`direct_sse`] to write.
async fn serve_hyper<S>(
    mut io: Rewind<S>,
    http2: bool,
    peer: SocketAddr,
    kind: Listener,
    app: &Arc<App>,
) -> Option<AfterHyper<Rewind<S>>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let service = {
        let app = app.clone();
        let activity = activity.clone();
        service_fn(move |req: Request<Incoming>| {
            // On HTTP/2 the other streams of the connection are innocent: no abort.
            let abort = (req.version() <= http::Version::HTTP_11)
                .then(|| ConnectionAbort::new(activity.clone()));
            // hyper frames a body of unknown length with chunks only for HTTP/1.1 clients.
            let hand_off = (req.version() == http::Version::HTTP_11).then(|| activity.clone());
            let app = app.clone();
            let guard = RequestGuard::begin(activity.clone());
            async move {
                let resp = respond(&app, kind, req, peer, guard, abort).await;
                Ok::<_, Infallible>(match hand_off {
                    Some(activity) => park_event_stream(resp, activity),
                    None => resp,
                })
            }
        })
    };
    let config = &app.snapshot().config.proxy;
    let idle_timeout = config.idle_timeout;
    if http2 {
        let conn = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
            .serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let drain = |c: Pin<&mut _>| http2::Connection::graceful_shutdown(c);
        drive(conn, drain, &activity, idle_timeout, peer, app).await;
        return None;
    }
    io.watch_flushes(activity.clone());
    let mut conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes.max(8192))
        .serve_connection(TokioIo::new(io), service)
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
    let handoff = match driven {
        // After a `101` hyper hands the socket to the upgrade's waiter and ends.
        Driven::Ended => activity.take_upgraded().map(AfterHyper::Upgraded),
        // Dropping hyper's side of the connection frees its buffers; bytes a client sent
        // after the stream's request (nothing, from an event source) go with them.
        Driven::HandOff => conn.into_parts().and_then(|parts| {
            let io = parts.io.into_inner();
            let streaming = Streaming::parked(activity.clone())?;
            Some(AfterHyper::Stream(Box::new(Handoff { streaming, io })))
        }),
    };
    // A stream parked by a connection that ended first holds the connection's activity, as
    // does an upgrade's task when the connection did not upgrade.
    drop(activity.take_parked());
    drop(activity.take_upgraded());
    handoff
}

/// An HTTP/1.1 event stream leaves hyper once its head is written: its body is parked in
/// the connection's `activity` and hyper gets a stand-in that never yields.
fn park_event_stream(
    resp: Response<TrackedBody>,
    activity: Arc<Activity>,
) -> Response<TrackedBody> {
    if resp.status() != http::StatusCode::OK
        || resp.extensions().get::<crate::sse::EventStream>().is_none()
    {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    activity.park(body);
    let stand_in = TrackedBody::untracked(direct_sse::handoff_body(activity));
    Response::from_parts(parts, stand_in)
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
        // hyper encodes and flushes a parked stream's head within one poll of the
        // connection; checked after each poll.
        let polled = std::future::poll_fn(|cx| match conn.as_mut().poll(cx) {
            Poll::Ready(res) => Poll::Ready(Some(res)),
            Poll::Pending if activity.ready_for_handoff() => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        });
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

/// What the access-log line needs from a request, noted when it arrives (the request
/// moves on to the handler); `None` inside when access logging is off, since this runs
/// on every request.
struct Arrival(Option<(Method, String, IpAddr, Instant)>);

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
        Arrival(Some((
            method.clone(),
            uri.path().to_string(),
            client,
            Instant::now(),
        )))
    }

    /// Wrap `resp`'s body so the request settles (log line, idle accounting) when it ends.
    fn track(
        self,
        resp: Response<Body>,
        kind: Listener,
        guard: RequestGuard,
    ) -> Response<TrackedBody> {
        let log = self.0.map(|(method, path, client, started)| AccessLog {
            method,
            path,
            client,
            status: resp.status(),
            listener: kind.as_str(),
            started,
            upstream: resp.extensions().get::<UpstreamTime>().map(|t| t.0),
        });
        resp.map(|body| TrackedBody::new(body, log, guard))
    }
}
