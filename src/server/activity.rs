//! What a connection knows about its requests: how many are in flight (for the idle
//! timeout), a way for a response to end the whole connection, and an event stream
//! waiting to leave hyper.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use super::observe::TrackedBody;
use crate::sse::{CloseConnection, UpgradedTask};

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
    /// Notified by [`CloseConnection::close_now`] (a stream's `ConnectionAbort`): the
    /// connection is dropped at once.
    abort: Notify,
    /// HTTP/1: the body of an event stream whose head hyper is writing; the connection
    /// then leaves hyper and the body is written by `direct_sse` (hyper's buffers would
    /// cost 16 KiB for as long as the stream lasts). Boxed: every connection has this
    /// slot, few use it.
    parked: Mutex<Option<Box<TrackedBody>>>,
    /// Set once hyper has encoded the parked stream's head into its buffer.
    head_encoded: AtomicBool,
    /// Whether bytes were written to the socket since the last completed flush, i.e.
    /// whether hyper may still hold part of a response.
    unflushed: AtomicBool,
    /// HTTP/1: what serves the connection once hyper has answered `101` and handed it
    /// over (a WebSocket stream). Run by the connection's own task, so an upgraded
    /// connection still holds its `max_connections` slot and is waited for at shutdown.
    upgraded: Mutex<Option<UpgradedTask>>,
}

impl CloseConnection for Activity {
    fn close_now(&self) {
        // notify_one stores a permit if the connection loop is not waiting at this moment.
        self.abort.notify_one();
    }

    fn closed(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.aborted())
    }

    fn after_upgrade(&self, task: UpgradedTask) {
        *self.upgraded.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
    }
}

impl Activity {
    /// Keep `body` for the connection to write outside hyper once its head is out.
    pub(super) fn park(&self, body: TrackedBody) {
        *self.parked.lock().unwrap_or_else(PoisonError::into_inner) = Some(Box::new(body));
    }

    /// The parked stream body, if any.
    pub(super) fn take_parked(&self) -> Option<TrackedBody> {
        self.parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .map(|body| *body)
    }

    /// The task an upgrade left, if any.
    pub(super) fn take_upgraded(&self) -> Option<UpgradedTask> {
        self.upgraded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Called by the placeholder body hyper polls after encoding the head.
    pub(super) fn head_encoded(&self) {
        self.head_encoded.store(true, Ordering::Relaxed);
    }

    /// Whether the connection can leave hyper now: a parked stream's head is encoded and
    /// everything hyper wrote is flushed.
    pub(super) fn ready_for_handoff(&self) -> bool {
        self.head_encoded.load(Ordering::Relaxed) && !self.unflushed.load(Ordering::Relaxed)
    }

    /// Record a write (`true`) or a completed flush (`false`) on the socket.
    pub(super) fn set_unflushed(&self, unflushed: bool) {
        self.unflushed.store(unflushed, Ordering::Relaxed);
    }

    /// Resolves when a response asked for the connection to end (`ConnectionAbort`).
    pub(super) async fn aborted(&self) {
        self.abort.notified().await;
    }

    /// Resolves once no request has been in flight or started for `timeout`. Costs one
    /// timer per `timeout` while idle and none while requests are in flight (a long SSE
    /// response keeps the connection busy, not idle).
    pub(super) async fn idle_for(&self, timeout: Duration) {
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
    pub(super) fn begin(activity: Arc<Activity>) -> Self {
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
