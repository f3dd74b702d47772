//! Per-rule abuse limits: subscribers per channel, streams per client address, and new
//! streams per address per period. They sit on top of the hub's server-wide caps
//! (`[hub] max_subscribers*`), which protect the process; these protect one endpoint from
//! one client, so they are per rule and usually much lower.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::config::StreamLimits;
use super::error::{AuthError, Limit};
use super::metrics::AuthMetrics;
use super::rate::RateTable;

/// Subscribers counted on other instances (a cluster): `limits.per_channel` is then a
/// cluster-wide limit, checked against this instance's exact count plus the others' last
/// published counts.
pub trait SharedCounts: Send + Sync + 'static {
    /// Subscribers of `channel` under rule `rule` on the other instances, as last known (0
    /// when unknown, for instance while the shared store is unreachable).
    fn others(&self, rule: &str, channel: &str) -> usize;
    /// One more (`up`) or one less stream of (`rule`, `channel`) here: the count this
    /// instance publishes to the others. Returns whether it was counted: a bounded store
    /// may refuse to track a new channel, and then the stream must not be taken out of
    /// the count when it ends (another stream may have made the channel tracked since).
    fn add_local(&self, rule: &str, channel: &str, up: bool) -> bool;
    /// Learn the others' counts of those of `channels` not known yet (a round trip to the
    /// shared store the first time a channel is seen here, bounded in time), so the first
    /// subscribers of a channel on an instance are checked too. Called once a stream has
    /// passed the local limits and auth ([`Limiter::confirm_shared`]).
    fn prepare<'a>(&'a self, rule: &'a str, channels: &'a [String]) -> BoxFuture<'a, ()>;
}

/// A [`SharedCounts`] with the rule it counts for.
#[derive(Clone)]
struct Shared {
    rule: String,
    counts: Arc<dyn SharedCounts>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("rule", &self.rule).finish()
    }
}

/// The live counters of one rule's limits.
#[derive(Debug)]
pub struct Limiter {
    limits: StreamLimits,
    /// Where per-channel counts are shared with other instances (`[cluster]`), if they are.
    shared: Option<Shared>,
    rate: Option<Arc<RateTable>>,
    /// Open streams per channel and per address. Entries are removed when they reach zero,
    /// so the maps are bounded by the open streams (themselves bounded by the hub). Held
    /// only for the check-and-increment, never across an await. Shared with the limiter of
    /// the same rule in the next config ([`Limiter::carried_over`]): the streams counted
    /// here stay open across a reload.
    counts: Arc<Mutex<Counts>>,
    metrics: AuthMetrics,
}

#[derive(Debug, Default)]
struct Counts {
    channels: HashMap<String, usize>,
    ips: HashMap<IpAddr, usize>,
}

/// One admitted stream; dropping it gives its places back.
#[derive(Debug)]
pub struct Admission {
    limiter: Option<Arc<Limiter>>,
    ip: IpAddr,
    channels: Vec<String>,
    /// How many of its channels, the first ones of `channels`, were added to the counts
    /// shared with other instances ([`Limiter::confirm_shared`]): dropping it takes those
    /// out again, and only those.
    shared: usize,
}

impl Limiter {
    /// Counters enforcing `limits`; per-channel counts shared through `shared` (as rule
    /// `rule`) when given.
    pub fn new(
        limits: StreamLimits,
        metrics: AuthMetrics,
        shared: Option<(&str, Arc<dyn SharedCounts>)>,
    ) -> Arc<Limiter> {
        let shared = shared
            .filter(|_| limits.per_channel.is_some())
            .map(|(rule, counts)| Shared {
                rule: rule.to_owned(),
                counts,
            });
        Arc::new(Limiter {
            rate: limits.rate.map(|rate| Arc::new(RateTable::new(rate))),
            shared,
            limits,
            counts: Arc::default(),
            metrics,
        })
    }

    /// `self` (a rule's limiter in a new config) counting on from `previous` (the same
    /// rule's in the config a reload replaces). The streams `previous` admitted stay open
    /// and keep their places: without this a reload would let a rule's per-channel and
    /// per-address limits be exceeded by as many streams as were open. The rate history
    /// carries over when the rate is unchanged. Streams admitted while a rule had no
    /// per-channel limit were not counted by channel, so a limit added by a reload counts
    /// the streams opened after it.
    pub fn carried_over(&self, previous: &Limiter) -> Arc<Limiter> {
        let rate = match (&self.rate, &previous.rate) {
            (Some(_), Some(old)) if self.limits.rate == previous.limits.rate => Some(old.clone()),
            (rate, _) => rate.clone(),
        };
        Arc::new(Limiter {
            limits: self.limits.clone(),
            shared: self.shared.clone(),
            rate,
            counts: previous.counts.clone(),
            metrics: self.metrics.clone(),
        })
    }

