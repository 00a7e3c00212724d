//! `plinth changed` given bad input: every case a clear message and exit 1, never a panic.

use plinth_testkit::TestRepo;

use crate::plinth;
use crate::seeds::seed_000;

#[test]
fn bad_revisions_missing_repos_and_broken_config_fail_clearly() {
    let mut t = seed_000();
    let cases: &[(&[&str], &str)] = &[
        (&["changed", "--base", "no-such-branch"], "repo.unknown_revision"),
        (&["changed", "--base", "main", "--head", "deadbeef"], "repo.unknown_revision"),
        (&["changed", "--base", "main", "--repo", "/nonexistent/plinth"], "repo.not_found"),
    ];
    for (args, code) in cases {
        let run = plinth(t.path(), args).failure();
        assert!(run.stderr.contains(code), "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains("help: "), "{args:?}: {}", run.stderr);
    }
    // A usage mistake is clap's: exit 2 with usage.
    assert_eq!(plinth(t.path(), &["changed", "--base"]).code, 2);
    let blob = t.git(&["rev-parse", "HEAD:README.md"]);
    let run = plinth(t.path(), &["changed", "--base", &blob]).failure();
    assert!(run.stderr.contains("repo.not_a_commit"), "{}", run.stderr);

    // The head commit's plinth.toml is broken: its errors, with positions.
    t.write("plinth.toml", "[stacks.app]\npath = \"terraform/gone\"\n");
    t.commit("break config");
    let run = plinth(t.path(), &["changed", "--base", "main"]).failure();
    assert!(run.stderr.contains("config.path_not_found") && run.stderr.contains("plinth.toml:2:8"), "{}", run.stderr);

    // JSON errors for scripts.
    let run = plinth(t.path(), &["changed", "--base", "nope", "--output", "json"]).failure();
    let json: serde_json::Value = serde_json::from_str(run.stderr.trim()).unwrap();
    assert_eq!(json["error"]["code"], "repo.unknown_revision");
}

#[test]
fn a_repo_without_plinth_toml_says_how_to_start() {
    let mut t = TestRepo::new();
    t.write("main.tf", "");
    t.commit("first");
    let run = plinth(t.path(), &["changed", "--base", "main"]).failure();
    assert!(run.stderr.contains("config.not_found") && run.stderr.contains("plinth init"), "{}", run.stderr);
}

#[test]
fn config_changes_trigger_the_stacks_whose_tables_changed() {
    let mut t = seed_000();
    let config = std::fs::read_to_string(t.path().join("plinth.toml")).unwrap();
    t.write("plinth.toml", &format!("{config}terraform = \"tofu\"\n"));
    t.commit("switch to tofu");
    let json = plinth(t.path(), &["changed", "--base", "main", "--output", "json"]).success().json();
    let reasons: Vec<&serde_json::Value> =
        json["stacks"].as_array().unwrap().iter().map(|s| &s["reasons"][0]).collect();
    assert_eq!(reasons.len(), 2);
    for r in reasons {
        assert_eq!(*r, serde_json::json!({"path": "plinth.toml", "via": "config"}));
    }
    // An environment-only edit changes no stack.
    let config = std::fs::read_to_string(t.path().join("plinth.toml")).unwrap();
    t.write("plinth.toml", &config.replace("approvers = [\"sre\"]", "approvers = [\"sre\", \"lead\"]"));
    t.commit("more approvers");
    assert!(plinth(t.path(), &["changed", "--base", "main"]).success().stdout.contains("No stack changed"));
}

#[test]
fn the_cache_can_be_moved_or_turned_off() {
    let mut t = seed_000();
    t.touch("modules/app/main.tf");
    t.commit("module");
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().to_str().unwrap();
    plinth(t.path(), &["changed", "--base", "main", "--cache-dir", dir]).success();
    assert!(std::fs::read_dir(cache.path()).unwrap().count() > 0);
    let before = std::fs::read_dir(t.path().join(".git/plinth/modules")).map(|d| d.count()).unwrap_or(0);
    plinth(t.path(), &["changed", "--base", "main", "--no-cache"]).success();
    let after = std::fs::read_dir(t.path().join(".git/plinth/modules")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(before, after);
}
