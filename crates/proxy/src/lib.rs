//! plinth's built-in reverse proxy: routes each request by its Host to the instances of the
//! matching service, swaps routes atomically, and lets removed instances drain.
//!
//! ```text
//!                  ┌─ plain HTTP/1.1 ─► fast path: httparse, raw bytes, in the connection's task ─┐
//! client ─► serve ─┤                                                                              │
//!  (TCP or TLS)    └─ anything else ─► hyper http1 (the rest of the connection, bytes replayed) ─┤
//!                                                                                                 ▼
//!                      RouteTable: host ─► backends (fewest in flight, ties round-robin) ◄── shared
//!                                                    │
//!                                                    ▼
//!        pooled keep-alive connection to the backend (raw TCP, or hyper's client) ─► response back
//! ```
//!
//! Two paths serve a client connection. Every connection starts on the fast path
//! (`fast.rs`), which parses request heads in place and copies bytes between the client and a
//! raw pooled TCP stream to the backend, without hyper's request and response types or a task
//! per backend connection. It takes only unambiguous plain requests: HTTP/1.1, an origin-form
//! target, one `Host`, at most one valid `Content-Length`, no `Transfer-Encoding`, `Upgrade`
//! or `Expect`, CRLF line ends, few enough headers. The first request that is anything else
//! (HTTP/1.0, a WebSocket handshake, a chunked upload, bytes that do not parse) hands the
//! connection, with every byte read so far, to hyper (`server.rs`, `forward.rs`) for the rest
//! of its life; hyper answers what is malformed with its own 400. Both paths share the route
//! choice (`forward::Choice`), the connect, the hop-by-hop and `X-Forwarded-*` rules and the
//! proxy's own answers, and keep the rules below.
//!
//! - [`Proxy::set_routes`] (or [`Proxy::update_routes`]) installs a new [`RouteTable`] at
//!   once; a request reads the table once and never sees half of a change.
//! - A backend that leaves the routes gets no new request: a request counts itself against
//!   its backend and then checks that the backend is still routed, so once `set_routes`
//!   returns, [`Proxy::drained`] sees every request the backend will ever get.
//! - A request counts from the moment its backend is chosen until the response body has
//!   been sent (or the client went away); an upgraded connection (WebSocket) counts until it
//!   closes. [`Proxy::in_flight`] reads the count.
//! - A request that could not be written to its backend (the connect failed or the connection
//!   closed first) goes to another backend of the route, with its body untouched, even for a
//!   POST. A request that was written is never sent again; it gets 502. The one exception, on
//!   the fast path: a request without a body and with an idempotent method (GET, HEAD,
//!   OPTIONS, PUT, DELETE, TRACE) written to a pooled connection that closed before any byte of
//!   a response came is sent again on another connection.
//! - A backend connection goes back to its pool only after a complete response whose framing
//!   allows another (a length, or chunked) and no `Connection: close`; one whose client went
//!   away mid-response is closed.
//! - The proxy's own answers carry `x-plinth-error: <code>` (see [`ProxyError`]).
//! - [`Proxy::serve_tls`] serves the same routes over HTTPS, with certificates a [`LocalCa`]
//!   issues for the routed hosts as clients first ask for them (see [`tls`]).
//!
//! A rollout, with this API: start the new instances and wait for their health checks; add
//! them with `update_routes`; then for each old instance remove it with `update_routes`, await
//! `drained(id, drain_timeout)`, and stop it.

mod backend;
mod body;
mod error;
mod fast;
mod forward;
mod headers;
mod rewind;
mod routes;
mod server;
mod signal;
pub mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioTimer;

use crate::backend::{BackendState, PoolLimits, Upstream};

pub use backend::Drained;
pub use error::{ERROR_HEADER, ProxyError, ServeError};
pub use routes::{Backend, Route, RouteError, RouteTable};
pub use tls::{CA_CERT_FILE, CA_KEY_FILE, CaError, LocalCa};

