//! Deployments: status and history of a service in an environment, one deployment with its
//! events, approving or rejecting one, cancelling the active one, and rolling back to an earlier
//! release (a new deployment; CI does not run again).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use plinth_core::auth::Action;
use plinth_core::deploy::{DeploymentKind, DeploymentStatus};
use plinth_store::{Deployment, NewDeployment};
use serde::Deserialize;

use super::{AuditNote, JsonBody, PathPair, PathParam, QueryParams, accepted, noted};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

fn deployment_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        ApiError::bad_request(
            "deployment.bad_id",
            format!("`{raw}` is not a deployment id"),
            "Deployment ids are positive numbers; see `plinth deploy history SERVICE --env ENV`.",
        )
    })
}

async fn load(state: &AppState, raw: &str) -> Result<Deployment, ApiError> {
    let id = deployment_id(raw)?;
    state.store.deployment(id).await?.ok_or_else(|| {
        ApiError::not_found(
            "deployment.not_found",
            format!("there is no deployment #{id}"),
            "See `plinth deploy history SERVICE --env ENV`.",
        )
    })
}

/// Fails unless the caller may act on deployments in `environment`: admins, and the roles
/// that approve there.
async fn require_operator(state: &AppState, caller: &Caller, environment: &str) -> Result<(), ApiError> {
    let policy = crate::policy::current(state).await.ok();
    caller.require(&Action::Approve { environment: Some(environment.to_owned()) }, policy.as_ref().map(|p| &p.config))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    limit: Option<u32>,
}

/// `GET /api/v1/services/{service}/environments/{environment}/deployments`
pub async fn history(
    State(state): State<AppState>,
    caller: Caller,
    PathPair(service, environment): PathPair,
    QueryParams(query): QueryParams<HistoryQuery>,
) -> Result<Response, ApiError> {
    caller.require(&Action::Read, None)?;
    let deployments = state.store.deployments(&service, &environment, query.limit.unwrap_or(20).clamp(1, 1000)).await?;
    Ok(axum::Json(serde_json::json!({"deployments": deployments})).into_response())
}

/// `GET /api/v1/services/{service}/environments/{environment}`: the release serving now, the
/// deployment in progress or waiting, and the instances with their health.
pub async fn status(
    State(state): State<AppState>,
    caller: Caller,
    PathPair(service, environment): PathPair,
) -> Result<Response, ApiError> {
    caller.require(&Action::Read, None)?;
    let recent = state.store.deployments(&service, &environment, 50).await?;
    let current = recent.iter().find(|d| d.status == DeploymentStatus::Succeeded).cloned();
    let release = match &current {
        Some(d) => state.store.release(d.release_id).await?,
        None => None,
    };
    let pending: Vec<&Deployment> = recent.iter().filter(|d| !d.status.is_final()).collect();
    let instances = state.deployer.instances(&service, &environment);
    Ok(axum::Json(serde_json::json!({
        "service": service,
        "environment": environment,
        "current": current,
        "release": release,
        "pending": pending,
        "instances": instances,
    }))
    .into_response())
}

/// `GET /api/v1/deployments/{id}`: the deployment, its release and its events.
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam,
) -> Result<Response, ApiError> {
    caller.require(&Action::Read, None)?;
    let deployment = load(&state, &id).await?;
    let release = state.store.release(deployment.release_id).await?;
    let events = state.store.deployment_events(deployment.id).await?;
    Ok(axum::Json(serde_json::json!({"deployment": deployment, "release": release, "events": events})).into_response())
}

fn not_awaiting(d: &Deployment) -> ApiError {
    ApiError::conflict(
        "deployment.not_awaiting_approval",
        format!("deployment #{} is {}, not awaiting approval", d.id, d.status),
        "Only deployments in `awaiting_approval` can be approved or rejected.",
    )
}

