//! `[postgres]` and `[[notify]]`: the raw sections as written and their validation.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use sqlx::postgres::PgConnectOptions;

use super::rules::{DataTemplate, NotifyRule, RuleMode};
use crate::config::{ConfigErrors, duration_at, join};
use crate::template::{Source, Template};

/// Defaults, documented in `config.toml.example`.
pub mod defaults {
    /// Time to open the listener connection before the attempt counts as failed.
    pub const CONNECT_TIMEOUT: &str = "5s";
    /// First reconnect delay; doubles per failed attempt.
    pub const RECONNECT_MIN: &str = "100ms";
    /// Cap of the reconnect delay.
    pub const RECONNECT_MAX: &str = "30s";
    /// Outbox safety poll, in case a wake-up NOTIFY was missed.
    pub const OUTBOX_POLL: &str = "1s";
    /// Delivered outbox rows older than this are deleted.
    pub const OUTBOX_RETENTION: &str = "24h";
    /// Rows read per outbox query.
    pub const OUTBOX_BATCH: u32 = 500;
    /// Interval of the listener's liveness probe.
    pub const PROBE_INTERVAL: &str = "10s";
    /// Name under which this instance records its outbox position.
    pub const CONSUMER: &str = "unpoll";
}

/// The `[postgres]` section as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPostgresConfig {
    url: Option<String>,
    connect_timeout: Option<String>,
    reconnect_min: Option<String>,
    reconnect_max: Option<String>,
    probe_interval: Option<String>,
    outbox_poll: Option<String>,
    outbox_retention: Option<String>,
    outbox_batch: Option<u32>,
    consumer: Option<String>,
}

/// Validated `[postgres]` settings.
#[derive(Clone)]
pub struct PostgresConfig {
    /// Connection URL as written (may hold a password: never logged, see `Debug`).
    pub url: String,
    /// Parsed connection options.
    pub options: PgConnectOptions,
    /// Time one connection attempt may take.
    pub connect_timeout: Duration,
    /// First reconnect delay (doubled per failure, with jitter).
    pub reconnect_min: Duration,
    /// Largest reconnect delay.
    pub reconnect_max: Duration,
    /// The listener NOTIFYs itself this often; silence for two intervals plus
    /// `connect_timeout` means the connection is dead.
    pub probe_interval: Duration,
    /// Outbox safety poll interval.
    pub outbox_poll: Duration,
    /// Delivered outbox rows older than this are deleted.
    pub outbox_retention: Duration,
    /// Rows per outbox read.
    pub outbox_batch: u32,
    /// This instance's name in the outbox cursor table; instances sharing an outbox need
    /// distinct names, since each delivers every row to its own subscribers.
    pub consumer: String,
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact(&self.url))
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("probe_interval", &self.probe_interval)
            .field("outbox_poll", &self.outbox_poll)
            .field("outbox_retention", &self.outbox_retention)
            .field("outbox_batch", &self.outbox_batch)
            .field("consumer", &self.consumer)
            .finish()
    }
}

impl PartialEq for PostgresConfig {
    fn eq(&self, other: &Self) -> bool {
        // `options` is derived from `url`.
        self.url == other.url
            && self.connect_timeout == other.connect_timeout
            && self.reconnect_min == other.reconnect_min
            && self.reconnect_max == other.reconnect_max
            && self.probe_interval == other.probe_interval
            && self.outbox_poll == other.outbox_poll
            && self.outbox_retention == other.outbox_retention
            && self.outbox_batch == other.outbox_batch
            && self.consumer == other.consumer
    }
}

