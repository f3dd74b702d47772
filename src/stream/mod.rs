//! The Stream arm of the handler: resolve a `[[stream]]` rule's channels from the request,
//! pass the rule's gate (limits, then auth), subscribe to the hub (replaying from
//! `Last-Event-ID`), answer with an SSE body that ends when access does, or upgrade to a
//! WebSocket carrying the same subscription ([`websocket`]).

pub(crate) mod config;
pub(crate) mod multi;
pub mod websocket;

use std::net::IpAddr;
use std::time::Duration;

use http::header::{HeaderValue, RETRY_AFTER};
use http::request::Parts;
use http::{Response, StatusCode};
use prometheus_client::metrics::gauge::Gauge;

pub(crate) use config::{RawStreamRule, StreamRule};

use crate::auth::{Authorizer, Grant, GrantedBody, SubscribeRequest, requested_channels};
use crate::body::{Body, boxed};
use crate::handles::Handles;
use crate::hub::{SubscribeError, Subscription};
use crate::proxy::client_ip::client_ip;
use crate::proxy::{ProxyError, error_response};
use crate::route::PathParams;
use crate::snapshot::Snapshot;
use crate::sse::ConnectionAbort;
use crate::sse::{SseBody, SseOptions};
use crate::template::{Missing, RenderEachError, RequestVars, Template, Vars};

/// What the Stream arm decided.
pub(crate) enum Outcome {
    /// Answer with this (the stream, or 400/401/403/429/502/504).
    Respond(Response<Body>),
    /// A template variable had no value: the rule does not apply and the request is
    /// proxied (the caller logs and counts it), never subscribed to a wrong channel.
    NotApplicable(Missing),
    /// The request asks for a transport the rule does not list (`transports`): it is the
    /// app's (a WebSocket of its own at that path, say) and is proxied.
    OtherTransport,
}

/// Heartbeat and retry hint of the generic stream (it has no rule to say otherwise).
const GENERIC_SSE: SseOptions = SseOptions {
    heartbeat: Duration::from_secs(15),
    retry: Duration::from_secs(2),
};

/// Open a stream for the request `parts` under `rule`, whose gate is `authorizer`;
/// `subscribers` counts the rule's open streams. `peer` is the TCP peer.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn open(
    handles: &Handles,
    snapshot: &Snapshot,
    rule: &StreamRule,
    authorizer: &Authorizer,
    subscribers: &Gauge,
    params: &PathParams,
    parts: &Parts,
    peer: IpAddr,
) -> Outcome {
    let upgrade = websocket::is_websocket(parts);
    let served = if upgrade {
        rule.transports.websocket
    } else {
        rule.transports.sse
    };
    if !served {
        return Outcome::OtherTransport;
    }
    // A malformed handshake is refused before the gate spends an auth call on it.
    let handshake = match upgrade.then(|| websocket::Handshake::check(parts, &rule.origins)) {
        None => None,
        Some(Ok(handshake)) => Some(handshake),
        Some(Err(bad)) => return Outcome::Respond(bad.into_response()),
    };
    match admit(
        handles,
        snapshot,
        rule,
        authorizer,
        subscribers,
        params,
        parts,
        peer,
    )
    .await
    {
        Gated::Open(admitted) => Outcome::Respond(match handshake {
            Some(handshake) => handshake.accept(
                admitted,
                handles.shutdown.clone(),
                handles.metrics.stream_connections.clone(),
            ),
            None => admitted.into_response(handles),
        }),
        Gated::Refused(resp) => Outcome::Respond(resp),
        Gated::NotApplicable(missing) => Outcome::NotApplicable(missing),
    }
}

/// What a stream's gate decided, before any body exists: a multiplexed stream
/// (`multi`) puts several of these behind one response.
pub(crate) enum Gated {
    /// Subscribed and granted.
    Open(Admitted),
    /// The answer a single stream would give (400/401/403/429/502/504).
    Refused(Response<Body>),
    /// The rule's templates do not apply (see [`Outcome::NotApplicable`]).
    NotApplicable(Missing),
}

/// A stream that passed its gate: its hub subscription, its grant (limits and how long
/// access lasts) and its rule's settings.
pub(crate) struct Admitted {
    /// Replayed, then live frames.
    pub sub: Subscription,
    /// Held for the stream's life.
    pub grant: Grant,
    /// The rule's heartbeat and retry hint.
    pub options: SseOptions,
    /// The rule's open-streams gauge; not yet incremented.
    pub subscribers: Gauge,
}

