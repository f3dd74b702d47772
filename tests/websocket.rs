//! The WebSocket transport of `[[stream]]` rules end to end: a real WebSocket client
//! (tokio-tungstenite) through the real unpoll, events published through the admin API.

mod common;

use std::time::Duration;

use common::auth::{SECRET, hs256, now};
use common::sse::{SseClient, TOKEN, publish, streams_config};
use common::{Unpoll, Upstream, client, eventually, start_in_front_of};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const T: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The streams after `/bots/events`: a fast heartbeat, JWT auth, and one transport each.
const RULES: &str = r#"
[jwt]
secret = "{SECRET}"
leeway = "0s"

[[stream]]
path = "/fast-ping/events"
channels = ["bot:{query.botId}"]
auth = "none"
heartbeat = "100ms"

[[stream]]
path = "/secure/events"
channels = ["bot:{query.botId}"]
auth = "jwt"

[[stream]]
path = "/sse-only/events"
channels = ["bot:{query.botId}"]
auth = "none"
transports = ["sse"]

[[stream]]
path = "/ws-only/events"
channels = ["bot:{query.botId}"]
auth = "none"
transports = ["websocket"]
origins = ["https://partner.example"]
"#;

fn config(hub: &str) -> String {
    streams_config(hub, &RULES.replace("{SECRET}", SECRET))
}

async fn start(hub: &str) -> (Upstream, Unpoll) {
    let routes = [
        ("/sse-only/events", "the app's own"),
        ("/ws-only/events", "the app's own"),
    ];
    start_in_front_of(&routes, &config(hub)).await
}

fn ws_url(unpoll: &Unpoll, path: &str) -> String {
    format!("ws://{}{path}", unpoll.addr)
}

async fn connect(unpoll: &Unpoll, path: &str) -> Ws {
    let (ws, resp) =
        tokio::time::timeout(T, tokio_tungstenite::connect_async(ws_url(unpoll, path)))
            .await
            .expect("handshake in time")
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(resp.status(), 101);
    ws
}

/// The HTTP status a handshake that did not upgrade was answered with.
async fn refused(unpoll: &Unpoll, path: &str) -> u16 {
    match tokio_tungstenite::connect_async(ws_url(unpoll, path)).await {
        Err(WsError::Http(resp)) => resp.status().as_u16(),
        Ok(_) => panic!("{path} was upgraded"),
        Err(e) => panic!("{path}: {e}"),
    }
}

