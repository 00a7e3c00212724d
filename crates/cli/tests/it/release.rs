//! `plinth release` against a real server: a scoped ci token publishes from a file or stdin,
//! releases are listed, and bad input exits 1 with the server's code.

use std::io::Write;
use std::process::Stdio;

use crate::server::{Server, watched_repo};

const CONFIG: &str = "main_branch = \"main\"\n\n[environments.stg]\nbranches = [\"main\"]\n\n[services.api]\ncontainers = [\"app\"]\ncommand = [\"plinth\", \"demo-app\", \"--port\", \"{port}\", \"--version\", \"{image.app}\"]\n";

#[test]
fn ci_publishes_and_anyone_who_reads_lists() {
    let mut server = Server::start(watched_repo());
    server.repo.write("plinth.toml", CONFIG);
    let commit = server.repo.commit("a service");
    server.eventually("the commit to be seen", || {
        // Until the server has fetched the commit, the main branch has no plinth.toml.
        let run = server.admin(&["stacks", "list", "--output", "json"]);
        (run.code == 0 && run.json()["commit"].as_str() == Some(commit.as_str())).then_some(())
    });
    let created = server
        .admin(&["tokens", "create", "--name", "ci", "--role", "ci", "--service", "api", "--output", "json"])
        .success()
        .json();
    let ci = created["secret"].as_str().unwrap().to_owned();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("imagedefinitions.json");
    std::fs::write(&file, r#"[{"name": "app", "imageUri": "v1"}]"#).unwrap();
    let file = file.display().to_string();
    let published = server
        .cli(
            &ci,
            &[
                "release",
                "publish",
                "--service",
                "api",
                "--env",
                "stg",
                "--image-definitions",
                &file,
                "--commit",
                &commit,
            ],
        )
        .success();
    assert_eq!(published.stdout.trim(), "Published release #1 of `api` to `stg`.");

    let mut command = server
        .command(&ci, &["release", "publish", "--service", "api", "--branch", "main", "--image-definitions", "-"]);
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    child.stdin.take().unwrap().write_all(br#"[{"name": "app", "imageUri": "v2"}]"#).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "Published release #2 of `api` to `stg`.");

    let listed = server.admin(&["release", "list", "--service", "api", "--env", "stg"]).success();
    let rows: Vec<&str> = listed.stdout.lines().skip(1).collect();
    assert!(
        rows[0].starts_with("#2") && rows[0].contains("app=v2") && rows[0].contains("branch:main"),
        "{}",
        listed.stdout
    );
    assert!(
        rows[1].starts_with("#1") && rows[1].contains("app=v1") && rows[1].contains(&commit[..10]),
        "{}",
        listed.stdout
    );

    std::fs::write(dir.path().join("bad.json"), r#"[{"name": "web", "imageUri": "v1"}]"#).unwrap();
    let bad = dir.path().join("bad.json").display().to_string();
    let run = server
        .cli(&ci, &["release", "publish", "--service", "api", "--env", "stg", "--image-definitions", &bad])
        .failure();
    assert!(run.stderr.contains("release.bad_image_definitions") && run.stderr.contains("`web`"), "{}", run.stderr);
    let run = server
        .cli(&ci, &["release", "publish", "--service", "api", "--env", "stg", "--image-definitions", "/nope.json"])
        .failure();
    assert!(run.stderr.contains("release.read_definitions"), "{}", run.stderr);
    let run = server.cli(&ci, &["release", "list", "--service", "api", "--env", "stg"]).failure();
    assert!(run.stderr.contains("auth.forbidden"), "{}", run.stderr);
    // One target only.
    let run = server.cli(
        &ci,
        &["release", "publish", "--service", "api", "--env", "stg", "--tag", "v1", "--image-definitions", &file],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
}
