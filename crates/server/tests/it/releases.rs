//! Releases from CI: a `ci` token scoped to a service publishes imagedefinitions.json for an
//! environment, a branch or a tag; everything else gets 403; bad definitions get a 400 that
//! says which entry is wrong; releases are recorded, listed and audited.

use serde_json::{Value, json};

use crate::harness::{Answer, LONG, Server, empty_repo, eventually};

const CONFIG: &str = r#"main_branch = "main"

[environments.stg]
branches = ["main"]

[environments.prd]
branches = ["main"]
tags = ["v*.*.*"]
approval = true
approvers = ["sre"]

[services.api]
containers = ["app", "sidecar"]
command = ["plinth", "demo-app", "--port", "{port}", "--version", "{image.app}"]
hosts = ["api.{env}.localhost"]

[services.web]
containers = ["web"]
command = ["plinth", "demo-app", "--port", "{port}", "--version", "{image.web}"]
"#;

const DEFINITIONS: &str = r#"[{"name": "app", "imageUri": "registry.example.com/team/api:1.4.2"}, {"name": "sidecar", "imageUri": "envoy:1.30"}]"#;

async fn publish(server: &Server, token: &str, path: &str, body: &str) -> Answer {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", server.url))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    Answer { status, body: serde_json::from_str(&text).unwrap_or(Value::Null), text }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ci_publishes_releases_for_its_services_and_nothing_else() {
    let mut server = Server::start(empty_repo(), |_| {}).await;
    server.repo.write("plinth.toml", CONFIG);
    let layout = server.repo.commit("services");
    // The server has seen the commit (it made no runs: no stack changed).
    eventually("the services commit", LONG, || async {
        let events = server.get("/api/v1/events").await;
        events["events"].as_array().unwrap().iter().any(|e| e["commit"] == layout.as_str()).then_some(())
    })
    .await;

    // A ci token must be scoped, and only ci tokens are.
    let answer = server.post("/api/v1/tokens", &server.admin, json!({"name": "ci", "roles": ["ci"]})).await;
    assert_eq!((answer.status, answer.code()), (400, "token.bad_services"), "{}", answer.text);
    let answer = server
        .post("/api/v1/tokens", &server.admin, json!({"name": "dev", "roles": ["developer"], "services": ["api"]}))
        .await;
    assert_eq!((answer.status, answer.code()), (400, "token.bad_services"), "{}", answer.text);
    let answer = server
        .post("/api/v1/tokens", &server.admin, json!({"name": "ci-api", "roles": ["ci"], "services": ["api"]}))
        .await;
    assert_eq!(answer.status, 201, "{}", answer.text);
    let ci = answer.body["secret"].as_str().unwrap().to_owned();
    assert_eq!(answer.body["token"]["services"], json!(["api"]));

    // To one environment.
    let path = "/api/v1/services/api/environments/stg/releases?commit=0123456789abcdef";
    let answer = publish(&server, &ci, path, DEFINITIONS).await;
    assert_eq!(answer.status, 201, "{}", answer.text);
    let release = &answer.body["releases"][0];
    assert_eq!((release["environment"].as_str(), release["source"].as_str()), (Some("stg"), Some("env")));
    assert_eq!(release["images"]["app"], "registry.example.com/team/api:1.4.2");
    assert_eq!(release["published_by"], "ci-api");
    assert_eq!(release["commit"], "0123456789abcdef");

    // A branch goes to every environment that releases from it; a semver tag to prd.
    let answer = publish(&server, &ci, "/api/v1/services/api/releases?branch=main", DEFINITIONS).await;
    assert_eq!(answer.status, 201, "{}", answer.text);
    let envs: Vec<&str> =
        answer.body["releases"].as_array().unwrap().iter().map(|r| r["environment"].as_str().unwrap()).collect();
    assert_eq!(envs, ["prd", "stg"]);
    let answer = publish(&server, &ci, "/api/v1/services/api/releases?tag=v1.4.2", DEFINITIONS).await;
    assert_eq!(answer.status, 201, "{}", answer.text);
    assert_eq!(answer.body["releases"][0]["source"], "tag:v1.4.2");

    // Bad input: each a clear error, nothing recorded.
    let bad: &[(&str, &str, u16, &str, &str)] = &[
        (
            "/api/v1/services/api/environments/stg/releases",
            "[{",
            400,
            "release.bad_image_definitions",
            "not valid JSON",
        ),
        (
            "/api/v1/services/api/environments/stg/releases",
            r#"[{"name": "app", "imageUri": "a"}]"#,
            400,
            "release.bad_image_definitions",
            "no image for container `sidecar`",
        ),
        (
            "/api/v1/services/api/environments/stg/releases",
            r#"[{"name": "web", "imageUri": "a"}]"#,
            400,
            "release.bad_image_definitions",
            "entry 0 names container `web`",
        ),
        (
            "/api/v1/services/api/environments/stg/releases",
            r#"[{"name": "app", "imageUri": " "}, {"name": "sidecar", "imageUri": "s"}]"#,
            400,
            "release.bad_image_definitions",
            "entry 0 (`app`)",
        ),
        ("/api/v1/services/api/environments/qa/releases", DEFINITIONS, 404, "release.unknown_environment", "`qa`"),
        (
            "/api/v1/services/api/releases?branch=feature/x",
            DEFINITIONS,
            404,
            "release.no_environment",
            "releases to no environment",
        ),
        ("/api/v1/services/api/releases", DEFINITIONS, 400, "release.bad_target", "exactly one"),
        (
            "/api/v1/services/api/environments/stg/releases?commit=nothex",
            DEFINITIONS,
            400,
            "release.bad_commit",
            "nothex",
        ),
    ];
    for (path, body, status, code, says) in bad {
        let answer = publish(&server, &ci, path, body).await;
        assert_eq!((answer.status, answer.code()), (*status, *code), "{path} {body}: {}", answer.text);
        assert!(answer.body["error"]["message"].as_str().unwrap().contains(says), "{}", answer.text);
    }
    let unknown = publish(&server, &server.admin, "/api/v1/services/nope/environments/stg/releases", DEFINITIONS).await;
    assert_eq!((unknown.status, unknown.code()), (404, "release.unknown_service"), "{}", unknown.text);

    // The ci token can do nothing else: other services, runs, approvals, secrets, tokens.
    let web = publish(
        &server,
        &ci,
        "/api/v1/services/web/environments/stg/releases",
        r#"[{"name": "web", "imageUri": "w"}]"#,
    )
    .await;
    assert_eq!((web.status, web.code()), (403, "auth.forbidden"), "{}", web.text);
    assert!(web.body["error"]["help"].as_str().unwrap().contains("--service web"), "{}", web.text);
    for (method, path, body) in [
        ("GET", "/api/v1/runs", None),
        ("POST", "/api/v1/plans", Some(json!({"ref": "main"}))),
        ("POST", "/api/v1/runs/1/approve", Some(json!({}))),
        ("GET", "/api/v1/secrets", None),
        ("PUT", "/api/v1/environments/stg/secrets/X_TOKEN", Some(json!({"value": "abcdefgh"}))),
        ("POST", "/api/v1/secrets/rotate-master-key", Some(json!({}))),
        ("GET", "/api/v1/tokens", None),
        ("GET", "/api/v1/services/api/environments/stg/releases", None),
    ] {
        let answer = server.call(method, path, Some(&ci), body).await;
        assert_eq!(answer.status, 403, "{method} {path}: {}", answer.text);
    }

    // Recorded, newest first, and audited.
    let listed = server.get("/api/v1/services/api/environments/stg/releases").await;
    let ids: Vec<i64> = listed["releases"].as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 2, "{listed}");
    assert!(ids[0] > ids[1]);
    let audit = server.get("/api/v1/audit?limit=1000").await;
    let publishes: Vec<&Value> =
        audit["entries"].as_array().unwrap().iter().filter(|e| e["action"] == "release.publish").collect();
    assert!(publishes.iter().any(|e| e["actor"] == "ci-api" && e["result"] == "ok" && e["object"] == "service/api"));
    assert!(publishes.iter().any(|e| e["actor"] == "ci-api" && e["result"] == "403 auth.forbidden"));
    server.stop().await;
}
