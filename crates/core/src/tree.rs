//! The read-only view of a repository's files that config expansion and the module graph work
//! over: a git tree at one commit, a working directory, or an in-memory tree in tests.

use std::collections::BTreeMap;

/// What a directory entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    Dir,
    File,
    Symlink,
    /// A git submodule (a commit, not files).
    Submodule,
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub kind: EntryKind,
}

/// Reading a tree failed (a corrupt object, an I/O error). Not the same as "not found".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TreeError {
    pub message: String,
}

impl TreeError {
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into() }
    }
}

/// A read-only file tree. Paths are relative to the repo root, use `/`, and `""` is the root.
pub trait Tree {
    /// The entries of a directory, or `None` when there is no directory at `dir`.
    fn read_dir(&self, dir: &str) -> Result<Option<Vec<DirEntry>>, TreeError>;

    /// The bytes of a file, or `None` when there is no file at `path`.
    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, TreeError>;

    fn is_dir(&self, dir: &str) -> Result<bool, TreeError> {
        Ok(self.read_dir(dir)?.is_some())
    }
}

/// Joins a directory and a name into a repo path.
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() { name.to_owned() } else { format!("{dir}/{name}") }
}

/// The directory holding `path` (`""` for top-level entries).
pub fn parent(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

/// The directories containing `path`, deepest first, ending with the root `""`.
pub fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    let mut next = Some(parent(path));
    std::iter::from_fn(move || {
        let current = next?;
        next = if current.is_empty() { None } else { Some(parent(current)) };
        Some(current)
    })
}

/// `rel` (a relative path such as `../modules/app` or `common.tf`) seen from `dir`, as a repo
/// path; `None` when it climbs above the repo root or is absolute.
pub fn resolve_relative(dir: &str, rel: &str) -> Option<String> {
    if rel.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = if dir.is_empty() { Vec::new() } else { dir.split('/').collect() };
    for piece in rel.split('/') {
        match piece {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            other => parts.push(other),
        }
    }
    Some(parts.join("/"))
}

/// Whether `path` is `dir` itself or lies under it.
pub fn is_under(path: &str, dir: &str) -> bool {
    dir.is_empty() || path == dir || (path.starts_with(dir) && path.as_bytes().get(dir.len()) == Some(&b'/'))
}

/// A tree held in memory: a map from file path to contents. Directories are implied.
#[derive(Clone, Debug, Default)]
pub struct MemTree {
    files: BTreeMap<String, Vec<u8>>,
}

impl MemTree {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, path: &str, contents: &str) -> Self {
        self.insert(path, contents);
        self
    }

    pub fn insert(&mut self, path: &str, contents: &str) {
        self.files.insert(path.to_owned(), contents.as_bytes().to_vec());
    }

    pub fn remove(&mut self, path: &str) {
        self.files.remove(path);
    }
}

impl Tree for MemTree {
    fn read_dir(&self, dir: &str) -> Result<Option<Vec<DirEntry>>, TreeError> {
        let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
        let mut entries: Vec<DirEntry> = Vec::new();
        for path in self.files.keys().filter(|p| p.starts_with(&prefix)) {
            let rest = &path[prefix.len()..];
            let (name, kind) = match rest.find('/') {
                Some(i) => (&rest[..i], EntryKind::Dir),
                None => (rest, EntryKind::File),
            };
            if entries.last().is_none_or(|e| e.name != name) {
                entries.push(DirEntry { name: name.to_owned(), kind });
            }
        }
        if entries.is_empty() && !dir.is_empty() {
            return Ok(None);
        }
        Ok(Some(entries))
    }

    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, TreeError> {
        Ok(self.files.get(path).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_helpers() {
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("a/b", "c"), "a/b/c");
        assert_eq!(parent("a/b/c.tf"), "a/b");
        assert_eq!(parent("c.tf"), "");
        assert_eq!(ancestors("a/b/c.tf").collect::<Vec<_>>(), ["a/b", "a", ""]);
        assert_eq!(ancestors("c.tf").collect::<Vec<_>>(), [""]);
        assert!(is_under("a/b/c", "a/b"));
        assert!(is_under("a/b", "a/b"));
        assert!(!is_under("a/bc", "a/b"));
        assert!(is_under("anything", ""));
    }

    #[test]
    fn mem_tree_lists_directories() {
        let t = MemTree::new().with("a/x.tf", "").with("a/b/y.tf", "").with("z", "");
        let root = t.read_dir("").unwrap().unwrap();
        assert_eq!(root.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["a", "z"]);
        let a = t.read_dir("a").unwrap().unwrap();
        assert_eq!(a[0], DirEntry { name: "b".into(), kind: EntryKind::Dir });
        assert_eq!(a[1], DirEntry { name: "x.tf".into(), kind: EntryKind::File });
        assert!(t.read_dir("missing").unwrap().is_none());
        assert!(t.read_dir("z").unwrap().is_none());
    }
}
