//! [`LocalCa`]: the CA plinth makes in its data dir, and the certificates it issues per host,
//! kept in memory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType,
};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use zeroize::Zeroizing;

use super::{CaError, der, files};
use crate::lock;
use crate::routes::normalize_host;

/// The CA certificate's file in the CA's directory (PEM, mode 0644).
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA private key's file in the CA's directory (PEM, mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// How long the CA is valid: about ten years, since every client that trusts it has to be set
/// up again when it changes.
const CA_VALIDITY: Duration = Duration::from_secs(3653 * 24 * 60 * 60);
/// How long a host's certificate is valid. Short, as ACME's are: it only lives in memory, and
/// a new one costs a key generation and a signature.
pub const CERTIFICATE_VALIDITY: Duration = Duration::from_secs(90 * 24 * 60 * 60);
/// A cached certificate with less than this left is issued again.
pub const RENEW_BEFORE: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Certificates start this long before they are made, so that a client whose clock is a little
/// behind accepts them.
const BACKDATE: Duration = Duration::from_secs(60 * 60);
/// At most this many certificates are kept. A `*.suffix` route matches any number of hosts;
/// past this the one that expires first makes room.
pub const MAX_CACHED_CERTIFICATES: usize = 1024;
/// TLS sessions kept for resumption, shared by every host.
const SESSION_CACHE: usize = 4096;
/// The only application protocol the proxy speaks.
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The local certificate authority: `ca.pem` and `ca.key` in one directory, made on first use,
/// and the certificates it issued per host, in memory.
///
/// The CA is ECDSA P-256, valid for ten years, may sign end-entity certificates only (path
/// length 0) and may sign nothing but certificates and CRLs. Each host's certificate is ECDSA
/// P-256 too, names that host alone, is for TLS servers only, and is valid for
/// [`CERTIFICATE_VALIDITY`]; it is issued again when less than [`RENEW_BEFORE`] is left.
///
/// The key never leaves the directory: nothing here returns or prints it.
pub struct LocalCa {
    cert_path: PathBuf,
    key_path: PathBuf,
    pem: String,
    der: CertificateDer<'static>,
    common_name: String,
    created: bool,
    issuer: Issuer<'static, KeyPair>,
    provider: Arc<CryptoProvider>,
    sessions: Arc<dyn StoresServerSessions>,
    /// Ends every handshake with an alert: for hosts that get no certificate.
    refuse: Arc<ServerConfig>,
    issued: Mutex<HashMap<String, Arc<HostCertificate>>>,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("common_name", &self.common_name)
            .field("created", &self.created)
            .field("issued", &lock(&self.issued).len())
            .finish_non_exhaustive()
    }
}

/// A host's certificate and key, and the TLS server configuration that presents them.
#[derive(Debug)]
pub struct HostCertificate {
    host: String,
    key: Arc<CertifiedKey>,
    config: Arc<ServerConfig>,
    not_after: SystemTime,
}

impl HostCertificate {
    /// The host the certificate names.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The certificate (first in its chain) and its key.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.key
    }

    /// The certificate, DER.
    pub fn certificate_der(&self) -> &CertificateDer<'static> {
        &self.key.cert[0]
    }

    /// A TLS server configuration presenting this certificate, with ALPN `http/1.1`.
    pub fn server_config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    /// When the certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Whether it has more than [`RENEW_BEFORE`] left at `now`.
    fn fresh(&self, now: SystemTime) -> bool {
        now.checked_add(RENEW_BEFORE).is_some_and(|renew| renew < self.not_after)
    }
}

impl LocalCa {
    /// Opens the CA in `dir` (`ca.pem` and `ca.key`), creating the directory (mode 0700) and
    /// the CA if there is none. The key file is created with mode 0600 and refused later if
    /// group or others may read it. A certificate whose key is missing is refused (clients may
    /// trust it; a new CA would need trusting again); a key whose certificate is missing gets a
    /// new certificate for the same key. Blocks: file I/O and, the first time, a key generation.
    pub fn open_or_create(dir: &Path) -> Result<Self, CaError> {
        files::create_dir(dir)?;
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let key_pem = match files::read_key(&key_path)? {
            Some(pem) => pem,
            None => {
                if std::fs::symlink_metadata(&cert_path).is_ok() {
                    return Err(CaError::KeyMissing { key: key_path, cert: cert_path });
                }
                let pem = Zeroizing::new(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?.serialize_pem());
                if files::create(&key_path, pem.as_bytes(), 0o600)? {
                    pem
                } else {
                    // Another process made it first; use that one.
                    files::read_key(&key_path)?.ok_or_else(|| CaError::Unreadable {
                        path: key_path.clone(),
                        source: std::io::ErrorKind::NotFound.into(),
                    })?
                }
            }
        };
        let malformed = |reason| CaError::Malformed { path: key_path.clone(), reason };
        let key = KeyPair::from_pem(&key_pem).map_err(|_| malformed("it is not a PEM private key"))?;
        drop(key_pem);
        if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(malformed("it is not an ECDSA P-256 key"));
        }

