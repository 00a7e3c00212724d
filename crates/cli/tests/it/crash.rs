//! Crash safety: the real `plinth server` killed with SIGKILL in the middle of an apply, then
//! started again.

use std::path::Path;

use crate::server::{LONG, Pipe, Server, watched_repo};

/// A stack whose apply runs a shell that says which revision it applies, records its pid,
/// marks that it started, sleeps `seconds`, and marks that it is done.
fn slow_stack(marks: &Path, rev: u32, seconds: u32) -> String {
    format!(
        "locals {{\n  rev = \"{rev}\"\n}}\n\nresource \"terraform_data\" \"slow\" {{\n  triggers_replace = local.rev\n  \
         provisioner \"local-exec\" {{\n    command = \"echo applying rev {rev}; echo $$ > {dir}/shell-{rev}; \
         touch {dir}/started-{rev}; sleep {seconds}; touch {dir}/done-{rev}\"\n  }}\n}}\n",
        dir = marks.display()
    )
}

/// Whether `pid` is a running process (a zombie has exited, so it does not count).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
        .map(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

fn id_for(server: &Server, commit: &str) -> String {
    let runs = server.runs_for(commit, 1);
    runs[0]["id"].as_i64().unwrap().to_string()
}

#[test]
fn a_killed_server_leaves_an_interrupted_locked_run_and_loses_nothing() {
    let mut server = Server::start(watched_repo());
    let marks = server.marks();
    server.repo.write(
        "plinth.toml",
        "[environments.stg]\nbranches = [\"main\"]\n[stacks.slow]\npath = \"slow\"\nenvironment = \"stg\"\n",
    );
    server.repo.write("slow/main.tf", &slow_stack(&marks, 1, 120));
    let first = server.repo.commit("slow apply");
    let first_id = id_for(&server, &first);
    // A second commit queues behind the running apply.
    server.eventually("the apply to start", || marks.join("started-1").exists().then_some(()));
    server.repo.write("slow/main.tf", &slow_stack(&marks, 2, 0));
    let second = server.repo.commit("next");
    let second_id = id_for(&server, &second);
    assert_eq!(server.run(second_id.parse().unwrap())["status"], "queued");

    // Killed right after a follower has seen the shell's output, which is stored in batches:
    // the spool must keep that line anyway.
    let mut follower = server.spawn(&server.admin, &["runs", "logs", &first_id, "--follow"]);
    follower.wait_for_line(Pipe::Stdout, "applying rev 1", LONG);
    server.kill();
    drop(follower);
    let shell = std::fs::read_to_string(marks.join("shell-1")).unwrap();
    // Terraform dies with the server (parent-death signal); its local-exec shell may linger
    // until the next start ends its process group.
    server.restart();
    server.eventually("leftover processes to be killed", || (!alive(&shell)).then_some(()));

    let interrupted = server.run(first_id.parse().unwrap());
    assert_eq!(interrupted["status"], "interrupted", "{interrupted:#}");
    let logs = server.admin(&["runs", "logs", &first_id]).success().stdout;
    assert!(logs.contains("applying rev 1"), "the log so far is kept:\n{logs}");
    assert!(logs.contains("plinth stopped while terraform was applying"), "{logs}");
    let order: Vec<&str> = logs.lines().collect();
    let applied_at = order.iter().position(|l| l.contains("applying rev 1")).unwrap();
    let note_at = order.iter().position(|l| l.contains("plinth stopped")).unwrap();
    assert!(applied_at < note_at, "the recovered lines come before the note:\n{logs}");
    // Nothing queued was lost, and nothing runs while the stack is locked.
    assert_eq!(server.run(second_id.parse().unwrap())["status"], "queued");
    let stacks = server.admin(&["stacks", "list", "--output", "json"]).success().json();
    assert_eq!(stacks["stacks"][0]["locks"][0]["reason"], "interrupted", "{stacks}");
    assert!(!marks.join("started-2").exists());
    assert!(!marks.join("done-1").exists());

    // Only an admin unlocks; then the queued run goes ahead, and the interrupted one stays so.
    let dev = server
        .admin(&["tokens", "create", "--name", "dev", "--role", "developer", "--output", "json"])
        .success()
        .json();
    let denied = server.cli(dev["secret"].as_str().unwrap(), &["runs", "unlock", "slow"]).failure();
    assert!(denied.stderr.contains("auth.forbidden"), "{}", denied.stderr);
    server.admin(&["runs", "unlock", "slow"]).success();
    let waited = server.admin(&["runs", "wait", &second_id]);
    assert_eq!(waited.code, 0, "{} {}", waited.stdout, waited.stderr);
    assert!(marks.join("done-2").exists());
    assert_eq!(server.run(first_id.parse().unwrap())["status"], "interrupted");
    assert!(!marks.join("done-1").exists(), "the interrupted apply never ran again");
    // Once every line is in the database, no spool is left behind.
    let spool = server.data_dir().join("log-spool");
    server.eventually("the spools to be removed", || std::fs::read_dir(&spool).unwrap().next().is_none().then_some(()));
    assert!(server.stop().success());
}
