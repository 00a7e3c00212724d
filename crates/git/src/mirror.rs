//! The server's own copy of the repository: a bare mirror in the data dir, kept up to date
//! with `git fetch`, and the questions the server asks it (branch heads, new commits, ancestry).
//! The git CLI does the network part, so every transport and credential helper git supports
//! works; every call has a timeout and never prompts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use plinth_core::ErrorCode;

/// A git command that failed, with what git said.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("`git {command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("`git {command}` did not finish within {seconds} s")]
    TimedOut { command: String, seconds: u64 },
    #[error("could not run git: {0}")]
    Spawn(std::io::Error),
}

impl ErrorCode for MirrorError {
    fn code(&self) -> &'static str {
        match self {
            MirrorError::Failed { .. } => "repo.git_failed",
            MirrorError::TimedOut { .. } => "repo.git_timeout",
            MirrorError::Spawn(_) => "repo.git_missing",
        }
    }

    fn http_status(&self) -> u16 {
        502
    }

    fn help(&self) -> String {
        match self {
            MirrorError::Failed { .. } => {
                "Check that the repository URL is right and that the server's user can read it (keys, credential helper).".into()
            }
            MirrorError::TimedOut { .. } => "Check the network path to the repository; plinth retries on the next poll.".into(),
            MirrorError::Spawn(_) => "Install git on the server's machine and make sure it is on PATH.".into(),
        }
    }
}

/// A bare mirror of the watched repository.
#[derive(Clone, Debug)]
pub struct Mirror {
    git_dir: PathBuf,
    timeout: Duration,
}

impl Mirror {
    /// Opens the mirror at `git_dir`, cloning `source` (a path or URL) into it first if it is
    /// not there yet.
    pub async fn open_or_clone(source: &str, git_dir: &Path, timeout: Duration) -> Result<Mirror, MirrorError> {
        let mirror = Mirror { git_dir: git_dir.to_path_buf(), timeout };
        if !git_dir.join("HEAD").exists() {
            let parent = git_dir.parent().unwrap_or(Path::new("."));
            let target = git_dir.display().to_string();
            mirror.git(parent, &["clone", "--mirror", "--quiet", source, &target]).await?;
        }
        Ok(mirror)
    }

    pub fn git_dir(&self) -> &Path {
        &self.git_dir
    }

    /// Fetches every branch, dropping branches deleted upstream. Git's automatic maintenance
    /// is left out: an idle poll would otherwise start it every time; see [`Mirror::maintain`].
    pub async fn fetch(&self) -> Result<(), MirrorError> {
        self.git(&self.git_dir, &["fetch", "--prune", "--quiet", "--no-auto-maintenance", "origin"]).await.map(|_| ())
    }

    /// Packs and prunes the mirror when git's thresholds say so; cheap when they do not. Meant
    /// for after fetches that brought new commits.
    pub async fn maintain(&self) -> Result<(), MirrorError> {
        self.git(&self.git_dir, &["maintenance", "run", "--auto", "--quiet"]).await.map(|_| ())
    }

    /// Every branch and the commit it points at.
    pub async fn branches(&self) -> Result<BTreeMap<String, String>, MirrorError> {
        let out =
            self.git(&self.git_dir, &["for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/"]).await?;
        Ok(out
            .lines()
            .filter_map(|line| {
                let (sha, name) = line.split_once(' ')?;
                Some((name.strip_prefix("refs/heads/")?.to_owned(), sha.to_owned()))
            })
            .collect())
    }

    /// The commits that are new on a branch now at `tip`, oldest first, following first
    /// parents (a merge is one commit, as the branch saw it), and stopping at any commit
    /// reachable from `known`.
    pub async fn new_commits(&self, tip: &str, known: &[String]) -> Result<Vec<String>, MirrorError> {
        // A new branch made at a commit another branch has (`git checkout -b`, before its first
        // commit) brings nothing new.
        if known.iter().any(|k| k == tip) {
            return Ok(Vec::new());
        }
        let mut args: Vec<String> = vec!["rev-list".into(), "--first-parent".into(), "--reverse".into(), tip.into()];
        args.extend(known.iter().map(|k| format!("^{k}")));
        // Known heads may be gone after a force-push; ignore those rather than fail.
        let known_present = self.existing(known).await?;
        args.retain(|a| !a.starts_with('^') || known_present.iter().any(|k| a[1..] == *k));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.git(&self.git_dir, &refs).await?;
        Ok(out.lines().map(str::to_owned).collect())
    }

    /// Which of these commits the mirror has.
    async fn existing(&self, commits: &[String]) -> Result<Vec<String>, MirrorError> {
        let mut out = Vec::new();
        for commit in commits {
            if self.git(&self.git_dir, &["cat-file", "-e", &format!("{commit}^{{commit}}")]).await.is_ok() {
                out.push(commit.clone());
            }
        }
        Ok(out)
    }

    /// Whether `ancestor` is `descendant` or one of its ancestors.
    pub async fn is_ancestor(&self, ancestor: &str, descendant: &str) -> Result<bool, MirrorError> {
        match self.git(&self.git_dir, &["merge-base", "--is-ancestor", ancestor, descendant]).await {
            Ok(_) => Ok(true),
            Err(MirrorError::Failed { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn git(&self, dir: &Path, args: &[&str]) -> Result<String, MirrorError> {
        let command = args.join(" ");
        let child = tokio::process::Command::new("git")
            .current_dir(dir)
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "true")
            .env_remove("GIT_DIR")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(MirrorError::Spawn)?;
        let output = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(result) => result.map_err(MirrorError::Spawn)?,
            Err(_) => return Err(MirrorError::TimedOut { command, seconds: self.timeout.as_secs() }),
        };
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
            return Err(MirrorError::Failed { command, stderr });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}
