//! The reverse proxy: forwarding to the upstream ([`forward`]), header rules, the upstream
//! keep-alive pool, errors and their responses. Routing is [`crate::routing`]'s.

pub mod client_ip;
pub mod config;
pub mod error;
pub mod forward;
pub mod headers;
pub mod pool;
pub mod upstream;

pub use error::{ProxyError, UpstreamError, error_response};
