//! The envelope: [`seal`], [`open`] and [`rewrap`] over a [`Sealed`] value, and the byte
//! format for sealed files.

use std::fmt;

use ring::aead::NONCE_LEN;
use ring::rand::SystemRandom;

use crate::aead::{self, TAG_LEN};
use crate::{DataKey, KeyWrapper, SecretBytes, SecretsError};

/// Every AAD starts with this, so that nothing else sealed with the same data key format can
/// pass for a value sealed here.
const AAD_DOMAIN: &[u8] = b"plinth-secret-v1\0";

/// An encrypted value, as a store row holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The master key that wrapped the data key.
    pub key_id: String,
    /// The data key, wrapped by `key_id`.
    pub wrapped_key: Vec<u8>,
    pub nonce: [u8; NONCE_LEN],
    /// The ciphertext followed by the 16-byte GCM tag.
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("key_id", &self.key_id)
            .field("wrapped_key_len", &self.wrapped_key.len())
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

/// Encrypts `plaintext` under a fresh random data key and nonce, and wraps the data key with
/// `wrapper`. `aad` names the value (`env\0scope\0name\0version`): [`open`] must be given the
/// same bytes.
pub async fn seal(wrapper: &dyn KeyWrapper, aad: &[u8], plaintext: &[u8]) -> Result<Sealed, SecretsError> {
    let rng = SystemRandom::new();
    let data_key = DataKey::generate(&rng)?;
    let nonce = aead::nonce(&rng)?;
    let ciphertext = aead::seal(&aead::key(data_key.expose()), nonce, &full_aad(aad), plaintext)?;
    let wrapped = wrapper.wrap(&data_key).await?;
    Ok(Sealed { key_id: wrapped.key_id, wrapped_key: wrapped.bytes, nonce, ciphertext })
}

/// Decrypts a value [`seal`] made with the same `aad`.
pub async fn open(wrapper: &dyn KeyWrapper, aad: &[u8], sealed: &Sealed) -> Result<SecretBytes, SecretsError> {
    let data_key = wrapper.unwrap(&sealed.key_id, &sealed.wrapped_key).await?;
    let plaintext = aead::open(&aead::key(data_key.expose()), sealed.nonce, &full_aad(aad), &sealed.ciphertext)
        .ok_or_else(|| SecretsError::Decrypt { key_id: sealed.key_id.clone() })?;
    Ok(SecretBytes::from_zeroizing(plaintext))
}

/// Moves the data key from `from`'s master key to `to`'s current one. The nonce and the
/// ciphertext stay as they are; the value is never decrypted. This is what a rotation does to
/// every row, and it works as well between backends (a key file to KMS).
///
/// It always wraps again, even when `sealed` is already on `to`'s current key; callers pick
/// the rows to move by their key id.
pub async fn rewrap(from: &dyn KeyWrapper, to: &dyn KeyWrapper, sealed: &Sealed) -> Result<Sealed, SecretsError> {
    let data_key = from.unwrap(&sealed.key_id, &sealed.wrapped_key).await?;
    let wrapped = to.wrap(&data_key).await?;
    Ok(Sealed { key_id: wrapped.key_id, wrapped_key: wrapped.bytes, ..sealed.clone() })
}

