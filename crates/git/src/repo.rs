//! A repository opened for reading: revisions, comparisons, tree diffs and trees.

use foldhash::HashMap;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use gix::ObjectId;
use gix::bstr::ByteSlice;
use plinth_core::changes::{ChangeKind, PathChange};
use plinth_core::tree::{DirEntry, EntryKind, Tree, TreeError, is_under, parent, resolve_relative};

use crate::error::GitError;

/// A git repository, bare or not.
pub struct Repo {
    repo: gix::Repository,
}

impl std::fmt::Debug for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repo").field("git_dir", &self.repo.git_dir()).finish()
    }
}

/// A commit named on the command line, with the name used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitCommit {
    pub rev: String,
    pub id: ObjectId,
}

/// Which two revisions a change is measured between, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comparison {
    /// The base commit; `None` means the empty tree (the head is a first commit).
    pub base: Option<ObjectId>,
    pub head: ObjectId,
    /// How the base was chosen, for people reading the output.
    pub how: String,
}

impl Repo {
    /// Opens the repository at `path` or in one of its parents.
    pub fn discover(path: &Path) -> Result<Repo, GitError> {
        let not_a_repo = |e: &dyn std::fmt::Display| GitError::NotARepo {
            path: path.display().to_string(),
            reason: e.to_string().lines().next().unwrap_or_default().to_owned(),
        };
        if !path.exists() {
            return Err(not_a_repo(&"the directory does not exist"));
        }
        // No object cache: `GitTree` keeps the trees it decodes, and a run reads each other
        // object once, so a cache would only copy every object into it.
        let repo = gix::discover(path).map_err(|e| not_a_repo(&e))?;
        Ok(Repo { repo })
    }

    pub fn git_dir(&self) -> &Path {
        self.repo.git_dir()
    }

    /// The working directory, unless the repository is bare.
    pub fn workdir(&self) -> Option<PathBuf> {
        self.repo.workdir().map(Path::to_path_buf)
    }

    /// The commit a revision names (`main`, `origin/main`, `HEAD~2`, a tag or a hash).
    pub fn resolve(&self, rev: &str) -> Result<ObjectId, GitError> {
        let unknown = || GitError::UnknownRevision { rev: rev.to_owned() };
        if rev.is_empty() || rev.starts_with('-') {
            return Err(unknown());
        }
        // A full hash, as CI passes, needs no name lookup.
        if rev.len() == 40
            && let Ok(id) = ObjectId::from_hex(rev.as_bytes())
        {
            if !self.repo.has_object(id) {
                return Err(unknown());
            }
            return self.repo.find_commit(id).map(|c| c.id).map_err(|_| GitError::NotACommit {
                rev: rev.to_owned(),
                kind: self.repo.find_header(id).map(|h| h.kind().to_string()).unwrap_or_else(|_| "object".into()),
            });
        }
        let id = self.repo.rev_parse_single(rev).map_err(|_| unknown())?;
        let object = id.object().map_err(GitError::read)?;
        let kind = object.kind;
        object
            .peel_to_commit()
            .map(|c| c.id)
            .map_err(|_| GitError::NotACommit { rev: rev.to_owned(), kind: kind.to_string() })
    }

    /// The branch `HEAD` points at, if any.
    pub fn head_branch(&self) -> Option<String> {
        let name = self.repo.head_name().ok()??;
        Some(name.shorten().to_str_lossy().into_owned())
    }

    /// Picks base and head the way the CircleCI path-filtering orb does: the base is the merge
    /// base of the two; when that is the head itself (building on the base branch), the head's
    /// first parent; for a first commit, the empty tree.
    pub fn compare(&self, base_rev: &str, head_rev: &str) -> Result<Comparison, GitError> {
        let head = self.resolve(head_rev)?;
        let base = self.resolve(base_rev)?;
        let merge_base = self.repo.merge_base(base, head).map_err(GitError::read)?.map(|id| id.detach());
        match merge_base {
            Some(mb) if mb == head => match self.first_parent(head)? {
                Some(parent) => Ok(Comparison {
                    base: Some(parent),
                    head,
                    how: format!("{head_rev} is already on {base_rev}, so against its first parent"),
                }),
                None => Ok(Comparison {
                    base: None,
                    head,
                    how: format!("{head_rev} is a first commit, so against the empty tree"),
                }),
            },
            Some(mb) => Ok(Comparison {
                base: Some(mb),
                head,
                how: format!("against the merge base of {base_rev} and {head_rev}"),
            }),
            None => Err(GitError::Read(format!("{base_rev} and {head_rev} have no common history"))),
        }
    }

