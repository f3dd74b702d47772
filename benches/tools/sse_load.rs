//! Fan-out load client: N SSE (or, with `--transport websocket`, WebSocket)
//! subscribers on one channel, M published messages, delivery latency and
//! fraction delivered.
//!
//! Run by `benches/run fanout` against unpoll, Pushpin and Nchan, by `benches/run
//! cluster` against several unpoll instances sharing Redis (`--url` and `--publish-url`
//! may be given several times: subscribers are spread over the URLs in turn and messages
//! published through the publish URLs in turn), and by `benches/run mqtt` with
//! `--publish mqtt`: messages go to an MQTT broker, which unpoll's `[[topic]]` rule turns
//! into events. Steps:
//! 1. open `--subscribers` streams to `--url` (at most `--connect-concurrency`
//!    connecting at once, so the server's listen backlog never overflows), and
//!    print `connected OK FAILED` once every attempt is settled;
//! 2. hold them idle for `--hold` (the driver measures the server's RSS then);
//! 3. publish `--messages` messages `--interval` apart through `--publish-url`,
//!    each carrying its publish time (`{"t": unix_micros, "seq": i}`);
//! 4. wait until every subscriber has every message or `--drain` has passed
//!    since the last publish, print one `RESULT` line and exit.
//!
//! A separate process from the server on purpose: each side may hold up to
//! 20,000 open files.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use http::{Request, Uri, header};
use http_body_util::{BodyDataStream, BodyExt, Empty, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Semaphore};
use tokio_tungstenite::tungstenite::Message;

/// A subscription whose response head has not come by then counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause before retrying a failed subscription (an EventSource's `retry`).
const RETRY_DELAY: Duration = Duration::from_millis(200);

#[derive(Parser)]
#[command(about = "SSE fan-out load client")]
struct Args {
    /// Subscriber URL (http, loopback); several: subscribers spread over them in turn.
    #[arg(long, required = true)]
    url: Vec<Uri>,
    /// Number of subscribers.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Subscriptions being set up at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Times a failed subscription is retried before it counts as failed.
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// Idle time after all subscribers are connected, before publishing.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    hold: Duration,
    /// Messages to publish (0: only hold the subscribers).
    #[arg(long, default_value_t = 20)]
    messages: u64,
    /// Time between two publishes.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "200ms")]
    interval: Duration,
    /// How long to wait for deliveries after the last publish.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    drain: Duration,
    /// Publish endpoint (`mqtt://host:port` for `--publish mqtt`); several: messages
    /// published through them in turn.
    #[arg(long)]
    publish_url: Vec<Uri>,
    /// MQTT topic to publish on (`--publish mqtt`).
    #[arg(long, default_value = "bench/c")]
    topic: String,
    /// Publish API flavour.
    #[arg(long, value_enum, default_value = "unpoll")]
    publish: Flavour,
    /// Channel to publish on.
    #[arg(long, default_value = "c")]
    channel: String,
    /// Bearer token for the publish endpoint.
    #[arg(long)]
    token: Option<String>,
    /// Publish from a thread (and runtime) of its own, not from the one every
    /// subscriber task runs on, where a publish waits its turn behind the reads
    /// of the previous message.
    #[arg(long)]
    publisher_thread: bool,
    /// How subscribers connect: an EventSource-like GET, or a WebSocket (unpoll's
    /// `{"id","event","data"}` text frames) to the same URL.
    #[arg(long, value_enum, default_value = "sse")]
    transport: Transport,
}

/// How a subscriber connects.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Transport {
    Sse,
    Websocket,
}

/// How each system takes a publish.
#[derive(Clone, Copy, ValueEnum)]
enum Flavour {
    /// `POST /publish` `{"channel","event","data"}` on unpoll's admin listener.
    Unpoll,
    /// `POST` of the raw data to an Nchan publisher location.
    Nchan,
    /// Pushpin's HTTP control API, `POST /publish/` with an `http-stream` item.
    Pushpin,
    /// An MQTT PUBLISH (QoS 1) of the raw data to `--topic` on the broker at
    /// `--publish-url`, over one connection made before the first message.
    Mqtt,
}

