//! An SSE response body for one [`Subscription`]: `retry:` first, then the subscription's
//! frames, with a heartbeat comment every `heartbeat`. It ends when the subscription is
//! closed (overflow) or when the shutdown token fires, and unsubscribes when dropped (the
//! client went away).
//!
//! A subscriber that fell behind (closed as overflow) ends its body with [`Overflowed`]:
//! on HTTP/2 hyper then resets just that stream (`RST_STREAM`), where a clean end would
//! look like a finished response; on HTTP/1 its connection was already aborted.
//!
//! Nothing runs for an idle stream except its heartbeat timer: no task per subscriber, the
//! connection task is woken only by a publish, the timer or shutdown.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::encode;
use crate::hub::{CloseReason, Subscription};

/// The error an event stream's body ends with when its subscriber fell behind (its queue
/// overflowed and history no longer holds what it missed). The client reconnects with
/// `Last-Event-ID` and gets a `reset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the subscriber fell behind its stream (slow consumer)")]
pub struct Overflowed;

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
    /// Open streams of the rule that serves this one; incremented by
    /// [`SseBody::counted`], decremented on drop.
    gauge: Option<Gauge>,
    /// Open stream responses of the whole server; see [`SseBody::connection`].
    connection: Option<Gauge>,
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
            gauge: None,
            connection: None,
        }
    }

    /// Count this stream in `gauge` while it is open.
    pub fn counted(mut self, gauge: Gauge) -> SseBody {
        gauge.inc();
        if let Some(old) = self.gauge.replace(gauge) {
            old.dec();
        }
        self
    }

    /// Count this stream once in `gauge` (the server's open stream responses) while it is
    /// open.
    pub fn connection(mut self, gauge: Gauge) -> SseBody {
        gauge.inc();
        if let Some(old) = self.connection.replace(gauge) {
            old.dec();
        }
        self
    }

    /// The subscription streamed.
    pub fn subscription(&self) -> &Subscription {
        &self.sub
    }
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Overflowed;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Overflowed>>> {
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
                if this.sub.closed() == Some(CloseReason::Overflow) {
                    return Poll::Ready(Some(Err(Overflowed)));
                }
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

impl Drop for SseBody {
    fn drop(&mut self) {
        if let Some(gauge) = &self.gauge {
            gauge.dec();
        }
        if let Some(gauge) = &self.connection {
            gauge.dec();
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Hub, HubConfig};
    use http_body_util::BodyExt;

    fn body(hub: &Hub, shutdown: &CancellationToken) -> SseBody {
        let sub = hub.subscribe(&["a".to_string()], None, None).unwrap();
        let options = SseOptions {
            heartbeat: Duration::from_secs(15),
            retry: Duration::from_secs(2),
        };
        SseBody::new(sub, options, shutdown.clone())
    }

    async fn next(b: &mut SseBody) -> Option<Bytes> {
        b.frame().await.map(|f| f.unwrap().into_data().unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn retry_first_then_events_and_heartbeats_on_time() {
        let hub = Hub::new(HubConfig::default());
        let shutdown = CancellationToken::new();
        let mut b = body(&hub, &shutdown);
        assert_eq!(next(&mut b).await.unwrap(), "retry: 2000\n\n");
        let t0 = Instant::now();
        assert_eq!(next(&mut b).await.unwrap(), ":\n\n");
        assert_eq!(t0.elapsed(), Duration::from_secs(15));
        let id = hub.publish("a", Some("e"), "d".into());
        assert_eq!(
            next(&mut b).await.unwrap(),
            format!("id: {id}\nevent: e\ndata: d\n\n")
        );
        assert_eq!(next(&mut b).await.unwrap(), ":\n\n");
        assert_eq!(t0.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_stream_and_unsubscribes() {
        let hub = Hub::new(HubConfig::default());
        let shutdown = CancellationToken::new();
        let mut b = body(&hub, &shutdown);
        next(&mut b).await;
        let canceller = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            canceller.cancel();
        });
        assert_eq!(next(&mut b).await, None);
        assert!(b.is_end_stream());
        drop(b);
        assert_eq!(hub.stats(1).subscribers, 0);
        let shutdowns = hub
            .metrics()
            .disconnects
            .get_or_create(&crate::hub::ReasonLabels { reason: "shutdown" })
            .get();
        assert_eq!(shutdowns, 1);
    }

    #[tokio::test]
    async fn overflow_ends_the_stream() {
        let hub = Hub::new(HubConfig {
            subscriber_queue: 1,
            history_max_events: 1,
            ..HubConfig::default()
        });
        let shutdown = CancellationToken::new();
        let mut b = body(&hub, &shutdown);
        next(&mut b).await;
        // 1 queued, 2 left in history, evicted by 3: noticed by 4.
        for i in 1..=4 {
            hub.publish("a", None, i.to_string().into());
        }
        // An error, not a clean end: on HTTP/2 hyper resets the stream for it.
        let end = b.frame().await.expect("a last frame").unwrap_err();
        assert_eq!(end, Overflowed);
        assert!(b.is_end_stream());
        assert!(b.frame().await.is_none());
    }
}

#[cfg(test)]
mod size {
    use super::*;

    /// Per-subscriber memory matters at 100k streams: keep the body and what it points to
    /// small (measured: see BENCHMARKS.md). Fails if a change makes them balloon.
    #[test]
    fn per_subscriber_structs_stay_small() {
        let body = std::mem::size_of::<SseBody>();
        let sleep = std::mem::size_of::<Sleep>();
        let cancel = std::mem::size_of::<WaitForCancellationFutureOwned>();
        println!("SseBody {body} B, Sleep {sleep} B, cancellation future {cancel} B");
        assert!(body <= 256, "SseBody is {body} bytes");
        assert!(body + sleep + cancel <= 512);
    }
}
