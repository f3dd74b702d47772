//! unpoll: a reverse-proxy sidecar that turns browser polling into push.
//!
//! It sits in front of a legacy web app, proxies everything like nginx would, and — from one
//! TOML file — caches and coalesces polling endpoints, turns webhooks, mutations and Postgres
//! notifications into Server-Sent Events, and converts polling endpoints into streams.
//!
//! # Layout
//!
//! - [`config`]: the TOML file → an immutable, validated [`Config`]; every error with its
//!   key path.
//! - [`app`]: the running instance: the config snapshot swapped on reload (arc-swap),
//!   metrics, readiness, shutdown.
//! - [`server`]: accept loop, connection limits and timeouts, graceful shutdown; the first
//!   request head of each connection is read here, and HTTP/1.1 event streams are written
//!   outside hyper (`server/direct_sse.rs`).
//! - [`proxy`]: a request's life (`proxy/handler.rs`): route, then one `match` on the
//!   action; forwarding, headers, upgrades, errors; the upstream keep-alive pool
//!   (`proxy/pool.rs`).
//! - [`admin`]: health, readiness, metrics, stats, publish, purge.
//! - [`cache`]: `[[cache]]` rules: per-user keys, coalescing, stale serving, tag purge.
//! - [`auth`]: who may subscribe to a stream (upstream, JWT) and per-rule limits.
//! - [`sources`]: event sources (Postgres LISTEN/NOTIFY and outbox, MQTT) behind a `Sink`.
//! - [`cluster`]: `[cluster]`: several instances share channels, ids, history and purges
//!   through Redis (pub/sub for the live path, streams for history).
//! - [`hub`]: channels, history and replay, subscriber queues; [`sse`]: the SSE wire
//!   format and the response body that streams a subscription.
//! - [`stream`]: `[[stream]]` rules (SSE endpoints) and `/_unpoll/multi` (several streams,
//!   each gated as if alone, on one response); [`tap`]: `[[tap]]` rules (publish on a 2xx
//!   answer to a webhook or mutation).
//! - [`client`]: the browser client (`/_unpoll/client.js`), served from the binary.
//! - [`route`], [`template`]: path patterns and templates shared by every rule kind.
//! - [`metrics`], [`logging`], [`signals`]: observability and process control.
//!
//! Tests start the real server with [`run`] on port-0 listeners.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod body;
pub mod cache;
pub mod client;
pub mod cluster;
pub mod config;
pub mod hub;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod route;
pub mod server;
pub mod signals;
pub mod sources;
pub mod sse;
pub mod stream;
pub mod tap;
pub mod template;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

pub use app::App;
pub use config::Config;

/// The two listening sockets of an instance.
pub struct Listeners {
    /// App traffic.
    pub main: TcpListener,
    /// Admin endpoints.
    pub admin: TcpListener,
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
        Ok(Listeners { main, admin })
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

/// Serve until `app.shutdown` is cancelled, then stop accepting, let in-flight requests
/// finish within `proxy.shutdown_grace`, and return.
pub async fn run(listeners: Listeners, app: Arc<App>) {
    let sink = sources::AppSink::new(&app);
    run_with_sink(listeners, app, sink).await
}

/// [`run`], with the sources delivering to `sink` instead of this instance's hub and cache
/// (tests record what a source delivers).
pub async fn run_with_sink(listeners: Listeners, app: Arc<App>, sink: Arc<dyn sources::Sink>) {
    let sources = sources::start(&app, sink);
    let tasks = TaskTracker::new();
    let main = tokio::spawn(server::serve(
        listeners.main,
        server::Listener::Main,
        app.clone(),
        tasks.clone(),
    ));
    let sweeper = tokio::spawn(app.hub.clone().run_sweeper(app.shutdown.clone()));
    let cluster = app
        .cluster
        .clone()
        .map(|cluster| tokio::spawn(cluster.run(app.clone())));
    let admin = tokio::spawn(server::serve(
        listeners.admin,
        server::Listener::Admin,
        app.clone(),
        tasks.clone(),
    ));
    app.shutdown.cancelled().await;
    // The accept loops return as soon as they see the cancellation; dropping their
    // listeners refuses new connections from here on.
    let _ = tokio::join!(main, admin, sweeper);
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
