//! A request's path through unpoll, top to bottom: load the config snapshot, route the
//! request, then one `match` on the action.

use std::net::IpAddr;
use std::sync::Arc;

use http::request::Parts;
use http::{HeaderMap, Method, Request, Response};
use hyper::body::Incoming;

use crate::body::Body;
use crate::handles::Handles;
use crate::proxy::ProxyError;
use crate::proxy::headers::normalize_host;
use crate::snapshot::Snapshot;
use crate::snapshot::routes::{Action, Route};
use crate::sse::ConnectionAbort;
use crate::stream::{Outcome, multi};

/// Handle one client request on the main listener. `abort` ends the request's HTTP/1
/// connection; a stream takes it (see `sse::ConnectionAbort`).
pub async fn handle(
    handles: &Handles,
    snapshot: Arc<Snapshot>,
    req: Request<Incoming>,
    client_ip: IpAddr,
    abort: Option<ConnectionAbort>,
) -> Response<Body> {
    // Before anything reads Host (cache keys, templates, forwarding).
    let (mut parts, body) = req.into_parts();
    let host = normalize_host(&mut parts.headers, &parts.uri);
    let req = Request::from_parts(parts, body);
    // The browser client answers before any rule (`[proxy] client`).
    if snapshot.config.proxy.client
        && let Some(resp) = crate::client::serve(req.method(), req.uri().path(), req.headers())
    {
        return resp;
    }
    if multi::is_multi(req.method(), req.uri().path()) {
        let (mut parts, _) = req.into_parts();
        if let Some(abort) = abort {
            parts.extensions.insert(abort);
        }
        return Box::pin(multi::open(handles, &snapshot, &parts, client_ip)).await;
    }
    let route = snapshot.routes.resolve(req.method(), req.uri().path());
    if let Err(why) = host {
        let resp = ProxyError::BadRequest(why).into_response();
        route.counters.count(resp.status().as_u16());
        return resp;
    }

    // Each arm's future is boxed: they differ in size by kilobytes, and an unboxed match
    // is as large as its largest arm, copied whole at every level above it (the service
    // future, hyper's dispatcher) on every request.
    let (method, metrics) = (req.method().clone(), &handles.watch.watches.metrics);
    let result = match route.action {
        Action::Stream(_) => {
            Box::pin(stream_or_proxy(
                handles, &snapshot, &route, req, client_ip, abort,
            ))
            .await
        }
        Action::Proxy if is_generic_stream(&snapshot, req.method(), req.uri().path()) => {
            Box::pin(stream_or_proxy(
                handles, &snapshot, &route, req, client_ip, abort,
            ))
            .await
        }
        Action::Proxy => Box::pin(snapshot.proxy(req, client_ip, &handles.shutdown)).await,
        // Not boxed: a hit is the hot path and small; the cache boxes its miss path.
        Action::Cache(c) => {
            let cache = &handles.cache;
            let (hub, shutdown) = (&handles.hub, &handles.shutdown);
            crate::cache::serve::serve(
                cache,
                hub,
                shutdown,
                &snapshot,
                &c.rule,
                &route.params,
                req,
                client_ip,
            )
            .await
        }
        Action::Watch(w) => {
            Box::pin(crate::watch::serve(
                &handles.watch,
                &snapshot,
                &w.rule,
                &route.params,
                req,
                client_ip,
            ))
            .await
        }
        Action::Tap(t) => {
            let params = route.params.clone();
            Box::pin(crate::tap::handle(
                handles, &snapshot, &t.rule, params, req, client_ip,
            ))
            .await
        }
    };

    let resp = result.unwrap_or_else(|err| {
        tracing::warn!(rule = route.name, cause = %err, "request failed");
        err.into_response()
    });
    let resp = crate::watch::inject::inject_page(&method, resp, &snapshot, metrics);
    route.counters.count(resp.status().as_u16());
    resp
}

