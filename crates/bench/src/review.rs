//! `plinth-bench review`: from a branch push to its review environment serving the branch's
//! release through plinth's proxy, against the sum of what cannot be avoided: the environment's
//! terraform time, the instance's health checks, and the poll interval.
//!
//! The real `plinth server` (with `--proxy-listen`) watches a generated repo whose plinth.toml
//! has `[review]` for `feature/*` and a service `api` (`plinth demo-app`), and whose template
//! `review-app` runs `api` behind a `terraform_data` that sleeps in a `local-exec` (so terraform
//! has real work). Each round pushes a new branch `feature/bN` (a commit and its ref, made
//! with git plumbing in the watched repo), and at once, as CI would, publishes release `vN` for
//! the branch with a `ci` token; then polls the proxy every `--every` with the branch's host
//! until it answers 200 with `vN`. Every time but the push and the first answer is the
//! server's own: the commit's event, the environment and its create request, the run and its
//! log, the deployment and its events. Then the branch is deleted, and the round waits for the
//! host to answer 404 and the environment to be `destroyed`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::server::harness::{self, GitRepo, Ms, Noise, ServerOptions, ServerProcess, now_ms, parse_ms};
use crate::workdir::{WorkDir, fresh_dir, load_average, plinth_binary};

#[derive(Debug, clap::Args)]
pub struct ReviewArgs {
    /// The plinth binary: the server, and the demo app it runs (build it with
    /// `cargo build --release` first).
    #[arg(long, default_value = "target/release/plinth")]
    plinth: PathBuf,
    /// Branches pushed, one after another (each created, served, deleted and destroyed).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// How long the template's `local-exec` sleeps, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    sleep_ms: u64,
    /// The server's `--poll-interval`.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// How often the proxy is asked whether the branch is served (or gone).
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    every: Duration,
    /// Keep the repo, the server's data dir and output under this directory instead of a temp
    /// dir.
    #[arg(long)]
    keep: Option<PathBuf>,
}

const DOMAIN: &str = "review.localhost";
/// The service's health settings, as in plinth.toml below.
const HEALTH_INTERVAL_MS: u64 = 200;
const HEALTHY: u64 = 2;
/// How long one round may take before the benchmark gives up.
const ROUND_DEADLINE: Duration = Duration::from_secs(180);

fn plinth_toml() -> String {
    format!(
        r#"main_branch = "main"

[environments.sandbox]

[products.shop]
owner = "team-shop"
description = "The shop"

[services.api]
containers = ["app"]
command = ["plinth", "demo-app", "--port", "{{port}}", "--version", "{{image.app}}"]
count = 1
health = {{ path = "/healthz", interval = "{HEALTH_INTERVAL_MS}ms", timeout = "{HEALTH_INTERVAL_MS}ms", healthy = {HEALTHY}, unhealthy = 3 }}
drain_timeout = "5s"

[review]
template = "review-app"
branches = ["feature/*"]
domain = "{DOMAIN}"
product = "shop"
"#
    )
}

fn template_toml(sleep_ms: u64) -> String {
    format!(
        r#"description = "A review app for each feature branch"
environment = "sandbox"
account = "review"
services = ["api"]

[parameters.sleep_ms]
type = "int"
min = 0
max = 600000
default = {sleep_ms}
description = "How long the provisioner sleeps, in milliseconds"
"#
    )
}

const MODULE: &str = r#"variable "sleep_ms" {
  type = number
}

variable "plinth_workspace" {
  type = string
}

variable "plinth_fqdn" {
  type = string
}

resource "terraform_data" "app" {
  input = var.plinth_workspace
  provisioner "local-exec" {
    command     = "sleep $S"
    environment = { S = var.sleep_ms / 1000 }
  }
}

output "url" {
  value = "http://${var.plinth_fqdn}"
}
"#;

/// A timestamp field of a JSON object from the API.
fn at(v: &Value, key: &str) -> Result<Ms> {
    let text = v[key].as_str().with_context(|| format!("no `{key}` in {v}"))?;
    parse_ms(text)
}

