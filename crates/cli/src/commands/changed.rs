//! `plinth changed`: the stacks a range of commits touches, in dependency waves, with reasons.

use std::path::PathBuf;
use std::process::ExitCode;

use plinth_core::changes::AffectedJson;
use plinth_core::mapping::Mapping;
use plinth_git::{ChangedError, ChangedOptions, ChangedReport, ModuleCache, Repo, short};
use serde::Serialize;

use super::Outcome;
use crate::output::{Failure, Format, print_json, table};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The base revision, usually the main branch. As in the CircleCI path-filtering orb, the
    /// comparison starts at the merge base of base and head; when that is head itself, at
    /// head's first parent; for a first commit, at the empty tree.
    #[arg(long)]
    pub base: String,
    /// The head revision.
    #[arg(long, default_value = "HEAD")]
    pub head: String,
    /// The repository (a working copy or a bare repo); no checkout is read or changed.
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t, visible_alias = "format")]
    pub output: Format,
    /// Also list the stacks that depend on a changed stack, directly or transitively.
    #[arg(long)]
    pub with_dependents: bool,
    /// Instead of stacks, print the parameters JSON that the CircleCI path-filtering orb would
    /// produce for this mapping file (`<path-regex> <parameter> <json-value>` lines).
    #[arg(long, value_name = "FILE")]
    pub mapping: Option<PathBuf>,
    /// The branch that per-branch workspaces are named after. Defaults to head when head
    /// names a branch.
    #[arg(long)]
    pub branch: Option<String>,
    /// Where to cache the module graph between runs. Defaults to `plinth/modules` in the
    /// repository's git directory.
    #[arg(long, env = "PLINTH_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Do not read or write the module graph cache.
    #[arg(long)]
    pub no_cache: bool,
}

#[derive(Serialize)]
struct Report<'a> {
    base: String,
    head: String,
    comparison: &'a str,
    stacks: Vec<AffectedJson<'a>>,
    notes: &'a [String],
}

pub fn run(args: Args) -> Outcome {
    let format = args.output;
    let repo = Repo::discover(&args.repo).map_err(|e| Failure::coded(&e, format))?;
    if let Some(mapping) = &args.mapping {
        return run_mapping(&repo, &args, mapping);
    }
    let cache = match (&args.cache_dir, args.no_cache) {
        (_, true) => ModuleCache::disabled(),
        (Some(dir), false) => ModuleCache::at(dir),
        (None, false) => ModuleCache::for_git_dir(repo.git_dir()),
    };
    let options = ChangedOptions {
        base: args.base.clone(),
        head: args.head.clone(),
        with_dependents: args.with_dependents,
        cache,
    };
    let report = match plinth_git::changed(&repo, &options) {
        Ok(report) => report,
        Err(ChangedError::Config(plinth_core::config::LoadError::Config(d))) => {
            return Err(Failure::diagnostics(&d, format));
        }
        Err(e) => return Err(Failure::coded(&e, format)),
    };
    let branch = args.branch.clone().or_else(|| branch_of(&repo, &args.head));
    match format {
        Format::Json => print_json(&Report {
            base: base_hex(&report),
            head: report.comparison.head.to_string(),
            comparison: &report.comparison.how,
            stacks: report.stacks.iter().map(|a| AffectedJson::new(a, branch.as_deref())).collect(),
            notes: &report.notes,
        }),
        Format::Text => print_text(&report, branch.as_deref()),
    }
    if !report.config_warnings.items.is_empty() {
        eprintln!("{}", report.config_warnings);
    }
    Ok(ExitCode::SUCCESS)
}

/// The branch a revision names, if it names one.
fn branch_of(repo: &Repo, rev: &str) -> Option<String> {
    if rev == "HEAD" {
        return repo.head_branch();
    }
    repo.resolve(&format!("refs/heads/{rev}")).ok().map(|_| rev.to_owned())
}