/// [`seal`], in the byte format of [`Sealed::to_bytes`]: for whole files such as plans.
pub async fn seal_to_bytes(wrapper: &dyn KeyWrapper, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SecretsError> {
    seal(wrapper, aad, plaintext).await?.to_bytes()
}

/// [`open`] of bytes that [`seal_to_bytes`] made.
pub async fn open_from_bytes(wrapper: &dyn KeyWrapper, aad: &[u8], bytes: &[u8]) -> Result<SecretBytes, SecretsError> {
    open(wrapper, aad, &Sealed::from_bytes(bytes)?).await
}

fn full_aad(aad: &[u8]) -> Vec<u8> {
    [AAD_DOMAIN, aad].concat()
}

/// The first bytes of a sealed file.
const MAGIC: &[u8; 8] = b"PLINTHSL";
const VERSION: u8 = 1;
/// A KMS key ARN is at most 2048 bytes.
const MAX_KEY_ID: usize = 4096;
/// A KMS ciphertext blob is at most 6144 bytes; a local wrapped key is 60.
const MAX_WRAPPED_KEY: usize = 64 * 1024;

impl Sealed {
    /// The byte format, all lengths big-endian:
    ///
    /// ```text
    /// "PLINTHSL"  version (1 byte, 1)
    /// key id length (u16)       key id (UTF-8, 1..=4096 bytes)
    /// wrapped key length (u32)  wrapped key (1..=65536 bytes)
    /// nonce (12 bytes)
    /// ciphertext length (u64)   ciphertext with tag (at least 16 bytes), then nothing
    /// ```
    ///
    /// Fails if a field is outside the limits [`Sealed::from_bytes`] accepts.
    pub fn to_bytes(&self) -> Result<Vec<u8>, SecretsError> {
        self.check()?;
        let mut out = Vec::with_capacity(
            MAGIC.len()
                + 1
                + 2
                + self.key_id.len()
                + 4
                + self.wrapped_key.len()
                + NONCE_LEN
                + 8
                + self.ciphertext.len(),
        );
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        // `check` bounded these lengths, so the casts cannot truncate.
        out.extend_from_slice(&(self.key_id.len() as u16).to_be_bytes());
        out.extend_from_slice(self.key_id.as_bytes());
        out.extend_from_slice(&(self.wrapped_key.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.wrapped_key);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&(self.ciphertext.len() as u64).to_be_bytes());
        out.extend_from_slice(&self.ciphertext);
        Ok(out)
    }

    /// Parses [`Sealed::to_bytes`]'s format strictly: every length within its limits, nothing
    /// missing and nothing after the ciphertext. Never panics, whatever the input.
    pub fn from_bytes(bytes: &[u8]) -> Result<Sealed, SecretsError> {
        let mut r = Reader(bytes);
        if r.take(MAGIC.len(), "it is shorter than its header")? != MAGIC {
            return Err(malformed("it does not start with the sealed-data header"));
        }
        if r.take(1, "it is shorter than its header")?[0] != VERSION {
            return Err(malformed("its format version is not one this plinth reads"));
        }
        let key_id_len = r.be_u64(2, "it ends inside the key id length")?;
        let key_id = r.take_len(key_id_len, "it ends inside the key id")?;
        let key_id = std::str::from_utf8(key_id).map_err(|_| malformed("its key id is not UTF-8"))?.to_owned();
        let wrapped_len = r.be_u64(4, "it ends inside the wrapped key length")?;
        let wrapped_key = r.take_len(wrapped_len, "it ends inside the wrapped key")?.to_vec();
        let nonce = r.take(NONCE_LEN, "it ends inside the nonce")?;
        let nonce = <[u8; NONCE_LEN]>::try_from(nonce).map_err(|_| malformed("it ends inside the nonce"))?;
        let ciphertext_len = r.be_u64(8, "it ends inside the ciphertext length")?;
        if ciphertext_len != r.0.len() as u64 {
            return Err(malformed("its ciphertext length does not match the rest of the data"));
        }
        let sealed = Sealed { key_id, wrapped_key, nonce, ciphertext: r.0.to_vec() };
        sealed.check()?;
        Ok(sealed)
    }

    fn check(&self) -> Result<(), SecretsError> {
        if self.key_id.is_empty() || self.key_id.len() > MAX_KEY_ID {
            return Err(malformed("its key id is empty or longer than 4096 bytes"));
        }
        if self.wrapped_key.is_empty() || self.wrapped_key.len() > MAX_WRAPPED_KEY {
            return Err(malformed("its wrapped key is empty or longer than 64 KiB"));
        }
        if self.ciphertext.len() < TAG_LEN {
            return Err(malformed("its ciphertext is shorter than a GCM tag"));
        }
        Ok(())
    }
}

fn malformed(reason: &'static str) -> SecretsError {
    SecretsError::MalformedSealed { reason }
}

/// The unread rest of the input.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, short: &'static str) -> Result<&'a [u8], SecretsError> {
        if self.0.len() < n {
            return Err(malformed(short));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// A length field; reading more than the input holds fails with `short`.
    fn take_len(&mut self, n: u64, short: &'static str) -> Result<&'a [u8], SecretsError> {
        self.take(usize::try_from(n).map_err(|_| malformed(short))?, short)
    }

    /// A big-endian unsigned number of `width` bytes (at most 8).
    fn be_u64(&mut self, width: usize, short: &'static str) -> Result<u64, SecretsError> {
        Ok(self.take(width, short)?.iter().fold(0u64, |n, &b| (n << 8) | u64::from(b)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use plinth_core::ErrorCode;
    use ring::rand::SecureRandom;

    use super::*;
    use crate::WrappedKey;

    /// A wrapper that keeps data keys in the clear and counts its wraps: enough to test the
    /// envelope alone. The local keyring has its own tests.
    #[derive(Debug)]
    struct Plain {
        id: String,
        wraps: Mutex<usize>,
    }

    fn plain(id: &str) -> Plain {
        Plain { id: id.into(), wraps: Mutex::new(0) }
    }

    #[async_trait]
    impl KeyWrapper for Plain {
        fn current_key_id(&self) -> String {
            self.id.clone()
        }

        async fn wrap(&self, data_key: &DataKey) -> Result<WrappedKey, SecretsError> {
            *self.wraps.lock().unwrap() += 1;
            Ok(WrappedKey { key_id: self.id.clone(), bytes: data_key.expose().to_vec() })
        }

        async fn unwrap(&self, key_id: &str, wrapped: &[u8]) -> Result<DataKey, SecretsError> {
            if key_id != self.id {
                return Err(SecretsError::UnknownKey { key_id: key_id.into() });
            }
            DataKey::from_slice(wrapped).ok_or_else(|| SecretsError::Decrypt { key_id: key_id.into() })
        }
    }

    const AAD: &[u8] = b"prod\0environment\0\0DB_PASSWORD\x001";

    #[tokio::test]
    async fn round_trip() {
        let w = plain("test:a");
        for plaintext in [&b""[..], b"x", b"correct horse battery staple", &[0u8; 100_000]] {
            let sealed = seal(&w, AAD, plaintext).await.unwrap();
            assert_eq!(sealed.key_id, "test:a");
            assert_eq!(sealed.ciphertext.len(), plaintext.len() + TAG_LEN);
            assert_eq!(open(&w, AAD, &sealed).await.unwrap().expose(), plaintext);
        }
    }

    #[tokio::test]
    async fn every_seal_has_its_own_data_key_and_nonce() {
        let w = plain("test:a");
        let a = seal(&w, AAD, b"same value").await.unwrap();
        let b = seal(&w, AAD, b"same value").await.unwrap();
        assert_ne!(a.wrapped_key, b.wrapped_key);
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
    }

    #[tokio::test]
    async fn a_ciphertext_does_not_open_under_another_name() {
        let w = plain("test:a");
        let sealed = seal(&w, AAD, b"value").await.unwrap();
        let err = open(&w, b"prod\0environment\0\0DB_PASSWORD\x002", &sealed).await.unwrap_err();
        assert!(matches!(err, SecretsError::Decrypt { .. }), "{err:?}");
        assert!(open(&w, b"", &sealed).await.is_err());
    }

    #[tokio::test]
    async fn tampering_with_any_part_fails() {
        let w = plain("test:a");
        let sealed = seal(&w, AAD, b"value").await.unwrap();
        let mut tampered = Vec::new();
        for i in 0..sealed.ciphertext.len() {
            let mut s = sealed.clone();
            s.ciphertext[i] ^= 0x01;
            tampered.push(s);
        }
        for i in 0..NONCE_LEN {
            let mut s = sealed.clone();
            s.nonce[i] ^= 0x80;
            tampered.push(s);
        }
        let mut s = sealed.clone();
        s.wrapped_key[0] ^= 0x01;
        tampered.push(s);
        let mut s = sealed.clone();
        s.ciphertext.pop();
        tampered.push(s);
        for s in tampered {
            let err = open(&w, AAD, &s).await.unwrap_err();
            assert_eq!(err.code(), "secret.decrypt_failed");
            assert!(err.to_string().contains("master key `test:a`"), "{err}");
        }
    }

    #[tokio::test]
    async fn rewrap_keeps_nonce_and_ciphertext() {
        let (old, new) = (plain("test:old"), plain("test:new"));
        let sealed = seal(&old, AAD, b"value").await.unwrap();
        let moved = rewrap(&old, &new, &sealed).await.unwrap();
        assert_eq!(moved.key_id, "test:new");
        assert_eq!((moved.nonce, &moved.ciphertext), (sealed.nonce, &sealed.ciphertext));
        assert_eq!(open(&new, AAD, &moved).await.unwrap().expose(), b"value");
        let err = open(&old, AAD, &moved).await.unwrap_err();
        assert!(err.to_string().contains("`test:new`"), "{err}");
    }

    #[tokio::test]
    async fn debug_shows_lengths_only() {
        let sealed = seal(&plain("test:a"), AAD, b"value").await.unwrap();
        let shown = format!("{sealed:?}");
        assert_eq!(shown, "Sealed { key_id: \"test:a\", wrapped_key_len: 32, ciphertext_len: 21, .. }");
    }

    #[tokio::test]
    async fn byte_format_round_trip() {
        let w = plain("test:a");
        let bytes = seal_to_bytes(&w, AAD, b"plan file").await.unwrap();
        assert!(bytes.starts_with(b"PLINTHSL\x01"));
        assert_eq!(open_from_bytes(&w, AAD, &bytes).await.unwrap().expose(), b"plan file");
        let sealed = Sealed::from_bytes(&bytes).unwrap();
        assert_eq!(sealed.to_bytes().unwrap(), bytes);
    }

    #[tokio::test]
    async fn byte_format_refuses_every_truncation_and_extension() {
        let bytes = seal_to_bytes(&plain("test:a"), AAD, b"plan file").await.unwrap();
        for len in 0..bytes.len() {
            let err = Sealed::from_bytes(&bytes[..len]).unwrap_err();
            assert_eq!(err.code(), "secret.malformed_sealed", "length {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Sealed::from_bytes(&longer).is_err());
    }

    #[tokio::test]
    async fn byte_format_survives_corrupt_fields() {
        let bytes = seal_to_bytes(&plain("test:a"), AAD, b"plan file").await.unwrap();
        // Every single byte set to each of a few values: a parse error or a value, never a panic.
        for i in 0..bytes.len() {
            for v in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] = v;
                let _ = Sealed::from_bytes(&b);
            }
        }
        let mut b = bytes.clone();
        b[8] = 2;
        assert!(Sealed::from_bytes(&b).unwrap_err().to_string().contains("format version"));
        // A huge ciphertext length must not be trusted.
        let at = bytes.len() - (9 + TAG_LEN) - 8;
        let mut b = bytes[..at].to_vec();
        b.extend_from_slice(&u64::MAX.to_be_bytes());
        b.extend_from_slice(&bytes[at + 8..]);
        assert!(Sealed::from_bytes(&b).unwrap_err().to_string().contains("ciphertext length"));
    }

    #[test]
    fn byte_format_refuses_garbage() {
        let rng = SystemRandom::new();
        for len in [0, 1, 8, 9, 30, 100, 1000, 10_000] {
            for _ in 0..50 {
                let mut garbage = vec![0u8; len];
                rng.fill(&mut garbage).unwrap();
                assert!(Sealed::from_bytes(&garbage).is_err());
                // The same garbage behind a valid header.
                let mut framed = b"PLINTHSL\x01".to_vec();
                framed.extend_from_slice(&garbage);
                let _ = Sealed::from_bytes(&framed);
            }
        }
    }

    #[test]
    fn to_bytes_refuses_what_from_bytes_would() {
        let sealed = Sealed { key_id: String::new(), wrapped_key: vec![1], nonce: [0; 12], ciphertext: vec![0; 16] };
        assert!(sealed.to_bytes().is_err());
        let sealed = Sealed { key_id: "k".repeat(MAX_KEY_ID + 1), ..sealed };
        assert!(sealed.to_bytes().is_err());
        let sealed = Sealed { key_id: "k".into(), ciphertext: vec![0; 15], ..sealed };
        assert!(sealed.to_bytes().is_err());
    }
}
