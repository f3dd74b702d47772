//! A polled app for `[[watch]]` tests: each user's inbox has a version, `GET /inbox`
//! answers it as JSON, and the app is the auth (users it forbids get 403). `POST
//! /send?to=NAME` is a mutation that changes NAME's inbox.
//!
//! ```ignore
//! let (upstream, inbox) = inbox::app().await;
//! inbox::change(&inbox, "ann");
//! assert_eq!(inbox::fetches(&inbox, "ann"), 1);
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use hyper::body::Incoming;

use super::Upstream;
use super::upstream::{TestBody, text};

/// The app's state, shared with the test.
#[derive(Default)]
pub struct Inbox {
    /// Each user's inbox version (0 until changed).
    pub versions: HashMap<String, u64>,
    /// Users the app answers 403.
    pub forbidden: HashSet<String>,
    /// Fetches of `/inbox` per user.
    pub fetches: HashMap<String, usize>,
    /// Status answered to each fetch of a user, in order, before falling back to 200.
    pub scripted: HashMap<String, Vec<u16>>,
}

/// The [`Inbox`] as the app's handlers and the test share it.
pub type Shared = Arc<Mutex<Inbox>>;

/// The user a request is from: `Cookie: user=NAME` or `Authorization: Bearer NAME`.
fn user_of(req: &Request<Incoming>) -> String {
    let h = req.headers();
    if let Some(c) = h.get("cookie").and_then(|v| v.to_str().ok())
        && let Some(name) = c.strip_prefix("user=")
    {
        return name.to_string();
    }
    h.get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("anonymous")
        .to_string()
}

/// `GET /inbox`: `{"user":NAME,"v":VERSION}` and a newline, as `application/json`.
fn inbox_response(inbox: &Shared, req: &Request<Incoming>) -> Response<TestBody> {
    let user = user_of(req);
    let mut s = inbox.lock().unwrap();
    *s.fetches.entry(user.clone()).or_default() += 1;
    let scripted = s.scripted.get_mut(&user).and_then(|list| {
        if list.is_empty() {
            None
        } else {
            Some(list.remove(0))
        }
    });
    if s.forbidden.contains(&user) {
        return text(403, "forbidden");
    }
    if let Some(status) = scripted.filter(|s| *s != 200) {
        return text(status, "scripted failure");
    }
    let v = s.versions.get(&user).copied().unwrap_or(0);
    let mut resp = text(200, format!("{{\"user\":\"{user}\",\"v\":{v}}}\n"));
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    resp
}

/// The app: `GET /inbox` (the polled endpoint) and `POST /send?to=NAME` (a mutation that
/// changes NAME's inbox).
pub async fn app() -> (Upstream, Shared) {
    let inbox: Shared = Shared::default();
    let (a, b) = (inbox.clone(), inbox.clone());
    let upstream = Upstream::builder()
        .handler("/inbox", move |req| {
            let inbox = a.clone();
            async move { inbox_response(&inbox, &req) }
        })
        .handler("/send", move |req| {
            let inbox = b.clone();
            async move {
                let to = req
                    .uri()
                    .query()
                    .and_then(|q| q.strip_prefix("to="))
                    .unwrap_or("")
                    .to_string();
                *inbox.lock().unwrap().versions.entry(to).or_default() += 1;
                text(200, "sent")
            }
        })
        .run()
        .await;
    (upstream, inbox)
}

/// Fetches of `/inbox` by `user` so far.
pub fn fetches(inbox: &Shared, user: &str) -> usize {
    inbox
        .lock()
        .unwrap()
        .fetches
        .get(user)
        .copied()
        .unwrap_or(0)
}

/// The app changes `user`'s inbox (its version goes up by one), telling nobody.
pub fn change(inbox: &Shared, user: &str) {
    *inbox
        .lock()
        .unwrap()
        .versions
        .entry(user.to_string())
        .or_default() += 1;
}

/// The app answers `user` 403 from now on.
pub fn forbid(inbox: &Shared, user: &str) {
    inbox.lock().unwrap().forbidden.insert(user.to_string());
}

/// The app answers `user`'s next fetches with `statuses`, in order (200: the inbox).
pub fn script(inbox: &Shared, user: &str, statuses: &[u16]) {
    inbox
        .lock()
        .unwrap()
        .scripted
        .insert(user.to_string(), statuses.to_vec());
}