    /// After [`Limiter::admit`] and auth: learn what other instances count on the
    /// admission's channels where this instance does not know yet (see
    /// [`SharedCounts::prepare`]), check the per-channel limit again with it, this stream
    /// included, and only then count the stream in the shared counts. Nothing without a
    /// cluster or a per-channel limit.
    ///
    /// It runs after auth on purpose: the first look at a channel costs a round trip to the
    /// shared store and a tracked entry, and only a client that the rate and per-address
    /// limits let through and the rule's auth accepted may cause them. Made-up channel
    /// names from anyone else cost no Redis call and no entry.
    pub async fn confirm_shared(&self, admission: &mut Admission) -> Result<(), AuthError> {
        let (Some(shared), Some(max)) = (&self.shared, self.limits.per_channel) else {
            return Ok(());
        };
        shared
            .counts
            .prepare(&shared.rule, &admission.channels)
            .await;
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let over = admission.channels.iter().any(|c| {
            let here = counts.channels.get(c).copied().unwrap_or(0);
            here + shared.counts.others(&shared.rule, c) > max
        });
        if over {
            drop(counts);
            self.metrics.limited(Limit::PerChannel);
            return Err(AuthError::Limited {
                limit: Limit::PerChannel,
                retry_after: self.limits.retry_after,
            });
        }
        // The counted channels first (their order means nothing to the counts).
        let (mut counted, untracked): (Vec<String>, Vec<String>) = admission
            .channels
            .drain(..)
            .partition(|c| shared.counts.add_local(&shared.rule, c, true));
        admission.shared = counted.len();
        counted.extend(untracked);
        admission.channels = counted;
        Ok(())
    }

    /// Admit one stream from `ip` on `channels` (deduplicated by the caller), or say which
    /// limit refused it. A refused attempt still counts against the rate: a client hammering
    /// the endpoint must wait, not retry in a loop.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        channels: &[String],
    ) -> Result<Admission, AuthError> {
        let refuse = |limit: Limit, retry_after: Duration| {
            self.metrics.limited(limit);
            AuthError::Limited { limit, retry_after }
        };
        if let Some(rate) = &self.rate
            && let Err(wait) = rate.check(ip, Instant::now())
        {
            // Round up: `Retry-After` is in whole seconds and 0 would invite a retry now.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Err(refuse(Limit::Rate, Duration::from_secs(secs.max(1))));
        }
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(max) = self.limits.per_ip
            && counts.ips.get(&ip).copied().unwrap_or(0) >= max
        {
            return Err(refuse(Limit::PerIp, self.limits.retry_after));
        }
        if let Some(max) = self.limits.per_channel
            && channels.iter().any(|c| {
                let others = self
                    .shared
                    .as_ref()
                    .map_or(0, |s| s.counts.others(&s.rule, c));
                counts.channels.get(c).copied().unwrap_or(0) + others >= max
            })
        {
            return Err(refuse(Limit::PerChannel, self.limits.retry_after));
        }
        *counts.ips.entry(ip).or_default() += 1;
        if self.limits.per_channel.is_some() {
            for c in channels {
                *counts.channels.entry(c.clone()).or_default() += 1;
            }
        }
        drop(counts);
        Ok(Admission {
            limiter: Some(self.clone()),
            ip,
            channels: if self.limits.per_channel.is_some() {
                channels.to_vec()
            } else {
                Vec::new()
            },
            shared: 0,
        })
    }

    /// Open streams of this rule from `ip`.
    #[cfg(test)]
    pub fn streams_from(&self, ip: IpAddr) -> usize {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.ips.get(&ip).copied().unwrap_or(0)
    }
}

