//! Shutdown: serve stops accepting, waits for requests in flight, and returns; a grace period
//! bounds the wait.

use std::time::Duration;

use plinth_proxy::ProxyConfig;

use crate::support::{Client, TestBackend, TestProxy, get, routes, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_returns_once_requests_in_flight_finish() {
    let app = TestBackend::start("app").await;
    let mut proxy = TestProxy::start(routes(&[("app.localhost", &[&app])])).await;

    // An idle keep-alive client does not hold the shutdown up.
    let mut idle = Client::open(proxy.addr).await;
    assert_eq!(idle.get("app.localhost", "/").await.unwrap().text(), "app");

    let held = tokio::spawn(get(proxy.addr, "app.localhost", "/hold"));
    app.wait_held(1).await;
    proxy.shut_down();
    // The held request cannot finish before `release`, so serve must still be running.
    assert!(tokio::time::timeout(Duration::from_millis(50), proxy.served()).await.is_err());
    assert!(!proxy.is_stopped());

    app.release();
    let reply = within("the held request", held).await.unwrap();
    assert_eq!((reply.status, reply.text()), (200, "app"));
    proxy.stopped().await.unwrap();
    assert!(idle.get("app.localhost", "/").await.is_err(), "the idle connection was closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_bounds_the_wait() {
    let app = TestBackend::start("app").await;
    let config = ProxyConfig { shutdown_grace: Duration::from_millis(100), ..ProxyConfig::default() };
    let mut proxy = TestProxy::with_config(config, routes(&[("app.localhost", &[&app])])).await;

    let addr = proxy.addr;
    let held = tokio::spawn(async move { Client::open(addr).await.get("app.localhost", "/hold").await });
    app.wait_held(1).await;
    proxy.shut_down();
    proxy.stopped().await.unwrap();
    let outcome = within("the held request", held).await.unwrap();
    assert!(outcome.is_err(), "the shutdown closed the request: {outcome:?}");
    assert_eq!(proxy.proxy.in_flight("app"), 0);
}
