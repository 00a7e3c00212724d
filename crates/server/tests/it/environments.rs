//! Environments on request, end to end with real terraform: templates write marker files
//! through `terraform_data` + `local-exec` into a directory the tests check. Values reach the
//! module byte for byte; a failed apply is destroyed again; requests for one account run one at
//! a time, in order; CIDR blocks never overlap; review environments follow real pushes and
//! branch deletions.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{LONG, Server, empty_repo, eventually};

/// A module that writes what it receives into `<marker_dir>/<environment>/`, removes it on
/// destroy, and fails after writing when `fail` is set.
const MODULE: &str = r#"
variable "marker_dir" { type = string }
variable "app_name" { type = string }
variable "replicas" { type = number }
variable "auth" { type = bool }
variable "fail" { type = bool }
variable "sleep" { type = number }
variable "plinth_environment" { type = string }
variable "plinth_cidr" { type = string }
variable "plinth_fqdn" { type = string }
variable "plinth_workspace" { type = string }

resource "terraform_data" "marker" {
  input            = { dir = "${var.marker_dir}/${var.plinth_environment}" }
  triggers_replace = [var.app_name, var.replicas, var.auth, var.plinth_cidr]
  provisioner "local-exec" {
    command = "mkdir -p \"$D\" && echo start $(date +%s.%N) >> \"$D/../timeline-$ENV\" && sleep $SLEEP && printf '%s' \"$NAME\" > \"$D/app_name\" && printf '%s' \"$CIDR\" > \"$D/cidr\" && printf '%s' \"$WS\" > \"$D/workspace\" && printf '%s %s' \"$REPLICAS\" \"$AUTH\" > \"$D/settings\" && echo end $(date +%s.%N) >> \"$D/../timeline-$ENV\""
    environment = {
      D        = self.input.dir
      ENV      = var.plinth_environment
      NAME     = var.app_name
      CIDR     = var.plinth_cidr
      WS       = var.plinth_workspace
      REPLICAS = var.replicas
      AUTH     = var.auth
      SLEEP    = var.sleep
    }
  }
  provisioner "local-exec" {
    when        = destroy
    command     = "rm -rf \"$D\""
    environment = { D = self.input.dir }
  }
}

resource "terraform_data" "after" {
  depends_on = [terraform_data.marker]
  input      = var.fail
  provisioner "local-exec" {
    command = var.fail ? "echo failing on purpose >&2; exit 3" : "true"
  }
}

output "fqdn" {
  value = var.plinth_fqdn
}

output "app_name" {
  value = var.app_name
}

output "token" {
  value     = "token-${var.app_name}"
  sensitive = true
}
"#;

fn web_template(account: &str) -> String {
    format!(
        r#"description = "Writes markers"
environment = "sandbox"
account = "{account}"
domain = "sandbox.localhost"
cidr = {{ pool = "sandbox", prefix = 24 }}

[parameters.marker_dir]
type = "string"

[parameters.app_name]
type = "string"
max = 200

[parameters.replicas]
type = "int"
min = 1
max = 10
default = 2

[parameters.auth]
type = "bool"
default = true

[parameters.fail]
type = "bool"
default = false

[parameters.sleep]
type = "int"
min = 0
max = 10
default = 0
"#
    )
}

fn review_template(markers: &Path) -> String {
    format!(
        r#"description = "A review environment per branch"
environment = "sandbox"
account = "review"

[parameters.marker_dir]
type = "string"
default = "{}"

[parameters.app_name]
type = "string"
default = "review"

[parameters.replicas]
type = "int"
default = 1

[parameters.auth]
type = "bool"
default = false

[parameters.fail]
type = "bool"
default = false

[parameters.sleep]
type = "int"
default = 0
"#,
        markers.display()
    )
}

const CONFIG: &str = r#"main_branch = "main"

[environments.sandbox]

[products.shop]
owner = "team-shop"
description = "The shop"

[cidr_pools.sandbox]
ranges = ["10.20.0.0/22"]

[review]
template = "review-app"
branches = ["feature/*", "feature-*"]
domain = "review.localhost"
ttl = "1h"
max = 4
product = "shop"
"#;

