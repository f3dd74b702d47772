//! The Watch arm of the handler: a watched path is a stream for `Accept:
//! text/event-stream` and the cached poll it always was otherwise; both answers say
//! `Vary: Accept` so no cache in front hands one the other.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::header::{self, HeaderMap, HeaderValue, RETRY_AFTER};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::StreamBody;
use hyper::body::{Frame, Incoming};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio_util::sync::{ReusableBoxFuture, WaitForCancellationFutureOwned};

use super::metrics::{Found, Trigger};
use super::version::{State, Version};
use super::watcher::{self, is_access_refused};
use super::{Full, WatchHandles, WatchRule, Watcher};
use crate::auth::{AccessEnded, access_ended_frame};
use crate::body::{Body, boxed};
use crate::cache::entry::Conditions;
use crate::cache::serve::{Refresh, Refreshed};
use crate::proxy::{ProxyError, error_response};
use crate::route::PathParams;
use crate::snapshot::Snapshot;
use crate::sse::{SseOptions, encode};

/// Serve `req` under the watch `rule`: a stream or a poll.
pub async fn serve(
    parts: &WatchHandles,
    snapshot: &Arc<Snapshot>,
    rule: &Arc<WatchRule>,
    params: &PathParams,
    req: Request<Incoming>,
    client_ip: IpAddr,
) -> Result<Response<Body>, ProxyError> {
    // A stream applies the rule's `token_query` in `subscribe` (which `/_unpoll/multi`
    // calls too); a poll here.
    if req.method() == Method::GET && wants_stream(req.headers()) {
        let (head, _) = req.into_parts();
        return Ok(Box::pin(stream(parts, snapshot, rule, params, &head, client_ip)).await);
    }
    let mut resp = {
        let (mut head, body) = req.into_parts();
        token_to_header(rule, &mut head.uri, &mut head.headers)?;
        let req = Request::from_parts(head, body);
        let (cache, hub, shutdown) = (&parts.cache, &parts.hub, &parts.shutdown);
        let rule = &rule.cache;
        crate::cache::serve::serve(cache, hub, shutdown, snapshot, rule, params, req, client_ip)
            .await?
    };
    resp.headers_mut()
        .append(header::VARY, HeaderValue::from_static("accept"));
    Ok(resp)
}

/// The rule's `token_query` parameter becomes the request's `Authorization: Bearer` (for
/// the key and every fetch, stream or poll) and leaves its URL, so the app never sees it
/// in a query. A request without it keeps its own Authorization. The one step every way in
/// applies: a poll ([`serve`]) and every stream, single or multiplexed ([`subscribe`]).
fn token_to_header(
    rule: &WatchRule,
    uri: &mut Uri,
    headers: &mut HeaderMap,
) -> Result<(), ProxyError> {
    let Some(name) = &rule.token_query else {
        return Ok(());
    };
    if let Some(bearer) = crate::auth::query_bearer(name, uri.query())? {
        headers.insert(header::AUTHORIZATION, bearer);
    }
    crate::auth::strip_query_param(uri, name);
    Ok(())
}

/// Does the client ask for an event stream (EventSource always sends this)?
pub fn wants_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|m| {
            m.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("text/event-stream")
        })
}

/// The answer to a GET asking a watched path for an event stream (`head`): the stream, or
/// the refusal, saying `Vary: Accept`. Served through hyper or, as the first request of
/// its connection, without it (`server::direct_sse`).
pub async fn stream(
    parts: &WatchHandles,
    snapshot: &Arc<Snapshot>,
    rule: &Arc<WatchRule>,
    params: &PathParams,
    head: &Parts,
    client_ip: IpAddr,
) -> Response<Body> {
    let (uri, headers) = (&head.uri, &head.headers);
    let subscribed = subscribe(parts, snapshot, rule, params, uri, headers, client_ip).await;
    let mut resp = match subscribed {
        Ok(sub) => {
            let resume = crate::sse::last_event_id(headers, uri.query());
            let frames = sub.frames(resume.as_deref(), SseOptions::default(), parts);
            crate::sse::response(boxed(StreamBody::new(
                frames.map(|b| Ok::<_, std::convert::Infallible>(Frame::data(b))),
            )))
        }
        Err(refusal) => refusal,
    };
    resp.headers_mut()
        .append(header::VARY, HeaderValue::from_static("accept"));
    resp
}

