//! `[[notify]]` rules: a NOTIFY payload (or an outbox row) → the event to publish and the
//! tags to purge. Pure: no I/O, so every mapping decision is unit-tested here.

use serde_json::Value;

pub use crate::sources::mapping::{DataTemplate, MapError, Mapped, PayloadVars};
use crate::template::Template;

/// How a rule's events arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleMode {
    /// The NOTIFY payload is the event (lost while disconnected: subscribers get `reset`).
    Notify,
    /// NOTIFY is only a wake-up; events are rows of this outbox table (nothing lost).
    Outbox {
        /// `TABLE` or `SCHEMA.TABLE`.
        table: String,
    },
}

impl RuleMode {
    /// Label for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            RuleMode::Notify => "notify",
            RuleMode::Outbox { .. } => "outbox",
        }
    }
}

/// A validated `[[notify]]` rule.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifyRule {
    /// Key path (`notify[0]`) for logs and metrics.
    pub key: String,
    /// The Postgres channel unpoll LISTENs on.
    pub listen: String,
    /// The unpoll channel; required for NOTIFY rules, the row's `channel` by default for
    /// outbox rules.
    pub channel: Option<Template>,
    /// The event name; none = the row's `event` (outbox) or an unnamed SSE message.
    pub event: Option<Template>,
    /// The event data; none = the payload (or the row's `data`).
    pub data: Option<DataTemplate>,
    /// Cache tags to purge with each event.
    pub purge: Vec<Template>,
    /// NOTIFY payloads or outbox rows.
    pub mode: RuleMode,
}

/// One row of an outbox table.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    /// Sequence id: in commit order (see `outbox.rs`).
    pub id: i64,
    /// The row's channel.
    pub channel: String,
    /// The row's event name.
    pub event: Option<String>,
    /// The row's data.
    pub data: Value,
}

