//! `[[watch]]` rules: an unchanged polling endpoint becomes a stream of its body.
//!
//! A GET on a watched path with `Accept: text/event-stream` subscribes to the key's watcher
//! (`serve.rs`); without it, the cache serves the poll from the same entries. One watcher
//! per key (`watcher.rs`) refetches it on the rule's interval, on purges of its tags and on
//! source gaps, through the cache's coalescing fill, and publishes the body when its
//! version changed (`version.rs`). The registry of watchers is [`Watches`].
//!
//! `config.rs` the rule (and the cache rule its polls are served by); `metrics.rs` the
//! counters and `/stats`; `inject.rs` adds the browser client to the app's HTML pages for
//! `inject = true` rules.

pub mod config;
mod handles;
pub mod inject;
pub mod metrics;
pub mod serve;
pub mod version;
mod watcher;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Notify, watch};

pub use config::{RawWatchRule, WatchRule};
pub use handles::WatchHandles;
pub use metrics::{Trigger, WatchMetrics};
pub use serve::{WatchSubscription, serve, subscribe};

use crate::cache::CacheKey;
use version::{State, Version};

/// The watchers of one instance, by key. Lives as long as the instance: a reload keeps
/// every open watch stream.
pub struct Watches {
    /// Watchers by key. At most `max_keys` (full: a stream that would start a new watcher
    /// gets 429); a watcher removes itself when its last subscriber leaves or its access
    /// ends. Held only to look up, insert or remove, never across an await.
    watchers: Mutex<HashMap<CacheKey, Arc<Watcher>>>,
    /// `hub.max_watch_keys`.
    max_keys: usize,
    /// Counters and gauges.
    pub metrics: WatchMetrics,
}

/// Why a stream could not join or start a watcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// `hub.max_watch_keys` keys are watched.
    Keys,
}

impl Watches {
    /// An empty registry of at most `max_keys` watchers, counted in `metrics`.
    pub fn new(max_keys: usize, metrics: WatchMetrics) -> Watches {
        Watches {
            watchers: Mutex::new(HashMap::new()),
            max_keys,
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Arc<Watcher>>> {
        // The map is valid after any panic: insert and remove are single operations.
        self.watchers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Subscribe to `key`'s watcher, if one runs.
    fn join(&self, key: &CacheKey) -> Option<tokio::sync::watch::Receiver<version::State>> {
        self.lock().get(key).map(|w| w.state.subscribe())
    }

    /// Whether a new key would be refused now.
    fn is_full(&self, key: &CacheKey) -> bool {
        let map = self.lock();
        map.len() >= self.max_keys && !map.contains_key(key)
    }

    /// Subscribe to `key`'s watcher, starting it with `start` when none runs (under the
    /// lock, so exactly one watcher starts per key and a subscriber never joins one that is
    /// leaving).
    fn join_or_start(
        &self,
        key: &CacheKey,
        start: impl FnOnce() -> Arc<Watcher>,
    ) -> Result<
        (
            Arc<Watcher>,
            tokio::sync::watch::Receiver<version::State>,
            bool,
        ),
        Full,
    > {
        let mut map = self.lock();
        if let Some(w) = map.get(key) {
            let rx = w.state.subscribe();
            return Ok((w.clone(), rx, false));
        }
        if map.len() >= self.max_keys {
            return Err(Full::Keys);
        }
        let w = start();
        let rx = w.state.subscribe();
        map.insert(key.clone(), w.clone());
        self.metrics.keys.inc();
        Ok((w, rx, true))
    }

    /// Remove `watcher` from the registry if it has no subscriber left (or `always`);
    /// returns whether it was removed (then its task ends).
    fn release(&self, key: &CacheKey, watcher: &Arc<Watcher>, always: bool) -> bool {
        let mut map = self.lock();
        if !always && watcher.state.receiver_count() > 0 {
            return false;
        }
        if map.get(key).is_some_and(|w| Arc::ptr_eq(w, watcher)) {
            map.remove(key);
            self.metrics.keys.dec();
        }
        true
    }

    /// Refetch every watched key carrying one of `tags` (a tap, a `[[notify]]` purge,
    /// `POST /purge`).
    pub fn purged(&self, tags: &[String]) {
        self.kick(Trigger::Tag, |tag| tags.iter().any(|t| t == tag));
    }

    /// Refetch every watched key with a tag matching `pattern` (`*` wildcards): a source
    /// lost events and cannot say which tags they concerned.
    pub fn gap(&self, pattern: &str) {
        self.kick(Trigger::Gap, |tag| crate::hub::glob::matches(pattern, tag));
    }

    /// One pass over the watchers: a purge costs O(watched keys), bounded by
    /// `max_keys`, and wakes only the watchers concerned.
    fn kick(&self, trigger: Trigger, concerned: impl Fn(&str) -> bool) {
        for w in self.lock().values() {
            if w.tags.iter().any(|t| concerned(t)) {
                w.kick(trigger);
            }
        }
    }

    /// Keys watched now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no key is watched.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The shared part of a watcher: what subscribers read and what purges poke.
struct Watcher {
    /// What every subscriber should have now. A `watch` channel holds only the latest
    /// state, so a subscriber that has not sent a version before the next one arrives skips
    /// it: memory is one version per key however slow its subscribers are.
    state: watch::Sender<State>,
    /// Woken by a purge of one of the key's tags or a source gap. A wake that comes while
    /// a fetch runs is kept (a `Notify` permit), so a change during a fetch is fetched again.
    kick: Notify,
    /// The [`Trigger`] of the pending kick (`Tag` or `Gap`), for metrics.
    pending: AtomicU8,
    /// The key's rendered tags.
    tags: Vec<String>,
}

impl Watcher {
    /// A watcher whose subscribers start from `version`.
    fn new(version: Version, tags: Vec<String>) -> Watcher {
        let (state, _) = watch::channel(State::Body(Arc::new(version)));
        Watcher {
            state,
            kick: Notify::new(),
            pending: AtomicU8::new(Trigger::Tag as u8),
            tags,
        }
    }

    /// Refetch as soon as `min_interval` allows.
    fn kick(&self, trigger: Trigger) {
        self.pending.store(trigger as u8, Ordering::Relaxed);
        self.kick.notify_one();
    }

    fn kicked(&self) -> Trigger {
        if self.pending.load(Ordering::Relaxed) == Trigger::Gap as u8 {
            Trigger::Gap
        } else {
            Trigger::Tag
        }
    }
}
