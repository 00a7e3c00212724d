//! `plinth templates`, `plinth env` and `plinth catalog` against a real server: what a person
//! reads, what a script gets with `--output json`, and the exit codes.

use plinth_testkit::TestRepo;

use crate::server::Server;

const CONFIG: &str = r#"main_branch = "main"

[environments.sandbox]

[products.shop]
owner = "team-shop"

[cidr_pools.sandbox]
ranges = ["10.30.0.0/23"]
"#;

const TEMPLATE: &str = r#"description = "A small sandbox"
environment = "sandbox"
account = "sandbox-a"
domain = "sandbox.localhost"
cidr = { pool = "sandbox", prefix = 24 }

[parameters.app_name]
type = "string"
pattern = "[a-z]+"
description = "The app"

[parameters.replicas]
type = "int"
min = 1
max = 3
default = 1
"#;

const MODULE: &str = r#"variable "app_name" {
  type = string
}

variable "replicas" {
  type = number
}

variable "plinth_cidr" {
  type = string
}

resource "terraform_data" "app" {
  input = "${var.app_name} x${var.replicas} in ${var.plinth_cidr}"
}

output "app" {
  value = terraform_data.app.output
}
"#;

/// `plinth env create` of `dev1` from the sandbox template, `--param` then `rest`.
fn create_dev1<'a>(rest: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["env", "create", "--template", "sandbox", "--product", "shop", "--name", "dev1", "--param"];
    args.extend_from_slice(rest);
    args
}

fn server() -> Server {
    let mut repo = TestRepo::new();
    repo.write("README.md", "# infra\n");
    repo.commit("start");
    let mut server = Server::start(repo);
    server.repo.write("plinth.toml", CONFIG);
    server.repo.write("templates/sandbox/template.toml", TEMPLATE);
    server.repo.write("templates/sandbox/main.tf", MODULE);
    server.repo.commit("templates");
    // The server reads templates from the main branch: wait until it has fetched the commit.
    let start = std::time::Instant::now();
    while !server.admin(&["templates", "list"]).stdout.contains("sandbox") {
        assert!(start.elapsed() < std::time::Duration::from_secs(30), "the templates never showed up");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    server
}

#[test]
fn environments_are_made_listed_updated_and_destroyed_from_the_cli() {
    let server = server();
    let list = server.admin(&["templates", "list"]).success();
    assert!(list.stdout.lines().any(|l| l.starts_with("sandbox") && l.contains("sandbox-a")), "{}", list.stdout);
    let show = server.admin(&["templates", "show", "sandbox"]).success();
    assert!(show.stdout.contains("gets a /24 from CIDR pool `sandbox`"), "{}", show.stdout);
    assert!(show.stdout.lines().any(|l| l.starts_with("replicas") && l.contains("min 1, max 3")), "{}", show.stdout);
    let schema = server.admin(&["templates", "show", "sandbox", "--output", "json"]).success().json();
    assert_eq!(schema["parameters"]["required"], serde_json::json!(["app_name"]));

    // A value that breaks a rule: exit 1, the parameter and the rule named.
    let bad = server.admin(&create_dev1(&["app_name=Shop"])).failure();
    assert!(bad.stderr.contains("error[environment.bad_parameter]"), "{}", bad.stderr);
    assert!(
        bad.stderr.contains("parameter `app_name`: `Shop` does not match the pattern `[a-z]+` [pattern]"),
        "{}",
        bad.stderr
    );
    let typo = server.admin(&create_dev1(&["app_name"])).failure();
    assert!(typo.stderr.contains("error[cli.bad_param]"), "{}", typo.stderr);

    let created = server.admin(&create_dev1(&["app_name=shop", "--wait"])).success();
    assert!(created.stdout.contains("succeeded"), "{}", created.stdout);
    assert!(created.stdout.contains("`dev1` is ready at dev1.sandbox.localhost."), "{}", created.stdout);
    let listed = server.admin(&["env", "list"]).success();
    assert!(
        listed.stdout.lines().any(|l| l.starts_with("dev1") && l.contains("ready") && l.contains("10.30.0.0/24")),
        "{}",
        listed.stdout
    );
    let shown = server.admin(&["env", "show", "dev1"]).success();
    for expected in
        ["dev1 (shop): ready", "cidr       10.30.0.0/24 (pool sandbox)", "app = \"shop x1 in 10.30.0.0/24\"", "#1"]
    {
        assert!(shown.stdout.contains(expected), "{expected}:\n{}", shown.stdout);
    }

    // A plan of an update changes nothing; the update does.
    let plan = server.admin(&["env", "update", "dev1", "--param", "replicas=2", "--plan"]).success();
    assert!(plan.stdout.contains("module.template.terraform_data.app (update)"), "{}", plan.stdout);
    assert!(plan.stdout.contains("Nothing was changed."), "{}", plan.stdout);
    let json = server.admin(&["env", "show", "dev1", "--output", "json"]).success().json();
    assert_eq!(json["environment"]["params"]["replicas"], 1);
    server.admin(&["env", "update", "dev1", "--param", "replicas=2", "--wait"]).success();
    let json = server.admin(&["env", "show", "dev1", "--output", "json"]).success().json();
    assert_eq!(json["environment"]["outputs"]["app"], "shop x2 in 10.30.0.0/24");

    let catalog = server.admin(&["catalog", "list", "--product", "shop", "--output", "json"]).success().json();
    assert_eq!(catalog["environments"][0]["name"], "dev1");
    assert_eq!(catalog["products"][0]["owner"], "team-shop");
    let text = server.admin(&["catalog", "list"]).success();
    assert!(text.stdout.contains("PRODUCT") && text.stdout.contains("team-shop"), "{}", text.stdout);
    let export = server.admin(&["catalog", "export"]).success().json();
    assert_eq!(export["requests"].as_array().unwrap().len(), 2, "{export:#}");

    let destroyed = server.admin(&["env", "destroy", "dev1", "--wait"]).success();
    assert!(destroyed.stdout.contains("succeeded: destroyed"), "{}", destroyed.stdout);
    let gone = server.admin(&["env", "destroy", "dev1", "--output", "json"]).failure();
    assert_eq!(gone.json_error()["code"], "environment.gone");
    let requests = server.admin(&["env", "requests"]).success();
    assert_eq!(requests.stdout.lines().filter(|l| l.contains("dev1")).count(), 3, "{}", requests.stdout);
    assert!(server.admin(&["env", "list"]).success().stdout.contains("No environments"));
}
