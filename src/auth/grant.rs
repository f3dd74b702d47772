//! What a successful subscribe holds: its places in the rule's limits, and how long access
//! lasts — until a JWT's `exp`, or until a periodic upstream re-check says no.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::StatusCode;

use super::error::AuthError;
use super::limits::Admission;
use super::metrics::{AuthMetrics, EndedLabels};
use super::upstream::{CheckRequest, UpstreamAuth};

/// Why an open stream lost access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessEnded {
    /// The token expired.
    Expired,
    /// A re-check was answered with this status (401, 403 or 404).
    Revoked(StatusCode),
}

impl AccessEnded {
    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessEnded::Expired => "expired",
            AccessEnded::Revoked(_) => "revoked",
        }
    }
}

/// How access ends.
#[derive(Debug, Clone)]
enum Lifetime {
    /// Never (auth `none`, or upstream auth without `reauth`).
    Unbounded,
    /// At this wall-clock time (JWT `exp` + leeway).
    Until(SystemTime),
    /// When a re-check every `interval` is refused.
    Recheck {
        auth: Arc<UpstreamAuth>,
        request: Box<CheckRequest>,
        interval: Duration,
    },
}

/// Permission to stream, held for the stream's life. Dropping it frees the stream's places
/// in the rule's limits.
#[derive(Debug)]
pub struct Grant {
    lifetime: Lifetime,
    metrics: AuthMetrics,
    admission: Admission,
}

/// The future returned by [`Grant::ended`].
pub type EndedFuture = Pin<Box<dyn Future<Output = AccessEnded> + Send + 'static>>;

impl Grant {
    pub(super) fn unbounded(admission: Admission, metrics: AuthMetrics) -> Grant {
        Grant {
            lifetime: Lifetime::Unbounded,
            metrics,
            admission,
        }
    }

    pub(super) fn until(at: SystemTime, admission: Admission, metrics: AuthMetrics) -> Grant {
        Grant {
            lifetime: Lifetime::Until(at),
            metrics,
            admission,
        }
    }

    /// The limits' places this grant holds.
    pub(super) fn admission_mut(&mut self) -> &mut Admission {
        &mut self.admission
    }

    pub(super) fn rechecked(
        auth: Arc<UpstreamAuth>,
        request: CheckRequest,
        admission: Admission,
        metrics: AuthMetrics,
    ) -> Grant {
        let lifetime = match auth.reauth() {
            Some(interval) => Lifetime::Recheck {
                auth,
                request: Box::new(request),
                interval,
            },
            None => Lifetime::Unbounded,
        };
        Grant {
            lifetime,
            metrics,
            admission,
        }
    }

    /// When access ends for sure (a JWT's `exp` plus leeway); `None` when it does not end
    /// at a known time.
    pub fn expires_at(&self) -> Option<SystemTime> {
        match &self.lifetime {
            Lifetime::Until(at) => Some(*at),
            _ => None,
        }
    }

    /// How often access is re-checked, if it is.
    pub fn reauth_interval(&self) -> Option<Duration> {
        match &self.lifetime {
            Lifetime::Recheck { interval, .. } => Some(*interval),
            _ => None,
        }
    }

    /// Resolves when access is gone; never for an unbounded grant. The SSE body selects on
    /// it next to its event queue and closes the stream when it fires. It owns what it
    /// needs, so it can live in the body beside the grant; dropping it stops the re-checks.
    ///
    /// A re-check that fails for lack of an answer (app down, timeout, other status) keeps
    /// the stream: only a clear 401/403/404 ends access, so an app restart does not
    /// disconnect every subscriber at once. A cached decision may delay the end by up to
    /// `auth_cache`.
    pub fn ended(&self) -> EndedFuture {
        let metrics = self.metrics.clone();
        let count = move |reason: AccessEnded| {
            metrics
                .ended
                .get_or_create(&EndedLabels {
                    reason: reason.as_str(),
                })
                .inc();
            reason
        };
        match self.lifetime.clone() {
            Lifetime::Unbounded => Box::pin(std::future::pending()),
            Lifetime::Until(at) => Box::pin(async move {
                // Wall clock → tokio clock once: the token says a wall-clock time, the timer
                // runs on tokio's (so paused-time tests drive it).
                let left = at.duration_since(SystemTime::now()).unwrap_or_default();
                tokio::time::sleep(left).await;
                count(AccessEnded::Expired)
            }),
            Lifetime::Recheck {
                auth,
                request,
                interval,
            } => Box::pin(async move {
                let mut tick =
                    tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    match auth.check(&request).await {
                        Ok(()) => {}
                        Err(AuthError::Denied { status }) => {
                            return count(AccessEnded::Revoked(status));
                        }
                        Err(e) => {
                            tracing::debug!(cause = %e, "re-check inconclusive; stream kept");
                        }
                    }
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_token_grant_ends_at_its_time() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let metrics = AuthMetrics::default();
        let at = SystemTime::now() + Duration::from_secs(30);
        let grant = Grant::until(at, Admission::unlimited(ip), metrics.clone());
        assert_eq!(grant.expires_at(), Some(at));
        let mut ended = grant.ended();
        let early = tokio::time::timeout(Duration::from_secs(29), &mut ended).await;
        assert!(early.is_err(), "access ended before exp");
        let reason = tokio::time::timeout(Duration::from_secs(2), &mut ended).await;
        assert_eq!(reason, Ok(AccessEnded::Expired));
        let ended = metrics
            .ended
            .get_or_create(&EndedLabels { reason: "expired" })
            .get();
        assert_eq!(ended, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unbounded_grant_never_ends() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let grant = Grant::unbounded(Admission::unlimited(ip), AuthMetrics::default());
        let r = tokio::time::timeout(Duration::from_secs(3600 * 24), grant.ended()).await;
        assert!(r.is_err());
    }
}
