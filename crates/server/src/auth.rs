//! API tokens: how secrets are made and stored (hashed), and how a request proves who it is.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use plinth_core::auth::{Action, allowed};
use plinth_core::config::Config;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;

/// The token a request came with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub roles: Vec<String>,
    /// The services a `ci` token may publish releases for.
    pub services: Vec<String>,
}

impl Caller {
    /// Fails with 403 unless the caller may perform `action`.
    pub fn require(&self, action: &Action, config: Option<&Config>) -> Result<(), ApiError> {
        if allowed(&self.roles, action, config) {
            return Ok(());
        }
        let roles = if self.roles.is_empty() { "no roles".to_owned() } else { self.roles.join(", ") };
        let who_may = match action {
            Action::Approve { environment: Some(env) } => match config.and_then(|c| c.environments.get(env)) {
                Some(e) if e.approval && !e.approvers.is_empty() => {
                    format!("a token with one of the roles {} or admin", e.approvers.join(", "))
                }
                Some(e) if !e.approval => format!("nobody: environment `{env}` does not require approval"),
                _ => "an admin token".to_owned(),
            },
            Action::Read | Action::Plan | Action::Provision | Action::Cancel { own: true } => {
                "a developer or admin token".to_owned()
            }
            _ => "an admin token".to_owned(),
        };
        Err(ApiError::new(
            403,
            "auth.forbidden",
            format!("token `{}` ({roles}) may not {}", self.name, action.describe()),
            format!("This needs {who_may}."),
        ))
    }
}

impl Caller {
    /// Fails with 403 unless the caller may publish releases of `service`.
    pub fn require_publish(&self, service: &str) -> Result<(), ApiError> {
        if plinth_core::auth::may_publish(&self.roles, &self.services, service) {
            return Ok(());
        }
        let scope =
            if self.services.is_empty() { String::new() } else { format!(", scoped to {}", self.services.join(", ")) };
        Err(ApiError::new(
            403,
            "auth.forbidden",
            format!("token `{}` ({}{scope}) may not publish releases of `{service}`", self.name, self.roles.join(", ")),
            format!(
                "This needs an admin token, or a ci token scoped to `{service}` (`plinth tokens create --role ci --service {service}`)."
            ),
        ))
    }
}

/// A new random token secret. The prefix makes leaked tokens easy to search for.
pub fn new_secret() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::internal(format!("no randomness for a token: {e}")))?;
    Ok(format!("plinth_{}", hex::encode(bytes)))
}

/// What the store keeps of a secret: its SHA-256, in hex. Token secrets are random and long,
/// so a fast hash is enough.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let header = parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let Some(secret) = header.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim).filter(|s| !s.is_empty())
        else {
            return Err(ApiError::new(
                401,
                "auth.missing_token",
                "this request has no bearer token",
                "Send `Authorization: Bearer <token>`; with the CLI, set PLINTH_TOKEN or pass --token.",
            ));
        };
        let Some(token) = state.store.token_by_hash(&hash_secret(secret)).await? else {
            return Err(ApiError::new(
                401,
                "auth.invalid_token",
                "the bearer token is unknown or revoked",
                "Check the token; an admin can list tokens with `plinth tokens list` and create one with `plinth tokens create`.",
            ));
        };
        let caller = Caller { name: token.name, roles: token.roles, services: token.services };
        parts.extensions.insert(caller.clone());
        Ok(caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_hashed() {
        let a = new_secret().unwrap();
        let b = new_secret().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("plinth_") && a.len() == 7 + 64);
        assert_eq!(hash_secret(&a), hash_secret(&a));
        assert_ne!(hash_secret(&a), a);
        assert_eq!(hash_secret(&a).len(), 64);
    }
}
