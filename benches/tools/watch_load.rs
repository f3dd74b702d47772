//! Watch benchmark client: K users × T tabs following one per-user polling
//! endpoint, either polling it every P seconds (what runs today, through nginx)
//! or watching it (`Accept: text/event-stream`, through unpoll's `[[watch]]`).
//!
//! Run by `benches/run watch` against `bench-upstream`'s `/twilio-chat/…`
//! bodies, which carry the user (the Cookie), a version and the time of the
//! change that made it. Steps:
//! 1. open one tab per user (tab i of user k sends `Cookie: user=u{k}`): a
//!    poller makes its first GET (the page load), a watcher opens its stream
//!    and gets its first event; print `users OK FAILED` once every tab is
//!    settled and hold for `--hold` (the driver measures the server's RSS);
//! 2. the same for the other tabs, printing `connected OK FAILED`, and hold;
//!    then print `measuring` and read the upstream's request count;
//! 3. for `--duration`, make `--changes` changes evenly spaced (`POST
//!    /_change` on the upstream, then, with `--purge-url`, `POST /purge` of
//!    `--purge-tag` on unpoll's admin listener); each tab notes the time it
//!    first sees each new version;
//! 4. read the upstream's count again, print one `RESULT` line and exit.
//!
//! Latency is "change → tab": from the upstream's change to the moment a tab
//! holds the new body, so a poller's latency is how long it waited for its
//! next poll. A body naming another user is counted as `crossed`.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use http::{Request, Uri, header};
use http_body_util::{BodyDataStream, BodyExt, Empty, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// A request or subscription unanswered by then counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Parser)]
#[command(about = "K users × T tabs polling or watching one per-user endpoint")]
struct Args {
    /// The polled/watched URL (http, loopback).
    #[arg(long)]
    url: Uri,
    /// How the tabs follow it.
    #[arg(long, value_enum)]
    mode: Mode,
    /// Distinct users (cookies).
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Tabs per user.
    #[arg(long, default_value_t = 10)]
    tabs: usize,
    /// Poll period of a polling tab.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    interval: Duration,
    /// Measured window.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    duration: Duration,
    /// Changes made during the window, evenly spaced.
    #[arg(long, default_value_t = 6)]
    changes: u64,
    /// The upstream's `POST /_change`.
    #[arg(long)]
    change_url: Uri,
    /// The upstream's `GET /_count`.
    #[arg(long)]
    count_url: Uri,
    /// unpoll's admin `POST /purge`; when set, each change is followed by a purge.
    #[arg(long)]
    purge_url: Option<Uri>,
    /// The tag purged.
    #[arg(long, default_value = "twilio")]
    purge_tag: String,
    /// Bearer token of the admin listener.
    #[arg(long)]
    token: Option<String>,
    /// Idle time after every tab is open, before the window.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    hold: Duration,
    /// Tabs being opened at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// GET every `--interval` on a keep-alive connection.
    Poll,
    /// One EventSource-like stream per tab.
    Watch,
}

/// What every tab reports into. The runtime has one thread, so a `RefCell`
/// needs no lock.
#[derive(Default)]
struct Tally {
    connected: usize,
    failed: usize,
    first_error: Option<String>,
    /// Change → tab latencies (µs), one per (tab, new version seen); bounded by
    /// tabs × changes.
    latencies: Vec<u64>,
    /// Requests the polling tabs made (all of them, page loads included).
    polls: u64,
    /// Events the watching tabs received (first events included).
    events: u64,
    /// Bodies naming another user.
    crossed: u64,
    /// Failed polls, or streams that ended before the run did.
    errors: u64,
}

type Shared = Rc<RefCell<Tally>>;

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn authority(uri: &Uri) -> anyhow::Result<String> {
    Ok(uri
        .authority()
        .ok_or_else(|| anyhow::anyhow!("{uri}: no host"))?
        .as_str()
        .to_string())
}

fn path_of(uri: &Uri) -> &str {
    uri.path_and_query().map_or("/", |p| p.as_str())
}

type Sender = http1::SendRequest<Full<Bytes>>;

async fn connect(uri: &Uri) -> anyhow::Result<Sender> {
    let tcp = TcpStream::connect(authority(uri)?).await?;
    tcp.set_nodelay(true)?;
    let (send, conn) = http1::handshake(TokioIo::new(tcp)).await?;
    tokio::task::spawn_local(conn);
    Ok(send)
}

/// One request on `send`; the status and the whole body.
async fn request(
    send: &mut Sender,
    req: Request<Full<Bytes>>,
) -> anyhow::Result<(http::StatusCode, Bytes)> {
    let fut = async {
        send.ready().await?;
        let resp = send.send_request(req).await?;
        let status = resp.status();
        anyhow::Ok((status, resp.into_body().collect().await?.to_bytes()))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within 30 s"))?
}

/// A one-off request on a fresh connection (changes, purges, counts).
async fn one_off(
    method: http::Method,
    uri: &Uri,
    body: Bytes,
    token: Option<&str>,
) -> anyhow::Result<Bytes> {
    let mut send = connect(uri).await?;
    let mut req = Request::builder()
        .method(method)
        .uri(path_of(uri))
        .header(header::HOST, authority(uri)?)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let (status, body) = request(&mut send, req.body(Full::new(body))?).await?;
    anyhow::ensure!(
        status.is_success(),
        "{uri}: {status} {}",
        String::from_utf8_lossy(&body)
    );
    Ok(body)
}

/// The fields of a body a tab reads; `pad` is skipped, not copied, so parsing
/// 1,000 bodies per change keeps the client's own delay small.
#[derive(serde::Deserialize)]
struct Body<'a> {
    user: &'a str,
    v: u64,
    t: u64,
}

/// What a tab keeps between bodies.
struct Seen {
    cookie: String,
    /// The newest version this tab holds.
    version: Option<u64>,
}

impl Seen {
    /// Note a body: check it is this user's, record the latency of a newer version.
    fn body(&mut self, tally: &Shared, body: &[u8]) {
        let mut t = tally.borrow_mut();
        let Ok(Body {
            user,
            v: version,
            t: changed,
        }) = serde_json::from_slice::<Body>(body)
        else {
            t.errors += 1;
            return;
        };
        if user != self.cookie {
            t.crossed += 1;
            return;
        }
        match self.version {
            // A newer version than the one held (changes made before the tab
            // opened are its starting point, not a delivery).
            Some(held) if version > held => {
                t.latencies.push(now_micros().saturating_sub(changed));
                self.version = Some(version);
            }
            Some(_) => {}
            None => self.version = Some(version),
        }
    }
}

/// A polling tab: a page load, then a GET every `interval` from its `phase`.
async fn poll_tab(
    args: Rc<Args>,
    cookie: String,
    phase: Duration,
    tally: Shared,
    opening: Rc<Semaphore>,
) {
    let get = || {
        Request::get(path_of(&args.url))
            .header(header::HOST, authority(&args.url).unwrap_or_default())
            .header(header::COOKIE, &cookie)
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
    };
    let mut seen = Seen {
        cookie: cookie.clone(),
        version: None,
    };
    let permit = opening.acquire().await;
    let first = async {
        let mut send = connect(&args.url).await?;
        let (status, body) = request(&mut send, get()?).await?;
        anyhow::ensure!(status.is_success(), "status {status}");
        anyhow::Ok((send, body))
    }
    .await;
    drop(permit);
    let mut send = match first {
        Ok((send, body)) => {
            let mut t = tally.borrow_mut();
            t.connected += 1;
            t.polls += 1;
            drop(t);
            seen.body(&tally, &body);
            send
        }
        Err(e) => {
            let mut t = tally.borrow_mut();
            t.failed += 1;
            t.first_error.get_or_insert(format!("{e:#}"));
            return;
        }
    };
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, args.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        tally.borrow_mut().polls += 1;
        let answer = async {
            if send.is_closed() {
                send = connect(&args.url).await?;
            }
            let (status, body) = request(&mut send, get()?).await?;
            anyhow::ensure!(status.is_success(), "status {status}");
            anyhow::Ok(body)
        }
        .await;
        match answer {
            Ok(body) => seen.body(&tally, &body),
            Err(_) => tally.borrow_mut().errors += 1,
        }
    }
}

