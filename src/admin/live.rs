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
use tokio_util::sync::CancellationToken;

use super::AdminHandles;
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
/// Streams open at once (each holds a connection and builds a first frame); past this a new
/// one gets 503.
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
    fn read(parts: &AdminHandles) -> Totals {
        let handles = &parts.handles;
        let resets = &handles.hub.metrics().resets;
        // Every reason a reset is counted under (a family cannot be summed otherwise).
        let reasons = [
            ResetReason::Evicted,
            ResetReason::OtherBoot,
            ResetReason::Unparsable,
            ResetReason::Unknown,
            ResetReason::SourceLost(String::new()),
        ];
        Totals {
            client: parts.snapshot().routes.responses(),
            upstream: handles.metrics.upstream_responses.get(),
            saved: handles.cache.metrics.upstream_requests_saved.get(),
            events: handles.hub.metrics().published.get(),
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
    /// The last [`HISTORY_SAMPLES`] samples, oldest first, and how many were ever taken:
    /// written by the sampler, copied by a stream when it opens.
    samples: Mutex<(VecDeque<Sample>, u64)>,
    /// The latest frame, built once per sample for every open stream (and not at all while
    /// none is open): a `/stats` document costs a pass over the hub's channels.
    frame: watch::Sender<Bytes>,
    /// One permit per open stream, [`MAX_STREAMS`] in all.
    streams: Arc<Semaphore>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            samples: Mutex::new((VecDeque::with_capacity(HISTORY_SAMPLES), 0)),
            frame: watch::channel(Bytes::new()).0,
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        }
    }
}

impl Live {
    /// Keep `sample`; returns how many were taken so far (the frame's id).
    fn push(&self, sample: Sample) -> u64 {
        let mut guard = self.lock();
        let (samples, taken) = &mut *guard;
        if samples.len() == HISTORY_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
        *taken += 1;
        *taken
    }

    /// The samples kept, and how many were ever taken.
    fn history(&self) -> (Vec<Sample>, u64) {
        let guard = self.lock();
        (guard.0.iter().copied().collect(), guard.1)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (VecDeque<Sample>, u64)> {
        self.samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Take a sample every [`SAMPLE_EVERY`] until shutdown, and send it to the open streams.
pub async fn run_sampler(parts: AdminHandles) {
    let (live, shutdown) = (&parts.live, &parts.handles.shutdown);
    let mut before = Totals::read(&parts);
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let now = Totals::read(&parts);
        let sample = now.since(before, unix_ms());
        let taken = live.push(sample);
        before = now;
        if live.frame.receiver_count() > 0 {
            let value = frame(&parts, FrameSamples::Latest(sample));
            live.frame
                .send_replace(encode::event(&taken.to_string(), None, &value));
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `GET /dashboard/stream`: first the history and the current stats, then one frame per
/// sample (`{"sample", "stats", "sources"}`), until shutdown or the client leaves.
pub fn stream(parts: &AdminHandles) -> Response<Body> {
    let live = &parts.live;
    let Ok(permit) = live.streams.clone().try_acquire_owned() else {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many dashboard streams open",
        );
    };
    // Subscribed before the history is read: a sample taken in between is sent twice at
    // worst (the page keeps a rolling window), never skipped.
    let frames = live.frame.subscribe();
    let (history, taken) = live.history();
    let mut first = encode::retry(RETRY).to_vec();
    let value = frame(parts, FrameSamples::History(history));
    first.extend_from_slice(&encode::event(&taken.to_string(), None, &value));
    let state = StreamState {
        shutdown: parts.handles.shutdown.clone(),
        first: Some(first.into()),
        frames,
        _permit: permit,
    };
    let body = futures_util::stream::unfold(state, |mut state| async move {
        let bytes = state.next().await?;
        Some((Ok::<_, Infallible>(Frame::data(bytes)), state))
    });
    let mut resp = Response::new(boxed(http_body_util::StreamBody::new(body)));
    set_headers(resp.headers_mut());
    resp
}

struct StreamState {
    /// Ends the stream at shutdown.
    shutdown: CancellationToken,
    /// The retry hint and the frame with the history, until sent.
    first: Option<Bytes>,
    frames: watch::Receiver<Bytes>,
    /// Held as long as the stream is open.
    _permit: OwnedSemaphorePermit,
}

impl StreamState {
    /// The next bytes to send; `None` at shutdown.
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        tokio::select! {
            changed = self.frames.changed() => changed.ok()?,
            _ = self.shutdown.cancelled() => return None,
        }
        Some(self.frames.borrow_and_update().clone())
    }
}

/// What a frame carries of the samples.
enum FrameSamples {
    /// All kept (a stream's first frame).
    History(Vec<Sample>),
    /// The one just taken.
    Latest(Sample),
}

/// The JSON of one frame.
fn frame(parts: &AdminHandles, samples: FrameSamples) -> String {
    let (sample, history) = match samples {
        FrameSamples::History(history) => (history.last().copied(), Some(history)),
        FrameSamples::Latest(sample) => (Some(sample), None),
    };
    serde_json::json!({
        "sample": sample,
        "history": history,
        "sample_every_ms": SAMPLE_EVERY.as_millis() as u64,
        "stats": super::stats_value(parts),
        "sources": sources(parts),
    })
    .to_string()
}

/// The configured event sources and their state: `connected`, or why not.
fn sources(parts: &AdminHandles) -> Vec<serde_json::Value> {
    let snapshot = parts.snapshot();
    let config = &snapshot.config;
    let not_ready = parts.readiness.not_ready();
    let configured = [
        (
            super::readiness::POSTGRES,
            config.postgres.is_some() && !config.notify.is_empty(),
        ),
        (super::readiness::MQTT, config.mqtt.is_some()),
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
        let (history, taken) = live.history();
        assert_eq!(history.len(), HISTORY_SAMPLES);
        assert_eq!(history[0].t, 5);
        assert_eq!(
            history.last().map(|s| s.t),
            Some(HISTORY_SAMPLES as u64 + 4)
        );
        assert_eq!(taken, HISTORY_SAMPLES as u64 + 5);
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
