//! Helpers for the subscribe-auth tests: an [`App`] without listeners, a gate per rule, and
//! a call of [`Authorizer::authorize`] with the snapshot's real upstream client.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use unpoll::auth::{
    AuthError, Authorizer, Grant, RawRuleAuth, RawStreamLimits, RuleAuthConfig, StreamLimits,
    SubscribeRequest,
};
use unpoll::config::ConfigErrors;
use unpoll::route::PathParams;
use unpoll::{App, Config};

pub const SECRET: &str = "integration-secret-integration-secret";

pub fn config(upstream: &str, extra: &str) -> Config {
    let mut text = format!("listen = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n{extra}\n");
    if !extra.contains("[admin]") {
        text.push_str("[admin]\nlisten = \"127.0.0.1:0\"\n");
    }
    unpoll::config::parse(&text, &|_| None).unwrap_or_else(|e| panic!("{e}"))
}

pub fn app(upstream: &str, extra: &str) -> Arc<App> {
    App::new(
        config(upstream, extra),
        tokio_util::sync::CancellationToken::new(),
    )
}

pub fn rule_auth(
    auth: &str,
    path: Option<&str>,
    cache: Option<&str>,
    reauth: Option<&str>,
) -> RuleAuthConfig {
    if auth == "jwt" {
        // Validation wants the [jwt] section; the apps below have one.
        return RuleAuthConfig::Jwt;
    }
    let raw = RawRuleAuth {
        auth: Some(auth.into()),
        auth_path: path.map(Into::into),
        auth_cache: cache.map(Into::into),
        reauth: reauth.map(Into::into),
        token_query: None,
    };
    let mut errors = ConfigErrors::default();
    let out = raw.validate("stream[0]", &[], false, &mut errors);
    assert!(errors.is_empty(), "{errors}");
    out
}

pub fn limits(toml_text: &str) -> StreamLimits {
    let raw: RawStreamLimits = toml::from_str(toml_text).unwrap();
    let mut errors = ConfigErrors::default();
    let out = raw.validate("stream[0].limits", &mut errors);
    assert!(errors.is_empty(), "{errors}");
    out
}

pub fn head(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut req = http::Request::builder().uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(()).unwrap().into_parts().0
}

pub const PEER: &str = "127.0.0.1";

pub async fn authorize(
    app: &App,
    gate: &Authorizer,
    parts: &http::request::Parts,
    channels: &[&str],
) -> Result<Grant, AuthError> {
    let snapshot = app.snapshot();
    let params = PathParams::default();
    let ip: IpAddr = PEER.parse().unwrap();
    let req = SubscribeRequest {
        parts,
        params: &params,
        peer: ip,
        client_ip: ip,
        upstream: &snapshot.upstream,
        proxy: &snapshot.config.proxy,
    };
    let channels: Vec<String> = channels.iter().map(|s| s.to_string()).collect();
    gate.authorize(&req, &channels).await
}

pub fn gate(app: &App, auth: RuleAuthConfig, limits: &StreamLimits) -> Authorizer {
    let snapshot = app.snapshot();
    Authorizer::new(
        "stream[0]",
        &auth,
        limits,
        snapshot.jwt.as_ref(),
        &app.auth_metrics,
        None,
    )
}

pub fn render(app: &App) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, app.registry()).unwrap();
    out
}

pub fn hs256(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn now_exp(token: &str) -> u64 {
    let data = jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(token).unwrap();
    data.claims["exp"].as_u64().unwrap()
}

/// A writer collecting log output for one test.
#[derive(Clone, Default)]
pub struct Capture(pub Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
