//! From changed paths to affected stacks: the pure decision behind `plinth changed` and the
//! server's triggers. Every affected stack comes with the reasons it was picked.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::HashMap;
use std::fmt;

use serde::{Serialize, Serializer};

use std::rc::Rc;

use crate::config::{CONFIG_FILE, Resolver};
use crate::error::Diagnostics;
use crate::modules::ModuleLookup;
use crate::pattern::Captures;
use crate::stack::{Stack, Waves, Workspace, waves};
use crate::tree::{TreeError, ancestors};

/// How a path changed between two revisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Added,
    Deleted,
    Modified,
}

/// One changed file. A rename is a deletion of the old path and an addition of the new one,
/// so that both sides count.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PathChange {
    pub path: String,
    pub kind: ChangeKind,
}

impl PathChange {
    pub fn new(path: impl Into<String>, kind: ChangeKind) -> Self {
        Self { path: path.into(), kind }
    }
}

/// Why a stack was picked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Via {
    /// A path under the stack's own directory.
    Stack,
    /// A path under a local module the stack uses, directly or transitively.
    Module(String),
    /// A path matching one of the stack's `watch` globs (shown with placeholders filled in).
    Watch(String),
    /// The stack's own table in plinth.toml changed.
    Config,
    /// A stack this one depends on changed.
    Dependent(String),
}

impl Via {
    /// Reasons are listed most direct first.
    fn rank(&self) -> u8 {
        match self {
            Via::Stack => 0,
            Via::Module(_) => 1,
            Via::Watch(_) => 2,
            Via::Config => 3,
            Via::Dependent(_) => 4,
        }
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Via::Stack => f.write_str("stack"),
            Via::Module(dir) => write!(f, "module:{dir}"),
            Via::Watch(glob) => write!(f, "watch:{glob}"),
            Via::Config => f.write_str("config"),
            Via::Dependent(stack) => write!(f, "dependent:{stack}"),
        }
    }
}

impl Serialize for Via {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// One reason: the path that triggered it (none for dependents) and how.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reason {
    pub path: Option<String>,
    pub via: Via,
}

/// A stack that the change touches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AffectedStack {
    pub stack: Stack,
    /// 1-based: stacks in one wave can run in parallel once earlier waves are done.
    pub wave: usize,
    /// The stack's directory is gone at the head revision.
    pub deleted: bool,
    pub reasons: Vec<Reason>,
}

/// Which stack tables of plinth.toml differ between two revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigChanges {
    None,
    /// Every stack counts as changed: the base had no readable plinth.toml.
    All,
    Keys(BTreeSet<String>),
}

impl ConfigChanges {
    /// Compares the `[stacks.*]` tables of two plinth.toml texts, value by value, so that
    /// comments and formatting do not count.
    pub fn between(base: Option<&str>, head: &str) -> Self {
        let tables = |text: &str| -> Option<toml::Table> {
            let mut doc: toml::Table = toml::from_str(text).ok()?;
            match doc.remove("stacks") {
                Some(toml::Value::Table(t)) => Some(t),
                Some(_) => None,
                None => Some(toml::Table::new()),
            }
        };
        let Some(base) = base.and_then(tables) else {
            return ConfigChanges::All;
        };
        let Some(head) = tables(head) else {
            return ConfigChanges::All;
        };
        let keys: BTreeSet<String> =
            head.iter().filter(|(k, v)| base.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect();
        if keys.is_empty() { ConfigChanges::None } else { ConfigChanges::Keys(keys) }
    }
}

/// What the decision needs about one revision pair.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    pub head: &'a Resolver<'a>,
    pub head_modules: &'a dyn ModuleLookup,
    /// The base revision's stacks and module graph, when paths were deleted: deleted stacks
    /// and modules are found through them.
    pub base: Option<(&'a Resolver<'a>, &'a dyn ModuleLookup)>,
    pub config_changes: &'a ConfigChanges,
    pub with_dependents: bool,
}

impl fmt::Debug for Inputs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inputs")
            .field("base", &self.base.is_some())
            .field("with_dependents", &self.with_dependents)
            .finish()
    }
}

/// Why the decision could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AffectedError {
    /// The config is invalid for the stacks the change reaches.
    #[error("{0}")]
    Config(Diagnostics),
    #[error("could not read the repository tree: {0}")]
    Tree(#[from] TreeError),
}

