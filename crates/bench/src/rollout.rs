//! `plinth-bench rollout`: how long a rollout takes, against its lower bound measured in the
//! same run.
//!
//! The real `plinth server` (with `--proxy-listen`) runs a service of 3 `plinth demo-app`
//! instances from a generated repo. A `ci` token publishes v1, then one release per round;
//! each rollout is timed from the deployment's `started_at` to its `finished_at`, and its
//! events (started, healthy, routed, drained and stopped) say where the time went. Meanwhile
//! clients keep slow requests (`GET /slow?ms=M`) in flight through the proxy, so that taking
//! an old instance out has requests to wait for; which instance answered each request, and
//! when, splits each old instance's drain from its stop.
//!
//! The lower bound: the demo app's start time (spawned here and timed until it answers
//! `/healthz`, median of 10), plus `healthy` × `interval`, plus the longest request in flight
//! (M).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::child::{self, Running};
use crate::server::harness::{self, GitRepo, Ms, Noise, ServerOptions, ServerProcess, now_ms, parse_ms};
use crate::workdir::{WorkDir, fresh_dir, load_average, plinth_binary};

#[derive(Debug, clap::Args)]
pub struct RolloutArgs {
    /// The plinth binary: the server, and the demo app it runs (build it with
    /// `cargo build --release` first).
    #[arg(long, default_value = "target/release/plinth")]
    plinth: PathBuf,
    /// Releases rolled out after v1, one at a time; each is one sample.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// How long each slow request takes (the longest request in flight, M); 0 sends none.
    #[arg(long, default_value_t = 500)]
    slow_ms: u64,
    /// Clients that each keep one slow request in flight, one after another, through the
    /// proxy during each rollout.
    #[arg(long, default_value_t = 24)]
    slow_clients: usize,
    /// The service's rollout strategy.
    #[arg(long, value_enum, default_value_t = StrategyArg::Rolling)]
    strategy: StrategyArg,
    /// How many times the demo app's start is timed for the bound (median).
    #[arg(long, default_value_t = 10)]
    start_samples: usize,
    /// Keep the repo, the server's data dir and output under this directory instead of a temp
    /// dir.
    #[arg(long)]
    keep: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum StrategyArg {
    /// `{ kind = "rolling", max_surge = "100%", max_unavailable = "0" }`
    Rolling,
    /// `{ kind = "double" }`
    Double,
}

impl StrategyArg {
    fn toml(self) -> &'static str {
        match self {
            StrategyArg::Rolling => r#"{ kind = "rolling", max_surge = "100%", max_unavailable = "0" }"#,
            StrategyArg::Double => r#"{ kind = "double" }"#,
        }
    }
}

/// The service's health settings, as in plinth.toml below.
const HEALTH_INTERVAL_MS: f64 = 100.0;
const HEALTHY: f64 = 2.0;
const COUNT: usize = 3;
const HOST: &str = "api.stg.localhost";
/// The issue's target: a rollout within 10% of its lower bound.
const TARGET_RATIO: f64 = 1.10;
/// How long a rollout may take before the benchmark gives up.
const ROLLOUT_DEADLINE: Duration = Duration::from_secs(120);

fn plinth_toml(strategy: StrategyArg) -> String {
    format!(
        r#"main_branch = "main"

[environments.stg]
branches = ["main"]

[services.api]
containers = ["app"]
command = ["plinth", "demo-app", "--port", "{{port}}", "--version", "{{image.app}}"]
count = {COUNT}
health = {{ path = "/healthz", interval = "{HEALTH_INTERVAL_MS}ms", timeout = "500ms", healthy = {HEALTHY}, unhealthy = 3 }}
strategy = {}
drain_timeout = "10s"
hosts = ["{HOST}"]
"#,
        strategy.toml()
    )
}

