//! Errors from reading repositories, with codes and advice.

use plinth_core::ErrorCode;

/// Something went wrong reading a repository.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("no git repository at `{path}`: {reason}")]
    NotARepo { path: String, reason: String },
    #[error("revision `{rev}` does not exist in this repository")]
    UnknownRevision { rev: String },
    #[error("revision `{rev}` is a {kind}, not a commit")]
    NotACommit { rev: String, kind: String },
    #[error("reading the repository failed: {0}")]
    Read(String),
}

impl GitError {
    pub(crate) fn read(e: impl std::fmt::Display) -> Self {
        GitError::Read(e.to_string())
    }
}

impl ErrorCode for GitError {
    fn code(&self) -> &'static str {
        match self {
            GitError::NotARepo { .. } => "repo.not_found",
            GitError::UnknownRevision { .. } => "repo.unknown_revision",
            GitError::NotACommit { .. } => "repo.not_a_commit",
            GitError::Read(_) => "repo.unreadable",
        }
    }

    fn http_status(&self) -> u16 {
        match self {
            GitError::NotARepo { .. } => 404,
            GitError::UnknownRevision { .. } | GitError::NotACommit { .. } => 400,
            GitError::Read(_) => 500,
        }
    }

    fn help(&self) -> String {
        match self {
            GitError::NotARepo { .. } => "Pass `--repo` pointing at a git repository (a working copy or a bare repo).".into(),
            GitError::UnknownRevision { .. } => {
                "Check the name (`git rev-parse <rev>`); for a remote branch fetch it first, or name it as `origin/<branch>`."
                    .into()
            }
            GitError::NotACommit { .. } => "Name a commit, a branch or a tag that points at a commit.".into(),
            GitError::Read(_) => "Check that the repository is intact (`git fsck`) and readable by this user.".into(),
        }
    }
}
