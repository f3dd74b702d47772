//! Bearer-token checks for the admin endpoints, compared in constant time.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use subtle::ConstantTimeEq;

use crate::body::Body;
use crate::proxy::error_response;

/// Why an admin request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token is configured, so token-protected endpoints are off.
    #[error("admin.token is not set; this endpoint is disabled")]
    NotConfigured,
    /// The request carried no bearer token or a wrong one.
    #[error("missing or invalid bearer token")]
    Invalid,
}

impl AuthError {
    /// 403 when the endpoint is disabled, 401 (with `WWW-Authenticate`) otherwise.
    pub fn into_response(self) -> Response<Body> {
        match self {
            AuthError::NotConfigured => error_response(StatusCode::FORBIDDEN, &self.to_string()),
            AuthError::Invalid => {
                let mut resp = error_response(StatusCode::UNAUTHORIZED, &self.to_string());
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"unpoll admin\""),
                );
                resp
            }
        }
    }
}

/// Check `Authorization: Bearer <token>` against the configured token.
pub fn check_bearer(headers: &HeaderMap, expected: Option<&str>) -> Result<(), AuthError> {
    let expected = expected.ok_or(AuthError::NotConfigured)?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .ok_or(AuthError::Invalid)?;
    check_token(given, Some(expected))
}

/// Check a token given some other way (the dashboard's `?token=`) against the configured
/// one, in constant time.
pub fn check_token(given: &str, expected: Option<&str>) -> Result<(), AuthError> {
    let expected = expected.ok_or(AuthError::NotConfigured)?;
    // ct_eq on slices of different lengths returns false without comparing bytes; the
    // length of the configured token is not a secret worth protecting.
    if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(AuthError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, auth.parse().unwrap());
        h
    }

    #[test]
    fn bearer() {
        assert_eq!(check_bearer(&headers("Bearer s3"), Some("s3")), Ok(()));
        assert_eq!(check_bearer(&headers("bearer s3"), Some("s3")), Ok(()));
        assert_eq!(
            check_bearer(&headers("Bearer s4"), Some("s3")),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            check_bearer(&headers("Basic s3"), Some("s3")),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            check_bearer(&HeaderMap::new(), Some("s3")),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            check_bearer(&headers("Bearer s3"), None),
            Err(AuthError::NotConfigured)
        );
    }
}
