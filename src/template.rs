//! Templates for channel names, tags, event names and event data: `"bot:{query.botId}"`.
//!
//! Parsed and checked when the config loads (an unknown variable is a config error); rendered
//! per request or notification. A missing value at run time is [`Missing`]: the caller skips
//! the rule (and counts it) rather than publish on a wrong channel.

use std::borrow::Cow;
use std::fmt;

use http::HeaderMap;

use crate::route::PathParams;

/// Where a template variable's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `{path.NAME}`: a `{NAME}` segment of the rule's path pattern.
    Path,
    /// `{query.NAME}`: a query parameter (percent-decoded).
    Query,
    /// `{header.NAME}`: a request header (case-insensitive).
    Header,
    /// `{form.NAME}`: a field of an `application/x-www-form-urlencoded` body.
    Form,
    /// `{json.a.b}`: a field of a JSON body.
    Json,
    /// `{payload.a.b}`: a field of a Postgres NOTIFY payload or an MQTT message's JSON
    /// payload.
    Payload,
    /// `{response.json.a.b}`: a field of the upstream's JSON answer (taps only).
    ResponseJson,
    /// `{response.header.NAME}`: a header of the upstream's answer (taps only).
    ResponseHeader,
    /// `{topic.NAME}`: a `{NAME}` level of an MQTT `[[topic]]` rule's topic pattern.
    Topic,
}

impl Source {
    /// The prefix as written in templates.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Path => "path",
            Source::Query => "query",
            Source::Header => "header",
            Source::Form => "form",
            Source::Json => "json",
            Source::Payload => "payload",
            Source::ResponseJson => "response.json",
            Source::ResponseHeader => "response.header",
            Source::Topic => "topic",
        }
    }

    /// Split `var` (what is between the braces) into its source and name: `query.id`, or
    /// the two-part sources `response.json.a.b` and `response.header.NAME`.
    fn split(var: &str) -> Option<(&str, &str)> {
        let (prefix, rest) = var.split_once('.')?;
        if prefix != "response" {
            return Some((prefix, rest));
        }
        let (kind, name) = rest.split_once('.').unwrap_or((rest, ""));
        Some((&var[..prefix.len() + 1 + kind.len()], name))
    }

    fn from_prefix(prefix: &str) -> Option<Source> {
        Some(match prefix {
            "path" => Source::Path,
            "query" => Source::Query,
            "header" => Source::Header,
            "form" => Source::Form,
            "json" => Source::Json,
            "payload" => Source::Payload,
            "response.json" => Source::ResponseJson,
            "response.header" => Source::ResponseHeader,
            "topic" => Source::Topic,
            _ => return None,
        })
    }
}

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Var { source: Source, name: String },
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<Part>,
}

/// A variable had no value for this request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// The variable's source.
    pub source: Source,
    /// The variable's name.
    pub name: String,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no value for {{{}.{}}}", self.source.as_str(), self.name)
    }
}

impl std::error::Error for Missing {}

/// Values of template variables for one request or notification.
pub trait Vars {
    /// The value of a variable, if present.
    fn get(&self, source: Source, name: &str) -> Option<Cow<'_, str>>;

    /// All values of a list-valued variable (`?device_ids=A,B` or a repeated parameter).
    /// Defaults to the single value.
    fn get_all(&self, source: Source, name: &str) -> Vec<Cow<'_, str>> {
        self.get(source, name).into_iter().collect()
    }
}

