//! Triggers: GitHub webhooks (signed, checked, size-limited), plans by hand, and a restart that
//! picks up commits pushed while the server was down.

use hmac::{Hmac, Mac};
use plinth_core::run::{RunMode, RunStatus};
use serde_json::json;
use sha2::Sha256;

use plinth_testkit::write_seed_000;

use crate::harness::{LONG, Server, empty_repo, eventually};

const SECRET: &str = "a-webhook-secret-long-enough";

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn hook(server: &Server, event: &str, body: &[u8], signature: Option<String>) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/hooks/github", server.url))
        .header("X-GitHub-Event", event)
        .header("Content-Type", "application/json")
        .body(body.to_vec());
    if let Some(signature) = signature {
        request = request.header("X-Hub-Signature-256", signature);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_push_webhook_triggers_a_fetch_and_bad_ones_are_refused() {
    // Polling is off: only the webhook can make the server see the commit.
    let mut server = Server::start(empty_repo(), |c| {
        c.poll_interval = std::time::Duration::ZERO;
        c.webhook_secret = Some(SECRET.as_bytes().to_vec());
    })
    .await;
    write_seed_000(&server.repo);
    let commit = server.repo.commit("layout");
    let push =
        json!({"ref": "refs/heads/main", "before": "0".repeat(40), "after": commit, "deleted": false}).to_string();

    type Case<'a> = (&'a str, Vec<u8>, Option<String>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("push", push.as_bytes().to_vec(), None, 401, "webhook.bad_signature"),
        ("push", push.as_bytes().to_vec(), Some("sha256=00".into()), 401, "webhook.bad_signature"),
        ("push", push.as_bytes().to_vec(), Some(sign(b"something else")), 401, "webhook.bad_signature"),
        ("push", b"{not json".to_vec(), Some(sign(b"{not json")), 400, "webhook.bad_body"),
        ("push", br#"{"ref": 1}"#.to_vec(), Some(sign(br#"{"ref": 1}"#)), 400, "webhook.bad_body"),
    ];
    for (event, body, signature, status, code) in cases {
        let (got, answer) = hook(&server, event, &body, signature).await;
        assert_eq!(got, status, "{answer}");
        assert_eq!(answer["error"]["code"], code);
    }
    let huge = vec![b' '; 6 * 1024 * 1024];
    let (status, answer) = hook(&server, "push", &huge, Some(sign(&huge))).await;
    assert_eq!(status, 413, "{answer}");
    // None of that made runs.
    assert!(server.runs().await.is_empty());

    let (status, answer) = hook(&server, "ping", b"{}", Some(sign(b"{}"))).await;
    assert_eq!((status, answer["pong"].as_bool()), (200, Some(true)));
    let (status, answer) = hook(&server, "push", push.as_bytes(), Some(sign(push.as_bytes()))).await;
    assert_eq!(status, 202, "{answer}");
    let runs = server.settle(&commit, 2).await;
    assert!(runs.iter().any(|r| r.stack == "app/stg" && r.status == RunStatus::Applied));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_refused_without_a_configured_secret() {
    let server = Server::start(empty_repo(), |_| {}).await;
    let (status, answer) = hook(&server, "push", b"{}", Some(sign(b"{}"))).await;
    assert_eq!(status, 404);
    assert_eq!(answer["error"]["code"], "webhook.disabled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_by_hand_never_apply() {
    let mut server = Server::start(empty_repo(), |_| {}).await;
    let developer = server.token("dev", &["developer"]).await;
    write_seed_000(&server.repo);
    let layout = server.repo.commit("layout");
    server.settle(&layout, 2).await;

    let answer = server.post("/api/v1/plans", &developer, json!({"ref": "main", "stack": "app/stg"})).await;
    assert_eq!(answer.status, 201, "{}", answer.text);
    let id = answer.body["runs"][0]["id"].as_i64().unwrap();
    let run = server.wait_run(id, |r| r.status.is_final(r.mode)).await;
    assert_eq!((run.mode, run.status), (RunMode::Plan, RunStatus::NoChanges), "{run:?}");
    assert_eq!(run.created_by, "dev");

    // Planning main by hand: every stack its head changed, plan only, although main releases.
    let answer = server.post("/api/v1/plans", &developer, json!({"ref": "main"})).await;
    assert_eq!(answer.status, 201, "{}", answer.text);
    let runs = answer.body["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for run in runs {
        assert_eq!(run["mode"], "plan", "{run}");
        let done = server.wait_run(run["id"].as_i64().unwrap(), |r| r.status.is_final(r.mode)).await;
        assert!(matches!(done.status, RunStatus::NoChanges | RunStatus::Planned), "{done:?}");
    }

    // A change on a branch planned by hand: plan only.
    server.repo.git(&["checkout", "-q", "-b", "try"]);
    server.repo.touch("modules/app/main.tf");
    server.repo.write("modules/app/extra.tf", "resource \"terraform_data\" \"extra\" {}\n");
    server.repo.commit("try something");
    let answer = server.post("/api/v1/plans", &developer, json!({"ref": "try"})).await;
    assert_eq!(answer.status, 201, "{}", answer.text);
    let ids: Vec<i64> = answer.body["runs"].as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 2);
    for id in ids {
        let run = server.wait_run(id, |r| r.status.is_final(r.mode)).await;
        assert_eq!((run.mode, run.status), (RunMode::Plan, RunStatus::Planned), "{run:?}");
    }

    // The developer can cancel its own plan, and the cases that cannot be planned say why.
    let bad: Vec<(serde_json::Value, u16, &str)> = vec![
        (json!({"ref": "main", "stack": "nope"}), 422, "plan.not_possible"),
        (json!({"ref": "no-such-branch"}), 400, "repo.unknown_revision"),
        (json!({"ref": "-x"}), 400, "plan.bad_ref"),
        (json!({"ref": "main", "stack": "../etc"}), 400, "plan.bad_stack"),
        (json!({"ref": "main", "extra": true}), 400, "api.bad_json"),
        (json!({"stack": "app/stg"}), 400, "api.bad_json"),
    ];
    for (body, status, code) in bad {
        let answer = server.post("/api/v1/plans", &developer, body.clone()).await;
        assert_eq!(answer.status, status, "{body}: {}", answer.text);
        assert_eq!(answer.code(), code, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_pushed_while_stopped_are_picked_up_on_start() {
    let mut server = Server::start(empty_repo(), |_| {}).await;
    write_seed_000(&server.repo);
    let layout = server.repo.commit("layout");
    server.settle(&layout, 2).await;
    let (mut repo, data) = server.stop().await;
    repo.write("terraform/stg/extra.tf", "resource \"terraform_data\" \"extra\" {}\n");
    let offline = repo.commit("while plinth was down");
    let server = Server::start_in(repo, data, |_| {}).await;
    let runs = server.settle(&offline, 1).await;
    assert_eq!(runs[0].stack, "app/stg");
    assert_eq!(runs[0].status, RunStatus::Applied);
    // The prd run that waited for approval before the restart still waits, plan and all.
    let waiting = eventually("the waiting prd run", LONG, || async {
        server.runs().await.into_iter().find(|r| r.status == RunStatus::AwaitingApproval)
    })
    .await;
    let answer = server.post(&format!("/api/v1/runs/{}/approve", waiting.id), &server.admin, json!({})).await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    assert_eq!(server.wait_run(waiting.id, |r| r.status.is_final(r.mode)).await.status, RunStatus::Applied);
}
