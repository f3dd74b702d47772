//! The Cache arm of the handler: answer from an entry when one is fresh (or may be served
//! stale), otherwise fetch once for everyone waiting on the same key.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio_util::sync::CancellationToken;

use super::entry::{
    CACHE_STATUS, Conditions, Entry, Freshness, UNPOLL_CURSOR, Variant, not_shareable, not_storable,
};
use super::key::{CacheKey, VaryNames};
use super::lock::{Acquired, Outcome, WritePermit};
use super::{Cache, CacheRule, NotStored};
use crate::body::{Body, BoxError, empty};
use crate::hub::Hub;
use crate::proxy::forward::{UpstreamTime, client_response, upstream_request};
use crate::proxy::{ProxyError, error_response};
use crate::route::PathParams;
use crate::snapshot::Snapshot;
use crate::template::RequestVars;

/// Everything a fetch needs to know about the request, owned so a background refresh can
/// outlive it.
#[derive(Clone)]
struct Fetch {
    cache: Arc<Cache>,
    /// Its cursor goes into `Unpoll-Cursor`.
    hub: Hub,
    snapshot: Arc<Snapshot>,
    rule: CacheRule,
    key: CacheKey,
    uri: http::Uri,
    headers: http::HeaderMap,
    tags: Vec<String>,
    client_ip: IpAddr,
}

/// Serve `req` under `rule` from `cache`. `hub`'s cursor goes into `Unpoll-Cursor`; a
/// request that bypasses the cache is forwarded, and an upgraded one ends at `shutdown`.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    cache: &Arc<Cache>,
    hub: &Hub,
    shutdown: &CancellationToken,
    snapshot: &Arc<Snapshot>,
    rule: &CacheRule,
    params: &PathParams,
    req: Request<Incoming>,
    client_ip: IpAddr,
) -> Result<Response<Body>, ProxyError> {
    let head = req.method() == Method::HEAD;
    let key = CacheKey::new(rule, req.uri(), req.headers());
    let cond = Conditions::of(req.headers());
    let lookup = Lookup {
        cache,
        hub,
        shutdown,
        snapshot,
        rule,
        params,
        client_ip,
        head,
        cond,
    };
    match lookup.stored(&req, &key) {
        Stored::Served(resp) => Ok(resp),
        // Boxed: the miss path (lock, upstream fetch) is kilobytes of future state that a
        // hit, the hot path, would otherwise carry and copy.
        Stored::Missing(stale) => Box::pin(lookup.miss(req, key, stale)).await,
    }
}

/// What every branch of [`serve`] needs.
struct Lookup<'a> {
    cache: &'a Arc<Cache>,
    hub: &'a Hub,
    shutdown: &'a CancellationToken,
    snapshot: &'a Arc<Snapshot>,
    rule: &'a CacheRule,
    params: &'a PathParams,
    client_ip: IpAddr,
    head: bool,
    /// This client's conditional and range headers, answered from the entry.
    cond: Conditions,
}

/// What the store had.
enum Stored {
    /// A fresh entry, or a stale one while one background refresh runs.
    Served(Response<Body>),
    /// Nothing usable now; maybe an entry to serve if the upstream fails.
    Missing(Option<Arc<Entry>>),
}