/// One branch, from its push to its first answer and from its deletion to `destroyed`.
#[derive(Debug)]
struct Round {
    branch: String,
    pushed: Ms,
    /// The commit's event (`created_at`: the fetch that brought it returned), and what fetched.
    seen: Ms,
    seen_by: String,
    env_created: Ms,
    request_started: Ms,
    run: i64,
    run_created: Ms,
    run_started: Ms,
    first_terraform: Ms,
    run_finished: Ms,
    request_finished: Ms,
    /// When the `ci` publish returned, and the deployment.
    published: Ms,
    deployment: i64,
    deploy_created: Ms,
    deploy_started: Ms,
    instance_started: Ms,
    healthy: Ms,
    routed: Ms,
    deploy_finished: Ms,
    /// The first 200 with the branch's release through the proxy.
    serving: Ms,
    /// The answers before that, by status (404 before the host is routed, 503 while it has no
    /// healthy instance).
    misses: BTreeMap<u16, usize>,
    teardown: Teardown,
}

impl Round {
    fn terraform(&self) -> Ms {
        self.run_finished - self.first_terraform
    }

    fn health(&self) -> Ms {
        self.healthy - self.instance_started
    }

    fn measured(&self) -> Ms {
        self.serving - self.pushed
    }
}

/// A branch deleted: its environment destroyed and its host gone from the proxy.
#[derive(Debug)]
struct Teardown {
    deleted: Ms,
    request_created: Ms,
    request_started: Ms,
    run: i64,
    run_created: Ms,
    run_started: Ms,
    first_terraform: Ms,
    run_finished: Ms,
    /// The environment's `destroyed_at`.
    destroyed: Ms,
    /// The first 404 through the proxy.
    not_found: Ms,
}

impl Teardown {
    fn terraform(&self) -> Ms {
        self.run_finished - self.first_terraform
    }
}

/// A run's times from `GET /api/v1/runs/{id}` and its log.
struct RunTimes {
    created: Ms,
    started: Ms,
    first_terraform: Ms,
    finished: Ms,
}

fn run_times(server: &ServerProcess, id: i64) -> Result<RunTimes> {
    let run: Value = server.api.get_json(&format!("/api/v1/runs/{id}"))?;
    let status = run["status"].as_str().unwrap_or("?");
    if status != "applied" {
        let log = server.api.logs(id).unwrap_or_default();
        let tail: Vec<&str> = log.iter().rev().take(15).rev().map(|l| l.text.as_str()).collect();
        bail!("run #{id} is {status}: {}\n{}", run["reason"], tail.join("\n"));
    }
    let log = server.api.logs(id)?;
    let first = log
        .iter()
        .find(|l| l.stream != "plinth" && l.text.starts_with("$ terraform "))
        .with_context(|| format!("run #{id} logged no `$ terraform` line"))?;
    Ok(RunTimes {
        created: at(&run, "created_at")?,
        started: at(&run, "started_at")?,
        first_terraform: parse_ms(&first.at)?,
        finished: at(&run, "finished_at")?,
    })
}

/// The request of `kind` in an environment's view, newest first as the API lists them.
fn request<'a>(view: &'a Value, kind: &str) -> Result<&'a Value> {
    view["requests"]
        .as_array()
        .and_then(|all| all.iter().find(|r| r["kind"] == kind))
        .with_context(|| format!("no {kind} request in {}", view["environment"]["name"]))
}

fn first_run(request: &Value) -> Result<i64> {
    request["runs"].as_array().and_then(|r| r.first()).and_then(Value::as_i64).context("the request made no run")
}

#[derive(serde::Deserialize)]
struct Created {
    secret: String,
}

