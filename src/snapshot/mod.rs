//! The compiled config: what a reload swaps at once, and what a request reads from start
//! to end. [`routes`] holds the route table.

pub mod routes;

use std::net::IpAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthMetrics, Authorizer, JwtAuth, RuleAuthConfig, SharedCounts};
use crate::body::Body;
use crate::config::Config;
use crate::metrics::ProxyMetrics;
use crate::proxy::upstream::UpstreamClient;
use crate::proxy::{ProxyError, forward};
use routes::Routes;

/// Everything that a config reload replaces at once. A request loads one snapshot and keeps
/// it to the end, so a reload never mixes old and new rules within one request.
pub struct Snapshot {
    /// The validated config.
    pub config: Config,
    /// Compiled rules.
    pub(crate) routes: Routes,
    /// Pooled client to the upstream.
    pub upstream: UpstreamClient,
    /// The `[jwt]` verifier shared by every `auth = "jwt"` rule, if configured.
    pub jwt: Option<Arc<JwtAuth>>,
    /// The gate of `/_unpoll/sse`, when `[generic_stream] enabled` (always JWT).
    pub(crate) generic_stream: Option<Authorizer>,
    /// The `<script>` tag added to the app's HTML pages for `inject = true` watch rules
    /// (`None`: no page is rewritten); built here once, read by every HTML response.
    pub(crate) inject_tag: Option<Arc<str>>,
}

impl Snapshot {
    /// Forward `req` to the upstream unchanged under this snapshot's settings.
    pub(crate) async fn proxy(
        &self,
        req: Request<Incoming>,
        client_ip: IpAddr,
        shutdown: &CancellationToken,
    ) -> Result<Response<Body>, ProxyError> {
        let (client, config) = (&self.upstream, &self.config);
        forward::proxy(
            client,
            &config.proxy,
            config.log.access,
            req,
            client_ip,
            shutdown,
        )
        .await
    }

    /// Compile `config`: its routes, its upstream client and its JWT verifier. `shared`:
    /// where per-channel limits count the other instances' subscribers (a cluster).
    pub(crate) fn build(
        config: Config,
        metrics: &ProxyMetrics,
        auth_metrics: &AuthMetrics,
        shared: Option<&Arc<dyn SharedCounts>>,
    ) -> Snapshot {
        let jwt = config.jwt.as_ref().map(|j| Arc::new(JwtAuth::new(j)));
        let routes = Routes::build(&config, metrics, auth_metrics, jwt.as_ref(), shared);
        let upstream = UpstreamClient::new(config.upstream.clone(), &config.proxy, metrics.clone());
        let generic_stream = config.generic_stream.enabled.then(|| {
            Authorizer::new(
                "generic_stream",
                &RuleAuthConfig::Jwt,
                &config.generic_stream.limits,
                jwt.as_ref(),
                auth_metrics,
                shared,
            )
        });
        let inject_tag = crate::watch::config::inject_tag(&config.watches, config.proxy.client);
        Snapshot {
            config,
            routes,
            upstream,
            jwt,
            generic_stream,
            inject_tag,
        }
    }

    /// Let the stream rules' limits (and the generic stream's) count on from `previous`,
    /// the snapshot a reload replaces: the streams admitted under it stay open.
    pub(crate) fn carry_counts_from(&mut self, previous: &Snapshot) {
        self.routes.carry_counts_from(&previous.routes);
        if let (Some(new), Some(old)) = (&mut self.generic_stream, &previous.generic_stream) {
            new.carry_counts_from(old);
        }
    }
}
