//! The route table: which backends serve which host. Plain data and pure matching, no I/O.
//!
//! Hosts are compared lowercased, without a port and without a trailing dot, both in the table
//! and in requests. A pattern is either an exact host (`app.localhost`) or one wildcard form,
//! `*.suffix`, which matches any host ending in `.suffix` with at least one label before it:
//! `*.review.localhost` matches `a.review.localhost` and `a.b.review.localhost`, never
//! `review.localhost` itself. An exact host beats every wildcard, and a longer wildcard suffix
//! beats a shorter one.

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::SocketAddr;

use plinth_core::ErrorCode;

/// One instance that can serve requests.
///
/// The id names the instance for in-flight accounting and draining. An id always means one
/// address: a table refuses one id with two addresses, and if a later table gives a known id
/// another address, the proxy counts it as a new backend from then on (requests still on the
/// old address finish, but [`Proxy::drained`](crate::Proxy::drained) no longer sees them).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    pub id: String,
    pub addr: SocketAddr,
}

impl Backend {
    pub fn new(id: impl Into<String>, addr: SocketAddr) -> Self {
        Self { id: id.into(), addr }
    }
}

/// The backends of one host pattern, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    host: String,
    backends: Vec<Backend>,
}

impl Route {
    /// The pattern, normalized: `app.localhost` or `*.review.localhost`.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }
}

/// Hosts (and `*.suffix` wildcards) and the backends that serve each.
///
/// Build one, then hand it to [`Proxy::set_routes`](crate::Proxy::set_routes), or change the
/// current one in place with [`Proxy::update_routes`](crate::Proxy::update_routes).
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// Exact host -> index into `routes`.
    exact: HashMap<Box<str>, usize>,
    /// Wildcard suffix (the pattern without `*.`) -> index into `routes`.
    wildcard: HashMap<Box<str>, usize>,
    /// Every backend id in the table and its address.
    ids: HashMap<String, SocketAddr>,
}

/// Why a route could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("`{host}` is not a host the proxy can route: {reason}")]
    InvalidHost { host: String, reason: &'static str },
    #[error("host `{host}` is routed twice")]
    DuplicateHost { host: String },
    #[error("host `{host}` has no route")]
    UnknownHost { host: String },
    #[error("backend `{id}` is listed twice for host `{host}`")]
    DuplicateBackend { host: String, id: String },
    #[error("backend `{id}` is given two addresses, {first} and {second}")]
    ConflictingBackend { id: String, first: SocketAddr, second: SocketAddr },
}

impl ErrorCode for RouteError {
    fn code(&self) -> &'static str {
        match self {
            RouteError::InvalidHost { .. } => "proxy.invalid_route_host",
            RouteError::DuplicateHost { .. } => "proxy.duplicate_route",
            RouteError::UnknownHost { .. } => "proxy.unknown_route",
            RouteError::DuplicateBackend { .. } => "proxy.duplicate_backend",
            RouteError::ConflictingBackend { .. } => "proxy.conflicting_backend",
        }
    }

    fn http_status(&self) -> u16 {
        match self {
            RouteError::UnknownHost { .. } => 404,
            RouteError::DuplicateHost { .. } | RouteError::ConflictingBackend { .. } => 409,
            RouteError::InvalidHost { .. } | RouteError::DuplicateBackend { .. } => 422,
        }
    }

    fn help(&self) -> String {
        match self {
            RouteError::InvalidHost { .. } => {
                "Use a host name such as `app.localhost`, or `*.review.localhost` for every host under a suffix.".into()
            }
            RouteError::DuplicateHost { .. } => "Give each host to one service only in plinth.toml.".into(),
            RouteError::UnknownHost { .. } => "Add the host's route before changing its backends.".into(),
            RouteError::DuplicateBackend { .. } | RouteError::ConflictingBackend { .. } => {
                "Give every instance its own id; an id always names one address.".into()
            }
        }
    }
}

