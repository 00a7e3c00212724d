//! plinth.toml: the model of a repo's release config, parsed and checked with every error
//! pointing at file, line and column.
//!
//! Parsing happens in two steps. [`Config::parse`] reads the text and checks everything that
//! needs no files: syntax, unknown keys, placeholders, names. [`Config::expand`] then looks at a
//! tree (a commit, or a working directory) to turn stack definitions into stacks and checks what
//! needs files: paths that exist, duplicates, dependencies.

mod expand;
mod init;
mod provision;
mod raw;
mod resolve;
mod service;

use std::collections::BTreeMap;
use std::ops::Range;

use toml::Spanned;

use crate::error::{Diagnostic, Diagnostics, SourceFile};
use crate::pattern::{Glob, PathPattern, PatternError, Template};

pub use expand::{LoadError, Loaded};
pub use init::starter_config;
pub use provision::{CidrPool, DEFAULT_REVIEW_MAX, DEFAULT_REVIEW_TTL, Product, Review};
pub use resolve::{Resolver, Site};
pub use service::{Amount, Health, MAX_COUNT, Service, ServiceDef, Strategy};

/// The config file's name, at the repo root.
pub const CONFIG_FILE: &str = "plinth.toml";

/// The branch that releases when the config names none.
pub const DEFAULT_MAIN_BRANCH: &str = "main";

/// The Terraform binary when a stack names none.
pub const DEFAULT_TERRAFORM: &str = "terraform";

/// A parsed plinth.toml whose values are well-formed. Paths are not checked against files yet.
#[derive(Clone, Debug)]
pub struct Config {
    pub main_branch: String,
    pub environments: BTreeMap<String, Environment>,
    /// Stack definitions in key order; a pattern definition stands for many stacks.
    pub stacks: Vec<StackDef>,
    /// Long-running apps, released from CI and rolled out by plinth.
    pub services: Vec<ServiceDef>,
    /// Whom environments on request belong to.
    pub products: BTreeMap<String, Product>,
    /// Network ranges environments get blocks from.
    pub cidr_pools: BTreeMap<String, CidrPool>,
    /// An environment per branch, when set.
    pub review: Option<Review>,
    /// The branch the kept roots of environments on request are also committed to (S4.7).
    pub commit_branch: Option<String>,
    pub source: SourceFile,
}

/// A named target, such as stg or prd, and its release policy.
#[derive(Clone, Debug)]
pub struct Environment {
    pub name: String,
    /// Commits on branches matching these globs release to this environment.
    pub branches: Vec<Glob>,
    /// Whether applies wait for an approver.
    pub approval: bool,
    /// Roles allowed to approve (admins always may).
    pub approvers: Vec<String>,
    /// Release tags matching these globs release to this environment (`v*.*.*` for prd).
    pub tags: Vec<Glob>,
    pub span: Range<usize>,
}

impl Environment {
    pub fn releases_from(&self, branch: &str) -> bool {
        self.branches.iter().any(|g| g.is_match(branch))
    }

    pub fn releases_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|g| g.is_match(tag))
    }
}

/// Which Terraform workspace a stack uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkspaceSpec {
    /// Terraform's `default` workspace.
    Default,
    /// A fixed name, which may use the path's placeholders.
    Named(Template),
    /// One workspace per branch, named after the branch's slug.
    PerBranch,
}

/// One `[stacks.KEY]` table.
#[derive(Clone, Debug)]
pub struct StackDef {
    pub key: String,
    pub key_span: Range<usize>,
    pub path: PathPattern,
    pub path_span: Range<usize>,
    pub name: Option<(Template, Range<usize>)>,
    pub environment: Option<(Template, Range<usize>)>,
    pub workspace: WorkspaceSpec,
    pub workspace_span: Option<Range<usize>>,
    pub depends_on: Vec<(Template, Range<usize>)>,
    pub watch: Vec<(Glob, Range<usize>)>,
    pub terraform: String,
}

