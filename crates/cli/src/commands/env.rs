//! `plinth templates`, `plinth env` and `plinth catalog`: the design patterns environments are
//! made from, requests to create, update and destroy environments (queued per account, with
//! `--wait` to follow them to the end), and the catalog.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::Outcome;
use crate::client::{Client, Connection, segment};
use crate::output::{Failure, Format, print_json, table};

#[derive(Debug, clap::Args)]
pub struct TemplatesArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: TemplatesCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TemplatesCommand {
    /// The templates on the main branch (and the broken ones, with why).
    List {
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// One template: where it deploys, its parameters (as JSON Schema with --output json) and
    /// its outputs.
    Show {
        name: String,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
}

#[derive(Debug, clap::Args)]
pub struct EnvArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: EnvCommand,
}

#[derive(Debug, clap::Args)]
struct Wait {
    /// Follow the request until it ends; the exit code says how (0 ready or destroyed, 3 failed).
    #[arg(long)]
    wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "60m", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Debug, clap::Subcommand)]
enum EnvCommand {
    /// Create an environment from a template: checked, then queued for its account.
    Create {
        /// The template, a directory `templates/NAME/` on the main branch (`plinth templates list`).
        #[arg(long)]
        template: String,
        /// The product it belongs to, a `[products.NAME]` of plinth.toml.
        #[arg(long)]
        product: String,
        /// Its name: lowercase letters, digits and `-`; it becomes part of its host name.
        #[arg(long)]
        name: String,
        /// A parameter value, `NAME=VALUE` (repeat for several).
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        #[command(flatten)]
        wait: Wait,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Environments made on request (live ones; --all for destroyed ones too).
    List {
        #[arg(long)]
        product: Option<String>,
        #[arg(long)]
        template: Option<String>,
        #[arg(long)]
        status: Option<String>,
        /// Only review environments.
        #[arg(long)]
        review: bool,
        #[arg(long)]
        all: bool,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// One environment: status, FQDN, CIDR, outputs, services, and its request log.
    Show {
        name: String,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Change parameters: the kept root is generated again, planned, then applied.
    Update {
        name: String,
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Only show what the update would change: plan it, change nothing.
        #[arg(long)]
        plan: bool,
        #[command(flatten)]
        wait: Wait,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Destroy an environment with its kept root; its CIDR block is freed.
    Destroy {
        name: String,
        #[command(flatten)]
        wait: Wait,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// The request log: every create, update and destroy, who asked, and how it ended.
    Requests {
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
}

#[derive(Debug, clap::Args)]
pub struct CatalogArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: CatalogCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CatalogCommand {
    /// Products, environments with their FQDNs and services, and stacks with their last apply.
    List {
        #[arg(long)]
        product: Option<String>,
        #[arg(long)]
        status: Option<String>,
        /// A part of an environment's name.
        #[arg(long)]
        query: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// One environment's catalog entry.
    Show {
        name: String,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Everything, destroyed environments and the request log included, as JSON.
    Export,
}

/// `NAME=VALUE` pairs, as text; the server types them by the template's parameters.
fn parse_params(pairs: &[String], format: Format) -> Result<BTreeMap<String, serde_json::Value>, Failure> {
    let mut out = BTreeMap::new();
    for pair in pairs {
        let Some((name, value)) = pair.split_once('=') else {
            return Err(Failure::new(
                "cli.bad_param",
                format!("`{pair}` is not NAME=VALUE"),
                "Pass each parameter as --param NAME=VALUE, such as --param replicas=2.",
                format,
            ));
        };
        if out.insert(name.to_owned(), serde_json::Value::String(value.to_owned())).is_some() {
            return Err(Failure::new(
                "cli.bad_param",
                format!("`{name}` is given twice"),
                "Pass each parameter once.",
                format,
            ));
        }
    }
    Ok(out)
}

/// Gets every page of a list that pages by `after` (the server's `next`), and returns the first
/// page's body with `key` holding the items of all pages.
fn all_pages(client: &Client, path: &str, query: &[(&str, String)], key: &str) -> Result<serde_json::Value, Failure> {
    let mut body: serde_json::Value = client.get(path, query)?;
    let mut next = body["next"].as_str().map(str::to_owned);
    while let Some(after) = next.take() {
        let mut q = query.to_vec();
        q.push(("after", after));
        let page: serde_json::Value = client.get(path, &q)?;
        if let (Some(all), Some(more)) = (body[key].as_array_mut(), page[key].as_array()) {
            all.extend(more.iter().cloned());
        }
        next = page["next"].as_str().map(str::to_owned);
    }
    body["next"] = serde_json::Value::Null;
    Ok(body)
}

fn s(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

pub fn templates(args: TemplatesArgs) -> Outcome {
    match args.command {
        TemplatesCommand::List { output } => {
            let client = Client::new(&args.connection, output)?;
            let body: serde_json::Value = client.get("/api/v1/templates", &[])?;
            if output == Format::Json {
                print_json(&body);
                return Ok(ExitCode::SUCCESS);
            }
            let list = body["templates"].as_array().cloned().unwrap_or_default();
            let broken = body["broken"].as_array().cloned().unwrap_or_default();
            if list.is_empty() && broken.is_empty() {
                outln!(
                    "No templates on the main branch. A template is a directory templates/NAME/ with a Terraform module and a template.toml."
                );
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|t| {
                    let params = t["parameters"]["properties"].as_object().map(|p| p.len()).unwrap_or(0);
                    vec![
                        s(&t["name"]),
                        s(&t["environment"]),
                        s(&t["account"]),
                        params.to_string(),
                        s(&t["description"]),
                    ]
                })
                .collect();
            if !rows.is_empty() {
                outln!("{}", table(&["TEMPLATE", "ENVIRONMENT", "ACCOUNT", "PARAMS", "DESCRIPTION"], &rows));
            }
            for b in &broken {
                outln!("\nbroken: {} [{}]\n{}", s(&b["name"]), s(&b["code"]), s(&b["message"]));
            }
            Ok(ExitCode::SUCCESS)
        }
        TemplatesCommand::Show { name, output } => {
            let client = Client::new(&args.connection, output)?;
            let t: serde_json::Value = client.get(&format!("/api/v1/templates/{}", segment(&name)), &[])?;
            if output == Format::Json {
                print_json(&t);
                return Ok(ExitCode::SUCCESS);
            }
            outln!("{}: {}", s(&t["name"]), s(&t["description"]));
            outln!("  deploys into environment `{}`, account `{}`", s(&t["environment"]), s(&t["account"]));
            if let Some(services) = t["services"].as_array().filter(|a| !a.is_empty()) {
                let names: Vec<String> = services.iter().map(s).collect();
                outln!("  runs services: {}", names.join(", "));
            }
            if !t["cidr"].is_null() {
                outln!("  gets a /{} from CIDR pool `{}`", s(&t["cidr"]["prefix"]), s(&t["cidr"]["pool"]));
            }
            let schema = &t["parameters"];
            let required: Vec<&str> = schema["required"]
                .as_array()
                .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            let rows: Vec<Vec<String>> = schema["properties"]
                .as_object()
                .map(|props| {
                    props
                        .iter()
                        .map(|(name, p)| {
                            let mut rules = Vec::new();
                            for (key, label) in [
                                ("minimum", "min"),
                                ("maximum", "max"),
                                ("minLength", "min length"),
                                ("maxLength", "max length"),
                                ("pattern", "pattern"),
                                ("format", "format"),
                            ] {
                                if !p[key].is_null() {
                                    rules.push(format!("{label} {}", s(&p[key])));
                                }
                            }
                            if let Some(values) = p["enum"].as_array() {
                                rules.push(format!("one of {}", values.iter().map(s).collect::<Vec<_>>().join("|")));
                            }
                            vec![
                                name.clone(),
                                s(&p["type"]),
                                if required.contains(&name.as_str()) { "yes".into() } else { "no".into() },
                                if p["default"].is_null() { "-".into() } else { s(&p["default"]) },
                                rules.join(", "),
                                s(&p["description"]),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            if rows.is_empty() {
                outln!("  no parameters");
            } else {
                outln!("\n{}", table(&["PARAMETER", "TYPE", "REQUIRED", "DEFAULT", "RULES", "DESCRIPTION"], &rows));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn env(args: EnvArgs) -> Outcome {
    let connection = args.connection;
    match args.command {
        EnvCommand::Create { template, product, name, params, wait, output } => {
            let client = Client::new(&connection, output)?;
            let params = parse_params(&params, output)?;
            let body = serde_json::json!({"template": template, "product": product, "name": name, "params": params});
            let answer: serde_json::Value = client.post("/api/v1/environments", &body)?;
            requested(&client, &answer, &name, wait, output)
        }
        EnvCommand::Update { name, params, plan, wait, output } => {
            let client = Client::new(&connection, output)?;
            let params = parse_params(&params, output)?;
            let body = serde_json::json!({"params": params, "plan_only": plan});
            let answer: serde_json::Value =
                client.post(&format!("/api/v1/environments/{}/update", segment(&name)), &body)?;
            if plan {
                return planned(&client, &answer, wait.timeout, output);
            }
            requested(&client, &answer, &name, wait, output)
        }
        EnvCommand::Destroy { name, wait, output } => {
            let client = Client::new(&connection, output)?;
            let answer: serde_json::Value = client.delete(&format!("/api/v1/environments/{}", segment(&name)))?;
            if answer["request"].is_null() {
                if output == Format::Json {
                    print_json(&answer);
                } else {
                    outln!("{}.", s(&answer["message"]));
                }
                return Ok(ExitCode::SUCCESS);
            }
            requested(&client, &answer, &name, wait, output)
        }
        EnvCommand::List { product, template, status, review, all, output } => {
            let client = Client::new(&connection, output)?;
            let mut query: Vec<(&str, String)> = Vec::new();
            for (key, value) in [("product", product), ("template", template), ("status", status)] {
                if let Some(v) = value {
                    query.push((key, v));
                }
            }
            if review {
                query.push(("review", "true".into()));
            }
            if all {
                query.push(("all", "true".into()));
            }
            let body = all_pages(&client, "/api/v1/environments", &query, "environments")?;
            if output == Format::Json {
                print_json(&body);
                return Ok(ExitCode::SUCCESS);
            }
            let list = body["environments"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                outln!("No environments. Create one with `plinth env create --template NAME --product P --name N`.");
                return Ok(ExitCode::SUCCESS);
            }
            outln!("{}", table(&ENV_HEADERS, &list.iter().map(env_row).collect::<Vec<_>>()));
            Ok(ExitCode::SUCCESS)
        }
        EnvCommand::Show { name, output } => {
            let client = Client::new(&connection, output)?;
            let body: serde_json::Value = client.get(&format!("/api/v1/environments/{}", segment(&name)), &[])?;
            if output == Format::Json {
                print_json(&body);
            } else {
                print_env(&body);
            }
            Ok(ExitCode::SUCCESS)
        }
        EnvCommand::Requests { limit, output } => {
            let client = Client::new(&connection, output)?;
            let body: serde_json::Value =
                client.get("/api/v1/environment-requests", &[("limit", limit.to_string())])?;
            if output == Format::Json {
                print_json(&body);
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> =
                body["requests"].as_array().map(|l| l.iter().map(request_row).collect()).unwrap_or_default();
            if rows.is_empty() {
                outln!("No requests yet.");
            } else {
                outln!("{}", table(&REQUEST_HEADERS, &rows));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

const ENV_HEADERS: [&str; 7] = ["ENVIRONMENT", "PRODUCT", "TEMPLATE", "STATUS", "FQDN", "CIDR", "REASON"];

fn env_row(e: &serde_json::Value) -> Vec<String> {
    vec![
        s(&e["name"]),
        s(&e["product"]),
        s(&e["template"]),
        s(&e["status"]),
        s(&e["fqdn"]),
        s(&e["cidr"]),
        e["reason"].as_str().map(|r| r.lines().next().unwrap_or("").to_owned()).unwrap_or_default(),
    ]
}

const REQUEST_HEADERS: [&str; 7] = ["REQUEST", "ENVIRONMENT", "KIND", "STATUS", "BY", "AT", "OUTCOME"];

fn request_row(r: &serde_json::Value) -> Vec<String> {
    vec![
        format!("#{}", s(&r["id"])),
        s(&r["environment"]),
        s(&r["kind"]),
        s(&r["status"]),
        s(&r["requested_by"]),
        s(&r["created_at"]),
        s(&r["outcome"]),
    ]
}

fn print_env(body: &serde_json::Value) {
    let e = &body["environment"];
    outln!("{} ({}): {}", s(&e["name"]), s(&e["product"]), s(&e["status"]));
    if let Some(reason) = e["reason"].as_str() {
        outln!("  {reason}");
    }
    outln!("  template   {} at {}", s(&e["template"]), s(&e["template_commit"]).get(..10).unwrap_or(""));
    outln!("  deploys to {} (account {})", s(&e["policy_environment"]), s(&e["account"]));
    outln!("  owner      {} · requested by {}", s(&e["owner"]), s(&e["requested_by"]));
    if !e["fqdn"].is_null() {
        outln!("  fqdn       {}", s(&e["fqdn"]));
    }
    if !e["cidr"].is_null() {
        outln!("  cidr       {} (pool {})", s(&e["cidr"]), s(&e["cidr_pool"]));
    }
    if let Some(review) = e["review"].as_object() {
        outln!("  review of  branch {} (workspace {})", s(&review["branch"]), s(&e["workspace"]));
    }
    outln!("  created    {} · updated {}", s(&e["created_at"]), s(&e["updated_at"]));
    if let Some(params) = e["params"].as_object().filter(|p| !p.is_empty()) {
        outln!("  parameters:");
        for (k, v) in params {
            outln!("    {k} = {v}");
        }
    }
    if let Some(outputs) = e["outputs"].as_object().filter(|o| !o.is_empty()) {
        outln!("  outputs:");
        for (k, v) in outputs {
            outln!("    {k} = {v}");
        }
    }
    if let Some(services) = body["services"].as_array().filter(|s| !s.is_empty()) {
        outln!("  services:");
        for svc in services {
            let hosts: Vec<String> = svc["hosts"].as_array().map(|h| h.iter().map(s).collect()).unwrap_or_default();
            let release = if svc["release"].is_null() {
                "no release yet".to_owned()
            } else {
                format!("release #{}", s(&svc["release"]["id"]))
            };
            outln!("    {} at {} · {release}", s(&svc["service"]), hosts.join(", "));
        }
    }
    if let Some(requests) = body["requests"].as_array().filter(|r| !r.is_empty()) {
        outln!("\n{}", table(&REQUEST_HEADERS, &requests.iter().map(request_row).collect::<Vec<_>>()));
    }
}

/// After `env update --plan`: waits for the plan and shows what it would change.
fn planned(client: &Client, answer: &serde_json::Value, timeout: Duration, output: Format) -> Outcome {
    let id = answer["run"]["id"].as_i64().unwrap_or(0);
    if output == Format::Text {
        eprintln!("{}.", s(&answer["message"]));
    }
    let start = Instant::now();
    loop {
        let run: serde_json::Value = client.get(&format!("/api/v1/runs/{id}"), &[])?;
        let status = s(&run["status"]);
        if matches!(status.as_str(), "planned" | "no_changes" | "failed" | "cancelled") {
            if output == Format::Json {
                print_json(&run);
            } else if status == "no_changes" {
                outln!("No changes: the update would leave the environment as it is.");
            } else if status == "planned" {
                let plan = &run["plan"];
                outln!(
                    "The update would add {}, change {} and destroy {} resource(s):",
                    s(&plan["add"]),
                    s(&plan["change"]),
                    s(&plan["destroy"])
                );
                for r in plan["resources"].as_array().cloned().unwrap_or_default() {
                    let actions: Vec<String> =
                        r["actions"].as_array().map(|a| a.iter().map(s).collect()).unwrap_or_default();
                    outln!("  {} ({})", s(&r["address"]), actions.join(", "));
                }
                outln!("Nothing was changed. Run it without --plan to apply.");
            } else {
                outln!("The plan {status}: {}", s(&run["reason"]));
            }
            return Ok(ExitCode::from(if matches!(status.as_str(), "planned" | "no_changes") { 0 } else { 3 }));
        }
        if start.elapsed() >= timeout {
            eprintln!("Run #{id} is still {status} after {}.", humantime::format_duration(timeout));
            return Ok(ExitCode::from(8));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// After a create, update or destroy: says what was queued, and with --wait follows it.
fn requested(client: &Client, answer: &serde_json::Value, name: &str, wait: Wait, output: Format) -> Outcome {
    let id = answer["request"]["id"].as_i64().unwrap_or(0);
    if !wait.wait {
        match output {
            Format::Json => print_json(answer),
            Format::Text => {
                outln!("{}.", s(&answer["message"]));
                outln!("Follow it with `plinth env show {name}`.");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if output == Format::Text {
        eprintln!("{}.", s(&answer["message"]));
    }
    let start = Instant::now();
    let tty = std::io::stderr().is_terminal() && output == Format::Text;
    let mut last = String::new();
    loop {
        let body: serde_json::Value = client.get(&format!("/api/v1/environments/{}", segment(name)), &[])?;
        let request =
            body["requests"].as_array().and_then(|l| l.iter().find(|r| r["id"].as_i64() == Some(id)).cloned());
        let Some(request) = request else {
            return Err(Failure::new(
                "env.request_gone",
                format!("request #{id} is not in the request log of `{name}`"),
                "See `plinth env requests`.",
                output,
            ));
        };
        let status = s(&request["status"]);
        let env_status = s(&body["environment"]["status"]);
        let line = format!("request #{id}: {status} · environment {env_status}");
        if tty {
            let elapsed = start.elapsed().as_secs();
            eprint!("\r\x1b[2K{line} · {}m{:02}s", elapsed / 60, elapsed % 60);
            let _ = std::io::stderr().flush();
        } else if line != last && output == Format::Text {
            eprintln!("{line}");
        }
        last = line;
        if matches!(status.as_str(), "succeeded" | "failed" | "cancelled") {
            if tty {
                eprintln!();
            }
            match output {
                Format::Json => print_json(&body),
                Format::Text => {
                    outln!("Request #{id} {status}: {}", s(&request["outcome"]));
                    if status == "succeeded" && !body["environment"]["fqdn"].is_null() && env_status == "ready" {
                        outln!("`{name}` is ready at {}.", s(&body["environment"]["fqdn"]));
                    }
                }
            }
            return Ok(ExitCode::from(if status == "succeeded" { 0 } else { 3 }));
        }
        if start.elapsed() >= wait.timeout {
            if tty {
                eprintln!();
            }
            eprintln!("Request #{id} is still {status} after {}.", humantime::format_duration(wait.timeout));
            return Ok(ExitCode::from(8));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn catalog(args: CatalogArgs) -> Outcome {
    match args.command {
        CatalogCommand::List { product, status, query, output } => {
            let client = Client::new(&args.connection, output)?;
            let mut q: Vec<(&str, String)> = Vec::new();
            for (key, value) in [("product", product), ("status", status), ("q", query)] {
                if let Some(v) = value {
                    q.push((key, v));
                }
            }
            let body = all_pages(&client, "/api/v1/catalog", &q, "environments")?;
            if output == Format::Json {
                print_json(&body);
                return Ok(ExitCode::SUCCESS);
            }
            let products: Vec<Vec<String>> = body["products"]
                .as_array()
                .map(|l| l.iter().map(|p| vec![s(&p["name"]), s(&p["owner"]), s(&p["description"])]).collect())
                .unwrap_or_default();
            if !products.is_empty() {
                outln!("{}\n", table(&["PRODUCT", "OWNER", "DESCRIPTION"], &products));
            }
            let envs = body["environments"].as_array().cloned().unwrap_or_default();
            if envs.is_empty() {
                outln!("No environments made on request.");
            } else {
                outln!("{}", table(&ENV_HEADERS, &envs.iter().map(env_row).collect::<Vec<_>>()));
            }
            let services: Vec<Vec<String>> = body["services"]
                .as_array()
                .map(|l| {
                    l.iter()
                        .map(|x| vec![s(&x["service"]), s(&x["environment"]), format!("#{}", s(&x["release"]))])
                        .collect()
                })
                .unwrap_or_default();
            if !services.is_empty() {
                outln!("\n{}", table(&["SERVICE", "ENVIRONMENT", "RELEASE"], &services));
            }
            let stacks: Vec<Vec<String>> = body["stacks"]
                .as_array()
                .map(|l| {
                    l.iter()
                        .map(|x| {
                            vec![
                                s(&x["stack"]),
                                s(&x["environment"]),
                                format!("run #{}", s(&x["last_apply"]["run"])),
                                s(&x["last_apply"]["commit"]).get(..10).unwrap_or("").to_owned(),
                                s(&x["last_apply"]["finished_at"]),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            if !stacks.is_empty() {
                outln!("\n{}", table(&["STACK", "ENVIRONMENT", "LAST APPLY", "COMMIT", "AT"], &stacks));
            }
            Ok(ExitCode::SUCCESS)
        }
        CatalogCommand::Show { name, output } => {
            let client = Client::new(&args.connection, output)?;
            let body: serde_json::Value = client.get(&format!("/api/v1/environments/{}", segment(&name)), &[])?;
            if output == Format::Json {
                print_json(&body);
            } else {
                print_env(&body);
            }
            Ok(ExitCode::SUCCESS)
        }
        CatalogCommand::Export => {
            let client = Client::new(&args.connection, Format::Json)?;
            let body: serde_json::Value = client.get("/api/v1/catalog/export", &[])?;
            print_json(&body);
            Ok(ExitCode::SUCCESS)
        }
    }
}
