//! `/_unpoll/multi?s=<url>&s=<url>…`: one SSE response carrying several subscriptions, so a
//! browser holds one connection for every stream of every tab (protocol: MULTI.md, README
//! "Several streams on one connection").
//!
//! Each `s` goes through the gate it would pass if opened alone (routing, the rule's auth
//! with this request's headers and the `s` query, its limits, the hub's limits), through the
//! same functions. An `s` under a `[[watch]]` rule subscribes to its key's watcher as a
//! watch stream opened alone would (the app's answer to the first fetch is the auth,
//! `hub.max_watch_keys` the limit); its `last_event_id=` is a version, and an equal one
//! sends nothing at first. What differs is only the body: every frame becomes one unnamed event
//! whose data is `{"s":<index>,"id":…,"event":…,"data":…}`.
//!
//! The hub encodes an event's SSE frame once and shares the bytes with every subscriber; a
//! multiplexed stream re-reads the id, name and data from those bytes (the SSE encoding is
//! lossless for them) instead of the hub keeping the parts beside every queued frame, so
//! single streams pay nothing for this one.

use std::collections::VecDeque;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::{Admitted, Gated};
use crate::auth::{AccessEnded, EndedFuture, Grant, access_ended_data};
use crate::body::{Body, boxed};
use crate::handles::Handles;
use crate::hub::{CloseReason, EventId, Subscription};
use crate::proxy::error_response;
use crate::snapshot::Snapshot;
use crate::snapshot::routes::Action;
use crate::sse::ConnectionAbort;
use crate::sse::{LAST_EVENT_ID, Overflowed, SseOptions, encode};
use crate::watch::WatchSubscription;
use crate::watch::version::State;

/// The path of the multiplexed stream, on the main listener, before any rule.
pub const MULTI_PATH: &str = "/_unpoll/multi";

/// The query parameter naming one subscription.
const SUB_PARAM: &str = "s";

/// Whether a request is for the multiplexed stream.
pub fn is_multi(method: &Method, path: &str) -> bool {
    method == Method::GET && path == MULTI_PATH
}

/// Answer `GET /_unpoll/multi`: 400 without `s` or with more than `hub.max_multi`; the first
/// failure's response when every `s` fails; otherwise the multiplexed stream, which starts
/// with an error message for each `s` that failed. `parts` carries the connection's
/// [`ConnectionAbort`] when it has one (a slow client's overflow closes the connection).
pub async fn open(
    handles: &Handles,
    snapshot: &Arc<Snapshot>,
    parts: &Parts,
    peer: IpAddr,
) -> Response<Body> {
    let max = handles.hub.config().max_multi;
    // One past the bound is enough to refuse: nothing more of the query is kept.
    let subs: Vec<String> = form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
        .filter(|(k, _)| k == SUB_PARAM)
        .map(|(_, v)| v.into_owned())
        .take(max.saturating_add(1))
        .collect();
    if subs.is_empty() {
        let message = format!("{MULTI_PATH} needs at least one `{SUB_PARAM}=` subscription");
        return error_response(StatusCode::BAD_REQUEST, &message);
    }
    if subs.len() > max {
        let message = format!("more than {max} subscriptions on one stream (hub.max_multi)");
        return error_response(StatusCode::BAD_REQUEST, &message);
    }
    // Concurrently: an upstream auth check per `s` must not make the open take n round trips.
    let opened = futures_util::future::join_all(
        subs.iter()
            .map(|s| Box::pin(open_one(handles, snapshot, parts, peer, s))),
    )
    .await;

    let mut live = Vec::new();
    let mut failures = Vec::new();
    let mut first_failure = None;
    for (index, result) in opened.into_iter().enumerate() {
        match result {
            Ok(admitted) => live.push((index, admitted)),
            Err(resp) if first_failure.is_none() => first_failure = Some((index, resp)),
            Err(resp) => failures.push((index, resp)),
        }
    }
    if live.is_empty()
        && let Some((_, resp)) = first_failure
    {
        return resp;
    }
    let mut preamble_errors = Vec::with_capacity(failures.len() + 1);
    for (index, resp) in first_failure.into_iter().chain(failures) {
        preamble_errors.push(error_frame(index, resp).await);
    }
    tracing::debug!(
        open = live.len(),
        failed = preamble_errors.len(),
        "multiplexed stream opened"
    );
    let body = MultiBody::new(
        handles,
        live,
        preamble_errors.into_iter().map(|(_, f)| f).collect(),
    );
    crate::sse::response(boxed(body))
}

