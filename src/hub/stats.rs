//! The hub's part of `/stats`.

use serde::Serialize;

use super::Hub;

/// A snapshot of the hub for `/stats`.
#[derive(Debug, Clone, Serialize)]
pub struct HubStats {
    /// The hub position now (`Unpoll-Cursor`).
    pub cursor: String,
    /// Channels tracked.
    pub channels: usize,
    /// Subscriptions open.
    pub subscribers: usize,
    /// Distinct client addresses with a subscription.
    pub client_addresses: usize,
    /// Events published since start.
    pub events_published: u64,
    /// Frames queued to subscribers since start.
    pub events_delivered: u64,
    /// Frames dropped with overflowed subscribers since start.
    pub events_dropped: u64,
    /// Events kept in history.
    pub history_events: usize,
    /// Bytes of encoded events kept in history.
    pub history_bytes: usize,
    /// The channels with the most subscribers, most first.
    pub top_channels: Vec<ChannelStats>,
}

/// One channel in [`HubStats`].
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ChannelStats {
    /// Its name.
    pub name: String,
    /// Subscriptions on it.
    pub subscribers: usize,
    /// Events in its history.
    pub history: usize,
}

impl Hub {
    /// A snapshot with the `top` busiest channels.
    pub fn stats(&self, top: usize) -> HubStats {
        let inner = &*self.inner;
        let state = inner.lock();
        let mut channels: Vec<(usize, usize, &str)> = state
            .channels
            .iter()
            .map(|(name, ch)| (ch.subscribers.len(), ch.history.len(), &**name))
            .collect();
        let top = top.min(channels.len());
        if top > 0 {
            // Partial sort: only the first `top` need ordering, and there may be 100k.
            channels.select_nth_unstable_by(top - 1, |a, b| b.0.cmp(&a.0).then(a.2.cmp(b.2)));
            channels.truncate(top);
            channels.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.2.cmp(b.2)));
        } else {
            channels.clear();
        }
        let m = &inner.metrics;
        HubStats {
            cursor: self.cursor().to_string(),
            channels: state.channels.len(),
            subscribers: state.subscribers,
            client_addresses: state.per_ip.len(),
            events_published: m.published.get(),
            events_delivered: m.delivered.get(),
            events_dropped: m.dropped.get(),
            history_events: state.history_events,
            history_bytes: state.history_bytes,
            top_channels: channels
                .into_iter()
                .map(|(subscribers, history, name)| ChannelStats {
                    name: name.to_owned(),
                    subscribers,
                    history,
                })
                .collect(),
        }
    }
}
