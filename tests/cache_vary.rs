//! The app's own `Vary` (issue 16, item 1): the headers a response names become a secondary
//! key under the rule's key, as an HTTP cache does (RFC 9111 §4.1). The upstream answers
//! with the `Vary` a Next.js 16 app sends on every response.

mod common;

use std::time::Duration;

use common::upstream::text;
use common::{Unpoll, Upstream, client, metric};

/// What Next.js 16 sends on every page and RSC response.
const NEXT_VARY: &str = "rsc, next-router-state-tree, next-router-prefetch, \
                         next-router-segment-prefetch, Accept-Encoding";

const RULE: &str = "[[cache]]\npath = \"/reservations\"\nttl = \"60s\"";

/// The headers a variant is made of, as the test's requests send them.
type Variant = &'static [(&'static str, &'static str)];

/// A full page load, an RSC navigation, a prefetch of it, the same navigation from another
/// router state, and a page load asking for compression.
const VARIANTS: [Variant; 5] = [
    &[],
    &[("rsc", "1"), ("next-router-state-tree", "%5B%22%22%5D")],
    &[
        ("rsc", "1"),
        ("next-router-state-tree", "%5B%22%22%5D"),
        ("next-router-prefetch", "1"),
    ],
    &[("rsc", "1"), ("next-router-state-tree", "%5B%22r%22%5D")],
    &[("accept-encoding", "gzip, br")],
];

/// `/reservations` answers like a Next.js page: with the user's cookie and the request's
/// values of every header Next.js varies on in the body, so a response served to the
/// wrong user or variant shows.
async fn next_upstream(delay: Duration) -> Upstream {
    Upstream::builder()
        .handler("/reservations", |req| async move {
            let h = req.headers();
            let value = |name: &str| {
                h.get(name)
                    .map_or("-".to_string(), |v| v.to_str().unwrap().to_string())
            };
            let body = body_for(
                &value("cookie"),
                [
                    "rsc",
                    "next-router-state-tree",
                    "next-router-prefetch",
                    "accept-encoding",
                ]
                .map(value),
            );
            let mut resp = text(200, body);
            resp.headers_mut()
                .insert("vary", NEXT_VARY.parse().unwrap());
            resp
        })
        .delay("/reservations", delay)
        .run()
        .await
}

fn body_for(cookie: &str, values: [String; 4]) -> String {
    format!("cookie={cookie} {}", values.join("|"))
}

/// The body the upstream gives `cookie` for `variant`.
fn expected(cookie: &str, variant: &[(&str, &str)]) -> String {
    let value = |name: &str| {
        variant
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("-".to_string(), |(_, v)| v.to_string())
    };
    body_for(
        cookie,
        [
            "rsc",
            "next-router-state-tree",
            "next-router-prefetch",
            "accept-encoding",
        ]
        .map(value),
    )
}

