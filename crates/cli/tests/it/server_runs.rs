//! How runs end, as `plinth runs wait` reports them to a script (failed, rejected, cancelled,
//! timed out), and `plinth runs logs --follow` on a run that is still writing.

use std::time::Duration;

use serde_json::Value;

use crate::server::{LONG, Pipe, Server, watched_repo};

/// A stack whose only resource runs `command` (no double quotes) when it is created.
fn exec_stack(name: &str, command: &str) -> String {
    format!(
        "resource \"terraform_data\" \"{name}\" {{\n  provisioner \"local-exec\" {{\n    command = \"{command}\"\n  }}\n}}\n"
    )
}

fn id_of(run: &Value) -> String {
    run["id"].as_i64().unwrap().to_string()
}

#[test]
fn runs_wait_exit_codes_tell_failed_rejected_and_cancelled_runs_apart() {
    let mut server = Server::start(watched_repo());
    let marks = server.marks();
    let sre = server.admin(&["tokens", "create", "--name", "oncall", "--role", "sre", "--output", "json"]).success();
    let sre = sre.json()["secret"].as_str().unwrap().to_owned();
    server.repo.write(
        "plinth.toml",
        r#"[environments.stg]
branches = ["main"]

[environments.prd]
branches = ["main"]
approval = true
approvers = ["sre"]

[stacks.broken]
path = "broken"
environment = "stg"

[stacks.gated]
path = "gated"
environment = "prd"

[stacks.slow]
path = "slow"
environment = "stg"
"#,
    );
    server.repo.write("broken/main.tf", &exec_stack("broken", "echo about to fail; exit 1"));
    server.repo.write("gated/main.tf", "resource \"terraform_data\" \"gated\" {\n  input = \"gated\"\n}\n");
    let started = marks.join("slow-started");
    server.repo.write("slow/main.tf", &exec_stack("slow", &format!("touch {}; sleep 60", started.display())));
    let commit = server.repo.commit("three stacks");
    let runs = server.runs_for(&commit, 3);
    let (broken, gated, slow) = (id_of(&runs[0]), id_of(&runs[1]), id_of(&runs[2]));

    // A failing apply: exit 3, with the reason; terraform's output is in the log.
    let failed = server.admin(&["runs", "wait", &broken, "--timeout", "2m"]).exits(3);
    assert!(failed.stdout.starts_with(&format!("Run #{broken} (broken) ended failed: ")), "{}", failed.stdout);
    let failed = server.admin(&["runs", "wait", &broken, "--timeout", "2m", "--output", "json"]).exits(3);
    let run = failed.json();
    assert_eq!(run["status"], "failed");
    assert!(run["reason"].is_string(), "{run:#}");
    assert!(failed.stderr.is_empty(), "{}", failed.stderr);
    let logs = server.admin(&["runs", "logs", &broken]).success().stdout;
    assert!(logs.contains("about to fail"), "{logs}");
    assert!(logs.contains("plinth: Failed: "), "{logs}");

    // A run whose apply is sleeping: waiting with a short timeout gives up with 8; a cancel
    // interrupts terraform and the waiting script sees 6.
    server.eventually("the slow apply to start", || started.exists().then_some(()));
    let timed_out = server.admin(&["runs", "wait", &slow, "--timeout", "1s"]).exits(8);
    assert!(timed_out.stderr.contains(&format!("Run #{slow} is still applying after 1s.")), "{}", timed_out.stderr);
    let mut waiting = server.spawn(&server.admin, &["runs", "wait", &slow, "--timeout", "2m"]);
    waiting.wait_for_line(Pipe::Stderr, &format!("run #{slow} slow: applying"), LONG);
    let cancelled = server.admin(&["runs", "cancel", &slow]).success();
    assert_eq!(cancelled.stdout.trim(), format!("Interrupting run #{slow}; terraform stops cleanly."));
    let waited = waiting.finish(LONG).exits(6);
    assert!(
        waited.stdout.starts_with(&format!("Run #{slow} (slow) ended cancelled: cancelled while applying")),
        "{}",
        waited.stdout
    );
    assert!(waited.stderr.contains(&format!("run #{slow} slow: cancelled")), "{}", waited.stderr);
    let again = server.admin(&["runs", "cancel", &slow]).failure();
    assert!(again.stderr.starts_with("error[run.finished]: "), "{}", again.stderr);
    // The cancel released the stack's lock.
    let stacks = server.admin(&["stacks", "list", "--output", "json"]).success().json();
    let slow_stack =
        stacks["stacks"].as_array().unwrap().iter().find(|s| s["stack"]["name"] == "slow").unwrap().clone();
    assert_eq!(slow_stack["locks"], serde_json::json!([]), "{slow_stack:#}");
    assert_eq!(slow_stack["latest_run"]["status"], "cancelled", "{slow_stack:#}");

    // A production plan waits for approval; a script waiting on it sees 4 when it is rejected.
    server.wait_status(gated.parse().unwrap(), "awaiting_approval");
    let mut waiting = server.spawn(&sre, &["runs", "wait", &gated, "--timeout", "2m"]);
    waiting.wait_for_line(Pipe::Stderr, &format!("run #{gated} gated: awaiting_approval"), LONG);
    let rejected = server.cli(&sre, &["runs", "reject", &gated]).success();
    assert_eq!(rejected.stdout.trim(), format!("Rejected run #{gated}."));
    let waited = waiting.finish(LONG).exits(4);
    assert_eq!(waited.stdout.trim(), format!("Run #{gated} (gated) ended rejected: rejected by oncall"));
    let late = server.cli(&sre, &["runs", "approve", &gated, "--output", "json"]).failure();
    assert_eq!(late.json_error()["code"], "run.not_awaiting_approval");
    assert!(late.stdout.is_empty(), "{}", late.stdout);

    // Unknown runs are an error, not a wait.
    let missing = server.admin(&["runs", "wait", "9999", "--timeout", "2m"]).failure();
    assert!(missing.stderr.starts_with("error[run.not_found]: there is no run #9999"), "{}", missing.stderr);
}

