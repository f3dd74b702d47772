//! Cluster-wide `[[stream]] limits.per_channel`: each instance publishes its own count of
//! every limited channel it has subscribers on, and admits against its exact local count
//! plus the other instances' last published counts.
//!
//! # In Redis
//!
//! - `<prefix>limit:<rule> <channel>`: a hash, field node id → `<incarnation>:<count>`,
//!   written by each node for the channels it has subscribers on, expiring
//!   `3 × limit_sync` after the last write of any node.
//! - `<prefix>alive:<node id>` = the node's incarnation (a fresh value per process),
//!   expiring `3 × limit_sync` after its last refresh.
//!
//! A field counts only while its node's alive key holds the incarnation it was written
//! with: a node that died stops counting within `3 × limit_sync`, and a node restarted
//! under the same `node_id` does not inherit the counts of its previous life. Readers
//! delete the fields that no longer count.
//!
//! # When Redis is read
//!
//! Every `limit_sync` (1 s by default) one script per 256 channels writes this node's
//! counts and reads back the others' sums. An admission costs no round trip for a channel
//! already known here; the first subscriber of a channel on this instance costs one (the
//! same script, for that channel only, within `timeout`), because without it every instance
//! would admit up to the limit on its own: N instances, N × the limit. That read happens
//! only once the stream passed the rate, per-address and local per-channel limits and the
//! rule's auth, so made-up channel names from clients auth refuses cost no Redis call and
//! no tracked entry. That first subscribe
//! also pays a `SUBSCRIBE` and a history read (see `follow`), so it is the same order of
//! cost. Between two syncs the total is approximate: instances admitting at the same
//! moment can together overshoot by what each admitted since the last sync.
//!
//! # Bounds and Redis down
//!
//! Only channels with a limit and with local subscribers (or refused here within the last
//! two syncs) are tracked, at most [`MAX_TRACKED`]; past that a new channel is checked
//! against its local count only (logged once), and its streams are not counted here, so
//! they take nothing out of the count when they end. While Redis is unreachable every channel is checked
//! against its local count only: `/stats` says `cluster.limits.local_only: true` and the
//! change is logged.

use std::collections::HashMap;
use std::sync::{Arc, MutexGuard, PoisonError};

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::{Cluster, Link, failure};
use crate::auth::SharedCounts;

/// Channels tracked at most (each a few dozen bytes here and one hash in Redis).
pub const MAX_TRACKED: usize = 100_000;

/// Channels per script call: a sync of many channels is several calls, none long enough to
/// stall Redis.
const CHUNK: usize = 256;

/// Write this node's counts, read the others'. KEYS: limit hashes. ARGV: node id, alive
/// key prefix, incarnation, ttl (ms), then one count per key. Returns the others' sum per
/// key.
static SYNC: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
local node, alive, inc, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
redis.call('SET', alive .. node, inc, 'PX', ttl)
local lives = {}
local out = {}
for i, key in ipairs(KEYS) do
  local n = tonumber(ARGV[4 + i])
  if n > 0 then
    redis.call('HSET', key, node, inc .. ':' .. n)
    redis.call('PEXPIRE', key, ttl)
  else
    redis.call('HDEL', key, node)
  end
  local sum = 0
  local all = redis.call('HGETALL', key)
  for j = 1, #all, 2 do
    local f = all[j]
    if f ~= node then
      local life = lives[f]
      if life == nil then
        life = redis.call('GET', alive .. f) or false
        lives[f] = life
      end
      local finc, count = string.match(all[j + 1], '^(.*):(%d+)$')
      if life and finc == life then
        sum = sum + tonumber(count)
      else
        redis.call('HDEL', key, f)
      end
    end
  end
  out[i] = sum
end
return out
",
    )
});

/// This node's view of the limited channels.
#[derive(Default)]
pub(super) struct Table {
    /// By `<rule> <channel>` (a rule's name is its path: no spaces).
    entries: HashMap<String, Entry>,
    /// Admissions are checked against local counts only (Redis unreachable).
    local_only: bool,
    /// The table was found full (at [`MAX_TRACKED`]) and that was logged: once per process.
    full_logged: bool,
}

