//! `[tls]`: the main listener speaks TLS (rustls, ring provider), with ALPN `h2` and
//! `http/1.1`, TLS 1.2 and 1.3.
//!
//! The certificate and key are read and checked while the config is validated
//! ([`config`], `pair.rs`): `unpoll check` and a reload see a broken pair as a config error
//! naming `tls.cert` or `tls.key`, and a running instance keeps its pair. The pair in use
//! sits behind an [`ArcSwap`] that every handshake reads (`CertResolver`): a reload swaps
//! it, open connections keep theirs.

pub mod config;
mod pair;

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

pub use config::{RawTlsConfig, TlsConfig};
pub use pair::CertPair;

/// ALPN protocols offered, in the server's order of preference.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The TLS side of the main listener: the rustls config every handshake uses and the
/// certificate a reload swaps.
pub struct Tls {
    /// Shared by every handshake; holds `resolver`.
    server: Arc<ServerConfig>,
    /// The certificate in use.
    resolver: Arc<CertResolver>,
}

/// The crypto of every TLS use: the server, and the check that a key is its certificate's
/// (done with the provider that will use the pair). ring: pure Rust to build, no C.
fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

impl Tls {
    /// The TLS server for `config`'s (already loaded and checked) pair.
    pub fn new(config: &TlsConfig) -> Tls {
        let resolver = Arc::new(CertResolver {
            current: ArcSwap::new(config.pair.certified.clone()),
        });
        let provider = Arc::new(provider());
        // ring's provider has cipher suites for both TLS 1.2 and 1.3, the safe defaults:
        // this cannot fail for it, and a failure would be a build mistake, not bad input.
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        server.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Tls {
            server: Arc::new(server),
            resolver,
        }
    }

    /// The rustls server config for a new connection's handshake.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// Use `pair` for handshakes from now on; connections already established keep theirs.
    pub fn set_pair(&self, pair: &CertPair) {
        self.resolver.current.store(pair.certified.clone());
    }
}

/// Answers every handshake with the current pair (one certificate per instance, whatever
/// the SNI).
#[derive(Debug)]
struct CertResolver {
    /// Swapped whole on reload; each handshake loads it once.
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}
