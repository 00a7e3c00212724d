//! Secrets end to end, with real terraform: set through the API (sealed before they are
//! stored), handed only to runs of branches that release to their environment, masked in every
//! byte of output, never found in plaintext or base64 anywhere in the data dir, and still
//! readable after the master key is rotated and the server restarts.

use plinth_core::run::{RunMode, RunStatus};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::harness::{Server, empty_repo, files_holding};

const TOKEN: &str = "tok-9f8e7d6c5b4a-Secret/+=";
const PASSWORD: &str = "p@ss w0rd with spaces & more";

const CONFIG: &str = r#"main_branch = "main"

[environments.prd]
branches = ["main"]
approval = true
approvers = ["sre"]

[environments.dev]
branches = ["dev"]

[stacks.app]
path = "app"
environment = "prd"

[stacks.other]
path = "other"
environment = "prd"
"#;

/// A stack that prints the secret (as is, and in base64) when it applies, its hash (so that the
/// test can tell the value arrived intact without the value ever being printed), and shows in
/// its plan whether `TF_VAR_db_password` arrived.
fn app_stack(rev: u32) -> String {
    format!(
        r#"variable "db_password" {{
  type    = string
  default = ""
}}

resource "terraform_data" "echo" {{
  triggers_replace = "{rev}"
  provisioner "local-exec" {{
    command = "echo token=$API_TOKEN; printf %s \"$API_TOKEN\" | base64; echo sha=$(printf %s \"$API_TOKEN\" | sha256sum | cut -c1-16)"
  }}
}}

output "has_password" {{
  value = length(var.db_password) > 0
}}

output "rev" {{
  value = "{rev}"
}}
"#
    )
}

/// What the stack prints for the value's hash.
fn sha_line(value: &str) -> String {
    format!("sha={}", &hex::encode(Sha256::digest(value.as_bytes()))[..16])
}

fn base64(value: &str) -> String {
    use std::process::{Command, Stdio};
    let mut child = Command::new("base64").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), value.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn assert_nowhere(server: &Server, when: &str) {
    for needle in [TOKEN.to_owned(), base64(TOKEN), PASSWORD.to_owned(), base64(PASSWORD)] {
        let hits = files_holding(&server.data_path(), needle.as_bytes());
        assert!(hits.is_empty(), "{when}: a secret's plaintext or base64 is in {hits:?}");
    }
}

async fn logs(server: &Server, id: i64) -> String {
    server.call("GET", &format!("/api/v1/runs/{id}/logs"), Some(&server.admin), None).await.text
}

async fn set(server: &Server, token: &str, env: &str, name: &str, body: Value) -> crate::harness::Answer {
    server.call("PUT", &format!("/api/v1/environments/{env}/secrets/{name}"), Some(token), Some(body)).await
}

