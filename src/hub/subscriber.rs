//! One subscriber's queue: what the hub pushes into while publishing and what the stream
//! drains. Deliberately small (an idle subscriber holds an empty `VecDeque`, no allocation,
//! and a waker) because a server holds tens of thousands of them.
//!
//! Full is not slow. A publisher's burst (one `POST /publish` array of thousands) fills the
//! queue of a subscriber that reads continuously faster than it can drain. So a full queue
//! only stops queueing: the subscriber remembers where it stopped ([`SubQueue::resume_at`])
//! and, once it has taken what was queued, reads the rest from its channels' history (see
//! [`Subscription::poll_recv`](super::Subscription::poll_recv)). It is cut off only when it
//! is really behind: its history no longer holds what it has not read (or `send_timeout`
//! finds its client not taking bytes). The queue stays bounded either way.

use std::collections::VecDeque;
use std::num::NonZeroU64;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Waker};

use bytes::Bytes;

/// Why a subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// It fell behind what its channels' history still holds: the client was not reading
    /// fast enough (it resumes from its Last-Event-ID and gets a `reset`).
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
    /// The queue is full (now or already): the frame stays in history only, where the
    /// subscriber will read it.
    Deferred,
    /// It is behind what history holds: the subscriber is now closed and its `usize` queued
    /// frames were dropped.
    Overflowed(usize),
    /// Already closed; nothing done.
    Closed,
}

/// Bounds of one queue, copied from the hub config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueBounds {
    /// Frames. Full: later frames are read from history (see the module docs).
    pub frames: usize,
    /// Bytes. Full: as above, unless the queue is empty (one large frame always fits).
    pub bytes: usize,
}

