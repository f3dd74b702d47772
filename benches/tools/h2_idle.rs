//! Idle HTTP/2 SSE streams over TLS: many EventSource GETs multiplexed on a few
//! h2 connections, held open and idle while the driver measures the server.
//!
//! Run by `benches/run tls` against unpoll and Nchan. Steps:
//! 1. open `--connections` TLS connections to `--url` (ALPN h2 only, trusting
//!    the benchmark's self-signed `--ca`);
//! 2. open `--streams` GETs (`Accept: text/event-stream`) spread round-robin
//!    over them, at most `--open-concurrency` waiting for their response head
//!    at once; a stream counts as opened when a 200 head has come, else as
//!    failed (status, reset, or no head within `--open-timeout`);
//! 3. print `opened OK FAILED` once every stream is settled, then keep reading
//!    the open bodies (so no flow-control window fills) for `--hold`;
//! 4. print one `RESULT` line and exit, which closes every connection.
//!
//! A separate process from the server on purpose: the driver reads the
//! server's RSS from /proc while the streams are held.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

#[derive(Parser)]
#[command(about = "Idle HTTP/2 SSE streams over TLS")]
struct Args {
    /// Stream URL (https, loopback).
    #[arg(long)]
    url: Uri,
    /// PEM certificate to trust (the benchmark's self-signed one).
    #[arg(long)]
    ca: std::path::PathBuf,
    /// Server name to verify the certificate against.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Number of streams, spread round-robin over the connections.
    #[arg(long, default_value_t = 10_000)]
    streams: usize,
    /// Number of h2 connections.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Streams waiting for their response head at once.
    #[arg(long, default_value_t = 256)]
    open_concurrency: usize,
    /// A stream whose response head has not come by then counts as failed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    open_timeout: Duration,
    /// How long to hold the streams once all are settled.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    hold: Duration,
}

#[derive(Default)]
struct Counters {
    opened: AtomicUsize,
    failed: AtomicUsize,
    /// Streams that ended (body finished or broke) after opening.
    ended: AtomicUsize,
    body_bytes: AtomicU64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.url.scheme_str() != Some("https") {
        bail!("--url must be https, not {}", args.url);
    }
    if args.connections == 0 || args.streams == 0 {
        bail!("--connections and --streams must be at least 1");
    }
    let host = args.url.host().context("--url has no host")?.to_owned();
    let port = args.url.port_u16().unwrap_or(443);

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&args.ca)
        .with_context(|| format!("--ca {}", args.ca.display()))?
    {
        roots
            .add(cert.with_context(|| format!("--ca {}", args.ca.display()))?)
            .context("--ca: not a usable certificate")?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = TlsConnector::from(Arc::new(tls));
    let server_name = ServerName::try_from(args.server_name.clone())
        .context("--server-name is not a DNS name or IP address")?;

    let mut senders = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .with_context(|| format!("connection {i}: connect to {host}:{port}"))?;
        let stream = connector
            .connect(server_name.clone(), tcp)
            .await
            .with_context(|| format!("connection {i}: TLS handshake"))?;
        if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            bail!("connection {i}: the server did not choose h2 through ALPN");
        }
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .with_context(|| format!("connection {i}: h2 handshake"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                eprintln!("connection {i} closed: {e}");
            }
        });
        senders.push(sender);
    }

    let counters = Arc::new(Counters::default());
    let gate = Arc::new(Semaphore::new(args.open_concurrency.max(1)));
    let settled = Arc::new(tokio::sync::Notify::new());
    for s in 0..args.streams {
        let mut sender = senders[s % senders.len()].clone();
        let (counters, gate, settled) = (counters.clone(), gate.clone(), settled.clone());
        let uri = args.url.clone();
        let timeout = args.open_timeout;
        let total = args.streams;
        tokio::spawn(async move {
            let permit = gate.acquire_owned().await.expect("never closed");
            let req = Request::get(uri)
                .header(header::ACCEPT, "text/event-stream")
                .body(Empty::new())
                .expect("valid request");
            let head = tokio::time::timeout(timeout, async {
                sender.ready().await?;
                sender.send_request(req).await
            })
            .await;
            drop(permit);
            let ok = matches!(&head, Ok(Ok(r)) if r.status() == StatusCode::OK);
            let done = if ok {
                &counters.opened
            } else {
                &counters.failed
            };
            done.fetch_add(1, Ordering::Relaxed);
            if counters.opened.load(Ordering::Relaxed) + counters.failed.load(Ordering::Relaxed)
                == total
            {
                settled.notify_one();
            }
            let Ok(Ok(resp)) = head else { return };
            if !ok {
                return;
            }
            let mut body = resp.into_body();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Some(d) = f.data_ref() {
                            counters
                                .body_bytes
                                .fetch_add(d.len() as u64, Ordering::Relaxed);
                        }
                    }
                    Err(_) => break,
                }
            }
            counters.ended.fetch_add(1, Ordering::Relaxed);
        });
    }
    drop(senders);
    settled.notified().await;
    println!(
        "opened {} {}",
        counters.opened.load(Ordering::Relaxed),
        counters.failed.load(Ordering::Relaxed)
    );
    tokio::time::sleep(args.hold).await;
    println!(
        "RESULT opened={} failed={} ended={} body_bytes={}",
        counters.opened.load(Ordering::Relaxed),
        counters.failed.load(Ordering::Relaxed),
        counters.ended.load(Ordering::Relaxed),
        counters.body_bytes.load(Ordering::Relaxed)
    );
    Ok(())
}