/// How the proxy behaves; [`Default`] fits most uses.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// How long a TCP connect to a backend may take before the request tries another one.
    pub connect_timeout: Duration,
    /// How long a client may take to send a request's headers. The clock also runs while a
    /// keep-alive connection waits for its next request, so this closes idle client
    /// connections too.
    pub header_read_timeout: Duration,
    /// How long an idle keep-alive connection to a backend is kept. The default, 4 s, is below
    /// the 5 s after which Node.js and uvicorn close idle connections, so the proxy closes
    /// first and never writes a request into a connection the backend is closing.
    pub pool_idle_timeout: Duration,
    /// At most this many idle connections are kept per backend and worker thread.
    pub pool_max_idle_per_backend: usize,
    /// After a failed connect, the backend is chosen only when the route's other backends are
    /// failing too, for this long.
    pub failure_cooldown: Duration,
    /// After the shutdown signal, how long requests in flight and upgraded connections may
    /// take to finish before they are closed.
    pub shutdown_grace: Duration,
    /// How long a client of [`Proxy::serve_tls`] may take to complete its TLS handshake,
    /// including the issuing of a certificate its host has not had yet.
    pub tls_handshake_timeout: Duration,
    /// Threads that serve client connections, each running a single-threaded runtime with
    /// its own pool of backend connections, as nginx's worker processes do. A connection stays
    /// on the worker that took it (the one with the fewest connections), and so do the backend
    /// connections its requests use: no request is passed between threads. The task calling
    /// [`Proxy::serve`] only accepts. 0 serves connections as tasks of the caller's runtime
    /// instead. The default is one per core.
    pub workers: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            header_read_timeout: Duration::from_secs(30),
            pool_idle_timeout: Duration::from_secs(4),
            pool_max_idle_per_backend: 128,
            failure_cooldown: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(10),
            workers: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        }
    }
}

/// The reverse proxy. Cheap to clone: clones share routes, counts and connections.
#[derive(Clone, Debug)]
pub struct Proxy {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: ProxyConfig,
    /// The routes requests use; read once per request, replaced whole.
    active: RwLock<Arc<Active>>,
    /// Every backend the proxy routes to or that still has requests in flight, by id. Its
    /// lock also serializes route changes.
    registry: Mutex<HashMap<String, Arc<BackendState>>>,
    /// The proxy's clock for connect failures.
    epoch: Instant,
    pub(crate) server: hyper::server::conn::http1::Builder,
    pub(crate) client: hyper::client::conn::http1::Builder,
}

/// A route table as requests use it: each route with its backends' live state.
#[derive(Debug, Default)]
pub(crate) struct Active {
    pub(crate) table: RouteTable,
    /// One per route, in the table's order.
    pub(crate) upstreams: Vec<Upstream>,
}

impl Proxy {
    /// A proxy with no routes: every host gets 404 until [`set_routes`](Self::set_routes).
    pub fn new(config: ProxyConfig) -> Self {
        let mut server = hyper::server::conn::http1::Builder::new();
        server.timer(TokioTimer::new()).keep_alive(true).header_read_timeout(config.header_read_timeout);
        let client = hyper::client::conn::http1::Builder::new();
        let inner = Inner {
            config,
            active: RwLock::new(Arc::new(Active::default())),
            registry: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            server,
            client,
        };
        Self { inner: Arc::new(inner) }
    }

    /// Replaces the routes at once. Requests that start after this returns use the new table
    /// only, and a backend missing from it gets no request counted from now on (those already
    /// counted finish; [`drained`](Self::drained) waits for them).
    pub fn set_routes(&self, table: RouteTable) {
        let mut registry = lock(&self.inner.registry);
        self.inner.install(&mut registry, table);
    }

    /// Changes the current routes in place, atomically with respect to every other change:
    /// `change` gets a copy of the current table, and the result is installed only if it
    /// returns `Ok`. Use it rather than [`routes`](Self::routes) then `set_routes`, which
    /// would lose a change made in between.
    pub fn update_routes<T, E>(&self, change: impl FnOnce(&mut RouteTable) -> Result<T, E>) -> Result<T, E> {
        let mut registry = lock(&self.inner.registry);
        let mut table = self.inner.active().table.clone();
        let value = change(&mut table)?;
        self.inner.install(&mut registry, table);
        Ok(value)
    }

