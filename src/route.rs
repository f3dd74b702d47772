//! Path patterns shared by every rule kind: exact (`/messages`), prefix (`/api/*`) and named
//! segments (`/api/chats/{id}/messages`).

use std::fmt;

/// A compiled path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    text: String,
    segments: Vec<Segment>,
    /// Trailing `/*`: the pattern matches every path below its segments.
    prefix: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// Values captured by `{name}` segments, in pattern order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathParams(Vec<(String, String)>);

impl PathParams {
    /// The raw (still percent-encoded) value of segment `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl PathPattern {
    /// Compile `text`. Rules: starts with `/`; `{name}` is a whole segment of letters, digits
    /// and `_`; `*` only as the last segment.
    pub fn parse(text: &str) -> Result<PathPattern, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!("path pattern {text:?} must start with /"));
        };
        let mut parts: Vec<&str> = rest.split('/').collect();
        let prefix = parts.last() == Some(&"*");
        if prefix {
            parts.pop();
        }
        let mut segments = Vec::with_capacity(parts.len());
        let mut names: Vec<&str> = Vec::new();
        for part in parts {
            if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                let valid =
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(format!(
                        "path pattern {text:?}: invalid segment name {{{name}}}"
                    ));
                }
                if names.contains(&name) {
                    return Err(format!("path pattern {text:?}: {{{name}}} appears twice"));
                }
                names.push(name);
                segments.push(Segment::Param(name.to_string()));
            } else if part.contains(['{', '}', '*']) {
                return Err(format!(
                    "path pattern {text:?}: `{{name}}` must be a whole segment and `*` only the \
                     last one"
                ));
            } else {
                segments.push(Segment::Literal(part.to_string()));
            }
        }
        Ok(PathPattern {
            text: text.to_string(),
            segments,
            prefix,
        })
    }

    /// The names of the `{name}` segments.
    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Param(n) => Some(n.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// Match a request path (without query); `Some` with the captured segments on success.
    pub fn matches(&self, path: &str) -> Option<PathParams> {
        let rest = path.strip_prefix('/')?;
        let mut parts = rest.split('/');
        let mut params = Vec::new();
        for segment in &self.segments {
            let part = parts.next()?;
            match segment {
                Segment::Literal(lit) => {
                    if part != lit {
                        return None;
                    }
                }
                Segment::Param(name) => {
                    if part.is_empty() {
                        return None;
                    }
                    params.push((name.clone(), part.to_string()));
                }
            }
        }
        let remaining = parts.next();
        match (self.prefix, remaining) {
            (false, None) => Some(PathParams(params)),
            (true, Some(_)) => Some(PathParams(params)),
            _ => None,
        }
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact() {
        let p = PathPattern::parse("/messages").unwrap();
        assert!(p.matches("/messages").is_some());
        assert!(p.matches("/messages/").is_none());
        assert!(p.matches("/messages/1").is_none());
        assert!(p.matches("/other").is_none());
        assert!(PathPattern::parse("/").unwrap().matches("/").is_some());
    }

    #[test]
    fn prefix() {
        let p = PathPattern::parse("/api/*").unwrap();
        assert!(p.matches("/api/").is_some());
        assert!(p.matches("/api/a/b").is_some());
        assert!(p.matches("/api").is_none());
        assert!(p.matches("/apix/a").is_none());
    }

    #[test]
    fn params() {
        let p = PathPattern::parse("/api/chats/{id}/messages").unwrap();
        let m = p.matches("/api/chats/42/messages").unwrap();
        assert_eq!(m.get("id"), Some("42"));
        assert!(p.matches("/api/chats//messages").is_none());
        assert!(p.matches("/api/chats/42").is_none());
        assert_eq!(p.param_names().collect::<Vec<_>>(), ["id"]);
    }

    #[test]
    fn invalid() {
        for bad in ["api", "/a{b}", "/a/*/b", "/{}", "/{a}/{a}", "/{a-b}"] {
            assert!(PathPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
