//! The CA's two files: reading them (the key only when group and others cannot), and writing
//! them so that each appears whole, the key with mode 0600 from its first byte, and neither
//! ever replaces a file already there. All of it blocks.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use zeroize::Zeroizing;

use super::CaError;

/// A CA file is a few hundred bytes; anything much larger is not one.
const MAX_FILE: u64 = 64 * 1024;

/// Creates the CA's directory (mode 0700) if it is missing.
pub(super) fn create_dir(dir: &Path) -> Result<(), CaError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| CaError::Unwritable { path: dir.to_owned(), source })
}

/// Reads the certificate; `None` if there is none.
pub(super) fn read_cert(path: &Path) -> Result<Option<String>, CaError> {
    let Some(mut file) = open(path)? else { return Ok(None) };
    let mut text = String::new();
    read_to(path, &mut file, &mut text)?;
    Ok(Some(text))
}

/// Reads the private key; `None` if there is none. Refuses a file that group or others may
/// access in any way. The text is zeroed when dropped.
pub(super) fn read_key(path: &Path) -> Result<Option<Zeroizing<String>>, CaError> {
    let Some(mut file) = open(path)? else { return Ok(None) };
    // The mode of the file we read, not of whatever the path names a moment later.
    let meta = file.metadata().map_err(|source| CaError::Unreadable { path: path.to_owned(), source })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CaError::KeyTooOpen { path: path.to_owned(), mode });
    }
    // Room for the whole file up front, so that no copy of the key is left in freed memory.
    let mut text = Zeroizing::new(String::with_capacity(usize::try_from(meta.len().min(MAX_FILE)).unwrap_or(0) + 1));
    read_to(path, &mut file, &mut text)?;
    Ok(Some(text))
}

fn open(path: &Path) -> Result<Option<File>, CaError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CaError::Unreadable { path: path.to_owned(), source }),
    };
    let meta = file.metadata().map_err(|source| CaError::Unreadable { path: path.to_owned(), source })?;
    if !meta.is_file() {
        return Err(CaError::Malformed { path: path.to_owned(), reason: "it is not a regular file" });
    }
    Ok(Some(file))
}

fn read_to(path: &Path, file: &mut File, text: &mut String) -> Result<(), CaError> {
    let read = file.take(MAX_FILE + 1).read_to_string(text);
    match read {
        Ok(n) if n as u64 > MAX_FILE => Err(CaError::Malformed { path: path.to_owned(), reason: "it is too large" }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            Err(CaError::Malformed { path: path.to_owned(), reason: "it is not text" })
        }
        Err(source) => Err(CaError::Unreadable { path: path.to_owned(), source }),
    }
}

/// Writes `contents` to `path` unless a file is already there: to a temporary file in the same
/// directory, created (`create_new`) with `mode`, fsynced, then hard-linked into place (a link
/// is a rename that never replaces anything), and the directory fsynced. Returns `false`,
/// writing nothing, if `path` already exists, so that two processes starting at once agree on
/// one CA.
pub(super) fn create(path: &Path, contents: &[u8], mode: u32) -> Result<bool, CaError> {
    let unwritable = |source| CaError::Unwritable { path: path.to_owned(), source };
    let dir = path.parent().ok_or_else(|| unwritable(io::Error::other("the path has no directory")))?;
    let name = path.file_name().ok_or_else(|| unwritable(io::Error::other("the path does not name a file")))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    // A leftover of a process that had this id and died mid-write.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(unwritable(e)),
    }

    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(unwritable)?;
    let linked = file.write_all(contents).and_then(|()| file.sync_all()).and_then(|()| std::fs::hard_link(&tmp, path));
    drop(file);
    let removed = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(unwritable(e)),
    }
    if let Err(e) = removed {
        // The file is in place; the extra name is only untidy.
        tracing::warn!(file = %tmp.display(), error = %e, "Could not remove a temporary CA file.");
    }
    File::open(dir).and_then(|dir| dir.sync_all()).map_err(unwritable)?;
    Ok(true)
}
