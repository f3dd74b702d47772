//! Benchmark upstream: answers every request with the same 1 KiB JSON body.
//!
//! Used by `benches/run` as the app behind each proxy. It is deliberately small
//! and allocation-free per request so that the proxy, not the upstream, is
//! what the benchmark measures.
//!
//! - `--delay 200ms` makes it a slow upstream (cache coalescing benchmark).
//! - `GET /grip/{channel}` answers with GRIP headers (`Grip-Hold: stream`),
//!   which Pushpin turns into a held SSE stream (fan-out benchmark).
//! - `GET /_count` answers the number of requests served so far (excluding
//!   `/_count` and `/_change`), so a benchmark can check how many requests a
//!   cache let through.
//! - `GET /twilio-chat/...` answers a per-user, versioned 1 KiB JSON body
//!   (`{"user": <Cookie>, "v": version, "t": µs of the change, "pad": …}`), the
//!   polling endpoint of the watch benchmark; `POST /_change` bumps the version
//!   (every user's body changes) and answers the new version.
//!
//! It prints `listening <addr>` on stdout once bound, then serves until killed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use http::{HeaderValue, Method, Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Size of the JSON body every request gets.
const BODY_LEN: usize = 1024;

#[derive(Parser)]
#[command(about = "Fast benchmark upstream answering 1 KiB of JSON")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Time to wait before answering each request.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    delay: Duration,
}

/// Shared by every connection of the process.
struct State {
    /// The one body served, built once: cloning `Bytes` is a refcount bump.
    body: Bytes,
    /// Requests served (not counting `/_count`); read by the cache benchmark to
    /// count how many requests reached the upstream.
    served: AtomicU64,
    delay: Duration,
    /// Version of the `/twilio-chat/` bodies, bumped by `POST /_change`.
    version: AtomicU64,
    /// Wall-clock µs of the last change (0 before any): the watch benchmark's
    /// clients subtract it from the time they see that version.
    changed_us: AtomicU64,
}

/// A JSON object of exactly `BODY_LEN` bytes.
fn json_body() -> Bytes {
    let head = r#"{"ok":true,"items":[1,2,3],"pad":""#;
    let tail = r#""}"#;
    let pad = "x".repeat(BODY_LEN - head.len() - tail.len());
    Bytes::from(format!("{head}{pad}{tail}"))
}

/// The versioned body of one user (the request's Cookie), padded to `BODY_LEN`
/// bytes: compact JSON on one line, as a chat app's conversation list would be.
fn user_body(cookie: &str, version: u64, changed_us: u64) -> Bytes {
    // The Cookie goes into a JSON string: keep only characters needing no escape.
    let user: String = cookie
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\')
        .take(128)
        .collect();
    let head = format!(r#"{{"user":"{user}","v":{version},"t":{changed_us},"pad":""#);
    let tail = r#""}"#;
    let pad = "x".repeat(BODY_LEN.saturating_sub(head.len() + tail.len()));
    Bytes::from(format!("{head}{pad}{tail}"))
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/_count" {
        let n = state.served.load(Ordering::Relaxed);
        return Ok(Response::new(Full::new(Bytes::from(n.to_string()))));
    }
    if req.uri().path() == "/_change" && req.method() == Method::POST {
        // Time first, then version: a reader that sees the new version sees a
        // time no older than the change.
        state.changed_us.store(now_micros(), Ordering::SeqCst);
        let v = state.version.fetch_add(1, Ordering::SeqCst) + 1;
        return Ok(Response::new(Full::new(Bytes::from(v.to_string()))));
    }
    state.served.fetch_add(1, Ordering::Relaxed);
    if req.uri().path().starts_with("/twilio-chat/") {
        let cookie = req
            .headers()
            .get(header::COOKIE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let v = state.version.load(Ordering::SeqCst);
        let t = state.changed_us.load(Ordering::SeqCst);
        let mut resp = Response::new(Full::new(user_body(cookie, v, t)));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return Ok(resp);
    }
    if let Some(channel) = req.uri().path().strip_prefix("/grip/") {
        return Ok(grip_hold(channel));
    }
    if !state.delay.is_zero() {
        tokio::time::sleep(state.delay).await;
    }
    let mut resp = Response::new(Full::new(state.body.clone()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// The GRIP answer Pushpin turns into a held SSE stream on `channel`.
fn grip_hold(channel: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert("grip-hold", HeaderValue::from_static("stream"));
    if let Ok(v) = HeaderValue::from_str(channel) {
        h.insert("grip-channel", v);
    }
    resp
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    // One thread: the benchmark pins the upstream to a CPU it shares with wrk.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(args))
}

async fn serve(args: Args) -> std::io::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    println!("listening {}", listener.local_addr()?);
    let state = Arc::new(State {
        body: json_body(),
        served: AtomicU64::new(0),
        delay: args.delay,
        version: AtomicU64::new(0),
        changed_us: AtomicU64::new(0),
    });
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            // EMFILE and friends: keep serving the connections we have.
            Err(err) => {
                eprintln!("accept: {err}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Small responses: do not let Nagle delay them.
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(state.clone(), req));
            // A client closing mid-request is normal under load; nothing to report.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_one_kib_of_json() {
        let body = json_body();
        assert_eq!(body.len(), BODY_LEN);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["ok"], true);
    }

    #[test]
    fn user_body_is_one_kib_of_json_naming_the_user() {
        let body = user_body("user=u7\"x", 3, 1234);
        assert_eq!(body.len(), BODY_LEN);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["user"], "user=u7x");
        assert_eq!(v["v"], 3);
        assert_eq!(v["t"], 1234);
    }
}