fn base_hex(report: &ChangedReport) -> String {
    match report.comparison.base {
        Some(id) => id.to_string(),
        None => plinth_git::empty_tree_hex(),
    }
}

fn print_text(report: &ChangedReport, branch: Option<&str>) {
    let base = report.comparison.base.as_ref().map_or_else(|| "empty tree".to_owned(), short);
    outln!("Comparing {base}..{} ({}).", short(&report.comparison.head), report.comparison.how);
    if report.stacks.is_empty() {
        outln!("No stack changed. Nothing to plan or apply, which counts as success.");
    } else {
        let waves = report.stacks.last().map_or(0, |s| s.wave);
        outln!(
            "{} stack{} changed, in {waves} wave{}:\n",
            report.stacks.len(),
            if report.stacks.len() == 1 { "" } else { "s" },
            if waves == 1 { "" } else { "s" }
        );
        let rows: Vec<Vec<String>> = report
            .stacks
            .iter()
            .map(|a| {
                let mut name = a.stack.name.clone();
                if a.deleted {
                    name.push_str(" (deleted)");
                }
                let workspace = match a.stack.workspace.for_branch(branch) {
                    Some(ws) => format!(" [{ws}]"),
                    None => String::new(),
                };
                vec![
                    a.wave.to_string(),
                    name,
                    format!("{}{workspace}", a.stack.display_dir()),
                    a.stack.environment.clone().unwrap_or_else(|| "-".into()),
                    describe_reasons(&a.reasons),
                ]
            })
            .collect();
        out!("{}", table(&["WAVE", "STACK", "PATH", "ENV", "WHY"], &rows));
    }
    for note in &report.notes {
        eprintln!("note: {note}");
    }
}

/// One line of reasons: the first few paths, then a count.
fn describe_reasons(reasons: &[plinth_core::changes::Reason]) -> String {
    use plinth_core::changes::Via;
    const SHOWN: usize = 3;
    let mut parts: Vec<String> = reasons
        .iter()
        .take(SHOWN)
        .map(|r| {
            let path = r.path.as_deref().unwrap_or("");
            match &r.via {
                Via::Stack => path.to_owned(),
                Via::Module(dir) => format!("{path} (module {dir})"),
                Via::Watch(glob) => format!("{path} (watch {glob})"),
                Via::Config => format!("{path} (its [stacks] table changed)"),
                Via::Dependent(stack) => format!("depends on {stack}, which changed"),
            }
        })
        .collect();
    if reasons.len() > SHOWN {
        parts.push(format!("+{} more", reasons.len() - SHOWN));
    }
    parts.join(", ")
}

fn run_mapping(repo: &Repo, args: &Args, file: &std::path::Path) -> Outcome {
    let format = args.output;
    let text = std::fs::read_to_string(file).map_err(|e| {
        Failure::new(
            "mapping.unreadable",
            format!("could not read {}: {e}", file.display()),
            "Pass the path of a file holding the orb's mapping lines.",
            format,
        )
    })?;
    let mapping = Mapping::parse(&file.display().to_string(), &text).map_err(|d| Failure::diagnostics(&d, format))?;
    let cmp = repo.compare(&args.base, &args.head).map_err(|e| Failure::coded(&e, format))?;
    let fail = |e: plinth_git::GitError| Failure::coded(&e, format);
    let names = repo
        .names_like_git_diff(repo.tree_id(cmp.base).map_err(fail)?, repo.tree_id(Some(cmp.head)).map_err(fail)?)
        .map_err(fail)?;
    let base = cmp.base.map_or_else(plinth_git::empty_tree_hex, |b| b.to_string());
    eprintln!("Comparing {base}...{}", cmp.head);
    let result = mapping.evaluate(&names);
    if result.parameters.is_empty() {
        eprintln!("No change detected in the paths defined in the mapping parameter");
    }
    outln!("{}", result.to_orb_json());
    Ok(ExitCode::SUCCESS)
}