    pub fn first_parent(&self, commit: ObjectId) -> Result<Option<ObjectId>, GitError> {
        let commit = self.repo.find_commit(commit).map_err(GitError::read)?;
        Ok(commit.parent_ids().next().map(|id| id.detach()))
    }

    /// The root tree of a commit; the empty tree for `None`.
    pub fn tree_id(&self, commit: Option<ObjectId>) -> Result<ObjectId, GitError> {
        match commit {
            Some(c) => {
                let commit = self.repo.find_commit(c).map_err(GitError::read)?;
                Ok(commit.tree_id().map_err(GitError::read)?.detach())
            }
            None => Ok(ObjectId::empty_tree(self.repo.object_hash())),
        }
    }

    /// A commit's files, read straight from git objects.
    pub fn tree(&self, commit: Option<ObjectId>) -> Result<GitTree<'_>, GitError> {
        Ok(GitTree {
            repo: &self.repo,
            root: self.tree_id(commit)?,
            dirs: RefCell::default(),
            listings: RefCell::default(),
        })
    }

    /// Changed paths as `git diff --name-only` prints them with git's default rename
    /// detection: a renamed file shows its new path only. Used for orb compatibility.
    pub fn names_like_git_diff(&self, base_tree: ObjectId, head_tree: ObjectId) -> Result<Vec<String>, GitError> {
        let old = self.repo.find_tree(base_tree).map_err(GitError::read)?;
        let new = self.repo.find_tree(head_tree).map_err(GitError::read)?;
        let changes = self.repo.diff_tree_to_tree(&old, &new, None).map_err(GitError::read)?;
        use gix::object::tree::diff::ChangeDetached as Change;
        let mut names: Vec<String> = changes
            .into_iter()
            .filter_map(|change| {
                let (location, mode) = match change {
                    Change::Addition { location, entry_mode, .. }
                    | Change::Deletion { location, entry_mode, .. }
                    | Change::Modification { location, entry_mode, .. }
                    | Change::Rewrite { location, entry_mode, .. } => (location, entry_mode),
                };
                (!mode.is_tree()).then(|| location.to_str_lossy().into_owned())
            })
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }
}

/// One commit's files. Directory lookups and decoded tree objects are cached, so looking up
/// many paths reads each tree object once.
pub struct GitTree<'r> {
    repo: &'r gix::Repository,
    root: ObjectId,
    dirs: RefCell<HashMap<String, Option<ObjectId>>>,
    listings: RefCell<gix::hashtable::HashMap<ObjectId, Rc<Listing>>>,
}

/// A decoded tree object: its entry names in one buffer, and each entry's id and mode.
#[derive(Default)]
struct Listing {
    names: String,
    entries: Vec<(std::ops::Range<usize>, ObjectId, gix::objs::tree::EntryMode)>,
}

impl Listing {
    fn iter(&self) -> impl Iterator<Item = (&str, ObjectId, gix::objs::tree::EntryMode)> {
        self.entries.iter().map(|(range, id, mode)| (&self.names[range.clone()], *id, *mode))
    }
}

impl std::fmt::Debug for GitTree<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitTree").field("root", &self.root).finish()
    }
}

fn tree_error(e: impl std::fmt::Display) -> TreeError {
    TreeError::new(e.to_string())
}