pub fn run(args: ReviewArgs) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let work = WorkDir::new(args.keep.as_deref(), "review")?;
    let root = work.path().to_path_buf();
    let dir = root.join("review");
    fresh_dir(&dir)?;
    let plinth = plinth_binary(&args.plinth)?;
    let load_before = load_average();

    let repo = GitRepo::init(dir.join("repo"))?;
    repo.write("plinth.toml", &plinth_toml())?;
    repo.write("templates/review-app/template.toml", &template_toml(args.sleep_ms))?;
    repo.write("templates/review-app/main.tf", MODULE)?;
    repo.commit("review environments")?;
    let proxy: SocketAddr = format!("127.0.0.1:{}", harness::free_port()?).parse()?;
    let mut server = ServerProcess::start(&ServerOptions {
        plinth: &plinth,
        repo: &repo.path,
        data_dir: &dir.join("data"),
        log: &dir.join("server.log"),
        poll_interval: args.poll_interval,
        concurrency: 4,
        proxy_listen: Some(proxy),
    })?;
    eprintln!("review: server up in {:.0?}", server.start_up);
    let templates: Value = server.api.get_json("/api/v1/templates")?;
    if templates["broken"].as_array().is_some_and(|b| !b.is_empty()) {
        bail!("the review template is broken: {}", templates["broken"]);
    }
    let ci: Created = server
        .api
        .post_json("/api/v1/tokens", &serde_json::json!({"name": "ci", "roles": ["ci"], "services": ["api"]}))?;

    let noise = Noise::start(server.pid()?)?;
    let mut rounds = Vec::new();
    for n in 1..=args.rounds {
        let round = one_round(&args, &repo, &mut server, proxy, &ci.secret, n)?;
        eprintln!(
            "review: {}: serving after {} ms (terraform {} ms, health checks {} ms); 404 after {} ms, destroyed after {} ms",
            round.branch,
            round.measured(),
            round.terraform(),
            round.health(),
            round.teardown.not_found - round.teardown.deleted,
            round.teardown.destroyed - round.teardown.deleted
        );
        rounds.push(round);
    }
    let (status, took) = server.stop()?;
    eprintln!("review: server stopped in {took:.0?} ({status})");
    let others = noise.others()?;
    report(&args, &rounds);
    println!("\nOther processes used {:.0}% of the machine's CPU during the rounds.", 100.0 * others);
    println!("Load average (/proc/loadavg) before: {load_before}; after: {}.", load_average());
    Ok(())
}

/// Asks the proxy for `host` every `every` until `done` accepts an answer; the time of that
/// answer and the answers before it, by status.
fn wait_proxy(
    server: &mut ServerProcess,
    proxy: SocketAddr,
    host: &str,
    every: Duration,
    what: &str,
    done: impl Fn(u16, &str) -> bool,
    mut meanwhile: impl FnMut() -> Result<()>,
) -> Result<(Ms, BTreeMap<u16, usize>)> {
    let deadline = Instant::now() + ROUND_DEADLINE;
    let mut misses = BTreeMap::new();
    loop {
        let asked = Instant::now();
        let answer = crate::proxy::http_get(proxy, host, "/");
        let answered = now_ms();
        match answer {
            Ok((status, body)) if done(status, &body) => return Ok((answered, misses)),
            Ok((status, _)) => *misses.entry(status).or_default() += 1,
            Err(e) => bail!("the proxy did not answer for {host}: {e:#}"),
        }
        server.check_alive()?;
        meanwhile()?;
        if Instant::now() > deadline {
            bail!("{host} was not {what} within {ROUND_DEADLINE:?}");
        }
        sleep(every.saturating_sub(asked.elapsed()));
    }
}

