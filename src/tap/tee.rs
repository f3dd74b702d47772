//! A request body that streams through unchanged while a copy of up to `max_body` bytes is
//! kept for the tap's event. The copy is handed over through a oneshot when the body ends;
//! past the limit the copy is dropped at once (memory stays bounded) and the tap is told.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::oneshot;

/// What the tap gets once the body has been read by the upstream client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Copy {
    /// The whole body.
    Complete(Bytes),
    /// More than `max_body`: forwarded whole, not kept.
    TooLarge,
}

/// `inner` with a bounded copy on the side. `B: Unpin` (hyper's `Incoming` is), which
/// keeps this free of pin projections.
pub struct TeeBody<B> {
    inner: B,
    /// The copy so far; `None` once over the limit.
    copy: Option<BytesMut>,
    limit: usize,
    /// Taken when the outcome is known. Dropped unsent if the body fails or is dropped
    /// early (the upstream did not read it all), which the tap treats as "no event".
    tx: Option<oneshot::Sender<Copy>>,
}

impl<B: Body<Data = Bytes> + Unpin> TeeBody<B> {
    /// Wrap `inner`; the receiver resolves when it ends.
    pub fn new(inner: B, limit: usize) -> (TeeBody<B>, oneshot::Receiver<Copy>) {
        let (tx, rx) = oneshot::channel();
        let declared = inner.size_hint().lower();
        let mut tee = TeeBody {
            copy: None,
            limit,
            tx: Some(tx),
            inner,
        };
        if declared > limit as u64 {
            tee.send(Copy::TooLarge);
        } else {
            // Content-Length is the usual case: allocate once.
            tee.copy = Some(BytesMut::with_capacity(declared as usize));
            if tee.inner.is_end_stream() {
                // hyper never polls an empty body.
                tee.send(Copy::Complete(Bytes::new()));
            }
        }
        (tee, rx)
    }

    fn send(&mut self, copy: Copy) {
        if let Some(tx) = self.tx.take() {
            // The tap may have given up waiting; nothing to do then.
            let _ = tx.send(copy);
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for TeeBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let fits = this
                        .copy
                        .as_ref()
                        .is_some_and(|c| c.len() + data.len() <= this.limit);
                    match this.copy.as_mut() {
                        Some(copy) if fits => copy.extend_from_slice(data),
                        Some(_) => {
                            this.copy = None;
                            if let Some(tx) = this.tx.take() {
                                let _ = tx.send(Copy::TooLarge);
                            }
                        }
                        None => {}
                    }
                }
                if this.inner.is_end_stream() {
                    finish(&mut this.copy, &mut this.tx);
                }
            }
            Poll::Ready(None) => finish(&mut this.copy, &mut this.tx),
            Poll::Ready(Some(Err(_))) => {
                // The request failed; the upstream did not get it whole.
                this.tx.take();
                this.copy = None;
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

/// A [`TeeBody`] over the app's answer that, dropped before its end (the client went away),
/// reads the rest in the background for the copy: the app did the change, so its event
/// still goes out. Bounded: the copy stops at the tee's limit and the read at `grace`.
pub struct FinishOnDrop<B: Body<Data = Bytes> + Unpin + Send + 'static> {
    /// `None` only once dropped.
    tee: Option<TeeBody<B>>,
    grace: Duration,
}

impl<B: Body<Data = Bytes> + Unpin + Send + 'static> FinishOnDrop<B> {
    /// Wrap `tee`; an early drop reads on for at most `grace`.
    pub fn new(tee: TeeBody<B>, grace: Duration) -> Self {
        FinishOnDrop {
            tee: Some(tee),
            grace,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin + Send + 'static> Body for FinishOnDrop<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.get_mut().tee.as_mut() {
            Some(tee) => Pin::new(tee).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.tee.as_ref().is_none_or(|t| t.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.tee.as_ref().map(|t| t.size_hint()).unwrap_or_default()
    }
}

impl<B: Body<Data = Bytes> + Unpin + Send + 'static> Drop for FinishOnDrop<B> {
    fn drop(&mut self) {
        let Some(mut tee) = self.tee.take() else {
            return;
        };
        // Decided already (complete, or too large): nothing left to learn.
        if tee.tx.is_none() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let grace = self.grace;
        runtime.spawn(async move {
            let read_on = async {
                // Frames are dropped as read; the tee keeps its bounded copy and sends it.
                while tee.tx.is_some() {
                    match tee.frame().await {
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break,
                    }
                }
            };
            // On timeout the tee is dropped unsent: the tap counts the answer incomplete.
            let _ = tokio::time::timeout(grace, read_on).await;
        });
    }
}

fn finish(copy: &mut Option<BytesMut>, tx: &mut Option<oneshot::Sender<Copy>>) {
    if let Some(tx) = tx.take() {
        let outcome = match copy.take() {
            Some(c) => Copy::Complete(c.freeze()),
            None => Copy::TooLarge,
        };
        let _ = tx.send(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    #[tokio::test]
    async fn keeps_a_copy_of_a_small_body() {
        let (tee, rx) = TeeBody::new(Full::new(Bytes::from_static(b"a=1&b=2")), 100);
        let forwarded = tee.collect().await.unwrap().to_bytes();
        assert_eq!(forwarded, "a=1&b=2");
        assert_eq!(
            rx.await.unwrap(),
            Copy::Complete(Bytes::from_static(b"a=1&b=2"))
        );
    }

    #[tokio::test]
    async fn forwards_a_large_body_whole_without_keeping_it() {
        let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = (0..10)
            .map(|_| Ok(Frame::data(Bytes::from(vec![b'x'; 100]))))
            .collect();
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        let (tee, rx) = TeeBody::new(body, 250);
        let forwarded = tee.collect().await.unwrap().to_bytes();
        assert_eq!(forwarded.len(), 1000);
        assert_eq!(rx.await.unwrap(), Copy::TooLarge);
        // Declared too large: decided before reading.
        let (_tee, mut rx) = TeeBody::new(Full::new(Bytes::from(vec![0; 300])), 250);
        assert_eq!(rx.try_recv().unwrap(), Copy::TooLarge);
    }

    #[tokio::test]
    async fn empty_body_is_complete_at_once() {
        let (_tee, mut rx) = TeeBody::new(http_body_util::Empty::<Bytes>::new(), 10);
        assert_eq!(rx.try_recv().unwrap(), Copy::Complete(Bytes::new()));
    }
}
