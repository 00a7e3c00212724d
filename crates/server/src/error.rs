//! Errors as the API returns them: a status, a stable code, a message and what to do, as
//! `{"error": {"code", "message", "help"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use plinth_core::ErrorCode;

/// An error response.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub help: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>, help: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code,
            message: message.into(),
            help: help.into(),
        }
    }

    /// Any error that knows its code, status and advice.
    pub fn from_error<E: ErrorCode + std::fmt::Display>(e: &E) -> Self {
        ApiError::new(e.http_status(), e.code(), e.to_string(), e.help())
    }

    pub fn not_found(code: &'static str, message: impl Into<String>, help: impl Into<String>) -> Self {
        ApiError::new(404, code, message, help)
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>, help: impl Into<String>) -> Self {
        ApiError::new(400, code, message, help)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>, help: impl Into<String>) -> Self {
        ApiError::new(409, code, message, help)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(500, "server.internal", message, "Check the server's log; the request can be retried.")
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code, "message": self.message, "help": self.help}})
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        response.extensions_mut().insert(ErrorMark(self.code));
        response
    }
}

/// Left on error responses so that the audit layer can record the code.
#[derive(Clone, Copy, Debug)]
pub struct ErrorMark(pub &'static str);

impl From<plinth_store::StoreError> for ApiError {
    fn from(e: plinth_store::StoreError) -> Self {
        tracing::error!(error = %e, "The store failed.");
        ApiError::from_error(&e)
    }
}
