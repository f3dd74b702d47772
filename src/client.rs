//! `/_unpoll/client.js`, `/_unpoll/client.mjs`, `/_unpoll/client.d.ts`: the browser client,
//! served from the binary on the main listener before any rule (`[proxy] client = false`
//! turns it off; then these paths are proxied like any other).
//!
//! One source, `client/client.js` (a classic script defining `window.unpoll`); the ES module
//! is that script followed by four lines of exports, so the two cannot drift apart.

use std::sync::LazyLock;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};

use crate::body::{Body, empty, full};
use crate::cache::entry::{body_etag, etag_matches};

/// Where the client is served.
pub use crate::proxy::config::CLIENT_PREFIX as PREFIX;

/// The classic script.
const SCRIPT: &str = include_str!("../client/client.js");

/// The ES module: the script (which sets `globalThis.unpoll`) and its exports.
const MODULE: &str = concat!(
    include_str!("../client/client.js"),
    "\nconst unpoll = globalThis.unpoll;\n",
    "export default unpoll;\n",
    "export const { watch, subscribe, status } = unpoll;\n",
);

/// TypeScript declarations of the API.
const TYPES: &str = include_str!("../client/client.d.ts");

/// Cached by browsers and shared caches for an hour; the ETag revalidates after that.
const CACHE_CONTROL: HeaderValue = HeaderValue::from_static("public, max-age=3600");

/// One served file: its bytes and their ETag, computed once.
struct Asset {
    bytes: Bytes,
    etag: HeaderValue,
    content_type: HeaderValue,
}

impl Asset {
    fn new(text: &'static str, content_type: &'static str) -> Asset {
        let bytes = Bytes::from_static(text.as_bytes());
        Asset {
            etag: body_etag(&bytes),
            bytes,
            content_type: HeaderValue::from_static(content_type),
        }
    }
}

/// The three files, hashed on first use.
static ASSETS: LazyLock<[(&str, Asset); 3]> = LazyLock::new(|| {
    [
        (
            "client.js",
            Asset::new(SCRIPT, "text/javascript; charset=utf-8"),
        ),
        (
            "client.mjs",
            Asset::new(MODULE, "text/javascript; charset=utf-8"),
        ),
        (
            "client.d.ts",
            Asset::new(TYPES, "application/typescript; charset=utf-8"),
        ),
    ]
});

/// The response for a GET or HEAD of one of the client's files (200, or 304 when
/// `If-None-Match` names its ETag); `None` for any other request.
pub fn serve(method: &Method, path: &str, headers: &HeaderMap) -> Option<Response<Body>> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    let name = path.strip_prefix(PREFIX)?;
    let (_, asset) = ASSETS.iter().find(|(n, _)| *n == name)?;
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|inm| etag_matches(inm, &asset.etag));
    let builder = Response::builder()
        .header(header::ETAG, asset.etag.clone())
        .header(header::CACHE_CONTROL, CACHE_CONTROL);
    let resp = if not_modified {
        builder.status(StatusCode::NOT_MODIFIED).body(empty())
    } else {
        // hyper sends no body for HEAD but keeps this length.
        builder
            .header(header::CONTENT_TYPE, asset.content_type.clone())
            .header(header::CONTENT_LENGTH, asset.bytes.len())
            .body(full(asset.bytes.clone()))
    };
    // Cannot fail: static header names and values already validated.
    resp.ok()
}