impl RouteTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a route for a host pattern. The backends may be empty: the host is then known but
    /// answered with 503 until instances are added.
    pub fn insert(&mut self, host: &str, backends: Vec<Backend>) -> Result<(), RouteError> {
        let pattern = parse_pattern(host)?;
        if self.index_of_pattern(&pattern).is_some() {
            return Err(RouteError::DuplicateHost { host: pattern });
        }
        check_backends(&pattern, &backends, &mut self.ids.clone())?;
        self.routes.push(Route { host: pattern, backends });
        self.reindex();
        Ok(())
    }

    /// [`insert`](Self::insert) for building a table in one expression.
    pub fn with_route(mut self, host: &str, backends: Vec<Backend>) -> Result<Self, RouteError> {
        self.insert(host, backends)?;
        Ok(self)
    }

    /// Removes a host pattern's route and returns it.
    pub fn remove(&mut self, host: &str) -> Option<Route> {
        let pattern = parse_pattern(host).ok()?;
        let index = self.index_of_pattern(&pattern)?;
        let route = self.routes.remove(index);
        self.reindex();
        Some(route)
    }

    /// Adds one backend to the end of an existing route.
    pub fn add_backend(&mut self, host: &str, backend: Backend) -> Result<(), RouteError> {
        let pattern = parse_pattern(host)?;
        let index = self.index_of_pattern(&pattern).ok_or(RouteError::UnknownHost { host: pattern.clone() })?;
        let mut backends = self.routes[index].backends.clone();
        backends.push(backend);
        check_backends(&pattern, &backends, &mut self.ids.clone())?;
        self.routes[index].backends = backends;
        self.reindex();
        Ok(())
    }

    /// Removes the backend with this id from every route and returns how many routes had it.
    pub fn remove_backend(&mut self, id: &str) -> usize {
        let mut removed = 0;
        for route in &mut self.routes {
            let before = route.backends.len();
            route.backends.retain(|b| b.id != id);
            removed += before - route.backends.len();
        }
        if removed > 0 {
            self.reindex();
        }
        removed
    }

    /// The route that serves a host as a request names it (any case, with or without a port).
    pub fn find(&self, host: &str) -> Option<&Route> {
        self.position(&normalize_host(host)).map(|i| &self.routes[i])
    }

    /// Every route, in the order they were added.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Whether a backend with this id serves any route.
    pub fn contains_backend(&self, id: &str) -> bool {
        self.ids.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The index of the route serving an already normalized host: exact first, then the
    /// longest wildcard suffix.
    pub(crate) fn position(&self, host: &str) -> Option<usize> {
        if let Some(&index) = self.exact.get(host) {
            return Some(index);
        }
        if self.wildcard.is_empty() {
            return None;
        }
        let mut rest = host;
        while let Some(dot) = rest.find('.') {
            if dot == 0 {
                return None;
            }
            rest = &rest[dot + 1..];
            if let Some(&index) = self.wildcard.get(rest) {
                return Some(index);
            }
        }
        None
    }

    fn index_of_pattern(&self, pattern: &str) -> Option<usize> {
        match pattern.strip_prefix("*.") {
            Some(suffix) => self.wildcard.get(suffix).copied(),
            None => self.exact.get(pattern).copied(),
        }
    }

    fn reindex(&mut self) {
        self.exact.clear();
        self.wildcard.clear();
        self.ids.clear();
        for (index, route) in self.routes.iter().enumerate() {
            match route.host.strip_prefix("*.") {
                Some(suffix) => self.wildcard.insert(suffix.into(), index),
                None => self.exact.insert(route.host.as_str().into(), index),
            };
            for backend in &route.backends {
                self.ids.insert(backend.id.clone(), backend.addr);
            }
        }
    }
}

/// Checks one route's backends: no id twice, and every id with the address it has elsewhere
/// (`ids`, which gains the route's backends).
fn check_backends(host: &str, backends: &[Backend], ids: &mut HashMap<String, SocketAddr>) -> Result<(), RouteError> {
    for (i, backend) in backends.iter().enumerate() {
        if backends[..i].iter().any(|b| b.id == backend.id) {
            return Err(RouteError::DuplicateBackend { host: host.to_owned(), id: backend.id.clone() });
        }
        match ids.entry(backend.id.clone()) {
            Entry::Occupied(known) if *known.get() != backend.addr => {
                return Err(RouteError::ConflictingBackend {
                    id: backend.id.clone(),
                    first: *known.get(),
                    second: backend.addr,
                });
            }
            Entry::Occupied(_) => {}
            Entry::Vacant(slot) => {
                slot.insert(backend.addr);
            }
        }
    }
    Ok(())
}

