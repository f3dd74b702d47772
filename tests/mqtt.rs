//! MQTT as an event source, against the machine's real Mosquitto (`MQTT_URL`, default
//! mqtt://127.0.0.1:1883) and private Mosquitto instances a test restarts. Every test uses
//! its own topic prefix and client id, so they run in parallel.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::mqtt::{Mosquitto, Publisher, broker_url, free_port};
use common::pg::{Delivered, RecordingSink, TcpProxy, unique};
use common::sse::SseClient;
use common::{Unpoll, Upstream, client, eventually, metric};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);
const QUIET: Duration = Duration::from_millis(300);

/// `[mqtt]` for `url` with fast reconnects (tests should not wait 30 s for a retry).
fn mqtt_section(url: &str, client_id: &str) -> String {
    format!(
        "[mqtt]\nurl = \"{url}\"\nclient_id = \"{client_id}\"\nreconnect_min = \"20ms\"\n\
         reconnect_max = \"200ms\"\nconnect_timeout = \"2s\"\nkeep_alive = \"5s\"\n"
    )
}

/// A rule publishing `devices/{id}/position` under `prefix` on `device:{id}`.
fn device_rule(prefix: &str) -> String {
    format!(
        "[[topic]]\ntopic = \"{prefix}/devices/{{id}}/position\"\nchannel = \"device:{{topic.id}}\"\n\
         event = \"position\"\n"
    )
}

const DEVICE_STREAM: &str = "[[stream]]\npath = \"/positions\"\n\
     channels = [\"device:{query.device_ids}\"]\nauth = \"none\"\n";

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

/// Wait until the source is connected and subscribed (ready), so a message published now
/// is delivered.
async fn wait_ready(unpoll: &Unpoll) {
    let app = unpoll.app.clone();
    eventually(WAIT, "mqtt source ready", move || {
        let app = app.clone();
        async move { app.readiness.is_ready() }
    })
    .await;
}

async fn wait_not_ready(unpoll: &Unpoll) {
    let app = unpoll.app.clone();
    eventually(WAIT, "mqtt source not ready", move || {
        let app = app.clone();
        async move { app.readiness.not_ready().iter().any(|(c, _)| *c == "mqtt") }
    })
    .await;
}

async fn stream(unpoll: &Unpoll, device_ids: &str) -> SseClient {
    let s = SseClient::open(
        &client(),
        &unpoll.url(&format!("/positions?device_ids={device_ids}")),
        None,
    )
    .await;
    assert_eq!(s.status, 200);
    s
}

fn data(e: &eventsource_stream::Event) -> Value {
    serde_json::from_str(&e.data).unwrap_or_else(|_| panic!("JSON data: {e:?}"))
}

