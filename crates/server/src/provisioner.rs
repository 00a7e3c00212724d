//! The provisioner: carries out environment requests (create, update, destroy), one at a time
//! per target account (S4.5), oldest first, through the same runs as every stack: a run plans
//! and applies the environment's kept root under the policy of the template's environment.
//!
//! A create renders the kept root, then runs init, plan and apply, and stops at the first
//! failure (S4.4). When the apply fails, a destroy of that root runs at once (approved by
//! plinth: it puts things back as they were), and the environment ends `failed` with nothing
//! left behind, or `cleanup_failed` if the destroy failed too. Each request remembers its runs,
//! so a request a stopped server left running picks up where it was on the next start.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use plinth_core::environment::{EnvStatus, Pending, RequestKind, RequestStatus, startable};
use plinth_core::run::{Run, RunMode, RunStatus, lock_key};
use plinth_core::template::Value;
use plinth_store::{EnvPatch, EnvRecord, EnvRequest, NewEvent, NewRun};
use tokio_util::task::TaskTracker;

use crate::state::AppState;

/// The requests this process is carrying out.
#[derive(Debug, Default)]
pub struct Provisioner {
    active: Mutex<HashSet<i64>>,
}

impl Provisioner {
    fn claim(&self, id: i64) -> bool {
        self.active.lock().unwrap_or_else(|e| e.into_inner()).insert(id)
    }

    fn release(&self, id: i64) {
        self.active.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }
}