struct Entry {
    /// Streams open here (all config snapshots together).
    local: usize,
    /// The other nodes' sum at the last read.
    others: usize,
    /// `others` has been read (since the last connection).
    known: bool,
    /// A first read is under way: concurrent first subscribers do not each start one (a
    /// burst of them on a new channel would be a burst of Redis calls); they are checked
    /// against what is known meanwhile.
    reading: bool,
    /// `local` was 0 at the last sync already: dropped at the next if still 0.
    idle: bool,
}

fn entry_key(rule: &str, channel: &str) -> String {
    format!("{rule} {channel}")
}

impl Cluster {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// For `/stats`.
    pub(super) fn limit_stats(&self) -> serde_json::Value {
        let table = self.table();
        serde_json::json!({
            "channels": table.entries.len(),
            "local_only": table.local_only,
        })
    }

    /// Subscribers of (`rule`, `channel`) in the whole cluster as this node knows them:
    /// (its own, the others' at the last read); `None` while the others' are unknown.
    pub fn cluster_count(&self, rule: &str, channel: &str) -> Option<(usize, usize)> {
        let table = self.table();
        let e = table.entries.get(&entry_key(rule, channel))?;
        e.known.then_some((e.local, e.others))
    }

    /// Run [`SYNC`] for `keys` (`<rule> <channel>`) with their local counts; the others'
    /// sums, in order.
    async fn sync_counts(
        &self,
        link: &Link,
        keys: &[(String, usize)],
    ) -> Result<Vec<usize>, String> {
        let ttl = u64::try_from(self.config.limit_sync.as_millis() * 3).unwrap_or(u64::MAX);
        let mut sums = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(CHUNK) {
            let mut cmd = link.cmd.clone();
            let mut call = SYNC.prepare_invoke();
            for (key, _) in chunk {
                call.key(format!("{}{key}", self.keys.limit));
            }
            call.arg(&self.config.node_id)
                .arg(&self.keys.alive)
                .arg(&self.incarnation)
                .arg(ttl);
            for (_, local) in chunk {
                call.arg(*local);
            }
            let got: Vec<usize> =
                tokio::time::timeout(self.config.timeout, call.invoke_async(&mut cmd))
                    .await
                    .map_err(|e| failure("limit counts", e))?
                    .map_err(|e| failure("limit counts", e))?;
            sums.extend(got);
        }
        Ok(sums)
    }

    /// Record a sync's outcome: `sums` for `keys`, or local-only on `Err`.
    fn record_sums(&self, keys: &[(String, usize)], sums: Result<Vec<usize>, String>) {
        let mut table = self.table();
        match sums {
            Ok(sums) => {
                if table.local_only {
                    tracing::info!("per-channel limits are cluster-wide again");
                }
                table.local_only = false;
                for ((key, _), sum) in keys.iter().zip(sums) {
                    if let Some(e) = table.entries.get_mut(key) {
                        e.others = sum;
                        e.known = true;
                    }
                }
            }
            Err(why) => {
                if !table.local_only {
                    tracing::warn!(
                        cause = %why,
                        "per-channel limits fall back to this instance's counts"
                    );
                }
                table.local_only = true;
                for e in table.entries.values_mut() {
                    e.others = 0;
                    e.known = false;
                }
            }
        }
    }

    /// Publish this node's counts and read the others' every `limit_sync`, until
    /// `shutdown`.
    pub(super) async fn sync_limits(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.limit_sync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let keys: Vec<(String, usize)> = {
                let mut table = self.table();
                // A channel with nobody here for two syncs is dropped (its 0 was written
                // at the first).
                table.entries.retain(|_, e| e.local > 0 || !e.idle);
                table
                    .entries
                    .iter_mut()
                    .map(|(k, e)| {
                        e.idle = e.local == 0;
                        (k.clone(), e.local)
                    })
                    .collect()
            };
            if keys.is_empty() {
                continue;
            }
            let sums = match self.link() {
                Some(link) => self.sync_counts(&link, &keys).await,
                None => Err("not connected to Redis".to_string()),
            };
            self.record_sums(&keys, sums);
        }
    }
}

impl SharedCounts for Cluster {
    fn others(&self, rule: &str, channel: &str) -> usize {
        self.table()
            .entries
            .get(&entry_key(rule, channel))
            .map_or(0, |e| e.others)
    }

