//! `inject = true` on a `[[watch]]` rule: the app's HTML pages get
//! `<script src="/_unpoll/client.js" data-unpoll-watch="/a /b">`, so the browser client
//! watches those paths and answers the page's own polls of them (README "In the browser").
//!
//! The page is rewritten as it streams (`lol_html`), never buffered whole: the tag goes
//! first in `<head>` (else first in `<body>`, else before the first `<script>`, else at the
//! end), so it runs before the page's own scripts. A page with a `Content-Encoding` is left
//! as it is and counted: unpoll does not decompress to rewrite.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Method, Response};
use http_body::{Frame, SizeHint};
use lol_html::html_content::ContentType;
use lol_html::send::{HtmlRewriter, Settings};
use lol_html::{MemorySettings, element, end};

use super::WatchMetrics;
use crate::body::{Body, BoxError, boxed};
use crate::snapshot::Snapshot;

/// Memory the rewriter may use for one page (it buffers only a tag split across chunks).
/// Past it, the rest of the page goes out unchanged (lol_html's graceful bail-out).
const MAX_REWRITER_MEMORY: usize = 256 * 1024;

/// `resp` with the snapshot's `inject_tag` added when it is an HTML page answering a GET
/// (the snapshot has a tag only when a rule injects and the client is served); a page with
/// a `Content-Encoding` is returned unchanged and counted in `metrics.inject_skipped`.
pub fn inject_page(
    method: &Method,
    resp: Response<Body>,
    snapshot: &Snapshot,
    metrics: &WatchMetrics,
) -> Response<Body> {
    match &snapshot.inject_tag {
        Some(tag) if method == Method::GET && is_html(resp.headers()) => inject(resp, tag, metrics),
        _ => resp,
    }
}

/// `resp`, an HTML page, with `tag` added, unless it has a `Content-Encoding` (counted).
fn inject(resp: Response<Body>, tag: &Arc<str>, metrics: &WatchMetrics) -> Response<Body> {
    if resp.headers().contains_key(header::CONTENT_ENCODING) {
        metrics.inject_skipped.inc();
        return resp;
    }
    metrics.injected.inc();
    let (mut parts, body) = resp.into_parts();
    // The page grows by the tag: its length is no longer the app's. Its ETag stays: a 304
    // from the app means the page it would inject into is unchanged too.
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, boxed(Injecting::new(body, tag)))
}

fn is_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("text/html"))
}

/// What the rewriter wrote and the body has not sent yet.
type Output = Arc<Mutex<Vec<u8>>>;
type Sink = Box<dyn FnMut(&[u8]) + Send>;

/// An HTML body with the tag added as it streams through.
struct Injecting {
    inner: Body,
    /// `None` after the end, or after a bail-out (the rest passes through unchanged).
    rewriter: Option<HtmlRewriter<'static, Sink>>,
    output: Output,
    ended: bool,
}

impl Injecting {
    fn new(inner: Body, tag: &Arc<str>) -> Injecting {
        let output = Output::default();
        let sink_output = output.clone();
        let sink: Sink = Box::new(move |chunk: &[u8]| {
            lock(&sink_output).extend_from_slice(chunk);
        });
        let rewriter = HtmlRewriter::new(settings(tag), sink);
        Injecting {
            inner,
            rewriter: Some(rewriter),
            output,
            ended: false,
        }
    }

    /// What the rewriter has written so far, if anything.
    fn take_output(&self) -> Option<Bytes> {
        let mut out = lock(&self.output);
        (!out.is_empty()).then(|| Bytes::from(std::mem::take(&mut *out)))
    }
}

fn lock(output: &Output) -> std::sync::MutexGuard<'_, Vec<u8>> {
    // A Vec of bytes is valid after any panic.
    output.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Handlers adding `tag` once: first in `<head>`, else first in `<body>`, else before the
/// first `<script>`, else at the end of the document. The handlers share the snapshot's
/// tag: a page costs no copy of it.
fn settings(tag: &Arc<str>) -> Settings<'static, 'static> {
    let done = Arc::new(AtomicBool::new(false));
    let (d1, d2, d3, d4) = (done.clone(), done.clone(), done.clone(), done);
    let (t1, t2, t3, t4) = (tag.clone(), tag.clone(), tag.clone(), tag.clone());
    Settings::new_send()
        .append_element_content_handler(element!("head", move |el| {
            if !d1.swap(true, Ordering::Relaxed) {
                el.prepend(&t1, ContentType::Html);
            }
            Ok(())
        }))
        .append_element_content_handler(element!("body", move |el| {
            if !d2.swap(true, Ordering::Relaxed) {
                el.prepend(&t2, ContentType::Html);
            }
            Ok(())
        }))
        .append_element_content_handler(element!("script", move |el| {
            if !d3.swap(true, Ordering::Relaxed) {
                el.before(&t3, ContentType::Html);
            }
            Ok(())
        }))
        .append_document_content_handler(end!(move |end| {
            if !d4.swap(true, Ordering::Relaxed) {
                end.append(&t4, ContentType::Html);
            }
            Ok(())
        }))
        .with_memory_settings(
            MemorySettings::new()
                .with_max_allowed_memory_usage(MAX_REWRITER_MEMORY)
                .with_graceful_bail_out_on_memory_limit_exceeded(true),
        )
}