/// The URL without its password, for logs and `unpoll check`.
pub fn redact(url: &str) -> String {
    // postgres://user:secret@host/db → postgres://user:***@host/db
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparsable url>".to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

impl RawPostgresConfig {
    /// Validate, recording every error under `path`.
    pub fn validate(self, path: &str, errors: &mut ConfigErrors) -> Option<PostgresConfig> {
        let url = match self.url {
            Some(url) if !url.is_empty() => url,
            _ => {
                errors.push(
                    join(path, "url"),
                    "required (e.g. url = \"postgres://app@127.0.0.1/app\")",
                );
                return None;
            }
        };
        let scheme_ok = url.starts_with("postgres://") || url.starts_with("postgresql://");
        let options = scheme_ok
            .then_some(())
            .ok_or_else(|| "the URL must start with postgres://".to_string())
            .and_then(|()| PgConnectOptions::from_str(&url).map_err(|e| e.to_string()))
            .map_err(|e| {
                errors.push(
                    join(path, "url"),
                    format!("invalid Postgres URL {}: {e}", redact(&url)),
                )
            })
            .ok();
        let d = defaults::CONNECT_TIMEOUT;
        let connect_timeout = duration_at(
            self.connect_timeout.as_deref(),
            d,
            path,
            "connect_timeout",
            errors,
        );
        let min = duration_at(
            self.reconnect_min.as_deref(),
            defaults::RECONNECT_MIN,
            path,
            "reconnect_min",
            errors,
        );
        let max = duration_at(
            self.reconnect_max.as_deref(),
            defaults::RECONNECT_MAX,
            path,
            "reconnect_max",
            errors,
        );
        if min.is_zero() || min > max {
            errors.push(
                join(path, "reconnect_min"),
                format!("must be above 0 and at most reconnect_max ({max:?})"),
            );
        }
        let probe_interval = duration_at(
            self.probe_interval.as_deref(),
            defaults::PROBE_INTERVAL,
            path,
            "probe_interval",
            errors,
        );
        if probe_interval < Duration::from_millis(50) {
            errors.push(join(path, "probe_interval"), "must be at least 50ms");
        }
        let outbox_poll = duration_at(
            self.outbox_poll.as_deref(),
            defaults::OUTBOX_POLL,
            path,
            "outbox_poll",
            errors,
        );
        if outbox_poll < Duration::from_millis(10) {
            errors.push(join(path, "outbox_poll"), "must be at least 10ms");
        }
        let outbox_retention = duration_at(
            self.outbox_retention.as_deref(),
            defaults::OUTBOX_RETENTION,
            path,
            "outbox_retention",
            errors,
        );
        let outbox_batch = self.outbox_batch.unwrap_or(defaults::OUTBOX_BATCH);
        if !(1..=100_000).contains(&outbox_batch) {
            errors.push(join(path, "outbox_batch"), "must be between 1 and 100000");
        }
        let consumer = self
            .consumer
            .unwrap_or_else(|| defaults::CONSUMER.to_string());
        if consumer.is_empty() {
            errors.push(join(path, "consumer"), "must not be empty");
        }
        Some(PostgresConfig {
            url,
            options: options?,
            connect_timeout,
            reconnect_min: min,
            reconnect_max: max,
            probe_interval,
            outbox_poll,
            outbox_retention,
            outbox_batch,
            consumer,
        })
    }
}

/// A `[[notify]]` rule as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotifyRule {
    listen: String,
    channel: Option<String>,
    event: Option<String>,
    data: Option<toml::Value>,
    #[serde(default)]
    purge: Vec<String>,
    outbox: Option<String>,
}

const PAYLOAD: &[Source] = &[Source::Payload];

impl RawNotifyRule {
    /// Validate the rule at `path` (`notify[0]`).
    pub fn validate(self, path: &str, errors: &mut ConfigErrors) -> Option<NotifyRule> {
        let before = errors.len();
        if self.listen.is_empty() || self.listen.contains('\0') {
            errors.push(
                join(path, "listen"),
                "must be a non-empty Postgres channel name",
            );
        }
        let mut template = |key: &str, text: &str| {
            Template::parse(text, PAYLOAD)
                .map_err(|e| errors.push(join(path, key), e))
                .ok()
        };
        let channel = self.channel.as_deref().and_then(|t| template("channel", t));
        let event = self.event.as_deref().and_then(|t| template("event", t));
        let purge: Vec<Template> = self
            .purge
            .iter()
            .enumerate()
            .filter_map(|(i, t)| template(&format!("purge[{i}]"), t))
            .collect();
        let data = self.data.and_then(|v| {
            DataTemplate::from_toml(&v, PAYLOAD)
                .map_err(|e| errors.push(join(path, "data"), e))
                .ok()
        });
        let mode = match self.outbox {
            Some(table) => {
                if table.is_empty() || table.split('.').count() > 2 || table.contains('\0') {
                    errors.push(
                        join(path, "outbox"),
                        format!("invalid table name {table:?} (write TABLE or SCHEMA.TABLE)"),
                    );
                }
                RuleMode::Outbox { table }
            }
            None => {
                if self.channel.is_none() {
                    errors.push(
                        join(path, "channel"),
                        "required (e.g. channel = \"reservas:{payload.business_id}\"); only \
                         outbox rules default to the row's channel",
                    );
                }
                RuleMode::Notify
            }
        };
        (errors.len() == before).then(|| NotifyRule {
            key: path.to_string(),
            listen: self.listen,
            channel,
            event,
            data,
            purge,
            mode,
        })
    }
}

