//! The accept loop: one task per client connection (plain, or TLS first), idle backend
//! connections reaped, and the shutdown (stop accepting, let what is in flight finish for a
//! grace period, close the rest).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::header::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::Inner;
use crate::error::ServeError;
use crate::fast::{self, Served};
use crate::forward::{self, Conn};
use crate::rewind::Rewind;
use crate::signal::Signal;
use crate::tls::{self, LocalCa};

/// How long accepting pauses after an error that is not about one client (such as running
/// out of file descriptors), so that the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves `listener`: plain HTTP, or with `ca`, HTTPS with its certificates.
pub(crate) async fn serve(
    inner: Arc<Inner>,
    listener: TcpListener,
    ca: Option<Arc<LocalCa>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let addr = listener.local_addr().map_err(ServeError::Listener)?;
    let tracker = TaskTracker::new();
    // Fired at the shutdown signal: connections finish their request and close.
    let stopping = Arc::new(Signal::default());
    // Cancelled when the grace period is over: whatever is left closes now.
    let abort = CancellationToken::new();
    tracker.spawn(reap_idle(Arc::clone(&inner), Arc::clone(&stopping)));
    info!(%addr, tls = ca.is_some(), "The proxy is listening.");

    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, client)) => {
                if let Err(error) = stream.set_nodelay(true) {
                    debug!(%client, %error, "Could not set TCP_NODELAY.");
                }
                let conn = Conn {
                    inner: Arc::clone(&inner),
                    client_ip: client_ip(client),
                    tls: ca.is_some(),
                    tracker: tracker.clone(),
                    abort: abort.clone(),
                };
                match &ca {
                    None => tracker.spawn(connection(stream, client, conn, Arc::clone(&stopping), abort.clone())),
                    Some(ca) => tracker.spawn(tls_connection(
                        Arc::clone(ca),
                        stream,
                        client,
                        conn,
                        Arc::clone(&stopping),
                        abort.clone(),
                    )),
                };
            }
            Err(error) if is_about_one_client(&error) => debug!(%error, "A client left before it was accepted."),
            Err(error) => {
                error!(%addr, %error, "Accepting a connection failed; pausing before the next.");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
        }
    }

    drop(listener);
    stopping.fire();
    tracker.close();
    info!(%addr, connections = tracker.len(), "The proxy stopped accepting; waiting for requests in flight.");
    if tokio::time::timeout(inner.config.shutdown_grace, tracker.wait()).await.is_err() {
        warn!(%addr, left = tracker.len(), "The shutdown grace period is over; closing what is left.");
        abort.cancel();
        tracker.wait().await;
    }
    for backend in inner.backends() {
        backend.close_idle();
    }
    info!(%addr, "The proxy stopped.");
    Ok(())
}

/// Completes a TLS handshake within [`ProxyConfig::tls_handshake_timeout`](crate::ProxyConfig),
/// then serves the connection as [`connection`] does. A handshake still going at the shutdown
/// signal is dropped.
async fn tls_connection(
    ca: Arc<LocalCa>,
    stream: TcpStream,
    client: SocketAddr,
    conn: Conn,
    stopping: Arc<Signal>,
    abort: CancellationToken,
) {
    let timeout = conn.inner.config.tls_handshake_timeout;
    let handshake = tokio::time::timeout(timeout, tls::handshake(&conn.inner, &ca, stream));
    let stream = tokio::select! {
        handshake = handshake => match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return debug!(%client, %error, "A TLS handshake failed."),
            Err(_) => return debug!(%client, ?timeout, "A TLS handshake timed out."),
        },
        () = stopping.wait() => return,
    };
    connection(stream, client, conn, stopping, abort).await;
}

/// Serves one client connection until it closes, the shutdown asks it to finish, or the grace
/// period ends: on the fast path while its requests are plain, then, from the first request
/// that is not, on the hyper path with the bytes the fast path had read.
async fn connection<I>(io: I, client: SocketAddr, conn: Conn, stopping: Arc<Signal>, abort: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(conn);
    let served = {
        let fast = fast::serve(io, &conn, &stopping);
        let mut fast = std::pin::pin!(fast);
        // The fast path closes idle connections at the signal itself and finishes the request
        // in flight; past the grace period, `abort` ends it.
        tokio::select! {
            biased;
            served = fast.as_mut() => served,
            () = stopping.wait() => tokio::select! {
                served = fast.as_mut() => served,
                () = abort.cancelled() => return,
            },
        }
    };
    if let Served::Fallback(io, buffered) = served {
        hyper_connection(TokioIo::new(Rewind::new(io, buffered)), client, conn, stopping, abort).await;
    }
}

/// Serves a client connection with hyper until it closes, the shutdown asks it to finish, or
/// the grace period ends.
async fn hyper_connection<I>(
    io: I,
    client: SocketAddr,
    conn: Arc<Conn>,
    stopping: Arc<Signal>,
    abort: CancellationToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let inner = Arc::clone(&conn.inner);
    let service = service_fn(move |req| {
        let conn = Arc::clone(&conn);
        async move { Ok::<_, Infallible>(forward::handle(&conn, req).await) }
    });
    let connection = inner.server.serve_connection(io, service).with_upgrades();
    let mut connection = std::pin::pin!(connection);
    // Polled on every wake-up of this task: the connection first (it is what woke it, nearly
    // always), then the shutdown signal, which costs one atomic read here.
    let result = tokio::select! {
        biased;
        result = connection.as_mut() => result,
        () = stopping.wait() => {
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                result = connection.as_mut() => result,
                () = abort.cancelled() => Ok(()),
            }
        }
    };
    if let Err(error) = result {
        debug!(%client, %error, "A client connection ended with an error.");
    }
}

/// Closes idle backend connections that aged out, so that an unused pool does not hold them.
async fn reap_idle(inner: Arc<Inner>, stop: Arc<Signal>) {
    let period = inner.config.pool_idle_timeout.max(Duration::from_secs(1));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.wait() => return,
            _ = ticks.tick() => {
                let now = Instant::now();
                for backend in inner.backends() {
                    backend.reap_idle(now);
                }
            }
        }
    }
}

fn client_ip(client: SocketAddr) -> HeaderValue {
    // An IP address is always a valid header value. IPv4 clients of an IPv6 listener appear
    // as plain IPv4.
    HeaderValue::from_str(&client.ip().to_canonical().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Errors that concern one connection only; accepting the next one goes straight on.
fn is_about_one_client(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}