/// The demo app's start: from spawning `plinth demo-app --port 0` to its first answer to
/// `/healthz`, in milliseconds.
fn demo_app_start(plinth: &Path, log: &Path) -> Result<f64> {
    let started = Instant::now();
    let mut app = Running::spawn(
        "plinth demo-app",
        Command::new(plinth)
            .args(["demo-app", "--port", "0", "--version", "v0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(log)?),
    )?;
    let addr = child::demo_app_addr(app.take_stdout().context("the demo app's stdout")?)?;
    let deadline = started + Duration::from_secs(10);
    loop {
        app.check_alive()?;
        match crate::proxy::http_get(addr, "localhost", "/healthz") {
            Ok((200, _)) => break,
            _ if Instant::now() > deadline => bail!("the demo app on {addr} did not answer /healthz within 10 s"),
            _ => sleep(Duration::from_millis(1)),
        }
    }
    let took = started.elapsed().as_secs_f64() * 1000.0;
    app.stop()?;
    Ok(took)
}

/// `GET /api/v1/deployments/{id}`: what this benchmark reads.
#[derive(Debug, Deserialize)]
struct DeploymentView {
    deployment: DeploymentRow,
    events: Vec<EventRow>,
}

#[derive(Debug, Deserialize)]
struct DeploymentRow {
    id: i64,
    status: String,
    reason: Option<String>,
    created_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
}

#[derive(Debug, Deserialize)]
struct EventRow {
    at: String,
    message: String,
}

#[derive(Debug, Deserialize)]
struct Published {
    deployments: Vec<IdOnly>,
}

#[derive(Debug, Deserialize)]
struct IdOnly {
    id: i64,
}

#[derive(Debug, Deserialize)]
struct CreatedToken {
    secret: String,
}

fn is_final(status: &str) -> bool {
    matches!(status, "succeeded" | "failed" | "cancelled" | "superseded" | "rejected")
}

/// Publishes `version` as the `ci` token; returns the deployment id.
fn publish(server: &ServerProcess, ci: &str, version: &str) -> Result<i64> {
    let body = serde_json::json!([{"name": "app", "imageUri": version}]);
    let published: Published = server.api.post_json_as(ci, "/api/v1/services/api/environments/stg/releases", &body)?;
    Ok(published.deployments.first().context("publishing made no deployment")?.id)
}

/// Waits for a deployment to end; fails unless it succeeded.
fn wait_deployed(server: &mut ServerProcess, id: i64) -> Result<DeploymentView> {
    let deadline = Instant::now() + ROLLOUT_DEADLINE;
    loop {
        server.check_alive()?;
        let view: DeploymentView = server.api.get_json(&format!("/api/v1/deployments/{id}"))?;
        if is_final(&view.deployment.status) {
            if view.deployment.status != "succeeded" {
                let events: Vec<&str> = view.events.iter().map(|e| e.message.as_str()).collect();
                bail!(
                    "deployment #{id} ended {}: {}\n{}",
                    view.deployment.status,
                    view.deployment.reason.as_deref().unwrap_or("no reason given"),
                    events.join("\n")
                );
            }
            return Ok(view);
        }
        if Instant::now() > deadline {
            bail!("deployment #{id} is still {} after {ROLLOUT_DEADLINE:?}", view.deployment.status);
        }
        sleep(Duration::from_millis(50));
    }
}

/// One slow request as its client saw it.
#[derive(Clone, Debug)]
struct Answer {
    start: Ms,
    end: Ms,
    /// The instance that answered (`x-demo-instance`), or why it failed.
    result: Result<String, String>,
}

/// Clients that each keep a slow request in flight through the proxy until stopped.
struct SlowLoad {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
    /// Requests each client has finished.
    done: Arc<Vec<std::sync::atomic::AtomicUsize>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl SlowLoad {
    fn start(proxy: SocketAddr, clients: usize, ms: u64) -> Result<SlowLoad> {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let done: Arc<Vec<_>> = Arc::new((0..clients).map(|_| std::sync::atomic::AtomicUsize::new(0)).collect());
        let url = format!("http://{HOST}:{}/slow?ms={ms}", proxy.port());
        let mut threads = Vec::new();
        for i in 0..clients {
            let client = reqwest::blocking::Client::builder()
                .resolve(HOST, proxy)
                .timeout(Duration::from_secs(60))
                .build()
                .context("building an HTTP client")?;
            let (stop, answers, done, url) = (stop.clone(), answers.clone(), done.clone(), url.clone());
            // Staggered over one request's time, so that requests start evenly rather than in
            // waves: whenever an instance leaves the routes, one has just started on it.
            let offset = Duration::from_millis(ms * i as u64 / clients as u64);
            threads.push(std::thread::spawn(move || {
                sleep(offset);
                while !stop.load(Ordering::Relaxed) {
                    let start = now_ms();
                    let result = match client.get(&url).send() {
                        Ok(r) if r.status() == 200 => {
                            let instance = r
                                .headers()
                                .get("x-demo-instance")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("?")
                                .to_owned();
                            let _ = r.bytes();
                            Ok(instance)
                        }
                        Ok(r) => Err(format!("{}: {}", r.status(), r.text().unwrap_or_default().trim())),
                        Err(e) => Err(e.to_string()),
                    };
                    let end = now_ms();
                    answers.lock().unwrap_or_else(|e| e.into_inner()).push(Answer { start, end, result });
                    done[i].fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        Ok(SlowLoad { stop, answers, done, threads })
    }

    /// Waits until every client has finished a request: then requests start all the time.
    fn wait_steady(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.done.iter().any(|n| n.load(Ordering::Relaxed) == 0) {
            if Instant::now() > deadline {
                bail!("the slow requests did not get answers within 60 s");
            }
            sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    fn finish(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            let _ = thread.join();
        }
        let mut answers = std::mem::take(&mut *self.answers.lock().unwrap_or_else(|e| e.into_inner()));
        answers.sort_by_key(|a| a.start);
        answers
    }
}

/// One old instance leaving: taken out of the routes, its last request answered, stopped.
#[derive(Debug)]
struct Retired {
    instance: String,
    /// When it left the routes: right after the previous step's event was recorded.
    removed: Ms,
    /// The end of the last request it answered, as its client saw it.
    last_answer: Option<Ms>,
    stopped: Ms,
}

/// One rollout, from the server's records and the load's answers.
#[derive(Debug)]
struct Rollout {
    deployment: i64,
    version: String,
    created: Ms,
    started: Ms,
    finished: Ms,
    /// The first and last `started … on …` events.
    first_spawned: Ms,
    last_spawned: Ms,
    last_healthy: Ms,
    routed: Ms,
    retired: Vec<Retired>,
    /// From the load (empty without one).
    requests: usize,
    failed: Vec<String>,
    longest_request: Ms,
    drain_timeouts: usize,
}

impl Rollout {
    fn read(view: &DeploymentView, version: &str, answers: &[Answer]) -> Result<Rollout> {
        let d = &view.deployment;
        let id = d.id;
        let at = |e: &EventRow| parse_ms(&e.at);
        let mut spawned = Vec::new();
        let mut healthy = Vec::new();
        let mut routed = None;
        let mut stops: Vec<(String, Ms)> = Vec::new();
        let mut drain_timeouts = 0;
        for e in &view.events {
            let m = e.message.as_str();
            if m.starts_with("started ") && m.contains(" on ") {
                spawned.push(at(e)?);
            } else if m.ends_with(" is healthy") {
                healthy.push(at(e)?);
            } else if m.starts_with("routed to ") {
                routed = Some(at(e)?);
            } else if let Some(instance) = m.strip_suffix(" drained and stopped") {
                stops.push((instance.to_owned(), at(e)?));
            } else if m.contains("still in flight after the drain timeout") {
                drain_timeouts += 1;
            }
        }
        let routed = routed.with_context(|| format!("deployment #{id} has no `routed to` event"))?;
        let mut retired = Vec::new();
        let mut removed = routed;
        for (instance, stopped) in stops {
            let last_answer =
                answers.iter().filter(|a| a.result.as_ref().is_ok_and(|i| *i == instance)).map(|a| a.end).max();
            retired.push(Retired { instance, removed, last_answer, stopped });
            removed = stopped;
        }
        Ok(Rollout {
            deployment: id,
            version: version.to_owned(),
            created: parse_ms(&d.created_at)?,
            started: parse_ms(d.started_at.as_deref().with_context(|| format!("deployment #{id} never started"))?)?,
            finished: parse_ms(d.finished_at.as_deref().with_context(|| format!("deployment #{id} never finished"))?)?,
            first_spawned: spawned
                .iter()
                .copied()
                .min()
                .with_context(|| format!("deployment #{id} started nothing"))?,
            last_spawned: spawned.iter().copied().max().unwrap_or(0),
            last_healthy: healthy
                .iter()
                .copied()
                .max()
                .with_context(|| format!("deployment #{id}: nothing healthy"))?,
            routed,
            retired,
            requests: answers.len(),
            failed: answers.iter().filter_map(|a| a.result.as_ref().err().cloned()).collect(),
            longest_request: answers.iter().map(|a| a.end - a.start).max().unwrap_or(0),
            drain_timeouts,
        })
    }

    fn duration(&self) -> Ms {
        self.finished - self.started
    }
}

pub fn run(args: RolloutArgs) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if args.start_samples == 0 {
        bail!("--start-samples must be at least 1");
    }
    let work = WorkDir::new(args.keep.as_deref(), "rollout")?;
    let root = work.path().to_path_buf();
    let dir = root.join(match args.strategy {
        StrategyArg::Rolling => "rolling",
        StrategyArg::Double => "double",
    });
    fresh_dir(&dir)?;
    let plinth = plinth_binary(&args.plinth)?;
    let load_before = load_average();

    let mut starts = Vec::new();
    for _ in 0..args.start_samples {
        starts.push(demo_app_start(&plinth, &dir.join("demo-app-start.log"))?);
    }
    eprintln!("rollout: demo app start, median of {}: {:.1} ms", starts.len(), median(&starts));

    let repo = GitRepo::init(dir.join("repo"))?;
    repo.write("plinth.toml", &plinth_toml(args.strategy))?;
    repo.commit("add the api service")?;
    let proxy: SocketAddr = format!("127.0.0.1:{}", harness::free_port()?).parse()?;
    let mut server = ServerProcess::start(&ServerOptions {
        plinth: &plinth,
        repo: &repo.path,
        data_dir: &dir.join("data"),
        log: &dir.join("server.log"),
        poll_interval: Duration::from_millis(100),
        concurrency: 4,
        proxy_listen: Some(proxy),
    })?;
    let token: CreatedToken = server
        .api
        .post_json("/api/v1/tokens", &serde_json::json!({"name": "ci", "roles": ["ci"], "services": ["api"]}))?;
    let ci = token.secret;
    let first = publish(&server, &ci, "v1")?;
    wait_deployed(&mut server, first)?;
    match crate::proxy::http_get(proxy, HOST, "/") {
        Ok((200, body)) if body.contains("v1") => {}
        other => bail!("the service does not answer v1 through the proxy after the first rollout: {other:?}"),
    }
    eprintln!("rollout: server up in {:.0?}, v1 deployed (#{first})", server.start_up);

    let noise = Noise::start(server.pid()?)?;
    let mut rollouts = Vec::new();
    for round in 1..=args.rounds {
        let version = format!("v{}", round + 1);
        let slow = if args.slow_ms > 0 && args.slow_clients > 0 {
            let slow = SlowLoad::start(proxy, args.slow_clients, args.slow_ms)?;
            slow.wait_steady()?;
            Some(slow)
        } else {
            None
        };
        let id = publish(&server, &ci, &version);
        let view = id.and_then(|id| wait_deployed(&mut server, id));
        let answers = slow.map(SlowLoad::finish).unwrap_or_default();
        let rollout = Rollout::read(&view?, &version, &answers)?;
        eprintln!(
            "rollout: round {round}/{}: {version} (#{}) rolled out in {} ms; {} slow requests, {} failed",
            args.rounds,
            rollout.deployment,
            rollout.duration(),
            rollout.requests,
            rollout.failed.len()
        );
        rollouts.push(rollout);
    }
    let (status, took) = server.stop()?;
    eprintln!("rollout: server stopped in {took:.0?} ({status})");
    let others = noise.others()?;
    report(&args, &starts, &rollouts);
    println!("\nOther processes used {:.0}% of the machine's CPU during the rounds.", 100.0 * others);
    println!("Load average (/proc/loadavg) before: {load_before}; after: {}.", load_average());
    Ok(())
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn ms(value: f64) -> String {
    format!("{value:.0} ms")
}

fn report(args: &RolloutArgs, starts: &[f64], rollouts: &[Rollout]) {
    let start = median(starts);
    let health = HEALTHY * HEALTH_INTERVAL_MS;
    let in_flight = if args.slow_ms > 0 && args.slow_clients > 0 { args.slow_ms as f64 } else { 0.0 };
    let bound = start + health + in_flight;
    let (lo, hi) = (starts.iter().copied().fold(f64::INFINITY, f64::min), starts.iter().copied().fold(0.0, f64::max));
    let load = if in_flight > 0.0 {
        format!("{} clients keeping `GET /slow?ms={}` in flight through the proxy", args.slow_clients, args.slow_ms)
    } else {
        "no requests in flight".to_owned()
    };
    println!(
        "\nRollout: {COUNT} instances of `plinth demo-app`, strategy {:?}, health every {HEALTH_INTERVAL_MS} ms, \
         healthy = {HEALTHY}; {load}\n",
        args.strategy
    );
    println!(
        "Lower bound: demo app start {} (median of {}, {:.1}–{:.1} ms) + healthy × interval {} + longest request in flight {} = {}\n",
        ms(start),
        starts.len(),
        lo,
        hi,
        ms(health),
        ms(in_flight),
        ms(bound)
    );
    println!(
        "| round | release | started_at → finished_at | bound | ratio | spawn → last healthy | → routed | routed → last old stopped | → finished_at | slow requests (failed) | longest |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, r) in rollouts.iter().enumerate() {
        let last_stop = r.retired.last().map_or(r.routed, |s| s.stopped);
        println!(
            "| {} | {} (#{}) | {} | {} | {:.2}x | {} | {} | {} | {} | {} ({}) | {} |",
            i + 1,
            r.version,
            r.deployment,
            ms(r.duration() as f64),
            ms(bound),
            r.duration() as f64 / bound,
            ms((r.last_healthy - r.first_spawned) as f64),
            ms((r.routed - r.last_healthy) as f64),
            ms((last_stop - r.routed) as f64),
            ms((r.finished - last_stop) as f64),
            r.requests,
            r.failed.len(),
            ms(r.longest_request as f64),
        );
    }
    let col = |f: &dyn Fn(&Rollout) -> f64| -> f64 { median(&rollouts.iter().map(f).collect::<Vec<_>>()) };
    let measured = col(&|r| r.duration() as f64);
    println!("\nWhere the time went, median of {} rollouts:\n", rollouts.len());
    println!("| part | median | bound's share |");
    println!("|---|---:|---:|");
    println!(
        "| published (`created_at`) → `started_at` (not in the figure) | {} | |",
        ms(col(&|r| (r.started - r.created) as f64))
    );
    println!("| `started_at` → first instance spawned | {} | |", ms(col(&|r| (r.first_spawned - r.started) as f64)));
    println!("| first → last instance spawned | {} | |", ms(col(&|r| (r.last_spawned - r.first_spawned) as f64)));
    println!(
        "| last spawned → last healthy (start, health checks) | {} | {} (start + healthy × interval) |",
        ms(col(&|r| (r.last_healthy - r.last_spawned) as f64)),
        ms(start + health)
    );
    println!("| last healthy → routed | {} | |", ms(col(&|r| (r.routed - r.last_healthy) as f64)));
    let retired = rollouts.iter().map(|r| r.retired.len()).max().unwrap_or(0);
    for k in 0..retired {
        let of = |f: &dyn Fn(&Retired) -> Option<f64>| -> f64 {
            median(&rollouts.iter().filter_map(|r| r.retired.get(k).and_then(f)).collect::<Vec<_>>())
        };
        let share = if k == 0 { ms(in_flight) + " (longest request)" } else { "0 ms".to_owned() };
        println!(
            "| old instance {}: out of the routes → drained and stopped | {} | {share} |",
            k + 1,
            ms(of(&|s| Some((s.stopped - s.removed) as f64)))
        );
        if rollouts.iter().any(|r| r.retired.get(k).is_some_and(|s| s.last_answer.is_some())) {
            println!(
                "| of which: out of the routes → its last request answered (drain) | {} | |",
                ms(of(&|s| s.last_answer.map(|a| (a - s.removed) as f64)))
            );
            println!(
                "| of which: last request answered → stopped (SIGTERM, exit, event) | {} | |",
                ms(of(&|s| s.last_answer.map(|a| (s.stopped - a) as f64)))
            );
        }
    }
    let last_stop = |r: &Rollout| r.retired.last().map_or(r.routed, |s| s.stopped);
    println!("| last old instance stopped → `finished_at` | {} | |", ms(col(&|r| (r.finished - last_stop(r)) as f64)));
    println!("| **`started_at` → `finished_at`** | **{}** | **{}** |", ms(measured), ms(bound));
    let ratio = measured / bound;
    println!(
        "\nMeasured / bound: {ratio:.2}x (median of {}; target ≤ {TARGET_RATIO:.2}x: {}).",
        rollouts.len(),
        if ratio <= TARGET_RATIO { "met" } else { "missed" }
    );
    if rollouts.iter().all(|r| r.retired.len() > 1) {
        // What the same rollouts would take if every old instance left the routes at once and
        // they drained together: up to routed, then the first old instance's drain and stop
        // (it left the routes at that moment), then the end. An estimate from measured parts.
        let together = col(&|r| {
            let first = &r.retired[0];
            let last = r.retired.last().map_or(first.stopped, |s| s.stopped);
            ((first.stopped - r.started) + (r.finished - last)) as f64
        });
        println!(
            "If the old instances left the routes together and drained at once (an estimate from the parts above, \
             not measured): {} = {:.2}x the bound.",
            ms(together),
            together / bound
        );
    }
    let failed: usize = rollouts.iter().map(|r| r.failed.len()).sum();
    let requests: usize = rollouts.iter().map(|r| r.requests).sum();
    let timeouts: usize = rollouts.iter().map(|r| r.drain_timeouts).sum();
    println!(
        "Slow requests during the rollouts: {requests}, of which {failed} failed; drains that hit the drain timeout: {timeouts}."
    );
    if let Some(first) = rollouts.iter().flat_map(|r| r.failed.iter()).next() {
        println!("First failure: {first}");
    }
    let names: Vec<&str> =
        rollouts.first().map(|r| r.retired.iter().map(|s| s.instance.as_str()).collect()).unwrap_or_default();
    if !names.is_empty() {
        println!("Old instances were stopped in this order (round 1): {}.", names.join(", "));
    }
}
