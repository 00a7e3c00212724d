//! The HTTP API under `/api/v1`, the GitHub webhook, and what every request goes through:
//! bearer-token auth, JSON bodies with size limits and clear errors, and the audit log for every
//! request that changes something.

mod audit;
mod ca;
mod deployments;
pub(crate) mod environments;
mod exec;
mod hooks;
mod releases;
mod runs;
mod secrets;
mod stacks;
mod tokens;

use axum::Router;
use axum::extract::{FromRequest, MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use serde::de::DeserializeOwned;

use crate::auth::hash_secret;
use crate::error::{ApiError, ErrorMark};
use crate::state::AppState;

/// The routes, for the router and for checking the OpenAPI document against it.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/stacks"),
    ("POST", "/api/v1/stacks/unlock"),
    ("GET", "/api/v1/runs"),
    ("GET", "/api/v1/runs/{id}"),
    ("GET", "/api/v1/runs/{id}/logs"),
    ("POST", "/api/v1/runs/{id}/approve"),
    ("POST", "/api/v1/runs/{id}/reject"),
    ("POST", "/api/v1/runs/{id}/cancel"),
    ("POST", "/api/v1/plans"),
    ("GET", "/api/v1/events"),
    ("GET", "/api/v1/tokens"),
    ("POST", "/api/v1/tokens"),
    ("DELETE", "/api/v1/tokens/{name}"),
    ("GET", "/api/v1/audit"),
    ("GET", "/api/v1/ca"),
    ("GET", "/api/v1/secrets"),
    ("POST", "/api/v1/secrets/rotate-master-key"),
    ("PUT", "/api/v1/environments/{environment}/secrets/{name}"),
    ("DELETE", "/api/v1/environments/{environment}/secrets/{name}"),
    ("POST", "/api/v1/services/{service}/releases"),
    ("POST", "/api/v1/services/{service}/environments/{environment}/releases"),
    ("GET", "/api/v1/services/{service}/environments/{environment}/releases"),
    ("GET", "/api/v1/services/{service}/environments/{environment}"),
    ("GET", "/api/v1/services/{service}/environments/{environment}/deployments"),
    ("GET", "/api/v1/services/{service}/environments/{environment}/logs"),
    ("POST", "/api/v1/services/{service}/environments/{environment}/rollback"),
    ("POST", "/api/v1/services/{service}/environments/{environment}/exec"),
    ("GET", "/api/v1/deployments/{id}"),
    ("POST", "/api/v1/deployments/{id}/approve"),
    ("POST", "/api/v1/deployments/{id}/reject"),
    ("POST", "/api/v1/deployments/{id}/cancel"),
    ("GET", "/api/v1/templates"),
    ("GET", "/api/v1/templates/{name}"),
    ("GET", "/api/v1/environments"),
    ("POST", "/api/v1/environments"),
    ("GET", "/api/v1/environments/{name}"),
    ("DELETE", "/api/v1/environments/{name}"),
    ("POST", "/api/v1/environments/{name}/update"),
    ("GET", "/api/v1/environment-requests"),
    ("GET", "/api/v1/catalog"),
    ("GET", "/api/v1/catalog/export"),
    ("POST", "/hooks/github"),
];

