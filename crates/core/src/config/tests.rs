//! plinth.toml parsing and expansion: the issue's example, and every error with its position.

use super::*;
use crate::config::LoadError;
use crate::stack::Workspace;
use crate::tree::MemTree;

const EXAMPLE: &str = r#"main_branch = "main"

[environments.stg]
branches = ["main"]          # commits on these branches release to stg
[environments.prd]
branches = ["main"]
approval = true              # applies wait for an approver
approvers = ["sre"]          # roles allowed to approve

[stacks.common]
path = "terraform/common"

[stacks.app]
path = "terraform/{env}"     # a pattern: one stack per matching directory
environment = "{env}"        # captures can be used in other fields
depends_on = ["common"]
watch = ["shared/*.json"]    # extra trigger globs, besides the stack dir and its modules
terraform = "terraform"      # binary name or path, per stack (S0.2: versions per project)

[stacks.fn]
path = "functions/{name}"    # S0.7: a directory-per-app monorepo works the same way
"#;

fn example_tree() -> MemTree {
    MemTree::new()
        .with("terraform/common/main.tf", "")
        .with("terraform/stg/main.tf", "")
        .with("terraform/prd/main.tf", "")
        .with("functions/resize/handler.py", "")
        .with("functions/notify/handler.py", "")
        .with("shared/tags.json", "{}")
}

fn load(text: &str, tree: &MemTree) -> Result<Loaded, Diagnostics> {
    Loaded::load("plinth.toml", text, tree).map_err(|e| match e {
        LoadError::Config(d) => d,
        LoadError::Tree(e) => panic!("tree error: {e}"),
    })
}

