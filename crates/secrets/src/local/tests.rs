//! Tests of the key file and its rotation, on real files in a temp dir.

use std::os::unix::fs::PermissionsExt;

use plinth_core::ErrorCode;

use super::*;
use crate::{Sealed, open, rewrap, seal};

const AAD: &[u8] = b"prod\0environment\0\0DB_PASSWORD\x001";

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The key in a key file, in hex, read the way a test may and the code must not.
fn key_hex(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.trim_end().strip_prefix("plinth-master-key-v1:").unwrap().to_owned()
}

async fn opens_to(keyring: &LocalKeyring, sealed: &Sealed, want: &[u8]) {
    assert_eq!(open(keyring, AAD, sealed).await.unwrap().expose(), want);
}

#[tokio::test]
async fn first_open_creates_a_private_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let (keyring, opened) = LocalKeyring::open(&path).unwrap();
    assert_eq!(opened, Opened::Created);
    assert_eq!(mode(&path), 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("plinth-master-key-v1:") && text.ends_with('\n') && text.len() == 86, "{text:?}");
    // No temporary file is left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    let id = keyring.current_key_id();
    assert!(id.starts_with("local:") && id.len() == 22 && id[6..].bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    let sealed = seal(&keyring, AAD, b"value").await.unwrap();
    assert_eq!(sealed.key_id, id);
    assert_eq!(sealed.wrapped_key.len(), WRAPPED_LEN);

    let (again, opened) = LocalKeyring::open(&path).unwrap();
    assert_eq!(opened, Opened::Existing);
    assert_eq!(again.current_key_id(), id);
    opens_to(&again, &sealed, b"value").await;
    assert_eq!(again.pending_rotation(), None);
}

#[test]
fn processes_starting_at_once_agree_on_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> =
            (0..8).map(|_| s.spawn(|| LocalKeyring::open(&path).unwrap().0.current_key_id())).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[tokio::test]
async fn another_master_key_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = LocalKeyring::open(&dir.path().join("a.key")).unwrap();
    let (b, _) = LocalKeyring::open(&dir.path().join("b.key")).unwrap();
    let sealed = seal(&a, AAD, b"value").await.unwrap();
    let err = open(&b, AAD, &sealed).await.unwrap_err();
    assert_eq!(err.code(), "secret.unknown_key");
    assert!(err.to_string().contains(&a.current_key_id()), "{err}");
    assert!(err.help().contains(&a.current_key_id()), "{}", err.help());

    // The right id on a key that did not wrap it: the tag says no.
    let forged = Sealed { key_id: b.current_key_id(), ..sealed.clone() };
    let err = open(&b, AAD, &forged).await.unwrap_err();
    assert_eq!(err.code(), "secret.decrypt_failed");
    assert!(err.to_string().contains(&b.current_key_id()), "{err}");
}

#[tokio::test]
async fn tampered_wrapped_keys_fail() {
    let dir = tempfile::tempdir().unwrap();
    let (keyring, _) = LocalKeyring::open(&dir.path().join("master.key")).unwrap();
    let sealed = seal(&keyring, AAD, b"value").await.unwrap();
    for i in 0..sealed.wrapped_key.len() {
        let mut s = sealed.clone();
        s.wrapped_key[i] ^= 0x01;
        assert_eq!(open(&keyring, AAD, &s).await.unwrap_err().code(), "secret.decrypt_failed", "byte {i}");
    }
    for wrapped_key in [vec![], sealed.wrapped_key[..59].to_vec(), [&sealed.wrapped_key[..], &[0]].concat()] {
        let s = Sealed { wrapped_key, ..sealed.clone() };
        assert_eq!(open(&keyring, AAD, &s).await.unwrap_err().code(), "secret.decrypt_failed");
    }
}

#[tokio::test]
async fn rewrap_between_key_files_keeps_the_ciphertext() {
    let dir = tempfile::tempdir().unwrap();
    let (old, _) = LocalKeyring::open(&dir.path().join("old.key")).unwrap();
    let (new, _) = LocalKeyring::open(&dir.path().join("new.key")).unwrap();
    let sealed = seal(&old, AAD, b"value").await.unwrap();
    let moved = rewrap(&old, &new, &sealed).await.unwrap();
    assert_eq!(moved.key_id, new.current_key_id());
    assert_eq!((moved.nonce, &moved.ciphertext), (sealed.nonce, &sealed.ciphertext));
    assert_ne!(moved.wrapped_key, sealed.wrapped_key);
    opens_to(&new, &moved, b"value").await;
    assert_eq!(open(&old, AAD, &moved).await.unwrap_err().code(), "secret.unknown_key");
}

