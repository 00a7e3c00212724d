//! Deploys: one rollout at a time per service and environment, with the process runtime
//! running instances and plinth's proxy routing to them.
//!
//! A rollout starts new instances (up to `max_surge` at a time, or all of them for `double`),
//! waits for their health checks, adds them to the routes, and only then takes old instances
//! out: off the routes first, then until their requests in flight finish (up to
//! `drain_timeout`), then `pre_stop`, then SIGTERM. When new instances fail their health checks
//! or crash-loop, or someone cancels, the rollout stops: its new instances leave the routes
//! and stop, the old ones keep serving (instances of the old release are started again if some
//! had been replaced already), and the deployment ends `failed` or `cancelled` with the reason.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plinth_core::config::{Service, Strategy};
use plinth_core::deploy::DeploymentStatus;
use plinth_proxy::{Backend, Proxy};
use plinth_runtime::{HealthCheck, Instance, InstanceLine, InstanceSpec, PreStop, RestartPolicy};
use plinth_store::{Deployment, Release};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::state::AppState;

/// Lines of instance output kept per service and environment for `plinth logs`.
const LOG_LINES: usize = 5000;
/// How long new instances may take to pass their health checks before the rollout gives up.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// SIGTERM to SIGKILL, for an instance being stopped.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What runs for one service in one environment.
#[derive(Debug)]
struct Live {
    release: Release,
    instances: Vec<Instance>,
}

type Key = (String, String);

/// A rollout in progress: its service and environment, and how to stop it (with why).
#[derive(Debug)]
struct Active {
    key: Key,
    cancel: CancellationToken,
    why: Arc<Mutex<Option<String>>>,
}

/// The deploy engine's shared state.
#[derive(Debug)]
pub struct Deployer {
    proxy: Proxy,
    wake: Notify,
    live: Mutex<HashMap<Key, Live>>,
    /// Rollouts in progress, by deployment id.
    active: Mutex<HashMap<i64, Active>>,
    logs: Mutex<HashMap<Key, ServiceLog>>,
}

/// The recent output of a service's instances, and its followers.
#[derive(Debug)]
struct ServiceLog {
    next: u64,
    lines: VecDeque<LogEntry>,
    live: broadcast::Sender<LogEntry>,
}

/// One line of an instance's output.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LogEntry {
    pub seq: u64,
    pub instance: String,
    pub stream: String,
    pub text: String,
    pub at: plinth_core::time::Timestamp,
}

/// An instance as `deploy status` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InstanceView {
    pub id: String,
    pub addr: String,
    pub release: i64,
    pub health: String,
    pub restarts: u32,
}

impl Deployer {
    pub fn new(proxy: Proxy) -> Self {
        Deployer {
            proxy,
            wake: Notify::new(),
            live: Mutex::new(HashMap::new()),
            active: Mutex::new(HashMap::new()),
            logs: Mutex::new(HashMap::new()),
        }
    }

    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// Looks for deployments to start.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Asks the rollout of a deployment to stop; false if it is not rolling out here.
    pub fn cancel(&self, id: i64, reason: String) -> bool {
        let active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        match active.get(&id) {
            Some(a) => {
                *a.why.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
                a.cancel.cancel();
                true
            }
            None => false,
        }
    }

