//! `plinth quickstart`: builds an example infrastructure repo (seed 000's layout: stg and prd
//! stacks sharing a module, built-in providers only), starts a server on it, and walks through
//! what happens to a few commits: stg plans and applies, a commit with nothing to change counts
//! as a success, prd waits for approval and applies once approved. Then a demo service: v1 is
//! published as CI would and served through plinth's proxy, rolled to v2 while traffic flows
//! (counting failed requests: none), and a broken v3 rolls back by itself. Then it keeps
//! serving.

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
health = { path = "/healthz", interval = "200ms", timeout = "500ms", healthy = 2, unhealthy = 2 }
strategy = { kind = "rolling", max_surge = "1", max_unavailable = "0" }
hosts = ["api.{env}.localhost"]
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

/// An HTTP client that sends `api.stg.localhost` to the proxy.
fn proxy_client(proxy: std::net::SocketAddr) -> Result<reqwest::Client, Failure> {
    reqwest::Client::builder()
        .resolve("api.stg.localhost", proxy)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| fail(format!("could not make an HTTP client: {e}")))
}

/// What the demo service answers through the proxy.
async fn get_version(proxy: &std::net::SocketAddr) -> Result<String, Failure> {
    let client = proxy_client(*proxy)?;
    let response = client
        .get(format!("http://api.stg.localhost:{}/", proxy.port()))
        .send()
        .await
        .map_err(|e| fail(format!("the proxy did not answer: {e}")))?;
    Ok(response.text().await.unwrap_or_default().trim().to_owned())
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
