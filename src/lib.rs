//! unpoll: a reverse-proxy sidecar that turns browser polling into push.
//!
//! It sits in front of a legacy web app, proxies everything like nginx would, and — from one
//! TOML file — caches and coalesces polling endpoints, turns webhooks, mutations and Postgres
//! notifications into Server-Sent Events, and converts polling endpoints into streams.
//!
//! # Layout
//!
//! From the top down; a module imports only modules below it (`.ci/acyclic` checks it).
//!
//! - [`app`]: the composition root. [`App`] builds the metrics, then the parts that own
//!   them, then the [`handles`]; it swaps the config [`snapshot`] on reload and starts the
//!   sources. Only `lib.rs`, `main.rs`, [`server`] and [`demo`] see it.
//! - [`demo`]: `unpoll demo`, a built-in polling chat app with unpoll in front of it (a
//!   composition like `main.rs`).
//! - [`server`]: accept loop, connection limits and timeouts, graceful shutdown, process
//!   signals (`server/signals.rs`); the first request head of each connection is read here,
//!   and HTTP/1.1 event streams are written outside hyper (`server/direct_sse.rs`); the
//!   connection's life (hyper, a stream handed off from it, an upgraded WebSocket) and the
//!   invariants the hand-off relies on are in `server/handoff.rs`; TLS handshakes (ALPN
//!   picks the connection's first state) and the `tls.redirect_http` listener are in
//!   `server/tls.rs`.
//! - [`admin`]: health, readiness ([`admin::readiness`], reported by the sources), metrics,
//!   stats, publish, purge, and the live dashboard (`admin/dashboard.rs`, its stats stream
//!   `admin/live.rs`); served from [`admin::AdminHandles`].
//! - [`routing`]: a request's life (`routing/handler.rs`): route, then one `match` on the
//!   action, each arm taking the narrow handles it uses.
//! - [`sources`]: event sources (Postgres LISTEN/NOTIFY and outbox, MQTT), given
//!   [`sources::SourceHandles`].
//! - [`cluster`]: `[cluster]`: several instances share channels, ids, history and purges
//!   through Redis (pub/sub for the live path, streams for history); publishers reach it
//!   through its sink ([`cluster::ClusterSink`]), consumers run under its leases, and
//!   `[[stream]] limits.per_channel` counts every instance's subscribers through it
//!   (`auth::SharedCounts`).
//! - [`stream`]: `[[stream]]` rules (SSE endpoints, and WebSockets at the same paths:
//!   `stream/websocket.rs`) and `/_unpoll/multi` (several streams, each gated as if alone,
//!   on one response); [`tap`]: `[[tap]]` rules (publish on a 2xx
//!   answer to a webhook or mutation); [`cache`]: `[[cache]]` rules: per-user keys,
//!   variants by the app's `Vary`, coalescing, stale serving, tag purge.
//! - [`watch`]: `[[watch]]` rules: a polling GET that is also a stream of its body; one
//!   watcher per cache key refetches it (interval, tag purge, source gap) through the
//!   cache's coalescing fill and pushes the body when it changed. Given
//!   [`watch::WatchHandles`]; purges reach it through the sink. [`watch::inject`] adds
//!   the browser client to the app's HTML pages for `inject = true` rules.
//! - [`handles`]: the long-lived parts a handler may take (hub, cache, sink, metrics,
//!   shutdown, watchers); [`sink`]: the [`sink::Sink`] every publisher delivers through
//!   (sources, taps, the publish API) and [`sink::HubSink`] over the hub, the cache and the
//!   watchers.
//! - [`snapshot`]: the compiled config a request reads start to end: validated config,
//!   route table, upstream client, JWT verifier.
//! - [`auth`]: who may subscribe to a stream (upstream, JWT) and per-rule limits.
//! - [`proxy`]: forwarding to the upstream (`proxy/forward.rs`), headers, upgrades, errors
//!   and their responses; the upstream keep-alive pool (`proxy/pool.rs`).
//! - [`hub`]: channels, history and replay, subscriber queues; [`sse`]: the SSE wire
//!   format, the response body that streams a subscription, and the connection abort a
//!   stream ends its HTTP/1 connection with.
//! - [`client`]: the browser client (`/_unpoll/client.js`), served from the binary.
//! - [`config`]: the TOML file → an immutable, validated [`Config`]; every error with its
//!   key path. Each concern's own section lives in its `config.rs`.
//! - [`tls`]: `[tls]`: the certificate pair (read and checked at config validation,
//!   swapped on reload) and the rustls server config of the main listener.
//! - [`route`], [`template`]: path patterns and templates shared by every rule kind;
//!   [`body`], [`metrics`], [`logging`]: response bodies and observability.
//!
//! Tests start the real server with [`run`] on port-0 listeners.
//!
//! # Visibility
//!
//! The library's public face is what `main.rs`, the integration tests in `tests/` and the
//! benchmark tools name: [`run`], [`Listeners`], [`App`], [`Config`], and the modules
//! `admin`, `auth`, `config`, `demo`, `hub`, `logging`, `proxy`, `route`, `server`,
//! `sources`, `sse` and `stream`, each exporting only the parts those name. Everything else
//! is `pub(crate)`, so the compiler reports code nothing uses. This map links to private
//! modules: read it with `cargo doc --document-private-items`.
#![forbid(unsafe_code)]
// The map above and the module docs are for contributors and link to crate-private items.
#![allow(rustdoc::private_intra_doc_links)]