#[tokio::test]
async fn device_lists_get_their_devices_only_with_payload_fields() {
    let prefix = unique("t_filter");
    let extra = format!(
        "{}[[topic]]\ntopic = \"{prefix}/devices/{{id}}/position\"\n\
         channel = \"device:{{topic.id}}\"\nevent = \"position\"\n\
         data = {{ device = \"{{topic.id}}\", lat = \"{{payload.lat}}\", raw = \"{{payload}}\" }}\n\
         [[topic]]\ntopic = \"{prefix}/fleet\"\nchannel = \"device:{{payload.device}}\"\n\
         event = \"{{payload.kind}}\"\n{DEVICE_STREAM}",
        mqtt_section(&broker_url(), &unique("unpoll"))
    );
    let upstream = Upstream::builder().run().await;
    let unpoll = Unpoll::start(&upstream.url(), &extra).await;
    wait_ready(&unpoll).await;
    let mut ab = stream(&unpoll, "A,B").await;
    let mut b = stream(&unpoll, "B").await;
    let mut c = stream(&unpoll, "C").await;

    let mut publisher = Publisher::shared().await;
    for (device, lat) in [("A", 1.5), ("B", 2.5), ("C", 3.5)] {
        publisher
            .publish(
                &format!("{prefix}/devices/{device}/position"),
                json!({"lat": lat}).to_string(),
            )
            .await;
    }
    // A channel from a payload field.
    publisher
        .publish(
            &format!("{prefix}/fleet"),
            json!({"device": "B", "kind": "alarm"}).to_string(),
        )
        .await;

    let mut got_ab = Vec::new();
    for _ in 0..3 {
        let e = ab.next(WAIT).await;
        got_ab.push((e.event.clone(), data(&e)));
    }
    assert_eq!(
        got_ab,
        [
            (
                "position".to_string(),
                json!({"device": "A", "lat": 1.5, "raw": {"lat": 1.5}})
            ),
            (
                "position".to_string(),
                json!({"device": "B", "lat": 2.5, "raw": {"lat": 2.5}})
            ),
            ("alarm".to_string(), json!({"device": "B", "kind": "alarm"})),
        ]
    );
    let e = b.next(WAIT).await;
    assert_eq!(data(&e)["device"], "B");
    assert_eq!(b.next(WAIT).await.event, "alarm");
    let e = c.next(WAIT).await;
    assert_eq!(data(&e)["device"], "C");
    // No cross-delivery.
    ab.assert_quiet(QUIET).await;
    b.assert_quiet(QUIET).await;
    c.assert_quiet(QUIET).await;

    let m = unpoll.metrics().await;
    assert_eq!(
        metric(&m, "unpoll_mqtt_published_total{rule=\"topic[0]\"}"),
        3.0
    );
    assert_eq!(
        metric(&m, "unpoll_mqtt_published_total{rule=\"topic[1]\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            &format!("unpoll_mqtt_messages_total{{topic=\"{prefix}/devices/+/position\"}}")
        ),
        3.0
    );
    assert_eq!(metric(&m, "unpoll_mqtt_connected "), 1.0);
}

#[tokio::test]
async fn malformed_payloads_and_missing_values_are_counted_and_dropped() {
    let prefix = unique("t_malformed");
    let sink = Arc::new(RecordingSink::default());
    let extra = format!(
        "{}[[topic]]\ntopic = \"{prefix}/{{id}}\"\nchannel = \"c:{{topic.id}}\"\n\
         event = \"{{payload.kind}}\"\n\
         [[topic]]\ntopic = \"{prefix}/{{id}}\"\nchannel = \"raw:{{topic.id}}\"\n",
        mqtt_section(&broker_url(), &unique("unpoll"))
    );
    let upstream = Upstream::builder().run().await;
    let unpoll = Unpoll::start_with_sink(&upstream.url(), &extra, sink.clone()).await;
    wait_ready(&unpoll).await;
    let mut publisher = Publisher::shared().await;
    publisher.publish(&format!("{prefix}/1"), "not json").await;
    publisher.publish(&format!("{prefix}/2"), "[1, 2]").await;
    publisher
        .publish(&format!("{prefix}/3"), r#"{"other": 1}"#)
        .await;
    publisher
        .publish(&format!("{prefix}/4"), r#"{"kind": "ok"}"#)
        .await;
    sink.wait(WAIT, "the valid message", |log| {
        log.iter()
            .any(|d| matches!(d, Delivered::Event { channel, .. } if channel == "c:4"))
    })
    .await;
    // Rule 0 reads {payload.kind}: only message 4 reaches it. Rule 1 reads no field and
    // takes every payload as is (JSON when it parses, else text).
    let events = sink.events();
    let channels: Vec<&str> = events.iter().map(|(c, _, _)| c.as_str()).collect();
    assert_eq!(channels, ["raw:1", "raw:2", "raw:3", "c:4", "raw:4"]);
    assert_eq!(events[0].2, json!("not json"));
    assert_eq!(events[1].2, json!([1, 2]));
    let m = unpoll.metrics().await;
    assert_eq!(metric(&m, "unpoll_mqtt_malformed_payloads_total "), 2.0);
    assert_eq!(
        metric(
            &m,
            "unpoll_mqtt_dropped_total{rule=\"topic[0]\",reason=\"malformed\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            "unpoll_mqtt_dropped_total{rule=\"topic[0]\",reason=\"missing_value\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn messages_published_during_a_cut_connection_arrive_after_reconnect() {
    let prefix = unique("t_cut");
    let proxy = TcpProxy::start(common::mqtt::broker_addr(), true).await;
    let extra = format!(
        "{}{}{DEVICE_STREAM}",
        mqtt_section(&format!("mqtt://{}", proxy.addr), &unique("unpoll")),
        device_rule(&prefix)
    );
    let upstream = Upstream::builder().route("/hello", "hi").run().await;
    let unpoll = Unpoll::start(&upstream.url(), &extra).await;
    wait_ready(&unpoll).await;
    let mut a = stream(&unpoll, "A").await;
    let mut publisher = Publisher::shared().await;
    publisher
        .publish(&format!("{prefix}/devices/A/position"), "1")
        .await;
    assert_eq!(a.next(WAIT).await.data, "1");

    proxy.cut();
    wait_not_ready(&unpoll).await;
    let (status, body) = readyz(&unpoll).await;
    assert_eq!(status, 503);
    assert!(body.contains("mqtt:"), "{body}");
    // unpoll keeps proxying meanwhile.
    assert_eq!(common::get_text(&unpoll.url("/hello")).await, "hi");
    for n in 2..=4 {
        publisher
            .publish(&format!("{prefix}/devices/A/position"), n.to_string())
            .await;
    }
    proxy.restore();
    // The broker kept the session and queued the QoS 1 messages: all arrive, no reset.
    for n in 2..=4 {
        let e = a.next(WAIT).await;
        assert_eq!(
            (e.event.as_str(), e.data.as_str()),
            ("position", &*n.to_string())
        );
    }
    wait_ready(&unpoll).await;
    a.assert_quiet(QUIET).await;
    let m = unpoll.metrics().await;
    assert_eq!(metric(&m, "unpoll_mqtt_reconnects_total "), 1.0);
    assert_eq!(metric(&m, "unpoll_mqtt_resets_total "), 0.0);
}

#[tokio::test]
async fn a_restarted_unpoll_gets_what_was_published_while_it_was_down() {
    let prefix = unique("t_restart");
    let client_id = unique("unpoll");
    let extra = format!(
        "{}{}",
        mqtt_section(&broker_url(), &client_id),
        device_rule(&prefix)
    );
    let upstream = Upstream::builder().run().await;
    let first = Unpoll::start(&upstream.url(), &extra).await;
    wait_ready(&first).await;
    first.stop().await;

    let mut publisher = Publisher::shared().await;
    for n in 1..=3 {
        publisher
            .publish(&format!("{prefix}/devices/A/position"), n.to_string())
            .await;
    }
    // Same client id: the broker hands the persistent session, and its queue, to the new
    // instance.
    let sink = Arc::new(RecordingSink::default());
    let second = Unpoll::start_with_sink(&upstream.url(), &extra, sink.clone()).await;
    sink.wait(WAIT, "the three queued messages", |log| {
        log.iter()
            .filter(|d| matches!(d, Delivered::Event { .. }))
            .count()
            == 3
    })
    .await;
    let data: Vec<Value> = sink.events().into_iter().map(|(_, _, d)| d).collect();
    assert_eq!(data, [json!(1), json!(2), json!(3)]);
    wait_ready(&second).await;
    assert!(
        !sink.all().iter().any(|d| matches!(d, Delivered::Reset(_))),
        "nothing was lost, so nobody is reset: {:?}",
        sink.all()
    );
}

#[tokio::test]
async fn a_lost_session_resets_subscribers_and_flows_again() {
    let prefix = unique("t_lost");
    let mut broker = Mosquitto::start(free_port()).await;
    let extra = format!(
        "{}{}purge = [\"device:{{topic.id}}\"]\n{DEVICE_STREAM}",
        mqtt_section(&format!("mqtt://{}", broker.addr), &unique("unpoll")),
        device_rule(&prefix)
    );
    let upstream = Upstream::builder().run().await;
    let unpoll = Unpoll::start(&upstream.url(), &extra).await;
    wait_ready(&unpoll).await;
    let mut a = stream(&unpoll, "A").await;
    let mut b = stream(&unpoll, "B").await;
    let mut publisher = Publisher::connect(broker.addr).await;
    publisher
        .publish(&format!("{prefix}/devices/A/position"), "1")
        .await;
    assert_eq!(a.next(WAIT).await.data, "1");

    // A broker without persistence restarts: unpoll's session (subscriptions and anything
    // queued) is gone, and CONNACK says so.
    broker.kill().await;
    wait_not_ready(&unpoll).await;
    broker.restart().await;
    for s in [&mut a, &mut b] {
        let e = s.next(WAIT).await;
        assert_eq!(e.event, "reset", "the loss is announced: {e:?}");
    }
    wait_ready(&unpoll).await;
    // Subscribed again in the new session.
    let mut publisher = Publisher::connect(broker.addr).await;
    publisher
        .publish(&format!("{prefix}/devices/A/position"), "2")
        .await;
    assert_eq!(a.next(WAIT).await.data, "2");
    b.assert_quiet(QUIET).await;
    let m = unpoll.metrics().await;
    assert_eq!(metric(&m, "unpoll_mqtt_resets_total "), 2.0);
    assert_eq!(metric(&m, "unpoll_mqtt_reconnects_total "), 1.0);
}

#[tokio::test]
async fn readyz_says_mqtt_until_the_broker_answers() {
    let prefix = unique("t_ready");
    let port = free_port();
    let extra = format!(
        "{}{}",
        mqtt_section(&format!("mqtt://127.0.0.1:{port}"), &unique("unpoll")),
        device_rule(&prefix)
    );
    let upstream = Upstream::builder().route("/hello", "hi").run().await;
    let unpoll = Unpoll::start(&upstream.url(), &extra).await;
    eventually(WAIT, "a failed connection attempt", || async {
        metric(
            &unpoll.metrics().await,
            "unpoll_mqtt_connect_failures_total ",
        ) >= 1.0
    })
    .await;
    let (status, body) = readyz(&unpoll).await;
    assert_eq!(status, 503);
    assert!(body.contains("mqtt: "), "{body}");
    assert_eq!(common::get_text(&unpoll.url("/hello")).await, "hi");
    // The broker appears on that port: unpoll connects on its next retry.
    let _broker = Mosquitto::start(port).await;
    wait_ready(&unpoll).await;
    assert_eq!(readyz(&unpoll).await.0, 200);
}

#[tokio::test]
async fn reloaded_rules_subscribe_and_unsubscribe_the_difference() {
    let prefix = unique("t_reload");
    let sink = Arc::new(RecordingSink::default());
    let section = mqtt_section(&broker_url(), &unique("unpoll"));
    let old_rule =
        format!("[[topic]]\ntopic = \"{prefix}/old/{{id}}\"\nchannel = \"old:{{topic.id}}\"\n");
    let new_rule =
        format!("[[topic]]\ntopic = \"{prefix}/new/{{id}}\"\nchannel = \"new:{{topic.id}}\"\n");
    let upstream = Upstream::builder().run().await;
    let unpoll = Unpoll::start_with_sink(
        &upstream.url(),
        &format!("{section}{old_rule}"),
        sink.clone(),
    )
    .await;
    wait_ready(&unpoll).await;
    let acked = |m: &str| metric(m, "unpoll_mqtt_subscribes_total ");
    let before = acked(&unpoll.metrics().await);
    let warnings = unpoll.reload(&upstream.url(), &format!("{section}{new_rule}"));
    assert!(warnings.is_empty(), "{warnings:?}");
    // The broker handles one client's packets in order: once it acknowledged the new
    // SUBSCRIBE, the UNSUBSCRIBE queued before it is done too.
    eventually(WAIT, "the new rule's SUBACK", || async {
        acked(&unpoll.metrics().await) > before
    })
    .await;
    let mut publisher = Publisher::shared().await;
    // The old filter is unsubscribed: its messages no longer arrive at all.
    publisher.publish(&format!("{prefix}/old/1"), "x").await;
    publisher.publish(&format!("{prefix}/new/last"), "x").await;
    sink.wait(WAIT, "the last message", |log| {
        log.iter()
            .any(|d| matches!(d, Delivered::Event { channel, .. } if channel == "new:last"))
    })
    .await;
    assert!(
        sink.events().iter().all(|(c, _, _)| c.starts_with("new:")),
        "{:?}",
        sink.events()
    );
    let m = unpoll.metrics().await;
    assert_eq!(metric(&m, "unpoll_mqtt_messages_total{topic=\"\"}"), 0.0);
    // A changed [mqtt] needs a restart, and says so by key path.
    let warnings = unpoll.reload(
        &upstream.url(),
        &format!("{}{new_rule}", mqtt_section(&broker_url(), "other")),
    );
    assert!(
        warnings.contains(&"mqtt.client_id changed; takes effect on restart".to_string()),
        "{warnings:?}"
    );
}

#[tokio::test]
async fn qos0_rules_are_reset_after_any_reconnect_qos1_rules_are_not() {
    let prefix = unique("t_qos0");
    let proxy = TcpProxy::start(common::mqtt::broker_addr(), true).await;
    let sink = Arc::new(RecordingSink::default());
    let extra = format!(
        "{}[[topic]]\ntopic = \"{prefix}/live/{{id}}\"\nchannel = \"live:{{topic.id}}\"\nqos = 0\n\
         [[topic]]\ntopic = \"{prefix}/kept/{{id}}\"\nchannel = \"kept:{{topic.id}}\"\n",
        mqtt_section(&format!("mqtt://{}", proxy.addr), &unique("unpoll"))
    );
    let upstream = Upstream::builder().run().await;
    let unpoll = Unpoll::start_with_sink(&upstream.url(), &extra, sink.clone()).await;
    wait_ready(&unpoll).await;
    proxy.cut();
    wait_not_ready(&unpoll).await;
    proxy.restore();
    sink.wait(WAIT, "the reset of the QoS 0 rule", |log| {
        log.iter().any(|d| matches!(d, Delivered::Reset(_)))
    })
    .await;
    wait_ready(&unpoll).await;
    let resets: Vec<Delivered> = sink
        .all()
        .into_iter()
        .filter(|d| matches!(d, Delivered::Reset(_)))
        .collect();
    assert_eq!(resets, [Delivered::Reset("live:*".to_string())]);
}

#[tokio::test]
async fn a_silently_dead_connection_is_noticed_by_keep_alive_and_nothing_is_lost() {
    let prefix = unique("t_silent");
    let proxy = TcpProxy::start(common::mqtt::broker_addr(), true).await;
    let sink = Arc::new(RecordingSink::default());
    let extra = format!(
        "{}{}",
        mqtt_section(&format!("mqtt://{}", proxy.addr), &unique("unpoll"))
            .replace("keep_alive = \"5s\"", "keep_alive = \"1s\""),
        device_rule(&prefix)
    );
    let upstream = Upstream::builder().run().await;
    let unpoll = Unpoll::start_with_sink(&upstream.url(), &extra, sink.clone()).await;
    wait_ready(&unpoll).await;
    // No byte passes, nothing is closed: only the unanswered ping tells.
    proxy.blackhole();
    let mut publisher = Publisher::shared().await;
    publisher
        .publish(&format!("{prefix}/devices/A/position"), "1")
        .await;
    wait_not_ready(&unpoll).await;
    proxy.restore();
    sink.wait(WAIT, "the message sent into the dead connection", |log| {
        log.iter().any(|d| matches!(d, Delivered::Event { .. }))
    })
    .await;
    assert_eq!(sink.events()[0].2, json!(1));
    wait_ready(&unpoll).await;
    assert!(
        !sink.all().iter().any(|d| matches!(d, Delivered::Reset(_))),
        "{:?}",
        sink.all()
    );
}
