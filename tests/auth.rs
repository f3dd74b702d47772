//! Subscribe auth against real upstream servers: `upstream` auth (pass-through statuses,
//! coalescing, re-checks), JWT through the gate, limits, and what reaches the logs.
//!
//! The stream rules are not on this branch yet, so these drive [`unpoll::auth::Authorizer`]
//! directly with the snapshot's real upstream client; the SSE tests join once streams exist.

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::Upstream;
use common::upstream::text;
use http::StatusCode;
use unpoll::auth::{
    AccessEnded, AuthError, Authorizer, Grant, Limit, RawRuleAuth, RawStreamLimits, RuleAuthConfig,
    StreamLimits, SubscribeRequest,
};
use unpoll::config::ConfigErrors;
use unpoll::route::PathParams;
use unpoll::{App, Config};

const SECRET: &str = "integration-secret-integration-secret";

fn config(upstream: &str, extra: &str) -> Config {
    let mut text = format!("listen = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n{extra}\n");
    if !extra.contains("[admin]") {
        text.push_str("[admin]\nlisten = \"127.0.0.1:0\"\n");
    }
    unpoll::config::parse(&text, &|_| None).unwrap_or_else(|e| panic!("{e}"))
}

fn app(upstream: &str, extra: &str) -> Arc<App> {
    App::new(
        config(upstream, extra),
        tokio_util::sync::CancellationToken::new(),
    )
}

fn rule_auth(
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
    };
    let mut errors = ConfigErrors::default();
    let out = raw.validate("stream[0]", &[], None, &mut errors);
    assert!(errors.is_empty(), "{errors}");
    out
}

fn limits(toml_text: &str) -> StreamLimits {
    let raw: RawStreamLimits = toml::from_str(toml_text).unwrap();
    let mut errors = ConfigErrors::default();
    let out = raw.validate("stream[0].limits", &mut errors);
    assert!(errors.is_empty(), "{errors}");
    out
}

fn head(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut req = http::Request::builder().uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(()).unwrap().into_parts().0
}

const PEER: &str = "127.0.0.1";

async fn authorize(
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

/// An app where session A may see bot 1 only.
async fn bots_app() -> Upstream {
    let check = |bot: &'static str| {
        move |req: http::Request<hyper::body::Incoming>| async move {
            let cookie = req
                .headers()
                .get("cookie")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            match (cookie.contains("session=A"), bot) {
                (false, _) => text(401, "log in"),
                (true, "1") => text(200, "{\"bot\":1}"),
                (true, _) => text(403, "not yours"),
            }
        }
    };
    Upstream::builder()
        .handler("/api/bots/1", check("1"))
        .handler("/api/bots/2", check("2"))
        .handler("/api/broken", |_| async { text(500, "oops") })
        .delay("/api/slow", Duration::from_secs(5))
        .route("/api/slow", "late")
        .run()
        .await
}

fn gate(app: &App, auth: RuleAuthConfig, limits: &StreamLimits) -> Authorizer {
    let snapshot = app.snapshot();
    Authorizer::new(
        "stream[0]",
        &auth,
        limits,
        snapshot.jwt.as_ref(),
        &app.auth_metrics,
    )
}

