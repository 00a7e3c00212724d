//! HTTPS: the proxy ends TLS with certificates its local CA issues per routed host, cached;
//! hosts it does not route get no certificate; the CA's files are made once, the key 0600.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use plinth_core::ErrorCode;
use plinth_proxy::{CA_CERT_FILE, CA_KEY_FILE, LocalCa, ProxyConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::support::{TestBackend, TestProxy, TlsClient, ca_in, routes, within};

#[tokio::test]
async fn a_routed_host_is_served_over_https_with_a_cached_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_in(dir.path());
    let api = TestBackend::start("api").await;
    let proxy = TestProxy::start_tls(routes(&[("api.stg.localhost", &[&api])]), ca.clone()).await;
    assert!(ca.issued_hosts().is_empty(), "nothing is issued before a client asks");

    let client = TlsClient::trusting(ca.certificate_der(), &[b"h2", b"http/1.1"]);
    let stream = client.connect(proxy.addr, "api.stg.localhost").await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]), "the proxy speaks HTTP/1.1 only");
    drop(stream);

    let (reply, first) = client.get(proxy.addr, "api.stg.localhost", "/headers").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.backend(), "api");
    assert!(reply.text().lines().any(|l| l == "x-forwarded-proto: https"), "{}", reply.text());
    assert!(reply.text().lines().any(|l| l == "host: api.stg.localhost"), "{}", reply.text());

    let (reply, second) = client.get(proxy.addr, "API.stg.localhost", "/").await;
    assert_eq!((reply.status, reply.text()), (200, "api"));
    assert_eq!(first, second, "the certificate is issued once and cached");
    assert_eq!(ca.issued_hosts(), ["api.stg.localhost"]);
    assert_eq!(ca.cached("api.stg.localhost").unwrap().certificate_der(), &first);
}

#[tokio::test]
async fn a_wildcard_route_gets_a_certificate_per_host() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_in(dir.path());
    let review = TestBackend::start("review").await;
    let proxy = TestProxy::start_tls(routes(&[("*.review.localhost", &[&review])]), ca.clone()).await;
    let client = TlsClient::trusting(ca.certificate_der(), &[]);

    let (a, a_cert) = client.get(proxy.addr, "a.review.localhost", "/").await;
    let (b, b_cert) = client.get(proxy.addr, "b.deep.review.localhost", "/").await;
    assert_eq!((a.text(), b.text()), ("review", "review"));
    assert_ne!(a_cert, b_cert);
    assert_eq!(ca.issued_hosts(), ["a.review.localhost", "b.deep.review.localhost"]);
    // The suffix itself is no host of the route.
    assert!(client.connect(proxy.addr, "review.localhost").await.is_err());
    assert_eq!(ca.issued_hosts().len(), 2);
}