impl GitTree<'_> {
    pub fn root(&self) -> ObjectId {
        self.root
    }

    /// Every changed file between `base` and this tree, without rename detection: a rename is
    /// a deletion and an addition, so both sides count. Tree objects read here stay cached for
    /// later lookups, so a diff followed by path lookups reads each tree object once.
    pub fn changes_from(&self, base: &GitTree<'_>) -> Result<Vec<PathChange>, TreeError> {
        let mut out = Vec::new();
        diff_dirs(base, Some(base.root), self, Some(self.root), "", &mut out)?;
        out.sort();
        Ok(out)
    }

    /// The tree object of a directory, if there is one.
    fn dir_id(&self, dir: &str) -> Result<Option<ObjectId>, TreeError> {
        if dir.is_empty() {
            return Ok(Some(self.root));
        }
        if let Some(found) = self.dirs.borrow().get(dir) {
            return Ok(*found);
        }
        let name = dir.rsplit('/').next().unwrap_or(dir);
        let found = match self.dir_id(parent(dir))? {
            Some(parent_id) => self.entry(parent_id, name, true)?.filter(|(_, mode)| mode.is_tree()).map(|(id, _)| id),
            None => None,
        };
        self.dirs.borrow_mut().insert(dir.to_owned(), found);
        Ok(found)
    }

    fn listing(&self, id: ObjectId) -> Result<Rc<Listing>, TreeError> {
        if let Some(listing) = self.listings.borrow().get(&id) {
            return Ok(listing.clone());
        }
        let mut listing = Listing::default();
        if !id.is_empty_tree() {
            let tree = self.repo.find_tree(id).map_err(tree_error)?;
            // An entry takes at least 28 bytes of the object (a mode, a space, a name, a NUL and
            // a 20-byte id), so these bound what the listing needs; the rest is given back below.
            listing.names.reserve(tree.data.len());
            listing.entries.reserve(tree.data.len() / 28);
            for entry in gix::objs::TreeRefIter::from_bytes(&tree.data, self.repo.object_hash()) {
                let entry = entry.map_err(tree_error)?;
                let start = listing.names.len();
                match std::str::from_utf8(entry.filename) {
                    Ok(name) => listing.names.push_str(name),
                    Err(_) => listing.names.push_str(&entry.filename.to_str_lossy()),
                }
                listing.entries.push((start..listing.names.len(), entry.oid.to_owned(), entry.mode));
            }
            // Listings stay until the run ends; room left in them would only spread the heap
            // over more pages.
            listing.names.shrink_to_fit();
            listing.entries.shrink_to_fit();
        }
        let listing = Rc::new(listing);
        self.listings.borrow_mut().insert(id, listing.clone());
        Ok(listing)
    }

    /// Looks up one entry by binary search in git's tree order, which depends on whether the
    /// entry is a directory; `dir` says which is wanted.
    fn entry(
        &self,
        tree: ObjectId,
        name: &str,
        dir: bool,
    ) -> Result<Option<(ObjectId, gix::objs::tree::EntryMode)>, TreeError> {
        let listing = self.listing(tree)?;
        let found = listing.entries.binary_search_by(|(range, _, mode)| {
            git_order((&listing.names[range.clone()], mode.is_tree()), (name, dir))
        });
        Ok(found.ok().map(|i| {
            let (_, id, mode) = &listing.entries[i];
            (*id, *mode)
        }))
    }
}

/// Why a tree could not be written out.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("reading the tree failed: {0}")]
    Tree(#[from] TreeError),
    #[error("writing {path} failed: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("the tree holds an entry named `{0}`, which is unsafe to write out")]
    UnsafeName(String),
}