/// The OpenAPI document describing this API.
pub const OPENAPI: &str = include_str!("../../openapi.json");

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/stacks", get(stacks::list))
        .route("/api/v1/stacks/unlock", post(stacks::unlock))
        .route("/api/v1/runs", get(runs::list))
        .route("/api/v1/runs/{id}", get(runs::show))
        .route("/api/v1/runs/{id}/logs", get(runs::logs))
        .route("/api/v1/runs/{id}/approve", post(runs::approve))
        .route("/api/v1/runs/{id}/reject", post(runs::reject))
        .route("/api/v1/runs/{id}/cancel", post(runs::cancel))
        .route("/api/v1/plans", post(runs::plan))
        .route("/api/v1/events", get(runs::events))
        .route("/api/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/api/v1/tokens/{name}", delete(tokens::revoke))
        .route("/api/v1/audit", get(audit::list))
        .route("/api/v1/ca", get(ca::certificate))
        .route("/api/v1/secrets", get(secrets::list))
        .route("/api/v1/secrets/rotate-master-key", post(secrets::rotate))
        .route("/api/v1/environments/{environment}/secrets/{name}", put(secrets::set).delete(secrets::remove))
        .route("/api/v1/services/{service}/releases", post(releases::publish_for))
        .route(
            "/api/v1/services/{service}/environments/{environment}/releases",
            post(releases::publish_to).get(releases::list),
        )
        .route("/api/v1/services/{service}/environments/{environment}", get(deployments::status))
        .route("/api/v1/services/{service}/environments/{environment}/deployments", get(deployments::history))
        .route("/api/v1/services/{service}/environments/{environment}/logs", get(deployments::logs))
        .route("/api/v1/services/{service}/environments/{environment}/rollback", post(deployments::rollback))
        .route("/api/v1/services/{service}/environments/{environment}/exec", post(exec::exec))
        .route("/api/v1/deployments/{id}", get(deployments::show))
        .route("/api/v1/deployments/{id}/approve", post(deployments::approve))
        .route("/api/v1/deployments/{id}/reject", post(deployments::reject))
        .route("/api/v1/deployments/{id}/cancel", post(deployments::cancel))
        .route("/api/v1/templates", get(environments::templates))
        .route("/api/v1/templates/{name}", get(environments::template))
        .route("/api/v1/environments", get(environments::list).post(environments::create))
        .route("/api/v1/environments/{name}", get(environments::show).delete(environments::destroy))
        .route("/api/v1/environments/{name}/update", post(environments::update))
        .route("/api/v1/environment-requests", get(environments::requests))
        .route("/api/v1/catalog", get(environments::catalog))
        .route("/api/v1/catalog/export", get(environments::export))
        .route("/hooks/github", post(hooks::github))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), audit_layer))
        .with_state(state)
}

async fn openapi() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        405,
        "api.method_not_allowed",
        "this endpoint does not take that method",
        "See /api/v1/openapi.json for the methods each endpoint takes.",
    )
}

async fn not_found() -> ApiError {
    ApiError::not_found("api.not_found", "there is no such endpoint", "See /api/v1/openapi.json for the endpoints.")
}

/// The largest JSON body the API reads.
pub const MAX_JSON_BODY: usize = 1024 * 1024;

/// A JSON request body, read with a size limit and parsed with errors that say what is wrong
/// and where.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_body(req, MAX_JSON_BODY).await?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            ApiError::bad_request(
                "api.bad_json",
                format!("the request body is not the JSON this endpoint takes: {e}"),
                "See /api/v1/openapi.json for the body this endpoint expects.",
            )
        })
    }
}

/// A path parameter as text, with errors in the API's JSON form (a parameter that is not valid
/// UTF-8 after decoding is a 400).
#[derive(Debug)]
pub struct PathParam(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(PathParam(value)),
            Err(e) => Err(ApiError::bad_request(
                "api.bad_path",
                format!("the path is not valid: {}", e.body_text()),
                "Path parameters are run ids and names in UTF-8, percent-encoded.",
            )),
        }
    }
}

/// Two path parameters as text, such as an environment and a secret's name.
#[derive(Debug)]
pub struct PathPair(pub String, pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathPair {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<(String, String)>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path((a, b))) => Ok(PathPair(a, b)),
            Err(e) => Err(ApiError::bad_request(
                "api.bad_path",
                format!("the path is not valid: {}", e.body_text()),
                "Path parameters are names in UTF-8, percent-encoded.",
            )),
        }
    }
}

/// Query parameters, with errors in the API's JSON form.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        serde_urlencoded_query(query).map(QueryParams)
    }
}

