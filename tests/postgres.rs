//! Postgres as an event source, against the machine's real server (`DATABASE_URL`).
//! Every test uses its own tables and channels, so they run in parallel.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::pg::{
    Delivered, RecordingSink, TcpProxy, exec, insert_rows, make_outbox, pool, sql_trigger, unique,
    url_via,
};
use common::{Unpoll, Upstream, client, eventually, metric};
use serde_json::json;
use sqlx::AssertSqlSafe;

const WAIT: Duration = Duration::from_secs(20);

/// `[postgres]` for `url` with fast reconnects (tests should not wait 30 s for a retry).
fn postgres_section(url: &str) -> String {
    format!(
        "[postgres]\nurl = \"{url}\"\nreconnect_min = \"20ms\"\nreconnect_max = \"200ms\"\n\
         connect_timeout = \"2s\"\noutbox_poll = \"200ms\"\n"
    )
}

async fn readyz(unpoll: &Unpoll) -> (u16, String) {
    let resp = client()
        .get(unpoll.admin_url("/readyz"))
        .send()
        .await
        .expect("GET /readyz");
    (
        resp.status().as_u16(),
        resp.text().await.unwrap_or_default(),
    )
}

async fn notify(pool: &sqlx::PgPool, channel: &str, payload: &str) {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(pool)
        .await
        .expect("pg_notify");
}

/// Wait until the listener is connected (ready), so a NOTIFY sent now is received.
async fn wait_ready(unpoll: &Unpoll) {
    let app = unpoll.app.clone();
    eventually(WAIT, "postgres listener ready", move || {
        let app = app.clone();
        async move { app.readiness.is_ready() }
    })
    .await;
}

#[tokio::test]
async fn sql_trigger_output_turns_changes_into_events_and_purges() {
    let db = pool().await;
    let table = unique("reservas");
    let listen = unique("reservas_changes");
    exec(
        &db,
        &format!("CREATE TABLE {table} (id serial PRIMARY KEY, business_id int, note text)"),
    )
    .await;
    let sql = sql_trigger(&[
        "--table",
        &table,
        "--notify",
        &listen,
        "--columns",
        "id,business_id",
    ])
    .await;
    exec(&db, &sql).await;

    let sink = Arc::new(RecordingSink::default());
    let upstream = Upstream::builder().route("/", "app").run().await;
    let extra = format!(
        "{}[[notify]]\nlisten = \"{listen}\"\nchannel = \"reservas:{{payload.business_id}}\"\n\
         event = \"{{payload.op}}\"\npurge = [\"reservas:{{payload.business_id}}\"]\n",
        postgres_section(&common::pg::database_url())
    );
    let unpoll = Unpoll::start_with_sink(&upstream.url(), &extra, sink.clone()).await;
    wait_ready(&unpoll).await;

    exec(
        &db,
        &format!(
            "INSERT INTO {table} (business_id, note) VALUES (7, 'a');
             UPDATE {table} SET note = 'b';
             DELETE FROM {table};"
        ),
    )
    .await;
    sink.wait(WAIT, "three events", |log| {
        log.iter()
            .filter(|d| matches!(d, Delivered::Event { .. }))
            .count()
            >= 3
    })
    .await;
    let events = sink.events();
    let ops: Vec<_> = events.iter().map(|(_, e, _)| e.clone().unwrap()).collect();
    assert_eq!(ops, ["INSERT", "UPDATE", "DELETE"]);
    for (channel, _, data) in &events {
        assert_eq!(channel, "reservas:7");
        assert_eq!(data["id"], json!(1));
        assert_eq!(data["table"], json!(table));
        assert!(
            data.get("note").is_none(),
            "only the chosen columns: {data}"
        );
    }
    let purges = sink
        .all()
        .into_iter()
        .filter(|d| *d == Delivered::Purge(vec!["reservas:7".into()]))
        .count();
    assert_eq!(purges, 3, "each event purges the rule's tags");
    let m = unpoll.metrics().await;
    assert_eq!(
        metric(
            &m,
            &format!("unpoll_postgres_notifications_total{{listen=\"{listen}\"}}")
        ),
        3.0
    );
    assert_eq!(metric(&m, "unpoll_postgres_connected "), 1.0);
    // No gap happened, so nobody was reset.
    assert!(!sink.all().iter().any(|d| matches!(d, Delivered::Reset(_))));
    exec(&db, &format!("DROP TABLE {table}")).await;
}

