//! Postgres source benchmarks (ignored by `cargo test`; run `benches/postgres/run`):
//! NOTIFY → SSE subscriber latency at 1,000 subscribers, and outbox rows/s to subscribers.
//! Numbers go to BENCHMARKS.md.

mod common;

use std::time::{Duration, Instant};

use common::pg::{exec, pool, unique};
use common::{Unpoll, client};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use tokio::sync::mpsc;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Open `n` SSE subscribers on `url`; each reports (message index, arrival) on `tx`.
async fn subscribers(n: usize, url: &str, tx: mpsc::UnboundedSender<(usize, Instant)>) {
    let http = client();
    for _ in 0..n {
        let resp = http.get(url).send().await.expect("subscribe");
        assert_eq!(resp.status(), 200);
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut events = resp.bytes_stream().eventsource();
            while let Some(Ok(e)) = events.next().await {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&e.data)
                    && let Some(i) = v["i"].as_u64()
                {
                    let _ = tx.send((i as usize, Instant::now()));
                }
            }
        });
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: run benches/postgres/run"]
async fn notify_latency_at_1000_subscribers() {
    let subs = env_or("SUBSCRIBERS", 1000);
    let messages = env_or("MESSAGES", 50);
    let db = pool().await;
    let listen = unique("bench");
    let extra = format!(
        "[postgres]\nurl = \"{}\"\n[[notify]]\nlisten = \"{listen}\"\nchannel = \"bench\"\n\
         [[stream]]\npath = \"/events\"\nchannels = [\"bench\"]\nauth = \"none\"\n\
         [log]\naccess = false\n",
        common::pg::database_url()
    );
    let unpoll = Unpoll::start("http://127.0.0.1:1", &extra).await;
    let app = unpoll.app.clone();
    common::eventually(Duration::from_secs(20), "ready", || {
        let app = app.clone();
        async move { app.readiness.is_ready() }
    })
    .await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    subscribers(subs, &unpoll.url("/events"), tx).await;

    let mut sent = Vec::with_capacity(messages);
    for i in 0..messages {
        sent.push(Instant::now());
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&listen)
            .bind(format!("{{\"i\": {i}}}"))
            .execute(&db)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let expected = subs * messages;
    let mut latencies = Vec::with_capacity(expected);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while latencies.len() < expected {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((i, at))) => latencies.push(at - sent[i]),
            _ => break,
        }
    }
    latencies.sort();
    println!(
        "BENCH notify→SSE: {subs} subscribers × {messages} messages: delivered {}/{expected}, \
         p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );
    assert_eq!(
        latencies.len(),
        expected,
        "every subscriber got every message"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: run benches/postgres/run"]
async fn outbox_rows_per_second() {
    let rows = env_or("ROWS", 20_000);
    let subs = env_or("OUTBOX_SUBSCRIBERS", 10);
    let db = pool().await;
    let listen = unique("bench_ob");
    let table = unique("bench_src");
    let outbox = unique("bench_outbox");
    exec(
        &db,
        &format!("CREATE TABLE {table} (id serial PRIMARY KEY)"),
    )
    .await;
    let sql = unpoll::sources::postgres::trigger::generate(
        &unpoll::sources::postgres::trigger::TriggerSpec {
            table: table.clone(),
            notify: listen.clone(),
            columns: Vec::new(),
            outbox: Some(outbox.clone()),
        },
    )
    .unwrap();
    exec(&db, &sql).await;
    let extra = format!(
        "[postgres]\nurl = \"{}\"\n[[notify]]\nlisten = \"{listen}\"\noutbox = \"{outbox}\"\n\
         [[stream]]\npath = \"/events\"\nchannels = [\"ob\"]\nauth = \"none\"\n\
         [log]\naccess = false\n\
         [hub]\nsubscriber_queue = {queue}\nsubscriber_queue_bytes = \"64MiB\"\n",
        common::pg::database_url(),
        // A burst of `rows` events: subscribers must hold it all, or the hub (rightly)
        // disconnects them as too slow.
        queue = rows + 16,
    );
    let unpoll = Unpoll::start("http://127.0.0.1:1", &extra).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    subscribers(subs, &unpoll.url("/events"), tx).await;
    let started = Instant::now();
    exec(
        &db,
        &format!(
            "INSERT INTO {outbox} (channel, data) \
             SELECT 'ob', jsonb_build_object('i', n) FROM generate_series(0, {}) n",
            rows - 1
        ),
    )
    .await;
    let committed = started.elapsed();
    let mut received = 0;
    let expected = rows * subs;
    while received < expected {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(Some(_)) => received += 1,
            _ => break,
        }
    }
    let total = started.elapsed();
    println!(
        "BENCH outbox: {rows} rows (one transaction, committed in {committed:?}) to {subs} \
         subscribers: {received}/{expected} deliveries in {total:?}: {:.0} rows/s",
        rows as f64 / total.as_secs_f64()
    );
    assert_eq!(received, expected);
}
