//! `plinth demo-app`: a small HTTP app that says its version, for the quickstart and the
//! deploy tests, with flags that make it start slowly, fail its health check, answer slowly or
//! crash, and a graceful stop on SIGTERM.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Query, Request, State};
use axum::http::header::{CONNECTION, HeaderName, HeaderValue};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, info, warn};

use super::Outcome;
use crate::output::{Failure, Format};

/// The longest wait `GET /slow?ms=N` accepts; larger values are cut down to it.
const MAX_SLOW: Duration = Duration::from_secs(60);

/// The header that names the instance, from `--instance` or `PLINTH_INSTANCE`.
const INSTANCE_HEADER: HeaderName = HeaderName::from_static("x-demo-instance");

#[derive(Debug, clap::Args)]
#[command(disable_version_flag = true)]
pub struct Args {
    /// The port to listen on; 0 picks a free one (the "listening on" line says which).
    #[arg(long)]
    port: u16,
    /// The address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    host: IpAddr,
    /// The version this app reports on `GET /`, such as `v1`.
    #[arg(long = "version", value_name = "VERSION")]
    app_version: String,
    /// The instance name sent back in the `x-demo-instance` header; plinth's process runtime
    /// sets PLINTH_INSTANCE.
    #[arg(long, value_name = "NAME", env = "PLINTH_INSTANCE")]
    instance: Option<String>,
    /// Wait this long (such as 2s or 500ms) before listening, as a slow-starting app does.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    start_delay: Option<Duration>,
    /// Answer every `GET /healthz` with 503, as an app that never becomes healthy.
    #[arg(long, conflicts_with = "fail_health_after")]
    fail_health: bool,
    /// Answer the first N health checks with 200 and every later one with 503, as a version
    /// that goes bad.
    #[arg(long, value_name = "N")]
    fail_health_after: Option<u64>,
    /// Wait this long (such as 200ms) before every answer to `GET /` and `GET /slow`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    response_delay: Option<Duration>,
    /// Answer N requests to `/` or `/slow`, then exit with code 1 as soon as the Nth answer is
    /// sent, as a crashing app does. Later requests get no answer.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    crash_after: Option<u64>,
}

fn fail(code: &'static str, message: String, help: &str) -> Failure {
    Failure::new(code, message, help, Format::Text)
}

pub fn run(args: Args) -> Outcome {
    let instance = match &args.instance {
        Some(name) => Some(HeaderValue::from_str(name).map_err(|_| {
            fail(
                "demo_app.instance",
                format!("the instance name {name:?} cannot be sent in an HTTP header"),
                "Use printable ASCII for --instance or PLINTH_INSTANCE.",
            )
        })?),
        None => None,
    };
    let app = Arc::new(App {
        version: args.app_version.clone(),
        instance,
        fail_health: args.fail_health,
        fail_health_after: args.fail_health_after,
        response_delay: args.response_delay.unwrap_or_default(),
        crash_after: args.crash_after,
        health_checks: AtomicU64::new(0),
        answered: AtomicU64::new(0),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail("demo_app.runtime", e.to_string(), "Check the system's thread limits."))?;
    runtime.block_on(serve(args, app))
}

async fn serve(args: Args, app: Arc<App>) -> Outcome {
    // The handlers are installed before anything else, so a SIGTERM at any point from here on
    // (even during --start-delay) is a graceful stop rather than the default death.
    let mut shutdown = Box::pin(shutdown_signal()?);
    if let Some(delay) = args.start_delay {
        debug!(delay = %humantime::format_duration(delay), "Waiting before listening.");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = &mut shutdown => return Ok(ExitCode::SUCCESS),
        }
    }
    let requested = SocketAddr::new(args.host, args.port);
    let listener = TcpListener::bind(requested).await.map_err(|e| {
        fail(
            "demo_app.listen",
            format!("could not listen on {requested}: {e}"),
            "Pick a free port with --port, or 0 for any free port.",
        )
    })?;
    let addr = listener.local_addr().map_err(|e| {
        fail("demo_app.listen", format!("could not read the address of {requested}: {e}"), "Try again.")
    })?;
    outln!("demo-app {} listening on {addr}", app.version);
    let router = Router::new()
        .route("/", get(root))
        .route("/slow", get(slow))
        .route("/healthz", get(healthz))
        .layer(axum::middleware::from_fn(log_request))
        .with_state(app);
    let stopping = async move {
        shutdown.await;
        info!("Stopping: no new connections; finishing the requests in flight.");
    };
    axum::serve(Tracked(listener), router.into_make_service_with_connect_info::<Conn>())
        .with_graceful_shutdown(stopping)
        .await
        .map_err(|e| fail("demo_app.serve", e.to_string(), "Start the app again."))?;
    info!("Stopped.");
    Ok(ExitCode::SUCCESS)
}

