//! `[mqtt]` and `[[topic]]`: the raw sections as written and their validation.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::rules::{Qos, TopicPattern, TopicRule};
use crate::config::{ConfigErrors, duration_at, join, parse_size};
use crate::sources::mapping::DataTemplate;
use crate::template::{Source, Template};

/// Defaults, documented in `config.toml.example`.
pub mod defaults {
    /// The broker's default plain-TCP port.
    pub const PORT: u16 = 1883;
    /// Keep-alive interval the broker is told (it drops the client after 1.5×; unpoll
    /// notices an unanswered ping at the next interval).
    pub const KEEP_ALIVE: &str = "30s";
    /// Time to open the connection and get CONNACK.
    pub const CONNECT_TIMEOUT: &str = "5s";
    /// First reconnect delay; doubles per failed attempt.
    pub const RECONNECT_MIN: &str = "100ms";
    /// Cap of the reconnect delay.
    pub const RECONNECT_MAX: &str = "30s";
    /// Largest packet accepted from the broker.
    pub const MAX_PACKET_SIZE: &str = "1MiB";
    /// Subscription QoS of a rule.
    pub const QOS: u8 = 1;
}

/// The `[mqtt]` section as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqttConfig {
    url: Option<String>,
    client_id: Option<String>,
    username: Option<String>,
    password: Option<String>,
    keep_alive: Option<String>,
    connect_timeout: Option<String>,
    reconnect_min: Option<String>,
    reconnect_max: Option<String>,
    max_packet_size: Option<String>,
}

/// Validated `[mqtt]` settings.
#[derive(Clone, PartialEq)]
pub struct MqttConfig {
    /// The URL as written.
    pub url: String,
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT client id: the broker keeps the persistent session under it, so it must be
    /// stable across restarts and distinct per instance.
    pub client_id: String,
    /// User name, if any.
    pub username: Option<String>,
    /// Password (never logged, see `Debug`).
    pub password: Option<String>,
    /// Keep-alive interval (whole seconds, at least 1s).
    pub keep_alive: Duration,
    /// Time to connect and get CONNACK (whole seconds, at least 1s).
    pub connect_timeout: Duration,
    /// First reconnect delay (doubled per failure, with jitter).
    pub reconnect_min: Duration,
    /// Largest reconnect delay.
    pub reconnect_max: Duration,
    /// Largest packet accepted from the broker; a bigger one breaks the connection.
    pub max_packet_size: usize,
}

impl fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttConfig")
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("keep_alive", &self.keep_alive)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("max_packet_size", &self.max_packet_size)
            .finish()
    }
}

/// `mqtt://host[:port]` (or `tcp://`) → host and port.
fn parse_url(url: &str) -> Result<(String, u16), String> {
    let rest = if let Some(rest) = url.strip_prefix("mqtt://") {
        rest
    } else if let Some(rest) = url.strip_prefix("tcp://") {
        rest
    } else if url.starts_with("mqtts://") || url.starts_with("ssl://") {
        return Err("TLS (mqtts://) is not supported yet; use mqtt://".to_string());
    } else {
        return Err("the URL must start with mqtt://".to_string());
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('@') {
        return Err("put credentials in username and password, not in the URL".to_string());
    }
    if rest.contains(['/', '?', '#']) {
        return Err("write only mqtt://host:port".to_string());
    }
    let port = |p: &str| p.parse::<u16>().map_err(|_| format!("invalid port {p:?}"));
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("unclosed [ in the host")?;
        match after.strip_prefix(':') {
            Some(p) => (host, port(p)?),
            None if after.is_empty() => (host, defaults::PORT),
            None => return Err(format!("unexpected {after:?} after the host")),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((host, p)) => (host, port(p)?),
            None => (rest, defaults::PORT),
        }
    };
    if host.is_empty() {
        return Err("missing host".to_string());
    }
    Ok((host.to_string(), port))
}

/// `unpoll-<host name>`: stable across restarts of one host, distinct between hosts.
fn default_client_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty());
    match host {
        Some(h) => format!("unpoll-{h}"),
        None => "unpoll".to_string(),
    }
}

