//! One watcher per key: a task that refetches the key on its triggers and publishes the
//! body to the key's subscribers when it changed.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use super::metrics::{Found, Trigger};
use super::version::{State, Version};
use super::{WatchHandles, WatchRule, Watcher};
use crate::cache::serve::{Refresh, Refreshed};
use crate::cache::{Cache, CacheKey};
use crate::snapshot::Snapshot;

/// Run the watcher of `key` until its last subscriber leaves, its access ends or the
/// server shuts down; `refresh` fetches the key with its first subscriber's credentials.
pub(super) async fn run(
    parts: WatchHandles,
    key: CacheKey,
    watcher: Arc<Watcher>,
    refresh: Refresh,
    rule: Arc<WatchRule>,
) {
    let watches = &parts.watches;
    let metrics = &watches.metrics;
    let mut last_fetch = Instant::now();
    let mut next_tick = last_fetch + interval_with_jitter(rule.interval);
    let mut saved = PollsSaved::new(rule.interval);
    loop {
        let trigger = tokio::select! {
            _ = parts.shutdown.cancelled() => break,
            _ = watcher.state.closed() => {
                if watches.release(&key, &watcher, false) {
                    break;
                }
                // Someone subscribed as the last one left.
                continue;
            }
            _ = tokio::time::sleep_until(next_tick), if !rule.interval.is_zero() => {
                Trigger::Interval
            }
            _ = watcher.kick.notified() => watcher.kicked(),
        };
        // A burst of purges is one fetch: wait out `min_interval` since the last one.
        tokio::select! {
            _ = parts.shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(last_fetch + rule.min_interval) => {}
        }
        last_fetch = Instant::now();
        // Boxed: a fetch's state (the upstream exchange) is kilobytes, and inline it would
        // size the task that every watched key keeps between fetches.
        let fetch = Box::pin(refetch(
            &watcher,
            &refresh,
            &rule,
            parts.snapshots.load_full(),
        ));
        let found = fetch.await;
        metrics.fetched(trigger, found);
        saved.count(watcher.state.receiver_count(), metrics, &parts.cache);
        tracing::debug!(
            rule = %rule.name,
            trigger = trigger.as_str(),
            found = found.as_str(),
            "watch refetch"
        );
        if found == Found::AccessEnded {
            watches.release(&key, &watcher, true);
            break;
        }
        next_tick = Instant::now() + interval_with_jitter(rule.interval);
    }
}

/// Fetch the key and publish what changed.
async fn refetch(
    watcher: &Watcher,
    refresh: &Refresh,
    rule: &WatchRule,
    snapshot: Arc<Snapshot>,
) -> Found {
    let entry = match refresh.run(snapshot).await {
        Refreshed::Entry(entry) => entry,
        Refreshed::Failed(_) => return Found::Failed,
    };
    if is_access_refused(entry.status) {
        watcher.state.send_replace(State::Ended(entry.status));
        return Found::AccessEnded;
    }
    if !entry.status.is_success() {
        return Found::Failed;
    }
    let version = Version::of(&entry, rule.event.as_deref());
    let mut version = Some(version);
    let changed = watcher.state.send_if_modified(|state| {
        let same = matches!((&*state, &version), (State::Body(old), Some(new)) if old.id == new.id);
        if same {
            return false;
        }
        if let Some(new) = version.take() {
            *state = State::Body(Arc::new(new));
        }
        true
    });
    if changed {
        Found::Changed
    } else {
        Found::Unchanged
    }
}

/// 401, 403 and 404 mean this subscriber may no longer see the resource.
pub(super) fn is_access_refused(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
    )
}

/// `interval` plus up to a tenth of it, so keys started together (10,000 tabs opened by
/// one deploy) do not all refetch in the same millisecond. Never shorter than `interval`:
/// the app sees at most one fetch per key per interval.
fn interval_with_jitter(interval: Duration) -> Duration {
    let spread = u64::try_from(interval.as_millis() / 10).unwrap_or(u64::MAX);
    interval + Duration::from_millis(fastrand::u64(0..=spread))
}

/// `unpoll_watch_polls_saved` for one key: the polls its subscribers would have made (one
/// per `interval` each, sampled at every refetch) minus the refetches made. Rules with
/// `interval = "0s"` have no polling period to compare with and count nothing.
struct PollsSaved {
    interval: Duration,
    since: Instant,
    /// Subscriber-seconds watched.
    watched: f64,
    fetches: u64,
    reported: u64,
}

impl PollsSaved {
    fn new(interval: Duration) -> PollsSaved {
        PollsSaved {
            interval,
            since: Instant::now(),
            watched: 0.0,
            // The initial fetch.
            fetches: 1,
            reported: 0,
        }
    }

    fn count(&mut self, subscribers: usize, metrics: &super::WatchMetrics, cache: &Cache) {
        self.fetches += 1;
        if self.interval.is_zero() {
            return;
        }
        let now = Instant::now();
        self.watched += subscribers as f64 * (now - self.since).as_secs_f64();
        self.since = now;
        let polls = (self.watched / self.interval.as_secs_f64()) as u64;
        let saved = polls.saturating_sub(self.fetches);
        if saved > self.reported {
            let more = saved - self.reported;
            self.reported = saved;
            metrics.polls_saved.inc_by(more);
            cache.metrics.upstream_requests_saved.inc_by(more);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_never_shortens_the_interval_and_spreads_it_by_a_tenth() {
        let interval = Duration::from_secs(5);
        let waits: Vec<Duration> = (0..1000).map(|_| interval_with_jitter(interval)).collect();
        assert!(
            waits
                .iter()
                .all(|w| *w >= interval && *w <= interval * 11 / 10)
        );
        let distinct: std::collections::HashSet<_> = waits.iter().collect();
        assert!(
            distinct.len() > 100,
            "spread: {} distinct waits",
            distinct.len()
        );
        assert_eq!(interval_with_jitter(Duration::ZERO), Duration::ZERO);
    }
}