    pub fn instances(&self, service: &str, environment: &str) -> Vec<InstanceView> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.get(&(service.to_owned(), environment.to_owned()))
            .map(|l| {
                l.instances
                    .iter()
                    .map(|i| InstanceView {
                        id: i.id().to_owned(),
                        addr: i.addr().to_string(),
                        release: l.release.id,
                        health: format!("{:?}", i.health()),
                        restarts: i.restarts(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The kept output of a service after `after`, and a receiver for what comes next.
    pub fn logs(&self, service: &str, environment: &str, after: u64) -> (Vec<LogEntry>, broadcast::Receiver<LogEntry>) {
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        let log = logs.entry((service.to_owned(), environment.to_owned())).or_insert_with(ServiceLog::new);
        let lines = log.lines.iter().filter(|l| l.seq > after).cloned().collect();
        (lines, log.live.subscribe())
    }

    fn record(&self, key: &Key, line: InstanceLine, at: plinth_core::time::Timestamp) {
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        let log = logs.entry(key.clone()).or_insert_with(ServiceLog::new);
        log.next += 1;
        let entry =
            LogEntry { seq: log.next, instance: line.instance, stream: line.stream.to_owned(), text: line.text, at };
        if log.lines.len() == LOG_LINES {
            log.lines.pop_front();
        }
        log.lines.push_back(entry.clone());
        let _ = log.live.send(entry);
    }

    fn is_rolling(&self, key: &Key) -> bool {
        self.active.lock().unwrap_or_else(|e| e.into_inner()).values().any(|a| &a.key == key)
    }
}

impl ServiceLog {
    fn new() -> Self {
        ServiceLog { next: 0, lines: VecDeque::new(), live: broadcast::channel(1024).0 }
    }
}

/// Puts things in order after a start: rollouts a previous process left in progress failed (the
/// process that ran them is gone), and every service gets its current release back.
pub async fn recover(state: &AppState) -> Result<(), plinth_store::StoreError> {
    for d in state.store.unfinished_deployments().await? {
        if d.status == DeploymentStatus::InProgress {
            let why = "plinth stopped during the rollout; the release that was serving is started again";
            state.store.move_deployment(d.id, DeploymentStatus::Failed, Some(why.into()), None, state.now()).await?;
            state.store.append_deployment_event(d.id, why, state.now()).await?;
        }
    }
    let declared = crate::policy::current(state).await.map(|p| p.config.environments).unwrap_or_default();
    let live: std::collections::HashSet<String> = state.store.live_environment_names().await?.into_iter().collect();
    for d in state.store.current_deployments().await? {
        // An environment made on request that is gone has nothing to bring back.
        if !declared.contains_key(&d.environment) && !live.contains(&d.environment) {
            continue;
        }
        let Some(release) = state.store.release(d.release_id).await? else { continue };
        let key = (d.service.clone(), d.environment.clone());
        match bring_back(state, &key, &release, d.id).await {
            Ok(()) => {
                tracing::info!(service = %key.0, environment = %key.1, release = release.id, "Started the current release again.")
            }
            Err(why) => {
                tracing::error!(service = %key.0, environment = %key.1, %why, "Could not start the current release again.")
            }
        }
    }
    Ok(())
}

/// Starts a release's instances for a service with none running, and routes to them.
async fn bring_back(state: &AppState, key: &Key, release: &Release, deployment: i64) -> Result<(), String> {
    let service = service_settings(state, key).await?;
    ensure_hosts(state, &service);
    let tx = log_sink(state, key);
    let mut started = Vec::new();
    for n in 1..=service.count {
        started.push(start_instance(state, &service, release, deployment, n, &tx).await?);
    }
    for instance in &started {
        if instance.wait_healthy(START_DEADLINE).await.is_ok() {
            route(state, &service, instance);
        }
    }
    state
        .deployer
        .live
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key.clone(), Live { release: release.clone(), instances: started });
    Ok(())
}

/// Starts queued deployments whose service and environment have no rollout in progress, until
/// the server stops; then stops every instance.
pub async fn run(state: AppState, tracker: TaskTracker) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => break,
            _ = state.deployer.wake.notified() => {}
            _ = tick.tick() => {}
        }
        let pending = match state.store.unfinished_deployments().await {
            Ok(pending) => pending,
            Err(e) => {
                tracing::warn!(error = %e, "Could not read the deployments; trying again.");
                continue;
            }
        };
        for d in pending.into_iter().filter(|d| d.status == DeploymentStatus::Queued) {
            let key = (d.service.clone(), d.environment.clone());
            if state.deployer.is_rolling(&key) || !environment_ready(&state, &d.environment).await {
                continue;
            }
            let Ok(Some(d)) =
                state.store.move_deployment(d.id, DeploymentStatus::InProgress, None, None, state.now()).await
            else {
                continue;
            };
            let token = state.shutdown.child_token();
            let why = Arc::new(Mutex::new(None));
            let active = Active { key, cancel: token.clone(), why: why.clone() };
            state.deployer.active.lock().unwrap_or_else(|e| e.into_inner()).insert(d.id, active);
            let task_state = state.clone();
            tracker.spawn(async move {
                roll_out(&task_state, d.clone(), token, why).await;
                task_state.deployer.active.lock().unwrap_or_else(|e| e.into_inner()).remove(&d.id);
                task_state.deployer.wake();
            });
        }
    }
    stop_everything(&state).await;
}

/// Stops every instance (the server is stopping; the next start brings them back).
async fn stop_everything(state: &AppState) {
    let all: Vec<Live> =
        state.deployer.live.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(_, l)| l).collect();
    let stops = all.iter().flat_map(|l| l.instances.iter()).map(|i| {
        state
            .deployer
            .proxy
            .update_routes::<(), std::convert::Infallible>(|t| {
                t.remove_backend(i.id());
                Ok(())
            })
            .ok();
        i.stop(None)
    });
    futures_util::future::join_all(stops).await;
}

