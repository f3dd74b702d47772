//! A request on the main listener, top to bottom ([`handler`]): load the config snapshot,
//! route the request, then one `match` on the action: proxy, cache, stream or tap. The
//! top of the request path: it uses every rule kind, and none of them uses it.

pub mod handler;

pub use handler::{handle, is_stream, open_stream};