/// What the stream should do next, from [`SubShared::poll_pop`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pop {
    /// Send this frame.
    Frame(Bytes),
    /// The queue is drained but events after this seq were left in history: read them
    /// with [`SubShared::refill`].
    CatchUp(u64),
    /// Nothing yet; woken by the next push or close.
    Pending,
    /// Closed and drained: the stream ends.
    Ended,
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
    /// Set when the queue was full: every event of its channels from this seq on was left
    /// in history and is read from there, in order, once the queue is drained. `None`: live.
    /// Non-zero (seqs start at 1) so the option costs no more than a `u64`: an idle
    /// subscriber stays as small as before.
    resume_at: Option<NonZeroU64>,
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

    /// Offer `frame`, the event `seq` of a channel whose history is complete after
    /// `gap_floor` (before this event is stored). A full queue defers it to history; a
    /// subscriber already deferred and now behind `gap_floor` is closed and its queue freed.
    pub(crate) fn push(
        &self,
        frame: &Bytes,
        seq: u64,
        gap_floor: u64,
        bounds: QueueBounds,
    ) -> Push {
        let waker;
        let outcome;
        let mut hook = None;
        {
            let mut q = self.lock();
            if q.closed.is_some() {
                return Push::Closed;
            }
            if let Some(at) = q.resume_at {
                // History must still hold every event from `at` on: all after `gap_floor`.
                if at.get() > gap_floor {
                    return Push::Deferred;
                }
                outcome = Push::Overflowed(q.overflow());
                hook = q.on_overflow.take();
            } else if q.frames.len() >= bounds.frames
                || (!q.frames.is_empty() && q.bytes + frame.len() > bounds.bytes)
            {
                // Every earlier event of its channels was queued (publishing is serialized
                // by the hub lock), so it resumes at this one.
                q.resume_at = NonZeroU64::new(seq);
                return Push::Deferred;
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
    /// Resets bypass the frame bound (at most one per position) but not closing. A
    /// subscriber reading from history cannot get it in order: it is closed instead (its
    /// client resumes and gets the reset then, the channel's gap floor being raised).
    pub(crate) fn push_reset(&self, frame: &Bytes, seq: u64) -> bool {
        let waker;
        {
            let mut q = self.lock();
            if q.closed.is_some() || q.last_reset == seq {
                return false;
            }
            if q.resume_at.is_some() {
                q.overflow();
                let hook = q.on_overflow.take();
                let waker = q.waker.take();
                drop(q);
                if let Some(w) = waker {
                    w.wake();
                }
                if let Some(hook) = hook {
                    hook();
                }
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

    /// Take the next frame; `Ended` once closed and drained (an overflowed queue was
    /// already emptied, so the stream ends at once), `CatchUp` when drained with events
    /// left in history.
    pub(crate) fn poll_pop(&self, cx: &mut Context<'_>) -> Pop {
        let mut q = self.lock();
        if let Some(frame) = q.frames.pop_front() {
            q.bytes -= frame.len();
            if q.frames.is_empty() && q.frames.capacity() > INITIAL_CAPACITY_KEPT {
                // A burst grew the queue; an idle subscriber should not keep that memory.
                q.frames.shrink_to(INITIAL_CAPACITY_KEPT);
            }
            return Pop::Frame(frame);
        }
        if q.closed.is_some() {
            return Pop::Ended;
        }
        if let Some(at) = q.resume_at {
            return Pop::CatchUp(at.get() - 1);
        }
        match &q.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => q.waker = Some(cx.waker().clone()),
        }
        Pop::Pending
    }

    /// Queue `frames` read from history after a [`Pop::CatchUp`], the last of them being
    /// event `last`; `done` says history held nothing more, so it is live again. Called
    /// under the hub lock, so no publish can slip in between reading history and this.
    pub(crate) fn refill(&self, frames: Vec<Bytes>, last: u64, done: bool) {
        let mut q = self.lock();
        if q.closed.is_some() {
            return;
        }
        for frame in frames {
            q.bytes += frame.len();
            q.frames.push_back(frame);
        }
        q.resume_at = if done {
            None
        } else {
            NonZeroU64::new(last + 1)
        };
    }

    /// Close for being behind what history holds (first reason wins); false if it was
    /// already closed.
    pub(crate) fn fall_behind(&self) -> bool {
        let mut q = self.lock();
        if q.closed.is_some() {
            return false;
        }
        q.overflow();
        true
    }
}

impl SubQueue {
    /// Close for being too slow and free the queue; returns the frames dropped.
    fn overflow(&mut self) -> usize {
        let dropped = self.frames.len();
        self.frames = VecDeque::new();
        self.bytes = 0;
        self.closed = Some(CloseReason::Overflow);
        self.resume_at = None;
        dropped
    }
}

impl std::fmt::Debug for SubShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = self.lock();
        f.debug_struct("SubShared")
            .field("queued", &q.frames.len())
            .field("bytes", &q.bytes)
            .field("closed", &q.closed)
            .field("resume_at", &q.resume_at)
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

    fn cx_counting() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(0.into()));
        (count.clone(), Waker::from(count))
    }

    #[test]
    fn a_full_queue_defers_to_history_and_closes_only_behind_the_floor() {
        let s = SubShared::default();
        let f = Bytes::from_static(b"abc");
        assert_eq!(s.push(&f, 1, 0, BOUNDS), Push::Queued);
        assert_eq!(s.push(&f, 2, 0, BOUNDS), Push::Queued);
        assert_eq!(s.push(&f, 3, 0, BOUNDS), Push::Deferred, "full: not closed");
        assert_eq!(
            s.push(&f, 4, 2, BOUNDS),
            Push::Deferred,
            "history holds 3.."
        );
        assert_eq!(s.closed(), None);
        assert_eq!(
            s.push(&f, 5, 3, BOUNDS),
            Push::Overflowed(2),
            "3 was evicted"
        );
        assert_eq!(s.push(&f, 6, 3, BOUNDS), Push::Closed);
        assert_eq!(s.closed(), Some(CloseReason::Overflow));
        let (_, waker) = cx_counting();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(s.poll_pop(&mut cx), Pop::Ended, "its queue was freed");
    }

    #[test]
    fn drained_after_deferring_it_catches_up_then_goes_live() {
        let s = SubShared::default();
        let (_, waker) = cx_counting();
        let mut cx = Context::from_waker(&waker);
        let big = Bytes::from(vec![b'x'; 50]);
        assert_eq!(
            s.push(&big, 1, 0, BOUNDS),
            Push::Queued,
            "fits an empty queue"
        );
        assert_eq!(
            s.push(&Bytes::from_static(b"y"), 2, 0, BOUNDS),
            Push::Deferred
        );
        assert_eq!(s.poll_pop(&mut cx), Pop::Frame(big));
        assert_eq!(s.poll_pop(&mut cx), Pop::CatchUp(1));
        s.refill(vec![Bytes::from_static(b"y")], 2, true);
        assert_eq!(s.poll_pop(&mut cx), Pop::Frame(Bytes::from_static(b"y")));
        assert_eq!(s.poll_pop(&mut cx), Pop::Pending, "live again");
        assert_eq!(
            s.push(&Bytes::from_static(b"z"), 3, 0, BOUNDS),
            Push::Queued
        );
    }

    #[test]
    fn push_wakes_the_waiting_stream_once() {
        let s = SubShared::default();
        let (count, waker) = cx_counting();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(s.poll_pop(&mut cx), Pop::Pending);
        s.push(&Bytes::from_static(b"a"), 1, 0, BOUNDS);
        s.push(&Bytes::from_static(b"b"), 2, 0, BOUNDS);
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(s.poll_pop(&mut cx), Pop::Frame(Bytes::from_static(b"a")));
        assert_eq!(s.poll_pop(&mut cx), Pop::Frame(Bytes::from_static(b"b")));
        assert_eq!(s.poll_pop(&mut cx), Pop::Pending);
        s.close(CloseReason::Shutdown);
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(s.poll_pop(&mut cx), Pop::Ended);
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

#[cfg(test)]
mod size {
    /// Tens of thousands are held at once. 96 bytes before the catch-up position, 104 with
    /// it; in its `Arc` that is 120 bytes, still one 128-byte malloc chunk as before (the
    /// measured cost per idle subscriber did not change).
    #[test]
    fn an_idle_subscriber_queue_stays_small() {
        let size = std::mem::size_of::<super::SubShared>();
        println!("SubShared {size} B");
        assert!(size <= 104, "SubShared is {size} bytes");
    }
}
