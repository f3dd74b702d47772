//! Building a tap's event from the request and the app's answer: channel, event name and
//! data from templates over path, query, headers, form fields and JSON body, and the
//! answer's headers and JSON body.

use std::borrow::Cow;

use bytes::Bytes;
use http::HeaderMap;
use http::header::CONTENT_TYPE;
use serde_json::{Map, Value};

use super::TapRule;
use crate::hub::EventData;
use crate::route::PathParams;
use crate::template::{Missing, RequestVars, Source, Vars, json_path};

/// The parts of a tapped request the templates read.
pub struct TapRequest<'a> {
    /// Captured path segments.
    pub params: &'a PathParams,
    /// Raw query string.
    pub query: Option<&'a str>,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The body copy.
    pub body: &'a Bytes,
}

/// The parts of the app's answer the templates read; each `None` when no template needs it.
#[derive(Default)]
pub struct TapResponse<'a> {
    /// Response headers.
    pub headers: Option<&'a HeaderMap>,
    /// The response body copy (complete, at most `max_body`).
    pub body: Option<&'a Bytes>,
}

/// Request variables plus `{response.…}`.
struct TapVars<'a> {
    request: RequestVars<'a>,
    headers: Option<&'a HeaderMap>,
    json: Option<&'a Value>,
}

impl Vars for TapVars<'_> {
    fn get(&self, source: Source, name: &str) -> Option<Cow<'_, str>> {
        match source {
            Source::ResponseHeader => self
                .headers?
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(Cow::Borrowed),
            Source::ResponseJson => json_path(self.json?, name),
            _ => self.request.get(source, name),
        }
    }
}

/// A rendered event.
#[derive(Debug)]
pub struct TapEvent {
    /// Target channel.
    pub channel: String,
    /// Event name.
    pub event: Option<String>,
    /// Data.
    pub data: EventData,
    /// Tags to purge.
    pub purge: Vec<String>,
}

/// The body, decoded by its content type.
enum Decoded {
    Form(Vec<(String, String)>),
    Json(Value),
    Other,
}

fn decode(headers: &HeaderMap, body: &Bytes) -> Decoded {
    let ct = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence == "application/x-www-form-urlencoded" {
        return Decoded::Form(form_urlencoded::parse(body).into_owned().collect());
    }
    if (essence == "application/json" || essence.ends_with("+json"))
        && let Ok(v) = serde_json::from_slice(body)
    {
        return Decoded::Json(v);
    }
    Decoded::Other
}

/// Render `rule`'s event for `req` and `resp`; a missing variable means the rule does not
/// apply. A response body that is not JSON leaves every `{response.json.…}` missing.
pub fn build(
    rule: &TapRule,
    req: &TapRequest<'_>,
    resp: &TapResponse<'_>,
) -> Result<TapEvent, Missing> {
    let decoded = decode(req.headers, req.body);
    let (form, json) = match &decoded {
        Decoded::Form(f) => (Some(f.as_slice()), None),
        Decoded::Json(v) => (None, Some(v)),
        Decoded::Other => (None, None),
    };
    // Whatever its Content-Type says: apps label JSON answers loosely, and a body that
    // does not parse simply has no values.
    let response_json: Option<Value> = resp.body.and_then(|b| serde_json::from_slice(b).ok());
    let vars = TapVars {
        request: RequestVars {
            path: req.params,
            query: req.query,
            headers: req.headers,
            form,
            json,
        },
        headers: resp.headers,
        json: response_json.as_ref(),
    };
    let channel = rule.channel.render(&vars)?;
    let event = rule.event.as_ref().map(|t| t.render(&vars)).transpose()?;
    let data = match &rule.data {
        Some(fields) => {
            let mut object = Map::new();
            for (key, template) in fields {
                let value = match template.single_variable() {
                    // A lone JSON variable keeps its type (numbers stay numbers).
                    Some((source @ Source::Json, path)) if json.is_some() => {
                        typed_or_missing(json, source, path)?
                    }
                    Some((source @ Source::ResponseJson, path)) => {
                        typed_or_missing(vars.json, source, path)?
                    }
                    _ => Value::String(template.render(&vars)?),
                };
                object.insert(key.clone(), value);
            }
            EventData::Json(Value::Object(object))
        }
        None => default_data(&decoded, req, &vars.request),
    };
    let purge = rule
        .purge
        .iter()
        .map(|t| t.render(&vars))
        .collect::<Result<_, _>>()?;
    Ok(TapEvent {
        channel,
        event,
        data,
        purge,
    })
}

fn typed_or_missing(body: Option<&Value>, source: Source, path: &str) -> Result<Value, Missing> {
    body.and_then(|b| typed(b, path)).ok_or_else(|| Missing {
        source,
        name: path.to_string(),
    })
}

fn typed(body: &Value, path: &str) -> Option<Value> {
    let mut v = body;
    for key in path.split('.') {
        v = match v {
            Value::Object(map) => map.get(key)?,
            Value::Array(items) => items.get(key.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    (!v.is_null()).then(|| v.clone())
}

/// No `data` table: the JSON body, the form fields as an object, the body as text, or —
/// for a bodyless request — the query fields as an object.
fn default_data(decoded: &Decoded, req: &TapRequest<'_>, vars: &RequestVars<'_>) -> EventData {
    let fields = |pairs: &mut dyn Iterator<Item = (Cow<'_, str>, Cow<'_, str>)>| {
        let mut object = Map::new();
        for (k, v) in pairs {
            object.insert(k.into_owned(), Value::String(v.into_owned()));
        }
        EventData::Json(Value::Object(object))
    };
    match decoded {
        Decoded::Json(v) => EventData::Json(v.clone()),
        Decoded::Form(f) => fields(
            &mut f
                .iter()
                .map(|(k, v)| (Cow::from(k.as_str()), Cow::from(v.as_str()))),
        ),
        Decoded::Other if !req.body.is_empty() => {
            EventData::Text(String::from_utf8_lossy(req.body).into_owned())
        }
        Decoded::Other => fields(&mut form_urlencoded::parse(
            vars.query.unwrap_or("").as_bytes(),
        )),
    }
}
