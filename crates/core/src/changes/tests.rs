//! Table-driven tests of the change decision over in-memory trees.

use super::*;
use crate::config::Config;
use crate::modules::ModuleGraph;
use crate::tree::{MemTree, Tree};

const CONFIG: &str = r#"
[environments.stg]
branches = ["main"]
[environments.prd]
branches = ["main"]
approval = true

[stacks.common]
path = "terraform/common"

[stacks.app]
path = "terraform/{env}"
environment = "{env}"
depends_on = ["common"]
watch = ["shared/*.json", "config/{env}/**"]

[stacks.fn]
path = "functions/{name}"
"#;

fn tree() -> MemTree {
    MemTree::new()
        .with("plinth.toml", CONFIG)
        .with("terraform/common/main.tf", "")
        .with("terraform/stg/main.tf", r#"module "app" { source = "../../modules/app" }"#)
        .with("terraform/prd/main.tf", r#"module "app" { source = "../../modules/app" }"#)
        .with("terraform/stg/nested/main.tf", "")
        .with("modules/app/main.tf", r#"module "net" { source = "../net" }"#)
        .with("modules/net/main.tf", "")
        .with("functions/resize/handler.py", "")
        .with("functions/notify/handler.py", "")
        .with("shared/tags.json", "{}")
        .with("README.md", "")
}

struct Fixture {
    config: Config,
    graph: ModuleGraph,
    tree: MemTree,
}

fn fixture(tree: MemTree) -> Fixture {
    let text = String::from_utf8(tree.read_file("plinth.toml").unwrap().unwrap()).unwrap();
    let (config, _) = Config::parse("plinth.toml", &text).unwrap();
    let graph = ModuleGraph::build(&tree).unwrap();
    Fixture { config, graph, tree }
}

fn run(f: &Fixture, base: Option<&Fixture>, changes: &[PathChange], config: &ConfigChanges, deps: bool) -> Vec<String> {
    let head = Resolver::new(&f.config, &f.tree).unwrap();
    let base_resolver = base.map(|b| Resolver::new(&b.config, &b.tree).unwrap());
    let inputs = Inputs {
        head: &head,
        head_modules: &f.graph,
        base: base_resolver.as_ref().zip(base).map(|(r, b)| (r, &b.graph as &dyn ModuleLookup)),
        config_changes: config,
        with_dependents: deps,
    };
    affected(changes, inputs)
        .unwrap()
        .iter()
        .map(|a| {
            let reasons: Vec<String> = a
                .reasons
                .iter()
                .map(|r| match &r.path {
                    Some(p) => format!("{p}@{}", r.via),
                    None => r.via.to_string(),
                })
                .collect();
            let deleted = if a.deleted { " deleted" } else { "" };
            format!("{} w{}{deleted}: {}", a.stack.name, a.wave, reasons.join(", "))
        })
        .collect()
}

fn modified(paths: &[&str]) -> Vec<PathChange> {
    paths.iter().map(|p| PathChange::new(*p, ChangeKind::Modified)).collect()
}

#[test]
fn paths_map_to_stacks_with_reasons() {
    let f = fixture(tree());
    let none = ConfigChanges::None;
    let cases: &[(&[&str], &[&str])] = &[
        (&["README.md"], &[]),
        (&["terraform/stg/main.tf"], &["app/stg w1: terraform/stg/main.tf@stack"]),
        (
            &["modules/app/main.tf"],
            &[
                "app/prd w1: modules/app/main.tf@module:modules/app",
                "app/stg w1: modules/app/main.tf@module:modules/app",
            ],
        ),
        // Transitive: stg and prd use modules/app, which uses modules/net.
        (
            &["modules/net/variables.tf"],
            &[
                "app/prd w1: modules/net/variables.tf@module:modules/net",
                "app/stg w1: modules/net/variables.tf@module:modules/net",
            ],
        ),
        (
            &["shared/tags.json"],
            &["app/prd w1: shared/tags.json@watch:shared/*.json", "app/stg w1: shared/tags.json@watch:shared/*.json"],
        ),
        // A watch glob with a placeholder only triggers the stack whose capture matches.
        (&["config/prd/a/b.yaml"], &["app/prd w1: config/prd/a/b.yaml@watch:config/prd/**"]),
        (&["functions/resize/handler.py"], &["fn/resize w1: functions/resize/handler.py@stack"]),
        // Dependency order: common first.
        (
            &["terraform/common/main.tf", "terraform/stg/main.tf"],
            &["common w1: terraform/common/main.tf@stack", "app/stg w2: terraform/stg/main.tf@stack"],
        ),
        // A path is counted once per stack, by its first reason.
        (&["terraform/stg/main.tf", "terraform/stg/main.tf"], &["app/stg w1: terraform/stg/main.tf@stack"]),
    ];
    for (paths, expected) in cases {
        assert_eq!(run(&f, None, &modified(paths), &none, false), *expected, "{paths:?}");
    }
}

#[test]
fn dependents_come_along_when_asked() {
    let f = fixture(tree());
    let changes = modified(&["terraform/common/outputs.tf"]);
    let none = ConfigChanges::None;
    assert_eq!(run(&f, None, &changes, &none, false), ["common w1: terraform/common/outputs.tf@stack"]);
    assert_eq!(
        run(&f, None, &changes, &none, true),
        [
            "common w1: terraform/common/outputs.tf@stack",
            "app/prd w2: dependent:common",
            "app/stg w2: dependent:common"
        ]
    );
}

#[test]
fn config_changes_count_per_stack_table() {
    let f = fixture(tree());
    let base = CONFIG.replace("watch = [\"shared/*.json\", \"config/{env}/**\"]", "watch = [\"shared/*.json\"]");
    let delta = ConfigChanges::between(Some(&base), CONFIG);
    assert_eq!(delta, ConfigChanges::Keys(["app".to_owned()].into_iter().collect()));
    let got = run(&f, None, &modified(&["plinth.toml"]), &delta, false);
    assert_eq!(got, ["app/prd w1: plinth.toml@config", "app/stg w1: plinth.toml@config"]);
    // Comments and formatting do not count.
    let reformatted = CONFIG.replace("[stacks.common]", "# the shared stack\n[stacks.common]");
    assert_eq!(ConfigChanges::between(Some(&reformatted), CONFIG), ConfigChanges::None);
    assert_eq!(ConfigChanges::between(None, CONFIG), ConfigChanges::All);
    assert_eq!(ConfigChanges::between(Some("not = [toml"), CONFIG), ConfigChanges::All);
}

#[test]
fn nested_stack_directories_take_their_own_paths() {
    let mut t = tree();
    t.insert(
        "plinth.toml",
        &format!("{CONFIG}\n[stacks.nested]\npath = \"terraform/stg/nested\"\nenvironment = \"stg\"\n"),
    );
    let f = fixture(t);
    let got = run(&f, None, &modified(&["terraform/stg/nested/main.tf"]), &ConfigChanges::None, false);
    assert_eq!(got, ["nested w1: terraform/stg/nested/main.tf@stack"]);
}

#[test]
fn deleted_stacks_and_deleted_module_files_use_the_base() {
    let base = fixture(tree());
    let mut head_tree = tree();
    head_tree.remove("terraform/prd/main.tf");
    head_tree.remove("modules/net/main.tf");
    let head = fixture(head_tree);
    let changes = vec![
        PathChange::new("modules/net/main.tf", ChangeKind::Deleted),
        PathChange::new("terraform/prd/main.tf", ChangeKind::Deleted),
    ];
    let got = run(&head, Some(&base), &changes, &ConfigChanges::None, false);
    assert_eq!(
        got,
        ["app/prd w1 deleted: terraform/prd/main.tf@stack", "app/stg w1: modules/net/main.tf@module:modules/net",]
    );
}

#[test]
fn dependents_follow_captured_dependencies() {
    let config = r#"
[environments.stg]
[environments.prd]
[stacks.network]
path = "net/{env}"
[stacks.app]
path = "apps/{env}"
environment = "{env}"
depends_on = ["network/{env}"]
[stacks.edge]
path = "edge"
depends_on = ["app"]
"#;
    let tree = MemTree::new()
        .with("plinth.toml", config)
        .with("net/stg/main.tf", "")
        .with("net/prd/main.tf", "")
        .with("apps/stg/main.tf", "")
        .with("apps/prd/main.tf", "")
        .with("edge/main.tf", "");
    let f = fixture(tree);
    let got = run(&f, None, &modified(&["net/stg/main.tf"]), &ConfigChanges::None, true);
    assert_eq!(
        got,
        ["network/stg w1: net/stg/main.tf@stack", "app/stg w2: dependent:network/stg", "edge w3: dependent:app/stg"]
    );
}

#[test]
fn a_cycle_among_reached_stacks_is_a_config_error() {
    let config = "[stacks.a]\npath = \"a\"\ndepends_on = [\"b\"]\n[stacks.b]\npath = \"b\"\ndepends_on = [\"a\"]\n";
    let tree = MemTree::new().with("plinth.toml", config).with("a/main.tf", "").with("b/main.tf", "");
    let f = fixture(tree);
    let head = Resolver::new(&f.config, &f.tree).unwrap();
    let inputs = Inputs {
        head: &head,
        head_modules: &f.graph,
        base: None,
        config_changes: &ConfigChanges::None,
        with_dependents: false,
    };
    match affected(&modified(&["a/main.tf"]), inputs) {
        Err(AffectedError::Config(d)) => assert_eq!(d.errors().next().unwrap().code, "config.dependency_cycle"),
        other => panic!("expected a cycle error, got {other:?}"),
    }
}