/// The next text frame as JSON (pings are answered by the client and skipped); panics on
/// anything else.
async fn next_event(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(T, ws.next())
            .await
            .expect("a frame in time")
            .expect("socket open")
            .expect("a frame");
        match msg {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON frame"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

/// The close frame the server ends with (events before it are skipped).
async fn close_code(ws: &mut Ws) -> (CloseCode, String) {
    loop {
        let msg = tokio::time::timeout(T, ws.next())
            .await
            .expect("a close in time")
            .expect("a close frame before the end")
            .expect("a frame");
        if let Message::Close(frame) = msg {
            let frame = frame.expect("a close code");
            return (frame.code, frame.reason.to_string());
        }
    }
}

#[tokio::test]
async fn events_arrive_as_json_text_frames_on_their_channels_only() {
    let (_up, unpoll) = start("").await;
    let mut one = connect(&unpoll, "/bots/events?botId=1").await;
    let mut two = connect(&unpoll, "/bots/events?botId=2").await;
    let mut sse = SseClient::open(&client(), &unpoll.url("/bots/events?botId=1"), None).await;
    eventually(T, "three subscribers", || async {
        unpoll.app.handles.hub.stats(0).subscribers == 3
    })
    .await;
    let a = unpoll
        .publish(TOKEN, "bot:1", Some("e"), json!({"n": 1}))
        .await;
    let b = unpoll
        .publish(TOKEN, "bot:1", Some("e"), json!("two\nlines"))
        .await;
    let c = unpoll.publish(TOKEN, "bot:2", Some("e"), json!(3)).await;
    assert_eq!(
        next_event(&mut one).await,
        json!({"id": a, "event": "e", "data": {"n": 1}})
    );
    assert_eq!(
        next_event(&mut one).await,
        json!({"id": b, "event": "e", "data": "two\nlines"})
    );
    // bot 2's socket got nothing of bot 1: its first frame is its own event.
    assert_eq!(
        next_event(&mut two).await,
        json!({"id": c, "event": "e", "data": 3})
    );
    // The SSE subscriber of the same rule sees the same events.
    assert_eq!(sse.next(T).await.id, a);
    assert_eq!(sse.next(T).await.id, b);
    let stats = unpoll.stats().await;
    assert_eq!(stats["stream_connections"], 3, "{stats}");
    // A closed socket unsubscribes.
    one.close(None).await.unwrap();
    drop(one);
    eventually(T, "the closed socket unsubscribed", || async {
        unpoll.app.handles.hub.stats(0).subscribers == 2
    })
    .await;
}

#[tokio::test]
async fn last_event_id_resumes_and_a_foreign_id_resets() {
    let (_up, unpoll) = start("").await;
    let first = unpoll.publish(TOKEN, "bot:1", Some("e"), json!(1)).await;
    let second = unpoll.publish(TOKEN, "bot:1", Some("e"), json!(2)).await;
    let third = unpoll.publish(TOKEN, "bot:1", Some("e"), json!(3)).await;
    let mut ws = connect(
        &unpoll,
        &format!("/bots/events?botId=1&last_event_id={first}"),
    )
    .await;
    assert_eq!(next_event(&mut ws).await["id"], second);
    assert_eq!(next_event(&mut ws).await["id"], third);
    let live = unpoll.publish(TOKEN, "bot:1", Some("e"), json!(4)).await;
    assert_eq!(
        next_event(&mut ws).await["id"],
        live,
        "live after the replay"
    );

    let mut ws = connect(&unpoll, "/bots/events?botId=1&last_event_id=0123456789ab-3").await;
    let reset = next_event(&mut ws).await;
    assert_eq!(reset["event"], "reset");
    assert_eq!(reset["data"]["reason"], "other_boot");
    assert_eq!(reset["id"], unpoll.app.handles.hub.cursor().to_string());
}

#[tokio::test]
async fn a_lost_source_resets_open_sockets() {
    let (_up, unpoll) = start("").await;
    let mut ws = connect(&unpoll, "/bots/events?botId=1").await;
    eventually(T, "subscribed", || async {
        unpoll.app.handles.hub.stats(0).subscribers == 1
    })
    .await;
    assert_eq!(
        unpoll
            .app
            .handles
            .hub
            .reset_matching("bot:*", "listener reconnected"),
        1
    );
    let reset = next_event(&mut ws).await;
    assert_eq!(reset["event"], "reset");
    assert_eq!(reset["data"]["reason"], "source_lost");
    assert_eq!(reset["data"]["detail"], "listener reconnected");
}

#[tokio::test]
async fn auth_is_decided_before_the_upgrade() {
    let (_up, unpoll) = start("").await;
    // No token, a bad signature, a token for other channels: HTTP answers, no socket.
    assert_eq!(refused(&unpoll, "/secure/events?botId=1").await, 401);
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"exp": now() + 3600, "unpoll.subscribe": ["bot:*"]}),
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-secret-not-the-secret-xx"),
    )
    .unwrap();
    assert_eq!(
        refused(&unpoll, &format!("/secure/events?botId=1&token={forged}")).await,
        401
    );
    let other = hs256(json!({"exp": now() + 3600, "unpoll.subscribe": ["bot:2"]}));
    assert_eq!(
        refused(&unpoll, &format!("/secure/events?botId=1&token={other}")).await,
        403
    );
    assert_eq!(unpoll.app.handles.hub.stats(0).subscribers, 0);
    // The query-string token opens it.
    let ok = hs256(json!({"exp": now() + 3600, "unpoll.subscribe": ["bot:1"]}));
    let mut ws = connect(&unpoll, &format!("/secure/events?botId=1&token={ok}")).await;
    let id = unpoll.publish(TOKEN, "bot:1", Some("e"), json!("hi")).await;
    assert_eq!(next_event(&mut ws).await["id"], id);
}

