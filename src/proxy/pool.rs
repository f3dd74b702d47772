//! Keep-alive connections to the upstream: hyper's HTTP/1 client connections kept on a
//! stack, taken for one request and put back when both its request body has been sent and
//! its response body read (a connection still uploading when the app answered early is
//! closed instead: the next request would queue behind the rest of the upload).
//!
//! At most `max_connections` are open, idle and busy together (each holds a semaphore
//! permit for its life). Past it a request waits for a connection put back or a permit
//! freed, within `connect_timeout`, then fails with [`PoolError::Saturated`].
//!
//! unpoll talks to exactly one upstream, so the pool is one `Vec` behind a mutex held for a
//! push or a pop. hyper-util's general client cost more per request than the whole rest of
//! the proxy path (a pool map keyed by hashed scheme and authority, a checkout racing a
//! lazy connect, a task spawned per request to return the connection: see BENCHMARKS.md).
//!
//! Last in, first out: under load the same few warm connections serve everything, and the
//! bottom of the stack is always the longest idle, so expiry is a cut there.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

use crate::body::{Body, BoxError, boxed};
use crate::metrics::{ErrorLabels, ProxyMetrics};

/// Why a connection could not be had or used.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Name resolution or TCP connect failed (refused, unreachable).
    #[error("connect to {authority}: {source}")]
    Connect {
        /// The upstream's `host:port`.
        authority: String,
        /// What the connect reported.
        #[source]
        source: std::io::Error,
    },
    /// The connect did not finish within `proxy.connect_timeout`.
    #[error("connect to {0} timed out")]
    ConnectTimeout(String),
    /// `max_connections` are open and none came free within `proxy.connect_timeout`.
    #[error("all {0} upstream connections busy")]
    Saturated(usize),
    /// The HTTP exchange failed: the connection broke or the upstream spoke invalid HTTP.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// Settings of a pool.
#[derive(Clone)]
pub struct PoolSettings {
    /// `host:port` of the upstream.
    pub authority: String,
    /// Deadline for resolving and connecting.
    pub connect_timeout: Duration,
    /// Idle connections kept at most; more are closed when put back.
    pub max_idle: usize,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
    /// Longest silence allowed between two reads of a response body (`proxy.read_timeout`).
    pub read_timeout: Duration,
    /// Connections open at most, idle and busy (`proxy.max_upstream_connections`).
    pub max_connections: usize,
    /// Where read timeouts and connection waits are counted.
    pub metrics: ProxyMetrics,
}

/// The upstream's keep-alive connections.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    settings: PoolSettings,
    idle: Mutex<Vec<Idle>>,
    /// One permit per open connection, held by its connection task.
    slots: Arc<Semaphore>,
    /// Signalled when a connection is put back, for requests waiting at the cap.
    returned: Notify,
    /// `unpoll_upstream_errors_total{kind="read_timeout"}`, resolved once: each response
    /// body carries a handle (one reference count, not the whole metrics set).
    read_timeouts: Counter,
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

/// A connection taken from the pool (or new) for one request.
pub struct Conn {
    sender: SendRequest<Body>,
    /// Whether it served a request before (a new connection cannot be stale).
    pub reused: bool,
    pool: Weak<Shared>,
    /// Set once the request body was sent whole; `None` when there was none.
    uploaded: Option<Arc<AtomicBool>>,
}

impl Pool {
    /// An empty pool. Idle connections past `idle_timeout` are closed by a sweep every
    /// `idle_timeout`, which stops when the pool is dropped.
    pub fn new(settings: PoolSettings) -> Self {
        let read_timeouts = settings
            .metrics
            .upstream_errors
            .get_or_create(&ErrorLabels {
                kind: "read_timeout",
            })
            .clone();
        let shared = Arc::new(Shared {
            slots: Arc::new(Semaphore::new(settings.max_connections)),
            read_timeouts,
            settings,
            idle: Mutex::new(Vec::new()),
            returned: Notify::new(),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(sweep(Arc::downgrade(&shared)));
        }
        Pool { shared }
    }

    /// A connection ready for a request: the most recently used idle one, or a new one.
    /// At the cap, the first of the two to come free, waited for within `connect_timeout`.
    pub async fn checkout(&self) -> Result<Conn, PoolError> {
        let shared = &self.shared;
        let mut waited: Option<Instant> = None;
        let result = loop {
            // Registered before looking, so a connection put back meanwhile still wakes us.
            let returned = shared.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some(conn) = self.take_idle().await {
                break Ok(conn);
            }
            if let Ok(permit) = shared.slots.clone().try_acquire_owned() {
                // Boxed: connecting is rare under load and its future would make every
                // request's larger (it is copied whole as it moves through the request path).
                break Box::pin(self.connect_with(permit)).await;
            }
            let since = *waited.get_or_insert_with(Instant::now);
            let deadline = tokio::time::Instant::from_std(since + shared.settings.connect_timeout);
            tokio::select! {
                permit = shared.slots.clone().acquire_owned() => match permit {
                    Ok(permit) => break Box::pin(self.connect_with(permit)).await,
                    // Never closed; treated as saturated rather than trusted.
                    Err(_) => break Err(PoolError::Saturated(shared.settings.max_connections)),
                },
                () = &mut returned => {}
                () = tokio::time::sleep_until(deadline) => {
                    break Err(PoolError::Saturated(shared.settings.max_connections));
                }
            }
        };
        if let Some(since) = waited {
            shared
                .settings
                .metrics
                .upstream_connection_wait
                .observe(since.elapsed().as_secs_f64());
        }
        result
    }

    /// The newest idle connection that is ready for a request. Put back once its response
    /// was read, a connection may not have asked for the next request yet: that is a moment
    /// away, unless it is closed or stuck, which `connect_timeout` bounds.
    async fn take_idle(&self) -> Option<Conn> {
        let bound = self.shared.settings.connect_timeout;
        while let Some(mut sender) = self.shared.pop_unexpired() {
            if !sender.is_ready() {
                match tokio::time::timeout(bound, sender.ready()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) | Err(_) => continue,
                }
            }
            return Some(Conn {
                sender,
                reused: true,
                pool: Arc::downgrade(&self.shared),
                uploaded: None,
            });
        }
        None
    }