#[tokio::test]
async fn upstream_auth_passes_the_apps_answer_through() {
    let upstream = bots_app().await;
    let app = app(&upstream.url(), "[proxy]\nresponse_timeout = \"300ms\"");
    let gate = gate(
        &app,
        rule_auth("upstream", Some("/api/bots/{query.botId}"), None, None),
        &StreamLimits::default(),
    );
    let a = |bot: &str| {
        head(
            &format!("/bots/events?botId={bot}"),
            &[
                ("cookie", "session=A"),
                ("authorization", "Basic QTpB"),
                ("host", "app.example"),
            ],
        )
    };
    assert!(authorize(&app, &gate, &a("1"), &["bot:1"]).await.is_ok());
    let seen = upstream.last();
    assert_eq!(seen.uri.path(), "/api/bots/1");
    assert_eq!(seen.headers["cookie"], "session=A");
    assert_eq!(seen.headers["authorization"], "Basic QTpB");
    assert_eq!(seen.headers["x-forwarded-for"], PEER);
    assert_eq!(seen.headers["host"], "app.example");

    let err = authorize(&app, &gate, &a("2"), &["bot:2"])
        .await
        .unwrap_err();
    assert_eq!(err.status(), StatusCode::FORBIDDEN);
    let anonymous = head("/bots/events?botId=1", &[]);
    let err = authorize(&app, &gate, &anonymous, &["bot:1"])
        .await
        .unwrap_err();
    assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
    let err = authorize(&app, &gate, &a("3"), &["bot:3"])
        .await
        .unwrap_err();
    assert_eq!(
        err.status(),
        StatusCode::NOT_FOUND,
        "the test app has no bot 3"
    );
    let missing = head("/bots/events", &[("cookie", "session=A")]);
    let err = authorize(&app, &gate, &missing, &["bot:"])
        .await
        .unwrap_err();
    assert_eq!(err.status(), StatusCode::BAD_REQUEST);

    // The response the client gets: the status and a short body, nothing of the app's.
    let resp = unpoll::proxy::ProxyError::from(
        authorize(&app, &gate, &a("2"), &["bot:2"])
            .await
            .unwrap_err(),
    )
    .into_response();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"unpoll: forbidden\n");

    for (path, status) in [
        ("/api/broken", StatusCode::BAD_GATEWAY),
        ("/api/slow", StatusCode::GATEWAY_TIMEOUT),
    ] {
        let gate = self::gate(
            &app,
            rule_auth("upstream", Some(path), None, None),
            &StreamLimits::default(),
        );
        let err = authorize(&app, &gate, &a("1"), &["bot:1"])
            .await
            .unwrap_err();
        assert_eq!(err.status(), status, "{path}");
    }
    let down = self::app("http://127.0.0.1:9", "");
    let gate = self::gate(
        &down,
        rule_auth("upstream", Some("/x"), None, None),
        &StreamLimits::default(),
    );
    let err = authorize(&down, &gate, &a("1"), &["bot:1"])
        .await
        .unwrap_err();
    assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn a_thousand_concurrent_subscribes_cost_one_upstream_call() {
    let upstream = Upstream::builder()
        .route("/api/bots/1", "ok")
        .delay("/api/bots/1", Duration::from_millis(200))
        .run()
        .await;
    let app = app(&upstream.url(), "");
    let gate = Arc::new(gate(
        &app,
        rule_auth(
            "upstream",
            Some("/api/bots/{query.botId}"),
            Some("10s"),
            None,
        ),
        &StreamLimits::default(),
    ));
    let parts = Arc::new(head("/bots/events?botId=1", &[("cookie", "session=A")]));
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (app, gate, parts) = (app.clone(), gate.clone(), parts.clone());
            tokio::spawn(async move { authorize(&app, &gate, &parts, &["bot:1"]).await.is_ok() })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap());
    }
    assert_eq!(upstream.hits("/api/bots/1"), 1);
    // Cached: another tab later costs nothing; another user costs one more call.
    assert!(authorize(&app, &gate, &parts, &["bot:1"]).await.is_ok());
    assert_eq!(upstream.hits("/api/bots/1"), 1);
    let b = head("/bots/events?botId=1", &[("cookie", "session=B")]);
    assert!(authorize(&app, &gate, &b, &["bot:1"]).await.is_ok());
    assert_eq!(upstream.hits("/api/bots/1"), 2);
    let metrics = common::metric(
        &render(&app),
        "unpoll_auth_decisions_total{mode=\"upstream\",result=\"allowed\"}",
    );
    assert_eq!(metrics, 1002.0);
    assert_eq!(
        common::metric(&render(&app), "unpoll_auth_upstream_checks_total"),
        2.0
    );

    // auth_cache = 0: every sequential subscribe asks.
    let uncached = self::gate(
        &app,
        rule_auth(
            "upstream",
            Some("/api/bots/{query.botId}"),
            Some("0s"),
            None,
        ),
        &StreamLimits::default(),
    );
    for _ in 0..3 {
        assert!(authorize(&app, &uncached, &parts, &["bot:1"]).await.is_ok());
    }
    assert_eq!(upstream.hits("/api/bots/1"), 5);
}

