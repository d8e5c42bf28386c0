//! Hop-by-hop and forwarding headers.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `Keep-Alive`.
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// `Proxy-Connection`.
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether the request asks for a protocol upgrade (WebSocket).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers (and those named in `Connection`); keeps
/// `Connection: upgrade` and `Upgrade` when `keep_upgrade`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Fast path: one pass over the names; most requests carry none of them.
    if !headers.contains_key(header::CONNECTION) && !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if let Some(connection) = headers.get(header::CONNECTION) {
        let named: Vec<HeaderName> = connection
            .to_str()
            .unwrap_or("")
            .split(',')
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .filter(|n| !(keep_upgrade && n == header::UPGRADE))
            .collect();
        for name in named {
            headers.remove(name);
        }
        if keep_upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        } else {
            headers.remove(header::CONNECTION);
        }
    }
    if headers.contains_key(&KEEP_ALIVE) {
        headers.remove(KEEP_ALIVE);
    }
    if headers.contains_key(&PROXY_CONNECTION) {
        headers.remove(PROXY_CONNECTION);
    }
    if headers.contains_key(header::TE) {
        let trailers = headers
            .get(header::TE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
        headers.remove(header::TE);
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
    if headers.contains_key(header::TRAILER) {
        headers.remove(header::TRAILER);
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::TRANSFER_ENCODING);
    }
    if !keep_upgrade && headers.contains_key(header::UPGRADE) {
        headers.remove(header::UPGRADE);
    }
    if headers.contains_key(header::PROXY_AUTHORIZATION) {
        headers.remove(header::PROXY_AUTHORIZATION);
    }
}

/// Whether `name` is a fixed hop-by-hop header (those that
/// [`remove_hop_by_hop`] drops even without `Connection` naming them).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::PROXY_AUTHORIZATION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TE, "trailers, gzip".parse().unwrap());
        h.insert(header::UPGRADE, "h2c".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        remove_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret").is_none() && h.get("keep-alive").is_none());
        assert!(h.get(header::CONNECTION).is_none() && h.get(header::UPGRADE).is_none());
        assert_eq!(h[header::TE], "trailers");
        assert_eq!(h["x-kept"], "1");
        let mut ws = HeaderMap::new();
        ws.insert(header::CONNECTION, "Upgrade".parse().unwrap());
        ws.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert!(is_upgrade(&ws));
        remove_hop_by_hop(&mut ws, true);
        assert_eq!(ws[header::UPGRADE], "websocket");
        assert_eq!(ws[header::CONNECTION], "upgrade");
    }

    #[test]
    fn hop_by_hop_without_connection_header() {
        for name in [
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
        ] {
            let mut h = HeaderMap::new();
            h.insert("x-kept", "1".parse().unwrap());
            h.insert(HeaderName::from_static(name), "x".parse().unwrap());
            remove_hop_by_hop(&mut h, false);
            assert!(h.get(name).is_none(), "{name} kept");
            assert_eq!(h["x-kept"], "1");
        }
        let mut plain = HeaderMap::new();
        plain.insert(header::HOST, "example.com".parse().unwrap());
        plain.insert(header::ACCEPT, "*/*".parse().unwrap());
        remove_hop_by_hop(&mut plain, false);
        assert_eq!(plain.len(), 2);
    }
}
