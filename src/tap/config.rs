//! `[[tap]]` rules: a request that passes through to the upstream (a webhook, a mutation);
//! on a 2xx answer, an event built from the request is published.

use http::Method;
use serde::Deserialize;

use crate::config::{ConfigErrors, join, parse_size};
use crate::route::PathPattern;
use crate::stream::config::check_path_vars;
use crate::template::{Source, Template};

/// Template variables a tap may use.
pub const TAP_SOURCES: &[Source] = &[
    Source::Path,
    Source::Query,
    Source::Header,
    Source::Form,
    Source::Json,
    Source::ResponseJson,
    Source::ResponseHeader,
];

/// Default `max_body`: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;

/// A `[[tap]]` rule as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTapRule {
    method: Option<String>,
    path: String,
    channel: String,
    event: Option<String>,
    data: Option<toml::Table>,
    #[serde(default)]
    purge: Vec<String>,
    max_body: Option<String>,
}

/// A validated `[[tap]]` rule.
#[derive(Debug, Clone)]
pub struct TapRule {
    /// `tap[i]`, for logs and metrics.
    pub name: String,
    /// The method it listens to. Default POST.
    pub method: Method,
    /// The path it listens to.
    pub path: PathPattern,
    /// Channel the event goes to.
    pub channel: Template,
    /// The event's name; none → the SSE default (`message`).
    pub event: Option<Template>,
    /// `key = template` fields of the event's JSON data; `None` → the request body as JSON,
    /// or the form fields as an object.
    pub data: Option<Vec<(String, Template)>>,
    /// Cache tags purged after a 2xx answer.
    pub purge: Vec<Template>,
    /// Largest body copied for the event; larger bodies are forwarded whole and produce no
    /// event (counted). Default 1 MiB. Bounds the copy of the answer's body too.
    pub max_body: usize,
    /// Some template reads `{response.json.…}`: the answer's body is copied (up to
    /// `max_body`) as it streams to the client, and the event waits for its end.
    pub reads_response_body: bool,
    /// Some template reads `{response.header.…}`: the answer's headers are kept.
    pub reads_response_headers: bool,
}

impl TapRule {
    /// Every template of the rule.
    fn templates(&self) -> impl Iterator<Item = &Template> {
        std::iter::once(&self.channel)
            .chain(&self.event)
            .chain(self.data.iter().flatten().map(|(_, t)| t))
            .chain(&self.purge)
    }

    fn reads(&self, source: Source) -> bool {
        self.templates()
            .any(|t| t.variables().any(|(s, _)| s == source))
    }
}

impl RawTapRule {
    /// Validate, recording every error under `path` (`tap[i]`).
    pub fn validate(self, path: &str, errors: &mut ConfigErrors) -> Option<TapRule> {
        let before = errors.len();
        let method_text = self.method.as_deref().unwrap_or("POST");
        let method = Method::from_bytes(method_text.to_ascii_uppercase().as_bytes())
            .map_err(|_| {
                errors.push(
                    join(path, "method"),
                    format!("invalid method {method_text:?}"),
                )
            })
            .ok();
        let pattern = PathPattern::parse(&self.path)
            .map_err(|e| errors.push(join(path, "path"), e))
            .ok();
        let pattern_ref = pattern.as_ref();
        let template = |errors: &mut ConfigErrors, key: String, text: &str| {
            let t = Template::parse(text, TAP_SOURCES)
                .map_err(|e| errors.push(&key, e))
                .ok()?;
            check_path_vars(&t, pattern_ref, &key, errors);
            Some(t)
        };
        let channel = template(errors, join(path, "channel"), &self.channel);
        let event = self
            .event
            .as_deref()
            .map(|text| template(errors, join(path, "event"), text));
        let data = self.data.map(|table| {
            table
                .into_iter()
                .filter_map(|(key, value)| {
                    let key_path = join(&join(path, "data"), &key);
                    match value {
                        toml::Value::String(text) => {
                            template(errors, key_path, &text).map(|t| (key, t))
                        }
                        _ => {
                            errors.push(key_path, "must be a template string");
                            None
                        }
                    }
                })
                .collect::<Vec<_>>()
        });
        let purge: Vec<Template> = self
            .purge
            .iter()
            .enumerate()
            .filter_map(|(i, text)| template(errors, format!("{}[{i}]", join(path, "purge")), text))
            .collect();
        let max_body = match self.max_body.as_deref().map(parse_size) {
            None => DEFAULT_MAX_BODY,
            Some(Ok(n)) => usize::try_from(n).unwrap_or(usize::MAX),
            Some(Err(e)) => {
                errors.push(join(path, "max_body"), e);
                DEFAULT_MAX_BODY
            }
        };
        if errors.len() > before {
            return None;
        }
        let mut rule = TapRule {
            name: path.to_string(),
            method: method?,
            path: pattern?,
            channel: channel?,
            event: event.flatten(),
            data,
            purge,
            max_body,
            reads_response_body: false,
            reads_response_headers: false,
        };
        rule.reads_response_body = rule.reads(Source::ResponseJson);
        rule.reads_response_headers = rule.reads(Source::ResponseHeader);
        Some(rule)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse_rules as parse;

    #[test]
    fn valid_rule_with_defaults() {
        let c = parse("[[tap]]\npath = \"/hook\"\nchannel = \"c:{form.To}\"").unwrap();
        let t = &c.taps[0];
        assert_eq!(t.method, http::Method::POST);
        assert_eq!(t.max_body, super::DEFAULT_MAX_BODY);
        assert!(t.data.is_none() && t.event.is_none() && t.purge.is_empty());
        assert!(!t.reads_response_body && !t.reads_response_headers);
    }

    #[test]
    fn response_variables_are_known_to_taps_only() {
        let c = parse(
            "[[tap]]\npath = \"/r\"\nchannel = \"c\"\n\
             data = { id = \"{response.json.id}\" }\npurge = [\"{response.header.Location}\"]",
        )
        .unwrap();
        assert!(c.taps[0].reads_response_body && c.taps[0].reads_response_headers);
        let c =
            parse("[[tap]]\npath = \"/r\"\nchannel = \"c:{response.header.Location}\"").unwrap();
        assert!(!c.taps[0].reads_response_body && c.taps[0].reads_response_headers);
        let errors = parse(
            "[[stream]]\npath = \"/s\"\nauth = \"none\"\nchannels = [\"{response.json.id}\"]",
        )
        .unwrap_err();
        assert!(
            errors.contains(
                "stream[0].channels[0]: template \"{response.json.id}\": \
                             {response.json.id} is not available here"
            ),
            "{errors}"
        );
    }

    #[test]
    fn every_error_has_its_key_path() {
        let errors = parse(
            r#"
            [[tap]]
            method = "P OST"
            path = "hook"
            channel = "{payload.x}"
            data = { a = "{json.a}", b = 3 }
            purge = ["{nope}"]
            max_body = "big"
            "#,
        )
        .unwrap_err();
        for expected in [
            "tap[0].method: invalid method",
            "tap[0].path: path pattern \"hook\" must start with /",
            "tap[0].channel: template \"{payload.x}\": {payload.x} is not available here",
            "tap[0].data.b: must be a template string",
            "tap[0].purge[0]: template \"{nope}\"",
            "tap[0].max_body: invalid size",
        ] {
            assert!(
                errors.contains(expected),
                "{expected:?} missing in:\n{errors}"
            );
        }
    }
}
