//! `plinth secrets` against a real server: the value goes in on stdin and never comes back out,
//! bad input gets a clear error and exit 1, and a run shows the value masked.

use std::io::Write;
use std::process::Stdio;

use plinth_testkit::write_seed_000;

use crate::server::{Server, output_of, watched_repo};

const VALUE: &str = "cli-secret-value-7731";

/// Runs `plinth ARGS` as admin with `input` on stdin.
fn with_stdin(server: &Server, args: &[&str], input: &str) -> crate::Run {
    let mut command = server.command(&server.admin, args);
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    crate::Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A stack that prints the secret when it applies, replaced whenever `rev` changes.
fn echo_stack(rev: u32) -> String {
    format!(
        "resource \"terraform_data\" \"x\" {{\n  triggers_replace = \"{rev}\"\n  provisioner \"local-exec\" {{\n    command = \"echo value=$API_TOKEN\"\n  }}\n}}\n"
    )
}

#[test]
fn secrets_go_in_on_stdin_and_never_come_out() {
    let mut server = Server::start(watched_repo());
    write_seed_000(&server.repo);
    server.repo.write("terraform/stg/main.tf", &echo_stack(1));
    let layout = server.repo.commit("layout");
    server.runs_for(&layout, 2);

    // `echo VALUE |` works: the trailing newline is not part of the value.
    let set = with_stdin(&server, &["secrets", "set", "API_TOKEN", "--env", "stg"], &format!("{VALUE}\n")).success();
    assert_eq!(set.stdout.trim(), "Set `API_TOKEN` for environment `stg` (version 1).");
    let set = with_stdin(&server, &["secrets", "set", "API_TOKEN", "--env", "stg"], VALUE).success();
    assert!(set.stdout.contains("(version 2)"), "{}", set.stdout);

    let listed = server.admin(&["secrets", "list"]).success();
    assert!(listed.stdout.contains("API_TOKEN") && listed.stdout.contains("environment"), "{}", listed.stdout);
    assert!(!listed.stdout.contains(VALUE));
    let json = server.admin(&["secrets", "list", "--env", "stg", "--output", "json"]).success().json();
    assert_eq!(json["secrets"][0]["version"], 2, "{json}");

    // Bad input: each a clear error and exit 1, the value never echoed.
    let cases: &[(&[&str], &str, &str)] = &[
        (&["secrets", "set", "API_TOKEN", "--env", "stg"], "", "secret.bad_value"),
        (&["secrets", "set", "API_TOKEN", "--env", "stg"], "abc", "secret.bad_value"),
        (&["secrets", "set", "API_TOKEN", "--env", "qa"], VALUE, "secret.bad_scope"),
        (&["secrets", "set", "api-token", "--env", "stg"], VALUE, "secret.bad_name"),
    ];
    for (args, input, code) in cases {
        let run = with_stdin(&server, args, input).failure();
        assert!(run.stderr.contains(code), "{args:?}: {}", run.stderr);
        assert!(!run.stderr.contains(VALUE), "{}", run.stderr);
    }
    // The value is never an argument.
    let run = server.admin(&["secrets", "set", "API_TOKEN", "--env", "stg", VALUE]);
    assert_eq!(run.code, 2, "{}", run.stderr);

    // A run on main gets it, masked.
    server.repo.write("terraform/stg/main.tf", &echo_stack(2));
    let v2 = server.repo.commit("v2");
    let runs = server.runs_for(&v2, 1);
    let id = runs[0]["id"].as_i64().unwrap().to_string();
    let waited = server.admin(&["runs", "wait", &id, "--timeout", "2m"]).success();
    assert!(waited.stdout.contains("ended applied"), "{}", waited.stdout);
    let logs = server.admin(&["runs", "logs", &id]).success();
    assert!(logs.stdout.contains("(local-exec): value=***"), "{}", logs.stdout);
    assert!(!logs.stdout.contains(VALUE));

    let removed = server.admin(&["secrets", "rm", "API_TOKEN", "--env", "stg"]).success();
    assert_eq!(removed.stdout.trim(), "Removed `API_TOKEN` from environment `stg`.");
    let again = server.admin(&["secrets", "rm", "API_TOKEN", "--env", "stg"]).failure();
    assert!(again.stderr.contains("secret.not_found"), "{}", again.stderr);

    let rotated = output_of(server.command(&server.admin, &["secrets", "rotate-master-key"])).success();
    assert!(
        rotated.stdout.starts_with("Rotated the master key: 0 secret(s) now wrapped by `local:"),
        "{}",
        rotated.stdout
    );
}
