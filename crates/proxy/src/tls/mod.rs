//! HTTPS for the proxy (`--tls-listen`): TLS ends here, with certificates from a local CA that
//! plinth makes in its data dir.
//!
//! ```text
//! accept ─► read the ClientHello (LazyConfigAcceptor) ─► SNI routed? ──no──► alert, closed
//!                                                          │ yes
//!                       cached certificate? ──no──► issue it in spawn_blocking, cache it
//!                                │ yes                              │
//!                                ▼                                  ▼
//!              finish the handshake with that host's ServerConfig ─► the same HTTP/1.1 serving
//! ```
//!
//! - Only hosts the proxy routes get a certificate (an exact host, or one a `*.suffix` route
//!   matches, in the routes of the moment). Without that, any client could make plinth mint
//!   certificates without end. No SNI, or an unrouted one, ends the handshake with an alert.
//! - Issuing (a key generation and a signature) runs on the blocking pool, never on the async
//!   runtime; a cached certificate costs a map lookup.
//! - ALPN offers `http/1.1` only: the proxy speaks HTTP/1.1.
//! - The CA key stays in `ca.key` (mode 0600) and in this process's memory; nothing here
//!   returns, logs or serves it.

mod ca;
mod der;
mod error;
mod files;

use std::sync::Arc;

use rustls::server::Acceptor;
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use crate::Inner;
use crate::routes::normalize_host;

pub use ca::{
    CA_CERT_FILE, CA_KEY_FILE, CERTIFICATE_VALIDITY, HostCertificate, LocalCa, MAX_CACHED_CERTIFICATES, RENEW_BEFORE,
};
pub use error::CaError;

/// Why a TLS handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error("the client sent no server name (SNI)")]
    NoServerName,
    #[error("no route serves `{0}`")]
    UnknownHost(String),
    #[error("no certificate could be issued for `{host}`: {reason}")]
    Issue { host: String, reason: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Reads the client's hello, picks (or issues) the certificate for the host it names, and
/// completes the handshake. Hosts that get no certificate get an alert.
pub(crate) async fn handshake(
    inner: &Inner,
    ca: &Arc<LocalCa>,
    stream: TcpStream,
) -> Result<TlsStream<TcpStream>, HandshakeError> {
    let start = LazyConfigAcceptor::new(Acceptor::default(), stream).await?;
    let host = start.client_hello().server_name().map(|name| normalize_host(name).into_owned());
    let chosen = match host {
        None => Err(HandshakeError::NoServerName),
        Some(host) if inner.active().table.position(&host).is_none() => Err(HandshakeError::UnknownHost(host)),
        Some(host) => match ca.cached(&host) {
            Some(certificate) => Ok(Arc::clone(certificate.server_config())),
            None => issue(ca, host).await,
        },
    };
    match chosen {
        Ok(config) => Ok(start.into_stream(config).await?),
        Err(refused) => {
            // The alert tells the client why the connection ends; what it answers is moot.
            let _ = start.into_stream(ca.refusing_config()).await;
            Err(refused)
        }
    }
}

/// Issues a host's certificate on the blocking pool.
async fn issue(ca: &Arc<LocalCa>, host: String) -> Result<Arc<rustls::ServerConfig>, HandshakeError> {
    let issuing = Arc::clone(ca);
    let name = host.clone();
    match tokio::task::spawn_blocking(move || issuing.certificate_for(&name)).await {
        Ok(Ok(certificate)) => Ok(Arc::clone(certificate.server_config())),
        Ok(Err(error)) => {
            tracing::warn!(%host, %error, "Could not issue a certificate.");
            Err(HandshakeError::Issue { host, reason: error.to_string() })
        }
        Err(error) => Err(HandshakeError::Issue { host, reason: error.to_string() }),
    }
}
