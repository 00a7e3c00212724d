//! Full expansion: every stack a config makes against a tree, with every check, for
//! `plinth check`, `plinth init` and anything else that needs the whole set.

use std::collections::BTreeSet;

use super::Config;
use super::resolve::Resolver;
use crate::error::{Diagnostic, Diagnostics, ErrorCode};
use crate::pattern::Captures;
use crate::stack::{StackSet, waves};
use crate::tree::{Tree, TreeError};

/// A config checked against a tree: its stacks, and the warnings found on the way.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: Config,
    pub stacks: StackSet,
    pub warnings: Vec<Diagnostic>,
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Config(Diagnostics),
    #[error("could not read the repository tree: {0}")]
    Tree(#[from] TreeError),
}

impl ErrorCode for LoadError {
    fn code(&self) -> &'static str {
        match self {
            LoadError::Config(d) => d.code(),
            LoadError::Tree(_) => "repo.unreadable",
        }
    }

    fn http_status(&self) -> u16 {
        match self {
            LoadError::Config(d) => d.http_status(),
            LoadError::Tree(_) => 500,
        }
    }

    fn help(&self) -> String {
        match self {
            LoadError::Config(d) => d.help(),
            LoadError::Tree(_) => "Check that the repository is intact (`git fsck`) and readable.".to_owned(),
        }
    }
}

impl Loaded {
    /// Parses plinth.toml text and expands it against `tree`.
    pub fn load(file_name: &str, text: &str, tree: &dyn Tree) -> Result<Loaded, LoadError> {
        let (config, warnings) = Config::parse(file_name, text).map_err(LoadError::Config)?;
        config.expand(tree, warnings)
    }

    /// The warnings, ready to render.
    pub fn warning_diagnostics(&self) -> Diagnostics {
        Diagnostics { file: self.config.source.clone(), items: self.warnings.clone() }
    }
}

impl Config {
    /// Expands every stack definition against `tree` and checks the result as a whole.
    pub fn expand(self, tree: &dyn Tree, mut warnings: Vec<Diagnostic>) -> Result<Loaded, LoadError> {
        let (stacks, found) = {
            let resolver = Resolver::new(&self, tree)?;
            let mut stacks = Vec::new();
            for (i, def) in self.stacks.iter().enumerate() {
                let sites = resolver.sites_of(i, &Captures::default())?;
                if sites.is_empty() && !def.path.is_literal() && tree.is_dir(&def.path.fixed_prefix())? {
                    warnings.push(
                        Diagnostic::warning(
                            "config.pattern_matches_nothing",
                            format!("stack `{}`: no directory matches `{}`", def.key, def.path.raw()),
                        )
                        .at(def.path_span.clone())
                        .help("create a matching directory, or fix the pattern"),
                    );
                }
                for site in sites {
                    stacks.push((*resolver.stack(&site)?).clone());
                }
            }
            let set = StackSet::new(stacks);
            let all: BTreeSet<String> = set.iter().map(|s| s.name.clone()).collect();
            let found = waves(&all, |name| {
                Ok::<_, TreeError>(set.get(name).map(|s| s.depends_on.clone()).unwrap_or_default())
            })?;
            for cycle in &found.cycles {
                let (Some(first), Some(second)) = (set.get(&cycle[0]), cycle.get(1).or(cycle.first())) else {
                    continue;
                };
                resolver.report_cycle(cycle, &resolver.dependency_span(first, second));
            }
            (set, resolver.finish())
        };
        match found {
            Ok(more) => {
                warnings.extend(more);
                Ok(Loaded { config: self, stacks, warnings })
            }
            Err(mut diagnostics) => {
                diagnostics.items.extend(warnings);
                diagnostics.sort();
                Err(LoadError::Config(diagnostics))
            }
        }
    }
}
