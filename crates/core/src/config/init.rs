//! The starting plinth.toml that `plinth init` writes for a repo's Terraform roots.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// Directory names that usually mean an environment, with whether they are production.
const ENVIRONMENT_NAMES: &[(&str, bool)] = &[
    ("dev", false),
    ("develop", false),
    ("development", false),
    ("test", false),
    ("qa", false),
    ("sandbox", false),
    ("stg", false),
    ("stage", false),
    ("staging", false),
    ("prd", true),
    ("prod", true),
    ("production", true),
];

fn environment_of(dir: &str) -> Option<(&'static str, bool)> {
    let last = dir.rsplit('/').next().unwrap_or(dir);
    ENVIRONMENT_NAMES.iter().find(|(name, _)| last.eq_ignore_ascii_case(name)).map(|(name, prod)| (*name, *prod))
}

fn key_from(text: &str) -> String {
    let mut key: String =
        text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '-' }).collect();
    key = key.trim_matches('-').to_owned();
    if !key.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        key.insert_str(0, "stack-");
    }
    key
}

/// A TOML basic string for `s`.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// Writes a starting config with one stack per root directory (`""` is the repo root).
/// Directories named like environments (stg, prd, …) get one, declared to release from
/// `main_branch`; production-like ones require approval.
pub fn starter_config(roots: &[&str], main_branch: &str) -> String {
    let mut out = String::new();
    out.push_str("# plinth.toml: the stacks in this repo and how they release.\n");
    out.push_str("# Written by `plinth init`. Edit it freely, then run `plinth check`.\n\n");
    let _ = writeln!(out, "main_branch = {}", quoted(main_branch));

    let mut environments: BTreeMap<&str, bool> = BTreeMap::new();
    for root in roots {
        if let Some((env, prod)) = environment_of(root) {
            environments.insert(env, prod);
        }
    }
    if !environments.is_empty() {
        out.push_str("\n# Commits on `branches` release to the environment. Where `approval = true`, applies\n");
        out.push_str("# wait for someone holding one of the `approvers` roles.\n");
    }
    for (env, prod) in &environments {
        let _ = writeln!(out, "\n[environments.{env}]\nbranches = [{}]", quoted(main_branch));
        if *prod {
            out.push_str("approval = true\napprovers = [\"sre\"]\n");
        }
    }

    // Keys: the directory name when unique, else the whole path.
    let mut last_names: BTreeMap<String, usize> = BTreeMap::new();
    for root in roots {
        *last_names.entry(key_from(root.rsplit('/').next().unwrap_or(root))).or_default() += 1;
    }
    let mut used: BTreeSet<String> = BTreeSet::new();
    if roots.is_empty() {
        out.push_str("\n# No Terraform roots were found. Declare stacks like this:\n");
        out.push_str("#\n# [stacks.app]\n# path = \"terraform/{env}\"   # one stack per matching directory\n");
        out.push_str("# environment = \"{env}\"\n");
    } else {
        out.push_str("\n# One stack per Terraform root: a directory with .tf files that no other directory\n");
        out.push_str("# uses as a module. `depends_on`, `watch` and `workspace` can be added per stack.\n");
    }
    for root in roots {
        let name = if root.is_empty() { "root" } else { root.rsplit('/').next().unwrap_or(root) };
        let mut key =
            if last_names.get(&key_from(name)).copied().unwrap_or(0) > 1 { key_from(root) } else { key_from(name) };
        while !used.insert(key.clone()) {
            key.push_str("-2");
        }
        let path = if root.is_empty() { "." } else { root };
        let _ = writeln!(out, "\n[stacks.{key}]\npath = {}", quoted(path));
        if let Some((env, _)) = environment_of(root) {
            let _ = writeln!(out, "environment = {}", quoted(env));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Loaded;
    use crate::tree::MemTree;

    #[test]
    fn starter_configs_load_and_name_environments() {
        let roots = ["terraform/common", "terraform/prd", "terraform/stg", "apps/a/terraform", "apps/b/terraform", ""];
        let text = starter_config(&roots, "master");
        let mut tree = MemTree::new();
        for root in roots {
            tree.insert(&crate::tree::join(root, "main.tf"), "");
        }
        let loaded = Loaded::load("plinth.toml", &text, &tree).unwrap();
        assert_eq!(loaded.config.main_branch, "master");
        let names: Vec<&str> = loaded.stacks.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["apps-a-terraform", "apps-b-terraform", "common", "prd", "root", "stg"]);
        assert_eq!(loaded.stacks.get("prd").unwrap().environment.as_deref(), Some("prd"));
        assert!(loaded.config.environments["prd"].approval);
        assert!(!loaded.config.environments["stg"].approval);
    }

    #[test]
    fn no_roots_still_gives_a_valid_file() {
        let text = starter_config(&[], "main");
        let loaded = Loaded::load("plinth.toml", &text, &MemTree::new()).unwrap();
        assert!(loaded.stacks.is_empty());
        assert!(text.contains("# [stacks.app]"));
    }

    #[test]
    fn odd_directory_names_are_quoted() {
        let roots = ["infra/my \"quoted\" dir"];
        let text = starter_config(&roots, "main");
        let tree = MemTree::new().with("infra/my \"quoted\" dir/main.tf", "");
        let loaded = Loaded::load("plinth.toml", &text, &tree).unwrap();
        assert_eq!(loaded.stacks.iter().next().unwrap().dir, "infra/my \"quoted\" dir");
    }
}
