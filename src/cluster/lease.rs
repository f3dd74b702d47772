//! One instance at a time runs a consumer (the `[[notify]]` listener and outbox readers):
//! a lease in Redis (`SET NX PX`, renewed by its holder).
//!
//! The holder stops consuming when it has not renewed within the lease time minus a
//! margin, by its own clock, so it has stopped before any other instance can take the
//! lease over: two consumers never run at once even when the holder loses Redis but not
//! Postgres. A holder that shuts down releases the lease at once; one that dies is replaced
//! within `[cluster] lease_ttl` plus a renew period.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Cluster, failure};

/// The timing of a lease of `ttl` (`[cluster] lease_ttl`, 5 s by default): renewed (or
/// tried) every 30% of it, and given up by its holder 20% of it before it could expire by
/// Redis's clock (drift, a slow renew).
#[derive(Clone, Copy)]
struct Timing {
    ttl: Duration,
    period: Duration,
    margin: Duration,
}

impl Timing {
    fn new(ttl: Duration) -> Timing {
        Timing {
            ttl,
            period: ttl * 3 / 10,
            margin: ttl / 5,
        }
    }

    fn ttl_ms(self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Take the lease if nobody holds it. KEYS: lease. ARGV: node id, ttl (ms). A script like
/// the others so both go through one helper (`SET NX` answers nil in Lua when taken).
static ACQUIRE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
",
    )
});

/// Extend the lease if this node holds it. KEYS: lease. ARGV: node id, ttl (ms).
static RENEW: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
",
    )
});

/// Release the lease if this node holds it. KEYS: lease. ARGV: node id.
static RELEASE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

impl Cluster {
    /// Run what `start` starts only while this instance holds lease `name`, until
    /// `shutdown`. A standby is ready (component `readiness` cleared): it has nothing
    /// to consume.
    pub async fn leased<F>(
        self: Arc<Self>,
        shutdown: CancellationToken,
        name: &str,
        readiness: &'static str,
        start: F,
    ) where
        F: Fn() -> Vec<JoinHandle<()>> + Send,
    {
        let key = format!("{}lease:{name}", self.config.prefix);
        let timing = Timing::new(self.config.lease_ttl);
        let ttl_ms = timing.ttl_ms();
        let mut conn: Option<MultiplexedConnection> = None;
        loop {
            self.readiness.set(readiness, None);
            // Standby: try to take the lease every period.
            let mut deadline = loop {
                let sent = Instant::now();
                match self.acquire(&mut conn, &key, ttl_ms).await {
                    Ok(true) => break sent + timing.ttl - timing.margin,
                    Ok(false) => {}
                    Err(e) => {
                        conn = None;
                        tracing::debug!(cause = %e, lease = name, "cannot reach Redis for the lease");
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(timing.period) => {}
                }
            };
            tracing::info!(lease = name, node_id = %self.config.node_id, "holding the lease: consuming");
            // Not ready until the consumer says it is connected.
            self.readiness.set(
                readiness,
                Some("starting: holding the lease, not connected yet".into()),
            );
            self.lock().leases.insert(name.to_string());
            let tasks = start();
            let why = loop {
                let next = (Instant::now() + timing.period).min(deadline);
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        // The consumers stop on the same signal; release once they have.
                        for task in tasks {
                            let _ = task.await;
                        }
                        if let Some(c) = conn.as_mut() {
                            let mut release = RELEASE.key(&key);
                            release.arg(&self.config.node_id);
                            let released = release.invoke_async::<i64>(c);
                            let _ = tokio::time::timeout(self.config.timeout, released).await;
                        }
                        return;
                    }
                    _ = tokio::time::sleep_until(next) => {}
                }
                if Instant::now() >= deadline {
                    break "not renewed in time";
                }
                let sent = Instant::now();
                match self.renew(&mut conn, &key, ttl_ms).await {
                    Ok(true) => deadline = sent + timing.ttl - timing.margin,
                    Ok(false) => break "taken over by another instance",
                    Err(e) => {
                        conn = None;
                        tracing::warn!(cause = %e, lease = name, "cannot renew the lease");
                    }
                }
            };
            tracing::warn!(
                lease = name,
                cause = why,
                "lost the lease: stopping the consumers"
            );
            for task in &tasks {
                task.abort();
            }
            for task in tasks {
                let _ = task.await;
            }
        }
    }

    async fn connection<'a>(
        &self,
        conn: &'a mut Option<MultiplexedConnection>,
    ) -> Result<&'a mut MultiplexedConnection, String> {
        if conn.is_none() {
            let t = self.config.timeout;
            let client =
                redis::Client::open(self.config.redis.as_str()).map_err(|e| failure("URL", e))?;
            let cfg = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(t))
                .set_response_timeout(Some(t.min(Timing::new(self.config.lease_ttl).period)));
            let c = client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await
                .map_err(|e| failure("connect", e))?;
            *conn = Some(c);
        }
        conn.as_mut().ok_or_else(|| "no connection".to_string())
    }

    /// Take the lease if it is free.
    async fn acquire(
        &self,
        conn: &mut Option<MultiplexedConnection>,
        key: &str,
        ttl_ms: u64,
    ) -> Result<bool, String> {
        self.lease_script(conn, &ACQUIRE, key, ttl_ms, "SET NX")
            .await
    }

    /// Extend the lease if this node still holds it.
    async fn renew(
        &self,
        conn: &mut Option<MultiplexedConnection>,
        key: &str,
        ttl_ms: u64,
    ) -> Result<bool, String> {
        self.lease_script(conn, &RENEW, key, ttl_ms, "renew").await
    }

    /// Run `script` (KEYS: lease. ARGV: node id, ttl in ms; answers 1 or 0) on the lease
    /// connection, opening it if needed: `Ok(true)` when this node holds the lease after it.
    async fn lease_script(
        &self,
        conn: &mut Option<MultiplexedConnection>,
        script: &redis::Script,
        key: &str,
        ttl_ms: u64,
        what: &str,
    ) -> Result<bool, String> {
        let c = self.connection(conn).await?;
        let held: i64 = script
            .key(key)
            .arg(&self.config.node_id)
            .arg(ttl_ms)
            .invoke_async(c)
            .await
            .map_err(|e| failure(what, e))?;
        Ok(held == 1)
    }
}