/// GET `/reservations` as `cookie` with `variant`: (Cache-Status, body).
async fn get(unpoll: &Unpoll, cookie: &str, variant: &[(&str, &str)]) -> (String, String) {
    // No automatic Accept-Encoding: the variant says exactly what is sent.
    let mut req = client()
        .get(unpoll.url("/reservations"))
        .header("cookie", cookie);
    for (k, v) in variant {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let status = resp.headers()["cache-status"].to_str().unwrap().to_string();
    (status, resp.text().await.unwrap())
}

#[tokio::test]
async fn a_next_js_vary_is_cached_per_variant_and_per_user() {
    let upstream = next_upstream(Duration::ZERO).await;
    let unpoll = Unpoll::start(&upstream.url(), RULE).await;
    for user in ["session=a", "session=b"] {
        for (i, variant) in VARIANTS.iter().enumerate() {
            let (status, body) = get(&unpoll, user, variant).await;
            assert_eq!(body, expected(user, variant), "{user} variant {i}");
            assert!(status.contains("stored"), "{user} variant {i}: {status}");
        }
        // Every variant again, in another order: each from its own entry.
        for (i, variant) in VARIANTS.iter().enumerate().rev() {
            let (status, body) = get(&unpoll, user, variant).await;
            assert_eq!(body, expected(user, variant), "{user} variant {i} again");
            assert!(status.contains("hit"), "{user} variant {i} again: {status}");
        }
    }
    assert_eq!(upstream.hits("/reservations"), 2 * VARIANTS.len());
    // An empty header is a value of its own, not the same as an absent one.
    let empty_rsc: Variant = &[("rsc", "")];
    let (status, body) = get(&unpoll, "session=a", empty_rsc).await;
    assert_eq!(body, expected("session=a", empty_rsc));
    assert!(status.contains("fwd=miss"), "{status}");
    assert_eq!(upstream.hits("/reservations"), 2 * VARIANTS.len() + 1);
}

#[tokio::test]
async fn coalescing_is_one_upstream_call_per_variant_per_user() {
    // Slow enough that the requests meet on the fetches in flight.
    let upstream = next_upstream(Duration::from_millis(300)).await;
    let unpoll = Unpoll::start(&upstream.url(), RULE).await;
    let unpoll = std::sync::Arc::new(unpoll);
    let variants = &VARIANTS[..3];
    let mut requests = Vec::new();
    for user in ["session=a", "session=b"] {
        for variant in variants {
            for _ in 0..6 {
                let unpoll = unpoll.clone();
                requests.push(tokio::spawn(async move {
                    let (_, body) = get(&unpoll, user, variant).await;
                    (user, *variant, body)
                }));
            }
        }
    }
    for r in futures::future::join_all(requests).await {
        let (user, variant, body) = r.unwrap();
        assert_eq!(body, expected(user, variant));
    }
    assert_eq!(upstream.hits("/reservations"), 2 * variants.len());
}

#[tokio::test]
async fn vary_star_is_never_stored_nor_shared() {
    let upstream = Upstream::builder()
        .handler("/star", |_| async {
            let mut resp = text(200, "depends on everything");
            resp.headers_mut().insert("vary", "rsc, *".parse().unwrap());
            resp
        })
        .delay("/star", Duration::from_millis(200))
        .run()
        .await;
    let unpoll = Unpoll::start(
        &upstream.url(),
        "[[cache]]\npath = \"/star\"\nttl = \"60s\"",
    )
    .await;
    let http = client();
    let requests = (0..4).map(|_| {
        let (http, url) = (http.clone(), unpoll.url("/star"));
        tokio::spawn(async move {
            let resp = http.get(url).header("cookie", "s=a").send().await.unwrap();
            resp.headers()["cache-status"].to_str().unwrap().to_string()
        })
    });
    for r in futures::future::join_all(requests).await {
        let status = r.unwrap();
        assert!(!status.contains("stored"), "{status}");
    }
    let resp = http
        .get(unpoll.url("/star"))
        .header("cookie", "s=a")
        .send()
        .await
        .unwrap();
    let status = resp.headers()["cache-status"].to_str().unwrap();
    assert!(status.contains("detail=vary"), "{status}");
    assert_eq!(upstream.hits("/star"), 5);
}

#[tokio::test]
async fn variants_past_the_bound_are_refused_and_counted() {
    let upstream = next_upstream(Duration::ZERO).await;
    let unpoll = Unpoll::start(&upstream.url(), RULE).await;
    // Nine router states of one user: eight variants fit, the ninth is refused.
    let trees: Vec<String> = (0..9).map(|i| format!("tree-{i}")).collect();
    let variant = |i: usize| [("rsc", "1"), ("next-router-state-tree", trees[i].as_str())];
    for i in 0..9 {
        let (status, body) = get(&unpoll, "session=a", &variant(i)).await;
        assert_eq!(body, expected("session=a", &variant(i)));
        if i < 8 {
            assert!(status.contains("stored"), "variant {i}: {status}");
        } else {
            assert!(status.contains("detail=variants-full"), "{status}");
        }
    }
    let metrics = unpoll.metrics().await;
    assert_eq!(
        metric(&metrics, "unpoll_cache_variants_refused_total"),
        1.0,
        "{metrics}"
    );
    // The eight stored ones are still served; the refused one goes upstream again.
    for i in 0..8 {
        let (status, _) = get(&unpoll, "session=a", &variant(i)).await;
        assert!(status.contains("hit"), "variant {i}: {status}");
    }
    assert_eq!(upstream.hits("/reservations"), 9);
    let (status, _) = get(&unpoll, "session=a", &variant(8)).await;
    assert!(status.contains("fwd=miss"), "{status}");
    assert_eq!(upstream.hits("/reservations"), 10);
    // Another user has room for their own.
    let (status, _) = get(&unpoll, "session=b", &variant(8)).await;
    assert!(status.contains("stored"), "{status}");
    assert_eq!(unpoll.stats().await["cache"]["variants_refused"], 2);
}

/// A shared key (`vary = []`: one entry for every client) is filled by anyone: a client
/// sending eight made-up router states must not stop its caching for everyone. Full, it
/// evicts its least recently hit variant: junk nobody hits goes, the polled one stays.
#[tokio::test]
async fn a_full_shared_key_evicts_junk_variants_and_keeps_the_one_clients_hit() {
    let upstream = next_upstream(Duration::ZERO).await;
    let unpoll = Unpoll::start(
        &upstream.url(),
        "[[cache]]\npath = \"/reservations\"\nttl = \"60s\"\nvary = []",
    )
    .await;
    let legit: Variant = &[("rsc", "1"), ("next-router-state-tree", "%5B%22%22%5D")];
    let (status, _) = get(&unpoll, "session=a", legit).await;
    assert!(status.contains("stored"), "{status}");
    // Polled by everyone: the same shared entry.
    for user in ["session=a", "session=b", "session=c"] {
        let (status, _) = get(&unpoll, user, legit).await;
        assert!(status.contains("; hit"), "{user}: {status}");
    }
    // An attacker's eight made-up router states: the seven free slots, then one more that
    // evicts the first junk (never hit), not the polled variant.
    let junk: Vec<String> = (0..8).map(|i| format!("junk-{i}")).collect();
    let junk_variant = |i: usize| [("rsc", "1"), ("next-router-state-tree", junk[i].as_str())];
    for i in 0..8 {
        let (status, _) = get(&unpoll, "session=evil", &junk_variant(i)).await;
        assert!(status.contains("stored"), "junk {i}: {status}");
    }
    let stats = unpoll.stats().await;
    assert_eq!(stats["cache"]["variants_evicted"], 1, "{stats}");
    assert_eq!(stats["cache"]["variants_refused"], 0, "{stats}");
    let hits_before = upstream.hits("/reservations");
    let (status, _) = get(&unpoll, "session=b", legit).await;
    assert!(
        status.contains("; hit"),
        "the polled variant stayed: {status}"
    );
    // A new legitimate variant is cached, by evicting the oldest junk left.
    let prefetch: Variant = &[
        ("rsc", "1"),
        ("next-router-state-tree", "%5B%22%22%5D"),
        ("next-router-prefetch", "1"),
    ];
    let (status, _) = get(&unpoll, "session=a", prefetch).await;
    assert!(status.contains("stored"), "{status}");
    let (status, _) = get(&unpoll, "session=c", prefetch).await;
    assert!(status.contains("; hit"), "{status}");
    let (status, _) = get(&unpoll, "session=a", legit).await;
    assert!(status.contains("; hit"), "{status}");
    assert_eq!(upstream.hits("/reservations"), hits_before + 1);
    // The junk that gave way is gone (a miss), the newer junk is still there.
    let (status, _) = get(&unpoll, "session=evil", &junk_variant(1)).await;
    assert!(status.contains("fwd=miss"), "evicted: {status}");
    let (status, _) = get(&unpoll, "session=evil", &junk_variant(7)).await;
    assert!(status.contains("; hit"), "{status}");
    let metrics = unpoll.metrics().await;
    // junk 0 (for junk 7), junk 1 (for the prefetch), junk 2 (for junk 1 refetched).
    assert_eq!(
        metric(&metrics, "unpoll_cache_variants_evicted_total"),
        3.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "unpoll_cache_variants_refused_total"),
        0.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_purge_reaches_every_variant_of_a_key() {
    let upstream = next_upstream(Duration::ZERO).await;
    let unpoll = Unpoll::start(
        &upstream.url(),
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"t0ken\"\n\
         [[cache]]\npath = \"/reservations\"\nttl = \"60s\"\ntags = [\"reservations\"]",
    )
    .await;
    for variant in &VARIANTS[..3] {
        get(&unpoll, "session=a", variant).await;
        let (status, _) = get(&unpoll, "session=a", variant).await;
        assert!(status.contains("hit"), "{status}");
    }
    assert_eq!(upstream.hits("/reservations"), 3);
    let purged = client()
        .post(unpoll.admin_url("/purge"))
        .bearer_auth("t0ken")
        .json(&serde_json::json!({"tags": ["reservations"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(purged.status().as_u16(), 200);
    for (i, variant) in VARIANTS[..3].iter().enumerate() {
        let (status, body) = get(&unpoll, "session=a", variant).await;
        assert_eq!(body, expected("session=a", variant));
        assert!(status.contains("fwd=miss"), "variant {i}: {status}");
        let (status, _) = get(&unpoll, "session=a", variant).await;
        assert!(status.contains("hit"), "variant {i} stored again: {status}");
    }
    assert_eq!(upstream.hits("/reservations"), 6);
}
