//! The demo's "legacy app": a chat written the way polling apps are, with plain hyper
//! handlers and no push code of its own. unpoll in front of it does the rest.
//!
//! - `GET /`: the chat page (it polls `/api/messages` every 3 s unless unpoll pushes);
//! - `GET /api/messages`: `{"messages": [{"id", "text", "at"}, ...]}`, oldest first;
//! - `POST /api/messages`: JSON `{"text": "..."}` or a form `text=...` → `201` and the
//!   stored message.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{json, read_body, text};
use crate::body::{Body, full};

/// The chat page, served by the app (not by unpoll): it loads `/_unpoll/client.js` the way
/// a real page would after its few lines of change.
const PAGE: &str = include_str!("page.html");

/// Messages kept; when full, the oldest is dropped (a demo has no database).
pub const MAX_MESSAGES: usize = 50;
/// Longest message, in characters; longer ones are refused with 400.
pub const MAX_TEXT_CHARS: usize = 500;
/// Largest request body read; larger is refused with 413.
const MAX_BODY: usize = 16 * 1024;
/// A connection that sends no complete request head within this is closed.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One chat message.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Message {
    /// Increasing from 1.
    pub id: u64,
    /// What was posted, trimmed.
    pub text: String,
    /// Unix seconds when it was posted.
    pub at: u64,
}

#[derive(Deserialize)]
struct NewMessage {
    text: String,
}

/// The app's state.
#[derive(Default)]
pub struct Chat {
    /// The last [`MAX_MESSAGES`] messages, oldest first; a lock because handlers run on
    /// several connections at once, held only to push or copy.
    messages: Mutex<VecDeque<Message>>,
    /// The id of the last message posted.
    last_id: AtomicU64,
    /// `GET /api/messages` requests the app answered: what unpoll saves it shows here.
    list_requests: AtomicU64,
}

impl Chat {
    /// `GET /api/messages` requests answered so far.
    pub fn list_requests(&self) -> u64 {
        self.list_requests.load(Ordering::Relaxed)
    }

    /// A copy of the messages, oldest first.
    pub fn messages(&self) -> Vec<Message> {
        self.lock().iter().cloned().collect()
    }

    fn post(&self, text: &str) -> Message {
        let message = Message {
            id: self.last_id.fetch_add(1, Ordering::Relaxed) + 1,
            text: text.to_owned(),
            at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let mut messages = self.lock();
        if messages.len() == MAX_MESSAGES {
            messages.pop_front();
        }
        messages.push_back(message.clone());
        message
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Message>> {
        self.messages
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Serve the app on `listener` until `shutdown`, then let open requests finish.
pub async fn serve(listener: TcpListener, chat: Arc<Chat>, shutdown: CancellationToken) {
    let tasks = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(cause = %e, "demo app: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let chat = chat.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let service = service_fn(move |req| {
                let chat = chat.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&chat, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    tasks.close();
    tasks.wait().await;
}

async fn handle(chat: &Chat, req: Request<Incoming>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => page(),
        (&Method::GET, "/api/messages") => {
            chat.list_requests.fetch_add(1, Ordering::Relaxed);
            let messages = chat.messages();
            json(StatusCode::OK, &serde_json::json!({ "messages": messages }))
        }
        (&Method::POST, "/api/messages") => post(chat, req).await,
        (_, "/" | "/api/messages") => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn page() -> Response<Body> {
    let mut resp = Response::new(full(PAGE));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

async fn post(chat: &Chat, req: Request<Incoming>) -> Response<Body> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    let body = match read_body(req, MAX_BODY).await {
        Ok(body) => body,
        Err(resp) => return resp,
    };
    let text_field = if is_json {
        serde_json::from_slice::<NewMessage>(&body)
            .ok()
            .map(|m| m.text)
    } else {
        form_urlencoded::parse(&body)
            .find(|(k, _)| k == "text")
            .map(|(_, v)| v.into_owned())
    };
    match text_field.as_deref().map(str::trim) {
        None => text(
            StatusCode::BAD_REQUEST,
            "send JSON {\"text\": \"...\"} or a form with a text field\n",
        ),
        Some("") => text(StatusCode::BAD_REQUEST, "the text is empty\n"),
        Some(t) if t.chars().count() > MAX_TEXT_CHARS => text(
            StatusCode::BAD_REQUEST,
            format!("the text is over {MAX_TEXT_CHARS} characters\n"),
        ),
        Some(t) => {
            let message = chat.post(t);
            json(StatusCode::CREATED, &serde_json::json!(message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_messages() {
        let chat = Chat::default();
        for i in 0..MAX_MESSAGES + 3 {
            chat.post(&format!("m{i}"));
        }
        let messages = chat.messages();
        assert_eq!(messages.len(), MAX_MESSAGES);
        assert_eq!(messages[0].text, "m3");
        assert_eq!(messages.last().map(|m| m.id), Some(MAX_MESSAGES as u64 + 3));
    }
}
