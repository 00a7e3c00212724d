//! Runs: listing, showing, logs (stored and live), approving, rejecting, cancelling, and plans
//! asked for by hand.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use plinth_core::auth::Action;
use plinth_core::run::{Run, RunMode, RunStatus};
use plinth_store::{LogLine, RunFilter, RunPatch};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};

use super::{AuditNote, JsonBody, PathParam, QueryParams, accepted, noted};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::logs::Live;
use crate::runner::{remove_workspace, staleness};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    stack: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
    before: Option<i64>,
    event: Option<i64>,
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Response, ApiError> {
    caller.require(&Action::Read, None)?;
    let status = match &query.status {
        Some(s) => Some(
            s.parse::<RunStatus>()
                .map_err(|e| ApiError::bad_request("run.bad_status", e, "Pass one of the statuses listed."))?,
        ),
        None => None,
    };
    let filter = RunFilter {
        stack: query.stack.clone(),
        status,
        event_id: query.event,
        before: query.before,
        limit: query.limit,
    };
    let runs = state.store.runs(&filter).await?;
    Ok(axum::Json(serde_json::json!({"runs": runs})).into_response())
}

/// Parses a run id from the path.
fn run_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        ApiError::bad_request(
            "run.bad_id",
            format!("`{raw}` is not a run id"),
            "Run ids are positive numbers, as `plinth runs list` shows.",
        )
    })
}

async fn load(state: &AppState, raw: &str) -> Result<Run, ApiError> {
    let id = run_id(raw)?;
    state.store.run(id).await?.ok_or_else(|| {
        ApiError::not_found("run.not_found", format!("there is no run #{id}"), "List runs with `plinth runs list`.")
    })
}

pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam,
) -> Result<Response, ApiError> {
    caller.require(&Action::Read, None)?;
    let run = load(&state, &id).await?;
    Ok(axum::Json(run).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Only lines after this sequence number.
    after: Option<u64>,
    /// Keep the response open and stream new lines until the run ends or waits for approval.
    follow: Option<bool>,
    /// `text` (default) or `jsonl`.
    format: Option<String>,
}

fn render(line: &LogLine, jsonl: bool) -> Bytes {
    if jsonl {
        let mut text = serde_json::to_string(line).unwrap_or_default();
        text.push('\n');
        Bytes::from(text)
    } else if line.stream == "plinth" {
        Bytes::from(format!("plinth: {}\n", line.text))
    } else {
        Bytes::from(format!("{}\n", line.text))
    }
}

/// Whether a follower has seen everything it will get.
fn follow_over(run: &Run) -> bool {
    run.status.is_final(run.mode) || run.status == RunStatus::AwaitingApproval
}

pub async fn logs(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam,
    QueryParams(query): QueryParams<LogsQuery>,
) -> Result<Response, ApiError> {
    caller.require(&Action::Read, None)?;
    let run = load(&state, &id).await?;
    let jsonl = match query.format.as_deref() {
        None | Some("text") => false,
        Some("jsonl") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "logs.bad_format",
                format!("`{other}` is not a log format"),
                "Use `text` or `jsonl`.",
            ));
        }
    };
    let follow = query.follow.unwrap_or(false);
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let after = query.after.unwrap_or(0);
    tokio::spawn(stream_logs(state, run.id, after, follow, jsonl, tx));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|bytes| (Ok::<_, std::convert::Infallible>(bytes), rx))
    });
    let content_type = if jsonl { "application/x-ndjson" } else { "text/plain; charset=utf-8" };
    Ok(([(axum::http::header::CONTENT_TYPE, content_type)], Body::from_stream(stream)).into_response())
}

