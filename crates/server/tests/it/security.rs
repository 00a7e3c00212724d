//! Tokens, roles, the audit log, and bad input: every request needs a token, secrets are never
//! stored in plaintext, every change is audited, and bad requests get clear errors and change
//! nothing.

use serde_json::json;

use crate::harness::{Server, empty_repo, files_holding};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_needs_a_token_and_secrets_are_stored_hashed() {
    let server = Server::start(empty_repo(), |_| {}).await;
    // The admin token was written once, readable by its owner only.
    use std::os::unix::fs::PermissionsExt;
    let file = server.data_path().join("admin.token");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), server.admin);

    // Open endpoints.
    assert_eq!(server.call("GET", "/healthz", None, None).await.status, 200);
    let openapi = server.call("GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(openapi.status, 200);

    for (method, path) in
        [("GET", "/api/v1/runs"), ("GET", "/api/v1/stacks"), ("POST", "/api/v1/plans"), ("GET", "/api/v1/audit")]
    {
        let answer = server.call(method, path, None, None).await;
        assert_eq!(answer.status, 401, "{method} {path}");
        assert_eq!(answer.code(), "auth.missing_token");
        let answer = server.call(method, path, Some("plinth_not-a-token"), None).await;
        assert_eq!(answer.status, 401, "{method} {path}");
        assert_eq!(answer.code(), "auth.invalid_token");
    }

    let dev = server.token("dev", &["developer"]).await;
    assert_eq!(server.call("GET", "/api/v1/runs", Some(&dev), None).await.status, 200);
    // A developer cannot manage tokens or read the audit log.
    for (method, path) in [("GET", "/api/v1/tokens"), ("GET", "/api/v1/audit"), ("DELETE", "/api/v1/tokens/admin")] {
        let answer = server.call(method, path, Some(&dev), None).await;
        assert_eq!(answer.status, 403, "{method} {path}: {}", answer.text);
    }
    // Revoked tokens stop working at once.
    assert_eq!(server.call("DELETE", "/api/v1/tokens/dev", Some(&server.admin), None).await.status, 200);
    assert_eq!(server.call("GET", "/api/v1/runs", Some(&dev), None).await.code(), "auth.invalid_token");
    let tokens = server.get("/api/v1/tokens").await;
    let listed: Vec<(&str, bool)> = tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["revoked_at"].is_null()))
        .collect();
    assert_eq!(listed, [("admin", true), ("dev", false)]);
    assert!(!tokens.to_string().contains("plinth_"), "no secret in listings: {tokens}");

    // No secret sits anywhere in the data dir in plaintext.
    for secret in [&server.admin, &dev] {
        let hits: Vec<String> = files_holding(&server.data_path(), secret.as_bytes())
            .into_iter()
            .filter(|h| !h.ends_with("admin.token"))
            .collect();
        assert!(hits.is_empty(), "secret found in {hits:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_audited_and_the_log_cannot_be_changed() {
    let server = Server::start(empty_repo(), |_| {}).await;
    let dev = server.token("dev", &["developer"]).await;
    // A refused attempt is audited too.
    assert_eq!(server.post("/api/v1/tokens", &dev, json!({"name": "x", "roles": ["admin"]})).await.status, 403);
    assert_eq!(server.call("DELETE", "/api/v1/tokens/dev", Some(&server.admin), None).await.status, 200);
    let entries = server.get("/api/v1/audit").await["entries"].as_array().unwrap().clone();
    let summary: Vec<(String, String, String, String)> = entries
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap().to_owned();
            (s("actor"), s("action"), s("object"), s("result"))
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("plinth".into(), "token.create".into(), "token/admin".into(), "ok".into()),
            ("admin".into(), "token.create".into(), "token/dev".into(), "ok".into()),
            ("dev".into(), "token.create".into(), "token/x".into(), "403 auth.forbidden".into()),
            ("admin".into(), "token.revoke".into(), "token/dev".into(), "ok".into()),
        ]
    );
    assert!(entries.iter().all(|e| e["at"].as_str().is_some()));
    // There is no way to change or delete entries.
    for method in ["DELETE", "PUT", "PATCH", "POST"] {
        let answer = server.call(method, "/api/v1/audit", Some(&server.admin), Some(json!({}))).await;
        assert!(answer.status == 404 || answer.status == 405, "{method}: {}", answer.status);
    }
    let after = server.get("/api/v1/audit").await["entries"].as_array().unwrap().len();
    assert!(after >= entries.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_changes_nothing() {
    let server = Server::start(empty_repo(), |_| {}).await;
    let admin = server.admin.clone();
    let cases: Vec<(&str, &str, Option<serde_json::Value>, u16, &str)> = vec![
        ("GET", "/api/v1/runs/999", None, 404, "run.not_found"),
        ("GET", "/api/v1/runs/abc", None, 400, "run.bad_id"),
        ("GET", "/api/v1/runs/..%2F..%2Fetc", None, 400, "run.bad_id"),
        ("POST", "/api/v1/runs/999/approve", Some(json!({})), 404, "run.not_found"),
        ("GET", "/api/v1/runs?status=done", None, 400, "run.bad_status"),
        ("GET", "/api/v1/runs?color=red", None, 400, "api.bad_query"),
        ("GET", "/api/v1/runs/1/logs?format=xml", None, 404, "run.not_found"),
        ("POST", "/api/v1/tokens", Some(json!({"name": "../x", "roles": ["developer"]})), 400, "token.bad_name"),
        ("POST", "/api/v1/tokens", Some(json!({"name": "x", "roles": ["../admin"]})), 400, "token.bad_role"),
        ("POST", "/api/v1/tokens", Some(json!({"name": "x", "roles": []})), 400, "token.no_roles"),
        ("POST", "/api/v1/tokens", Some(json!({"name": "admin", "roles": ["admin"]})), 409, "token.exists"),
        ("DELETE", "/api/v1/tokens/nobody", None, 404, "token.not_found"),
        ("POST", "/api/v1/stacks/unlock", Some(json!({"stack": "app/stg"})), 409, "stack.not_locked"),
        ("POST", "/api/v1/stacks/unlock", Some(json!({"stack": "../app"})), 400, "stack.bad_name"),
        ("GET", "/api/v1/nothing-here", None, 404, "api.not_found"),
        ("GET", "/api/v1/runs/%FF", None, 400, "api.bad_path"),
        ("PUT", "/api/v1/runs", None, 405, "api.method_not_allowed"),
    ];
    for (method, path, body, status, code) in cases {
        let answer = server.call(method, path, Some(&admin), body).await;
        assert_eq!(answer.status, status, "{method} {path}: {}", answer.text);
        assert_eq!(answer.code(), code, "{method} {path}");
        assert!(!answer.body["error"]["help"].as_str().unwrap().is_empty());
    }
    // Oversized and malformed bodies.
    let big = json!({"name": "x".repeat(2 * 1024 * 1024), "roles": ["developer"]});
    let answer = server.call("POST", "/api/v1/tokens", Some(&admin), Some(big)).await;
    assert_eq!((answer.status, answer.code()), (413, "api.body_too_large"));
    let raw = reqwest::Client::new()
        .post(format!("{}/api/v1/tokens", server.url))
        .bearer_auth(&admin)
        .header("Content-Type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 400);
    // Nothing was created along the way.
    let tokens = server.get("/api/v1/tokens").await;
    assert_eq!(tokens["tokens"].as_array().unwrap().len(), 1);
    assert!(server.runs().await.is_empty());
}
