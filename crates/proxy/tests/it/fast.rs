//! The fast path for plain HTTP/1.1, byte by byte: framing both ways, pipelining, the retry
//! rule for pooled connections, and what it leaves to hyper.

use std::time::Duration;

use plinth_proxy::{Backend, Drained, ProxyConfig, RouteTable};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::support::{Raw, TestBackend, TestProxy, routes, within};

/// A backend the test scripts by hand, one accepted connection at a time.
struct Scripted {
    listener: TcpListener,
}

impl Scripted {
    async fn start() -> (Self, RouteTable) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = Backend::new("raw", listener.local_addr().unwrap());
        let table = RouteTable::new().with_route("app.localhost", vec![backend]).unwrap();
        (Self { listener }, table)
    }

    async fn accept(&self) -> BufReader<TcpStream> {
        BufReader::new(within("the proxy to connect", self.listener.accept()).await.unwrap().0)
    }
}

/// A scripted backend and the proxy, with the default config, in front of it.
async fn scripted() -> (Scripted, TestProxy) {
    let (backend, table) = Scripted::start().await;
    (backend, TestProxy::start(table).await)
}

/// Reads one request (head, then a `Content-Length` body) as text; `None` at the end of the
/// stream.
async fn read_request(conn: &mut BufReader<TcpStream>) -> Option<String> {
    let mut request = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line).await.unwrap() == 0 {
            return None;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap();
        }
        request.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body).await.unwrap();
    request.push_str(std::str::from_utf8(&body).unwrap());
    Some(request)
}

async fn reply(conn: &mut BufReader<TcpStream>, bytes: &[u8]) {
    conn.get_mut().write_all(bytes).await.unwrap();
}

/// The first line of a request read from `conn`, or `None` at the end of the stream.
async fn request_line(conn: &mut BufReader<TcpStream>) -> Option<String> {
    read_request(conn).await.map(|request| request.lines().next().unwrap_or_default().to_owned())
}

