//! TLS on the main listener: the handshake, whose ALPN result picks the connection's first
//! state, and the plain listener of `tls.redirect_http`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::task::TaskTracker;

use super::first_request::Rewind;
use super::handoff::Life;
use crate::app::App;
use crate::body::Body;
use crate::metrics::HandshakeLabels;
use crate::tls::Tls;
use crate::tls::config::DEFAULT_HANDSHAKE_TIMEOUT;

/// Complete the TLS handshake of a new main-listener connection within
/// `tls.handshake_timeout`. ALPN `h2` goes straight to hyper's HTTP/2; anything else
/// (`http/1.1`, or no ALPN) starts like a plain connection, with its first request head
/// read by unpoll. `None`: the handshake failed, timed out, or unpoll is shutting down.
pub(super) async fn handshake<S>(
    io: S,
    tls: &Tls,
    peer: SocketAddr,
    app: &App,
) -> Option<Life<TlsStream<S>>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let timeout = app
        .snapshot()
        .config
        .tls
        .as_ref()
        .map_or(DEFAULT_HANDSHAKE_TIMEOUT, |t| t.handshake_timeout);
    let accept = TlsAcceptor::from(tls.server_config()).accept(io);
    let done = tokio::select! {
        done = tokio::time::timeout(timeout, accept) => done,
        _ = app.handles.shutdown.cancelled() => return None,
    };
    let count = |result| {
        app.handles
            .metrics
            .tls_handshakes
            .get_or_create(&HandshakeLabels { result })
            .inc();
    };
    let stream = match done {
        Err(_) => {
            count("timeout");
            tracing::debug!(peer = %peer, "TLS handshake timed out");
            return None;
        }
        Ok(Err(e)) => {
            count("failed");
            tracing::debug!(peer = %peer, cause = %e, "TLS handshake failed");
            return None;
        }
        Ok(Ok(stream)) => stream,
    };
    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        count("h2");
        return Some(Life::Hyper {
            io: Rewind::new(Bytes::new(), stream),
            http2: true,
        });
    }
    count("http1");
    Some(Life::FirstHead(stream))
}

/// Connections the redirect listener serves at once; past it, new ones wait in the kernel
/// backlog. Each answers one request and closes, so few are open at any time.
const MAX_REDIRECT_CONNECTIONS: usize = 1024;

/// Answer every request on `listener` with `308` to the same host and path over https on
/// `https_port` (the main listener's), one request per connection, until shutdown.
pub async fn serve_redirects(
    listener: TcpListener,
    https_port: u16,
    app: Arc<App>,
    tasks: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(MAX_REDIRECT_CONNECTIONS));
    while let Some((permit, stream, peer)) =
        super::accept(&listener, &slots, &app.handles.shutdown, "redirect").await
    {
        let header_read_timeout = app.snapshot().config.proxy.header_read_timeout;
        let shutdown = app.handles.shutdown.clone();
        tasks.spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| async move {
                Ok::<_, Infallible>(redirect(&req, https_port))
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                res = conn => if let Err(e) = res {
                    tracing::debug!(peer = %peer, cause = %e, "redirect connection failed");
                },
                _ = shutdown.cancelled() => {}
            }
            drop(permit);
        });
    }
}

/// `308 Permanent Redirect` to `https://HOST[:PORT]/path?query`: the request's host
/// without its port, and the main listener's port unless it is 443. A request without a
/// usable `Host` gets `400`.
fn redirect(req: &Request<Incoming>, https_port: u16) -> Response<Body> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .map(|a| a.host().to_string())
        .or_else(|| req.uri().host().map(str::to_string));
    let Some(host) = host else {
        return crate::admin::text(StatusCode::BAD_REQUEST, "a Host header is required\n");
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = if https_port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{https_port}{path}")
    };
    let mut resp = crate::admin::text(StatusCode::PERMANENT_REDIRECT, "");
    match http::HeaderValue::try_from(location) {
        Ok(value) => {
            resp.headers_mut().insert(header::LOCATION, value);
            resp
        }
        Err(_) => crate::admin::text(StatusCode::BAD_REQUEST, "invalid Host header\n"),
    }
}
