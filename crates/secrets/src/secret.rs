//! The two kinds of secret bytes this crate hands out: plaintext ([`SecretBytes`]) and data
//! keys ([`DataKey`]). Both zero their memory when dropped and never print their content.

use std::fmt;

use ring::rand::SecureRandom;
use zeroize::Zeroizing;

use crate::SecretsError;

/// A decrypted value. It has no `Display` and no `Serialize`; [`SecretBytes::expose`] is the
/// one way to the bytes, so that every use is easy to find.
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Takes ownership of `bytes`; they are zeroed when this is dropped.
    pub fn new(bytes: Vec<u8>) -> SecretBytes {
        SecretBytes(Zeroizing::new(bytes))
    }

    pub(crate) fn from_zeroizing(bytes: Zeroizing<Vec<u8>>) -> SecretBytes {
        SecretBytes(bytes)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(bytes: Vec<u8>) -> SecretBytes {
        SecretBytes::new(bytes)
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<redacted>, {} bytes)", self.0.len())
    }
}

/// The length of a data key: AES-256.
pub const DATA_KEY_LEN: usize = 32;

/// A 256-bit AES-GCM key that encrypts exactly one value.
pub struct DataKey(Zeroizing<[u8; DATA_KEY_LEN]>);

impl DataKey {
    /// A fresh random key.
    pub(crate) fn generate(rng: &dyn SecureRandom) -> Result<DataKey, SecretsError> {
        let mut key = Zeroizing::new([0u8; DATA_KEY_LEN]);
        rng.fill(key.as_mut()).map_err(|_| SecretsError::Random)?;
        Ok(DataKey(key))
    }

    /// A key from unwrapped bytes, for a [`crate::KeyWrapper`] outside this crate; `None`
    /// unless `bytes` is exactly 32 bytes long. The caller zeroes its own copy.
    pub fn from_slice(bytes: &[u8]) -> Option<DataKey> {
        let bytes = <&[u8; DATA_KEY_LEN]>::try_from(bytes).ok()?;
        let mut key = Zeroizing::new([0u8; DATA_KEY_LEN]);
        key.copy_from_slice(bytes);
        Some(DataKey(key))
    }

    /// The key's bytes, for wrapping them.
    pub fn expose(&self) -> &[u8; DATA_KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;

    use super::*;

    #[test]
    fn debug_never_shows_the_bytes() {
        let plaintext = b"hunter2-plaintext-marker".to_vec();
        let secret = SecretBytes::new(plaintext.clone());
        let shown = format!("{secret:?} {secret:#?}");
        assert_eq!(format!("{secret:?}"), "SecretBytes(<redacted>, 24 bytes)");
        assert!(!shown.contains(&String::from_utf8_lossy(&plaintext).to_string()));
        assert!(!shown.contains(&hex::encode(&plaintext)));

        let key = DataKey::generate(&SystemRandom::new()).unwrap();
        let shown = format!("{key:?} {key:#?}");
        assert!(!shown.contains(&hex::encode(key.expose())));
        assert!(!shown.contains(&hex::encode_upper(key.expose())));
        assert!(!shown.contains(String::from_utf8_lossy(key.expose()).as_ref()));
    }

    #[test]
    fn data_key_from_slice_wants_exactly_32_bytes() {
        assert!(DataKey::from_slice(&[7; 32]).is_some_and(|k| k.expose() == &[7; 32]));
        assert!(DataKey::from_slice(&[7; 31]).is_none());
        assert!(DataKey::from_slice(&[7; 33]).is_none());
        assert!(DataKey::from_slice(&[]).is_none());
    }
}