/// How a rollout ended early.
enum Stop {
    Failed(String),
    Cancelled(String),
}

async fn roll_out(state: &AppState, d: Deployment, cancel: CancellationToken, why: Arc<Mutex<Option<String>>>) {
    let key = (d.service.clone(), d.environment.clone());
    event(state, &d, "rollout started").await;
    let result = rollout_steps(state, &d, &key, &cancel).await;
    let (status, reason) = match result {
        Ok(()) => (DeploymentStatus::Succeeded, None),
        Err(_) if state.shutdown.is_cancelled() => (
            DeploymentStatus::Failed,
            Some(
                "plinth stopped during the rollout; the release that was serving is started again when it starts"
                    .into(),
            ),
        ),
        Err(Stop::Failed(reason)) => (DeploymentStatus::Failed, Some(reason)),
        Err(Stop::Cancelled(reason)) => {
            let asked = why.lock().unwrap_or_else(|e| e.into_inner()).clone();
            (DeploymentStatus::Cancelled, Some(asked.unwrap_or(reason)))
        }
    };
    let message = match &reason {
        Some(r) => format!("{status}: {r}"),
        None => "succeeded: every instance runs the release".to_owned(),
    };
    event(state, &d, &message).await;
    if let Err(e) = state.store.move_deployment(d.id, status, reason, None, state.now()).await {
        tracing::error!(deployment = d.id, error = %e, "Could not record how the deployment ended.");
    }
}

async fn event(state: &AppState, d: &Deployment, message: &str) {
    tracing::info!(deployment = d.id, service = %d.service, environment = %d.environment, "{message}");
    if let Err(e) = state.store.append_deployment_event(d.id, message, state.now()).await {
        tracing::warn!(deployment = d.id, error = %e, "Could not record a deployment event.");
    }
}

async fn service_settings(state: &AppState, key: &Key) -> Result<Service, String> {
    let policy = crate::policy::current(state).await?;
    let def = policy
        .config
        .service(&key.0)
        .ok_or_else(|| format!("service `{}` is no longer in plinth.toml on the main branch", key.0))?;
    crate::environments::service_in(state, &policy.config, def, &key.1).await
}

/// Whether deployments may roll out in `environment` now: a plinth.toml environment always; an
/// environment made on request once it is ready (its infrastructure exists).
async fn environment_ready(state: &AppState, environment: &str) -> bool {
    let declared = crate::policy::current(state).await.is_ok_and(|p| p.config.environments.contains_key(environment));
    if declared {
        return true;
    }
    matches!(
        state.store.environment(environment).await,
        Ok(Some(env)) if matches!(env.status, plinth_core::environment::EnvStatus::Ready | plinth_core::environment::EnvStatus::Updating)
    )
}

