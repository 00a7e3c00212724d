//! `plinth quickstart`: builds an example infrastructure repo (seed 000's layout: stg and prd
//! stacks sharing a module, built-in providers only), starts a server on it, and walks through
//! what happens to a few commits: stg plans and applies, a commit with nothing to change counts
//! as a success, prd waits for approval and applies once approved. Then a demo service: v1 is
//! published as CI would and served through plinth's proxy, rolled to v2 while traffic flows
//! (counting failed requests: none), and a broken v3 rolls back by itself. Then environments on
//! request: templates are committed, an environment is made from one, a pushed branch gets a
//! review environment serving the branch's release at `feature-demo.review.localhost`, and
//! deleting the branch tears it down. Then it keeps serving.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use plinth_core::run::{Run, RunStatus};

use super::Outcome;
use crate::output::{Failure, Format};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to create the example repo and the server's data. Defaults to a new directory
    /// under the system's temp dir, which is kept so that you can explore it afterwards.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The address the server listens on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Where plinth's proxy serves the demo service (`api.stg.localhost`); port 0 picks one.
    #[arg(long, default_value = "127.0.0.1:8000")]
    proxy_listen: std::net::SocketAddr,
    /// Stop the server after the walkthrough instead of serving until Ctrl-C.
    #[arg(long)]
    no_serve: bool,
}

const CONFIG: &str = r#"# The example's release config: which stacks exist and how they release.
main_branch = "main"

[environments.stg]
branches = ["main"]          # commits on main apply to stg

[environments.prd]
branches = ["main"]
approval = true              # applies to prd wait for an approver
approvers = ["sre"]

[stacks.app]
path = "terraform/{env}"      # one stack per environment directory
environment = "{env}"
watch = ["shared/*.json"]

# A demo service: CI publishes releases (one image per container), plinth rolls them out behind
# its proxy. Its "image" is the version the demo app answers; v3 is broken on purpose.
[services.api]
containers = ["app"]
command = ["sh", "-c", "case {image.app} in v3) exec plinth demo-app --port {port} --version v3 --fail-health;; *) exec plinth demo-app --port {port} --version {image.app};; esac"]
count = 3
health = { path = "/healthz", interval = "250ms", timeout = "250ms", healthy = 2, unhealthy = 2 }
strategy = { kind = "rolling", max_surge = "1", max_unavailable = "0" }
hosts = ["api.{env}.localhost"]
"#;

/// What step 7 adds to plinth.toml: a sandbox environment for environments on request, whom
/// they belong to, where their networks come from, and review environments per branch.
const ENVIRONMENTS_CONFIG: &str = r#"
# Environments on request (docs/environments.md): made from templates/NAME/, in the sandbox.
[environments.sandbox]

[services.api.environments.sandbox]
count = 1                    # one instance is enough in sandboxes and review environments

[products.shop]
owner = "team-shop"
description = "The demo shop"

[cidr_pools.sandbox]
ranges = ["10.20.0.0/16"]    # each sandbox gets its own /24 from here

[review]
template = "review-app"      # every feature/* branch gets an environment from this template
branches = ["feature/*"]
domain = "review.localhost"  # served at BRANCH-SLUG.review.localhost
ttl = "72h"
product = "shop"
"#;

const SANDBOX_TEMPLATE: &str = r#"description = "A sandbox for one application, with its own network"
environment = "sandbox"
account = "sandbox-a"
cidr = { pool = "sandbox", prefix = 24 }

[parameters.app_name]
type = "string"
pattern = "[a-z][a-z0-9-]*"
max = 30
description = "The application's name"

[parameters.replicas]
type = "int"
min = 1
max = 5
default = 2

[parameters.auth]
type = "bool"
default = true
description = "Put the environment behind the login (S1.4)"
"#;

const SANDBOX_MODULE: &str = r#"variable "app_name" {
  type = string
}

variable "replicas" {
  type = number
}

variable "auth" {
  type = bool
}

variable "plinth_environment" {
  type = string
}

variable "plinth_cidr" {
  type = string
}

resource "terraform_data" "network" {
  input = var.plinth_cidr
}

resource "terraform_data" "app" {
  input = {
    name     = "${var.plinth_environment}-${var.app_name}"
    replicas = var.replicas
    auth     = var.auth
  }
}

