//! `plinth deploy` and `plinth logs`: a service's status and deployment history in an
//! environment, approving, rejecting and cancelling deployments, rolling back, and the
//! instances' output.

use std::process::ExitCode;

use super::Outcome;
use crate::client::{Client, Connection, segment};
use crate::output::{Format, print_json, table};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: DeployCommand,
}

#[derive(Debug, clap::Subcommand)]
enum DeployCommand {
    /// The release serving now, deployments waiting or in progress, and the instances.
    Status {
        service: String,
        #[arg(long = "env")]
        environment: String,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Deployments of a service in an environment, newest first.
    History {
        service: String,
        #[arg(long = "env")]
        environment: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// One deployment with its events.
    Show {
        id: i64,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Approve a deployment waiting for approval.
    Approve {
        id: i64,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Reject a deployment waiting for approval.
    Reject {
        id: i64,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Cancel a deployment: waiting ones end, one in progress stops and the previous release
    /// keeps serving.
    Cancel {
        id: i64,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Deploy an earlier release again (the one before the current, or --to RELEASE).
    Rollback {
        service: String,
        #[arg(long = "env")]
        environment: String,
        #[arg(long)]
        to: Option<i64>,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
}

fn base(service: &str, environment: &str) -> String {
    format!("/api/v1/services/{}/environments/{}", segment(service), segment(environment))
}

fn deployment_rows(list: &[serde_json::Value]) -> Vec<Vec<String>> {
    list.iter()
        .map(|d| {
            vec![
                format!("#{}", d["id"].as_i64().unwrap_or(0)),
                format!("release #{}", d["release_id"].as_i64().unwrap_or(0)),
                d["kind"].as_str().unwrap_or("").to_owned(),
                d["status"].as_str().unwrap_or("").to_owned(),
                d["created_by"].as_str().unwrap_or("").to_owned(),
                d["created_at"].as_str().unwrap_or("").to_owned(),
                d["reason"].as_str().unwrap_or("").to_owned(),
            ]
        })
        .collect()
}

const HEADERS: [&str; 7] = ["DEPLOYMENT", "RELEASE", "KIND", "STATUS", "BY", "AT", "REASON"];

pub fn run(args: Args) -> Outcome {
    match args.command {
        DeployCommand::Status { service, environment, output } => {
            let client = Client::new(&args.connection, output)?;
            let body: serde_json::Value = client.get(&base(&service, &environment), &[])?;
            if output == Format::Json {
                print_json(&body);
                return Ok(ExitCode::SUCCESS);
            }
            match body["release"].as_object() {
                Some(release) => {
                    let images: Vec<String> = release["images"]
                        .as_object()
                        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect())
                        .unwrap_or_default();
                    outln!(
                        "`{service}` in `{environment}` runs release #{} ({}).",
                        release["id"].as_i64().unwrap_or(0),
                        images.join(" ")
                    );
                }
                None => outln!("`{service}` in `{environment}` has no release deployed yet."),
            }
            let pending = body["pending"].as_array().map(Vec::as_slice).unwrap_or_default();
            if !pending.is_empty() {
                outln!();
                out!("{}", table(&HEADERS, &deployment_rows(pending)));
            }
            let instances = body["instances"].as_array().map(Vec::as_slice).unwrap_or_default();
            if !instances.is_empty() {
                outln!();
                let rows: Vec<Vec<String>> = instances
                    .iter()
                    .map(|i| {
                        vec![
                            i["id"].as_str().unwrap_or("").to_owned(),
                            i["addr"].as_str().unwrap_or("").to_owned(),
                            format!("#{}", i["release"].as_i64().unwrap_or(0)),
                            i["health"].as_str().unwrap_or("").to_owned(),
                            i["restarts"].as_u64().unwrap_or(0).to_string(),
                        ]
                    })
                    .collect();
                out!("{}", table(&["INSTANCE", "ADDRESS", "RELEASE", "HEALTH", "RESTARTS"], &rows));
            }
            Ok(ExitCode::SUCCESS)
        }
        DeployCommand::History { service, environment, limit, output } => {
            let client = Client::new(&args.connection, output)?;
            let body: serde_json::Value = client
                .get(&format!("{}/deployments", base(&service, &environment)), &[("limit", limit.to_string())])?;
            if output == Format::Json {
                print_json(&body);
                return Ok(ExitCode::SUCCESS);
            }
            let list = body["deployments"].as_array().map(Vec::as_slice).unwrap_or_default();
            if list.is_empty() {
                outln!("No deployments of `{service}` in `{environment}` yet.");
            } else {
                out!("{}", table(&HEADERS, &deployment_rows(list)));
            }
            Ok(ExitCode::SUCCESS)
        }
        DeployCommand::Show { id, output } => {
            let client = Client::new(&args.connection, output)?;
            let body: serde_json::Value = client.get(&format!("/api/v1/deployments/{id}"), &[])?;
            if output == Format::Json {
                print_json(&body);
                return Ok(ExitCode::SUCCESS);
            }
            out!("{}", table(&HEADERS, &deployment_rows(std::slice::from_ref(&body["deployment"]))));
            for e in body["events"].as_array().map(Vec::as_slice).unwrap_or_default() {
                outln!("{}  {}", e["at"].as_str().unwrap_or(""), e["message"].as_str().unwrap_or(""));
            }
            Ok(ExitCode::SUCCESS)
        }
        DeployCommand::Approve { id, output } => act(&args.connection, id, "approve", "Approved", output),
        DeployCommand::Reject { id, output } => act(&args.connection, id, "reject", "Rejected", output),
        DeployCommand::Cancel { id, output } => act(&args.connection, id, "cancel", "Cancelling", output),
        DeployCommand::Rollback { service, environment, to, output } => {
            let client = Client::new(&args.connection, output)?;
            let body: serde_json::Value =
                client.post(&format!("{}/rollback", base(&service, &environment)), &serde_json::json!({"to": to}))?;
            match output {
                Format::Json => print_json(&body),
                Format::Text => outln!(
                    "Rolling `{service}` in `{environment}` back to release #{}: deployment #{}.",
                    body["deployment"]["release_id"].as_i64().unwrap_or(0),
                    body["deployment"]["id"].as_i64().unwrap_or(0)
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn act(connection: &Connection, id: i64, action: &str, done: &str, output: Format) -> Outcome {
    let client = Client::new(connection, output)?;
    let body: serde_json::Value = client.post(&format!("/api/v1/deployments/{id}/{action}"), &serde_json::json!({}))?;
    match output {
        Format::Json => print_json(&body),
        Format::Text => outln!("{done} deployment #{id}."),
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    #[command(flatten)]
    connection: Connection,
    service: String,
    #[arg(long = "env")]
    environment: String,
    /// Keep printing new lines until interrupted.
    #[arg(long)]
    follow: bool,
}

/// `plinth logs SERVICE --env ENV [--follow]`
pub fn logs(args: LogsArgs) -> Outcome {
    let client = Client::new(&args.connection, Format::Text)?;
    let path = format!("{}/logs", base(&args.service, &args.environment));
    client.stream_lines(&path, &[("follow", args.follow.to_string())], |line| outln!("{line}"))?;
    Ok(ExitCode::SUCCESS)
}
