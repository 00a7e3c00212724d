//! Stacks: Terraform roots with one state each, as expanded from plinth.toml, and the order
//! they run in.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::HashMap;

use serde::Serialize;

use crate::pattern::Captures;
use crate::slug::slug;

/// Which Terraform workspace a stack uses, once placeholders are filled in.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Workspace {
    Default,
    Named(String),
    /// One workspace per branch, named after the branch's slug.
    PerBranch,
}

impl Workspace {
    /// The workspace name to select on a branch; `None` means Terraform's default.
    pub fn for_branch(&self, branch: Option<&str>) -> Option<String> {
        match self {
            Workspace::Default => None,
            Workspace::Named(name) => Some(name.clone()),
            Workspace::PerBranch => Some(branch.map_or_else(|| "{branch}".to_owned(), slug)),
        }
    }

    /// How `plinth check` shows it.
    pub fn describe(&self) -> String {
        match self {
            Workspace::Default => "default".to_owned(),
            Workspace::Named(name) => name.clone(),
            Workspace::PerBranch => "one per branch".to_owned(),
        }
    }
}

/// One Terraform root directory with one state: a directory, a workspace and an environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stack {
    /// Unique name, such as `common` or `app/stg`.
    pub name: String,
    /// The `[stacks.KEY]` it comes from.
    pub key: String,
    /// The directory, relative to the repo root; `""` is the root itself.
    pub dir: String,
    pub environment: Option<String>,
    pub workspace: Workspace,
    /// Names of the stacks this one waits for, sorted.
    pub depends_on: Vec<String>,
    pub terraform: String,
    /// What the path's placeholders captured for this stack.
    pub captures: Captures,
}

impl Stack {
    /// The directory as shown to people: `.` for the repo root.
    pub fn display_dir(&self) -> &str {
        if self.dir.is_empty() { "." } else { &self.dir }
    }
}

/// All stacks of one commit, with lookups by name, directory and key.
#[derive(Clone, Debug, Default)]
pub struct StackSet {
    stacks: Vec<Stack>,
    by_name: HashMap<String, usize>,
}

impl StackSet {
    /// Builds the set; stacks are kept sorted by name.
    pub fn new(mut stacks: Vec<Stack>) -> Self {
        stacks.sort_by(|a, b| a.name.cmp(&b.name));
        let mut set = StackSet { stacks, ..Default::default() };
        for (i, s) in set.stacks.iter().enumerate() {
            set.by_name.insert(s.name.clone(), i);
        }
        set
    }

    pub fn iter(&self) -> impl Iterator<Item = &Stack> {
        self.stacks.iter()
    }

    pub fn len(&self) -> usize {
        self.stacks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stacks.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&Stack> {
        self.by_name.get(name).map(|&i| &self.stacks[i])
    }
}

/// What [`waves`] finds: the wave of each stack, and any dependency cycles met on the way.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Waves {
    pub waves: BTreeMap<String, usize>,
    /// Each cycle as the names in it, in dependency order.
    pub cycles: Vec<Vec<String>>,
}

/// Groups a subset of stacks into waves (1-based) that can run in parallel: a stack's wave
/// comes after the waves of every subset member it depends on, directly or through stacks
/// outside the subset. `deps` gives a stack's direct dependencies by name.
pub fn waves<E>(subset: &BTreeSet<String>, mut deps: impl FnMut(&str) -> Result<Vec<String>, E>) -> Result<Waves, E> {
    let mut memo: HashMap<String, usize> = HashMap::default();
    let mut out = Waves::default();
    for name in subset {
        let wave = wave_of(name, subset, &mut deps, &mut memo, &mut Vec::new(), &mut out.cycles)?;
        out.waves.insert(name.clone(), wave.max(1));
    }
    Ok(out)
}

/// The deepest subset wave at or below `name`. `path` holds the names being visited, to find
/// cycles instead of looping.
fn wave_of<E>(
    name: &str,
    subset: &BTreeSet<String>,
    deps: &mut impl FnMut(&str) -> Result<Vec<String>, E>,
    memo: &mut HashMap<String, usize>,
    path: &mut Vec<String>,
    cycles: &mut Vec<Vec<String>>,
) -> Result<usize, E> {
    if let Some(&w) = memo.get(name) {
        return Ok(w);
    }
    if let Some(start) = path.iter().position(|p| p == name) {
        let cycle = path[start..].to_vec();
        if !cycles.iter().any(|c| same_cycle(c, &cycle)) {
            cycles.push(cycle);
        }
        return Ok(0);
    }
    path.push(name.to_owned());
    let mut below = 0;
    for dep in deps(name)? {
        below = below.max(wave_of(&dep, subset, deps, memo, path, cycles)?);
    }
    path.pop();
    let wave = if subset.contains(name) { below + 1 } else { below };
    memo.insert(name.to_owned(), wave);
    Ok(wave)
}

