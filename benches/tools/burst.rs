//! Cold-burst client for the cache coalescing benchmark: K requests for the
//! same cold URL sent at the same instant, each on its own connection, and
//! their latencies.
//!
//! Run by `benches/run cache`. Every connection is opened first; then all
//! requests are written at once (a barrier), so the cache sees K concurrent
//! misses. With `--users U`, request i carries `Cookie: user=u{i % U}`, so a
//! cache that keys on the cookie should send exactly U requests upstream.
//! Prints one `RESULT` line; the driver counts upstream requests itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Barrier;

/// A request still unanswered by then counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Parser)]
#[command(about = "K concurrent requests for one cold URL")]
struct Args {
    /// URL to request (http, loopback).
    #[arg(long)]
    url: Uri,
    /// Concurrent requests (one connection each).
    #[arg(long, default_value_t = 100)]
    requests: usize,
    /// Distinct users (cookies); 0 sends no cookie.
    #[arg(long, default_value_t = 0)]
    users: usize,
}

/// What one request ended as.
enum Outcome {
    /// Status and latency from the barrier to the end of the body.
    Done(u16, Duration),
    /// Connect, protocol or timeout failure.
    Failed(String),
}

async fn one(
    url: Uri,
    cookie: Option<String>,
    barrier: Arc<Barrier>,
) -> anyhow::Result<(u16, Duration)> {
    let host = url
        .authority()
        .ok_or_else(|| anyhow::anyhow!("{url}: no host"))?
        .to_string();
    let connected = async {
        let tcp = TcpStream::connect(&host).await?;
        tcp.set_nodelay(true)?;
        anyhow::Ok(http1::handshake(TokioIo::new(tcp)).await?)
    }
    .await;
    // Wait at the barrier even after a failed connect, so the others start.
    barrier.wait().await;
    let (mut send, conn) = connected?;
    tokio::spawn(conn);
    let mut req =
        Request::get(url.path_and_query().map_or("/", |p| p.as_str())).header(header::HOST, host);
    if let Some(cookie) = cookie {
        req = req.header(header::COOKIE, cookie);
    }
    let started = Instant::now();
    let resp = send.send_request(req.body(Empty::<Bytes>::new())?).await?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await?;
    Ok((status, started.elapsed()))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let barrier = Arc::new(Barrier::new(args.requests));
    let mut tasks = Vec::with_capacity(args.requests);
    for i in 0..args.requests {
        let cookie = (args.users > 0).then(|| format!("user=u{}", i % args.users));
        let fut = one(args.url.clone(), cookie, barrier.clone());
        tasks.push(tokio::spawn(async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
                Ok(Ok((status, took))) => Outcome::Done(status, took),
                Ok(Err(e)) => Outcome::Failed(format!("{e:#}")),
                Err(_) => Outcome::Failed("timed out".into()),
            }
        }));
    }
    let mut lat = Vec::with_capacity(args.requests);
    let (mut non_2xx, mut errors) = (0usize, 0usize);
    for task in tasks {
        match task.await? {
            Outcome::Done(status, took) => {
                if !(200..300).contains(&status) {
                    non_2xx += 1;
                }
                lat.push(took.as_micros() as u64);
            }
            Outcome::Failed(e) => {
                if errors == 0 {
                    eprintln!("first error: {e}");
                }
                errors += 1;
            }
        }
    }
    lat.sort_unstable();
    let pct = |p: f64| -> u64 {
        if lat.is_empty() {
            return 0;
        }
        let rank = ((p / 100.0) * lat.len() as f64).ceil() as usize;
        lat[rank.clamp(1, lat.len()) - 1]
    };
    println!(
        "RESULT requests={} users={} ok={} non_2xx={non_2xx} errors={errors} p50_us={} p99_us={} max_us={}",
        args.requests,
        args.users,
        lat.len(),
        pct(50.0),
        pct(99.0),
        lat.last().copied().unwrap_or(0),
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}