    /// A new connection, its hyper task spawned, once a slot is free (waited for within
    /// `connect_timeout`).
    pub async fn connect(&self) -> Result<Conn, PoolError> {
        let settings = &self.shared.settings;
        let permit = match self.shared.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let since = Instant::now();
                let permit = tokio::time::timeout(
                    settings.connect_timeout,
                    self.shared.slots.clone().acquire_owned(),
                )
                .await;
                settings
                    .metrics
                    .upstream_connection_wait
                    .observe(since.elapsed().as_secs_f64());
                match permit {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_)) | Err(_) => {
                        return Err(PoolError::Saturated(settings.max_connections));
                    }
                }
            }
        };
        self.connect_with(permit).await
    }

    /// A new connection holding `permit` until its task ends.
    async fn connect_with(&self, permit: OwnedSemaphorePermit) -> Result<Conn, PoolError> {
        let settings = &self.shared.settings;
        let stream = tokio::time::timeout(settings.connect_timeout, connect(&settings.authority))
            .await
            .map_err(|_| PoolError::ConnectTimeout(settings.authority.clone()))??;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        let open = settings.metrics.upstream_connections.clone();
        open.inc();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(cause = %e, "upstream connection ended with an error");
            }
            // An upgraded connection leaves the count here: its tunnel is the client's.
            open.dec();
            drop(permit);
        });
        Ok(Conn {
            sender,
            reused: false,
            pool: Arc::downgrade(&self.shared),
            uploaded: None,
        })
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // A panic while holding the lock cannot leave a Vec half-pushed.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The newest idle connection that is neither expired nor closed. Expired ones are the
    /// bottom of the stack: finding one drops it and everything older.
    fn pop_unexpired(&self) -> Option<SendRequest<Body>> {
        let mut idle = self.lock();
        while let Some(top) = idle.pop() {
            if top.since.elapsed() > self.settings.idle_timeout {
                idle.clear();
                return None;
            }
            if !top.sender.is_closed() {
                return Some(top.sender);
            }
        }
        None
    }

    fn put_back(&self, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < self.settings.max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
            drop(idle);
            self.returned.notify_one();
        }
    }

    /// Close idle connections older than the idle timeout (the oldest are at the bottom).
    fn expire(&self) {
        let timeout = self.settings.idle_timeout;
        let mut idle = self.lock();
        let fresh = idle
            .iter()
            .position(|i| i.since.elapsed() <= timeout)
            .unwrap_or(idle.len());
        idle.drain(..fresh);
        idle.retain(|i| !i.sender.is_closed());
    }
}