async fn answer(conn: &mut BufReader<TcpStream>, body: &str) {
    reply(conn, format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes()).await;
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: app.localhost\r\n\r\n";

#[tokio::test]
async fn a_chunked_response_is_forwarded_intact_and_the_connection_reused() {
    let (backend, proxy) = scripted().await;
    let script = tokio::spawn(async move {
        let mut conn = backend.accept().await;
        for _ in 0..2 {
            read_request(&mut conn).await.unwrap();
            reply(&mut conn, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n").await;
            reply(&mut conn, b"5\r\nhello\r\n").await;
            reply(&mut conn, b"6\r\n world\r\n0\r\n\r\n").await;
        }
    });
    let mut raw = Raw::connect(proxy.addr).await;
    for _ in 0..2 {
        raw.send(GET).await;
        let response = raw.read_response().await;
        assert_eq!((response.status, response.body.as_slice()), (200, &b"hello world"[..]));
        assert_eq!(response.header("transfer-encoding"), Some("chunked"));
        assert_eq!(response.header("trailer"), None, "hop-by-hop");
    }
    within("the script", script).await.unwrap();
}

#[tokio::test]
async fn transfer_codings_besides_chunked_reach_the_client_with_the_bytes_they_describe() {
    let (backend, proxy) = scripted().await;
    // Not really gzip: the proxy copies bytes and never decodes, which is the point.
    let body = b"3\r\n\x1f\x8b\x08\r\n0\r\n\r\n";
    let script = tokio::spawn(async move {
        let mut conn = backend.accept().await;
        read_request(&mut conn).await.unwrap();
        let mut response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_vec();
        response.extend_from_slice(body);
        reply(&mut conn, &response).await;
        read_request(&mut conn).await.unwrap();
        reply(&mut conn, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b\x08").await;
    });
    let mut raw = Raw::connect(proxy.addr).await;
    raw.send(GET).await;
    let head = raw.read_head().await;
    assert_eq!(head.header("transfer-encoding"), Some("gzip, chunked"));
    assert_eq!(raw.read_exact(body.len()).await, body);
    // The connection goes on; a body coded but not chunked runs until the close.
    raw.send(GET).await;
    let head = raw.read_head().await;
    assert_eq!((head.header("transfer-encoding"), head.header("connection")), (Some("gzip"), Some("close")));
    within("the script", script).await.unwrap();
    assert_eq!(raw.read_to_end().await, b"\x1f\x8b\x08");
}

#[tokio::test]
async fn a_response_without_a_date_gets_one_and_a_dated_one_keeps_its_own() {
    let (backend, proxy) = scripted().await;
    let script = tokio::spawn(async move {
        let mut conn = backend.accept().await;
        read_request(&mut conn).await.unwrap();
        answer(&mut conn, "ok").await;
        read_request(&mut conn).await.unwrap();
        reply(&mut conn, b"HTTP/1.1 200 OK\r\nDate: Tue, 01 Dec 2026 10:00:00 GMT\r\nContent-Length: 2\r\n\r\nok")
            .await;
    });
    let mut raw = Raw::connect(proxy.addr).await;
    raw.send(GET).await;
    let added = raw.read_response().await;
    let date = added.header("date").expect("a date added by the proxy").to_owned();
    assert!(date.len() == 29 && date.ends_with(" GMT") && !date.contains("2026 10:00:00"), "{date}");
    raw.send(GET).await;
    let kept = raw.read_response().await;
    assert_eq!(kept.header("date"), Some("Tue, 01 Dec 2026 10:00:00 GMT"));
    assert_eq!(kept.headers.iter().filter(|(name, _)| name == "date").count(), 1, "{:?}", kept.headers);
    within("the script", script).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_bodies_reach_the_backend_buffered_or_streamed() {
    let app = TestBackend::start("app").await;
    let proxy = TestProxy::start(routes(&[("app.localhost", &[&app])])).await;
    let mut raw = Raw::connect(proxy.addr).await;
    raw.send(b"POST /echo HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 11\r\n\r\nhello world").await;
    let response = raw.read_response().await;
    assert_eq!((response.status, response.body.as_slice()), (200, &b"hello world"[..]));

    // A body that comes after its head, in pieces.
    let body: Vec<u8> = (0..300_000u32).map(|n| (n % 251) as u8).collect();
    raw.send(
        format!("POST /echo HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
    )
    .await;
    for piece in body.chunks(70_000) {
        raw.send(piece).await;
    }
    let response = raw.read_response().await;
    assert_eq!(response.status, 200);
    assert!(response.body == body, "the body changed on the way");

    // The connection goes on.
    raw.send(GET).await;
    assert_eq!(raw.read_response().await.body, b"app");
    proxy.settled("app").await;
}

#[tokio::test]
async fn a_response_without_length_closes_the_client_connection() {
    let (backend, proxy) = scripted().await;
    let script = tokio::spawn(async move {
        let mut conn = backend.accept().await;
        read_request(&mut conn).await.unwrap();
        reply(&mut conn, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end").await;
    });
    let mut raw = Raw::connect(proxy.addr).await;
    raw.send(GET).await;
    let head = raw.read_head().await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("connection"), Some("close"));
    assert_eq!(head.header("content-length"), None);
    within("the script", script).await.unwrap();
    assert_eq!(raw.read_to_end().await, b"until the end");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let app = TestBackend::start("app").await;
    let proxy = TestProxy::start(routes(&[("app.localhost", &[&app])])).await;
    let mut raw = Raw::connect(proxy.addr).await;
    raw.send(
        b"GET /?i=1 HTTP/1.1\r\nHost: app.localhost\r\n\r\n\
          GET /missing HTTP/1.1\r\nHost: app.localhost\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 4\r\n\r\nping\
          GET /?i=4 HTTP/1.1\r\nHost: nowhere.localhost\r\n\r\n\
          GET /?i=5 HTTP/1.1\r\nHost: app.localhost\r\n\r\n",
    )
    .await;
    let mut answers = Vec::new();
    for _ in 0..5 {
        let response = raw.read_response().await;
        answers.push((response.status, String::from_utf8(response.body).unwrap()));
    }
    assert_eq!(answers[0], (200, "app".to_owned()));
    assert_eq!(answers[1], (404, "the app has no such page".to_owned()));
    assert_eq!(answers[2], (200, "ping".to_owned()));
    assert_eq!(answers[3].0, 404);
    assert!(answers[3].1.starts_with("proxy.unknown_host"), "{}", answers[3].1);
    assert_eq!(answers[4], (200, "app".to_owned()));
}

#[tokio::test]
async fn a_request_with_both_lengths_is_not_forwarded_as_is() {
    let (backend, proxy) = scripted().await;
    let script = tokio::spawn(async move {
        let mut conn = backend.accept().await;
        let head = read_request(&mut conn).await.unwrap();
        let mut body = [0; 5];
        conn.read_exact(&mut body).await.unwrap();
        answer(&mut conn, "ok").await;
        (head.to_ascii_lowercase(), body)
    });
    let mut raw = Raw::connect(proxy.addr).await;
    // A smuggling attempt: the chunked body ends at once, and "GET /smuggled" would be a
    // second request to whoever trusts Content-Length.
    raw.send(
        b"POST / HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 33\r\nTransfer-Encoding: chunked\r\n\r\n\
          0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
    )
    .await;
    // hyper's treatment: chunked wins and Content-Length is dropped...
    assert_eq!(raw.read_response().await.body, b"ok");
    let (head, body) = within("the script", script).await.unwrap();
    assert!(head.contains("transfer-encoding: chunked") && !head.contains("content-length"), "{head}");
    assert_eq!(&body, b"0\r\n\r\n");
    // ... and hyper closes a connection whose framing was this odd: "GET /smuggled" is
    // never served.
    assert_eq!(raw.read_to_end().await, b"");
}

#[tokio::test]
async fn a_head_response_has_no_body_whatever_its_length_says() {
    let (backend, proxy) = scripted().await;
    let script = tokio::spawn(async move {
        let mut conn = backend.accept().await;
        assert!(read_request(&mut conn).await.unwrap().starts_with("HEAD / "));
        reply(&mut conn, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n").await;
        assert!(read_request(&mut conn).await.unwrap().starts_with("GET / "));
        reply(&mut conn, b"HTTP/1.1 204 No Content\r\n\r\n").await;
        read_request(&mut conn).await.unwrap();
        answer(&mut conn, "ok").await;
    });
    let mut raw = Raw::connect(proxy.addr).await;
    raw.send(b"HEAD / HTTP/1.1\r\nHost: app.localhost\r\n\r\n").await;
    let head = raw.read_head().await;
    assert_eq!((head.status, head.header("content-length")), (200, Some("100")));
    raw.send(GET).await;
    assert_eq!(raw.read_head().await.status, 204);
    raw.send(GET).await;
    assert_eq!(raw.read_response().await.body, b"ok");
    within("the script", script).await.unwrap();
}

/// A backend whose first connection answers one request, then reads the next and closes
/// without a word; a second connection, if `retried`, answers.
async fn closes_after_one(backend: Scripted, retried: bool) -> Vec<String> {
    let mut conn = backend.accept().await;
    read_request(&mut conn).await.unwrap();
    answer(&mut conn, "one").await;
    let mut seen = vec![read_request(&mut conn).await.unwrap()];
    drop(conn);
    if !retried {
        return seen;
    }
    let mut conn = backend.accept().await;
    if let Some(request) = read_request(&mut conn).await {
        seen.push(request);
        answer(&mut conn, "two").await;
    }
    seen
}

#[tokio::test]
async fn a_get_on_a_pooled_connection_that_closed_is_sent_again() {
    let (backend, proxy) = scripted().await;
    let script = tokio::spawn(closes_after_one(backend, true));
    let mut raw = Raw::connect(proxy.addr).await;
    raw.send(GET).await;
    assert_eq!(raw.read_response().await.body, b"one");
    raw.send(GET).await;
    let response = raw.read_response().await;
    assert_eq!((response.status, response.body.as_slice()), (200, &b"two"[..]));
    let seen = within("the script", script).await.unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    proxy.settled("raw").await;
}

#[tokio::test]
async fn a_post_on_a_pooled_connection_that_closed_gets_502() {
    let (backend, proxy) = scripted().await;
    let script = tokio::spawn(closes_after_one(backend, false));
    let mut raw = Raw::connect(proxy.addr).await;
    raw.send(GET).await;
    assert_eq!(raw.read_response().await.body, b"one");
    raw.send(b"POST / HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 4\r\n\r\nonce").await;
    let response = raw.read_response().await;
    assert_eq!(response.status, 502);
    assert_eq!(response.header("x-plinth-error"), Some("proxy.bad_gateway"));
    // The POST was sent once, never again.
    let seen = within("the script", script).await.unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].ends_with("once"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_request_body_is_not_counted() {
    let (backend, proxy) = scripted().await;
    let (got_head_tx, got_head) = oneshot::channel();
    tokio::spawn(async move {
        let mut conn = backend.accept().await;
        let mut line = String::new();
        conn.read_line(&mut line).await.unwrap();
        let _ = got_head_tx.send(line);
        // Reads on until the proxy closes the connection.
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest).await;
    });
    let mut raw = Raw::connect(proxy.addr).await;
    raw.send(b"POST /upload HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 1000000\r\n\r\nonly this").await;
    assert_eq!(within("the request to reach the backend", got_head).await.unwrap(), "POST /upload HTTP/1.1\r\n");
    assert_eq!(proxy.proxy.in_flight("raw"), 1);
    drop(raw);
    let drained = proxy.proxy.drained("raw", Duration::from_secs(10));
    assert_eq!(within("the abandoned request to end", drained).await, Drained::Done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_after_plain_requests_goes_to_hyper_with_its_bytes() {
    let app = TestBackend::start("app").await;
    let proxy = TestProxy::start(routes(&[("app.localhost", &[&app])])).await;
    let mut raw = Raw::connect(proxy.addr).await;
    raw.send(GET).await;
    assert_eq!(raw.read_response().await.body, b"app");
    // The upgrade and the first tunnelled bytes in one write: all of it must reach hyper.
    raw.send(b"GET /chat HTTP/1.1\r\nHost: app.localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nping").await;
    let head = raw.read_head().await;
    assert_eq!(head.status, 101, "{head:?}");
    assert_eq!(raw.read_exact(4).await, b"ping");
    raw.send(b"pong").await;
    assert_eq!(raw.read_exact(4).await, b"pong");
    assert_eq!(proxy.proxy.in_flight("app"), 1);
}

#[tokio::test]
async fn each_worker_reuses_only_the_backend_connections_it_opened() {
    let (backend, table) = Scripted::start().await;
    let config = ProxyConfig { workers: 2, ..ProxyConfig::default() };
    let proxy = TestProxy::with_config(config, table).await;
    let script = tokio::spawn(async move {
        let mut first = backend.accept().await;
        let mut seen = vec![request_line(&mut first).await];
        answer(&mut first, "a").await;
        // The second client is on the other worker, whose pool is empty: a new connection,
        // although the first one is idle.
        let mut second = backend.accept().await;
        seen.push(request_line(&mut second).await);
        answer(&mut second, "b").await;
        seen.push(request_line(&mut first).await);
        answer(&mut first, "a").await;
        seen.push(request_line(&mut second).await);
        answer(&mut second, "b").await;
        seen
    });
    // Connected one after the other, so that each worker has one (the fewest goes first).
    let mut clients = [Raw::connect(proxy.addr).await, Raw::connect(proxy.addr).await];
    for (client, path) in [(0, "a"), (1, "b"), (0, "a"), (1, "b")] {
        let client = &mut clients[client];
        client.send(format!("GET /{path} HTTP/1.1\r\nHost: app.localhost\r\n\r\n").as_bytes()).await;
        assert_eq!(client.read_response().await.body, path.as_bytes());
    }
    let seen = within("the script", script).await.unwrap();
    let [first_a, first_b, second_a, second_b] = seen.try_into().unwrap();
    assert_eq!(
        [first_a, second_a, first_b, second_b].map(Option::unwrap_or_default),
        ["GET /a HTTP/1.1", "GET /a HTTP/1.1", "GET /b HTTP/1.1", "GET /b HTTP/1.1"]
    );
}

#[tokio::test]
async fn a_dropped_serve_stops_its_workers_and_closes_their_connections() {
    let (backend, mut proxy) = scripted().await;
    let script = tokio::spawn(async move {
        let mut conn = backend.accept().await;
        let first = request_line(&mut conn).await;
        answer(&mut conn, "ok").await;
        // Idle in the worker's pool until the worker stops, which closes it.
        (first, request_line(&mut conn).await)
    });
    let mut raw = Raw::connect(proxy.addr).await;
    raw.send(GET).await;
    assert_eq!(raw.read_response().await.body, b"ok");

    proxy.served().abort();
    // The idle client connection closes, and so does the pooled backend connection.
    assert_eq!(within("the idle client connection to close", raw.read_to_end()).await, b"");
    let (first, after) = within("the script", script).await.unwrap();
    assert_eq!((first.as_deref(), after), (Some("GET / HTTP/1.1"), None));
}

#[tokio::test]
async fn without_workers_the_callers_runtime_serves_keep_alive_and_shuts_down() {
    let (backend, table) = Scripted::start().await;
    let config = ProxyConfig { workers: 0, ..ProxyConfig::default() };
    let mut proxy = TestProxy::with_config(config, table).await;
    let script = tokio::spawn(async move {
        let mut conn = backend.accept().await;
        let mut seen = Vec::new();
        for body in ["one", "two"] {
            seen.push(request_line(&mut conn).await);
            answer(&mut conn, body).await;
        }
        // The shutdown closes the pooled connection.
        seen.push(request_line(&mut conn).await);
        seen
    });
    let mut raw = Raw::connect(proxy.addr).await;
    for body in ["one", "two"] {
        raw.send(GET).await;
        assert_eq!(raw.read_response().await.body, body.as_bytes());
    }
    proxy.shut_down();
    proxy.stopped().await.unwrap();
    let seen = within("the script", script).await.unwrap();
    assert_eq!(seen, [Some("GET / HTTP/1.1".to_owned()), Some("GET / HTTP/1.1".to_owned()), None]);
}