/// A subscriber of one watched key, before it streams.
pub struct WatchSubscription {
    /// The key's state; the watcher holds the sender.
    state: watch::Receiver<State>,
}

/// Subscribe to the watcher of the key of a GET for `uri` with `headers` under `rule`,
/// starting it (one fetch, or the cache's fresh entry) when none runs. `Err` is the answer
/// a single stream gives instead: the upstream's own 401/403/404 (or other non-2xx) on the
/// first fetch, 502/504 when it failed, 429 at `hub.max_watch_keys`, 400 when a tag of the
/// rule has no value in the request or its `token_query` is not a valid header value. The
/// rule's `token_query` is applied here, so a stream opened alone and one inside
/// `/_unpoll/multi` are authorised alike.
///
/// This is what a multiplexed stream (`/_unpoll/multi`) calls for a watch subscription,
/// then [`WatchSubscription::frames`] for its events.
pub async fn subscribe(
    parts: &WatchHandles,
    snapshot: &Arc<Snapshot>,
    rule: &Arc<WatchRule>,
    params: &PathParams,
    uri: &Uri,
    headers: &HeaderMap,
    client_ip: IpAddr,
) -> Result<WatchSubscription, Response<Body>> {
    let watches = &parts.watches;
    let mut headers = fetch_headers(headers);
    let mut uri = fetch_uri(uri);
    token_to_header(rule, &mut uri, &mut headers).map_err(ProxyError::into_response)?;
    let Some(refresh) = Refresh::new(
        &parts.cache,
        &parts.hub,
        snapshot,
        &rule.cache,
        params,
        &uri,
        &headers,
        client_ip,
    ) else {
        return Err(error_response(
            StatusCode::BAD_REQUEST,
            "a tag of this watch rule has no value in the request",
        ));
    };
    let key = refresh.key().clone();
    if let Some(state) = watches.join(&key) {
        // Same key, same credentials: the running watcher's body is this client's too.
        return Ok(WatchSubscription { state });
    }
    if watches.is_full(&key) {
        return Err(too_many_keys(parts));
    }
    let entry = match refresh.run(snapshot.clone()).await {
        Refreshed::Entry(entry) => entry,
        Refreshed::Failed(status) => {
            watches.metrics.fetched(Trigger::Initial, Found::Failed);
            return Err(error_response(status, "upstream request failed"));
        }
    };
    if !entry.status.is_success() {
        let found = if is_access_refused(entry.status) {
            Found::AccessEnded
        } else {
            Found::Failed
        };
        watches.metrics.fetched(Trigger::Initial, found);
        // The answer the poll would have got: the app's own status and body.
        let status = format!("unpoll; fwd=miss; fwd-status={}", entry.status.as_u16());
        return Err(entry.respond(&Conditions::default(), false, status));
    }
    watches.metrics.fetched(Trigger::Initial, Found::Changed);
    let version = Version::of(&entry, rule.event.as_deref());
    let tags = refresh.tags().to_vec();
    let started = watches.join_or_start(&key, || Arc::new(Watcher::new(version, tags)));
    match started {
        Ok((watcher, state, true)) => {
            tokio::spawn(watcher::run(
                parts.clone(),
                key,
                watcher,
                refresh,
                rule.clone(),
            ));
            Ok(WatchSubscription { state })
        }
        Ok((_, state, false)) => Ok(WatchSubscription { state }),
        Err(Full::Keys) => Err(too_many_keys(parts)),
    }
}

/// The request headers every fetch of the key sends: the subscriber's own (Cookie,
/// Authorization: the app is the auth), without those that make it a stream request.
fn fetch_headers(headers: &HeaderMap) -> HeaderMap {
    let mut headers = headers.clone();
    headers.remove(header::ACCEPT);
    headers.remove(&crate::sse::LAST_EVENT_ID);
    headers
}

/// The URL every fetch of the key asks for: the subscriber's, without the
/// `last_event_id` parameter a stream may be opened with (it is not the app's, and would
/// give the stream another key than the poll of the same URL).
fn fetch_uri(uri: &Uri) -> Uri {
    let Some(query) = uri.query() else {
        return uri.clone();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| pair.split('=').next() != Some(crate::sse::LAST_EVENT_ID_PARAM))
        .collect();
    let path = uri.path();
    let target = if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    match target.parse() {
        Ok(pq) => {
            parts.path_and_query = Some(pq);
            Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
        }
        // Cannot happen: the path and the pairs came from a valid URI.
        Err(_) => uri.clone(),
    }
}

