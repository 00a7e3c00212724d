//! Executing a run: a workspace of its own at the exact commit, `terraform init`, workspace
//! selection, `plan` to a saved plan file, and `apply` of that file only, with every line of
//! output logged. The workspace directory goes when the run ends, whatever the outcome; a run
//! waiting for approval keeps it, plan file included.

use std::path::{Path, PathBuf};
use std::time::Duration;

use plinth_core::modules::declares_backend;
use plinth_core::redact::Redactor;
use plinth_core::run::{PlanSummary, Run, RunMode, RunStatus, needs_approval};
use plinth_core::stack::state_dir_name;
use plinth_core::tree::Tree;
use plinth_core::{CONFIG_FILE, Config};
use plinth_git::{ChangedOptions, ModuleCache, Repo};
use plinth_store::RunPatch;
use plinth_terraform::{Invocation, OutputLine, PlanOutcome, Stream, Terraform, TerraformError, base_env};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::logs::RunLog;
use crate::secrets::Handed;
use crate::state::AppState;

/// The file in a run's workspace that holds its plan, encrypted, while it waits for approval.
pub const SEALED_PLAN_FILE: &str = "plan.tfplan.sealed";

/// The file in a run's workspace that holds its running terraform's process group id.
pub const PGID_FILE: &str = "terraform.pgid";

/// Which part of a run to execute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// From queued (now planning): check out, init, plan; then apply if policy allows.
    Plan,
    /// An approved plan: apply it.
    Apply,
}

/// How a phase went wrong.
#[derive(Debug)]
enum Failure {
    /// The run was interrupted: by a cancel, or by the server stopping.
    Interrupted,
    /// Something failed; the reason is for people.
    Failed(String),
}

impl From<TerraformError> for Failure {
    fn from(e: TerraformError) -> Self {
        match e {
            TerraformError::Interrupted { .. } => Failure::Interrupted,
            TerraformError::StateLocked { lock_id } => Failure::Failed(match lock_id {
                Some(id) => format!(
                    "Terraform's state lock is held (lock ID {id}); if no operation holds it any more, an admin can release it with `plinth stacks unlock STACK --state-lock {id}`"
                ),
                None => "Terraform's state lock is held by another operation".to_owned(),
            }),
            other => Failure::Failed(other.to_string()),
        }
    }
}

/// Where a run's files are inside its workspace directory.
struct Layout {
    /// Where the running terraform's process group id is written, for cleanup after a crash.
    pgid: PathBuf,
    checkout: PathBuf,
    stack: PathBuf,
    plan: PathBuf,
    /// The plan, encrypted, while the run waits for approval.
    sealed_plan: PathBuf,
    home: PathBuf,
    tmp: PathBuf,
}

impl Layout {
    fn new(state: &AppState, run: &Run) -> Layout {
        let root = state.paths.workspace(run.id);
        let checkout = root.join("checkout");
        // An environment's run gets its root copied to the top of the checkout.
        let at_top = run.path.is_empty() || run.path == "." || run.provisioned_env.is_some();
        let stack = if at_top { checkout.clone() } else { checkout.join(&run.path) };
        Layout {
            pgid: root.join(PGID_FILE),
            plan: root.join("plan.tfplan"),
            sealed_plan: root.join(SEALED_PLAN_FILE),
            home: root.join("home"),
            tmp: root.join("tmp"),
            stack,
            checkout,
        }
    }
}

