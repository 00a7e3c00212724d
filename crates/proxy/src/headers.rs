//! Which headers cross the proxy: hop-by-hop headers stop here, and the request gains
//! `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host`.

use hyper::header::{
    CONNECTION, Entry, HOST, HeaderMap, HeaderName, HeaderValue, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use hyper::{Request, Uri, Version};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether a request asks to switch protocols (`Upgrade` plus `Connection: upgrade`), as a
/// WebSocket handshake does.
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE) && connection_lists(headers, "upgrade")
}

fn connection_lists(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .any(|value| value.to_str().is_ok_and(|value| value.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))))
}

/// Removes the headers that belong to one connection: those `Connection` names, then
/// `Connection`, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding` and
/// `Upgrade`. For a protocol switch, `Upgrade` stays and `Connection` says `upgrade`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most messages carry none of these: one look at each name costs less than a lookup (a
    // hash and a probe) per hop-by-hop name.
    if headers.keys().any(is_hop_by_hop) {
        remove_hop_by_hop(headers, upgrade);
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    // Standard names compare as a tag; the two others by their bytes.
    name == CONNECTION
        || name == TE
        || name == TRAILER
        || name == TRANSFER_ENCODING
        || name == UPGRADE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    if headers.contains_key(CONNECTION) {
        // Allocates only when `Connection` names a header other than the usual tokens.
        let mut named = Vec::new();
        for value in headers.get_all(CONNECTION) {
            let Ok(value) = value.to_str() else { continue };
            for token in value.split(',').map(str::trim) {
                let usual = ["", "close", "keep-alive", "upgrade"].iter().any(|t| token.eq_ignore_ascii_case(t));
                if !usual && let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    named.push(name);
                }
            }
        }
        for name in named {
            headers.remove(name);
        }
        headers.remove(CONNECTION);
    }
    for name in [KEEP_ALIVE, PROXY_CONNECTION, TE, TRAILER, TRANSFER_ENCODING] {
        headers.remove(name);
    }
    if !upgrade {
        headers.remove(UPGRADE);
    }
}

/// The hop-by-hop header names of [`strip_hop_by_hop`], for the fast path, which sees raw
/// headers rather than a `HeaderMap`.
const HOP_BY_HOP: [&str; 7] =
    ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];

/// What a raw message's `Connection` headers say: the fast path's counterpart of
/// [`strip_hop_by_hop`]'s reading, so both paths stop the same headers.
#[derive(Debug, Default)]
pub(crate) struct ConnectionOptions<'a> {
    pub(crate) close: bool,
    pub(crate) keep_alive: bool,
    pub(crate) upgrade: bool,
    /// Other header names the sender listed: those are hop-by-hop too. Allocated only when a
    /// message names one.
    named: Vec<&'a [u8]>,
}

impl<'a> ConnectionOptions<'a> {
    /// Reads one `Connection` header's value, a comma-separated list of tokens.
    pub(crate) fn add(&mut self, value: &'a [u8]) {
        for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else if !token.is_empty() {
                self.named.push(token);
            }
        }
    }

    /// Whether a header of this name stops at the proxy.
    pub(crate) fn stops(&self, name: &str) -> bool {
        HOP_BY_HOP.iter().any(|hop| name.eq_ignore_ascii_case(hop)) || self.names(name)
    }

    /// Whether the sender listed this name besides the usual tokens.
    pub(crate) fn names(&self, name: &str) -> bool {
        self.named.iter().any(|named| named.eq_ignore_ascii_case(name.as_bytes()))
    }
}

/// Turns a client's request into the one sent to a backend: hop-by-hop headers removed,
/// forwarding headers added (`X-Forwarded-Proto` says `https` when the client came over TLS),
/// HTTP/1.1, an origin-form target. The `Host` header stays as the
/// client sent it (for an absolute-form target it becomes that target's authority, as HTTP
/// requires). Returns that `Host`.
pub(crate) fn prepare_request<B>(
    req: &mut Request<B>,
    client_ip: &HeaderValue,
    tls: bool,
    upgrade: bool,
) -> Option<HeaderValue> {
    if let Some(authority) = req.uri().authority().cloned() {
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        if let Ok(uri) = Uri::try_from(target) {
            *req.uri_mut() = uri;
        }
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            req.headers_mut().insert(HOST, host);
        }
    }
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers, upgrade);
    append_forwarded_for(headers, client_ip);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(if tls { "https" } else { "http" }));
    let host = headers.get(HOST).cloned();
    match &host {
        Some(host) => headers.insert(X_FORWARDED_HOST, host.clone()),
        None => headers.remove(X_FORWARDED_HOST),
    };
    host
}