fn too_many_keys(parts: &WatchHandles) -> Response<Body> {
    parts.watches.metrics.rejected.inc();
    let mut resp = error_response(
        StatusCode::TOO_MANY_REQUESTS,
        "too many watched keys (hub.max_watch_keys)",
    );
    let secs = parts.hub.config().retry_after.as_secs().max(1);
    resp.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(secs));
    resp
}

impl WatchSubscription {
    /// The id of the version this subscriber would get first.
    pub fn current_id(&self) -> Option<String> {
        match &*self.state.borrow() {
            State::Body(v) => Some(v.id.clone()),
            State::Ended(_) => None,
        }
    }

    /// Start from `resume`, the client's Last-Event-ID: the current body is sent first
    /// unless it is that version.
    pub fn resume(&mut self, resume: Option<&str>) {
        if resume.is_none() || resume != self.current_id().as_deref() {
            self.state.mark_changed();
        }
    }

    /// The next state to send: a new version, or `Ended` when a refetch was refused
    /// (send `access_ended` and stop). `None` when the watcher is gone (shutdown). A
    /// multiplexed stream, which frames events its own way, reads this; the state is
    /// shared, so a slow reader skips to the newest version.
    pub async fn next_state(&mut self) -> Option<State> {
        // Err: the watcher is gone without a last word.
        self.state.changed().await.ok()?;
        Some(self.state.borrow_and_update().clone())
    }

    /// The SSE bytes of this subscription: `retry:`, the current body unless `resume`
    /// (the client's Last-Event-ID) is its version, then each new version, heartbeats, and
    /// `access_ended` when a refetch is refused. Ends at shutdown. An event may come in
    /// several chunks (a one-line body is sent from the bytes it is stored in).
    pub fn frames(
        mut self,
        resume: Option<&str>,
        options: SseOptions,
        parts: &WatchHandles,
    ) -> impl Stream<Item = Bytes> + Send + 'static {
        self.resume(resume);
        let interval = options.heartbeat.max(std::time::Duration::from_millis(100));
        Frames {
            retry: Some(encode::retry(options.retry)),
            sending: None,
            changed: ReusableBoxFuture::new(changed(self.state)),
            heartbeat: tokio::time::sleep(interval),
            interval,
            shutdown: parts.shutdown.clone().cancelled_owned(),
            ended: false,
            _open: OpenGauges::new([
                parts.watches.metrics.subscribers.clone(),
                parts.stream_connections.clone(),
            ]),
            pushes: parts.watches.metrics.pushes.clone(),
        }
    }
}

/// Wait for the key's next state; the receiver comes back with it, to wait again.
async fn changed(
    mut state: watch::Receiver<State>,
) -> (Result<(), watch::error::RecvError>, watch::Receiver<State>) {
    let changed = state.changed().await;
    (changed, state)
}

type Changed = (Result<(), watch::error::RecvError>, watch::Receiver<State>);

pin_project_lite::pin_project! {
    /// One single stream's side of a watcher, written out rather than composed from
    /// stream combinators: an idle watching tab holds this and its socket, so every byte
    /// here is per tab (the combinators' version held 608 bytes).
    struct Frames {
        // `retry:`, sent first.
        retry: Option<Bytes>,
        // The version being sent, and its next part.
        sending: Option<(Arc<Version>, usize)>,
        // tokio's watch receiver can only be awaited: its wait, boxed once and reused for
        // every version.
        changed: ReusableBoxFuture<'static, Changed>,
        // A `:` comment every `interval`. Not restarted by events, as in `sse::SseBody`:
        // an extra comment is harmless, a timer reset per delivery is not free.
        #[pin]
        heartbeat: tokio::time::Sleep,
        interval: std::time::Duration,
        #[pin]
        shutdown: WaitForCancellationFutureOwned,
        // `access_ended` was sent, or the watcher is gone: the stream ends.
        ended: bool,
        // Counts this stream while it is open.
        _open: OpenGauges,
        // `unpoll_watch_pushes`.
        pushes: Counter,
    }
}

