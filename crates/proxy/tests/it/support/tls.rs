//! A TLS client that trusts the local CA's certificate and nothing else, with rustls and ring.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use http_body_util::Empty;
use hyper::Request;
use hyper::body::Bytes;
use hyper::header::HOST;
use hyper_util::rt::TokioIo;
use plinth_proxy::LocalCa;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{Reply, within};

/// Opens (or creates) the CA in `dir`, shared.
pub fn ca_in(dir: &Path) -> Arc<LocalCa> {
    Arc::new(LocalCa::open_or_create(dir).unwrap())
}

/// Connects over TLS to a proxy, trusting one CA certificate.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient").finish_non_exhaustive()
    }
}

impl TlsClient {
    /// A client trusting `ca` only, offering `alpn` (none if empty).
    pub fn trusting(ca: &CertificateDer<'static>, alpn: &[&[u8]]) -> Self {
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Self { connector: TlsConnector::from(Arc::new(config)) }
    }

    /// A TLS connection to `addr`, naming `server` (a DNS name is sent as SNI; an IP address
    /// is not).
    pub async fn connect(&self, addr: SocketAddr, server: &str) -> std::io::Result<TlsStream<TcpStream>> {
        let name = ServerName::try_from(server.to_owned()).unwrap();
        let tcp = TcpStream::connect(addr).await?;
        within(&format!("a TLS handshake for {server}"), self.connector.connect(name, tcp)).await
    }

    /// One GET over a new TLS connection to `host`; the reply and the certificate the proxy
    /// presented.
    pub async fn get(&self, addr: SocketAddr, host: &str, path: &str) -> (Reply, CertificateDer<'static>) {
        let stream = self.connect(addr, host).await.unwrap();
        let certificate = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(connection);
        let req = Request::get(path).header(HOST, host).body(Empty::<Bytes>::new()).unwrap();
        let reply =
            within(&format!("GET https://{host}{path}"), async { Reply::read(sender.send_request(req).await?).await })
                .await
                .unwrap();
        (reply, certificate)
    }
}
