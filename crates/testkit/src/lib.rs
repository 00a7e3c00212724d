//! Test helpers that drive real parts. [`TestRepo`] builds real git repositories with the `git`
//! CLI in temp dirs, isolated from the user's own git config.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A git repository in a temp dir, removed when dropped.
#[derive(Debug)]
pub struct TestRepo {
    dir: tempfile::TempDir,
    commits: u32,
}

/// Runs git with a fixed identity and dates, and without the user's or system config.
pub fn git_command(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "plinth test")
        .env("GIT_AUTHOR_EMAIL", "test@plinth.invalid")
        .env("GIT_COMMITTER_NAME", "plinth test")
        .env("GIT_COMMITTER_EMAIL", "test@plinth.invalid")
        .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE");
    cmd
}

/// Runs git in `dir` and returns its trimmed stdout; panics with git's stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = git_command(dir).args(args).output().expect("git runs");
    assert!(
        output.status.success(),
        "git {} failed in {}:\n{}",
        args.join(" "),
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

impl TestRepo {
    /// A new repository whose first branch is `main`, with no commits.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("plinth-repo-").tempdir().expect("temp dir");
        git(dir.path(), &["init", "-q", "-b", "main"]);
        git(dir.path(), &["config", "core.quotepath", "false"]);
        TestRepo { dir, commits: 0 }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn git(&self, args: &[&str]) -> String {
        git(self.path(), args)
    }

    /// Writes a file, creating its directories.
    pub fn write(&self, path: &str, contents: &str) -> &Self {
        let full = self.path().join(path);
        std::fs::create_dir_all(full.parent().expect("a parent")).expect("create dirs");
        std::fs::write(full, contents).expect("write file");
        self
    }

    /// Appends a line to a file, so that it changes.
    pub fn touch(&self, path: &str) -> &Self {
        let full = self.path().join(path);
        let mut contents = std::fs::read_to_string(&full).unwrap_or_default();
        contents.push_str("# touched\n");
        self.write(path, &contents)
    }

    pub fn remove(&self, path: &str) -> &Self {
        self.git(&["rm", "-r", "-q", path]);
        self
    }

    pub fn rename(&self, from: &str, to: &str) -> &Self {
        if let Some(parent) = Path::new(to).parent() {
            std::fs::create_dir_all(self.path().join(parent)).expect("create dirs");
        }
        self.git(&["mv", from, to]);
        self
    }

    /// Commits everything and returns the new commit's hash. Each commit gets its own date so
    /// that history order is stable.
    pub fn commit(&mut self, message: &str) -> String {
        self.commits += 1;
        let date = format!("2026-01-01T00:{:02}:{:02}Z", self.commits / 60, self.commits % 60);
        git(self.path(), &["add", "-A"]);
        let output = git_command(self.path())
            .env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_DATE", &date)
            .args(["commit", "-q", "--allow-empty", "-m", message])
            .output()
            .expect("git runs");
        assert!(output.status.success(), "git commit failed: {}", String::from_utf8_lossy(&output.stderr));
        self.head()
    }

    /// Creates a branch at the current commit and switches to it.
    pub fn branch(&self, name: &str) -> &Self {
        self.git(&["checkout", "-q", "-b", name]);
        self
    }

    /// Commits everything on a new branch that appears only with that commit, as a pushed new
    /// branch does (with `branch` then `commit`, a poll in between sees the branch at its
    /// parent); switches to it and returns the commit's hash.
    pub fn branch_commit(&mut self, name: &str, message: &str) -> String {
        self.git(&["checkout", "-q", "--detach"]);
        let head = self.commit(message);
        self.git(&["checkout", "-q", "-b", name]);
        head
    }

    /// Switches to an existing branch.
    pub fn checkout(&self, name: &str) -> &Self {
        self.git(&["checkout", "-q", name]);
        self
    }

    /// Deletes a branch (merged or not), as a push deleting it would.
    pub fn delete_branch(&self, name: &str) -> &Self {
        self.git(&["branch", "-q", "-D", name]);
        self
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }

    /// A bare clone of this repository, in its own temp dir.
    pub fn bare_clone(&self) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::Builder::new().prefix("plinth-bare-").tempdir().expect("temp dir");
        let target = dir.path().join("repo.git");
        git(dir.path(), &["clone", "-q", "--bare", &self.path().display().to_string(), "repo.git"]);
        (dir, target)
    }
}

/// Seed 000's plinth.toml: `terraform/{env}` stacks released from `main`; prd needs approval
/// by `sre`.
pub const SEED_000_CONFIG: &str = r#"main_branch = "main"

[environments.stg]
branches = ["main"]

[environments.prd]
branches = ["main"]
approval = true
approvers = ["sre"]

[stacks.app]
path = "terraform/{env}"
environment = "{env}"
"#;

/// Seed 000's layout (Lancers): terraform/stg and terraform/prd share modules/app, whose one
/// `terraform_data` resource and output use built-in providers only. Written, not committed.
pub fn write_seed_000(repo: &TestRepo) {
    repo.write("plinth.toml", SEED_000_CONFIG);
    for env in ["stg", "prd"] {
        repo.write(
            &format!("terraform/{env}/main.tf"),
            &format!(
                "module \"app\" {{\n  source = \"../../modules/app\"\n  env    = \"{env}\"\n}}\n\n\
                 output \"name\" {{\n  value = module.app.name\n}}\n"
            ),
        );
    }
    repo.write(
        "modules/app/main.tf",
        "variable \"env\" {}\n\nresource \"terraform_data\" \"app\" {\n  input = \"app-${var.env}\"\n}\n\n\
         output \"name\" {\n  value = terraform_data.app.output\n}\n",
    );
}

impl Default for TestRepo {
    fn default() -> Self {
        Self::new()
    }
}
