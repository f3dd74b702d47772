//! The reverse proxy: forwarding to the upstream ([`forward`]), header rules, the upstream
//! keep-alive pool, errors and their responses. Routing is [`crate::routing`]'s.

pub(crate) mod client_ip;
pub(crate) mod config;
pub(crate) mod error;
pub(crate) mod forward;
pub(crate) mod headers;
pub(crate) mod pool;
pub(crate) mod upstream;

pub use error::ProxyError;
pub(crate) use error::{UpstreamError, error_response};
