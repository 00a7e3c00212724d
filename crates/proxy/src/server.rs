//! The accept loop: each client connection handed to the worker thread with the fewest (or,
//! without workers, a task on the caller's runtime) and served there by one task (plain, or
//! TLS first); idle backend connections reaped; and the shutdown (stop accepting, let what is
//! in flight finish for a grace period, close the rest, wait for the workers to stop).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hyper::header::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::Inner;
use crate::backend;
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
    let shared = Shared {
        inner: Arc::clone(&inner),
        ca,
        tracker: TaskTracker::new(),
        stopping: Arc::new(Signal::default()),
        abort: CancellationToken::new(),
    };
    // However this function ends, even by being dropped, the workers are told to stop.
    let _stop = StopOnDrop(shared.clone());
    let workers = Workers::start(&shared, inner.config.workers).map_err(ServeError::Workers)?;
    shared.tracker.spawn(reap_idle(Arc::clone(&inner), Arc::clone(&shared.stopping)));
    info!(%addr, tls = shared.ca.is_some(), workers = inner.config.workers, "The proxy is listening.");

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
                workers.take(&shared, stream, client);
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
    shared.stopping.fire();
    shared.tracker.close();
    info!(%addr, connections = shared.tracker.len(), "The proxy stopped accepting; waiting for requests in flight.");
    let workers_stopped = workers.stop();
    let mut stopped = std::pin::pin!(async {
        workers_stopped.await;
        shared.tracker.wait().await;
    });
    if tokio::time::timeout(inner.config.shutdown_grace, stopped.as_mut()).await.is_err() {
        warn!(%addr, left = shared.tracker.len(), "The shutdown grace period is over; closing what is left.");
        shared.abort.cancel();
        stopped.await;
    }
    for backend in inner.backends() {
        backend.close_idle();
    }
    info!(%addr, "The proxy stopped.");
    Ok(())
}

/// What every connection of one [`serve`] shares.
#[derive(Clone)]
struct Shared {
    inner: Arc<Inner>,
    ca: Option<Arc<LocalCa>>,
    tracker: TaskTracker,
    /// Fired at the shutdown signal: connections finish their request and close.
    stopping: Arc<Signal>,
    /// Cancelled when the grace period is over: whatever is left closes now.
    abort: CancellationToken,
}

impl Shared {
    /// Serves an accepted connection, on the runtime that polls the returned future.
    fn connection(&self, stream: TcpStream, client: SocketAddr) -> impl Future<Output = ()> + Send + 'static {
        let conn = Conn {
            inner: Arc::clone(&self.inner),
            client_ip: client_ip(client),
            tls: self.ca.is_some(),
            tracker: self.tracker.clone(),
            abort: self.abort.clone(),
        };
        let (ca, stopping, abort) = (self.ca.clone(), Arc::clone(&self.stopping), self.abort.clone());
        async move {
            match ca {
                None => connection(stream, client, conn, stopping, abort).await,
                Some(ca) => tls_connection(ca, stream, client, conn, stopping, abort).await,
            }
        }
    }
}

/// Tells connections to finish and lets the workers end once they have; what the shutdown
/// does first, for a [`serve`] that ends any other way.
struct StopOnDrop(Shared);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stopping.fire();
        self.0.tracker.close();
    }
}

/// The worker threads of one [`serve`] (see [`ProxyConfig::workers`](crate::ProxyConfig)):
/// each runs a current-thread runtime that serves the connections handed to it, with its own
/// pool of fast-path backend streams. None: connections are served on the caller's runtime.
struct Workers(Vec<Worker>);

struct Worker {
    connections: mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>,
    /// Connections handed to this worker and not yet closed.
    open: Arc<AtomicUsize>,
    /// Resolves once the worker's thread has dropped its runtime.
    stopped: oneshot::Receiver<()>,
}

/// One connection counted against its worker until dropped.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Workers {
    fn start(shared: &Shared, count: usize) -> io::Result<Workers> {
        (0..count).map(|n| Worker::start(shared.clone(), n)).collect::<io::Result<_>>().map(Workers)
    }

    /// Hands a connection to the worker with the fewest open, or serves it on this runtime
    /// when there are no workers.
    fn take(&self, shared: &Shared, stream: TcpStream, client: SocketAddr) {
        let Some(worker) = self.0.iter().min_by_key(|worker| worker.open.load(Relaxed)) else {
            shared.tracker.spawn(shared.connection(stream, client));
            return;
        };
        // Deregistered from this runtime, to be registered with the worker's.
        match stream.into_std() {
            Ok(stream) => {
                worker.open.fetch_add(1, Relaxed);
                if worker.connections.send((stream, client)).is_err() {
                    worker.open.fetch_sub(1, Relaxed);
                    error!(%client, "A proxy worker thread is gone; the connection was closed.");
                }
            }
            Err(error) => debug!(%client, %error, "A client connection could not be handed to a worker."),
        }
    }

    /// Stops handing out connections; resolves once every worker has served what it had and
    /// stopped (which needs the tracker closed).
    fn stop(self) -> impl Future<Output = ()> {
        let stopped: Vec<_> = self.0.into_iter().map(|worker| worker.stopped).collect();
        async move {
            for worker in stopped {
                // An error means the thread ended without a word: it is stopped all the same.
                let _ = worker.await;
            }
        }
    }
}

impl Worker {
    fn start(shared: Shared, n: usize) -> io::Result<Worker> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (connections, mut handed) = mpsc::unbounded_channel::<(std::net::TcpStream, SocketAddr)>();
        let (stopped_tx, stopped) = oneshot::channel();
        let open = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&open);
        std::thread::Builder::new().name(format!("plinth-proxy-{n}")).spawn(move || {
            backend::set_pool_slot(n + 1);
            runtime.block_on(async {
                while let Some((stream, client)) = handed.recv().await {
                    let open = Open(Arc::clone(&counted));
                    match TcpStream::from_std(stream) {
                        Ok(stream) => {
                            let connection = shared.connection(stream, client);
                            shared.tracker.spawn(async move {
                                connection.await;
                                drop(open);
                            });
                        }
                        Err(error) => debug!(%client, %error, "A proxy worker could not take a connection."),
                    }
                }
                // The accept loop has stopped: what is open here is served to its end.
                shared.tracker.wait().await;
                for backend in shared.inner.backends() {
                    backend.close_idle_here();
                }
            });
            drop(runtime);
            let _ = stopped_tx.send(());
        })?;
        Ok(Worker { connections, open, stopped })
    }
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
