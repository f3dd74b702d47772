//! Postgres for tests: the machine's server (`DATABASE_URL`, default
//! postgres://postgres@127.0.0.1:5432/postgres), unique names per test, a recording sink,
//! and a TCP proxy a test can cut to simulate an outage without touching the server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use sqlx::AssertSqlSafe;
use sqlx::postgres::{PgPool, PgPoolOptions};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use unpoll::hub::{EventData, EventId};

/// The server tests run against.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A pool on the test server; fails the test with a clear message when none is reachable.
pub async fn pool() -> PgPool {
    let url = database_url();
    PgPoolOptions::new()
        .max_connections(10)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&url)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "no PostgreSQL reachable at {url} ({e}). These tests need a real server: start \
                 it (`.ci/run` does: pg_ctlcluster --skip-systemctl-redirect $(ls \
                 /etc/postgresql) main start) or set DATABASE_URL"
            )
        })
}

/// Run several statements.
pub async fn exec(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("SQL failed: {e}\n{sql}"));
}

/// A name no other test (or earlier run) uses: `prefix_<pid>_<n>_<random>`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        fastrand::u32(..)
    )
}

/// What a source delivered.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivered {
    /// An event.
    Event {
        channel: String,
        event: Option<String>,
        data: Value,
    },
    /// A reset of subscribers matching a glob.
    Reset(String),
    /// Tags purged.
    Purge(Vec<String>),
    /// Tags purged by pattern.
    PurgeGlob(String),
}

/// A sink that records everything, in order.
#[derive(Default)]
pub struct RecordingSink {
    log: Mutex<Vec<Delivered>>,
    changed: Notify,
}

impl RecordingSink {
    fn push(&self, d: Delivered) {
        self.log.lock().unwrap().push(d);
        self.changed.notify_waiters();
    }

    /// Everything so far.
    pub fn all(&self) -> Vec<Delivered> {
        self.log.lock().unwrap().clone()
    }

    /// Events so far as (channel, event, data).
    pub fn events(&self) -> Vec<(String, Option<String>, Value)> {
        self.all()
            .into_iter()
            .filter_map(|d| match d {
                Delivered::Event {
                    channel,
                    event,
                    data,
                } => Some((channel, event, data)),
                _ => None,
            })
            .collect()
    }

    /// Wait until `check` holds on the log, or panic after `timeout`.
    pub async fn wait(&self, timeout: Duration, what: &str, check: impl Fn(&[Delivered]) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if check(&self.log.lock().unwrap()) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "timed out after {timeout:?} waiting for: {what}\nlog: {:#?}",
                    self.all()
                );
            }
        }
    }
}

impl unpoll::sources::Sink for RecordingSink {
    fn publish(&self, channel: &str, event: Option<&str>, data: EventData) -> Option<EventId> {
        let data = match data {
            EventData::Json(value) => value,
            EventData::Text(text) => Value::String(text),
        };
        self.push(Delivered::Event {
            channel: channel.to_string(),
            event: event.map(str::to_string),
            data,
        });
        None
    }

    fn reset(&self, glob: &str, _reason: &str) -> usize {
        self.push(Delivered::Reset(glob.to_string()));
        1
    }

    fn purge(&self, tags: &[String]) {
        self.push(Delivered::Purge(tags.to_vec()));
    }

    fn purge_glob(&self, glob: &str) {
        self.push(Delivered::PurgeGlob(glob.to_string()));
    }
}