/// Whether a name is a plain identifier: letters, digits, `_` and `-`, starting with a letter
/// or digit.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Whether a stack name is safe everywhere it appears: in URLs, file names, locks and the CLI.
/// Names may hold any printable characters (directory names become names), but no empty,
/// `.` or `..` parts, no backslashes and no leading or trailing spaces in a part.
pub fn is_stack_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars().count() <= 200
        && s.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part.trim() == part
                && !part.chars().any(|c| c.is_control() || c == '\\')
        })
}

/// The byte range of position `offset` inside a string value, when the value is written
/// without escapes; otherwise the start of the whole value.
fn inner_span(text: &str, span: &Range<usize>, value: &str, offset: usize) -> Range<usize> {
    let written = text.get(span.clone()).unwrap_or("");
    let plain = written.len() == value.len() + 2
        && (written.starts_with('"') || written.starts_with('\''))
        && &written[1..written.len() - 1] == value;
    if plain {
        let start = span.start + 1 + offset;
        start..(start + 1).min(span.end)
    } else {
        span.clone()
    }
}

struct Parser<'a> {
    text: &'a str,
    diagnostics: Diagnostics,
}

impl Parser<'_> {
    fn pattern_error(&mut self, code: &'static str, what: &str, value: &Spanned<String>, error: PatternError) {
        let span = inner_span(self.text, &value.span(), value.get_ref(), error.offset);
        self.diagnostics.push(Diagnostic::error(code, format!("{what}: {}", error.message)).at(span).help(error.help));
    }

    fn template(&mut self, what: &str, value: &Spanned<String>, captures: &[&str]) -> Option<(Template, Range<usize>)> {
        match Template::parse(value.get_ref()) {
            Ok(template) => {
                if let Some((name, offset)) = template.undefined_capture(captures) {
                    let span = inner_span(self.text, &value.span(), value.get_ref(), offset);
                    let defined = if captures.is_empty() {
                        "the stack's path has no placeholders".to_owned()
                    } else {
                        format!(
                            "the path defines {}",
                            captures.iter().map(|c| format!("`{{{c}}}`")).collect::<Vec<_>>().join(", ")
                        )
                    };
                    self.diagnostics.push(
                        Diagnostic::error(
                            "config.undefined_capture",
                            format!("{what} uses `{{{name}}}`, but {defined}"),
                        )
                        .at(span)
                        .help("use a placeholder that the stack's `path` defines, or add it to the path"),
                    );
                    return None;
                }
                Some((template, value.span()))
            }
            Err(e) => {
                self.pattern_error("config.invalid_placeholder", what, value, e);
                None
            }
        }
    }

    fn environment(&mut self, name: &Spanned<String>, raw: Spanned<raw::RawEnvironment>) -> Option<Environment> {
        let span = raw.span();
        let raw = raw.into_inner();
        if !is_identifier(name.get_ref()) {
            self.diagnostics.push(
                Diagnostic::error(
                    "config.invalid_name",
                    format!("`{}` is not a valid environment name", name.get_ref()),
                )
                .at(name.span())
                .help("use letters, digits, `_` and `-`, such as `stg` or `prd`"),
            );
        }
        let mut branches = Vec::new();
        for branch in &raw.branches {
            match Glob::parse(branch.get_ref()) {
                Ok(glob) => branches.push(glob),
                Err(e) => self.pattern_error("config.invalid_glob", "branch pattern", branch, e),
            }
        }
        let mut tags = Vec::new();
        for tag in &raw.tags {
            match Glob::parse(tag.get_ref()) {
                Ok(glob) => tags.push(glob),
                Err(e) => self.pattern_error("config.invalid_glob", "tag pattern", tag, e),
            }
        }
        for role in &raw.approvers {
            if !is_identifier(role.get_ref()) {
                self.diagnostics.push(
                    Diagnostic::error("config.invalid_name", format!("`{}` is not a valid role name", role.get_ref()))
                        .at(role.span())
                        .help("role names use letters, digits, `_` and `-`, such as `sre`"),
                );
            }
        }
        let approval = raw.approval.as_ref().is_some_and(|a| *a.get_ref());
        if !approval && !raw.approvers.is_empty() {
            let at = raw.approvers[0].span();
            self.diagnostics.push(
                Diagnostic::warning(
                    "config.approvers_without_approval",
                    format!("environment `{}` lists approvers but does not require approval", name.get_ref()),
                )
                .at(at)
                .help("add `approval = true` to make applies wait for one of these roles, or remove `approvers`"),
            );
        }
        Some(Environment {
            name: name.get_ref().clone(),
            branches,
            approval,
            approvers: raw.approvers.iter().map(|r| r.get_ref().clone()).collect(),
            tags,
            span,
        })
    }

    fn stack(&mut self, key: &Spanned<String>, raw: Spanned<raw::RawStack>) -> Option<StackDef> {
        let raw = raw.into_inner();
        let errors_before = self.diagnostics.errors().count();
        if !is_identifier(key.get_ref()) {
            self.diagnostics.push(
                Diagnostic::error("config.invalid_name", format!("`{}` is not a valid stack key", key.get_ref()))
                    .at(key.span())
                    .help("stack keys use letters, digits, `_` and `-`, such as `[stacks.app]`"),
            );
        }
        let path = match PathPattern::parse(raw.path.get_ref()) {
            Ok(path) => Some(path),
            Err(e) => {
                self.pattern_error("config.invalid_path", "path", &raw.path, e);
                None
            }
        };
        let captures: Vec<&str> = path.as_ref().map(|p| p.capture_names()).unwrap_or_default();
        let name = raw.name.as_ref().and_then(|n| self.template("name", n, &captures));
        let environment = raw.environment.as_ref().and_then(|e| self.template("environment", e, &captures));
        let workspace = match &raw.workspace {
            None => WorkspaceSpec::Default,
            Some(w) if w.get_ref() == "branch" => WorkspaceSpec::PerBranch,
            Some(w) if w.get_ref() == "default" => WorkspaceSpec::Default,
            Some(w) => match self.template("workspace", w, &captures) {
                Some((template, _)) => WorkspaceSpec::Named(template),
                None => WorkspaceSpec::Default,
            },
        };
        let depends_on = raw.depends_on.iter().filter_map(|d| self.template("depends_on", d, &captures)).collect();
        let mut watch = Vec::new();
        for w in &raw.watch {
            match Glob::parse(w.get_ref()) {
                Ok(glob) => {
                    if let Some(name) = glob.capture_names().find(|c| !captures.contains(c)) {
                        self.diagnostics.push(
                            Diagnostic::error(
                                "config.undefined_capture",
                                format!("watch glob uses `{{{name}}}`, which the stack's path does not define"),
                            )
                            .at(w.span())
                            .help("use a placeholder that the stack's `path` defines, or add it to the path"),
                        );
                    } else {
                        watch.push((glob, w.span()));
                    }
                }
                Err(e) => self.pattern_error("config.invalid_glob", "watch glob", w, e),
            }
        }
        let terraform = match &raw.terraform {
            Some(t) if t.get_ref().trim().is_empty() => {
                self.diagnostics.push(
                    Diagnostic::error("config.invalid_terraform", "`terraform` is empty")
                        .at(t.span())
                        .help("name the binary (`terraform`, `tofu`) or give its path, or remove the key"),
                );
                DEFAULT_TERRAFORM.to_owned()
            }
            Some(t) => t.get_ref().clone(),
            None => DEFAULT_TERRAFORM.to_owned(),
        };
        if self.diagnostics.errors().count() > errors_before {
            return None;
        }
        Some(StackDef {
            key: key.get_ref().clone(),
            key_span: key.span(),
            path: path?,
            path_span: raw.path.span(),
            name,
            environment,
            workspace,
            workspace_span: raw.workspace.as_ref().map(|w| w.span()),
            depends_on,
            watch,
            terraform,
        })
    }
}