#[test]
fn the_issue_example_expands() {
    let loaded = load(EXAMPLE, &example_tree()).unwrap();
    let names: Vec<&str> = loaded.stacks.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["app/prd", "app/stg", "common", "fn/notify", "fn/resize"]);
    let stg = loaded.stacks.get("app/stg").unwrap();
    assert_eq!(stg.dir, "terraform/stg");
    assert_eq!(stg.environment.as_deref(), Some("stg"));
    assert_eq!(stg.depends_on, ["common"]);
    assert_eq!(stg.workspace, Workspace::Default);
    assert_eq!(loaded.stacks.get("common").unwrap().environment, None);
    let prd = &loaded.config.environments["prd"];
    assert!(prd.approval && prd.approvers == ["sre"] && prd.releases_from("main"));
    assert!(!prd.releases_from("feature/x"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn names_workspaces_and_dependencies_use_captures() {
    let text = r#"
[environments.stg]
[environments.prd]
[stacks.network]
path = "infra/{region}/{env}/network"
environment = "{env}"
workspace = "{region}"
[stacks.app]
path = "infra/{region}/{env}/app"
name = "{env}-{region}-app"
environment = "{env}"
depends_on = ["network/{region}-{env}"]
workspace = "branch"
"#;
    let tree = MemTree::new()
        .with("infra/tokyo/stg/network/main.tf", "")
        .with("infra/tokyo/stg/app/main.tf", "")
        .with("infra/osaka/prd/network/main.tf", "")
        .with("infra/osaka/prd/app/main.tf", "");
    let loaded = load(text, &tree).unwrap();
    let app = loaded.stacks.get("stg-tokyo-app").unwrap();
    assert_eq!(app.depends_on, ["network/tokyo-stg"]);
    assert_eq!(app.workspace, Workspace::PerBranch);
    assert_eq!(loaded.stacks.get("network/osaka-prd").unwrap().workspace, Workspace::Named("osaka".into()));
}

#[test]
fn depending_on_a_key_means_all_its_stacks() {
    let text = r#"
[stacks.app]
path = "apps/{name}"
[stacks.edge]
path = "edge"
depends_on = ["app"]
"#;
    let tree = MemTree::new().with("apps/a/main.tf", "").with("apps/b/main.tf", "").with("edge/main.tf", "");
    let loaded = load(text, &tree).unwrap();
    assert_eq!(loaded.stacks.get("edge").unwrap().depends_on, ["app/a", "app/b"]);
}

#[test]
fn a_pattern_matching_nothing_warns() {
    let text = "[stacks.fn]\npath = \"functions/{name}\"\n";
    let tree = MemTree::new().with("functions/README.md", "");
    let loaded = load(text, &tree).unwrap();
    assert!(loaded.stacks.is_empty());
    assert_eq!(loaded.warnings[0].code, "config.pattern_matches_nothing");
}

#[test]
fn approvers_without_approval_warn() {
    let text = "[environments.prd]\napprovers = [\"sre\"]\n";
    let (_, warnings) = Config::parse("plinth.toml", text).unwrap();
    assert_eq!(warnings[0].code, "config.approvers_without_approval");
}

/// Each bad config, the code of its first error, and where that error points.
#[test]
fn bad_configs_point_at_file_line_and_column() {
    let cases: &[(&str, &str, (usize, usize))] = &[
        ("[stacks.a]\npath = \"terraform/common\"\npathh = \"x\"\n", "config.unknown_key", (3, 1)),
        ("mainbranch = \"x\"\n", "config.unknown_key", (1, 1)),
        ("[environments.stg]\nbranch = [\"main\"]\n", "config.unknown_key", (2, 1)),
        ("[stacks.a]\nname = \"x\"\n", "config.missing_key", (1, 1)),
        ("[stacks.a]\npath = 3\n", "config.invalid_type", (2, 8)),
        ("[stacks.a\npath = \"x\"\n", "config.syntax", (1, 10)),
        ("[stacks.a]\npath = \"terraform/missing\"\n", "config.path_not_found", (2, 8)),
        ("[stacks.a]\npath = \"nothere/{env}\"\n", "config.path_not_found", (2, 8)),
        ("[stacks.a]\npath = \"shared/tags.json\"\n", "config.path_not_found", (2, 8)),
        ("[stacks.a]\npath = \"../outside\"\n", "config.invalid_path", (2, 9)),
        ("[stacks.a]\npath = \"terraform/../..\"\n", "config.invalid_path", (2, 19)),
        ("[stacks.a]\npath = \"/etc\"\n", "config.invalid_path", (2, 9)),
        (
            "[stacks.a]\npath = \"terraform/stg\"\n[stacks.b]\npath = \"terraform/stg\"\n",
            "config.duplicate_stack",
            (4, 8),
        ),
        (
            "[stacks.a]\npath = \"terraform/{env}\"\n[stacks.b]\npath = \"terraform/{x}\"\n",
            "config.duplicate_stack",
            (4, 8),
        ),
        ("[stacks.a]\npath = \"terraform/stg\"\ndepends_on = [\"nope\"]\n", "config.unknown_dependency", (3, 15)),
        (
            "[stacks.a]\npath = \"terraform/stg\"\ndepends_on = [\"b\"]\n[stacks.b]\npath = \"terraform/prd\"\ndepends_on = [\"a\"]\n",
            "config.dependency_cycle",
            (3, 15),
        ),
        ("[stacks.a]\npath = \"terraform/stg\"\ndepends_on = [\"a\"]\n", "config.dependency_cycle", (3, 15)),
        ("[stacks.a]\npath = \"terraform/{env}\"\nenvironment = \"{region}\"\n", "config.undefined_capture", (3, 16)),
        ("[stacks.a]\npath = \"terraform/stg\"\nname = \"x-{env}\"\n", "config.undefined_capture", (3, 11)),
        ("[stacks.a]\npath = \"terraform/{env}\"\nwatch = [\"cfg/{region}/*\"]\n", "config.undefined_capture", (3, 10)),
        ("[stacks.a]\npath = \"terraform/stg\"\nenvironment = \"stg\"\n", "config.unknown_environment", (3, 15)),
        (
            "[environments.stg]\n[stacks.a]\npath = \"terraform/{env}\"\nenvironment = \"{env}\"\n",
            "config.unknown_environment",
            (4, 15),
        ),
        ("[stacks.a]\npath = \"terraform/{env\"\n", "config.invalid_path", (2, 19)),
        ("[stacks.\"a b\"]\npath = \"terraform/stg\"\n", "config.invalid_name", (1, 9)),
        ("[environments.stg]\nbranches = [\"{a\"]\n", "config.invalid_glob", (2, 14)),
        ("[stacks.a]\npath = \"terraform/stg\"\nworkspace = \"a b\"\n", "config.invalid_workspace", (3, 13)),
        ("[stacks.a]\npath = \"terraform/stg\"\nterraform = \" \"\n", "config.invalid_terraform", (3, 13)),
        ("main_branch = \"\"\n", "config.invalid_branch", (1, 15)),
    ];
    for (text, code, (line, column)) in cases {
        let diagnostics = match load(text, &example_tree()) {
            Ok(_) => panic!("expected {code} for:\n{text}"),
            Err(d) => d,
        };
        let first = diagnostics.errors().next().unwrap();
        assert_eq!(first.code, *code, "{text}\n{diagnostics}");
        let at = diagnostics.file.position(first.span.clone().unwrap().start);
        assert_eq!((at.line, at.column), (*line, *column), "{text}\n{diagnostics}");
        assert!(!first.help.is_empty(), "{code} has no help");
        let rendered = diagnostics.to_string();
        assert!(rendered.contains(&format!("plinth.toml:{line}:{column}")), "{rendered}");
    }
}

#[test]
fn every_error_is_reported_not_only_the_first() {
    let text = r#"
[stacks.a]
path = "terraform/missing"
environment = "qa"
[stacks.b]
path = "terraform/stg"
environment = "nope"
[stacks.c]
path = "terraform/prd"
depends_on = ["zzz"]
"#;
    let d = load(text, &example_tree()).unwrap_err();
    let codes: Vec<&str> = d.errors().map(|e| e.code).collect();
    assert_eq!(
        codes,
        [
            "config.path_not_found",
            "config.unknown_environment",
            "config.unknown_environment",
            "config.unknown_dependency"
        ]
    );
}

#[test]
fn a_rendered_error_shows_the_line_and_a_caret() {
    let text = "[stacks.a]\npath = \"terraform/missing\"\n";
    let d = load(text, &example_tree()).unwrap_err();
    let rendered = d.to_string();
    assert!(
        rendered.starts_with("error[config.path_not_found]: stack `a`: directory `terraform/missing` does not exist")
    );
    assert!(rendered.contains("2 | path = \"terraform/missing\""), "{rendered}");
    assert!(rendered.contains("  |        ^^^^^^^^^^^^^^^^^^^"), "{rendered}");
    assert!(rendered.contains("help: "), "{rendered}");
}

#[test]
fn literal_paths_take_their_directory_from_patterns() {
    // terraform/common matches terraform/{env} too; the literal stack claims it, so the pattern
    // does not produce an app/common stack in an undeclared environment.
    let text = r#"
[environments.stg]
[environments.prd]
[stacks.common]
path = "terraform/common"
[stacks.app]
path = "terraform/{env}"
environment = "{env}"
"#;
    let loaded = load(text, &example_tree()).unwrap();
    assert!(loaded.stacks.get("app/common").is_none());
    assert!(loaded.stacks.get("app/stg").is_some());
}

#[test]
fn the_repo_root_can_be_a_stack() {
    let text = "[stacks.root]\npath = \".\"\n";
    let loaded = load(text, &MemTree::new().with("main.tf", "")).unwrap();
    assert_eq!(loaded.stacks.get("root").unwrap().display_dir(), ".");
}

#[test]
fn stack_names_reject_traversal_and_accept_directory_names() {
    for good in ["app/stg", "common", "fn/画像 リサイズ", "a.b/c-d_e"] {
        assert!(is_stack_name(good), "{good}");
    }
    for bad in ["", "../x", "a/../b", "a//b", "/a", "a/", ".", "a\\b", " a", "a\nb"] {
        assert!(!is_stack_name(bad), "{bad:?}");
    }
}

const SERVICES: &str = r#"
[environments.stg]
branches = ["main"]
[environments.prd]
branches = ["main"]
tags = ["v*.*.*"]

[services.api]
containers = ["app", "sidecar"]
command = ["plinth", "demo-app", "--port", "{port}", "--version", "{image.app}", "--name", "{service}-{env}-{instance}", "{{literal}}"]
count = 3
health = { path = "/healthz", interval = "500ms", timeout = "300ms", healthy = 2, unhealthy = 3 }
strategy = { kind = "rolling", max_surge = "100%", max_unavailable = "0%" }
drain_timeout = "30s"
pre_stop = ["sh", "-c", "echo flushing > /tmp/flush-$PLINTH_INSTANCE"]
hosts = ["api.{env}.localhost", "*.review.localhost"]
env = { RUST_LOG = "info" }

[services.api.environments.prd]
count = 4
strategy = { kind = "double" }
env = { EXTRA = "1" }

[services.worker]
containers = ["worker"]
command = ["./worker"]
"#;

#[test]
fn services_have_settings_per_environment() {
    let (config, warnings) = Config::parse("plinth.toml", SERVICES).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let api = config.service("api").unwrap();
    assert_eq!(api.containers, ["app", "sidecar"]);
    let stg = api.for_environment("stg");
    assert_eq!(stg.count, 3);
    assert_eq!(stg.hosts, ["api.stg.localhost", "*.review.localhost"]);
    assert_eq!(stg.health.interval, std::time::Duration::from_millis(500));
    assert_eq!(
        stg.strategy,
        Strategy::Rolling { max_surge: Amount::Percent(100), max_unavailable: Amount::Percent(0) }
    );
    assert_eq!(stg.drain_timeout, std::time::Duration::from_secs(30));
    let images: std::collections::BTreeMap<String, String> =
        [("app".to_owned(), "registry/app:v1".to_owned()), ("sidecar".to_owned(), "s:1".to_owned())].into();
    assert_eq!(
        stg.command_for(4100, &images, "api-stg-1"),
        [
            "plinth",
            "demo-app",
            "--port",
            "4100",
            "--version",
            "registry/app:v1",
            "--name",
            "api-stg-api-stg-1",
            "{literal}"
        ]
    );
    let prd = api.for_environment("prd");
    assert_eq!((prd.count, &prd.strategy), (4, &Strategy::Double));
    assert_eq!(prd.hosts, ["api.prd.localhost", "*.review.localhost"]);
    assert_eq!(prd.env.get("RUST_LOG").map(String::as_str), Some("info"), "overrides add to the base env");
    assert_eq!(prd.env.get("EXTRA").map(String::as_str), Some("1"));
    let worker = config.service("worker").unwrap().for_environment("stg");
    assert_eq!((worker.count, worker.hosts.len(), worker.health.path.as_str()), (1, 0, "/healthz"));

    assert_eq!(config.environments_for_tag("v1.2.3").map(|e| e.name.as_str()).collect::<Vec<_>>(), ["prd"]);
    assert_eq!(config.environments_for_tag("nightly").count(), 0);
    assert_eq!(Amount::Percent(25).of(3, true), 1);
    assert_eq!(Amount::Percent(25).of(3, false), 0);
    assert_eq!(Amount::Count(2).of(3, true), 2);
}

#[test]
fn bad_services_point_at_the_problem() {
    let env = "[environments.stg]\n";
    let cases: &[(&str, &str, (usize, usize))] = &[
        ("[services.api]\ncommand = [\"x\"]\n", "config.service_without_containers", (2, 11)),
        ("[services.api]\ncontainers = [\"app\"]\n", "config.service_without_command", (2, 11)),
        ("[services.api]\ncontainers = [\"app\", \"app\"]\ncommand = [\"x\"]\n", "config.duplicate_container", (3, 22)),
        (
            "[services.api]\ncontainers = [\"app\"]\ncommand = [\"x\", \"{image.web}\"]\n",
            "config.invalid_placeholder",
            (4, 18),
        ),
        (
            "[services.api]\ncontainers = [\"app\"]\ncommand = [\"x\", \"--p={prot}\"]\n",
            "config.invalid_placeholder",
            (4, 22),
        ),
        ("[services.api]\ncontainers = [\"app\"]\ncommand = [\"x\"]\ncount = 0\n", "config.invalid_number", (5, 9)),
        (
            "[services.api]\ncontainers = [\"app\"]\ncommand = [\"x\"]\ndrain_timeout = \"soon\"\n",
            "config.invalid_duration",
            (5, 17),
        ),
        (
            "[services.api]\ncontainers = [\"app\"]\ncommand = [\"x\"]\nstrategy = { kind = \"canary\" }\n",
            "config.invalid_strategy",
            (5, 21),
        ),
        (
            "[services.api]\ncontainers = [\"app\"]\ncommand = [\"x\"]\nstrategy = { kind = \"rolling\", max_surge = \"0\", max_unavailable = \"0%\" }\n",
            "config.invalid_strategy",
            (5, 21),
        ),
        (
            "[services.api]\ncontainers = [\"app\"]\ncommand = [\"x\"]\nstrategy = { kind = \"rolling\", max_surge = \"150%\" }\n",
            "config.invalid_strategy",
            (5, 44),
        ),
        (
            "[services.api]\ncontainers = [\"app\"]\ncommand = [\"x\"]\nhosts = [\"api .localhost\"]\n",
            "config.invalid_host",
            (5, 10),
        ),
        (
            "[services.api]\ncontainers = [\"app\"]\ncommand = [\"x\"]\nhealth = { path = \"healthz\" }\n",
            "config.invalid_health",
            (5, 19),
        ),
        (
            "[services.api]\ncontainers = [\"app\"]\ncommand = [\"x\"]\nenv = { \"1X\" = \"y\" }\n",
            "config.invalid_env",
            (5, 9),
        ),
        (
            "[services.api]\ncontainers = [\"app\"]\ncommand = [\"x\"]\n[services.api.environments.qa]\ncount = 2\n",
            "config.unknown_environment",
            (5, 28),
        ),
        ("[services.api]\ncontainers = [\"app\"]\ncommand = [\"x\"]\nreplicas = 2\n", "config.unknown_key", (5, 1)),
        (
            "[services.a]\ncontainers = [\"app\"]\ncommand = [\"x\"]\nhosts = [\"x.{env}.localhost\"]\n[services.b]\ncontainers = [\"app\"]\ncommand = [\"x\"]\nhosts = [\"x.{env}.localhost\"]\n",
            "config.duplicate_host",
            (6, 1),
        ),
    ];
    for (text, code, (line, column)) in cases {
        let text = format!("{env}{text}");
        let diagnostics = match Config::parse("plinth.toml", &text) {
            Ok(_) => panic!("expected {code} for:\n{text}"),
            Err(d) => d,
        };
        let first = diagnostics.errors().next().unwrap();
        assert_eq!(first.code, *code, "{text}\n{diagnostics}");
        let at = diagnostics.file.position(first.span.clone().unwrap().start);
        assert_eq!((at.line, at.column), (*line, *column), "{text}\n{diagnostics}");
        assert!(!first.help.is_empty(), "{code} has no help");
    }
}

#[test]
fn products_pools_and_review_environments() {
    let text = r#"
[products.shop]
owner = "team-shop"
description = "The web shop"

[cidr_pools.sandbox]
ranges = ["10.20.0.0/16", "10.21.0.0/24"]

[review]
template = "review-app"
branches = ["feature/*", "fix/*"]
domain = "Review.Localhost"
ttl = "72h"
max = 5
product = "shop"
"#;
    let (config, _) = Config::parse("plinth.toml", text).unwrap();
    assert_eq!(config.products["shop"].owner, "team-shop");
    assert_eq!(config.cidr_pools["sandbox"].ranges.len(), 2);
    let review = config.review.unwrap();
    assert_eq!(review.domain, "review.localhost");
    assert_eq!(review.ttl, std::time::Duration::from_secs(72 * 3600));
    assert!(review.applies_to("fix/login") && !review.applies_to("main"));
    let (defaults, _) =
        Config::parse("plinth.toml", "[review]\ntemplate = \"r\"\nbranches = [\"f/*\"]\ndomain = \"r.localhost\"\n")
            .unwrap();
    let review = defaults.review.unwrap();
    assert_eq!((review.max, review.ttl), (DEFAULT_REVIEW_MAX, DEFAULT_REVIEW_TTL));
}

#[test]
fn bad_provisioning_config_points_at_the_problem() {
    let review = "[review]\ntemplate = \"r\"\nbranches = [\"f/*\"]\ndomain = \"r.localhost\"\n";
    let cases: Vec<(String, &str, (usize, usize))> = vec![
        ("[cidr_pools.a]\nranges = [\"10.0.0.1/16\"]\n".into(), "config.invalid_cidr", (2, 11)),
        ("[cidr_pools.a]\nranges = [\"10.0.0.0/16\", \"10.0.5.0/24\"]\n".into(), "config.overlapping_ranges", (2, 26)),
        (
            "[cidr_pools.a]\nranges = [\"10.0.0.0/16\"]\n[cidr_pools.b]\nranges = [\"10.0.0.0/8\"]\n".into(),
            "config.overlapping_ranges",
            (4, 11),
        ),
        ("[cidr_pools.a]\nranges = []\n".into(), "config.empty_pool", (1, 1)),
        ("[products.\"a b\"]\n".into(), "config.invalid_name", (1, 11)),
        ("[products.a]\ncolour = 1\n".into(), "config.unknown_key", (2, 1)),
        (review.replace("r.localhost", "r..localhost"), "config.invalid_domain", (4, 10)),
        (format!("{review}ttl = \"soon\"\n"), "config.invalid_duration", (5, 7)),
        (format!("{review}max = 0\n"), "config.invalid_number", (5, 7)),
        (format!("{review}product = \"nope\"\n"), "config.unknown_product", (5, 11)),
        (review.replace("[\"f/*\"]", "[]"), "config.missing_key", (1, 1)),
        (review.replace("\"r\"", "\"R R\""), "config.invalid_name", (2, 12)),
        ("[provisioning]\ncommit_branch = \"a b\"\n".into(), "config.invalid_branch", (2, 17)),
        ("[provisioning]\ncommit_branch = \"main\"\n".into(), "config.invalid_branch", (2, 17)),
    ];
    for (text, code, (line, column)) in cases {
        let diagnostics = match Config::parse("plinth.toml", &text) {
            Ok(_) => panic!("expected {code} for:\n{text}"),
            Err(d) => d,
        };
        let first = diagnostics.errors().next().unwrap();
        assert_eq!(first.code, code, "{text}\n{diagnostics}");
        let at = diagnostics.file.position(first.span.clone().unwrap().start);
        assert_eq!((at.line, at.column), (line, column), "{text}\n{diagnostics}");
        assert!(!first.help.is_empty(), "{code} has no help");
    }
}
