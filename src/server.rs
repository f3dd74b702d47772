//! Accepting client connections: HTTP/1.1 and h2c (prior knowledge) on one port, upgrades,
//! a cap on concurrent connections, header-read and idle timeouts, graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::app::App;
use crate::proxy::observe::{AccessLog, TrackedBody, UpstreamTime};

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
            _ = app.shutdown.cancelled() => return,
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
            _ = app.shutdown.cancelled() => return,
        };
        let app = app.clone();
        tasks.spawn(async move {
            app.metrics.open_connections.inc();
            serve_connection(stream, peer, kind, &app).await;
            app.metrics.open_connections.dec();
            drop(permit);
        });
    }
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, kind: Listener, app: &Arc<App>) {
    let _ = stream.set_nodelay(true);
    let config = &app.snapshot().config.proxy;
    let idle_timeout = config.idle_timeout;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX));

    let activity = Arc::new(Activity::default());
    let service = {
        let app = app.clone();
        let activity = activity.clone();
        service_fn(move |mut req: Request<Incoming>| {
            if req.version() <= http::Version::HTTP_11 {
                req.extensions_mut()
                    .insert(ConnectionAbort(activity.clone()));
            }
            let app = app.clone();
            let guard = RequestGuard::begin(activity.clone());
            async move { Ok::<_, Infallible>(respond(&app, kind, req, peer, guard).await) }
        })
    };
    let stream = SendTimeout::new(stream, config.send_timeout);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(peer = %peer, cause = %e, "connection ended with an error");
                }
                return;
            }
            _ = app.shutdown.cancelled(), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            _ = activity.abort.notified() => {
                tracing::debug!(peer = %peer, "connection aborted by its response");
                return;
            }
            _ = activity.idle_for(idle_timeout), if !draining => {
                conn.as_mut().graceful_shutdown();
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
) -> Response<TrackedBody> {
    let started = Instant::now();
    let snapshot = app.snapshot();
    let access = snapshot.config.log.access;
    // What the access log shows as the client, resolved before the request moves on; only
    // when there is a log line to write (this runs on every request).
    let head = access.then(|| {
        let client = crate::proxy::client_ip::client_ip(
            peer.ip(),
            req.headers(),
            &snapshot.config.proxy.trusted_proxies,
        );
        (req.method().clone(), req.uri().path().to_string(), client)
    });
    drop(snapshot);
    let resp = match kind {
        Listener::Main => crate::proxy::handle(app, req, peer.ip()).await,
        Listener::Admin => admin::handle(app, req).await,
    };
    let log = head.map(|(method, path, client)| AccessLog {
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

/// Request activity of one connection, for the idle timeout: hyper closes a connection whose
/// request head is slow (`header_read_timeout`) but not one that simply sits idle between
/// requests, so we do.
#[derive(Default)]
pub struct Activity {
    /// Requests whose response is not finished yet.
    in_flight: AtomicUsize,
    /// Bumped at every request start and end; unchanged across a sleep means no activity.
    generation: AtomicU64,
    /// Woken when `in_flight` drops to zero.
    became_idle: Notify,
    /// Notified by [`ConnectionAbort::abort`]: the connection is dropped at once.
    abort: Notify,
}

/// Request extension (HTTP/1 only) that lets a response end its whole connection. An SSE
/// stream whose client stopped reading overflows its queue while hyper is blocked writing
/// to the full socket and never polls the body again; without this the connection (and its
/// kernel buffers) would stay open forever. On HTTP/2 the other streams of the connection
/// are innocent, so the slow stream just ends when next polled.
#[derive(Clone)]
pub struct ConnectionAbort(Arc<Activity>);

impl ConnectionAbort {
    /// Close the connection now.
    pub fn abort(&self) {
        // notify_one stores a permit if the connection loop is not waiting at this moment.
        self.0.abort.notify_one();
    }
}

impl std::fmt::Debug for ConnectionAbort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectionAbort")
    }
}

impl Activity {
    /// Resolves once no request has been in flight or started for `timeout`. Costs one
    /// timer per `timeout` while idle and none while requests are in flight (a long SSE
    /// response keeps the connection busy, not idle).
    async fn idle_for(&self, timeout: Duration) {
        loop {
            if self.in_flight.load(Ordering::Acquire) > 0 {
                self.became_idle.notified().await;
                continue;
            }
            let seen = self.generation.load(Ordering::Acquire);
            tokio::time::sleep(timeout).await;
            if self.in_flight.load(Ordering::Acquire) == 0
                && self.generation.load(Ordering::Acquire) == seen
            {
                return;
            }
        }
    }
}

/// One request in flight on a connection; dropped when its response body ends.
pub struct RequestGuard(Arc<Activity>);

impl RequestGuard {
    fn begin(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.generation.fetch_add(1, Ordering::AcqRel);
        RequestGuard(activity)
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.generation.fetch_add(1, Ordering::AcqRel);
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            // notify_one stores a permit if the watcher is between its check and its await.
            self.0.became_idle.notify_one();
        }
    }
}

/// A client socket whose writes fail once the client has accepted nothing for `timeout`.
///
/// hyper has no write timeout: a client that stops reading (or vanished without a FIN) would
/// hold its connection, its task and the response's upstream connection forever. The timer
/// exists only while a write is blocked, so a connection that keeps up costs nothing.
pub struct SendTimeout<S> {
    inner: S,
    timeout: Duration,
    /// Armed when a write first returns `Pending`; cleared by any progress.
    blocked: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> SendTimeout<S> {
    /// Wrap `inner`.
    pub fn new(inner: S, timeout: Duration) -> Self {
        SendTimeout {
            inner,
            timeout,
            blocked: None,
        }
    }

    fn on_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                self.blocked = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let sleep = self
                    .blocked
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client accepted no data within proxy.send_timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SendTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SendTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.on_write(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.on_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.on_write(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