        let (pem, created) = match files::read_cert(&cert_path)? {
            Some(pem) => (pem, false),
            None => {
                let pem = ca_params(&common_name_for(dir), SystemTime::now()).self_signed(&key)?.pem();
                if files::create(&cert_path, pem.as_bytes(), 0o644)? {
                    (pem, true)
                } else {
                    let pem = files::read_cert(&cert_path)?.ok_or_else(|| CaError::Unreadable {
                        path: cert_path.clone(),
                        source: std::io::ErrorKind::NotFound.into(),
                    })?;
                    (pem, false)
                }
            }
        };
        let malformed = |reason| CaError::Malformed { path: cert_path.clone(), reason };
        let der =
            CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|_| malformed("it is not a PEM certificate"))?;
        let parts = der::certificate(&der).map_err(malformed)?;
        if parts.public_key_info != key.subject_public_key_info().as_slice() {
            return Err(CaError::KeyMismatch { key: key_path, cert: cert_path });
        }
        let subject = der::name(parts.subject).map_err(malformed)?;
        let common_name = match subject.get(&DnType::CommonName) {
            Some(DnValue::Utf8String(name)) => name.clone(),
            Some(DnValue::PrintableString(name)) => name.as_str().to_owned(),
            _ => String::new(),
        };
        // Certificates name the CA's subject as their issuer, exactly as it is encoded in
        // ca.pem, and carry its key identifier (the default, from its public key).
        let mut params = CertificateParams::default();
        params.distinguished_name = subject;
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = Issuer::new(params, key);

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let sessions: Arc<dyn StoresServerSessions> = ServerSessionMemoryCache::new(SESSION_CACHE);
        let refuse = server_config(&provider, &sessions, Arc::new(Refuse))?;
        Ok(LocalCa {
            der: der.into_owned(),
            cert_path,
            key_path,
            pem,
            common_name,
            created,
            issuer,
            provider,
            sessions,
            refuse,
            issued: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate, PEM, as in `ca.pem`: what clients are told to trust.
    pub fn certificate_pem(&self) -> &str {
        &self.pem
    }

    /// The CA certificate, DER.
    pub fn certificate_der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// `ca.pem`'s path.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// `ca.key`'s path.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// The CA's common name, such as `plinth local CA (build-01)`.
    pub fn common_name(&self) -> &str {
        &self.common_name
    }

    /// Whether this open created the CA certificate (clients have to be told to trust it).
    pub fn created(&self) -> bool {
        self.created
    }

    /// The certificate for `host` if one is cached with more than [`RENEW_BEFORE`] left. Cheap:
    /// a map lookup under a lock held for nothing else.
    pub fn cached(&self, host: &str) -> Option<Arc<HostCertificate>> {
        self.cached_at(host, SystemTime::now())
    }

    fn cached_at(&self, host: &str, now: SystemTime) -> Option<Arc<HostCertificate>> {
        lock(&self.issued).get(normalize_host(host).as_ref()).filter(|c| c.fresh(now)).cloned()
    }

    /// The certificate for `host`: the cached one if it has more than [`RENEW_BEFORE`] left,
    /// else a new one, which replaces it in the cache. Blocks while it generates a key and
    /// signs (well under a millisecond, but not for an async task: use `spawn_blocking`).
    ///
    /// It issues for any DNS name it is given: the caller decides who deserves one. The proxy
    /// asks only for the hosts it routes.
    pub fn certificate_for(&self, host: &str) -> Result<Arc<HostCertificate>, CaError> {
        self.certificate_at(host, SystemTime::now())
    }

    fn certificate_at(&self, host: &str, now: SystemTime) -> Result<Arc<HostCertificate>, CaError> {
        let host = normalize_host(host).into_owned();
        if DnsName::try_from(host.as_str()).is_err() || host.starts_with('[') {
            return Err(CaError::InvalidHost { host });
        }
        if let Some(cached) = self.cached_at(&host, now) {
            return Ok(cached);
        }
        let issued = Arc::new(self.issue(host.clone(), now)?);
        let mut cache = lock(&self.issued);
        // Another handshake may have issued one meanwhile: both get the same.
        if let Some(other) = cache.get(&host).filter(|c| c.fresh(now)) {
            return Ok(Arc::clone(other));
        }
        if cache.len() >= MAX_CACHED_CERTIFICATES && !cache.contains_key(&host) {
            let first_to_expire = cache.iter().min_by_key(|(_, c)| c.not_after).map(|(h, _)| h.clone());
            if let Some(evicted) = first_to_expire {
                cache.remove(&evicted);
            }
        }
        cache.insert(host.clone(), Arc::clone(&issued));
        drop(cache);
        tracing::info!(%host, "Issued a certificate from the local CA.");
        Ok(issued)
    }

    /// The hosts with a certificate in the cache, sorted.
    pub fn issued_hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = lock(&self.issued).keys().cloned().collect();
        hosts.sort();
        hosts
    }

    /// A configuration that ends every handshake with an alert.
    pub(crate) fn refusing_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.refuse)
    }

    fn issue(&self, host: String, now: SystemTime) -> Result<HostCertificate, CaError> {
        let invalid = |_| CaError::InvalidHost { host: host.clone() };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::DnsName(host.as_str().try_into().map_err(invalid)?)];
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, host.as_str());
        params.distinguished_name = subject;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let not_after = now + CERTIFICATE_VALIDITY;
        set_validity(&mut params, now.checked_sub(BACKDATE).unwrap_or(now), not_after);
        let cert = params.signed_by(&key, &self.issuer)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let certified = Arc::new(CertifiedKey::from_der(vec![cert.der().clone()], key_der, &self.provider)?);
        let config =
            server_config(&self.provider, &self.sessions, Arc::new(SingleCertAndKey::from(Arc::clone(&certified))))?;
        Ok(HostCertificate { host, key: certified, config, not_after })
    }
}