/// What every subscriber reports into.
#[derive(Default)]
struct Tally {
    /// Subscribers whose response head was 200 with a stream body.
    connected: AtomicUsize,
    /// Subscribers that failed to connect or got a non-200 answer.
    failed: AtomicUsize,
    /// The first subscription error, printed to explain `failed`.
    first_error: std::sync::OnceLock<String>,
    /// Subscription attempts that failed and were retried.
    retries: AtomicU64,
    /// Messages received in total, to stop early once all are in.
    received: AtomicU64,
    /// Delivery latencies in microseconds; appended once per message per
    /// subscriber, so bounded by subscribers × messages.
    latencies: Mutex<Vec<u64>>,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// `host:port` of a loopback URL, for connecting and for the Host header.
fn authority(uri: &Uri) -> anyhow::Result<String> {
    let a = uri
        .authority()
        .ok_or_else(|| anyhow::anyhow!("{uri}: no host"))?;
    Ok(a.as_str().to_string())
}

/// One subscriber: connect, subscribe, then record every message's latency
/// until the server closes the stream or the process exits.
async fn subscribe(
    url: Uri,
    tally: Arc<Tally>,
    connecting: Arc<Semaphore>,
    settled: Arc<AtomicUsize>,
    retries: u32,
    transport: Transport,
) {
    let permit = connecting.acquire_owned().await;
    let mut attempt = 0;
    let body = loop {
        let err = match tokio::time::timeout(CONNECT_TIMEOUT, open(&url, transport)).await {
            Ok(Ok(body)) => break body,
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => "no response head within 30 s".to_string(),
        };
        let _ = tally.first_error.set(err);
        if attempt == retries {
            tally.failed.fetch_add(1, Ordering::Relaxed);
            settled.fetch_add(1, Ordering::Release);
            return;
        }
        // As an EventSource would: wait, then reconnect.
        attempt += 1;
        tally.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(RETRY_DELAY).await;
    };
    tally.connected.fetch_add(1, Ordering::Relaxed);
    settled.fetch_add(1, Ordering::Release);
    drop(permit);
    let record = |sent: u64| {
        let tally = tally.clone();
        async move {
            let latency = now_micros().saturating_sub(sent);
            tally.latencies.lock().await.push(latency);
            tally.received.fetch_add(1, Ordering::Relaxed);
        }
    };
    match body {
        Opened::Sse(body) => {
            let mut events = BodyDataStream::new(body).eventsource();
            while let Some(Ok(event)) = events.next().await {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&event.data) else {
                    continue;
                };
                if let Some(sent) = v.get("t").and_then(serde_json::Value::as_u64) {
                    record(sent).await;
                }
            }
        }
        Opened::Websocket(mut ws) => {
            // Pings are answered by tungstenite on the next read.
            while let Some(Ok(msg)) = ws.next().await {
                let Message::Text(text) = msg else { continue };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                    continue;
                };
                if let Some(sent) = v["data"].get("t").and_then(serde_json::Value::as_u64) {
                    record(sent).await;
                }
            }
        }
    }
}

/// An open subscription.
enum Opened {
    Sse(hyper::body::Incoming),
    Websocket(Box<tokio_tungstenite::WebSocketStream<TcpStream>>),
}

async fn open(url: &Uri, transport: Transport) -> anyhow::Result<Opened> {
    match transport {
        Transport::Sse => Ok(Opened::Sse(open_stream(url).await?)),
        Transport::Websocket => {
            let tcp = TcpStream::connect(authority(url)?).await?;
            let ws_url = format!(
                "ws://{}{}",
                authority(url)?,
                url.path_and_query().map_or("/", |p| p.as_str())
            );
            let (ws, _) = tokio_tungstenite::client_async(ws_url, tcp).await?;
            Ok(Opened::Websocket(Box::new(ws)))
        }
    }
}

