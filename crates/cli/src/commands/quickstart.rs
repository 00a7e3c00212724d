//! `plinth quickstart`: builds an example infrastructure repo (seed 000's layout: stg and prd
//! stacks sharing a module) and walks through what `plinth changed` makes of a few commits.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use super::Outcome;
use crate::output::{Failure, Format};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to create the example repo. Defaults to a new directory under the system's temp
    /// dir, which is kept so that you can explore it afterwards.
    #[arg(long)]
    dir: Option<PathBuf>,
}

const CONFIG: &str = r#"# The example's release config: which stacks exist and how they release.
main_branch = "main"

[environments.stg]
branches = ["main"]

[environments.prd]
branches = ["main"]
approval = true
approvers = ["sre"]

[stacks.common]
path = "terraform/common"

[stacks.app]
path = "terraform/{env}"      # one stack per environment directory
environment = "{env}"
depends_on = ["common"]
watch = ["shared/*.json"]
"#;

const APP_MODULE: &str = r#"variable "env" {
  type = string
}

resource "terraform_data" "app" {
  input = "app in ${var.env}"
}

output "name" {
  value = terraform_data.app.output
}
"#;

fn env_stack(env: &str) -> String {
    format!("module \"app\" {{\n  source = \"../../modules/app\"\n  env    = \"{env}\"\n}}\n")
}

fn fail(message: String) -> Failure {
    Failure::new(
        "quickstart.failed",
        message,
        "Check that `git` is installed and the directory is writable, then try again.",
        Format::Text,
    )
}

/// Runs git in the example repo with a fixed identity.
fn git(dir: &Path, args: &[&str]) -> Result<(), Failure> {
    let output = Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=plinth quickstart", "-c", "user.email=quickstart@plinth.invalid"])
        .args(args)
        .output()
        .map_err(|e| fail(format!("could not run git: {e}")))?;
    if !output.status.success() {
        return Err(fail(format!("git {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim())));
    }
    Ok(())
}

fn write(dir: &Path, path: &str, contents: &str) -> Result<(), Failure> {
    let full = dir.join(path);
    if let Some(parent) = full.parent() {
        std::fs::create_dir_all(parent).map_err(|e| fail(format!("could not create {}: {e}", parent.display())))?;
    }
    std::fs::write(&full, contents).map_err(|e| fail(format!("could not write {}: {e}", full.display())))
}

fn commit(dir: &Path, message: &str) -> Result<(), Failure> {
    git(dir, &["add", "-A"])?;
    git(dir, &["commit", "-q", "-m", message])
}

/// Prints a step's title and the command, then runs `plinth changed` in-process.
fn show(dir: &Path, step: &str, base: &str, head: &str) -> Result<(), Failure> {
    println!("\n== {step}");
    println!("$ plinth changed --base {base} --head {head}");
    let args = super::changed::Args {
        base: base.into(),
        head: head.into(),
        repo: dir.to_path_buf(),
        output: Format::Text,
        with_dependents: false,
        mapping: None,
        branch: None,
        cache_dir: None,
        no_cache: false,
    };
    super::changed::run(args).map(|_| ())
}

pub fn run(args: Args) -> Outcome {
    let dir = match args.dir {
        Some(dir) => {
            if dir.join(".git").exists() {
                return Err(Failure::new(
                    "quickstart.exists",
                    format!("{} already holds a git repository", dir.display()),
                    "Pass `--dir` with a new or empty directory.",
                    Format::Text,
                ));
            }
            std::fs::create_dir_all(&dir).map_err(|e| fail(format!("could not create {}: {e}", dir.display())))?;
            dir
        }
        None => tempfile::Builder::new()
            .prefix("plinth-quickstart-")
            .tempdir()
            .map_err(|e| fail(format!("could not create a temp dir: {e}")))?
            .keep(),
    };
    println!("Creating an example infrastructure repo in {}", dir.display());
    println!("Layout: terraform/common, terraform/stg and terraform/prd, with stg and prd sharing modules/app.");
    git(&dir, &["init", "-q", "-b", "main"])?;
    write(&dir, "plinth.toml", CONFIG)?;
    write(&dir, "terraform/common/main.tf", "resource \"terraform_data\" \"network\" {\n  input = \"shared\"\n}\n")?;
    write(&dir, "terraform/stg/main.tf", &env_stack("stg"))?;
    write(&dir, "terraform/prd/main.tf", &env_stack("prd"))?;
    write(&dir, "modules/app/main.tf", APP_MODULE)?;
    write(&dir, "shared/tags.json", "{\"team\": \"sre\"}\n")?;
    write(&dir, "README.md", "# example infrastructure\n")?;
    commit(&dir, "Initial layout")?;
    show(&dir, "1. The first commit: every stack is new, and common goes first", "main", "HEAD")?;

    write(&dir, "terraform/stg/main.tf", &format!("{}\n# stg gets a tweak\n", env_stack("stg")))?;
    commit(&dir, "Tweak stg")?;
    show(&dir, "2. A change in terraform/stg triggers only stg", "main", "HEAD")?;

    write(&dir, "modules/app/main.tf", &format!("{APP_MODULE}\n# a module change\n"))?;
    commit(&dir, "Change the shared module")?;
    show(&dir, "3. A change in the shared module triggers both environments", "main", "HEAD")?;

    write(&dir, "README.md", "# example infrastructure\n\nMore words.\n")?;
    commit(&dir, "Docs only")?;
    show(&dir, "4. A README-only commit changes nothing, and that is a success (exit 0)", "main", "HEAD")?;

    git(&dir, &["checkout", "-q", "-b", "feature/login"])?;
    write(&dir, "shared/tags.json", "{\"team\": \"sre\", \"cost\": \"app\"}\n")?;
    commit(&dir, "Tag everything")?;
    git(&dir, &["checkout", "-q", "main"])?;
    write(&dir, "terraform/common/main.tf", "resource \"terraform_data\" \"network\" {\n  input = \"shared v2\"\n}\n")?;
    commit(&dir, "Meanwhile on main")?;
    show(&dir, "5. A feature branch is compared with its merge base, not with main's tip", "main", "feature/login")?;

    println!("\nThe example repo is at {}. Try:", dir.display());
    println!("  cd {}", dir.display());
    println!("  plinth check");
    println!("  plinth changed --base HEAD~3 --output json");
    println!("  plinth changed --base main --head feature/login --with-dependents");
    Ok(ExitCode::SUCCESS)
}