fn one_round(
    args: &ReviewArgs,
    repo: &GitRepo,
    server: &mut ServerProcess,
    proxy: SocketAddr,
    ci: &str,
    n: usize,
) -> Result<Round> {
    let branch = format!("feature/b{n}");
    let slug = format!("feature-b{n}");
    let host = format!("{slug}.{DOMAIN}");
    let name = format!("review-{slug}");
    let version = format!("v{n}");

    // The push: a new commit on top of main, and the branch pointing at it.
    let commit = repo.git(&["commit-tree", "main^{tree}", "-p", "main", "-m", &format!("work on {branch}")])?;
    repo.git(&["update-ref", &format!("refs/heads/{branch}"), &commit])?;
    let pushed = now_ms();

    // CI publishes the branch's release right away, while plinth may not have seen the push.
    let (tx, rx) = mpsc::channel();
    {
        let url = format!("{}/api/v1/services/api/releases?branch={branch}", server.api.url());
        let ci = ci.to_owned();
        let body = serde_json::json!([{"name": "app", "imageUri": version}]);
        std::thread::spawn(move || {
            let result = (|| -> Result<(Value, Ms)> {
                let response = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(60))
                    .build()?
                    .post(&url)
                    .bearer_auth(&ci)
                    .json(&body)
                    .send()?;
                let status = response.status();
                let text = response.text()?;
                let returned = now_ms();
                if !status.is_success() {
                    bail!("publishing for the branch: {status}: {text}");
                }
                Ok((serde_json::from_str(&text)?, returned))
            })();
            let _ = tx.send(result);
        });
    }
    // A publish that fails ends the round at once rather than at the deadline.
    let mut answer = None;
    let mut publish_answered = || -> Result<()> {
        match rx.try_recv() {
            Ok(result) => answer = Some(result.context("CI's publish failed")?),
            Err(mpsc::TryRecvError::Empty) => {}
            Err(mpsc::TryRecvError::Disconnected) => {
                if answer.is_none() {
                    bail!("the publishing thread ended without an answer");
                }
            }
        }
        Ok(())
    };
    let (serving, misses) = wait_proxy(
        server,
        proxy,
        &host,
        args.every,
        "serving the release",
        |status, body| status == 200 && body.contains(&version),
        &mut publish_answered,
    )?;
    if answer.is_none() {
        let result = rx.recv_timeout(Duration::from_secs(60)).context("the publish did not return")?;
        answer = Some(result.context("CI's publish failed")?);
    }
    let (published, published_at) = answer.context("no answer from the publish")?;
    let deployment = published["deployments"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["environment"] == name.as_str()))
        .and_then(|d| d["id"].as_i64())
        .with_context(|| format!("the publish made no deployment to {name}: {published}"))?;

    // The server's records of the way there.
    let events: Value = server.api.get_json("/api/v1/events?limit=200")?;
    let event = events["events"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["commit"] == commit.as_str() && e["branch"] == branch.as_str()))
        .with_context(|| format!("no event for {branch} at {commit}"))?;
    let view: Value = server.api.get_json(&format!("/api/v1/environments/{name}"))?;
    let create = request(&view, "create")?;
    let run = first_run(create)?;
    let times = run_times(server, run)?;
    let d: Value = server.api.get_json(&format!("/api/v1/deployments/{deployment}"))?;
    let mut instance_started = None;
    let mut healthy = None;
    let mut routed = None;
    for e in d["events"].as_array().into_iter().flatten() {
        let message = e["message"].as_str().unwrap_or("");
        let when = at(e, "at")?;
        if message.starts_with("started ") && message.contains(" on ") {
            instance_started.get_or_insert(when);
        } else if message.ends_with(" is healthy") {
            healthy.get_or_insert(when);
        } else if message.starts_with("routed to ") {
            routed.get_or_insert(when);
        }
    }
    let dep = &d["deployment"];
    if dep["status"] != "succeeded" {
        bail!("deployment #{deployment} is {}: {}", dep["status"], dep["reason"]);
    }
    let missing = |what: &str| format!("deployment #{deployment} has no `{what}` event: {}", d["events"]);
    let mut round = Round {
        branch: branch.clone(),
        pushed,
        seen: at(event, "created_at")?,
        seen_by: event["trigger"].as_str().unwrap_or("?").to_owned(),
        env_created: at(&view["environment"], "created_at")?,
        request_started: at(create, "started_at")?,
        run,
        run_created: times.created,
        run_started: times.started,
        first_terraform: times.first_terraform,
        run_finished: times.finished,
        request_finished: at(create, "finished_at")?,
        published: published_at,
        deployment,
        deploy_created: at(dep, "created_at")?,
        deploy_started: at(dep, "started_at")?,
        instance_started: instance_started.with_context(|| missing("started … on"))?,
        healthy: healthy.with_context(|| missing("… is healthy"))?,
        routed: routed.with_context(|| missing("routed to"))?,
        deploy_finished: at(dep, "finished_at")?,
        serving,
        misses,
        teardown: Teardown {
            deleted: 0,
            request_created: 0,
            request_started: 0,
            run: 0,
            run_created: 0,
            run_started: 0,
            first_terraform: 0,
            run_finished: 0,
            destroyed: 0,
            not_found: 0,
        },
    };

    // The branch goes: the host must answer 404 and the environment end `destroyed`.
    repo.git(&["update-ref", "-d", &format!("refs/heads/{branch}")])?;
    let deleted = now_ms();
    let (not_found, _) = wait_proxy(server, proxy, &host, args.every, "gone", |status, _| status == 404, || Ok(()))?;
    let deadline = Instant::now() + ROUND_DEADLINE;
    let view = loop {
        let view: Value = server.api.get_json(&format!("/api/v1/environments/{name}"))?;
        if view["environment"]["status"] == "destroyed" {
            break view;
        }
        if ["destroy_failed", "cleanup_failed"].contains(&view["environment"]["status"].as_str().unwrap_or("")) {
            bail!("{name} ended {}: {}", view["environment"]["status"], view["environment"]["reason"]);
        }
        server.check_alive()?;
        if Instant::now() > deadline {
            bail!("{name} is still {} {ROUND_DEADLINE:?} after its branch was deleted", view["environment"]["status"]);
        }
        sleep(Duration::from_millis(50));
    };
    let destroy = request(&view, "destroy")?;
    let run = first_run(destroy)?;
    let times = run_times(server, run)?;
    round.teardown = Teardown {
        deleted,
        request_created: at(destroy, "created_at")?,
        request_started: at(destroy, "started_at")?,
        run,
        run_created: times.created,
        run_started: times.started,
        first_terraform: times.first_terraform,
        run_finished: times.finished,
        destroyed: at(&view["environment"], "destroyed_at")?,
        not_found,
    };
    Ok(round)
}