impl Lookup<'_> {
    fn stored(&self, req: &Request<Incoming>, key: &CacheKey) -> Stored {
        let Lookup {
            cache,
            hub,
            snapshot,
            rule,
            params,
            client_ip,
            head,
            ..
        } = *self;
        let cond = &self.cond;
        let Some(entry) = cache.get(key, req.headers()) else {
            return Stored::Missing(None);
        };
        match entry.freshness() {
            Freshness::Fresh => {
                cache.metrics.saved(&cache.metrics.hits);
                Stored::Served(entry.respond(cond, head, hit_status(&entry)))
            }
            Freshness::StaleRevalidate => {
                cache.metrics.saved(&cache.metrics.stale);
                if let Some(permit) = cache.locks.try_write(&cache.lock_key(key, req.headers())) {
                    let fetch = fetch_of(
                        cache,
                        hub,
                        snapshot,
                        rule,
                        params,
                        req,
                        key.clone(),
                        client_ip,
                    );
                    if let Some(fetch) = fetch {
                        // One refresh in the background; its answer goes to the store.
                        tokio::spawn(async move {
                            let _ = fetch.fill(permit, None).await;
                        });
                    }
                }
                let over = entry.age().saturating_sub(entry.ttl).as_secs();
                let status = format!("unpoll; hit; ttl=-{over}; detail=stale-while-revalidate");
                Stored::Served(entry.respond(cond, head, status))
            }
            Freshness::StaleIfError => Stored::Missing(Some(entry)),
            Freshness::Expired => Stored::Missing(None),
        }
    }

    /// Fetch (once for all concurrent requests of the key) or wait for the one fetch.
    async fn miss(
        self,
        req: Request<Incoming>,
        key: CacheKey,
        stale: Option<Arc<Entry>>,
    ) -> Result<Response<Body>, ProxyError> {
        let Lookup {
            cache,
            hub,
            shutdown,
            snapshot,
            rule,
            params,
            client_ip,
            head,
            cond,
        } = self;
        let Some(fetch) = fetch_of(
            cache,
            hub,
            snapshot,
            rule,
            params,
            &req,
            key.clone(),
            client_ip,
        ) else {
            // A tag had no value: storing the entry untagged would let a purge miss it.
            cache.metrics.passes.inc();
            return pass(snapshot, shutdown, req, client_ip, "missing-tag").await;
        };
        cache.metrics.misses.inc();
        loop {
            // Recomputed on every turn: a fetch that came back as another variant has told
            // the store what this key varies on, so this request now waits on its own.
            match cache.locks.acquire(&cache.lock_key(&key, req.headers())) {
                Acquired::Write(permit) => {
                    // A fill of this key (or variant) may have finished between the lookup
                    // and this lock: answer from it rather than ask again.
                    if let Some(entry) = cache
                        .get(&key, req.headers())
                        .filter(|e| e.freshness() == Freshness::Fresh)
                    {
                        permit.finish(Outcome::Shared(entry.clone()));
                        cache.metrics.saved(&cache.metrics.coalesced);
                        return Ok(entry.respond(&cond, head, hit_status(&entry)));
                    }
                    let started = Instant::now();
                    return match fetch.fill(permit, stale).await {
                        Filled::Entry(entry, status) => {
                            let mut resp = entry.respond(&cond, head, status);
                            resp.extensions_mut()
                                .insert(UpstreamTime(started.elapsed()));
                            Ok(resp)
                        }
                        Filled::Response(resp) => Ok(resp),
                        Filled::Error(e) => Err(e),
                    };
                }
                Acquired::Read(lock) => match lock.wait(rule.lock_timeout).await {
                    // Another variant came back: this request's own is fetched (or waited
                    // on) next turn, or found stored by then.
                    Some(Outcome::Shared(entry)) if !entry.serves(req.headers()) => continue,
                    Some(Outcome::Shared(entry)) => {
                        cache.metrics.saved(&cache.metrics.coalesced);
                        let status = format!(
                            "unpoll; fwd=miss; fwd-status={}; collapsed",
                            entry.status.as_u16()
                        );
                        return Ok(entry.respond(&cond, head, status));
                    }
                    Some(Outcome::Failed(status, message)) => {
                        if let Some(entry) = cache
                            .get(&key, req.headers())
                            .filter(|e| e.freshness() != Freshness::Expired)
                        {
                            cache.metrics.saved(&cache.metrics.stale);
                            return Ok(entry.respond(&cond, head, stale_status(status)));
                        }
                        return Ok(error_response(status, message));
                    }
                    Some(Outcome::Pass) => {
                        cache.metrics.passes.inc();
                        return pass(snapshot, shutdown, req, client_ip, "uncacheable").await;
                    }
                    None => {
                        cache.metrics.passes.inc();
                        return pass(snapshot, shutdown, req, client_ip, "lock-timeout").await;
                    }
                    Some(Outcome::Abandoned) => continue,
                },
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn fetch_of<B>(
    cache: &Arc<Cache>,
    hub: &Hub,
    snapshot: &Arc<Snapshot>,
    rule: &CacheRule,
    params: &PathParams,
    req: &Request<B>,
    key: CacheKey,
    client_ip: IpAddr,
) -> Option<Fetch> {
    let vars = RequestVars::head(params, req.uri(), req.headers());
    let tags = rule
        .tags
        .iter()
        .map(|t| t.render(&vars))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|missing| tracing::debug!(rule = %rule.name, cause = %missing, "cache tag has no value"))
        .ok()?;
    Some(Fetch {
        cache: cache.clone(),
        hub: hub.clone(),
        snapshot: snapshot.clone(),
        rule: rule.clone(),
        key,
        uri: req.uri().clone(),
        headers: req.headers().clone(),
        tags,
        client_ip,
    })
}

/// What a fill produced for the request that made it.
enum Filled {
    /// A complete response (stored or not); the string is its `Cache-Status`.
    Entry(Arc<Entry>, String),
    /// A response to pass through as is (personal, or too large to buffer).
    Response(Response<Body>),
    /// The upstream failed and there was nothing stale to serve.
    Error(ProxyError),
}

impl Fetch {
    /// Fetch from the upstream, store if allowed, and tell the waiters.
    async fn fill(self, permit: WritePermit, stale: Option<Arc<Entry>>) -> Filled {
        let cache: &Cache = &self.cache;
        let generation = cache.generation();
        // The hub position before asking: a stream resumed from it misses nothing the
        // response could not reflect.
        let cursor = HeaderValue::from_str(&self.hub.cursor().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        let req = self.upstream_request();
        let resp = match self.snapshot.upstream.send(req).await {
            Ok(resp) => resp,
            Err(e) => {
                let err = ProxyError::Upstream(e);
                permit.finish(Outcome::Failed(err.status(), err.fixed_message()));
                return match stale {
                    Some(entry) => {
                        cache.metrics.saved(&cache.metrics.stale);
                        Filled::Entry(entry, stale_status(err.status()))
                    }
                    None => Filled::Error(err),
                };
            }
        };
        let status = resp.status();
        if status.is_server_error()
            && let Some(entry) = stale
        {
            permit.finish(Outcome::Failed(status, "upstream error"));
            cache.metrics.saved(&cache.metrics.stale);
            return Filled::Entry(entry, stale_status(status));
        }
        let fwd = if stale.is_some() { "stale" } else { "miss" };
        let resp = client_response(resp, &self.snapshot.config.proxy);
        if let Some(reason) = not_shareable(&self.rule, resp.headers()) {
            permit.finish(Outcome::Pass);
            return Filled::Response(with_status(
                resp,
                format!(
                    "unpoll; fwd={fwd}; fwd-status={}; detail={reason}",
                    status.as_u16()
                ),
            ));
        }
        let (parts, body) = resp.into_parts();
        let body = match read_limited(body, self.rule.max_body).await {
            Ok(Read::Whole(bytes)) => bytes,
            Ok(Read::TooLarge(prefix, rest)) => {
                permit.finish(Outcome::Pass);
                let resp = Response::from_parts(parts, prefixed(prefix, rest));
                return Filled::Response(with_status(
                    resp,
                    format!(
                        "unpoll; fwd={fwd}; fwd-status={}; detail=too-large",
                        status.as_u16()
                    ),
                ));
            }
            Err(e) => {
                tracing::warn!(rule = %self.rule.name, cause = %e, "upstream body failed");
                permit.finish(Outcome::Failed(
                    StatusCode::BAD_GATEWAY,
                    "upstream connection failed",
                ));
                return Filled::Response(error_response(
                    StatusCode::BAD_GATEWAY,
                    "upstream connection failed",
                ));
            }
        };
        let mut entry = Entry::new(
            &self.rule,
            status,
            parts.headers,
            body,
            generation,
            self.tags,
            cursor,
        );
        // `Vary: *` was refused as not shareable above, so the names are there.
        if let Some(names) = VaryNames::of(&entry.headers) {
            entry.variant = Variant::select(&names, &self.headers);
        }
        let entry = Arc::new(entry);
        let stored = match not_storable(&self.rule, status, &entry.headers) {
            Some(_) => "",
            None => match cache.insert(self.key, entry.clone()) {
                Ok(()) => "; stored",
                Err(NotStored::VariantsFull) => "; detail=variants-full",
                Err(_) => "",
            },
        };
        permit.finish(Outcome::Shared(entry.clone()));
        Filled::Entry(
            entry,
            format!("unpoll; fwd={fwd}; fwd-status={}{stored}", status.as_u16()),
        )
    }

    /// A GET without conditional or range headers, so the upstream answers with the full
    /// body to store, whichever client started the fill (nginx does the same).
    fn upstream_request(&self) -> Request<Body> {
        let mut req = Request::new(empty());
        *req.method_mut() = Method::GET;
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        for h in Conditions::HEADERS.iter().chain([&header::CONTENT_LENGTH]) {
            req.headers_mut().remove(h);
        }
        let (parts, body) = req.into_parts();
        upstream_request(
            &self.snapshot.upstream,
            &self.snapshot.config.proxy,
            parts,
            body,
            self.client_ip,
        )
    }
}

/// A refetch of one key on behalf of a watcher (`[[watch]]`): the same fill as a poll's
/// miss, so it coalesces with the polls of the key and its answer is the entry they read.
/// Owns what it needs, so a watcher task can keep it for its whole life (each fetch uses the
/// current snapshot's upstream; the snapshot it was built from stays allocated until the
/// watchers started under it end).
#[derive(Clone)]
pub struct Refresh(Fetch);

/// What a [`Refresh`] got.
pub enum Refreshed {
    /// The upstream's complete answer (any status), current as of the refresh's start: a
    /// fresh entry, the one this refresh filled, or the one of a fill it joined.
    Entry(Arc<Entry>),
    /// The upstream failed (refused, timed out, a broken or too large body).
    Failed(StatusCode),
}

impl Refresh {
    /// A refresh of the key of a GET for `uri` with `headers` under `rule`, filling `cache`
    /// (`hub`'s cursor goes into the entries); `None` when one of the rule's tags has no
    /// value in the request.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cache: &Arc<Cache>,
        hub: &Hub,
        snapshot: &Arc<Snapshot>,
        rule: &CacheRule,
        params: &PathParams,
        uri: &http::Uri,
        headers: &http::HeaderMap,
        client_ip: IpAddr,
    ) -> Option<Refresh> {
        // Kept for the watcher's life: copies that do not hold the client connection's
        // read buffer (see `detached`).
        let mut req = Request::new(());
        *req.uri_mut() = crate::proxy::headers::detached_uri(uri);
        *req.headers_mut() = crate::proxy::headers::detached(headers);
        let key = CacheKey::new(rule, uri, headers);
        fetch_of(cache, hub, snapshot, rule, params, &req, key, client_ip).map(Refresh)
    }

    /// The key refreshed.
    pub fn key(&self) -> &CacheKey {
        &self.0.key
    }

    /// The rendered tags of the key: a purge of one of them makes its entry stale.
    pub fn tags(&self) -> &[String] {
        &self.0.tags
    }

    /// The key's current answer: the stored entry while fresh, else one upstream fetch
    /// shared with everyone asking for the key now. A fill that started before a purge of
    /// the key's tags is not current (it may predate the change) and is not used. A fetch
    /// goes to `snapshot`'s upstream: the watcher passes the current one, so a reload since
    /// it started applies to its fetches.
    pub async fn run(&self, snapshot: Arc<Snapshot>) -> Refreshed {
        let cache = &self.0.cache;
        loop {
            if let Some(entry) = cache.get(&self.0.key, &self.0.headers)
                && entry.freshness() == Freshness::Fresh
            {
                return Refreshed::Entry(entry);
            }
            match cache.locks.acquire(&self.0.key) {
                Acquired::Write(permit) => {
                    let mut fetch = self.0.clone();
                    fetch.snapshot = snapshot;
                    return match fetch.fill(permit, None).await {
                        Filled::Entry(entry, _) => Refreshed::Entry(entry),
                        Filled::Error(err) => Refreshed::Failed(err.status()),
                        Filled::Response(resp) => self.unshared(resp).await,
                    };
                }
                Acquired::Read(lock) => match lock.wait(self.0.rule.lock_timeout).await {
                    Some(Outcome::Shared(entry)) if cache.is_current(&entry) => {
                        return Refreshed::Entry(entry);
                    }
                    Some(Outcome::Failed(status, _)) => return Refreshed::Failed(status),
                    // Personal, stale or abandoned: fetch again, as the writer this time
                    // unless another fill started meanwhile.
                    Some(Outcome::Shared(_) | Outcome::Pass | Outcome::Abandoned) | None => {
                        continue;
                    }
                },
            }
        }
    }

    /// A response the cache may not share (Set-Cookie, `private`, Vary) or that passed
    /// because it is larger than `max_body`: read it for this key's watcher alone.
    async fn unshared(&self, resp: Response<Body>) -> Refreshed {
        let (parts, body) = resp.into_parts();
        match read_limited(body, self.0.rule.max_body).await {
            Ok(Read::Whole(bytes)) => Refreshed::Entry(Arc::new(Entry::new(
                &self.0.rule,
                parts.status,
                parts.headers,
                bytes,
                0,
                Vec::new(),
                HeaderValue::from_static(""),
            ))),
            Ok(Read::TooLarge(..)) => {
                tracing::warn!(rule = %self.0.rule.name, max_body = self.0.rule.max_body, "body larger than max_body: not watched");
                Refreshed::Failed(StatusCode::BAD_GATEWAY)
            }
            Err(e) => {
                tracing::warn!(rule = %self.0.rule.name, cause = %e, "upstream body failed");
                Refreshed::Failed(StatusCode::BAD_GATEWAY)
            }
        }
    }
}

/// Forward without the cache.
async fn pass(
    snapshot: &Snapshot,
    shutdown: &CancellationToken,
    req: Request<Incoming>,
    client_ip: IpAddr,
    why: &str,
) -> Result<Response<Body>, ProxyError> {
    let resp = snapshot.proxy(req, client_ip, shutdown).await?;
    Ok(with_status(
        resp,
        format!("unpoll; fwd=bypass; detail={why}"),
    ))
}

fn with_status(mut resp: Response<Body>, status: String) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(&status) {
        resp.headers_mut().insert(&CACHE_STATUS, v);
    }
    resp.headers_mut().remove(&UNPOLL_CURSOR);
    resp
}

fn hit_status(entry: &Entry) -> String {
    let ttl = entry.ttl.saturating_sub(entry.age()).as_secs();
    format!("unpoll; hit; ttl={ttl}")
}

fn stale_status(upstream: StatusCode) -> String {
    format!(
        "unpoll; fwd=stale; fwd-status={}; detail=stale-if-error",
        upstream.as_u16()
    )
}

enum Read {
    Whole(Bytes),
    TooLarge(Vec<Bytes>, Body),
}

/// Read `body` whole if it is at most `max` bytes; otherwise return what was read and the rest.
async fn read_limited(mut body: Body, max: usize) -> Result<Read, BoxError> {
    let mut buf = BytesMut::new();
    let mut chunks = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers are not stored
        };
        if buf.len() + data.len() > max {
            chunks.push(buf.freeze());
            chunks.push(data);
            return Ok(Read::TooLarge(chunks, body));
        }
        buf.extend_from_slice(&data);
    }
    Ok(Read::Whole(buf.freeze()))
}

/// The chunks already read, then the rest of the body, streamed.
fn prefixed(prefix: Vec<Bytes>, rest: Body) -> Body {
    let head = futures_util::stream::iter(
        prefix
            .into_iter()
            .map(|b| Ok::<_, BoxError>(Frame::data(b))),
    );
    let tail = rest.into_data_stream().map(|r| r.map(Frame::data));
    StreamBody::new(head.chain(tail)).boxed_unsync()
}