impl GitTree<'_> {
    /// Writes every file of the tree under `dest`; see [`GitTree::export_paths`].
    pub fn export(&self, dest: &Path) -> Result<u64, ExportError> {
        self.export_paths(dest, &[String::new()])
    }

    /// Writes the given repo paths (directories with everything under them, or single files)
    /// under `dest` at the same relative paths, with git's modes: executables stay executable,
    /// symlinks stay symlinks, submodules become empty directories. A symlink that points
    /// elsewhere in the tree brings its target along, so nothing dangles that would not dangle
    /// in a full checkout. Paths the tree lacks are skipped. Returns the number of files
    /// written. Entries whose names could escape `dest` are refused.
    pub fn export_paths(&self, dest: &Path, paths: &[String]) -> Result<u64, ExportError> {
        std::fs::create_dir_all(dest).map_err(|e| write_error(dest, e))?;
        let mut exporter = Exporter { tree: self, dest, count: 0, done: Vec::new(), links: Vec::new() };
        let mut pending: std::collections::VecDeque<String> = paths.iter().cloned().collect();
        while let Some(path) = pending.pop_front() {
            if exporter.done.iter().any(|done| is_under(&path, done)) {
                continue;
            }
            exporter.export_path(&path)?;
            exporter.done.push(path);
            for (link, target) in std::mem::take(&mut exporter.links) {
                if let Some(resolved) = resolve_relative(parent(&link), &target) {
                    pending.push_back(resolved);
                }
            }
        }
        Ok(exporter.count)
    }
}

fn write_error(path: &Path, source: std::io::Error) -> ExportError {
    ExportError::Write { path: path.display().to_string(), source }
}

/// A directory that may already be there (an export of its parent came later).
fn ensure_dir(path: &Path) -> Result<(), ExportError> {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(write_error(path, e)),
        _ => Ok(()),
    }
}

fn check_name(name: &str) -> Result<(), ExportError> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains(['/', '\\', '\0'])
        || name.eq_ignore_ascii_case(".git")
    {
        return Err(ExportError::UnsafeName(name.to_owned()));
    }
    Ok(())
}

/// One export in progress.
struct Exporter<'t, 'r> {
    tree: &'t GitTree<'r>,
    dest: &'t Path,
    count: u64,
    /// Repo paths written whole so far.
    done: Vec<String>,
    /// Symlinks written since the last look: their repo path and target.
    links: Vec<(String, String)>,
}

impl Exporter<'_, '_> {
    fn export_path(&mut self, path: &str) -> Result<(), ExportError> {
        if path.is_empty() {
            return self.export_dir(self.tree.root, "");
        }
        for name in path.split('/') {
            check_name(name)?;
        }
        let Some(dir) = self.tree.dir_id(parent(path))? else { return Ok(()) };
        let name = path.rsplit('/').next().unwrap_or(path);
        let found = match self.tree.entry(dir, name, true)? {
            Some(found) if found.1.is_tree() => Some(found),
            _ => self.tree.entry(dir, name, false)?,
        };
        let Some((id, mode)) = found else { return Ok(()) };
        let parent_dir = self.dest.join(parent(path));
        std::fs::create_dir_all(&parent_dir).map_err(|e| write_error(&parent_dir, e))?;
        self.write_entry(path, id, mode)
    }

    fn export_dir(&mut self, id: ObjectId, path: &str) -> Result<(), ExportError> {
        ensure_dir(&self.dest.join(path))?;
        let mut pending = vec![(id, path.to_owned())];
        while let Some((id, dir)) = pending.pop() {
            let listing = self.tree.listing(id)?;
            for (name, entry_id, mode) in listing.iter() {
                check_name(name)?;
                let path = plinth_core::tree::join(&dir, name);
                if self.done.iter().any(|done| is_under(&path, done)) {
                    continue;
                }
                if mode.is_tree() {
                    ensure_dir(&self.dest.join(&path))?;
                    pending.push((entry_id, path));
                } else {
                    self.write_entry(&path, entry_id, mode)?;
                }
            }
        }
        Ok(())
    }

    fn write_entry(&mut self, path: &str, id: ObjectId, mode: gix::objs::tree::EntryMode) -> Result<(), ExportError> {
        let out = self.dest.join(path);
        if mode.is_tree() {
            return self.export_dir(id, path);
        }
        if mode.is_commit() {
            return ensure_dir(&out);
        }
        let blob = self.tree.repo.find_blob(id).map_err(tree_error)?;
        if mode.is_link() {
            let target = String::from_utf8_lossy(&blob.data).into_owned();
            std::os::unix::fs::symlink(&target, &out).map_err(|e| write_error(&out, e))?;
            self.links.push((path.to_owned(), target));
        } else {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(&out, &blob.data).map_err(|e| write_error(&out, e))?;
            let perms = if mode.is_executable() { 0o755 } else { 0o644 };
            std::fs::set_permissions(&out, std::fs::Permissions::from_mode(perms)).map_err(|e| write_error(&out, e))?;
            self.count += 1;
        }
        Ok(())
    }
}

