//! `plinth server`: watch a repository and plan and apply its stacks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use plinth_server::ServerConfig;

use super::Outcome;
use crate::output::{Failure, Format};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The repository to watch: a local path or a git URL.
    #[arg(long)]
    repo: String,
    /// Where plinth keeps its database, the repository mirror, run workspaces and state.
    #[arg(long)]
    data_dir: PathBuf,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// How often to fetch the repository (such as 5s or 1m); 0 turns polling off.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// How many Terraform processes may run at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    /// A file holding the secret GitHub signs webhook deliveries with. Without it, webhooks
    /// are refused.
    #[arg(long)]
    webhook_secret_file: Option<PathBuf>,
    /// How long a shutdown waits for running Terraform before interrupting it.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// The master key that wraps every secret's data key (created, mode 0600, if absent).
    /// Defaults to `<data-dir>/master.key`; keep it, and its backups, apart from the data dir's.
    #[arg(long)]
    master_key_file: Option<PathBuf>,
    /// Where plinth's proxy serves the services' `hosts` (such as 127.0.0.1:8000); without it,
    /// services run but nothing routes to them.
    #[arg(long)]
    proxy_listen: Option<SocketAddr>,
    /// Where plinth's proxy serves the same hosts over HTTPS (such as 127.0.0.1:8443), with
    /// certificates from a local CA it creates in `<data-dir>/ca`; `plinth ca export` prints
    /// the CA certificate for clients to trust.
    #[arg(long)]
    tls_listen: Option<SocketAddr>,
    /// Threads that serve the proxy's connections, each with its own runtime and keep-alive
    /// connections to the instances. Defaults to one per core; 0 serves them on the server's
    /// own threads instead.
    #[arg(long, value_parser = clap::value_parser!(u16).range(0..=1024))]
    proxy_workers: Option<u16>,
}

fn fail(code: &'static str, message: String, help: &str) -> Failure {
    Failure::new(code, message, help, Format::Text)
}

pub fn run(args: Args) -> Outcome {
    let webhook_secret = match &args.webhook_secret_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                fail(
                    "server.webhook_secret",
                    format!("could not read {}: {e}", path.display()),
                    "Pass a readable file holding the webhook secret.",
                )
            })?;
            let secret = text.trim().to_owned();
            if secret.len() < 16 {
                return Err(fail(
                    "server.webhook_secret",
                    format!("the webhook secret in {} is shorter than 16 characters", path.display()),
                    "Use a long random secret, such as the output of `openssl rand -hex 32`.",
                ));
            }
            Some(secret.into_bytes())
        }
        None => None,
    };
    let mut config = ServerConfig::new(args.repo.clone(), args.data_dir.clone());
    config.poll_interval = args.poll_interval;
    config.concurrency = usize::from(args.concurrency);
    config.webhook_secret = webhook_secret;
    config.shutdown_grace = args.shutdown_grace;
    config.master_key_file = args.master_key_file.clone();
    config.proxy_listen = args.proxy_listen;
    config.tls_listen = args.tls_listen;
    if let Some(workers) = args.proxy_workers {
        config.proxy_workers = usize::from(workers);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| fail("server.runtime", e.to_string(), "Check the system's thread limits."))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen).await.map_err(|e| {
            fail(
                "server.listen",
                format!("could not listen on {}: {e}", args.listen),
                "Pick a free address with --listen.",
            )
        })?;
        let prepared = plinth_server::prepare(config).await.map_err(|e| Failure::coded(&e, Format::Text))?;
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        outln!("plinth is serving http://{addr} for {}", args.repo);
        if let Some(proxy) = prepared.proxy_addr() {
            outln!("The proxy serves the services' hosts on http://{proxy}");
        }
        if let Some(tls) = prepared.tls_addr() {
            outln!("The proxy serves the services' hosts on https://{tls}");
        }
        if let Some((_, ca)) = prepared.tls.as_ref().filter(|(_, ca)| ca.created()) {
            outln!(
                "Created the local CA for HTTPS: {}. Trust it where clients run: `plinth ca export` prints it and says how.",
                ca.cert_path().display()
            );
        }
        if let Some(key) = &prepared.master_key_created {
            outln!(
                "Created the master key that encrypts secrets: {}. Back it up, apart from the data dir's backups; without it no secret can be read.",
                key.display()
            );
        }
        if let Some(secret) = &prepared.admin_token {
            outln!(
                "This is the first start. The admin token (shown once, also in {}):",
                args.data_dir.join("admin.token").display()
            );
            outln!("  {secret}");
            outln!(
                "Use it with: export PLINTH_SERVER=http://{addr} PLINTH_TOKEN=$(cat {})",
                args.data_dir.join("admin.token").display()
            );
        }
        plinth_server::serve(prepared, listener, shutdown_signal())
            .await
            .map_err(|e| Failure::coded(&e, Format::Text))?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
