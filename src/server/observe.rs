//! The end of a request's life: its access-log line and its place in the connection's idle
//! accounting, both settled when the response body finishes (or the client goes away).

use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::activity::RequestGuard;
use crate::body::{Body, BoxError};

/// What the access-log line says about one request.
pub struct AccessLog {
    /// Request method.
    pub method: Method,
    /// Request path, without the query string (it may carry tokens).
    pub path: String,
    /// Client address.
    pub client: IpAddr,
    /// Response status.
    pub status: StatusCode,
    /// The listener it arrived on (`main`, `admin`).
    pub listener: &'static str,
    /// When the request arrived.
    pub started: Instant,
    /// Time to the upstream's response head, if the upstream was asked.
    pub upstream: Option<Duration>,
}

/// Settled once, when the body ends or is dropped.
struct Completion {
    // Boxed: every response body in flight and every open stream holds this, and with
    // access logging off (the default for streams-heavy setups) the line's 120 bytes would
    // be room for nothing.
    log: Option<Box<AccessLog>>,
    bytes: u64,
    _request: RequestGuard,
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(log) = &self.log {
            tracing::info!(
                target: "unpoll::access",
                method = %log.method,
                path = %log.path,
                status = log.status.as_u16(),
                listener = log.listener,
                client = %log.client,
                duration_ms = log.started.elapsed().as_secs_f64() * 1000.0,
                upstream_ms = log.upstream.map(|d| d.as_secs_f64() * 1000.0),
                bytes = self.bytes,
                "request"
            );
        }
    }
}

/// A response body that counts its bytes and settles the request when it ends.
pub struct TrackedBody {
    inner: Body,
    completion: Option<Completion>,
}

impl TrackedBody {
    /// A body that settles nothing: a stand-in for a response whose real body is written
    /// elsewhere (and settled there).
    pub fn untracked(inner: Body) -> Self {
        TrackedBody {
            inner,
            completion: None,
        }
    }

    /// Wrap `inner`; `log` is `None` when access logging is off.
    pub fn new(inner: Body, log: Option<Box<AccessLog>>, request: RequestGuard) -> Self {
        TrackedBody {
            inner,
            completion: Some(Completion {
                log,
                bytes: 0,
                _request: request,
            }),
        }
    }
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(c)) = (frame.data_ref(), this.completion.as_mut()) {
                    c.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                this.completion.take();
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
