//! A directory on disk as a [`Tree`], for checking uncommitted files.

use std::path::{Path, PathBuf};

use plinth_core::tree::{DirEntry, EntryKind, Tree, TreeError};

/// Files under a directory on disk. `.git` is never listed.
#[derive(Clone, Debug)]
pub struct FsTree {
    root: PathBuf,
}

impl FsTree {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, rel: &str) -> PathBuf {
        if rel.is_empty() { self.root.clone() } else { self.root.join(rel) }
    }
}

fn tree_error(path: &Path, e: std::io::Error) -> TreeError {
    TreeError::new(format!("{}: {e}", path.display()))
}

impl Tree for FsTree {
    fn read_dir(&self, dir: &str) -> Result<Option<Vec<DirEntry>>, TreeError> {
        let path = self.path(dir);
        let reader = match std::fs::read_dir(&path) {
            Ok(r) => r,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
                return Ok(None);
            }
            Err(e) => return Err(tree_error(&path, e)),
        };
        let mut entries = Vec::new();
        for entry in reader {
            let entry = entry.map_err(|e| tree_error(&path, e))?;
            let Ok(name) = entry.file_name().into_string() else { continue };
            if name == ".git" {
                continue;
            }
            let file_type = entry.file_type().map_err(|e| tree_error(&entry.path(), e))?;
            let kind = if file_type.is_dir() {
                EntryKind::Dir
            } else if file_type.is_symlink() {
                EntryKind::Symlink
            } else {
                EntryKind::File
            };
            entries.push(DirEntry { name, kind });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Some(entries))
    }

    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, TreeError> {
        let full = self.path(path);
        match std::fs::read(&full) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::IsADirectory) => Ok(None),
            Err(e) => Err(tree_error(&full, e)),
        }
    }
}