fn render(app: &App) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, app.registry()).unwrap();
    out
}

#[tokio::test]
async fn revoked_access_ends_the_stream_after_reauth() {
    let allowed = Arc::new(AtomicBool::new(true));
    let flag = allowed.clone();
    let upstream = Upstream::builder()
        .handler("/api/bots/1", move |_| {
            let ok = flag.load(Ordering::SeqCst);
            async move {
                if ok {
                    text(200, "ok")
                } else {
                    text(403, "revoked")
                }
            }
        })
        .run()
        .await;
    let app = app(&upstream.url(), "");
    let gate = gate(
        &app,
        rule_auth("upstream", Some("/api/bots/1"), Some("0s"), Some("100ms")),
        &StreamLimits::default(),
    );
    let parts = head("/bots/events", &[("cookie", "session=A")]);
    let grant = authorize(&app, &gate, &parts, &["bot:1"]).await.unwrap();
    assert_eq!(grant.reauth_interval(), Some(Duration::from_millis(100)));
    let mut ended = grant.ended();
    // Still allowed: several re-checks pass and the stream stays.
    let hits = upstream.hits("/api/bots/1");
    let stayed = tokio::time::timeout(Duration::from_millis(350), &mut ended).await;
    assert!(stayed.is_err(), "access ended while still allowed");
    assert!(
        upstream.hits("/api/bots/1") >= hits + 2,
        "re-checks happened"
    );
    allowed.store(false, Ordering::SeqCst);
    let reason = tokio::time::timeout(Duration::from_secs(2), ended)
        .await
        .unwrap();
    assert_eq!(reason, AccessEnded::Revoked(StatusCode::FORBIDDEN));
}

fn hs256(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn jwt_gate_takes_the_token_from_header_cookie_or_query() {
    let app = app(
        "http://127.0.0.1:9",
        &format!("[jwt]\nsecret = \"{SECRET}\"\ncookie = \"jwt\"\nleeway = \"0s\""),
    );
    let gate = gate(
        &app,
        rule_auth("jwt", None, None, None),
        &StreamLimits::default(),
    );
    let token = hs256(serde_json::json!({"exp": now() + 600, "unpoll": {"subscribe": ["bot:*"]}}));
    let bearer = format!("Bearer {token}");
    let cookie = format!("a=b; jwt={token}");
    for parts in [
        head("/s", &[("authorization", &bearer)]),
        head("/s", &[("cookie", &cookie)]),
        head(&format!("/s?token={token}"), &[]),
    ] {
        let grant = authorize(&app, &gate, &parts, &["bot:1", "bot:2"])
            .await
            .unwrap();
        assert_eq!(
            grant.expires_at(),
            Some(UNIX_EPOCH + Duration::from_secs(now_exp(&token)))
        );
    }
    let parts = head(&format!("/s?token={token}"), &[]);
    let err = authorize(&app, &gate, &parts, &["bot:1", "twilio"])
        .await
        .unwrap_err();
    assert_eq!(err.status(), StatusCode::FORBIDDEN);
    let err = authorize(&app, &gate, &head("/s", &[]), &["bot:1"])
        .await
        .unwrap_err();
    assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
    let resp = unpoll::proxy::ProxyError::from(err).into_response();
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"unpoll\""
    );

    // The stream closes at exp.
    let short = hs256(serde_json::json!({"exp": now() + 1, "unpoll": {"subscribe": ["*"]}}));
    let parts = head(&format!("/s?token={short}"), &[]);
    let grant = authorize(&app, &gate, &parts, &["bot:1"]).await.unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(3), grant.ended())
        .await
        .unwrap();
    assert_eq!(reason, AccessEnded::Expired);
    assert!(SystemTime::now() >= grant.expires_at().unwrap());
}

