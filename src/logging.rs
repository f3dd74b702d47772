//! `[log]` and the tracing subscriber: text or JSON lines on stderr, `RUST_LOG` respected.
//!
//! Access-log lines are events with target `unpoll::access`, so `RUST_LOG=unpoll::access=off`
//! silences them without touching anything else.

use std::io::IsTerminal;

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

/// Install the global subscriber. `RUST_LOG` overrides the default level (`info`).
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second init (tests starting several servers) keeps the first subscriber.
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