    /// A copy of the current routes.
    pub fn routes(&self) -> RouteTable {
        self.inner.active().table.clone()
    }

    /// How many requests (and upgraded connections) are in flight on a backend; 0 for a
    /// backend the proxy does not know.
    pub fn in_flight(&self, backend_id: &str) -> usize {
        lock(&self.inner.registry).get(backend_id).map_or(0, |backend| backend.in_flight())
    }

    /// Resolves as soon as a backend has nothing in flight (at once if it has nothing now or
    /// is unknown), or with [`Drained::TimedOut`] after `timeout`. Call it after the backend
    /// has left the routes: then nothing new can start on it.
    pub fn drained(&self, backend_id: &str, timeout: Duration) -> impl Future<Output = Drained> + Send + 'static {
        let backend = lock(&self.inner.registry).get(backend_id).cloned();
        async move {
            match backend {
                Some(backend) => backend.drained(timeout).await,
                None => Drained::Done,
            }
        }
    }

    /// Serves clients from `listener` until `shutdown` resolves; then stops accepting, lets
    /// requests in flight and upgraded connections finish for up to
    /// [`ProxyConfig::shutdown_grace`], closes what is left and returns.
    ///
    /// Accept errors (a client gone before it was accepted, no file descriptors left) are
    /// logged and accepting goes on; only an unusable listener, or worker threads that could not
    /// start, is an error. The [workers](ProxyConfig::workers) have stopped when this returns;
    /// dropping the future before `shutdown` stops them too, once their requests in flight are
    /// answered.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        server::serve(Arc::clone(&self.inner), listener, None, shutdown).await
    }

    /// [`serve`](Self::serve) over TLS: the same routes, requests and shutdown, with each
    /// routed host's certificate issued by `ca` the first time a client asks for it, and
    /// cached. A client that names no host (SNI) or one the routes do not serve gets an alert;
    /// requests carry `X-Forwarded-Proto: https`.
    pub async fn serve_tls(
        &self,
        listener: tokio::net::TcpListener,
        ca: Arc<LocalCa>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        server::serve(Arc::clone(&self.inner), listener, Some(ca), shutdown).await
    }
}

impl Inner {
    /// The current routes; the lock is held only to clone the `Arc`.
    pub(crate) fn active(&self) -> Arc<Active> {
        Arc::clone(&self.active.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Swaps in a table: backends it names are (again) in service before the swap, and those
    /// it drops are retired after it. Retired backends with nothing in flight are forgotten.
    fn install(&self, registry: &mut HashMap<String, Arc<BackendState>>, table: RouteTable) {
        let limits = PoolLimits {
            idle_timeout: self.config.pool_idle_timeout,
            max_idle: self.config.pool_max_idle_per_backend,
            slots: self.config.workers + 1,
        };
        let mut upstreams = Vec::with_capacity(table.len());
        for route in table.routes() {
            let mut backends = Vec::with_capacity(route.backends().len());
            for backend in route.backends() {
                let state = match registry.get(&backend.id) {
                    Some(state) if state.backend.addr == backend.addr => {
                        state.reinstate();
                        Arc::clone(state)
                    }
                    known => {
                        // An id given a new address starts over; the old one drains on its own.
                        if let Some(old) = known {
                            old.retire();
                        }
                        let state = Arc::new(BackendState::new(backend.clone(), limits));
                        registry.insert(backend.id.clone(), Arc::clone(&state));
                        state
                    }
                };
                backends.push(state);
            }
            upstreams.push(Upstream::new(backends));
        }
        let active = Arc::new(Active { table, upstreams });
        let previous =
            std::mem::replace(&mut *self.active.write().unwrap_or_else(PoisonError::into_inner), Arc::clone(&active));
        drop(previous);
        registry.retain(|id, state| {
            if active.table.contains_backend(id) {
                return true;
            }
            state.retire();
            state.in_flight() > 0
        });
    }

    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX).saturating_add(1)
    }

