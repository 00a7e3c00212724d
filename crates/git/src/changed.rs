//! `plinth changed` over a repository: resolve the revisions, diff the trees, load plinth.toml at
//! both ends, and ask plinth-core which stacks the change touches.

use std::collections::{BTreeMap, BTreeSet};

use gix::ObjectId;
use plinth_core::changes::{self, AffectedError, AffectedStack, ChangeKind, ConfigChanges, Inputs};
use plinth_core::config::{LoadError, Resolver};
use plinth_core::tree::{Tree, parent};
use plinth_core::{CONFIG_FILE, Config, Diagnostics, ErrorCode};

use crate::error::GitError;
use crate::module_cache::{ModuleCache, graphs};
use crate::repo::{Comparison, Repo};

/// What to compare, and how.
#[derive(Clone, Debug)]
pub struct ChangedOptions {
    pub base: String,
    pub head: String,
    pub with_dependents: bool,
    pub cache: ModuleCache,
}

/// The answer: the two commits, and the affected stacks in waves.
#[derive(Debug)]
pub struct ChangedReport {
    pub comparison: Comparison,
    pub stacks: Vec<AffectedStack>,
    /// Config warnings at the head.
    pub config_warnings: Diagnostics,
    /// Other things worth knowing, such as module files that could not be parsed.
    pub notes: Vec<String>,
    /// For each affected (not deleted) stack, the affected stacks it must wait for: those it
    /// depends on directly or through stacks the change did not touch.
    pub waits_for: BTreeMap<String, BTreeSet<String>>,
}

/// Why `changed` could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ChangedError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("there is no {CONFIG_FILE} at {rev} ({commit})")]
    NoConfig { rev: String, commit: String },
    #[error("{0}")]
    Config(#[from] LoadError),
}

impl ErrorCode for ChangedError {
    fn code(&self) -> &'static str {
        match self {
            ChangedError::Git(e) => e.code(),
            ChangedError::NoConfig { .. } => "config.not_found",
            ChangedError::Config(e) => e.code(),
        }
    }

    fn http_status(&self) -> u16 {
        match self {
            ChangedError::Git(e) => e.http_status(),
            ChangedError::NoConfig { .. } => 422,
            ChangedError::Config(e) => e.http_status(),
        }
    }

    fn help(&self) -> String {
        match self {
            ChangedError::Git(e) => e.help(),
            ChangedError::NoConfig { .. } => {
                format!(
                    "Run `plinth init` at the repo root and commit {CONFIG_FILE}; the head commit's copy is the one used."
                )
            }
            ChangedError::Config(e) => e.help(),
        }
    }
}

impl From<plinth_core::tree::TreeError> for ChangedError {
    fn from(e: plinth_core::tree::TreeError) -> Self {
        ChangedError::Git(GitError::Read(e.message))
    }
}

fn read_config(tree: &dyn Tree) -> Result<Option<String>, ChangedError> {
    match tree.read_file(CONFIG_FILE)? {
        Some(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| ChangedError::Git(GitError::Read(format!("{CONFIG_FILE} is not UTF-8")))),
        None => Ok(None),
    }
}

/// Finds the stacks a range of commits touches, reading only git objects.
pub fn changed(repo: &Repo, options: &ChangedOptions) -> Result<ChangedReport, ChangedError> {
    if let Some(report) = changed_once(repo, options, &options.cache)? {
        return Ok(report);
    }
    // A cached module graph was damaged and its entries removed: work from the trees instead.
    tracing::warn!(cache = ?options.cache, "The module graph cache was damaged; reading the trees instead.");
    changed_once(repo, options, &ModuleCache::disabled())?
        .ok_or_else(|| ChangedError::Git(GitError::Read("the module graph could not be read".into())))
}