    fn add_local(&self, rule: &str, channel: &str, up: bool) -> bool {
        let mut table = self.table();
        let key = entry_key(rule, channel);
        if let Some(e) = table.entries.get_mut(&key) {
            e.local = if up {
                e.local + 1
            } else {
                e.local.saturating_sub(1)
            };
            return true;
        }
        if !up {
            return false;
        }
        if table.entries.len() >= MAX_TRACKED {
            if !table.full_logged {
                table.full_logged = true;
                tracing::warn!(
                    tracked = MAX_TRACKED,
                    "per-channel limits track no more channels cluster-wide; new channels are \
                     limited by this instance's count only"
                );
            }
            return false;
        }
        table.entries.insert(
            key,
            Entry {
                local: 1,
                others: 0,
                known: false,
                reading: false,
                idle: false,
            },
        );
        true
    }

    fn prepare<'a>(&'a self, rule: &'a str, channels: &'a [String]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let keys: Vec<(String, usize)> = {
                let mut table = self.table();
                if table.local_only {
                    return;
                }
                let mut keys = Vec::new();
                for c in channels {
                    let key = entry_key(rule, c);
                    let room = table.entries.len() < MAX_TRACKED;
                    let e = match table.entries.get_mut(&key) {
                        Some(e) => e,
                        None if room => table.entries.entry(key.clone()).or_insert(Entry {
                            local: 0,
                            others: 0,
                            known: false,
                            reading: false,
                            idle: false,
                        }),
                        None => continue,
                    };
                    if !e.known && !e.reading {
                        e.reading = true;
                        keys.push((key, e.local));
                    }
                }
                keys
            };
            if keys.is_empty() {
                return;
            }
            let sums = match self.link() {
                Some(link) => self.sync_counts(&link, &keys).await,
                None => Err("not connected".to_string()),
            };
            // A failed first read is what a failed sync is: limits fall back to this
            // instance's counts until a sync succeeds. Left unknown instead, every
            // subscribe to the channel would wait on Redis again until the next sync.
            self.record_sums(&keys, sums);
            let mut table = self.table();
            for (key, _) in &keys {
                if let Some(e) = table.entries.get_mut(key) {
                    e.reading = false;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::Arc;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::auth::{AuthMetrics, Limiter, StreamLimits};

    /// A table at its bound admits a new channel on the local count alone, and the stream
    /// then never takes a place out of the count: by the time it ends another stream may
    /// have made the channel tracked, and that count must stay exact.
    #[tokio::test]
    async fn a_stream_not_counted_past_the_bound_is_not_taken_out_of_the_count() {
        // Nothing connects to Redis before `Cluster::run`: the table is all this needs.
        let config = crate::config::parse_rules("[cluster]\nredis = \"redis://127.0.0.1:1\"\n")
            .expect("valid");
        let app = crate::app::App::new(config, CancellationToken::new());
        let cluster = app.cluster.clone().expect("cluster");
        {
            let mut table = cluster.table();
            for i in 0..MAX_TRACKED {
                table.entries.insert(
                    entry_key("/r", &format!("filler{i}")),
                    Entry {
                        local: 1,
                        others: 0,
                        known: true,
                        reading: false,
                        idle: false,
                    },
                );
            }
        }
        let limits = StreamLimits {
            per_channel: Some(10),
            ..StreamLimits::default()
        };
        let shared: Arc<dyn SharedCounts> = cluster.clone();
        let limiter = Limiter::new(limits, AuthMetrics::default(), Some(("/r", shared)));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let channels = vec!["c".to_string()];

        let mut first = limiter.admit(ip, &channels).unwrap();
        limiter.confirm_shared(&mut first).await.unwrap();
        assert_eq!(
            cluster
                .table()
                .entries
                .get(&entry_key("/r", "c"))
                .map(|e| e.local),
            None
        );

        // Room again; a second stream of the channel makes it tracked.
        cluster.table().entries.remove(&entry_key("/r", "filler0"));
        let mut second = limiter.admit(ip, &channels).unwrap();
        limiter.confirm_shared(&mut second).await.unwrap();
        let local = |c: &Cluster| {
            c.table()
                .entries
                .get(&entry_key("/r", "c"))
                .map(|e| e.local)
        };
        assert_eq!(local(&cluster), Some(1));

        drop(first);
        assert_eq!(
            local(&cluster),
            Some(1),
            "the untracked stream took a place out"
        );
        drop(second);
        assert_eq!(local(&cluster), Some(0));
    }
}
