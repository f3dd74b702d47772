//! `auth = "upstream"` against real upstream servers: the app's 401/403/404 passed through,
//! 502/504 when it cannot answer, one upstream call for a storm of subscribes, and open
//! streams closed when access is revoked.
//!
//! The stream rules are not on this branch yet, so these drive [`unpoll::auth::Authorizer`]
//! directly with the snapshot's real upstream client; the SSE tests join once streams exist.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::Upstream;
use common::auth::*;
use common::upstream::text;
use http::StatusCode;
use unpoll::auth::{AccessEnded, StreamLimits};

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

/// Issue 10, item 1: a stream on several values holds access to each; the periodic re-check
/// asks about every one of them, and access ends when the app revokes any.
#[tokio::test]
async fn reauth_checks_every_value_of_a_list() {
    let allowed = Arc::new(AtomicBool::new(true));
    let flag = allowed.clone();
    let upstream = Upstream::builder()
        .route("/api/bots/1", "ok")
        .handler("/api/bots/3", move |_| {
            let ok = flag.load(Ordering::SeqCst);
            async move {
                if ok {
                    text(200, "ok")
                } else {
                    text(404, "gone")
                }
            }
        })
        .run()
        .await;
    let app = app(&upstream.url(), "");
    let gate = gate(
        &app,
        rule_auth(
            "upstream",
            Some("/api/bots/{query.botId}"),
            Some("0s"),
            Some("100ms"),
        ),
        &StreamLimits::default(),
    );
    let parts = head("/bots/events?botId=1&botId=3", &[("cookie", "session=A")]);
    let grant = authorize(&app, &gate, &parts, &["bot:1", "bot:3"])
        .await
        .unwrap();
    assert_eq!(
        (upstream.hits("/api/bots/1"), upstream.hits("/api/bots/3")),
        (1, 1),
        "each value asked once"
    );
    let mut ended = grant.ended();
    // The re-checks run inside `ended`: poll it while waiting for them.
    let rechecked = common::eventually(Duration::from_secs(5), "two re-checks of each", || {
        let hits = (upstream.hits("/api/bots/1"), upstream.hits("/api/bots/3"));
        async move { hits.0 >= 3 && hits.1 >= 3 }
    });
    tokio::select! {
        reason = &mut ended => panic!("access ended while every path is allowed: {reason:?}"),
        () = rechecked => {}
    }
    allowed.store(false, Ordering::SeqCst);
    let reason = tokio::time::timeout(Duration::from_secs(5), ended)
        .await
        .unwrap();
    assert_eq!(reason, AccessEnded::Revoked(StatusCode::NOT_FOUND));
}