#[tokio::test]
async fn a_socket_closes_with_4000_when_its_token_expires() {
    let (_up, unpoll) = start("").await;
    let short = hs256(json!({"exp": now() + 1, "unpoll.subscribe": ["bot:1"]}));
    let mut ws = connect(&unpoll, &format!("/secure/events?botId=1&token={short}")).await;
    let (code, reason) = close_code(&mut ws).await;
    assert_eq!((u16::from(code), reason.as_str()), (4000, "expired"));
    eventually(T, "unsubscribed", || async {
        unpoll.app.handles.hub.stats(0).subscribers == 0
    })
    .await;
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1001() {
    let (_up, unpoll) = start("").await;
    let mut ws = connect(&unpoll, "/bots/events?botId=1").await;
    let app = unpoll.app.clone();
    let stop = tokio::spawn(unpoll.stop());
    let (code, _) = close_code(&mut ws).await;
    assert_eq!(code, CloseCode::Away);
    stop.await.unwrap();
    assert_eq!(app.handles.hub.stats(0).subscribers, 0);
}

#[tokio::test]
async fn client_messages_are_ignored_but_an_oversized_one_closes_with_1009() {
    let (_up, unpoll) = start("").await;
    let mut ws = connect(&unpoll, "/bots/events?botId=1").await;
    ws.send(Message::text("hello")).await.unwrap();
    let id = unpoll.publish(TOKEN, "bot:1", Some("e"), json!(1)).await;
    assert_eq!(
        next_event(&mut ws).await["id"],
        id,
        "still open after a small message"
    );
    ws.send(Message::text(
        "x".repeat(unpoll::stream::websocket::MAX_CLIENT_MESSAGE + 1),
    ))
    .await
    .unwrap();
    let (code, _) = close_code(&mut ws).await;
    assert_eq!(code, CloseCode::Size);
    eventually(T, "unsubscribed", || async {
        unpoll.app.handles.hub.stats(0).subscribers == 0
    })
    .await;
}

#[tokio::test]
async fn pings_at_the_heartbeat_and_a_silent_client_is_dropped() {
    let (_up, unpoll) = start("").await;
    let mut ws = connect(&unpoll, "/fast-ping/events?botId=1").await;
    let ping = tokio::time::timeout(T, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(ping, Message::Ping(_)), "{ping:?}");
    // Answered (tungstenite queues the pong; flushing sends it): still open a few
    // heartbeats later.
    ws.flush().await.unwrap();
    for _ in 0..3 {
        let msg = tokio::time::timeout(T, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(matches!(msg, Message::Ping(_)), "{msg:?}");
        ws.flush().await.unwrap();
    }
    assert_eq!(unpoll.app.handles.hub.stats(0).subscribers, 1);
    ws.close(None).await.unwrap();
    eventually(T, "the closed socket unsubscribed", || async {
        unpoll.app.handles.hub.stats(0).subscribers == 0
    })
    .await;
    // A client that stops reading (so answers no ping) is dropped.
    let silent = connect(&unpoll, "/fast-ping/events?botId=2").await;
    assert_eq!(unpoll.app.handles.hub.stats(0).subscribers, 1);
    eventually(T, "the silent client dropped", || async {
        unpoll.app.handles.hub.stats(0).subscribers == 0
    })
    .await;
    drop(silent);
}

#[tokio::test]
async fn transports_not_listed_are_the_apps() {
    let (up, unpoll) = start("").await;
    // A WebSocket on an SSE-only rule goes to the app (which does not upgrade it).
    assert_eq!(refused(&unpoll, "/sse-only/events?botId=1").await, 200);
    assert_eq!(up.hits("/sse-only/events"), 1);
    let sse = SseClient::open(&client(), &unpoll.url("/sse-only/events?botId=1"), None).await;
    assert_eq!(sse.status, 200);
    // A plain GET on a WebSocket-only rule too.
    let body = common::get_text(&unpoll.url("/ws-only/events?botId=1")).await;
    assert_eq!(body, "the app's own");
    assert_eq!(up.hits("/ws-only/events"), 1);
    let mut ws = connect(&unpoll, "/ws-only/events?botId=1").await;
    let id = unpoll.publish(TOKEN, "bot:1", Some("e"), json!(1)).await;
    assert_eq!(next_event(&mut ws).await["id"], id);
}

/// A socket whose client stopped reading is cut off when it falls behind the history, while
/// a reading socket of the same channel gets every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_socket_is_cut_off_while_others_keep_receiving() {
    let (_up, unpoll) = start(
        "subscriber_queue = 16\nsubscriber_queue_bytes = \"512KiB\"\nhistory_max_bytes = \"2MiB\"\n\
         [proxy]\nsend_timeout = \"1h\"",
    )
    .await;
    // A small receive buffer so the kernel does not absorb tens of MB first.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let tcp = socket.connect(unpoll.addr).await.unwrap();
    let (mut slow, _) =
        tokio_tungstenite::client_async(ws_url(&unpoll, "/bots/events?botId=1"), tcp)
            .await
            .unwrap();
    let mut fast = connect(&unpoll, "/bots/events?botId=1").await;
    eventually(T, "both subscribed", || async {
        unpoll.app.handles.hub.stats(0).subscribers == 2
    })
    .await;
    let data = "x".repeat(64 * 1024);
    let mut published = 0;
    while unpoll.app.handles.hub.stats(0).subscribers == 2 {
        let id = unpoll.publish(TOKEN, "bot:1", Some("e"), json!(data)).await;
        published += 1;
        // Sent as several frames (64 KiB > 16 KiB), read back as one message.
        let event = next_event(&mut fast).await;
        assert_eq!((&event["id"], &event["data"]), (&json!(id), &json!(data)));
        assert!(published < 500, "the slow client was never cut off");
    }
    eprintln!("slow socket cut off after {published} events");
    eventually(T, "the slow socket is gone", || async {
        unpoll.stats().await["stream_connections"] == 1
    })
    .await;
    // The slow client's side ends (whatever it had buffered, then the connection's end).
    let drained =
        tokio::time::timeout(T, async { while let Some(Ok(_)) = slow.next().await {} }).await;
    assert!(drained.is_ok(), "the server closed the slow connection");
    let id = unpoll
        .publish(TOKEN, "bot:1", Some("e"), json!("after"))
        .await;
    assert_eq!(next_event(&mut fast).await["id"], id);
}

/// MQTT → WebSocket: sockets filtered by device lists get their devices' positions only.
#[tokio::test]
async fn mqtt_positions_reach_sockets_of_their_device_lists_only() {
    use common::mqtt::{Publisher, broker_url};
    let prefix = common::pg::unique("t_ws");
    let extra = format!(
        "[mqtt]\nurl = \"{}\"\nclient_id = \"{}\"\nreconnect_min = \"20ms\"\nreconnect_max = \"200ms\"\n\
         [[topic]]\ntopic = \"{prefix}/devices/{{id}}/position\"\nchannel = \"device:{{topic.id}}\"\n\
         event = \"position\"\n\
         [[stream]]\npath = \"/positions\"\nchannels = [\"device:{{query.device_ids}}\"]\nauth = \"none\"\n",
        broker_url(),
        common::pg::unique("unpoll")
    );
    let upstream = Upstream::builder().run().await;
    let unpoll = Unpoll::start(&upstream.url(), &extra).await;
    let app = unpoll.app.clone();
    eventually(T, "mqtt source ready", move || {
        let app = app.clone();
        async move { app.readiness.not_ready().is_empty() }
    })
    .await;
    let mut ab = connect(&unpoll, "/positions?device_ids=A,B").await;
    let mut c = connect(&unpoll, "/positions?device_ids=C").await;
    let mut publisher = Publisher::shared().await;
    let position = |device: &str| format!("{prefix}/devices/{device}/position");
    for (device, lat) in [("A", 1), ("C", 3), ("B", 2), ("C", 4), ("A", 5)] {
        publisher
            .publish(&position(device), json!({"lat": lat}).to_string())
            .await;
    }
    let lats = |frames: Vec<Value>| -> Vec<Value> {
        frames
            .into_iter()
            .map(|f| {
                assert_eq!(f["event"], "position");
                f["data"]["lat"].clone()
            })
            .collect()
    };
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next_event(&mut ab).await);
    }
    // In publish order, C's in between never reached the A,B socket.
    assert_eq!(lats(got), [json!(1), json!(2), json!(5)]);
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(next_event(&mut c).await);
    }
    assert_eq!(lats(got), [json!(3), json!(4)]);
}

