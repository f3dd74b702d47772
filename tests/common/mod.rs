//! The shared test harness: the real unpoll on port 0 in front of real upstream servers.
//!
//! ```ignore
//! let upstream = Upstream::builder().route("/hello", "hi").run().await;
//! let unpoll = Unpoll::start(&upstream.url(), "").await;
//! let body = reqwest::get(unpoll.url("/hello")).await?.text().await?;
//! ```
#![allow(dead_code, unused_imports)] // each test binary uses its own part of the harness

pub mod auth;
pub mod mqtt;
pub mod pg;
pub mod process;
pub mod redis;
pub mod sse;
pub mod tls;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use upstream::{Recorded, Upstream};

/// A running unpoll instance, in this process.
pub struct Unpoll {
    /// Main listener address.
    pub addr: SocketAddr,
    /// Admin listener address.
    pub admin: SocketAddr,
    /// The `tls.redirect_http` listener's address, when configured.
    pub redirect: Option<SocketAddr>,
    /// The instance, for reloads and direct inspection.
    pub app: Arc<unpoll::App>,
    task: Option<JoinHandle<()>>,
}

impl Unpoll {
    /// Start unpoll in front of `upstream` with extra config (top-level keys first, then
    /// tables). Main and admin listen on 127.0.0.1:0 unless `extra` has an `[admin]` table
    /// (then it must set `listen = "127.0.0.1:0"` itself).
    pub async fn start(upstream: &str, extra: &str) -> Unpoll {
        let text = config_text(upstream, extra);
        let config = unpoll::config::parse(&text, &|name| std::env::var(name).ok())
            .unwrap_or_else(|e| panic!("test config is invalid:\n{e}\n---\n{text}"));
        Unpoll::start_config(config).await
    }

    /// Start unpoll from a validated config (listen addresses are taken from it).
    pub async fn start_config(config: unpoll::Config) -> Unpoll {
        let listeners = unpoll::Listeners::bind(&config).await.expect("bind port 0");
        let (addr, admin) = listeners.local_addrs().expect("local addrs");
        let redirect = listeners.redirect_addr().expect("redirect addr");
        let app = unpoll::App::new(config, CancellationToken::new());
        let task = tokio::spawn(unpoll::run(listeners, app.clone()));
        Unpoll {
            addr,
            admin,
            redirect,
            app,
            task: Some(task),
        }
    }

    /// Start like [`Unpoll::start`], with sources delivering to `sink` instead of the
    /// instance's hub and cache.
    pub async fn start_with_sink(
        upstream: &str,
        extra: &str,
        sink: Arc<dyn unpoll::sources::Sink>,
    ) -> Unpoll {
        let text = config_text(upstream, extra);
        let config = unpoll::config::parse(&text, &|name| std::env::var(name).ok())
            .unwrap_or_else(|e| panic!("test config is invalid:\n{e}\n---\n{text}"));
        let listeners = unpoll::Listeners::bind(&config).await.expect("bind port 0");
        let (addr, admin) = listeners.local_addrs().expect("local addrs");
        let app = unpoll::App::new(config, CancellationToken::new());
        let task = tokio::spawn(unpoll::run_with_sink(listeners, app.clone(), sink));
        Unpoll {
            addr,
            admin,
            redirect: None,
            app,
            task: Some(task),
        }
    }

    /// `http://127.0.0.1:PORT{path}` on the main listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `https://127.0.0.1:PORT{path}` on the main listener (with `[tls]`).
    pub fn https_url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// `http://127.0.0.1:PORT{path}` on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Reload with a new config text (same rules as [`Unpoll::start`]).
    pub fn reload(&self, upstream: &str, extra: &str) -> Vec<String> {
        let text = config_text(upstream, extra);
        let config = unpoll::config::parse(&text, &|name| std::env::var(name).ok())
            .unwrap_or_else(|e| panic!("test config is invalid:\n{e}"));
        self.app.reload(config)
    }

    /// Shut down and wait for the drain to finish.
    pub async fn stop(mut self) {
        self.app.handles.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("unpoll task panicked");
        }
    }

    /// The rendered `/metrics` text.
    pub async fn metrics(&self) -> String {
        get_text(&self.admin_url("/metrics")).await
    }

    /// The admin `/stats` JSON.
    pub async fn stats(&self) -> serde_json::Value {
        serde_json::from_str(&get_text(&self.admin_url("/stats")).await).expect("stats JSON")
    }
}

impl Drop for Unpoll {
    fn drop(&mut self) {
        self.app.handles.shutdown.cancel();
    }
}

fn config_text(upstream: &str, extra: &str) -> String {
    let mut text = format!("listen = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n{extra}\n");
    if !extra.contains("[admin]") {
        text.push_str("[admin]\nlisten = \"127.0.0.1:0\"\n");
    }
    text
}

/// Wait until `check` returns true, polling every 10 ms, or panic after `timeout` with
/// `what` in the message.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A reqwest client builder. reqwest's rustls (for `tests/tls.rs`) is built without a
/// crypto provider, to use ring as unpoll does rather than aws-lc's C build: every client
/// then needs the process-wide provider installed first, TLS or not.
pub fn reqwest_builder() -> reqwest::ClientBuilder {
    tls::install_ring();
    reqwest::Client::builder()
}

/// A reqwest client without a proxy from the environment and without connection reuse
/// surprises.
pub fn client() -> reqwest::Client {
    reqwest_builder()
        .no_proxy()
        .build()
        .expect("reqwest client")
}

/// The body of `GET url` as text, whatever the status; panics if the request fails.
pub async fn get_text(url: &str) -> String {
    client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("body of GET {url}: {e}"))
}

/// The value of a metric line `name{labels} value` in Prometheus text, or 0.
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Read from `stream` until what was read contains `needle`; panics on EOF or after
/// `timeout`. Returns everything read.
pub async fn read_until(
    stream: &mut tokio::net::TcpStream,
    needle: &str,
    timeout: Duration,
) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while !out.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "EOF before {needle:?}: {:?}",
                String::from_utf8_lossy(&out)
            );
            out.extend_from_slice(&buf[..n]);
        }
    };
    if tokio::time::timeout(timeout, read).await.is_err() {
        panic!("timed out waiting for {needle:?}");
    }
    String::from_utf8_lossy(&out).into_owned()
}
