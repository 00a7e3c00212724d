//! `plinth secrets`: set (the value comes from standard input, never from an argument), list
//! (never values), remove, and rotate the master key, on a plinth server.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;

use super::Outcome;
use crate::client::{Client, Connection, segment};
use crate::output::{Failure, Format, print_json, table};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: SecretsCommand,
}

/// Where a secret applies: the whole environment, one stack, or one service.
#[derive(Debug, clap::Args)]
struct ScopeArgs {
    /// The environment, as declared in plinth.toml.
    #[arg(long = "env")]
    environment: String,
    /// Only this stack's runs get it (it wins over an environment secret of the same name).
    #[arg(long, conflicts_with = "service")]
    stack: Option<String>,
    /// Only this service's instances get it.
    #[arg(long)]
    service: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum SecretsCommand {
    /// Set a secret, reading its value from standard input (one trailing newline is dropped):
    /// `printf %s "$VALUE" | plinth secrets set NAME --env ENV`.
    Set {
        /// The environment variable terraform gets, such as `TF_VAR_db_password`.
        name: String,
        #[command(flatten)]
        scope: ScopeArgs,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// List secrets: names, scope, version, who set them and when. Never values.
    List {
        #[arg(long = "env")]
        environment: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Remove a secret; runs from now on do not get it.
    Rm {
        name: String,
        #[command(flatten)]
        scope: ScopeArgs,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// Wrap every secret's data key under a new master key, and retire the old one.
    RotateMasterKey {
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
}

pub fn run(args: Args) -> Outcome {
    match args.command {
        SecretsCommand::Set { name, scope, output } => {
            let value = read_value(output)?;
            let client = Client::new(&args.connection, output)?;
            let body = serde_json::json!({"value": value, "stack": scope.stack, "service": scope.service});
            let path = format!("/api/v1/environments/{}/secrets/{}", segment(&scope.environment), segment(&name));
            let answer: serde_json::Value = client.put(&path, &body)?;
            match output {
                Format::Json => print_json(&answer),
                Format::Text => {
                    let version = answer["secret"]["version"].as_i64().unwrap_or(0);
                    outln!("Set `{name}` for {} (version {version}).", describe(&scope));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        SecretsCommand::List { environment, output } => {
            let client = Client::new(&args.connection, output)?;
            let query: Vec<(&str, String)> = environment.into_iter().map(|e| ("environment", e)).collect();
            let body: serde_json::Value = client.get("/api/v1/secrets", &query)?;
            if output == Format::Json {
                print_json(&body);
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = body["secrets"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|s| {
                    let scope = match (s["scope"]["kind"].as_str(), s["scope"]["name"].as_str()) {
                        (Some(kind), Some(name)) => format!("{kind} {name}"),
                        _ => "environment".to_owned(),
                    };
                    vec![
                        s["environment"].as_str().unwrap_or("").to_owned(),
                        scope,
                        s["name"].as_str().unwrap_or("").to_owned(),
                        s["version"].as_i64().unwrap_or(0).to_string(),
                        s["updated_by"].as_str().unwrap_or("").to_owned(),
                        s["updated_at"].as_str().unwrap_or("").to_owned(),
                    ]
                })
                .collect();
            if rows.is_empty() {
                outln!("No secrets. Set one with `printf %s \"$VALUE\" | plinth secrets set NAME --env ENV`.");
            } else {
                out!("{}", table(&["ENV", "SCOPE", "NAME", "VERSION", "SET BY", "SET AT"], &rows));
            }
            Ok(ExitCode::SUCCESS)
        }
        SecretsCommand::Rm { name, scope, output } => {
            let client = Client::new(&args.connection, output)?;
            let mut path = format!("/api/v1/environments/{}/secrets/{}", segment(&scope.environment), segment(&name));
            if let Some(stack) = &scope.stack {
                path.push_str(&format!("?stack={}", segment(stack)));
            } else if let Some(service) = &scope.service {
                path.push_str(&format!("?service={}", segment(service)));
            }
            let body: serde_json::Value = client.delete(&path)?;
            match output {
                Format::Json => print_json(&body),
                Format::Text => outln!("Removed `{name}` from {}.", describe(&scope)),
            }
            Ok(ExitCode::SUCCESS)
        }
        SecretsCommand::RotateMasterKey { output } => {
            let client = Client::new(&args.connection, output)?;
            let body: serde_json::Value = client.post("/api/v1/secrets/rotate-master-key", &serde_json::json!({}))?;
            match output {
                Format::Json => print_json(&body),
                Format::Text => outln!(
                    "Rotated the master key: {} secret(s) now wrapped by `{}` (was `{}`).",
                    body["rotated"]["rewrapped"].as_u64().unwrap_or(0),
                    body["rotated"]["key_id"].as_str().unwrap_or(""),
                    body["rotated"]["previous_key_id"].as_str().unwrap_or("")
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn describe(scope: &ScopeArgs) -> String {
    match (&scope.stack, &scope.service) {
        (Some(stack), _) => format!("stack `{stack}` in `{}`", scope.environment),
        (_, Some(service)) => format!("service `{service}` in `{}`", scope.environment),
        _ => format!("environment `{}`", scope.environment),
    }
}

/// The value, from standard input. A terminal is refused: typing a secret there would echo
/// it and leave it in the scrollback.
fn read_value(format: Format) -> Result<String, Failure> {
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(Failure::new(
            "secret.stdin_is_terminal",
            "the value is read from standard input, which is a terminal here",
            "Pipe the value in, for example `printf %s \"$VALUE\" | plinth secrets set NAME --env ENV` or `plinth secrets set NAME --env ENV < file`.",
            format,
        ));
    }
    let mut bytes = Vec::new();
    stdin.read_to_end(&mut bytes).map_err(|e| {
        Failure::new("secret.stdin", format!("could not read standard input: {e}"), "Pipe the value in.", format)
    })?;
    let mut value = String::from_utf8(bytes).map_err(|_| {
        Failure::new(
            "secret.not_utf8",
            "the value is not UTF-8 text",
            "Secrets become environment variables; encode binary values, for example with base64.",
            format,
        )
    })?;
    // `echo VALUE |` adds a newline nobody meant as part of the value.
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    Ok(value)
}
