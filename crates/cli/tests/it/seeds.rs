//! The layouts of the seed write-ups, as real repos.

use plinth_testkit::{TestRepo, write_seed_000};

use crate::{changed_names, plinth};

/// Seed 000 (Lancers): terraform/stg and terraform/prd, sharing modules/app.
pub fn seed_000() -> TestRepo {
    let mut t = TestRepo::new();
    write_seed_000(&t);
    t.write("README.md", "# infra\n");
    t.commit("seed 000 layout");
    t
}

#[test]
fn seed_000_module_change_triggers_both_environments() {
    let mut t = seed_000();
    t.touch("modules/app/main.tf");
    t.commit("module change");
    let json = plinth(t.path(), &["changed", "--base", "main", "--output", "json"]).success().json();
    let stacks = json["stacks"].as_array().unwrap();
    assert_eq!(stacks.len(), 2);
    for (stack, env) in stacks.iter().zip(["prd", "stg"]) {
        assert_eq!(stack["name"], format!("app/{env}"));
        assert_eq!(stack["path"], format!("terraform/{env}"));
        assert_eq!(stack["environment"], env);
        assert_eq!(stack["workspace"], serde_json::Value::Null);
        assert_eq!(stack["wave"], 1);
        assert_eq!(stack["deleted"], false);
        assert_eq!(stack["reasons"], serde_json::json!([{"path": "modules/app/main.tf", "via": "module:modules/app"}]));
    }
    assert_eq!(json["head"], t.head());
    assert_eq!(json["base"], t.git(&["rev-parse", "HEAD~1"]));
}

#[test]
fn seed_000_stg_change_triggers_only_stg() {
    let mut t = seed_000();
    t.touch("terraform/stg/main.tf");
    t.commit("stg change");
    assert_eq!(changed_names(t.path(), &["--base", "main"]), ["app/stg"]);
    let text = plinth(t.path(), &["changed", "--base", "main"]).success().stdout;
    assert!(text.contains("1 stack changed, in 1 wave"), "{text}");
    assert!(text.lines().any(|l| l.contains("app/stg") && l.contains("terraform/stg/main.tf")), "{text}");
}

#[test]
fn seed_000_readme_change_triggers_nothing_and_succeeds() {
    let mut t = seed_000();
    t.touch("README.md");
    t.commit("docs");
    let run = plinth(t.path(), &["changed", "--base", "main"]).success();
    assert!(run.stdout.contains("No stack changed"), "{}", run.stdout);
    assert_eq!(changed_names(t.path(), &["--base", "main"]), Vec::<String>::new());
}

/// Seed 001 (Misoca): a common stack, a stack of permanent environments and a review stack
/// with one workspace per branch, all in one repo, the latter two using one module.
fn seed_001() -> TestRepo {
    let mut t = TestRepo::new();
    t.write(
        "plinth.toml",
        r#"main_branch = "master"

[environments.dev]
branches = ["master"]
[environments.review]
branches = ["feature/*"]

[stacks.common]
path = "misoca-dev-common"
environment = "dev"

[stacks.envs]
path = "misoca-dev-envs"
environment = "dev"
depends_on = ["common"]

[stacks.review]
path = "misoca-dev-review"
environment = "review"
workspace = "branch"
depends_on = ["common"]
"#,
    );
    t.write(
        "misoca-dev-common/main.tf",
        "resource \"terraform_data\" \"alb\" {}\noutput \"alb\" { value = terraform_data.alb.id }\n",
    );
    t.write(
        "misoca-dev-envs/main.tf",
        r#"module "misoca-test" {
  source = "../modules/misoca-environment"
  name   = "test"
  domain = "test.misoca.jp"
}

module "misoca-test2" {
  source              = "../modules/misoca-environment"
  name                = "test2"
  domain              = "test2.misoca.jp"
  require-google-auth = false
}
"#,
    );
    t.write(
        "misoca-dev-review/main.tf",
        r#"module "misoca-review" {
  source = "../modules/misoca-environment"
  name   = "review-${terraform.workspace}"
  domain = "${terraform.workspace}.review.misoca.jp"
}
"#,
    );
    t.write(
        "modules/misoca-environment/main.tf",
        r#"variable "name" {}
variable "domain" {}
variable "require-google-auth" {
  default = true
}
resource "terraform_data" "rule" {
  count = var.require-google-auth ? 1 : 0
  input = var.domain
}
"#,
    );
    t.git(&["checkout", "-q", "-b", "master"]);
    t.commit("seed 001 layout");
    t
}

#[test]
fn seed_001_module_change_triggers_envs_and_review_not_common() {
    let mut t = seed_001();
    t.touch("modules/misoca-environment/main.tf");
    t.commit("auth switch");
    assert_eq!(changed_names(t.path(), &["--base", "master"]), ["envs", "review"]);
}

#[test]
fn seed_001_common_change_brings_dependents_when_asked() {
    let mut t = seed_001();
    t.touch("misoca-dev-common/main.tf");
    t.commit("alb change");
    assert_eq!(changed_names(t.path(), &["--base", "master"]), ["common"]);
    let json =
        plinth(t.path(), &["changed", "--base", "master", "--with-dependents", "--output", "json"]).success().json();
    let got: Vec<(String, u64, String)> = json["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().into(),
                s["wave"].as_u64().unwrap(),
                s["reasons"][0]["via"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("common".into(), 1, "stack".into()),
            ("envs".into(), 2, "dependent:common".into()),
            ("review".into(), 2, "dependent:common".into())
        ]
    );
}

#[test]
fn seed_001_review_workspace_is_named_after_the_branch() {
    let mut t = seed_001();
    t.git(&["checkout", "-q", "-b", "feature/Kokuyou-Login"]);
    t.touch("misoca-dev-review/main.tf");
    t.commit("review tweak");
    let json = plinth(t.path(), &["changed", "--base", "master", "--output", "json"]).success().json();
    assert_eq!(json["stacks"][0]["name"], "review");
    assert_eq!(json["stacks"][0]["workspace"], "feature-kokuyou-login");
    let check = plinth(t.path(), &["check"]).success().stdout;
    assert!(check.lines().any(|l| l.starts_with("review") && l.contains("per branch")), "{check}");
}
