//! The plinth server: watches a repository (polling and webhooks), turns new commits into
//! runs, plans and applies them with Terraform, serialized per state and with approvals where
//! policy asks, and serves the JSON API under `/api/v1`.
//!
//! Start it with [`prepare`] then [`serve`]: tests bind port 0 and pass their own shutdown
//! future, and the CLI passes SIGTERM/SIGINT.

pub mod api;
mod auth;
mod deployer;
mod environments;
mod error;
pub mod exec;
mod logs;
mod policy;
mod provisioner;
mod review;
mod runner;
mod scheduler;
mod secrets;
mod state;
mod watcher;

use std::future::Future;
use std::time::Duration;

use plinth_core::ErrorCode;
use plinth_git::Mirror;
use plinth_store::{NewAudit, NewToken};
use tokio_util::task::TaskTracker;

pub use error::ApiError;
pub use state::{AppState, Paths, ServerConfig};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("could not prepare the data dir {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] plinth_store::StoreError),
    #[error(transparent)]
    Repo(#[from] plinth_git::MirrorError),
    #[error("could not write the admin token to {path}: {source}")]
    AdminToken { path: String, source: std::io::Error },
    #[error("the HTTP server failed: {0}")]
    Http(std::io::Error),
    #[error(transparent)]
    MasterKey(#[from] plinth_secrets::SecretsError),
    #[error("could not finish the master key rotation: {0}")]
    Rotation(String),
    #[error("the proxy could not listen on {addr}: {source}")]
    ProxyListen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("the proxy's HTTPS could not listen on {addr}: {source}")]
    TlsListen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Ca(#[from] plinth_proxy::CaError),
}

impl ErrorCode for ServerError {
    fn code(&self) -> &'static str {
        match self {
            ServerError::DataDir { .. } => "server.data_dir",
            ServerError::Store(e) => e.code(),
            ServerError::Repo(e) => e.code(),
            ServerError::AdminToken { .. } => "server.admin_token",
            ServerError::Http(_) => "server.http",
            ServerError::MasterKey(e) => e.code(),
            ServerError::Rotation(_) => "secret.rotation_failed",
            ServerError::ProxyListen { .. } | ServerError::TlsListen { .. } => "server.listen",
            ServerError::Ca(e) => e.code(),
        }
    }

    fn http_status(&self) -> u16 {
        500
    }

    fn help(&self) -> String {
        match self {
            ServerError::DataDir { .. } | ServerError::AdminToken { .. } => {
                "Check that --data-dir is a directory the server's user can write.".into()
            }
            ServerError::Store(e) => e.help(),
            ServerError::Repo(e) => e.help(),
            ServerError::Http(_) => "Check that the listen address is free and allowed.".into(),
            ServerError::MasterKey(e) => e.help(),
            ServerError::ProxyListen { .. } => {
                "Pick a free address for --proxy-listen, or stop what listens there.".into()
            }
            ServerError::TlsListen { .. } => "Pick a free address for --tls-listen, or stop what listens there.".into(),
            ServerError::Ca(e) => e.help(),
            ServerError::Rotation(_) => {
                "Check the master key file and its `.next` file beside it; both are needed until the rotation finishes."
                    .into()
            }
        }
    }
}

/// A server ready to serve: data dir in place, store open, repository mirrored, leftovers of
/// a previous process put in order.
#[derive(Debug)]
pub struct Prepared {
    pub state: AppState,
    /// The admin token's secret, on the very first start only. It is also written to
    /// `<data-dir>/admin.token` with mode 0600.
    pub admin_token: Option<String>,
    /// The master key file, when this start created it: it must be backed up.
    pub master_key_created: Option<std::path::PathBuf>,
    /// The proxy's listener, bound, when `proxy_listen` is set.
    pub proxy: Option<tokio::net::TcpListener>,
    /// The proxy's HTTPS listener, bound, and the local CA (opened or created in
    /// `<data-dir>/ca`), when `tls_listen` is set.
    pub tls: Option<(tokio::net::TcpListener, std::sync::Arc<plinth_proxy::LocalCa>)>,
}

impl Prepared {
    /// Where the proxy listens (port 0 in the config is resolved here).
    pub fn proxy_addr(&self) -> Option<std::net::SocketAddr> {
        self.proxy.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Where the proxy serves HTTPS (port 0 in the config is resolved here).
    pub fn tls_addr(&self) -> Option<std::net::SocketAddr> {
        self.tls.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }
}

/// Sets everything up; nothing is served or run yet.
pub async fn prepare(config: ServerConfig) -> Result<Prepared, ServerError> {
    let paths = Paths::new(&config.data_dir);
    for dir in [
        &paths.data,
        &paths.workspaces,
        &paths.log_spool,
        &paths.state,
        &paths.plugin_cache,
        &paths.module_cache,
        &paths.environments,
    ] {
        std::fs::create_dir_all(dir)
            .map_err(|source| ServerError::DataDir { path: dir.display().to_string(), source })?;
    }
    let store = plinth_store::open(&format!("sqlite://{}", paths.database.display())).await?;
    let key_file = config.master_key_file.clone().unwrap_or_else(|| paths.master_key.clone());
    let (keys, created) = open_keyring(key_file.clone()).await?;
    let master_key_created = created.then_some(key_file);
    let mirror = Mirror::open_or_clone(&config.repo, &paths.mirror, config.git_timeout).await?;
    let state = AppState::new(config, paths, store, mirror, keys);
    secrets::finish_pending_rotation(&state).await.map_err(|e| ServerError::Rotation(e.message))?;
    let admin_token = first_admin_token(&state).await?;
    scheduler::recover(&state).await?;
    // The first poll happens before serving: on a first start it remembers the branch heads
    // (commits from then on make runs); after a restart it picks up what was pushed meanwhile.
    if let Err(e) = watcher::poll_once(&state, "poll").await {
        tracing::warn!(code = e.code, error = %e.message, "The first poll failed; polling goes on.");
    }
    let proxy = match state.config.proxy_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr).await.map_err(|source| ServerError::ProxyListen { addr, source })?,
        ),
        None => None,
    };
    let tls = match state.config.tls_listen {
        Some(addr) => {
            let ca = open_ca(state.paths.ca.clone()).await?;
            let listener =
                tokio::net::TcpListener::bind(addr).await.map_err(|source| ServerError::TlsListen { addr, source })?;
            Some((listener, ca))
        }
        None => None,
    };
    if let Err(e) = deployer::recover(&state).await {
        tracing::error!(error = %e, "Could not bring the services back.");
    }
    Ok(Prepared { state, admin_token, master_key_created, proxy, tls })
}

