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
    /// Frames queued for one subscriber that has not taken them yet. Full: later events stay
    /// in the channel history only, and the subscriber reads them from there (this many at
    /// a time) once its queue is drained, so a publisher's burst disconnects nobody. It is
    /// disconnected only when history no longer holds what it has not read (its client
    /// resumes from its Last-Event-ID and gets a `reset`). Default 256.
    pub subscriber_queue: usize,
    /// Bytes queued for one subscriber (frames are shared, but a slow subscriber keeps them
    /// alive). Full: as above; a single frame larger than this still goes to an empty
    /// queue. Default 1 MiB.
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
    /// Subscriptions one `/_unpoll/multi` stream may carry (its `s` parameters). More → 400.
    /// Each one still counts as one subscriber everywhere. Default 32.
    pub max_multi: usize,
    /// Distinct keys watched at once (`[[watch]]`: one upstream poller per key, shared by
    /// every subscriber of the key). Full: a subscription that would start a new watcher →
    /// 429 with `Retry-After`; subscribers of keys already watched still join. Default 10,000.
    pub max_watch_keys: usize,
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
            max_multi: 32,
            max_watch_keys: 10_000,
            retry_after: Duration::from_secs(5),
            sweep_interval: Duration::from_secs(10),
        }
    }
}

/// The `[hub]` section as written.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHubConfig {
    history_max_events: Option<usize>,
    history_max_age: Option<String>,
    history_max_total: Option<usize>,
    history_max_bytes: Option<String>,
    subscriber_queue: Option<usize>,
    subscriber_queue_bytes: Option<String>,
    channel_idle_ttl: Option<String>,
    max_channels: Option<usize>,
    max_subscribers: Option<usize>,
    max_subscribers_per_channel: Option<usize>,
    max_subscribers_per_ip: Option<usize>,
    max_channels_per_subscription: Option<usize>,
    max_multi: Option<usize>,
    max_watch_keys: Option<usize>,
    retry_after: Option<String>,
    sweep_interval: Option<String>,
}

impl RawHubConfig {
    /// Validate, recording every error under `path`.
    pub fn validate(self, path: &str, errors: &mut crate::config::ConfigErrors) -> HubConfig {
        use crate::config::{parse_duration, parse_size};
        let d = HubConfig::default();
        let mut check = Checker { path, errors };
        let dur = |c: &mut Checker, key, raw: Option<String>, default| match raw {
            None => default,
            Some(text) => match parse_duration(&text) {
                Ok(v) if !v.is_zero() => v,
                Ok(_) => c.fail(key, "must be greater than zero", default),
                Err(e) => c.fail(key, e, default),
            },
        };
        let size = |c: &mut Checker, key, raw: Option<String>, default: usize| match raw {
            None => default,
            Some(text) => match parse_size(&text) {
                Ok(0) => c.fail(key, "must be greater than zero", default),
                Ok(n) => usize::try_from(n).unwrap_or(usize::MAX),
                Err(e) => c.fail(key, e, default),
            },
        };
        let count = |c: &mut Checker, key, raw: Option<usize>, default| match raw {
            Some(0) => c.fail(key, "must be at least 1", default),
            Some(n) => n,
            None => default,
        };
        HubConfig {
            history_max_events: count(
                &mut check,
                "history_max_events",
                self.history_max_events,
                d.history_max_events,
            ),
            history_max_age: dur(
                &mut check,
                "history_max_age",
                self.history_max_age,
                d.history_max_age,
            ),
            history_max_total: count(
                &mut check,
                "history_max_total",
                self.history_max_total,
                d.history_max_total,
            ),
            history_max_bytes: size(
                &mut check,
                "history_max_bytes",
                self.history_max_bytes,
                d.history_max_bytes,
            ),
            subscriber_queue: count(
                &mut check,
                "subscriber_queue",
                self.subscriber_queue,
                d.subscriber_queue,
            ),
            subscriber_queue_bytes: size(
                &mut check,
                "subscriber_queue_bytes",
                self.subscriber_queue_bytes,
                d.subscriber_queue_bytes,
            ),
            channel_idle_ttl: dur(
                &mut check,
                "channel_idle_ttl",
                self.channel_idle_ttl,
                d.channel_idle_ttl,
            ),
            max_channels: count(
                &mut check,
                "max_channels",
                self.max_channels,
                d.max_channels,
            ),
            max_subscribers: count(
                &mut check,
                "max_subscribers",
                self.max_subscribers,
                d.max_subscribers,
            ),
            max_subscribers_per_channel: count(
                &mut check,
                "max_subscribers_per_channel",
                self.max_subscribers_per_channel,
                d.max_subscribers_per_channel,
            ),
            max_subscribers_per_ip: count(
                &mut check,
                "max_subscribers_per_ip",
                self.max_subscribers_per_ip,
                d.max_subscribers_per_ip,
            ),
            max_channels_per_subscription: count(
                &mut check,
                "max_channels_per_subscription",
                self.max_channels_per_subscription,
                d.max_channels_per_subscription,
            ),
            max_multi: count(&mut check, "max_multi", self.max_multi, d.max_multi),
            max_watch_keys: count(
                &mut check,
                "max_watch_keys",
                self.max_watch_keys,
                d.max_watch_keys,
            ),
            retry_after: dur(&mut check, "retry_after", self.retry_after, d.retry_after),
            sweep_interval: dur(
                &mut check,
                "sweep_interval",
                self.sweep_interval,
                d.sweep_interval,
            ),
        }
    }
}

/// Records a key's error and falls back to its default so validation can go on.
struct Checker<'a> {
    path: &'a str,
    errors: &'a mut crate::config::ConfigErrors,
}

impl Checker<'_> {
    fn fail<T>(&mut self, key: &str, message: impl std::fmt::Display, default: T) -> T {
        self.errors
            .push(crate::config::join(self.path, key), message);
        default
    }
}
