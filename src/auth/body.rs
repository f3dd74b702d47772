//! A stream body that lives only as long as its access: it wraps any body (the SSE body of a
//! stream) with the stream's [`Grant`], and when access ends sends one last
//! `event: access_ended` and finishes. Dropping it drops the inner body (unsubscribing) and
//! then the grant (freeing its places in the limits).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::grant::{AccessEnded, EndedFuture, Grant};

/// Name of the last event of a stream whose access ended. It has no `id:`, so the client's
/// Last-Event-ID still points at the last real event when it reconnects (with a fresh token
/// or session).
pub const ACCESS_ENDED_EVENT: &str = "access_ended";

/// `inner` for as long as `grant` holds.
pub struct GrantedBody<B> {
    /// `None` once access ended: the subscription is released at that moment, not when
    /// the connection finally closes.
    inner: Option<B>,
    ended: EndedFuture,
    /// The last frame, queued when access ended.
    farewell: Option<Bytes>,
    /// Held for its `Drop` (limits); dropped after `inner` (declaration order).
    _grant: Grant,
}

impl<B> GrantedBody<B> {
    /// Wrap `inner`; it ends when `grant`'s access does.
    pub fn new(inner: B, grant: Grant) -> Self {
        GrantedBody {
            inner: Some(inner),
            ended: grant.ended(),
            farewell: None,
            _grant: grant,
        }
    }
}

/// The frame telling the client why its stream closed.
pub fn access_ended_frame(reason: AccessEnded) -> Bytes {
    Bytes::from(format!(
        "event: {ACCESS_ENDED_EVENT}\ndata: {}\n\n",
        access_ended_data(reason)
    ))
}

/// The JSON data of that frame: `{"reason":"expired","status":401}`.
pub fn access_ended_data(reason: AccessEnded) -> String {
    let status = match reason {
        AccessEnded::Expired => 401,
        AccessEnded::Revoked(s) => s.as_u16(),
    };
    format!("{{\"reason\":\"{}\",\"status\":{status}}}", reason.as_str())
}

impl<B> Body for GrantedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if let Some(frame) = this.farewell.take() {
            return Poll::Ready(Some(Ok(Frame::data(frame))));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(reason) = this.ended.as_mut().poll(cx) {
            tracing::debug!(reason = reason.as_str(), "access ended; closing the stream");
            this.inner = None;
            return Poll::Ready(Some(Ok(Frame::data(access_ended_frame(reason)))));
        }
        Pin::new(inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.farewell.is_none() && self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::time::{Duration, SystemTime};

    use http_body_util::{BodyExt, StreamBody};

    use super::*;
    use crate::auth::limits::Admission;
    use crate::auth::metrics::AuthMetrics;

    #[tokio::test(start_paused = true)]
    async fn ends_with_a_farewell_when_the_token_expires() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let at = SystemTime::now() + Duration::from_secs(60);
        let grant = Grant::until(at, Admission::unlimited(ip), AuthMetrics::default());
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
        let inner = StreamBody::new(tokio_stream_adapter(rx));
        let mut body = GrantedBody::new(inner, grant);
        tx.send(Ok(Frame::data(Bytes::from_static(b"data: 1\n\n"))))
            .await
            .unwrap();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"data: 1\n\n");
        // Nothing else until exp; then the farewell, then the end, and the inner stream is gone.
        let last = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(
            &last[..],
            b"event: access_ended\ndata: {\"reason\":\"expired\",\"status\":401}\n\n"
        );
        assert!(body.frame().await.is_none());
        assert!(
            tx.is_closed(),
            "the inner body was dropped when access ended"
        );
    }

    fn tokio_stream_adapter<T>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Unpin {
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
