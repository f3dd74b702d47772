//! `[log]` and the tracing subscriber: text or JSON lines on stderr, `RUST_LOG` respected.
//!
//! Access-log lines are events with target `unpoll::access`, so `RUST_LOG=unpoll::access=off`
//! silences them without touching anything else.

use std::io::{IsTerminal, Write};
use std::sync::LazyLock;

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

/// Log lines that could not be written (stderr closed, a broken pipe, a full disk), process
/// wide: the subscriber is global, so every [`App`](crate::App) registers this one counter.
static WRITE_ERRORS: LazyLock<Counter> = LazyLock::new(Counter::default);

/// Register `unpoll_log_write_errors_total` in `registry`.
pub fn register_metrics(registry: &mut Registry) {
    registry.register(
        "unpoll_log_write_errors",
        "Log lines dropped because writing them to stderr failed",
        WRITE_ERRORS.clone(),
    );
}

/// Log lines dropped so far because stderr refused them.
pub fn write_errors() -> u64 {
    WRITE_ERRORS.get()
}

/// stderr for log lines, where a failed write drops the line and counts it. Logging must never
/// fail a request or stop shutdown: tracing's fmt layer reports a write error with
/// `eprintln!`, which panics when stderr itself is the broken pipe, and that panic ended
/// request tasks (empty replies) and the signal task (SIGTERM ignored).
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::io::stderr().write(buf) {
            Ok(n) => Ok(n),
            // Retried by `write_all`.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Err(e),
            Err(_) => {
                WRITE_ERRORS.inc();
                // Claim the rest was written so `write_all` drops the line instead of
                // returning an error.
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // stderr is unbuffered; nothing to report.
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Install the global subscriber. `RUST_LOG` overrides the default level (`info`).
pub fn init(config: &LogConfig) {
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
