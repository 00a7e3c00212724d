//! AES-256-GCM with ring, the one cipher of this crate, for data keys and for values alike.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::SecureRandom;
use zeroize::Zeroizing;

use crate::SecretsError;

/// The length of a GCM tag, appended to every ciphertext.
pub const TAG_LEN: usize = 16;

/// An AES-256-GCM key ready to use.
pub fn key(bytes: &[u8; 32]) -> LessSafeKey {
    // AES_256_GCM takes exactly 32 bytes, which the type guarantees; `new` cannot fail here.
    match UnboundKey::new(&AES_256_GCM, bytes) {
        Ok(key) => LessSafeKey::new(key),
        Err(_) => unreachable!("AES-256-GCM rejected a 32-byte key"),
    }
}

/// A fresh random nonce.
pub fn nonce(rng: &dyn SecureRandom) -> Result<[u8; NONCE_LEN], SecretsError> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut nonce).map_err(|_| SecretsError::Random)?;
    Ok(nonce)
}

/// Encrypts `plaintext`; the result is the ciphertext followed by the tag.
pub fn seal(key: &LessSafeKey, nonce: [u8; NONCE_LEN], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SecretsError> {
    // Zeroizing: should sealing fail, the buffer still holds the plaintext.
    let mut buf = Zeroizing::new(Vec::with_capacity(plaintext.len() + TAG_LEN));
    buf.extend_from_slice(plaintext);
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut *buf)
        .map_err(|_| SecretsError::TooLarge)?;
    Ok(std::mem::take(&mut *buf))
}

/// Decrypts and authenticates `ciphertext` (with its tag); `None` if it, the nonce or the AAD
/// does not match the key.
pub fn open(key: &LessSafeKey, nonce: [u8; NONCE_LEN], aad: &[u8], ciphertext: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    let len = key.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf).ok()?.len();
    buf.truncate(len);
    Some(buf)
}