output "network" {
  value = terraform_data.network.output
}

output "app" {
  value = terraform_data.app.output.name
}
"#;

const REVIEW_TEMPLATE: &str = r#"description = "A review environment for one branch, running the api service"
environment = "sandbox"
account = "review"
services = ["api"]
"#;

const REVIEW_MODULE: &str = r#"variable "plinth_workspace" {
  type = string
}

variable "plinth_fqdn" {
  type = string
}

resource "terraform_data" "review" {
  input = "review ${var.plinth_workspace}"
}

output "url" {
  value = "http://${var.plinth_fqdn}"
}
"#;

const APP_MODULE: &str = r#"variable "env" {
  type = string
}

resource "terraform_data" "app" {
  input = "app in ${var.env}"
}

output "name" {
  value = terraform_data.app.output
}
"#;

fn env_stack(env: &str) -> String {
    format!(
        "module \"app\" {{\n  source = \"../../modules/app\"\n  env    = \"{env}\"\n}}\n\noutput \"name\" {{\n  value = module.app.name\n}}\n"
    )
}

fn fail(message: String) -> Failure {
    Failure::new(
        "quickstart.failed",
        message,
        "Check that `git` and `terraform` are installed and the directory is writable, then try again.",
        Format::Text,
    )
}

/// Runs git in the example repo with a fixed identity.
fn git(dir: &Path, args: &[&str]) -> Result<String, Failure> {
    let output = Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=plinth quickstart", "-c", "user.email=quickstart@plinth.invalid"])
        .args(args)
        .output()
        .map_err(|e| fail(format!("could not run git: {e}")))?;
    if !output.status.success() {
        return Err(fail(format!("git {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim())));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn write(dir: &Path, path: &str, contents: &str) -> Result<(), Failure> {
    let full = dir.join(path);
    if let Some(parent) = full.parent() {
        std::fs::create_dir_all(parent).map_err(|e| fail(format!("could not create {}: {e}", parent.display())))?;
    }
    std::fs::write(&full, contents).map_err(|e| fail(format!("could not write {}: {e}", full.display())))
}

fn commit(dir: &Path, message: &str) -> Result<String, Failure> {
    git(dir, &["add", "-A"])?;
    git(dir, &["commit", "-q", "-m", message])?;
    outln!("$ git commit -m \"{message}\"");
    git(dir, &["rev-parse", "HEAD"])
}

pub fn run(args: Args) -> Outcome {
    let root = match &args.dir {
        Some(dir) => {
            if dir.join("repo").exists() || dir.join("data").exists() {
                return Err(Failure::new(
                    "quickstart.exists",
                    format!("{} already holds a quickstart", dir.display()),
                    "Pass `--dir` with a new or empty directory.",
                    Format::Text,
                ));
            }
            dir.clone()
        }
        None => tempfile::Builder::new()
            .prefix("plinth-quickstart-")
            .tempdir()
            .map_err(|e| fail(format!("could not create a temp dir: {e}")))?
            .keep(),
    };
    let repo = root.join("repo");
    let data = root.join("data");
    std::fs::create_dir_all(&repo).map_err(|e| fail(format!("could not create {}: {e}", repo.display())))?;
    outln!("Creating an example infrastructure repo in {}", repo.display());
    git(&repo, &["init", "-q", "-b", "main"])?;
    write(&repo, "README.md", "# example infrastructure\n")?;
    git(&repo, &["add", "-A"])?;
    git(&repo, &["commit", "-q", "-m", "Start"])?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(format!("could not start the runtime: {e}")))?;
    runtime.block_on(walkthrough(args, repo, data))
}

async fn walkthrough(args: Args, repo: PathBuf, data: PathBuf) -> Outcome {
    let listener = tokio::net::TcpListener::bind(args.listen).await.map_err(|e| {
        Failure::new(
            "quickstart.listen",
            format!("could not listen on {}: {e}", args.listen),
            "Another program uses the port: pass --listen 127.0.0.1:0 to pick a free one.",
            Format::Text,
        )
    })?;
    let addr = listener.local_addr().map_err(|e| fail(e.to_string()))?;
    let url = format!("http://{addr}");
    let mut config = plinth_server::ServerConfig::new(repo.display().to_string(), data.clone());
    config.poll_interval = Duration::from_millis(500);
    config.proxy_listen = Some(args.proxy_listen);
    let prepared = plinth_server::prepare(config).await.map_err(|e| Failure::coded(&e, Format::Text))?;
    let token = prepared.admin_token.clone().unwrap_or_default();
    let proxy = prepared.proxy_addr().ok_or_else(|| fail("the proxy did not start".into()))?;
    outln!("Started the plinth server on {url} (data in {}), its proxy on http://{proxy}", data.display());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let no_serve = args.no_serve;
    let server = tokio::spawn(async move {
        let shutdown = async move {
            if no_serve {
                let _ = stopped.await;
            } else {
                tokio::select! {
                    _ = stopped => {}
                    _ = super::server::shutdown_signal() => {}
                }
            }
        };
        plinth_server::serve(prepared, listener, shutdown).await
    });
    let api = Api { url: url.clone(), token: token.clone(), http: reqwest::Client::new() };

    outln!("\n== 1. Commit the layout: terraform/stg and terraform/prd, sharing modules/app");
    write(&repo, "plinth.toml", CONFIG)?;
    write(&repo, "terraform/stg/main.tf", &env_stack("stg"))?;
    write(&repo, "terraform/prd/main.tf", &env_stack("prd"))?;
    write(&repo, "modules/app/main.tf", APP_MODULE)?;
    write(&repo, "shared/tags.json", "{\"team\": \"sre\"}\n")?;
    let layout = commit(&repo, "Add stg and prd")?;
    outln!("$ plinth changed --base main   (what the server works out for this commit)");
    let changed = super::changed::Args {
        base: "main".into(),
        head: "HEAD".into(),
        repo: repo.clone(),
        output: Format::Text,
        with_dependents: false,
        mapping: None,
        branch: None,
        cache_dir: None,
        no_cache: false,
    };
    tokio::task::block_in_place(|| super::changed::run(changed))?;
    outln!("The server plans both and applies stg:");
    let runs = api.settle(&layout, 2).await?;
    show_runs(&runs);
    let stg = find(&runs, "app/stg")?;
    let prd = find(&runs, "app/prd")?;
    outln!("stg applied on its own; prd waits for someone with the `sre` role (or an admin).");
    outln!("\n$ plinth runs logs {}   (the end of it)", stg.id);
    for line in api.log_tail(stg.id, 6).await? {
        outln!("  {line}");
    }

    outln!("\n== 2. A commit that touches stg but changes no resource: no changes, a success");
    write(&repo, "terraform/stg/notes.tf", "# Notes about stg. Terraform ignores comments.\n")?;
    let notes = commit(&repo, "Document stg")?;
    show_runs(&api.settle(&notes, 1).await?);

    outln!("\n== 3. Approve prd, as an admin");
    outln!("$ plinth runs approve {}", prd.id);
    api.approve(prd.id).await?;
    let approved = api.wait(prd.id).await?;
    show_runs(&[approved]);

    outln!("\n== 4. CI publishes v1 of the demo service to stg; plinth runs it behind its proxy");
    let ci = api.ci_token().await?;
    outln!(
        "$ plinth release publish --service api --env stg --image-definitions imagedefinitions.json   # [{{\"name\": \"app\", \"imageUri\": \"v1\"}}]"
    );
    let v1 = api.deploy(&ci, "v1").await?;
    outln!("  deployment #{} {}", v1["id"], v1["status"].as_str().unwrap_or(""));
    let answer = get_version(&proxy).await?;
    outln!("$ curl -H 'Host: api.stg.localhost' http://{proxy}/\n  {answer}");

    outln!("\n== 5. v2, rolled out one instance at a time while 8 clients keep sending requests");
    let load = Load::start(proxy);
    let v2 = api.deploy(&ci, "v2").await?;
    let (total, failed, versions) = load.finish().await;
    outln!(
        "  deployment #{} {}: {total} requests during the rollout, {failed} failed; answers went {}",
        v2["id"],
        v2["status"].as_str().unwrap_or(""),
        versions.join(" -> ")
    );

    outln!("\n== 6. v3 is broken (its health check fails): the rollout stops and v2 keeps serving");
    let load = Load::start(proxy);
    let v3 = api.deploy(&ci, "v3").await?;
    let (total, failed, _) = load.finish().await;
    outln!(
        "  deployment #{} {}: {}",
        v3["id"],
        v3["status"].as_str().unwrap_or(""),
        v3["reason"].as_str().unwrap_or("")
    );
    outln!("  {total} requests meanwhile, {failed} failed; it still answers {}", get_version(&proxy).await?);

    outln!("\n== 7. Templates, and an environment made from one on request");
    let mut config = CONFIG.to_owned();
    config.push_str(ENVIRONMENTS_CONFIG);
    write(&repo, "plinth.toml", &config)?;
    write(&repo, "templates/sandbox/template.toml", SANDBOX_TEMPLATE)?;
    write(&repo, "templates/sandbox/main.tf", SANDBOX_MODULE)?;
    write(&repo, "templates/review-app/template.toml", REVIEW_TEMPLATE)?;
    write(&repo, "templates/review-app/main.tf", REVIEW_MODULE)?;
    let templates = commit(&repo, "Add the sandbox and review templates")?;
    api.seen(&templates).await?;
    outln!("$ plinth env create --template sandbox --product shop --name shop-dev1 --param app_name=shop --wait");
    let env = api.create_environment("sandbox", "shop-dev1", serde_json::json!({"app_name": "shop"})).await?;
    outln!(
        "  shop-dev1 is {}: network {}, outputs {}",
        env["status"].as_str().unwrap_or(""),
        env["cidr"].as_str().unwrap_or("-"),
        env["outputs"]
    );

    outln!("\n== 8. Push a branch: feature/demo gets a review environment at feature-demo.review.localhost");
    git(&repo, &["checkout", "-q", "-b", "feature/demo"])?;
    write(&repo, "README.md", "# example infrastructure\n\nA demo change on a branch.\n")?;
    commit(&repo, "A change on feature/demo")?;
    git(&repo, &["checkout", "-q", "main"])?;
    outln!(
        "$ plinth release publish --service api --branch feature/demo --image-definitions imagedefinitions.json   # [{{\"name\": \"app\", \"imageUri\": \"feature-demo\"}}]"
    );
    let review = api.review_release(&ci, "feature/demo", "feature-demo").await?;
    outln!(
        "  {} is {} (Terraform workspace `{}`), deployment #{} {}",
        review.name,
        review.status,
        review.workspace,
        review.deployment["id"],
        review.deployment["status"].as_str().unwrap_or("")
    );
    let host = "feature-demo.review.localhost";
    outln!("$ curl -H 'Host: {host}' http://{proxy}/\n  {}", get_from(&proxy, host).await?);

    outln!("\n== 9. Delete the branch: its review environment goes");
    git(&repo, &["branch", "-q", "-D", "feature/demo"])?;
    outln!("$ git branch -D feature/demo");
    let gone = api.gone(&review.name).await?;
    outln!("  {} is {}: {}", review.name, gone["status"].as_str().unwrap_or(""), gone["reason"].as_str().unwrap_or(""));
    outln!("$ curl -H 'Host: {host}' http://{proxy}/\n  {}", get_from(&proxy, host).await?);

    if args.no_serve {
        outln!("\nThe server stops now (--no-serve). Start it again with:");
        outln!(
            "  plinth server --repo {} --data-dir {} --listen {addr} --proxy-listen {proxy}",
            repo.display(),
            data.display()
        );
        outln!("Then try:");
    } else {
        outln!("\nplinth is serving at {url}. Try:");
    }
    outln!("  export PLINTH_SERVER={url} PLINTH_TOKEN={token}");
    outln!("  plinth runs list");
    outln!("  plinth runs logs {}", prd.id);
    outln!("  plinth stacks list");
    outln!("  cd {} && $EDITOR modules/app/main.tf && git commit -am 'Change the app'", repo.display());
    outln!("  plinth runs list   # stg applies; prd waits for `plinth runs approve ID`");
    outln!("  plinth deploy status api --env stg; plinth deploy history api --env stg; plinth logs api --env stg");
    outln!("  curl -H 'Host: api.stg.localhost' http://{proxy}/");
    outln!("  plinth templates list; plinth env list; plinth env show shop-dev1; plinth catalog list");
    outln!(
        "  cd {} && git checkout -b feature/try && git commit --allow-empty -m try && git checkout main   # a review environment",
        repo.display()
    );
    outln!("The admin token is also in {}.", data.join("admin.token").display());
    if args.no_serve {
        let _ = stop.send(());
    } else {
        outln!("Press Ctrl-C to stop the server.");
    }
    match server.await {
        Ok(Ok(())) => Ok(ExitCode::SUCCESS),
        Ok(Err(e)) => Err(Failure::coded(&e, Format::Text)),
        Err(e) => Err(fail(format!("the server task failed: {e}"))),
    }
}

/// An HTTP client that sends `host` to the proxy.
fn proxy_client_for(proxy: std::net::SocketAddr, host: &str) -> Result<reqwest::Client, Failure> {
    reqwest::Client::builder()
        .resolve(host, proxy)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| fail(format!("could not make an HTTP client: {e}")))
}

fn proxy_client(proxy: std::net::SocketAddr) -> Result<reqwest::Client, Failure> {
    proxy_client_for(proxy, "api.stg.localhost")
}

/// What the demo service answers through the proxy.
async fn get_version(proxy: &std::net::SocketAddr) -> Result<String, Failure> {
    get_from(proxy, "api.stg.localhost").await
}

/// What the proxy answers for `host`: the body, or the status and plinth's error code.
async fn get_from(proxy: &std::net::SocketAddr, host: &str) -> Result<String, Failure> {
    let client = proxy_client_for(*proxy, host)?;
    let response = client
        .get(format!("http://{host}:{}/", proxy.port()))
        .send()
        .await
        .map_err(|e| fail(format!("the proxy did not answer: {e}")))?;
    let status = response.status();
    let code = response.headers().get("x-plinth-error").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = response.text().await.unwrap_or_default().trim().to_owned();
    // plinth's own answers (404 for a host nobody routes) start with their error code.
    Ok(if code.is_some() { format!("{} {body}", status.as_u16()) } else { body })
}

/// 8 clients sending requests through the proxy until finished.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Result<String, String>>>>,
}

impl Load {
    fn start(proxy: std::net::SocketAddr) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..8)
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut answers = Vec::new();
                    let Ok(client) = proxy_client(proxy) else { return answers };
                    let url = format!("http://api.stg.localhost:{}/", proxy.port());
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let answer = match client.get(&url).send().await {
                            Ok(r) if r.status().is_success() => {
                                Ok(r.text().await.unwrap_or_default().trim().to_owned())
                            }
                            Ok(r) => Err(r.status().to_string()),
                            Err(e) => Err(e.to_string()),
                        };
                        answers.push(answer);
                    }
                    answers
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Stops; returns how many requests were sent, how many failed, and the versions that
    /// answered, in the order they first did.
    async fn finish(self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all = Vec::new();
        for task in self.tasks {
            all.extend(task.await.unwrap_or_default());
        }
        let failed = all.iter().filter(|a| a.is_err()).count();
        let mut versions: Vec<String> = Vec::new();
        for v in all.iter().filter_map(|a| a.as_ref().ok()) {
            if !versions.contains(v) {
                versions.push(v.clone());
            }
        }
        versions.sort();
        (all.len(), failed, versions)
    }
}

