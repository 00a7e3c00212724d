//! `plinth runs`, `plinth plan` and `plinth stacks`: runs on a plinth server.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use plinth_core::run::{Run, RunStatus};

use super::Outcome;
use crate::client::{Client, Connection, segment};
use crate::output::{Format, print_json, table};

#[derive(Debug, clap::Args)]
pub struct RunsArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: RunsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum RunsCommand {
    /// List runs, newest first.
    List {
        #[arg(long)]
        stack: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Show one run, with its plan.
    Show {
        id: i64,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Print a run's output; --follow keeps printing until the run ends or waits for approval.
    Logs {
        id: i64,
        #[arg(long, short)]
        follow: bool,
        /// Only lines after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Approve a run that waits for approval: its saved plan is applied.
    Approve {
        id: i64,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Reject a run that waits for approval.
    Reject {
        id: i64,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Cancel a run: queued and waiting runs end at once, running Terraform is interrupted.
    Cancel {
        id: i64,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Wait for a run to end. Exit codes: 0 success (applied, no changes, planned), 3 failed,
    /// 4 rejected, 5 interrupted, 6 cancelled, 7 stale, 8 timed out.
    Wait {
        id: i64,
        /// Give up after this long (such as 30m).
        #[arg(long, default_value = "2h", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Release a stack's lock after an interrupted apply, once you have checked its state.
    Unlock {
        stack: String,
        /// Instead, release Terraform's own state lock with this ID (`terraform force-unlock`).
        #[arg(long)]
        state_lock: Option<String>,
        /// The Terraform workspace whose state lock to release.
        #[arg(long, requires = "state_lock")]
        workspace: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
}

pub fn run(args: RunsArgs) -> Outcome {
    match args.command {
        RunsCommand::List { stack, status, limit, output } => {
            let client = Client::new(&args.connection, output)?;
            let mut query = vec![("limit", limit.to_string())];
            if let Some(stack) = stack {
                query.push(("stack", stack));
            }
            if let Some(status) = status {
                query.push(("status", status));
            }
            let body: serde_json::Value = client.get("/api/v1/runs", &query)?;
            match output {
                Format::Json => print_json(&body),
                Format::Text => {
                    let runs: Vec<Run> = serde_json::from_value(body["runs"].clone()).unwrap_or_default();
                    print_runs(&runs);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        RunsCommand::Show { id, output } => {
            let client = Client::new(&args.connection, output)?;
            let run: serde_json::Value = client.get(&format!("/api/v1/runs/{id}"), &[])?;
            show(&run, output);
            Ok(ExitCode::SUCCESS)
        }
        RunsCommand::Logs { id, follow, after, output } => {
            let client = Client::new(&args.connection, output)?;
            let mut query = vec![("after", after.to_string()), ("follow", follow.to_string())];
            if output == Format::Json {
                query.push(("format", "jsonl".to_owned()));
            }
            client.stream_lines(&format!("/api/v1/runs/{id}/logs"), &query, |line| outln!("{line}"))?;
            Ok(ExitCode::SUCCESS)
        }
        RunsCommand::Approve { id, output } => act(&args.connection, id, "approve", output),
        RunsCommand::Reject { id, output } => act(&args.connection, id, "reject", output),
        RunsCommand::Cancel { id, output } => act(&args.connection, id, "cancel", output),
        RunsCommand::Wait { id, timeout, output } => wait(&args.connection, id, timeout, output),
        RunsCommand::Unlock { stack, state_lock, workspace, output } => {
            unlock(&args.connection, &stack, state_lock, workspace, output)
        }
    }
}

fn act(connection: &Connection, id: i64, verb: &str, output: Format) -> Outcome {
    let client = Client::new(connection, output)?;
    let body: serde_json::Value = client.post(&format!("/api/v1/runs/{id}/{verb}"), &serde_json::json!({}))?;
    match output {
        Format::Json => print_json(&body),
        Format::Text => match verb {
            "approve" => {
                outln!("Approved run #{id}; its plan is being applied. Follow it with `plinth runs logs {id} -f`.")
            }
            "reject" => outln!("Rejected run #{id}."),
            _ if body["cancelling"].as_bool() == Some(true) => {
                outln!("Interrupting run #{id}; terraform stops cleanly.")
            }
            _ => outln!("Cancelled run #{id}."),
        },
    }
    Ok(ExitCode::SUCCESS)
}

fn unlock(
    connection: &Connection,
    stack: &str,
    state_lock: Option<String>,
    workspace: Option<String>,
    output: Format,
) -> Outcome {
    let client = Client::new(connection, output)?;
    let body: serde_json::Value = client.post(
        "/api/v1/stacks/unlock",
        &serde_json::json!({"stack": stack, "state_lock": state_lock, "workspace": workspace}),
    )?;
    match output {
        Format::Json => print_json(&body),
        Format::Text if state_lock.is_some() => outln!("Released Terraform's state lock of `{stack}`."),
        Format::Text => outln!("Unlocked `{stack}`. Its next change plans again."),
    }
    Ok(ExitCode::SUCCESS)
}

/// The exit code `runs wait` gives for a run's end.
pub fn exit_code(status: RunStatus, mode: plinth_core::run::RunMode) -> u8 {
    if status.is_success(mode) {
        return 0;
    }
    match status {
        RunStatus::Failed => 3,
        RunStatus::Rejected => 4,
        RunStatus::Interrupted => 5,
        RunStatus::Cancelled => 6,
        RunStatus::Stale => 7,
        _ => 1,
    }
}

fn wait(connection: &Connection, id: i64, timeout: Duration, output: Format) -> Outcome {
    let client = Client::new(connection, output)?;
    let start = Instant::now();
    let tty = std::io::stderr().is_terminal() && output == Format::Text;
    let mut last: Option<RunStatus> = None;
    loop {
        let run: Run = client.get(&format!("/api/v1/runs/{id}"), &[])?;
        if tty {
            let elapsed = start.elapsed().as_secs();
            eprint!(
                "\r\x1b[2Krun #{id} {} ({}): {} · {}m{:02}s",
                run.stack,
                short(&run.commit),
                run.status,
                elapsed / 60,
                elapsed % 60
            );
            let _ = std::io::stderr().flush();
        } else if last != Some(run.status) && output == Format::Text {
            eprintln!("run #{id} {}: {}", run.stack, run.status);
        }
        last = Some(run.status);
        if run.status.is_final(run.mode) {
            if tty {
                eprintln!();
            }
            match output {
                Format::Json => print_json(&run),
                Format::Text => {
                    let extra = run.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
                    outln!("Run #{id} ({}) ended {}{extra}", run.stack, run.status);
                }
            }
            return Ok(ExitCode::from(exit_code(run.status, run.mode)));
        }
        if start.elapsed() >= timeout {
            if tty {
                eprintln!();
            }
            eprintln!("Run #{id} is still {} after {}.", run.status, humantime::format_duration(timeout));
            return Ok(ExitCode::from(8));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn short(sha: &str) -> &str {
    sha.get(..10).unwrap_or(sha)
}

fn plan_cell(run: &Run) -> String {
    run.plan.as_ref().map_or_else(|| "-".to_owned(), |p| format!("+{} ~{} -{}", p.add, p.change, p.destroy))
}

pub fn print_runs(runs: &[Run]) {
    if runs.is_empty() {
        outln!("No runs.");
        return;
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.stack.clone(),
                r.environment.clone().unwrap_or_else(|| "-".into()),
                r.branch.clone().unwrap_or_else(|| "-".into()),
                short(&r.commit).to_owned(),
                r.mode.as_str().to_owned(),
                r.status.to_string(),
                plan_cell(r),
                r.created_at.to_string(),
            ]
        })
        .collect();
    out!("{}", table(&["RUN", "STACK", "ENV", "BRANCH", "COMMIT", "MODE", "STATUS", "PLAN", "CREATED"], &rows));
}

fn show(value: &serde_json::Value, output: Format) {
    if output == Format::Json {
        print_json(value);
        return;
    }
    let Ok(run) = serde_json::from_value::<Run>(value.clone()) else {
        print_json(value);
        return;
    };
    let field = |name: &str, value: String| outln!("{name:<12} {value}");
    field("run", format!("#{}", run.id));
    field("stack", format!("{} ({})", run.stack, run.path));
    field("environment", run.environment.clone().unwrap_or_else(|| "-".into()));
    field("workspace", run.workspace.clone().unwrap_or_else(|| "default".into()));
    field("commit", format!("{} on {}", run.commit, run.branch.as_deref().unwrap_or("no branch")));
    field("mode", run.mode.as_str().to_owned());
    field("status", run.status.to_string());
    if let Some(reason) = &run.reason {
        field("reason", reason.clone());
    }
    if let Some(by) = &run.approved_by {
        field("approved by", by.clone());
    }
    field("started by", run.created_by.clone());
    field("created", run.created_at.to_string());
    if let Some(plan) = &run.plan {
        field("plan", plan.to_string());
        for resource in &plan.resources {
            outln!("  {:<10} {}", resource.actions.join(","), resource.address);
        }
    }
    if !run.depends_on.is_empty() {
        field("waits for", run.depends_on.iter().map(|d| format!("#{d}")).collect::<Vec<_>>().join(", "));
    }
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    connection: Connection,
    /// The branch, tag or commit to plan.
    #[arg(long = "ref")]
    rev: String,
    /// Plan this stack; otherwise every stack the revision changes against the main branch.
    #[arg(long)]
    stack: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    output: Format,
}

pub fn plan(args: PlanArgs) -> Outcome {
    let client = Client::new(&args.connection, args.output)?;
    let body: serde_json::Value =
        client.post("/api/v1/plans", &serde_json::json!({"ref": args.rev, "stack": args.stack}))?;
    match args.output {
        Format::Json => print_json(&body),
        Format::Text => {
            let runs: Vec<Run> = serde_json::from_value(body["runs"].clone()).unwrap_or_default();
            if runs.is_empty() {
                let note = body["event"]["note"].as_str().unwrap_or("no stack changed");
                outln!("Nothing to plan at {}: {note}.", args.rev);
            } else {
                outln!("Planning {} stack{} at {}:", runs.len(), if runs.len() == 1 { "" } else { "s" }, args.rev);
                print_runs(&runs);
                outln!("Follow one with `plinth runs logs ID -f`.");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct StacksArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: StacksCommand,
}

#[derive(Debug, clap::Subcommand)]
enum StacksCommand {
    /// The stacks on the main branch, with their locks and latest runs.
    List {
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Same as `plinth runs unlock`.
    Unlock {
        stack: String,
        #[arg(long)]
        state_lock: Option<String>,
        #[arg(long, requires = "state_lock")]
        workspace: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
}

pub fn stacks(args: StacksArgs) -> Outcome {
    match args.command {
        StacksCommand::List { output } => {
            let client = Client::new(&args.connection, output)?;
            let body: serde_json::Value = client.get("/api/v1/stacks", &[])?;
            if output == Format::Json {
                print_json(&body);
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = body["stacks"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|s| {
                    let locked = match s["locks"].as_array().and_then(|l| l.first()) {
                        Some(lock) => format!("{} by #{}", lock["reason"].as_str().unwrap_or("locked"), lock["run_id"]),
                        None => "-".into(),
                    };
                    let latest = &s["latest_run"];
                    let last = if latest.is_null() {
                        "-".to_owned()
                    } else {
                        format!("#{} {}", latest["id"], latest["status"].as_str().unwrap_or(""))
                    };
                    vec![
                        s["stack"]["name"].as_str().unwrap_or("").to_owned(),
                        s["stack"]["path"].as_str().unwrap_or("").to_owned(),
                        s["stack"]["environment"].as_str().unwrap_or("-").to_owned(),
                        locked,
                        last,
                    ]
                })
                .collect();
            outln!(
                "Stacks at {} ({}):",
                body["main_branch"].as_str().unwrap_or("main"),
                short(body["commit"].as_str().unwrap_or(""))
            );
            out!("{}", table(&["STACK", "PATH", "ENV", "LOCK", "LATEST RUN"], &rows));
            Ok(ExitCode::SUCCESS)
        }
        StacksCommand::Unlock { stack, state_lock, workspace, output } => {
            unlock(&args.connection, &stack, state_lock, workspace, output)
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[command(flatten)]
    connection: Connection,
    /// Only entries after this id.
    #[arg(long)]
    after: Option<i64>,
    /// Only entries by this token.
    #[arg(long)]
    actor: Option<String>,
    #[arg(long, default_value_t = 200)]
    limit: u32,
    #[arg(long, value_enum, default_value_t)]
    output: Format,
}

pub fn audit(args: AuditArgs) -> Outcome {
    let client = Client::new(&args.connection, args.output)?;
    let mut query = vec![("limit", args.limit.to_string())];
    if let Some(after) = args.after {
        query.push(("after", after.to_string()));
    }
    if let Some(actor) = args.actor {
        query.push(("actor", actor));
    }
    let body: serde_json::Value = client.get("/api/v1/audit", &query)?;
    if args.output == Format::Json {
        print_json(&body);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = body["entries"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            ["id", "at", "actor", "action", "object", "result"]
                .iter()
                .map(|k| match &e[*k] {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .collect();
    out!("{}", table(&["ID", "AT", "ACTOR", "ACTION", "OBJECT", "RESULT"], &rows));
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct TokensArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: TokensCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TokensCommand {
    /// Create a token; its secret is printed once.
    Create {
        #[arg(long)]
        name: String,
        /// A role: admin, developer, ci, or one named in an environment's approvers. Repeat for
        /// several.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// For a `ci` token: a service it may publish releases for. Repeat for several.
        #[arg(long = "service")]
        services: Vec<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// List tokens (never their secrets).
    List {
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Revoke a token; requests with it fail from now on.
    Revoke {
        name: String,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
}

pub fn tokens(args: TokensArgs) -> Outcome {
    match args.command {
        TokensCommand::Create { name, roles, services, output } => {
            let client = Client::new(&args.connection, output)?;
            let body: serde_json::Value = client
                .post("/api/v1/tokens", &serde_json::json!({"name": name, "roles": roles, "services": services}))?;
            match output {
                Format::Json => print_json(&body),
                Format::Text => {
                    outln!("Created token `{name}` with roles {}. Its secret, shown only now:", roles.join(", "));
                    outln!("{}", body["secret"].as_str().unwrap_or(""));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        TokensCommand::List { output } => {
            let client = Client::new(&args.connection, output)?;
            let body: serde_json::Value = client.get("/api/v1/tokens", &[])?;
            if output == Format::Json {
                print_json(&body);
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = body["tokens"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|t| {
                    let roles: Vec<&str> = t["roles"]
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default()
                        .iter()
                        .filter_map(|r| r.as_str())
                        .collect();
                    let services: Vec<&str> = t["services"]
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default()
                        .iter()
                        .filter_map(|s| s.as_str())
                        .collect();
                    let roles = if services.is_empty() {
                        roles.join(",")
                    } else {
                        format!("{}[{}]", roles.join(","), services.join(","))
                    };
                    vec![
                        t["name"].as_str().unwrap_or("").to_owned(),
                        roles,
                        t["created_by"].as_str().unwrap_or("").to_owned(),
                        t["created_at"].as_str().unwrap_or("").to_owned(),
                        t["revoked_at"].as_str().map_or("active".to_owned(), |at| format!("revoked {at}")),
                    ]
                })
                .collect();
            out!("{}", table(&["NAME", "ROLES", "CREATED BY", "CREATED", "STATE"], &rows));
            Ok(ExitCode::SUCCESS)
        }
        TokensCommand::Revoke { name, output } => {
            let client = Client::new(&args.connection, output)?;
            let body: serde_json::Value = client.delete(&format!("/api/v1/tokens/{}", segment(&name)))?;
            match output {
                Format::Json => print_json(&body),
                Format::Text => outln!("Revoked token `{name}`."),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plinth_core::run::RunMode;

    #[test]
    fn wait_exit_codes_tell_outcomes_apart() {
        let cases = [
            (RunStatus::Applied, RunMode::Apply, 0),
            (RunStatus::NoChanges, RunMode::Apply, 0),
            (RunStatus::Planned, RunMode::Plan, 0),
            (RunStatus::Failed, RunMode::Apply, 3),
            (RunStatus::Rejected, RunMode::Apply, 4),
            (RunStatus::Interrupted, RunMode::Apply, 5),
            (RunStatus::Cancelled, RunMode::Plan, 6),
            (RunStatus::Stale, RunMode::Apply, 7),
        ];
        for (status, mode, code) in cases {
            assert_eq!(exit_code(status, mode), code, "{status}");
        }
    }
}
