//! `plinth check` end to end: exit codes, positions in messages, and reading a commit.

use plinth_testkit::TestRepo;

use crate::plinth;
use crate::seeds::seed_000;

/// Each broken plinth.toml the issue lists, with the code and `file:line:column` expected.
#[test]
fn every_kind_of_bad_config_exits_1_with_its_position() {
    let t = seed_000();
    let cases: &[(&str, &str, &str)] = &[
        ("[stacks.a]\npath = \"terraform/stg\"\ncolour = \"red\"\n", "config.unknown_key", "plinth.toml:3:1"),
        ("[stacks.a]\npath = \"terraform/qa\"\n", "config.path_not_found", "plinth.toml:2:8"),
        ("[stacks.a]\npath = \"../elsewhere\"\n", "config.invalid_path", "plinth.toml:2:9"),
        ("[stacks.a]\npath = \"/etc\"\n", "config.invalid_path", "plinth.toml:2:9"),
        (
            "[stacks.a]\npath = \"terraform/stg\"\n[stacks.b]\npath = \"terraform/stg\"\n",
            "config.duplicate_stack",
            "plinth.toml:4:8",
        ),
        (
            "[stacks.a]\npath = \"terraform/stg\"\ndepends_on = [\"x\"]\n",
            "config.unknown_dependency",
            "plinth.toml:3:15",
        ),
        (
            "[stacks.a]\npath = \"terraform/stg\"\ndepends_on = [\"b\"]\n[stacks.b]\npath = \"terraform/prd\"\ndepends_on = [\"a\"]\n",
            "config.dependency_cycle",
            "plinth.toml:3:15",
        ),
        (
            "[stacks.a]\npath = \"terraform/{env}\"\nname = \"{region}\"\n",
            "config.undefined_capture",
            "plinth.toml:3:9",
        ),
        (
            "[stacks.a]\npath = \"terraform/stg\"\nenvironment = \"stg\"\n",
            "config.unknown_environment",
            "plinth.toml:3:15",
        ),
        ("[stacks.a\n", "config.syntax", "plinth.toml:1:10"),
    ];
    for (text, code, at) in cases {
        t.write("plinth.toml", text);
        let run = plinth(t.path(), &["check"]).failure();
        assert!(run.stderr.contains(&format!("error[{code}]")), "{text}\n{}", run.stderr);
        assert!(run.stderr.contains(&format!("--> {at}")), "{text}\n{}", run.stderr);
        assert!(run.stderr.contains("help: "), "{}", run.stderr);
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
        let json = plinth(t.path(), &["check", "--output", "json"]).failure().json();
        assert_eq!(json["valid"], false);
        assert_eq!(json["errors"][0]["code"], *code);
    }
}

#[test]
fn check_reads_a_commit_when_asked() {
    let mut t = seed_000();
    // A broken working copy does not matter when checking a commit.
    t.write("plinth.toml", "broken = [");
    let json = plinth(t.path(), &["check", "--rev", "HEAD", "--output", "json"]).success().json();
    assert_eq!(json["stacks"].as_array().unwrap().len(), 2);
    plinth(t.path(), &["check"]).failure();
    t.git(&["checkout", "--", "plinth.toml"]);
    t.commit("noop");
    plinth(t.path(), &["check", "--rev", "no-such-rev"]).failure();
}

#[test]
fn check_without_a_config_says_how_to_start() {
    let t = TestRepo::new();
    let run = plinth(t.path(), &["check"]).failure();
    assert!(run.stderr.contains("config.not_found") && run.stderr.contains("plinth init"), "{}", run.stderr);
}

#[test]
fn check_lists_stacks_with_environment_workspace_dependencies_and_modules() {
    let t = seed_000();
    t.write(
        "plinth.toml",
        r#"[environments.stg]
branches = ["main"]
[environments.prd]
branches = ["main"]
[stacks.shared]
path = "modules/app"
workspace = "tooling"
[stacks.app]
path = "terraform/{env}"
environment = "{env}"
depends_on = ["shared"]
"#,
    );
    let out = plinth(t.path(), &["check"]).success().stdout;
    let line = out.lines().find(|l| l.starts_with("app/stg")).unwrap();
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cells, ["app/stg", "terraform/stg", "stg", "default", "shared", "modules/app"]);
    let line = out.lines().find(|l| l.starts_with("shared")).unwrap();
    assert!(line.contains("tooling"), "{line}");
}

