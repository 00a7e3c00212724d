//! GitHub push webhooks: the signature is checked against the shared secret, the body is
//! checked, and a valid push wakes the watcher to fetch at once.

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::{AuditNote, accepted, noted, read_body};
use crate::error::ApiError;
use crate::state::AppState;

/// GitHub sends at most 25 MB; pushes are far smaller. Larger bodies get 413.
pub const MAX_WEBHOOK_BODY: usize = 5 * 1024 * 1024;

/// The fields of a push event plinth reads.
#[derive(Debug, Deserialize)]
struct Push {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    #[serde(default)]
    deleted: bool,
}

/// Checks `X-Hub-Signature-256: sha256=<hex>` against the body, in constant time.
fn signature_ok(secret: &[u8], header: Option<&str>, body: &[u8]) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.strip_prefix("sha256=")) else { return false };
    let Ok(expected) = hex::decode(hex_sig.trim()) else { return false };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else { return false };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

pub async fn github(State(state): State<AppState>, request: Request) -> Response {
    let event = request.headers().get("x-github-event").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let signature = request.headers().get("x-hub-signature-256").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let note = AuditNote::new("webhook.receive", "hooks/github").details(serde_json::json!({"event": event}));
    let result = async {
        let Some(secret) = &state.config.webhook_secret else {
            return Err(ApiError::not_found(
                "webhook.disabled",
                "webhooks are off on this server",
                "Start the server with --webhook-secret-file FILE and give GitHub the same secret.",
            ));
        };
        let body = read_body(request, MAX_WEBHOOK_BODY).await?;
        if !signature_ok(secret, signature.as_deref(), &body) {
            return Err(ApiError::new(
                401,
                "webhook.bad_signature",
                "the X-Hub-Signature-256 header is missing or does not match the body",
                "Set the webhook's secret in GitHub to the contents of the server's --webhook-secret-file.",
            ));
        }
        match event.as_str() {
            "ping" => return Ok(axum::Json(serde_json::json!({"pong": true})).into_response()),
            "push" | "" => {}
            other => return Ok(accepted(serde_json::json!({"ignored": other}))),
        }
        let push: Push = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request("webhook.bad_body", format!("the body is not a push event: {e}"), "Send GitHub push events as application/json.")
        })?;
        if !push.git_ref.starts_with("refs/") || push.after.len() != 40 || !push.after.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ApiError::bad_request(
                "webhook.bad_body",
                format!("`{}` at `{}` is not a pushed ref and commit", push.git_ref, push.after),
                "Send GitHub push events unchanged.",
            ));
        }
        tracing::info!(git_ref = %push.git_ref, after = %push.after, deleted = push.deleted, "Webhook push received; fetching.");
        state.wake_watcher.notify_one();
        Ok(accepted(serde_json::json!({"accepted": true, "ref": push.git_ref, "after": push.after})))
    }
    .await;
    noted(note, result.unwrap_or_else(IntoResponse::into_response))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(body);
        let good = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert!(signature_ok(b"s3cret", Some(&good), body));
        assert!(!signature_ok(b"other", Some(&good), body));
        assert!(!signature_ok(b"s3cret", Some(&good), b"tampered"));
        assert!(!signature_ok(b"s3cret", None, body));
        assert!(!signature_ok(b"s3cret", Some("sha1=abc"), body));
        assert!(!signature_ok(b"s3cret", Some("sha256=zz"), body));
    }
}
