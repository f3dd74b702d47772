//! The channels a client names on the generic stream, `/_unpoll/sse?channel=a&channel=b`
//! (or `?channel=a,b`). The token decides which of them it may have; this only reads them
//! and refuses names no template could produce.

use super::error::AuthError;

/// Path of the generic stream on the main listener.
pub const GENERIC_STREAM_PATH: &str = "/_unpoll/sse";

/// Longest channel name accepted from a client.
pub const MAX_CHANNEL_NAME: usize = 256;

/// The channels of a generic-stream query, deduplicated in order of appearance. Empty and
/// over-long names, and names with control characters, are a bad request; the count is left
/// to the hub's `max_channels_per_subscription`.
pub fn requested_channels(query: Option<&str>) -> Result<Vec<String>, AuthError> {
    let mut out: Vec<String> = Vec::new();
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if key != "channel" {
            continue;
        }
        for name in value.split(',') {
            if name.is_empty()
                || name.len() > MAX_CHANNEL_NAME
                || name.chars().any(char::is_control)
            {
                return Err(AuthError::BadRequest(format!(
                    "invalid channel name (1 to {MAX_CHANNEL_NAME} characters, no control \
                     characters)"
                )));
            }
            if !out.iter().any(|c| c == name) {
                out.push(name.to_string());
            }
        }
    }
    if out.is_empty() {
        return Err(AuthError::BadRequest(
            "name at least one channel: ?channel=NAME".to_string(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_and_comma_separated() {
        assert_eq!(
            requested_channels(Some(
                "channel=bot:1&channel=bot:2,twilio&token=x&channel=bot:1"
            ))
            .unwrap(),
            ["bot:1", "bot:2", "twilio"]
        );
        assert_eq!(requested_channels(Some("channel=a%20b")).unwrap(), ["a b"]);
        assert!(requested_channels(None).is_err());
        assert!(requested_channels(Some("channel=")).is_err());
        assert!(requested_channels(Some("channel=a,,b")).is_err());
        assert!(requested_channels(Some("channel=a%0Ab")).is_err());
        let long = "x".repeat(MAX_CHANNEL_NAME + 1);
        assert!(requested_channels(Some(&format!("channel={long}"))).is_err());
    }
}
