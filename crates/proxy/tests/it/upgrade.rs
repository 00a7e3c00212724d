//! Protocol switches (WebSocket and the like): the 101 passes through, then bytes flow both
//! ways, counted as in flight until the connection closes.

use std::time::Duration;

use plinth_proxy::Drained;
use tokio::io::AsyncWriteExt;

use crate::support::{Raw, TestBackend, TestProxy, routes, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_connections_echo_bytes_and_count_until_closed() {
    let app = TestBackend::start("app").await;
    let proxy = TestProxy::start(routes(&[("app.localhost", &[&app])])).await;

    let mut raw = Raw::connect(proxy.addr).await;
    raw.send(b"GET /chat HTTP/1.1\r\nHost: app.localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n").await;
    let head = raw.read_head().await;
    assert_eq!(head.status, 101, "{head:?}");
    assert_eq!(head.header("upgrade"), Some("echo"));
    assert_eq!(head.header("connection").map(str::to_ascii_lowercase).as_deref(), Some("upgrade"));

    for message in [b"ping".to_vec(), vec![7; 200 * 1024], b"pong".to_vec()] {
        raw.send(&message).await;
        assert_eq!(raw.read_exact(message.len()).await, message);
    }
    assert_eq!(proxy.proxy.in_flight("app"), 1);

    let mut stream = raw.into_inner();
    stream.shutdown().await.unwrap();
    drop(stream);
    let drained = proxy.proxy.drained("app", Duration::from_secs(10));
    assert_eq!(within("the tunnel to close", drained).await, Drained::Done);
    assert_eq!(proxy.proxy.in_flight("app"), 0);
}

#[tokio::test]
async fn a_refused_upgrade_is_an_ordinary_response() {
    let app = TestBackend::start("app").await;
    let proxy = TestProxy::start(routes(&[("app.localhost", &[&app])])).await;

    let mut raw = Raw::connect(proxy.addr).await;
    raw.send(b"GET / HTTP/1.1\r\nHost: app.localhost\r\nConnection: Upgrade\r\nUpgrade: other\r\n\r\n").await;
    let response = raw.read_response().await;
    assert_eq!((response.status, response.body.as_slice()), (200, &b"app"[..]));
    assert_eq!(response.header("upgrade"), None);

    // The connection goes on as plain HTTP.
    raw.send(b"GET / HTTP/1.1\r\nHost: app.localhost\r\n\r\n").await;
    assert_eq!(raw.read_response().await.body, b"app");
    proxy.settled("app").await;
}
