//! The hyper path's forwarding of one request: find the host's route, choose a backend, send
//! the request over a pooled or new connection, retry what was never sent, and stream the
//! answer back; or, for a protocol switch, join the two upgraded connections. The route choice
//! and the connect are shared with the fast path (`fast.rs`).

use std::borrow::Cow;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::backend::{BackendState, InFlight, Sender};
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::headers;
use crate::routes::normalize_host;
use crate::{Active, Inner};

/// How often a request looks at newer routes after its choice left them, before giving up.
const MAX_ROUTE_RELOADS: usize = 16;

/// What one client connection shares with its requests.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) inner: Arc<Inner>,
    /// The client's IP, ready for `X-Forwarded-For`.
    pub(crate) client_ip: HeaderValue,
    /// Whether the client connected over TLS (`X-Forwarded-Proto: https`).
    pub(crate) tls: bool,
    /// Upgraded connections are tracked and closed with the server.
    pub(crate) tracker: TaskTracker,
    pub(crate) abort: CancellationToken,
}

/// Answers one request. Never fails: problems become the proxy's own error answers.
pub(crate) async fn handle(conn: &Conn, mut req: Request<Incoming>) -> Response<ProxyBody> {
    if req.method() == Method::CONNECT {
        return ProxyError::ConnectNotSupported.into_response();
    }
    let inner = &conn.inner;
    let upgrade = headers::is_upgrade(req.headers());
    // For an absolute-form target, `Host` becomes the target's authority here.
    let host = headers::prepare_request(&mut req, &conn.client_ip, conn.tls, upgrade);
    let host_text = host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or_default();
    let mut choice = match Choice::new(inner, host_text) {
        Ok(choice) => choice,
        Err(error) => return error.into_response(),
    };
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    loop {
        let in_flight = match choice.next() {
            Ok(in_flight) => in_flight,
            Err(error) => return error.into_response(),
        };
        match send(inner, in_flight.backend(), req).await {
            Ok((response, sender)) => {
                return respond(conn, in_flight, sender, response, client_upgrade, &choice);
            }
            Err(SendError::Unsent(request, error)) => {
                choice.connect_failed(in_flight, &error);
                req = *request;
            }
            Err(SendError::Sent(error)) => {
                debug!(backend = %in_flight.backend().backend.id, %error, "The backend failed after the request was sent.");
                return choice.backend_failed().into_response();
            }
        }
    }
}

/// The choice of a backend for one request, shared by both serving paths: the host's route,
/// then backends in the route's order of preference, skipping those whose connect failed for
/// this request, and looking again in newer routes when the chosen one has left them.
#[derive(Debug)]
pub(crate) struct Choice<'a> {
    inner: &'a Inner,
    /// The host as the routes know it (lowercased, no port), for lookups and answers.
    host: Cow<'a, str>,
    active: Arc<Active>,
    index: usize,
    /// Backends whose connect failed for this request; allocated only on a failure.
    tried: Vec<Arc<BackendState>>,
    reloads: usize,
}

impl<'a> Choice<'a> {
    /// Finds the route of `host` (as the request names it: any case, maybe a port) in the
    /// current routes.
    pub(crate) fn new(inner: &'a Inner, host: &'a str) -> Result<Self, ProxyError> {
        let host = normalize_host(host);
        if host.is_empty() {
            return Err(ProxyError::InvalidHost);
        }
        let active = inner.active();
        let index = route_index(&active, &host)?;
        Ok(Self { inner, host, active, index, tried: Vec::new(), reloads: 0 })
    }

    /// The next backend to try, counted in flight; or the answer when none is left.
    pub(crate) fn next(&mut self) -> Result<InFlight, ProxyError> {
        loop {
            let upstream = &self.active.upstreams[self.index];
            if upstream.is_empty() {
                return Err(ProxyError::NoHealthyInstance { host: self.host.clone().into_owned() });
            }
            let inner = self.inner;
            let Some(backend) = upstream.choose(&self.tried, || inner.now_ms(), inner.cooldown_ms()) else {
                return Err(ProxyError::Unreachable { host: self.host.clone().into_owned() });
            };
            if let Some(in_flight) = backend.try_acquire() {
                return Ok(in_flight);
            }
            // The routes changed since this request read them; look again in the new ones.
            self.reloads += 1;
            if self.reloads > MAX_ROUTE_RELOADS {
                return Err(ProxyError::NoHealthyInstance { host: self.host.clone().into_owned() });
            }
            self.active = inner.active();
            self.index = route_index(&self.active, &self.host)?;
        }
    }

    /// Notes that connecting to the backend of `in_flight` failed, releases its count, and
    /// leaves it out of this request's next choices.
    pub(crate) fn connect_failed(&mut self, in_flight: InFlight, error: &dyn std::fmt::Display) {
        let backend = Arc::clone(in_flight.backend());
        drop(in_flight);
        if backend.connect_failed(self.inner.now_ms()) {
            warn!(backend = %backend.backend.id, addr = %backend.backend.addr, %error,
                "Connecting to the backend failed; trying the others first for a while.");
        } else {
            debug!(backend = %backend.backend.id, %error, "Connecting to the backend failed again.");
        }
        self.tried.push(backend);
    }