/// Git's tree order: names compare as bytes, with directories as if they ended in `/`.
fn git_order(a: (&str, bool), b: (&str, bool)) -> std::cmp::Ordering {
    fn key<'s>((name, is_dir): (&'s str, bool)) -> impl Iterator<Item = u8> + 's {
        name.bytes().chain(is_dir.then_some(b'/'))
    }
    key(a).cmp(key(b))
}

/// Compares one directory on both sides and records what changed beneath it.
fn diff_dirs(
    base: &GitTree<'_>,
    base_id: Option<ObjectId>,
    head: &GitTree<'_>,
    head_id: Option<ObjectId>,
    prefix: &str,
    out: &mut Vec<PathChange>,
) -> Result<(), TreeError> {
    if base_id == head_id {
        return Ok(());
    }
    let listing = |tree: &GitTree<'_>, id: Option<ObjectId>| match id {
        Some(id) => tree.listing(id),
        None => Ok(Rc::default()),
    };
    let (old, new) = (listing(base, base_id)?, listing(head, head_id)?);
    let mut old_entries = old.iter().peekable();
    let mut new_entries = new.iter().peekable();
    let path = |name: &str| if prefix.is_empty() { name.to_owned() } else { [prefix, "/", name].concat() };
    loop {
        let order = match (old_entries.peek(), new_entries.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(a), Some(b)) => git_order((a.0, a.2.is_tree()), (b.0, b.2.is_tree())),
        };
        match order {
            std::cmp::Ordering::Less => {
                let Some((name, id, mode)) = old_entries.next() else { break };
                if mode.is_tree() {
                    diff_dirs(base, Some(id), head, None, &path(name), out)?;
                } else {
                    out.push(PathChange::new(path(name), ChangeKind::Deleted));
                }
            }
            std::cmp::Ordering::Greater => {
                let Some((name, id, mode)) = new_entries.next() else { break };
                if mode.is_tree() {
                    diff_dirs(base, None, head, Some(id), &path(name), out)?;
                } else {
                    out.push(PathChange::new(path(name), ChangeKind::Added));
                }
            }
            std::cmp::Ordering::Equal => {
                let (Some((name, old_id, old_mode)), Some((_, new_id, new_mode))) =
                    (old_entries.next(), new_entries.next())
                else {
                    break;
                };
                if old_mode.is_tree() {
                    diff_dirs(base, Some(old_id), head, Some(new_id), &path(name), out)?;
                } else if old_id != new_id || old_mode != new_mode {
                    out.push(PathChange::new(path(name), ChangeKind::Modified));
                }
            }
        }
    }
    Ok(())
}

impl Tree for GitTree<'_> {
    fn read_dir(&self, dir: &str) -> Result<Option<Vec<DirEntry>>, TreeError> {
        let Some(id) = self.dir_id(dir)? else { return Ok(None) };
        let entries = self
            .listing(id)?
            .iter()
            .map(|(name, _, mode)| DirEntry {
                name: name.to_owned(),
                kind: if mode.is_tree() {
                    EntryKind::Dir
                } else if mode.is_link() {
                    EntryKind::Symlink
                } else if mode.is_commit() {
                    EntryKind::Submodule
                } else {
                    EntryKind::File
                },
            })
            .collect();
        Ok(Some(entries))
    }

    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, TreeError> {
        let name = path.rsplit('/').next().unwrap_or(path);
        let Some(dir) = self.dir_id(parent(path))? else { return Ok(None) };
        match self.entry(dir, name, false)? {
            Some((id, mode)) if mode.is_blob() => {
                let blob = self.repo.find_blob(id).map_err(tree_error)?;
                Ok(Some(blob.data.clone()))
            }
            _ => Ok(None),
        }
    }

    fn is_dir(&self, dir: &str) -> Result<bool, TreeError> {
        Ok(self.dir_id(dir)?.is_some())
    }
}