fn now_exp(token: &str) -> u64 {
    let data = jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(token).unwrap();
    data.claims["exp"].as_u64().unwrap()
}

#[tokio::test]
async fn limits_answer_429_with_retry_after_and_count() {
    let app = app("http://127.0.0.1:9", "");
    let gate = gate(
        &app,
        rule_auth("none", None, None, None),
        &limits("per_ip = 2\nper_channel = 3\nrate = \"4/1m\""),
    );
    let parts = head("/s", &[]);
    let g1 = authorize(&app, &gate, &parts, &["bot:1"]).await.unwrap();
    let _g2 = authorize(&app, &gate, &parts, &["bot:1"]).await.unwrap();
    let err = authorize(&app, &gate, &parts, &["bot:1"])
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        AuthError::Limited {
            limit: Limit::PerIp,
            ..
        }
    ));
    let resp = unpoll::proxy::ProxyError::from(err).into_response();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "5");
    drop(g1);
    let _g3 = authorize(&app, &gate, &parts, &["bot:1"]).await.unwrap();
    // Four attempts so far used the burst of 4 per minute.
    let err = authorize(&app, &gate, &parts, &["bot:1"])
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        AuthError::Limited {
            limit: Limit::Rate,
            ..
        }
    ));
    let wait = err.retry_after().unwrap();
    assert!(
        wait >= Duration::from_secs(14) && wait <= Duration::from_secs(15),
        "{wait:?}"
    );
    let text = render(&app);
    assert_eq!(
        common::metric(
            &text,
            "unpoll_stream_limited_total{limit=\"subscribers_per_ip\"}"
        ),
        1.0
    );
    assert_eq!(
        common::metric(&text, "unpoll_stream_limited_total{limit=\"connect_rate\"}"),
        1.0
    );
}

/// A writer collecting log output for one test.
#[derive(Clone, Default)]
struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn no_token_or_cookie_reaches_the_log() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let upstream = bots_app().await;
    let cookie = "session=A; csrftoken=COOKIE-SECRET-123";
    let token = hs256(serde_json::json!({"exp": now() - 100, "unpoll": {"subscribe": ["*"]}}));
    let app = app(
        &upstream.url(),
        &format!(
            "[jwt]\nsecret = \"{SECRET}\"\nleeway = \"0s\"\n[admin]\ntoken = \"ADMIN-SECRET\""
        ),
    );
    let parts = head(
        &format!("/bots/events?botId=1&token={token}"),
        &[("cookie", cookie), ("authorization", "Bearer AUTH-SECRET")],
    );
    for path in ["/api/broken", "/api/bots/{query.botId}", "/api/bots/2"] {
        let gate = gate(
            &app,
            rule_auth("upstream", Some(path), None, Some("1s")),
            &StreamLimits::default(),
        );
        if let Ok(grant) = authorize(&app, &gate, &parts, &["bot:1"]).await {
            tracing::info!(grant = ?grant, "granted");
        }
    }
    let jwt_gate = gate(
        &app,
        rule_auth("jwt", None, None, None),
        &StreamLimits::default(),
    );
    let query_only = head(&format!("/s?token={token}"), &[]);
    let err = authorize(&app, &jwt_gate, &query_only, &["bot:1"])
        .await
        .unwrap_err();
    tracing::warn!(cause = %err, error = ?err, "refused");
    tracing::info!(config = ?app.snapshot().config, "config");

    let log = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("auth check: unexpected status"), "{log}");
    assert!(log.contains("invalid token: expired"), "{log}");
    for secret in [
        "COOKIE-SECRET-123",
        "AUTH-SECRET",
        token.as_str(),
        SECRET,
        "ADMIN-SECRET",
        "session=A",
    ] {
        assert!(
            !log.contains(secret),
            "{secret} leaked into the log:\n{log}"
        );
    }
}