/// The CA certificate's parameters.
fn ca_params(common_name: &str, now: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut subject = DistinguishedName::new();
    subject.push(DnType::OrganizationName, "plinth");
    subject.push(DnType::CommonName, common_name);
    params.distinguished_name = subject;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, now.checked_sub(DAY).unwrap_or(now), now + CA_VALIDITY);
    params
}

/// `plinth local CA (<host name>)`, or the directory when the host name cannot be had, so that
/// a user who trusts CAs of several machines can tell them apart.
fn common_name_for(dir: &Path) -> String {
    let uname = rustix::system::uname();
    let label = match uname.nodename().to_str() {
        Ok(name) if !name.is_empty() && name != "(none)" => name.to_owned(),
        _ => dir.display().to_string(),
    };
    // X.520 caps a common name at 64 characters; the rest of it takes 18.
    let label: String = label.chars().take(46).collect();
    format!("plinth local CA ({label})")
}

/// Sets the validity of a certificate, in whole seconds.
fn set_validity(params: &mut CertificateParams, from: SystemTime, until: SystemTime) {
    let since_epoch = |at: SystemTime| Duration::from_secs(at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()));
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + since_epoch(from);
    params.not_after = epoch + since_epoch(until);
}

/// A TLS server configuration with ring, TLS 1.2 and 1.3, ALPN `http/1.1`, and the shared
/// session cache.
fn server_config(
    provider: &Arc<CryptoProvider>,
    sessions: &Arc<dyn StoresServerSessions>,
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<ServerConfig>, CaError> {
    let mut config = ServerConfig::builder_with_provider(Arc::clone(provider))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    config.session_storage = Arc::clone(sessions);
    Ok(Arc::new(config))
}

/// Resolves no certificate, so the handshake ends with an alert.
#[derive(Debug)]
struct Refuse;

impl ResolvesServerCert for Refuse {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use plinth_core::ErrorCode;

    use super::*;

    fn open(dir: &Path) -> LocalCa {
        LocalCa::open_or_create(dir).expect("the CA opens")
    }

    #[test]
    fn a_certificate_is_cached_until_a_week_before_it_expires() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let ca = open(dir.path());
        let now = SystemTime::now();
        let first = ca.certificate_at("App.Localhost.", now).expect("issued");
        assert_eq!(first.host(), "app.localhost");
        assert_eq!(first.not_after(), now + CERTIFICATE_VALIDITY);
        let later = now + CERTIFICATE_VALIDITY - RENEW_BEFORE - DAY;
        let same = ca.certificate_at("app.localhost", later).expect("cached");
        assert!(Arc::ptr_eq(&first, &same));
        let renewal = now + CERTIFICATE_VALIDITY - RENEW_BEFORE + DAY;
        let renewed = ca.certificate_at("app.localhost", renewal).expect("issued again");
        assert!(!Arc::ptr_eq(&first, &renewed));
        assert_ne!(first.certificate_der(), renewed.certificate_der());
        assert_eq!(ca.issued_hosts(), ["app.localhost"]);
    }

    #[test]
    fn only_dns_names_get_certificates() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let ca = open(dir.path());
        for host in ["", "[::1]", "a b.localhost", "a..localhost", "*.review.localhost", "-"] {
            let error = ca.certificate_for(host).expect_err(host);
            assert_eq!(error.code(), "proxy.ca_invalid_host", "{host}");
        }
        assert!(ca.issued_hosts().is_empty());
    }

    #[test]
    fn a_certificate_without_its_key_is_refused_and_a_key_without_its_certificate_gets_one() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let first = open(dir.path());
        let pem = first.certificate_pem().to_owned();
        drop(first);

        // The key is gone: a new CA would need trusting again, so nothing is made.
        let key = std::fs::read(dir.path().join(CA_KEY_FILE)).expect("the key");
        std::fs::remove_file(dir.path().join(CA_KEY_FILE)).expect("removed");
        let error = LocalCa::open_or_create(dir.path()).expect_err("no key");
        assert_eq!(error.code(), "proxy.ca_key_missing");
        assert_eq!(std::fs::read_to_string(dir.path().join(CA_CERT_FILE)).expect("kept"), pem);

        // Another CA's key does not pass for this one's.
        let other = tempfile::tempdir().expect("a temp dir");
        drop(open(other.path()));
        std::fs::copy(other.path().join(CA_KEY_FILE), dir.path().join(CA_KEY_FILE)).expect("copied");
        let error = LocalCa::open_or_create(dir.path()).expect_err("not its key");
        assert_eq!(error.code(), "proxy.ca_key_mismatch");

        // The right key without a certificate gets a new certificate for the same key.
        std::fs::write(dir.path().join(CA_KEY_FILE), &key).expect("restored");
        std::fs::remove_file(dir.path().join(CA_CERT_FILE)).expect("removed");
        let again = open(dir.path());
        assert!(again.created());
        let old = CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM");
        let old = der::certificate(&old).expect("parts").public_key_info.to_vec();
        assert_eq!(der::certificate(again.certificate_der()).expect("parts").public_key_info, old.as_slice());
    }

    #[test]
    fn damaged_files_are_refused_with_their_path() {
        let dir = tempfile::tempdir().expect("a temp dir");
        drop(open(dir.path()));
        std::fs::write(dir.path().join(CA_CERT_FILE), "not a certificate").expect("written");
        let error = LocalCa::open_or_create(dir.path()).expect_err("damaged");
        assert_eq!(error.code(), "proxy.ca_malformed");
        assert!(error.to_string().contains(CA_CERT_FILE), "{error}");

        let key = dir.path().join(CA_KEY_FILE);
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").expect("written");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let error = LocalCa::open_or_create(dir.path()).expect_err("damaged");
        assert_eq!(error.code(), "proxy.ca_malformed");
        assert!(!error.to_string().contains("AAAA"), "the key's content never shows: {error}");
    }

    #[test]
    fn the_common_name_fits_x520() {
        let long = Path::new("/a/very/long/data/dir/that/goes/on/and/on/and/on/for/more/than/sixty-four/characters");
        let name = common_name_for(long);
        assert!(name.starts_with("plinth local CA (") && name.ends_with(')'), "{name}");
        assert!(name.chars().count() <= 64, "{name}");
    }
}
