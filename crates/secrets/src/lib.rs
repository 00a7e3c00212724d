//! Envelope encryption for secrets and for plan files waiting for approval: every value gets
//! its own data key, and only a master key (a local key file, or a KMS later) can unwrap it.
//!
//! # The envelope
//!
//! [`seal`] draws a fresh random 256-bit [`DataKey`] and a fresh random 96-bit nonce, encrypts
//! the plaintext with AES-256-GCM under that data key, and asks a [`KeyWrapper`] to wrap the
//! data key under its master key. The result, a [`Sealed`], is what a store row holds: the id
//! of the master key, the wrapped data key, the nonce, and the ciphertext with its tag. No data
//! key is ever used twice, so nonce reuse cannot happen whatever the nonces are.
//!
//! The caller passes associated data (AAD) that names the value, for example
//! `env\0scope\0name\0version`. It is authenticated, not stored: a ciphertext copied to another
//! row does not decrypt there. The master key id is *not* part of it, so that [`rewrap`] can
//! move a data key to another master key without touching the ciphertext or the nonce.
//!
//! Whole files (the plan file) use the same envelope in a self-describing byte format,
//! [`Sealed::to_bytes`] and [`Sealed::from_bytes`] ([`seal_to_bytes`], [`open_from_bytes`]).
//!
//! Plaintext lives in [`SecretBytes`] and data keys in [`DataKey`]; both zero their memory
//! when dropped and print as `<redacted>`. No error carries key material or plaintext. (ring
//! does not zero the AES key schedules it expands internally; that is the one copy of a key
//! this crate cannot reach.)
//!
//! # The local master key and its rotation
//!
//! [`LocalKeyring`] reads the master key from `--master-key-file`, creating it (mode 0600,
//! atomically) on the first start. It keeps every master key it has seen in memory until the
//! process ends, so that a run decrypting while a rotation happens never fails. The file
//! `<path>.next` holds the key of a rotation that has been prepared but not committed.
//!
//! ```text
//!              prepare_rotation()                    commit_rotation()
//!   ┌────────┐  writes <path>.next   ┌──────────┐  renames .next over path ┌────────┐
//!   │ steady │──────────────────────►│ pending  │─────────────────────────►│ steady │
//!   │ (old)  │                       │ old+next │                          │ (next) │
//!   └────────┘◄──────────────────────└──────────┘                          └────────┘
//!                discard_rotation()        ▲
//!                deletes <path>.next       │ open() finds <path>.next (a crash in between):
//!                                          │ both keys load, pending_rotation() is Some
//! ```
//!
//! From the moment `prepare_rotation` returns, `wrap` uses the next key: its file is already
//! durable, and a value sealed during the rotation is already where the rotation is going. The
//! caller drives the three steps around its database:
//!
//! 1. `let next = keyring.prepare_rotation()?;`
//! 2. In one transaction, replace every row whose key id is not `next` by
//!    `rewrap(&keyring, &keyring, &row)` (the ring unwraps with any key it holds and wraps with
//!    the next one). This step must also see rows sealed *before* step 1 but stored after it:
//!    make writers hold a shared lock around seal-and-store that step 1 takes exclusively, or
//!    repeat step 2 until a transaction finds no row on an old key.
//! 3. `keyring.commit_rotation()?;` Only now does the old key leave the disk.
//!
//! A crash anywhere leaves either the old file alone (nothing happened), the old file and
//! `.next` (pending), or the next key as the file (done). On start, with a rotation pending,
//! the server either finishes it (re-wraps any row still on the old key, then
//! `finish_pending(true)`) or, if no row uses the next key, drops it
//! (`finish_pending(false)`). Files are written to a temporary file in the same directory,
//! fsynced, linked into place without replacing anything, and the directory is fsynced.
//!
//! # A KMS wrapper
//!
//! [`KeyWrapper`] is the whole interface to a master key, so AWS KMS plugs in as another
//! implementation: `current_key_id` is the KMS key ARN, `wrap` is `kms:Encrypt` of the data
//! key (returning the ARN of the key KMS actually used, which resolves aliases), and `unwrap`
//! is `kms:Decrypt` with that key id. [`seal`] could use `kms:GenerateDataKey` instead of a
//! local data key plus `kms:Encrypt`; that saves a call, not a property. Rotation with KMS is
//! the same step 2, with a KMS wrapper as `to` (or `from`, to move off KMS). Service failures
//! are [`SecretsError::KeyService`].

mod aead;
mod envelope;
mod error;
mod local;
mod secret;
mod wrapper;

pub use envelope::{Sealed, open, open_from_bytes, rewrap, seal, seal_to_bytes};
pub use error::SecretsError;
pub use local::{LocalKeyring, Opened};
pub use secret::{DataKey, SecretBytes};
pub use wrapper::{KeyWrapper, WrappedKey};
