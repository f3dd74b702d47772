//! Who may subscribe to a stream, and how much: auth delegated to the app (`upstream`),
//! JWT, and per-rule abuse limits.
//!
//! One [`Authorizer`] per stream rule (and one for the generic stream), built with the config
//! snapshot. The stream handler calls [`Authorizer::authorize`] with the request and the
//! channels it resolved; a [`Grant`] comes back, which the stream keeps for its life: its
//! `Drop` frees the stream's places in the limits, and [`Grant::ended`] resolves when access
//! is gone (JWT `exp`, or an upstream re-check refused) so the SSE body can close.
//!
//! - `config.rs`: the rule keys, `[jwt]`, `[generic_stream]`.
//! - `upstream.rs`: asking the app, with a bounded, coalescing decision cache.
//! - `jwt.rs`: token extraction and verification (channel patterns are `hub::glob`'s);
//!   `generic.rs`: the channels a client names on `/_unpoll/sse`.
//! - `limits.rs`, `rate.rs`: per-rule subscriber caps and connection rate.
//! - `grant.rs`: what a subscriber holds; `body.rs`: a stream body that ends with its
//!   access; `error.rs`: why a subscriber was refused.

mod body;
mod config;
mod error;
mod generic;
mod grant;
mod jwt;
mod limits;
mod metrics;
#[cfg(test)]
mod properties;
mod rate;
mod upstream;

use std::net::IpAddr;
use std::sync::Arc;

pub(crate) use body::{ACCESS_ENDED_EVENT, GrantedBody, access_ended_data, access_ended_frame};
pub(crate) use config::{
    GenericStreamConfig, JwtConfig, RawGenericStream, RawJwtConfig, token_query_name_ok,
};
pub use config::{RawRuleAuth, RawStreamLimits, RuleAuthConfig, StreamLimits};
pub use error::{AuthError, Limit};
pub(crate) use generic::{GENERIC_STREAM_PATH, requested_channels};
pub(crate) use grant::EndedFuture;
pub use grant::{AccessEnded, Grant};
pub(crate) use jwt::JwtAuth;
pub(crate) use limits::{Limiter, SharedCounts};
pub(crate) use metrics::AuthMetrics;
pub(crate) use upstream::{UpstreamAuth, query_bearer, strip_query_param};

use crate::proxy::config::ProxyConfig;
use crate::proxy::upstream::UpstreamClient;
use crate::route::PathParams;

/// A request asking to subscribe, as the stream handler sees it.
pub struct SubscribeRequest<'a> {
    /// The request head (headers, URI with the query).
    pub parts: &'a http::request::Parts,
    /// Values of the rule's `{name}` path segments.
    pub params: &'a PathParams,
    /// The TCP peer: appended to `X-Forwarded-For` on the auth request, as on any proxied
    /// request.
    pub peer: IpAddr,
    /// The client address after trusted proxies ([`crate::proxy::client_ip`]): what the
    /// limits count.
    pub client_ip: IpAddr,
    /// The snapshot's upstream client.
    pub upstream: &'a UpstreamClient,
    /// The snapshot's `[proxy]` settings (Host and Via handling of the auth request).
    pub proxy: &'a ProxyConfig,
}

/// How one rule decides.
#[derive(Debug)]
enum Mode {
    None,
    Upstream(Arc<UpstreamAuth>),
    Jwt(Arc<JwtAuth>),
    /// `auth = "jwt"` without a verifier: validation refuses such a config, but should one
    /// get here, nobody subscribes rather than everybody.
    Refuse,
}

impl Mode {
    fn as_str(&self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Upstream(_) => "upstream",
            Mode::Jwt(_) | Mode::Refuse => "jwt",
        }
    }
}

/// The subscribe gate of one stream rule: limits, then auth.
#[derive(Debug)]
pub struct Authorizer {
    mode: Mode,
    limiter: Arc<Limiter>,
    metrics: AuthMetrics,
}

impl Authorizer {
    /// The gate of rule `rule` (its name, for logs). `jwt` is the snapshot's shared
    /// verifier, if `[jwt]` is configured.
    pub fn new(
        rule: &str,
        auth: &RuleAuthConfig,
        limits: &StreamLimits,
        jwt: Option<&Arc<JwtAuth>>,
        metrics: &AuthMetrics,
        shared: Option<&Arc<dyn SharedCounts>>,
    ) -> Authorizer {
        let mode = match auth {
            RuleAuthConfig::None => Mode::None,
            RuleAuthConfig::Upstream(config) => Mode::Upstream(Arc::new(UpstreamAuth::new(
                config.clone(),
                rule.to_string(),
                metrics.clone(),
            ))),
            RuleAuthConfig::Jwt => jwt.map_or(Mode::Refuse, |j| Mode::Jwt(j.clone())),
        };
        Authorizer {
            mode,
            limiter: Limiter::new(
                limits.clone(),
                metrics.clone(),
                shared.map(|s| (rule, s.clone())),
            ),
            metrics: metrics.clone(),
        }
    }

    /// Count on from `previous`, the same rule's gate in the config a reload replaces: the
    /// streams it admitted are still open and still hold their places under the limits
    /// (see [`Limiter::carried_over`]).
    pub fn carry_counts_from(&mut self, previous: &Authorizer) {
        self.limiter = self.limiter.carried_over(&previous.limiter);
    }

    /// Take the rule's `token_query` parameter out of a request that goes on to the app.
    pub fn strip_token(&self, uri: &mut http::Uri) {
        if let Mode::Upstream(auth) = &self.mode {
            auth.strip_token(uri);
        }
    }

    /// May this request subscribe to `channels`? Limits are checked first (they are cheap
    /// and keep a flood away from the app), then auth. The returned [`Grant`] must be kept
    /// for as long as the stream is open.
    pub async fn authorize(
        &self,
        req: &SubscribeRequest<'_>,
        channels: &[String],
    ) -> Result<Grant, AuthError> {
        let result = self.decide(req, channels).await;
        let label = match &result {
            Ok(_) => "allowed",
            Err(e) => e.as_str(),
        };
        self.metrics.decision(self.mode.as_str(), label);
        result
    }

    async fn decide(
        &self,
        req: &SubscribeRequest<'_>,
        channels: &[String],
    ) -> Result<Grant, AuthError> {
        let mut distinct = channels.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let admission = self.limiter.admit(req.client_ip, &distinct)?;
        let mut grant = self.grant(req, &distinct, admission).await?;
        // Dropping the grant on a refusal gives its places back.
        self.limiter.confirm_shared(grant.admission_mut()).await?;
        Ok(grant)
    }

    /// The rule's auth, for a request its limits admitted.
    async fn grant(
        &self,
        req: &SubscribeRequest<'_>,
        distinct: &[String],
        admission: limits::Admission,
    ) -> Result<Grant, AuthError> {
        let metrics = self.metrics.clone();
        match &self.mode {
            Mode::None => Ok(Grant::unbounded(admission, metrics)),
            Mode::Refuse => Err(AuthError::InvalidToken {
                why: "no [jwt] verifier configured",
            }),
            Mode::Jwt(jwt) => {
                let token = jwt
                    .token(&req.parts.headers, req.parts.uri.query())
                    .ok_or(AuthError::MissingToken)?;
                let until = jwt.verify(&token, distinct)?;
                Ok(Grant::until(until, admission, metrics))
            }
            Mode::Upstream(auth) => {
                let check =
                    auth.request(req.parts, req.params, req.peer, req.upstream, req.proxy)?;
                auth.check(&check).await?;
                Ok(Grant::rechecked(auth.clone(), check, admission, metrics))
            }
        }
    }
}
