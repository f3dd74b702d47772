//! The live dashboard at the admin listener's `/`: one HTML page from the binary, with no
//! external assets, fed by the stats stream ([`super::live`]).
//!
//! Access follows the other admin endpoints (open on loopback, the token elsewhere), with
//! one addition: a browser's `EventSource` cannot send an `Authorization` header, so the
//! page and its stream also accept `?token=`. The access log never records query strings.

use http::header::{self, HeaderValue};
use http::{Request, Response};

use super::auth::{self, AuthError};
use super::live::STREAM_PATH;
use crate::body::{Body, full};

/// The page; its script opens [`STREAM_PATH`] (passing on its own `?token=`).
const PAGE: &str = include_str!("dashboard.html");

/// The query parameter the dashboard's page and stream accept the admin token in.
const TOKEN_PARAM: &str = "token";

/// `GET /`.
pub fn page() -> Response<Body> {
    let mut resp = Response::new(full(PAGE));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Inline script and style only, requests to this listener only: nothing on the page can
    // load from elsewhere, and no URL with the token leaks in a Referer.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'",
        ),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// The token check of an admin request off loopback: the bearer token, or for the page and
/// its stream also `?token=`.
pub fn check_access<B>(req: &Request<B>, expected: Option<&str>) -> Result<(), AuthError> {
    let query_token = matches!(req.uri().path(), "/" | STREAM_PATH)
        .then(|| req.uri().query())
        .flatten()
        .and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == TOKEN_PARAM)
                .map(|(_, v)| v.into_owned())
        });
    match query_token {
        Some(given) => auth::check_token(&given, expected),
        None => auth::check_bearer(req.headers(), expected),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(uri: &str, bearer: Option<&str>) -> Result<(), AuthError> {
        let mut req = Request::builder().uri(uri);
        if let Some(token) = bearer {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        check_access(&req.body(()).unwrap(), Some("s3cret"))
    }

    #[test]
    fn the_page_and_its_stream_take_the_token_in_the_query() {
        assert_eq!(check("/?token=s3cret", None), Ok(()));
        assert_eq!(check("/dashboard/stream?token=s3cret", None), Ok(()));
        assert_eq!(check("/?token=wrong", None), Err(AuthError::Invalid));
        assert_eq!(check("/", None), Err(AuthError::Invalid));
        assert_eq!(check("/", Some("s3cret")), Ok(()));
    }

    #[test]
    fn other_endpoints_take_only_the_header() {
        assert_eq!(check("/stats?token=s3cret", None), Err(AuthError::Invalid));
        assert_eq!(
            check("/metrics?token=s3cret", None),
            Err(AuthError::Invalid)
        );
        assert_eq!(check("/stats", Some("s3cret")), Ok(()));
    }
}