/// Runs one phase of a run to the end and records the outcome. Never panics on a failure: every
/// way out ends in a status.
pub async fn execute(state: AppState, run: Run, phase: Phase, cancel: CancellationToken) {
    let id = run.id;
    let mut log = match state.logs.open(id).await {
        Ok(log) => log,
        Err(e) => {
            tracing::error!(run = id, error = %e, "Could not open the run's log.");
            let _ = state
                .store
                .transition(id, RunStatus::Failed, reason(format!("could not open the log: {e}")), state.now())
                .await;
            finish(&state, id);
            return;
        }
    };
    tracing::info!(run = id, stack = %run.stack, commit = %run.commit, ?phase, "Run phase started.");
    log.watch_for(MISSING_PATH_SIGNS);
    let ending = match phase {
        Phase::Plan => plan_phase(&state, &run, &mut log, &cancel).await,
        Phase::Apply => apply_phase(&state, &run, &mut log, &cancel).await,
    };
    log.flush().await;
    // The workspace goes before the run is marked as ended, so that an ended run never has one.
    if !ending.keep_workspace {
        remove_workspace(&state, id).await;
    }
    if let Some(to) = ending.status {
        set(&state, &mut log, id, to, ending.patch).await;
    }
    // A plan of an environment's update, rendered beside its kept root, is done with its root.
    if let Some(env) = run.provisioned_env
        && !run.path.is_empty()
        && ending.status != Some(RunStatus::Queued)
    {
        let _ = tokio::fs::remove_dir_all(state.paths.env_source(env, &run.path)).await;
    }
    tracing::info!(run = id, stack = %run.stack, status = ?ending.status, "Run phase ended.");
    log.finish(&state.logs).await;
    finish(&state, id);
}

/// How a phase ends: the status to record last (none if already recorded or lost to a race),
/// and whether the workspace stays (a plan waiting for approval).
struct Ending {
    status: Option<RunStatus>,
    patch: RunPatch,
    keep_workspace: bool,
}

impl Ending {
    fn to(status: RunStatus, patch: RunPatch) -> Ending {
        Ending { status: Some(status), patch, keep_workspace: false }
    }

    fn done() -> Ending {
        Ending { status: None, patch: RunPatch::default(), keep_workspace: false }
    }
}

fn finish(state: &AppState, id: i64) {
    if let Ok(mut running) = state.running.lock() {
        running.remove(&id);
    }
    state.wake_scheduler.notify_one();
    let _ = state.run_ended.send(id);
}

fn reason(text: impl Into<String>) -> RunPatch {
    RunPatch { reason: Some(text.into()), ..Default::default() }
}

/// Deletes a run's workspace directory, if it has one.
pub async fn remove_workspace(state: &AppState, id: i64) {
    let dir = state.paths.workspace(id);
    if let Err(e) = tokio::fs::remove_dir_all(&dir).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(run = id, dir = %dir.display(), error = %e, "Could not remove the run's workspace.");
    }
}

async fn note(state: &AppState, log: &mut RunLog, text: &str) {
    log.line("plinth", text, state.now()).await;
}

/// Records a status; returns whether the move happened. A store that fails is retried for a
/// while: a status, once reached, must not be lost.
async fn set(state: &AppState, log: &mut RunLog, id: i64, to: RunStatus, mut patch: RunPatch) -> bool {
    patch.reason = patch.reason.map(|r| log.redact(&r));
    if let Some(plan) = &mut patch.plan {
        for resource in &mut plan.resources {
            resource.address = log.redact(&resource.address);
        }
    }
    let mut wait = Duration::from_millis(100);
    for attempt in 1.. {
        match state.store.transition(id, to, patch.clone(), state.now()).await {
            Ok(Some(_)) => return true,
            Ok(None) => {
                note(state, log, &format!("the run had already moved on; not marking it {to}")).await;
                return false;
            }
            Err(e) if attempt < 20 => {
                tracing::warn!(run = id, error = %e, status = %to, attempt, "Could not record a run status; retrying.");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::error!(run = id, error = %e, status = %to, "Could not record a run status; giving up.");
                return false;
            }
        }
    }
    false
}

