//! Real SSE clients for tests: reqwest streams parsed by eventsource-stream.

use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};

/// One open SSE stream.
pub struct SseClient {
    /// The response status and headers.
    pub status: u16,
    /// Response headers.
    pub headers: reqwest::header::HeaderMap,
    events: Pin<Box<dyn Stream<Item = Event> + Send>>,
}

impl SseClient {
    /// GET `url` with optional `Last-Event-ID`; panics unless the request itself succeeds
    /// (any status is returned as is).
    pub async fn open(
        client: &reqwest::Client,
        url: &str,
        last_event_id: Option<&str>,
    ) -> SseClient {
        let mut req = client.get(url);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        SseClient::send(req).await
    }

    /// Send `req` (a GET built by the test, with its own headers) and read its answer as
    /// an event stream; panics unless the request itself succeeds.
    pub async fn send(req: reqwest::RequestBuilder) -> SseClient {
        let resp = req.send().await.expect("GET stream");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let events = resp
            .bytes_stream()
            .eventsource()
            .filter_map(|e| async move { e.ok() })
            // The `retry:` block parses as an empty event; tests look at real ones.
            .filter(|e| {
                futures::future::ready(
                    !(e.data.is_empty() && e.event == "message" && e.id.is_empty()),
                )
            });
        SseClient {
            status,
            headers,
            events: Box::pin(events),
        }
    }

    /// The next event, or panic after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Event {
        tokio::time::timeout(timeout, self.events.next())
            .await
            .expect("an event in time")
            .expect("stream still open")
    }

    /// `None` when the stream ended, `Some` with the next event otherwise (panics on
    /// timeout).
    pub async fn next_or_end(&mut self, timeout: Duration) -> Option<Event> {
        tokio::time::timeout(timeout, self.events.next())
            .await
            .expect("an event or the end in time")
    }

    /// Assert nothing arrives within `quiet`.
    pub async fn assert_quiet(&mut self, quiet: Duration) {
        if let Ok(e) = tokio::time::timeout(quiet, self.events.next()).await {
            panic!("unexpected event {e:?}");
        }
    }
}

/// POST `events` (a JSON value: one event or an array) to `/publish` with `token`.
pub async fn publish(
    client: &reqwest::Client,
    admin_url: &str,
    token: &str,
    events: serde_json::Value,
) -> serde_json::Value {
    let resp = client
        .post(admin_url)
        .bearer_auth(token)
        .json(&events)
        .send()
        .await
        .expect("POST /publish");
    assert_eq!(resp.status(), 200, "publish failed");
    resp.json().await.expect("publish answer")
}

/// The admin token of [`streams_config`].
pub const TOKEN: &str = "t0ken";

/// A config for stream tests: the admin API with [`TOKEN`], `[hub]` settings `hub`, the
/// stream `/bots/events` (channel `bot:{query.botId}`, no auth), then `rules` (TOML tables).
pub fn streams_config(hub: &str, rules: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
token = "{TOKEN}"

[hub]
{hub}

[[stream]]
path = "/bots/events"
channels = ["bot:{{query.botId}}"]
auth = "none"
{rules}"#
    )
}
