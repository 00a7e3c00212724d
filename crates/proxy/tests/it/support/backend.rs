//! A real HTTP backend on 127.0.0.1:0 that answers with its name, and can hold, delay, echo
//! and switch protocols on request.
//!
//! - `GET /hold` waits until the test calls [`TestBackend::release`].
//! - `GET /slow?ms=N` answers after N milliseconds.
//! - `GET /headers` answers with the request's headers, one `name: value` per line, and sends
//!   hop-by-hop headers of its own.
//! - `POST /echo` streams the request body back as it arrives.
//! - `GET /stream` sends chunks until the reader goes away.
//! - `GET /missing` is the app's own 404.
//! - `Upgrade: echo` switches protocols and echoes raw bytes.
//! - Anything else answers with the name.
//!
//! Every answer carries `x-backend: <name>`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::header::{CONNECTION, HeaderValue, UPGRADE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use plinth_proxy::Backend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::within;

type BackendBody = BoxBody<Bytes, hyper::Error>;

#[derive(Debug)]
pub struct TestBackend {
    pub name: String,
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    tracker: TaskTracker,
}

#[derive(Debug)]
struct Shared {
    name: String,
    held: watch::Sender<usize>,
    gate: watch::Sender<bool>,
    connections: AtomicUsize,
}

impl TestBackend {
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            held: watch::Sender::new(0),
            gate: watch::Sender::new(false),
            connections: AtomicUsize::new(0),
        });
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(accept(listener, Arc::clone(&shared), stop.clone(), tracker.clone()));
        Self { name: name.to_owned(), addr, shared, stop, tracker }
    }

    /// This backend as a route entry, with its name as id.
    pub fn backend(&self) -> Backend {
        Backend::new(self.name.clone(), self.addr)
    }

    /// Waits until `n` requests in all have reached `/hold`.
    pub async fn wait_held(&self, n: usize) {
        let mut held = self.shared.held.subscribe();
        within(&format!("{} holding {n} requests", self.name), held.wait_for(|held| *held >= n)).await.unwrap();
    }

    /// Lets every held request (and every later one) answer.
    pub fn release(&self) {
        self.shared.gate.send_replace(true);
    }

    /// How many TCP connections the backend has accepted.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Stops accepting and closes every connection.
    pub async fn stop(self) {
        self.stop.cancel();
        self.tracker.close();
        within("the backend stopping", self.tracker.wait()).await;
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken, tracker: TaskTracker) {
    loop {
        let (stream, _) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted.unwrap(),
        };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let ctx = Ctx { shared: Arc::clone(&shared), stop: stop.clone(), tracker: tracker.clone() };
        tracker.spawn(async move {
            let stop = ctx.stop.clone();
            let ctx = Arc::new(ctx);
            let service = service_fn(move |req| answer(Arc::clone(&ctx), req));
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::select! {
                _ = connection => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

struct Ctx {
    shared: Arc<Shared>,
    stop: CancellationToken,
    tracker: TaskTracker,
}

async fn answer(ctx: Arc<Ctx>, mut req: Request<Incoming>) -> Result<Response<BackendBody>, Infallible> {
    let shared = &ctx.shared;
    if req.headers().get(UPGRADE).is_some_and(|u| u == "echo") {
        let upgrade = hyper::upgrade::on(&mut req);
        let stop = ctx.stop.clone();
        ctx.tracker.spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            tokio::select! {
                () = echo(TokioIo::new(upgraded)) => {}
                () = stop.cancelled() => {}
            }
        });
        let mut response = text(shared, StatusCode::SWITCHING_PROTOCOLS, "");
        response.headers_mut().insert(UPGRADE, HeaderValue::from_static("echo"));
        response.headers_mut().insert(CONNECTION, HeaderValue::from_static("upgrade"));
        return Ok(response);
    }
    let response = match req.uri().path() {
        "/hold" => {
            shared.held.send_modify(|held| *held += 1);
            let mut gate = shared.gate.subscribe();
            let _ = gate.wait_for(|open| *open).await;
            text(shared, StatusCode::OK, &shared.name)
        }
        "/slow" => {
            let ms =
                req.uri().query().and_then(|q| q.strip_prefix("ms=")).and_then(|ms| ms.parse().ok()).unwrap_or(100);
            // The backend's behaviour under test, not a wait for a condition.
            tokio::time::sleep(Duration::from_millis(ms)).await;
            text(shared, StatusCode::OK, &shared.name)
        }
        "/headers" => {
            let mut lines = String::new();
            for (name, value) in req.headers() {
                lines.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("<binary>")));
            }
            let mut response = text(shared, StatusCode::OK, &lines);
            let headers = response.headers_mut();
            headers.insert(CONNECTION, HeaderValue::from_static("x-resp-hop"));
            headers.insert("x-resp-hop", HeaderValue::from_static("1"));
            headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
            headers.insert("x-app-header", HeaderValue::from_static("kept"));
            response
        }
        "/echo" => named(shared, Response::new(req.into_body().boxed())),
        "/stream" => named(shared, Response::new(Endless(Bytes::from(vec![b'x'; 16 * 1024])).boxed())),
        "/missing" => text(shared, StatusCode::NOT_FOUND, "the app has no such page"),
        _ => text(shared, StatusCode::OK, &shared.name),
    };
    Ok(response)
}

fn text(shared: &Shared, status: StatusCode, body: &str) -> Response<BackendBody> {
    let body = Full::new(Bytes::from(body.to_owned())).map_err(|never: Infallible| match never {}).boxed();
    let mut response = named(shared, Response::new(body));
    *response.status_mut() = status;
    response
}

fn named(shared: &Shared, mut response: Response<BackendBody>) -> Response<BackendBody> {
    response.headers_mut().insert("x-backend", HeaderValue::from_str(&shared.name).unwrap());
    response
}

async fn echo(mut io: TokioIo<hyper::upgrade::Upgraded>) {
    let mut buf = vec![0; 64 * 1024];
    loop {
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A response body that never ends.
struct Endless(Bytes);

impl Body for Endless {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Poll::Ready(Some(Ok(Frame::data(self.0.clone()))))
    }
}