async fn plan_phase(state: &AppState, run: &Run, log: &mut RunLog, cancel: &CancellationToken) -> Ending {
    let layout = Layout::new(state, run);
    let handed = match hand_secrets(state, run, log, "plan").await {
        Ok(handed) => handed,
        Err(why) => return failed(state, log, why).await,
    };
    let result = plan_steps(state, run, &layout, log, cancel, &handed).await;
    let id = run.id;
    match result {
        Ok(None) => {
            note(state, log, "No changes. The infrastructure matches the configuration.").await;
            Ending::to(RunStatus::NoChanges, RunPatch::default())
        }
        Ok(Some(summary)) => {
            let patch = RunPatch { plan: Some(summary), ..Default::default() };
            if !set(state, log, id, RunStatus::Planned, patch).await {
                return Ending::done();
            }
            if run.mode == RunMode::Plan {
                let why = match &run.branch {
                    Some(b) => format!("Planned only: branch `{b}` does not release to this stack's environment."),
                    None => "Planned only, as asked.".to_owned(),
                };
                note(state, log, &why).await;
                return Ending::done();
            }
            // Approval is the main branch's policy, not the commit's own plinth.toml.
            let policy = crate::policy::current(state).await;
            let approval = match &policy {
                Ok(policy) => needs_approval(&policy.config, run.environment.as_deref()),
                Err(why) => {
                    note(state, log, &format!("Cannot read the policy ({why}); an admin must approve.")).await;
                    true
                }
            };
            if approval && run.approved_by.is_none() {
                let env = run.environment.clone().unwrap_or_default();
                let approvers = policy
                    .as_ref()
                    .ok()
                    .and_then(|p| p.config.environments.get(&env))
                    .map(|e| e.approvers.join(", "))
                    .unwrap_or_default();
                let who = if approvers.is_empty() { "an admin".to_owned() } else { format!("{approvers} or an admin") };
                if let Err(why) = seal_plan(state, run, &layout).await {
                    return failed(state, log, why).await;
                }
                note(
                    state,
                    log,
                    &format!("Waiting for approval: `{env}` needs {who}. Approve with `plinth runs approve {id}`."),
                )
                .await;
                return Ending {
                    status: Some(RunStatus::AwaitingApproval),
                    patch: RunPatch::default(),
                    keep_workspace: true,
                };
            }
            if let Some(why) = staleness(state, run).await {
                note(state, log, &format!("Not applying: {why}")).await;
                return Ending::to(RunStatus::Stale, reason(why));
            }
            if !set(state, log, id, RunStatus::Applying, RunPatch::default()).await {
                return Ending::done();
            }
            apply_steps(state, run, &layout, log, cancel, &handed).await
        }
        Err(Failure::Interrupted) if state.shutdown.is_cancelled() => {
            note(state, log, "plinth is stopping; this plan runs again when it starts.").await;
            Ending::to(RunStatus::Queued, RunPatch::default())
        }
        Err(Failure::Interrupted) => {
            note(state, log, "Cancelled.").await;
            Ending::to(RunStatus::Cancelled, reason("cancelled while planning"))
        }
        Err(Failure::Failed(why)) => failed(state, log, why).await,
    }
}

/// What Terraform prints when a file or module it was told to read is not there.
const MISSING_PATH_SIGNS: &[&str] = &["no file exists at", "Unreadable module directory", "Module not found"];

/// Ends a run as failed; when Terraform missed a file, says what a run's checkout holds.
async fn failed(state: &AppState, log: &mut RunLog, why: String) -> Ending {
    note(state, log, &format!("Failed: {why}")).await;
    if log.noticed() {
        note(state, log, &format!("Note: {}.", plinth_core::inputs::MISSING_PATH_HELP)).await;
    }
    Ending::to(RunStatus::Failed, reason(why))
}

async fn apply_phase(state: &AppState, run: &Run, log: &mut RunLog, cancel: &CancellationToken) -> Ending {
    let layout = Layout::new(state, run);
    if !layout.sealed_plan.exists() || !layout.stack.exists() {
        let why = "the saved plan is gone from the run's workspace".to_owned();
        note(state, log, &format!("Failed: {why}")).await;
        return Ending::to(RunStatus::Failed, reason(why));
    }
    if let Some(by) = &run.approved_by {
        note(state, log, &format!("Approved by {by}.")).await;
    }
    let handed = match hand_secrets(state, run, log, "apply").await {
        Ok(handed) => handed,
        Err(why) => return failed(state, log, why).await,
    };
    if let Err(why) = unseal_plan(state, run, &layout).await {
        return failed(state, log, why).await;
    }
    apply_steps(state, run, &layout, log, cancel, &handed).await
}

