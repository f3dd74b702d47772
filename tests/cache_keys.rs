//! What a cache key is made of, and what a fill asks the upstream: one client's request
//! must never choose what other clients are served (issue 10, items 2 to 5).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::upstream::text;
use common::{Unpoll, Upstream, client, eventually};

const T: Duration = Duration::from_secs(10);
const DOC: &str = "0123456789abcdef";

/// `/doc` answers a Range with a 206 of the first four bytes (as an app or file server
/// would), anything else with the whole document, its ETag and Last-Modified.
async fn range_upstream(delay: Duration) -> Upstream {
    Upstream::builder()
        .handler("/doc", |req| async move {
            if req.headers().contains_key("range") {
                let mut resp = text(206, &DOC.as_bytes()[..4]);
                resp.headers_mut()
                    .insert("content-range", "bytes 0-3/16".parse().unwrap());
                return resp;
            }
            let mut resp = text(200, DOC);
            let h = resp.headers_mut();
            h.insert("etag", "\"v1\"".parse().unwrap());
            h.insert(
                "last-modified",
                "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
            );
            resp
        })
        .delay("/doc", delay)
        .run()
        .await
}

const DOC_RULE: &str = "[[cache]]\npath = \"/doc\"\nttl = \"30s\"\nvary = []";

#[tokio::test]
async fn a_range_request_that_starts_a_fill_does_not_shape_what_waiters_get() {
    let upstream = range_upstream(Duration::from_millis(300)).await;
    let unpoll = Unpoll::start(&upstream.url(), DOC_RULE).await;
    let http = client();
    let first = tokio::spawn({
        let (http, url) = (http.clone(), unpoll.url("/doc"));
        async move {
            let resp = http
                .get(url)
                .header("range", "bytes=0-3")
                .header("if-range", "\"v1\"")
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let range = resp.headers().get("content-range").cloned();
            (status, range, resp.text().await.unwrap())
        }
    });
    eventually(T, "the fill reached the upstream", || async {
        upstream.hits("/doc") == 1
    })
    .await;
    let waiters = (0..5).map(|_| {
        let (http, url) = (http.clone(), unpoll.url("/doc"));
        tokio::spawn(async move {
            let resp = http.get(url).send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        })
    });
    for r in futures::future::join_all(waiters).await {
        assert_eq!(r.unwrap(), (200, DOC.to_string()));
    }
    let (status, range, body) = first.await.unwrap();
    assert_eq!((status, body.as_str()), (206, "0123"));
    assert_eq!(range.unwrap(), "bytes 0-3/16");
    assert_eq!(upstream.hits("/doc"), 1);
    for r in upstream.recorded() {
        for h in [
            "range",
            "if-range",
            "if-match",
            "if-unmodified-since",
            "if-none-match",
            "if-modified-since",
        ] {
            assert!(!r.headers.contains_key(h), "a fill forwarded {h}");
        }
    }
}

#[tokio::test]
async fn each_client_s_conditions_are_answered_from_the_entry() {
    let upstream = range_upstream(Duration::ZERO).await;
    let unpoll = Unpoll::start(&upstream.url(), DOC_RULE).await;
    let http = client();
    // A fill asked with If-Match that fails: the entry is still the full answer.
    let resp = http
        .get(unpoll.url("/doc"))
        .header("if-match", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 412);
    let get = |headers: &'static [(&'static str, &'static str)]| {
        let (http, url) = (http.clone(), unpoll.url("/doc"));
        async move {
            let mut req = http.get(url);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let range = resp
                .headers()
                .get("content-range")
                .map(|v| v.to_str().unwrap().to_string());
            (status, range, resp.text().await.unwrap())
        }
    };
    assert_eq!(get(&[]).await, (200, None, DOC.into()));
    assert_eq!(
        get(&[("range", "bytes=4-7")]).await,
        (206, Some("bytes 4-7/16".into()), "4567".into())
    );
    assert_eq!(
        get(&[("range", "bytes=-3")]).await,
        (206, Some("bytes 13-15/16".into()), "def".into())
    );
    assert_eq!(
        get(&[("range", "bytes=14-")]).await,
        (206, Some("bytes 14-15/16".into()), "ef".into())
    );
    assert_eq!(
        get(&[("range", "bytes=10-99")]).await,
        (206, Some("bytes 10-15/16".into()), "abcdef".into())
    );
    let (status, range, _) = get(&[("range", "bytes=16-20")]).await;
    assert_eq!((status, range), (416, Some("bytes */16".into())));
    // Several ranges: the whole document.
    assert_eq!(
        get(&[("range", "bytes=0-1,4-5")]).await,
        (200, None, DOC.into())
    );
    // If-Range names another version: the whole document.
    assert_eq!(
        get(&[("range", "bytes=0-3"), ("if-range", "\"v0\"")]).await,
        (200, None, DOC.into())
    );
    assert_eq!(
        get(&[("range", "bytes=0-3"), ("if-range", "\"v1\"")]).await,
        (206, Some("bytes 0-3/16".into()), "0123".into())
    );
    assert_eq!(
        get(&[("if-match", "\"v1\"")]).await,
        (200, None, DOC.into())
    );
    assert_eq!(get(&[("if-match", "\"v0\"")]).await.0, 412);
    assert_eq!(
        get(&[("if-unmodified-since", "Tue, 20 Oct 2015 07:28:00 GMT")])
            .await
            .0,
        412
    );
    assert_eq!(
        get(&[("if-unmodified-since", "Wed, 21 Oct 2015 07:28:00 GMT")])
            .await
            .0,
        200
    );
    assert_eq!(get(&[("if-none-match", "\"v1\"")]).await.0, 304);
    assert_eq!(
        get(&[("if-modified-since", "Wed, 21 Oct 2015 07:28:00 GMT")])
            .await
            .0,
        304
    );
    assert_eq!(
        get(&[("if-modified-since", "Tue, 20 Oct 2015 07:28:00 GMT")])
            .await
            .0,
        200
    );
    // If-None-Match wins over If-Modified-Since.
    assert_eq!(
        get(&[
            ("if-none-match", "\"v0\""),
            ("if-modified-since", "Wed, 21 Oct 2015 07:28:00 GMT")
        ])
        .await
        .0,
        200
    );
    assert_eq!(
        upstream.hits("/doc"),
        1,
        "all of these were answered by the entry"
    );
}

