//! Header rewriting between client and upstream (RFC 9110 §7.6).

use std::io::Write as _;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that only concern one connection (RFC 9110 §7.6.1 plus the legacy ones every
/// proxy strips).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Does this request ask for a protocol upgrade (`Connection: upgrade` + `Upgrade`)?
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Remove hop-by-hop headers, including those the `Connection` header names. When
/// `keep_upgrade` is set (an upgrade handshake), `Upgrade` and `Connection: upgrade` stay.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Headers named by Connection are hop-by-hop too. The usual tokens (keep-alive, close,
    // upgrade) are removed below anyway, so only other names are collected: the Vec stays
    // empty, and unallocated, on almost every request.
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',').map(str::trim) {
            let usual = ["keep-alive", "close", "upgrade"]
                .iter()
                .any(|t| token.eq_ignore_ascii_case(t));
            if !usual && let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                named.push(name);
            }
        }
    }
    let upgrade = if keep_upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    if let Some(upgrade) = upgrade {
        headers.insert(header::UPGRADE, upgrade);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Make the `Host` header say what RFC 9112 §3.2.2 says the request is for: the
/// authority of an absolute-form target (`GET http://a.example/x`, and HTTP/2's
/// `:authority`) replaces any `Host` the client sent. A request with more than one `Host`
/// line is refused (`Err`, answered 400): which one the app reads is anyone's guess.
pub fn normalize_host(headers: &mut HeaderMap, uri: &http::Uri) -> Result<(), &'static str> {
    let mut hosts = headers.get_all(header::HOST).iter();
    if hosts.next().is_some() && hosts.next().is_some() {
        return Err("more than one Host header");
    }
    if let Some(authority) = uri.authority() {
        let value = HeaderValue::from_str(authority.as_str())
            .map_err(|_| "invalid authority in the request target")?;
        headers.insert(header::HOST, value);
    }
    Ok(())
}

/// Append the client address to `X-Forwarded-For` (one header, comma-separated) and set
/// `X-Forwarded-Proto` (`https` when the client came over TLS) and, when the request named
/// a host, `X-Forwarded-Host`.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    client: IpAddr,
    host: Option<&HeaderValue>,
    tls: bool,
) {
    // Format the address on the stack: this runs on every proxied request.
    let mut buf = [0u8; 64];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    // An IPv6 address is at most 45 bytes, so this cannot run out of room.
    let _ = write!(cursor, "{client}");
    let len = cursor.position() as usize;
    let client = &buf[..len];

    let mut existing = headers.get_all(&X_FORWARDED_FOR).iter();
    let value = match (existing.next(), existing.next()) {
        (None, _) => HeaderValue::from_bytes(client),
        (Some(one), None) => {
            let mut joined = Vec::with_capacity(one.len() + 2 + client.len());
            joined.extend_from_slice(one.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(client);
            HeaderValue::from_bytes(&joined)
        }
        (Some(_), Some(_)) => {
            // Several X-Forwarded-For lines: fold them into one, in order.
            let mut joined = Vec::new();
            for v in headers.get_all(&X_FORWARDED_FOR) {
                joined.extend_from_slice(v.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(client);
            HeaderValue::from_bytes(&joined)
        }
    };
    if let Ok(value) = value {
        headers.insert(&X_FORWARDED_FOR, value);
    }
    let proto = if tls { "https" } else { "http" };
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(host) = host {
        headers.insert(&X_FORWARDED_HOST, host.clone());
    }
}

/// A copy of `headers` that owns its values, all in one allocation of their total size.
///
/// hyper parses a message's header values (and its target) as slices of the connection's
/// read buffer, and that buffer is replaced, not reused, while a slice of it lives: a map
/// kept past its exchange (a cache entry, a watcher's request) would hold 8 KiB or more
/// of buffer for a few hundred bytes of headers. Names need no copy: hyper builds a
/// non-standard name from its own bytes.
pub fn detached(headers: &HeaderMap) -> HeaderMap {
    let total = headers.values().map(HeaderValue::len).sum();
    let mut buf = bytes::BytesMut::with_capacity(total);
    for value in headers.values() {
        buf.extend_from_slice(value.as_bytes());
    }
    let mut buf = buf.freeze();
    let mut copy = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let own = buf.split_to(value.len());
        // The bytes of a valid value are a valid value.
        let Ok(mut own) = HeaderValue::from_maybe_shared(own) else {
            continue;
        };
        own.set_sensitive(value.is_sensitive());
        copy.append(name.clone(), own);
    }
    copy
}

/// A copy of `uri` that owns its bytes (see [`detached`]).
pub fn detached_uri(uri: &http::Uri) -> http::Uri {
    http::Uri::from_maybe_shared(bytes::Bytes::from(uri.to_string()))
        .unwrap_or_else(|_| uri.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Header values parsed by hyper share its read buffer; a detached copy shares none
    /// of it, keeps every line in order with its sensitivity, and the buffer can go.
    #[test]
    fn detached_headers_own_their_bytes() {
        let buffer = bytes::Bytes::from_static(b"u=1; session=abcdef/app.example/text/plain");
        let value =
            |a: usize, b: usize| HeaderValue::from_maybe_shared(buffer.slice(a..b)).unwrap();
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, value(0, 4));
        h.append(header::COOKIE, value(5, 19));
        h.append(header::HOST, value(20, 31));
        h.append("x-custom", value(32, 42));
        let mut secret = HeaderValue::from_static("Bearer t");
        secret.set_sensitive(true);
        h.append(header::AUTHORIZATION, secret);
        h.append("x-empty", HeaderValue::from_static(""));

        let copy = detached(&h);
        assert_eq!(copy, h);
        let lines = |m: &HeaderMap| {
            m.iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(lines(&copy), lines(&h));
        assert!(copy[header::AUTHORIZATION].is_sensitive());
        assert!(!copy[header::HOST].is_sensitive());
        let range = buffer.as_ptr_range();
        for v in copy.values() {
            assert!(
                !range.contains(&v.as_bytes().as_ptr()),
                "{v:?} still points into the buffer"
            );
        }

        let target = bytes::Bytes::from_static(b"/inbox?a=1");
        let uri = http::Uri::from_maybe_shared(target.clone()).unwrap();
        let own = detached_uri(&uri);
        assert_eq!(own, uri);
        assert!(!target.as_ptr_range().contains(&own.path().as_ptr()));
    }

    #[test]
    fn strips_hop_by_hop_and_named() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn keeps_upgrade_for_handshakes() {
        let mut h = HeaderMap::new();
        h.insert("connection", "Upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn absolute_form_authority_replaces_host_and_two_hosts_are_refused() {
        let mut h = HeaderMap::new();
        h.insert("host", "good.example".parse().unwrap());
        let uri: http::Uri = "http://evil.example:8080/x".parse().unwrap();
        normalize_host(&mut h, &uri).unwrap();
        assert_eq!(h["host"], "evil.example:8080");
        normalize_host(&mut h, &"/x".parse().unwrap()).unwrap();
        assert_eq!(h["host"], "evil.example:8080");
        h.append("host", "other.example".parse().unwrap());
        assert!(normalize_host(&mut h, &"/x".parse().unwrap()).is_err());
    }

    #[test]
    fn appends_forwarded_for() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "1.1.1.1".parse().unwrap());
        h.append("x-forwarded-for", "2.2.2.2".parse().unwrap());
        let host = HeaderValue::from_static("app.example");
        add_forwarded(&mut h, "10.0.0.1".parse().unwrap(), Some(&host), false);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "app.example");
    }
}