#[tokio::test]
async fn default_payload_is_the_primary_key() {
    let db = pool().await;
    let table = unique("pk");
    let listen = unique("pk_changes");
    exec(
        &db,
        &format!("CREATE TABLE {table} (a int, b text, big text, PRIMARY KEY (a, b))"),
    )
    .await;
    exec(
        &db,
        &sql_trigger(&["--table", &table, "--notify", &listen]).await,
    )
    .await;
    let sink = Arc::new(RecordingSink::default());
    let extra = format!(
        "{}[[notify]]\nlisten = \"{listen}\"\nchannel = \"pk:{{payload.a}}:{{payload.b}}\"\n",
        postgres_section(&common::pg::database_url())
    );
    let unpoll = Unpoll::start_with_sink("http://127.0.0.1:1", &extra, sink.clone()).await;
    wait_ready(&unpoll).await;
    exec(
        &db,
        &format!("INSERT INTO {table} VALUES (1, 'x', repeat('z', 20000))"),
    )
    .await;
    sink.wait(WAIT, "one event", |log| !log.is_empty()).await;
    let (channel, event, data) = sink.events().remove(0);
    assert_eq!(channel, "pk:1:x");
    assert_eq!(event, None);
    assert_eq!(
        data,
        json!({"a": 1, "b": "x", "op": "INSERT", "table": table})
    );
    exec(&db, &format!("DROP TABLE {table}")).await;
}