    /// The answer when the backend failed after the request was (partly) sent.
    pub(crate) fn backend_failed(&self) -> ProxyError {
        ProxyError::BackendFailed { host: self.host.clone().into_owned() }
    }
}

/// The index of the route serving an already normalized host.
fn route_index(active: &Active, host: &str) -> Result<usize, ProxyError> {
    active.table.position(host).ok_or_else(|| ProxyError::UnknownHost { host: host.to_owned() })
}

enum SendError {
    /// Nothing was written to the backend: the request comes back for another one. Boxed,
    /// as this is the rare path.
    Unsent(Box<Request<Incoming>>, ConnectError),
    /// The request was (at least partly) written, so it is not sent again.
    Sent(hyper::Error),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connecting timed out")]
    TimedOut,
    #[error("{0}")]
    Io(std::io::Error),
    #[error("{0}")]
    Http(hyper::Error),
}

/// Sends a request to a backend: over an idle connection if one is left (a connection that
/// closed meanwhile hands the request back), else over a new one.
async fn send(
    inner: &Inner,
    backend: &BackendState,
    mut req: Request<Incoming>,
) -> Result<(Response<Incoming>, Sender), SendError> {
    while let Some(mut sender) = backend.checkout() {
        match sender.try_send_request(req).await {
            Ok(response) => return Ok((response, sender)),
            Err(mut error) => match error.take_message() {
                Some(unsent) => req = unsent,
                None => return Err(SendError::Sent(error.into_error())),
            },
        }
    }
    let mut sender = match connect(inner, backend).await {
        Ok(sender) => sender,
        Err(error) => return Err(SendError::Unsent(Box::new(req), error)),
    };
    backend.connect_succeeded();
    match sender.try_send_request(req).await {
        Ok(response) => Ok((response, sender)),
        Err(mut error) => match error.take_message() {
            Some(unsent) => Err(SendError::Unsent(Box::new(unsent), ConnectError::Http(error.into_error()))),
            None => Err(SendError::Sent(error.into_error())),
        },
    }
}

/// Opens a TCP connection to a backend within the connect timeout, with `TCP_NODELAY`; both
/// paths connect this way.
pub(crate) async fn connect_tcp(inner: &Inner, backend: &BackendState) -> Result<TcpStream, ConnectError> {
    let addr = backend.backend.addr;
    let stream = tokio::time::timeout(inner.config.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::TimedOut)?
        .map_err(ConnectError::Io)?;
    stream.set_nodelay(true).map_err(ConnectError::Io)?;
    Ok(stream)
}

async fn connect(inner: &Inner, backend: &BackendState) -> Result<Sender, ConnectError> {
    let addr = backend.backend.addr;
    let stream = connect_tcp(inner, backend).await?;
    let (sender, connection) = inner.client.handshake(TokioIo::new(stream)).await.map_err(ConnectError::Http)?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            debug!(%addr, %error, "A backend connection ended with an error.");
        }
    });
    Ok(sender)
}

/// Turns the backend's response into the client's: hop-by-hop headers removed, the body
/// streamed with the request's count; a switch of protocols becomes a tunnel.
fn respond(
    conn: &Conn,
    in_flight: InFlight,
    sender: Sender,
    mut response: Response<Incoming>,
    client_upgrade: Option<OnUpgrade>,
    choice: &Choice<'_>,
) -> Response<ProxyBody> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            debug!(backend = %in_flight.backend().backend.id, "The backend switched protocols unasked.");
            return choice.backend_failed().into_response();
        };
        let backend_upgrade = hyper::upgrade::on(&mut response);
        conn.tracker.spawn(tunnel(client_upgrade, backend_upgrade, in_flight, sender, conn.abort.clone()));
        let (mut parts, _) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, true);
        return Response::from_parts(parts, ProxyBody::empty());
    }
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, false);
    Response::from_parts(parts, ProxyBody::forwarded(body, in_flight, sender))
}

/// Copies bytes both ways between the client's and the backend's upgraded connections until
/// both are done, counted against the backend all along.
async fn tunnel(client: OnUpgrade, backend: OnUpgrade, in_flight: InFlight, sender: Sender, abort: CancellationToken) {
    let id = in_flight.backend().backend.id.clone();
    let copy = async {
        let (client, backend) = match tokio::try_join!(client, backend) {
            Ok(both) => both,
            Err(error) => return debug!(backend = %id, %error, "A protocol switch did not complete."),
        };
        drop(sender);
        let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
        match tokio::io::copy_bidirectional(&mut client, &mut backend).await {
            Ok((up, down)) => debug!(backend = %id, up, down, "An upgraded connection closed."),
            Err(error) => debug!(backend = %id, %error, "An upgraded connection failed."),
        }
    };
    tokio::select! {
        () = copy => {}
        () = abort.cancelled() => debug!(backend = %id, "An upgraded connection was closed by the shutdown."),
    }
    drop(in_flight);
}