#[tokio::test]
async fn rotation_in_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let next_path = dir.path().join("master.key.next");
    let (keyring, _) = LocalKeyring::open(&path).unwrap();
    let old_id = keyring.current_key_id();
    let old_hex = key_hex(&path);
    let before = seal(&keyring, AAD, b"sealed before").await.unwrap();

    let next_id = keyring.prepare_rotation().unwrap();
    assert_ne!(next_id, old_id);
    assert_eq!(mode(&next_path), 0o600);
    assert_eq!(keyring.pending_rotation(), Some(next_id.clone()));
    assert_eq!(keyring.current_key_id(), next_id);
    let during = seal(&keyring, AAD, b"sealed during").await.unwrap();
    assert_eq!(during.key_id, next_id);
    opens_to(&keyring, &before, b"sealed before").await;
    assert_eq!(keyring.prepare_rotation().unwrap_err().code(), "secret.rotation_pending");

    // Step 2: every row not on the next key.
    let moved = rewrap(&keyring, &keyring, &before).await.unwrap();
    assert_eq!(moved.key_id, next_id);
    assert_eq!(moved.ciphertext, before.ciphertext);

    keyring.commit_rotation().unwrap();
    assert!(!next_path.exists());
    assert_ne!(key_hex(&path), old_hex);
    assert_eq!(mode(&path), 0o600);
    assert_eq!(keyring.pending_rotation(), None);
    assert_eq!(keyring.current_key_id(), next_id);
    // The old key stays in memory: a run that read the old row a moment ago still opens it.
    opens_to(&keyring, &before, b"sealed before").await;
    assert_eq!(keyring.commit_rotation().unwrap_err().code(), "secret.no_rotation_pending");

    let (restarted, opened) = LocalKeyring::open(&path).unwrap();
    assert_eq!(opened, Opened::Existing);
    assert_eq!(restarted.current_key_id(), next_id);
    opens_to(&restarted, &moved, b"sealed before").await;
    opens_to(&restarted, &during, b"sealed during").await;
    assert_eq!(open(&restarted, AAD, &before).await.unwrap_err().code(), "secret.unknown_key");
}

#[tokio::test]
async fn rotation_interrupted_then_finished() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let (keyring, _) = LocalKeyring::open(&path).unwrap();
    let old_id = keyring.current_key_id();
    let old_row = seal(&keyring, AAD, b"old").await.unwrap();
    let next_id = keyring.prepare_rotation().unwrap();
    let next_row = seal(&keyring, AAD, b"next").await.unwrap();
    drop(keyring); // The process dies between the steps.

    let (keyring, opened) = LocalKeyring::open(&path).unwrap();
    assert_eq!(opened, Opened::Existing);
    assert_eq!(keyring.pending_rotation(), Some(next_id.clone()));
    assert!(format!("{keyring:?}").contains("pending_rotation: true"));
    opens_to(&keyring, &old_row, b"old").await;
    opens_to(&keyring, &next_row, b"next").await;

    // The server finishes the rotation: the last row on the old key moves, then commit.
    let old_row = rewrap(&keyring, &keyring, &old_row).await.unwrap();
    keyring.finish_pending(true).unwrap();
    assert_eq!(keyring.pending_rotation(), None);
    assert!(!dir.path().join("master.key.next").exists());

    let (keyring, _) = LocalKeyring::open(&path).unwrap();
    assert_eq!(keyring.current_key_id(), next_id);
    assert_ne!(keyring.current_key_id(), old_id);
    assert_eq!(keyring.pending_rotation(), None);
    opens_to(&keyring, &old_row, b"old").await;
    opens_to(&keyring, &next_row, b"next").await;
}