/// Appends the client's address to `X-Forwarded-For`, joining any values already there into
/// one list.
fn append_forwarded_for(headers: &mut HeaderMap, client_ip: &HeaderValue) {
    match headers.entry(X_FORWARDED_FOR) {
        Entry::Vacant(slot) => {
            slot.insert(client_ip.clone());
        }
        Entry::Occupied(mut slot) => {
            let mut joined = Vec::with_capacity(64);
            for value in slot.iter() {
                joined.extend_from_slice(value.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(client_ip.as_bytes());
            slot.insert(HeaderValue::from_bytes(&joined).unwrap_or_else(|_| client_ip.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    fn names(map: &HeaderMap) -> Vec<String> {
        let mut names: Vec<String> = map.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn hop_by_hop_headers_stop_here() {
        let hop = [
            ("connection", "keep-alive, X-Custom-Hop"),
            ("connection", "close"),
            ("x-custom-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-app", "kept"),
            ("content-length", "3"),
        ];
        let mut plain = headers(&hop);
        strip_hop_by_hop(&mut plain, false);
        assert_eq!(names(&plain), ["content-length", "x-app"]);

        let mut upgrade = headers(&hop);
        strip_hop_by_hop(&mut upgrade, true);
        assert_eq!(names(&upgrade), ["connection", "content-length", "upgrade", "x-app"]);
        assert_eq!(upgrade[CONNECTION], "upgrade");
        assert_eq!(upgrade[UPGRADE], "websocket");
    }

    #[test]
    fn raw_connection_options_stop_what_strip_hop_by_hop_stops() {
        let mut options = ConnectionOptions::default();
        options.add(b"keep-alive, X-Custom-Hop");
        options.add(b" close ,,");
        assert!(options.close && options.keep_alive && !options.upgrade);
        for name in ["Connection", "x-custom-hop", "Keep-Alive", "proxy-connection", "TE", "trailer", "upgrade"] {
            assert!(options.stops(name), "{name}");
        }
        assert!(!options.stops("x-app") && !options.stops("content-length"));
        assert!(options.names("X-CUSTOM-HOP") && !options.names("te"));
    }

    #[test]
    fn upgrades_need_both_headers() {
        for (pairs, expected) in [
            (&[("connection", "Upgrade"), ("upgrade", "websocket")][..], true),
            (&[("connection", "keep-alive, upgrade"), ("upgrade", "websocket")][..], true),
            (&[("upgrade", "websocket")][..], false),
            (&[("connection", "upgrade")][..], false),
            (&[("connection", "upgraded"), ("upgrade", "websocket")][..], false),
        ] {
            assert_eq!(is_upgrade(&headers(pairs)), expected, "{pairs:?}");
        }
    }

    #[test]
    fn forwarding_headers_are_added() {
        let ip = HeaderValue::from_static("127.0.0.1");
        let mut req = Request::new(());
        *req.headers_mut() = headers(&[
            ("host", "App.localhost:8000"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2, 10.0.0.3"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "spoofed"),
        ]);
        prepare_request(&mut req, &ip, false, false);
        let h = req.headers();
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1");
        assert_eq!(h.get_all(X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert_eq!(h[X_FORWARDED_HOST], "App.localhost:8000");
        assert_eq!(h[HOST], "App.localhost:8000");

        let mut fresh = Request::new(());
        fresh.headers_mut().insert(HOST, HeaderValue::from_static("app.localhost"));
        prepare_request(&mut fresh, &ip, true, false);
        assert_eq!(fresh.headers()[X_FORWARDED_FOR], "127.0.0.1");
        assert_eq!(fresh.headers()[X_FORWARDED_PROTO], "https", "a client over TLS overrides what it sent");
    }

    #[test]
    fn absolute_targets_become_origin_form() {
        let ip = HeaderValue::from_static("127.0.0.1");
        let mut req = Request::builder()
            .uri("http://app.localhost:8000/a/b?c=d")
            .header(HOST, "ignored.localhost")
            .version(Version::HTTP_10)
            .body(())
            .expect("request");
        prepare_request(&mut req, &ip, false, false);
        assert_eq!(req.uri(), "/a/b?c=d");
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()[HOST], "app.localhost:8000");
        assert_eq!(req.headers()[X_FORWARDED_HOST], "app.localhost:8000");
    }
}
