//! HTTPS end to end: `plinth server --tls-listen`, `plinth ca export` (from the API and from the
//! data dir) printing a PEM certificate and nothing else on stdout, and a request to a deployed
//! service through the TLS listener from a client that trusts that certificate alone.

use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::deploy::{ended, publish_to, setup_on};
use crate::server::{Server, output_of, plinth_command, watched_repo};

const CONFIG: &str = r#"main_branch = "main"

[environments.stg]
branches = ["main"]

[services.api]
containers = ["app"]
command = ["plinth", "demo-app", "--port", "{port}", "--version", "{image.app}"]
count = 1
health = { path = "/healthz", interval = "100ms", timeout = "500ms", healthy = 1, unhealthy = 2 }
hosts = ["api.{env}.localhost"]
"#;

#[test]
fn ca_export_prints_the_certificate_the_proxy_serves_https_with() {
    let (server, ci) = setup_on(Server::start_tls(watched_repo()), |_| CONFIG.to_owned());

    let exported = server.admin(&["ca", "export"]).success();
    let pem = exported.stdout.clone();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"), "{pem}");
    assert!(pem.ends_with("-----END CERTIFICATE-----\n"), "stdout is the PEM alone:\n{pem}");
    assert_eq!(exported.stderr, "", "the instructions are for a terminal only");
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    RootCertStore::empty().add(der).expect("the certificate parses as a trust anchor");

    // The same file, read on the server's machine without a token.
    let data_dir = server.data_dir().display().to_string();
    let local = output_of(plinth_command(None, None, &["ca", "export", "--data-dir", &data_dir])).success();
    assert_eq!(local.stdout, pem);

    let deployed = publish_to(&server, &ci, "stg", "v1");
    let d = ended(&server, deployed);
    assert_eq!(d["deployment"]["status"], "succeeded", "{d:#}");
    let tls: std::net::SocketAddr = server.tls.as_deref().unwrap().parse().unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::blocking::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()])
        .resolve("api.stg.localhost", tls)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let response = client.get(format!("https://api.stg.localhost:{}/", tls.port())).send().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().unwrap().trim(), "v1");

    // A host nobody routes gets no certificate: the handshake fails.
    let other = reqwest::blocking::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()])
        .resolve("nobody.localhost", tls)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    other.get(format!("https://nobody.localhost:{}/", tls.port())).send().unwrap_err();
}

#[test]
fn without_tls_there_is_no_ca_to_export() {
    let server = Server::start(watched_repo());
    let run = server.admin(&["ca", "export"]).failure();
    assert!(run.stderr.contains("error[ca.not_created]"), "{}", run.stderr);
    assert!(run.stderr.contains("--tls-listen"), "{}", run.stderr);
    assert_eq!(run.stdout, "");

    let data_dir = server.data_dir().display().to_string();
    let local = output_of(plinth_command(None, None, &["ca", "export", "--data-dir", &data_dir])).failure();
    assert!(local.stderr.contains("error[ca.not_created]"), "{}", local.stderr);
    assert_eq!(local.stdout, "");
}