async fn open_stream(url: &Uri) -> anyhow::Result<hyper::body::Incoming> {
    let host = authority(url)?;
    let tcp = TcpStream::connect(&host).await?;
    let (mut send, conn) = http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let req = Request::get(path)
        .header(header::HOST, host)
        .header(header::ACCEPT, "text/event-stream")
        .body(Empty::<Bytes>::new())?;
    let resp = send.send_request(req).await?;
    anyhow::ensure!(resp.status().is_success(), "status {}", resp.status());
    Ok(resp.into_body())
}

/// Where messages go: a new HTTP connection per message (what a backend's
/// one-off publish does), or one MQTT connection for the whole run (what a
/// device or bridge keeps open).
enum Publisher {
    Http(Uri),
    Mqtt(MqttPublisher),
}

impl Publisher {
    async fn new(args: &Args, url: &Uri) -> anyhow::Result<Publisher> {
        Ok(match args.publish {
            Flavour::Mqtt => Publisher::Mqtt(MqttPublisher::connect(url).await?),
            _ => Publisher::Http(url.clone()),
        })
    }

    async fn publish(&mut self, args: &Args, seq: u64) -> anyhow::Result<()> {
        match self {
            Publisher::Http(url) => publish_http(args, url, seq).await,
            Publisher::Mqtt(mqtt) => {
                let data = serde_json::json!({ "t": now_micros(), "seq": seq });
                mqtt.publish(&args.topic, data.to_string()).await
            }
        }
    }
}

/// An MQTT client whose QoS 1 publishes wait for the broker's PUBACK, as an
/// HTTP publish waits for its response.
struct MqttPublisher {
    client: rumqttc::AsyncClient,
    acks: tokio::sync::mpsc::Receiver<()>,
}

/// How long the broker may take to accept the connection or a message.
const MQTT_TIMEOUT: Duration = Duration::from_secs(10);

impl MqttPublisher {
    async fn connect(url: &Uri) -> anyhow::Result<MqttPublisher> {
        use rumqttc::{AsyncClient, Event, MqttOptions, Packet};
        anyhow::ensure!(
            url.scheme_str() == Some("mqtt"),
            "{url}: want mqtt://host:port"
        );
        let host = url
            .host()
            .ok_or_else(|| anyhow::anyhow!("{url}: no host"))?;
        let id = format!("bench-pub-{}", std::process::id());
        let mut options = MqttOptions::new(id, host, url.port_u16().unwrap_or(1883));
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        // Bounded by the messages in flight: one at a time.
        let (ack_tx, acks) = tokio::sync::mpsc::channel(16);
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(Ok(()));
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        let _ = ack_tx.send(()).await;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                        // rumqttc reconnects on the next poll; a lost
                        // message shows as a missing PUBACK.
                        eprintln!("mqtt: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        match tokio::time::timeout(MQTT_TIMEOUT, ready).await {
            Ok(Ok(Ok(()))) => Ok(MqttPublisher { client, acks }),
            Ok(Ok(Err(e))) => anyhow::bail!("mqtt connect to {url}: {e}"),
            _ => anyhow::bail!("mqtt connect to {url}: no CONNACK within 10 s"),
        }
    }

    async fn publish(&mut self, topic: &str, payload: String) -> anyhow::Result<()> {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
            .await?;
        match tokio::time::timeout(MQTT_TIMEOUT, self.acks.recv()).await {
            Ok(Some(())) => Ok(()),
            Ok(None) => anyhow::bail!("mqtt event loop ended"),
            Err(_) => anyhow::bail!("no PUBACK within 10 s"),
        }
    }
}

