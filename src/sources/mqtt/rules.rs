//! `[[topic]]` rules: topic patterns, the subscriptions they need, and an MQTT message → the
//! event to publish and the tags to purge. Pure: no I/O, so every mapping decision is
//! unit-tested here.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::Value;

use crate::sources::mapping::{DataTemplate, MapError, Mapped};
use crate::template::{Source, Template, Vars, json_path};

/// One level of a topic pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    /// Must equal the topic's level.
    Literal(String),
    /// `{name}`: any one level, captured as `{topic.name}`.
    Named(String),
    /// `+`: any one level, not captured.
    Any,
    /// `#` (last only): the rest of the topic, zero or more levels.
    Rest,
}

/// A topic pattern as written in a rule: `devices/{id}/position`, `sensors/#`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    text: String,
    levels: Vec<Level>,
}

impl TopicPattern {
    /// Parse `text`: levels separated by `/`; a level is a literal, `{name}` (one level,
    /// captured), `+` (one level) or, last only, `#`.
    pub fn parse(text: &str) -> Result<TopicPattern, String> {
        if text.is_empty() {
            return Err("must not be empty".to_string());
        }
        let parts: Vec<&str> = text.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        let mut names = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let level = if *part == "#" {
                if i + 1 != parts.len() {
                    return Err(format!("{text:?}: \"#\" is only allowed as the last level"));
                }
                Level::Rest
            } else if *part == "+" {
                Level::Any
            } else if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                let valid = !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if !valid {
                    return Err(format!(
                        "{text:?}: invalid level name {{{name}}} (letters, digits, _ and -)"
                    ));
                }
                if names.contains(&name) {
                    return Err(format!("{text:?}: {{{name}}} appears twice"));
                }
                names.push(name);
                Level::Named(name.to_string())
            } else if part.contains(['{', '}', '+', '#', '\0']) {
                return Err(format!(
                    "{text:?}: level {part:?} must be a literal, {{name}}, + or (last) #"
                ));
            } else {
                Level::Literal(part.to_string())
            };
            levels.push(level);
        }
        Ok(TopicPattern {
            text: text.to_string(),
            levels,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The MQTT subscription filter: `{name}` becomes `+`.
    pub fn filter(&self) -> String {
        let levels: Vec<&str> = self
            .levels
            .iter()
            .map(|l| match l {
                Level::Literal(s) => s.as_str(),
                Level::Named(_) | Level::Any => "+",
                Level::Rest => "#",
            })
            .collect();
        levels.join("/")
    }

    /// Whether `{name}` is one of the pattern's levels.
    pub fn has_name(&self, name: &str) -> bool {
        self.levels
            .iter()
            .any(|l| matches!(l, Level::Named(n) if n == name))
    }

    /// The captured levels when `topic` matches, by name.
    pub fn captures<'t>(&self, topic: &'t str) -> Option<Vec<(&str, &'t str)>> {
        // MQTT: wildcards at the first level never match topics starting with `$`.
        if topic.starts_with('$') && !matches!(self.levels.first(), Some(Level::Literal(_))) {
            return None;
        }
        let mut out = Vec::new();
        let mut parts = topic.split('/');
        for level in &self.levels {
            match level {
                Level::Rest => return Some(out),
                Level::Literal(l) => {
                    if parts.next()? != l {
                        return None;
                    }
                }
                Level::Any => {
                    parts.next()?;
                }
                Level::Named(n) => out.push((n.as_str(), parts.next()?)),
            }
        }
        parts.next().is_none().then_some(out)
    }
}

/// MQTT quality of service of a rule's subscription (QoS 2 is not offered: unpoll's
/// delivery to subscribers is at most once per received message anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Qos {
    /// At most once: not queued by the broker while unpoll is away.
    AtMostOnce,
    /// At least once: queued by the broker in unpoll's persistent session.
    AtLeastOnce,
}

/// A validated `[[topic]]` rule.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicRule {
    /// Key path (`topic[0]`) for logs and metrics.
    pub key: String,
    /// The topic pattern.
    pub topic: TopicPattern,
    /// The unpoll channel.
    pub channel: Template,
    /// The event name; none = an unnamed SSE message.
    pub event: Option<Template>,
    /// The event data; none = the payload.
    pub data: Option<DataTemplate>,
    /// Cache tags to purge with each event.
    pub purge: Vec<Template>,
    /// Subscription QoS.
    pub qos: Qos,
}

/// Template variables of one message: `{topic.NAME}` and `{payload.a.b}`.
struct MessageVars<'a> {
    topic: &'a [(&'a str, &'a str)],
    payload: &'a Value,
}

impl Vars for MessageVars<'_> {
    fn get(&self, source: Source, name: &str) -> Option<Cow<'_, str>> {
        match source {
            Source::Topic => self
                .topic
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| Cow::Borrowed(*v)),
            Source::Payload => json_path(self.payload, name),
            _ => None,
        }
    }
}