/// Parse a NOTIFY payload: templates need a JSON object.
pub fn parse_payload(text: &str) -> Result<Value, MapError> {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(other) => Err(MapError::Malformed(format!(
            "a JSON {} where an object was expected",
            kind(&other)
        ))),
        Err(e) => Err(MapError::Malformed(e.to_string())),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

impl NotifyRule {
    /// Map a NOTIFY payload (already parsed) to an event.
    pub fn map_payload(&self, payload: &Value) -> Result<Mapped, MapError> {
        let vars = PayloadVars(payload);
        let channel = match &self.channel {
            Some(t) => t.render(&vars)?,
            // Validation requires a channel for NOTIFY rules.
            None => return Err(MapError::EmptyChannel),
        };
        self.finish(channel, None, payload, &vars)
    }

    /// Map an outbox row: the row's channel, event and data unless the rule overrides them
    /// (templates see the row's data as `{payload.*}`).
    pub fn map_row(&self, row: &OutboxRow) -> Result<Mapped, MapError> {
        let vars = PayloadVars(&row.data);
        let channel = match &self.channel {
            Some(t) => t.render(&vars)?,
            None => row.channel.clone(),
        };
        self.finish(channel, row.event.clone(), &row.data, &vars)
    }

    fn finish(
        &self,
        channel: String,
        default_event: Option<String>,
        payload: &Value,
        vars: &PayloadVars<'_>,
    ) -> Result<Mapped, MapError> {
        if channel.is_empty() {
            return Err(MapError::EmptyChannel);
        }
        let event = match &self.event {
            Some(t) => Some(t.render(vars)?),
            None => default_event,
        }
        .filter(|e| !e.is_empty());
        let data = match &self.data {
            Some(d) => d.render(payload)?,
            None => payload.clone(),
        };
        let purge = self
            .purge
            .iter()
            .map(|t| t.render(vars))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Mapped {
            channel,
            event,
            data,
            purge,
        })
    }

    /// The glob of every channel this rule can publish on (`reservas:*`); `None` when it
    /// cannot be known (an outbox rule without a channel template takes it from the rows).
    pub fn channel_glob(&self) -> Option<String> {
        self.channel.as_ref().map(Template::as_glob)
    }

    /// The globs of every tag this rule can purge.
    pub fn purge_globs(&self) -> impl Iterator<Item = String> + '_ {
        self.purge.iter().map(Template::as_glob)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::template::Source;

    const P: &[Source] = &[Source::Payload];

    fn rule(channel: Option<&str>, event: Option<&str>, purge: &[&str]) -> NotifyRule {
        NotifyRule {
            key: "notify[0]".into(),
            listen: "changes".into(),
            channel: channel.map(|c| Template::parse(c, P).unwrap()),
            event: event.map(|e| Template::parse(e, P).unwrap()),
            data: None,
            purge: purge
                .iter()
                .map(|t| Template::parse(t, P).unwrap())
                .collect(),
            mode: RuleMode::Notify,
        }
    }

    #[test]
    fn payload_maps_to_channel_event_and_tags() {
        let r = rule(
            Some("reservas:{payload.business_id}"),
            Some("{payload.op}"),
            &["reservas:{payload.business_id}"],
        );
        let payload = parse_payload(r#"{"op":"INSERT","business_id":7,"id":1}"#).unwrap();
        let m = r.map_payload(&payload).unwrap();
        assert_eq!(m.channel, "reservas:7");
        assert_eq!(m.event.as_deref(), Some("INSERT"));
        assert_eq!(m.data, payload);
        assert_eq!(m.purge, ["reservas:7"]);
        assert_eq!(r.channel_glob().as_deref(), Some("reservas:*"));
        assert_eq!(r.purge_globs().collect::<Vec<_>>(), ["reservas:*"]);
    }

    #[test]
    fn malformed_and_missing_never_reach_a_channel() {
        for bad in ["", "not json", "[1,2]", "\"text\"", "42", "null"] {
            assert!(
                matches!(parse_payload(bad), Err(MapError::Malformed(_))),
                "{bad:?}"
            );
        }
        let r = rule(Some("r:{payload.business_id}"), None, &[]);
        let err = r.map_payload(&json!({"id": 1})).unwrap_err();
        assert_eq!(err.as_str(), "missing_value");
        assert_eq!(
            r.map_payload(&json!({"business_id": null}))
                .unwrap_err()
                .as_str(),
            "missing_value"
        );
        let r = rule(Some("{payload.c}"), None, &[]);
        assert_eq!(
            r.map_payload(&json!({"c": ""})).unwrap_err(),
            MapError::EmptyChannel
        );
        // a purge tag that cannot render means the rule does not apply at all
        let r = rule(Some("c"), None, &["t:{payload.nope}"]);
        assert!(r.map_payload(&json!({})).is_err());
    }

    #[test]
    fn outbox_rows_default_to_their_columns() {
        let row = OutboxRow {
            id: 5,
            channel: "messages".into(),
            event: Some("insert".into()),
            data: json!({"id": 5, "chat_id": 9}),
        };
        let m = rule(None, None, &["chat:{payload.chat_id}"])
            .map_row(&row)
            .unwrap();
        assert_eq!(
            (m.channel.as_str(), m.event.as_deref()),
            ("messages", Some("insert"))
        );
        assert_eq!(m.purge, ["chat:9"]);
        let m = rule(Some("chat:{payload.chat_id}"), Some("changed"), &[])
            .map_row(&row)
            .unwrap();
        assert_eq!(
            (m.channel.as_str(), m.event.as_deref()),
            ("chat:9", Some("changed"))
        );
    }

    #[test]
    fn data_templates_keep_json_types() {
        let v: toml::Value = toml::from_str(
            r#"d = { id = "{payload.id}", label = "chat {payload.chat_id}", tags = ["{payload.tags}"], fixed = 1 }"#,
        )
        .unwrap();
        let d = DataTemplate::from_toml(&v["d"], P).unwrap();
        let out = d
            .render(&json!({"id": 5, "chat_id": 9, "tags": ["a"]}))
            .unwrap();
        assert_eq!(
            out,
            json!({"id": 5, "label": "chat 9", "tags": [["a"]], "fixed": 1})
        );
        assert!(d.render(&json!({"chat_id": 9})).is_err());
        assert!(DataTemplate::from_toml(&toml::Value::from("{query.x}"), P).is_err());
    }
}