/// A server on a repo with the two templates and plinth.toml (with `config` in place of the
/// default one), and a temp dir for markers.
async fn setup(config: &str, markers: &Path) -> Server {
    let mut server = Server::start(empty_repo(), |_| {}).await;
    server.repo.write("plinth.toml", config);
    server.repo.write("templates/web/main.tf", MODULE);
    server.repo.write("templates/web/template.toml", &web_template("sandbox-a"));
    server.repo.write("templates/slow/main.tf", MODULE);
    server.repo.write("templates/slow/template.toml", &web_template("sandbox-a"));
    server.repo.write("templates/other/main.tf", MODULE);
    server.repo.write("templates/other/template.toml", &web_template("sandbox-b"));
    server.repo.write("templates/review-app/main.tf", MODULE);
    server.repo.write("templates/review-app/template.toml", &review_template(markers));
    let commit = server.repo.commit("templates");
    eventually("the templates commit", LONG, || async {
        let events = server.get("/api/v1/events").await;
        events["events"].as_array().unwrap().iter().any(|e| e["commit"] == commit.as_str()).then_some(())
    })
    .await;
    server
}

async fn create(server: &Server, template: &str, name: &str, params: Value) -> crate::harness::Answer {
    let body = json!({"template": template, "product": "shop", "name": name, "params": params});
    server.post("/api/v1/environments", &server.admin, body).await
}

