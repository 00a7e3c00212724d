//! What the server's tasks share: its settings, the store, the repository mirror, the log hub,
//! the signals that wake the watcher and the scheduler, and the runs in progress.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use plinth_core::time::Timestamp;
use plinth_git::Mirror;
use plinth_secrets::LocalKeyring;
use plinth_store::Store;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::logs::LogHub;

/// How the server was started.
#[derive(Clone)]
pub struct ServerConfig {
    /// The repository to watch: a local path or a git URL.
    pub repo: String,
    pub data_dir: PathBuf,
    /// How often to fetch; zero turns polling off (webhooks still trigger fetches).
    pub poll_interval: Duration,
    /// How many Terraform processes may run at once.
    pub concurrency: usize,
    /// The shared secret GitHub signs webhook deliveries with; webhooks are refused without it.
    pub webhook_secret: Option<Vec<u8>>,
    /// How long a shutdown waits for running Terraform processes before interrupting them.
    pub shutdown_grace: Duration,
    /// How long a git fetch may take.
    pub git_timeout: Duration,
    /// How long Terraform gets to stop after an interrupt before it is killed.
    pub terraform_grace: Duration,
    /// The master key that wraps secrets' data keys; `<data-dir>/master.key` when not set.
    pub master_key_file: Option<PathBuf>,
    /// Where plinth's proxy listens for the services' hosts; no proxy when not set.
    pub proxy_listen: Option<std::net::SocketAddr>,
    /// Where the proxy serves the same hosts over HTTPS, with certificates from the local CA
    /// in `<data-dir>/ca`; no HTTPS when not set.
    pub tls_listen: Option<std::net::SocketAddr>,
    /// The proxy's worker threads (see `plinth_proxy::ProxyConfig::workers`): one per core
    /// unless set; 0 serves its connections on the server's runtime.
    pub proxy_workers: usize,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("repo", &self.repo)
            .field("data_dir", &self.data_dir)
            .field("poll_interval", &self.poll_interval)
            .field("concurrency", &self.concurrency)
            .field("webhook_secret", &self.webhook_secret.as_ref().map(|_| "<redacted>"))
            .field("shutdown_grace", &self.shutdown_grace)
            .field("master_key_file", &self.master_key_file)
            .field("proxy_listen", &self.proxy_listen)
            .field("tls_listen", &self.tls_listen)
            .field("proxy_workers", &self.proxy_workers)
            .finish()
    }
}

impl ServerConfig {
    pub fn new(repo: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            repo: repo.into(),
            data_dir: data_dir.into(),
            poll_interval: Duration::from_secs(5),
            concurrency: 4,
            webhook_secret: None,
            shutdown_grace: Duration::from_secs(60),
            git_timeout: Duration::from_secs(120),
            terraform_grace: Duration::from_secs(30),
            master_key_file: None,
            proxy_listen: None,
            tls_listen: None,
            proxy_workers: plinth_proxy::ProxyConfig::default().workers,
        }
    }
}

/// Where things live in the data dir.
#[derive(Clone, Debug)]
pub struct Paths {
    pub data: PathBuf,
    pub database: PathBuf,
    pub admin_token: PathBuf,
    pub mirror: PathBuf,
    pub workspaces: PathBuf,
    /// Each line of a run's output lands here as it arrives, before it is stored in batches,
    /// so a killed server loses none of it (see [`crate::logs`]).
    pub log_spool: PathBuf,
    pub state: PathBuf,
    pub plugin_cache: PathBuf,
    pub module_cache: PathBuf,
    pub master_key: PathBuf,
    /// The local CA of the proxy's HTTPS: `ca.pem` and `ca.key` (mode 0600).
    pub ca: PathBuf,
    /// Environments on request: `<id>/root` is each one's kept Terraform root.
    pub environments: PathBuf,
}

impl Paths {
    pub fn new(data: &Path) -> Self {
        Paths {
            data: data.to_path_buf(),
            database: data.join("plinth.db"),
            admin_token: data.join("admin.token"),
            mirror: data.join("repo.git"),
            workspaces: data.join("workspaces"),
            log_spool: data.join("log-spool"),
            state: data.join("state"),
            plugin_cache: data.join("plugin-cache"),
            module_cache: data.join("cache").join("modules"),
            master_key: data.join("master.key"),
            ca: data.join("ca"),
            environments: data.join("environments"),
        }
    }

    /// A run's own directory: its checkout, Terraform's working files and plan.
    pub fn workspace(&self, run_id: i64) -> PathBuf {
        self.workspaces.join(run_id.to_string())
    }

