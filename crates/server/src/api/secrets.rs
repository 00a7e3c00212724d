//! Secrets: set (the value goes in, never out), list (names, scope, version, who and when),
//! remove, and rotate the master key. There is no endpoint that returns a value.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use plinth_core::auth::Action;
use plinth_core::secret::Scope;
use plinth_store::SecretKey;
use serde::Deserialize;

use super::{AuditNote, JsonBody, QueryParams, noted};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    environment: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Response, ApiError> {
    caller.require(&Action::Read, None)?;
    let secrets = state.store.secrets(query.environment.as_deref()).await?;
    Ok(axum::Json(serde_json::json!({"secrets": secrets})).into_response())
}

/// Where a secret applies, as a request gives it: at most one of `stack` and `service`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeQuery {
    stack: Option<String>,
    service: Option<String>,
}

impl ScopeQuery {
    fn scope(self) -> Result<Scope, ApiError> {
        match (self.stack, self.service) {
            (None, None) => Ok(Scope::Environment),
            (Some(stack), None) => Ok(Scope::Stack(stack)),
            (None, Some(service)) => Ok(Scope::Service(service)),
            (Some(_), Some(_)) => Err(ApiError::bad_request(
                "secret.bad_scope",
                "a secret belongs to a stack or to a service, not both",
                "Pass either `stack` or `service`, or neither for the whole environment.",
            )),
        }
    }
}

/// A new value. `Debug` never shows it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetRequest {
    value: String,
    stack: Option<String>,
    service: Option<String>,
}

impl std::fmt::Debug for SetRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetRequest").field("stack", &self.stack).field("service", &self.service).finish_non_exhaustive()
    }
}

fn object(key: &SecretKey) -> String {
    match &key.scope {
        Scope::Environment => format!("secret/{}/{}", key.environment, key.name),
        scope => format!("secret/{}/{}:{}/{}", key.environment, scope.kind(), scope.target(), key.name),
    }
}

pub async fn set(
    State(state): State<AppState>,
    caller: Caller,
    super::PathPair(environment, name): super::PathPair,
    JsonBody(request): JsonBody<SetRequest>,
) -> Result<Response, ApiError> {
    let scope = ScopeQuery { stack: request.stack, service: request.service }.scope();
    let mut note = AuditNote::new("secret.set", format!("secret/{environment}/{name}"));
    let result = async {
        let key = SecretKey { environment, scope: scope?, name };
        note = AuditNote::new("secret.set", object(&key));
        caller.require(&Action::ManageSecrets, None)?;
        let meta = crate::secrets::set(&state, key, &request.value, &caller.name).await?;
        note = note.clone().details(serde_json::json!({"version": meta.version, "key_id": meta.key_id}));
        Ok::<_, ApiError>(axum::Json(serde_json::json!({"secret": meta})).into_response())
    }
    .await;
    Ok(noted(note, result.unwrap_or_else(IntoResponse::into_response)))
}

pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    super::PathPair(environment, name): super::PathPair,
    QueryParams(query): QueryParams<ScopeQuery>,
) -> Result<Response, ApiError> {
    let mut note = AuditNote::new("secret.remove", format!("secret/{environment}/{name}"));
    let result = async {
        let key = SecretKey { environment, scope: query.scope()?, name };
        note = AuditNote::new("secret.remove", object(&key));
        caller.require(&Action::ManageSecrets, None)?;
        match state.store.remove_secret(&key).await? {
            Some(meta) => {
                note = note.clone().details(serde_json::json!({"version": meta.version}));
                Ok(axum::Json(serde_json::json!({"removed": meta})).into_response())
            }
            None => Err(ApiError::not_found(
                "secret.not_found",
                format!("there is no secret `{}` for {} in `{}`", key.name, key.scope, key.environment),
                "List secrets with `plinth secrets list --env ENV`; pass --stack or --service for scoped ones.",
            )),
        }
    }
    .await;
    Ok(noted(note, result.unwrap_or_else(IntoResponse::into_response)))
}

pub async fn rotate(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let mut note = AuditNote::new("secret.rotate_master_key", "master-key");
    let result = async {
        caller.require(&Action::ManageSecrets, None)?;
        let rotated = crate::secrets::rotate(&state).await?;
        note = note.clone().details(serde_json::to_value(&rotated).unwrap_or_default());
        Ok::<_, ApiError>(axum::Json(serde_json::json!({"rotated": rotated})).into_response())
    }
    .await;
    Ok(noted(note, result.unwrap_or_else(IntoResponse::into_response)))
}