pub mod admin;
pub(crate) mod app;
pub mod auth;
pub(crate) mod body;
pub(crate) mod cache;
pub(crate) mod client;
pub(crate) mod cluster;
pub mod config;
pub mod demo;
pub(crate) mod handles;
pub mod hub;
pub mod logging;
pub(crate) mod metrics;
pub mod proxy;
pub mod route;
pub(crate) mod routing;
pub mod server;
pub(crate) mod sink;
pub(crate) mod snapshot;
pub mod sources;
pub mod sse;
pub mod stream;
pub(crate) mod tap;
pub(crate) mod template;
pub(crate) mod tls;
pub(crate) mod watch;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

pub use app::App;
pub use config::Config;

/// The listening sockets of an instance.
pub struct Listeners {
    /// App traffic (TLS when `[tls]` is configured).
    pub main: TcpListener,
    /// Admin endpoints (always plain HTTP: keep it on loopback).
    pub admin: TcpListener,
    /// `tls.redirect_http`: plain HTTP answered with redirects to https.
    pub redirect: Option<TcpListener>,
}

impl Listeners {
    /// Bind the addresses of `config`.
    pub async fn bind(config: &Config) -> io::Result<Listeners> {
        let main = listen(config.listen)
            .map_err(|e| io::Error::new(e.kind(), format!("listen {}: {e}", config.listen)))?;
        let admin = listen(config.admin.listen).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("admin.listen {}: {e}", config.admin.listen),
            )
        })?;
        let redirect =
            match config.tls.as_ref().and_then(|t| t.redirect_http) {
                None => None,
                Some(addr) => Some(listen(addr).map_err(|e| {
                    io::Error::new(e.kind(), format!("tls.redirect_http {addr}: {e}"))
                })?),
            };
        Ok(Listeners {
            main,
            admin,
            redirect,
        })
    }

    /// The bound address of `tls.redirect_http`, if configured.
    pub fn redirect_addr(&self) -> io::Result<Option<SocketAddr>> {
        self.redirect.as_ref().map(|l| l.local_addr()).transpose()
    }

    /// The bound addresses (main, admin): useful with port 0.
    pub fn local_addrs(&self) -> io::Result<(SocketAddr, SocketAddr)> {
        Ok((self.main.local_addr()?, self.admin.local_addr()?))
    }
}

/// Pending connections the kernel may queue before accept(). std's default of 128 drops SYNs
/// under a burst of new connections (hundreds of tabs reconnecting at once), which costs
/// clients a 1 s retransmit; the kernel caps this at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // Restarting unpoll must not fail on connections of the previous process in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serve until `app.handles.shutdown` is cancelled, then stop accepting, let in-flight requests
/// finish within `proxy.shutdown_grace`, and return.
pub async fn run(listeners: Listeners, app: Arc<App>) {
    let sink = app.sink();
    run_with_sink(listeners, app, sink).await
}

/// [`run`], with the sources delivering to `sink` instead of this instance's hub and cache
/// (tests record what a source delivers).
pub async fn run_with_sink(listeners: Listeners, app: Arc<App>, sink: Arc<dyn sources::Sink>) {
    let sources = app.start_sources(sink);
    let tasks = TaskTracker::new();
    // Redirects name the port the main listener is bound to (port 0 resolved).
    let https_port = listeners
        .main
        .local_addr()
        .map_or(app.snapshot().config.listen.port(), |a| a.port());
    let main = tokio::spawn(server::serve(
        listeners.main,
        server::Listener::Main,
        app.clone(),
        tasks.clone(),
    ));
    let handles = &app.handles;
    let sweeper = tokio::spawn(handles.hub.clone().run_sweeper(handles.shutdown.clone()));
    let sampler = tokio::spawn(admin::live::run_sampler(app.admin()));
    let cluster = app
        .cluster
        .clone()
        .map(|cluster| tokio::spawn(cluster.run(handles.shutdown.clone())));
    let admin = tokio::spawn(server::serve(
        listeners.admin,
        server::Listener::Admin,
        app.clone(),
        tasks.clone(),
    ));
    let redirect = listeners.redirect.map(|listener| {
        let serve = server::serve_redirects(listener, https_port, app.clone(), tasks.clone());
        tokio::spawn(serve)
    });
    app.handles.shutdown.cancelled().await;
    if let Some(redirect) = redirect {
        let _ = redirect.await;
    }
    // The accept loops return as soon as they see the cancellation; dropping their
    // listeners refuses new connections from here on.
    let _ = tokio::join!(main, admin, sweeper, sampler);
    if let Some(cluster) = cluster {
        let _ = cluster.await;
    }
    // Sources stop on the same cancellation; wait so none publishes after run returns.
    for source in sources {
        let _ = source.await;
    }
    tasks.close();
    let grace = app.snapshot().config.proxy.shutdown_grace;
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        tracing::warn!(
            grace = ?grace,
            open = tasks.len(),
            "shutdown grace period over; closing the remaining connections"
        );
    }
}