/// A TCP proxy in front of the test server that a test can cut (every connection closed,
/// new ones refused), black-hole (connections stay open but no byte passes, like a
/// partitioned network) and restore, on a stable port.
pub struct TcpProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    /// Set while black-holing; new connections are then held without forwarding.
    frozen: Arc<AtomicBool>,
    /// Cancelled to stop forwarding on the current connections (which stay open).
    freeze: Arc<Mutex<CancellationToken>>,
    /// Cancelled to close the current connections; replaced on `restore`.
    current: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl TcpProxy {
    /// Start in front of `target`; `open` says whether it forwards from the start.
    pub async fn start(target: SocketAddr, open: bool) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = TcpProxy {
            addr,
            open: Arc::new(AtomicBool::new(open)),
            frozen: Arc::new(AtomicBool::new(false)),
            freeze: Arc::new(Mutex::new(CancellationToken::new())),
            current: Arc::new(Mutex::new(CancellationToken::new())),
            stop: CancellationToken::new(),
        };
        let (is_open, current, stop) = (
            proxy.open.clone(),
            proxy.current.clone(),
            proxy.stop.clone(),
        );
        let (frozen, freeze) = (proxy.frozen.clone(), proxy.freeze.clone());
        tokio::spawn(async move {
            loop {
                let (mut client, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(p) => p, Err(_) => continue },
                    _ = stop.cancelled() => return,
                };
                if !is_open.load(Ordering::SeqCst) {
                    drop(client); // refused: the client sees the connection closed
                    continue;
                }
                let cut = current.lock().unwrap().clone();
                let hole = freeze.lock().unwrap().clone();
                let held = frozen.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    if held {
                        // Accepted, never answered: hold until cut.
                        cut.cancelled().await;
                        drop(client);
                        return;
                    }
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.cancelled() => {}
                        _ = hole.cancelled() => cut.cancelled().await,
                    }
                });
            }
        });
        proxy
    }

    /// Close every connection and refuse new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        let mut current = self.current.lock().unwrap();
        current.cancel();
        *current = CancellationToken::new();
    }

    /// Stop forwarding bytes without closing anything; new connections are accepted and
    /// never answered.
    pub fn blackhole(&self) {
        self.frozen.store(true, Ordering::SeqCst);
        let mut freeze = self.freeze.lock().unwrap();
        freeze.cancel();
        *freeze = CancellationToken::new();
    }

    /// Forward again (held connections are closed first).
    pub fn restore(&self) {
        if self.frozen.swap(false, Ordering::SeqCst) {
            let mut current = self.current.lock().unwrap();
            current.cancel();
            *current = CancellationToken::new();
        }
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.current.lock().unwrap().cancel();
    }
}

/// The test server's address (host and port of `DATABASE_URL`).
pub fn server_addr() -> SocketAddr {
    let url = database_url();
    let after = url.split_once('@').map_or(url.as_str(), |(_, h)| h);
    let hostport = after.split(['/', '?']).next().unwrap_or("127.0.0.1:5432");
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:5432")
    };
    let hostport = hostport.replace("localhost", "127.0.0.1");
    hostport
        .parse()
        .unwrap_or_else(|_| panic!("DATABASE_URL host must be an IP address: {hostport}"))
}

/// `DATABASE_URL` with its address replaced by `addr` and an `application_name`.
pub fn url_via(addr: SocketAddr, application_name: &str) -> String {
    let url = database_url();
    let (scheme_user, rest) = url.split_once('@').unwrap_or(("postgres://postgres", &url));
    let path = rest.find('/').map_or("/postgres", |i| &rest[i..]);
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{scheme_user}@{addr}{path}{sep}application_name={application_name}")
}

/// The SQL `unpoll sql-trigger` prints for `args`.
pub async fn sql_trigger(args: &[&str]) -> String {
    let out = tokio::process::Command::new(super::process::binary())
        .arg("sql-trigger")
        .args(args)
        .output()
        .await
        .expect("run unpoll sql-trigger");
    assert!(
        out.status.success(),
        "sql-trigger failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 SQL")
}

/// Outbox helpers: a table made by `sql-trigger --outbox`, on a throwaway source table.
pub async fn make_outbox(db: &sqlx::PgPool, listen: &str) -> String {
    let table = unique("src");
    let outbox = unique("outbox");
    exec(db, &format!("CREATE TABLE {table} (id serial PRIMARY KEY)")).await;
    let sql = sql_trigger(&["--table", &table, "--notify", listen, "--outbox", &outbox]).await;
    exec(db, &sql).await;
    outbox
}

/// Insert outbox rows `{"n": from..=to}` on channel `ob`.
pub async fn insert_rows(db: &sqlx::PgPool, outbox: &str, from: i64, to: i64) {
    exec(
        db,
        &format!(
            "INSERT INTO {outbox} (channel, event, data) \
             SELECT 'ob', 'row', jsonb_build_object('n', n) FROM generate_series({from}, {to}) n"
        ),
    )
    .await;
}