/// Decrypts the secrets the run gets, if its branch releases to its environment, and masks
/// their values in its log from now on.
async fn hand_secrets(state: &AppState, run: &Run, log: &mut RunLog, phase: &str) -> Result<Handed, String> {
    let handed = crate::secrets::for_run(state, run, phase)
        .await
        .map_err(|e| format!("could not hand the run its secrets: {e}"))?;
    log.set_redactor(handed.redactor.clone());
    if let Some(why) = &handed.withheld {
        note(state, log, why).await;
    } else if !handed.env.is_empty() {
        let names: Vec<&str> = handed.env.iter().map(|(name, _)| name.as_str()).collect();
        note(state, log, &format!("Secrets handed to terraform: {}.", names.join(", "))).await;
    }
    Ok(handed)
}

/// The associated data of a run's sealed plan: it opens for that run only.
fn plan_aad(run: &Run) -> Vec<u8> {
    format!("plinth-plan-v1\0run/{}\0{}", run.id, run.commit).into_bytes()
}

/// Encrypts the plan file of a run that waits for approval, and removes the plaintext: a plan
/// holds the values of variables, secrets included.
async fn seal_plan(state: &AppState, run: &Run, layout: &Layout) -> Result<(), String> {
    let plain = tokio::fs::read(&layout.plan).await.map_err(|e| format!("could not read the plan file: {e}"))?;
    let sealed = plinth_secrets::seal_to_bytes(state.keys.as_ref(), &plan_aad(run), &plain)
        .await
        .map_err(|e| format!("could not encrypt the plan file: {e}"))?;
    write_private(&layout.sealed_plan, &sealed).await.map_err(|e| format!("could not write the sealed plan: {e}"))?;
    tokio::fs::remove_file(&layout.plan).await.map_err(|e| format!("could not remove the plaintext plan: {e}"))
}

/// Decrypts an approved run's plan back into its workspace, for `terraform apply`.
async fn unseal_plan(state: &AppState, run: &Run, layout: &Layout) -> Result<(), String> {
    let sealed =
        tokio::fs::read(&layout.sealed_plan).await.map_err(|e| format!("could not read the sealed plan: {e}"))?;
    let plain = plinth_secrets::open_from_bytes(state.keys.as_ref(), &plan_aad(run), &sealed)
        .await
        .map_err(|e| format!("could not decrypt the plan file: {e}"))?;
    write_private(&layout.plan, plain.expose()).await.map_err(|e| format!("could not write the plan file: {e}"))
}

/// Writes a file only the server's user can read.
async fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::fs::remove_file(path).await;
    let mut file = tokio::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).await?;
    file.write_all(bytes).await?;
    file.flush().await
}

async fn apply_steps(
    state: &AppState,
    run: &Run,
    layout: &Layout,
    log: &mut RunLog,
    cancel: &CancellationToken,
    handed: &Handed,
) -> Ending {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (tx, rx) = (&tx, &mut rx);
    let result = async {
        let terraform = terraform_for(state, run, layout)?;
        let env = run_env(state, run, handed);
        let record = pgid_recorder(layout.pgid.clone());
        let ctx =
            invocation(layout, &env, tx, cancel, state.config.terraform_grace, &record, handed.redactor.as_deref());
        pump(state, log, rx, terraform.apply(&ctx, &layout.plan)).await?;
        Ok::<_, Failure>(())
    }
    .await;
    match result {
        Ok(()) => {
            note(state, log, if run.destroy { "Destroyed." } else { "Applied." }).await;
            if let (Some(env), false) = (run.provisioned_env, run.destroy) {
                record_outputs(state, run, layout, log, handed, env).await;
            }
            Ending::to(RunStatus::Applied, RunPatch::default())
        }
        Err(Failure::Interrupted) => {
            let stopping = state.shutdown.is_cancelled();
            let why = if stopping {
                "plinth stopped while terraform was applying; check the state, then unlock the stack with `plinth runs unlock`"
            } else {
                "cancelled while applying; terraform stopped cleanly, so the state holds what it applied so far"
            };
            note(state, log, why).await;
            Ending::to(if stopping { RunStatus::Interrupted } else { RunStatus::Cancelled }, reason(why))
        }
        Err(Failure::Failed(why)) => failed(state, log, why).await,
    }
}

