//! Resolving stacks on demand. A [`Resolver`] answers "which stacks live in this directory",
//! "which stack has this name" and "which stacks does this definition make" by looking only at
//! the directories involved, so that the cost of `plinth changed` follows the size of the
//! change, not the number of stacks. Full expansion for `plinth check` is built on the same
//! steps, so both validate stacks the same way.

use foldhash::{HashMap, HashSet};
use std::cell::RefCell;
use std::ops::Range;
use std::rc::Rc;

use super::{Config, StackDef, WorkspaceSpec, is_identifier, is_stack_name};
use crate::error::{Diagnostic, Diagnostics};
use crate::pattern::{Captures, Template};
use crate::stack::{Stack, Workspace};
use crate::tree::{EntryKind, Tree, TreeError, join, parent};

/// Where a stack comes from: its definition, directory and captures, and its name. Cheaper
/// than a [`Stack`]: nothing is validated or resolved yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    pub def: usize,
    pub dir: String,
    pub captures: Captures,
    pub name: String,
}

#[derive(Default)]
struct State {
    /// Sites per directory that exists (missing directories map to an empty list).
    at_dir: HashMap<String, Rc<[Site]>>,
    /// Materialized stacks by name.
    stacks: HashMap<String, Rc<Stack>>,
    /// Name lookups, including misses.
    named: HashMap<String, Option<Site>>,
    diagnostics: Vec<Diagnostic>,
}

/// Resolves stacks lazily from a config and a tree, collecting validation errors on the way.
pub struct Resolver<'a> {
    config: &'a Config,
    tree: &'a dyn Tree,
    literal_dirs: HashSet<String>,
    state: RefCell<State>,
}

impl std::fmt::Debug for Resolver<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").field("definitions", &self.config.stacks.len()).finish()
    }
}

/// Renders the default or templated name of a stack.
fn render_name(def: &StackDef, captures: &Captures) -> String {
    match &def.name {
        Some((template, _)) => template.render(captures),
        None if captures.is_empty() => def.key.clone(),
        None => format!("{}/{}", def.key, captures.joined()),
    }
}

impl<'a> Resolver<'a> {
    /// Starts resolving. Checks up front what is cheap to check for every definition: literal
    /// paths exist, and the fixed part of every pattern exists.
    pub fn new(config: &'a Config, tree: &'a dyn Tree) -> Result<Self, TreeError> {
        let literal_dirs = config.stacks.iter().filter_map(|d| d.path.literal_dir()).collect();
        let resolver = Resolver { config, tree, literal_dirs, state: RefCell::default() };
        for (i, def) in config.stacks.iter().enumerate() {
            match def.path.literal_dir() {
                Some(dir) => {
                    if !tree.is_dir(&dir)? {
                        resolver.report_missing_literal(def, &dir)?;
                        // Still check the rest of the table.
                        let site = Site {
                            def: i,
                            dir,
                            captures: Captures::default(),
                            name: render_name(def, &Captures::default()),
                        };
                        let _ = resolver.build(&site);
                    }
                }
                None => {
                    let prefix = def.path.fixed_prefix();
                    if !prefix.is_empty() && !tree.is_dir(&prefix)? {
                        resolver.push(
                            Diagnostic::error(
                                "config.path_not_found",
                                format!(
                                    "stack `{}`: directory `{prefix}` does not exist, so `{}` matches nothing",
                                    def.key,
                                    def.path.raw()
                                ),
                            )
                            .at(def.path_span.clone())
                            .help("point `path` at existing directories, relative to the repo root"),
                        );
                    }
                }
            }
        }
        Ok(resolver)
    }