impl Template {
    /// Parse `text`; variables must use one of the `allowed` sources. `{{` and `}}` write
    /// literal braces.
    pub fn parse(text: &str, allowed: &[Source]) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|&(_, c)| c) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|&(_, c)| c) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let rest = &text[i + 1..];
                    let end = rest
                        .find('}')
                        .ok_or_else(|| format!("template {text:?}: unclosed {{"))?;
                    let var = &rest[..end];
                    let (prefix, name) = Source::split(var).ok_or_else(|| {
                        format!(
                            "template {text:?}: {{{var}}} must be SOURCE.NAME, e.g. {{query.id}}"
                        )
                    })?;
                    let source = Source::from_prefix(prefix).ok_or_else(|| {
                        format!("template {text:?}: unknown variable source {prefix:?}")
                    })?;
                    if !allowed.contains(&source) {
                        let names: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
                        return Err(format!(
                            "template {text:?}: {{{var}}} is not available here (available: {})",
                            names.join(", ")
                        ));
                    }
                    if name.is_empty()
                        || name.contains(['{', '}'])
                        || name.split('.').any(str::is_empty)
                    {
                        return Err(format!("template {text:?}: invalid variable name {name:?}"));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Var {
                        source,
                        name: name.to_string(),
                    });
                    for _ in 0..var.chars().count() + 1 {
                        chars.next();
                    }
                }
                '}' => return Err(format!("template {text:?}: unmatched }}")),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template {
            text: text.to_string(),
            parts,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The variables this template uses.
    pub fn variables(&self) -> impl Iterator<Item = (Source, &str)> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var { source, name } => Some((*source, name.as_str())),
            Part::Literal(_) => None,
        })
    }

    /// When the template is exactly one variable, that variable (so JSON data can keep the
    /// value's type instead of becoming a string).
    pub fn single_variable(&self) -> Option<(Source, &str)> {
        match self.parts.as_slice() {
            [Part::Var { source, name }] => Some((*source, name)),
            _ => None,
        }
    }

    /// The template with every variable replaced by `*`: the glob of everything it can
    /// produce (`reservas:{payload.id}` → `reservas:*`).
    pub fn as_glob(&self) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Literal(l) => l.as_str(),
                Part::Var { .. } => "*",
            })
            .collect()
    }

    /// Render with `vars`.
    pub fn render(&self, vars: &dyn Vars) -> Result<String, Missing> {
        let mut out = String::with_capacity(self.text.len() + 16);
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Var { source, name } => {
                    let value = vars.get(*source, name).ok_or_else(|| Missing {
                        source: *source,
                        name: name.clone(),
                    })?;
                    out.push_str(&value);
                }
            }
        }
        Ok(out)
    }

    /// Render once per value of list-valued variables (every combination when several are
    /// lists), at most `cap` results; more than `cap` is an error the caller reports (the
    /// returned `usize` is how many there would have been).
    pub fn render_each(&self, vars: &dyn Vars, cap: usize) -> Result<Vec<String>, RenderEachError> {
        let mut outs = vec![String::new()];
        for part in &self.parts {
            match part {
                Part::Literal(l) => outs.iter_mut().for_each(|o| o.push_str(l)),
                Part::Var { source, name } => {
                    let values = vars.get_all(*source, name);
                    if values.is_empty() {
                        return Err(RenderEachError::Missing(Missing {
                            source: *source,
                            name: name.clone(),
                        }));
                    }
                    let total = outs.len().saturating_mul(values.len());
                    if total > cap {
                        return Err(RenderEachError::TooMany { cap });
                    }
                    outs = outs
                        .iter()
                        .flat_map(|o| values.iter().map(move |v| format!("{o}{v}")))
                        .collect();
                }
            }
        }
        Ok(outs)
    }
}

/// Why [`Template::render_each`] produced nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderEachError {
    /// A variable had no value.
    #[error(transparent)]
    Missing(#[from] Missing),
    /// The list-valued variables expand to more than the cap.
    #[error("more than {cap} values")]
    TooMany {
        /// The cap that was exceeded.
        cap: usize,
    },
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Variables of an HTTP request: path segments, query, headers, and optionally a parsed
/// form or JSON body.
pub struct RequestVars<'a> {
    /// Captured `{name}` segments.
    pub path: &'a PathParams,
    /// The raw query string (without `?`), if any.
    pub query: Option<&'a str>,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// Decoded form fields of the body, when it was a form.
    pub form: Option<&'a [(String, String)]>,
    /// The body, when it was JSON.
    pub json: Option<&'a serde_json::Value>,
}

impl<'a> RequestVars<'a> {
    /// The variables of a request head: path captures, query and headers, no body.
    pub fn head(path: &'a PathParams, uri: &'a http::Uri, headers: &'a HeaderMap) -> Self {
        RequestVars {
            path,
            query: uri.query(),
            headers,
            form: None,
            json: None,
        }
    }
}

