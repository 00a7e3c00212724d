//! API tokens: create (the secret is shown once), list and revoke. Admins only.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use plinth_core::auth::{Action, check_role, check_token_name};
use plinth_store::NewToken;
use serde::Deserialize;

use super::{AuditNote, JsonBody, PathParam, noted};
use crate::auth::{Caller, hash_secret, new_secret};
use crate::error::ApiError;
use crate::state::AppState;

pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(&Action::ManageTokens, None)?;
    let tokens = state.store.tokens().await?;
    Ok(axum::Json(serde_json::json!({"tokens": tokens})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    name: String,
    roles: Vec<String>,
    /// The services a `ci` token may publish releases for.
    #[serde(default)]
    services: Vec<String>,
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<CreateRequest>,
) -> Result<Response, ApiError> {
    let note = AuditNote::new("token.create", format!("token/{}", request.name))
        .details(serde_json::json!({"roles": request.roles, "services": request.services}));
    let result = async {
        caller.require(&Action::ManageTokens, None)?;
        check_token_name(&request.name)
            .map_err(|e| ApiError::bad_request("token.bad_name", e, "Pick another name."))?;
        if request.roles.is_empty() {
            return Err(ApiError::bad_request(
                "token.no_roles",
                "a token needs at least one role",
                "Pass --role admin, developer, ci, or a role named in an environment's `approvers`.",
            ));
        }
        for role in &request.roles {
            check_role(role).map_err(|e| ApiError::bad_request("token.bad_role", e, "Pick another role name."))?;
        }
        plinth_core::auth::check_token_services(&request.roles, &request.services).map_err(|e| {
            ApiError::bad_request("token.bad_services", e, "Scope ci tokens to the services they publish.")
        })?;
        let secret = new_secret()?;
        let token = state
            .store
            .create_token(
                NewToken {
                    name: request.name.clone(),
                    hash: hash_secret(&secret),
                    roles: request.roles.clone(),
                    services: request.services.clone(),
                    created_by: caller.name.clone(),
                },
                state.now(),
            )
            .await?;
        Ok((StatusCode::CREATED, axum::Json(serde_json::json!({"token": token, "secret": secret}))).into_response())
    }
    .await;
    Ok(noted(note, result.unwrap_or_else(IntoResponse::into_response)))
}

pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(name): PathParam,
) -> Result<Response, ApiError> {
    let note = AuditNote::new("token.revoke", format!("token/{name}"));
    let result = async {
        caller.require(&Action::ManageTokens, None)?;
        check_token_name(&name)
            .map_err(|e| ApiError::bad_request("token.bad_name", e, "List tokens with `plinth tokens list`."))?;
        if state.store.revoke_token(&name, state.now()).await? {
            Ok(axum::Json(serde_json::json!({"revoked": name})).into_response())
        } else {
            Err(ApiError::not_found(
                "token.not_found",
                format!("there is no active token named `{name}`"),
                "List tokens with `plinth tokens list`.",
            ))
        }
    }
    .await;
    Ok(noted(note, result.unwrap_or_else(IntoResponse::into_response)))
}