    /// The generated Terraform root of an environment on request, kept for its later updates
    /// and destroy (S4.7).
    pub fn kept_root(&self, environment_id: i64) -> PathBuf {
        self.environments.join(environment_id.to_string()).join("root")
    }

    /// What a run of an environment works from: its kept root, or (for a plan of an update
    /// asked for with `plan_only`) the root rendered beside it, `<dir>` under the environment.
    pub fn env_source(&self, environment_id: i64, dir: &str) -> PathBuf {
        if dir.is_empty() {
            self.kept_root(environment_id)
        } else {
            self.environments.join(environment_id.to_string()).join(dir)
        }
    }
}

/// The shared state, cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// See [`AppState`].
#[derive(Debug)]
pub struct Inner {
    pub config: ServerConfig,
    pub paths: Paths,
    pub store: Arc<dyn Store>,
    pub mirror: Mirror,
    pub logs: LogHub,
    /// Wraps and unwraps secrets' data keys.
    pub keys: Arc<LocalKeyring>,
    /// Held while a secret is sealed and stored, and through a master key rotation, so that no
    /// value is stored under a key the rotation is retiring.
    pub secrets_write: tokio::sync::Mutex<()>,
    /// Deploys: rollouts, the instances running, and the proxy in front of them.
    pub deployer: crate::deployer::Deployer,
    pub wake_scheduler: Notify,
    pub wake_watcher: Notify,
    /// Serializes fetches and fetch-and-record, so that a webhook and the poll timer never
    /// race. Holds when the last successful fetch started.
    pub poll_lock: tokio::sync::Mutex<Option<std::time::Instant>>,
    /// Cancelled when the server starts shutting down.
    pub shutdown: CancellationToken,
    /// Runs whose Terraform is running, with the token that interrupts it.
    pub running: Mutex<HashMap<i64, CancellationToken>>,
    /// The id of each run phase that ends, for whoever waits on a run (the provisioner).
    pub run_ended: tokio::sync::broadcast::Sender<i64>,
    /// Wakes the provisioner: a request was made, or a run it waits for ended.
    pub wake_provisioner: Notify,
    /// The environment requests this process is carrying out.
    pub provisioner: crate::provisioner::Provisioner,
    /// The last plinth.toml parsed, with the commit it was read at.
    pub config_cache: Mutex<Option<(String, plinth_core::Config)>>,
    /// Kept roots are committed to `[provisioning] commit_branch` one at a time.
    pub publish_lock: tokio::sync::Mutex<()>,
    /// Review environments are brought in line by one task at a time.
    pub review_lock: tokio::sync::Mutex<()>,
    /// Branches (and heads) already told they get no review environment, so it is said once.
    pub review_refused: Mutex<std::collections::HashSet<(String, String)>>,
}

impl AppState {
    pub fn new(
        config: ServerConfig,
        paths: Paths,
        store: Arc<dyn Store>,
        mirror: Mirror,
        keys: Arc<LocalKeyring>,
    ) -> Self {
        let logs = LogHub::new(store.clone(), paths.log_spool.clone());
        let proxy = plinth_proxy::Proxy::new(plinth_proxy::ProxyConfig {
            workers: config.proxy_workers,
            ..plinth_proxy::ProxyConfig::default()
        });
        AppState(Arc::new(Inner {
            config,
            paths,
            store,
            mirror,
            logs,
            keys,
            secrets_write: tokio::sync::Mutex::new(()),
            deployer: crate::deployer::Deployer::new(proxy),
            wake_scheduler: Notify::new(),
            wake_watcher: Notify::new(),
            poll_lock: tokio::sync::Mutex::new(None),
            shutdown: CancellationToken::new(),
            running: Mutex::new(HashMap::new()),
            run_ended: tokio::sync::broadcast::channel(256).0,
            wake_provisioner: Notify::new(),
            provisioner: crate::provisioner::Provisioner::default(),
            config_cache: Mutex::new(None),
            publish_lock: tokio::sync::Mutex::new(()),
            review_lock: tokio::sync::Mutex::new(()),
            review_refused: Mutex::new(std::collections::HashSet::new()),
        }))
    }

    /// The one clock the server reads.
    pub fn now(&self) -> Timestamp {
        Timestamp::from_system(SystemTime::now())
    }

    /// The interrupt token of a run in progress.
    pub fn running_token(&self, run_id: i64) -> Option<CancellationToken> {
        self.running.lock().ok().and_then(|m| m.get(&run_id).cloned())
    }

    pub fn running_count(&self) -> usize {
        self.running.lock().map(|m| m.len()).unwrap_or(0)
    }
}
