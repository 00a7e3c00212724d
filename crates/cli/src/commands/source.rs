//! Where a command reads plinth.toml and the files from: a working tree, or a commit.

use std::path::Path;

use plinth_core::CONFIG_FILE;
use plinth_core::modules::ModuleGraph;
use plinth_core::tree::Tree;
use plinth_git::{FsTree, Repo};

use crate::output::{Failure, Format};

/// The files to read: a directory on disk, or a commit of a repository.
pub enum Source {
    Dir(FsTree),
    Commit { repo: Box<Repo>, commit: plinth_git::GitCommit },
}

impl Source {
    /// Picks the source for `--repo DIR [--rev REV]`. Without a revision, a working tree is
    /// read as it is on disk (uncommitted edits included); a bare repo is read at HEAD.
    pub fn open(dir: &Path, rev: Option<&str>, format: Format) -> Result<Source, Failure> {
        let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let dir = absolute.as_path();
        if rev.is_none() && dir.join(CONFIG_FILE).is_file() {
            return Ok(Source::Dir(FsTree::new(dir)));
        }
        let repo = match Repo::discover(dir) {
            Ok(repo) => repo,
            Err(_) if rev.is_none() && dir.is_dir() => return Ok(Source::Dir(FsTree::new(dir))),
            Err(e) => return Err(Failure::coded(&e, format)),
        };
        match (rev, repo.workdir()) {
            (None, Some(workdir)) => Ok(Source::Dir(FsTree::new(workdir))),
            (rev, _) => {
                let rev = rev.unwrap_or("HEAD");
                let commit = repo.resolve(rev).map_err(|e| Failure::coded(&e, format))?;
                Ok(Source::Commit {
                    repo: Box::new(repo),
                    commit: plinth_git::GitCommit { rev: rev.to_owned(), id: commit },
                })
            }
        }
    }

    /// Where the files come from, for messages.
    pub fn describe(&self) -> String {
        match self {
            Source::Dir(tree) => tree.root().display().to_string(),
            Source::Commit { commit, .. } => format!("{} ({})", commit.rev, plinth_git::short(&commit.id)),
        }
    }

    /// Runs `f` with the tree.
    pub fn with_tree<T>(&self, format: Format, f: impl FnOnce(&dyn Tree) -> Result<T, Failure>) -> Result<T, Failure> {
        match self {
            Source::Dir(tree) => f(tree),
            Source::Commit { repo, commit } => {
                let tree = repo.tree(Some(commit.id)).map_err(|e| Failure::coded(&e, format))?;
                f(&tree)
            }
        }
    }
}

/// Reads plinth.toml from a tree.
pub fn read_config(tree: &dyn Tree, source: &str, format: Format) -> Result<String, Failure> {
    let bytes = tree
        .read_file(CONFIG_FILE)
        .map_err(|e| Failure::new("repo.unreadable", e.to_string(), "Check that the files are readable.", format))?;
    let Some(bytes) = bytes else {
        return Err(Failure::new(
            "config.not_found",
            format!("there is no {CONFIG_FILE} in {source}"),
            format!("Run `plinth init` to write one, or pass `--repo` pointing at the repo that has {CONFIG_FILE}."),
            format,
        ));
    };
    String::from_utf8(bytes).map_err(|_| {
        Failure::new(
            "config.not_utf8",
            format!("{CONFIG_FILE} in {source} is not UTF-8"),
            "Save the file as UTF-8.",
            format,
        )
    })
}

/// The module graph of a whole tree.
pub fn module_graph(tree: &dyn Tree, format: Format) -> Result<ModuleGraph, Failure> {
    ModuleGraph::build(tree)
        .map_err(|e| Failure::new("repo.unreadable", e.to_string(), "Check that the files are readable.", format))
}
