//! What can go wrong with the local CA. No message carries key material or the content of the
//! key file: only paths and what is wrong.

use std::io;
use std::path::PathBuf;

use plinth_core::ErrorCode;

/// Why the local CA could not be opened or created, or a certificate not issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    #[error("CA file `{}` could not be read: {source}", path.display())]
    Unreadable { path: PathBuf, source: io::Error },
    #[error("CA file `{}` could not be written: {source}", path.display())]
    Unwritable { path: PathBuf, source: io::Error },
    #[error("CA file `{}` is malformed: {reason}", path.display())]
    Malformed { path: PathBuf, reason: &'static str },
    #[error("CA key file `{}` is open to group or others (mode {mode:03o})", path.display())]
    KeyTooOpen { path: PathBuf, mode: u32 },
    #[error("CA key file `{}` is missing, but the CA certificate `{}` is there", key.display(), cert.display())]
    KeyMissing { key: PathBuf, cert: PathBuf },
    #[error("CA key file `{}` does not belong to the CA certificate `{}`", key.display(), cert.display())]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("`{host}` is not a DNS name a certificate can be issued for")]
    InvalidHost { host: String },
    #[error("a certificate could not be made: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS could not be set up: {0}")]
    Tls(#[from] rustls::Error),
}

impl ErrorCode for CaError {
    fn code(&self) -> &'static str {
        match self {
            CaError::Unreadable { .. } => "proxy.ca_unreadable",
            CaError::Unwritable { .. } => "proxy.ca_unwritable",
            CaError::Malformed { .. } => "proxy.ca_malformed",
            CaError::KeyTooOpen { .. } => "proxy.ca_key_too_open",
            CaError::KeyMissing { .. } => "proxy.ca_key_missing",
            CaError::KeyMismatch { .. } => "proxy.ca_key_mismatch",
            CaError::InvalidHost { .. } => "proxy.ca_invalid_host",
            CaError::Generate(_) | CaError::Tls(_) => "proxy.ca_failed",
        }
    }

    fn http_status(&self) -> u16 {
        match self {
            CaError::InvalidHost { .. } => 422,
            _ => 500,
        }
    }

    fn help(&self) -> String {
        match self {
            CaError::Unreadable { .. } => "Check that the data dir's `ca` directory is readable by the server's user.".into(),
            CaError::Unwritable { .. } => {
                "Check that the data dir is writable by the server's user and the disk is not full.".into()
            }
            CaError::Malformed { .. } | CaError::KeyMismatch { .. } => {
                "Restore `ca.pem` and `ca.key` from a backup, or delete both to create a new CA (clients then have to trust the new one: `plinth ca export`)."
                    .into()
            }
            CaError::KeyTooOpen { path, .. } => {
                format!("Run `chmod 600 {}` so that only the server's user can read the CA key.", path.display())
            }
            CaError::KeyMissing { .. } => {
                "Restore `ca.key` from a backup, or delete `ca.pem` too to create a new CA (clients then have to trust the new one: `plinth ca export`)."
                    .into()
            }
            CaError::InvalidHost { .. } => "Use a host name such as `app.localhost`.".into(),
            CaError::Generate(_) | CaError::Tls(_) => "This is a bug in plinth; please report it with the server's log.".into(),
        }
    }
}