/// Waits until the environment's request `id` has ended, and returns the environment's view.
async fn ended(server: &Server, name: &str, id: i64) -> Value {
    eventually(&format!("request #{id} of {name}"), Duration::from_secs(120), || async {
        let body = server.get(&format!("/api/v1/environments/{name}")).await;
        let done = body["requests"].as_array().unwrap().iter().any(|r| {
            r["id"] == id && ["succeeded", "failed", "cancelled"].contains(&r["status"].as_str().unwrap_or(""))
        });
        done.then_some(body)
    })
    .await
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_is_made_from_a_template_with_its_values_byte_for_byte() {
    let markers = tempfile::tempdir().unwrap();
    let server = setup(CONFIG, markers.path()).await;

    let templates = server.get("/api/v1/templates").await;
    let names: Vec<&str> =
        templates["templates"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["other", "review-app", "slow", "web"], "{templates:#}");
    let web = server.get("/api/v1/templates/web").await;
    assert_eq!(
        web["parameters"]["properties"]["replicas"],
        json!({"type": "integer", "minimum": 1, "maximum": 10, "default": 2})
    );
    assert_eq!(web["parameters"]["required"], json!(["marker_dir", "app_name"]));

    // Values that a text substitution would break, or Terraform would interpolate.
    let nasty = "${file(\"/etc/passwd\")} %{ if true }x%{ endif } \"quoted\" \\back\\slash\nnew line $${kept} 日本語";
    let answer = create(
        &server,
        "web",
        "shop-dev1",
        json!({"marker_dir": markers.path().display().to_string(), "app_name": nasty, "replicas": "3", "auth": false}),
    )
    .await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    assert_eq!(answer.body["environment"]["status"], "queued");
    assert_eq!(answer.body["environment"]["cidr"], "10.20.0.0/24");
    assert_eq!(answer.body["environment"]["fqdn"], "shop-dev1.sandbox.localhost");
    let request = answer.body["request"]["id"].as_i64().unwrap();
    let body = ended(&server, "shop-dev1", request).await;
    let env = &body["environment"];
    assert_eq!(env["status"], "ready", "{body:#}");
    let dir = markers.path().join("shop-dev1");
    assert_eq!(read(&dir.join("app_name")), nasty, "the value reaches the module byte for byte");
    assert_eq!(read(&dir.join("cidr")), "10.20.0.0/24");
    assert_eq!(read(&dir.join("settings")), "3 false");
    assert_eq!(read(&dir.join("workspace")), "default");
    assert_eq!(env["outputs"]["app_name"], nasty);
    assert_eq!(env["outputs"]["fqdn"], "shop-dev1.sandbox.localhost");
    assert_eq!(env["outputs"]["token"], "(sensitive)", "sensitive outputs are never stored");
    assert_eq!(env["params"]["replicas"], 3, "typed by the template");

    // The generated root is kept in the data dir, formatted, with the values only in tfvars.
    let root = server.data_path().join("environments").join(env["id"].to_string()).join("root");
    let main_tf = read(&root.join("main.tf"));
    assert!(main_tf.contains("module \"template\""), "{main_tf}");
    assert!(!main_tf.contains("passwd"), "values are not formatted into HCL: {main_tf}");
    let tfvars: Value = serde_json::from_str(&read(&root.join("terraform.tfvars.json"))).unwrap();
    assert_eq!(tfvars["app_name"], nasty);
    assert!(root.join("repo/templates/web/main.tf").is_file(), "the template is kept with the root");

    // The request log and the audit log say who asked for what.
    assert_eq!(body["requests"][0]["requested_by"], "admin");
    assert_eq!(body["requests"][0]["kind"], "create");
    let audit = server.get("/api/v1/audit?limit=1000").await;
    let created = audit["entries"].as_array().unwrap().iter().find(|e| e["action"] == "environment.create").unwrap();
    assert_eq!(created["details"]["template"], "web");
    assert_eq!(created["details"]["params"]["app_name"], nasty);

    // The catalog has it, with its FQDN and CIDR.
    let catalog = server.get("/api/v1/catalog?product=shop").await;
    let entry = catalog["environments"].as_array().unwrap().iter().find(|e| e["name"] == "shop-dev1").unwrap();
    assert_eq!(
        (entry["fqdn"].as_str(), entry["cidr"].as_str()),
        (Some("shop-dev1.sandbox.localhost"), Some("10.20.0.0/24"))
    );
    assert_eq!(catalog["products"][0]["owner"], "team-shop");

    // Terraform's own state lock of an environment is released from its kept root, like a
    // stack's from the main branch (a local backend has no lock held by another process).
    let answer = server
        .post("/api/v1/stacks/unlock", &server.admin, json!({"stack": "env/shop-dev1", "state_lock": "0123-abcd"}))
        .await;
    assert_ne!(answer.status, 404, "{}", answer.text);
    assert!(answer.text.contains("force-unlock"), "terraform ran in the kept root: {}", answer.text);

    // A plan of an update shows what would change and changes nothing.
    let kept_before = read(&root.join("terraform.tfvars.json"));
    let answer = server
        .post(
            "/api/v1/environments/shop-dev1/update",
            &server.admin,
            json!({"params": {"app_name": "renamed"}, "plan_only": true}),
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    let run_id = answer.body["run"]["id"].as_i64().unwrap();
    let planned = server.wait_run(run_id, |r| r.status.is_final(r.mode)).await;
    assert_eq!(planned.status.as_str(), "planned", "{planned:?}");
    let plan = planned.plan.unwrap();
    assert!(plan.resources.iter().any(|r| r.address == "module.template.terraform_data.marker"), "{plan:?}");
    assert_eq!(read(&dir.join("app_name")), nasty, "a plan changes nothing");
    assert_eq!(read(&root.join("terraform.tfvars.json")), kept_before, "nor the kept root");
    // The plan's own root goes once its run has ended.
    eventually("the plan's root to go", LONG, || async {
        let left: Vec<_> = std::fs::read_dir(root.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        (left == [std::ffi::OsString::from("root")]).then_some(())
    })
    .await;

    // An update renders the root again with the new value, plans and applies.
    let answer = server
        .post("/api/v1/environments/shop-dev1/update", &server.admin, json!({"params": {"app_name": "renamed"}}))
        .await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    let body = ended(&server, "shop-dev1", answer.body["request"]["id"].as_i64().unwrap()).await;
    assert_eq!(body["environment"]["status"], "ready", "{body:#}");
    assert_eq!(read(&dir.join("app_name")), "renamed");
    assert_eq!(body["environment"]["params"]["replicas"], 3, "values not given keep theirs");

    // The destroy uses the kept root and frees the block.
    let answer = server.call("DELETE", "/api/v1/environments/shop-dev1", Some(&server.admin), None).await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    let body = ended(&server, "shop-dev1", answer.body["request"]["id"].as_i64().unwrap()).await;
    assert_eq!(body["environment"]["status"], "destroyed", "{body:#}");
    assert!(!dir.exists(), "the destroy removed the markers");
    let answer = create(
        &server,
        "web",
        "shop-dev2",
        json!({"marker_dir": markers.path().display().to_string(), "app_name": "x"}),
    )
    .await;
    assert_eq!(answer.body["environment"]["cidr"], "10.20.0.0/24", "the block was freed: {}", answer.text);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_apply_is_destroyed_at_once_and_leaves_nothing_behind() {
    let markers = tempfile::tempdir().unwrap();
    let server = setup(CONFIG, markers.path()).await;
    let params = json!({"marker_dir": markers.path().display().to_string(), "app_name": "broken", "fail": true});
    let answer = create(&server, "web", "shop-broken", params).await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    let body = ended(&server, "shop-broken", answer.body["request"]["id"].as_i64().unwrap()).await;
    let env = &body["environment"];
    assert_eq!(env["status"], "failed", "{body:#}");
    let reason = env["reason"].as_str().unwrap();
    assert!(reason.contains("the apply failed and what it made was destroyed"), "{reason}");
    let request = &body["requests"][0];
    assert_eq!(request["status"], "failed");
    let runs: Vec<i64> = request["runs"].as_array().unwrap().iter().map(|r| r.as_i64().unwrap()).collect();
    assert_eq!(runs.len(), 2, "the apply, then the cleanup: {request:#}");
    let apply = server.run(runs[0]).await;
    let cleanup = server.run(runs[1]).await;
    assert_eq!((apply.status.as_str(), apply.destroy), ("failed", false));
    assert_eq!((cleanup.status.as_str(), cleanup.destroy), ("applied", true));
    assert_eq!(cleanup.approved_by.as_deref(), Some("plinth (cleanup of a failed apply)"));
    let logs = server.call("GET", &format!("/api/v1/runs/{}/logs", runs[0]), Some(&server.admin), None).await.text;
    assert!(logs.contains("failing on purpose"), "{logs}");
    assert!(!markers.path().join("shop-broken").exists(), "the markers the apply wrote are gone");
    // Nothing is held: the name and the block are free.
    let envs = server.get("/api/v1/environments").await;
    assert!(envs["environments"].as_array().unwrap().is_empty(), "{envs:#}");
    let all = server.get("/api/v1/environments?all=true").await;
    assert_eq!(all["environments"][0]["cidr"], "10.20.0.0/24", "its history is kept");
    let answer = create(
        &server,
        "web",
        "shop-broken",
        json!({"marker_dir": markers.path().display().to_string(), "app_name": "ok"}),
    )
    .await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_one_account_run_one_at_a_time_in_order() {
    let markers = tempfile::tempdir().unwrap();
    let server = setup(CONFIG, markers.path()).await;
    let marker_dir = markers.path().display().to_string();
    let mut ids = Vec::new();
    for (i, template) in ["slow", "web", "slow"].iter().enumerate() {
        let params = json!({"marker_dir": marker_dir, "app_name": format!("a{i}"), "sleep": 1});
        let answer = create(&server, template, &format!("acct-{i}"), params).await;
        assert_eq!(answer.status, 202, "{}", answer.text);
        if i > 0 {
            let message = answer.body["message"].as_str().unwrap();
            assert!(message.contains("queued behind") && message.contains("account `sandbox-a`"), "{message}");
        }
        ids.push(answer.body["request"]["id"].as_i64().unwrap());
    }
    // Another account does not wait for these.
    let params = json!({"marker_dir": marker_dir, "app_name": "b", "sleep": 1});
    let other = create(&server, "other", "acct-other", params).await;
    assert_eq!(other.status, 202, "{}", other.text);
    assert!(other.body["ahead"].as_array().unwrap().is_empty(), "{}", other.text);
    for (i, id) in ids.iter().enumerate() {
        let body = ended(&server, &format!("acct-{i}"), *id).await;
        assert_eq!(body["environment"]["status"], "ready", "{body:#}");
    }
    ended(&server, "acct-other", other.body["request"]["id"].as_i64().unwrap()).await;
    // Each apply wrote when it started and ended: the three of sandbox-a never overlap, and
    // went in request order.
    let span = |name: &str| -> (f64, f64) {
        let text = read(&markers.path().join(format!("timeline-{name}")));
        let time = |word: &str| {
            text.lines().find(|l| l.starts_with(word)).unwrap().split(' ').nth(1).unwrap().parse::<f64>().unwrap()
        };
        (time("start"), time("end"))
    };
    let spans: Vec<(f64, f64)> = (0..3).map(|i| span(&format!("acct-{i}"))).collect();
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "applies of one account overlapped or ran out of order: {spans:?}");
    }
    let requests = server.get("/api/v1/environment-requests").await;
    let started: Vec<(i64, String)> = requests["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["account"] == "sandbox-a")
        .map(|r| (r["id"].as_i64().unwrap(), r["started_at"].as_str().unwrap().to_owned()))
        .collect();
    let mut by_start = started.clone();
    by_start.sort_by(|a, b| a.1.cmp(&b.1));
    let mut by_id = started;
    by_id.sort();
    assert_eq!(by_start, by_id, "started in the order they were made");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_never_overlap_under_concurrent_requests_and_a_full_pool_says_so() {
    let markers = tempfile::tempdir().unwrap();
    let server = setup(CONFIG, markers.path()).await;
    let marker_dir = markers.path().display().to_string();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let url = server.url.clone();
        let admin = server.admin.clone();
        let body = json!({"template": "web", "product": "shop", "name": format!("pool-{i}"), "params": {"marker_dir": marker_dir, "app_name": "p"}});
        tasks.push(tokio::spawn(async move {
            let response = reqwest::Client::new()
                .post(format!("{url}/api/v1/environments"))
                .bearer_auth(admin)
                .json(&body)
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }));
    }
    let mut blocks = Vec::new();
    let mut full = 0;
    for task in tasks {
        let (status, body) = task.await.unwrap();
        match status {
            202 => blocks.push(body["environment"]["cidr"].as_str().unwrap().to_owned()),
            409 => {
                assert_eq!(body["error"]["code"], "environment.pool_exhausted", "{body}");
                assert!(body["error"]["message"].as_str().unwrap().contains("no free /24"), "{body}");
                assert!(body["error"]["help"].as_str().unwrap().contains("[cidr_pools.sandbox]"), "{body}");
                full += 1;
            }
            other => panic!("{other}: {body}"),
        }
    }
    blocks.sort();
    assert_eq!(blocks, ["10.20.0.0/24", "10.20.1.0/24", "10.20.2.0/24", "10.20.3.0/24"]);
    assert_eq!(full, 2);
    // Lists page by name, and say where the next page starts.
    let names = |body: &Value| -> Vec<String> {
        body["environments"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_owned()).collect()
    };
    let first = server.get("/api/v1/environments?limit=3").await;
    assert_eq!(first["next"], names(&first)[2], "{first:#}");
    let rest = server.get(&format!("/api/v1/catalog?limit=3&after={}", first["next"].as_str().unwrap())).await;
    assert!(rest["next"].is_null(), "{rest:#}");
    let mut all = names(&first);
    all.extend(names(&rest));
    assert_eq!(all.len(), 4, "{all:?}");
    assert!(all.windows(2).all(|w| w[0] < w[1]), "{all:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_say_what_is_wrong() {
    let markers = tempfile::tempdir().unwrap();
    let server = setup(CONFIG, markers.path()).await;
    let dir = markers.path().display().to_string();
    let cases: Vec<(&str, &str, Value, u16, &str, &str)> = vec![
        (
            "web",
            "x1",
            json!({"marker_dir": dir, "app_name": "a", "replicas": 11}),
            400,
            "environment.bad_parameter",
            "parameter `replicas`: 11 is above the maximum 10 [max]",
        ),
        (
            "web",
            "x1",
            json!({"marker_dir": dir}),
            400,
            "environment.bad_parameter",
            "parameter `app_name`: is required",
        ),
        (
            "web",
            "x1",
            json!({"marker_dir": dir, "app_name": "a", "colour": "red"}),
            400,
            "environment.bad_parameter",
            "parameter `colour`",
        ),
        (
            "web",
            "x1",
            json!({"marker_dir": dir, "app_name": "a", "auth": "maybe"}),
            400,
            "environment.bad_parameter",
            "must be true or false",
        ),
        ("nope", "x1", json!({}), 404, "template.not_found", "no template `nope`"),
        ("web", "Bad_Name", json!({}), 400, "environment.bad_name", "not a valid environment name"),
        (
            "web",
            "sandbox",
            json!({"marker_dir": dir, "app_name": "a"}),
            409,
            "environment.exists",
            "environment of plinth.toml",
        ),
    ];
    for (template, name, params, status, code, message) in cases {
        let answer = create(&server, template, name, params.clone()).await;
        assert_eq!((answer.status, answer.code()), (status, code), "{template} {name} {params}: {}", answer.text);
        assert!(answer.body["error"]["message"].as_str().unwrap().contains(message), "{}", answer.text);
        assert!(!answer.body["error"]["help"].as_str().unwrap().is_empty());
    }
    let answer = server
        .post(
            "/api/v1/environments",
            &server.admin,
            json!({"template": "web", "product": "blog", "name": "x2", "params": {}}),
        )
        .await;
    assert_eq!((answer.status, answer.code()), (400, "environment.unknown_product"), "{}", answer.text);
    assert!(answer.text.contains("products: shop"), "{}", answer.text);
    // Only developers and admins provision; ci tokens get 403.
    let ci = server.token("ci-bot", &["ci"]).await;
    let answer =
        server.post("/api/v1/environments", &ci, json!({"template": "web", "product": "shop", "name": "x3"})).await;
    assert_eq!((answer.status, answer.code()), (403, "auth.forbidden"), "{}", answer.text);
    let answer = server.call("DELETE", "/api/v1/environments/nothing-here", Some(&server.admin), None).await;
    assert_eq!((answer.status, answer.code()), (404, "environment.not_found"), "{}", answer.text);
    server.stop().await;
}

async fn review_status(server: &Server, name: &str, want: &str) -> Value {
    eventually(&format!("{name} {want}"), Duration::from_secs(120), || async {
        let answer = server.call("GET", &format!("/api/v1/environments/{name}"), Some(&server.admin), None).await;
        (answer.status == 200 && answer.body["environment"]["status"] == want).then_some(answer.body)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_environments_follow_pushes_and_branch_deletions() {
    let markers = tempfile::tempdir().unwrap();
    let mut server = setup(CONFIG, markers.path()).await;
    // A branch, a branch stacked on it, and two branches whose names give the same slug.
    server.repo.branch("feature/login");
    server.repo.write("app.txt", "login\n");
    server.repo.commit("login");
    server.repo.branch("feature/login-2fa");
    server.repo.write("app.txt", "2fa\n");
    server.repo.commit("2fa on top of login");
    server.repo.checkout("main");
    server.repo.branch("feature-login");
    server.repo.commit("same slug as feature/login");
    server.repo.checkout("main");

    // Which of the two same-slug branches gets the plain slug depends on which one plinth saw
    // first; the other ends in a hash of its name.
    let by_branch = eventually("three ready review environments", Duration::from_secs(120), || async {
        let body = server.get("/api/v1/environments?review=true").await;
        let ready: Vec<Value> =
            body["environments"].as_array().unwrap().iter().filter(|e| e["status"] == "ready").cloned().collect();
        (ready.len() == 3).then(|| {
            ready
                .into_iter()
                .map(|e| (e["review"]["branch"].as_str().unwrap().to_owned(), e))
                .collect::<std::collections::BTreeMap<String, Value>>()
        })
    })
    .await;
    for (branch, env) in &by_branch {
        let slug = env["review"]["slug"].as_str().unwrap();
        assert_eq!(env["name"], format!("review-{slug}"), "{branch}");
        assert_eq!(env["workspace"], slug, "the workspace is named after the branch's slug");
        assert_eq!(env["fqdn"], format!("{slug}.review.localhost"));
        assert_eq!(read(&markers.path().join(format!("review-{slug}/workspace"))), slug);
    }
    assert_eq!(by_branch["feature/login-2fa"]["review"]["slug"], "feature-login-2fa");
    let mut clashing: Vec<&str> =
        ["feature/login", "feature-login"].iter().map(|b| by_branch[*b]["review"]["slug"].as_str().unwrap()).collect();
    clashing.sort();
    assert_eq!(clashing[0], "feature-login");
    assert!(
        clashing[1].starts_with("feature-login-") && clashing[1].len() == "feature-login-".len() + 8,
        "{clashing:?}"
    );
    let name = |branch: &str| by_branch[branch]["name"].as_str().unwrap().to_owned();

    // Deleting the base branch and the one stacked on it tears both down.
    server.repo.delete_branch("feature/login-2fa");
    server.repo.delete_branch("feature/login");
    let gone = review_status(&server, &name("feature/login"), "destroyed").await;
    assert_eq!(gone["environment"]["reason"], "branch `feature/login` was deleted");
    review_status(&server, &name("feature/login-2fa"), "destroyed").await;
    assert!(!markers.path().join(name("feature/login")).exists());
    assert!(!markers.path().join(name("feature/login-2fa")).exists());
    assert!(markers.path().join(name("feature-login")).exists(), "the other branch keeps its environment");
    let requests = server.get("/api/v1/environment-requests").await;
    let destroys: Vec<&Value> =
        requests["requests"].as_array().unwrap().iter().filter(|r| r["kind"] == "destroy").collect();
    assert_eq!(destroys.len(), 2, "one destroy each, however many polls saw the branch gone: {requests:#}");
    assert!(destroys.iter().all(|r| r["requested_by"] == "plinth"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_environments_expire_and_respect_the_maximum() {
    let markers = tempfile::tempdir().unwrap();
    let config = CONFIG.replace("ttl = \"1h\"", "ttl = \"4s\"").replace("max = 4", "max = 1");
    let mut server = setup(&config, markers.path()).await;
    server.repo.branch_commit("feature/one", "one");
    server.repo.checkout("main");
    review_status(&server, "review-feature-one", "ready").await;
    // One head only, so one refusal: a new head would be refused, and said, again.
    server.repo.branch_commit("feature/two", "two");
    server.repo.checkout("main");
    // No room for a second one: said once in the audit log.
    let refused = eventually("the refusal", LONG, || async {
        let audit = server.get("/api/v1/audit?limit=1000").await;
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "environment.review_refused")
            .map(|e| e["details"]["reason"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
            .first()
            .cloned()
    })
    .await;
    assert!(refused.contains("the most [review] max allows"), "{refused}");
    // With no push for longer than the TTL, the first goes, which makes room for the second.
    let gone = review_status(&server, "review-feature-one", "destroyed").await;
    assert!(gone["environment"]["reason"].as_str().unwrap().contains("longer than the review TTL"), "{gone:#}");
    review_status(&server, "review-feature-two", "ready").await;
    let audit = server.get("/api/v1/audit?limit=1000").await;
    let refusals: Vec<&Value> =
        audit["entries"].as_array().unwrap().iter().filter(|e| e["action"] == "environment.review_refused").collect();
    assert_eq!(refusals.len(), 1, "said once, not on every poll: {refusals:#?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_on_after_a_restart() {
    let markers = tempfile::tempdir().unwrap();
    let server = setup(CONFIG, markers.path()).await;
    let marker_dir = markers.path().display().to_string();
    let slow = create(&server, "web", "first", json!({"marker_dir": marker_dir, "app_name": "a", "sleep": 2})).await;
    assert_eq!(slow.status, 202, "{}", slow.text);
    let queued = create(&server, "web", "second", json!({"marker_dir": marker_dir, "app_name": "b"})).await;
    assert_eq!(queued.status, 202, "{}", queued.text);
    // Stop while the first one's apply runs (the grace period lets it finish) and the second
    // one waits for the account.
    eventually("the first apply to start", LONG, || async {
        markers.path().join("timeline-first").exists().then_some(())
    })
    .await;
    let (repo, data) = server.stop().await;
    let server = Server::start_in(repo, data, |_| {}).await;
    for (name, answer) in [("first", &slow), ("second", &queued)] {
        let body = ended(&server, name, answer.body["request"]["id"].as_i64().unwrap()).await;
        assert_eq!(body["environment"]["status"], "ready", "{body:#}");
        assert_eq!(body["requests"][0]["runs"].as_array().unwrap().len(), 1, "no run was made twice: {body:#}");
    }
    assert_eq!(read(&markers.path().join("second/app_name")), "b");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_roots_are_committed_to_a_branch_when_asked() {
    let markers = tempfile::tempdir().unwrap();
    let config = format!("{CONFIG}\n[provisioning]\ncommit_branch = \"plinth/environments\"\n");
    let server = setup(&config, markers.path()).await;
    let params = json!({"marker_dir": markers.path().display().to_string(), "app_name": "kept ${x}"});
    let answer = create(&server, "web", "kept", params).await;
    let body = ended(&server, "kept", answer.body["request"]["id"].as_i64().unwrap()).await;
    assert_eq!(body["environment"]["status"], "ready", "{body:#}");
    // The watched repo has the branch, with the generated root and the template beside it.
    let show = |path: &str| server.repo.git(&["show", &format!("plinth/environments:{path}")]);
    assert!(show("environments/kept/main.tf").contains("module \"template\""));
    let tfvars: Value = serde_json::from_str(&show("environments/kept/terraform.tfvars.json")).unwrap();
    assert_eq!(tfvars["app_name"], "kept ${x}");
    assert!(show("environments/kept/repo/templates/web/main.tf").contains("terraform_data"));
    let log = server.repo.git(&["log", "--format=%an %s", "plinth/environments"]);
    assert!(log.starts_with("plinth create kept: succeeded"), "{log}");
    // plinth does not take its own branch for work to do.
    let events = server.get("/api/v1/events").await;
    assert!(events["events"].as_array().unwrap().iter().all(|e| e["branch"] != "plinth/environments"), "{events:#}");

    let answer = server.call("DELETE", "/api/v1/environments/kept", Some(&server.admin), None).await;
    let body = ended(&server, "kept", answer.body["request"]["id"].as_i64().unwrap()).await;
    assert_eq!(body["environment"]["status"], "destroyed", "{body:#}");
    let files = server.repo.git(&["ls-tree", "-r", "--name-only", "plinth/environments"]);
    assert!(!files.contains("environments/kept/"), "a destroyed environment's root leaves the branch: {files}");
    let log = server.repo.git(&["log", "--format=%s", "plinth/environments"]);
    assert_eq!(log.lines().count(), 2, "{log}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_in_an_environment_that_needs_approval_waits_for_an_approver() {
    let markers = tempfile::tempdir().unwrap();
    let config = format!("{CONFIG}\n[environments.guarded]\napproval = true\napprovers = [\"sre\"]\n");
    let mut server = setup(&config, markers.path()).await;
    server.repo.write("templates/guarded/main.tf", MODULE);
    server.repo.write(
        "templates/guarded/template.toml",
        &web_template("guarded").replace("environment = \"sandbox\"", "environment = \"guarded\""),
    );
    let commit = server.repo.commit("a guarded template");
    eventually("the guarded template", LONG, || async {
        let events = server.get("/api/v1/events").await;
        events["events"].as_array().unwrap().iter().any(|e| e["commit"] == commit.as_str()).then_some(())
    })
    .await;
    let params = json!({"marker_dir": markers.path().display().to_string(), "app_name": "g"});
    let answer = create(&server, "guarded", "guarded-1", params).await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    // The apply waits for the template environment's approvers; nothing is made meanwhile.
    let run = eventually("the run to wait for approval", LONG, || async {
        let body = server.get("/api/v1/environments/guarded-1").await;
        let id = body["requests"][0]["runs"][0].as_i64()?;
        let run = server.run(id).await;
        (run.status.as_str() == "awaiting_approval").then_some(run)
    })
    .await;
    assert_eq!(run.environment.as_deref(), Some("guarded"));
    assert!(!markers.path().join("guarded-1").exists());
    let body = server.get("/api/v1/environments/guarded-1").await;
    assert_eq!(body["environment"]["status"], "provisioning");
    let developer = server.token("dev", &["developer"]).await;
    let refused = server.post(&format!("/api/v1/runs/{}/approve", run.id), &developer, json!({})).await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    let sre = server.token("sre-1", &["sre"]).await;
    let approved = server.post(&format!("/api/v1/runs/{}/approve", run.id), &sre, json!({})).await;
    assert!(approved.status < 300, "{}", approved.text);
    let body = ended(&server, "guarded-1", answer.body["request"]["id"].as_i64().unwrap()).await;
    assert_eq!(body["environment"]["status"], "ready", "{body:#}");
    assert_eq!(read(&markers.path().join("guarded-1/app_name")), "g");
    assert_eq!(server.run(run.id).await.approved_by.as_deref(), Some("sre-1"));
    server.stop().await;
}