/// Resolves on the first SIGTERM or SIGINT. Both handlers are in place when this returns.
fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static, Failure> {
    let failed =
        |e: io::Error| fail("demo_app.signal", format!("could not handle signals: {e}"), "Start the app again.");
    let mut terminate = signal(SignalKind::terminate()).map_err(failed)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(failed)?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

/// What the app was told to be, and what it has counted so far.
#[derive(Debug)]
struct App {
    version: String,
    instance: Option<HeaderValue>,
    fail_health: bool,
    fail_health_after: Option<u64>,
    response_delay: Duration,
    crash_after: Option<u64>,
    health_checks: AtomicU64,
    answered: AtomicU64,
}

impl App {
    /// Whether the `n`th health check (counting from 1) passes.
    fn healthy(&self, n: u64) -> bool {
        !self.fail_health && self.fail_health_after.is_none_or(|after| n <= after)
    }

    /// The answer to `GET /`, after `--response-delay`. The answer that reaches
    /// `--crash-after` closes its connection, and closing it ends the process; answers past
    /// that one never come.
    async fn answer(&self, conn: &Conn) -> Response {
        if !self.response_delay.is_zero() {
            tokio::time::sleep(self.response_delay).await;
        }
        let n = self.answered.fetch_add(1, Ordering::SeqCst) + 1;
        let mut headers = HeaderMap::new();
        if let Some(instance) = &self.instance {
            headers.insert(INSTANCE_HEADER, instance.clone());
        }
        match self.crash_after {
            Some(limit) if n > limit => std::future::pending().await,
            Some(limit) if n == limit => {
                warn!(requests = n, "Crashing once this answer is sent, as --crash-after asks.");
                conn.0.crash_when_closed.store(true, Ordering::SeqCst);
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        (headers, format!("{}\n", self.version)).into_response()
    }
}

async fn root(State(app): State<Arc<App>>, ConnectInfo(conn): ConnectInfo<Conn>) -> Response {
    app.answer(&conn).await
}

#[derive(Debug, serde::Deserialize)]
struct SlowQuery {
    ms: u64,
}

async fn slow(
    State(app): State<Arc<App>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Query(query): Query<SlowQuery>,
) -> Response {
    let wait = Duration::from_millis(query.ms).min(MAX_SLOW);
    debug!(ms = wait.as_millis(), "Holding a slow request.");
    tokio::time::sleep(wait).await;
    app.answer(&conn).await
}

async fn healthz(State(app): State<Arc<App>>) -> (StatusCode, &'static str) {
    let n = app.health_checks.fetch_add(1, Ordering::SeqCst) + 1;
    if app.healthy(n) { (StatusCode::OK, "ok") } else { (StatusCode::SERVICE_UNAVAILABLE, "failing") }
}

async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    debug!(%method, %path, "Received a request.");
    let response = next.run(request).await;
    debug!(%method, %path, status = response.status().as_u16(), "Answered a request.");
    response
}

/// One accepted connection, as the handlers see it.
#[derive(Debug, Clone)]
struct Conn(Arc<ConnState>);

#[derive(Debug, Default)]
struct ConnState {
    /// Set on the answer that reaches `--crash-after`: the process ends when the connection
    /// closes, that is once the answer has been written to the socket.
    crash_when_closed: AtomicBool,
}

impl Connected<IncomingStream<'_, Tracked>> for Conn {
    fn connect_info(stream: IncomingStream<'_, Tracked>) -> Self {
        Conn(stream.io().conn.clone())
    }
}

/// A TCP listener whose connections know when they close.
#[derive(Debug)]
struct Tracked(TcpListener);

impl Listener for Tracked {
    type Io = TrackedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = Listener::accept(&mut self.0).await;
        (TrackedStream { stream, conn: Arc::default() }, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Listener::local_addr(&self.0)
    }
}

/// A connection's socket. The server drops it when the connection is over: a response with
/// `Connection: close` has been written and the socket shut down, or the client went away.
#[derive(Debug)]
struct TrackedStream {
    stream: TcpStream,
    conn: Arc<ConnState>,
}

impl Drop for TrackedStream {
    fn drop(&mut self) {
        if self.conn.crash_when_closed.load(Ordering::SeqCst) {
            // Stands for a crash: no graceful stop, other requests are cut off.
            eprintln!("demo-app: crashed after the requests --crash-after allows");
            std::process::exit(1);
        }
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(fail_health: bool, fail_health_after: Option<u64>) -> App {
        App {
            version: "v1".to_owned(),
            instance: None,
            fail_health,
            fail_health_after,
            response_delay: Duration::ZERO,
            crash_after: None,
            health_checks: AtomicU64::new(0),
            answered: AtomicU64::new(0),
        }
    }

    #[test]
    fn health_checks_pass_fail_or_go_bad() {
        let cases = [
            (false, None, [true, true, true, true]),
            (true, None, [false, false, false, false]),
            (false, Some(0), [false, false, false, false]),
            (false, Some(2), [true, true, false, false]),
        ];
        for (fail_health, after, expected) in cases {
            let app = app(fail_health, after);
            let seen: Vec<bool> = (1..=4).map(|n| app.healthy(n)).collect();
            assert_eq!(seen, expected, "--fail-health {fail_health}, --fail-health-after {after:?}");
        }
    }
}