/// Takes an environment made on request out of service before its destroy: its rollouts are
/// cancelled, deployments waiting for it cancelled, its instances drained and stopped, and its
/// hosts removed from the proxy (404 from then on).
pub async fn retire_environment(state: &AppState, env: &plinth_store::EnvRecord) {
    let why = format!("environment `{}` is being destroyed", env.name);
    if let Ok(unfinished) = state.store.unfinished_deployments().await {
        for d in unfinished.into_iter().filter(|d| d.environment == env.name) {
            if !state.deployer.cancel(d.id, why.clone()) {
                let _ = state
                    .store
                    .move_deployment(d.id, DeploymentStatus::Cancelled, Some(why.clone()), None, state.now())
                    .await;
            }
        }
    }
    // Rollouts end by themselves once cancelled; wait for them, so none starts an instance after.
    while state.deployer.active.lock().unwrap_or_else(|e| e.into_inner()).values().any(|a| a.key.1 == env.name) {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    let retired: Vec<(Key, Live)> = {
        let mut live = state.deployer.live.lock().unwrap_or_else(|e| e.into_inner());
        let keys: Vec<Key> = live.keys().filter(|k| k.1 == env.name).cloned().collect();
        keys.into_iter().filter_map(|k| live.remove(&k).map(|l| (k, l))).collect()
    };
    for (key, live) in retired {
        let _ = state.deployer.proxy.update_routes::<(), std::convert::Infallible>(|t| {
            for i in &live.instances {
                t.remove_backend(i.id());
            }
            Ok(())
        });
        match service_settings(state, &key).await {
            Ok(service) => {
                futures_util::future::join_all(live.instances.iter().map(|i| retire(state, &service, i, None))).await;
            }
            Err(_) => {
                futures_util::future::join_all(live.instances.iter().map(|i| i.stop(None))).await;
            }
        }
    }
    let hosts: Vec<String> = env.services.iter().flat_map(|s| env.hosts_for(s)).collect();
    let _ = state.deployer.proxy.update_routes::<(), std::convert::Infallible>(|t| {
        for host in &hosts {
            t.remove(host);
        }
        Ok(())
    });
}

/// Makes the service's hosts known to the proxy (503 until an instance is healthy, not 404).
fn ensure_hosts(state: &AppState, service: &Service) {
    let _ = state.deployer.proxy.update_routes::<(), plinth_proxy::RouteError>(|t| {
        for host in &service.hosts {
            if t.routes().iter().all(|r| r.host() != host.as_str()) {
                t.insert(host, Vec::new())?;
            }
        }
        Ok(())
    });
}

fn route(state: &AppState, service: &Service, instance: &Instance) {
    let result = state.deployer.proxy.update_routes(|t| {
        for host in &service.hosts {
            t.add_backend(host, Backend::new(instance.id(), instance.addr()))?;
        }
        Ok::<_, plinth_proxy::RouteError>(())
    });
    if let Err(e) = result {
        tracing::warn!(instance = instance.id(), error = %e, "Could not route to an instance.");
    }
}

/// Retires a batch of old instances: all leave the routes in one change (so none of them
/// gets new requests while another drains), then they drain and stop together.
async fn retire_all(state: &AppState, service: &Service, instances: Vec<Instance>, d: &Deployment) {
    if instances.is_empty() {
        return;
    }
    let _ = state.deployer.proxy.update_routes::<(), std::convert::Infallible>(|t| {
        for instance in &instances {
            t.remove_backend(instance.id());
        }
        Ok(())
    });
    futures_util::future::join_all(instances.iter().map(|i| retire(state, service, i, Some(d)))).await;
}

/// Takes an instance out of the routes, lets its requests finish, runs `pre_stop`, stops it.
async fn retire(state: &AppState, service: &Service, instance: &Instance, d: Option<&Deployment>) {
    let _ = state.deployer.proxy.update_routes::<(), std::convert::Infallible>(|t| {
        t.remove_backend(instance.id());
        Ok(())
    });
    let drained = state.deployer.proxy.drained(instance.id(), service.drain_timeout).await;
    if let (plinth_proxy::Drained::TimedOut { left }, Some(d)) = (&drained, d) {
        event(state, d, &format!("{}: {left} request(s) still in flight after the drain timeout", instance.id())).await;
    }
    let pre_stop = service.pre_stop.as_ref().map(|command| PreStop {
        program: command[0].clone(),
        args: command[1..].to_vec(),
        env: instance_env(service, instance.id(), 0, &BTreeMap::new()),
        dir: std::env::temp_dir(),
        timeout: Duration::from_secs(30),
    });
    instance.stop(pre_stop.as_ref()).await;
    let dir = state.paths.data.join("instances").join(instance.id());
    if let Err(e) = tokio::fs::remove_dir_all(&dir).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(instance = instance.id(), error = %e, "Could not remove the instance's directory.");
    }
    if let Some(d) = d {
        event(state, d, &format!("{} drained and stopped", instance.id())).await;
    }
}

