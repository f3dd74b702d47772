//! One subscriber's queue: what the hub pushes into while publishing and what the stream
//! drains. Deliberately small (an idle subscriber holds an empty `VecDeque`, no allocation,
//! and a waker) because a server holds tens of thousands of them.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

/// Why a subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Its queue overflowed: the client was not reading fast enough.
    Overflow,
    /// The client went away (the subscription was dropped).
    ClientClosed,
    /// The server is shutting down.
    Shutdown,
}

impl CloseReason {
    /// Stable name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Overflow => "overflow",
            CloseReason::ClientClosed => "client_closed",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// The outcome of offering a frame to a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Push {
    /// Queued.
    Queued,
    /// The queue was full: the subscriber is now closed and its `usize` queued frames
    /// (plus this one) were dropped.
    Overflowed(usize),
    /// Already closed; nothing done.
    Closed,
}

/// Bounds of one queue, copied from the hub config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueBounds {
    /// Frames. Full: disconnect.
    pub frames: usize,
    /// Bytes. Full: disconnect, unless the queue is empty (one large frame always fits).
    pub bytes: usize,
}

/// The part of a subscriber the hub's channels point to.
#[derive(Default)]
pub(crate) struct SubShared {
    /// Written by publishers (under the hub lock) and read by the subscriber's stream; held
    /// only for a push or a pop, never across an await.
    queue: Mutex<SubQueue>,
}

#[derive(Default)]
struct SubQueue {
    /// Frames not yet taken by the stream. Bounded by [`QueueBounds`]; full → closed.
    frames: VecDeque<Bytes>,
    /// Sum of the lengths of `frames`.
    bytes: usize,
    /// Set once; after it the stream ends when `frames` is drained.
    closed: Option<CloseReason>,
    /// The stream task waiting for a frame, woken by the next push or close.
    waker: Option<Waker>,
    /// Seq of the last reset queued, so a subscriber of several reset channels gets one.
    last_reset: u64,
    /// Run once when the queue overflows: closes the client's connection when the stream
    /// cannot end by itself because nobody polls it (see `server::ConnectionAbort`).
    on_overflow: Option<OverflowHook>,
}

/// See [`SubQueue::on_overflow`].
pub(crate) type OverflowHook = Box<dyn FnOnce() + Send>;

impl SubShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, SubQueue> {
        // A panic while holding this lock leaves a VecDeque in a valid state; keep going.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Offer `frame`; past the bounds the subscriber is closed and its queue freed.
    pub(crate) fn push(&self, frame: &Bytes, bounds: QueueBounds) -> Push {
        let waker;
        let outcome;
        let mut hook = None;
        {
            let mut q = self.lock();
            if q.closed.is_some() {
                return Push::Closed;
            }
            let full = q.frames.len() >= bounds.frames
                || (!q.frames.is_empty() && q.bytes + frame.len() > bounds.bytes);
            if full {
                let dropped = q.frames.len();
                q.frames = VecDeque::new();
                q.bytes = 0;
                q.closed = Some(CloseReason::Overflow);
                hook = q.on_overflow.take();
                outcome = Push::Overflowed(dropped);
            } else {
                q.bytes += frame.len();
                q.frames.push_back(frame.clone());
                outcome = Push::Queued;
            }
            waker = q.waker.take();
        }
        if let Some(w) = waker {
            w.wake();
        }
        if let Some(hook) = hook {
            hook();
        }
        outcome
    }

    /// Set the hook run on overflow.
    pub(crate) fn set_on_overflow(&self, hook: OverflowHook) {
        self.lock().on_overflow = Some(hook);
    }