/// A watching tab: one stream; each event's data is the body.
async fn watch_tab(args: Rc<Args>, cookie: String, tally: Shared, opening: Rc<Semaphore>) {
    let mut seen = Seen {
        cookie: cookie.clone(),
        version: None,
    };
    let permit = opening.acquire().await;
    let opened = async {
        let tcp = TcpStream::connect(authority(&args.url)?).await?;
        let (mut send, conn) = http1::handshake(TokioIo::new(tcp)).await?;
        tokio::task::spawn_local(conn);
        let req = Request::get(path_of(&args.url))
            .header(header::HOST, authority(&args.url)?)
            .header(header::COOKIE, &cookie)
            .header(header::ACCEPT, "text/event-stream")
            .body(Empty::<Bytes>::new())?;
        let resp = send.send_request(req).await?;
        anyhow::ensure!(resp.status().is_success(), "status {}", resp.status());
        let mut events = BodyDataStream::new(resp.into_body()).eventsource();
        // Open = the first event (the current body) is in.
        let first = events
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("stream ended before its first event"))??;
        anyhow::Ok((events, first.data))
    };
    let opened = tokio::time::timeout(REQUEST_TIMEOUT, opened).await;
    drop(permit);
    let mut events = match opened {
        Ok(Ok((events, first))) => {
            let mut t = tally.borrow_mut();
            t.connected += 1;
            t.events += 1;
            drop(t);
            seen.body(&tally, first.as_bytes());
            events
        }
        Ok(Err(e)) => {
            let mut t = tally.borrow_mut();
            t.failed += 1;
            t.first_error.get_or_insert(format!("{e:#}"));
            return;
        }
        Err(_) => {
            let mut t = tally.borrow_mut();
            t.failed += 1;
            t.first_error
                .get_or_insert("no first event within 30 s".into());
            return;
        }
    };
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                tally.borrow_mut().events += 1;
                seen.body(&tally, event.data.as_bytes());
            }
            Err(_) => break,
        }
    }
    // The server ended the stream while the run went on.
    tally.borrow_mut().errors += 1;
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn upstream_count(args: &Args) -> anyhow::Result<u64> {
    let body = one_off(http::Method::GET, &args.count_url, Bytes::new(), None).await?;
    Ok(std::str::from_utf8(&body)?.trim().parse()?)
}