/// A message payload as templates see it: JSON when it parses, else the text.
pub fn parse_payload(bytes: &[u8]) -> Result<Value, MapError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) => Ok(v),
        Err(_) => match std::str::from_utf8(bytes) {
            Ok(text) => Ok(Value::String(text.to_string())),
            Err(_) => Err(MapError::Malformed(
                "neither JSON nor UTF-8 text (SSE data is text)".to_string(),
            )),
        },
    }
}

impl TopicRule {
    /// Whether a template reads `{payload.x}`, so the payload must be a JSON object.
    pub fn needs_object(&self) -> bool {
        let uses_payload = |t: &Template| t.variables().any(|(s, _)| s == Source::Payload);
        uses_payload(&self.channel)
            || self.event.as_ref().is_some_and(uses_payload)
            || self.purge.iter().any(uses_payload)
            || self
                .data
                .as_ref()
                .is_some_and(|d| d.variables().iter().any(|(s, _)| *s == Source::Payload))
    }

    /// Map a message on `topic` (which the rule's pattern matches, or `None`) with its
    /// parsed payload.
    pub fn map(&self, topic: &str, payload: &Value) -> Option<Result<Mapped, MapError>> {
        let captures = self.topic.captures(topic)?;
        Some(self.map_captured(&captures, payload))
    }

    fn map_captured(&self, captures: &[(&str, &str)], payload: &Value) -> Result<Mapped, MapError> {
        if self.needs_object() && !payload.is_object() {
            return Err(MapError::Malformed(
                "the rule reads {payload.*} but the payload is not a JSON object".to_string(),
            ));
        }
        let vars = MessageVars {
            topic: captures,
            payload,
        };
        let channel = self.channel.render(&vars)?;
        if channel.is_empty() {
            return Err(MapError::EmptyChannel);
        }
        let event = match &self.event {
            Some(t) => Some(t.render(&vars)?),
            None => None,
        }
        .filter(|e| !e.is_empty());
        let data = match &self.data {
            Some(d) => d.render_with(payload, &vars)?,
            None => payload.clone(),
        };
        let purge = self
            .purge
            .iter()
            .map(|t| t.render(&vars))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Mapped {
            channel,
            event,
            data,
            purge,
        })
    }

    /// The glob of every channel this rule can publish on (`device:*`).
    pub fn channel_glob(&self) -> String {
        self.channel.as_glob()
    }

    /// The globs of every tag this rule can purge.
    pub fn purge_globs(&self) -> impl Iterator<Item = String> + '_ {
        self.purge.iter().map(Template::as_glob)
    }
}

/// Whether every topic matching filter `b` also matches filter `a`.
fn covers(a: &str, b: &str) -> bool {
    let mut bs = b.split('/');
    for level in a.split('/') {
        if level == "#" {
            return true;
        }
        match bs.next() {
            None => return false,
            Some("#") => return false,
            Some(other) => {
                if level != "+" && level != other || level == "+" && other == "#" {
                    return false;
                }
            }
        }
    }
    bs.next().is_none()
}

/// Whether subscription filter `filter` matches the concrete topic `topic`.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let wildcard_first = filter.starts_with(['+', '#']);
    !(wildcard_first && topic.starts_with('$')) && covers(filter, topic)
}

