//! The dashboard's live numbers: once a second a sample of what changed (client requests,
//! upstream requests, requests saved, events, resets), the last minutes of them kept, and
//! `GET /dashboard/stream`, an SSE stream sending each new sample with the current `/stats`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body::Frame;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::app::App;
use crate::body::{Body, boxed};
use crate::hub::{ReasonLabels, ResetReason};
use crate::proxy::error_response;
use crate::sse::{encode, set_headers};

/// The path of the stats stream on the admin listener.
pub const STREAM_PATH: &str = "/dashboard/stream";
/// Time between two samples (and two frames of each stream).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Samples kept: 5 minutes. When full, the oldest is dropped.
pub const HISTORY_SAMPLES: usize = 300;
/// Streams open at once. Each builds a `/stats` snapshot per second (a lock on the hub);
/// past this a new one gets 503.
pub const MAX_STREAMS: usize = 16;
/// The browser's reconnect delay after a stream ends.
const RETRY: Duration = Duration::from_secs(2);

/// What changed during one sampling interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// When it was taken, Unix milliseconds.
    pub t: u64,
    /// Responses sent to clients on the main listener.
    pub client: u64,
    /// Upstream requests answered by the app.
    pub upstream: u64,
    /// Requests answered without the upstream (cache hits, coalesced, stale).
    pub saved: u64,
    /// Events published.
    pub events: u64,
    /// `reset` events sent to subscribers.
    pub resets: u64,
}

/// The counters a sample is the difference of.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    client: u64,
    upstream: u64,
    saved: u64,
    events: u64,
    resets: u64,
}

impl Totals {
    fn read(app: &App) -> Totals {
        let resets = app.hub.metrics().resets.clone();
        let reasons = [
            ResetReason::Evicted,
            ResetReason::OtherBoot,
            ResetReason::Unparsable,
            ResetReason::Unknown,
            ResetReason::SourceLost(String::new()),
        ];
        Totals {
            client: app.snapshot().routes.responses(),
            upstream: app.metrics.upstream_responses.get(),
            saved: app.cache.metrics.upstream_requests_saved.get(),
            events: app.hub.metrics().published.get(),
            resets: reasons
                .iter()
                .filter_map(|r| {
                    resets
                        .get(&ReasonLabels { reason: r.as_str() })
                        .map(|c| c.get())
                })
                .sum(),
        }
    }

    /// `self - before`; a counter that went down (a rule renamed by a reload) counts 0.
    fn since(self, before: Totals, t: u64) -> Sample {
        Sample {
            t,
            client: self.client.saturating_sub(before.client),
            upstream: self.upstream.saturating_sub(before.upstream),
            saved: self.saved.saturating_sub(before.saved),
            events: self.events.saturating_sub(before.events),
            resets: self.resets.saturating_sub(before.resets),
        }
    }
}

/// The recent samples and the streams following them.
pub struct Live {
    /// The last [`HISTORY_SAMPLES`] samples, oldest first: written by the sampler, copied by
    /// a stream when it opens.
    samples: Mutex<VecDeque<Sample>>,
    /// The number of samples taken; each stream waits for it to change.
    taken: watch::Sender<u64>,
    /// One permit per open stream, [`MAX_STREAMS`] in all.
    streams: Arc<Semaphore>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            samples: Mutex::new(VecDeque::with_capacity(HISTORY_SAMPLES)),
            taken: watch::channel(0).0,
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        }
    }
}

impl Live {
    fn push(&self, sample: Sample) {
        {
            let mut samples = self.lock();
            if samples.len() == HISTORY_SAMPLES {
                samples.pop_front();
            }
            samples.push_back(sample);
        }
        self.taken.send_modify(|n| *n += 1);
    }

    fn history(&self) -> Vec<Sample> {
        self.lock().iter().copied().collect()
    }

