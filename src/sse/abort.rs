//! How an event stream ends its whole HTTP/1 connection: the server puts a
//! [`ConnectionAbort`] into the request's extensions, and a stream whose client stopped
//! reading uses it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// The work of a connection after its upgrade; see [`ConnectionAbort::after_upgrade`].
pub type UpgradedTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What can close a client connection at once (the server's connection loop).
pub trait CloseConnection: Send + Sync {
    /// Drop the connection now, whatever it is doing.
    fn close_now(&self);

    /// Resolves once [`CloseConnection::close_now`] was called.
    fn closed(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;

    /// Run `task` on the connection once hyper has answered its upgrade.
    fn after_upgrade(&self, task: UpgradedTask);
}

/// Request extension (HTTP/1 only) that lets a response end its whole connection. An SSE
/// stream whose client stopped reading overflows its queue while hyper is blocked writing
/// to the full socket and never polls the body again; without this the connection (and its
/// kernel buffers) would stay open forever. On HTTP/2 the other streams of the connection
/// are innocent, so the slow stream just ends when next polled.
#[derive(Clone)]
pub struct ConnectionAbort(Arc<dyn CloseConnection>);

impl ConnectionAbort {
    /// The abort of the connection `connection` closes.
    pub fn new(connection: Arc<dyn CloseConnection>) -> Self {
        ConnectionAbort(connection)
    }

    /// Close the connection now.
    pub fn abort(&self) {
        self.0.close_now();
    }

    /// Resolves once [`ConnectionAbort::abort`] was called: for whoever writes to the
    /// connection after an upgrade (hyper no longer watches it then).
    pub async fn aborted(&self) {
        self.0.closed().await;
    }

    /// Serve the connection with `task` once hyper has answered its upgrade (the task
    /// awaits `hyper::upgrade::on` itself), on the connection's own task: an upgraded
    /// connection keeps its `max_connections` slot and is waited for at shutdown. If the
    /// connection ends without upgrading, the task is dropped unrun.
    pub fn after_upgrade(&self, task: UpgradedTask) {
        self.0.after_upgrade(task);
    }
}

impl std::fmt::Debug for ConnectionAbort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectionAbort")
    }
}