    /// Queue a reset frame for hub position `seq` unless one for that position is queued.
    /// Resets bypass the frame bound (at most one per position) but not closing.
    pub(crate) fn push_reset(&self, frame: &Bytes, seq: u64) -> bool {
        let waker;
        {
            let mut q = self.lock();
            if q.closed.is_some() || q.last_reset == seq {
                return false;
            }
            q.last_reset = seq;
            q.bytes += frame.len();
            q.frames.push_back(frame.clone());
            waker = q.waker.take();
        }
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Close (first reason wins) and wake the stream so it ends.
    pub(crate) fn close(&self, reason: CloseReason) {
        let waker = {
            let mut q = self.lock();
            if q.closed.is_some() {
                return;
            }
            q.closed = Some(reason);
            q.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The reason it closed, if it did.
    pub(crate) fn closed(&self) -> Option<CloseReason> {
        self.lock().closed
    }

    /// Take the next frame; `Ready(None)` once closed and drained (an overflowed queue was
    /// already emptied, so the stream ends at once).
    pub(crate) fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let mut q = self.lock();
        if let Some(frame) = q.frames.pop_front() {
            q.bytes -= frame.len();
            if q.frames.is_empty() && q.frames.capacity() > INITIAL_CAPACITY_KEPT {
                // A burst grew the queue; an idle subscriber should not keep that memory.
                q.frames.shrink_to(INITIAL_CAPACITY_KEPT);
            }
            return Poll::Ready(Some(frame));
        }
        if q.closed.is_some() {
            return Poll::Ready(None);
        }
        match &q.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => q.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl std::fmt::Debug for SubShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = self.lock();
        f.debug_struct("SubShared")
            .field("queued", &q.frames.len())
            .field("bytes", &q.bytes)
            .field("closed", &q.closed)
            .finish_non_exhaustive()
    }
}

/// Queue capacity an idle subscriber may keep after a burst.
const INITIAL_CAPACITY_KEPT: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(std::sync::atomic::AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    const BOUNDS: QueueBounds = QueueBounds {
        frames: 2,
        bytes: 10,
    };

    #[test]
    fn overflow_by_frames_closes_and_frees() {
        let s = SubShared::default();
        let f = Bytes::from_static(b"abc");
        assert_eq!(s.push(&f, BOUNDS), Push::Queued);
        assert_eq!(s.push(&f, BOUNDS), Push::Queued);
        assert_eq!(s.push(&f, BOUNDS), Push::Overflowed(2));
        assert_eq!(s.push(&f, BOUNDS), Push::Closed);
        assert_eq!(s.closed(), Some(CloseReason::Overflow));
        let waker = Waker::from(Arc::new(Count(0.into())));
        let mut cx = Context::from_waker(&waker);
        assert_eq!(s.poll_pop(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn overflow_by_bytes_but_a_large_frame_fits_an_empty_queue() {
        let s = SubShared::default();
        let big = Bytes::from(vec![b'x'; 50]);
        assert_eq!(s.push(&big, BOUNDS), Push::Queued);
        assert_eq!(
            s.push(&Bytes::from_static(b"y"), BOUNDS),
            Push::Overflowed(1)
        );
    }

    #[test]
    fn push_wakes_the_waiting_stream_once() {
        let s = SubShared::default();
        let count = Arc::new(Count(0.into()));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        assert_eq!(s.poll_pop(&mut cx), Poll::Pending);
        s.push(&Bytes::from_static(b"a"), BOUNDS);
        s.push(&Bytes::from_static(b"b"), BOUNDS);
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(
            s.poll_pop(&mut cx),
            Poll::Ready(Some(Bytes::from_static(b"a")))
        );
        assert_eq!(
            s.poll_pop(&mut cx),
            Poll::Ready(Some(Bytes::from_static(b"b")))
        );
        assert_eq!(s.poll_pop(&mut cx), Poll::Pending);
        s.close(CloseReason::Shutdown);
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(s.poll_pop(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn one_reset_per_position() {
        let s = SubShared::default();
        let r = Bytes::from_static(b"reset");
        assert!(s.push_reset(&r, 5));
        assert!(!s.push_reset(&r, 5));
        assert!(s.push_reset(&r, 6));
    }
}
