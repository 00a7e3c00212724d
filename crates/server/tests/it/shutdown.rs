//! Graceful shutdown: running applies get a grace period; an apply still running after it is
//! interrupted cleanly, stays locked until an admin unlocks it, and is never applied again by
//! itself.

use std::time::Duration;

use plinth_core::run::RunStatus;
use serde_json::json;

use crate::harness::{LONG, Server, empty_repo, eventually};

fn slow_stack(marks: &std::path::Path, seconds: u32, rev: u32) -> String {
    format!(
        "locals {{\n  rev = \"{rev}\"\n}}\n\nresource \"terraform_data\" \"slow\" {{\n  triggers_replace = local.rev\n  provisioner \"local-exec\" {{\n    command = \"touch {dir}/started-{rev}; sleep {seconds}; touch {dir}/done-{rev}\"\n  }}\n}}\n",
        dir = marks.display()
    )
}

const CONFIG: &str =
    "[environments.stg]\nbranches = [\"main\"]\n[stacks.slow]\npath = \"slow\"\nenvironment = \"stg\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_lets_running_applies_finish_within_the_grace_period() {
    let marks = tempfile::tempdir().unwrap();
    let mut server = Server::start(empty_repo(), |c| c.shutdown_grace = Duration::from_secs(30)).await;
    server.repo.write("plinth.toml", CONFIG);
    server.repo.write("slow/main.tf", &slow_stack(marks.path(), 2, 1));
    let commit = server.repo.commit("slow apply");
    eventually("the apply to start", LONG, || async { marks.path().join("started-1").exists().then_some(()) }).await;
    let (repo, data) = server.stop().await;
    assert!(marks.path().join("done-1").exists(), "the apply finished before the server stopped");
    // The database was closed: its write-ahead log is folded back in, and nothing is spooled.
    assert!(!data.path().join("plinth.db-wal").exists(), "the WAL is left behind");
    assert_eq!(std::fs::read_dir(data.path().join("log-spool")).unwrap().count(), 0);
    let server = Server::start_in(repo, data, |_| {}).await;
    let run = server.runs().await.into_iter().find(|r| r.commit == commit).unwrap();
    assert_eq!(run.status, RunStatus::Applied, "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_still_running_after_the_grace_period_is_interrupted_and_stays_locked() {
    let marks = tempfile::tempdir().unwrap();
    let mut server = Server::start(empty_repo(), |c| {
        c.shutdown_grace = Duration::from_millis(300);
        c.terraform_grace = Duration::from_secs(10);
    })
    .await;
    server.repo.write("plinth.toml", CONFIG);
    server.repo.write("slow/main.tf", &slow_stack(marks.path(), 60, 1));
    let commit = server.repo.commit("very slow apply");
    eventually("the apply to start", LONG, || async { marks.path().join("started-1").exists().then_some(()) }).await;
    let started = std::time::Instant::now();
    let (mut repo, data) = server.stop().await;
    assert!(started.elapsed() < Duration::from_secs(20), "the stop took {:?}", started.elapsed());
    assert!(!marks.path().join("done-1").exists());

    // Meanwhile another commit arrives for the same stack.
    repo.write("slow/main.tf", &slow_stack(marks.path(), 0, 2));
    let next = repo.commit("next");
    let server = Server::start_in(repo, data, |_| {}).await;
    let run = server.runs().await.into_iter().find(|r| r.commit == commit).unwrap();
    assert_eq!(run.status, RunStatus::Interrupted, "{run:?}");
    let logs = server.call("GET", &format!("/api/v1/runs/{}/logs", run.id), Some(&server.admin), None).await.text;
    assert!(logs.contains("plinth stopped while terraform was applying"), "{logs}");
    // The stack stays locked: the next commit's run waits, and nothing is applied again.
    let waiting = eventually("the next commit's run", LONG, || async {
        server.runs().await.into_iter().find(|r| r.commit == next)
    })
    .await;
    let stacks = server.get("/api/v1/stacks").await;
    assert_eq!(stacks["stacks"][0]["locks"][0]["reason"], "interrupted", "{stacks}");
    assert_eq!(server.run(waiting.id).await.status, RunStatus::Queued);
    assert!(!marks.path().join("started-2").exists());
    // An admin checks the state and unlocks; the queued run then goes ahead.
    let answer = server.post("/api/v1/stacks/unlock", &server.admin, json!({"stack": "slow"})).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let done = server.wait_run(waiting.id, |r| r.status.is_final(r.mode)).await;
    assert_eq!(done.status, RunStatus::Applied, "{done:?}");
    assert!(marks.path().join("done-2").exists());
    assert_eq!(server.run(run.id).await.status, RunStatus::Interrupted, "never applied again by itself");
}
