//! `auth = "jwt"`: a token from `Authorization: Bearer`, a cookie or `?token=`, verified with
//! the one algorithm and key of the config (never the token header's choice), whose claim
//! lists the channel patterns it may subscribe to.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::Value;

use super::config::JwtConfig;
use super::error::AuthError;

/// A compiled JWT verifier.
pub struct JwtAuth {
    key: DecodingKey,
    validation: Validation,
    claim: String,
    cookie: Option<String>,
    query_param: Option<String>,
    leeway: Duration,
}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuth")
            .field("algorithms", &self.validation.algorithms)
            .field("claim", &self.claim)
            .finish_non_exhaustive()
    }
}

impl JwtAuth {
    /// Compile the `[jwt]` settings.
    pub fn new(config: &JwtConfig) -> JwtAuth {
        // `Validation::new` accepts exactly this algorithm: a token whose header names
        // another (`none`, or HS256 signed with an RSA public key) is refused before any
        // signature check.
        let mut validation = Validation::new(config.algorithm);
        validation.leeway = config.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match &config.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            // Without a configured audience, a token's `aud` is not ours to judge.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        JwtAuth {
            key: config.key.clone(),
            validation,
            claim: config.claim.clone(),
            cookie: config.cookie.clone(),
            query_param: config.query_param.clone(),
            leeway: config.leeway,
        }
    }

    /// The token of a request: `Authorization: Bearer`, else the configured cookie, else the
    /// query parameter.
    pub fn token<'a>(
        &self,
        headers: &'a HeaderMap,
        query: Option<&'a str>,
    ) -> Option<Cow<'a, str>> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty());
        if let Some(t) = bearer {
            return Some(Cow::Borrowed(t));
        }
        if let Some(name) = &self.cookie
            && let Some(t) = cookie(headers, name)
        {
            return Some(Cow::Borrowed(t));
        }
        let param = self.query_param.as_deref()?;
        form_urlencoded::parse(query?.as_bytes())
            .find(|(k, v)| k == param && !v.is_empty())
            .map(|(_, v)| Cow::Owned(v.into_owned()))
    }

    /// Verify `token` and check that it allows every one of `channels`. Returns when access
    /// ends: `exp` plus the leeway (the moment the same token would be refused).
    pub fn verify(&self, token: &str, channels: &[String]) -> Result<SystemTime, AuthError> {
        let data = jsonwebtoken::decode::<Value>(token, &self.key, &self.validation)
            .map_err(|e| AuthError::InvalidToken { why: why(e.kind()) })?;
        let claims = data.claims;
        // `exp` is required and validated above, so it is a number here; be strict anyway.
        // NumericDate may be fractional (RFC 7519 §2); whole seconds are enough here.
        let exp = claims
            .get("exp")
            .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f.max(0.0) as u64)))
            .ok_or(AuthError::InvalidToken {
                why: "exp must be a number of seconds",
            })?;
        let patterns = patterns(&claims, &self.claim);
        if let Some(refused) = channels
            .iter()
            .find(|c| !patterns.iter().any(|p| crate::hub::glob::matches(p, c)))
        {
            return Err(AuthError::ChannelNotAllowed {
                channel: refused.clone(),
            });
        }
        Ok(UNIX_EPOCH + Duration::from_secs(exp) + self.leeway)
    }
}

/// A cookie's value from every `Cookie` header (HTTP/2 sends one header per cookie).
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, v)| *k == name && !v.is_empty())
        .map(|(_, v)| v.trim_matches('"'))
}

/// The channel patterns of the claim: a top-level key named exactly `claim`, else the dotted
/// path; a list of strings or a single string. Anything else allows nothing.
fn patterns(claims: &Value, claim: &str) -> Vec<String> {
    let value = claims
        .get(claim)
        .or_else(|| claim.split('.').try_fold(claims, |v, key| v.get(key)));
    match value {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// A fixed phrase for each failure: the client and the log learn why, never token content.
fn why(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::ImmatureSignature => "not valid yet",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => "algorithm not accepted",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::MissingRequiredClaim(_) => "missing a required claim",
        _ => "malformed",
    }
}

#[cfg(test)]
mod tests;
