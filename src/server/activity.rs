//! What a connection knows about its requests: how many are in flight (for the idle
//! timeout), a way for a response to end the whole connection, and the state of an event
//! stream or an upgraded connection leaving hyper ([`super::handoff`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use super::handoff::Slot;
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
    /// The hand-off of an HTTP/1.1 event stream or an upgraded connection from hyper
    /// ([`super::handoff`]).
    pub(super) handoff: Slot,
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
        self.handoff.upgraded(task);
    }
}

impl Activity {
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