impl Vars for RequestVars<'_> {
    fn get(&self, source: Source, name: &str) -> Option<Cow<'_, str>> {
        match source {
            Source::Path => self.path.get(name).map(Cow::Borrowed),
            Source::Query => form_urlencoded::parse(self.query?.as_bytes())
                .find(|(k, _)| k == name)
                .map(|(_, v)| Cow::Owned(v.into_owned())),
            Source::Header => self
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(Cow::Borrowed),
            Source::Form => self
                .form?
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| Cow::Borrowed(v.as_str())),
            Source::Json => json_path(self.json?, name),
            Source::Payload | Source::Topic | Source::ResponseJson | Source::ResponseHeader => None,
        }
    }

    fn get_all(&self, source: Source, name: &str) -> Vec<Cow<'_, str>> {
        if source != Source::Query {
            return self.get(source, name).into_iter().collect();
        }
        let Some(query) = self.query else {
            return Vec::new();
        };
        form_urlencoded::parse(query.as_bytes())
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| {
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| Cow::Owned(s.to_string()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// Look up `a.b.c` in a JSON value; strings as they are, numbers and booleans as written,
/// objects and arrays as compact JSON; null counts as missing.
pub fn json_path<'v>(value: &'v serde_json::Value, path: &str) -> Option<Cow<'v, str>> {
    let mut v = value;
    for key in path.split('.') {
        v = match v {
            serde_json::Value::Object(map) => map.get(key)?,
            serde_json::Value::Array(items) => items.get(key.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(Cow::Borrowed(s)),
        other => Some(Cow::Owned(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: &[Source] = &[Source::Path, Source::Query, Source::Header];

    fn vars<'a>(params: &'a PathParams, query: &'a str, headers: &'a HeaderMap) -> RequestVars<'a> {
        RequestVars {
            path: params,
            query: Some(query),
            headers,
            form: None,
            json: None,
        }
    }

    #[test]
    fn renders_request_variables() {
        let pattern = crate::route::PathPattern::parse("/chats/{id}").unwrap();
        let params = pattern.matches("/chats/7").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-tenant", "acme".parse().unwrap());
        let v = vars(&params, "botId=42&x=a%20b", &headers);
        let t = Template::parse(
            "bot:{query.botId}/{path.id}/{header.X-Tenant}/{query.x}",
            REQUEST,
        )
        .unwrap();
        assert_eq!(t.render(&v).unwrap(), "bot:42/7/acme/a b");
        let missing = Template::parse("{query.nope}", REQUEST).unwrap().render(&v);
        assert_eq!(
            missing.unwrap_err().to_string(),
            "no value for {query.nope}"
        );
    }

    #[test]
    fn list_values_expand_with_a_cap() {
        let params = PathParams::default();
        let headers = HeaderMap::new();
        let v = vars(&params, "device_ids=A,B&channel=c&channel=d", &headers);
        let t = Template::parse("device:{query.device_ids}", REQUEST).unwrap();
        assert_eq!(t.render_each(&v, 10).unwrap(), ["device:A", "device:B"]);
        let t = Template::parse("{query.channel}", REQUEST).unwrap();
        assert_eq!(t.render_each(&v, 10).unwrap(), ["c", "d"]);
        assert_eq!(
            t.render_each(&v, 1).unwrap_err(),
            RenderEachError::TooMany { cap: 1 }
        );
    }

    #[test]
    fn parse_errors_and_globs() {
        assert!(Template::parse("{query}", REQUEST).is_err());
        assert!(Template::parse("{cookie.a}", REQUEST).is_err());
        assert!(
            Template::parse("{form.a}", REQUEST)
                .unwrap_err()
                .contains("not available here")
        );
        assert!(Template::parse("a{query.b", REQUEST).is_err());
        assert!(Template::parse("a}b", REQUEST).is_err());
        let t = Template::parse("{{literal}} r:{payload.business_id}", &[Source::Payload]).unwrap();
        assert_eq!(t.as_glob(), "{literal} r:*");
        assert_eq!(
            Template::parse("{json.a.b}", &[Source::Json])
                .unwrap()
                .single_variable(),
            Some((Source::Json, "a.b"))
        );
    }

    #[test]
    fn response_variables_are_two_part_sources() {
        let tap = &[Source::Json, Source::ResponseJson, Source::ResponseHeader];
        let t = Template::parse("r:{response.json.a.b}/{response.header.Location}", tap).unwrap();
        let vars: Vec<_> = t.variables().collect();
        assert_eq!(
            vars,
            [
                (Source::ResponseJson, "a.b"),
                (Source::ResponseHeader, "Location")
            ]
        );
        let err = Template::parse("{response.body.a}", tap).unwrap_err();
        assert!(
            err.contains("unknown variable source \"response.body\""),
            "{err}"
        );
        let err = Template::parse("{response.json}", tap).unwrap_err();
        assert!(err.contains("invalid variable name"), "{err}");
        let err = Template::parse("{response.json.id}", REQUEST).unwrap_err();
        assert!(err.contains("not available here"), "{err}");
        let missing = Missing {
            source: Source::ResponseJson,
            name: "id".into(),
        };
        assert_eq!(missing.to_string(), "no value for {response.json.id}");
    }

    #[test]
    fn json_paths() {
        let v: serde_json::Value =
            serde_json::json!({"a": {"b": "x", "n": 3, "l": [1, {"c": true}], "z": null}});
        assert_eq!(json_path(&v, "a.b").unwrap(), "x");
        assert_eq!(json_path(&v, "a.n").unwrap(), "3");
        assert_eq!(json_path(&v, "a.l.1.c").unwrap(), "true");
        assert_eq!(json_path(&v, "a.l").unwrap(), "[1,{\"c\":true}]");
        assert!(json_path(&v, "a.z").is_none());
        assert!(json_path(&v, "a.q").is_none());
    }
}
