//! The master key file: its one-line format, the permission check, and writing it so that it
//! appears whole, with mode 0600 from the first byte, and never replaces another key. All of
//! it blocks.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::rand::SecureRandom;
use zeroize::Zeroizing;

use crate::SecretsError;

/// A master key: 32 bytes, zeroed when dropped.
pub type KeyBytes = Zeroizing<[u8; 32]>;

const PREFIX: &[u8] = b"plinth-master-key-v1:";
const HEX_LEN: usize = 64;
const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";
/// The whole file: the prefix, the key in hex, a newline.
const LINE_LEN: usize = PREFIX.len() + HEX_LEN + 1;

/// Reads the key file at `path`; `None` if there is none. Refuses a file that group or others
/// may access in any way, and anything but one key line.
pub fn read(path: &Path) -> Result<Option<KeyBytes>, SecretsError> {
    let unreadable = |source| SecretsError::KeyFileUnreadable { path: path.to_owned(), source };
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unreadable(e)),
    };
    // The mode of the file we read, not of whatever the path names a moment later.
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(malformed(path, "it is not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretsError::KeyFileTooOpen { path: path.to_owned(), mode });
    }
    // A fixed buffer: a growing Vec would leave copies of the key behind in freed memory.
    let mut buf = Zeroizing::new([0u8; LINE_LEN + 1]);
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(unreadable(e)),
        }
    }
    parse(&buf[..len]).map(Some).map_err(|reason| malformed(path, reason))
}

/// The key in a key file's content (at most one byte more than a key line: [`read`] stops
/// there). The reasons never quote the content.
fn parse(content: &[u8]) -> Result<KeyBytes, &'static str> {
    if content.is_empty() {
        return Err("it is empty");
    }
    let rest = content.strip_prefix(PREFIX).ok_or("it does not start with `plinth-master-key-v1:`")?;
    let digits = rest.strip_suffix(b"\n").unwrap_or(rest);
    if digits.iter().any(|&b| b == b'\n' || b == b'\r') {
        return Err("it is not a single line ending in `\\n`");
    }
    if digits.len() != HEX_LEN {
        return Err("the key is not 64 hex digits long");
    }
    let mut key = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(digits, key.as_mut()).map_err(|_| "the key has a character that is not a hex digit")?;
    Ok(key)
}

/// Writes `key` to `path` unless a file is already there: to a temporary file in the same
/// directory, created with mode 0600, fsynced, then hard-linked into place (a link, unlike a
/// rename, never replaces anything), and the directory fsynced. Returns `false`, writing
/// nothing, if `path` already exists, so that two processes starting at once agree on one key.
pub fn create(path: &Path, key: &KeyBytes, rng: &dyn SecureRandom) -> Result<bool, SecretsError> {
    let unwritable = |source| SecretsError::KeyFileUnwritable { path: path.to_owned(), source };
    let dir = parent(path);
    let name = path.file_name().ok_or_else(|| unwritable(io::Error::other("the path does not name a file")))?;
    let mut suffix = [0u8; 8];
    rng.fill(&mut suffix).map_err(|_| SecretsError::Random)?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", hex::encode(suffix)));
    let tmp = dir.join(tmp_name);

    let mut line = Zeroizing::new([0u8; LINE_LEN]);
    line[..PREFIX.len()].copy_from_slice(PREFIX);
    for (i, byte) in key.iter().enumerate() {
        line[PREFIX.len() + 2 * i] = HEX_DIGITS[usize::from(byte >> 4)];
        line[PREFIX.len() + 2 * i + 1] = HEX_DIGITS[usize::from(byte & 0x0f)];
    }
    line[LINE_LEN - 1] = b'\n';

    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(unwritable)?;
    let linked =
        file.write_all(line.as_ref()).and_then(|()| file.sync_all()).and_then(|()| std::fs::hard_link(&tmp, path));
    drop(file);
    let removed = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(unwritable(e)),
    }
    if let Err(e) = removed {
        // The key is in place; the extra name is only untidy (and readable by us alone).
        tracing::warn!(file = %tmp.display(), error = %e, "Could not remove the temporary master key file.");
    }
    sync_dir(&dir).map_err(unwritable)?;
    Ok(true)
}

/// Renames `from` over `to` and makes the rename durable.
pub fn replace(from: &Path, to: &Path) -> Result<(), SecretsError> {
    let unwritable = |source| SecretsError::KeyFileUnwritable { path: to.to_owned(), source };
    std::fs::rename(from, to).map_err(unwritable)?;
    sync_dir(&parent(to)).map_err(unwritable)
}

/// Deletes `path` if it is there and makes that durable.
pub fn remove(path: &Path) -> Result<(), SecretsError> {
    let unwritable = |source| SecretsError::KeyFileUnwritable { path: path.to_owned(), source };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(unwritable(e)),
    }
    sync_dir(&parent(path)).map_err(unwritable)
}

/// Whether anything (even a dangling symlink) is at `path`.
pub fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// The directory holding `path`; `.` for a bare file name.
pub fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn malformed(path: &Path, reason: &'static str) -> SecretsError {
    SecretsError::KeyFileMalformed { path: path.to_owned(), reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_one_key_line() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        for content in [format!("plinth-master-key-v1:{hex}\n"), format!("plinth-master-key-v1:{hex}")] {
            let key = parse(content.as_bytes()).unwrap();
            assert_eq!(key[..4], [0x00, 0x11, 0x22, 0x33]);
            assert_eq!(key[31], 0xff);
        }
    }

    #[test]
    fn parse_says_what_is_wrong() {
        let hex = "00".repeat(32);
        let cases = [
            (String::new(), "it is empty"),
            (format!("plinth-master-key-v2:{hex}\n"), "does not start with"),
            (format!("{hex}\n"), "does not start with"),
            (format!("plinth-master-key-v1:{hex}\r\n"), "single line"),
            (format!("plinth-master-key-v1:{}\n\n", &hex[..62]), "single line"),
            (format!("plinth-master-key-v1:{}\n", &hex[..62]), "64 hex digits"),
            (format!("plinth-master-key-v1:{}zz\n", &hex[..62]), "not a hex digit"),
            (format!("plinth-master-key-v1:{hex}\n{hex}\n"), "single line"),
            (format!("plinth-master-key-v1:{hex}00\n"), "64 hex digits"),
        ];
        for (content, want) in cases {
            let reason = parse(content.as_bytes()).unwrap_err();
            assert!(reason.contains(want), "{content:?}: {reason}");
        }
    }
}
