//! The interface to a master key: wrap and unwrap data keys. The local key file implements it
//! ([`crate::LocalKeyring`]); a KMS would implement it the same way.

use std::fmt;

use async_trait::async_trait;

use crate::{DataKey, SecretsError};

/// Wraps data keys under a master key and unwraps them again.
///
/// Key ids are stable and not secret: they are stored next to every wrapped key so that the
/// right master key can be found again (`local:<16 hex digits>` for a key file, the key ARN
/// for KMS).
#[async_trait]
pub trait KeyWrapper: Send + Sync + fmt::Debug {
    /// The id of the master key that [`KeyWrapper::wrap`] uses now. It can change (a rotation),
    /// so [`KeyWrapper::wrap`] also says which key it used.
    fn current_key_id(&self) -> String;

    /// Wraps `data_key` under the current master key.
    async fn wrap(&self, data_key: &DataKey) -> Result<WrappedKey, SecretsError>;

    /// Unwraps a data key that `key_id` wrapped. Fails with [`SecretsError::UnknownKey`] when
    /// this wrapper does not hold that key, and with [`SecretsError::Decrypt`] when `wrapped`
    /// was not made by it.
    async fn unwrap(&self, key_id: &str, wrapped: &[u8]) -> Result<DataKey, SecretsError>;
}

/// A data key wrapped under a master key, and the id of that master key.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    pub key_id: String,
    pub bytes: Vec<u8>,
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedKey").field("key_id", &self.key_id).field("bytes", &self.bytes.len()).finish()
    }
}