/// One change at the upstream, then (with `--purge-url`) the purge of its tag.
async fn change(args: &Args) -> anyhow::Result<()> {
    one_off(http::Method::POST, &args.change_url, Bytes::new(), None).await?;
    if let Some(purge) = &args.purge_url {
        let body = serde_json::json!({ "tags": [args.purge_tag] }).to_string();
        one_off(
            http::Method::POST,
            purge,
            Bytes::from(body),
            args.token.as_deref(),
        )
        .await?;
    }
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.users > 0, "--users must be > 0");
    anyhow::ensure!(
        args.tabs >= 2,
        "--tabs must be at least 2 (one tab per user is measured apart)"
    );
    anyhow::ensure!(!args.interval.is_zero(), "--interval must be > 0");
    let args = Rc::new(args);
    let tally: Shared = Rc::default();
    let opening = Rc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let n = args.users * args.tabs;
    let mut tabs = Vec::with_capacity(n);
    // Two phases, each followed by a hold in which the driver reads the
    // server's RSS: first one tab per user (every key, watcher and body
    // exists), then the other tabs (what one more tab of a watched key costs).
    for (phase, range) in [("users", 0..args.users), ("connected", args.users..n)] {
        for i in range.clone() {
            let cookie = format!("user=u{}", i % args.users);
            let tab = match args.mode {
                Mode::Poll => {
                    // Tabs spread their polls evenly over the period, as tabs
                    // opened at random moments would.
                    let phase = args.interval.mul_f64(i as f64 / n as f64);
                    let tab = poll_tab(args.clone(), cookie, phase, tally.clone(), opening.clone());
                    tokio::task::spawn_local(tab)
                }
                Mode::Watch => {
                    let tab = watch_tab(args.clone(), cookie, tally.clone(), opening.clone());
                    tokio::task::spawn_local(tab)
                }
            };
            tabs.push(tab);
        }
        while {
            let t = tally.borrow();
            t.connected + t.failed < range.end
        } {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        {
            let t = tally.borrow();
            println!("{phase} {} {}", t.connected, t.failed);
            if let Some(e) = &t.first_error {
                eprintln!("first tab error: {e}");
            }
        }
        tokio::time::sleep(args.hold).await;
    }
    let (connected, failed) = {
        let t = tally.borrow();
        (t.connected, t.failed)
    };

    // The window: what the tabs cost the app from now on, page loads and first
    // events excluded.
    println!("measuring");
    let before = upstream_count(&args).await?;
    let (polls0, events0) = {
        let t = tally.borrow();
        (t.polls, t.events)
    };
    let start = tokio::time::Instant::now();
    let wall = Instant::now();
    let mut change_errors = 0u64;
    for i in 1..=args.changes {
        let at = args.duration.mul_f64(i as f64 / (args.changes + 1) as f64);
        tokio::time::sleep_until(start + at).await;
        if let Err(e) = change(&args).await {
            eprintln!("change {i}: {e:#}");
            change_errors += 1;
        }
    }
    tokio::time::sleep_until(start + args.duration).await;
    let after = upstream_count(&args).await?;
    let window = wall.elapsed().as_secs_f64();
    for tab in &tabs {
        tab.abort();
    }

    let t = tally.borrow();
    let mut lat = t.latencies.clone();
    lat.sort_unstable();
    let expected = connected as u64 * args.changes;
    println!(
        "RESULT tabs={n} connected={connected} failed={failed} changes={} change_errors={change_errors} \
         expected={expected} received={} delivered={:.4} p50_us={} p99_us={} max_us={} \
         upstream={} window_s={window:.2} polls={} events={} crossed={} errors={}",
        args.changes,
        lat.len(),
        if expected == 0 {
            1.0
        } else {
            lat.len() as f64 / expected as f64
        },
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        lat.last().copied().unwrap_or(0),
        after.saturating_sub(before),
        t.polls - polls0,
        t.events - events0,
        t.crossed,
        t.errors,
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // One thread: the client shares its CPU with the upstream.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tokio::task::LocalSet::new().block_on(&rt, run(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(user: &str, v: u64, t: u64) -> Vec<u8> {
        serde_json::json!({ "user": user, "v": v, "t": t, "pad": "x" })
            .to_string()
            .into_bytes()
    }

    #[test]
    fn a_tab_records_only_newer_versions_of_its_own_user() {
        let tally: Shared = Rc::default();
        let mut seen = Seen {
            cookie: "user=u1".into(),
            version: None,
        };
        seen.body(&tally, &body("user=u1", 2, 0));
        assert!(
            tally.borrow().latencies.is_empty(),
            "the first body is a starting point"
        );
        seen.body(&tally, &body("user=u1", 2, 0));
        seen.body(&tally, &body("user=u1", 3, now_micros()));
        seen.body(&tally, &body("user=u2", 4, 0));
        let t = tally.borrow();
        assert_eq!(t.latencies.len(), 1);
        assert_eq!(t.crossed, 1);
        assert_eq!(seen.version, Some(3));
    }
}