/// Sends stored lines, then live ones while following. Stops when the client goes away.
async fn stream_logs(state: AppState, id: i64, mut after: u64, follow: bool, jsonl: bool, tx: mpsc::Sender<Bytes>) {
    // Subscribe before reading the store, so that no line falls in between.
    let mut live = if follow { state.logs.subscribe(id) } else { None };
    loop {
        let lines = match state.store.logs(id, after, 1000).await {
            Ok(lines) => lines,
            Err(e) => {
                tracing::warn!(run = id, error = %e, "Could not read run output for a follower.");
                return;
            }
        };
        if lines.is_empty() {
            break;
        }
        for line in &lines {
            if tx.send(render(line, jsonl)).await.is_err() {
                return;
            }
            after = line.seq;
        }
    }
    if !follow {
        return;
    }
    loop {
        match &mut live {
            Some(receiver) => match receiver.recv().await {
                Ok(Live::Line(line)) if line.seq > after => {
                    // Lines broadcast before we subscribed, and not stored yet when we read the
                    // store, fill the gap once they are stored (within a flush interval).
                    if line.seq > after + 1 && !fill_gap(&state, id, &mut after, line.seq, jsonl, &tx).await {
                        return;
                    }
                    if line.seq > after {
                        after = line.seq;
                        if tx.send(render(&line, jsonl)).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(Live::Line(_)) => {}
                Ok(Live::End) | Err(broadcast::error::RecvError::Closed) => live = None,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Too slow for the live feed: catch up from the store.
                    if !catch_up(&state, id, &mut after, jsonl, &tx).await {
                        return;
                    }
                }
            },
            None => {
                if !catch_up(&state, id, &mut after, jsonl, &tx).await {
                    return;
                }
                match state.store.run(id).await {
                    Ok(Some(run)) if follow_over(&run) => {
                        // Lines written just before the status changed.
                        let _ = catch_up(&state, id, &mut after, jsonl, &tx).await;
                        return;
                    }
                    Ok(Some(_)) => {}
                    _ => return,
                }
                // Queued, or between phases: wait for a runner to start writing.
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
                live = state.logs.subscribe(id);
            }
        }
    }
}

/// Sends the stored lines before `upto`, waiting for the run's log to store them; false when
/// the client has gone.
async fn fill_gap(
    state: &AppState,
    id: i64,
    after: &mut u64,
    upto: u64,
    jsonl: bool,
    tx: &mpsc::Sender<Bytes>,
) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if !catch_up(state, id, after, jsonl, tx).await {
            return false;
        }
        if *after + 1 >= upto || tokio::time::Instant::now() >= deadline {
            return true;
        }
        tokio::select! {
            _ = tx.closed() => return false,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// Sends stored lines after `after`; false when the client has gone.
async fn catch_up(state: &AppState, id: i64, after: &mut u64, jsonl: bool, tx: &mpsc::Sender<Bytes>) -> bool {
    loop {
        let Ok(lines) = state.store.logs(id, *after, 1000).await else { return false };
        if lines.is_empty() {
            return true;
        }
        for line in &lines {
            if tx.send(render(line, jsonl)).await.is_err() {
                return false;
            }
            *after = line.seq;
        }
    }
}

/// Checks that the caller may approve or reject this run, under the main branch's policy (a
/// branch cannot name its own approvers).
async fn require_approver(state: &AppState, caller: &Caller, run: &Run) -> Result<(), ApiError> {
    let policy = crate::policy::current(state).await.map_err(|e| {
        ApiError::new(
            500,
            "run.policy_unreadable",
            format!("cannot read the policy: {e}"),
            "Fix plinth.toml on the main branch; an admin token can approve meanwhile.",
        )
    });
    let action = Action::Approve { environment: run.environment.clone() };
    match policy {
        Ok(policy) => caller.require(&action, Some(&policy.config)),
        Err(e) if caller.roles.iter().any(|r| r == plinth_core::auth::ADMIN) => {
            tracing::warn!(error = %e.message, "Approving as admin without a readable policy.");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn not_awaiting(run: &Run) -> ApiError {
    ApiError::conflict(
        "run.not_awaiting_approval",
        format!("run #{} is {}, not awaiting approval", run.id, run.status),
        "Only runs in `awaiting_approval` can be approved or rejected; see `plinth runs show`.",
    )
}

/// What approve and reject share: the caller may read, the run exists, the caller may approve
/// in its environment, and it waits for approval.
async fn awaiting_run(state: &AppState, caller: &Caller, id: &str, note: &mut AuditNote) -> Result<Run, ApiError> {
    caller.require(&Action::Read, None)?;
    let run = load(state, id).await?;
    note.details = serde_json::json!({"stack": run.stack, "environment": run.environment});
    require_approver(state, caller, &run).await?;
    if run.status != RunStatus::AwaitingApproval {
        return Err(not_awaiting(&run));
    }
    Ok(run)
}

pub async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam,
) -> Result<Response, ApiError> {
    let mut note = AuditNote::new("run.approve", format!("run/{id}"));
    let result = async {
        let run = awaiting_run(&state, &caller, &id, &mut note).await?;
        if let Some(why) = staleness(&state, &run).await {
            let patch = RunPatch { reason: Some(why.clone()), ..Default::default() };
            state.store.transition(run.id, RunStatus::Stale, patch, state.now()).await?;
            remove_workspace(&state, run.id).await;
            state.wake_scheduler.notify_one();
            return Err(ApiError::conflict(
                "run.stale",
                format!("run #{} is stale: {why}", run.id),
                "Approve the newer run instead; `plinth runs list --stack` shows it.",
            ));
        }
        let patch = RunPatch { approved_by: Some(caller.name.clone()), ..Default::default() };
        let updated = state
            .store
            .transition(run.id, RunStatus::Applying, patch, state.now())
            .await?
            .ok_or_else(|| not_awaiting(&run))?;
        state.wake_scheduler.notify_one();
        Ok(accepted(serde_json::to_value(&updated).unwrap_or_default()))
    }
    .await;
    Ok(noted(note, result.unwrap_or_else(IntoResponse::into_response)))
}

pub async fn reject(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam,
) -> Result<Response, ApiError> {
    let mut note = AuditNote::new("run.reject", format!("run/{id}"));
    let result = async {
        let run = awaiting_run(&state, &caller, &id, &mut note).await?;
        let patch = RunPatch { reason: Some(format!("rejected by {}", caller.name)), ..Default::default() };
        let updated = state
            .store
            .transition(run.id, RunStatus::Rejected, patch, state.now())
            .await?
            .ok_or_else(|| not_awaiting(&run))?;
        remove_workspace(&state, run.id).await;
        state.wake_scheduler.notify_one();
        Ok::<_, ApiError>(axum::Json(updated).into_response())
    }
    .await;
    Ok(noted(note, result.unwrap_or_else(IntoResponse::into_response)))
}

pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam,
) -> Result<Response, ApiError> {
    let mut note = AuditNote::new("run.cancel", format!("run/{id}"));
    let result = async {
        caller.require(&Action::Read, None)?;
        let run = load(&state, &id).await?;
        note = note.clone().details(serde_json::json!({"stack": run.stack, "status": run.status}));
        caller.require(&Action::Cancel { own: run.created_by == caller.name }, None)?;
        match run.status {
            RunStatus::Queued | RunStatus::AwaitingApproval => {
                let patch = RunPatch { reason: Some(format!("cancelled by {}", caller.name)), ..Default::default() };
                let updated = state
                    .store
                    .transition(run.id, RunStatus::Cancelled, patch, state.now())
                    .await?
                    .ok_or_else(|| finished(&run))?;
                remove_workspace(&state, run.id).await;
                state.wake_scheduler.notify_one();
                Ok(axum::Json(updated).into_response())
            }
            status if status.is_active() || (status == RunStatus::Planned && run.mode == RunMode::Apply) => {
                match state.running_token(run.id) {
                    Some(token) => {
                        token.cancel();
                        Ok(accepted(serde_json::json!({"id": run.id, "status": run.status, "cancelling": true})))
                    }
                    None => Err(ApiError::conflict(
                        "run.not_running",
                        format!("run #{} is {} but no terraform is running for it", run.id, run.status),
                        "Wait a moment and look again with `plinth runs show`.",
                    )),
                }
            }
            _ => Err(finished(&run)),
        }
    }
    .await;
    Ok(noted(note, result.unwrap_or_else(IntoResponse::into_response)))
}

fn finished(run: &Run) -> ApiError {
    ApiError::conflict(
        "run.finished",
        format!("run #{} has already ended ({})", run.id, run.status),
        "There is nothing to cancel.",
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    /// A branch, tag or commit.
    #[serde(rename = "ref")]
    rev: String,
    /// Plan this stack only; otherwise every stack the revision changes against the main
    /// branch.
    stack: Option<String>,
}

pub async fn plan(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<PlanRequest>,
) -> Result<Response, ApiError> {
    let note = AuditNote::new("plan.request", format!("ref/{}", request.rev))
        .details(serde_json::json!({"stack": request.stack}));
    let result = async {
        caller.require(&Action::Plan, None)?;
        if request.rev.trim().is_empty() || request.rev.starts_with('-') || request.rev.len() > 255 {
            return Err(ApiError::bad_request(
                "plan.bad_ref",
                format!("`{}` is not a revision", request.rev),
                "Pass a branch, tag or commit.",
            ));
        }
        if let Some(stack) = &request.stack
            && !plinth_core::config::is_stack_name(stack)
        {
            return Err(ApiError::bad_request(
                "plan.bad_stack",
                format!("`{stack}` is not a stack name"),
                "List stacks with `plinth stacks list`.",
            ));
        }
        let recorded =
            crate::watcher::plan_by_hand(&state, &request.rev, request.stack.as_deref(), &caller.name).await?;
        Ok((StatusCode::CREATED, axum::Json(serde_json::json!({"event": recorded.event, "runs": recorded.runs})))
            .into_response())
    }
    .await;
    Ok(noted(note, result.unwrap_or_else(IntoResponse::into_response)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    limit: Option<u32>,
}

pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<EventsQuery>,
) -> Result<Response, ApiError> {
    caller.require(&Action::Read, None)?;
    let events = state.store.events(query.limit.unwrap_or(50).min(1000)).await?;
    Ok(axum::Json(serde_json::json!({"events": events})).into_response())
}