#[tokio::test]
async fn repeated_query_parameters_keep_their_order_in_the_key() {
    // The app reads the first `a`, as most frameworks do.
    let upstream = Upstream::builder()
        .handler("/q", |req| async move {
            let query = req.uri().query().unwrap_or("").to_string();
            let first = query
                .split('&')
                .find_map(|p| p.strip_prefix("a="))
                .unwrap_or("")
                .to_string();
            text(200, format!("a is {first}"))
        })
        .run()
        .await;
    let unpoll = Unpoll::start(
        &upstream.url(),
        "[[cache]]\npath = \"/q\"\nttl = \"30s\"\nvary = []",
    )
    .await;
    let http = client();
    let get = |q: &str| {
        let (http, url) = (http.clone(), unpoll.url(&format!("/q?{q}")));
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    assert_eq!(get("a=evil&a=good").await, "a is evil");
    assert_eq!(get("a=good&a=evil").await, "a is good");
    // Other names may still come in any order.
    assert_eq!(get("a=good&b=1&a=evil").await, "a is good");
    assert_eq!(get("b=1&a=good&a=evil").await, "a is good");
    assert_eq!(upstream.hits("/q"), 3);
}

#[tokio::test]
async fn the_host_a_client_sends_is_part_of_the_key() {
    let upstream = Upstream::builder()
        .handler("/links", |req| async move {
            // Behind a proxy that replaces Host, apps read X-Forwarded-Host.
            let h = req.headers();
            let host = h.get("x-forwarded-host").or(h.get("host")).unwrap();
            text(200, format!("https://{}/next", host.to_str().unwrap()))
        })
        .run()
        .await;
    for (vary, preserve_host) in [("vary = []", true), ("", true), ("vary = []", false)] {
        let unpoll = Unpoll::start(
            &upstream.url(),
            &format!(
                "[proxy]\npreserve_host = {preserve_host}\n\
                 [[cache]]\npath = \"/links\"\nttl = \"30s\"\n{vary}"
            ),
        )
        .await;
        let http = client();
        let evil = http
            .get(unpoll.url("/links"))
            .header("host", "evil.example")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(evil, "https://evil.example/next");
        let good = http
            .get(unpoll.url("/links"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            !good.contains("evil"),
            "{vary:?}, preserve_host = {preserve_host}: served {good}"
        );
    }
}

/// `/me` answers with the bytes of every Cookie line it received, framed.
async fn cookie_upstream() -> Upstream {
    Upstream::builder()
        .handler("/me", |req| async move {
            let mut body = Vec::new();
            for v in req.headers().get_all("cookie") {
                body.extend_from_slice(b"[");
                body.extend_from_slice(v.as_bytes());
                body.extend_from_slice(b"]");
            }
            text(200, body)
        })
        .run()
        .await
}

#[tokio::test]
async fn cookies_are_keyed_by_their_bytes_and_lines() {
    let upstream = cookie_upstream().await;
    let unpoll = Unpoll::start(&upstream.url(), "[[cache]]\npath = \"/me\"\nttl = \"30s\"").await;
    let http = client();
    let get = |lines: Vec<&'static [u8]>| {
        let (http, url) = (http.clone(), unpoll.url("/me"));
        async move {
            let mut headers = reqwest::header::HeaderMap::new();
            for l in lines {
                headers.append(
                    "cookie",
                    reqwest::header::HeaderValue::from_bytes(l).unwrap(),
                );
            }
            let resp = http.get(url).headers(headers).send().await.unwrap();
            resp.bytes().await.unwrap()
        }
    };
    // Not UTF-8, and different: two users.
    assert_eq!(get(vec![b"s=\xff"]).await, Bytes::from_static(b"[s=\xff]"));
    assert_eq!(get(vec![b"s=\xfe"]).await, Bytes::from_static(b"[s=\xfe]"));
    // Two lines are not one line joined.
    assert_eq!(
        get(vec![b"x=1", b"y=2"]).await,
        Bytes::from_static(b"[x=1][y=2]")
    );
    assert_eq!(
        get(vec![b"x=1:y=2"]).await,
        Bytes::from_static(b"[x=1:y=2]")
    );
    assert_eq!(
        get(vec![b"x=1,y=2"]).await,
        Bytes::from_static(b"[x=1,y=2]")
    );
    assert_eq!(upstream.hits("/me"), 5);
}
