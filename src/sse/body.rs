//! An SSE response body for one [`Subscription`]: `retry:` first, then the subscription's
//! frames, with a heartbeat comment every `heartbeat`. It ends when the subscription is
//! closed (overflow) or when the shutdown token fires, and unsubscribes when dropped (the
//! client went away).
//!
//! Nothing runs for an idle stream except its heartbeat timer: no task per subscriber, the
//! connection task is woken only by a publish, the timer or shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::encode;
use crate::hub::{CloseReason, Subscription};

/// Per-stream settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseOptions {
    /// Interval of `:` comments on the stream. Default 15 s.
    pub heartbeat: Duration,
    /// The `retry:` hint: how long the browser waits before reconnecting. Default 2 s.
    pub retry: Duration,
}

impl Default for SseOptions {
    fn default() -> Self {
        SseOptions {
            heartbeat: Duration::from_secs(15),
            retry: Duration::from_secs(2),
        }
    }
}

/// The body of an SSE response.
pub struct SseBody {
    sub: Subscription,
    /// The `retry:` frame, sent first.
    preamble: Option<Bytes>,
    /// Fires every `heartbeat`; boxed because `Sleep` is `!Unpin`.
    heartbeat: Pin<Box<Sleep>>,
    interval: Duration,
    /// Resolves when the server shuts down.
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    done: bool,
}

impl SseBody {
    /// Stream `sub` until it closes or `shutdown` fires.
    pub fn new(sub: Subscription, options: SseOptions, shutdown: CancellationToken) -> SseBody {
        // A zero interval would spin; config validation refuses it, this is the backstop.
        let interval = options.heartbeat.max(Duration::from_millis(100));
        SseBody {
            sub,
            preamble: Some(encode::retry(options.retry)),
            heartbeat: Box::pin(tokio::time::sleep(interval)),
            interval,
            shutdown: Box::pin(shutdown.cancelled_owned()),
            done: false,
        }
    }

    /// The subscription streamed.
    pub fn subscription(&self) -> &Subscription {
        &self.sub
    }
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(retry) = this.preamble.take() {
            return Poll::Ready(Some(Ok(Frame::data(retry))));
        }
        if this.shutdown.as_mut().poll(cx).is_ready() {
            this.sub.close(CloseReason::Shutdown);
            this.done = true;
            return Poll::Ready(None);
        }
        match this.sub.poll_recv(cx) {
            Poll::Ready(Some(frame)) => return Poll::Ready(Some(Ok(Frame::data(frame)))),
            Poll::Ready(None) => {
                this.done = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        if this.heartbeat.as_mut().poll(cx).is_ready() {
            let next = Instant::now() + this.interval;
            this.heartbeat.as_mut().reset(next);
            return Poll::Ready(Some(Ok(Frame::data(encode::HEARTBEAT))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl std::fmt::Debug for SseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseBody")
            .field("sub", &self.sub)
            .field("interval", &self.interval)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}