impl Config {
    /// Parses plinth.toml text. Returns every problem found, not only the first.
    pub fn parse(file_name: &str, text: &str) -> Result<(Config, Vec<Diagnostic>), Diagnostics> {
        let source = SourceFile::new(file_name, text);
        let mut parser = Parser { text, diagnostics: Diagnostics::new(source.clone()) };
        let raw: raw::RawConfig = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                let mut diagnostic = toml_error(&e);
                if let Some(span) = e.span() {
                    diagnostic = diagnostic.at(span);
                }
                parser.diagnostics.push(diagnostic);
                return Err(parser.diagnostics);
            }
        };
        let main_branch = match &raw.main_branch {
            Some(b) if b.get_ref().trim().is_empty() => {
                parser.diagnostics.push(
                    Diagnostic::error("config.invalid_branch", "`main_branch` is empty")
                        .at(b.span())
                        .help("name the branch that merges land on, such as `main`"),
                );
                DEFAULT_MAIN_BRANCH.to_owned()
            }
            Some(b) => b.get_ref().clone(),
            None => DEFAULT_MAIN_BRANCH.to_owned(),
        };
        let mut environments = BTreeMap::new();
        for (name, env) in raw.environments {
            if let Some(env) = parser.environment(&name, env) {
                environments.insert(name.into_inner(), env);
            }
        }
        let mut stacks = Vec::new();
        for (key, stack) in raw.stacks {
            if let Some(def) = parser.stack(&key, stack) {
                stacks.push(def);
            }
        }
        let declared: Vec<&str> = environments.keys().map(String::as_str).collect();
        let services = service::parse_services(raw.services, &declared, &mut parser.diagnostics);
        service::check_hosts(&services, &declared, &mut parser.diagnostics);
        let products = provision::parse_products(raw.products, &mut parser.diagnostics);
        let cidr_pools = provision::parse_pools(raw.cidr_pools, &mut parser.diagnostics);
        let review = raw.review.and_then(|r| provision::parse_review(r, &products, &mut parser.diagnostics));
        let commit_branch = provision::parse_provisioning(raw.provisioning, &main_branch, &mut parser.diagnostics);
        let mut diagnostics = parser.diagnostics;
        diagnostics.sort();
        if diagnostics.has_errors() {
            return Err(diagnostics);
        }
        let warnings = diagnostics.items;
        let config =
            Config { main_branch, environments, stacks, services, products, cidr_pools, review, commit_branch, source };
        Ok((config, warnings))
    }

    pub fn service(&self, name: &str) -> Option<&ServiceDef> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The environments a release tag goes to.
    pub fn environments_for_tag(&self, tag: &str) -> impl Iterator<Item = &Environment> {
        self.environments.values().filter(move |e| e.releases_tag(tag))
    }

    pub fn stack_def(&self, key: &str) -> Option<&StackDef> {
        self.stacks.iter().find(|s| s.key == key)
    }

    /// The environments a branch releases to.
    pub fn environments_for_branch(&self, branch: &str) -> impl Iterator<Item = &Environment> {
        self.environments.values().filter(move |e| e.releases_from(branch))
    }
}

/// Turns a TOML or serde error into a diagnostic with a code and a helpful sentence.
pub(crate) fn toml_error(e: &toml::de::Error) -> Diagnostic {
    let message = e.message().trim().to_owned();
    if message.starts_with("unknown field") {
        let help = if message.contains("expected one of") {
            "remove the key or fix its spelling; the message lists the keys allowed here"
        } else {
            "remove the key; this table takes no keys of that name"
        };
        return Diagnostic::error("config.unknown_key", message).help(help);
    }
    if message.starts_with("missing field") {
        return Diagnostic::error("config.missing_key", message).help("add the key; it has no default");
    }
    if message.starts_with("invalid type") {
        return Diagnostic::error("config.invalid_type", message).help("give the value the type the message names");
    }
    if message.starts_with("duplicate key") {
        return Diagnostic::error("config.duplicate_key", message)
            .help("each key may appear once per table; remove one");
    }
    Diagnostic::error("config.syntax", message).help("fix the TOML syntax at this position; see https://toml.io")
}

#[cfg(test)]
mod tests;