/// `POST /api/v1/deployments/{id}/approve`
pub async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam,
) -> Result<Response, ApiError> {
    let mut note = AuditNote::new("deployment.approve", format!("deployment/{id}"));
    let result = async {
        let d = load(&state, &id).await?;
        note = note.clone().details(serde_json::json!({"service": d.service, "environment": d.environment}));
        require_operator(&state, &caller, &d.environment).await?;
        let moved = state
            .store
            .move_deployment(d.id, DeploymentStatus::Queued, None, Some(caller.name.clone()), state.now())
            .await?
            .ok_or_else(|| not_awaiting(&d))?;
        state.store.append_deployment_event(d.id, &format!("approved by {}", caller.name), state.now()).await?;
        state.deployer.wake();
        Ok::<_, ApiError>(accepted(serde_json::to_value(&moved).unwrap_or_default()))
    }
    .await;
    Ok(noted(note, result.unwrap_or_else(IntoResponse::into_response)))
}

/// `POST /api/v1/deployments/{id}/reject`
pub async fn reject(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam,
) -> Result<Response, ApiError> {
    let mut note = AuditNote::new("deployment.reject", format!("deployment/{id}"));
    let result = async {
        let d = load(&state, &id).await?;
        note = note.clone().details(serde_json::json!({"service": d.service, "environment": d.environment}));
        require_operator(&state, &caller, &d.environment).await?;
        let reason = format!("rejected by {}", caller.name);
        let moved = state
            .store
            .move_deployment(d.id, DeploymentStatus::Rejected, Some(reason.clone()), None, state.now())
            .await?
            .ok_or_else(|| not_awaiting(&d))?;
        state.store.append_deployment_event(d.id, &reason, state.now()).await?;
        Ok::<_, ApiError>(axum::Json(moved).into_response())
    }
    .await;
    Ok(noted(note, result.unwrap_or_else(IntoResponse::into_response)))
}

