//! Server-Sent Events: the wire format ([`encode`]), the response body that streams a hub
//! subscription ([`SseBody`]) and the request/response headers ([`last_event_id`],
//! [`response`]), and the [`ConnectionAbort`] a stream ends its HTTP/1 connection with.

mod abort;
mod body;
pub mod encode;
mod request;

pub use abort::{CloseConnection, ConnectionAbort, UpgradedTask};
pub use body::{Overflowed, SseBody, SseOptions};
pub use request::{
    EventStream, LAST_EVENT_ID, LAST_EVENT_ID_PARAM, X_ACCEL_BUFFERING, last_event_id, response,
    set_headers,
};
