//! `plinth check`: validate plinth.toml and show every stack as plinth sees it.

use std::path::PathBuf;
use std::process::ExitCode;

use plinth_core::config::LoadError;
use plinth_core::modules::ModuleLookup;
use plinth_core::stack::StackJson;
use plinth_core::{CONFIG_FILE, Loaded};
use serde::Serialize;

use super::Outcome;
use super::source::{Source, module_graph, read_config};
use crate::output::{Failure, Format, print_json, table};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The repository, or a directory holding plinth.toml.
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Check plinth.toml as committed at this revision, instead of the files on disk.
    #[arg(long)]
    rev: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t, visible_alias = "format")]
    output: Format,
}

#[derive(Serialize)]
struct Report<'a> {
    valid: bool,
    source: String,
    main_branch: &'a str,
    environments: Vec<EnvironmentJson<'a>>,
    stacks: Vec<CheckedStack<'a>>,
    services: Vec<ServiceJson>,
    templates: Vec<TemplateJson>,
    warnings: Vec<plinth_core::error::DiagnosticJson>,
}

/// A template under `templates/`, as `plinth check --output json` shows it.
#[derive(Serialize)]
struct TemplateJson {
    name: String,
    environment: String,
    account: String,
    parameters: Vec<String>,
    services: Vec<String>,
}

/// Reads and checks every template; the problems of each broken one, and of `[review]`.
fn templates(
    tree: &dyn plinth_core::tree::Tree,
    config: &plinth_core::Config,
) -> Result<(Vec<TemplateJson>, Vec<plinth_core::Diagnostics>), String> {
    let mut ok = Vec::new();
    let mut broken = Vec::new();
    let names = plinth_core::template::template_names(tree).map_err(|e| e.to_string())?;
    for name in &names {
        match plinth_core::template::read_template(tree, config, name) {
            Ok(found) => {
                let t = found.template;
                ok.push(TemplateJson {
                    name: t.name,
                    environment: t.environment,
                    account: t.account,
                    parameters: t.parameters.into_iter().map(|p| format!("{} ({})", p.name, p.kind.name())).collect(),
                    services: t.services,
                });
            }
            Err(d) => broken.push(d),
        }
    }
    if let Some(review) = &config.review
        && !names.contains(&review.template)
    {
        let mut d = plinth_core::Diagnostics::new(config.source.clone());
        d.push(
            plinth_core::Diagnostic::error(
                "config.unknown_template",
                format!("[review] names template `{}`, which is not in templates/", review.template),
            )
            .at(review.span.clone())
            .help("add templates/NAME/ with a module and a template.toml, or name an existing template"),
        );
        broken.push(d);
    }
    Ok((ok, broken))
}

/// A service in one environment, as `plinth check --output json` shows it.
#[derive(Serialize)]
struct ServiceJson {
    name: String,
    environment: String,
    containers: Vec<String>,
    count: u32,
    strategy: String,
    hosts: Vec<String>,
}

/// Every service in every declared environment.
fn services(config: &plinth_core::Config) -> Vec<ServiceJson> {
    let mut out = Vec::new();
    for def in &config.services {
        for env in config.environments.keys() {
            let s = def.for_environment(env);
            let strategy = match s.strategy {
                plinth_core::config::Strategy::Double => "double".to_owned(),
                plinth_core::config::Strategy::Rolling { max_surge, max_unavailable } => {
                    format!("rolling (surge {}, unavailable {})", amount(max_surge), amount(max_unavailable))
                }
            };
            out.push(ServiceJson {
                name: s.name,
                environment: s.environment,
                containers: s.containers,
                count: s.count,
                strategy,
                hosts: s.hosts,
            });
        }
    }
    out
}

fn amount(a: plinth_core::config::Amount) -> String {
    match a {
        plinth_core::config::Amount::Count(n) => n.to_string(),
        plinth_core::config::Amount::Percent(p) => format!("{p}%"),
    }
}

#[derive(Serialize)]
struct EnvironmentJson<'a> {
    name: &'a str,
    branches: Vec<&'a str>,
    approval: bool,
    approvers: &'a [String],
    tags: Vec<&'a str>,
}

#[derive(Serialize)]
struct CheckedStack<'a> {
    #[serde(flatten)]
    stack: StackJson<'a>,
    modules: Vec<String>,
    module_problems: Vec<String>,
}