impl Admitted {
    /// The single-stream response: the SSE body, ended when access ends.
    fn into_response(self, handles: &Handles) -> Response<Body> {
        let body = SseBody::new(self.sub, self.options, handles.shutdown.clone())
            .counted(self.subscribers)
            .connection(handles.metrics.stream_connections.clone());
        crate::sse::response(boxed(GrantedBody::new(body, self.grant)))
    }
}

/// The gate of [`open`], without the body.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn admit(
    handles: &Handles,
    snapshot: &Snapshot,
    rule: &StreamRule,
    authorizer: &Authorizer,
    subscribers: &Gauge,
    params: &PathParams,
    parts: &Parts,
    peer: IpAddr,
) -> Gated {
    let vars = RequestVars::head(params, &parts.uri, &parts.headers);
    let channels = match channels(&rule.channels, &vars, rule.max_channels) {
        Ok(channels) => channels,
        Err(RenderEachError::Missing(missing)) => return Gated::NotApplicable(missing),
        Err(RenderEachError::TooMany { cap }) => {
            let message = format!("too many channels requested (at most {cap})");
            return Gated::Refused(error_response(StatusCode::BAD_REQUEST, &message));
        }
    };
    let options = SseOptions {
        heartbeat: rule.heartbeat,
        retry: rule.retry,
    };
    let gate = Gate {
        snapshot,
        authorizer,
        subscribers,
        name: &rule.name,
        options,
    };
    match gate.admit(handles, params, parts, peer, channels).await {
        Ok(admitted) => Gated::Open(admitted),
        Err(resp) => Gated::Refused(resp),
    }
}

/// The channels a request subscribes to: every template rendered once per value of its
/// list-valued variables ([`crate::template::Template::render_each`]), at most `cap` in
/// all. Upstream auth renders `auth_path` from the same variables the same way, so each
/// value here is a value the app was asked about.
pub(crate) fn channels(
    templates: &[Template],
    vars: &dyn Vars,
    cap: usize,
) -> Result<Vec<String>, RenderEachError> {
    let mut channels = Vec::new();
    for template in templates {
        channels.extend(template.render_each(vars, cap)?);
        if channels.len() > cap {
            return Err(RenderEachError::TooMany { cap });
        }
    }
    Ok(channels)
}

/// `/_unpoll/sse?channel=a&channel=b`: the client names the channels, its JWT limits them.
pub(crate) async fn open_generic(
    handles: &Handles,
    snapshot: &Snapshot,
    authorizer: &Authorizer,
    parts: &Parts,
    peer: IpAddr,
) -> Response<Body> {
    match admit_generic(handles, snapshot, authorizer, parts, peer).await {
        Ok(admitted) => admitted.into_response(handles),
        Err(resp) => resp,
    }
}

/// The gate of [`open_generic`], without the body.
pub(crate) async fn admit_generic(
    handles: &Handles,
    snapshot: &Snapshot,
    authorizer: &Authorizer,
    parts: &Parts,
    peer: IpAddr,
) -> Result<Admitted, Response<Body>> {
    let channels = match requested_channels(parts.uri.query()) {
        Ok(channels) => channels,
        Err(e) => return Err(ProxyError::Auth(e).into_response()),
    };
    let subscribers = handles.metrics.stream_subscribers("generic_stream");
    let gate = Gate {
        snapshot,
        authorizer,
        subscribers: &subscribers,
        name: "generic_stream",
        options: GENERIC_SSE,
    };
    gate.admit(handles, &PathParams::default(), parts, peer, channels)
        .await
}

/// What a stream passes through once its channels are known.
struct Gate<'a> {
    snapshot: &'a Snapshot,
    authorizer: &'a Authorizer,
    subscribers: &'a Gauge,
    name: &'a str,
    options: SseOptions,
}