fn find<'a>(runs: &'a [Run], stack: &str) -> Result<&'a Run, Failure> {
    runs.iter().find(|r| r.stack == stack).ok_or_else(|| fail(format!("no run for {stack}")))
}

fn show_runs(runs: &[Run]) {
    for run in runs {
        let plan = run.plan.as_ref().map(|p| format!(" ({p})")).unwrap_or_default();
        outln!("  run #{} {:<8} {}{plan}", run.id, run.stack, run.status);
    }
}

/// A review environment serving a branch's release.
struct Review {
    name: String,
    status: String,
    workspace: String,
    deployment: serde_json::Value,
}

/// The few API calls the walkthrough makes.
struct Api {
    url: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    async fn get(&self, path: &str) -> Result<serde_json::Value, Failure> {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| fail(format!("could not reach the server: {e}")))?;
        response.json().await.map_err(|e| fail(format!("unreadable answer: {e}")))
    }

    async fn runs(&self) -> Result<Vec<Run>, Failure> {
        let body = self.get("/api/v1/runs?limit=100").await?;
        serde_json::from_value(body["runs"].clone()).map_err(|e| fail(format!("unreadable runs: {e}")))
    }

    /// Waits for the runs of a commit to end or wait for approval.
    async fn settle(&self, commit: &str, count: usize) -> Result<Vec<Run>, Failure> {
        let start = Instant::now();
        loop {
            let mut runs: Vec<Run> = self.runs().await?.into_iter().filter(|r| r.commit == commit).collect();
            let done = runs.len() == count
                && runs.iter().all(|r| r.status.is_final(r.mode) || r.status == RunStatus::AwaitingApproval);
            if done {
                runs.sort_by(|a, b| b.stack.cmp(&a.stack));
                return Ok(runs);
            }
            if start.elapsed() > Duration::from_secs(120) {
                return Err(fail(format!("the runs for {commit} did not finish in 2 minutes; see `plinth runs list`")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait(&self, id: i64) -> Result<Run, Failure> {
        let start = Instant::now();
        loop {
            let run: Run = serde_json::from_value(self.get(&format!("/api/v1/runs/{id}")).await?)
                .map_err(|e| fail(format!("unreadable run: {e}")))?;
            if run.status.is_final(run.mode) {
                return Ok(run);
            }
            if start.elapsed() > Duration::from_secs(120) {
                return Err(fail(format!("run #{id} did not finish in 2 minutes")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn approve(&self, id: i64) -> Result<(), Failure> {
        let response = self
            .http
            .post(format!("{}/api/v1/runs/{id}/approve", self.url))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({}))
            .send()
            .await
            .map_err(|e| fail(format!("could not reach the server: {e}")))?;
        if !response.status().is_success() {
            return Err(fail(format!("approving run #{id} failed: {}", response.text().await.unwrap_or_default())));
        }
        Ok(())
    }

    /// A ci token scoped to the demo service, as a team gives its CI.
    async fn ci_token(&self) -> Result<String, Failure> {
        let body = serde_json::json!({"name": "ci-quickstart", "roles": ["ci"], "services": ["api"]});
        let response = self
            .http
            .post(format!("{}/api/v1/tokens", self.url))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .map_err(|e| fail(format!("could not reach the server: {e}")))?;
        let body: serde_json::Value = response.json().await.map_err(|e| fail(format!("unreadable answer: {e}")))?;
        body["secret"].as_str().map(str::to_owned).ok_or_else(|| fail(format!("no token: {body}")))
    }

    /// Publishes a release of the demo service to stg with `ci`, and waits for its deployment
    /// to end; returns the deployment.
    async fn deploy(&self, ci: &str, version: &str) -> Result<serde_json::Value, Failure> {
        let response = self
            .http
            .post(format!("{}/api/v1/services/api/environments/stg/releases", self.url))
            .bearer_auth(ci)
            .json(&serde_json::json!([{"name": "app", "imageUri": version}]))
            .send()
            .await
            .map_err(|e| fail(format!("could not reach the server: {e}")))?;
        let body: serde_json::Value = response.json().await.map_err(|e| fail(format!("unreadable answer: {e}")))?;
        let id = body["deployments"][0]["id"].as_i64().ok_or_else(|| fail(format!("no deployment: {body}")))?;
        let start = Instant::now();
        loop {
            let d = self.get(&format!("/api/v1/deployments/{id}")).await?;
            let status = d["deployment"]["status"].as_str().unwrap_or("");
            if matches!(status, "succeeded" | "failed" | "cancelled" | "superseded" | "rejected") {
                return Ok(d["deployment"].clone());
            }
            if start.elapsed() > Duration::from_secs(120) {
                return Err(fail(format!(
                    "deployment #{id} did not finish in 2 minutes; see `plinth deploy show {id}`"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the server has recorded `commit`.
    async fn seen(&self, commit: &str) -> Result<(), Failure> {
        let start = Instant::now();
        loop {
            let events = self.get("/api/v1/events").await?;
            if events["events"].as_array().is_some_and(|l| l.iter().any(|e| e["commit"] == commit)) {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(60) {
                return Err(fail(format!("the server did not see commit {commit} in a minute")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<serde_json::Value, Failure> {
        let response = request.send().await.map_err(|e| fail(format!("could not reach the server: {e}")))?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.map_err(|e| fail(format!("unreadable answer: {e}")))?;
        if !status.is_success() {
            return Err(fail(format!("the server answered {status}: {body}")));
        }
        Ok(body)
    }

    /// Asks for an environment from a template and waits until its request ends.
    async fn create_environment(
        &self,
        template: &str,
        name: &str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value, Failure> {
        let body = serde_json::json!({"template": template, "product": "shop", "name": name, "params": params});
        let request = self.http.post(format!("{}/api/v1/environments", self.url)).bearer_auth(&self.token).json(&body);
        let answer = self.send(request).await?;
        let id = answer["request"]["id"].as_i64().ok_or_else(|| fail(format!("no request: {answer}")))?;
        let start = Instant::now();
        loop {
            let body = self.get(&format!("/api/v1/environments/{name}")).await?;
            let done = body["requests"]
                .as_array()
                .and_then(|l| l.iter().find(|r| r["id"] == id))
                .is_some_and(|r| matches!(r["status"].as_str(), Some("succeeded" | "failed" | "cancelled")));
            if done {
                return Ok(body["environment"].clone());
            }
            if start.elapsed() > Duration::from_secs(120) {
                return Err(fail(format!(
                    "environment {name} was not made in 2 minutes; see `plinth env show {name}`"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Publishes a release for a branch as CI would (plinth makes the branch's review
    /// environment if it has not yet), and waits until the review environment serves it.
    async fn review_release(&self, ci: &str, branch: &str, version: &str) -> Result<Review, Failure> {
        let request = self
            .http
            .post(format!("{}/api/v1/services/api/releases", self.url))
            .query(&[("branch", branch)])
            .bearer_auth(ci)
            .json(&serde_json::json!([{"name": "app", "imageUri": version}]));
        let answer = self.send(request).await?;
        let deployments = answer["deployments"].as_array().cloned().unwrap_or_default();
        let deployment = deployments
            .iter()
            .find(|d| d["environment"].as_str().is_some_and(|e| e.starts_with("review-")))
            .ok_or_else(|| fail(format!("the release reached no review environment: {answer}")))?;
        let name = deployment["environment"].as_str().unwrap_or_default().to_owned();
        let id = deployment["id"].as_i64().unwrap_or(0);
        let start = Instant::now();
        loop {
            let d = self.get(&format!("/api/v1/deployments/{id}")).await?;
            let status = d["deployment"]["status"].as_str().unwrap_or("");
            if matches!(status, "succeeded" | "failed" | "cancelled" | "superseded" | "rejected") {
                let env = self.get(&format!("/api/v1/environments/{name}")).await?;
                return Ok(Review {
                    status: env["environment"]["status"].as_str().unwrap_or("").to_owned(),
                    workspace: env["environment"]["workspace"].as_str().unwrap_or("").to_owned(),
                    name,
                    deployment: d["deployment"].clone(),
                });
            }
            if start.elapsed() > Duration::from_secs(180) {
                return Err(fail(format!(
                    "{name} did not serve the release in 3 minutes; see `plinth env show {name}`"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until an environment is destroyed.
    async fn gone(&self, name: &str) -> Result<serde_json::Value, Failure> {
        let start = Instant::now();
        loop {
            let body = self.get(&format!("/api/v1/environments/{name}")).await?;
            if matches!(body["environment"]["status"].as_str(), Some("destroyed" | "destroy_failed")) {
                return Ok(body["environment"].clone());
            }
            if start.elapsed() > Duration::from_secs(120) {
                return Err(fail(format!("{name} was not destroyed in 2 minutes; see `plinth env show {name}`")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn log_tail(&self, id: i64, lines: usize) -> Result<Vec<String>, Failure> {
        let text = self
            .http
            .get(format!("{}/api/v1/runs/{id}/logs", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| fail(format!("could not reach the server: {e}")))?
            .text()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let all: Vec<String> = text.lines().filter(|l| !l.trim().is_empty()).map(str::to_owned).collect();
        Ok(all[all.len().saturating_sub(lines)..].to_vec())
    }
}
