//! Outbox mode: events are rows of a table, delivered in id order, at least once, across
//! disconnects and unpoll restarts. NOTIFY is only a wake-up.
//!
//! # Why ids can be trusted to be in commit order
//!
//! A sequence value is taken when a row is inserted but becomes visible when its
//! transaction commits, so with concurrent writers a row with a smaller id can commit after
//! a reader has already seen a larger one, and "read after the last id" would skip it
//! forever. Two fixes are common: re-read a look-back window and de-duplicate by id (needs
//! a window long enough for the slowest transaction, which has no bound), or serialise the
//! writers. unpoll serialises: the outbox's `BEFORE INSERT` trigger (from
//! `unpoll sql-trigger --outbox`) takes a transaction-scoped advisory lock, keyed by the
//! outbox's OID, and assigns the id under it. The lock is held until commit or rollback, so
//! the writer that gets id N+1 waits until N's transaction has ended: when the reader sees
//! N+1, N is committed (visible) or rolled back (never will be). Ids therefore are in commit
//! order and the reader's cursor is exact. The cost: transactions that write to the same
//! outbox commit one at a time from their first outbox insert (Centrifugo's PostgreSQL
//! consumer makes the same trade); keep outbox writes at the end of transactions.
//!
//! # Position, restarts and event ids
//!
//! The reader's position is kept per (outbox, consumer) in `unpoll_outbox_cursors` beside
//! the outbox, written after each published batch: a restart resumes after the last saved
//! id (rows of a batch published but not saved are published again: at least once; with
//! `[cluster]` the rows are published through Redis, which remembers the last row published
//! per outbox and consumer, so a reader taking over from a killed one skips what it had
//! published but not saved: exactly once, see `Sink::publish_row` and `Sink::flush`).
//! Within one run each row is published exactly once and so keeps one event id: NOTIFY
//! wake-ups, safety polls and reconnects never re-read a row, so a client resuming with
//! its `Last-Event-ID` replays it from the hub's history once, in order. Event ids are
//! `<boot>-<seq>` and a new run is a new boot: a client holding an id of the previous run
//! gets a `reset` from the hub (the honest answer: the new process has no history for it);
//! what the outbox guarantees across restarts is that rows committed while unpoll was down
//! are still published when it comes back.
//!
//! Retention: delivered rows (at or below every consumer's cursor) older than
//! `outbox_retention` are deleted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Row};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::config::PostgresConfig;
use super::metrics::{PostgresMetrics, RuleLabels};
use super::rules::{NotifyRule, OutboxRow};
use super::trigger::{CURSOR_TABLE, ident};

use crate::sources::Sink;
use crate::sources::backoff::Backoff;

/// How often delivered rows past retention are deleted.
const RETENTION_EVERY: Duration = Duration::from_secs(30);

/// The SQL of one outbox, built once from its (quoted) names.
struct Queries {
    fetch: String,
    load_cursor: String,
    save_cursor: String,
    lag: String,
    retention: String,
}

impl Queries {
    fn new(table: &str) -> Queries {
        let (schema, name) = match table.split_once('.') {
            Some((s, n)) => (Some(s), n),
            None => (None, table),
        };
        let qualify = |n: &str| match schema {
            Some(s) => format!("{}.{}", ident(s), ident(n)),
            None => ident(n),
        };
        let outbox = qualify(name);
        let cursors = qualify(CURSOR_TABLE);
        Queries {
            fetch: format!(
                "SELECT id, channel, event, data FROM {outbox} WHERE id > $1 ORDER BY id LIMIT $2"
            ),
            load_cursor: format!(
                "SELECT last_id FROM {cursors} WHERE outbox = $1 AND consumer = $2"
            ),
            save_cursor: format!(
                "INSERT INTO {cursors} (outbox, consumer, last_id, updated_at) \
                 VALUES ($1, $2, $3, now()) ON CONFLICT (outbox, consumer) \
                 DO UPDATE SET last_id = excluded.last_id, updated_at = now()"
            ),
            lag: format!(
                "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - \
                 min(created_at))::float8, 0) FROM {outbox} WHERE id > $1"
            ),
            retention: format!(
                "DELETE FROM {outbox} WHERE created_at < clock_timestamp() - \
                 make_interval(secs => $1) AND id <= (SELECT min(last_id) FROM {cursors} \
                 WHERE outbox = $2)"
            ),
        }
    }
}

