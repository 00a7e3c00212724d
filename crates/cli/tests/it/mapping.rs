//! `--mapping`: the CircleCI path-filtering orb's mapping lines, with the orb's output.
//! Expected strings were checked against the orb's own script (create-parameters.py) run on
//! the same repos.

use plinth_testkit::TestRepo;

use crate::plinth;
use crate::seeds::seed_000;

const MAPPING: &str = "\
# seed 000's mapping, as in their CircleCI config
terraform/stg/.* run-stg true
terraform/prd/.* run-prd true
modules/.* run-stg true
modules/.* run-prd true
.*\\.md docs \"changed\"
";

fn with_mapping(t: &TestRepo) -> String {
    t.write(".circleci/mapping.txt", MAPPING);
    ".circleci/mapping.txt".to_owned()
}

fn orb(t: &TestRepo, mapping: &str, extra: &[&str]) -> String {
    let mut args = vec!["changed", "--base", "main", "--mapping", mapping];
    args.extend_from_slice(extra);
    let run = plinth(t.path(), &args).success();
    run.stdout.trim().to_owned()
}

#[test]
fn mapping_output_matches_the_orb() {
    let mut t = seed_000();
    let mapping = with_mapping(&t);
    t.commit("add mapping");
    t.touch("terraform/stg/main.tf");
    t.commit("stg");
    assert_eq!(orb(&t, &mapping, &[]), r#"{"run-stg": true}"#);
    t.touch("modules/app/main.tf");
    t.touch("README.md");
    t.commit("module and docs");
    assert_eq!(orb(&t, &mapping, &[]), r#"{"run-stg": true, "run-prd": true, "docs": "changed"}"#);
    t.write("shared/x.json", "{}");
    t.commit("unmapped");
    let run = plinth(t.path(), &["changed", "--base", "main", "--mapping", &mapping]).success();
    assert_eq!(run.stdout.trim(), "{}");
    assert!(run.stderr.contains("No change detected"), "{}", run.stderr);
}

#[test]
fn mapping_sees_renames_as_git_diff_does() {
    let mut t = seed_000();
    let mapping = with_mapping(&t);
    t.write("terraform/stg/big.tf", &"locals { a = 1 }\n".repeat(30));
    t.commit("big file in stg");
    t.rename("terraform/stg/big.tf", "terraform/prd/big.tf");
    t.commit("move it to prd");
    // git diff --name-only shows a rename by its new path only, so the orb sets run-prd alone.
    assert_eq!(orb(&t, &mapping, &[]), r#"{"run-prd": true}"#);
}

#[test]
fn mapping_errors_point_at_the_line() {
    let mut t = seed_000();
    t.write("bad.txt", "terraform/.* run true\nmodules/.* run\n");
    t.commit("bad mapping");
    let run = plinth(t.path(), &["changed", "--base", "main", "--mapping", "bad.txt"]).failure();
    assert!(run.stderr.contains("mapping.columns") && run.stderr.contains("bad.txt:2:1"), "{}", run.stderr);
    let run = plinth(t.path(), &["changed", "--base", "main", "--mapping", "missing.txt"]).failure();
    assert!(run.stderr.contains("mapping.unreadable"), "{}", run.stderr);
}