/// One attempt; `None` when a cached graph turned out damaged during the lookups.
fn changed_once(
    repo: &Repo,
    options: &ChangedOptions,
    cache: &ModuleCache,
) -> Result<Option<ChangedReport>, ChangedError> {
    let comparison = repo.compare(&options.base, &options.head)?;
    let head_tree = repo.tree(Some(comparison.head))?;
    let base_tree = repo.tree(comparison.base)?;
    let Some(head_text) = read_config(&head_tree)? else {
        return Err(ChangedError::NoConfig { rev: options.head.clone(), commit: comparison.head.to_string() });
    };
    let (head_config, mut warnings) =
        Config::parse(CONFIG_FILE, &head_text).map_err(|d| ChangedError::Config(LoadError::Config(d)))?;
    let head = Resolver::new(&head_config, &head_tree)?;
    let mut notes: Vec<String> = Vec::new();

    let path_changes = head_tree.changes_from(&base_tree)?;
    let any_deleted = path_changes.iter().any(|c| c.kind == ChangeKind::Deleted);
    let config_changed = path_changes.iter().any(|c| c.path == CONFIG_FILE);

    let base_text = if any_deleted || config_changed { read_config(&base_tree)? } else { None };
    let config_changes =
        if config_changed { ConfigChanges::between(base_text.as_deref(), &head_text) } else { ConfigChanges::None };
    // The base config is only needed to find deleted stacks. If it does not parse, deletions
    // of whole stacks cannot be named; say so rather than fail.
    let base_config = match (&base_text, any_deleted) {
        (Some(text), true) => match Config::parse(CONFIG_FILE, text) {
            Ok((config, _)) => Some(config),
            Err(e) => {
                notes.push(format!(
                    "{CONFIG_FILE} at the base commit does not parse ({}); deleted stacks cannot be reported",
                    e.code()
                ));
                None
            }
        },
        _ => None,
    };
    let base = match &base_config {
        Some(config) => Some(Resolver::new(config, &base_tree)?),
        None => None,
    };

    let (head_graph, base_graph) =
        graphs(cache, (base_tree.root(), &base_tree), (head_tree.root(), &head_tree), &path_changes, base.is_some())?;
    for dir in path_changes.iter().map(|c| parent(&c.path)).collect::<BTreeSet<_>>() {
        for problem in head_graph.lookup().problems(dir) {
            notes.push(format!("could not read module blocks: {problem}"));
        }
    }

    let inputs = Inputs {
        head: &head,
        head_modules: head_graph.lookup(),
        base: base.as_ref().zip(base_graph.as_ref()).map(|(r, g)| (r, g.lookup())),
        config_changes: &config_changes,
        with_dependents: options.with_dependents,
    };
    let result = changes::affected(&path_changes, inputs);
    let damaged = [Some(&head_graph), base_graph.as_ref()].into_iter().flatten().any(|g| g.is_damaged());
    if damaged {
        cache.forget_graph(head_tree.root(), &head_graph);
        if let Some(graph) = &base_graph {
            cache.forget_graph(base_tree.root(), graph);
        }
        return Ok(None);
    }
    let stacks = match result {
        Ok(stacks) => stacks,
        Err(AffectedError::Config(d)) => return Err(ChangedError::Config(LoadError::Config(d))),
        Err(AffectedError::Tree(e)) => return Err(e.into()),
    };
    let live: BTreeSet<String> = stacks.iter().filter(|s| !s.deleted).map(|s| s.stack.name.clone()).collect();
    // The affected stacks are resolved already; only stacks between them need a lookup.
    let known: BTreeMap<&str, &Vec<String>> =
        stacks.iter().filter(|s| !s.deleted).map(|s| (s.stack.name.as_str(), &s.stack.depends_on)).collect();
    let mut tree_error = None;
    let waits_for = plinth_core::run::waits_for(&live, |name| match known.get(name) {
        Some(deps) => (*deps).clone(),
        None => match head.site_named(name) {
            Ok(Some(site)) => match head.stack(&site) {
                Ok(stack) => stack.depends_on.clone(),
                Err(e) => {
                    tree_error = Some(e);
                    Vec::new()
                }
            },
            Ok(None) => Vec::new(),
            Err(e) => {
                tree_error = Some(e);
                Vec::new()
            }
        },
    });
    if let Some(e) = tree_error {
        return Err(e.into());
    }
    if let Ok(more) = head.finish() {
        warnings.extend(more);
    }
    let config_warnings = Diagnostics { file: head_config.source.clone(), items: warnings };
    Ok(Some(ChangedReport { comparison, stacks, config_warnings, notes, waits_for }))
}

/// The commit as a short string for people.
pub fn short(id: &ObjectId) -> String {
    id.to_hex_with_len(10).to_string()
}