/// Collects reasons per stack, keeping the first reason for each path.
#[derive(Default)]
struct Collector {
    found: BTreeMap<String, (Rc<Stack>, bool, Vec<Reason>)>,
}

impl Collector {
    fn add(&mut self, stack: &Rc<Stack>, deleted: bool, reason: Reason) {
        // Most calls find the stack collected already: its name is copied only for a new one.
        let entry = match self.found.get_mut(&stack.name) {
            Some(entry) => entry,
            None => self.found.entry(stack.name.clone()).or_insert_with(|| (stack.clone(), deleted, Vec::new())),
        };
        if reason.path.is_none() || !entry.2.iter().any(|r| r.path == reason.path) {
            entry.2.push(reason);
        }
    }
}

/// The stacks a set of changed paths affects, in waves, each with its reasons. Only the
/// stacks the change reaches (and those they depend on) are resolved and validated, so the
/// cost follows the change, not the size of the repository.
pub fn affected(changes: &[PathChange], inputs: Inputs<'_>) -> Result<Vec<AffectedStack>, AffectedError> {
    let head = inputs.head;
    let mut collector = Collector::default();
    // Each module's transitive users, in the head's graph [0] and the base's [1].
    let mut user_cache: [HashMap<String, Vec<String>>; 2] = Default::default();

    for change in changes {
        let deleted = change.kind == ChangeKind::Deleted;
        let path = change.path.as_str();
        let reason = |via: Via| Reason { path: Some(change.path.clone()), via };

        // The deepest stack directory holding the path.
        for dir in ancestors(path) {
            let sites = if deleted { head.sites_at(dir)? } else { head.sites_at_existing(dir)? };
            if !sites.is_empty() {
                for site in sites.iter() {
                    collector.add(&head.stack(site)?, false, reason(Via::Stack));
                }
                break;
            }
            if let (true, Some((base, _))) = (deleted, inputs.base) {
                let sites = base.sites_at(dir)?;
                if !sites.is_empty() && !head.tree().is_dir(dir)? {
                    for site in sites.iter() {
                        if head.site_named(&site.name)?.is_none() {
                            collector.add(&base.stack(site)?, true, reason(Via::Stack));
                        }
                    }
                    break;
                }
            }
        }

        // Local modules holding the path, and every stack using them. A deleted file is looked
        // up in the base graph, where its module still existed.
        let (modules, from_base) = match (inputs.base, deleted) {
            (Some((_, base_modules)), true) => (base_modules, true),
            _ => (inputs.head_modules, false),
        };
        let user_cache = &mut user_cache[usize::from(from_base)];
        let chain: Vec<&str> = ancestors(path).filter(|dir| modules.is_module(dir)).collect();
        // Outermost first, so that each level's walk stops at the level above it.
        for &module in chain.iter().rev() {
            if !user_cache.contains_key(module) {
                let users = modules.transitive_users_given(module, &|dir| user_cache.get(dir).map(Vec::as_slice));
                user_cache.insert(module.to_owned(), users);
            }
        }
        // Innermost first: a path's reason names the deepest module holding it.
        for module in chain {
            let Some(dirs) = user_cache.get(module) else { continue };
            for dir in dirs.iter() {
                let sites = if from_base { head.sites_at(dir)? } else { head.sites_at_existing(dir)? };
                for site in sites.iter() {
                    collector.add(&head.stack(site)?, false, reason(Via::Module(module.to_owned())));
                }
            }
        }

        // Watch globs, matched per definition: a glob's captures pick the stacks it covers.
        for (i, def) in head.config().stacks.iter().enumerate() {
            for (glob, _) in &def.watch {
                let Some(captured) = glob.captures(path) else { continue };
                for site in head.sites_of(i, &captured)? {
                    let stack = head.stack(&site)?;
                    let mut shown = glob.raw().to_owned();
                    for (name, value) in stack.captures.iter() {
                        shown = shown.replace(&format!("{{{name}}}"), value);
                    }
                    collector.add(&stack, false, reason(Via::Watch(shown)));
                }
            }
        }

        if path == CONFIG_FILE && *inputs.config_changes != ConfigChanges::None {
            for (i, def) in head.config().stacks.iter().enumerate() {
                if inputs.config_changes.covers(&def.key) {
                    for site in head.sites_of(i, &Captures::default())? {
                        collector.add(&head.stack(&site)?, false, reason(Via::Config));
                    }
                }
            }
        }
    }

    if inputs.with_dependents {
        let mut pending: Vec<Rc<Stack>> =
            collector.found.values().filter(|(_, deleted, _)| !deleted).map(|(s, _, _)| s.clone()).collect();
        while let Some(stack) = pending.pop() {
            for dependent in head.dependents_of(&stack)? {
                if !collector.found.contains_key(&dependent.name) {
                    collector.add(&dependent, false, Reason { path: None, via: Via::Dependent(stack.name.clone()) });
                    pending.push(dependent);
                }
            }
        }
    }

    let ordered = order(collector, inputs)?;
    if let Err(diagnostics) = head.finish() {
        return Err(AffectedError::Config(diagnostics));
    }
    Ok(ordered)
}

