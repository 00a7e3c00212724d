//! What the tests start: real backends, the proxy on a free port, and clients over real TCP.

mod backend;
mod client;
mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use plinth_proxy::{Drained, LocalCa, Proxy, ProxyConfig, RouteTable, ServeError};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use backend::TestBackend;
pub use client::{Client, Raw, Reply, get, handshake};
pub use tls::{TlsClient, ca_in};

/// How long any one wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Awaits `future`, failing the test if it takes longer than [`DEADLINE`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// A route table from `(host, backends)` pairs.
pub fn routes(pairs: &[(&str, &[&TestBackend])]) -> RouteTable {
    let mut table = RouteTable::new();
    for (host, backends) in pairs {
        table.insert(host, backends.iter().map(|b| b.backend()).collect()).unwrap();
    }
    table
}

/// An address nothing listens on: bound, then closed.
pub async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// The proxy serving on 127.0.0.1:0 in a task of its own.
#[derive(Debug)]
pub struct TestProxy {
    pub proxy: Proxy,
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    served: JoinHandle<Result<(), ServeError>>,
}

impl TestProxy {
    pub async fn start(table: RouteTable) -> Self {
        Self::with_config(ProxyConfig::default(), table).await
    }

    pub async fn with_config(config: ProxyConfig, table: RouteTable) -> Self {
        Self::spawn(config, table, None).await
    }

    /// The proxy serving HTTPS with certificates from `ca`.
    pub async fn start_tls(table: RouteTable, ca: Arc<LocalCa>) -> Self {
        Self::spawn(ProxyConfig::default(), table, Some(ca)).await
    }

    pub async fn with_tls_config(config: ProxyConfig, table: RouteTable, ca: Arc<LocalCa>) -> Self {
        Self::spawn(config, table, Some(ca)).await
    }

    async fn spawn(config: ProxyConfig, table: RouteTable, ca: Option<Arc<LocalCa>>) -> Self {
        let proxy = Proxy::new(config);
        proxy.set_routes(table);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, signal) = oneshot::channel::<()>();
        let serving = proxy.clone();
        let served = tokio::spawn(async move {
            let signal = async {
                let _ = signal.await;
            };
            match ca {
                Some(ca) => serving.serve_tls(listener, ca, signal).await,
                None => serving.serve(listener, signal).await,
            }
        });
        Self { proxy, addr, shutdown: Some(shutdown), served }
    }

    /// Resolves the shutdown future `serve` was given.
    pub fn shut_down(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Whether `serve` has returned.
    pub fn is_stopped(&self) -> bool {
        self.served.is_finished()
    }

    /// The task running `serve`, to await with a timeout of the test's own.
    pub fn served(&mut self) -> &mut JoinHandle<Result<(), ServeError>> {
        &mut self.served
    }

    /// Waits until nothing is in flight on `backend`. A request stops counting just after the
    /// last byte of its response is written, on the proxy's worker thread, so its client can
    /// hold the whole response a moment before.
    pub async fn settled(&self, backend: &str) {
        let drained = self.proxy.drained(backend, DEADLINE);
        assert_eq!(within("the backend's requests to settle", drained).await, Drained::Done, "{backend}");
    }

    /// Waits for `serve` to return.
    pub async fn stopped(&mut self) -> Result<(), ServeError> {
        within("serve to return", &mut self.served).await.unwrap()
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.shut_down();
    }
}
