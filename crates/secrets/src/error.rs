//! What can go wrong with keys and sealed values. No message carries key material, plaintext
//! or the content of a key file: only paths, key ids and what is wrong.

use std::io;
use std::path::PathBuf;

use plinth_core::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("master key file `{}` could not be read: {source}", path.display())]
    KeyFileUnreadable { path: PathBuf, source: io::Error },
    #[error("master key file `{}` is malformed: {reason}", path.display())]
    KeyFileMalformed { path: PathBuf, reason: &'static str },
    #[error("master key file `{}` is open to group or others (mode {mode:03o})", path.display())]
    KeyFileTooOpen { path: PathBuf, mode: u32 },
    #[error("master key file `{}` could not be written: {source}", path.display())]
    KeyFileUnwritable { path: PathBuf, source: io::Error },
    #[error("directory `{}` for the master key file does not exist", dir.display())]
    KeyDirMissing { dir: PathBuf },
    #[error("master key file `{}` is missing, but `{}` of an unfinished rotation exists", path.display(), next.display())]
    KeyFileMissing { path: PathBuf, next: PathBuf },
    #[error("a master key rotation is already pending: `{}` exists", next.display())]
    RotationPending { next: PathBuf },
    #[error("no master key rotation is pending")]
    NoRotationPending,
    #[error("master key `{key_id}` is not loaded")]
    UnknownKey { key_id: String },
    #[error(
        "the secret could not be decrypted: its ciphertext or wrapped key does not match the master key `{key_id}`"
    )]
    Decrypt { key_id: String },
    #[error("the system's random number generator failed")]
    Random,
    #[error("the value is too large to encrypt")]
    TooLarge,
    #[error("sealed data is malformed: {reason}")]
    MalformedSealed { reason: &'static str },
    /// A key service (a KMS) failed to wrap or unwrap. For wrappers outside this crate.
    #[error("key service failed for master key `{key_id}`: {source}")]
    KeyService { key_id: String, source: Box<dyn std::error::Error + Send + Sync> },
}

impl ErrorCode for SecretsError {
    fn code(&self) -> &'static str {
        match self {
            SecretsError::KeyFileUnreadable { .. } => "secret.master_key_unreadable",
            SecretsError::KeyFileMalformed { .. } => "secret.master_key_malformed",
            SecretsError::KeyFileTooOpen { .. } => "secret.master_key_too_open",
            SecretsError::KeyFileUnwritable { .. } => "secret.master_key_unwritable",
            SecretsError::KeyDirMissing { .. } => "secret.master_key_dir_missing",
            SecretsError::KeyFileMissing { .. } => "secret.master_key_missing",
            SecretsError::RotationPending { .. } => "secret.rotation_pending",
            SecretsError::NoRotationPending => "secret.no_rotation_pending",
            SecretsError::UnknownKey { .. } => "secret.unknown_key",
            SecretsError::Decrypt { .. } => "secret.decrypt_failed",
            SecretsError::Random => "secret.random_failed",
            SecretsError::TooLarge => "secret.too_large",
            SecretsError::MalformedSealed { .. } => "secret.malformed_sealed",
            SecretsError::KeyService { .. } => "secret.key_service",
        }
    }

    fn http_status(&self) -> u16 {
        match self {
            SecretsError::RotationPending { .. } | SecretsError::NoRotationPending => 409,
            SecretsError::TooLarge => 413,
            SecretsError::KeyService { .. } => 503,
            _ => 500,
        }
    }

    fn help(&self) -> String {
        match self {
            SecretsError::KeyFileUnreadable { .. } => {
                "Check that the file named by --master-key-file is readable by the server's user.".into()
            }
            SecretsError::KeyFileMalformed { .. } => {
                "Restore the master key file from its backup: it must be one line, `plinth-master-key-v1:` and 64 hex digits, and a new key cannot open secrets sealed with the old one."
                    .into()
            }
            SecretsError::KeyFileTooOpen { path, .. } => {
                format!("Run `chmod 600 {}` so that only the server's user can read the master key.", path.display())
            }
            SecretsError::KeyFileUnwritable { .. } => {
                "Check that the directory of --master-key-file is writable by the server's user and the disk is not full."
                    .into()
            }
            SecretsError::KeyDirMissing { dir } => {
                format!("Create the directory `{}` or point --master-key-file somewhere else.", dir.display())
            }
            SecretsError::KeyFileMissing { path, next } => format!(
                "Restore `{}` from its backup; if the database already uses the next key, rename `{}` to it instead.",
                path.display(),
                next.display()
            ),
            SecretsError::RotationPending { .. } => {
                "Wait for the running rotation to finish, or restart the server to finish or discard an interrupted one."
                    .into()
            }
            SecretsError::NoRotationPending => "Start a rotation with `plinth secrets rotate-master-key`.".into(),
            SecretsError::UnknownKey { key_id } => format!(
                "Start the server with the master key file that holds `{key_id}`, and keep the `.next` file of an unfinished rotation next to it."
            ),
            SecretsError::Decrypt { .. } => {
                "The stored value or the master key file was altered or swapped; restore both from the same backup."
                    .into()
            }
            SecretsError::Random => "Check the system's random source (getrandom, /dev/urandom), then try again.".into(),
            SecretsError::TooLarge => "Store a smaller value.".into(),
            SecretsError::MalformedSealed { .. } => {
                "The stored value was altered or cut short; restore it from a backup or write it again.".into()
            }
            SecretsError::KeyService { key_id, .. } => format!(
                "Check that the key service is reachable and that the server's credentials may use `{key_id}`."
            ),
        }
    }
}
