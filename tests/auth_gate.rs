//! The subscribe gate beyond upstream auth: JWT from header, cookie or query and its expiry,
//! per-rule limits (429 with Retry-After, counted), what reaches the logs, config errors, and
//! the client address behind trusted proxies.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::Upstream;
use common::auth::*;
use common::upstream::text;
use http::StatusCode;
use unpoll::auth::{AccessEnded, AuthError, Limit, RawRuleAuth, StreamLimits};
use unpoll::config::ConfigErrors;

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

#[tokio::test(flavor = "current_thread")]
async fn no_token_or_cookie_reaches_the_log() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let upstream = Upstream::builder()
        .route("/api/bots/1", "ok")
        .handler("/api/bots/2", |_| async { text(403, "not yours") })
        .handler("/api/broken", |_| async { text(500, "oops") })
        .run()
        .await;
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
    RawRuleAuth::default().validate("stream[0]", &[], false, &mut errors);
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
    raw.validate("stream[0]", &[], false, &mut errors);
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
    raw.validate("stream[0]", &["bot"], false, &mut errors);
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

/// Issue 10, item 1: `unpoll check` refuses an upstream-auth stream whose channels are made
/// of a value the app is never asked about, naming the key; one that asks about every value
/// passes (header names compare case-insensitively).
#[test]
fn check_refuses_channels_made_of_values_auth_path_does_not_use() {
    let run = |stream: &str| {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("unpoll.toml");
        std::fs::write(
            &file,
            format!(
                "listen = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:8000\"\n\
                 [[stream]]\npath = \"/chats/{{id}}/events\"\nauth = \"upstream\"\n{stream}"
            ),
        )
        .unwrap();
        let out = std::process::Command::new(common::process::binary())
            .args(["check", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, errors) = run(
        "channels = [\"bot:{query.botId}\", \"chat:{path.id}:{header.X-Tenant}\"]\n\
         auth_path = \"/api/me?tenant={header.x-tenant}\"",
    );
    assert_eq!(code, Some(64), "{errors}");
    for expected in [
        "2 error(s)",
        "stream[0].auth_path: does not use {query.botId}, which channels[0] (\"bot:{query.botId}\") is made of",
        "stream[0].auth_path: does not use {path.id}, which channels[1]",
    ] {
        assert!(
            errors.contains(expected),
            "{expected:?} missing in:\n{errors}"
        );
    }
    let (code, errors) = run(
        "channels = [\"bot:{query.botId}\", \"chat:{path.id}:{header.X-Tenant}\"]\n\
         auth_path = \"/api/bots/{query.botId}/chats/{path.id}?tenant={header.x-tenant}\"",
    );
    assert_eq!(code, Some(0), "{errors}");
}