impl RawMqttConfig {
    /// Validate, recording every error under `path`.
    pub fn validate(self, path: &str, errors: &mut ConfigErrors) -> Option<MqttConfig> {
        let url = match self.url {
            Some(url) if !url.is_empty() => url,
            _ => {
                errors.push(
                    join(path, "url"),
                    "required (e.g. url = \"mqtt://127.0.0.1:1883\")",
                );
                return None;
            }
        };
        let address = parse_url(&url)
            .map_err(|e| errors.push(join(path, "url"), format!("invalid MQTT URL: {e}")))
            .ok();
        let client_id = self.client_id.unwrap_or_else(default_client_id);
        if client_id.is_empty() || client_id.len() > 65_535 {
            errors.push(
                join(path, "client_id"),
                "must not be empty (the broker keeps the session under it)",
            );
        }
        if self.password.is_some() && self.username.is_none() {
            errors.push(join(path, "password"), "needs a username");
        }
        let mut whole_seconds = |key: &str, value: Option<&str>, default: &str| {
            let d = duration_at(value, default, path, key, errors);
            if d < Duration::from_secs(1) || d.subsec_nanos() != 0 {
                errors.push(join(path, key), "must be whole seconds, at least 1s");
            }
            d
        };
        let keep_alive = whole_seconds(
            "keep_alive",
            self.keep_alive.as_deref(),
            defaults::KEEP_ALIVE,
        );
        let connect_timeout = whole_seconds(
            "connect_timeout",
            self.connect_timeout.as_deref(),
            defaults::CONNECT_TIMEOUT,
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
        let size = self
            .max_packet_size
            .as_deref()
            .unwrap_or(defaults::MAX_PACKET_SIZE);
        let max_packet_size = match parse_size(size) {
            // 268435455 bytes is the largest packet MQTT 3.1.1 can encode.
            Ok(n) if (1024..=268_435_455).contains(&n) => n as usize,
            Ok(_) => {
                errors.push(
                    join(path, "max_packet_size"),
                    "must be between 1KiB and 256MiB",
                );
                0
            }
            Err(e) => {
                errors.push(join(path, "max_packet_size"), e);
                0
            }
        };
        let (host, port) = address?;
        Some(MqttConfig {
            url,
            host,
            port,
            client_id,
            username: self.username,
            password: self.password,
            keep_alive,
            connect_timeout,
            reconnect_min: min,
            reconnect_max: max,
            max_packet_size,
        })
    }
}

/// A `[[topic]]` rule as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTopicRule {
    topic: String,
    channel: Option<String>,
    event: Option<String>,
    data: Option<toml::Value>,
    #[serde(default)]
    purge: Vec<String>,
    qos: Option<u8>,
}

const VARS: &[Source] = &[Source::Topic, Source::Payload];

impl RawTopicRule {
    /// Validate the rule at `path` (`topic[0]`).
    pub fn validate(self, path: &str, errors: &mut ConfigErrors) -> Option<TopicRule> {
        let before = errors.len();
        let topic = TopicPattern::parse(&self.topic)
            .map_err(|e| errors.push(join(path, "topic"), e))
            .ok();
        let mut template = |key: &str, text: &str| {
            let t = Template::parse(text, VARS)
                .map_err(|e| errors.push(join(path, key), e))
                .ok()?;
            // A {topic.NAME} the pattern does not capture could never render.
            if let Some(topic) = &topic
                && let Some((_, name)) = t
                    .variables()
                    .find(|(s, n)| *s == Source::Topic && !topic.has_name(n))
            {
                errors.push(
                    join(path, key),
                    format!(
                        "{{topic.{name}}} is not a level of topic {:?} (write it as {{{name}}} there)",
                        topic.as_str()
                    ),
                );
                return None;
            }
            Some(t)
        };
        let channel = self.channel.as_deref().and_then(|t| template("channel", t));
        let event = self.event.as_deref().and_then(|t| template("event", t));
        let purge: Vec<Template> = self
            .purge
            .iter()
            .enumerate()
            .filter_map(|(i, t)| template(&format!("purge[{i}]"), t))
            .collect();
        if self.channel.is_none() {
            errors.push(
                join(path, "channel"),
                "required (e.g. channel = \"device:{topic.id}\")",
            );
        }
        let data = self.data.and_then(|v| {
            let d = DataTemplate::from_toml(&v, VARS)
                .map_err(|e| errors.push(join(path, "data"), e))
                .ok()?;
            if let Some(topic) = &topic
                && let Some((_, name)) = d
                    .variables()
                    .into_iter()
                    .find(|(s, n)| *s == Source::Topic && !topic.has_name(n))
            {
                errors.push(
                    join(path, "data"),
                    format!(
                        "{{topic.{name}}} is not a level of topic {:?}",
                        topic.as_str()
                    ),
                );
                return None;
            }
            Some(d)
        });
        let qos = match self.qos.unwrap_or(defaults::QOS) {
            0 => Qos::AtMostOnce,
            1 => Qos::AtLeastOnce,
            _ => {
                errors.push(
                    join(path, "qos"),
                    "must be 0 or 1 (QoS 1 keeps messages in the session while unpoll is away)",
                );
                Qos::AtLeastOnce
            }
        };
        if errors.len() != before {
            return None;
        }
        Some(TopicRule {
            key: path.to_string(),
            topic: topic?,
            channel: channel?,
            event,
            data,
            purge,
            qos,
        })
    }
}

