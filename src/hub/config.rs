//! Typed hub settings (the `[hub]` section). Every bound the hub enforces lives here, with
//! its default and what happens when it is reached.

use std::time::Duration;

/// Validated hub settings. Defaults are documented in `config.toml.example`.
#[derive(Debug, Clone, PartialEq)]
pub struct HubConfig {
    /// Events kept per channel for replay. Full: the oldest is evicted, and a client resuming
    /// from before it gets a `reset`. Default 1,000.
    pub history_max_events: usize,
    /// Events older than this are evicted from history. Default 5 min.
    pub history_max_age: Duration,
    /// Events kept in history across all channels. Full: the hub-wide oldest is evicted.
    /// Default 1,000,000.
    pub history_max_total: usize,
    /// Bytes of encoded frames kept in history across all channels. Full: the hub-wide
    /// oldest is evicted. Default 64 MiB.
    pub history_max_bytes: usize,
    /// Frames queued for one subscriber that has not read them yet. Full: that subscriber is
    /// disconnected (its client resumes from its Last-Event-ID). Default 256.
    pub subscriber_queue: usize,
    /// Bytes queued for one subscriber (frames are shared, but a slow subscriber keeps them
    /// alive). Full: disconnected as above; a single frame larger than this still goes to an
    /// empty queue. Default 1 MiB.
    pub subscriber_queue_bytes: usize,
    /// A channel with no subscriber and no publish for this long is dropped with its history
    /// (a later resume from before that gets a `reset`). Default 5 min.
    pub channel_idle_ttl: Duration,
    /// Channels the hub tracks at once. Full: subscribing to a new channel → 429; publishing
    /// to a new channel that nobody watches keeps no history for it (resumes across it get a
    /// `reset`). Default 100,000.
    pub max_channels: usize,
    /// Subscriptions open at once. Full → 429. Default 100,000.
    pub max_subscribers: usize,
    /// Subscriptions per channel. Full → 429. Default 10,000.
    pub max_subscribers_per_channel: usize,
    /// Subscriptions per client IP address. Full → 429. Default 1,000 (offices and mobile
    /// carriers put many browsers behind one address).
    pub max_subscribers_per_ip: usize,
    /// Channels one subscription may name (`device_ids=A,B,...`). More → rejected. Default 32.
    pub max_channels_per_subscription: usize,
    /// `Retry-After` given with a 429. Default 5 s.
    pub retry_after: Duration,
    /// How often expired history and idle channels are swept. Default 10 s.
    pub sweep_interval: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            history_max_events: 1_000,
            history_max_age: Duration::from_secs(300),
            history_max_total: 1_000_000,
            history_max_bytes: 64 * 1024 * 1024,
            subscriber_queue: 256,
            subscriber_queue_bytes: 1024 * 1024,
            channel_idle_ttl: Duration::from_secs(300),
            max_channels: 100_000,
            max_subscribers: 100_000,
            max_subscribers_per_channel: 10_000,
            max_subscribers_per_ip: 1_000,
            max_channels_per_subscription: 32,
            retry_after: Duration::from_secs(5),
            sweep_interval: Duration::from_secs(10),
        }
    }
}