/// Opens the proxy's local CA, creating it (the key with mode 0600) on the first start.
async fn open_ca(dir: std::path::PathBuf) -> Result<std::sync::Arc<plinth_proxy::LocalCa>, ServerError> {
    let shown = dir.display().to_string();
    let ca = tokio::task::spawn_blocking(move || plinth_proxy::LocalCa::open_or_create(&dir))
        .await
        .map_err(|e| ServerError::DataDir { path: shown.clone(), source: std::io::Error::other(e.to_string()) })??;
    if ca.created() {
        let name = ca.common_name();
        tracing::info!(dir = %shown, %name, "Created the local CA; clients trust it with `plinth ca export`.");
    } else {
        tracing::info!(dir = %shown, name = %ca.common_name(), "Opened the local CA.");
    }
    Ok(std::sync::Arc::new(ca))
}

/// Opens the master key file, creating it (mode 0600) on the first start.
/// Returns the keyring, and whether its file was created just now.
async fn open_keyring(
    path: std::path::PathBuf,
) -> Result<(std::sync::Arc<plinth_secrets::LocalKeyring>, bool), ServerError> {
    let shown = path.display().to_string();
    let (keys, opened) = tokio::task::spawn_blocking(move || plinth_secrets::LocalKeyring::open(&path))
        .await
        .map_err(|e| ServerError::Rotation(e.to_string()))??;
    match opened {
        plinth_secrets::Opened::Created => tracing::info!(file = %shown, "Created a new master key."),
        plinth_secrets::Opened::Existing => tracing::info!(file = %shown, "Opened the master key."),
    }
    Ok((std::sync::Arc::new(keys), opened == plinth_secrets::Opened::Created))
}