/// A host pattern as the table keeps it: normalized, and checked.
fn parse_pattern(raw: &str) -> Result<String, RouteError> {
    let invalid = |reason| RouteError::InvalidHost { host: raw.to_owned(), reason };
    let pattern = normalize_host(raw.trim());
    let name = pattern.strip_prefix("*.").unwrap_or(&pattern);
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.contains('*') {
        return Err(invalid("`*` may only stand alone as the first label, as in `*.example.com`"));
    }
    if name.starts_with('[') {
        if pattern.starts_with('*') || !name.ends_with(']') {
            return Err(invalid("an IPv6 address must be written `[::1]`"));
        }
        return Ok(pattern.into_owned());
    }
    if name.starts_with('.') || name.contains("..") {
        return Err(invalid("it has an empty label"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')) {
        return Err(invalid("only letters, digits, `-`, `_` and `.` may appear in a host"));
    }
    Ok(pattern.into_owned())
}

/// A host as the table compares it: lowercased, without a port and a trailing dot. Borrows when
/// nothing changes, which is the common case.
pub(crate) fn normalize_host(raw: &str) -> Cow<'_, str> {
    let host = strip_port(raw);
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

fn strip_port(raw: &str) -> &str {
    if raw.starts_with('[') {
        return match raw.find(']') {
            Some(end) => &raw[..=end],
            None => raw,
        };
    }
    match raw.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(id: &str, port: u16) -> Backend {
        Backend::new(id, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    fn table() -> RouteTable {
        RouteTable::new()
            .with_route("App.Localhost", vec![backend("app", 1)])
            .and_then(|t| t.with_route("*.review.localhost", vec![backend("review", 2)]))
            .and_then(|t| t.with_route("exact.review.localhost", vec![backend("exact", 3)]))
            .and_then(|t| t.with_route("*.deep.review.localhost", vec![backend("deep", 4)]))
            .and_then(|t| t.with_route("empty.localhost", vec![]))
            .and_then(|t| t.with_route("[::1]:8000", vec![backend("v6", 5)]))
            .expect("the table is valid")
    }

    #[test]
    fn hosts_are_normalized() {
        for (raw, expected) in [
            ("app.localhost", "app.localhost"),
            ("APP.localhost", "app.localhost"),
            ("app.localhost:8000", "app.localhost"),
            ("app.localhost:", "app.localhost"),
            ("app.localhost.", "app.localhost"),
            ("app.localhost.:80", "app.localhost"),
            ("127.0.0.1:8000", "127.0.0.1"),
            ("[::1]:8000", "[::1]"),
            ("[::1]", "[::1]"),
            ("app.localhost:http", "app.localhost:http"),
        ] {
            assert_eq!(normalize_host(raw), expected, "{raw}");
        }
        assert!(matches!(normalize_host("app.localhost:80"), Cow::Borrowed(_)));
    }

    #[test]
    fn requests_find_their_route() {
        let table = table();
        for (host, expected) in [
            ("app.localhost", Some("app.localhost")),
            ("APP.LOCALHOST:8000", Some("app.localhost")),
            ("a.review.localhost", Some("*.review.localhost")),
            ("A.Review.Localhost:1234", Some("*.review.localhost")),
            ("a.b.review.localhost", Some("*.review.localhost")),
            ("exact.review.localhost", Some("exact.review.localhost")),
            ("x.exact.review.localhost", Some("*.review.localhost")),
            ("x.deep.review.localhost", Some("*.deep.review.localhost")),
            ("deep.review.localhost", Some("*.review.localhost")),
            ("review.localhost", None),
            (".review.localhost", None),
            ("localhost", None),
            ("other.localhost", None),
            ("app.localhost.evil", None),
            ("empty.localhost", Some("empty.localhost")),
            ("[::1]:9000", Some("[::1]")),
            ("", None),
        ] {
            assert_eq!(table.find(host).map(Route::host), expected, "{host}");
        }
    }

    #[test]
    fn bad_patterns_are_refused() {
        for host in ["", "  ", "*", "*.", "a.*.b", "**.b", "a..b", ".a", "a b", "a/b", "*.[::1]", "[::1"] {
            let err = RouteTable::new().with_route(host, vec![]).expect_err(host);
            assert_eq!(err.code(), "proxy.invalid_route_host", "{host}");
        }
    }

    #[test]
    fn conflicts_are_refused() {
        let mut table = table();
        let dup = table.insert("APP.localhost:80", vec![]).expect_err("duplicate");
        assert_eq!(dup, RouteError::DuplicateHost { host: "app.localhost".into() });
        let dup = table.insert("*.Review.localhost", vec![]).expect_err("duplicate wildcard");
        assert_eq!(dup.code(), "proxy.duplicate_route");
        let twice = table.insert("two.localhost", vec![backend("x", 9), backend("x", 9)]).expect_err("twice");
        assert_eq!(twice.code(), "proxy.duplicate_backend");
        let moved = table.insert("moved.localhost", vec![backend("app", 9)]).expect_err("conflict");
        assert_eq!(moved.code(), "proxy.conflicting_backend");
        // The same instance may serve several hosts.
        table.insert("alias.localhost", vec![backend("app", 1)]).expect("same id, same address");
        assert!(table.find("two.localhost").is_none() && table.find("moved.localhost").is_none());
    }

    #[test]
    fn backends_come_and_go() {
        let mut table = table();
        table.add_backend("app.localhost", backend("app-2", 6)).expect("added");
        let ids: Vec<&str> =
            table.find("app.localhost").map_or(vec![], |r| r.backends().iter().map(|b| b.id.as_str()).collect());
        assert_eq!(ids, ["app", "app-2"]);
        assert_eq!(
            table.add_backend("app.localhost", backend("app-2", 6)).map_err(|e| e.code()),
            Err("proxy.duplicate_backend")
        );
        assert_eq!(
            table.add_backend("app.localhost", backend("review", 7)).map_err(|e| e.code()),
            Err("proxy.conflicting_backend")
        );
        assert_eq!(
            table.add_backend("nope.localhost", backend("n", 8)).map_err(|e| e.code()),
            Err("proxy.unknown_route")
        );

        assert_eq!(table.remove_backend("app"), 1);
        assert!(!table.contains_backend("app") && table.contains_backend("app-2"));
        assert_eq!(table.remove_backend("app"), 0);

        let removed = table.remove("*.review.localhost").expect("removed");
        assert_eq!(removed.backends(), [backend("review", 2)]);
        assert_eq!(table.find("a.review.localhost").map(Route::host), None);
        assert_eq!(table.find("exact.review.localhost").map(Route::host), Some("exact.review.localhost"));
        assert_eq!(table.find("x.deep.review.localhost").map(Route::host), Some("*.deep.review.localhost"));
    }
}