fn same_cycle(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && (0..a.len()).any(|shift| a.iter().cycle().skip(shift).take(a.len()).eq(b.iter()))
}

/// The directory name under which plinth keeps a stack's state when the stack configures no
/// backend of its own: the stack name with `%` and `/` percent-encoded, so that it is one
/// directory name and different stacks never share one.
pub fn state_dir_name(stack: &str) -> String {
    stack.replace('%', "%25").replace('/', "%2F")
}

/// A stack as JSON output shows it.
#[derive(Clone, Debug, Serialize)]
pub struct StackJson<'a> {
    pub name: &'a str,
    pub key: &'a str,
    pub path: &'a str,
    pub environment: Option<&'a str>,
    pub workspace: Option<String>,
    pub workspace_per_branch: bool,
    pub depends_on: &'a [String],
    pub terraform: &'a str,
}

impl<'a> StackJson<'a> {
    pub fn new(stack: &'a Stack, branch: Option<&str>) -> Self {
        StackJson {
            name: &stack.name,
            key: &stack.key,
            path: stack.display_dir(),
            environment: stack.environment.as_deref(),
            workspace: stack.workspace.for_branch(branch),
            workspace_per_branch: stack.workspace == Workspace::PerBranch,
            depends_on: &stack.depends_on,
            terraform: &stack.terraform,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(name: &str, deps: &[&str]) -> Stack {
        Stack {
            name: name.into(),
            key: name.split('/').next().unwrap_or(name).into(),
            dir: format!("tf/{name}"),
            environment: None,
            workspace: Workspace::Default,
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            terraform: "terraform".into(),
            captures: Captures::default(),
        }
    }

    #[test]
    fn waves_follow_dependencies_through_unchanged_stacks() {
        // network <- common <- app/stg, app/prd ; dns has no deps
        let set = StackSet::new(vec![
            stack("network", &[]),
            stack("common", &["network"]),
            stack("app/stg", &["common"]),
            stack("app/prd", &["common"]),
            stack("dns", &[]),
        ]);
        type Case<'a> = (&'a [&'a str], &'a [(&'a str, usize)]);
        let cases: &[Case] = &[
            (&["app/stg"], &[("app/stg", 1)]),
            (&["common", "app/stg"], &[("app/stg", 2), ("common", 1)]),
            // common unchanged: app still waits for network.
            (&["network", "app/prd", "dns"], &[("app/prd", 2), ("dns", 1), ("network", 1)]),
            (
                &["network", "common", "app/stg", "app/prd"],
                &[("app/prd", 3), ("app/stg", 3), ("common", 2), ("network", 1)],
            ),
            (&["unknown"], &[("unknown", 1)]),
        ];
        for (subset, expected) in cases {
            let subset: BTreeSet<String> = subset.iter().map(|s| s.to_string()).collect();
            let got =
                waves(&subset, |n| Ok::<_, ()>(set.get(n).map(|s| s.depends_on.clone()).unwrap_or_default())).unwrap();
            let expected: BTreeMap<String, usize> = expected.iter().map(|(n, w)| (n.to_string(), *w)).collect();
            assert_eq!(got.waves, expected, "{subset:?}");
            assert!(got.cycles.is_empty());
        }
    }

    #[test]
    fn waves_report_cycles_instead_of_looping() {
        let set = StackSet::new(vec![stack("a", &["b"]), stack("b", &["c"]), stack("c", &["a"]), stack("d", &["a"])]);
        let subset: BTreeSet<String> = ["d", "b"].iter().map(|s| s.to_string()).collect();
        let got =
            waves(&subset, |n| Ok::<_, ()>(set.get(n).map(|s| s.depends_on.clone()).unwrap_or_default())).unwrap();
        assert_eq!(got.cycles.len(), 1);
        assert_eq!(got.cycles[0].len(), 3);
    }

    #[test]
    fn workspaces_name_themselves_per_branch() {
        assert_eq!(Workspace::Default.for_branch(Some("main")), None);
        assert_eq!(Workspace::Named("blue".into()).for_branch(None).as_deref(), Some("blue"));
        assert_eq!(Workspace::PerBranch.for_branch(Some("feature/Login")).as_deref(), Some("feature-login"));
        assert_eq!(Workspace::PerBranch.for_branch(None).as_deref(), Some("{branch}"));
    }
}