/// Keeps an environment's Terraform outputs in the catalog: sensitive ones as `(sensitive)`,
/// the rest masked like the log. A failure is noted, not fatal: the apply happened.
async fn record_outputs(state: &AppState, run: &Run, layout: &Layout, log: &mut RunLog, handed: &Handed, env: i64) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let outputs = async {
        let terraform = terraform_for(state, run, layout)?;
        let run_env = run_env(state, run, handed);
        let cancel = CancellationToken::new();
        let ctx = invocation(layout, &run_env, &tx, &cancel, state.config.terraform_grace, &|_| {}, None);
        terraform.outputs(&ctx).await.map_err(Failure::from)
    }
    .await;
    // `output -json` prints nothing but its command line to the channel; the values stay here.
    while let Ok(line) = rx.try_recv() {
        write_line(state, log, line).await;
    }
    match outputs {
        Ok(serde_json::Value::Object(all)) => {
            let mut kept = serde_json::Map::new();
            for (name, output) in all {
                let sensitive = output.get("sensitive").and_then(|s| s.as_bool()).unwrap_or(true);
                let value = match output.get("value") {
                    _ if sensitive => serde_json::Value::String("(sensitive)".into()),
                    Some(v) => mask_json(log, v),
                    None => serde_json::Value::Null,
                };
                kept.insert(name, value);
            }
            let count = kept.len();
            match state.store.set_environment_outputs(env, serde_json::Value::Object(kept), state.now()).await {
                Ok(()) => note(state, log, &format!("Recorded {count} output(s) in the catalog.")).await,
                Err(e) => note(state, log, &format!("Could not record the outputs: {e}")).await,
            }
        }
        Ok(_) => note(state, log, "terraform output gave no object; no outputs recorded.").await,
        Err(Failure::Failed(why)) => note(state, log, &format!("Could not read the outputs: {why}")).await,
        Err(Failure::Interrupted) => {}
    }
}

/// A JSON value with every string masked as the log masks lines.
fn mask_json(log: &RunLog, value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::String(s) => serde_json::Value::String(log.redact(s)),
        serde_json::Value::Array(items) => serde_json::Value::Array(items.iter().map(|v| mask_json(log, v)).collect()),
        serde_json::Value::Object(map) => {
            serde_json::Value::Object(map.iter().map(|(k, v)| (log.redact(k), mask_json(log, v))).collect())
        }
        other => other.clone(),
    }
}

fn invocation<'a>(
    layout: &'a Layout,
    env: &'a [(String, String)],
    tx: &'a mpsc::UnboundedSender<OutputLine>,
    cancel: &'a CancellationToken,
    grace: Duration,
    record: &'a (dyn Fn(u32) + Send + Sync),
    redactor: Option<&'a Redactor>,
) -> Invocation<'a> {
    Invocation { dir: &layout.stack, extra_env: env, output: tx, cancel, grace, on_spawn: Some(record), redactor }
}

/// Writes terraform's process group id where recovery finds it if the server dies.
fn pgid_recorder(path: PathBuf) -> impl Fn(u32) + Send + Sync {
    move |pgid| {
        if let Err(e) = std::fs::write(&path, pgid.to_string()) {
            tracing::warn!(file = %path.display(), error = %e, "Could not record terraform's process group.");
        }
    }
}