/// Route and gate one `s` exactly as the stream it names would be, opened alone with this
/// request's headers; its rule's response counters count the outcome.
async fn open_one(
    handles: &Handles,
    snapshot: &Arc<Snapshot>,
    parts: &Parts,
    peer: IpAddr,
    s: &str,
) -> Result<Opened, Response<Body>> {
    let Some(sub_parts) = sub_request(parts, s) else {
        let message = format!("`{SUB_PARAM}={s}` is not a path on this server");
        return Err(error_response(StatusCode::BAD_REQUEST, &message));
    };
    let path = sub_parts.uri.path();
    let route = snapshot.routes.resolve(&Method::GET, path);
    let result = match (&route.action, &snapshot.generic_stream) {
        (Action::Stream(rule), _) => {
            match super::admit(
                handles,
                snapshot,
                &rule.rule,
                &rule.authorizer,
                &rule.subscribers,
                &route.params,
                &sub_parts,
                peer,
            )
            .await
            {
                Gated::Open(admitted) => Ok(Opened::Stream(Box::new(admitted))),
                Gated::Refused(resp) => Err(resp),
                Gated::NotApplicable(missing) => {
                    // Alone, this request would be proxied to the app; there is no stream.
                    let message = format!("`{s}` is not a stream here ({missing})");
                    Err(error_response(StatusCode::NOT_FOUND, &message))
                }
            }
        }
        (Action::Proxy, Some(gate)) if path == crate::auth::GENERIC_STREAM_PATH => {
            super::admit_generic(handles, snapshot, gate, &sub_parts, peer)
                .await
                .map(|admitted| Opened::Stream(Box::new(admitted)))
        }
        (Action::Watch(w), _) => {
            let uri = &sub_parts.uri;
            let headers = &sub_parts.headers;
            match crate::watch::subscribe(
                &handles.watch,
                snapshot,
                &w.rule,
                &route.params,
                uri,
                headers,
                peer,
            )
            .await
            {
                Ok(mut watch) => {
                    // Only `s`'s own `last_event_id=`: the multi request's header is removed.
                    let resume = crate::sse::last_event_id(headers, uri.query());
                    watch.resume(resume.as_deref());
                    Ok(Opened::Watch(watch))
                }
                Err(resp) => Err(resp),
            }
        }
        _ => {
            let message = format!("`{s}` is not a stream or a watch");
            return Err(error_response(StatusCode::NOT_FOUND, &message));
        }
    };
    let status = match &result {
        Ok(_) => StatusCode::OK,
        Err(resp) => resp.status(),
    };
    route.counters.count(status.as_u16());
    result
}

/// One `s` that opened.
enum Opened {
    /// A `[[stream]]` rule or the generic stream: a hub subscription (boxed: it is
    /// twenty times the size of a watch).
    Stream(Box<Admitted>),
    /// A `[[watch]]` rule: a subscriber of the key's watcher, resumed.
    Watch(WatchSubscription),
}

impl Opened {
    /// The heartbeat and retry hint of the stream `s` would have been alone.
    fn options(&self) -> SseOptions {
        match self {
            Opened::Stream(a) => a.options,
            Opened::Watch(_) => SseOptions::default(),
        }
    }
}

