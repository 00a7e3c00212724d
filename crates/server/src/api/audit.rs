//! Reading the audit log. There is no way to change or delete entries, here or anywhere.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use plinth_core::auth::Action;
use plinth_store::AuditFilter;
use serde::Deserialize;

use super::QueryParams;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only entries with a larger id, for paging forwards.
    after: Option<i64>,
    actor: Option<String>,
    limit: Option<u32>,
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<AuditQuery>,
) -> Result<Response, ApiError> {
    caller.require(&Action::ReadAudit, None)?;
    let filter = AuditFilter { after: query.after, actor: query.actor.clone(), limit: query.limit };
    let entries = state.store.audit(&filter).await?;
    Ok(axum::Json(serde_json::json!({"entries": entries})).into_response())
}