fn median(values: &[Ms]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2] as f64,
        n => (sorted[n / 2 - 1] + sorted[n / 2]) as f64 / 2.0,
    }
}

fn report(args: &ReviewArgs, rounds: &[Round]) {
    let poll = args.poll_interval.as_millis() as Ms;
    println!(
        "\nReview environments: {} branches pushed one at a time; the template's `local-exec` sleeps {} ms; \
         `api` is 1 `plinth demo-app`, health every {HEALTH_INTERVAL_MS} ms, healthy = {HEALTHY}; \
         `--poll-interval {}ms`; the proxy asked every {} ms.\n",
        rounds.len(),
        args.sleep_ms,
        poll,
        args.every.as_millis()
    );
    println!(
        "Bound = the environment's terraform time (first `$ terraform` → run `finished_at`) + health checks \
         (instance `started … on` → `… is healthy`) + the poll interval.\n"
    );
    println!(
        "| branch | push → serving | terraform | health checks | poll | bound | ratio | answers before (status × count) | CI's publish answered |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rounds {
        let bound = r.terraform() + r.health() + poll;
        println!(
            "| `{}` | {} ms | {} ms | {} ms | {} ms | {} ms | {:.2}x | {} | push + {} ms |",
            r.branch,
            r.measured(),
            r.terraform(),
            r.health(),
            poll,
            bound,
            r.measured() as f64 / bound as f64,
            r.misses.iter().map(|(s, n)| format!("{s} × {n}")).collect::<Vec<_>>().join(", "),
            r.published - r.pushed
        );
    }
    let ratios: Vec<f64> =
        rounds.iter().map(|r| r.measured() as f64 / (r.terraform() + r.health() + poll) as f64).collect();
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    let med = if sorted.is_empty() { f64::NAN } else { sorted[sorted.len() / 2] };
    println!("\nMeasured / bound: median {:.2}x, max {:.2}x.", med, sorted.last().copied().unwrap_or(f64::NAN));

    type Part = (&'static str, fn(&Round) -> Ms, &'static str);
    let parts: [Part; 13] = [
        ("push → commit seen (waiting for the poll or CI's publish, the fetch)", |r| r.seen - r.pushed, "poll"),
        ("seen → environment created (review sync)", |r| r.env_created - r.seen, ""),
        ("created → create request started (queueing for the account)", |r| r.request_started - r.env_created, ""),
        (
            "request started → run recorded (kept root rendered: export, `terraform fmt`)",
            |r| r.run_created - r.request_started,
            "",
        ),
        ("run recorded → run started (scheduler)", |r| r.run_started - r.run_created, ""),
        ("run started → first `$ terraform` (kept root copied, backend)", |r| r.first_terraform - r.run_started, ""),
        (
            "first `$ terraform` → run finished (init, workspace, plan, show, apply, output)",
            Round::terraform,
            "terraform",
        ),
        ("run finished → environment ready (request finished)", |r| r.request_finished - r.run_finished, ""),
        ("request finished → deployment started (deployer)", |r| r.deploy_started - r.request_finished, ""),
        ("deployment started → instance started", |r| r.instance_started - r.deploy_started, ""),
        ("instance started → healthy (health checks)", Round::health, "health checks"),
        ("healthy → routed", |r| r.routed - r.healthy, ""),
        ("routed → first 200 with the release through the proxy (client, every 20 ms)", |r| r.serving - r.routed, ""),
    ];
    println!("\nWhere the time went (ms), per branch, then median and max:\n");
    let head: Vec<String> = rounds.iter().map(|r| format!("`{}`", r.branch)).collect();
    println!("| part | {} | median | max | in the bound |", head.join(" | "));
    println!("|---|{}---:|---:|---|", "---:|".repeat(rounds.len()));
    let row = |label: &str, f: &dyn Fn(&Round) -> Ms, bound: &str| {
        let values: Vec<Ms> = rounds.iter().map(f).collect();
        let cells: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        println!(
            "| {label} | {} | {:.0} | {} | {bound} |",
            cells.join(" | "),
            median(&values),
            values.iter().copied().max().unwrap_or(0)
        );
    };
    for (label, f, bound) in parts {
        row(label, &f, bound);
    }
    row("**push → serving**", &Round::measured, "");
    row("(not in the sum) CI's publish: push → deployment recorded", &|r| r.deploy_created - r.pushed, "");
    row("(not in the sum) CI's publish: push → its answer", &|r| r.published - r.pushed, "");
    row("(not in the sum) deployment started → `finished_at`", &|r| r.deploy_finished - r.deploy_started, "");
    let seen_by: Vec<String> = rounds.iter().map(|r| format!("{} {}", r.branch, r.seen_by)).collect();
    println!("\nWhat fetched each push first (`poll`: the watcher; `release`: CI's publish): {}.", seen_by.join(", "));
    let runs: Vec<String> = rounds.iter().map(|r| format!("#{} (deployment #{})", r.run, r.deployment)).collect();
    println!("Create runs: {}.", runs.join(", "));

    println!("\nTeardown: branch deleted → host answers 404 and the environment is `destroyed` (ms):\n");
    println!("| part | {} | median | max |", head.join(" | "));
    println!("|---|{}---:|---:|", "---:|".repeat(rounds.len()));
    type TPart = (&'static str, fn(&Teardown) -> Ms);
    let tparts: [TPart; 9] = [
        ("branch deleted → destroy requested (poll, review sync)", |t| t.request_created - t.deleted),
        ("requested → started (queueing for the account)", |t| t.request_started - t.request_created),
        ("started → first 404 through the proxy (instances retired, hosts removed; client)", |t| {
            t.not_found - t.request_started
        }),
        ("started → destroy run recorded", |t| t.run_created - t.request_started),
        ("run recorded → run started (scheduler)", |t| t.run_started - t.run_created),
        ("run started → first `$ terraform` (kept root copied, backend)", |t| t.first_terraform - t.run_started),
        ("first `$ terraform` → run finished (destroy)", Teardown::terraform),
        ("run finished → `destroyed_at`", |t| t.destroyed - t.run_finished),
        ("**branch deleted → `destroyed_at`**", |t| t.destroyed - t.deleted),
    ];
    for (label, f) in tparts {
        let values: Vec<Ms> = rounds.iter().map(|r| f(&r.teardown)).collect();
        let cells: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        println!(
            "| {label} | {} | {:.0} | {} |",
            cells.join(" | "),
            median(&values),
            values.iter().copied().max().unwrap_or(0)
        );
    }
    let runs: Vec<String> = rounds.iter().map(|r| format!("#{}", r.teardown.run)).collect();
    println!("\nDestroy runs: {}.", runs.join(", "));
    let t404: Vec<Ms> = rounds.iter().map(|r| r.teardown.not_found - r.teardown.deleted).collect();
    let tb: Vec<f64> = rounds
        .iter()
        .map(|r| (r.teardown.destroyed - r.teardown.deleted) as f64 / (r.teardown.terraform() + poll) as f64)
        .collect();
    let mut tb_sorted = tb.clone();
    tb_sorted.sort_by(f64::total_cmp);
    println!(
        "\nBranch deleted → 404: median {:.0} ms, max {} ms. Branch deleted → destroyed against its destroy's terraform time + the poll interval: median {:.2}x, max {:.2}x.",
        median(&t404),
        t404.iter().copied().max().unwrap_or(0),
        tb_sorted.get(tb_sorted.len() / 2).copied().unwrap_or(f64::NAN),
        tb_sorted.last().copied().unwrap_or(f64::NAN)
    );
}