impl http_body::Body for Injecting {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.ended {
                return Poll::Ready(self.take_output().map(|b| Ok(Frame::data(b))));
            }
            let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    self.ended = true;
                    if let Some(rewriter) = self.rewriter.take()
                        && let Err(e) = rewriter.end()
                    {
                        tracing::debug!(cause = %e, "HTML rewriting gave up at the end");
                    }
                    continue;
                }
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                // Trailers: after what was written so far.
                Err(frame) => match self.take_output() {
                    Some(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                    None => return Poll::Ready(Some(Ok(frame))),
                },
            };
            let Some(rewriter) = self.rewriter.as_mut() else {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            };
            if let Err(e) = rewriter.write(&data) {
                // With graceful bail-out the rewriter has flushed what it held, unchanged;
                // the rest of the page passes through as it comes.
                tracing::debug!(cause = %e, "HTML rewriting gave up; the rest passes unchanged");
                self.rewriter = None;
            }
            if let Some(out) = self.take_output() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && lock(&self.output).is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    async fn rewrite(chunks: &[&str]) -> String {
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from(c.to_string()))))
            .collect();
        let body = boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )));
        let out = Injecting::new(body, &Arc::from("<script x></script>"))
            .collect()
            .await
            .unwrap()
            .to_bytes();
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn the_tag_goes_first_in_head_even_when_a_tag_is_split_across_chunks() {
        let page = rewrite(&[
            "<!doctype html><html><he",
            "ad><title>t</title></head><body>",
            "<p>x</p></body></html>",
        ])
        .await;
        assert_eq!(
            page,
            "<!doctype html><html><head><script x></script><title>t</title></head><body><p>x</p></body></html>"
        );
    }

    #[tokio::test]
    async fn without_head_or_body_before_the_first_script_else_at_the_end() {
        let page =
            rewrite(&["<meta charset=utf-8><script>poll()</script><script>b</script>"]).await;
        assert_eq!(
            page,
            "<meta charset=utf-8><script x></script><script>poll()</script><script>b</script>"
        );
        assert_eq!(
            rewrite(&["<p>plain</p>"]).await,
            "<p>plain</p><script x></script>"
        );
    }

    #[test]
    fn only_html_gets_of_a_snapshot_with_inject_rules_and_no_encoded_page() {
        let metrics = WatchMetrics::default();
        // Built here rather than with `handles::testing`: `handles` imports `watch`.
        let snapshot = |rules: &str| {
            let mut registry = prometheus_client::registry::Registry::default();
            let metrics = crate::metrics::ProxyMetrics::register(&mut registry);
            let auth = crate::auth::AuthMetrics::register(&mut registry);
            let config = crate::config::parse_rules(rules).expect("valid rules");
            std::sync::Arc::new(crate::snapshot::Snapshot::build(
                config, &metrics, &auth, None,
            ))
        };
        let with = snapshot(
            "[[watch]]\npath = \"/a\"\ninject = true\n[[watch]]\npath = \"/b&c\"\ninject = true",
        );
        let without = snapshot("[[watch]]\npath = \"/a\"");
        assert_eq!(
            with.inject_tag.as_deref(),
            Some("<script src=\"/_unpoll/client.js\" data-unpoll-watch=\"/a /b&amp;c\"></script>")
        );
        assert_eq!(without.inject_tag, None);
        let page = |ct: &str, encoding: Option<&str>| {
            let mut b = Response::builder().header("content-type", ct);
            if let Some(e) = encoding {
                b = b.header("content-encoding", e);
            }
            b.header("content-length", "3")
                .body(boxed(Full::new(Bytes::from_static(b"abc"))))
                .unwrap()
        };
        let get = |resp, snapshot| inject_page(&Method::GET, resp, snapshot, &metrics);
        let r = get(page("text/html; charset=utf-8", None), &with);
        assert!(
            r.headers().get("content-length").is_none(),
            "length changes"
        );
        let r = get(page("text/html", None), &without);
        assert!(
            r.headers().get("content-length").is_some(),
            "no inject rule"
        );
        let r = get(page("application/json", None), &with);
        assert!(r.headers().get("content-length").is_some());
        let r = get(page("text/html", Some("gzip")), &with);
        assert!(
            r.headers().get("content-length").is_some(),
            "left as it was"
        );
        let r = inject_page(&Method::POST, page("text/html", None), &with, &metrics);
        assert!(r.headers().get("content-length").is_some());
        assert_eq!(
            (metrics.injected.get(), metrics.inject_skipped.get()),
            (1, 1)
        );
    }
}