    fn latest(&self) -> Option<Sample> {
        self.lock().back().copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Sample>> {
        self.samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Take a sample every [`SAMPLE_EVERY`] until shutdown.
pub async fn run_sampler(app: Arc<App>) {
    let mut before = Totals::read(&app);
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = app.shutdown.cancelled() => return,
        }
        let now = Totals::read(&app);
        app.live.push(now.since(before, unix_ms()));
        before = now;
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `GET /dashboard/stream`: first the history and the current stats, then one frame per
/// sample (`{"sample", "stats", "sources"}`), until shutdown or the client leaves.
pub fn stream(app: &Arc<App>) -> Response<Body> {
    let Ok(permit) = app.live.streams.clone().try_acquire_owned() else {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many dashboard streams open",
        );
    };
    let state = StreamState {
        app: app.clone(),
        taken: app.live.taken.subscribe(),
        opened: false,
        _permit: permit,
    };
    let frames = futures_util::stream::unfold(state, |mut state| async move {
        let bytes = state.next().await?;
        Some((Ok::<_, Infallible>(Frame::data(bytes)), state))
    });
    let mut resp = Response::new(boxed(http_body_util::StreamBody::new(frames)));
    set_headers(resp.headers_mut());
    resp
}

struct StreamState {
    app: Arc<App>,
    taken: watch::Receiver<u64>,
    opened: bool,
    /// Held as long as the stream is open.
    _permit: OwnedSemaphorePermit,
}

impl StreamState {
    /// The next bytes to send; `None` at shutdown.
    async fn next(&mut self) -> Option<Bytes> {
        if !self.opened {
            self.opened = true;
            self.taken.mark_unchanged();
            let mut first = encode::retry(RETRY).to_vec();
            first.extend_from_slice(&self.frame(Some(self.app.live.history())));
            return Some(first.into());
        }
        tokio::select! {
            changed = self.taken.changed() => changed.ok()?,
            _ = self.app.shutdown.cancelled() => return None,
        }
        Some(self.frame(None))
    }

    fn frame(&self, history: Option<Vec<Sample>>) -> Bytes {
        let app = &self.app;
        let value = serde_json::json!({
            "sample": app.live.latest(),
            "history": history,
            "sample_every_ms": SAMPLE_EVERY.as_millis() as u64,
            "stats": super::stats_value(app),
            "sources": sources(app),
        });
        let id = self.taken.borrow().to_string();
        encode::event(&id, None, &value.to_string())
    }
}

/// The configured event sources and their state: `connected`, or why not.
fn sources(app: &App) -> Vec<serde_json::Value> {
    let snapshot = app.snapshot();
    let config = &snapshot.config;
    let not_ready = app.not_ready();
    let configured = [
        (
            crate::sources::postgres::READINESS,
            config.postgres.is_some() && !config.notify.is_empty(),
        ),
        (crate::sources::mqtt::READINESS, config.mqtt.is_some()),
    ];
    configured
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(name, _)| {
            let problem = not_ready.iter().find(|(c, _)| *c == name);
            serde_json::json!({
                "name": name,
                "ok": problem.is_none(),
                "state": problem.map_or("connected", |(_, why)| why.as_str()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_samples() {
        let live = Live::default();
        for t in 0..HISTORY_SAMPLES as u64 + 5 {
            live.push(Sample {
                t,
                ..Sample::default()
            });
        }
        let history = live.history();
        assert_eq!(history.len(), HISTORY_SAMPLES);
        assert_eq!(history[0].t, 5);
        assert_eq!(live.latest().map(|s| s.t), Some(HISTORY_SAMPLES as u64 + 4));
        assert_eq!(*live.taken.borrow(), HISTORY_SAMPLES as u64 + 5);
    }

    #[test]
    fn a_counter_that_went_down_counts_zero() {
        let before = Totals {
            client: 10,
            upstream: 4,
            saved: 6,
            events: 1,
            resets: 0,
        };
        let now = Totals {
            client: 7,
            upstream: 5,
            saved: 9,
            events: 3,
            resets: 2,
        };
        let s = now.since(before, 42);
        assert_eq!(
            (s.t, s.client, s.upstream, s.saved, s.events, s.resets),
            (42, 0, 1, 3, 2, 2)
        );
    }
}
