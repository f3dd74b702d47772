//! What every source's rules share: the event a message maps to ([`Mapped`]), why it was
//! not published ([`MapError`]), and event data templates ([`DataTemplate`]).

use std::borrow::Cow;

use serde_json::Value;

use crate::template::{Source, Template, Vars, json_path};

/// What one notification, row or message becomes.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    /// The unpoll channel.
    pub channel: String,
    /// The SSE event name, if any.
    pub event: Option<String>,
    /// The event data.
    pub data: Value,
    /// Cache tags to purge.
    pub purge: Vec<String>,
}

/// Why a notification, row or message was not published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// The payload is not what the rule needs (a JSON object for `{payload.x}`).
    #[error("malformed payload: {0}")]
    Malformed(String),
    /// A template variable had no value in this payload.
    #[error("{0}")]
    Missing(#[from] crate::template::Missing),
    /// The rendered channel name is empty.
    #[error("the channel rendered empty")]
    EmptyChannel,
}

impl MapError {
    /// Label for metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            MapError::Malformed(_) => "malformed",
            MapError::Missing(_) => "missing_value",
            MapError::EmptyChannel => "empty_channel",
        }
    }
}

/// `{payload.a.b}` variables.
pub struct PayloadVars<'a>(pub &'a Value);

impl Vars for PayloadVars<'_> {
    fn get(&self, source: Source, name: &str) -> Option<Cow<'_, str>> {
        match source {
            Source::Payload => json_path(self.0, name),
            _ => None,
        }
    }
}

/// Event data as written in the config: a template string, a table or array of them, or a
/// literal. A string that is exactly one variable keeps the value's JSON type.
#[derive(Debug, Clone, PartialEq)]
pub enum DataTemplate {
    /// `"{payload}"`: the whole payload, as is.
    Payload,
    /// A string template.
    Template(Template),
    /// A table: each value rendered.
    Object(Vec<(String, DataTemplate)>),
    /// An array: each element rendered.
    Array(Vec<DataTemplate>),
    /// A number, boolean or date, as is.
    Literal(Value),
}

impl DataTemplate {
    /// Parse a TOML value whose strings are templates over `allowed` sources.
    pub fn from_toml(value: &toml::Value, allowed: &[Source]) -> Result<DataTemplate, String> {
        Ok(match value {
            toml::Value::String(s) if s == "{payload}" && allowed.contains(&Source::Payload) => {
                DataTemplate::Payload
            }
            toml::Value::String(s) => DataTemplate::Template(Template::parse(s, allowed)?),
            toml::Value::Table(t) => DataTemplate::Object(
                t.iter()
                    .map(|(k, v)| Ok((k.clone(), DataTemplate::from_toml(v, allowed)?)))
                    .collect::<Result<_, String>>()?,
            ),
            toml::Value::Array(a) => DataTemplate::Array(
                a.iter()
                    .map(|v| DataTemplate::from_toml(v, allowed))
                    .collect::<Result<_, _>>()?,
            ),
            toml::Value::Integer(i) => DataTemplate::Literal(Value::from(*i)),
            toml::Value::Float(f) => DataTemplate::Literal(Value::from(*f)),
            toml::Value::Boolean(b) => DataTemplate::Literal(Value::from(*b)),
            toml::Value::Datetime(d) => DataTemplate::Literal(Value::from(d.to_string())),
        })
    }

    /// Render against a payload (its fields are the only variables).
    pub fn render(&self, payload: &Value) -> Result<Value, MapError> {
        self.render_with(payload, &PayloadVars(payload))
    }

    /// Render against a payload, with `vars` for every variable (including `{payload.*}`
    /// inside longer strings); a lone `{payload.x}` keeps the field's JSON type.
    pub fn render_with(&self, payload: &Value, vars: &dyn Vars) -> Result<Value, MapError> {
        Ok(match self {
            DataTemplate::Payload => payload.clone(),
            DataTemplate::Template(t) => match t.single_variable() {
                Some((Source::Payload, path)) => {
                    lookup(payload, path)
                        .cloned()
                        .ok_or_else(|| crate::template::Missing {
                            source: Source::Payload,
                            name: path.to_string(),
                        })?
                }
                _ => Value::String(t.render(vars)?),
            },
            DataTemplate::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), v.render_with(payload, vars)?)))
                    .collect::<Result<_, MapError>>()?,
            ),
            DataTemplate::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|v| v.render_with(payload, vars))
                    .collect::<Result<_, _>>()?,
            ),
            DataTemplate::Literal(v) => v.clone(),
        })
    }

    /// Every variable of the templates inside.
    pub fn variables(&self) -> Vec<(Source, &str)> {
        match self {
            DataTemplate::Payload | DataTemplate::Literal(_) => Vec::new(),
            DataTemplate::Template(t) => t.variables().collect(),
            DataTemplate::Object(fields) => {
                fields.iter().flat_map(|(_, v)| v.variables()).collect()
            }
            DataTemplate::Array(items) => items.iter().flat_map(DataTemplate::variables).collect(),
        }
    }
}

/// The JSON value at `a.b.0.c`; null counts as missing, like in string templates.
fn lookup<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    let mut v = value;
    for key in path.split('.') {
        v = match v {
            Value::Object(map) => map.get(key)?,
            Value::Array(items) => items.get(key.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    (!v.is_null()).then_some(v)
}