/// Starts requests as their accounts free up, until the server stops.
pub async fn run(state: AppState, tracker: TaskTracker) {
    loop {
        if let Err(e) = tick(&state, &tracker).await {
            tracing::warn!(error = %e, "Could not read the environment requests; trying again.");
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = state.wake_provisioner.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

async fn tick(state: &AppState, tracker: &TaskTracker) -> Result<(), plinth_store::StoreError> {
    let pending = state.store.unfinished_environment_requests().await?;
    // Requests left running by a previous process go on where they were.
    let mut go: Vec<EnvRequest> = pending.iter().filter(|r| r.status == RequestStatus::Running).cloned().collect();
    let queue: Vec<Pending> =
        pending.iter().map(|r| Pending { id: r.id, account: r.account.clone(), status: r.status }).collect();
    for id in startable(&queue) {
        if let Some(r) = state.store.move_environment_request(id, RequestStatus::Running, None, state.now()).await? {
            go.push(r);
        }
    }
    for request in go {
        if state.shutdown.is_cancelled() || !state.provisioner.claim(request.id) {
            continue;
        }
        let task_state = state.clone();
        tracker.spawn(async move {
            let id = request.id;
            carry_out(&task_state, request).await;
            task_state.provisioner.release(id);
            task_state.wake_provisioner.notify_one();
        });
    }
    Ok(())
}

/// How a request ended, for the request log.
struct Outcome {
    status: RequestStatus,
    text: String,
}

impl Outcome {
    fn ok(text: impl Into<String>) -> Self {
        Outcome { status: RequestStatus::Succeeded, text: text.into() }
    }

    fn failed(text: impl Into<String>) -> Self {
        Outcome { status: RequestStatus::Failed, text: text.into() }
    }
}

/// The server stopped while the request waited; it goes on after the next start.
struct Stopping;

async fn carry_out(state: &AppState, request: EnvRequest) {
    let env = match state.store.environment_by_id(request.environment_id).await {
        Ok(Some(env)) => env,
        Ok(None) => {
            finish(state, &request, Outcome::failed("the environment is gone")).await;
            return;
        }
        Err(e) => {
            tracing::warn!(request = request.id, error = %e, "Could not read the environment; trying again later.");
            return;
        }
    };
    tracing::info!(request = request.id, environment = %env.name, kind = request.kind.as_str(), "Carrying out an environment request.");
    let outcome = match request.kind {
        RequestKind::Create => create(state, &request, env).await,
        RequestKind::Update => update(state, &request, env).await,
        RequestKind::Destroy => destroy(state, &request, env).await,
    };
    match outcome {
        Ok(outcome) => finish(state, &request, outcome).await,
        Err(Stopping) => {
            tracing::info!(request = request.id, "plinth is stopping; the request goes on after the next start.")
        }
    }
}

async fn finish(state: &AppState, request: &EnvRequest, outcome: Outcome) {
    tracing::info!(request = request.id, environment = %request.environment, status = %outcome.status, outcome = %outcome.text, "Environment request ended.");
    // The branch of kept roots first, so that a request that has ended has nothing left to do.
    let message = format!(
        "{} {}: {}\n\nplinth request #{} by {}, template {}: {}",
        request.kind.as_str(),
        request.environment,
        outcome.status,
        request.id,
        request.requested_by,
        request.template,
        outcome.text
    );
    crate::environments::publish(state, request.environment_id, &message).await;
    let runs = match state
        .store
        .move_environment_request(request.id, outcome.status, Some(outcome.text.clone()), state.now())
        .await
    {
        Ok(Some(ended)) => ended.runs,
        Ok(None) => request.runs.clone(),
        Err(e) => {
            tracing::error!(request = request.id, error = %e, "Could not record how the request ended.");
            request.runs.clone()
        }
    };
    let entry = plinth_store::NewAudit {
        actor: "plinth".into(),
        action: format!(
            "environment.{}.{}",
            request.kind.as_str(),
            if outcome.status == RequestStatus::Succeeded { "done" } else { "failed" }
        ),
        object: format!("environment/{}", request.environment),
        result: outcome.status.as_str().to_owned(),
        details: serde_json::json!({"request": request.id, "requested_by": request.requested_by, "outcome": outcome.text, "runs": runs}),
    };
    if let Err(e) = state.store.append_audit(entry, state.now()).await {
        tracing::error!(request = request.id, error = %e, "Could not audit the end of a request.");
    }
}

/// Moves the environment, reading it again if someone else moved it meanwhile.
async fn set(state: &AppState, env: &EnvRecord, to: EnvStatus, patch: EnvPatch) -> EnvRecord {
    match state.store.move_environment(env.id, to, patch, state.now()).await {
        Ok(Some(moved)) => moved,
        Ok(None) => {
            tracing::warn!(environment = %env.name, from = %env.status, to = %to, "The environment had moved on; not moving it.");
            state.store.environment_by_id(env.id).await.ok().flatten().unwrap_or_else(|| env.clone())
        }
        Err(e) => {
            tracing::error!(environment = %env.name, error = %e, to = %to, "Could not record the environment's status.");
            env.clone()
        }
    }
}

fn reason(text: impl Into<String>) -> EnvPatch {
    EnvPatch { reason: Some(text.into()), ..Default::default() }
}

/// The request's checked values, typed for the module.
fn values_of(params: &serde_json::Value) -> Vec<(String, Value)> {
    let Some(map) = params.as_object() else { return Vec::new() };
    map.iter()
        .filter_map(|(k, v)| {
            let value = match v {
                serde_json::Value::String(s) => Value::String(s.clone()),
                serde_json::Value::Bool(b) => Value::Bool(*b),
                serde_json::Value::Number(n) => Value::Int(n.as_i64()?),
                _ => return None,
            };
            Some((k.clone(), value))
        })
        .collect()
}

/// Makes the run of a request (the apply, a destroy, or the cleanup), records it on the
/// request, and wakes the scheduler.
async fn new_run(
    state: &AppState,
    request: &EnvRequest,
    env: &EnvRecord,
    destroy: bool,
    approved_by: Option<String>,
    why: &str,
) -> Result<i64, String> {
    let stack = env.stack();
    let event = NewEvent {
        branch: None,
        commit: env.template_commit.clone(),
        trigger: "request".into(),
        created_by: request.requested_by.clone(),
        note: Some(format!("{why} (request #{} for environment `{}`)", request.id, env.name)),
        advance_ref: None,
        supersede: false,
    };
    let run = NewRun {
        lock_key: lock_key(&stack, env.workspace.as_deref()),
        stack,
        path: String::new(),
        workspace: env.workspace.clone(),
        environment: Some(env.policy_environment.clone()),
        terraform: env.terraform.clone(),
        mode: RunMode::Apply,
        wave: 1,
        waits_for: Vec::new(),
        destroy,
        provisioned_env: Some(env.id),
        approved_by,
    };
    let recorded = state.store.record_event(event, vec![run], state.now()).await.map_err(|e| e.to_string())?;
    let id = recorded.runs.first().map(|r| r.id).ok_or("the run was not recorded")?;
    state.store.add_request_run(request.id, id).await.map_err(|e| e.to_string())?;
    state.wake_scheduler.notify_one();
    Ok(id)
}

/// Waits until a run has ended (for its mode).
async fn wait_run(state: &AppState, id: i64) -> Result<Run, Stopping> {
    let mut ended = state.run_ended.subscribe();
    loop {
        match state.store.run(id).await {
            Ok(Some(run)) if run.status.is_final(run.mode) => return Ok(run),
            Ok(Some(_)) => {}
            Ok(None) => tracing::error!(run = id, "A run of an environment request is gone."),
            Err(e) => tracing::warn!(run = id, error = %e, "Could not read a run; trying again."),
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => return Err(Stopping),
            _ = ended.recv() => {}
            // Runs also end without a runner: cancelled or rejected through the API.
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// A run's end in a sentence.
fn ended(run: &Run) -> String {
    let plan = run.plan.as_ref().map(|p| format!(" ({p})")).unwrap_or_default();
    match &run.reason {
        Some(r) => format!("run #{} {}{plan}: {r}", run.id, run.status),
        None => format!("run #{} {}{plan}", run.id, run.status),
    }
}

/// Whether a run that did not succeed may have changed something: it got past its plan and
/// then failed or was stopped, so its apply may have started.
fn may_have_applied(run: &Run) -> bool {
    run.plan.is_some() && matches!(run.status, RunStatus::Failed | RunStatus::Cancelled | RunStatus::Interrupted)
}

async fn create(state: &AppState, request: &EnvRequest, mut env: EnvRecord) -> Result<Outcome, Stopping> {
    if env.status == EnvStatus::Queued {
        env = set(state, &env, EnvStatus::Provisioning, EnvPatch::default()).await;
    }
    if env.status != EnvStatus::Provisioning {
        return Ok(Outcome::failed(format!("the environment is {}, not provisioning", env.status)));
    }
    let apply = match request.runs.first() {
        Some(id) => *id,
        None => {
            let made = async {
                let values = values_of(&request.params);
                crate::environments::write_kept_root(state, &env, &env.template, &env.template_commit, &values).await?;
                new_run(state, request, &env, false, None, "create").await
            }
            .await;
            match made {
                Ok(id) => id,
                Err(why) => {
                    let why = format!("could not generate the Terraform root: {why}");
                    set(state, &env, EnvStatus::Failed, reason(why.clone())).await;
                    return Ok(Outcome::failed(why));
                }
            }
        }
    };
    let run = wait_run(state, apply).await?;
    if run.status.is_success(run.mode) {
        crate::environments::forget_previous_root(state, env.id).await;
        set(state, &env, EnvStatus::Ready, EnvPatch::default()).await;
        state.deployer.wake();
        return Ok(Outcome::ok(format!("ready: {}", ended(&run))));
    }
    if run.status == RunStatus::Interrupted {
        let why = format!(
            "{}; plinth stopped while terraform was applying. Check the state, unlock with `plinth stacks unlock {}`, then `plinth env destroy {}`",
            ended(&run),
            env.stack(),
            env.name
        );
        set(state, &env, EnvStatus::CleanupFailed, reason(why.clone())).await;
        return Ok(Outcome::failed(why));
    }
    if !may_have_applied(&run) {
        let why = format!("nothing was made: {}", ended(&run));
        set(state, &env, EnvStatus::Failed, reason(why.clone())).await;
        return Ok(Outcome::failed(why));
    }
    // The apply failed part way: destroy what it made, at once.
    let cleanup = match request.runs.get(1) {
        Some(id) => Ok(*id),
        None => {
            new_run(
                state,
                request,
                &env,
                true,
                Some("plinth (cleanup of a failed apply)".into()),
                "cleanup after a failed apply",
            )
            .await
        }
    };
    let cleanup = match cleanup {
        Ok(id) => wait_run(state, id).await?,
        Err(e) => {
            let why = format!("{}; the cleanup could not start: {e}", ended(&run));
            set(state, &env, EnvStatus::CleanupFailed, reason(why.clone())).await;
            return Ok(Outcome::failed(why));
        }
    };
    if cleanup.status.is_success(cleanup.mode) {
        let why =
            format!("the apply failed and what it made was destroyed: {}; cleanup {}", ended(&run), ended(&cleanup));
        set(state, &env, EnvStatus::Failed, reason(why.clone())).await;
        Ok(Outcome::failed(why))
    } else {
        let why = format!(
            "the apply failed and so did its cleanup, so resources may be left: {}; cleanup {}. Fix the cause, then `plinth env destroy {}`",
            ended(&run),
            ended(&cleanup),
            env.name
        );
        set(state, &env, EnvStatus::CleanupFailed, reason(why.clone())).await;
        Ok(Outcome::failed(why))
    }
}

async fn update(state: &AppState, request: &EnvRequest, mut env: EnvRecord) -> Result<Outcome, Stopping> {
    if matches!(env.status, EnvStatus::Ready | EnvStatus::CleanupFailed) {
        env = set(state, &env, EnvStatus::Updating, EnvPatch::default()).await;
    }
    if env.status != EnvStatus::Updating {
        return Ok(Outcome::failed(format!(
            "the environment is {}; only a ready environment can be updated",
            env.status
        )));
    }
    let policy = crate::policy::current(state).await.ok();
    let commit = policy.as_ref().map(|p| p.commit.clone()).unwrap_or_else(|| env.template_commit.clone());
    let apply = match request.runs.first() {
        Some(id) => *id,
        None => {
            let made = async {
                let values = values_of(&request.params);
                crate::environments::write_kept_root(state, &env, &env.template, &commit, &values).await?;
                let mut at = env.clone();
                at.template_commit = commit.clone();
                new_run(state, request, &at, false, None, "update").await
            }
            .await;
            match made {
                Ok(id) => id,
                Err(why) => {
                    let _ = crate::environments::restore_previous_root(state, env.id).await;
                    let why = format!("could not generate the Terraform root: {why}");
                    set(state, &env, EnvStatus::Ready, reason(format!("the last update failed: {why}"))).await;
                    return Ok(Outcome::failed(why));
                }
            }
        }
    };
    let run = wait_run(state, apply).await?;
    if run.status.is_success(run.mode) {
        crate::environments::forget_previous_root(state, env.id).await;
        let patch =
            EnvPatch { reason: None, params: Some(request.params.clone()), template_commit: Some(run.commit.clone()) };
        set(state, &env, EnvStatus::Ready, patch).await;
        return Ok(Outcome::ok(format!("updated: {}", ended(&run))));
    }
    if let Err(e) = crate::environments::restore_previous_root(state, env.id).await {
        tracing::error!(environment = %env.name, error = %e, "Could not restore the previous kept root.");
    }
    let applied = may_have_applied(&run);
    let why = if applied {
        format!(
            "{}; part of the update may be applied. The kept root is back to the previous parameters: run `plinth env update {}` again, or destroy it",
            ended(&run),
            env.name
        )
    } else {
        format!("nothing changed: {}", ended(&run))
    };
    let to = if run.status == RunStatus::Interrupted { EnvStatus::CleanupFailed } else { EnvStatus::Ready };
    set(state, &env, to, reason(format!("the last update failed: {why}"))).await;
    Ok(Outcome::failed(why))
}

async fn destroy(state: &AppState, request: &EnvRequest, mut env: EnvRecord) -> Result<Outcome, Stopping> {
    match env.status {
        EnvStatus::Destroyed | EnvStatus::Failed => {
            return Ok(Outcome::ok(format!("nothing to destroy: the environment is {}", env.status)));
        }
        EnvStatus::Ready | EnvStatus::CleanupFailed | EnvStatus::DestroyFailed => {
            env = set(
                state,
                &env,
                EnvStatus::Destroying,
                reason(format!("destroy requested by {}", request.requested_by)),
            )
            .await;
        }
        _ => {}
    }
    if env.status != EnvStatus::Destroying {
        return Ok(Outcome::failed(format!("the environment is {}; it cannot be destroyed now", env.status)));
    }
    crate::deployer::retire_environment(state, &env).await;
    let run = match request.runs.first() {
        Some(id) => *id,
        None => match new_run(state, request, &env, true, None, "destroy").await {
            Ok(id) => id,
            Err(why) => {
                let why = format!("the destroy could not start: {why}");
                set(state, &env, EnvStatus::DestroyFailed, reason(why.clone())).await;
                return Ok(Outcome::failed(why));
            }
        },
    };
    let run = wait_run(state, run).await?;
    if run.status.is_success(run.mode) {
        let why = request
            .params
            .get("reason")
            .and_then(|r| r.as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| format!("destroyed at the request of {}", request.requested_by));
        set(state, &env, EnvStatus::Destroyed, reason(why)).await;
        return Ok(Outcome::ok(format!("destroyed: {}", ended(&run))));
    }
    let why =
        format!("{}; resources may be left. Fix the cause, then `plinth env destroy {}` again", ended(&run), env.name);
    set(state, &env, EnvStatus::DestroyFailed, reason(why.clone())).await;
    Ok(Outcome::failed(why))
}

/// The positions in their account's queue of the requests waiting.
pub fn queue_positions(pending: &[EnvRequest]) -> BTreeMap<i64, usize> {
    let queue: Vec<Pending> =
        pending.iter().map(|r| Pending { id: r.id, account: r.account.clone(), status: r.status }).collect();
    pending
        .iter()
        .filter(|r| r.status == RequestStatus::Queued)
        .map(|r| (r.id, plinth_core::environment::queue_position(&queue, r.id)))
        .collect()
}