fn log_sink(state: &AppState, key: &Key) -> mpsc::UnboundedSender<InstanceLine> {
    let (tx, mut rx) = mpsc::unbounded_channel::<InstanceLine>();
    let task_state = state.clone();
    let key = key.clone();
    tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            task_state.deployer.record(&key, line, task_state.now());
        }
    });
    tx
}

/// The environment of an instance: the server's PATH, the service's `env`, its secrets, and
/// what plinth tells it.
pub(crate) fn instance_env(
    service: &Service,
    id: &str,
    release: i64,
    secrets: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut path = std::env::var("PATH").unwrap_or_default();
    // `plinth` on an instance's PATH is the server's own binary, first, so that scripts can run
    // `plinth demo-app` (or `plinth` anything) wherever plinth is installed.
    if let Ok(exe) = std::env::current_exe()
        && exe.file_name().is_some_and(|n| n == "plinth")
        && let Some(dir) = exe.parent()
    {
        path = if path.is_empty() { dir.display().to_string() } else { format!("{}:{path}", dir.display()) };
    }
    if !path.is_empty() {
        env.insert("PATH".into(), path);
    }
    env.extend(service.env.clone());
    env.extend(secrets.clone());
    env.insert("PLINTH_INSTANCE".into(), id.to_owned());
    env.insert("PLINTH_SERVICE".into(), service.name.clone());
    env.insert("PLINTH_ENV".into(), service.environment.clone());
    env.insert("PLINTH_RELEASE".into(), release.to_string());
    env.into_iter().collect()
}

/// `plinth` in a command means this very binary, when the server is the plinth binary.
pub(crate) fn program(name: &str) -> String {
    if name == "plinth"
        && let Ok(exe) = std::env::current_exe()
        && exe.file_name().is_some_and(|n| n == "plinth")
    {
        return exe.display().to_string();
    }
    name.to_owned()
}

async fn start_instance(
    state: &AppState,
    service: &Service,
    release: &Release,
    deployment: i64,
    n: u32,
    output: &mpsc::UnboundedSender<InstanceLine>,
) -> Result<Instance, String> {
    let id = format!("{}-{}-d{deployment}-{n}", service.name, service.environment);
    let port = plinth_runtime::free_port().map_err(|e| format!("no free port: {e}"))?;
    let secrets = crate::secrets::for_instances(state, &service.name, &service.policy_environment, &id).await?;
    let command = service.command_for(port, &release.images, &id);
    let dir: PathBuf = state.paths.data.join("instances").join(&id);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut env = instance_env(service, &id, release.id, &secrets);
    env.push(("PORT".into(), port.to_string()));
    env.push(("HOME".into(), dir.display().to_string()));
    let spec = InstanceSpec {
        id,
        program: program(&command[0]),
        args: command[1..].to_vec(),
        dir,
        env,
        port,
        health: HealthCheck {
            path: service.health.path.clone(),
            interval: service.health.interval,
            timeout: service.health.timeout,
            healthy: service.health.healthy,
            unhealthy: service.health.unhealthy,
        },
        restart: RestartPolicy::default(),
        stop_grace: STOP_GRACE,
    };
    Ok(Instance::start(spec, output.clone()))
}

/// What the steps of one rollout share.
struct Step<'a> {
    state: &'a AppState,
    d: &'a Deployment,
    service: &'a Service,
    output: &'a mpsc::UnboundedSender<InstanceLine>,
    cancel: &'a CancellationToken,
}