#[test]
fn auth_must_be_written_and_jwt_needs_its_section() {
    let check = |extra: &str| -> String {
        let text = format!("listen = \"127.0.0.1:0\"\nupstream = \"http://a\"\n{extra}");
        match unpoll::config::parse(&text, &|_| None) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    };
    assert!(
        check("[generic_stream]\nenabled = true")
            .contains("generic_stream.enabled: the generic stream needs a [jwt] section")
    );
    assert!(
        check("[proxy]\ntrusted_proxies = [\"10.0.0.0/8\", \"nope\"]")
            .contains("proxy.trusted_proxies[1]: invalid address")
    );
    assert!(check(&format!("[jwt]\nsecret = \"{SECRET}\"\n[generic_stream]\nenabled = true\nlimits = {{ per_ip = 5 }}")).is_empty());
    let mut errors = ConfigErrors::default();
    RawRuleAuth::default().validate("stream[0]", &[], None, &mut errors);
    assert!(
        errors.to_string().contains("stream[0].auth: required"),
        "{errors}"
    );
    let mut errors = ConfigErrors::default();
    let raw = RawRuleAuth {
        auth: Some("jwt".into()),
        auth_path: Some("/x".into()),
        ..RawRuleAuth::default()
    };
    raw.validate("stream[0]", &[], None, &mut errors);
    let text = errors.to_string();
    assert!(
        text.contains("stream[0].auth_path: only applies with auth = \"upstream\""),
        "{text}"
    );
    assert!(
        text.contains("stream[0].auth: \"jwt\" needs a [jwt] section"),
        "{text}"
    );
    let mut errors = ConfigErrors::default();
    let raw = RawRuleAuth {
        auth: Some("upstream".into()),
        auth_path: Some("/api/{path.id}/{query.q}".into()),
        ..RawRuleAuth::default()
    };
    raw.validate("stream[0]", &["bot"], None, &mut errors);
    assert!(
        errors
            .to_string()
            .contains("stream[0].auth_path: {path.id}: the rule's path has no {id} segment"),
        "{errors}"
    );
}

/// The client address of the access log honours X-Forwarded-For only from trusted proxies.
#[tokio::test]
async fn access_log_client_honours_trusted_proxies_only() {
    let upstream = Upstream::builder().route("/echo", "hello").run().await;
    for (trusted, expected) in [("[]", "127.0.0.1"), ("[\"127.0.0.0/8\"]", "203.0.113.7")] {
        let unpoll = common::process::Spawned::start(&format!(
            "listen = \"127.0.0.1:0\"\nupstream = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [proxy]\ntrusted_proxies = {trusted}\n[log]\nformat = \"json\"\n",
            upstream.url()
        ))
        .await;
        let resp = common::client()
            .get(unpoll.url("/echo"))
            .header("x-forwarded-for", "198.51.100.1, 203.0.113.7")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.text().await.unwrap(), "hello");
        let mut line = None;
        common::eventually(Duration::from_secs(5), "access log line", || {
            line = unpoll
                .log()
                .lines()
                .find(|l| l.contains("unpoll::access"))
                .map(str::to_string);
            std::future::ready(line.is_some())
        })
        .await;
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        assert_eq!(v["client"], expected, "trusted_proxies = {trusted}");
        // Forwarding is unchanged either way: the chain plus the peer.
        assert_eq!(
            upstream.last().headers["x-forwarded-for"],
            "198.51.100.1, 203.0.113.7, 127.0.0.1"
        );
    }
}