/// Whether a key's table changed.
impl ConfigChanges {
    fn covers(&self, key: &str) -> bool {
        match self {
            ConfigChanges::None => false,
            ConfigChanges::All => true,
            ConfigChanges::Keys(keys) => keys.contains(key),
        }
    }
}

/// The direct dependencies of a stack by name, resolving it if needed.
fn dependencies(resolver: &Resolver<'_>, name: &str) -> Result<Vec<String>, TreeError> {
    match resolver.site_named(name)? {
        Some(site) => Ok(resolver.stack(&site)?.depends_on.clone()),
        None => Ok(Vec::new()),
    }
}

/// Assigns waves and sorts by wave, then name. Deleted stacks take their waves from the base
/// revision's dependencies. Cycles met on the way are config errors.
fn order(collector: Collector, inputs: Inputs<'_>) -> Result<Vec<AffectedStack>, TreeError> {
    let live: BTreeSet<String> = collector.found.iter().filter(|(_, v)| !v.1).map(|(n, _)| n.clone()).collect();
    let gone: BTreeSet<String> = collector.found.iter().filter(|(_, v)| v.1).map(|(n, _)| n.clone()).collect();
    // The affected stacks are already resolved; only stacks between them need looking up.
    let known: HashMap<&str, &[String]> =
        collector.found.iter().filter(|(_, v)| !v.1).map(|(n, v)| (n.as_str(), v.0.depends_on.as_slice())).collect();
    let head_waves = waves(&live, |name| match known.get(name) {
        Some(deps) => Ok(deps.to_vec()),
        None => dependencies(inputs.head, name),
    })?;
    report_cycles(inputs.head, &head_waves)?;
    let base_waves = match inputs.base {
        Some((base, _)) if !gone.is_empty() => waves(&gone, |name| dependencies(base, name))?,
        _ => Waves::default(),
    };
    let mut out: Vec<AffectedStack> = collector
        .found
        .into_values()
        .map(|(stack, deleted, mut reasons)| {
            reasons.sort_by_key(|r| r.via.rank());
            let waves = if deleted { &base_waves.waves } else { &head_waves.waves };
            let wave = waves.get(&stack.name).copied().unwrap_or(1);
            AffectedStack { stack: (*stack).clone(), wave, deleted, reasons }
        })
        .collect();
    out.sort_by(|a, b| (a.wave, &a.stack.name).cmp(&(b.wave, &b.stack.name)));
    Ok(out)
}

fn report_cycles(resolver: &Resolver<'_>, found: &Waves) -> Result<(), TreeError> {
    for cycle in &found.cycles {
        let Some(site) = resolver.site_named(&cycle[0])? else { continue };
        let first = resolver.stack(&site)?;
        let next = cycle.get(1).unwrap_or(&cycle[0]);
        resolver.report_cycle(cycle, &resolver.dependency_span(&first, next));
    }
    Ok(())
}

/// An affected stack as `plinth changed --output json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct AffectedJson<'a> {
    pub name: &'a str,
    pub path: &'a str,
    pub environment: Option<&'a str>,
    pub workspace: Option<String>,
    pub wave: usize,
    pub deleted: bool,
    pub reasons: &'a [Reason],
}

impl<'a> AffectedJson<'a> {
    pub fn new(a: &'a AffectedStack, branch: Option<&str>) -> Self {
        AffectedJson {
            name: &a.stack.name,
            path: a.stack.display_dir(),
            environment: a.stack.environment.as_deref(),
            workspace: match a.stack.workspace {
                Workspace::Default => None,
                ref w => w.for_branch(branch),
            },
            wave: a.wave,
            deleted: a.deleted,
            reasons: &a.reasons,
        }
    }
}

#[cfg(test)]
mod tests;