/// Approves a run as `sre` and waits for it to end.
async fn approve(server: &Server, sre: &str, id: i64) -> plinth_core::run::Run {
    let answer = server.post(&format!("/api/v1/runs/{id}/approve"), sre, json!({})).await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    server.wait_run(id, |r| r.status.is_final(r.mode)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_only_their_runs_masked_and_survive_rotation() {
    let mut server = Server::start(empty_repo(), |_| {}).await;
    let developer = server.token("dev", &["developer"]).await;
    let sre = server.token("oncall", &["sre"]).await;

    // The master key was created with mode 0600.
    use std::os::unix::fs::PermissionsExt;
    let key_file = server.data_path().join("master.key");
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);

    server.repo.write("plinth.toml", CONFIG).write("app/main.tf", &app_stack(1)).write("other/main.tf", &app_stack(1));
    let layout = server.repo.commit("layout");
    for run in server.settle(&layout, 2).await {
        assert_eq!(run.status, RunStatus::AwaitingApproval, "{run:?}");
        let answer = server.post(&format!("/api/v1/runs/{}/reject", run.id), &sre, json!({})).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
    }

    // Bad input is refused with a code that says what is wrong, and nothing is stored.
    let bad: &[(&str, &str, Value, &str)] = &[
        ("prd", "API_TOKEN", json!({"value": ""}), "secret.bad_value"),
        ("prd", "API_TOKEN", json!({"value": "abc"}), "secret.bad_value"),
        ("nope", "API_TOKEN", json!({"value": TOKEN}), "secret.bad_scope"),
        ("prd", "1BAD-NAME", json!({"value": TOKEN}), "secret.bad_name"),
        ("prd", "PLINTH_RUN", json!({"value": TOKEN}), "secret.bad_name"),
        ("prd", "API_TOKEN", json!({"value": TOKEN, "stack": "missing"}), "secret.bad_scope"),
        ("dev", "API_TOKEN", json!({"value": TOKEN, "stack": "app"}), "secret.bad_scope"),
        ("prd", "API_TOKEN", json!({"value": TOKEN, "stack": "app", "service": "api"}), "secret.bad_scope"),
        ("prd", "API_TOKEN", json!({"valeu": TOKEN}), "api.bad_json"),
    ];
    for (env, name, body, code) in bad {
        let answer = set(&server, &server.admin, env, name, body.clone()).await;
        assert_eq!((answer.status, answer.code()), (400, *code), "{env} {name} {body}: {}", answer.text);
        assert!(!answer.text.contains(TOKEN), "an error never quotes the value: {}", answer.text);
    }
    let short = set(&server, &server.admin, "prd", "API_TOKEN", json!({"value": "abc"})).await;
    assert!(short.body["error"]["message"].as_str().unwrap().contains("fewer than 4"), "{}", short.text);

    // A developer can neither set nor read a value; the list shows names only.
    let answer = set(&server, &developer, "prd", "API_TOKEN", json!({"value": TOKEN})).await;
    assert_eq!((answer.status, answer.code()), (403, "auth.forbidden"), "{}", answer.text);
    assert_eq!(server.call("GET", "/api/v1/secrets", Some(&developer), None).await.body["secrets"], json!([]));

    let answer = set(&server, &server.admin, "prd", "API_TOKEN", json!({"value": TOKEN})).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.body["secret"]["version"], 1);
    let answer =
        set(&server, &server.admin, "prd", "TF_VAR_db_password", json!({"value": PASSWORD, "stack": "app"})).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let listed = server.call("GET", "/api/v1/secrets?environment=prd", Some(&developer), None).await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    let names: Vec<(&str, &str)> = listed.body["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["scope"]["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [("API_TOKEN", "environment"), ("TF_VAR_db_password", "stack")]);
    assert!(!listed.text.contains(TOKEN) && !listed.text.contains(PASSWORD), "{}", listed.text);
    for method in ["GET", "POST"] {
        let answer = server.call(method, "/api/v1/environments/prd/secrets/API_TOKEN", Some(&server.admin), None).await;
        assert_eq!(answer.status, 405, "no endpoint returns a value: {method} {}", answer.text);
    }

    // A commit on main: both stacks get the environment secret, only `app` gets its own.
    server.repo.write("app/main.tf", &app_stack(2)).write("other/main.tf", &app_stack(2));
    let v2 = server.repo.commit("v2");
    let runs = server.settle(&v2, 2).await;
    let app = runs.iter().find(|r| r.stack == "app").unwrap().clone();
    let other = runs.iter().find(|r| r.stack == "other").unwrap().clone();
    assert_eq!(app.status, RunStatus::AwaitingApproval, "{app:?}");
    let app_log = logs(&server, app.id).await;
    assert!(app_log.contains("Secrets handed to terraform: API_TOKEN, TF_VAR_db_password."), "{app_log}");
    assert!(app_log.contains("+ has_password = true"), "{app_log}");
    let other_log = logs(&server, other.id).await;
    assert!(other_log.contains("Secrets handed to terraform: API_TOKEN."), "{other_log}");
    assert!(other_log.contains("+ has_password = false"), "{other_log}");
    // While it waits, the plan (which holds the variable's value) is sealed.
    let workspace = server.data_path().join(format!("workspaces/{}", app.id));
    assert!(workspace.join("plan.tfplan.sealed").exists() && !workspace.join("plan.tfplan").exists());
    assert_nowhere(&server, "awaiting approval");

    let applied = approve(&server, &sre, app.id).await;
    assert_eq!(applied.status, RunStatus::Applied, "{applied:?}");
    let applied_log = logs(&server, app.id).await;
    assert!(applied_log.contains("(local-exec): token=***"), "{applied_log}");
    assert!(applied_log.contains("(local-exec): ***"), "the base64 form is masked: {applied_log}");
    assert!(applied_log.contains(&sha_line(TOKEN)), "the value arrived intact: {applied_log}");
    assert!(!workspace.exists(), "the workspace goes when the run ends");
    approve(&server, &sre, other.id).await;
    assert_nowhere(&server, "after applying");

    // A feature branch's plan of the same stack gets nothing, and says so.
    server.repo.git(&["checkout", "-q", "-b", "feature/x"]);
    server.repo.write("app/main.tf", &app_stack(3));
    let feature = server.repo.commit("feature");
    let runs = server.settle(&feature, 1).await;
    let plan = &runs[0];
    assert_eq!((plan.mode, plan.status), (RunMode::Plan, RunStatus::Planned), "{plan:?}");
    let plan_log = logs(&server, plan.id).await;
    assert!(
        plan_log
            .contains("2 secret(s) of `prd` are not handed to this run: branch `feature/x` does not release to `prd`."),
        "{plan_log}"
    );
    // Its terraform did not get the password: the output that was true on main turns false.
    assert!(plan_log.contains("~ has_password = true -> false"), "{plan_log}");
    assert!(!plan_log.contains("Secrets handed"), "{plan_log}");

    // A branch cannot give itself production by editing its own plinth.toml.
    server.repo.write(
        "plinth.toml",
        &CONFIG.replace(
            "branches = [\"main\"]\napproval = true",
            "branches = [\"main\", \"feature/*\"]\napproval = false",
        ),
    );
    server.repo.write("app/main.tf", &app_stack(4));
    let sneaky = server.repo.commit("release me");
    let runs = server.settle(&sneaky, 1).await;
    for run in &runs {
        assert_eq!(run.mode, RunMode::Plan, "the main branch's policy decides: {run:?}");
        assert!(!logs(&server, run.id).await.contains("Secrets handed"));
    }
    server.repo.git(&["checkout", "-q", "main"]);

    // A branch that releases to `dev` cannot move a prd stack into `dev` to apply it (and get
    // dev's secrets for prd's state): it plans it only, and the event says why.
    server.repo.git(&["checkout", "-q", "-b", "dev"]);
    server.repo.write(
        "plinth.toml",
        &CONFIG.replace("path = \"app\"\nenvironment = \"prd\"", "path = \"app\"\nenvironment = \"dev\""),
    );
    let moved = server.repo.commit("move app to dev");
    let runs = server.settle(&moved, 1).await;
    assert_eq!((runs[0].stack.as_str(), runs[0].mode), ("app", RunMode::Plan), "{:?}", runs[0]);
    let events = server.get("/api/v1/events").await;
    let note =
        events["events"].as_array().unwrap().iter().find(|e| e["commit"] == moved.as_str()).unwrap()["note"].clone();
    assert!(
        note.as_str().unwrap().contains("`app` plans only: this branch moves it from environment `prd` to `dev`"),
        "{note}"
    );
    server.repo.git(&["checkout", "-q", "main"]);

    // Rotation: every data key re-wrapped, the old key file replaced, values intact.
    let old_key = std::fs::read(&key_file).unwrap();
    let rotated = server.post("/api/v1/secrets/rotate-master-key", &developer, json!({})).await;
    assert_eq!(rotated.status, 403, "{}", rotated.text);
    let rotated = server.post("/api/v1/secrets/rotate-master-key", &server.admin, json!({})).await;
    assert_eq!(rotated.status, 200, "{}", rotated.text);
    assert_eq!(rotated.body["rotated"]["rewrapped"], 2, "{}", rotated.text);
    let new_key = std::fs::read(&key_file).unwrap();
    assert_ne!(old_key, new_key);
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    let new_id = rotated.body["rotated"]["key_id"].as_str().unwrap().to_owned();
    let listed = server.get("/api/v1/secrets").await;
    assert!(listed["secrets"].as_array().unwrap().iter().all(|s| s["key_id"] == new_id.as_str()), "{listed}");

    // ... and after a restart, with only the new key on disk.
    let (repo, data) = server.stop().await;
    let server = Server::start_in(repo, data, |_| {}).await;
    let mut repo_handle = server;
    repo_handle.repo.write("app/main.tf", &app_stack(5));
    let v5 = repo_handle.repo.commit("v5");
    let runs = repo_handle.settle(&v5, 1).await;
    let sre = repo_handle.token("oncall2", &["sre"]).await;
    let applied = approve(&repo_handle, &sre, runs[0].id).await;
    assert_eq!(applied.status, RunStatus::Applied, "{applied:?}");
    let log = logs(&repo_handle, runs[0].id).await;
    assert!(log.contains(&sha_line(TOKEN)) && log.contains("token=***"), "{log}");

    // Every setting, rotation and handing is audited, never with a value.
    let audit = repo_handle.get("/api/v1/audit?limit=1000").await;
    let text = audit.to_string();
    assert!(!text.contains(TOKEN) && !text.contains(PASSWORD));
    let actions: Vec<(String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap().to_owned(), e["object"].as_str().unwrap().to_owned()))
        .collect();
    for expected in [
        ("secret.set".to_owned(), "secret/prd/API_TOKEN".to_owned()),
        ("secret.set".to_owned(), "secret/prd/stack:app/TF_VAR_db_password".to_owned()),
        ("secret.rotate_master_key".to_owned(), "master-key".to_owned()),
        ("secret.hand".to_owned(), format!("run/{}", app.id)),
        ("secret.hand".to_owned(), format!("run/{}", runs[0].id)),
    ] {
        assert!(actions.contains(&expected), "{expected:?} not in {actions:?}");
    }
    assert!(!actions.contains(&("secret.hand".to_owned(), format!("run/{}", plan.id))), "{actions:?}");
    assert_nowhere(&repo_handle, "at the end");

    // Removing a secret: gone from the list and from later runs.
    let removed = repo_handle
        .call("DELETE", "/api/v1/environments/prd/secrets/TF_VAR_db_password?stack=app", Some(&repo_handle.admin), None)
        .await;
    assert_eq!(removed.status, 200, "{}", removed.text);
    let again = repo_handle
        .call("DELETE", "/api/v1/environments/prd/secrets/TF_VAR_db_password?stack=app", Some(&repo_handle.admin), None)
        .await;
    assert_eq!((again.status, again.code()), (404, "secret.not_found"), "{}", again.text);
    repo_handle.stop().await;
}