async fn sweep(shared: Weak<Shared>) {
    let period = match shared.upgrade() {
        Some(s) => s.settings.idle_timeout.max(Duration::from_millis(100)),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    loop {
        tick.tick().await;
        match shared.upgrade() {
            Some(s) => s.expire(),
            None => return,
        }
    }
}

/// Resolve `authority` and connect to the first address that accepts.
async fn connect(authority: &str) -> Result<TcpStream, PoolError> {
    let failed = |source| PoolError::Connect {
        authority: authority.to_owned(),
        source,
    };
    // An IP literal (the usual sidecar setup) skips the resolver thread entirely.
    let addrs: Vec<SocketAddr> = match authority.parse::<SocketAddr>() {
        Ok(addr) => vec![addr],
        Err(_) => tokio::net::lookup_host(authority)
            .await
            .map_err(failed)?
            .collect(),
    };
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(failed(last))
}

/// What a failed send left: the request back when it never left (safe to send again on
/// another connection, whatever it is).
pub struct SendError {
    /// The failure.
    pub error: hyper::Error,
    /// The request, when it was not sent.
    pub unsent: Option<Request<Body>>,
}

impl Conn {
    /// Send `req` and wait for the response head. The response body, when read to its
    /// end, puts the connection back in the pool.
    pub async fn send(mut self, req: Request<Body>) -> Result<Response<PooledBody>, SendError> {
        let req = if req.body().is_end_stream() {
            req
        } else {
            let uploaded = Arc::new(AtomicBool::new(false));
            self.uploaded = Some(uploaded.clone());
            req.map(|inner| boxed(Uploading { inner, uploaded }))
        };
        let silence = self.pool.upgrade().map(|p| Silence {
            limit: p.settings.read_timeout,
            timeouts: p.read_timeouts.clone(),
            timer: None,
            progressed: false,
        });
        match self.sender.try_send_request(req).await {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                // A switched protocol owns the connection from now on.
                let conn = (parts.status != StatusCode::SWITCHING_PROTOCOLS).then_some(self);
                Ok(Response::from_parts(
                    parts,
                    PooledBody::new(body, conn, silence),
                ))
            }
            Err(mut e) => Err(SendError {
                unsent: e.take_message(),
                error: e.into_error(),
            }),
        }
    }

    fn put_back(self) {
        // The app answered before the request body was all sent (an early 413, 401):
        // the next request would be written behind the rest of it.
        if let Some(uploaded) = &self.uploaded
            && !uploaded.load(Ordering::Acquire)
        {
            return;
        }
        if let Some(pool) = self.pool.upgrade() {
            pool.put_back(self.sender);
        }
    }
}

/// A request body that records when it has been sent whole.
struct Uploading {
    inner: Body,
    uploaded: Arc<AtomicBool>,
}

impl Uploading {
    fn check_end(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.uploaded.store(true, Ordering::Release);
        }
        end
    }
}

impl HttpBody for Uploading {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.uploaded.store(true, Ordering::Release),
            Poll::Ready(Some(Ok(_))) => {
                self.check_end();
            }
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.check_end()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The upstream sent no byte of a response body for `proxy.read_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("upstream sent nothing for {0:?} (proxy.read_timeout)")]
pub struct ReadTimeout(pub Duration);

/// The read timeout of one response body: the silence since the last frame.
struct Silence {
    limit: Duration,
    timeouts: Counter,
    /// Armed on the first wait only: a body that arrives with its head (most do) never
    /// registers a timer.
    timer: Option<Pin<Box<Sleep>>>,
    /// A frame arrived since the timer was last set.
    progressed: bool,
}

impl Silence {
    /// Poll while the body has nothing: ready when the silence has lasted too long.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = tokio::time::Instant::now() + self.limit;
        let timer = match &mut self.timer {
            Some(timer) => {
                if std::mem::take(&mut self.progressed) {
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        timer.as_mut().poll(cx)
    }
}

/// An upstream response body that returns its connection to the pool at its end. Dropped
/// before the end (the client went away), it closes the connection instead: unread bytes
/// would corrupt the next response. A body silent for `read_timeout` fails with
/// [`ReadTimeout`], which aborts the client's response (hyper does not end it cleanly) and
/// closes the connection.
pub struct PooledBody {
    inner: Incoming,
    conn: Option<Conn>,
    silence: Option<Silence>,
}

impl PooledBody {
    fn new(inner: Incoming, conn: Option<Conn>, silence: Option<Silence>) -> Self {
        let mut body = PooledBody {
            inner,
            conn,
            silence,
        };
        // No body at all (HEAD, 204, 304, `Content-Length: 0`): nothing will poll it.
        body.release_if_done();
        body
    }

    fn release_if_done(&mut self) {
        if self.inner.is_end_stream()
            && let Some(conn) = self.conn.take()
        {
            conn.put_back();
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) => {
                if let Some(silence) = &mut self.silence {
                    silence.progressed = true;
                }
                self.release_if_done();
            }
            Poll::Ready(None) => {
                if let Some(conn) = self.conn.take() {
                    conn.put_back();
                }
            }
            // Broken: dropping the sender lets the connection close.
            Poll::Ready(Some(Err(_))) => self.conn = None,
            Poll::Pending => {
                if let Some(silence) = &mut self.silence
                    && silence.poll_expired(cx).is_ready()
                {
                    let limit = silence.limit;
                    silence.timeouts.inc();
                    self.silence = None;
                    // Unread bytes may follow: the connection cannot serve another request.
                    self.conn = None;
                    return Poll::Ready(Some(Err(Box::new(ReadTimeout(limit)))));
                }
            }
        }
        polled.map(|frame| frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
