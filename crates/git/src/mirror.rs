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

    /// Commits the directory `files` (or, with `None`, nothing) at `path` on `branch`, on top
    /// of the branch's tip (a new branch with no parent if there is none), and pushes it to the
    /// origin. The rest of the branch's tree is kept. Returns the new commit, or `None` when the
    /// tree did not change. The caller serializes calls.
    pub async fn publish_dir(
        &self,
        branch: &str,
        path: &str,
        files: Option<&Path>,
        message: &str,
    ) -> Result<Option<String>, MirrorError> {
        let scratch = self.git_dir.join("plinth-publish");
        let _ = tokio::fs::remove_dir_all(&scratch).await;
        let work = scratch.join("tree");
        let index = scratch.join("index");
        tokio::fs::create_dir_all(&work).await.map_err(MirrorError::Spawn)?;
        let result = async {
            let git_dir = self.git_dir.display().to_string();
            let index = index.display().to_string();
            let run = |args: Vec<String>| {
                let mut full = vec!["--git-dir".to_owned(), git_dir.clone(), "--work-tree".to_owned(), ".".to_owned()];
                full.extend(args);
                let env = vec![
                    ("GIT_INDEX_FILE".to_owned(), index.clone()),
                    ("GIT_AUTHOR_NAME".to_owned(), "plinth".to_owned()),
                    ("GIT_AUTHOR_EMAIL".to_owned(), "plinth@localhost".to_owned()),
                    ("GIT_COMMITTER_NAME".to_owned(), "plinth".to_owned()),
                    ("GIT_COMMITTER_EMAIL".to_owned(), "plinth@localhost".to_owned()),
                ];
                let work = work.clone();
                async move { self.git_with(&work, &full, &env).await }
            };
            let reference = format!("refs/heads/{branch}");
            let tip = run(vec!["rev-parse".into(), "--verify".into(), "-q".into(), reference.clone()]).await.ok();
            let tip = tip.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
            match &tip {
                Some(tip) => run(vec!["read-tree".into(), tip.clone()]).await?,
                None => run(vec!["read-tree".into(), "--empty".into()]).await?,
            };
            let rm = ["rm", "-r", "-q", "--cached", "--ignore-unmatch", "--", path];
            run(rm.iter().map(|s| s.to_string()).collect()).await?;
            if let Some(files) = files {
                let (files, target) = (files.to_path_buf(), work.join(path));
                tokio::task::spawn_blocking(move || copy_tree(&files, &target))
                    .await
                    .map_err(|e| MirrorError::Spawn(std::io::Error::other(e)))?
                    .map_err(MirrorError::Spawn)?;
                run(vec!["add".into(), "-f".into(), "--".into(), path.to_owned()]).await?;
            }
            let tree = run(vec!["write-tree".into()]).await?.trim().to_owned();
            if let Some(tip) = &tip {
                let old = run(vec!["rev-parse".into(), format!("{tip}^{{tree}}")]).await?;
                if old.trim() == tree {
                    return Ok(None);
                }
            }
            let mut commit = vec!["commit-tree".to_owned(), tree, "-m".to_owned(), message.to_owned()];
            if let Some(tip) = &tip {
                commit.push("-p".into());
                commit.push(tip.clone());
            }
            let commit = run(commit).await?.trim().to_owned();
            let url = run(vec!["config".into(), "--get".into(), "remote.origin.url".into()]).await?.trim().to_owned();
            run(vec!["push".into(), "-q".into(), url, format!("{commit}:{reference}")]).await?;
            run(vec!["update-ref".into(), reference, commit.clone()]).await?;
            Ok(Some(commit))
        }
        .await;
        let _ = tokio::fs::remove_dir_all(&scratch).await;
        result
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
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        self.git_with(dir, &args, &[]).await
    }

    async fn git_with(&self, dir: &Path, args: &[String], env: &[(String, String)]) -> Result<String, MirrorError> {
        let command = args.join(" ");
        let child = tokio::process::Command::new("git")
            .current_dir(dir)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
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

/// Copies a directory tree (files and directories; symlinks as links).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}
