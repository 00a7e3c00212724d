//! Bodies stream through both ways without being buffered whole, and a client that leaves
//! mid-response does not stay counted against the backend.

use std::time::Duration;

use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper::header::HOST;
use plinth_proxy::Drained;

use crate::support::{Client, Raw, TestBackend, TestProxy, handshake, routes, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_post_arrives_intact() {
    let app = TestBackend::start("app").await;
    let proxy = TestProxy::start(routes(&[("app.localhost", &[&app])])).await;

    let body: Vec<u8> = (0..4 * 1024 * 1024u32).map(|n| (n % 251) as u8).collect();
    let mut client = Client::open(proxy.addr).await;
    let req = Request::post("/echo").header(HOST, "app.localhost").body(Full::new(Bytes::from(body.clone()))).unwrap();
    let reply = within("a 4 MiB echo", client.send(req)).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), body.len());
    assert!(reply.body == body, "the body changed on the way");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_chunk_by_chunk() {
    let app = TestBackend::start("app").await;
    let proxy = TestProxy::start(routes(&[("app.localhost", &[&app])])).await;

    // Each chunk must come back before the next is sent: a proxy that buffered either body
    // whole would never answer.
    let (mut body, channel) = Channel::<Bytes>::new(1);
    let mut sender = handshake::<Channel<Bytes>>(proxy.addr).await;
    let req = Request::post("/echo").header(HOST, "app.localhost").body(channel).unwrap();
    let chunk = |i: u8| Bytes::from(vec![i; 64 * 1024]);
    body.send_data(chunk(0)).await.unwrap();
    let response = within("the response head", sender.send_request(req)).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut echoed = response.into_body();
    for i in 0..32u8 {
        if i > 0 {
            body.send_data(chunk(i)).await.unwrap();
        }
        let mut got = Vec::new();
        while got.len() < 64 * 1024 {
            let frame = within("an echoed chunk", echoed.frame()).await.unwrap().unwrap();
            got.extend_from_slice(&frame.into_data().unwrap());
        }
        assert!(got == chunk(i), "chunk {i} changed on the way");
    }
    drop(body);
    assert!(within("the end of the body", echoed.frame()).await.is_none());
    let drained = proxy.proxy.drained("app", Duration::from_secs(10));
    assert_eq!(within("the request to finish", drained).await, Drained::Done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_response_is_not_counted() {
    let app = TestBackend::start("app").await;
    let proxy = TestProxy::start(routes(&[("app.localhost", &[&app])])).await;

    let mut raw = Raw::connect(proxy.addr).await;
    raw.send(b"GET /stream HTTP/1.1\r\nHost: app.localhost\r\n\r\n").await;
    let head = raw.read_head().await;
    assert_eq!(head.status, 200);
    raw.read_exact(256 * 1024).await;
    assert_eq!(proxy.proxy.in_flight("app"), 1);
    drop(raw);

    let drained = proxy.proxy.drained("app", Duration::from_secs(10));
    assert_eq!(within("the abandoned request to end", drained).await, Drained::Done);
    assert_eq!(proxy.proxy.in_flight("app"), 0);
    // And the proxy still serves.
    let mut client = Client::open(proxy.addr).await;
    assert_eq!(client.get("app.localhost", "/").await.unwrap().text(), "app");
}
