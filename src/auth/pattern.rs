//! Channel patterns of a JWT subscribe claim: `*` matches any run of characters
//! (`bot:*`, `*`), everything else matches itself. The same grammar as the hub's
//! `reset_matching` patterns, so one pattern means one thing everywhere.

/// Whether `name` matches `pattern`.
pub fn matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    // `split` always yields at least one part.
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let mut parts = parts.peekable();
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            // The last part must end the name (after a `*`, so anywhere in what is left).
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    // No `*` at all: an exact match.
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn exact_prefix_suffix_and_inner_stars() {
        assert!(matches("twilio", "twilio"));
        assert!(!matches("twilio", "twilio2"));
        assert!(matches("bot:*", "bot:1"));
        assert!(!matches("bot:*", "bots:1"));
        assert!(!matches("bot:1", "bot:12"));
        assert!(matches("*", "anything"));
        assert!(matches("*:1", "bot:1"));
        assert!(!matches("*:1", "bot:12"));
        assert!(matches("a*b*c", "a-b-c"));
        assert!(!matches("a*b*c", "a-c-b"));
        assert!(
            !matches("ab*ba", "aba"),
            "prefix and suffix may not overlap"
        );
        assert!(!matches("", "x"));
    }
}
