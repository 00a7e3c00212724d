//! What a stack's run gets from its commit: the same paths change detection watches for the
//! stack, and nothing else. That keeps a run's checkout proportional to the stack, not to the
//! monorepo, and it makes the two agree: a stack that reads a file nobody declared fails in
//! its run, where it is seen, instead of silently not being planned when that file changes.

use std::collections::{BTreeSet, HashSet};

use crate::config::{CONFIG_FILE, Config};
use crate::modules::ModuleGraph;
use crate::pattern::Captures;
use crate::stack::Stack;
use crate::tree::{EntryKind, Tree, TreeError, join};

/// The repo paths a run of `stack` needs, sorted: the stack's directory, every local module
/// it uses (through other modules too), the files its `watch` globs match for it, and
/// plinth.toml. Directories stand for everything under them. Paths that do not exist (a
/// module a file names but the commit lacks) are left in: Terraform reports them.
pub fn run_paths(tree: &dyn Tree, config: &Config, stack: &Stack) -> Result<Vec<String>, TreeError> {
    let mut paths = module_closure(tree, &stack.dir)?;
    paths.insert(CONFIG_FILE.to_owned());

    if let Some(def) = config.stacks.iter().find(|d| d.key == stack.key) {
        for (glob, _) in &def.watch {
            let mut dirs = vec![glob.fixed_dir().to_owned()];
            while let Some(dir) = dirs.pop() {
                let Some(entries) = tree.read_dir(&dir)? else { continue };
                for entry in entries {
                    let path = join(&dir, &entry.name);
                    match entry.kind {
                        EntryKind::Dir => dirs.push(path),
                        EntryKind::File | EntryKind::Symlink => {
                            if glob.captures(&path).is_some_and(|c| agrees(&c, &stack.captures)) {
                                paths.insert(path);
                            }
                        }
                        EntryKind::Submodule => {}
                    }
                }
            }
        }
    }
    Ok(drop_nested(paths))
}

/// A Terraform directory and every local module it uses, through other modules too.
pub fn module_closure(tree: &dyn Tree, dir: &str) -> Result<BTreeSet<String>, TreeError> {
    let mut paths: BTreeSet<String> = BTreeSet::new();
    let mut seen: HashSet<String> = HashSet::from([dir.to_owned()]);
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        paths.insert(dir.clone());
        let Some(entries) = tree.read_dir(&dir)? else { continue };
        let Some(modules) = ModuleGraph::scan_dir(tree, &dir, &entries)? else { continue };
        for module in modules.uses {
            if seen.insert(module.clone()) {
                pending.push(module);
            }
        }
    }
    Ok(paths)
}

/// Whether a glob's captures pick this stack: every placeholder it captured has the stack's
/// value (the same rule change detection applies).
fn agrees(captured: &Captures, stack: &Captures) -> bool {
    captured.iter().all(|(name, value)| stack.get(name) == Some(value))
}

/// Drops paths that lie under another path of the set.
fn drop_nested(paths: BTreeSet<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    // Sorted order puts `a` before `a/b` (and before `a-b`, which is not under `a`).
    for path in paths {
        if !out.iter().any(|kept| crate::tree::is_under(&path, kept)) {
            out.push(path);
        }
    }
    out
}

/// The message a run shows when Terraform could not find a file or module: what a run gets,
/// and how to give it more.
pub const MISSING_PATH_HELP: &str = "a run gets only its stack's directory, the local modules it uses, \
the files its `watch` globs match, the targets of symlinks among them, and plinth.toml; if the stack \
reads other files, add them to the stack's `watch` in plinth.toml (changes to them then plan the stack too)";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::MemTree;

    fn stack_of(config: &Config, tree: &MemTree, name: &str) -> Stack {
        let resolver = crate::config::Resolver::new(config, tree).unwrap();
        let site = resolver.site_named(name).unwrap().unwrap();
        (*resolver.stack(&site).unwrap()).clone()
    }

    #[test]
    fn a_run_gets_its_stack_its_modules_through_modules_and_its_watched_files() {
        let toml = r#"
[environments.stg]
[environments.prd]

[stacks.app]
path = "terraform/{env}"
environment = "{env}"
watch = ["shared/{env}/*.json", "policies/**"]
"#;
        let (config, _) = Config::parse(CONFIG_FILE, toml).unwrap();
        let tree = MemTree::new()
            .with(CONFIG_FILE, toml)
            .with("terraform/stg/main.tf", "module \"app\" {\n  source = \"../../modules/app\"\n}\n")
            .with("terraform/stg/files/init.sh", "#!/bin/sh\n")
            .with("terraform/stg/local/main.tf", "module \"x\" {\n  source = \"../../../modules/net\"\n}\n")
            .with("terraform/stg/local.tf", "module \"l\" {\n  source = \"./local\"\n}\n")
            .with("terraform/prd/main.tf", "module \"app\" {\n  source = \"../../modules/app\"\n}\n")
            .with("modules/app/main.tf", "module \"db\" {\n  source = \"../db\"\n}\n")
            .with("modules/db/main.tf", "resource \"terraform_data\" \"db\" {}\n")
            .with("modules/net/main.tf", "resource \"terraform_data\" \"net\" {}\n")
            .with("modules/unused/main.tf", "resource \"terraform_data\" \"u\" {}\n")
            .with("shared/stg/a.json", "{}")
            .with("shared/stg/deeper/b.json", "{}")
            .with("shared/prd/a.json", "{}")
            .with("policies/x/y.rego", "package x")
            .with("docs/README.md", "# docs");
        let stack = stack_of(&config, &tree, "app/stg");
        assert_eq!(
            run_paths(&tree, &config, &stack).unwrap(),
            [
                "modules/app",
                "modules/db",
                "modules/net",
                "plinth.toml",
                "policies/x/y.rego",
                "shared/stg/a.json",
                "terraform/stg",
            ]
        );
    }

    #[test]
    fn a_stack_at_the_root_gets_everything_once() {
        let toml = "[stacks.root]\npath = \".\"\n";
        let (config, _) = Config::parse(CONFIG_FILE, toml).unwrap();
        let tree = MemTree::new().with(CONFIG_FILE, toml).with("main.tf", "module \"m\" {\n  source = \"./m\"\n}\n");
        let stack = stack_of(&config, &tree, "root");
        assert_eq!(run_paths(&tree, &config, &stack).unwrap(), [""]);
    }

    #[test]
    fn module_cycles_and_missing_modules_end() {
        let toml = "[stacks.a]\npath = \"a\"\n";
        let (config, _) = Config::parse(CONFIG_FILE, toml).unwrap();
        let tree = MemTree::new()
            .with(CONFIG_FILE, toml)
            .with("a/main.tf", "module \"b\" {\n  source = \"../b\"\n}\nmodule \"gone\" {\n  source = \"../gone\"\n}\n")
            .with("b/main.tf", "module \"a\" {\n  source = \"../a\"\n}\n");
        let stack = stack_of(&config, &tree, "a");
        assert_eq!(run_paths(&tree, &config, &stack).unwrap(), ["a", "b", "gone", "plinth.toml"]);
    }
}