/// The subscriptions `rules` need: one filter per distinct pattern at the highest QoS any
/// rule asks of it, leaving out filters another one already covers (`devices/+/position`
/// under `devices/#`), because brokers may deliver a message once per matching
/// subscription and each copy would be published again.
pub fn subscriptions(rules: &[TopicRule]) -> BTreeMap<String, Qos> {
    let mut all: BTreeMap<String, Qos> = BTreeMap::new();
    for rule in rules {
        let qos = all.entry(rule.topic.filter()).or_insert(rule.qos);
        *qos = (*qos).max(rule.qos);
    }
    let filters: Vec<(String, Qos)> = all.iter().map(|(f, q)| (f.clone(), *q)).collect();
    let mut out = BTreeMap::new();
    for (f, q) in &filters {
        let coverer = filters.iter().find(|(g, _)| g != f && covers(g, f));
        match coverer {
            // The covering filter is subscribed at the higher of both QoS.
            Some(_) => {}
            None => {
                let qos = filters
                    .iter()
                    .filter(|(g, _)| g != f && covers(f, g))
                    .map(|(_, q)| *q)
                    .fold(*q, Qos::max);
                out.insert(f.clone(), qos);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const ALLOWED: &[Source] = &[Source::Topic, Source::Payload];

    fn rule(topic: &str, channel: &str, qos: Qos) -> TopicRule {
        TopicRule {
            key: "topic[0]".into(),
            topic: TopicPattern::parse(topic).unwrap(),
            channel: Template::parse(channel, ALLOWED).unwrap(),
            event: None,
            data: None,
            purge: Vec::new(),
            qos,
        }
    }

    #[test]
    fn patterns_give_filters_and_captures() {
        let p = TopicPattern::parse("devices/{id}/position").unwrap();
        assert_eq!(p.filter(), "devices/+/position");
        assert_eq!(p.captures("devices/A1/position"), Some(vec![("id", "A1")]));
        assert_eq!(p.captures("devices/A1/speed"), None);
        assert_eq!(p.captures("devices/A1/position/x"), None);
        assert_eq!(p.captures("devices/position"), None);
        let p = TopicPattern::parse("fleet/{fleet}/#").unwrap();
        assert_eq!(p.filter(), "fleet/+/#");
        assert_eq!(p.captures("fleet/7"), Some(vec![("fleet", "7")]));
        assert_eq!(p.captures("fleet/7/a/b"), Some(vec![("fleet", "7")]));
        let p = TopicPattern::parse("+/x").unwrap();
        assert_eq!(p.captures("$SYS/x"), None, "wildcards skip $ topics");
        for bad in [
            "",
            "a/#/b",
            "a/{}/b",
            "a/{x}{y}",
            "a/b+",
            "a/{x}/{x}",
            "a/{x.y}",
        ] {
            assert!(TopicPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn messages_map_with_topic_and_payload_fields() {
        let mut r = rule(
            "devices/{id}/position",
            "device:{topic.id}",
            Qos::AtLeastOnce,
        );
        r.event = Some(Template::parse("{payload.kind}", ALLOWED).unwrap());
        r.purge = vec![Template::parse("device:{topic.id}", ALLOWED).unwrap()];
        let payload = json!({"kind": "fix", "lat": 1.5});
        let m = r.map("devices/A1/position", &payload).unwrap().unwrap();
        assert_eq!(m.channel, "device:A1");
        assert_eq!(m.event.as_deref(), Some("fix"));
        assert_eq!(m.data, payload);
        assert_eq!(m.purge, ["device:A1"]);
        assert!(r.map("devices/A1/speed", &payload).is_none());
        assert_eq!(r.channel_glob(), "device:*");

        // The payload must be an object once a template reads a field of it.
        let text = parse_payload(b"not json").unwrap();
        assert_eq!(text, json!("not json"));
        let err = r.map("devices/A1/position", &text).unwrap().unwrap_err();
        assert_eq!(err.as_str(), "malformed");
        // A rule that reads no field takes any payload as is.
        let plain = rule(
            "devices/{id}/position",
            "device:{topic.id}",
            Qos::AtLeastOnce,
        );
        let m = plain.map("devices/A1/position", &text).unwrap().unwrap();
        assert_eq!(m.data, json!("not json"));
        assert!(parse_payload(&[0xff, 0xfe]).is_err());
        // A missing field skips the rule.
        let err = r
            .map("devices/A1/position", &json!({"lat": 1}))
            .unwrap()
            .unwrap_err();
        assert_eq!(err.as_str(), "missing_value");
    }

    #[test]
    fn data_templates_see_topic_levels_and_the_whole_payload() {
        let v: toml::Value = toml::from_str(
            r#"d = { device = "{topic.id}", lat = "{payload.lat}", raw = "{payload}" }"#,
        )
        .unwrap();
        let mut r = rule(
            "devices/{id}/position",
            "device:{topic.id}",
            Qos::AtLeastOnce,
        );
        r.data = Some(DataTemplate::from_toml(&v["d"], ALLOWED).unwrap());
        let payload = json!({"lat": 1.5});
        let m = r.map("devices/A1/position", &payload).unwrap().unwrap();
        assert_eq!(
            m.data,
            json!({"device": "A1", "lat": 1.5, "raw": {"lat": 1.5}})
        );
    }

    #[test]
    fn subscriptions_merge_and_skip_covered_filters() {
        let rules = [
            rule("devices/{id}/position", "a", Qos::AtMostOnce),
            rule("devices/{id}/position", "b", Qos::AtLeastOnce),
            rule("fleet/{id}/position", "c", Qos::AtLeastOnce),
            rule("fleet/#", "d", Qos::AtMostOnce),
            rule("x/y", "e", Qos::AtMostOnce),
            rule("x/+", "f", Qos::AtMostOnce),
        ];
        let subs = subscriptions(&rules);
        assert_eq!(
            subs.into_iter().collect::<Vec<_>>(),
            [
                ("devices/+/position".to_string(), Qos::AtLeastOnce),
                ("fleet/#".to_string(), Qos::AtLeastOnce),
                ("x/+".to_string(), Qos::AtMostOnce),
            ]
        );
        assert!(covers("a/#", "a"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/b", "a/+"));
    }
}