/// The request `s` would have been: its path and query, the multi request's headers (minus
/// `Last-Event-ID`: a sub resumes only from its own `last_event_id=`), its connection.
fn sub_request(parts: &Parts, s: &str) -> Option<Parts> {
    if !s.starts_with('/') || s.starts_with("//") {
        return None;
    }
    let uri: Uri = s.parse().ok()?;
    if uri.scheme().is_some() || uri.authority().is_some() {
        return None;
    }
    let (mut sub, ()) = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .version(parts.version)
        .body(())
        .ok()?
        .into_parts();
    sub.headers = parts.headers.clone();
    sub.headers.remove(LAST_EVENT_ID);
    if let Some(abort) = parts.extensions.get::<ConnectionAbort>() {
        sub.extensions.insert(abort.clone());
    }
    Some(sub)
}

/// `{"s":1,"error":403,"reason":"…"}` for an `s` that did not open; the reason is the text
/// of the response it would have had alone.
async fn error_frame(index: usize, resp: Response<Body>) -> (usize, Bytes) {
    let status = resp.status().as_u16();
    let text = match resp.into_body().collect().await {
        Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        Err(_) => String::new(),
    };
    let reason = text.trim();
    let reason = reason.strip_prefix("unpoll: ").unwrap_or(reason);
    let value = serde_json::json!({ "s": index, "error": status, "reason": reason });
    (index, message(&value.to_string()))
}