/// A subscriber that falls behind the history while its socket is writable (a burst larger
/// than history and queue together) is closed with 1013, and resumes with a reset.
#[tokio::test]
async fn a_subscriber_behind_the_history_is_closed_with_1013() {
    let (_up, unpoll) = start("subscriber_queue = 1\nhistory_max_events = 2").await;
    let mut ws = connect(&unpoll, "/bots/events?botId=1").await;
    let before = unpoll.publish(TOKEN, "bot:1", Some("e"), json!(0)).await;
    assert_eq!(next_event(&mut ws).await["id"], before);
    // One array: published back to back, before the socket's task runs again.
    let burst: Vec<Value> = (1..=10)
        .map(|i| json!({"channel": "bot:1", "data": i}))
        .collect();
    publish(
        &client(),
        &unpoll.admin_url("/publish"),
        TOKEN,
        json!(burst),
    )
    .await;
    let (code, _) = close_code(&mut ws).await;
    assert_eq!(code, CloseCode::Again);
    let mut again = connect(
        &unpoll,
        &format!("/bots/events?botId=1&last_event_id={before}"),
    )
    .await;
    let reset = next_event(&mut again).await;
    assert_eq!(reset["event"], "reset");
    assert_eq!(reset["data"]["reason"], "evicted");
}

