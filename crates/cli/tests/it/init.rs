//! `plinth init`: roots found by the module graph, never overwriting without --force.

use plinth_testkit::TestRepo;

use crate::plinth;

fn layout() -> TestRepo {
    let t = TestRepo::new();
    t.write("terraform/stg/main.tf", "module \"app\" {\n  source = \"../../modules/app\"\n}\n");
    t.write("terraform/prd/main.tf", "module \"app\" {\n  source = \"../../modules/app\"\n}\n");
    t.write("terraform/common/main.tf", "resource \"terraform_data\" \"x\" {}\n");
    t.write("modules/app/main.tf", "module \"inner\" {\n  source = \"./inner\"\n}\n");
    t.write("modules/app/inner/main.tf", "resource \"terraform_data\" \"y\" {}\n");
    t.write("terraform/stg/.terraform/modules/app/main.tf", "# downloaded copy, ignored\n");
    t.write("docs/README.md", "not terraform\n");
    t
}

#[test]
fn init_finds_roots_and_writes_a_config_that_checks() {
    let t = layout();
    let run = plinth(t.path(), &["init"]).success();
    assert!(run.stdout.contains("3 stacks"), "{}", run.stdout);
    let text = std::fs::read_to_string(t.path().join("plinth.toml")).unwrap();
    for path in ["terraform/common", "terraform/prd", "terraform/stg"] {
        assert!(text.contains(&format!("path = \"{path}\"")), "{text}");
    }
    assert!(!text.contains("modules/app"), "modules are not roots:\n{text}");
    assert!(text.contains("[environments.prd]") && text.contains("approval = true"), "{text}");
    let json = plinth(t.path(), &["check", "--output", "json"]).success().json();
    let stacks: Vec<(&str, &str)> = json["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["environment"].as_str().unwrap_or("-")))
        .collect();
    assert_eq!(stacks, [("common", "-"), ("prd", "prd"), ("stg", "stg")]);
    assert_eq!(json["stacks"][2]["modules"], serde_json::json!(["modules/app", "modules/app/inner"]));
}

#[test]
fn init_never_overwrites_without_force() {
    let t = layout();
    t.write("plinth.toml", "# mine\n");
    let run = plinth(t.path(), &["init"]).failure();
    assert!(run.stderr.contains("init.exists") && run.stderr.contains("--force"), "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(t.path().join("plinth.toml")).unwrap(), "# mine\n");
    plinth(t.path(), &["init", "--force"]).success();
    assert!(std::fs::read_to_string(t.path().join("plinth.toml")).unwrap().contains("[stacks."));
}

#[test]
fn init_takes_a_directory_and_the_branch_name() {
    let mut t = TestRepo::new();
    t.git(&["checkout", "-q", "-b", "master"]);
    t.write("infra/main.tf", "resource \"terraform_data\" \"x\" {}\n");
    t.commit("first");
    let outside = tempfile::tempdir().unwrap();
    plinth(outside.path(), &["init", t.path().to_str().unwrap()]).success();
    let text = std::fs::read_to_string(t.path().join("plinth.toml")).unwrap();
    assert!(text.contains("main_branch = \"master\""), "{text}");
    assert!(text.contains("[stacks.infra]"), "{text}");
}

#[test]
fn init_on_a_directory_without_terraform_writes_a_commented_file() {
    let dir = tempfile::tempdir().unwrap();
    let run = plinth(dir.path(), &["init"]).success();
    assert!(run.stdout.contains("no stacks"), "{}", run.stdout);
    plinth(dir.path(), &["check"]).success();
    let missing = dir.path().join("nope");
    let run = plinth(dir.path(), &["init", missing.to_str().unwrap()]).failure();
    assert!(run.stderr.contains("init.not_a_directory"), "{}", run.stderr);
}