/// One unnamed SSE event carrying `json` (one line).
fn message(json: &str) -> Bytes {
    let mut out = Vec::with_capacity(json.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json.as_bytes());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// Re-encode a hub frame (`id:`, optional `event:`, `data:` lines) as the message of sub
/// `index`.
pub fn event_message(index: usize, frame: &[u8]) -> Bytes {
    let mut out = String::with_capacity(frame.len() + 48);
    out.push_str("{\"s\":");
    out.push_str(&index.to_string());
    out.push(',');
    push_event_fields(&mut out, frame);
    out.push('}');
    message(&out)
}

/// `"id":…,"event":…,"data":…` of a hub frame, for a JSON object (the multiplexed stream's
/// messages, WebSocket text frames). The data lines joined by `\n` are the event's data as
/// the hub got it (the encoder turns every line ending into one line and nothing else).
pub(crate) fn push_event_fields(out: &mut String, frame: &[u8]) {
    let text = String::from_utf8_lossy(frame);
    let mut id = None;
    let mut name = None;
    let mut data: Option<std::borrow::Cow<'_, str>> = None;
    for line in text.split('\n') {
        if let Some(v) = line.strip_prefix("id: ") {
            id = Some(v);
        } else if let Some(v) = line.strip_prefix("event: ") {
            name = Some(v);
        } else if let Some(v) = line.strip_prefix("data: ") {
            data = Some(match data {
                None => std::borrow::Cow::Borrowed(v),
                Some(before) => std::borrow::Cow::Owned(format!("{before}\n{v}")),
            });
        }
    }
    let data = data.unwrap_or_default();
    out.push_str("\"id\":");
    push_json_str(out, id);
    out.push_str(",\"event\":");
    push_json_str(out, name);
    out.push_str(",\"data\":");
    push_json_data(out, &data);
}

/// A JSON string, or `null`.
fn push_json_str(out: &mut String, value: Option<&str>) {
    match value.and_then(|v| serde_json::to_string(v).ok()) {
        Some(quoted) => out.push_str(&quoted),
        None => out.push_str("null"),
    }
}

/// The data as a JSON value when it is JSON (what a publisher's JSON event always is),
/// else as a JSON string. A one-line JSON text is copied as is: only validated, never
/// rebuilt.
fn push_json_data(out: &mut String, data: &str) {
    if !data.contains('\n') {
        if serde_json::from_str::<serde::de::IgnoredAny>(data).is_ok() {
            out.push_str(data.trim());
            return;
        }
    } else if let Ok(value) = serde_json::from_str::<serde_json::Value>(data) {
        out.push_str(&value.to_string());
        return;
    }
    push_json_str(out, Some(data));
}

/// `{"s":0,"event":"access_ended","data":{…}}`.
fn access_ended_message(index: usize, reason: AccessEnded) -> Bytes {
    let json = format!(
        "{{\"s\":{index},\"event\":\"{}\",\"data\":{}}}",
        crate::auth::ACCESS_ENDED_EVENT,
        access_ended_data(reason)
    );
    message(&json)
}

/// `{"hb":<interval ms>}`, with `"pos"` (the hub position the subs started from) in the
/// first. A visible message, not a comment: `EventSource` hides comments, and a browser
/// behind a buffering proxy can only tell the stream is not held by missing these.
fn heartbeat_message(interval: Duration, position: Option<EventId>) -> Bytes {
    let ms = interval.as_millis();
    match position {
        Some(pos) => message(&format!("{{\"hb\":{ms},\"pos\":\"{pos}\"}}")),
        None => message(&format!("{{\"hb\":{ms}}}")),
    }
}

/// An open hub subscription of a multiplexed stream. Fields drop in order: the
/// subscription (unsubscribing), then the grant (freeing its places in the limits).
struct HubSub {
    sub: Subscription,
    ended: EndedFuture,
    /// The rule's open-streams gauge, decremented on drop.
    _subscribers: Counted,
    _grant: Grant,
}

/// One open subscription of a multiplexed stream.
enum Live {
    /// A hub subscription (boxed: it is many times the size of a watch).
    Stream(Box<HubSub>),
    /// A watcher's subscriber: its states, newest first when the client lags (the state
    /// is shared, so a slow reader skips versions instead of queueing them).
    Watch {
        states: BoxStream<'static, State>,
        /// `unpoll_watch_subscribers`, decremented on drop.
        _subscriber: Counted,
    },
}

/// What one open subscription has to send now.
enum Step {
    /// A message; the subscription stays open.
    Send(Bytes),
    /// Its last message (`access_ended`): the subscription closes.
    Last(Bytes),
    /// Closed without a word (its watcher stopped: shutdown).
    Gone,
    /// The hub dropped it: the client is too slow for the stream as a whole.
    Overflow,
}

impl Live {
    fn new(opened: Opened, handles: &Handles) -> Live {
        match opened {
            Opened::Stream(a) => Live::Stream(Box::new(HubSub {
                ended: a.grant.ended(),
                sub: a.sub,
                _subscribers: Counted::new(a.subscribers),
                _grant: a.grant,
            })),
            Opened::Watch(watch) => Live::Watch {
                states: futures_util::stream::unfold(watch, |mut watch| async move {
                    let state = watch.next_state().await?;
                    Some((state, watch))
                })
                .boxed(),
                _subscriber: Counted::new(handles.watch.watches.metrics.subscribers.clone()),
            },
        }
    }

    /// The next message of sub `index`, if any is ready.
    fn poll_step(&mut self, index: usize, pushes: &Counter, cx: &mut Context<'_>) -> Poll<Step> {
        match self {
            Live::Stream(hub) => {
                let HubSub { sub, ended, .. } = &mut **hub;
                if let Poll::Ready(reason) = ended.as_mut().poll(cx) {
                    tracing::debug!(
                        s = index,
                        reason = reason.as_str(),
                        "access ended; closing one subscription of a multiplexed stream"
                    );
                    return Poll::Ready(Step::Last(access_ended_message(index, reason)));
                }
                sub.poll_recv(cx).map(|frame| match frame {
                    Some(frame) => Step::Send(event_message(index, &frame)),
                    None => Step::Overflow,
                })
            }
            Live::Watch { states, .. } => states.poll_next_unpin(cx).map(|state| match state {
                Some(State::Body(version)) => {
                    pushes.inc();
                    Step::Send(event_message(index, &version.frame.concat()))
                }
                Some(State::Ended(status)) => {
                    tracing::debug!(
                        s = index,
                        %status,
                        "a refetch was refused; closing one watch of a multiplexed stream"
                    );
                    let reason = AccessEnded::Revoked(status);
                    Step::Last(access_ended_message(index, reason))
                }
                None => Step::Gone,
            }),
        }
    }
}

/// A gauge held up by one while this lives.
pub(crate) struct Counted(Gauge);

impl Counted {
    pub(crate) fn new(gauge: Gauge) -> Counted {
        gauge.inc();
        Counted(gauge)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `s` index and, while open, the subscription.
struct Slot {
    index: usize,
    live: Option<Live>,
}

/// The body of a multiplexed stream: `retry:`, a heartbeat message with the hub position,
/// one error message per failed `s`, then the open subscriptions' events, round robin, with
/// heartbeat messages at the shortest heartbeat of their rules. It ends when every subscription has ended (access ended), when
/// one overflows (the client is too slow for the stream as a whole: the same policy as a
/// single stream, whose client resumes from its last ids), or at shutdown.
pub struct MultiBody {
    slots: Vec<Slot>,
    /// `retry:`, the first heartbeat, then the error messages, sent first.
    preamble: VecDeque<Bytes>,
    heartbeat: Pin<Box<Sleep>>,
    interval: Duration,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Slot to look at first, so one busy subscription cannot starve the others.
    next: usize,
    /// Slots still open.
    open: usize,
    done: bool,
    /// `unpoll_watch_pushes`: a watch sub's body sent counts as a single stream's does.
    pushes: Counter,
    /// The server's open stream responses: this one counts once.
    _connection: Counted,
}

impl MultiBody {
    fn new(handles: &Handles, opened: Vec<(usize, Opened)>, errors: Vec<Bytes>) -> MultiBody {
        let options: Vec<SseOptions> = opened.iter().map(|(_, o)| o.options()).collect();
        let heartbeat = options
            .iter()
            .map(|o| o.heartbeat)
            .min()
            .unwrap_or(Duration::from_secs(15));
        let retry = options
            .iter()
            .map(|o| o.retry)
            .min()
            .unwrap_or(Duration::from_secs(2));
        // A zero interval would spin; config validation refuses it, this is the backstop.
        let interval = heartbeat.max(Duration::from_millis(100));
        // Resuming a sub that had no event yet from the earliest start loses nothing: each
        // sub saw every event after its own start, and at worst gets a few it had not.
        // Watch subs have no hub position: they resume by version.
        let position = opened
            .iter()
            .filter_map(|(_, o)| match o {
                Opened::Stream(a) => Some(a.sub.start()),
                Opened::Watch(_) => None,
            })
            .min_by_key(|id| id.seq);
        let mut preamble = VecDeque::with_capacity(errors.len() + 2);
        preamble.push_back(encode::retry(retry));
        preamble.push_back(heartbeat_message(interval, position));
        preamble.extend(errors);
        let slots: Vec<Slot> = opened
            .into_iter()
            .map(|(index, o)| Slot {
                index,
                live: Some(Live::new(o, handles)),
            })
            .collect();
        MultiBody {
            open: slots.len(),
            slots,
            preamble,
            heartbeat: Box::pin(tokio::time::sleep(interval)),
            interval,
            shutdown: Box::pin(handles.shutdown.clone().cancelled_owned()),
            next: 0,
            done: false,
            pushes: handles.watch.watches.metrics.pushes.clone(),
            _connection: Counted::new(handles.metrics.stream_connections.clone()),
        }
    }

    fn close_all(&mut self, reason: CloseReason) {
        for slot in &self.slots {
            if let Some(Live::Stream(hub)) = &slot.live {
                hub.sub.close(reason);
            }
        }
    }
}

impl http_body::Body for MultiBody {
    type Data = Bytes;
    type Error = Overflowed;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Overflowed>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(frame) = this.preamble.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(frame))));
        }
        if this.open == 0 {
            this.done = true;
            return Poll::Ready(None);
        }
        if this.shutdown.as_mut().poll(cx).is_ready() {
            this.close_all(CloseReason::Shutdown);
            this.done = true;
            return Poll::Ready(None);
        }
        let n = this.slots.len();
        for k in 0..n {
            let i = (this.next + k) % n;
            let slot = &mut this.slots[i];
            let Some(live) = slot.live.as_mut() else {
                continue;
            };
            let Poll::Ready(step) = live.poll_step(slot.index, &this.pushes, cx) else {
                continue;
            };
            this.next = (i + 1) % n;
            match step {
                Step::Send(message) => return Poll::Ready(Some(Ok(Frame::data(message)))),
                Step::Last(message) => {
                    slot.live = None;
                    this.open -= 1;
                    return Poll::Ready(Some(Ok(Frame::data(message))));
                }
                Step::Gone => {
                    slot.live = None;
                    this.open -= 1;
                    if this.open == 0 {
                        this.done = true;
                        return Poll::Ready(None);
                    }
                }
                Step::Overflow => {
                    tracing::debug!(s = slot.index, "multiplexed stream ends: slow client");
                    this.close_all(CloseReason::Overflow);
                    this.done = true;
                    // On HTTP/2 hyper resets just this stream for the error.
                    return Poll::Ready(Some(Err(Overflowed)));
                }
            }
        }
        if this.heartbeat.as_mut().poll(cx).is_ready() {
            let next = Instant::now() + this.interval;
            this.heartbeat.as_mut().reset(next);
            let beat = heartbeat_message(this.interval, None);
            return Poll::Ready(Some(Ok(Frame::data(beat))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl std::fmt::Debug for MultiBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiBody")
            .field("subscriptions", &self.slots.len())
            .field("open", &self.open)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: Bytes) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn json_data_goes_in_as_json_and_text_as_a_string() {
        let frame = encode::event("ab-1", Some("msg"), r#"{"a":[1,2]}"#);
        assert_eq!(
            text(event_message(0, &frame)),
            "data: {\"s\":0,\"id\":\"ab-1\",\"event\":\"msg\",\"data\":{\"a\":[1,2]}}\n\n"
        );
        let frame = encode::event("ab-2", None, "hello \"you\"");
        assert_eq!(
            text(event_message(3, &frame)),
            "data: {\"s\":3,\"id\":\"ab-2\",\"event\":null,\"data\":\"hello \\\"you\\\"\"}\n\n"
        );
    }

    #[test]
    fn multi_line_data_survives_on_one_line() {
        let frame = encode::event("ab-3", None, "a\r\nb\n\nc\n");
        let msg = text(event_message(1, &frame));
        assert_eq!(
            msg,
            "data: {\"s\":1,\"id\":\"ab-3\",\"event\":null,\"data\":\"a\\nb\\n\\nc\\n\"}\n\n"
        );
        // Multi-line JSON text is JSON, made compact.
        let frame = encode::event("ab-4", None, "{\n\"x\": 1\n}");
        assert_eq!(
            text(event_message(1, &frame)),
            "data: {\"s\":1,\"id\":\"ab-4\",\"event\":null,\"data\":{\"x\":1}}\n\n"
        );
    }

    #[test]
    fn empty_data_and_a_reset() {
        let frame = encode::event("ab-5", None, "");
        assert_eq!(
            text(event_message(0, &frame)),
            "data: {\"s\":0,\"id\":\"ab-5\",\"event\":null,\"data\":\"\"}\n\n"
        );
        let reset = crate::hub::ResetReason::OtherBoot;
        let frame = encode::event("cd-9", Some("reset"), &reset.data());
        let msg = text(event_message(2, &frame));
        let json: serde_json::Value =
            serde_json::from_str(msg.strip_prefix("data: ").unwrap().trim()).unwrap();
        assert_eq!(json["s"], 2);
        assert_eq!(json["event"], "reset");
        assert_eq!(json["id"], "cd-9");
        assert_eq!(json["data"]["reason"], "other_boot");
    }

    #[test]
    fn access_ended_message_names_its_sub() {
        let msg = text(access_ended_message(4, AccessEnded::Expired));
        assert_eq!(
            msg,
            "data: {\"s\":4,\"event\":\"access_ended\",\"data\":{\"reason\":\"expired\",\"status\":401}}\n\n"
        );
    }
}
