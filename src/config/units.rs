//! Durations (`"500ms"`, `"2s"`, `"1m"`) and sizes (`"1MiB"`) as written in the config file.

use std::time::Duration;

use super::{ConfigErrors, join};

/// Parse a duration such as `"500ms"`, `"2s"`, `"1m30s"`.
///
/// humantime owns the grammar; we only refuse inner white space (`"5 sec"`), which humantime
/// would accept but which reads ambiguously in a config file next to lists and tables.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("invalid duration {text:?} (write e.g. \"500ms\", \"2s\", \"1m\")");
    if text.trim().is_empty() || text.chars().any(char::is_whitespace) {
        return Err(invalid());
    }
    humantime::parse_duration(text).map_err(|_| invalid())
}

/// The duration `value` of key `path.key`, or `default` when the key is absent. An invalid
/// value is recorded in `errors` and the default stands in for it, so that validation goes
/// on and reports every other error of the file too.
pub fn duration_at(
    value: Option<&str>,
    default: &str,
    path: &str,
    key: &str,
    errors: &mut ConfigErrors,
) -> Duration {
    parse_duration(value.unwrap_or(default)).unwrap_or_else(|e| {
        errors.push(join(path, key), e);
        parse_duration(default).unwrap_or_default()
    })
}

/// Parse a size such as `"64KiB"`, `"1MiB"`, `"256MB"` or a plain number of bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let invalid = || format!("invalid size {text:?} (write e.g. \"64KiB\", \"1MiB\")");
    if text.trim().is_empty() {
        return Err(invalid());
    }
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(
            parse_duration("5 sec"),
            Err(r#"invalid duration "5 sec" (write e.g. "500ms", "2s", "1m")"#.into())
        );
        assert!(parse_duration("").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1MiB"), Ok(1024 * 1024));
        assert_eq!(parse_size("64KiB"), Ok(64 * 1024));
        assert_eq!(parse_size("256MB"), Ok(256_000_000));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("").is_err());
    }
}
