//! Why a subscription was refused.

use std::time::Duration;

/// Why [`Hub::subscribe`](super::Hub::subscribe) refused. Limits map to 429 with
/// `Retry-After` ([`SubscribeError::retry_after`]); a bad request to 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// No channel named.
    #[error("no channel to subscribe to")]
    NoChannels,
    /// More channels than `max_channels_per_subscription`.
    #[error("{count} channels requested; at most {max} per stream")]
    TooManyChannels {
        /// Channels requested.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// `max_subscribers` reached.
    #[error("too many subscribers on this server")]
    HubFull {
        /// Suggested wait.
        retry_after: Duration,
    },
    /// `max_subscribers_per_channel` reached on `channel`.
    #[error("too many subscribers on channel {channel}")]
    ChannelFull {
        /// The full channel.
        channel: String,
        /// Suggested wait.
        retry_after: Duration,
    },
    /// `max_subscribers_per_ip` reached for this client address.
    #[error("too many streams from this address")]
    IpFull {
        /// Suggested wait.
        retry_after: Duration,
    },
    /// `max_channels` reached: no new channel can be created.
    #[error("too many channels on this server")]
    ChannelsFull {
        /// Suggested wait.
        retry_after: Duration,
    },
}

impl SubscribeError {
    /// For a limit (→ 429), the `Retry-After` to send; `None` for a bad request (→ 400).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SubscribeError::NoChannels | SubscribeError::TooManyChannels { .. } => None,
            SubscribeError::HubFull { retry_after }
            | SubscribeError::ChannelFull { retry_after, .. }
            | SubscribeError::IpFull { retry_after }
            | SubscribeError::ChannelsFull { retry_after } => Some(*retry_after),
        }
    }

    /// Stable name for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            SubscribeError::NoChannels => "no_channels",
            SubscribeError::TooManyChannels { .. } => "too_many_channels",
            SubscribeError::HubFull { .. } => "max_subscribers",
            SubscribeError::ChannelFull { .. } => "max_subscribers_per_channel",
            SubscribeError::IpFull { .. } => "max_subscribers_per_ip",
            SubscribeError::ChannelsFull { .. } => "max_channels",
        }
    }
}
