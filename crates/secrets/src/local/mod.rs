//! The local master key: a key file (`--master-key-file`) read into a ring of keys that wraps
//! data keys with AES-256-GCM, and its crash-safe rotation through `<path>.next` (the state
//! machine is in the crate docs).

mod file;

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use ring::aead::{LessSafeKey, NONCE_LEN};
use ring::digest::{SHA256, digest};
use ring::rand::SystemRandom;
use tracing::{info, warn};
use zeroize::Zeroizing;

use self::file::KeyBytes;
use crate::aead::{self, TAG_LEN};
use crate::secret::DATA_KEY_LEN;
use crate::{DataKey, KeyWrapper, SecretsError, WrappedKey};

/// Binds a wrapped data key to the master key that wrapped it.
const WRAP_AAD: &[u8] = b"plinth-data-key-v1\0";
/// A wrapped data key: nonce, encrypted key, tag.
const WRAPPED_LEN: usize = NONCE_LEN + DATA_KEY_LEN + TAG_LEN;

/// Whether [`LocalKeyring::open`] found the key file or made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opened {
    /// There was no key file; a new key was written to it.
    Created,
    Existing,
}

/// The master keys of a key file. Keys are added (at start, by a rotation) and never removed
/// until the process ends, so a value being opened while a rotation commits still opens.
///
/// Its methods other than the [`KeyWrapper`] ones read or write files and block: call them from
/// `spawn_blocking` or before the runtime is busy. Rotation steps are serialized.
pub struct LocalKeyring {
    path: PathBuf,
    next_path: PathBuf,
    rng: SystemRandom,
    ring: RwLock<Ring>,
    /// Held through each rotation step, so that two steps never interleave.
    rotation: Mutex<()>,
}

struct Ring {
    /// Every key loaded; never shrinks.
    keys: Vec<MasterKey>,
    /// The key `wrap` uses: during a rotation, the next key.
    current: usize,
    /// During a rotation, the key that was current before it.
    before: Option<usize>,
}

impl Ring {
    fn current(&self) -> &MasterKey {
        &self.keys[self.current]
    }
}

struct MasterKey {
    id: String,
    aead: LessSafeKey,
}

impl MasterKey {
    fn new(bytes: &KeyBytes) -> MasterKey {
        MasterKey { id: key_id(bytes), aead: aead::key(bytes) }
    }
}

/// `local:` and the first 8 bytes of the key's SHA-256, in hex.
fn key_id(bytes: &KeyBytes) -> String {
    format!("local:{}", hex::encode(&digest(&SHA256, bytes.as_ref()).as_ref()[..8]))
}

impl LocalKeyring {
    /// Loads the key file at `path`, creating it with a new random key if there is none (mode
    /// 0600 from the start, written whole, never replacing a file another process wrote first).
    /// If `<path>.next` exists, a rotation was interrupted: its key is loaded too, becomes the
    /// one `wrap` uses, and [`LocalKeyring::pending_rotation`] names it. Blocks.
    pub fn open(path: &Path) -> Result<(LocalKeyring, Opened), SecretsError> {
        let next_path = with_suffix(path, ".next");
        let rng = SystemRandom::new();
        let (key, opened) = match file::read(path)? {
            Some(key) => (key, Opened::Existing),
            None if file::exists(&next_path) => {
                return Err(SecretsError::KeyFileMissing { path: path.to_owned(), next: next_path });
            }
            None => {
                let dir = file::parent(path);
                if !dir.is_dir() {
                    return Err(SecretsError::KeyDirMissing { dir });
                }
                let key = random_key(&rng)?;
                if file::create(path, &key, &rng)? {
                    (key, Opened::Created)
                } else {
                    // Another process created it a moment ago; use its key.
                    let key = file::read(path)?.ok_or_else(|| SecretsError::KeyFileUnreadable {
                        path: path.to_owned(),
                        source: std::io::ErrorKind::NotFound.into(),
                    })?;
                    (key, Opened::Existing)
                }
            }
        };
        let mut ring = Ring { keys: vec![MasterKey::new(&key)], current: 0, before: None };
        if let Some(next) = file::read(&next_path)? {
            ring.keys.push(MasterKey::new(&next));
            ring.before = Some(0);
            ring.current = 1;
            warn!(
                from = %ring.keys[0].id,
                to = %ring.keys[1].id,
                "A master key rotation was interrupted; both keys are loaded until it is finished or discarded."
            );
        }
        let keyring =
            LocalKeyring { path: path.to_owned(), next_path, rng, ring: RwLock::new(ring), rotation: Mutex::new(()) };
        Ok((keyring, opened))
    }

    /// The key file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The id of the next key while a rotation is pending (prepared in this process, or found
    /// at start).
    pub fn pending_rotation(&self) -> Option<String> {
        let ring = self.read();
        ring.before.map(|_| ring.current().id.clone())
    }

