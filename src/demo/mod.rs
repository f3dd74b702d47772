//! `unpoll demo`: a built-in polling chat app on a loopback port with unpoll in front of it,
//! configured from one TOML text ([`CONFIG`], what `unpoll demo --print-config` prints), so
//! a newcomer sees polling turn into push with no app and no config file of their own.

pub(crate) mod legacy;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::{self, Config, ConfigErrors};
use crate::{Listeners, run};
pub use legacy::Chat;

/// The demo's unpoll config, with the default addresses: also a starting point for a real
/// app.
pub const CONFIG: &str = include_str!("unpoll.toml");

/// The lines of [`CONFIG`] that [`config_text`] replaces with the addresses in use.
const LISTEN_LINE: &str = "listen   = \"127.0.0.1:8080\"";
const UPSTREAM_LINE: &str = "upstream = \"http://127.0.0.1:8000\"";
const ADMIN_LISTEN_LINE: &str = "listen = \"127.0.0.1:9090\"";

/// The main listener's default address (`--listen`).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The admin listener's default address (`--admin`).
pub const DEFAULT_ADMIN: &str = crate::admin::config::DEFAULT_ADMIN_LISTEN;
/// The upstream written by `--print-config`: where a real app usually listens.
pub const DEFAULT_UPSTREAM: &str = "http://127.0.0.1:8000";

/// Why the demo cannot start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// An address is taken or not ours; the message names the listener and address.
    #[error("cannot bind {0} (choose other addresses with --listen and --admin)")]
    Bind(io::Error),
    /// The embedded config does not validate with these addresses (an admin address off
    /// loopback needs a token the demo does not set).
    #[error("the demo's config does not validate with these addresses:\n{0}")]
    Config(ConfigErrors),
}

/// [`CONFIG`] with these addresses in place of the defaults.
pub fn config_text(listen: SocketAddr, admin: SocketAddr, upstream: &str) -> String {
    CONFIG
        .replacen(LISTEN_LINE, &format!("listen   = \"{listen}\""), 1)
        .replacen(UPSTREAM_LINE, &format!("upstream = \"{upstream}\""), 1)
        .replacen(ADMIN_LISTEN_LINE, &format!("listen = \"{admin}\""), 1)
}

/// A bound demo: the chat app, unpoll's two listeners and the instance, not serving yet.
pub struct Demo {
    /// The unpoll instance in front of the chat.
    pub app: Arc<App>,
    /// The chat app's state (its request counter shows what unpoll saves).
    pub chat: Arc<Chat>,
    /// The chat through unpoll.
    pub main: SocketAddr,
    /// unpoll's admin listener: the dashboard.
    pub admin: SocketAddr,
    /// The chat app itself (loopback, port chosen by the OS).
    pub upstream: SocketAddr,
    listeners: Listeners,
    chat_listener: TcpListener,
}

impl Demo {
    /// Bind the chat app on a free loopback port and unpoll on `listen` and `admin`.
    pub async fn bind(
        listen: SocketAddr,
        admin: SocketAddr,
        shutdown: CancellationToken,
    ) -> Result<Demo, DemoError> {
        let named =
            |e: io::Error| DemoError::Bind(io::Error::new(e.kind(), format!("demo app: {e}")));
        let chat_listener = TcpListener::bind(("127.0.0.1", 0)).await.map_err(named)?;
        let upstream = chat_listener.local_addr().map_err(named)?;
        let config = demo_config(listen, admin, upstream)?;
        let listeners = Listeners::bind(&config).await.map_err(DemoError::Bind)?;
        let (main, admin) = listeners.local_addrs().map_err(DemoError::Bind)?;
        Ok(Demo {
            app: App::new(config, shutdown),
            chat: Arc::new(Chat::default()),
            main,
            admin,
            upstream,
            listeners,
            chat_listener,
        })
    }

    /// Serve the chat and unpoll until the instance's shutdown token is cancelled.
    pub async fn run(self) {
        let chat = tokio::spawn(legacy::serve(
            self.chat_listener,
            self.chat,
            self.app.handles.shutdown.clone(),
        ));
        run(self.listeners, self.app).await;
        let _ = chat.await;
    }
}

fn demo_config(
    listen: SocketAddr,
    admin: SocketAddr,
    upstream: SocketAddr,
) -> Result<Config, DemoError> {
    let text = config_text(listen, admin, &format!("http://{upstream}"));
    // No ${VAR} in the demo's text: the environment is not consulted.
    config::parse(&text, &|_| None).map_err(DemoError::Config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_config_is_valid_and_every_address_is_replaced() {
        for line in [LISTEN_LINE, UPSTREAM_LINE, ADMIN_LISTEN_LINE] {
            assert_eq!(CONFIG.matches(line).count(), 1, "{line}");
        }
        let listen: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let admin: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let upstream: SocketAddr = "127.0.0.1:3".parse().unwrap();
        let config = demo_config(listen, admin, upstream).unwrap();
        assert_eq!(config.listen, listen);
        assert_eq!(config.admin.listen, admin);
        assert_eq!(config.upstream.to_string(), "http://127.0.0.1:3");
        assert_eq!(
            (
                config.watches.len(),
                config.caches.len(),
                config.taps.len(),
                config.streams.len()
            ),
            (1, 0, 1, 1)
        );
        let watch = &config.watches[0];
        assert_eq!(watch.interval, std::time::Duration::from_secs(30));
        assert!(watch.cache.vary.is_empty(), "one shared entry for the chat");
    }

    #[test]
    fn the_printed_config_is_the_defaults() {
        let text = config_text(
            DEFAULT_LISTEN.parse().unwrap(),
            DEFAULT_ADMIN.parse().unwrap(),
            DEFAULT_UPSTREAM,
        );
        assert_eq!(text, CONFIG);
    }
}
