//! Many requests share one client connection, and backend connections are reused.

use std::time::Duration;

use plinth_proxy::ProxyConfig;

use crate::support::{Client, Raw, TestBackend, TestProxy, routes};

#[tokio::test]
async fn one_client_connection_serves_many_requests() {
    let app = TestBackend::start("app").await;
    let proxy = TestProxy::start(routes(&[("app.localhost", &[&app])])).await;

    let mut raw = Raw::connect(proxy.addr).await;
    for i in 0..5 {
        raw.send(format!("GET /?i={i} HTTP/1.1\r\nHost: app.localhost\r\n\r\n").as_bytes()).await;
        let response = raw.read_response().await;
        assert_eq!((response.status, response.body.as_slice()), (200, &b"app"[..]), "request {i}");
        assert_ne!(response.header("connection"), Some("close"));
    }
}

#[tokio::test]
async fn backend_connections_are_pooled() {
    let one = TestBackend::start("one").await;
    let two = TestBackend::start("two").await;
    let proxy = TestProxy::start(routes(&[("app.localhost", &[&one, &two])])).await;

    let mut client = Client::open(proxy.addr).await;
    let mut answers = Vec::new();
    for _ in 0..40 {
        let reply = client.get("app.localhost", "/").await.unwrap();
        assert_eq!(reply.status, 200);
        answers.push(reply.text().to_owned());
    }
    // One at a time, the two take turns.
    assert!(answers.chunks(2).all(|pair| pair[0] != pair[1]), "{answers:?}");
    // Twenty requests each, over far fewer connections.
    assert!(one.connections() <= 3 && two.connections() <= 3, "{} and {}", one.connections(), two.connections());
}

#[tokio::test]
async fn idle_client_connections_close_after_the_header_timeout() {
    let app = TestBackend::start("app").await;
    let config = ProxyConfig { header_read_timeout: Duration::from_millis(200), ..ProxyConfig::default() };
    let proxy = TestProxy::with_config(config, routes(&[("app.localhost", &[&app])])).await;

    let mut raw = Raw::connect(proxy.addr).await;
    raw.send(b"GET / HTTP/1.1\r\nHost: app.localhost\r\n\r\n").await;
    assert_eq!(raw.read_response().await.body, b"app");
    // Waiting for the next request's headers counts too, so the idle connection closes.
    assert_eq!(raw.read_to_end().await, b"");
}