#[tokio::test]
async fn malformed_payloads_are_counted_and_nothing_crashes() {
    let db = pool().await;
    let listen = unique("mal");
    let sink = Arc::new(RecordingSink::default());
    let extra = format!(
        "{}[[notify]]\nlisten = \"{listen}\"\nchannel = \"m:{{payload.id}}\"\n\
         data = {{ id = \"{{payload.id}}\" }}\n",
        postgres_section(&common::pg::database_url())
    );
    let unpoll = Unpoll::start_with_sink("http://127.0.0.1:1", &extra, sink.clone()).await;
    wait_ready(&unpoll).await;
    for bad in [
        "not json",
        "[1,2]",
        "\"s\"",
        "",
        "{\"other\": 1}",
        "{\"id\": null}",
    ] {
        notify(&db, &listen, bad).await;
    }
    notify(&db, &listen, r#"{"id": 42}"#).await;
    sink.wait(WAIT, "the valid event", |log| !log.is_empty())
        .await;
    assert_eq!(
        sink.events(),
        [("m:42".to_string(), None, json!({"id": 42}))]
    );
    let m = unpoll.metrics().await;
    assert_eq!(metric(&m, "unpoll_postgres_malformed_payloads_total "), 4.0);
    assert_eq!(
        metric(
            &m,
            "unpoll_postgres_dropped_total{rule=\"notify[0]\",reason=\"missing_value\"}"
        ),
        2.0
    );
    assert_eq!(readyz(&unpoll).await.0, 200);
}

#[tokio::test]
async fn terminated_listener_reconnects_resets_and_flows_again() {
    let db = pool().await;
    let listen = unique("term");
    let app_name = unique("unpoll_term");
    let sink = Arc::new(RecordingSink::default());
    let extra = format!(
        "{}[[notify]]\nlisten = \"{listen}\"\nchannel = \"t:{{payload.id}}\"\n\
         purge = [\"t:{{payload.id}}\", \"all\"]\n",
        postgres_section(&url_via(common::pg::server_addr(), &app_name))
    );
    let unpoll = Unpoll::start_with_sink("http://127.0.0.1:1", &extra, sink.clone()).await;
    wait_ready(&unpoll).await;
    notify(&db, &listen, r#"{"id": 1}"#).await;
    sink.wait(WAIT, "first event", |log| !log.is_empty()).await;

    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(&app_name)
    .fetch_all(&db)
    .await
    .unwrap();
    assert!(!killed.is_empty(), "the listener's backend was found");

    sink.wait(
        WAIT,
        "reset and pattern purges after the reconnect",
        |log| {
            log.contains(&Delivered::Reset("t:*".into()))
                && log.contains(&Delivered::PurgeGlob("t:*".into()))
                && log.contains(&Delivered::PurgeGlob("all".into()))
        },
    )
    .await;
    let unpoll_ref = &unpoll;
    eventually(WAIT, "a reconnect counted", || async move {
        metric(
            &unpoll_ref.metrics().await,
            "unpoll_postgres_reconnects_total ",
        ) >= 1.0
    })
    .await;
    wait_ready(&unpoll).await;
    notify(&db, &listen, r#"{"id": 2}"#).await;
    sink.wait(WAIT, "an event after the reconnect", |log| {
        log.iter()
            .any(|d| matches!(d, Delivered::Event { channel, .. } if channel == "t:2"))
    })
    .await;
    let m = unpoll.metrics().await;
    assert_eq!(metric(&m, "unpoll_postgres_resets_total "), 1.0);
    assert_eq!(readyz(&unpoll).await.0, 200);
}

#[tokio::test]
async fn outage_fails_readiness_then_recovers_with_reset() {
    let db = pool().await;
    let listen = unique("outage");
    let proxy = TcpProxy::start(common::pg::server_addr(), true).await;
    let sink = Arc::new(RecordingSink::default());
    let extra = format!(
        "{}[[notify]]\nlisten = \"{listen}\"\nchannel = \"o:{{payload.id}}\"\n",
        postgres_section(&url_via(proxy.addr, "unpoll_outage"))
    );
    let unpoll = Unpoll::start_with_sink("http://127.0.0.1:1", &extra, sink.clone()).await;
    wait_ready(&unpoll).await;

    proxy.cut();
    let u = &unpoll;
    eventually(WAIT, "/readyz 503 naming postgres", || async move {
        let (status, body) = readyz(u).await;
        status == 503 && body.contains("postgres:")
    })
    .await;
    // Sent while unpoll is disconnected: lost for good (plain NOTIFY).
    notify(&db, &listen, r#"{"id": 1}"#).await;
    proxy.restore();
    eventually(WAIT, "/readyz 200 again", || async move {
        readyz(u).await.0 == 200
    })
    .await;
    sink.wait(WAIT, "subscribers told about the gap", |log| {
        log.contains(&Delivered::Reset("o:*".into()))
    })
    .await;
    notify(&db, &listen, r#"{"id": 2}"#).await;
    sink.wait(WAIT, "notifications flow again", |log| {
        log.iter()
            .any(|d| matches!(d, Delivered::Event { channel, .. } if channel == "o:2"))
    })
    .await;
    assert!(
        !sink.events().iter().any(|(c, _, _)| c == "o:1"),
        "a NOTIFY during the outage cannot arrive"
    );
}

#[tokio::test]
async fn silent_network_failure_is_detected_by_the_probe() {
    let db = pool().await;
    let listen = unique("silent");
    let proxy = TcpProxy::start(common::pg::server_addr(), true).await;
    let sink = Arc::new(RecordingSink::default());
    let extra = format!(
        "{}probe_interval = \"100ms\"\n[[notify]]\nlisten = \"{listen}\"\nchannel = \"s\"\n",
        postgres_section(&url_via(proxy.addr, "unpoll_silent"))
            .replace("connect_timeout = \"2s\"", "connect_timeout = \"300ms\"")
    );
    let unpoll = Unpoll::start_with_sink("http://127.0.0.1:1", &extra, sink.clone()).await;
    wait_ready(&unpoll).await;
    proxy.blackhole();
    let u = &unpoll;
    eventually(WAIT, "the silent connection declared dead", || async move {
        let (status, body) = readyz(u).await;
        status == 503 && body.contains("presumed dead")
    })
    .await;
    proxy.restore();
    wait_ready(&unpoll).await;
    sink.wait(WAIT, "reset after the silent gap", |log| {
        log.contains(&Delivered::Reset("s".into()))
    })
    .await;
    notify(&db, &listen, "{}").await;
    sink.wait(WAIT, "events flow again", |log| {
        log.iter().any(|d| matches!(d, Delivered::Event { .. }))
    })
    .await;
}

#[tokio::test]
async fn starts_without_postgres_keeps_proxying_and_connects_later() {
    let db = pool().await;
    let listen = unique("late");
    let proxy = TcpProxy::start(common::pg::server_addr(), false).await;
    let upstream = Upstream::builder().route("/hello", "hi").run().await;
    let sink = Arc::new(RecordingSink::default());
    let extra = format!(
        "{}[[notify]]\nlisten = \"{listen}\"\nchannel = \"late\"\n",
        postgres_section(&url_via(proxy.addr, "unpoll_late"))
    );
    let unpoll = Unpoll::start_with_sink(&upstream.url(), &extra, sink.clone()).await;
    let body = common::get_text(&unpoll.url("/hello")).await;
    assert_eq!(body, "hi", "proxying works while Postgres is unreachable");
    let u = &unpoll;
    eventually(WAIT, "a failed connection attempt", || async move {
        metric(
            &u.metrics().await,
            "unpoll_postgres_connect_failures_total ",
        ) >= 1.0
    })
    .await;
    let (status, text) = readyz(&unpoll).await;
    assert_eq!(status, 503);
    assert!(text.contains("postgres: starting"), "{text}");

    proxy.restore();
    wait_ready(&unpoll).await;
    notify(&db, &listen, "{}").await;
    sink.wait(WAIT, "the first event", |log| {
        log.iter().any(|d| matches!(d, Delivered::Event { .. }))
    })
    .await;
}

fn ns(sink: &RecordingSink) -> Vec<i64> {
    sink.events()
        .iter()
        .map(|(_, _, d)| d["n"].as_i64().expect("n"))
        .collect()
}

#[tokio::test]
async fn outbox_rows_written_while_disconnected_arrive_in_order_once() {
    let db = pool().await;
    let listen = unique("ob_wake");
    let outbox = make_outbox(&db, &listen).await;
    let proxy = TcpProxy::start(common::pg::server_addr(), true).await;
    let sink = Arc::new(RecordingSink::default());
    let extra = format!(
        "{}[[notify]]\nlisten = \"{listen}\"\noutbox = \"{outbox}\"\n",
        postgres_section(&url_via(proxy.addr, "unpoll_outbox"))
    );
    let unpoll = Unpoll::start_with_sink("http://127.0.0.1:1", &extra, sink.clone()).await;
    wait_ready(&unpoll).await;
    insert_rows(&db, &outbox, 1, 10).await;
    sink.wait(WAIT, "10 rows", |log| log.len() >= 10).await;

    proxy.cut();
    let u = &unpoll;
    eventually(
        WAIT,
        "listener down",
        || async move { readyz(u).await.0 == 503 },
    )
    .await;
    insert_rows(&db, &outbox, 11, 30).await;
    proxy.restore();
    sink.wait(WAIT, "30 rows", |log| log.len() >= 30).await;
    assert_eq!(ns(&sink), (1..=30).collect::<Vec<_>>());
    assert!(
        !sink.all().iter().any(|d| matches!(d, Delivered::Reset(_))),
        "an outbox loses nothing, so nobody is reset"
    );
    let (channel, event, _) = sink.events().remove(0);
    assert_eq!((channel.as_str(), event.as_deref()), ("ob", Some("row")));

    // A restart resumes after the saved position: rows written while unpoll was down are
    // delivered, none of the earlier ones again.
    eventually(WAIT, "lag back to zero", || async move {
        metric(
            &u.metrics().await,
            "unpoll_postgres_outbox_lag_rows{rule=\"notify[0]\"}",
        ) == 0.0
    })
    .await;
    unpoll.stop().await;
    insert_rows(&db, &outbox, 31, 35).await;
    let sink2 = Arc::new(RecordingSink::default());
    let unpoll = Unpoll::start_with_sink("http://127.0.0.1:1", &extra, sink2.clone()).await;
    sink2
        .wait(WAIT, "5 rows after restart", |log| log.len() >= 5)
        .await;
    wait_ready(&unpoll).await;
    insert_rows(&db, &outbox, 36, 36).await;
    sink2.wait(WAIT, "6 rows", |log| log.len() >= 6).await;
    assert_eq!(ns(&sink2), (31..=36).collect::<Vec<_>>());
}

#[tokio::test]
async fn outbox_concurrent_writers_with_slow_commits_exactly_once() {
    const WRITERS: i64 = 8;
    const TXNS: i64 = 50;
    const ROWS: i64 = 10; // per transaction: 8 × 50 × 10 = 4,000 rows, 500 per writer
    let db = pool().await;
    let listen = unique("ob_conc");
    let outbox = make_outbox(&db, &listen).await;
    let sink = Arc::new(RecordingSink::default());
    let extra = format!(
        "{}[[notify]]\nlisten = \"{listen}\"\noutbox = \"{outbox}\"\n",
        postgres_section(&common::pg::database_url())
    );
    let unpoll = Unpoll::start_with_sink("http://127.0.0.1:1", &extra, sink.clone()).await;
    wait_ready(&unpoll).await;

    let writers = (0..WRITERS).map(|w| {
        let db = db.clone();
        let outbox = outbox.clone();
        tokio::spawn(async move {
            for t in 0..TXNS {
                let mut tx = db.begin().await.unwrap();
                for r in 0..ROWS {
                    let n = t * ROWS + r;
                    sqlx::query(AssertSqlSafe(format!(
                        "INSERT INTO {outbox} (channel, data) VALUES ('c', jsonb_build_object('w', {w}::int, 'n', {n}::int))"
                    )))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                }
                // Every third transaction of each writer commits slowly, interleaving with
                // the others' fast ones.
                if (t + w) % 3 == 0 {
                    sqlx::query("SELECT pg_sleep(0.02)")
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                }
                tx.commit().await.unwrap();
            }
        })
    });
    for w in writers.collect::<Vec<_>>() {
        w.await.unwrap();
    }
    let total = (WRITERS * TXNS * ROWS) as usize;
    sink.wait(Duration::from_secs(60), "every row", |log| {
        log.len() >= total
    })
    .await;
    // Nothing more arrives on the next polls (no duplicates).
    let u = &unpoll;
    eventually(WAIT, "lag zero", || async move {
        metric(
            &u.metrics().await,
            "unpoll_postgres_outbox_lag_rows{rule=\"notify[0]\"}",
        ) == 0.0
    })
    .await;
    let events = sink.events();
    assert_eq!(events.len(), total, "each row exactly once");
    let mut seen = std::collections::HashSet::new();
    let mut last = vec![-1i64; WRITERS as usize];
    for (_, _, d) in &events {
        let (w, n) = (d["w"].as_i64().unwrap(), d["n"].as_i64().unwrap());
        assert!(seen.insert((w, n)), "duplicate {d}");
        assert!(
            n > last[w as usize],
            "writer {w}: {n} after {}",
            last[w as usize]
        );
        last[w as usize] = n;
    }
}

/// An SSE client: the parsed events of one stream.
async fn sse(
    url: String,
) -> impl futures::Stream<Item = eventsource_stream::Event> + Unpin + use<> {
    use eventsource_stream::Eventsource;
    use futures::StreamExt;
    let resp = client().get(&url).send().await.expect("open the stream");
    assert_eq!(resp.status(), 200, "stream refused");
    Box::pin(
        resp.bytes_stream()
            .eventsource()
            .filter_map(|e| async move { e.ok() }),
    )
}

async fn next_event(
    stream: &mut (impl futures::Stream<Item = eventsource_stream::Event> + Unpin),
) -> eventsource_stream::Event {
    use futures::StreamExt;
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("an SSE event in time")
        .expect("the stream stays open")
}

#[tokio::test]
async fn notify_reaches_sse_subscribers_and_a_lost_listener_resets_them() {
    let db = pool().await;
    let listen = unique("e2e");
    let app_name = unique("unpoll_e2e");
    let extra = format!(
        "{}[[notify]]\nlisten = \"{listen}\"\nchannel = \"reservas:{{payload.business_id}}\"\n\
         event = \"{{payload.op}}\"\n\
         purge = [\"reservas:{{payload.business_id}}\"]\n\
         [[stream]]\npath = \"/reservas/events\"\nchannels = [\"reservas:{{query.business_id}}\"]\n\
         auth = \"none\"\n\
         [[cache]]\npath = \"/reservas\"\nttl = \"60s\"\ntags = [\"reservas:{{query.business_id}}\"]\n",
        postgres_section(&url_via(common::pg::server_addr(), &app_name))
    );
    let upstream = Upstream::builder().route("/reservas", "list").run().await;
    let unpoll = Unpoll::start(&upstream.url(), &extra).await;
    wait_ready(&unpoll).await;
    let poll = || async {
        let resp = client()
            .get(unpoll.url("/reservas?business_id=1"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.text().await.unwrap(), "list");
    };
    poll().await;
    poll().await;
    assert_eq!(
        upstream.hits("/reservas"),
        1,
        "the second poll is a cache hit"
    );
    let mut one = sse(unpoll.url("/reservas/events?business_id=1")).await;
    let mut two = sse(unpoll.url("/reservas/events?business_id=2")).await;

    notify(
        &db,
        &listen,
        r#"{"business_id": 1, "op": "INSERT", "id": 10}"#,
    )
    .await;
    notify(
        &db,
        &listen,
        r#"{"business_id": 2, "op": "UPDATE", "id": 20}"#,
    )
    .await;
    let e = next_event(&mut one).await;
    assert_eq!(e.event, "INSERT");
    let data: serde_json::Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(data["id"], json!(10));
    let e = next_event(&mut two).await;
    assert_eq!((e.event.as_str(), e.data.contains("20")), ("UPDATE", true));
    poll().await;
    assert_eq!(upstream.hits("/reservas"), 2, "the event purged the tag");
    poll().await;
    assert_eq!(upstream.hits("/reservas"), 2);

    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(&app_name)
    .execute(&db)
    .await
    .unwrap();
    for stream in [&mut one, &mut two] {
        let e = next_event(stream).await;
        assert_eq!(e.event, "reset", "the gap is announced: {e:?}");
        assert!(e.data.contains("source_lost"), "{}", e.data);
    }
    wait_ready(&unpoll).await;
    notify(
        &db,
        &listen,
        r#"{"business_id": 1, "op": "DELETE", "id": 10}"#,
    )
    .await;
    assert_eq!(next_event(&mut one).await.event, "DELETE");
}

#[tokio::test]
async fn sql_trigger_rejects_bad_names_with_exit_64() {
    let out = tokio::process::Command::new(common::process::binary())
        .args(["sql-trigger", "--table", "a.b.c", "--notify", "x"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--table: invalid name \"a.b.c\""), "{err}");
}

#[tokio::test]
async fn missing_outbox_table_is_counted_and_retried() {
    let listen = unique("ob_missing");
    let sink = Arc::new(RecordingSink::default());
    let extra = format!(
        "{}[[notify]]\nlisten = \"{listen}\"\noutbox = \"{}\"\n",
        postgres_section(&common::pg::database_url()),
        unique("no_such_outbox")
    );
    let unpoll = Unpoll::start_with_sink("http://127.0.0.1:1", &extra, sink).await;
    let u = &unpoll;
    eventually(WAIT, "two failed outbox passes", || async move {
        metric(
            &u.metrics().await,
            "unpoll_postgres_outbox_errors_total{rule=\"notify[0]\"}",
        ) >= 2.0
    })
    .await;
    // The listener itself is fine: readiness is about the connection.
    wait_ready(&unpoll).await;
}

#[tokio::test]
async fn retention_deletes_rows_every_consumer_has_delivered() {
    let db = pool().await;
    let listen = unique("ob_ret");
    let outbox = make_outbox(&db, &listen).await;
    insert_rows(&db, &outbox, 1, 10).await;
    // Another instance that has only delivered up to id 4 holds the rest back.
    exec(
        &db,
        &format!(
            "INSERT INTO unpoll_outbox_cursors (outbox, consumer, last_id) VALUES ('{outbox}', 'laggard', 4)"
        ),
    )
    .await;
    let sink = Arc::new(RecordingSink::default());
    let extra = format!(
        "{}outbox_retention = \"1ms\"\n[[notify]]\nlisten = \"{listen}\"\noutbox = \"{outbox}\"\n",
        postgres_section(&common::pg::database_url())
    );
    let _unpoll = Unpoll::start_with_sink("http://127.0.0.1:1", &extra, sink.clone()).await;
    sink.wait(WAIT, "10 rows", |log| log.len() >= 10).await;
    let count_query = format!("SELECT count(*), min(id) FROM {outbox}");
    let db_ref = &db;
    let q = &count_query;
    eventually(
        WAIT,
        "rows up to the laggard's position deleted",
        || async move {
            let (count, min): (i64, Option<i64>) = sqlx::query_as(AssertSqlSafe(q.clone()))
                .fetch_one(db_ref)
                .await
                .unwrap();
            count == 6 && min == Some(5)
        },
    )
    .await;
    let (saved,): (i64,) = sqlx::query_as(
        "SELECT last_id FROM unpoll_outbox_cursors WHERE outbox = $1 AND consumer = 'unpoll'",
    )
    .bind(&outbox)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(saved, 10, "this instance's position is saved");
}