    pub fn config(&self) -> &'a Config {
        self.config
    }

    pub fn tree(&self) -> &'a dyn Tree {
        self.tree
    }

    fn push(&self, diagnostic: Diagnostic) {
        let mut state = self.state.borrow_mut();
        if !state.diagnostics.contains(&diagnostic) {
            state.diagnostics.push(diagnostic);
        }
    }

    fn report_missing_literal(&self, def: &StackDef, dir: &str) -> Result<(), TreeError> {
        let name = dir.rsplit('/').next().unwrap_or(dir);
        let is_file = self
            .tree
            .read_dir(parent(dir))?
            .is_some_and(|entries| entries.iter().any(|e| e.name == name && e.kind != EntryKind::Dir));
        let message = if is_file {
            format!("stack `{}`: `{}` is a file, not a directory", def.key, def.path.raw())
        } else {
            format!("stack `{}`: directory `{}` does not exist", def.key, def.path.raw())
        };
        self.push(
            Diagnostic::error("config.path_not_found", message)
                .at(def.path_span.clone())
                .help("point `path` at the directory holding the stack's .tf files, relative to the repo root"),
        );
        Ok(())
    }

    /// Whether anything went wrong so far.
    pub fn has_errors(&self) -> bool {
        self.state.borrow().diagnostics.iter().any(|d| d.severity == crate::error::Severity::Error)
    }

    /// Everything found so far: `Err` with all diagnostics if any is an error, else the
    /// warnings.
    pub fn finish(&self) -> Result<Vec<Diagnostic>, Diagnostics> {
        let mut diagnostics = Diagnostics::new(self.config.source.clone());
        diagnostics.items = self.state.borrow().diagnostics.clone();
        diagnostics.sort();
        if diagnostics.has_errors() { Err(diagnostics) } else { Ok(diagnostics.items) }
    }

    /// The stacks rooted exactly at `dir`, if it exists.
    pub fn sites_at(&self, dir: &str) -> Result<Rc<[Site]>, TreeError> {
        self.sites_in(dir, false)
    }

    /// Like [`Resolver::sites_at`], for a directory the caller knows exists at this tree (it
    /// holds a changed file, or the tree's module graph lists it), which saves reading it.
    pub fn sites_at_existing(&self, dir: &str) -> Result<Rc<[Site]>, TreeError> {
        self.sites_in(dir, true)
    }

    fn sites_in(&self, dir: &str, known_to_exist: bool) -> Result<Rc<[Site]>, TreeError> {
        if let Some(found) = self.state.borrow().at_dir.get(dir) {
            return Ok(found.clone());
        }
        let claimed = self.literal_dirs.contains(dir);
        let mut sites: Vec<Site> = Vec::new();
        for (i, def) in self.config.stacks.iter().enumerate() {
            if claimed && !def.path.is_literal() {
                continue;
            }
            if let Some(captures) = def.path.match_dir(dir) {
                let name = render_name(def, &captures);
                sites.push(Site { def: i, dir: dir.to_owned(), captures, name });
            }
        }
        if !sites.is_empty() && !known_to_exist && !self.tree.is_dir(dir)? {
            sites.clear();
        }
        self.check_duplicates(&sites);
        let sites: Rc<[Site]> = sites.into();
        self.state.borrow_mut().at_dir.insert(dir.to_owned(), sites.clone());
        Ok(sites)
    }

    /// Two stacks may not share a directory and workspace.
    fn check_duplicates(&self, sites: &[Site]) {
        for (j, second) in sites.iter().enumerate() {
            let ws = self.workspace_of(second);
            if let Some(first) = sites[..j].iter().find(|first| self.workspace_of(first) == ws) {
                let first_def = &self.config.stacks[first.def];
                let second_def = &self.config.stacks[second.def];
                self.push(
                    Diagnostic::error(
                        "config.duplicate_stack",
                        format!(
                            "stacks `{}` and `{}` both use directory `{}` with workspace `{}`",
                            first.name,
                            second.name,
                            if second.dir.is_empty() { "." } else { &second.dir },
                            ws.describe()
                        ),
                    )
                    .at(second_def.path_span.clone())
                    .note(Some(first_def.path_span.clone()), format!("`{}` is defined here", first.name))
                    .help("one directory and workspace hold one state; give one of them another `workspace`, or remove it"),
                );
            }
        }
    }

    fn workspace_of(&self, site: &Site) -> Workspace {
        match &self.config.stacks[site.def].workspace {
            WorkspaceSpec::Default => Workspace::Default,
            WorkspaceSpec::PerBranch => Workspace::PerBranch,
            WorkspaceSpec::Named(t) => {
                let ws = t.render(&site.captures);
                if ws == "default" { Workspace::Default } else { Workspace::Named(ws) }
            }
        }
    }

    /// The directories a definition's path names, restricted to the captures in `known`.
    pub fn sites_of(&self, def_index: usize, known: &Captures) -> Result<Vec<Site>, TreeError> {
        let def = &self.config.stacks[def_index];
        let mut frontier = vec![String::new()];
        for index in 0..def.path.segment_count() {
            let mut next = Vec::new();
            for dir in &frontier {
                match def.path.fixed_segment(index, known) {
                    Some(name) => {
                        let child = join(dir, &name);
                        if self.tree.is_dir(&child)? {
                            next.push(child);
                        }
                    }
                    None => {
                        let Some(entries) = self.tree.read_dir(dir)? else { continue };
                        for entry in entries.iter().filter(|e| e.kind == EntryKind::Dir) {
                            if def.path.match_segment(index, &entry.name).is_some() {
                                next.push(join(dir, &entry.name));
                            }
                        }
                    }
                }
            }
            frontier = next;
        }
        let mut out = Vec::new();
        for dir in frontier {
            for site in self.sites_at(&dir)?.iter() {
                if site.def == def_index && known.iter().all(|(n, v)| site.captures.get(n) == Some(v)) {
                    out.push(site.clone());
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The stack with this name, if there is one.
    pub fn site_named(&self, name: &str) -> Result<Option<Site>, TreeError> {
        if let Some(found) = self.state.borrow().named.get(name) {
            return Ok(found.clone());
        }
        let mut found = None;
        'defs: for (i, def) in self.config.stacks.iter().enumerate() {
            let candidates: Vec<Captures> = match &def.name {
                Some((template, _)) => template.invert(name, 64),
                None if def.path.is_literal() => {
                    if name == def.key {
                        vec![Captures::default()]
                    } else {
                        Vec::new()
                    }
                }
                None => match name.strip_prefix(def.key.as_str()).and_then(|r| r.strip_prefix('/')) {
                    Some(rest) => {
                        let joined = def.path.capture_names().iter().map(|c| format!("{{{c}}}")).collect::<Vec<_>>();
                        match Template::parse(&joined.join("-")) {
                            Ok(template) => template.invert(rest, 64),
                            Err(_) => Vec::new(),
                        }
                    }
                    None => Vec::new(),
                },
            };
            for captures in candidates {
                let sites = match def.path.render(&captures) {
                    Some(dir) => self.sites_at(&dir)?.to_vec(),
                    // The name does not fix every placeholder of the path: list the rest.
                    None => self.sites_of(i, &captures)?,
                };
                if let Some(site) = sites.into_iter().find(|s| s.def == i && s.name == name) {
                    found = Some(site);
                    break 'defs;
                }
            }
        }
        self.state.borrow_mut().named.insert(name.to_owned(), found.clone());
        Ok(found)
    }

    /// The full stack for a site: validated, with its dependencies resolved to names.
    pub fn stack(&self, site: &Site) -> Result<Rc<Stack>, TreeError> {
        if let Some(stack) = self.state.borrow().stacks.get(&site.name)
            && stack.dir == site.dir
        {
            return Ok(stack.clone());
        }
        let stack = Rc::new(self.build(site)?);
        let mut state = self.state.borrow_mut();
        if let Some(other) = state.stacks.get(&site.name)
            && other.dir != site.dir
        {
            let other_dir = other.dir.clone();
            drop(state);
            self.report_duplicate_name(site, &other_dir);
            return Ok(stack);
        }
        state.stacks.insert(site.name.clone(), stack.clone());
        Ok(stack)
    }

    fn report_duplicate_name(&self, site: &Site, other_dir: &str) {
        let def = &self.config.stacks[site.def];
        self.push(
            Diagnostic::error(
                "config.duplicate_name",
                format!(
                    "two stacks are named `{}` (in `{}` and `{}`)",
                    site.name,
                    if other_dir.is_empty() { "." } else { other_dir },
                    if site.dir.is_empty() { "." } else { &site.dir }
                ),
            )
            .at(def.name.as_ref().map_or(def.key_span.clone(), |(_, s)| s.clone()))
            .help("give each stack its own `name`; placeholders such as `{env}` help"),
        );
    }

    fn build(&self, site: &Site) -> Result<Stack, TreeError> {
        let def = &self.config.stacks[site.def];
        let captures = &site.captures;
        let shown_dir = if site.dir.is_empty() { "." } else { &site.dir };
        let from = if def.path.is_literal() { String::new() } else { format!(" (for `{shown_dir}`)") };
        let name = &site.name;
        if !is_stack_name(name) {
            self.push(
                Diagnostic::error("config.invalid_name", format!("stack name `{name}`{from} is not valid"))
                    .at(def.name.as_ref().map_or(def.key_span.clone(), |(_, s)| s.clone()))
                    .help("stack names are `/`-separated parts without `.` or `..` parts, backslashes or outer spaces"),
            );
        }
        let environment = def.environment.as_ref().map(|(t, span)| (t.render(captures), span));
        if let Some((env, span)) = &environment
            && !self.config.environments.contains_key(env)
        {
            let declared = if self.config.environments.is_empty() {
                "no environments are declared".to_owned()
            } else {
                let names: Vec<String> = self.config.environments.keys().map(|k| format!("`{k}`")).collect();
                format!("declared: {}", names.join(", "))
            };
            self.push(
                Diagnostic::error(
                    "config.unknown_environment",
                    format!("stack `{name}`{from} is in environment `{env}`, which is not declared ({declared})"),
                )
                .at((*span).clone())
                .help(format!("add an `[environments.{env}]` table, or change the stack's `environment`")),
            );
        }
        let workspace = self.workspace_of(site);
        if let Workspace::Named(ws) = &workspace
            && (!is_identifier(ws) || ws.len() > 90)
        {
            self.push(
                Diagnostic::error(
                    "config.invalid_workspace",
                    format!("workspace `{ws}`{from} is not a valid Terraform workspace name"),
                )
                .at(def.workspace_span.clone().unwrap_or(def.key_span.clone()))
                .help("use letters, digits, `_` and `-`; `branch` means one workspace per branch"),
            );
        }
        let mut depends_on = Vec::new();
        for (template, span) in &def.depends_on {
            depends_on.extend(self.resolve_dependency(site, template, span)?);
        }
        depends_on.sort();
        depends_on.dedup();
        Ok(Stack {
            name: name.clone(),
            key: def.key.clone(),
            dir: site.dir.clone(),
            environment: environment.map(|(e, _)| e),
            workspace,
            depends_on,
            terraform: def.terraform.clone(),
            captures: captures.clone(),
        })
    }

    /// A `depends_on` entry names a stack, or a key meaning all of that key's stacks.
    fn resolve_dependency(
        &self,
        site: &Site,
        template: &Template,
        span: &Range<usize>,
    ) -> Result<Vec<String>, TreeError> {
        let wanted = template.render(&site.captures);
        if let Some(target) = self.site_named(&wanted)? {
            if target.name == site.name {
                self.report_cycle(std::slice::from_ref(&site.name), span);
            }
            return Ok(vec![target.name]);
        }
        if let Some(index) = self.config.stacks.iter().position(|d| d.key == wanted) {
            return Ok(self
                .sites_of(index, &Captures::default())?
                .into_iter()
                .filter(|s| s.name != site.name)
                .map(|s| s.name)
                .collect());
        }
        let via = if template.has_captures() { format!(" (from `{}`)", template.raw()) } else { String::new() };
        self.push(
            Diagnostic::error(
                "config.unknown_dependency",
                format!("stack `{}` depends on `{wanted}`{via}, which is not a stack", site.name),
            )
            .at(span.clone())
            .help("name a stack that `plinth check` lists, or a stack key to depend on all of its stacks"),
        );
        Ok(Vec::new())
    }

    /// Reports a dependency cycle, given the stacks in it in order.
    pub(crate) fn report_cycle(&self, cycle: &[String], span: &Range<usize>) {
        let mut names: Vec<&str> = cycle.iter().map(String::as_str).collect();
        // Start from the smallest name so that a cycle is reported once, however it is found.
        if let Some(min) = names.iter().enumerate().min_by_key(|(_, n)| **n).map(|(i, _)| i) {
            names.rotate_left(min);
        }
        let first = names.first().copied().unwrap_or_default();
        self.push(
            Diagnostic::error(
                "config.dependency_cycle",
                format!("stacks depend on each other in a cycle: {} -> {first}", names.join(" -> ")),
            )
            .at(span.clone())
            .help("remove one of the `depends_on` entries in the cycle; stacks must form an order"),
        );
    }

    /// The span of the `depends_on` entry through which `from` names `to`, for messages.
    pub(crate) fn dependency_span(&self, from: &Stack, to: &str) -> Range<usize> {
        let Some(def) = self.config.stacks.iter().find(|d| d.key == from.key) else { return 0..0 };
        def.depends_on
            .iter()
            .find(|(t, _)| {
                let rendered = t.render(&from.captures);
                rendered == to || self.config.stacks.iter().any(|d| d.key == rendered)
            })
            .map_or(def.key_span.clone(), |(_, s)| s.clone())
    }

    /// The stacks that list `stack` in their `depends_on`, directly.
    pub fn dependents_of(&self, stack: &Stack) -> Result<Vec<Rc<Stack>>, TreeError> {
        let mut out: Vec<Rc<Stack>> = Vec::new();
        for (i, def) in self.config.stacks.iter().enumerate() {
            for (template, _) in &def.depends_on {
                let mut candidates: Vec<Captures> = Vec::new();
                if template.has_captures() {
                    candidates.extend(template.invert(&stack.name, 64));
                    candidates.extend(template.invert(&stack.key, 64));
                } else if template.raw() == stack.name || template.raw() == stack.key {
                    candidates.push(Captures::default());
                }
                for known in candidates {
                    for site in self.sites_of(i, &known)? {
                        let dependent = self.stack(&site)?;
                        if dependent.depends_on.contains(&stack.name) && !out.iter().any(|d| d.name == dependent.name) {
                            out.push(dependent);
                        }
                    }
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}
