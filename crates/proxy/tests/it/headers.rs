//! Forwarding headers reach the backend; hop-by-hop headers stop at the proxy, both ways.

use std::collections::BTreeMap;

use crate::support::{Raw, TestBackend, TestProxy, routes};

#[tokio::test]
async fn forwarding_headers_reach_the_backend_and_hop_headers_do_not() {
    let app = TestBackend::start("app").await;
    let proxy = TestProxy::start(routes(&[("app.localhost", &[&app])])).await;

    let mut raw = Raw::connect(proxy.addr).await;
    raw.send(
        b"GET /headers HTTP/1.1\r\n\
          Host: App.localhost:8000\r\n\
          Connection: keep-alive, X-Hop\r\n\
          X-Hop: secret\r\n\
          Keep-Alive: timeout=5\r\n\
          Proxy-Connection: keep-alive\r\n\
          TE: trailers\r\n\
          X-Forwarded-For: 10.0.0.1\r\n\
          X-Forwarded-Proto: https\r\n\
          X-App: kept\r\n\r\n",
    )
    .await;
    let response = raw.read_response().await;
    assert_eq!(response.status, 200);

    let seen: BTreeMap<String, Vec<String>> =
        std::str::from_utf8(&response.body).unwrap().lines().fold(BTreeMap::new(), |mut seen, line| {
            let (name, value) = line.split_once(": ").unwrap();
            seen.entry(name.to_owned()).or_default().push(value.to_owned());
            seen
        });
    let one = |name: &str| seen.get(name).map(|values| values.join(" | "));
    assert_eq!(one("host").as_deref(), Some("App.localhost:8000"));
    assert_eq!(one("x-forwarded-for").as_deref(), Some("10.0.0.1, 127.0.0.1"));
    assert_eq!(one("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(one("x-forwarded-host").as_deref(), Some("App.localhost:8000"));
    assert_eq!(one("x-app").as_deref(), Some("kept"));
    for hop in ["connection", "x-hop", "keep-alive", "proxy-connection", "te", "upgrade", "transfer-encoding"] {
        assert_eq!(one(hop), None, "{hop} reached the backend");
    }

    // The backend's own hop-by-hop headers stop here too.
    assert_eq!(response.header("x-app-header"), Some("kept"));
    assert_eq!(response.header("x-backend"), Some("app"));
    for hop in ["x-resp-hop", "keep-alive"] {
        assert_eq!(response.header(hop), None, "{hop} reached the client");
    }
    assert_ne!(response.header("connection"), Some("x-resp-hop"));
}