/// The Terraform driver for a run, with the base environment rooted in its workspace.
fn terraform_for(state: &AppState, run: &Run, layout: &Layout) -> Result<Terraform, Failure> {
    let env = base_env(&layout.home, &layout.tmp, &state.paths.plugin_cache)
        .map_err(|e| Failure::Failed(format!("could not prepare the run's environment: {e}")))?;
    Ok(Terraform::new(run.terraform.clone(), env))
}

/// What a run's Terraform sees besides the base environment: where plinth keeps local state,
/// what is running, and the secrets handed to it.
fn run_env(state: &AppState, run: &Run, handed: &Handed) -> Vec<(String, String)> {
    let mut env = vec![
        ("TF_VAR_plinth_state_dir".to_owned(), state.paths.state.display().to_string()),
        ("PLINTH_RUN".to_owned(), run.id.to_string()),
        ("PLINTH_STACK".to_owned(), run.stack.clone()),
        ("PLINTH_COMMIT".to_owned(), run.commit.clone()),
    ];
    if let Some(branch) = &run.branch {
        env.push(("PLINTH_BRANCH".to_owned(), branch.clone()));
    }
    if let Some(environment) = &run.environment {
        env.push(("PLINTH_ENVIRONMENT".to_owned(), environment.clone()));
    }
    env.extend(handed.env.iter().cloned());
    env
}

/// Runs one Terraform call while moving its output into the log as it arrives.
async fn pump<T>(
    state: &AppState,
    log: &mut RunLog,
    rx: &mut mpsc::UnboundedReceiver<OutputLine>,
    call: impl std::future::Future<Output = Result<T, TerraformError>>,
) -> Result<T, Failure> {
    tokio::pin!(call);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let result = loop {
        tokio::select! {
            biased;
            Some(line) = rx.recv() => write_line(state, log, line).await,
            result = &mut call => break result,
            _ = tick.tick() => log.flush().await,
        }
    };
    while let Ok(line) = rx.try_recv() {
        write_line(state, log, line).await;
    }
    log.flush().await;
    result.map_err(Failure::from)
}

async fn write_line(state: &AppState, log: &mut RunLog, line: OutputLine) {
    let stream = match line.stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    };
    log.line(stream, &line.text, state.now()).await;
}

/// Checkout, init, workspace, plan and show. `None` means no changes.
async fn plan_steps(
    state: &AppState,
    run: &Run,
    layout: &Layout,
    log: &mut RunLog,
    cancel: &CancellationToken,
    handed: &Handed,
) -> Result<Option<PlanSummary>, Failure> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (tx, rx) = (&tx, &mut rx);
    remove_workspace(state, run.id).await;
    if let Some(env) = run.provisioned_env {
        let kept = state.paths.env_source(env, &run.path);
        note(state, log, &format!("Copying the kept root of `{}` from {}.", run.stack, kept.display())).await;
        let files = crate::environments::copy_dir(&kept, &layout.checkout)
            .await
            .map_err(|e| Failure::Failed(format!("could not copy the environment's kept root: {e}")))?;
        note(state, log, &format!("Copied {files} files.")).await;
    } else {
        note(state, log, &format!("Checking out {} of `{}`.", short(&run.commit), run.stack)).await;
        let files = checkout(state, &run.commit, &run.stack, &layout.checkout)
            .await
            .map_err(|e| Failure::Failed(format!("could not check out the commit: {e}")))?;
        note(state, log, &format!("Checked out {files} files.")).await;
    }
    if !layout.stack.is_dir() {
        return Err(Failure::Failed(format!("directory `{}` is not in commit {}", run.path, short(&run.commit))));
    }
    if let Some(note_text) = keep_state_locally(state, &run.stack, &layout.stack).await.map_err(Failure::Failed)? {
        note(state, log, &note_text).await;
    }
    if cancel.is_cancelled() {
        return Err(Failure::Interrupted);
    }
    let terraform = terraform_for(state, run, layout)?;
    let env = run_env(state, run, handed);
    let record = pgid_recorder(layout.pgid.clone());
    let ctx = invocation(layout, &env, tx, cancel, state.config.terraform_grace, &record, handed.redactor.as_deref());
    pump(state, log, rx, terraform.init(&ctx)).await?;
    if let Some(workspace) = &run.workspace {
        pump(state, log, rx, terraform.select_workspace(&ctx, workspace)).await?;
    }
    let outcome = pump(state, log, rx, terraform.plan(&ctx, &layout.plan, run.destroy)).await?;
    if outcome == PlanOutcome::NoChanges {
        return Ok(None);
    }
    let summary = pump(state, log, rx, terraform.show_plan(&ctx, &layout.plan)).await?;
    Ok(Some(summary))
}