/// Starts `count` instances of the release, waits until all are healthy, and routes them.
async fn start_batch(
    step: &Step<'_>,
    release: &Release,
    first: u32,
    count: u32,
    started: &mut Vec<Instance>,
) -> Result<(), Stop> {
    let Step { state, d, service, output, cancel } = *step;
    let mut batch = Vec::new();
    for n in first..first + count {
        let instance = start_instance(state, service, release, d.id, n, output).await.map_err(Stop::Failed)?;
        event(state, d, &format!("started {} on {}", instance.id(), instance.addr())).await;
        started.push(instance.clone());
        batch.push(instance);
    }
    for instance in &batch {
        tokio::select! {
            healthy = instance.wait_healthy(START_DEADLINE) => {
                if let Err(e) = healthy {
                    return Err(Stop::Failed(format!("{} did not become healthy: {e}", instance.id())));
                }
            }
            _ = cancel.cancelled() => return Err(Stop::Cancelled("cancelled".into())),
        }
        event(state, d, &format!("{} is healthy", instance.id())).await;
    }
    for instance in &batch {
        route(state, service, instance);
    }
    event(state, d, &format!("routed to {} new instance(s)", batch.len())).await;
    Ok(())
}

async fn rollout_steps(state: &AppState, d: &Deployment, key: &Key, cancel: &CancellationToken) -> Result<(), Stop> {
    let service = service_settings(state, key).await.map_err(Stop::Failed)?;
    let release = state
        .store
        .release(d.release_id)
        .await
        .map_err(|e| Stop::Failed(e.to_string()))?
        .ok_or_else(|| Stop::Failed(format!("release #{} is gone", d.release_id)))?;
    ensure_hosts(state, &service);
    let output = log_sink(state, key);
    let previous = state.deployer.live.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    let mut old: Vec<Instance> = previous.as_ref().map(|l| l.instances.clone()).unwrap_or_default();
    let old_release = previous.map(|l| l.release);
    let mut started: Vec<Instance> = Vec::new();
    let count = service.count;
    let step = Step { state, d, service: &service, output: &output, cancel };
    let outcome = async {
        match service.strategy {
            Strategy::Double => {
                start_batch(&step, &release, 1, count, &mut started).await?;
                retire_all(state, &service, std::mem::take(&mut old), d).await;
            }
            Strategy::Rolling { max_surge, max_unavailable } => {
                let surge = max_surge.of(count, true);
                let unavailable = max_unavailable.of(count, false);
                let size = if surge > 0 { surge } else { unavailable.max(1) };
                let mut next = 1;
                while next <= count {
                    if cancel.is_cancelled() {
                        return Err(Stop::Cancelled("cancelled".into()));
                    }
                    let batch = size.min(count - next + 1);
                    if surge == 0 {
                        let n = (batch as usize).min(old.len());
                        retire_all(state, &service, old.drain(..n).collect(), d).await;
                    }
                    start_batch(&step, &release, next, batch, &mut started).await?;
                    next += batch;
                    if surge > 0 {
                        let n = (batch as usize).min(old.len());
                        retire_all(state, &service, old.drain(..n).collect(), d).await;
                    }
                }
                retire_all(state, &service, std::mem::take(&mut old), d).await;
            }
        }
        Ok(())
    }
    .await;
    match outcome {
        Ok(()) => {
            state
                .deployer
                .live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.clone(), Live { release, instances: started });
            Ok(())
        }
        Err(stop) => {
            // Back to what served before: the new instances go, the old ones stay, and any old
            // instance already replaced is started again.
            for instance in &started {
                retire(state, &service, instance, Some(d)).await;
            }
            if state.shutdown.is_cancelled() {
                // The server is stopping: the old instances stop too, and come back on start.
                for instance in &old {
                    retire(state, &service, instance, None).await;
                }
                return Err(stop);
            }
            if let Some(old_release) = old_release {
                let missing = (count as usize).saturating_sub(old.len());
                for n in 0..missing {
                    match start_instance(state, &service, &old_release, d.id, 1000 + n as u32, &output).await {
                        Ok(instance) => {
                            if instance.wait_healthy(START_DEADLINE).await.is_ok() {
                                route(state, &service, &instance);
                            }
                            old.push(instance);
                        }
                        Err(e) => event(state, d, &format!("could not start the previous release again: {e}")).await,
                    }
                }
                state
                    .deployer
                    .live
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key.clone(), Live { release: old_release, instances: old });
            }
            Err(stop)
        }
    }
}
