//! Requests reach the service their Host names; unknown hosts and empty routes get the proxy's
//! own answers.

use crate::support::{Raw, TestBackend, TestProxy, get, routes};

#[tokio::test]
async fn hosts_pick_their_service() {
    let app = TestBackend::start("app").await;
    let review = TestBackend::start("review").await;
    let exact = TestBackend::start("exact").await;
    let proxy = TestProxy::start(routes(&[
        ("app.localhost", &[&app]),
        ("*.review.localhost", &[&review]),
        ("exact.review.localhost", &[&exact]),
    ]))
    .await;

    for (host, expected) in [
        ("app.localhost", "app"),
        ("app.localhost:8000", "app"),
        ("APP.Localhost", "app"),
        ("App.LOCALHOST:8000", "app"),
        ("feature-x.review.localhost", "review"),
        ("a.b.review.localhost:8000", "review"),
        ("exact.review.localhost", "exact"),
        ("EXACT.review.localhost:80", "exact"),
    ] {
        let reply = get(proxy.addr, host, "/").await;
        assert_eq!((reply.status, reply.text(), reply.error_code()), (200, expected, None), "{host}");
        assert_eq!(reply.backend(), expected, "{host}");
    }
}

#[tokio::test]
async fn unknown_hosts_get_404_with_a_code() {
    let app = TestBackend::start("app").await;
    let proxy = TestProxy::start(routes(&[("app.localhost", &[&app]), ("*.review.localhost", &[&app])])).await;

    for host in ["review.localhost", "Unknown.localhost:8000", "app.localhost.example"] {
        let reply = get(proxy.addr, host, "/").await;
        assert_eq!(reply.status, 404, "{host}");
        assert_eq!(reply.error_code(), Some("proxy.unknown_host"), "{host}");
        assert_eq!(reply.header("content-type"), Some("text/plain; charset=utf-8"));
        let expected_host = host.split(':').next().unwrap().to_ascii_lowercase();
        assert!(reply.text().contains(&format!("`{expected_host}`")), "{}", reply.text());
        assert!(reply.text().contains("plinth.toml"), "{}", reply.text());
    }

    // The app's own 404 passes through untouched and unmarked.
    let reply = get(proxy.addr, "app.localhost", "/missing").await;
    assert_eq!((reply.status, reply.text(), reply.error_code()), (404, "the app has no such page", None));
}

#[tokio::test]
async fn a_host_without_instances_gets_503() {
    let proxy = TestProxy::start(routes(&[("empty.localhost", &[])])).await;
    let reply = get(proxy.addr, "empty.localhost", "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.error_code(), Some("proxy.no_healthy_instance"));
    assert!(reply.text().starts_with("proxy.no_healthy_instance: "), "{}", reply.text());
}

#[tokio::test]
async fn bad_requests_get_400_and_the_proxy_goes_on() {
    let app = TestBackend::start("app").await;
    let proxy = TestProxy::start(routes(&[("app.localhost", &[&app])])).await;

    let mut no_host = Raw::connect(proxy.addr).await;
    no_host.send(b"GET / HTTP/1.1\r\n\r\n").await;
    let response = no_host.read_response().await;
    assert_eq!(response.status, 400);
    assert_eq!(response.header("x-plinth-error"), Some("proxy.invalid_host"));

    for garbage in [
        &b"NOT HTTP AT ALL\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: app.localhost\r\nBad Header\r\n\r\n",
        b"\x00\x01\x02\r\n\r\n",
    ] {
        let mut raw = Raw::connect(proxy.addr).await;
        raw.send(garbage).await;
        let response = raw.read_head().await;
        assert_eq!(response.status, 400, "{garbage:?}");
        assert_eq!(response.header("x-plinth-error"), None, "hyper's own 400");
    }

    let mut connect = Raw::connect(proxy.addr).await;
    connect.send(b"CONNECT app.localhost:443 HTTP/1.1\r\nHost: app.localhost:443\r\n\r\n").await;
    let response = connect.read_response().await;
    assert_eq!(response.status, 405);
    assert_eq!(response.header("x-plinth-error"), Some("proxy.connect_not_supported"));

    assert_eq!(get(proxy.addr, "app.localhost", "/").await.text(), "app");
}
