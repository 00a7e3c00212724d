//! Releases: CI publishes a service's images (CodePipeline's `imagedefinitions.json`) for an
//! environment, or for whatever environments a branch or tag releases to. A release is checked
//! against the service in plinth.toml on the main branch, then recorded, immutable.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use plinth_core::auth::Action;
use plinth_core::release::{OnRequest, Target, check_image_definitions, destinations};
use plinth_store::NewRelease;
use serde::Deserialize;

use super::{AuditNote, PathPair, PathParam, QueryParams, noted, read_body};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// The largest `imagedefinitions.json` accepted.
const MAX_BODY: usize = 256 * 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishQuery {
    /// The commit the images were built from.
    commit: Option<String>,
    branch: Option<String>,
    tag: Option<String>,
}

/// `POST /api/v1/services/{service}/environments/{environment}/releases`
pub async fn publish_to(
    State(state): State<AppState>,
    caller: Caller,
    PathPair(service, environment): PathPair,
    QueryParams(query): QueryParams<PublishQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let mut note = AuditNote::new("release.publish", format!("service/{service}"));
    let result = async {
        if query.branch.is_some() || query.tag.is_some() {
            return Err(ApiError::bad_request(
                "release.bad_target",
                "this endpoint names the environment; `branch` and `tag` pick one instead",
                "Use POST /api/v1/services/{service}/releases?branch=NAME (or ?tag=NAME) to let the branch or tag pick.",
            ));
        }
        let body = read_body(request, MAX_BODY).await?;
        publish(&state, &caller, &service, Target::Environment(&environment), "env".into(), query.commit, &body, &mut note)
            .await
    }
    .await;
    Ok(noted(note, result.unwrap_or_else(IntoResponse::into_response)))
}

/// `POST /api/v1/services/{service}/releases?branch=NAME|tag=NAME`
pub async fn publish_for(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(service): PathParam,
    QueryParams(query): QueryParams<PublishQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let mut note = AuditNote::new("release.publish", format!("service/{service}"));
    let result = async {
        let (target, source) = match (&query.branch, &query.tag) {
            (Some(branch), None) => (Target::Branch(branch), format!("branch:{branch}")),
            (None, Some(tag)) => (Target::Tag(tag), format!("tag:{tag}")),
            _ => {
                return Err(ApiError::bad_request(
                    "release.bad_target",
                    "pass exactly one of `branch` and `tag`",
                    "The branch or tag picks the environments through their `branches` and `tags` in plinth.toml; or publish to one environment with /environments/{environment}/releases.",
                ));
            }
        };
        let body = read_body(request, MAX_BODY).await?;
        publish(&state, &caller, &service, target, source, query.commit.clone(), &body, &mut note).await
    }
    .await;
    Ok(noted(note, result.unwrap_or_else(IntoResponse::into_response)))
}