/// Validate `[mqtt]` and every `[[topic]]` rule together: rules need the section.
pub fn validate(
    raw: Option<RawMqttConfig>,
    rules: Vec<(String, RawTopicRule)>,
    errors: &mut ConfigErrors,
) -> (Option<MqttConfig>, Vec<TopicRule>) {
    let present = raw.is_some();
    let mqtt = raw.and_then(|r| r.validate("mqtt", errors));
    if !present && let Some((path, _)) = rules.first() {
        errors.push(
            path.as_str(),
            "[[topic]] rules need an [mqtt] section with the broker's url",
        );
    }
    let rules = rules
        .into_iter()
        .filter_map(|(path, rule)| rule.validate(&path, errors))
        .collect();
    (mqtt, rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<(Option<MqttConfig>, Vec<TopicRule>), String> {
        let table: toml::Table = toml::from_str(text).unwrap();
        let mut errors = ConfigErrors::default();
        let mut s = crate::config::Sections::new(table, &mut errors);
        let raw = s.take::<RawMqttConfig>("mqtt");
        let rules = s.take_rules::<RawTopicRule>("topic");
        s.finish();
        let out = validate(raw, rules, &mut errors);
        errors.into_result(out).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_a_rule() {
        let (mqtt, rules) = parse(
            r#"
            [mqtt]
            url = "mqtt://broker.local"
            username = "u"
            password = "secret"
            [[topic]]
            topic = "devices/{id}/position"
            channel = "device:{topic.id}"
            purge = ["device:{topic.id}"]
            "#,
        )
        .unwrap();
        let mqtt = mqtt.unwrap();
        assert_eq!((mqtt.host.as_str(), mqtt.port), ("broker.local", 1883));
        assert!(mqtt.client_id.starts_with("unpoll"));
        assert_eq!(mqtt.keep_alive, Duration::from_secs(30));
        assert_eq!(mqtt.max_packet_size, 1024 * 1024);
        assert!(!format!("{mqtt:?}").contains("secret"));
        assert_eq!(rules[0].qos, Qos::AtLeastOnce);
        assert_eq!(rules[0].topic.filter(), "devices/+/position");
    }

    #[test]
    fn every_error_has_its_key_path() {
        let err = parse(
            r#"
            [mqtt]
            url = "mqtts://b:8883"
            keep_alive = "500ms"
            reconnect_min = "1m"
            reconnect_max = "1s"
            password = "x"
            [[topic]]
            topic = "a/#/b"
            channel = "c"
            [[topic]]
            topic = "a/{id}"
            channel = "c:{topic.nope}"
            qos = 2
            [[topic]]
            topic = "a/{id}"
            [[topic]]
            topic = "a/{id}"
            channel = "c"
            event = "{query.x}"
            data = { who = "{topic.who}" }
            "#,
        )
        .unwrap_err();
        for expected in [
            "mqtt.url: invalid MQTT URL: TLS (mqtts://) is not supported yet",
            "mqtt.keep_alive: must be whole seconds",
            "mqtt.reconnect_min: must be above 0",
            "mqtt.password: needs a username",
            "topic[0].topic: \"a/#/b\": \"#\" is only allowed as the last level",
            "topic[1].channel: {topic.nope} is not a level of topic \"a/{id}\"",
            "topic[1].qos: must be 0 or 1",
            "topic[2].channel: required",
            "topic[3].event: template \"{query.x}\": {query.x} is not available here",
            "topic[3].data: {topic.who} is not a level",
        ] {
            assert!(err.contains(expected), "{expected:?} missing in:\n{err}");
        }
    }

    #[test]
    fn topic_without_mqtt_is_an_error() {
        let err = parse("[[topic]]\ntopic = \"a\"\nchannel = \"b\"").unwrap_err();
        assert!(err.contains("topic[0]: [[topic]] rules need an [mqtt] section"));
    }

    #[test]
    fn urls() {
        assert_eq!(parse_url("mqtt://h:1884"), Ok(("h".into(), 1884)));
        assert_eq!(parse_url("tcp://h/"), Ok(("h".into(), 1883)));
        assert_eq!(parse_url("mqtt://[::1]:1884"), Ok(("::1".into(), 1884)));
        assert_eq!(parse_url("mqtt://[::1]"), Ok(("::1".into(), 1883)));
        assert!(parse_url("mqtt://u:p@h").is_err());
        assert!(parse_url("http://h").is_err());
        assert!(parse_url("mqtt://h:x").is_err());
    }

    /// The commented-out `[mqtt]` and `[[topic]]` examples of `config.toml.example` are
    /// valid and show the defaults.
    #[test]
    fn example_file_sections_parse() {
        let text = include_str!("../../../config.toml.example");
        let start = text.find("#[mqtt]").expect("[mqtt] example");
        // The [postgres] example follows; its own test reads it.
        let end = text[start..]
            .find("#[postgres]")
            .map_or(text.len(), |e| start + e);
        let uncommented: String = text[start..end]
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .filter(|l| !l.starts_with(' ') && !l.is_empty())
            .map(|l| format!("{l}\n"))
            .collect();
        let (mqtt, rules) = parse(&uncommented).unwrap();
        let mqtt = mqtt.unwrap();
        assert_eq!(mqtt.keep_alive, Duration::from_secs(30));
        assert_eq!(mqtt.connect_timeout, Duration::from_secs(5));
        assert_eq!(mqtt.reconnect_min, Duration::from_millis(100));
        assert_eq!(mqtt.reconnect_max, Duration::from_secs(30));
        assert_eq!(mqtt.max_packet_size, 1024 * 1024);
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].qos, Qos::AtLeastOnce);
        assert_eq!(rules[0].purge.len(), 1);
        assert_eq!(rules[0].data, Some(DataTemplate::Payload));
    }
}
