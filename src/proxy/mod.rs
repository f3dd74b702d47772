//! The reverse proxy: routing, forwarding to the upstream, header rules, errors.

pub mod client_ip;
pub mod config;
pub mod error;
pub mod forward;
pub mod handler;
pub mod headers;
pub mod pool;
pub mod upstream;

pub use error::{ProxyError, UpstreamError, error_response};
pub use handler::{handle, is_stream, open_stream};
