//! `[log]` and the tracing subscriber: text or JSON lines on stderr, `RUST_LOG` respected.
//!
//! Access-log lines are events with target `unpoll::access`, so `RUST_LOG=unpoll::access=off`
//! silences them without touching anything else.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tracing_subscriber::EnvFilter;

use crate::config::{ConfigErrors, join};

/// The `[log]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogConfig {
    format: Option<String>,
    access: Option<bool>,
}

/// Output format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Validated `[log]` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// Text or JSON; fixed at start (a reload that changes it only warns).
    pub format: LogFormat,
    /// One line per request (method, path, status, duration, bytes, upstream time).
    pub access: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            access: true,
        }
    }
}

impl RawLogConfig {
    /// Validate, recording every error under `path`.
    pub fn validate(self, path: &str, errors: &mut ConfigErrors) -> LogConfig {
        let format = match self.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                errors.push(
                    join(path, "format"),
                    format!("unknown format {other:?} (expected \"text\" or \"json\")"),
                );
                LogFormat::Text
            }
        };
        LogConfig {
            format,
            access: self.access.unwrap_or(true),
        }
    }
}

/// Log lines that could not be written (stderr closed, a broken pipe, a full disk, or a
/// reader so slow that the queue below filled up), process wide: the subscriber is global,
/// so every instance registers this one counter.
static WRITE_ERRORS: LazyLock<Counter> = LazyLock::new(Counter::default);

/// Lines waiting for the writer thread. Full: the line is dropped and counted, so a stderr
/// nobody reads (a pipe whose reader hangs) never blocks a request or the runtime.
const QUEUE_LINES: usize = 4096;

/// The writer thread's queue and how many lines it has not written yet.
struct Queue {
    lines: SyncSender<Vec<u8>>,
    pending: Arc<AtomicUsize>,
}

static QUEUE: OnceLock<Queue> = OnceLock::new();

/// Register `unpoll_log_write_errors_total` in `registry`.
pub fn register_metrics(registry: &mut Registry) {
    registry.register(
        "unpoll_log_write_errors",
        "Log lines dropped because stderr refused them or did not take them in time",
        WRITE_ERRORS.clone(),
    );
}

/// Log lines dropped so far.
pub fn write_errors() -> u64 {
    WRITE_ERRORS.get()
}

/// Where log lines go: a bounded queue to a thread that writes them to stderr. Logging must
/// never fail a request or stop shutdown. Writing stderr in place did both: tracing's fmt
/// layer reports a failed write with `eprintln!`, which panics when stderr itself is the
/// broken pipe (request tasks died with empty replies, the signal task died logging
/// "SIGTERM"), and a pipe whose reader stops reading blocks the writing thread, which on one
/// worker is the whole server.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let queued = QUEUE.get().is_some_and(|q| {
            q.pending.fetch_add(1, Ordering::AcqRel);
            let sent = q.lines.try_send(buf.to_vec()).is_ok();
            if !sent {
                q.pending.fetch_sub(1, Ordering::AcqRel);
            }
            sent
        });
        if !queued {
            WRITE_ERRORS.inc();
        }
        // Claimed written either way: a dropped line is counted, never an error.
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Start the writer thread (once).
fn start_writer() -> std::io::Result<()> {
    if QUEUE.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE_LINES);
    let pending = Arc::new(AtomicUsize::new(0));
    let left = pending.clone();
    std::thread::Builder::new()
        .name("unpoll-log".into())
        .spawn(move || {
            let mut stderr = std::io::stderr();
            for line in rx {
                if stderr.write_all(&line).is_err() {
                    WRITE_ERRORS.inc();
                }
                left.fetch_sub(1, Ordering::AcqRel);
            }
        })?;
    let _ = QUEUE.set(Queue { lines: tx, pending });
    Ok(())
}

/// Wait up to `timeout` for queued log lines to reach stderr: called before the process
/// exits so its last lines ("unpoll stopped") are not lost, bounded so a stuck stderr
/// cannot hold the exit.
pub fn flush(timeout: Duration) {
    let Some(q) = QUEUE.get() else { return };
    let deadline = std::time::Instant::now() + timeout;
    while q.pending.load(Ordering::Acquire) > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Install the global subscriber. `RUST_LOG` overrides the default level (`info`).
pub fn init(config: &LogConfig) {
    if let Err(e) = start_writer() {
        // Without its thread every line is dropped and counted; the server still runs.
        let _ = writeln!(
            std::io::stderr(),
            "unpoll: cannot start the log writer: {e}"
        );
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(|| LogWriter)
        // Its internal errors go to `eprintln!`, which panics on a broken stderr.
        .log_internal_errors(false);
    // A second init (tests starting several servers) keeps the first subscriber.
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