#[test]
fn logs_follow_a_running_run_until_it_ends() {
    let mut server = Server::start(watched_repo());
    let marks = server.marks();
    let (started, go) = (marks.join("ticker-started"), marks.join("go"));
    server.repo.write(
        "plinth.toml",
        "[environments.stg]\nbranches = [\"main\"]\n\n[stacks.ticker]\npath = \"ticker\"\nenvironment = \"stg\"\n",
    );
    // Prints a line, then holds until the test says go (at most a minute), then prints more
    // with short sleeps between them.
    let command = format!(
        "echo tick 1; touch {started}; i=0; while [ ! -e {go} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; \
         for n in 2 3 4 5; do echo tick $n; sleep 0.2; done",
        started = started.display(),
        go = go.display()
    );
    server.repo.write("ticker/main.tf", &exec_stack("ticker", &command));
    let commit = server.repo.commit("ticker");
    let id = id_of(&server.runs_for(&commit, 1)[0]);
    server.eventually("the ticker's apply to start", || started.exists().then_some(()));
    // Follow once `tick 1` is stored, while terraform is quiet at the barrier. The server
    // broadcasts each line at once but stores lines in batches (every 200 ms); a follower that
    // subscribes in between reads the store, then skips to the live lines, and never gets the
    // lines in the gap (a known server bug). Following in a quiet moment keeps this test about
    // the client.
    server.eventually("tick 1 to be stored", || {
        server.admin(&["runs", "logs", &id]).success().stdout.contains("(local-exec): tick 1").then_some(())
    });

    let mut follow = server.spawn(&server.admin, &["runs", "logs", &id, "--follow"]);
    follow.wait_for_line(Pipe::Stdout, "(local-exec): tick 1", LONG);
    assert!(follow.running(), "--follow ended while the run was still applying");
    assert_eq!(server.run(id.parse().unwrap())["status"], "applying");
    std::fs::write(&go, "").unwrap();
    let followed = follow.finish(LONG).success();
    let lines: Vec<&str> = followed.stdout.lines().collect();
    let ticks: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split_once("(local-exec): ").map(|(_, text)| text))
        .filter(|t| t.starts_with("tick"))
        .collect();
    assert_eq!(ticks, ["tick 1", "tick 2", "tick 3", "tick 4", "tick 5"], "{}", followed.stdout);
    assert!(lines.iter().any(|l| l.starts_with("$ terraform init")), "{}", followed.stdout);
    assert_eq!(lines.last(), Some(&"plinth: Applied."), "{}", followed.stdout);
    assert_eq!(server.run(id.parse().unwrap())["status"], "applied");

    // Afterwards, the stored log is the same; -f on an ended run prints it and ends.
    let stored = server.admin(&["runs", "logs", &id]).success().stdout;
    assert_eq!(stored, followed.stdout);
    let again =
        server.spawn(&server.admin, &["runs", "logs", &id, "-f", "--output", "json"]).finish(Duration::from_secs(30));
    let again = again.success();
    let seqs: Vec<u64> =
        again.stdout.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=lines.len() as u64).collect::<Vec<_>>());
    // --after skips what was already seen.
    let rest = server.admin(&["runs", "logs", &id, "--after", "3"]).success().stdout;
    assert_eq!(rest.lines().collect::<Vec<_>>(), lines[3..]);
}
