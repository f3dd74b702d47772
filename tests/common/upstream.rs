//! Builder-style real upstream servers for tests:
//! `Upstream::builder().route("/", "hello").delay("/slow", 200ms).run().await`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Body type of test upstream responses.
pub type TestBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A boxed async handler.
pub type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<TestBody>> + Send>>
        + Send
        + Sync,
>;

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: Method,
    /// URI as received (path and query).
    pub uri: Uri,
    /// Headers as received.
    pub headers: HeaderMap,
}

/// Builds an [`Upstream`].
#[derive(Default)]
pub struct Builder {
    routes: HashMap<String, Handler>,
    delays: HashMap<String, Duration>,
    addr: Option<SocketAddr>,
}

/// A running upstream server.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
    shutdown: CancellationToken,
}

#[derive(Default)]
struct State {
    total: AtomicUsize,
    hits: Mutex<HashMap<String, usize>>,
    recorded: Mutex<Vec<Recorded>>,
}

/// A full response with `body`.
pub fn text(status: u16, body: impl Into<Bytes>) -> Response<TestBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = StatusCode::from_u16(status).expect("valid status");
    resp
}

/// Box a full body.
pub fn full(body: impl Into<Bytes>) -> TestBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

impl Upstream {
    /// Start building.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received in total.
    pub fn total(&self) -> usize {
        self.state.total.load(Ordering::SeqCst)
    }

    /// Requests received for `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.state
            .hits
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Every request received, in order.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.state.recorded.lock().unwrap().clone()
    }

    /// The last request received.
    pub fn last(&self) -> Recorded {
        self.recorded()
            .pop()
            .expect("the upstream received no request")
    }

    /// Stop accepting and close the listener (connections in progress are dropped).
    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Builder {
    /// Answer `path` with 200 and a fixed body.
    pub fn route(self, path: &str, body: &'static str) -> Self {
        self.handler(path, move |_req| async move { text(200, body) })
    }

    /// Answer `path` with an async handler.
    pub fn handler<F, Fut>(mut self, path: &str, f: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        self.routes
            .insert(path.to_string(), Arc::new(move |req| Box::pin(f(req))));
        self
    }

    /// Delay every answer on `path` by `delay`.
    pub fn delay(mut self, path: &str, delay: Duration) -> Self {
        self.delays.insert(path.to_string(), delay);
        self
    }

    /// Listen on a given address (to restart an upstream on the same port).
    pub fn at(mut self, addr: SocketAddr) -> Self {
        self.addr = Some(addr);
        self
    }

    /// Start serving (HTTP/1.1 with upgrades). Unknown paths get 404.
    pub async fn run(self) -> Upstream {
        let listener = TcpListener::bind(self.addr.unwrap_or(([127, 0, 0, 1], 0).into()))
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let state = Arc::new(State::default());
        let shutdown = CancellationToken::new();
        let routes = Arc::new(self.routes);
        let delays = Arc::new(self.delays);
        let (st, stop) = (state.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(p) => p, Err(_) => continue },
                    _ = stop.cancelled() => return,
                };
                let (routes, delays, st, stop) =
                    (routes.clone(), delays.clone(), st.clone(), stop.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (routes, delays, st) = (routes.clone(), delays.clone(), st.clone());
                        async move {
                            let path = req.uri().path().to_string();
                            st.total.fetch_add(1, Ordering::SeqCst);
                            *st.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
                            st.recorded.lock().unwrap().push(Recorded {
                                method: req.method().clone(),
                                uri: req.uri().clone(),
                                headers: req.headers().clone(),
                            });
                            if let Some(d) = delays.get(&path) {
                                tokio::time::sleep(*d).await;
                            }
                            let resp = match routes.get(&path) {
                                Some(h) => h(req).await,
                                None => text(404, "no such route"),
                            };
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        Upstream {
            addr,
            state,
            shutdown,
        }
    }
}