impl Gate<'_> {
    async fn admit(
        &self,
        handles: &Handles,
        params: &PathParams,
        parts: &Parts,
        peer: IpAddr,
        channels: Vec<String>,
    ) -> Result<Admitted, Response<Body>> {
        let client = client_ip(
            peer,
            &parts.headers,
            &self.snapshot.config.proxy.trusted_proxies,
        );
        let request = SubscribeRequest {
            parts,
            params,
            peer,
            client_ip: client,
            upstream: &self.snapshot.upstream,
            proxy: &self.snapshot.config.proxy,
        };
        let grant = match self.authorizer.authorize(&request, &channels).await {
            Ok(grant) => grant,
            Err(e) => {
                tracing::info!(rule = %self.name, reason = e.as_str(), "stream refused");
                return Err(ProxyError::Auth(e).into_response());
            }
        };
        let last_event_id = crate::sse::last_event_id(&parts.headers, parts.uri.query());
        // In a cluster: the channels are read from Redis while this subscription lives.
        let follow = handles
            .sink
            .follow(&channels, last_event_id.as_deref())
            .await;
        let mut sub = match handles
            .hub
            .subscribe(&channels, last_event_id.as_deref(), Some(client))
        {
            Ok(sub) => sub,
            Err(e) => return Err(refused(self.name, &e)),
        };
        if let Some(follow) = follow {
            sub.hold(follow);
        }
        if let Some(abort) = parts.extensions.get::<ConnectionAbort>() {
            let abort = abort.clone();
            sub.on_overflow(move || abort.abort());
        }
        Ok(Admitted {
            sub,
            grant,
            options: self.options,
            subscribers: self.subscribers.clone(),
        })
    }
}

/// 429 with `Retry-After` for a limit, 400 for a bad request.
fn refused(rule: &str, e: &SubscribeError) -> Response<Body> {
    tracing::info!(rule = %rule, reason = e.as_str(), "stream refused");
    match e.retry_after() {
        Some(after) => {
            let mut resp = error_response(StatusCode::TOO_MANY_REQUESTS, &e.to_string());
            let secs = after.as_secs().max(1).to_string();
            if let Ok(v) = HeaderValue::from_str(&secs) {
                resp.headers_mut().insert(RETRY_AFTER, v);
            }
            resp
        }
        None => error_response(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use http::{Method, Request, StatusCode};

    use super::{Gated, admit};
    use crate::handles::Handles;
    use crate::handles::testing::instance;
    use crate::snapshot::Snapshot;
    use crate::snapshot::routes::Action;

    const RULES: &str = r#"
        [[stream]]
        path = "/bots/{id}/events"
        channels = ["bot:{path.id}"]
        auth = "none"
        limits = { per_ip = 1 }

        [[stream]]
        path = "/q/events"
        channels = ["q:{query.id}"]
        auth = "none"
    "#;

    const PEER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// The gate's decision on `GET uri`.
    async fn gate(handles: &Handles, snapshot: &Snapshot, uri: &str) -> Gated {
        let (parts, ()) = Request::get(uri).body(()).unwrap().into_parts();
        let route = snapshot.routes.resolve(&Method::GET, parts.uri.path());
        let Action::Stream(s) = route.action else {
            panic!("{uri} is not a stream");
        };
        let (rule, gauge) = (&s.rule, &s.subscribers);
        admit(
            handles,
            snapshot,
            rule,
            &s.authorizer,
            gauge,
            &route.params,
            &parts,
            PEER,
        )
        .await
    }

    #[tokio::test]
    async fn subscribes_to_the_rules_channels_on_the_hub() {
        let (handles, _, snapshot) = instance(RULES);
        let Gated::Open(mut admitted) = gate(&handles, &snapshot, "/bots/7/events").await else {
            panic!("refused");
        };
        assert_eq!(admitted.sub.channels().collect::<Vec<_>>(), ["bot:7"]);
        handles.hub.publish("bot:8", None, "other".into());
        handles.hub.publish("bot:7", None, "hello".into());
        let frame = admitted.sub.recv().await.unwrap();
        let frame = std::str::from_utf8(&frame).unwrap();
        assert!(frame.contains("data: hello\n"), "{frame}");
    }

    #[tokio::test]
    async fn a_limit_refuses_until_the_open_stream_ends() {
        let (handles, _, snapshot) = instance(RULES);
        let first = gate(&handles, &snapshot, "/bots/1/events").await;
        assert!(matches!(first, Gated::Open(_)));
        match gate(&handles, &snapshot, "/bots/2/events").await {
            Gated::Refused(resp) => assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS),
            _ => panic!("per_ip = 1 let a second stream in"),
        }
        drop(first);
        let again = gate(&handles, &snapshot, "/bots/2/events").await;
        assert!(matches!(again, Gated::Open(_)));
    }

    #[tokio::test]
    async fn a_missing_value_leaves_the_request_to_the_proxy() {
        let (handles, _, snapshot) = instance(RULES);
        let gated = gate(&handles, &snapshot, "/q/events").await;
        assert!(matches!(gated, Gated::NotApplicable(_)));
        assert!(matches!(
            gate(&handles, &snapshot, "/q/events?id=3").await,
            Gated::Open(_)
        ));
        assert_eq!(
            handles.hub.stats(0).subscribers,
            0,
            "dropped streams unsubscribe"
        );
    }
}