/// Publish one message over HTTP; returns an error naming the status on failure.
async fn publish_http(args: &Args, url: &Uri, seq: u64) -> anyhow::Result<()> {
    let data = serde_json::json!({ "t": now_micros(), "seq": seq });
    let body = match args.publish {
        Flavour::Unpoll => {
            serde_json::json!({ "channel": args.channel, "event": "m", "data": data }).to_string()
        }
        Flavour::Nchan => data.to_string(),
        Flavour::Pushpin => serde_json::json!({ "items": [{
            "channel": args.channel,
            "formats": { "http-stream": { "content": format!("event: m\ndata: {data}\n\n") } }
        }]})
        .to_string(),
        Flavour::Mqtt => anyhow::bail!("an MQTT publish goes through MqttPublisher"),
    };
    let host = authority(url)?;
    let tcp = TcpStream::connect(&host).await?;
    let (mut send, conn) = http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let mut req = Request::post(url.path_and_query().map_or("/", |p| p.as_str()))
        .header(header::HOST, host)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = &args.token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let resp = send
        .send_request(req.body(Full::new(Bytes::from(body)))?)
        .await?;
    let status = resp.status();
    let answer = resp.into_body().collect().await?.to_bytes();
    anyhow::ensure!(
        status.is_success(),
        "publish {seq}: {status} {}",
        String::from_utf8_lossy(&answer)
    );
    Ok(())
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Publish `--messages` messages `--interval` apart, through the publish URLs in turn.
/// Returns how many failed and how long publishing took (whether the publisher kept its
/// pace: a saturated client falls behind).
async fn publish_all(args: &Args) -> anyhow::Result<(u64, f64)> {
    anyhow::ensure!(
        !args.publish_url.is_empty(),
        "--publish-url is required with --messages"
    );
    let mut publishers = Vec::with_capacity(args.publish_url.len());
    for url in &args.publish_url {
        publishers.push(Publisher::new(args, url).await?);
    }
    let mut errors = 0;
    let mut tick = tokio::time::interval(args.interval);
    let first = tokio::time::Instant::now();
    for seq in 0..args.messages {
        tick.tick().await;
        let turn = seq as usize % publishers.len();
        let publisher = &mut publishers[turn];
        if let Err(e) = publisher.publish(args, seq).await {
            eprintln!("{e}");
            errors += 1;
        }
    }
    Ok((errors, first.elapsed().as_secs_f64()))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let args = Arc::new(args);
    let tally = Arc::new(Tally::default());
    let connecting = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let settled = Arc::new(AtomicUsize::new(0));
    for i in 0..args.subscribers {
        tokio::spawn(subscribe(
            args.url[i % args.url.len()].clone(),
            tally.clone(),
            connecting.clone(),
            settled.clone(),
            args.retries,
            args.transport,
        ));
    }
    // Every subscriber settles (connects or fails) within the connect
    // timeout of the OS; poll the counter rather than collecting handles.
    while settled.load(Ordering::Acquire) < args.subscribers {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connected = tally.connected.load(Ordering::Relaxed);
    println!(
        "connected {connected} {}",
        tally.failed.load(Ordering::Relaxed)
    );
    tokio::time::sleep(args.hold).await;

    let expected = connected as u64 * args.messages;
    let mut publish_errors = 0u64;
    let mut publish_secs = 0.0;
    if args.messages > 0 {
        let published = if args.publisher_thread {
            let args = args.clone();
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let done = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(anyhow::Error::from)
                    .and_then(|rt| rt.block_on(publish_all(&args)));
                let _ = tx.send(done);
            });
            rx.await
                .map_err(|_| anyhow::anyhow!("publisher thread panicked"))??
        } else {
            publish_all(&args).await?
        };
        (publish_errors, publish_secs) = published;
        let deadline = tokio::time::Instant::now() + args.drain;
        while tally.received.load(Ordering::Relaxed) < expected
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut lat = std::mem::take(&mut *tally.latencies.lock().await);
    lat.sort_unstable();
    let delivered = if expected == 0 {
        1.0
    } else {
        lat.len() as f64 / expected as f64
    };
    println!(
        "RESULT subscribers={} connected={connected} messages={} received={} delivered={delivered:.4} \
         p50_us={} p99_us={} max_us={} publish_errors={publish_errors} retries={} \
         publish_secs={publish_secs:.2}",
        args.subscribers,
        args.messages,
        lat.len(),
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        lat.last().copied().unwrap_or(0),
        tally.retries.load(Ordering::Relaxed),
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // One thread: the client shares its CPU with the publisher side of the run.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }
}