#[tokio::test]
async fn hosts_without_a_route_fail_the_handshake_and_get_no_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_in(dir.path());
    let api = TestBackend::start("api").await;
    let proxy = TestProxy::start_tls(routes(&[("api.stg.localhost", &[&api])]), ca.clone()).await;
    let client = TlsClient::trusting(ca.certificate_der(), &[]);

    let error = client.connect(proxy.addr, "other.localhost").await.unwrap_err();
    assert!(error.to_string().to_lowercase().contains("alert"), "the client is told with an alert: {error}");
    // An IP address is not sent as SNI: no server name, no certificate.
    client.connect(proxy.addr, "127.0.0.1").await.unwrap_err();
    // Not TLS at all.
    let mut plain = TcpStream::connect(proxy.addr).await.unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\nHost: api.stg.localhost\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    within("the proxy to close a plain connection", plain.read_to_end(&mut answer)).await.unwrap();
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
    assert!(ca.issued_hosts().is_empty(), "{:?}", ca.issued_hosts());

    // A host that gains a route gets its certificate from then on; one that loses it, not.
    proxy.proxy.update_routes(|t| t.insert("other.localhost", vec![api.backend()])).unwrap();
    let (reply, _) = client.get(proxy.addr, "other.localhost", "/").await;
    assert_eq!(reply.text(), "api");
    proxy.proxy.update_routes(|t| t.remove("other.localhost").map(drop).ok_or(())).unwrap();
    client.connect(proxy.addr, "other.localhost").await.unwrap_err();
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let config = ProxyConfig { tls_handshake_timeout: Duration::from_millis(200), ..ProxyConfig::default() };
    let proxy = TestProxy::with_tls_config(config, routes(&[]), ca_in(dir.path())).await;
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    let mut answer = Vec::new();
    within("the proxy to close a silent connection", silent.read_to_end(&mut answer)).await.unwrap();
    assert!(answer.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_connections_work_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_in(dir.path());
    let app = TestBackend::start("app").await;
    let proxy = TestProxy::start_tls(routes(&[("app.localhost", &[&app])]), ca.clone()).await;
    let client = TlsClient::trusting(ca.certificate_der(), &[b"http/1.1"]);

    let stream = client.connect(proxy.addr, "app.localhost").await.unwrap();
    let mut stream = BufReader::new(stream);
    stream
        .get_mut()
        .write_all(b"GET /chat HTTP/1.1\r\nHost: app.localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let head = within("the switch", async {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            if line.trim().is_empty() {
                return head;
            }
            head.push_str(&line);
        }
    })
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for message in [b"ping".to_vec(), vec![7; 100 * 1024]] {
        stream.get_mut().write_all(&message).await.unwrap();
        let mut echoed = vec![0; message.len()];
        within("the echo", stream.read_exact(&mut echoed)).await.unwrap();
        assert_eq!(echoed, message);
    }
    assert_eq!(proxy.proxy.in_flight("app"), 1);
}

#[tokio::test]
async fn the_ca_is_made_once_and_its_certificates_chain_to_it_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let first = LocalCa::open_or_create(&ca_dir).unwrap();
    assert!(first.created());
    let pem = first.certificate_pem().to_owned();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"), "{pem}");
    assert!(first.common_name().starts_with("plinth local CA ("), "{}", first.common_name());
    assert_eq!(std::fs::read_to_string(ca_dir.join(CA_CERT_FILE)).unwrap(), pem);
    let key_mode = std::fs::metadata(ca_dir.join(CA_KEY_FILE)).unwrap().permissions().mode() & 0o777;
    assert_eq!(key_mode, 0o600, "the key is the server user's alone");
    let dir_mode = std::fs::metadata(&ca_dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);
    let trusted = first.certificate_der().clone();
    drop(first);

    let reopened = ca_in(&ca_dir);
    assert!(!reopened.created());
    assert_eq!(reopened.certificate_pem(), pem, "the same CA, not a new one");
    let leftovers: Vec<_> = std::fs::read_dir(&ca_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 2, "no temporary files are left: {leftovers:?}");

    // Certificates from the reopened CA verify against the certificate clients trusted first.
    let api = TestBackend::start("api").await;
    let proxy = TestProxy::start_tls(routes(&[("api.stg.localhost", &[&api])]), reopened).await;
    let (reply, _) = TlsClient::trusting(&trusted, &[]).get(proxy.addr, "api.stg.localhost", "/").await;
    assert_eq!(reply.text(), "api");
}

#[tokio::test]
async fn a_key_file_others_can_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(LocalCa::open_or_create(dir.path()).unwrap());
    let key = dir.path().join(CA_KEY_FILE);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();

    let error = LocalCa::open_or_create(dir.path()).unwrap_err();
    assert_eq!(error.code(), "proxy.ca_key_too_open");
    assert!(error.help().contains(&format!("chmod 600 {}", key.display())), "{}", error.help());
    assert!(error.to_string().contains("644"), "{error}");

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    LocalCa::open_or_create(dir.path()).unwrap();
}
