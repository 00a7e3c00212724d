//! Stacks: the list at the main branch's head, with locks and latest runs, and the admin's
//! unlocks: plinth's own lock after an interrupted apply, and Terraform's state lock.

use std::collections::HashMap;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use plinth_core::auth::Action;
use plinth_core::stack::StackJson;
use plinth_core::tree::Tree;
use plinth_core::{CONFIG_FILE, Loaded};
use plinth_git::Repo;
use plinth_store::UnlockOutcome;
use plinth_terraform::{Invocation, Terraform, base_env};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{AuditNote, JsonBody, noted};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// The config and stacks at the main branch's head.
async fn main_stacks(state: &AppState) -> Result<(String, Loaded), ApiError> {
    let branches = state.mirror.branches().await.map_err(|e| ApiError::from_error(&e))?;
    let no_config = || {
        ApiError::new(
            422,
            "config.not_found",
            "there is no readable plinth.toml on the main branch",
            "Commit a plinth.toml (`plinth init` writes one) to the main branch.",
        )
    };
    let main = crate::watcher::main_branch(state, &branches).await.ok_or_else(no_config)?;
    let head = branches.get(&main).cloned().ok_or_else(no_config)?;
    let git_dir = state.mirror.git_dir().to_path_buf();
    let commit = head.clone();
    let loaded = tokio::task::spawn_blocking(move || -> Result<Loaded, ApiError> {
        let repo = Repo::discover(&git_dir).map_err(|e| ApiError::from_error(&e))?;
        let id = repo.resolve(&commit).map_err(|e| ApiError::from_error(&e))?;
        let tree = repo.tree(Some(id)).map_err(|e| ApiError::from_error(&e))?;
        let bytes =
            tree.read_file(CONFIG_FILE).map_err(|e| ApiError::internal(e.to_string()))?.ok_or_else(no_config)?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Loaded::load(CONFIG_FILE, &text, &tree).map_err(|e| ApiError::from_error(&e))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok((head, loaded))
}

pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(&Action::Read, None)?;
    let (commit, loaded) = main_stacks(&state).await?;
    let locks: HashMap<String, plinth_store::Lock> =
        state.store.locks().await?.into_iter().map(|l| (l.lock_key.clone(), l)).collect();
    let latest: HashMap<String, plinth_core::run::Run> =
        state.store.latest_runs().await?.into_iter().map(|r| (r.stack.clone(), r)).collect();
    let stacks: Vec<serde_json::Value> = loaded
        .stacks
        .iter()
        .map(|stack| {
            let held: Vec<&plinth_store::Lock> = locks.values().filter(|l| l.stack == stack.name).collect();
            serde_json::json!({
                "stack": StackJson::new(stack, Some(&loaded.config.main_branch)),
                "locks": held,
                "latest_run": latest.get(&stack.name),
            })
        })
        .collect();
    Ok(axum::Json(serde_json::json!({"commit": commit, "main_branch": loaded.config.main_branch, "stacks": stacks}))
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnlockRequest {
    stack: String,
    /// Release Terraform's own state lock with this ID (`terraform force-unlock`), instead of
    /// plinth's lock.
    state_lock: Option<String>,
    /// The Terraform workspace whose state lock to release; the default workspace otherwise.
    workspace: Option<String>,
}

pub async fn unlock(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<UnlockRequest>,
) -> Result<Response, ApiError> {
    let action = if request.state_lock.is_some() { "stack.force_unlock_state" } else { "stack.unlock" };
    let note = AuditNote::new(action, format!("stack/{}", request.stack))
        .details(serde_json::json!({"state_lock": request.state_lock, "workspace": request.workspace}));
    let result = async {
        caller.require(&Action::Unlock, None)?;
        if !plinth_core::config::is_stack_name(&request.stack) {
            return Err(ApiError::bad_request(
                "stack.bad_name",
                format!("`{}` is not a stack name", request.stack),
                "List stacks with `plinth stacks list`.",
            ));
        }
        match &request.state_lock {
            None => unlock_plinth(&state, &request.stack).await,
            Some(lock_id) => force_unlock_state(&state, &request.stack, request.workspace.as_deref(), lock_id).await,
        }
    }
    .await;
    Ok(noted(note, result.unwrap_or_else(IntoResponse::into_response)))
}

async fn unlock_plinth(state: &AppState, stack: &str) -> Result<Response, ApiError> {
    match state.store.unlock_stack(stack).await? {
        UnlockOutcome::Unlocked(locks) => {
            tracing::warn!(stack, locks = locks.len(), "An admin unlocked a stack after an interrupted apply.");
            state.wake_scheduler.notify_one();
            Ok(axum::Json(serde_json::json!({"unlocked": locks})).into_response())
        }
        UnlockOutcome::Busy(lock) => Err(ApiError::conflict(
            "stack.busy",
            format!("run #{} holds the lock of `{stack}` and has not ended ({})", lock.run_id, lock.reason),
            "Only locks of interrupted applies are released by hand; cancel the run, or wait for it.",
        )),
        UnlockOutcome::NotLocked => Err(ApiError::conflict(
            "stack.not_locked",
            format!("`{stack}` is not locked"),
            "There is nothing to unlock.",
        )),
    }
}

/// Runs `terraform force-unlock` for the stack as of the main branch's head, in a workspace of
/// its own. The output comes back in the response.
async fn force_unlock_state(
    state: &AppState,
    stack: &str,
    workspace: Option<&str>,
    lock_id: &str,
) -> Result<Response, ApiError> {
    if lock_id.is_empty()
        || lock_id.len() > 200
        || !lock_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ApiError::bad_request(
            "stack.bad_lock_id",
            format!("`{lock_id}` is not a lock ID"),
            "Copy the lock ID from terraform's error in the run's log.",
        ));
    }
    let scratch = tempfile_dir(&state.paths.workspaces, "unlock-")?;
    let dir = scratch.join(plinth_core::stack::state_dir_name(stack));
    let checkout = dir.join("checkout");
    // An environment made on request works from its kept root; a stack of the repo from the
    // main branch's head.
    let made = match stack.strip_prefix("env/") {
        Some(name) => state.store.environment(name).await?.filter(|e| e.status.is_live()),
        None => None,
    };
    let (stack_dir, binary, environment, workspace, commit) = match &made {
        Some(env) => {
            crate::environments::copy_dir(&state.paths.kept_root(env.id), &checkout)
                .await
                .map_err(ApiError::internal)?;
            let workspace = workspace.map(str::to_owned).or_else(|| env.workspace.clone());
            let commit = env.template_commit.clone();
            (checkout.clone(), env.terraform.clone(), Some(env.policy_environment.clone()), workspace, commit)
        }
        None => {
            let (commit, loaded) = main_stacks(state).await?;
            let Some(found) = loaded.stacks.get(stack).cloned() else {
                return Err(ApiError::not_found(
                    "stack.not_found",
                    format!("there is no stack `{stack}` on the main branch"),
                    "List stacks with `plinth stacks list`.",
                ));
            };
            crate::runner::checkout(state, &commit, stack, &checkout).await.map_err(ApiError::internal)?;
            let stack_dir = if found.dir.is_empty() { checkout.clone() } else { checkout.join(&found.dir) };
            crate::runner::keep_state_locally(state, stack, &stack_dir).await.map_err(ApiError::internal)?;
            (stack_dir, found.terraform.clone(), found.environment.clone(), workspace.map(str::to_owned), commit)
        }
    };
    let workspace = workspace.as_deref();
    let env = base_env(&dir.join("home"), &dir.join("tmp"), &state.paths.plugin_cache)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let terraform = Terraform::new(binary, env);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    // The backend may need credentials to release its lock: the stack's secrets, as a run on
    // the main branch would get them.
    let main = crate::policy::current(state).await.map(|p| p.config.main_branch).ok();
    let to = crate::secrets::Recipient {
        stack,
        environment: environment.as_deref(),
        branch: main.as_deref(),
        object: format!("stack/{stack}/force-unlock"),
        on_request: made.is_some(),
    };
    let handed = crate::secrets::hand(state, &to, "force-unlock").await.map_err(ApiError::internal)?;
    let mut extra = vec![("TF_VAR_plinth_state_dir".to_owned(), state.paths.state.display().to_string())];
    extra.extend(handed.env.iter().cloned());
    let ctx = Invocation {
        dir: &stack_dir,
        extra_env: &extra,
        output: &tx,
        redactor: handed.redactor.as_deref(),
        cancel: &cancel,
        grace: state.config.terraform_grace,
        on_spawn: None,
    };
    let result = async {
        terraform.init(&ctx).await?;
        if let Some(ws) = workspace {
            terraform.select_workspace(&ctx, ws).await?;
        }
        terraform.force_unlock(&ctx, lock_id).await
    }
    .await;
    drop(tx);
    let mut output = Vec::new();
    while let Some(line) = rx.recv().await {
        output.push(line.text);
    }
    let _ = tokio::fs::remove_dir_all(&scratch).await;
    match result {
        Ok(()) => {
            tracing::warn!(stack, lock_id, "An admin released terraform's state lock.");
            Ok(axum::Json(serde_json::json!({"released": lock_id, "commit": commit, "output": output})).into_response())
        }
        Err(e) => {
            let mut error = ApiError::from_error(&e);
            error.message = format!("{}; terraform said: {}", error.message, output.join(" | "));
            Err(error)
        }
    }
}

/// A new directory with a random name under `parent`, for one-off work.
fn tempfile_dir(parent: &std::path::Path, prefix: &str) -> Result<std::path::PathBuf, ApiError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::internal(e.to_string()))?;
    let dir = parent.join(format!("{prefix}{}", hex::encode(bytes)));
    std::fs::create_dir_all(&dir).map_err(|e| ApiError::internal(format!("creating {}: {e}", dir.display())))?;
    Ok(dir)
}