impl Admission {
    /// An admission that counts nothing (a stream with no limiter).
    #[cfg(test)]
    pub fn unlimited(ip: IpAddr) -> Admission {
        Admission {
            limiter: None,
            ip,
            channels: Vec::new(),
            shared: 0,
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let Some(limiter) = self.limiter.take() else {
            return;
        };
        let mut counts = limiter
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        decrement(&mut counts.ips, &self.ip);
        for (i, c) in self.channels.iter().enumerate() {
            decrement(&mut counts.channels, c);
            if let Some(s) = &limiter.shared
                && i < self.shared
            {
                s.counts.add_local(&s.rule, c, false);
            }
        }
    }
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::config::RawStreamLimits;
    use crate::auth::rate::Rate;
    use crate::config::ConfigErrors;

    fn limiter(
        per_channel: Option<usize>,
        per_ip: Option<usize>,
        rate: Option<&str>,
    ) -> Arc<Limiter> {
        let limits = StreamLimits {
            per_channel,
            per_ip,
            rate: rate.map(|r| Rate::parse(r).unwrap()),
            ..StreamLimits::default()
        };
        Limiter::new(limits, AuthMetrics::default(), None)
    }

    fn ch(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn a_reloaded_rule_counts_on_and_keeps_its_rate_history_while_the_rate_is_unchanged() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let old = limiter(Some(1), None, Some("1/1m"));
        let held = old.admit(a, &ch(&["x"])).unwrap();
        // Same limits: the open stream still holds the channel's place, the address has
        // used its one stream per minute.
        let same = limiter(Some(1), None, Some("1/1m")).carried_over(&old);
        assert!(matches!(
            same.admit(a, &ch(&["y"])),
            Err(AuthError::Limited {
                limit: Limit::Rate,
                ..
            })
        ));
        // Another rate is a new history, but the counts carry on.
        let other = limiter(Some(1), None, Some("5/1m")).carried_over(&same);
        assert!(matches!(
            other.admit(a, &ch(&["x"])),
            Err(AuthError::Limited {
                limit: Limit::PerChannel,
                ..
            })
        ));
        // The stream admitted by the first limiter gives its place back to the last.
        drop(held);
        let _again = other.admit(a, &ch(&["x"])).unwrap();
    }

    #[tokio::test]
    async fn per_ip_and_per_channel_release_on_drop() {
        let l = limiter(Some(2), Some(3), None);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = l.admit(a, &ch(&["x"])).unwrap();
        let _s2 = l.admit(a, &ch(&["x", "y"])).unwrap();
        let err = l.admit(b, &ch(&["x"])).unwrap_err();
        assert!(matches!(
            err,
            AuthError::Limited {
                limit: Limit::PerChannel,
                ..
            }
        ));
        let s3 = l.admit(a, &ch(&["y"])).unwrap();
        let err = l.admit(a, &ch(&["z"])).unwrap_err();
        assert!(matches!(
            err,
            AuthError::Limited {
                limit: Limit::PerIp,
                ..
            }
        ));
        assert_eq!(err.retry_after(), Some(Duration::from_secs(5)));
        drop(s1);
        assert_eq!(l.streams_from(a), 2);
        let _s4 = l.admit(b, &ch(&["x"])).unwrap();
        drop(s3);
        let _s5 = l.admit(a, &ch(&["z"])).unwrap();
        assert_eq!(l.metrics.limited_count(Limit::PerIp), 1);
        assert_eq!(l.metrics.limited_count(Limit::PerChannel), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_refusals_say_when_to_retry() {
        let l = limiter(None, None, Some("2/10s"));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let _s1 = l.admit(a, &ch(&["x"])).unwrap();
        let _s2 = l.admit(a, &ch(&["x"])).unwrap();
        let err = l.admit(a, &ch(&["x"])).unwrap_err();
        assert_eq!(err.retry_after(), Some(Duration::from_secs(5)));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(l.admit(a, &ch(&["x"])).is_ok());
        assert_eq!(l.metrics.limited_count(Limit::Rate), 1);
    }

    #[test]
    fn config_errors_have_paths() {
        let mut errors = ConfigErrors::default();
        let raw = RawStreamLimits {
            per_channel: Some(0),
            rate: Some("fast".into()),
            ..RawStreamLimits::default()
        };
        raw.validate("stream[0].limits", &mut errors);
        let text = errors.to_string();
        assert!(
            text.contains("stream[0].limits.per_channel: must be at least 1"),
            "{text}"
        );
        assert!(
            text.contains("stream[0].limits.rate: invalid rate"),
            "{text}"
        );
    }
}