/// `POST /api/v1/deployments/{id}/cancel`: a waiting deployment ends at once; one in progress
/// stops its rollout, removes its new instances, and the previous release keeps serving.
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(id): PathParam,
) -> Result<Response, ApiError> {
    let mut note = AuditNote::new("deployment.cancel", format!("deployment/{id}"));
    let result = async {
        let d = load(&state, &id).await?;
        note = note.clone().details(serde_json::json!({"service": d.service, "environment": d.environment}));
        require_operator(&state, &caller, &d.environment).await?;
        let reason = format!("cancelled by {}", caller.name);
        if d.status.is_waiting() {
            let moved = state
                .store
                .move_deployment(d.id, DeploymentStatus::Cancelled, Some(reason.clone()), None, state.now())
                .await?;
            if let Some(moved) = moved {
                state.store.append_deployment_event(d.id, &reason, state.now()).await?;
                return Ok(axum::Json(moved).into_response());
            }
        }
        if d.status == DeploymentStatus::InProgress && state.deployer.cancel(d.id, reason) {
            return Ok(accepted(serde_json::to_value(&d).unwrap_or_default()));
        }
        let now = state.store.deployment(d.id).await?.unwrap_or(d);
        Err(ApiError::conflict(
            "deployment.not_active",
            format!("deployment #{} is {}; there is nothing to cancel", now.id, now.status),
            "See `plinth deploy status SERVICE --env ENV`.",
        ))
    }
    .await;
    Ok(noted(note, result.unwrap_or_else(IntoResponse::into_response)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The release to go back to; the one before the current by default.
    to: Option<i64>,
}

/// `POST /api/v1/services/{service}/environments/{environment}/rollback`
pub async fn rollback(
    State(state): State<AppState>,
    caller: Caller,
    PathPair(service, environment): PathPair,
    JsonBody(request): JsonBody<RollbackRequest>,
) -> Result<Response, ApiError> {
    let mut note = AuditNote::new("deployment.rollback", format!("service/{service}/{environment}"));
    let result = async {
        require_operator(&state, &caller, &environment).await?;
        let history = state.store.deployments(&service, &environment, 1000).await?;
        let mut succeeded = history.iter().filter(|d| d.status == DeploymentStatus::Succeeded);
        let current = succeeded.next();
        let target = match request.to {
            Some(id) => match state.store.release(id).await? {
                Some(r) if r.service == service && r.environment == environment => r,
                Some(r) => {
                    return Err(ApiError::bad_request(
                        "deployment.bad_release",
                        format!(
                            "release #{id} is of `{}` in `{}`, not of `{service}` in `{environment}`",
                            r.service, r.environment
                        ),
                        "Pick a release from `plinth release list --service SERVICE --env ENV`.",
                    ));
                }
                None => {
                    return Err(ApiError::not_found(
                        "release.not_found",
                        format!("there is no release #{id}"),
                        "Pick a release from `plinth release list --service SERVICE --env ENV`.",
                    ));
                }
            },
            None => {
                let current_release = current.map(|d| d.release_id);
                let previous = succeeded.find(|d| Some(d.release_id) != current_release);
                let Some(previous) = previous else {
                    return Err(ApiError::conflict(
                        "deployment.nothing_to_roll_back_to",
                        format!("`{service}` in `{environment}` has no earlier release that was deployed"),
                        "Pass --to RELEASE to pick one from `plinth release list`.",
                    ));
                };
                state
                    .store
                    .release(previous.release_id)
                    .await?
                    .ok_or_else(|| ApiError::internal("the release is gone"))?
            }
        };
        if current.is_some_and(|d| d.release_id == target.id) {
            return Err(ApiError::conflict(
                "deployment.already_current",
                format!("release #{} is what `{service}` runs in `{environment}` already", target.id),
                "Pick another release with --to.",
            ));
        }
        let new = NewDeployment {
            release_id: target.id,
            service: service.clone(),
            environment: environment.clone(),
            kind: DeploymentKind::Rollback,
            needs_approval: false,
            created_by: caller.name.clone(),
        };
        let (created, superseded) = state.store.create_deployment(new, state.now()).await?;
        state
            .store
            .append_deployment_event(
                created.id,
                &format!("rollback to release #{} asked by {}", target.id, caller.name),
                state.now(),
            )
            .await?;
        note = note.clone().details(serde_json::json!({"deployment": created.id, "release": target.id}));
        state.deployer.wake();
        Ok::<_, ApiError>(accepted(serde_json::json!({"deployment": created, "superseded": superseded})))
    }
    .await;
    Ok(noted(note, result.unwrap_or_else(IntoResponse::into_response)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    after: Option<u64>,
    follow: Option<bool>,
}

/// `GET /api/v1/services/{service}/environments/{environment}/logs`: the recent output of the
/// service's instances, one line each as `instance | text`, and with `follow=true` what comes
/// after, until the client goes away or the server stops.
pub async fn logs(
    State(state): State<AppState>,
    caller: Caller,
    PathPair(service, environment): PathPair,
    QueryParams(query): QueryParams<LogsQuery>,
) -> Result<Response, ApiError> {
    caller.require(&Action::Read, None)?;
    let (kept, mut live) = state.deployer.logs(&service, &environment, query.after.unwrap_or(0));
    let follow = query.follow.unwrap_or(false);
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(256);
    let stop = state.shutdown.clone();
    tokio::spawn(async move {
        let render = |e: &crate::deployer::LogEntry| bytes::Bytes::from(format!("{} | {}\n", e.instance, e.text));
        let mut last = 0;
        for entry in &kept {
            if tx.send(render(entry)).await.is_err() {
                return;
            }
            last = entry.seq;
        }
        if !follow {
            return;
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tx.closed() => return,
                next = live.recv() => match next {
                    Ok(entry) if entry.seq > last => {
                        last = entry.seq;
                        if tx.send(render(&entry)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let note = bytes::Bytes::from(format!("plinth | {n} line(s) skipped: the follower fell behind\n"));
                        if tx.send(note).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|bytes| (Ok::<_, std::convert::Infallible>(bytes), rx))
    });
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], axum::body::Body::from_stream(stream))
        .into_response())
}