pub fn run(args: Args) -> Outcome {
    let format = args.output;
    let source = Source::open(&args.repo, args.rev.as_deref(), format)?;
    let described = source.describe();
    source.with_tree(format, |tree| {
        let text = read_config(tree, &described, format)?;
        let loaded = match Loaded::load(CONFIG_FILE, &text, tree) {
            Ok(loaded) => loaded,
            Err(LoadError::Config(diagnostics)) => {
                if format == Format::Json {
                    print_json(&serde_json::json!({"valid": false, "source": described,
                                                   "errors": diagnostics.to_json()}));
                    return Ok(ExitCode::from(1));
                }
                return Err(Failure::diagnostics(&diagnostics, format));
            }
            Err(e) => return Err(Failure::coded(&e, format)),
        };
        let (templates, broken) = templates(tree, &loaded.config)
            .map_err(|e| Failure::new("check.templates", e, "Check that the repository can be read.", format))?;
        if !broken.is_empty() {
            if format == Format::Json {
                let errors: Vec<_> = broken.iter().flat_map(|d| d.to_json()).collect();
                print_json(&serde_json::json!({"valid": false, "source": described, "errors": errors}));
                return Ok(ExitCode::from(1));
            }
            let text: Vec<String> = broken.iter().map(|d| d.to_string()).collect();
            eprintln!("{}", text.join("\n"));
            return Ok(ExitCode::from(1));
        }
        let graph = module_graph(tree, format)?;
        let stacks: Vec<CheckedStack> = loaded
            .stacks
            .iter()
            .map(|s| {
                let modules = graph.modules_of(&s.dir);
                let module_problems = std::iter::once(s.dir.as_str())
                    .chain(modules.iter().map(String::as_str))
                    .filter_map(|d| graph.get(d))
                    .flat_map(|m| m.problems.iter().cloned())
                    .collect();
                CheckedStack { stack: StackJson::new(s, None), modules, module_problems }
            })
            .collect();
        let warnings = loaded.warning_diagnostics();
        match format {
            Format::Json => print_json(&Report {
                valid: true,
                source: described.clone(),
                main_branch: &loaded.config.main_branch,
                environments: loaded
                    .config
                    .environments
                    .values()
                    .map(|e| EnvironmentJson {
                        name: &e.name,
                        branches: e.branches.iter().map(|b| b.raw()).collect(),
                        approval: e.approval,
                        approvers: &e.approvers,
                        tags: e.tags.iter().map(|t| t.raw()).collect(),
                    })
                    .collect(),
                stacks,
                services: services(&loaded.config),
                templates,
                warnings: warnings.to_json(),
            }),
            Format::Text => {
                print_text(&loaded, &stacks, &described, &warnings);
                if !templates.is_empty() {
                    outln!();
                    let rows: Vec<Vec<String>> = templates
                        .iter()
                        .map(|t| {
                            vec![
                                t.name.clone(),
                                t.environment.clone(),
                                t.account.clone(),
                                dash(&t.parameters.join(", ")),
                            ]
                        })
                        .collect();
                    out!("{}", table(&["TEMPLATE", "ENVIRONMENT", "ACCOUNT", "PARAMETERS"], &rows));
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn dash(s: &str) -> String {
    if s.is_empty() { "-".to_owned() } else { s.to_owned() }
}

fn print_text(loaded: &Loaded, stacks: &[CheckedStack], source: &str, warnings: &plinth_core::Diagnostics) {
    let envs = &loaded.config.environments;
    outln!(
        "{CONFIG_FILE} is valid ({source}): {} stack{}, {} environment{}, releases from `{}`.",
        stacks.len(),
        if stacks.len() == 1 { "" } else { "s" },
        envs.len(),
        if envs.len() == 1 { "" } else { "s" },
        loaded.config.main_branch
    );
    if !envs.is_empty() {
        outln!();
        let rows: Vec<Vec<String>> = envs
            .values()
            .map(|e| {
                vec![
                    e.name.clone(),
                    dash(&e.branches.iter().map(|b| b.raw()).collect::<Vec<_>>().join(", ")),
                    if e.approval {
                        format!(
                            "required ({})",
                            if e.approvers.is_empty() { "admin".into() } else { e.approvers.join(", ") }
                        )
                    } else {
                        "-".into()
                    },
                ]
            })
            .collect();
        out!("{}", table(&["ENVIRONMENT", "BRANCHES", "APPROVAL"], &rows));
    }
    if !stacks.is_empty() {
        outln!();
        let rows: Vec<Vec<String>> = stacks
            .iter()
            .map(|s| {
                let st = &s.stack;
                vec![
                    st.name.to_owned(),
                    st.path.to_owned(),
                    dash(st.environment.unwrap_or("")),
                    if st.workspace_per_branch {
                        "per branch".into()
                    } else {
                        st.workspace.clone().unwrap_or_else(|| "default".into())
                    },
                    dash(&st.depends_on.join(", ")),
                    dash(&s.modules.join(", ")),
                ]
            })
            .collect();
        out!("{}", table(&["STACK", "PATH", "ENV", "WORKSPACE", "DEPENDS ON", "MODULES"], &rows));
    }
    let services = services(&loaded.config);
    if !services.is_empty() {
        outln!();
        let rows: Vec<Vec<String>> = services
            .iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    s.environment.clone(),
                    s.containers.join(", "),
                    s.count.to_string(),
                    s.strategy.clone(),
                    dash(&s.hosts.join(", ")),
                ]
            })
            .collect();
        out!("{}", table(&["SERVICE", "ENV", "CONTAINERS", "COUNT", "STRATEGY", "HOSTS"], &rows));
    } else if !loaded.config.services.is_empty() {
        outln!("\n{} service(s) defined, but no environment is declared to run them in.", loaded.config.services.len());
    }
    for s in stacks {
        for problem in &s.module_problems {
            eprintln!(
                "warning[modules.unreadable]: stack `{}`: could not read module blocks in {problem}",
                s.stack.name
            );
        }
    }
    if !warnings.items.is_empty() {
        eprintln!("{warnings}");
    }
}
