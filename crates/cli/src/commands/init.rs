//! `plinth init`: write a starting plinth.toml for the Terraform roots in a directory.

use std::path::PathBuf;
use std::process::ExitCode;

use plinth_core::config::starter_config;
use plinth_core::{CONFIG_FILE, Loaded};
use plinth_git::{FsTree, Repo};

use super::Outcome;
use super::source::module_graph;
use crate::output::{Failure, Format};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The repository root to scan and write plinth.toml into.
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Overwrite an existing plinth.toml.
    #[arg(long)]
    force: bool,
}

pub fn run(args: Args) -> Outcome {
    let format = Format::Text;
    if !args.dir.is_dir() {
        return Err(Failure::new(
            "init.not_a_directory",
            format!("`{}` is not a directory", args.dir.display()),
            "Pass the root of your infrastructure repository.",
            format,
        ));
    }
    let target = args.dir.join(CONFIG_FILE);
    if target.exists() && !args.force {
        return Err(Failure::new(
            "init.exists",
            format!("{} already exists", target.display()),
            "Run `plinth check` to validate it, or pass `--force` to replace it.",
            format,
        ));
    }
    let tree = FsTree::new(&args.dir);
    let graph = module_graph(&tree, format)?;
    // Templates are modules that environments on request call, not stacks of their own.
    let templates = format!("{}/", plinth_core::template::TEMPLATES_DIR);
    let roots: Vec<&str> = graph.roots().into_iter().filter(|r| !r.starts_with(&templates)).collect();
    let main_branch = Repo::discover(&args.dir).ok().and_then(|r| r.head_branch()).unwrap_or_else(|| "main".to_owned());
    let text = starter_config(&roots, &main_branch);
    // The file must pass `plinth check` as written; if it does not, that is our bug, and
    // nothing is written.
    if let Err(e) = Loaded::load(CONFIG_FILE, &text, &tree) {
        return Err(Failure::new(
            "init.internal",
            format!("the generated config does not validate: {e}"),
            "Please report this; meanwhile write plinth.toml by hand (see docs/config.md).",
            format,
        ));
    }
    std::fs::write(&target, &text).map_err(|e| {
        Failure::new(
            "init.write_failed",
            format!("could not write {}: {e}", target.display()),
            "Check that the directory is writable.",
            format,
        )
    })?;
    if roots.is_empty() {
        outln!("Wrote {} with no stacks: no directory with .tf files was found.", target.display());
        outln!("Declare stacks as the comments in the file show, then run `plinth check`.");
    } else {
        outln!("Wrote {} with {} stack{}:", target.display(), roots.len(), if roots.len() == 1 { "" } else { "s" });
        for root in &roots {
            outln!("  {}", if root.is_empty() { "." } else { root });
        }
        outln!("Next: review it, then run `plinth check` and commit it.");
    }
    Ok(ExitCode::SUCCESS)
}
