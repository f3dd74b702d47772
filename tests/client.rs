//! The browser client served from the binary: headers, revalidation, HEAD, the off switch.

mod common;

use common::{Unpoll, Upstream, client};

const FILES: [(&str, &str); 3] = [
    ("/_unpoll/client.js", "text/javascript; charset=utf-8"),
    ("/_unpoll/client.mjs", "text/javascript; charset=utf-8"),
    (
        "/_unpoll/client.d.ts",
        "application/typescript; charset=utf-8",
    ),
];

async fn upstream() -> Upstream {
    Upstream::builder()
        .route("/_unpoll/client.js", "the app's own file")
        .run()
        .await
}

#[tokio::test]
async fn serves_the_client_before_any_rule_with_etag_and_304() {
    let upstream = upstream().await;
    // A rule on the same path: the client is answered first.
    let unpoll = Unpoll::start(
        &upstream.url(),
        "[[cache]]\npath = \"/_unpoll/client.js\"\nttl = \"1s\"\n",
    )
    .await;
    let http = client();
    let mut etags = Vec::new();
    for (path, content_type) in FILES {
        let resp = http.get(unpoll.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let h = resp.headers().clone();
        assert_eq!(h["content-type"], content_type, "{path}");
        assert_eq!(h["cache-control"], "public, max-age=3600", "{path}");
        let etag = h["etag"].to_str().unwrap().to_string();
        assert!(
            etag.starts_with('"') && etag.ends_with('"'),
            "strong etag: {etag}"
        );
        let body = resp.bytes().await.unwrap();
        assert_eq!(h["content-length"], body.len().to_string().as_str());
        assert!(!body.is_empty());

        let again = http
            .get(unpoll.url(path))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path}");
        assert_eq!(again.headers()["etag"], etag.as_str());
        assert_eq!(again.headers()["cache-control"], "public, max-age=3600");
        assert!(again.bytes().await.unwrap().is_empty());

        let other = http
            .get(unpoll.url(path))
            .header("if-none-match", "\"something-else\"")
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), 200, "{path}");

        let head = http.head(unpoll.url(path)).send().await.unwrap();
        assert_eq!(head.status(), 200, "{path}");
        assert_eq!(head.headers()["etag"], etag.as_str());
        assert_eq!(
            head.headers()["content-length"],
            body.len().to_string().as_str()
        );
        assert!(head.bytes().await.unwrap().is_empty());
        etags.push(etag);
    }
    etags.dedup();
    assert_eq!(etags.len(), 3, "one ETag per file");

    let js = http
        .get(unpoll.url("/_unpoll/client.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mjs = http
        .get(unpoll.url("/_unpoll/client.mjs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        mjs.starts_with(&js),
        "the module is the script plus exports"
    );
    assert!(mjs.contains("export default"));
    assert_eq!(upstream.total(), 0, "nothing reached the app");
}

#[tokio::test]
async fn client_false_proxies_those_paths() {
    let upstream = upstream().await;
    let unpoll = Unpoll::start(&upstream.url(), "[proxy]\nclient = false\n").await;
    let resp = client()
        .get(unpoll.url("/_unpoll/client.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "the app's own file");
    assert_eq!(upstream.hits("/_unpoll/client.js"), 1);
}
