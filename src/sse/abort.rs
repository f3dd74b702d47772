//! How an event stream ends its whole HTTP/1 connection: the server puts a
//! [`ConnectionAbort`] into the request's extensions, and a stream whose client stopped
//! reading uses it.

use std::sync::Arc;

/// What can close a client connection at once (the server's connection loop).
pub trait CloseConnection: Send + Sync {
    /// Drop the connection now, whatever it is doing.
    fn close_now(&self);
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
}

impl std::fmt::Debug for ConnectionAbort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectionAbort")
    }
}