#[allow(clippy::too_many_arguments)]
async fn publish(
    state: &AppState,
    caller: &Caller,
    service: &str,
    target: Target<'_>,
    source: String,
    commit: Option<String>,
    body: &[u8],
    note: &mut AuditNote,
) -> Result<Response, ApiError> {
    caller.require_publish(service)?;
    let hash = |c: &str| (7..=64).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(commit) = commit.as_deref().filter(|c| !hash(c)) {
        return Err(ApiError::bad_request(
            "release.bad_commit",
            format!("`{}` is not a commit hash", commit.escape_debug()),
            "Pass the full (or at least 7-character) hex hash of the commit the images were built from.",
        ));
    }
    let policy = crate::policy::current(state).await.map_err(|e| {
        ApiError::conflict(
            "release.no_policy",
            format!("cannot read the services: {e}"),
            "Push a valid plinth.toml with the service to the main branch first.",
        )
    })?;
    let Some(def) = policy.config.service(service) else {
        let known: Vec<String> = policy.config.services.iter().map(|s| format!("`{}`", s.name)).collect();
        return Err(ApiError::not_found(
            "release.unknown_service",
            format!(
                "there is no service `{service}` in plinth.toml on the main branch{}",
                if known.is_empty() { String::new() } else { format!(" (services: {})", known.join(", ")) }
            ),
            "Declare it under [services.NAME] and merge that first.",
        ));
    };
    let on_request = on_request(state, &policy.config, &target).await?;
    let envs = destinations(&policy.config, &target, service, &on_request).map_err(|e| {
        let code = if matches!(target, Target::Environment(_)) {
            "release.unknown_environment"
        } else {
            "release.no_environment"
        };
        ApiError::new(404, code, e, "Check the environments in plinth.toml on the main branch.")
    })?;
    let images = check_image_definitions(def, body).map_err(|e| {
        ApiError::bad_request(
            "release.bad_image_definitions",
            e,
            "Send CodePipeline's imagedefinitions.json: [{\"name\": \"CONTAINER\", \"imageUri\": \"IMAGE\"}, …] with every container of the service once.",
        )
    })?;
    let releases: Vec<NewRelease> = envs
        .iter()
        .map(|d| NewRelease {
            service: service.to_owned(),
            environment: d.environment.clone(),
            images: images.clone(),
            commit: commit.clone(),
            source: source.clone(),
            published_by: caller.name.clone(),
        })
        .collect();
    let created = state.store.create_releases(&releases, state.now()).await?;
    let mut deployments = Vec::new();
    for release in &created {
        let governing = envs
            .iter()
            .find(|d| d.environment == release.environment)
            .map_or(release.environment.as_str(), |d| d.policy_environment.as_str());
        let needs_approval = policy.config.environments.get(governing).is_some_and(|e| e.approval);
        let new = plinth_store::NewDeployment {
            release_id: release.id,
            service: release.service.clone(),
            environment: release.environment.clone(),
            kind: plinth_core::deploy::DeploymentKind::Release,
            needs_approval,
            created_by: caller.name.clone(),
        };
        let (deployment, superseded) = state.store.create_deployment(new, state.now()).await?;
        let mut event = format!("release #{} published by {}", release.id, caller.name);
        if needs_approval {
            event.push_str(&format!(
                "; `{}` needs an approval: `plinth deploy approve {}`",
                release.environment, deployment.id
            ));
        }
        state.store.append_deployment_event(deployment.id, &event, state.now()).await?;
        for old in &superseded {
            state
                .store
                .append_deployment_event(
                    old.id,
                    &format!("superseded by deployment #{} (release #{})", deployment.id, release.id),
                    state.now(),
                )
                .await?;
        }
        deployments.push(deployment);
    }
    state.deployer.wake();
    *note = note.clone().details(serde_json::json!({
        "releases": created.iter().map(|r| serde_json::json!({"id": r.id, "environment": r.environment})).collect::<Vec<_>>(),
        "images": images,
        "commit": commit,
        "source": source,
    }));
    let names: Vec<&str> = envs.iter().map(|d| d.environment.as_str()).collect();
    tracing::info!(service, environments = ?names, by = %caller.name, "Recorded a release.");
    Ok((StatusCode::CREATED, axum::Json(serde_json::json!({"releases": created, "deployments": deployments})))
        .into_response())
}

/// The environments made on request that a release to `target` may reach. A branch that should
/// have a review environment but has none yet (CI published before plinth saw the push) gets
/// one first: plinth fetches, which makes it.
async fn on_request(
    state: &AppState,
    config: &plinth_core::Config,
    target: &Target<'_>,
) -> Result<Vec<OnRequest>, ApiError> {
    let as_target = |e: plinth_store::EnvRecord| OnRequest {
        name: e.name,
        policy_environment: e.policy_environment,
        services: e.services,
        review_branch: e.review.map(|r| r.branch),
    };
    match target {
        Target::Environment(env) => {
            Ok(state.store.environment(env).await?.filter(|e| e.status.is_live()).map(as_target).into_iter().collect())
        }
        Target::Branch(branch) => {
            let review_envs = |state: &AppState| {
                let filter = plinth_store::EnvFilter { review: true, live: true, ..Default::default() };
                let branch = branch.to_string();
                let store = state.store.clone();
                async move {
                    Ok::<_, ApiError>(
                        store
                            .environments(&filter)
                            .await?
                            .into_iter()
                            .filter(|e| e.review.as_ref().is_some_and(|r| r.branch == branch))
                            .map(as_target)
                            .collect::<Vec<_>>(),
                    )
                }
            };
            let found = review_envs(state).await?;
            let wanted = config.review.as_ref().is_some_and(|r| r.applies_to(branch));
            if !found.is_empty() || !wanted {
                return Ok(found);
            }
            if let Err(e) = crate::watcher::poll_once(state, "release").await {
                tracing::warn!(error = %e.message, "Could not fetch before a branch release; using what is known.");
            }
            review_envs(state).await
        }
        Target::Tag(_) => Ok(Vec::new()),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    before: Option<i64>,
    limit: Option<u32>,
}

/// `GET /api/v1/services/{service}/environments/{environment}/releases`, newest first.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    PathPair(service, environment): PathPair,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Response, ApiError> {
    caller.require(&Action::Read, None)?;
    let releases =
        state.store.releases(&service, &environment, query.before, query.limit.unwrap_or(50).clamp(1, 1000)).await?;
    Ok(axum::Json(serde_json::json!({"releases": releases})).into_response())
}