    pub(crate) fn cooldown_ms(&self) -> u64 {
        u64::try_from(self.config.failure_cooldown.as_millis()).unwrap_or(u64::MAX)
    }

    /// Every backend state, for upkeep outside the request path.
    pub(crate) fn backends(&self) -> Vec<Arc<BackendState>> {
        lock(&self.registry).values().cloned().collect()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(ids: &[(&str, u16)]) -> RouteTable {
        let backends = ids.iter().map(|(id, port)| Backend::new(*id, ([127, 0, 0, 1], *port).into())).collect();
        RouteTable::new().with_route("app.localhost", backends).expect("valid table")
    }

    fn chosen(active: &Active) -> Arc<BackendState> {
        Arc::clone(active.upstreams[0].choose(&[], || 1, 0).expect("a backend"))
    }

    #[tokio::test]
    async fn a_request_on_old_routes_never_reaches_a_removed_backend() {
        let proxy = Proxy::new(ProxyConfig::default());
        proxy.set_routes(table(&[("a", 1)]));
        // A request read the routes just before they changed.
        let stale = proxy.inner.active();
        proxy.set_routes(table(&[("b", 2)]));
        assert_eq!(proxy.drained("a", Duration::ZERO).await, Drained::Done);

        let a = chosen(&stale);
        assert_eq!(a.backend.id, "a");
        assert!(a.try_acquire().is_none(), "a removed backend takes no request");
        assert_eq!(proxy.in_flight("a"), 0);
        assert_eq!(chosen(&proxy.inner.active()).backend.id, "b");

        // With nothing in flight it was forgotten: back in the routes it is a new backend, and
        // the old table's copy stays retired, so that request looks again in the new routes.
        proxy.set_routes(table(&[("a", 1), ("b", 2)]));
        assert!(a.try_acquire().is_none());
        let counted = proxy.inner.backends().into_iter().find(|b| b.backend.id == "a").and_then(|a| a.try_acquire());
        assert!(counted.is_some());
        assert_eq!(proxy.in_flight("a"), 1);
    }

    #[tokio::test]
    async fn a_backend_back_in_the_routes_takes_requests_again() {
        let proxy = Proxy::new(ProxyConfig::default());
        proxy.set_routes(table(&[("a", 1)]));
        let a = chosen(&proxy.inner.active());
        let busy = a.try_acquire();
        proxy.set_routes(table(&[("b", 2)]));
        assert!(a.try_acquire().is_none());
        // Still draining, so still known: coming back puts the same backend in service.
        proxy.set_routes(table(&[("a", 1), ("b", 2)]));
        let again = a.try_acquire();
        assert!(again.is_some());
        assert_eq!(proxy.in_flight("a"), 2);
        drop((busy, again));
        assert_eq!(proxy.drained("a", Duration::ZERO).await, Drained::Done);
    }

    #[tokio::test]
    async fn removed_backends_are_forgotten_once_idle() {
        let proxy = Proxy::new(ProxyConfig::default());
        proxy.set_routes(table(&[("a", 1), ("b", 2)]));
        let a = chosen(&proxy.inner.active());
        let busy = a.try_acquire();
        proxy.set_routes(table(&[("c", 3)]));
        let known = |proxy: &Proxy| {
            let mut ids: Vec<String> = proxy.inner.backends().iter().map(|b| b.backend.id.clone()).collect();
            ids.sort();
            ids
        };
        // `a` still has a request in flight; `b` had none.
        assert_eq!(known(&proxy), ["a", "c"]);
        drop(busy);
        proxy.set_routes(table(&[("c", 3)]));
        assert_eq!(known(&proxy), ["c"]);

        // An id that comes back with another address is a new backend.
        proxy.set_routes(table(&[("c", 4)]));
        assert_eq!(proxy.routes().routes()[0].backends()[0].addr.port(), 4);
        assert_eq!(proxy.inner.backends()[0].backend.addr.port(), 4);
    }
}