/// Writes the commit's files into the run's workspace, from git objects.
/// Writes what a run of `stack` needs of `commit` under `dest`: the paths change detection
/// watches for it (see [`plinth_core::inputs`]), so the cost follows the stack, not the repo.
/// Returns the number of files written.
pub async fn checkout(state: &AppState, commit: &str, stack: &str, dest: &Path) -> Result<u64, String> {
    let git_dir = state.mirror.git_dir().to_path_buf();
    let (commit, stack, dest) = (commit.to_owned(), stack.to_owned(), dest.to_path_buf());
    tokio::task::spawn_blocking(move || -> Result<u64, String> {
        let repo = Repo::discover(&git_dir).map_err(|e| e.to_string())?;
        let id = repo.resolve(&commit).map_err(|e| e.to_string())?;
        let tree = repo.tree(Some(id)).map_err(|e| e.to_string())?;
        let text = tree
            .read_file(CONFIG_FILE)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("there is no {CONFIG_FILE} at {}", short(&commit)))?;
        let text = String::from_utf8(text).map_err(|_| format!("{CONFIG_FILE} is not UTF-8"))?;
        let (config, _) = Config::parse(CONFIG_FILE, &text).map_err(|d| d.to_string())?;
        let resolver = plinth_core::config::Resolver::new(&config, &tree).map_err(|e| e.to_string())?;
        let site = resolver
            .site_named(&stack)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{CONFIG_FILE} at {} defines no stack `{stack}`", short(&commit)))?;
        let found = resolver.stack(&site).map_err(|e| e.to_string())?;
        let paths = plinth_core::inputs::run_paths(&tree, &config, &found).map_err(|e| e.to_string())?;
        tree.export_paths(&dest, &paths).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("the checkout task failed: {e}"))?
}

/// When a stack configures no backend, Terraform would keep its state in the working
/// directory, which plinth deletes after the run. plinth then points a local backend at its
/// own state directory instead, through an override file, so state survives between runs.
pub async fn keep_state_locally(state: &AppState, stack: &str, stack_dir: &Path) -> Result<Option<String>, String> {
    let mut files = Vec::new();
    let mut entries = tokio::fs::read_dir(stack_dir).await.map_err(|e| format!("reading the stack: {e}"))?;
    while let Ok(Some(entry)) = entries.next_entry().await {
        let name = entry.file_name().to_string_lossy().into_owned();
        if plinth_core::modules::is_terraform_file(&name) {
            let bytes = tokio::fs::read(entry.path()).await.map_err(|e| format!("reading {name}: {e}"))?;
            files.push((name, bytes));
        }
    }
    if declares_backend(&files) {
        return Ok(None);
    }
    let dir = state.paths.state.join(state_dir_name(stack));
    tokio::fs::create_dir_all(&dir).await.map_err(|e| format!("creating the state dir: {e}"))?;
    let path = dir.join("terraform.tfstate").display().to_string();
    let workspaces = dir.join("workspaces").display().to_string();
    let config = serde_json::json!({"terraform": {"backend": {"local": {"path": path, "workspace_dir": workspaces}}}});
    let text = serde_json::to_string_pretty(&config).map_err(|e| e.to_string())?;
    tokio::fs::write(stack_dir.join("plinth_backend_override.tf.json"), text)
        .await
        .map_err(|e| format!("writing the backend override: {e}"))?;
    Ok(Some(format!("The stack configures no backend; plinth keeps its state in {}.", dir.display())))
}