    /// Step 1 of a rotation: writes a new random key to `<path>.next` (mode 0600, durable
    /// before anything uses it), adds it to the ring and makes it the key `wrap` uses. Values
    /// on the old key still open. Returns the new key's id. Blocks.
    pub fn prepare_rotation(&self) -> Result<String, SecretsError> {
        let _step = self.rotation.lock().unwrap_or_else(PoisonError::into_inner);
        if self.read().before.is_some() {
            return Err(SecretsError::RotationPending { next: self.next_path.clone() });
        }
        let key = random_key(&self.rng)?;
        if !file::create(&self.next_path, &key, &self.rng)? {
            // Left by another process on the same file.
            return Err(SecretsError::RotationPending { next: self.next_path.clone() });
        }
        let mut ring = self.write();
        let before = ring.current;
        ring.keys.push(MasterKey::new(&key));
        ring.before = Some(before);
        ring.current = ring.keys.len() - 1;
        let (from, to) = (ring.keys[before].id.clone(), ring.current().id.clone());
        drop(ring);
        info!(%from, %to, "Master key rotation prepared; new values are sealed with the next key.");
        Ok(to)
    }

    /// Step 3 of a rotation: the next key replaces the key file. Call it once no stored value
    /// uses the old key (step 2). The old key stays in memory until the process ends. Blocks.
    pub fn commit_rotation(&self) -> Result<(), SecretsError> {
        let _step = self.rotation.lock().unwrap_or_else(PoisonError::into_inner);
        let before = self.read().before.ok_or(SecretsError::NoRotationPending)?;
        file::replace(&self.next_path, &self.path)?;
        let mut ring = self.write();
        ring.before = None;
        let (from, to) = (ring.keys[before].id.clone(), ring.current().id.clone());
        drop(ring);
        info!(%from, %to, "Master key rotation committed.");
        Ok(())
    }

    /// Drops a pending rotation: deletes `<path>.next` and makes the old key current again.
    /// Call it only when no stored value uses the next key. The next key stays in memory.
    /// Blocks.
    pub fn discard_rotation(&self) -> Result<(), SecretsError> {
        let _step = self.rotation.lock().unwrap_or_else(PoisonError::into_inner);
        let before = self.read().before.ok_or(SecretsError::NoRotationPending)?;
        file::remove(&self.next_path)?;
        let mut ring = self.write();
        let dropped = ring.current().id.clone();
        ring.current = before;
        ring.before = None;
        let kept = ring.current().id.clone();
        drop(ring);
        info!(%kept, %dropped, "Master key rotation discarded.");
        Ok(())
    }

    /// Finishes a rotation found at start: `next_in_use` says the database uses the next key
    /// and no longer the old one (commit), otherwise that no value uses the next key (discard).
    /// When values use both, re-wrap those on the old key first, then commit. Blocks.
    pub fn finish_pending(&self, next_in_use: bool) -> Result<(), SecretsError> {
        if next_in_use { self.commit_rotation() } else { self.discard_rotation() }
    }

    fn read(&self) -> RwLockReadGuard<'_, Ring> {
        // Every change to the ring leaves it consistent, so a panic elsewhere cannot spoil it.
        self.ring.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Ring> {
        self.ring.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn wrap_now(&self, data_key: &DataKey) -> Result<WrappedKey, SecretsError> {
        let nonce = aead::nonce(&self.rng)?;
        let ring = self.read();
        let key = ring.current();
        let sealed = aead::seal(&key.aead, nonce, &wrap_aad(&key.id), data_key.expose())?;
        Ok(WrappedKey { key_id: key.id.clone(), bytes: [&nonce[..], &sealed].concat() })
    }

    fn unwrap_now(&self, key_id: &str, wrapped: &[u8]) -> Result<DataKey, SecretsError> {
        let ring = self.read();
        let key = ring
            .keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or_else(|| SecretsError::UnknownKey { key_id: key_id.to_owned() })?;
        let decrypt = || SecretsError::Decrypt { key_id: key_id.to_owned() };
        if wrapped.len() != WRAPPED_LEN {
            return Err(decrypt());
        }
        let (nonce, sealed) = wrapped.split_at(NONCE_LEN);
        let nonce = <[u8; NONCE_LEN]>::try_from(nonce).map_err(|_| decrypt())?;
        let bytes = aead::open(&key.aead, nonce, &wrap_aad(key_id), sealed).ok_or_else(decrypt)?;
        DataKey::from_slice(&bytes).ok_or_else(decrypt)
    }
}

#[async_trait]
impl KeyWrapper for LocalKeyring {
    fn current_key_id(&self) -> String {
        self.read().current().id.clone()
    }

    async fn wrap(&self, data_key: &DataKey) -> Result<WrappedKey, SecretsError> {
        self.wrap_now(data_key)
    }

    async fn unwrap(&self, key_id: &str, wrapped: &[u8]) -> Result<DataKey, SecretsError> {
        self.unwrap_now(key_id, wrapped)
    }
}

impl fmt::Debug for LocalKeyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ring = self.read();
        f.debug_struct("LocalKeyring")
            .field("path", &self.path)
            .field("current", &ring.current().id)
            .field("keys", &ring.keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>())
            .field("pending_rotation", &ring.before.is_some())
            .finish()
    }
}

fn wrap_aad(key_id: &str) -> Vec<u8> {
    [WRAP_AAD, key_id.as_bytes()].concat()
}

fn random_key(rng: &SystemRandom) -> Result<KeyBytes, SecretsError> {
    let mut key = Zeroizing::new([0u8; 32]);
    ring::rand::SecureRandom::fill(rng, key.as_mut()).map_err(|_| SecretsError::Random)?;
    Ok(key)
}

/// `path` with `suffix` added to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests;