/// The next part of the version being sent, if any is left.
fn next_part(sending: &mut Option<(Arc<Version>, usize)>) -> Option<Bytes> {
    let (version, next) = sending.as_mut()?;
    let part = version.frame.get(*next).cloned();
    *next += 1;
    if part.is_none() || *next == version.frame.len() {
        *sending = None;
    }
    part
}

impl Stream for Frames {
    type Item = Bytes;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let mut this = self.project();
        if let Some(retry) = this.retry.take() {
            return Poll::Ready(Some(retry));
        }
        if let Some(part) = next_part(this.sending) {
            return Poll::Ready(Some(part));
        }
        if *this.ended || this.shutdown.as_mut().poll(cx).is_ready() {
            *this.ended = true;
            return Poll::Ready(None);
        }
        if let Poll::Ready((changed, mut state)) = this.changed.poll(cx) {
            if changed.is_err() {
                // The watcher is gone without a last word (shutdown).
                *this.ended = true;
                return Poll::Ready(None);
            }
            // A pointer to the shared version, not a copy of it, per subscriber.
            let now = state.borrow_and_update().clone();
            this.changed.set(self::changed(state));
            return match now {
                State::Body(version) => {
                    this.pushes.inc();
                    *this.sending = Some((version, 0));
                    match next_part(this.sending) {
                        Some(part) => Poll::Ready(Some(part)),
                        // No event is empty; were one, wait for the next state.
                        None => {
                            cx.waker().wake_by_ref();
                            Poll::Pending
                        }
                    }
                }
                State::Ended(status) => {
                    *this.ended = true;
                    Poll::Ready(Some(access_ended_frame(AccessEnded::Revoked(status))))
                }
            };
        }
        if this.heartbeat.as_mut().poll(cx).is_ready() {
            let deadline = tokio::time::Instant::now() + *this.interval;
            this.heartbeat.as_mut().reset(deadline);
            return Poll::Ready(Some(encode::HEARTBEAT));
        }
        Poll::Pending
    }
}

/// Gauges incremented while a stream is open, decremented when it is dropped. Held inline
/// (not in a `Vec`): every watching tab has one.
struct OpenGauges([Gauge; 2]);

impl OpenGauges {
    fn new(gauges: [Gauge; 2]) -> OpenGauges {
        for g in &gauges {
            g.inc();
        }
        OpenGauges(gauges)
    }
}

impl Drop for OpenGauges {
    fn drop(&mut self) {
        for g in &self.0 {
            g.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    #[test]
    fn the_resume_parameter_is_not_part_of_the_fetch() {
        let u = |s: &str| fetch_uri(&s.parse().unwrap()).to_string();
        assert_eq!(u("/inbox?last_event_id=abc"), "/inbox");
        assert_eq!(u("/inbox?a=1&last_event_id=abc&b=2"), "/inbox?a=1&b=2");
        assert_eq!(u("/inbox?a=1"), "/inbox?a=1");
        assert_eq!(u("/inbox?last_event_idx=1"), "/inbox?last_event_idx=1");
        assert_eq!(u("/inbox"), "/inbox");
    }

    /// Per-tab memory matters at thousands of watching tabs: what a subscriber's stream
    /// holds (the receiver, the heartbeat timer, the shutdown wait, its pending future)
    /// must stay small; the body itself is shared with the watcher and the cache entry.
    #[tokio::test]
    async fn a_watching_tab_holds_little() {
        let config = crate::config::parse_rules("[[watch]]\npath = \"/w\"").unwrap();
        let app = crate::app::App::new(config, CancellationToken::new());
        let parts = &app.handles.watch;
        let (tx, rx) = watch::channel(State::Ended(StatusCode::FORBIDDEN));
        let frames = WatchSubscription { state: rx }.frames(None, SseOptions::default(), parts);
        let size = std::mem::size_of_val(&frames);
        println!("watch subscriber stream: {size} B");
        assert!(size <= 1024, "a watching tab's stream is {size} bytes");
        assert_eq!(parts.watches.metrics.subscribers.get(), 1);
        drop(frames);
        assert_eq!(parts.watches.metrics.subscribers.get(), 0);
        drop(tx);
    }
}
