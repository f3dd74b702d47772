//! Why a subscription was refused. Mapped to a response in one place
//! ([`ProxyError::into_response`](crate::proxy::ProxyError::into_response)).

use std::time::Duration;

use http::StatusCode;

/// Why a client may not open (or keep) a stream.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// JWT auth: the request carried no token (→ 401).
    #[error("a token is required")]
    MissingToken,
    /// JWT auth: the token is malformed, badly signed, of the wrong algorithm, expired or
    /// for another issuer/audience (→ 401). `why` is a fixed phrase, never token content.
    #[error("invalid token: {why}")]
    InvalidToken {
        /// Short cause for the log and the client (`expired`, `bad signature`, ...).
        why: &'static str,
    },
    /// JWT auth: the token does not list this channel in its subscribe claim (→ 403).
    #[error("the token does not allow channel {channel}")]
    ChannelNotAllowed {
        /// The first channel refused.
        channel: String,
    },
    /// Upstream auth: the app answered 401, 403 or 404; passed on to the client.
    #[error("refused by the app ({status})")]
    Denied {
        /// The app's status.
        status: StatusCode,
    },
    /// Upstream auth: the app could not be asked, or answered something other than
    /// 2xx/401/403/404 (→ 502, or 504 on a timeout). The underlying error was logged where
    /// it happened; this is the shareable summary every coalesced waiter receives.
    #[error("auth check failed: {0}")]
    Upstream(UpstreamFailure),
    /// The request lacks what the rule needs (a template value), or carries a value that
    /// cannot be put in a URL path (`..`) (→ 400).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A per-rule limit was reached (→ 429 with `Retry-After`).
    #[error("too many streams: {limit}")]
    Limited {
        /// Which limit: see [`Limit::as_str`].
        limit: Limit,
        /// How long the client should wait.
        retry_after: Duration,
    },
}

/// How an upstream auth check failed (cloneable: one failure answers every coalesced
/// waiter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamFailure {
    /// Connect or response timeout.
    #[error("the app did not answer in time")]
    Timeout,
    /// Refused, unreachable, broken connection.
    #[error("the app is unreachable")]
    Unreachable,
    /// A status that is neither success nor 401/403/404.
    #[error("the app answered {0}")]
    Status(StatusCode),
}

/// The per-rule limits a subscription can hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// Subscribers of one channel under this rule.
    PerChannel,
    /// Streams of one client address under this rule.
    PerIp,
    /// New streams per client address per period.
    Rate,
}

impl Limit {
    /// Label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::PerChannel => "subscribers_per_channel",
            Limit::PerIp => "subscribers_per_ip",
            Limit::Rate => "connect_rate",
        }
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AuthError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::MissingToken | AuthError::InvalidToken { .. } => StatusCode::UNAUTHORIZED,
            AuthError::ChannelNotAllowed { .. } => StatusCode::FORBIDDEN,
            AuthError::Denied { status } => *status,
            AuthError::Upstream(UpstreamFailure::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            AuthError::Upstream(_) => StatusCode::BAD_GATEWAY,
            AuthError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AuthError::Limited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The short text sent to the client: the cause without internals (no upstream
    /// addresses, no token content).
    pub fn public_message(&self) -> String {
        match self {
            AuthError::Upstream(UpstreamFailure::Timeout) => "auth check timed out".to_string(),
            AuthError::Upstream(_) => "auth check failed".to_string(),
            AuthError::Denied { status } => match *status {
                StatusCode::UNAUTHORIZED => "not signed in".to_string(),
                StatusCode::NOT_FOUND => "not found".to_string(),
                _ => "forbidden".to_string(),
            },
            other => other.to_string(),
        }
    }

    /// `Retry-After` for a 429.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AuthError::Limited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// Label for metrics: the decision this error stands for.
    pub fn as_str(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::InvalidToken { .. } => "invalid_token",
            AuthError::ChannelNotAllowed { .. } => "channel_not_allowed",
            AuthError::Denied { .. } => "denied",
            AuthError::Upstream(_) => "upstream_error",
            AuthError::BadRequest(_) => "bad_request",
            AuthError::Limited { .. } => "limited",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let denied = |s| AuthError::Denied { status: s }.status();
        assert_eq!(denied(StatusCode::FORBIDDEN), StatusCode::FORBIDDEN);
        assert_eq!(denied(StatusCode::NOT_FOUND), StatusCode::NOT_FOUND);
        assert_eq!(AuthError::MissingToken.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            AuthError::Upstream(UpstreamFailure::Timeout).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        let limited = AuthError::Limited {
            limit: Limit::Rate,
            retry_after: Duration::from_secs(3),
        };
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(limited.public_message(), "too many streams: connect_rate");
    }
}
