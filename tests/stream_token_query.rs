//! `token_query` on a stream rule with `auth = "upstream"` (issue 16, item 2): a browser's
//! EventSource cannot send headers, so its token comes in the query. unpoll asks the app
//! with it as `Authorization: Bearer`, keys its decisions by it, and never hands it to the
//! app in a URL or writes it to the log. The real binary runs, so its stderr is the log.

mod common;

use std::time::Duration;

use common::process::Spawned;
use common::sse::SseClient;
use common::upstream::text;
use common::{Upstream, client, eventually};

const T: Duration = Duration::from_secs(10);

/// The tokens the app knows; all share a prefix the log must never show.
const GOOD_1: &str = "tok-SECRET-1";
const GOOD_2: &str = "tok-SECRET-2";
const BAD: &str = "tok-SECRET-bad";
const LEAK: &str = "tok-SECRET";

/// An app like Django REST with SimpleJWT: bot 1 is seen with a valid bearer token only.
async fn django_app() -> Upstream {
    Upstream::builder()
        .handler("/api/bots/1", |req| async move {
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if auth == format!("Bearer {GOOD_1}") || auth == format!("Bearer {GOOD_2}") {
                text(200, "{\"bot\":1}")
            } else {
                text(401, "{\"detail\":\"Given token not valid\"}")
            }
        })
        .route("/events", "the app's own /events")
        .run()
        .await
}

async fn start(upstream: &Upstream) -> Spawned {
    Spawned::start(&format!(
        "listen = \"127.0.0.1:0\"\nupstream = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[stream]]\npath = \"/events\"\nchannels = [\"bot:{{query.botId}}\"]\n\
         auth = \"upstream\"\nauth_path = \"/api/bots/{{query.botId}}\"\n\
         token_query = \"token\"\nreauth = \"0s\"\n",
        upstream.url()
    ))
    .await
}

#[tokio::test]
async fn the_query_token_is_the_bearer_of_the_auth_request_and_nothing_else() {
    let upstream = django_app().await;
    let unpoll = start(&upstream).await;
    let http = client();
    let open = |query: String| {
        let (http, url) = (http.clone(), unpoll.url(&format!("/events?{query}")));
        async move { SseClient::open(&http, &url, None).await }
    };

    let first = open(format!("botId=1&token={GOOD_1}")).await;
    assert_eq!(first.status, 200);
    let asked = upstream.last();
    assert_eq!(asked.uri, "/api/bots/1");
    assert_eq!(
        asked.headers["authorization"],
        format!("Bearer {GOOD_1}").as_str()
    );

    // The same token again is the cached decision; another token is its own entry.
    let again = open(format!("token={GOOD_1}&botId=1")).await;
    assert_eq!(again.status, 200);
    assert_eq!(upstream.hits("/api/bots/1"), 1);
    let second = open(format!("botId=1&token={GOOD_2}")).await;
    assert_eq!(second.status, 200);
    assert_eq!(upstream.hits("/api/bots/1"), 2);
    assert_eq!(
        upstream.last().headers["authorization"],
        format!("Bearer {GOOD_2}").as_str()
    );
    let refused = open(format!("botId=1&token={BAD}")).await;
    assert_eq!(refused.status, 401);
    assert_eq!(upstream.hits("/api/bots/1"), 3);
    let anonymous = open("botId=1".into()).await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(upstream.hits("/api/bots/1"), 4);
    assert!(!upstream.last().headers.contains_key("authorization"));

    // The token is the credential the decision is keyed by, as a header would be.
    let resp = http
        .get(unpoll.url("/events?botId=1"))
        .header("authorization", format!("Bearer {GOOD_2}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(upstream.hits("/api/bots/1"), 4);
    drop(resp);

    // A request the rule does not apply to (no botId) goes to the app, without the token.
    let resp = http
        .get(unpoll.url(&format!("/events?x=1&token={GOOD_1}&y=%20")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "the app's own /events");
    let proxied = upstream.last();
    assert_eq!(proxied.uri, "/events?x=1&y=%20");
    assert!(!proxied.headers.contains_key("authorization"));

    for r in upstream.recorded() {
        assert!(
            !r.uri.to_string().contains(LEAK),
            "{} reached the app",
            r.uri
        );
    }
    drop((first, again, second, refused, anonymous));
    // Every request has its access line once its response ends; none shows a token.
    eventually(T, "the access lines of all 7 requests", || async {
        unpoll.log().matches("path=/events").count() >= 7
    })
    .await;
    let log = unpoll.log();
    assert!(!log.contains(LEAK), "a token reached the log:\n{log}");
}

#[test]
fn token_query_is_for_upstream_auth_only_and_stays_out_of_auth_path() {
    let check = |rule: &str| -> String {
        let text = format!(
            "listen = \"127.0.0.1:0\"\nupstream = \"http://a\"\n[[stream]]\npath = \"/e\"\n\
             channels = [\"bot:{{query.botId}}\"]\n{rule}"
        );
        match unpoll::config::parse(&text, &|_| None) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    };
    let upstream = "auth = \"upstream\"\nauth_path = \"/api/bots/{query.botId}\"\n";
    assert_eq!(check(&format!("{upstream}token_query = \"token\"")), "");
    let errors = check("auth = \"none\"\ntoken_query = \"token\"");
    assert!(
        errors.contains("stream[0].token_query: only applies with auth = \"upstream\""),
        "{errors}"
    );
    let errors = check(&format!("{upstream}token_query = \"a b\""));
    assert!(
        errors.contains("stream[0].token_query: \"a b\""),
        "{errors}"
    );
    let errors = check(
        "auth = \"upstream\"\nauth_path = \"/api/bots/{query.botId}?t={query.token}\"\n\
         token_query = \"token\"",
    );
    assert!(
        errors.contains("stream[0].auth_path: {query.token} is the token_query"),
        "{errors}"
    );
}
