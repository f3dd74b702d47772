//! Reading a parsed TOML table section by section, so that one bad section does not hide the
//! errors of the others: each top-level key is deserialized on its own (with the key path of
//! the offending field), each element of a rule array too, and leftover keys are reported as
//! unknown.

use serde::de::DeserializeOwned;

use super::errors::{ConfigErrors, join};

/// The top-level table of a config file, consumed key by key.
pub struct Sections<'e> {
    table: toml::Table,
    errors: &'e mut ConfigErrors,
}

impl<'e> Sections<'e> {
    /// Start reading `table`; errors go to `errors`.
    pub fn new(table: toml::Table, errors: &'e mut ConfigErrors) -> Self {
        Sections { table, errors }
    }

    /// Take the top-level key `key` and deserialize it as `T`; `None` when absent or invalid
    /// (the error is recorded).
    pub fn take<T: DeserializeOwned>(&mut self, key: &str) -> Option<T> {
        let value = self.table.remove(key)?;
        deserialize(value, key, self.errors)
    }

    /// Take the rule array `key` (`[[cache]]`), each element deserialized on its own so every
    /// rule's errors are reported. Returns `(key path, rule)` pairs of the valid ones.
    pub fn take_rules<T: DeserializeOwned>(&mut self, key: &str) -> Vec<(String, T)> {
        let Some(value) = self.table.remove(key) else {
            return Vec::new();
        };
        let toml::Value::Array(items) = value else {
            self.errors.push(
                key,
                format!("expected an array of tables (write [[{key}]] for each rule)"),
            );
            return Vec::new();
        };
        items
            .into_iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let path = format!("{key}[{i}]");
                deserialize(item, &path, self.errors).map(|rule| (path, rule))
            })
            .collect()
    }

    /// Report every key nobody took as unknown.
    pub fn finish(self) {
        for key in self.table.keys() {
            self.errors.push(key.as_str(), "unknown key");
        }
    }
}

/// Deserialize `value` as `T`, recording an error at `path` (plus the inner field path) on
/// failure.
pub fn deserialize<T: DeserializeOwned>(
    value: toml::Value,
    path: &str,
    errors: &mut ConfigErrors,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let inner = if inner == "." { String::new() } else { inner };
            errors.push(join(path, &inner), e.into_inner().to_string().trim());
            None
        }
    }
}

/// Replace `${VAR}` in every string of `value` with the environment's value; an unset
/// variable is an error at the string's key path. `$${` writes a literal `${`.
pub fn expand_env(
    value: &mut toml::Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut ConfigErrors,
) {
    match value {
        toml::Value::String(s) if s.contains('$') => match expand_str(s, env) {
            Ok(expanded) => *s = expanded,
            Err(message) => errors.push(path, message),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_env(item, &format!("{path}[{i}]"), env, errors);
            }
        }
        toml::Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                expand_env(item, &join(path, key), env, errors);
            }
        }
        _ => {}
    }
}

fn expand_str(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .ok_or_else(|| format!("unterminated ${{...}} in {s:?}"))?;
            let name = &tail[..end];
            let valid =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!("invalid variable name {name:?} in ${{...}}"));
            }
            let value =
                env(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
            out.push_str(&value);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "TOKEN").then(|| "s3cret".to_string())
    }

    #[test]
    fn expands_variables() {
        assert_eq!(expand_str("a ${TOKEN} b", &env).unwrap(), "a s3cret b");
        assert_eq!(expand_str("$${TOKEN}", &env).unwrap(), "${TOKEN}");
        assert_eq!(expand_str("cost $5", &env).unwrap(), "cost $5");
        assert_eq!(
            expand_str("${MISSING}", &env).unwrap_err(),
            "environment variable MISSING is not set"
        );
        assert!(expand_str("${TOKEN", &env).is_err());
        assert!(expand_str("${A-B}", &env).is_err());
    }

    #[test]
    fn reports_unset_variable_with_key_path() {
        let mut v: toml::Value = toml::from_str("[admin]\ntoken = \"${NOPE}\"").unwrap();
        let mut errors = ConfigErrors::default();
        expand_env(&mut v, "", &env, &mut errors);
        assert_eq!(
            errors.to_string(),
            "admin.token: environment variable NOPE is not set"
        );
    }
}
