//! The `plinth` binary: parses the command line and hands each subcommand to its module.

// Command output goes through `outln!`, which ends quietly on a closed pipe.
#![deny(clippy::print_stdout)]

mod arena;
#[macro_use]
mod output;
mod client;
mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: arena::Allocator = arena::Allocator::new();

/// plinth: releases for Terraform stacks and container services, from one binary.
#[derive(Debug, Parser)]
#[command(name = "plinth", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Log level for plinth's own diagnostics on stderr (error, warn, info, debug, trace).
    #[arg(long, global = true, env = "PLINTH_LOG", default_value = "warn")]
    log: String,
    /// Log format: plain text for people, or one JSON object per line.
    #[arg(long, global = true, env = "PLINTH_LOG_FORMAT", value_enum, default_value = "plain")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

// `defer`: a subcommand's arguments are built only when that subcommand is parsed or its help
// is shown, so running one command does not build the clap tree of all of them (that was 0.55 M
// of the 1.8 M instructions of `plinth --version`). Help, errors and exit codes do not change;
// the one catch is that a doc comment on a subcommand's argument struct, or on one it
// flattens, would replace the subcommand's description (tests/it/help.rs checks they match).
#[derive(Debug, Subcommand)]
#[command(defer = true)]
enum Command {
    /// Write a starting plinth.toml for the Terraform roots found in a directory.
    Init(commands::init::Args),
    /// Validate plinth.toml and list every stack with its environment, workspace,
    /// dependencies and local modules.
    Check(commands::check::Args),
    /// List the stacks a range of commits changed, in dependency waves, with the reasons.
    Changed(commands::changed::Args),
    /// Create an example repo in a temp dir and walk through what plinth does with it.
    Quickstart(commands::quickstart::Args),
    /// Watch a repository, and plan and apply its stacks as commits arrive.
    Server(commands::server::Args),
    /// Runs on a plinth server: list, show, logs, approve, reject, cancel, wait, unlock.
    Runs(commands::runs::RunsArgs),
    /// Ask a plinth server to plan a revision (plans by hand never apply).
    Plan(commands::runs::PlanArgs),
    /// The stacks a plinth server knows, with locks and latest runs.
    Stacks(commands::runs::StacksArgs),
    /// API tokens: create, list, revoke (admin).
    Tokens(commands::runs::TokensArgs),
    /// Read a plinth server's audit log (admin).
    Audit(commands::runs::AuditArgs),
    /// Deployments of a service: status, history, show, approve, reject, cancel, rollback.
    Deploy(commands::deploy::Args),
    /// The output of a service's instances.
    Logs(commands::deploy::LogsArgs),
    /// Run a one-off command with a service's environment, secrets and current release:
    /// `plinth exec SERVICE --env ENV [-it] -- COMMAND [ARG…]`.
    Exec(commands::exec::Args),
    /// Releases of a service: publish (from CI, with imagedefinitions.json), list.
    Release(commands::release::Args),
    /// Templates environments are made from: list, show (parameters and their rules).
    Templates(commands::env::TemplatesArgs),
    /// Environments on request: create from a template, list, show, update, destroy, and the
    /// request log.
    Env(commands::env::EnvArgs),
    /// The catalog: products, environments, services' releases, stacks' last applies; export.
    Catalog(commands::env::CatalogArgs),
    /// Secrets on a plinth server: set (from stdin), list (never values), rm, rotate-master-key.
    Secrets(commands::secrets::Args),
    /// The local CA of the proxy's HTTPS: `export` prints its certificate and how to trust it.
    Ca(commands::ca::Args),
    /// A small HTTP app that answers its version, for the quickstart and deploy tests; flags
    /// make it start slowly, fail health checks, answer slowly or crash.
    DemoApp(commands::demo_app::Args),
}

fn init_logging(level: &str, format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    // One TLS stack, one crypto provider: rustls with ring, for every HTTP client.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_format);
    let result = match cli.command {
        Command::Init(args) => commands::init::run(args),
        Command::Check(args) => commands::check::run(args),
        Command::Changed(args) => {
            ALLOCATOR.switch_to_arena();
            commands::changed::run(args)
        }
        Command::Quickstart(args) => commands::quickstart::run(args),
        Command::Server(args) => commands::server::run(args),
        Command::Runs(args) => commands::runs::run(args),
        Command::Plan(args) => commands::runs::plan(args),
        Command::Stacks(args) => commands::runs::stacks(args),
        Command::Tokens(args) => commands::runs::tokens(args),
        Command::Audit(args) => commands::runs::audit(args),
        Command::Secrets(args) => commands::secrets::run(args),
        Command::Templates(args) => commands::env::templates(args),
        Command::Env(args) => commands::env::env(args),
        Command::Catalog(args) => commands::env::catalog(args),
        Command::Ca(args) => commands::ca::run(args),
        Command::Release(args) => commands::release::run(args),
        Command::Deploy(args) => commands::deploy::run(args),
        Command::Logs(args) => commands::deploy::logs(args),
        Command::Exec(args) => commands::exec::run(args),
        Command::DemoApp(args) => commands::demo_app::run(args),
    };
    match result {
        Ok(code) => code,
        Err(failure) => {
            failure.print();
            ExitCode::from(1)
        }
    }
}