/// The parsed plinth.toml at a commit.
pub async fn config_at(state: &AppState, commit: &str) -> Result<Config, String> {
    // The policy asks for the main branch's config many times per poll; it rarely changes.
    if let Some((at, config)) = state.config_cache.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
        && at == commit
    {
        return Ok(config.clone());
    }
    let git_dir = state.mirror.git_dir().to_path_buf();
    let commit = commit.to_owned();
    let key = commit.clone();
    let parsed = tokio::task::spawn_blocking(move || {
        let repo = Repo::discover(&git_dir).map_err(|e| e.to_string())?;
        let id = repo.resolve(&commit).map_err(|e| e.to_string())?;
        let tree = repo.tree(Some(id)).map_err(|e| e.to_string())?;
        let bytes =
            tree.read_file(CONFIG_FILE).map_err(|e| e.to_string())?.ok_or_else(|| format!("no {CONFIG_FILE}"))?;
        let text = String::from_utf8(bytes).map_err(|_| format!("{CONFIG_FILE} is not UTF-8"))?;
        Config::parse(CONFIG_FILE, &text).map(|(c, _)| c).map_err(|d| d.to_string())
    })
    .await
    .map_err(|e| format!("reading the config failed: {e}"))?;
    if let Ok(config) = &parsed {
        *state.config_cache.lock().unwrap_or_else(|e| e.into_inner()) = Some((key, config.clone()));
    }
    parsed
}

/// Why a planned run must not apply now, if it must not: its branch moved to a commit that
/// changes the stack again, or no longer contains the run's commit. Checked against a fresh
/// fetch, right before applying.
pub async fn staleness(state: &AppState, run: &Run) -> Option<String> {
    let branch = run.branch.clone()?;
    if let Err(e) = crate::watcher::fetch_since(state, std::time::Instant::now()).await {
        tracing::warn!(run = run.id, error = %e, "Could not fetch before applying; comparing with the last fetched state.");
    }
    let head = match state.mirror.branches().await {
        Ok(branches) => match branches.get(&branch) {
            Some(head) => head.clone(),
            None => return Some(format!("branch `{branch}` no longer exists")),
        },
        Err(e) => return Some(format!("could not read branch `{branch}`: {e}")),
    };
    if head == run.commit {
        return None;
    }
    match state.mirror.is_ancestor(&run.commit, &head).await {
        Ok(true) => {}
        Ok(false) => {
            return Some(format!(
                "branch `{branch}` moved to {}, which does not contain commit {}",
                short(&head),
                short(&run.commit)
            ));
        }
        Err(e) => return Some(format!("could not compare with branch `{branch}`: {e}")),
    }
    let git_dir = state.mirror.git_dir().to_path_buf();
    let cache = ModuleCache::at(state.paths.module_cache.clone());
    let (base, stack, head_for_task) = (run.commit.clone(), run.stack.clone(), head.clone());
    let changed = tokio::task::spawn_blocking(move || -> Result<bool, String> {
        let repo = Repo::discover(&git_dir).map_err(|e| e.to_string())?;
        let options = ChangedOptions { base, head: head_for_task, with_dependents: false, cache };
        let report = plinth_git::changed(&repo, &options).map_err(|e| e.to_string())?;
        Ok(report.stacks.iter().any(|s| s.stack.name == stack))
    })
    .await;
    match changed {
        Ok(Ok(false)) => None,
        Ok(Ok(true)) => Some(format!(
            "newer commits on `{branch}` (up to {}) change `{}` too; their run supersedes this plan",
            short(&head),
            run.stack
        )),
        Ok(Err(e)) => Some(format!("could not check the newer commits on `{branch}`: {e}")),
        Err(e) => Some(format!("the staleness check failed: {e}")),
    }
}

pub fn short(sha: &str) -> &str {
    sha.get(..10).unwrap_or(sha)
}
