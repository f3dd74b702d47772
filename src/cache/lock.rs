//! Request coalescing: concurrent misses on one key make one upstream request.
//!
//! The first request gets a [`WritePermit`] and fetches; the others get a [`ReadLock`] and
//! are woken the moment the writer finishes (a `watch` channel, no polling timer). What they
//! get is the writer's [`Outcome`]:
//!
//! - `Shared`: the response, stored or not (a 500 is not stored but every waiter gets it, so
//!   a failing upstream sees one request, not a stampede);
//! - `Failed`: the upstream error, which each waiter answers with (or with its stale entry);
//! - `Pass`: the response was personal (Set-Cookie, private) or too large to buffer: every
//!   waiter goes upstream itself, all at once — never one after the other, which is
//!   Varnish's classic stall behind an uncacheable object;
//! - `Abandoned`: the writer vanished (its client went away, a panic): the [`WritePermit`]'s
//!   `Drop` says so, and the waiters race for the lock again, so exactly one of them fetches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use tokio::sync::watch;

use super::entry::Entry;
use super::key::CacheKey;

/// What the writer tells its waiters.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The upstream's complete response.
    Shared(Arc<Entry>),
    /// The upstream failed: answer with this status and message (or a stale entry).
    Failed(StatusCode, &'static str),
    /// Go upstream yourself, now.
    Pass,
    /// The writer is gone; try for the lock again.
    Abandoned,
}

type Slot = watch::Receiver<Option<Outcome>>;

/// The keys being fetched now.
#[derive(Clone, Default)]
pub struct Locks {
    /// In-flight fills by key. Bounded by the number of concurrent distinct misses, which
    /// the connection cap bounds; every entry is removed by its permit (or the permit's Drop).
    inflight: Arc<Mutex<HashMap<CacheKey, Slot>>>,
}

/// The result of asking for a key's lock.
pub enum Acquired {
    /// You fetch; finish the permit with the outcome.
    Write(WritePermit),
    /// Someone else is fetching; wait on this.
    Read(ReadLock),
}

/// The right, and duty, to fetch a key and tell the waiters.
pub struct WritePermit {
    key: CacheKey,
    locks: Locks,
    tx: watch::Sender<Option<Outcome>>,
    finished: bool,
}

/// A wait for another request's fetch.
pub struct ReadLock(Slot);

impl Locks {
    /// Become the writer for `key`, or a reader of the writer in flight.
    pub fn acquire(&self, key: &CacheKey) -> Acquired {
        let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = map.get(key) {
            return Acquired::Read(ReadLock(rx.clone()));
        }
        let (tx, rx) = watch::channel(None);
        map.insert(key.clone(), rx);
        Acquired::Write(WritePermit {
            key: key.clone(),
            locks: self.clone(),
            tx,
            finished: false,
        })
    }

    /// Become the writer only if nobody is fetching `key` (background refresh).
    pub fn try_write(&self, key: &CacheKey) -> Option<WritePermit> {
        match self.acquire(key) {
            Acquired::Write(p) => Some(p),
            Acquired::Read(_) => None,
        }
    }

    /// Keys being fetched now.
    pub fn in_flight(&self) -> usize {
        self.inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    fn release(&self, key: &CacheKey) {
        self.inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

impl WritePermit {
    /// Release the key and wake every waiter with `outcome`. Store the entry *before*
    /// calling this, so requests arriving after the release find it.
    pub fn finish(mut self, outcome: Outcome) {
        self.finished = true;
        self.locks.release(&self.key);
        // No receiver left is fine: nobody waited.
        let _ = self.tx.send(Some(outcome));
    }
}

impl Drop for WritePermit {
    fn drop(&mut self) {
        if !self.finished {
            self.locks.release(&self.key);
            let _ = self.tx.send(Some(Outcome::Abandoned));
        }
    }
}

impl ReadLock {
    /// Wait for the writer's outcome, at most `timeout` (then `None`: go upstream yourself).
    pub async fn wait(mut self, timeout: Duration) -> Option<Outcome> {
        let waited = tokio::time::timeout(timeout, self.0.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(outcome)) => outcome.clone(),
            // The sender is dropped only after sending (finish or Drop), so this is the
            // Drop's `Abandoned` racing the close; treat it the same.
            Ok(Err(_)) => Some(Outcome::Abandoned),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> CacheKey {
        let raw: super::super::config::RawCacheRule = toml::from_str("path = \"/m\"").unwrap();
        let rule = raw.validate("cache[0]", &mut Default::default()).unwrap();
        CacheKey::new(&rule, &s.parse().unwrap(), &http::HeaderMap::new())
    }

    #[tokio::test]
    async fn one_writer_many_readers_woken_at_once() {
        let locks = Locks::default();
        let k = key("/a");
        let Acquired::Write(permit) = locks.acquire(&k) else {
            panic!("first acquirer must write")
        };
        let readers: Vec<_> = (0..500)
            .map(|_| match locks.acquire(&k) {
                Acquired::Read(r) => tokio::spawn(r.wait(Duration::from_secs(10))),
                Acquired::Write(_) => panic!("second writer"),
            })
            .collect();
        assert!(locks.try_write(&k).is_none());
        permit.finish(Outcome::Pass);
        for r in readers {
            assert!(matches!(r.await.unwrap(), Some(Outcome::Pass)));
        }
        assert_eq!(locks.in_flight(), 0);
        assert!(matches!(locks.acquire(&k), Acquired::Write(_)), "released");
    }

    #[tokio::test]
    async fn a_vanished_writer_releases_the_key() {
        let locks = Locks::default();
        let k = key("/b");
        let permit = locks.acquire(&k);
        let Acquired::Read(reader) = locks.acquire(&k) else {
            panic!("expected a reader")
        };
        let waiting = tokio::spawn(reader.wait(Duration::from_secs(10)));
        drop(permit);
        assert!(matches!(waiting.await.unwrap(), Some(Outcome::Abandoned)));
        assert_eq!(locks.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn readers_give_up_after_the_lock_timeout() {
        let locks = Locks::default();
        let k = key("/c");
        let _permit = locks.acquire(&k);
        let Acquired::Read(reader) = locks.acquire(&k) else {
            panic!("expected a reader")
        };
        assert!(reader.wait(Duration::from_secs(1)).await.is_none());
    }
}
