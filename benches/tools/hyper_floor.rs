//! The cheapest reverse proxy this stack allows: hyper's server and client on tokio's
//! single-threaded scheduler (as unpoll runs with `workers = 1` in the benchmarks), and
//! nothing else. It forwards every request as it came on a kept-alive upstream connection,
//! reads the whole response and answers it: no routing, no header rewriting beyond the
//! hop-by-hop `Connection`, no limits, no timeouts, no metrics, no logs.
//!
//! `benches/run proxy` and `benches/run tls` measure it next to nginx and unpoll. Its CPU
//! per request is the floor under unpoll's: what hyper, tokio and rustls cost before unpoll
//! does anything, so a gap between unpoll and nginx splits into the stack's part and
//! unpoll's own.
//!
//! With `--cert` and `--key` it terminates TLS with rustls (ring, as unpoll) and speaks h2
//! or http/1.1 by ALPN, through hyper-util's auto server; without, HTTP/1.1 only.
//!
//! It prints `listening <addr>` once bound, then serves until killed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use clap::Parser;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self as client, SendRequest};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
#[command(about = "A minimal hyper reverse proxy: the stack's floor under unpoll")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The app, as an IP:port.
    #[arg(long)]
    upstream: SocketAddr,
    /// PEM certificate chain: serve TLS (h2 and http/1.1 by ALPN).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key of `--cert`.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
}

/// Idle upstream connections, last in first out (as unpoll's pool).
type Pool = Arc<Mutex<Vec<SendRequest<Incoming>>>>;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // As unpoll with `workers = 1` (the benchmarks' setting): tokio's single-threaded
    // scheduler.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let tls = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => Some(acceptor(cert, key)?),
        _ => None,
    };
    let listener = TcpListener::bind(args.listen).await?;
    println!("listening {}", listener.local_addr()?);
    let pool: Pool = Arc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (pool, tls, upstream) = (pool.clone(), tls.clone(), args.upstream);
        tokio::spawn(async move {
            let service = service_fn(move |req| forward(pool.clone(), upstream, req));
            match tls {
                None => {
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    let _ = conn.await;
                }
                Some(acceptor) => {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        });
    }
}

/// Send `req` upstream on an idle connection (or a new one) and answer its whole response.
async fn forward(
    pool: Pool,
    upstream: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let idle = pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
    let mut sender = match idle {
        Some(sender) => sender,
        None => match connect(upstream).await {
            Ok(sender) => sender,
            Err(_) => {
                let mut resp = Response::new(Full::new(Bytes::new()));
                *resp.status_mut() = StatusCode::BAD_GATEWAY;
                return Ok(resp);
            }
        },
    };
    let (mut parts, body) = sender.send_request(req).await?.into_parts();
    let body = body.collect().await?.to_bytes();
    pool.lock().unwrap_or_else(|e| e.into_inner()).push(sender);
    // The upstream's own keep-alive answer is about its connection, not the client's (a
    // client asking `Connection: close` must see hyper's close, not this).
    parts.headers.remove(http::header::CONNECTION);
    Ok(Response::from_parts(parts, Full::new(body)))
}

async fn connect(upstream: SocketAddr) -> anyhow::Result<SendRequest<Incoming>> {
    let stream = TcpStream::connect(upstream).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = client::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

fn acceptor(cert: &PathBuf, key: &PathBuf) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