/// Whether a request for `path` opens an event stream: the multiplexed stream, a
/// `[[stream]]` rule, the generic stream, or a watched path asked for
/// `text/event-stream` (`headers`: `None` while they are not read, when a watched path
/// may still be one). The server asks before serving a stream outside hyper.
pub fn is_stream(
    snapshot: &Snapshot,
    method: &Method,
    path: &str,
    headers: Option<&HeaderMap>,
) -> bool {
    if multi::is_multi(method, path) {
        return true;
    }
    match snapshot.routes.resolve(method, path).action {
        Action::Stream(_) => true,
        Action::Proxy => is_generic_stream(snapshot, method, path),
        // A watched path is a stream when its GET asks for `Accept: text/event-stream`
        // (and may be one while its headers are not read yet).
        Action::Watch(_) => {
            method == Method::GET && headers.is_none_or(crate::watch::serve::wants_stream)
        }
        Action::Cache(_) | Action::Tap(_) => false,
    }
}

/// Open the stream `parts` asks for, outside hyper (see `server::direct_sse`), counted like
/// any response. `None`: the request is not a stream after all (its rule's templates do
/// not apply) and must take the ordinary path, which proxies and counts it.
pub async fn open_stream(
    handles: &Handles,
    snapshot: Arc<Snapshot>,
    parts: &Parts,
    client_ip: IpAddr,
) -> Option<Response<Body>> {
    if multi::is_multi(&parts.method, parts.uri.path()) {
        return Some(multi::open(handles, &snapshot, parts, client_ip).await);
    }
    let route = snapshot.routes.resolve(&parts.method, parts.uri.path());
    if let Action::Watch(w) = &route.action {
        let stream = crate::watch::serve::stream(
            &handles.watch,
            &snapshot,
            &w.rule,
            &route.params,
            parts,
            client_ip,
        );
        let resp = Box::pin(stream).await;
        route.counters.count(resp.status().as_u16());
        return Some(resp);
    }
    let resp = match stream_arm(handles, &snapshot, &route, parts, client_ip).await? {
        Outcome::Respond(resp) => resp,
        Outcome::NotApplicable(_) | Outcome::OtherTransport => return None,
    };
    route.counters.count(resp.status().as_u16());
    Some(resp)
}

/// A stream route's request: the stream, or the upstream's answer when the rule's
/// templates do not apply to it (logged and counted).
async fn stream_or_proxy(
    handles: &Handles,
    snapshot: &Snapshot,
    route: &Route<'_>,
    req: Request<Incoming>,
    client_ip: IpAddr,
    abort: Option<ConnectionAbort>,
) -> Result<Response<Body>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    // An extension only here: inserting one allocates the request's extension map, which
    // no other request needs.
    if let Some(abort) = abort {
        parts.extensions.insert(abort);
    }
    match stream_arm(handles, snapshot, route, &parts, client_ip).await {
        Some(Outcome::Respond(resp)) => return Ok(resp),
        Some(Outcome::NotApplicable(missing)) => {
            tracing::debug!(rule = route.name, cause = %missing, "stream rule does not apply");
            handles.hub.metrics().skip(route.name, "missing_value");
            // The rule's query token authenticates streams only: the app never gets it.
            if let Action::Stream(s) = &route.action {
                s.authorizer.strip_token(&mut parts.uri);
            }
        }
        Some(Outcome::OtherTransport) | None => {}
    }
    snapshot
        .proxy(
            Request::from_parts(parts, body),
            client_ip,
            &handles.shutdown,
        )
        .await
}

/// The stream behind `route`: its rule's, or the generic stream on a proxied route.
/// `None` when no stream serves it.
async fn stream_arm(
    handles: &Handles,
    snapshot: &Snapshot,
    route: &Route<'_>,
    parts: &Parts,
    client_ip: IpAddr,
) -> Option<Outcome> {
    let outcome = match (&route.action, &snapshot.generic_stream) {
        (Action::Stream(s), _) => {
            crate::stream::open(
                handles,
                snapshot,
                &s.rule,
                &s.authorizer,
                &s.subscribers,
                &route.params,
                parts,
                client_ip,
            )
            .await
        }
        (Action::Proxy, Some(gate))
            if is_generic_stream(snapshot, &parts.method, parts.uri.path()) =>
        {
            Outcome::Respond(
                crate::stream::open_generic(handles, snapshot, gate, parts, client_ip).await,
            )
        }
        _ => return None,
    };
    Some(outcome)
}

/// `GET /_unpoll/sse` when `[auth.jwt]` enables the generic stream.
fn is_generic_stream(snapshot: &Snapshot, method: &Method, path: &str) -> bool {
    method == Method::GET
        && path == crate::auth::GENERIC_STREAM_PATH
        && snapshot.generic_stream.is_some()
}
