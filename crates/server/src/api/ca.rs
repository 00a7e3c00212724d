//! The proxy's local CA certificate, for clients to trust (`plinth ca export`). Only the
//! certificate: the key never leaves the data dir.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use plinth_core::auth::Action;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

pub async fn certificate(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(&Action::Read, None)?;
    let path = state.paths.ca.join(plinth_proxy::CA_CERT_FILE);
    match tokio::fs::read_to_string(&path).await {
        Ok(pem) => Ok(([(CONTENT_TYPE, "application/x-pem-file")], pem).into_response()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ApiError::not_found(
            "ca.not_created",
            "this server has no local CA yet",
            "Start the server with --tls-listen ADDR: it creates its CA in <data-dir>/ca on the first start.",
        )),
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "Could not read the CA certificate.");
            Err(ApiError::new(
                500,
                "ca.unreadable",
                format!("the CA certificate could not be read: {e}"),
                "Check that <data-dir>/ca/ca.pem is readable by the server's user.",
            ))
        }
    }
}