/// On the first start (no token ever made), creates the admin token.
async fn first_admin_token(state: &AppState) -> Result<Option<String>, ServerError> {
    if !state.store.tokens().await?.is_empty() {
        return Ok(None);
    }
    let secret = auth::new_secret().map_err(|e| ServerError::AdminToken {
        path: state.paths.admin_token.display().to_string(),
        source: std::io::Error::other(e.message),
    })?;
    write_secret_file(&state.paths.admin_token, &secret)
        .map_err(|source| ServerError::AdminToken { path: state.paths.admin_token.display().to_string(), source })?;
    let token = NewToken {
        name: "admin".into(),
        hash: auth::hash_secret(&secret),
        roles: vec!["admin".into()],
        services: Vec::new(),
        created_by: "plinth".into(),
    };
    state.store.create_token(token, state.now()).await?;
    let entry = NewAudit {
        actor: "plinth".into(),
        action: "token.create".into(),
        object: "token/admin".into(),
        result: "ok".into(),
        details: serde_json::json!({"roles": ["admin"], "first_start": true}),
    };
    state.store.append_audit(entry, state.now()).await?;
    Ok(Some(secret))
}

/// Writes a file only its owner can read, replacing any old one.
fn write_secret_file(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")
}

/// Serves until `shutdown` resolves, then stops: no new connections, no new runs, a grace
/// period for running Terraform processes, then an interrupt for the rest. Plans interrupted
/// this way start over next time; applies are marked interrupted and keep their lock.
pub async fn serve(
    prepared: Prepared,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let state = prepared.state;
    let tracker = TaskTracker::new();
    let watcher = tokio::spawn(watcher::run(state.clone()));
    let scheduler = tokio::spawn(scheduler::run(state.clone(), tracker.clone()));
    let deploys = tokio::spawn(deployer::run(state.clone(), tracker.clone()));
    let provisioning = tokio::spawn(provisioner::run(state.clone(), tracker.clone()));
    let proxy = prepared.proxy.map(|listener| {
        let proxy = state.deployer.proxy().clone();
        let stop = state.shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = proxy.serve(listener, async move { stop.cancelled().await }).await {
                tracing::error!(error = %e, "The proxy failed.");
            }
        })
    });
    let tls = prepared.tls.map(|(listener, ca)| {
        let proxy = state.deployer.proxy().clone();
        let stop = state.shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = proxy.serve_tls(listener, ca, async move { stop.cancelled().await }).await {
                tracing::error!(error = %e, "The proxy's HTTPS failed.");
            }
        })
    });
    let stop = state.shutdown.clone();
    let signal = async move {
        shutdown.await;
        stop.cancel();
    };
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, repo = %state.config.repo, "plinth is serving.");
    let served = axum::serve(listener, api::router(state.clone())).with_graceful_shutdown(signal).await;
    state.shutdown.cancel();
    tracing::info!("Stopping: no new runs; waiting for running terraform.");
    let _ = watcher.await;
    let _ = scheduler.await;
    let _ = deploys.await;
    let _ = provisioning.await;
    if let Some(proxy) = proxy {
        let _ = proxy.await;
    }
    if let Some(tls) = tls {
        let _ = tls.await;
    }
    tracker.close();
    let grace = state.config.shutdown_grace;
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(grace = ?grace, "Terraform is still running after the grace period; interrupting it.");
        let tokens: Vec<_> = state.running.lock().map(|m| m.values().cloned().collect()).unwrap_or_default();
        for token in tokens {
            token.cancel();
        }
        let hard = state.config.terraform_grace + Duration::from_secs(10);
        if tokio::time::timeout(hard, tracker.wait()).await.is_err() {
            tracing::error!("Runs did not stop; they will be recovered on the next start.");
        }
    }
    state.store.close().await;
    tracing::info!("plinth stopped.");
    served.map_err(ServerError::Http)
}

/// Runs the server on `listener` until `shutdown` resolves.
pub async fn launch(
    config: ServerConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let prepared = prepare(config).await?;
    serve(prepared, listener, shutdown).await
}