#[test]
fn check_lists_services_per_environment() {
    let t = seed_000();
    let config = std::fs::read_to_string(t.path().join("plinth.toml")).unwrap();
    t.write(
        "plinth.toml",
        &format!(
            "{config}\n[services.api]\ncontainers = [\"app\"]\ncommand = [\"plinth\", \"demo-app\", \"--port\", \"{{port}}\", \"--version\", \"{{image.app}}\"]\ncount = 3\nhosts = [\"api.{{env}}.localhost\"]\n\n[services.api.environments.prd]\ncount = 4\nstrategy = {{ kind = \"double\" }}\n"
        ),
    );
    let run = plinth(t.path(), &["check"]).success();
    let api_rows: Vec<&str> = run.stdout.lines().filter(|l| l.starts_with("api ")).collect();
    assert_eq!(api_rows.len(), 2, "{}", run.stdout);
    assert!(
        api_rows[0].contains("prd") && api_rows[0].contains(" 4 ") && api_rows[0].contains("double"),
        "{}",
        run.stdout
    );
    assert!(
        api_rows[1].contains("api.stg.localhost") && api_rows[1].contains("rolling (surge 100%, unavailable 0)"),
        "{}",
        run.stdout
    );
    let json = plinth(t.path(), &["check", "--output", "json"]).success().json();
    assert_eq!(json["services"][1]["hosts"][0], "api.stg.localhost", "{json}");
    assert_eq!(json["services"][0]["count"], 4, "{json}");

    t.write(
        "plinth.toml",
        &format!("{config}\n[services.api]\ncontainers = [\"app\"]\ncommand = [\"x\", \"{{image.web}}\"]\n"),
    );
    let run = plinth(t.path(), &["check"]).failure();
    assert!(run.stderr.contains("config.invalid_placeholder") && run.stderr.contains("{image.web}"), "{}", run.stderr);
}

/// Templates are checked with plinth.toml: their own file, their module, and what plinth.toml
/// declares, each error at `file:line:column`; `init` does not take them for stacks.
#[test]
fn templates_are_checked_and_are_not_stacks() {
    let t = TestRepo::new();
    t.write("terraform/stg/main.tf", "resource \"terraform_data\" \"x\" {}\n");
    t.write(
        "templates/web/main.tf",
        "variable \"app_name\" {\n  type = string\n}\nvariable \"plinth_cidr\" {\n  type = string\n}\noutput \"name\" {\n  value = var.app_name\n}\n",
    );
    t.write(
        "templates/web/template.toml",
        "environment = \"sandbox\"\ncidr = { pool = \"sandbox\", prefix = 24 }\n[parameters.app_name]\ntype = \"string\"\n",
    );
    plinth(t.path(), &["init"]).success();
    let text = std::fs::read_to_string(t.path().join("plinth.toml")).unwrap();
    assert!(!text.contains("templates/web"), "a template is not a stack:\n{text}");
    // The template names an environment and a pool plinth.toml lacks.
    let run = plinth(t.path(), &["check"]).failure();
    assert!(run.stderr.contains("error[template.unknown_environment]"), "{}", run.stderr);
    assert!(run.stderr.contains("templates/web/template.toml:2:8"), "the pool is pointed at:\n{}", run.stderr);
    let config = format!("{text}\n[environments.sandbox]\n[cidr_pools.sandbox]\nranges = [\"10.0.0.0/16\"]\n");
    t.write("plinth.toml", &config);
    let json = plinth(t.path(), &["check", "--output", "json"]).success().json();
    assert_eq!(json["templates"][0]["name"], "web");
    assert_eq!(json["templates"][0]["parameters"], serde_json::json!(["app_name (string)"]));
    // A parameter the module lacks, and a [review] template that does not exist.
    t.write("templates/web/template.toml", "environment = \"sandbox\"\ncidr = { pool = \"sandbox\", prefix = 24 }\n[parameters.app_name]\ntype = \"string\"\n[parameters.colour]\ntype = \"string\"\n");
    t.write(
        "plinth.toml",
        &format!("{config}[review]\ntemplate = \"nope\"\nbranches = [\"f/*\"]\ndomain = \"r.localhost\"\n"),
    );
    let run = plinth(t.path(), &["check"]).failure();
    assert!(run.stderr.contains("error[template.unknown_variable]: parameter `colour`"), "{}", run.stderr);
    assert!(run.stderr.contains("templates/web/template.toml:5:1"), "{}", run.stderr);
    assert!(run.stderr.contains("error[config.unknown_template]"), "{}", run.stderr);
}
