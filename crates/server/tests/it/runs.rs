//! What commits turn into: runs that plan and apply per policy, no-change successes, plans
//! only on other branches, approvals, serialized applies, stale plans, dependency order, logs,
//! workspaces.

use plinth_core::run::{RunMode, RunStatus};
use serde_json::json;

use plinth_testkit::write_seed_000;

use crate::harness::{LONG, Server, empty_repo, eventually, timed_stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_commits_apply_and_no_changes_is_a_success() {
    let mut server = Server::start(empty_repo(), |_| {}).await;
    write_seed_000(&server.repo);
    let commit = server.repo.commit("layout");
    let runs = server.settle(&commit, 2).await;
    let stg = runs.iter().find(|r| r.stack == "app/stg").unwrap();
    let prd = runs.iter().find(|r| r.stack == "app/prd").unwrap();
    assert_eq!(stg.mode, RunMode::Apply);
    assert_eq!(stg.status, RunStatus::Applied, "{stg:?}");
    assert_eq!(stg.plan.as_ref().unwrap().add, 1);
    assert_eq!(stg.plan.as_ref().unwrap().resources[0].address, "module.app.terraform_data.app");
    assert_eq!(prd.status, RunStatus::AwaitingApproval);

    // A README-only commit makes no runs; the event says why.
    server.repo.touch("README.md");
    let docs = server.repo.commit("docs");
    let event = eventually("the docs event", LONG, || async {
        let events = server.get("/api/v1/events").await;
        events["events"].as_array().unwrap().iter().find(|e| e["commit"] == docs.as_str()).cloned()
    })
    .await;
    assert_eq!(event["note"], "no stack changed");
    assert!(server.runs().await.iter().all(|r| r.commit != docs));

    // A commit that touches stg without changing its resources: no changes, a success.
    server.repo.write("terraform/stg/notes.tf", "# just a comment\n");
    let comment = server.repo.commit("comment");
    let runs = server.settle(&comment, 1).await;
    assert_eq!(runs[0].status, RunStatus::NoChanges);
    assert!(runs[0].plan.is_none());
    assert!(runs[0].status.is_success(runs[0].mode));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_branches_plan_but_never_apply() {
    let mut server = Server::start(empty_repo(), |_| {}).await;
    write_seed_000(&server.repo);
    let layout = server.repo.commit("layout");
    server.settle(&layout, 2).await;
    server.repo.git(&["checkout", "-q", "-b", "feature/rename"]);
    server.repo.write(
        "modules/app/main.tf",
        "variable \"env\" {}\n\nresource \"terraform_data\" \"app\" {\n  input = \"renamed-${var.env}\"\n}\n\noutput \"name\" {\n  value = terraform_data.app.output\n}\n",
    );
    let feature = server.repo.commit("rename on a branch");
    let runs = server.settle(&feature, 2).await;
    for run in &runs {
        assert_eq!(run.mode, RunMode::Plan, "{run:?}");
        assert_eq!(run.status, RunStatus::Planned, "{run:?}");
        assert_eq!(run.branch.as_deref(), Some("feature/rename"));
        assert_eq!(run.plan.as_ref().unwrap().change + run.plan.as_ref().unwrap().add, 1, "{run:?}");
    }
    // Nothing was applied: the stg state still holds the old value.
    let state = std::fs::read_to_string(server.data_path().join("state/app%2Fstg/terraform.tfstate")).unwrap();
    assert!(state.contains("app-stg") && !state.contains("renamed"), "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_waits_for_an_approver() {
    let mut server = Server::start(empty_repo(), |_| {}).await;
    let developer = server.token("dev", &["developer"]).await;
    let sre = server.token("oncall", &["sre"]).await;
    let ci = server.token("ci", &["ci"]).await;
    write_seed_000(&server.repo);
    let commit = server.repo.commit("layout");
    let runs = server.settle(&commit, 2).await;
    let prd = runs.iter().find(|r| r.stack == "app/prd").unwrap().clone();
    assert_eq!(prd.status, RunStatus::AwaitingApproval);
    let workspace = server.data_path().join(format!("workspaces/{}", prd.id));
    assert!(workspace.join("plan.tfplan.sealed").exists(), "the plan is kept while waiting, encrypted");
    assert!(!workspace.join("plan.tfplan").exists(), "and not in plaintext");

    let path = format!("/api/v1/runs/{}/approve", prd.id);
    // A developer may read the run but not approve it: the answer names who may.
    let answer = server.post(&path, &developer, json!({})).await;
    assert_eq!((answer.status, answer.code()), (403, "auth.forbidden"), "{}", answer.text);
    assert!(answer.body["error"]["help"].as_str().unwrap().contains("sre"), "{}", answer.text);
    // A ci token may not even read it.
    let answer = server.post(&path, &ci, json!({})).await;
    assert_eq!((answer.status, answer.code()), (403, "auth.forbidden"), "{}", answer.text);
    assert_eq!(server.run(prd.id).await.status, RunStatus::AwaitingApproval);

    let answer = server.post(&path, &sre, json!({})).await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    let applied = server.wait_run(prd.id, |r| r.status.is_final(r.mode)).await;
    assert_eq!(applied.status, RunStatus::Applied, "{applied:?}");
    assert_eq!(applied.approved_by.as_deref(), Some("oncall"));
    assert!(
        !server.data_path().join(format!("workspaces/{}", prd.id)).exists(),
        "the workspace goes when the run ends"
    );

    // Approving again: not awaiting approval any more.
    let again = server.post(&path, &sre, json!({})).await;
    assert_eq!(again.status, 409);
    assert_eq!(again.code(), "run.not_awaiting_approval");

    // A rejection ends the next prd run.
    server.repo.write(
        "modules/app/main.tf",
        "variable \"env\" {}\n\nresource \"terraform_data\" \"app\" {\n  input = \"v2-${var.env}\"\n}\n\noutput \"name\" {\n  value = terraform_data.app.output\n}\n",
    );
    let v2 = server.repo.commit("v2");
    let runs = server.settle(&v2, 2).await;
    let prd2 = runs.iter().find(|r| r.stack == "app/prd").unwrap();
    assert_eq!(prd2.status, RunStatus::AwaitingApproval);
    let answer = server.post(&format!("/api/v1/runs/{}/reject", prd2.id), &sre, json!({})).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let rejected = server.run(prd2.id).await;
    assert_eq!(rejected.status, RunStatus::Rejected);
    assert_eq!(rejected.reason.as_deref(), Some("rejected by oncall"));
}

/// Parses the apply timing log: (stack, start, end) per apply, in the order written.
fn applies(log: &std::path::Path) -> Vec<(String, f64, f64)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut starts: Vec<(String, f64)> = Vec::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let (kind, name, at) = (parts[0], parts[1].to_owned(), parts[2].parse::<f64>().unwrap());
        if kind == "start" {
            starts.push((name, at));
        } else if let Some(i) = starts.iter().position(|(n, _)| *n == name) {
            let (name, start) = starts.remove(i);
            out.push((name, start, at));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_of_one_state_never_overlap_and_stale_plans_are_not_applied() {
    let timing = tempfile::tempdir().unwrap();
    let log = timing.path().join("applies.log");
    let mut server = Server::start(empty_repo(), |c| c.concurrency = 4).await;
    server.repo.write(
        "plinth.toml",
        "[environments.stg]\nbranches = [\"main\"]\n[stacks.app]\npath = \"app\"\nenvironment = \"stg\"\n",
    );
    server.repo.write("app/main.tf", &timed_stack("app", 0, &log, 0.3));
    let first = server.repo.commit("rev 0");
    server.settle(&first, 1).await;

    // Many commits in quick succession, each changing the stack.
    let mut commits = Vec::new();
    for rev in 1..=6 {
        server.repo.write("app/main.tf", &timed_stack("app", rev, &log, 0.3));
        commits.push(server.repo.commit(&format!("rev {rev}")));
    }
    let last = commits.last().unwrap().clone();
    eventually("every run to end", LONG, || async {
        let runs = server.runs().await;
        let done = runs.iter().all(|r| r.status.is_final(r.mode)) && runs.iter().any(|r| r.commit == last);
        done.then_some(())
    })
    .await;
    let runs = server.runs().await;
    // The last commit's plan is applied; what runs there are apply in commit order, one at a time.
    let last_run = runs.iter().find(|r| r.commit == last).unwrap();
    assert_eq!(last_run.status, RunStatus::Applied, "{runs:#?}");
    let applied: Vec<i64> = runs.iter().filter(|r| r.status == RunStatus::Applied).map(|r| r.id).collect();
    let mut sorted = applied.clone();
    sorted.sort();
    assert_eq!(applied, sorted);
    let timings = applies(&log);
    assert_eq!(timings.len(), applied.len(), "one apply per applied run: {timings:?}");
    for pair in timings.windows(2) {
        assert!(pair[0].2 <= pair[1].1, "applies overlap: {pair:?}");
    }
    // Stale runs say what superseded them, and were never applied.
    for run in runs.iter().filter(|r| r.status == RunStatus::Stale) {
        let reason = run.reason.as_deref().unwrap();
        assert!(reason.contains("supersede"), "{reason}");
    }
    // The state holds the last revision.
    let state = std::fs::read_to_string(server.data_path().join("state/app/terraform.tfstate")).unwrap();
    assert!(state.contains("\"value\": \"6\""), "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependent_stack_waits_for_its_dependency_to_apply() {
    let timing = tempfile::tempdir().unwrap();
    let log = timing.path().join("applies.log");
    let mut server = Server::start(empty_repo(), |c| c.concurrency = 4).await;
    server.repo.write(
        "plinth.toml",
        "[environments.stg]\nbranches = [\"main\"]\n[stacks.common]\npath = \"common\"\nenvironment = \"stg\"\n\
         [stacks.app]\npath = \"app\"\nenvironment = \"stg\"\ndepends_on = [\"common\"]\n[stacks.other]\npath = \"other\"\nenvironment = \"stg\"\n",
    );
    server.repo.write("common/main.tf", &timed_stack("common", 1, &log, 0.5));
    server.repo.write("other/main.tf", &timed_stack("other", 1, &log, 0.5));
    // app reads common's outputs through its state, as docs/server.md shows.
    server.repo.write(
        "app/main.tf",
        &format!(
            "{}\nvariable \"plinth_state_dir\" {{}}\n\ndata \"terraform_remote_state\" \"common\" {{\n  backend = \"local\"\n  config = {{\n    path = \"${{var.plinth_state_dir}}/common/terraform.tfstate\"\n  }}\n}}\n\noutput \"common_rev\" {{\n  value = data.terraform_remote_state.common.outputs.rev\n}}\n",
            timed_stack("app", 1, &log, 0.2)
        ),
    );
    let commit = server.repo.commit("three stacks");
    let runs = server.settle(&commit, 3).await;
    for run in &runs {
        assert_eq!(run.status, RunStatus::Applied, "{run:?}");
    }
    let common = runs.iter().find(|r| r.stack == "common").unwrap();
    let app = runs.iter().find(|r| r.stack == "app").unwrap();
    assert_eq!(app.depends_on, [common.id]);
    assert_eq!((common.wave, app.wave), (1, 2));
    let timings = applies(&log);
    let end_common = timings.iter().find(|t| t.0 == "common").unwrap().2;
    let start_app = timings.iter().find(|t| t.0 == "app").unwrap().1;
    assert!(start_app >= end_common, "app started before common was applied: {timings:?}");
    // The independent stack ran alongside common.
    let other = timings.iter().find(|t| t.0 == "other").unwrap();
    let common_t = timings.iter().find(|t| t.0 == "common").unwrap();
    assert!(other.1 < common_t.2 && common_t.1 < other.2, "common and other should overlap: {timings:?}");
    // app's plan read common's output.
    let logs = server.call("GET", &format!("/api/v1/runs/{}/logs", app.id), Some(&server.admin), None).await;
    assert!(logs.text.contains("common_rev"), "{}", logs.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_get_their_own_workspace_and_logs_are_kept_and_streamed() {
    let marks = tempfile::tempdir().unwrap();
    let mut server = Server::start(empty_repo(), |_| {}).await;
    server.repo.write(
        "plinth.toml",
        "[environments.stg]\nbranches = [\"main\"]\n[stacks.blue]\npath = \"blue\"\nenvironment = \"stg\"\nworkspace = \"blue\"\nwatch = [\"shared/*.txt\"]\n",
    );
    server.repo.write("shared/data.txt", "shared file\n");
    server.repo.write(
        "blue/main.tf",
        &format!(
            r#"resource "terraform_data" "where" {{
  provisioner "local-exec" {{
    command = "pwd > {dir}/pwd; cat ../shared/data.txt > {dir}/shared; echo $TF_PLUGIN_CACHE_DIR > {dir}/cache; echo ws=${{terraform.workspace}}; env | grep -c PLINTH_TOKEN || true"
  }}
}}
"#,
            dir = marks.path().display()
        ),
    );
    let commit = server.repo.commit("blue");
    let run = server.settle(&commit, 1).await.remove(0);
    assert_eq!(run.status, RunStatus::Applied, "{run:?}");
    let pwd = std::fs::read_to_string(marks.path().join("pwd")).unwrap();
    assert!(pwd.trim().ends_with(&format!("workspaces/{}/checkout/blue", run.id)), "{pwd}");
    assert_eq!(std::fs::read_to_string(marks.path().join("shared")).unwrap(), "shared file\n");
    let cache = std::fs::read_to_string(marks.path().join("cache")).unwrap();
    assert!(cache.trim().ends_with("plugin-cache"), "{cache}");
    // The workspace is gone; the state is kept per workspace.
    assert!(!server.data_path().join(format!("workspaces/{}", run.id)).exists());
    assert!(server.data_path().join("state/blue/workspaces/blue/terraform.tfstate").exists());

    // Stored logs hold terraform's output and plinth's notes, in order, as text or JSON lines.
    let text = server.call("GET", &format!("/api/v1/runs/{}/logs", run.id), Some(&server.admin), None).await.text;
    assert!(text.contains("ws=blue"), "{text}");
    assert!(text.contains("$ terraform init"), "{text}");
    assert!(text.find("terraform plan").unwrap() < text.find("terraform apply").unwrap(), "{text}");
    assert!(text.trim_end().ends_with("plinth: Applied."), "{text}");
    let jsonl = server
        .call("GET", &format!("/api/v1/runs/{}/logs?format=jsonl&after=3", run.id), Some(&server.admin), None)
        .await
        .text;
    let first: serde_json::Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    assert_eq!(first["seq"], 4);

    // Following a finished run ends at once with everything.
    let followed =
        server.call("GET", &format!("/api/v1/runs/{}/logs?follow=true", run.id), Some(&server.admin), None).await.text;
    assert_eq!(followed, text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_a_running_run_streams_until_it_ends() {
    let mut server = Server::start(empty_repo(), |_| {}).await;
    server.repo.write(
        "plinth.toml",
        "[environments.stg]\nbranches = [\"main\"]\n[stacks.slow]\npath = \"slow\"\nenvironment = \"stg\"\n",
    );
    server.repo.write(
        "slow/main.tf",
        "resource \"terraform_data\" \"slow\" {\n  provisioner \"local-exec\" {\n    command = \"for i in 1 2 3 4 5; do echo tick $i; sleep 0.3; done\"\n  }\n}\n",
    );
    let commit = server.repo.commit("slow");
    let run = eventually("the run to start", LONG, || async {
        server.runs().await.into_iter().find(|r| r.commit == commit && r.status != RunStatus::Queued)
    })
    .await;
    let followed =
        server.call("GET", &format!("/api/v1/runs/{}/logs?follow=true", run.id), Some(&server.admin), None).await.text;
    for i in 1..=5 {
        assert!(followed.contains(&format!("tick {i}")), "{followed}");
    }
    assert!(followed.trim_end().ends_with("plinth: Applied."), "{followed}");
    assert_eq!(server.run(run.id).await.status, RunStatus::Applied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_interrupts_terraform_and_frees_the_stack() {
    let marks = tempfile::tempdir().unwrap();
    let mut server = Server::start(empty_repo(), |_| {}).await;
    let developer = server.token("dev", &["developer"]).await;
    server.repo.write(
        "plinth.toml",
        "[environments.stg]\nbranches = [\"main\"]\n[stacks.slow]\npath = \"slow\"\nenvironment = \"stg\"\n",
    );
    server.repo.write(
        "slow/main.tf",
        &format!(
            "resource \"terraform_data\" \"slow\" {{\n  provisioner \"local-exec\" {{\n    command = \"touch {}/started; sleep 60\"\n  }}\n}}\n",
            marks.path().display()
        ),
    );
    let commit = server.repo.commit("slow");
    let run = eventually("the apply to start", LONG, || async {
        if !marks.path().join("started").exists() {
            return None;
        }
        server.runs().await.into_iter().find(|r| r.commit == commit)
    })
    .await;
    assert_eq!(run.status, RunStatus::Applying);
    // A developer may cancel only its own runs; this one came from a commit.
    let denied = server.post(&format!("/api/v1/runs/{}/cancel", run.id), &developer, json!({})).await;
    assert_eq!(denied.status, 403, "{}", denied.text);
    let answer = server.post(&format!("/api/v1/runs/{}/cancel", run.id), &server.admin, json!({})).await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    let cancelled = server.wait_run(run.id, |r| r.status.is_final(r.mode)).await;
    assert_eq!(cancelled.status, RunStatus::Cancelled, "{cancelled:?}");
    let locks = server.get("/api/v1/stacks").await;
    assert!(locks["stacks"][0]["locks"].as_array().unwrap().is_empty(), "{locks}");
}

/// The files of a run's checkout, relative to it, without what terraform and plinth add.
const LIST_CHECKOUT: &str = "cd .. && find . ! -type d -not -path '*/.terraform/*' -not -name .terraform.lock.hcl \
     -not -name plinth_backend_override.tf.json | sort";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_gets_what_triggers_it_and_says_how_to_add_a_file_it_misses() {
    let marks = tempfile::tempdir().unwrap();
    let mut server = Server::start(empty_repo(), |_| {}).await;
    let stack_config =
        "[environments.stg]\nbranches = [\"main\"]\n[stacks.app]\npath = \"app\"\nenvironment = \"stg\"\n";
    server.repo.write("plinth.toml", stack_config);
    server.repo.write(
        "app/main.tf",
        &format!(
            r#"module "m" {{
  source = "../modules/m"
}}

resource "terraform_data" "app" {{
  input = jsondecode(file("../config/settings.json"))
  provisioner "local-exec" {{
    command = "{LIST_CHECKOUT} > {dir}/files"
  }}
}}
"#,
            dir = marks.path().display()
        ),
    );
    server.repo.write("modules/m/main.tf", "module \"lib\" {\n  source = \"../../lib\"\n}\n");
    server.repo.write("lib/main.tf", "output \"ok\" {\n  value = true\n}\n");
    server.repo.write("shared/versions.tf", "terraform {\n  required_version = \">= 1.0\"\n}\n");
    std::os::unix::fs::symlink("../shared/versions.tf", server.repo.path().join("app/versions.tf")).unwrap();
    server.repo.write("config/settings.json", "{\"size\": 1}\n");
    server.repo.write("other/big.txt", "not for this stack\n");
    let commit = server.repo.commit("app reads a file nobody declared");
    let run = server.settle(&commit, 1).await.remove(0);
    assert_eq!(run.status, RunStatus::Failed, "{run:?}");
    let log = server.call("GET", &format!("/api/v1/runs/{}/logs", run.id), Some(&server.admin), None).await.text;
    assert!(log.contains("no file exists at"), "{log}");
    assert!(log.contains("add them to the stack's `watch` in plinth.toml"), "{log}");

    // Declaring the file is a config change to the stack: it plans again, and now sees it.
    server.repo.write("plinth.toml", &format!("{stack_config}watch = [\"config/*.json\"]\n"));
    let commit = server.repo.commit("declare the settings");
    let run = server.settle(&commit, 1).await.remove(0);
    assert_eq!(run.status, RunStatus::Applied, "{run:?}");
    let files = std::fs::read_to_string(marks.path().join("files")).unwrap();
    assert_eq!(
        files.lines().collect::<Vec<_>>(),
        [
            "./app/main.tf",
            "./app/versions.tf",
            "./config/settings.json",
            "./lib/main.tf",
            "./modules/m/main.tf",
            "./plinth.toml",
            "./shared/versions.tf",
        ],
        "the stack, its modules through modules, its watched files, its symlinks' targets, plinth.toml"
    );
}