fn serde_urlencoded_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    axum::extract::Query::<T>::try_from_uri(&format!("/?{query}").parse().unwrap_or_default()).map(|q| q.0).map_err(
        |e| {
            ApiError::bad_request(
                "api.bad_query",
                format!("the query parameters are not what this endpoint takes: {}", e.body_text()),
                "See /api/v1/openapi.json for the parameters this endpoint takes.",
            )
        },
    )
}

/// Reads a body up to `limit` bytes; more is a 413. The rest of an oversized body is read and
/// dropped (up to a bound), so that the client gets the 413 instead of a reset connection.
pub async fn read_body(req: Request, limit: usize) -> Result<bytes::Bytes, ApiError> {
    use futures_util::StreamExt;
    const DRAIN: usize = 64 * 1024 * 1024;
    let too_large = || {
        ApiError::new(
            413,
            "api.body_too_large",
            format!("the request body is larger than {} KiB", limit / 1024),
            "Send a smaller body.",
        )
    };
    let mut stream = req.into_body().into_data_stream();
    let mut body = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request(
                "api.bad_body",
                format!("the request body could not be read: {e}"),
                "Send the body again.",
            )
        })?;
        seen += chunk.len();
        if seen > limit {
            if seen > DRAIN {
                return Err(too_large());
            }
            continue;
        }
        body.extend_from_slice(&chunk);
    }
    if seen > limit {
        return Err(too_large());
    }
    Ok(body.freeze())
}

/// What a handler tells the audit layer about the object it acted on.
#[derive(Clone, Debug)]
pub struct AuditNote {
    pub action: &'static str,
    pub object: String,
    pub details: serde_json::Value,
}

impl AuditNote {
    pub fn new(action: &'static str, object: impl Into<String>) -> Self {
        AuditNote { action, object: object.into(), details: serde_json::json!({}) }
    }

    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

/// A response that carries an audit note.
pub fn noted(note: AuditNote, response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    response.extensions_mut().insert(note);
    response
}

/// Appends every request that changes something to the audit log, with who made it and how it
/// ended, including refused and failed ones.
async fn audit_layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if request.method() == Method::GET || request.method() == Method::HEAD {
        return next.run(request).await;
    }
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let route = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let secret = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(|s| s.trim().to_owned());
    let response = next.run(request).await;
    let actor = match (&secret, path.starts_with("/hooks/")) {
        (_, true) if response.status().is_success() => "github".to_owned(),
        (Some(secret), _) => match state.store.token_by_hash(&hash_secret(secret)).await {
            Ok(Some(token)) => token.name,
            _ => "unknown-token".to_owned(),
        },
        (None, _) => "anonymous".to_owned(),
    };
    let note = response.extensions().get::<AuditNote>().cloned();
    let error = response.extensions().get::<ErrorMark>().map(|m| m.0);
    let result = match (response.status(), error) {
        (status, None) if status.is_success() => "ok".to_owned(),
        (StatusCode::SWITCHING_PROTOCOLS, None) => "ok".to_owned(),
        (status, Some(code)) => format!("{} {code}", status.as_u16()),
        (status, None) => status.as_u16().to_string(),
    };
    let (action, object, details) = match note {
        Some(note) => (note.action.to_owned(), note.object, note.details),
        None => (format!("{method} {}", route.unwrap_or_else(|| path.clone())), path.clone(), serde_json::json!({})),
    };
    let entry = plinth_store::NewAudit { actor, action, object, result, details };
    if let Err(e) = state.store.append_audit(entry, state.now()).await {
        tracing::error!(error = %e, "Could not append to the audit log.");
        return ApiError::internal("the request was carried out, but recording it in the audit log failed")
            .into_response();
    }
    response
}

/// `202 Accepted` with a JSON body.
pub fn accepted(body: serde_json::Value) -> Response {
    (StatusCode::ACCEPTED, axum::Json(body)).into_response()
}