#[tokio::test]
async fn rotation_interrupted_then_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let (keyring, _) = LocalKeyring::open(&path).unwrap();
    let old_id = keyring.current_key_id();
    let row = seal(&keyring, AAD, b"old").await.unwrap();
    let next_id = keyring.prepare_rotation().unwrap();
    drop(keyring);

    let (keyring, _) = LocalKeyring::open(&path).unwrap();
    assert_eq!(keyring.pending_rotation(), Some(next_id));
    keyring.finish_pending(false).unwrap();
    assert!(!dir.path().join("master.key.next").exists());
    assert_eq!(keyring.current_key_id(), old_id);
    assert_eq!(seal(&keyring, AAD, b"new").await.unwrap().key_id, old_id);

    let (keyring, _) = LocalKeyring::open(&path).unwrap();
    assert_eq!(keyring.current_key_id(), old_id);
    assert_eq!(keyring.pending_rotation(), None);
    opens_to(&keyring, &row, b"old").await;
    assert_eq!(keyring.finish_pending(false).unwrap_err().code(), "secret.no_rotation_pending");

    // A new rotation can start after a discarded one.
    let again = keyring.prepare_rotation().unwrap();
    assert_eq!(keyring.pending_rotation(), Some(again));
}

#[test]
fn a_key_file_open_to_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    LocalKeyring::open(&path).unwrap();
    for open_mode in [0o644, 0o640, 0o604, 0o610, 0o601] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(open_mode)).unwrap();
        let err = LocalKeyring::open(&path).unwrap_err();
        assert_eq!(err.code(), "secret.master_key_too_open");
        assert!(err.to_string().contains(&format!("mode {open_mode:03o}")), "{err}");
        assert_eq!(
            err.help(),
            format!("Run `chmod 600 {}` so that only the server's user can read the master key.", path.display())
        );
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    LocalKeyring::open(&path).unwrap();
}

#[test]
fn a_too_open_next_file_is_refused_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let (keyring, _) = LocalKeyring::open(&path).unwrap();
    keyring.prepare_rotation().unwrap();
    let next = dir.path().join("master.key.next");
    std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = LocalKeyring::open(&path).unwrap_err();
    assert!(err.to_string().contains("master.key.next"), "{err}");
}

#[test]
fn a_malformed_key_file_is_refused_without_quoting_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let marker = "s3cr3tmarkerdeadbeef";
    let contents = [
        format!("{marker}\n"),
        format!("plinth-master-key-v1:{marker}\n"),
        format!("plinth-master-key-v1:{}\n", marker.repeat(4)[..64].to_owned()),
        format!("plinth-master-key-v1:{}\n{marker}\n", "ab".repeat(32)),
        marker.repeat(100),
        String::new(),
    ];
    for content in contents {
        std::fs::write(&path, &content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = LocalKeyring::open(&path).unwrap_err();
        assert_eq!(err.code(), "secret.master_key_malformed", "{content:?}");
        let shown = format!("{err} {err:?} {}", err.help());
        assert!(shown.contains("master.key"), "{shown}");
        assert!(!shown.contains(marker), "{shown}");
    }
}

#[test]
fn a_missing_directory_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no").join("such");
    let err = LocalKeyring::open(&missing.join("master.key")).unwrap_err();
    assert_eq!(err.code(), "secret.master_key_dir_missing");
    assert!(err.to_string().contains(&missing.display().to_string()), "{err}");
    assert!(!missing.exists());
}

#[test]
fn a_lost_key_file_is_not_replaced_while_a_rotation_is_pending() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let (keyring, _) = LocalKeyring::open(&path).unwrap();
    keyring.prepare_rotation().unwrap();
    std::fs::remove_file(&path).unwrap();
    let err = LocalKeyring::open(&path).unwrap_err();
    assert_eq!(err.code(), "secret.master_key_missing");
    assert!(!path.exists());
}

#[tokio::test]
async fn debug_never_shows_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let (keyring, _) = LocalKeyring::open(&path).unwrap();
    let mut keys = vec![key_hex(&path)];
    keyring.prepare_rotation().unwrap();
    keys.push(key_hex(&dir.path().join("master.key.next")));
    let shown = format!("{keyring:?} {keyring:#?}");
    assert!(shown.contains(&keyring.current_key_id()), "{shown}");
    for hex in keys {
        let bytes = hex::decode(&hex).unwrap();
        assert!(!shown.contains(&hex), "{shown}");
        assert!(!shown.contains(&hex.to_uppercase()), "{shown}");
        assert!(!shown.contains(String::from_utf8_lossy(&bytes).as_ref()), "{shown}");
    }
    let sealed = seal(&keyring, AAD, b"plaintext-marker").await.unwrap();
    let opened = open(&keyring, AAD, &sealed).await.unwrap();
    let shown = format!("{sealed:?} {opened:?}");
    assert!(!shown.contains("plaintext-marker") && !shown.contains(&hex::encode("plaintext-marker")), "{shown}");
}
