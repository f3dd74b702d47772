//! A request's path through unpoll, top to bottom: load the config snapshot, route the
//! request, then one `match` on the action.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;

use super::error::ProxyError;
use super::forward::forward;
use super::observe::UpstreamTime;
use super::routes::Action;
use crate::app::{App, Snapshot};
use crate::body::Body;
use crate::stream::Outcome;

/// Handle one client request on the main listener.
pub async fn handle(app: &Arc<App>, req: Request<Incoming>, client_ip: IpAddr) -> Response<Body> {
    let snapshot = app.snapshot();
    let route = snapshot.routes.resolve(req.method(), req.uri().path());

    let result = match route.action {
        Action::Stream(s) => {
            let (parts, body) = req.into_parts();
            let outcome = crate::stream::open(
                app,
                &snapshot,
                &s.rule,
                &s.authorizer,
                &s.subscribers,
                &route.params,
                &parts,
                client_ip,
            )
            .await;
            match outcome {
                Outcome::Respond(resp) => Ok(resp),
                Outcome::NotApplicable => {
                    proxy(app, &snapshot, Request::from_parts(parts, body), client_ip).await
                }
            }
        }
        Action::Proxy
            if req.method() == http::Method::GET
                && req.uri().path() == crate::auth::GENERIC_STREAM_PATH
                && snapshot.generic_stream.is_some() =>
        {
            let (parts, _body) = req.into_parts();
            match &snapshot.generic_stream {
                Some(gate) => {
                    Ok(crate::stream::open_generic(app, &snapshot, gate, &parts, client_ip).await)
                }
                // Checked in the guard above.
                None => Err(ProxyError::BadRequest("generic stream disabled")),
            }
        }
        Action::Proxy => proxy(app, &snapshot, req, client_ip).await,
        Action::Cache(c) => {
            crate::cache::serve::serve(app, &snapshot, &c.rule, &route.params, req, client_ip).await
        }
        Action::Tap(t) => {
            crate::tap::handle(
                app,
                &snapshot,
                &t.rule,
                route.params.clone(),
                req,
                client_ip,
            )
            .await
        }
    };

    let resp = result.unwrap_or_else(|err| {
        tracing::warn!(rule = route.name, cause = %err, "request failed");
        err.into_response()
    });
    route.counters.count(resp.status().as_u16());
    resp
}

/// Forward to the upstream unchanged, noting its response time for the access log.
pub async fn proxy(
    app: &App,
    snapshot: &Snapshot,
    req: Request<Incoming>,
    client_ip: IpAddr,
) -> Result<Response<Body>, ProxyError> {
    let started = Instant::now();
    let mut resp = forward(
        &snapshot.upstream,
        &snapshot.config.proxy,
        req,
        client_ip,
        &app.shutdown,
    )
    .await?;
    resp.extensions_mut()
        .insert(UpstreamTime(started.elapsed()));
    Ok(resp)
}
