//! Memory of idle subscribers on the hub/SSE side alone (no sockets): RSS delta per
//! subscription + SSE body. Run with `cargo test --test memory -- --ignored --nocapture`.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use unpoll::hub::{Hub, HubConfig};
use unpoll::sse::{SseBody, SseOptions};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap()
}

#[tokio::test]
#[ignore = "measurement, prints numbers"]
async fn idle_subscriber_memory_on_the_hub_side() {
    const N: usize = 50_000;
    let hub = Hub::new(HubConfig {
        max_subscribers_per_channel: N,
        ..HubConfig::default()
    });
    let shutdown = CancellationToken::new();
    let channels = vec!["fan".to_string()];
    let before = rss_kib();
    let mut bodies = Vec::with_capacity(N);
    for _ in 0..N {
        let sub = hub.subscribe(&channels, None, None).unwrap();
        bodies.push(SseBody::new(sub, SseOptions::default(), shutdown.clone()));
    }
    // Poll each once so it registers its waker and heartbeat timer, as a served stream does.
    for b in bodies.iter_mut() {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut pinned = std::pin::Pin::new(&mut *b);
        let _ = http_body::Body::poll_frame(pinned.as_mut(), &mut cx);
        let _ = http_body::Body::poll_frame(pinned.as_mut(), &mut cx);
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let after = rss_kib();
    println!(
        "{N} idle subscriptions + SSE bodies: {} KiB, {} bytes each",
        after - before,
        (after - before) * 1024 / N as u64
    );
    drop(bodies);
}