/// One outbox rule's reader task.
pub struct OutboxReader {
    /// Cancelled once at shutdown.
    pub(super) shutdown: CancellationToken,
    /// Poll interval, batch size, retention, consumer name.
    pub(super) config: PostgresConfig,
    /// The rule whose rows this reader delivers.
    pub(super) rule: NotifyRule,
    /// `TABLE` or `SCHEMA.TABLE` as configured (also the key in the cursor table).
    pub(super) table: String,
    /// Where events and purges go.
    pub(super) sink: Arc<dyn Sink>,
    /// Published, dropped, lag, retention and error metrics.
    pub(super) metrics: PostgresMetrics,
    /// Woken by the listener on a NOTIFY for this rule and after every reconnect.
    pub(super) wake: Arc<Notify>,
}

impl OutboxReader {
    /// Run until shutdown.
    pub async fn run(self) {
        let queries = Queries::new(&self.table);
        // Its own small pool: the listener's connection only listens.
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(self.config.connect_timeout)
            .connect_lazy_with(self.config.options.clone());
        let labels = RuleLabels {
            rule: self.rule.key.clone(),
        };
        let mut backoff = Backoff::new(self.config.reconnect_min, self.config.reconnect_max);
        let mut cursor: Option<i64> = None;
        let mut last_retention: Option<Instant> = None;
        loop {
            let pass = async {
                let last = match cursor {
                    Some(c) => c,
                    None => *cursor.insert(self.load_cursor(&pool, &queries).await?),
                };
                self.drain(&pool, &queries, cursor.get_or_insert(last), &labels)
                    .await?;
                self.measure_lag(&pool, &queries, cursor.unwrap_or(last), &labels)
                    .await?;
                if last_retention.is_none_or(|t| t.elapsed() >= RETENTION_EVERY) {
                    last_retention = Some(Instant::now());
                    self.retention(&pool, &queries, &labels).await?;
                }
                Ok::<_, sqlx::Error>(())
            };
            let wait = match pass.await {
                Ok(()) => {
                    backoff.reset();
                    self.config.outbox_poll
                }
                Err(e) => {
                    self.metrics.outbox_errors.get_or_create(&labels).inc();
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        rule = %self.rule.key,
                        outbox = %self.table,
                        cause = %e,
                        retry_in = ?delay,
                        "outbox read failed"
                    );
                    delay
                }
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    async fn load_cursor(&self, pool: &PgPool, q: &Queries) -> Result<i64, sqlx::Error> {
        let row = sqlx::query(AssertSqlSafe(q.load_cursor.as_str()))
            .bind(&self.table)
            .bind(&self.config.consumer)
            .fetch_optional(pool)
            .await?;
        let last = row
            .map(|r| r.try_get::<i64, _>(0))
            .transpose()?
            .unwrap_or(0);
        tracing::info!(rule = %self.rule.key, outbox = %self.table, last_id = last, "outbox reader resumes");
        Ok(last)
    }

    /// Publish every row after `*last`, batch by batch; `*last` advances as rows are
    /// published (so a failure mid-way never publishes a row twice in this run) and is
    /// saved after each batch.
    async fn drain(
        &self,
        pool: &PgPool,
        q: &Queries,
        last: &mut i64,
        labels: &RuleLabels,
    ) -> Result<(), sqlx::Error> {
        // The outbox and consumer, like the cursor's key: where readers take turns (a
        // cluster) the sink remembers by it which rows were published.
        let once = format!("{}/{}", self.table, self.config.consumer);
        loop {
            let rows = sqlx::query(AssertSqlSafe(q.fetch.as_str()))
                .bind(*last)
                .bind(i64::from(self.config.outbox_batch))
                .fetch_all(pool)
                .await?;
            let full = rows.len() >= self.config.outbox_batch as usize;
            if rows.is_empty() {
                return Ok(());
            }
            for row in rows {
                let row = OutboxRow {
                    id: row.try_get(0)?,
                    channel: row.try_get(1)?,
                    event: row.try_get(2)?,
                    data: row.try_get::<Value, _>(3)?,
                };
                *last = row.id;
                match self.rule.map_row(&row) {
                    Ok(m) => {
                        // Purge first: a client reacting to the event must poll fresh data.
                        if !m.purge.is_empty() {
                            self.sink.purge(&m.purge);
                        }
                        self.sink.publish_row(
                            &once,
                            row.id,
                            &m.channel,
                            m.event.as_deref(),
                            m.data.into(),
                        );
                        self.metrics.published.get_or_create(labels).inc();
                    }
                    Err(e) => {
                        self.metrics.drop(&self.rule.key, e.as_str());
                        tracing::info!(rule = %self.rule.key, id = row.id, cause = %e, "outbox row skipped");
                    }
                }
            }
            // In a cluster the rows are queued for Redis: saved only once they are there, so
            // a reader killed now has lost nothing its successor will not read again.
            self.sink.flush().await;
            sqlx::query(AssertSqlSafe(q.save_cursor.as_str()))
                .bind(&self.table)
                .bind(&self.config.consumer)
                .bind(*last)
                .execute(pool)
                .await?;
            if !full {
                return Ok(());
            }
        }
    }

    async fn measure_lag(
        &self,
        pool: &PgPool,
        q: &Queries,
        last: i64,
        labels: &RuleLabels,
    ) -> Result<(), sqlx::Error> {
        let row = sqlx::query(AssertSqlSafe(q.lag.as_str()))
            .bind(last)
            .fetch_one(pool)
            .await?;
        let rows: i64 = row.try_get(0)?;
        let seconds: f64 = row.try_get(1)?;
        self.metrics.outbox_lag_rows.get_or_create(labels).set(rows);
        self.metrics
            .outbox_lag_seconds
            .get_or_create(labels)
            .set(seconds);
        Ok(())
    }

    async fn retention(
        &self,
        pool: &PgPool,
        q: &Queries,
        labels: &RuleLabels,
    ) -> Result<(), sqlx::Error> {
        let deleted = sqlx::query(AssertSqlSafe(q.retention.as_str()))
            .bind(self.config.outbox_retention.as_secs_f64())
            .bind(&self.table)
            .execute(pool)
            .await?
            .rows_affected();
        if deleted > 0 {
            self.metrics
                .outbox_deleted
                .get_or_create(labels)
                .inc_by(deleted);
            tracing::debug!(rule = %self.rule.key, deleted, "outbox retention");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_quote_names_and_keep_the_cursor_table_beside_the_outbox() {
        let q = Queries::new("ops.Out\"box");
        assert!(
            q.fetch
                .contains("FROM \"ops\".\"Out\"\"box\" WHERE id > $1 ORDER BY id LIMIT $2")
        );
        assert!(
            q.load_cursor
                .contains("FROM \"ops\".\"unpoll_outbox_cursors\"")
        );
        assert!(
            q.retention
                .contains("SELECT min(last_id) FROM \"ops\".\"unpoll_outbox_cursors\"")
        );
        let q = Queries::new("outbox");
        assert!(
            q.save_cursor
                .starts_with("INSERT INTO \"unpoll_outbox_cursors\"")
        );
        assert!(q.lag.contains("FROM \"outbox\" WHERE id > $1"));
    }
}
