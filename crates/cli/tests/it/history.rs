//! Histories that change detection must get right: merges, renames, deletions, first commits,
//! bare repos, odd names and module cycles.

use plinth_testkit::TestRepo;

use crate::seeds::seed_000;
use crate::{changed_names, plinth};

#[test]
fn a_first_commit_compares_against_the_empty_tree() {
    let t = seed_000();
    let json = plinth(t.path(), &["changed", "--base", "main", "--output", "json"]).success().json();
    assert_eq!(json["base"], "4b825dc642cb6eb9a060e54bf8d69288fbee4904");
    let names: Vec<&str> = json["stacks"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["app/prd", "app/stg"]);
}

#[test]
fn a_merge_on_main_counts_what_it_brought_in() {
    let mut t = seed_000();
    t.git(&["checkout", "-q", "-b", "feature"]);
    t.touch("terraform/prd/main.tf");
    t.commit("prd change");
    t.git(&["checkout", "-q", "main"]);
    t.touch("README.md");
    t.commit("docs on main");
    t.git(&["merge", "-q", "--no-ff", "-m", "merge feature", "feature"]);
    assert_eq!(changed_names(t.path(), &["--base", "main"]), ["app/prd"]);
    // The feature branch on its own, against main: only its work, not main's.
    assert_eq!(changed_names(t.path(), &["--base", "main", "--head", "feature"]), ["app/prd"]);
}

#[test]
fn a_rename_between_stacks_counts_on_both_sides() {
    let mut t = seed_000();
    t.write("terraform/stg/extra.tf", "# moved later\n");
    t.commit("extra in stg");
    t.rename("terraform/stg/extra.tf", "terraform/prd/extra.tf");
    t.commit("move extra to prd");
    let json = plinth(t.path(), &["changed", "--base", "main", "--output", "json"]).success().json();
    let got: Vec<(String, String)> = json["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().into(), s["reasons"][0]["path"].as_str().unwrap().into()))
        .collect();
    assert_eq!(
        got,
        [("app/prd".into(), "terraform/prd/extra.tf".into()), ("app/stg".into(), "terraform/stg/extra.tf".into())]
    );
}

#[test]
fn a_deleted_stack_directory_is_reported_as_deleted() {
    let mut t = seed_000();
    t.remove("terraform/prd");
    t.commit("retire prd");
    let json = plinth(t.path(), &["changed", "--base", "main", "--output", "json"]).success().json();
    assert_eq!(json["stacks"].as_array().unwrap().len(), 1);
    let prd = &json["stacks"][0];
    assert_eq!(prd["name"], "app/prd");
    assert_eq!(prd["deleted"], true);
    assert_eq!(prd["reasons"][0], serde_json::json!({"path": "terraform/prd/main.tf", "via": "stack"}));
    let text = plinth(t.path(), &["changed", "--base", "main"]).success().stdout;
    assert!(text.contains("app/prd (deleted)"), "{text}");
}

#[test]
fn a_deleted_module_file_still_triggers_its_users() {
    let mut t = seed_000();
    t.write("modules/app/extra.tf", "locals { x = 1 }\n");
    t.commit("extra module file");
    t.remove("modules/app/extra.tf");
    t.commit("drop it");
    assert_eq!(changed_names(t.path(), &["--base", "main"]), ["app/prd", "app/stg"]);
}

#[test]
fn a_bare_repo_needs_no_checkout() {
    let mut t = seed_000();
    t.touch("terraform/stg/main.tf");
    t.commit("stg");
    let (_keep, bare) = t.bare_clone();
    let json = plinth(&bare, &["changed", "--repo", bare.to_str().unwrap(), "--base", "main", "--output", "json"])
        .success()
        .json();
    assert_eq!(json["stacks"][0]["name"], "app/stg");
    // `check` on a bare repo reads HEAD's commit.
    let check = plinth(&bare, &["check", "--repo", bare.to_str().unwrap()]).success().stdout;
    assert!(check.contains("2 stacks"), "{check}");
}

#[test]
fn paths_with_spaces_and_non_ascii_names_work() {
    let mut t = TestRepo::new();
    t.write("plinth.toml", "[stacks.fn]\npath = \"functions/{name}\"\n");
    t.write("functions/画像 リサイズ/handler.py", "print('a')\n");
    t.write("functions/notify me/handler.py", "print('b')\n");
    t.commit("two functions");
    t.touch("functions/画像 リサイズ/handler.py");
    t.commit("resize change");
    let json = plinth(t.path(), &["changed", "--base", "main", "--output", "json"]).success().json();
    assert_eq!(json["stacks"].as_array().unwrap().len(), 1);
    assert_eq!(json["stacks"][0]["name"], "fn/画像 リサイズ");
    assert_eq!(json["stacks"][0]["path"], "functions/画像 リサイズ");
    assert_eq!(json["stacks"][0]["reasons"][0]["path"], "functions/画像 リサイズ/handler.py");
}

#[test]
fn a_module_cycle_does_not_loop() {
    let mut t = TestRepo::new();
    t.write("plinth.toml", "[stacks.root]\npath = \"live\"\n");
    t.write("live/main.tf", "module \"a\" {\n  source = \"../modules/a\"\n}\n");
    t.write("modules/a/main.tf", "module \"b\" {\n  source = \"../b\"\n}\n");
    t.write("modules/b/main.tf", "module \"a\" {\n  source = \"../a\"\n}\n");
    t.commit("cycle");
    t.touch("modules/b/main.tf");
    t.commit("touch b");
    assert_eq!(changed_names(t.path(), &["--base", "main"]), ["root"]);
    let check = plinth(t.path(), &["check"]).success().stdout;
    assert!(check.contains("modules/a, modules/b"), "{check}");
}
