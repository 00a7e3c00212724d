//! `plinth release`: CI publishes a service's images (CodePipeline's `imagedefinitions.json`)
//! for an environment, or for the environments a branch or tag releases to; anyone who may read
//! lists a service's releases.

use std::path::PathBuf;
use std::process::ExitCode;

use super::Outcome;
use crate::client::{Client, Connection, segment};
use crate::output::{Failure, Format, print_json, table};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: ReleaseCommand,
}

/// Where a release goes: an environment, or the environments a branch or tag releases to.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
struct TargetArgs {
    /// The environment, as declared in plinth.toml.
    #[arg(long = "env")]
    environment: Option<String>,
    /// The branch the images were built from; the environments whose `branches` match get it.
    #[arg(long)]
    branch: Option<String>,
    /// The tag the images were built from; the environments whose `tags` match get it.
    #[arg(long)]
    tag: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum ReleaseCommand {
    /// Publish a release: every container of the service with its image.
    Publish {
        #[arg(long)]
        service: String,
        #[command(flatten)]
        target: TargetArgs,
        /// CodePipeline's imagedefinitions.json (`-` for standard input).
        #[arg(long)]
        image_definitions: PathBuf,
        /// The commit the images were built from.
        #[arg(long)]
        commit: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
    /// List a service's releases in an environment, newest first.
    List {
        #[arg(long)]
        service: String,
        #[arg(long = "env")]
        environment: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long, value_enum, default_value_t)]
        output: Format,
    },
}

pub fn run(args: Args) -> Outcome {
    match args.command {
        ReleaseCommand::Publish { service, target, image_definitions, commit, output } => {
            let body = read_definitions(&image_definitions, output)?;
            let client = Client::new(&args.connection, output)?;
            let mut query: Vec<(&str, String)> = commit.into_iter().map(|c| ("commit", c)).collect();
            let path = match (&target.environment, &target.branch, &target.tag) {
                (Some(env), _, _) => {
                    format!("/api/v1/services/{}/environments/{}/releases", segment(&service), segment(env))
                }
                (None, Some(branch), _) => {
                    query.push(("branch", branch.clone()));
                    format!("/api/v1/services/{}/releases", segment(&service))
                }
                (None, None, Some(tag)) => {
                    query.push(("tag", tag.clone()));
                    format!("/api/v1/services/{}/releases", segment(&service))
                }
                (None, None, None) => unreachable_target(output)?,
            };
            let answer: serde_json::Value = client.post_raw(&path, &query, body)?;
            match output {
                Format::Json => print_json(&answer),
                Format::Text => {
                    for r in answer["releases"].as_array().map(Vec::as_slice).unwrap_or_default() {
                        outln!(
                            "Published release #{} of `{service}` to `{}`.",
                            r["id"].as_i64().unwrap_or(0),
                            r["environment"].as_str().unwrap_or("")
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ReleaseCommand::List { service, environment, limit, output } => {
            let client = Client::new(&args.connection, output)?;
            let path =
                format!("/api/v1/services/{}/environments/{}/releases", segment(&service), segment(&environment));
            let body: serde_json::Value = client.get(&path, &[("limit", limit.to_string())])?;
            if output == Format::Json {
                print_json(&body);
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = body["releases"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|r| {
                    let images: Vec<String> = r["images"]
                        .as_object()
                        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect())
                        .unwrap_or_default();
                    vec![
                        format!("#{}", r["id"].as_i64().unwrap_or(0)),
                        images.join(" "),
                        r["commit"].as_str().map(|c| c.get(..10).unwrap_or(c).to_owned()).unwrap_or_else(|| "-".into()),
                        r["source"].as_str().unwrap_or("").to_owned(),
                        r["published_by"].as_str().unwrap_or("").to_owned(),
                        r["created_at"].as_str().unwrap_or("").to_owned(),
                    ]
                })
                .collect();
            if rows.is_empty() {
                outln!("No releases of `{service}` in `{environment}` yet.");
            } else {
                out!("{}", table(&["RELEASE", "IMAGES", "COMMIT", "FROM", "BY", "AT"], &rows));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn unreachable_target(format: Format) -> Result<String, Failure> {
    Err(Failure::new("release.bad_target", "no target given", "Pass --env, --branch or --tag.", format))
}

/// The image definitions, from a file or standard input, as bytes for the server to check.
fn read_definitions(path: &std::path::Path, format: Format) -> Result<Vec<u8>, Failure> {
    let read = if path == std::path::Path::new("-") {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes).map(|_| bytes)
    } else {
        std::fs::read(path)
    };
    read.map_err(|e| {
        Failure::new(
            "release.read_definitions",
            format!("could not read {}: {e}", path.display()),
            "Pass the imagedefinitions.json your build wrote, or `-` to read it from standard input.",
            format,
        )
    })
}
