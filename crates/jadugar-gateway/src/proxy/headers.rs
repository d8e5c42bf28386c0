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

/// What one pass over a request's header names found.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Scan {
    /// `Connection` or a fixed hop-by-hop header is present.
    pub(crate) hop_by_hop: bool,
    /// `Upgrade` is present.
    pub(crate) upgrade: bool,
    /// One of the identity headers is present.
    pub(crate) identity: bool,
    /// `Forwarded` (RFC 7239) is present.
    pub(crate) forwarded: bool,
}

/// Looks at every header name once: cheaper than a hashed lookup per
/// header of interest, since a request carries few headers and usually
/// none of these.
pub(crate) fn scan(headers: &HeaderMap, identity: &[HeaderName]) -> Scan {
    let mut found = Scan::default();
    for name in headers.keys() {
        if name == header::CONNECTION || is_hop_by_hop(name) {
            found.hop_by_hop = true;
            found.upgrade |= name == header::UPGRADE;
        } else if name == header::FORWARDED {
            found.forwarded = true;
        } else if !identity.is_empty() && identity.contains(name) {
            found.identity = true;
        }
    }
    found
}

/// Removes hop-by-hop headers (and those named in `Connection`); keeps
/// `Connection: upgrade` and `Upgrade` when `keep_upgrade`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Fast path: one pass over the names; most messages carry none of them.
    if !scan(headers, &[]).hop_by_hop {
        return;
    }
    remove_hop_by_hop_present(headers, keep_upgrade);
}

/// [`remove_hop_by_hop`] once a [`scan`] found some.
pub(crate) fn remove_hop_by_hop_present(headers: &mut HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        // Every `Connection` field counts: a second one may name more.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
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
    // One string match (length first) instead of seven comparisons.
    matches!(
        name.as_str(),
        "te" | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authorization"
            | "keep-alive"
            | "proxy-connection"
    )
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
    fn every_connection_field_is_honoured() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, "keep-alive".parse().unwrap());
        h.append(header::CONNECTION, "x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        remove_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret").is_none());
        assert!(h.get(header::CONNECTION).is_none());
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

    #[test]
    fn scan_finds_hop_by_hop_upgrade_and_identity() {
        let identity = [HeaderName::from_static("x-user-id")];
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "example.com".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        let s = scan(&h, &identity);
        assert!(!s.hop_by_hop && !s.upgrade && !s.identity && !s.forwarded);
        h.insert(header::FORWARDED, "for=6.6.6.6".parse().unwrap());
        assert!(scan(&h, &identity).forwarded);
        h.insert("x-user-id", "mallory".parse().unwrap());
        let s = scan(&h, &identity);
        assert!(!s.hop_by_hop && s.identity);
        h.insert(header::CONNECTION, "close".parse().unwrap());
        assert!(scan(&h, &identity).hop_by_hop);
        let mut ws = HeaderMap::new();
        ws.insert(header::UPGRADE, "websocket".parse().unwrap());
        let s = scan(&ws, &[]);
        assert!(s.hop_by_hop && s.upgrade && !s.identity);
    }
}

/// Header maps kept for reuse on this thread.
///
/// Each proxied request builds two maps, the request's and the upstream
/// response's, each of two allocations (the index and the entries). A map
/// handed back once its message is written is cleared and keeps its
/// storage for a later message on the same thread. Bounded in number and
/// in each map's size, so a burst of large heads is not kept.
pub(crate) mod spare {
    use std::cell::RefCell;

    use http::HeaderMap;

    /// Most maps kept per thread (about two per request in flight).
    const MAX_KEPT: usize = 256;
    /// Largest map kept, in fields it holds without growing.
    const MAX_FIELDS: usize = 32;

    thread_local! {
        static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
    }

    /// An empty map with room for `fields` fields: a kept one if there is.
    pub(crate) fn take(fields: usize) -> HeaderMap {
        match SPARE.try_with(|spare| spare.borrow_mut().pop()) {
            Ok(Some(mut map)) => {
                // Cleared when kept; only grows if it is too small.
                map.reserve(fields);
                map
            }
            _ => HeaderMap::with_capacity(fields),
        }
    }

    /// Keeps `map`'s storage for [`take`]; its fields are dropped now.
    pub(crate) fn give(mut map: HeaderMap) {
        if map.capacity() == 0 || map.capacity() > MAX_FIELDS {
            return;
        }
        map.clear();
        let _ = SPARE.try_with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < MAX_KEPT {
                spare.push(map);
            }
        });
    }

    #[cfg(test)]
    mod tests {
        use http::HeaderValue;

        use super::*;

        #[test]
        fn a_kept_map_comes_back_empty_with_its_storage() {
            let mut map = take(6);
            map.insert("x-a", HeaderValue::from_static("1"));
            map.append("x-a", HeaderValue::from_static("2"));
            let capacity = map.capacity();
            give(map);
            let again = take(2);
            assert!(again.is_empty());
            assert_eq!(again.get("x-a"), None);
            assert_eq!(again.capacity(), capacity);
        }

        #[test]
        fn a_kept_map_too_small_grows() {
            give(HeaderMap::with_capacity(1));
            let map = take(20);
            assert!(map.capacity() >= 20);
        }

        #[test]
        fn large_maps_are_not_kept() {
            while SPARE.with(|s| s.borrow_mut().pop()).is_some() {}
            give(HeaderMap::with_capacity(MAX_FIELDS * 4));
            assert_eq!(SPARE.with(|s| s.borrow().len()), 0);
            for _ in 0..MAX_KEPT + 10 {
                give(HeaderMap::with_capacity(4));
            }
            assert_eq!(SPARE.with(|s| s.borrow().len()), MAX_KEPT);
        }
    }
}
