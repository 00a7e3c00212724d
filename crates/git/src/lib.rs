//! Reading git repositories without a checkout or working tree, so that everything here works in
//! a bare repo: resolving revisions the way the CircleCI path-filtering orb does, diffing trees,
//! exposing a commit's files as a [`plinth_core::tree::Tree`], and keeping the local module graph
//! cached between runs. A working directory is also offered as a tree, for `plinth check` and
//! `plinth init` on uncommitted files.

mod changed;
mod error;
mod fs_tree;
mod mirror;
mod module_cache;
mod repo;

pub use changed::{ChangedError, ChangedOptions, ChangedReport, changed, short};
pub use error::GitError;
pub use fs_tree::FsTree;
pub use mirror::{Mirror, MirrorError};
pub use module_cache::ModuleCache;
pub use repo::{Comparison, ExportError, GitCommit, GitTree, Repo};

/// The id of git's empty tree, which a first commit is compared against.
pub fn empty_tree_hex() -> String {
    gix::ObjectId::empty_tree(gix::hash::Kind::Sha1).to_string()
}