/// Validate `[postgres]` and every `[[notify]]` rule together: rules need the section.
pub fn validate(
    raw: Option<RawPostgresConfig>,
    rules: Vec<(String, RawNotifyRule)>,
    errors: &mut ConfigErrors,
) -> (Option<PostgresConfig>, Vec<NotifyRule>) {
    let present = raw.is_some();
    let postgres = raw.and_then(|r| r.validate("postgres", errors));
    if !present && let Some((path, _)) = rules.first() {
        errors.push(
            path.as_str(),
            "[[notify]] rules need a [postgres] section with the url to listen on",
        );
    }
    let rules = rules
        .into_iter()
        .filter_map(|(path, rule)| rule.validate(&path, errors))
        .collect();
    (postgres, rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<(Option<PostgresConfig>, Vec<NotifyRule>), String> {
        let table: toml::Table = toml::from_str(text).unwrap();
        let mut errors = ConfigErrors::default();
        let mut s = crate::config::Sections::new(table, &mut errors);
        let raw = s.take::<RawPostgresConfig>("postgres");
        let rules = s.take_rules::<RawNotifyRule>("notify");
        s.finish();
        let out = validate(raw, rules, &mut errors);
        errors.into_result(out).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_a_rule() {
        let (pg, rules) = parse(
            r#"
            [postgres]
            url = "postgres://app:pw@127.0.0.1/app"
            [[notify]]
            listen = "reservas_changes"
            channel = "reservas:{payload.business_id}"
            event = "{payload.op}"
            purge = ["reservas:{payload.business_id}"]
            "#,
        )
        .unwrap();
        let pg = pg.unwrap();
        assert_eq!(pg.reconnect_max, Duration::from_secs(30));
        assert_eq!(pg.outbox_poll, Duration::from_secs(1));
        assert_eq!(pg.consumer, "unpoll");
        assert!(!format!("{pg:?}").contains("pw"));
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].listen, "reservas_changes");
        assert_eq!(rules[0].mode, RuleMode::Notify);
    }

    #[test]
    fn every_error_has_its_key_path() {
        let err = parse(
            r#"
            [postgres]
            url = "mysql://nope"
            reconnect_min = "1m"
            reconnect_max = "1s"
            outbox_poll = "soon"
            [[notify]]
            listen = "a"
            channel = "x:{query.id}"
            [[notify]]
            listen = "b"
            [[notify]]
            listen = "c"
            outbox = "a.b.c"
            purge = ["{payload.x"]
            "#,
        )
        .unwrap_err();
        for expected in [
            "postgres.url: invalid Postgres URL",
            "postgres.reconnect_min: must be above 0",
            "postgres.outbox_poll: invalid duration",
            "notify[0].channel: template \"x:{query.id}\": {query.id} is not available here",
            "notify[1].channel: required",
            "notify[2].outbox: invalid table name",
            "notify[2].purge[0]: template",
        ] {
            assert!(err.contains(expected), "{expected:?} missing in:\n{err}");
        }
    }

    #[test]
    fn notify_without_postgres_is_an_error() {
        let err = parse("[[notify]]\nlisten = \"a\"\nchannel = \"b\"").unwrap_err();
        assert!(err.contains("notify[0]: [[notify]] rules need a [postgres] section"));
    }

    #[test]
    fn outbox_rule_may_omit_channel() {
        let (_, rules) = parse(
            "[postgres]\nurl = \"postgres://a@b/c\"\n[[notify]]\nlisten = \"w\"\noutbox = \"ops.outbox\"",
        )
        .unwrap();
        assert_eq!(
            rules[0].mode,
            RuleMode::Outbox {
                table: "ops.outbox".into()
            }
        );
    }

    /// The commented-out `[postgres]` and `[[notify]]` examples of `config.toml.example`
    /// are valid and show the defaults.
    #[test]
    fn example_file_sections_parse() {
        let text = include_str!("../../../config.toml.example");
        let start = text.find("#[postgres]").expect("[postgres] example");
        let uncommented: String = text[start..]
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .filter(|l| !l.starts_with(' ') && !l.is_empty())
            .map(|l| format!("{l}\n"))
            .collect();
        // outbox rules may omit channel; the example shows both, so drop `outbox` here and
        // check it separately above.
        let uncommented = uncommented.replace("outbox = \"unpoll_outbox\"\n", "");
        let (pg, rules) = parse(&uncommented).unwrap();
        let pg = pg.unwrap();
        assert_eq!(pg.connect_timeout, Duration::from_secs(5));
        assert_eq!(pg.reconnect_min, Duration::from_millis(100));
        assert_eq!(pg.probe_interval, Duration::from_secs(10));
        assert_eq!(pg.outbox_retention, Duration::from_secs(24 * 3600));
        assert_eq!(pg.outbox_batch, defaults::OUTBOX_BATCH);
        assert_eq!(rules[0].purge.len(), 1);
        assert!(rules[0].data.is_some());
    }

    #[test]
    fn redaction() {
        assert_eq!(redact("postgres://u:p@h/d"), "postgres://u:***@h/d");
        assert_eq!(redact("postgres://u@h/d"), "postgres://u@h/d");
    }
}
