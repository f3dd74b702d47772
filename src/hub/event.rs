//! What a publisher hands the hub, and why a subscriber is told to start over.

use std::borrow::Cow;

/// The `data` of an event: JSON (sent compact, on one line) or text (sent as is, split into
/// one `data:` line per line).
#[derive(Debug, Clone, PartialEq)]
pub enum EventData {
    /// Serialized compactly.
    Json(serde_json::Value),
    /// Sent verbatim.
    Text(String),
}

impl EventData {
    /// The text that goes into the `data:` lines.
    pub fn as_text(&self) -> Cow<'_, str> {
        match self {
            EventData::Json(serde_json::Value::String(s)) => Cow::Owned(
                // A JSON string stays JSON on the wire (quoted), so clients can always
                // `JSON.parse` the data of a JSON event.
                serde_json::Value::String(s.clone()).to_string(),
            ),
            EventData::Json(v) => Cow::Owned(v.to_string()),
            EventData::Text(s) => Cow::Borrowed(s),
        }
    }
}

impl From<serde_json::Value> for EventData {
    fn from(v: serde_json::Value) -> Self {
        EventData::Json(v)
    }
}

impl From<String> for EventData {
    fn from(s: String) -> Self {
        EventData::Text(s)
    }
}

impl From<&str> for EventData {
    fn from(s: &str) -> Self {
        EventData::Text(s.to_owned())
    }
}

/// The event name of the frame that tells a subscriber replay was impossible.
pub const RESET_EVENT: &str = "reset";

/// Why a subscriber receives a `reset` instead of the events it asked for: it must refetch
/// its state, then continue from the reset's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetReason {
    /// Events after its Last-Event-ID were evicted from history (count, age or memory).
    Evicted,
    /// The Last-Event-ID was assigned by another hub instance (unpoll restarted).
    OtherBoot,
    /// The Last-Event-ID is not an unpoll id.
    Unparsable,
    /// The Last-Event-ID is ahead of this hub (it cannot have been assigned by it).
    Unknown,
    /// A source lost events on these channels (e.g. a Postgres listener reconnected).
    SourceLost(String),
}

impl ResetReason {
    /// Stable name for logs, metrics and the reset's data.
    pub fn as_str(&self) -> &'static str {
        match self {
            ResetReason::Evicted => "evicted",
            ResetReason::OtherBoot => "other_boot",
            ResetReason::Unparsable => "unparsable_id",
            ResetReason::Unknown => "unknown_id",
            ResetReason::SourceLost(_) => "source_lost",
        }
    }

    /// The JSON data of the reset frame: `{"reason": "...", "detail": "..."}`.
    pub fn data(&self) -> String {
        let detail = match self {
            ResetReason::Evicted => "events since your last id are no longer in history",
            ResetReason::OtherBoot => "your last id comes from an earlier run of the server",
            ResetReason::Unparsable => "your last id is not an event id of this server",
            ResetReason::Unknown => "your last id is ahead of this server",
            ResetReason::SourceLost(why) => why,
        };
        serde_json::json!({ "reason": self.as_str(), "detail": detail }).to_string()
    }
}
