//! Forwarding one request to the upstream, like nginx `proxy_pass`: bodies stream both ways,
//! hop-by-hop headers are dropped, `X-Forwarded-*` added, upgrades (WebSocket) tunnelled.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use super::config::ProxyConfig;
use super::error::ProxyError;
use super::headers::{add_forwarded, is_upgrade, strip_hop_by_hop};
use super::pool::PooledBody;
use super::upstream::UpstreamClient;
use crate::body::{Body, boxed, empty};

static VIA: HeaderValue = HeaderValue::from_static("1.1 unpoll");

/// Turn a client request into the request sent upstream: absolute URI under the upstream's
/// base path, HTTP/1.1, hop-by-hop headers removed, `X-Forwarded-*` added, Host preserved
/// or replaced as configured.
pub fn upstream_request(
    client: &UpstreamClient,
    config: &ProxyConfig,
    mut parts: http::request::Parts,
    body: Body,
    client_ip: IpAddr,
) -> Request<Body> {
    let upgrade = is_upgrade(&parts.headers) && parts.version == Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers, upgrade);
    // HTTP/2 requests carry the host in the URI (`:authority`), not in a Host header.
    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    add_forwarded(
        &mut parts.headers,
        client_ip,
        host.as_ref(),
        config.client_tls,
    );
    let host = if config.preserve_host { host } else { None };
    let host = host.or_else(|| HeaderValue::from_str(client.authority().as_str()).ok());
    if let Some(host) = host {
        parts.headers.insert(header::HOST, host);
    }
    if config.via {
        parts.headers.append(header::VIA, VIA.clone());
    }
    parts.uri = client.uri_for(parts.uri.path_and_query());
    // hyper sends a GET (HEAD, CONNECT) body of unknown length as no body at all unless
    // the framing is asked for; a Content-Length body is forwarded, so this one is too.
    if !body.is_end_stream()
        && body.size_hint().exact().is_none()
        && !parts.headers.contains_key(header::CONTENT_LENGTH)
    {
        parts.headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    // The upstream speaks HTTP/1.1 whatever the client spoke.
    parts.version = Version::HTTP_11;
    Request::from_parts(parts, body)
}

/// Clean an upstream response for the client: hop-by-hop headers removed, `Via` added when
/// configured.
pub fn client_response(mut resp: Response<PooledBody>, config: &ProxyConfig) -> Response<Body> {
    strip_hop_by_hop(resp.headers_mut(), false);
    if config.via {
        resp.headers_mut().append(header::VIA, VIA.clone());
    }
    resp.map(boxed)
}

/// Forward `req` to the upstream and stream the answer back. Upgrade requests that the
/// upstream accepts with 101 are tunnelled byte for byte until either side closes or unpoll
/// shuts down.
pub async fn forward(
    client: &UpstreamClient,
    config: &ProxyConfig,
    mut req: Request<Incoming>,
    client_ip: IpAddr,
    shutdown: &CancellationToken,
) -> Result<Response<Body>, ProxyError> {
    let upgrade = is_upgrade(req.headers()) && req.version() == Version::HTTP_11;
    let client_side = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let upstream_req = upstream_request(client, config, parts, boxed(body), client_ip);
    let mut resp = client.send(upstream_req).await?;

    let Some(client_side) = client_side else {
        return Ok(client_response(resp, config));
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(client_response(resp, config));
    }
    let upstream_side = hyper::upgrade::on(&mut resp);
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let (client_io, upstream_io) = match tokio::try_join!(client_side, upstream_side) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(cause = %e, "upgrade did not complete");
                return;
            }
        };
        let mut client_io = TokioIo::new(client_io);
        let mut upstream_io = TokioIo::new(upstream_io);
        tokio::select! {
            res = tokio::io::copy_bidirectional(&mut client_io, &mut upstream_io) => {
                if let Err(e) = res {
                    tracing::debug!(cause = %e, "upgraded connection ended with an error");
                }
            }
            _ = shutdown.cancelled() => {}
        }
    });
    let (mut parts, _) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, true);
    Ok(Response::from_parts(parts, empty()))
}

/// Time the upstream took to answer, attached to a response by [`proxy`] for the access log.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTime(pub Duration);

/// Forward to the upstream unchanged ([`forward`]), noting its response time for the access
/// log when `access_log` is on.
pub async fn proxy(
    client: &UpstreamClient,
    config: &ProxyConfig,
    access_log: bool,
    req: Request<Incoming>,
    client_ip: IpAddr,
    shutdown: &CancellationToken,
) -> Result<Response<Body>, ProxyError> {
    let started = Instant::now();
    let mut resp = forward(client, config, req, client_ip, shutdown).await?;
    // For the access log only; an extension allocates the response's extension map.
    if access_log {
        resp.extensions_mut()
            .insert(UpstreamTime(started.elapsed()));
    }
    Ok(resp)
}
