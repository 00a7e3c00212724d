//! A backend that cannot be reached: requests go to the others, bodies included; with none
//! reachable, 502.

use std::time::Duration;

use http_body_util::Full;
use hyper::Request;
use hyper::body::Bytes;
use hyper::header::HOST;
use plinth_proxy::{Backend, ProxyConfig, RouteTable};

use crate::support::{Client, TestBackend, TestProxy, dead_addr, get, within};

async fn down_and_up(config: ProxyConfig) -> (TestBackend, TestProxy) {
    let live = TestBackend::start("live").await;
    let dead = Backend::new("dead", dead_addr().await);
    let table = RouteTable::new().with_route("app.localhost", vec![dead, live.backend()]).unwrap();
    (live, TestProxy::with_config(config, table).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_skip_a_backend_that_is_down() {
    let (_live, proxy) = down_and_up(ProxyConfig::default()).await;

    for _ in 0..10 {
        let reply = get(proxy.addr, "app.localhost", "/").await;
        assert_eq!((reply.status, reply.text()), (200, "live"));
    }
    let addr = proxy.addr;
    let clients: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                let mut client = Client::open(addr).await;
                let mut answers = Vec::new();
                for _ in 0..20 {
                    let reply = client.get("app.localhost", "/").await.unwrap();
                    answers.push(format!("{} {}", reply.status, reply.text()));
                }
                answers
            })
        })
        .collect();
    for client in clients {
        let answers = within("a client", client).await.unwrap();
        assert!(answers.iter().all(|a| a == "200 live"), "{answers:?}");
    }
    proxy.settled("dead").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_stops_while_routed_fails_no_request() {
    let one = TestBackend::start("one").await;
    let two = TestBackend::start("two").await;
    let proxy = TestProxy::start(crate::support::routes(&[("app.localhost", &[&one, &two])])).await;
    let mut client = Client::open(proxy.addr).await;
    for _ in 0..10 {
        assert_eq!(client.get("app.localhost", "/").await.unwrap().status, 200);
    }
    // Its listener and its connections, pooled ones included, close.
    one.stop().await;
    for i in 0..20 {
        let reply = client.get("app.localhost", "/").await.unwrap();
        assert_eq!((reply.status, reply.text()), (200, "two"), "request {i}");
    }
}

#[tokio::test]
async fn a_post_that_never_reached_a_backend_is_sent_to_another() {
    // No cooldown: the dead backend stays in the rotation, so half the requests try it first.
    let config = ProxyConfig { failure_cooldown: Duration::ZERO, ..ProxyConfig::default() };
    let (_live, proxy) = down_and_up(config).await;

    let mut client = Client::open(proxy.addr).await;
    for i in 0..10 {
        let body: Vec<u8> = (0..100_000u32).map(|n| (n.wrapping_mul(31).wrapping_add(i)) as u8).collect();
        let req =
            Request::post("/echo").header(HOST, "app.localhost").body(Full::new(Bytes::from(body.clone()))).unwrap();
        let reply = client.send(req).await.unwrap();
        assert_eq!((reply.status, reply.backend()), (200, "live"), "request {i}");
        assert!(reply.body == body, "request {i}: the body changed on the way");
    }
}

#[tokio::test]
async fn with_every_backend_down_the_answer_is_502() {
    let table = RouteTable::new()
        .with_route(
            "app.localhost",
            vec![Backend::new("one", dead_addr().await), Backend::new("two", dead_addr().await)],
        )
        .unwrap();
    let proxy = TestProxy::start(table).await;
    for _ in 0..3 {
        let reply = get(proxy.addr, "app.localhost", "/").await;
        assert_eq!(reply.status, 502);
        assert_eq!(reply.error_code(), Some("proxy.bad_gateway"));
        assert!(reply.text().contains("`app.localhost`"), "{}", reply.text());
    }
    proxy.settled("one").await;
    proxy.settled("two").await;
}