/// Open sockets survive a reload; a reload that takes WebSocket off a rule applies to new
/// requests (now the app's).
#[tokio::test]
async fn open_sockets_survive_a_reload_that_narrows_transports() {
    let (up, unpoll) = start("").await;
    let mut ws = connect(&unpoll, "/ws-only/events?botId=1").await;
    let narrowed = config("").replace("transports = [\"websocket\"]", "transports = [\"sse\"]");
    assert_ne!(narrowed, config(""), "the rule was rewritten");
    unpoll.reload(&up.url(), &narrowed);
    let id = unpoll
        .publish(TOKEN, "bot:1", Some("e"), json!("after"))
        .await;
    assert_eq!(next_event(&mut ws).await["id"], id);
    assert_eq!(refused(&unpoll, "/ws-only/events?botId=1").await, 200);
    assert_eq!(up.hits("/ws-only/events"), 1);
}

/// A browser sends the user's cookies with any page's WebSocket and applies no CORS: a page
/// of another origin is refused unless the rule lists it.
#[tokio::test]
async fn pages_of_other_origins_are_refused_unless_listed() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let (_up, unpoll) = start("").await;
    let with_origin = |path: &str, origin: &str| {
        let mut req = ws_url(&unpoll, path).into_client_request().unwrap();
        req.headers_mut().insert("origin", origin.parse().unwrap());
        req
    };
    let status = |req| async {
        match tokio_tungstenite::connect_async(req).await {
            Ok((_, resp)) => resp.status().as_u16(),
            Err(WsError::Http(resp)) => resp.status().as_u16(),
            Err(e) => panic!("{e}"),
        }
    };
    let own = format!("http://{}", unpoll.addr);
    assert_eq!(
        status(with_origin("/bots/events?botId=1", "https://evil.example")).await,
        403
    );
    assert_eq!(status(with_origin("/bots/events?botId=1", &own)).await, 101);
    assert_eq!(
        status(with_origin(
            "/ws-only/events?botId=1",
            "https://partner.example"
        ))
        .await,
        101
    );
    assert_eq!(
        status(with_origin(
            "/ws-only/events?botId=1",
            "https://evil.example"
        ))
        .await,
        403
    );
}
