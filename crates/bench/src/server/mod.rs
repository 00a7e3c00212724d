//! `plinth-bench server`: the plinth server as a child process (the real `plinth server`), over
//! a git repo made in a temp dir, with the real terraform CLI and built-in providers only. Three
//! figures, each against a baseline from the same run:
//!
//! - **overhead**: from the server seeing a commit (the fetch that brought it) to the first terraform process starting,
//!   read from the server's own records (the run's `created_at`, the `at` of its
//!   `$ terraform init` log line), over a series of commits to one stack; against the 100 ms
//!   target. Also from `git commit` returning, against the poll interval.
//! - **throughput**: one commit changing many stacks, each sleeping in a `local-exec`
//!   provisioner; the wall time from the first terraform start to the last run's end against
//!   the ideal, the sum of the runs' terraform times divided by the concurrency.
//! - **memory**: the server's resident memory idle after start-up and after the many-stack run
//!   (and after more commits that change every stack, to see whether it settles), against an
//!   empty process (`sleep 60`); its idle CPU; and the database size.

pub(crate) mod harness;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::workdir::{WorkDir, fresh_dir, load_average, plinth_binary};
use harness::{GitRepo, Idle, LogLine, Ms, RunView, ServerOptions, ServerProcess, parse_ms};

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// The plinth binary to run (build it with `cargo build --release` first).
    #[arg(long, default_value = "target/release/plinth")]
    plinth: PathBuf,
    /// Which figures to measure; memory is read during the throughput run.
    #[arg(long, value_delimiter = ',', default_value = "overhead,throughput")]
    figures: Vec<Figure>,
    /// Commits to one stack for the overhead figure, after one to warm up.
    #[arg(long, default_value_t = 10)]
    commits: usize,
    /// Files outside any stack in the overhead figure's repo (100 to a directory under `docs/`),
    /// to see how the overhead grows with the size of the repo.
    #[arg(long, default_value_t = 0)]
    other_files: usize,
    /// Stacks changed by the one commit of the throughput figure (at most 1000).
    #[arg(long, default_value_t = 200)]
    stacks: usize,
    /// Commits that change every stack, in the throughput figure: the first is measured; the
    /// others (updates in place, nothing sleeps) show whether the server's memory settles.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The server's `--concurrency`.
    #[arg(long, default_value_t = 8)]
    concurrency: u16,
    /// How long each stack's `local-exec` provisioner sleeps in the throughput figure.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    sleep: Duration,
    /// The server's `--poll-interval`.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// How long the runs of one commit may take to finish.
    #[arg(long, default_value = "60m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Keep the repos, data dirs and server output under this directory instead of a temp dir.
    #[arg(long)]
    keep: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Figure {
    Overhead,
    Throughput,
}

/// The overhead target: from a commit being seen (fetched) to terraform starting.
const TARGET: Duration = Duration::from_millis(100);

pub fn run(args: ServerArgs) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if args.stacks == 0 || args.stacks > 1000 {
        bail!("--stacks must be between 1 and 1000 (the runs are read in one page of 1000)");
    }
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if args.commits == 0 {
        bail!("--commits must be at least 1");
    }
    let work = WorkDir::new(args.keep.as_deref(), "server")?;
    let root = work.path().to_path_buf();
    let plinth = plinth_binary(&args.plinth)?;
    let load_before = load_average();
    if args.figures.contains(&Figure::Overhead) {
        let (samples, others) = overhead(&args, &plinth, &root.join("overhead"))?;
        report_overhead(&args, &samples);
        println!("\nOther processes used {:.0}% of the machine's CPU meanwhile.", 100.0 * others);
    }
    if args.figures.contains(&Figure::Throughput) {
        let scale = throughput(&args, &plinth, &root.join("throughput"))?;
        report_throughput(&args, &scale);
        report_memory(&args, &scale);
    }
    println!("\nLoad average (/proc/loadavg) before: {load_before}; after: {}.", load_average());
    Ok(())
}

const ENVIRONMENT: &str = "main_branch = \"main\"\n\n[environments.stg]\nbranches = [\"main\"]\n";

/// Where the time of one run went, from the server's records.
#[derive(Debug)]
struct Timeline {
    created: Ms,
    started: Ms,
    finished: Ms,
    checking_out: Option<Ms>,
    checked_out: Option<Ms>,
    /// How many files the checkout wrote, as its log says.
    files: Option<u64>,
    /// Each terraform command, in order.
    steps: Vec<Step>,
    /// Lines in the run's log.
    lines: usize,
}

/// One terraform command: when its `$ terraform` line was written and when its last output
/// line was.
#[derive(Debug)]
struct Step {
    command: String,
    start: Ms,
    last: Ms,
}

impl Timeline {
    fn read(run: &RunView, logs: &[LogLine]) -> Result<Timeline> {
        let id = run.id;
        let mut timeline = Timeline {
            created: parse_ms(&run.created_at)?,
            started: parse_ms(run.started_at.as_deref().with_context(|| format!("run #{id} never started"))?)?,
            finished: parse_ms(run.finished_at.as_deref().with_context(|| format!("run #{id} never finished"))?)?,
            checking_out: None,
            checked_out: None,
            files: None,
            steps: Vec::new(),
            lines: logs.len(),
        };
        let mut in_step = false;
        for line in logs {
            let at = parse_ms(&line.at)?;
            if line.stream == "plinth" {
                in_step = false;
                if line.text.starts_with("Checking out") {
                    timeline.checking_out = Some(at);
                } else if let Some(rest) = line.text.strip_prefix("Checked out ") {
                    timeline.checked_out = Some(at);
                    timeline.files = rest.split_whitespace().next().and_then(|n| n.parse().ok());
                }
            } else if let Some(rest) = line.text.strip_prefix("$ terraform ") {
                let command = rest.split_whitespace().next().unwrap_or("?").to_owned();
                timeline.steps.push(Step { command, start: at, last: at });
                in_step = true;
            } else if in_step && let Some(step) = timeline.steps.last_mut() {
                step.last = at;
            }
        }
        if timeline.steps.is_empty() {
            bail!("run #{id} logged no `$ terraform` line");
        }
        Ok(timeline)
    }

    fn first_terraform(&self) -> Ms {
        self.steps.first().map_or(self.finished, |s| s.start)
    }

    /// From the first terraform start to the run's end, as the throughput figure counts it.
    fn terraform_time(&self) -> Ms {
        self.finished - self.first_terraform()
    }

    /// The time terraform processes ran (first to last output line of each command).
    fn process_time(&self) -> Ms {
        self.steps.iter().map(|s| s.last - s.start).sum()
    }
}

/// Fetches the runs' logs and reads their timelines; every run must have applied.
fn timelines(server: &ServerProcess, runs: &[RunView]) -> Result<Vec<Timeline>> {
    let failed: Vec<&RunView> = runs.iter().filter(|r| r.status != "applied").collect();
    if let Some(first) = failed.first() {
        let log = server.api.logs(first.id).unwrap_or_default();
        let text: Vec<String> = log.iter().rev().take(15).rev().map(|l| l.text.clone()).collect();
        bail!(
            "{} of {} runs did not apply; run #{} ({}) is {}: {}\n{}",
            failed.len(),
            runs.len(),
            first.id,
            first.stack,
            first.status,
            first.reason.as_deref().unwrap_or("no reason given"),
            text.join("\n")
        );
    }
    let mut sorted: Vec<&RunView> = runs.iter().collect();
    sorted.sort_by_key(|r| r.id);
    sorted.into_iter().map(|run| Timeline::read(run, &server.api.logs(run.id)?)).collect()
}

/// One commit to one stack, timed.
#[derive(Debug)]
struct Sample {
    /// When `git commit` returned.
    committed: Ms,
    timeline: Timeline,
    /// The baseline for the checkout: `git checkout-index -a` of the same tree.
    git_checkout: Ms,
}

/// How long git takes to write the files of its index (the commit just made) into an empty
/// directory, which is then removed.
fn git_checkout(repo: &GitRepo, dest: &Path) -> Result<Ms> {
    let prefix = format!("{}/", dest.display());
    let start = std::time::Instant::now();
    repo.git(&["checkout-index", "-a", "-f", "--prefix", &prefix])?;
    let took = start.elapsed().as_millis() as Ms;
    std::fs::remove_dir_all(dest)?;
    Ok(took)
}

fn one_stack(rev: usize) -> String {
    format!("resource \"terraform_data\" \"app\" {{\n  input = \"rev-{rev}\"\n}}\n")
}

/// The samples, and the share of the machine's CPU other processes used meanwhile.
fn overhead(args: &ServerArgs, plinth: &Path, dir: &Path) -> Result<(Vec<Sample>, f64)> {
    fresh_dir(dir)?;
    let repo = GitRepo::init(dir.join("repo"))?;
    if args.other_files > 0 {
        for i in 0..args.other_files {
            repo.write(&format!("docs/d{:03}/page-{i:06}.md", i / 100), &format!("page {i}\n"))?;
        }
        repo.commit("add docs")?;
        // Packed, as a mirror of a real remote is.
        repo.git(&["gc", "-q"])?;
    }
    let mut server = ServerProcess::start(&ServerOptions {
        plinth,
        repo: &repo.path,
        data_dir: &dir.join("data"),
        log: &dir.join("server.log"),
        poll_interval: args.poll_interval,
        concurrency: args.concurrency,
        proxy_listen: None,
    })?;
    eprintln!("overhead: server up in {:.0?}; warming up", server.start_up);
    repo.write("plinth.toml", &format!("{ENVIRONMENT}\n[stacks.app]\npath = \"stacks/app\"\nenvironment = \"stg\"\n"))?;
    repo.write("stacks/app/main.tf", &one_stack(0))?;
    let (commit, _) = repo.commit("add the app stack")?;
    let runs = harness::settle(&mut server, &commit, 1, Duration::from_millis(50), args.timeout)?;
    timelines(&server, &runs)?;
    let noise = harness::Noise::start(server.pid()?)?;
    let mut samples = Vec::new();
    for rev in 1..=args.commits {
        repo.write("stacks/app/main.tf", &one_stack(rev))?;
        let (commit, committed) = repo.commit(&format!("app rev {rev}"))?;
        let runs = harness::settle(&mut server, &commit, 1, Duration::from_millis(50), args.timeout)?;
        let timeline = timelines(&server, &runs)?.into_iter().next().context("no run")?;
        eprintln!(
            "overhead: commit {rev}/{}: seen → terraform init {} ms",
            args.commits,
            timeline.first_terraform() - timeline.created
        );
        let git_checkout = git_checkout(&repo, &dir.join("git-checkout"))?;
        samples.push(Sample { committed, timeline, git_checkout });
    }
    let others = noise.others()?;
    let (status, took) = server.stop()?;
    eprintln!("overhead: server stopped in {took:.0?} ({status})");
    Ok((samples, others))
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

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::max)
}

fn ms(value: f64) -> String {
    format!("{value:.0} ms")
}

fn secs(value: f64) -> String {
    format!("{:.1} s", value / 1000.0)
}

fn report_overhead(args: &ServerArgs, samples: &[Sample]) {
    let poll = args.poll_interval.as_secs_f64() * 1000.0;
    let target = TARGET.as_secs_f64() * 1000.0;
    let column = |f: &dyn Fn(&Sample) -> Option<Ms>| -> Vec<f64> {
        samples.iter().filter_map(|s| f(s).map(|v| v as f64)).collect()
    };
    let overhead = column(&|s| Some(s.timeline.first_terraform() - s.timeline.created));
    let end_to_end = column(&|s| Some(s.timeline.first_terraform() - s.committed));
    let files = samples.first().and_then(|s| s.timeline.files).map_or("?".to_owned(), |n| n.to_string());
    println!(
        "\nServer overhead: {} commits to one stack ({files} files checked out) in a repo with {} other files, \
         poll interval {}, median and max\n",
        samples.len(),
        args.other_files,
        ms(poll)
    );
    println!("| from → to | median | max | baseline | ratio (median) |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| commit seen (`created_at`: fetched) → `$ terraform init` | {} | {} | {} (target) | {:.2}x |",
        ms(median(&overhead)),
        ms(max(&overhead)),
        ms(target),
        median(&overhead) / target
    );
    println!(
        "| `git commit` returned → `$ terraform init` | {} | {} | {} (poll interval) | {:.2}x |",
        ms(median(&end_to_end)),
        ms(max(&end_to_end)),
        ms(poll),
        median(&end_to_end) / poll
    );
    let parts: [(&str, Vec<f64>); 5] = [
        ("`git commit` returned → commit seen (poll wait, fetch)", column(&|s| Some(s.timeline.created - s.committed))),
        (
            "commit seen → run started (change detection, recording, scheduler)",
            column(&|s| Some(s.timeline.started - s.timeline.created)),
        ),
        (
            "run started → checkout begins (log opened)",
            column(&|s| s.timeline.checking_out.map(|c| c - s.timeline.started)),
        ),
        (
            "checkout (tree exported from git objects)",
            column(&|s| Some(s.timeline.checked_out? - s.timeline.checking_out?)),
        ),
        (
            "checked out → `$ terraform init` (backend override)",
            column(&|s| s.timeline.checked_out.map(|c| s.timeline.first_terraform() - c)),
        ),
    ];
    for (name, values) in parts {
        println!("| of which: {name} | {} | {} | | |", ms(median(&values)), ms(max(&values)));
    }
    let plinth_checkout = column(&|s| Some(s.timeline.checked_out? - s.timeline.checking_out?));
    let git = column(&|s| Some(s.git_checkout));
    println!(
        "| (baseline for the checkout) `git checkout-index -a` of the same tree | {} | {} | | {:.2}x |",
        ms(median(&git)),
        ms(max(&git)),
        median(&plinth_checkout) / median(&git).max(1.0)
    );
    let whole = column(&|s| Some(s.timeline.finished - s.timeline.first_terraform()));
    println!(
        "| (for scale) `$ terraform init` → run finished (init, plan, show, apply) | {} | {} | | |",
        ms(median(&whole)),
        ms(max(&whole))
    );
}

/// What the many-stack run measured.
#[derive(Debug)]
struct Scale {
    start_up: Duration,
    committed: Ms,
    timelines: Vec<Timeline>,
    /// The share of the machine's CPU other processes used during the measured run.
    others: f64,
    /// KiB.
    empty_rss: u64,
    idle_start: Idle,
    /// After each round: the first is the measured run.
    idle_after: Vec<Idle>,
    peak_rss: u64,
    /// Bytes: the database file with its write-ahead log after the first round, and after the
    /// last with the server stopped; and the file alone once the log is checkpointed into it
    /// (with the `sqlite3` CLI, when it is installed).
    db_live: u64,
    db_stopped: u64,
    db_checkpointed: Option<u64>,
    /// Runs in the database at the end.
    total_runs: usize,
    log_lines: usize,
}

fn sleeping_stack(name: &str, sleep: Duration) -> String {
    format!(
        "resource \"terraform_data\" \"work\" {{\n  input = \"{name}\"\n\n  provisioner \"local-exec\" {{\n    command = \"sleep {}\"\n  }}\n}}\n",
        sleep.as_secs_f64()
    )
}

/// Moves the write-ahead log into the database file, if the `sqlite3` CLI is there to do it.
fn checkpoint(db: &Path) -> bool {
    std::process::Command::new("sqlite3")
        .arg(db)
        .arg("PRAGMA wal_checkpoint(TRUNCATE);")
        .stdin(std::process::Stdio::null())
        .output()
        .is_ok_and(|out| out.status.success())
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn throughput(args: &ServerArgs, plinth: &Path, dir: &Path) -> Result<Scale> {
    fresh_dir(dir)?;
    let empty_rss = harness::empty_process_rss()?;
    let repo = GitRepo::init(dir.join("repo"))?;
    let data = dir.join("data");
    let mut server = ServerProcess::start(&ServerOptions {
        plinth,
        repo: &repo.path,
        data_dir: &data,
        log: &dir.join("server.log"),
        poll_interval: args.poll_interval,
        concurrency: args.concurrency,
        proxy_listen: None,
    })?;
    let pid = server.pid()?;
    let idle_start = harness::idle(pid)?;
    eprintln!(
        "throughput: server up in {:.0?}, {} KiB resident; committing {} stacks",
        server.start_up, idle_start.rss_kib, args.stacks
    );
    repo.write(
        "plinth.toml",
        &format!("{ENVIRONMENT}\n[stacks.svc]\npath = \"stacks/{{name}}\"\nenvironment = \"stg\"\n"),
    )?;
    for i in 0..args.stacks {
        let name = format!("s{i:03}");
        repo.write(&format!("stacks/{name}/main.tf"), &sleeping_stack(&name, args.sleep))?;
    }
    let noise = harness::Noise::start(pid)?;
    let (commit, committed) = repo.commit("add the stacks")?;
    let runs = harness::settle(&mut server, &commit, args.stacks, Duration::from_millis(500), args.timeout)?;
    if runs.len() != args.stacks {
        bail!("expected {} runs for the commit, the server made {}", args.stacks, runs.len());
    }
    let others = noise.others()?;
    let mut idle_after = vec![harness::idle(pid)?];
    let peak_rss = harness::proc_kib(pid, "VmHWM")?;
    let db = data.join("plinth.db");
    let wal = data.join("plinth.db-wal");
    let db_live = file_size(&db) + file_size(&wal);
    let all = timelines(&server, &runs)?;
    let log_lines = all.iter().map(|t| t.lines).sum();
    for round in 2..=args.rounds {
        eprintln!(
            "throughput: round {round}/{}: changing every stack again ({} KiB resident)",
            args.rounds,
            idle_after.last().map_or(0, |i| i.rss_kib)
        );
        for i in 0..args.stacks {
            let name = format!("s{i:03}");
            repo.write(&format!("stacks/{name}/main.tf"), &sleeping_stack(&format!("{name}-{round}"), args.sleep))?;
        }
        let (commit, _) = repo.commit(&format!("change every stack, round {round}"))?;
        let runs = harness::settle(&mut server, &commit, args.stacks, Duration::from_millis(500), args.timeout)?;
        if let Some(run) = runs.iter().find(|r| r.status != "applied") {
            bail!(
                "round {round}: run #{} ({}) is {}: {}",
                run.id,
                run.stack,
                run.status,
                run.reason.as_deref().unwrap_or("")
            );
        }
        idle_after.push(harness::idle(pid)?);
    }
    let (status, took) = server.stop()?;
    eprintln!("throughput: server stopped in {took:.0?} ({status})");
    let db_stopped = file_size(&db) + file_size(&wal);
    let db_checkpointed = checkpoint(&db).then(|| file_size(&db));
    Ok(Scale {
        start_up: server.start_up,
        committed,
        timelines: all,
        others,
        empty_rss,
        idle_start,
        idle_after,
        peak_rss,
        db_live,
        db_stopped,
        db_checkpointed,
        total_runs: args.stacks * args.rounds,
        log_lines,
    })
}

/// The most intervals that overlap at any moment.
fn max_overlap(intervals: impl Iterator<Item = (Ms, Ms)>) -> usize {
    let mut points: Vec<(Ms, i32)> = Vec::new();
    for (start, end) in intervals {
        points.push((start, 1));
        points.push((end, -1));
    }
    // Ends before starts at the same millisecond: a slot handed over is not two at once.
    points.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, delta) in points {
        now += delta;
        most = most.max(now);
    }
    usize::try_from(most).unwrap_or(0)
}

fn report_throughput(args: &ServerArgs, scale: &Scale) {
    let runs = &scale.timelines;
    let n = runs.len() as f64;
    let slots = f64::from(args.concurrency);
    let sum_terraform: f64 = runs.iter().map(|t| t.terraform_time() as f64).sum();
    let ideal = sum_terraform / slots;
    let window_start = runs.iter().map(Timeline::first_terraform).min().unwrap_or(0);
    let window_end = runs.iter().map(|t| t.finished).max().unwrap_or(0);
    let measured = (window_end - window_start) as f64;
    let first_created = runs.iter().map(|t| t.created).min().unwrap_or(0);
    println!(
        "\nThroughput: {} stacks in one commit, --concurrency {}, each sleeping {} in local-exec\n",
        runs.len(),
        args.concurrency,
        humantime::format_duration(args.sleep)
    );
    println!(
        "| stacks | concurrency | Σ terraform time | ideal wall (Σ / {}) | measured wall | ratio |",
        args.concurrency
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {} | {} | {:.3}x |",
        runs.len(),
        args.concurrency,
        secs(sum_terraform),
        secs(ideal),
        secs(measured),
        measured / ideal
    );

    // measured × slots = Σ terraform time + slot time before terraform + idle slot time.
    let before: f64 = runs.iter().map(|t| (t.first_terraform() - t.started.max(window_start)).max(0) as f64).sum();
    let idle = measured * slots - sum_terraform - before;
    let processes: f64 = runs.iter().map(|t| t.process_time() as f64).sum();
    println!("\nWhere the slot time went (measured wall × {} slots = {}):\n", args.concurrency, secs(measured * slots));
    println!("| part | slot time | per run | share |");
    println!("|---|---:|---:|---:|");
    let total = measured * slots;
    let row = |name: &str, v: f64| {
        println!("| {name} | {} | {} | {:.1}% |", secs(v), ms(v / n), 100.0 * v / total);
    };
    row("terraform processes (`$ terraform` line to its last output line)", processes);
    row("plinth between and after terraform commands (inside Σ terraform time)", sum_terraform - processes);
    row("run started → first `$ terraform` (log, checkout, backend override)", before);
    row("no run in the slot (scheduling gaps, the tail)", idle);

    println!("\nPer run, mean (median) of each step:\n");
    println!("| step | mean | median | max |");
    println!("|---|---:|---:|---:|");
    let step_row = |name: &str, values: Vec<f64>| {
        let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
        println!("| {name} | {} | {} | {} |", ms(mean), ms(median(&values)), ms(max(&values)));
    };
    step_row(
        "commit seen → run started (waiting for a slot)",
        runs.iter().map(|t| (t.started - t.created) as f64).collect(),
    );
    step_row(
        "run started → checkout begins",
        runs.iter().filter_map(|t| t.checking_out.map(|c| (c - t.started) as f64)).collect(),
    );
    let files = runs.first().and_then(|t| t.files).map_or("?".to_owned(), |n| n.to_string());
    step_row(
        &format!("checkout ({files} files)"),
        runs.iter().filter_map(|t| Some((t.checked_out? - t.checking_out?) as f64)).collect(),
    );
    step_row(
        "checked out → `$ terraform init`",
        runs.iter().filter_map(|t| t.checked_out.map(|c| (t.first_terraform() - c) as f64)).collect(),
    );
    let commands: Vec<String> =
        runs.first().map(|t| t.steps.iter().map(|s| s.command.clone()).collect()).unwrap_or_default();
    for (i, command) in commands.iter().enumerate() {
        let same = |t: &&Timeline| t.steps.get(i).is_some_and(|s| &s.command == command);
        step_row(
            &format!("terraform {command}"),
            runs.iter().filter(same).map(|t| (t.steps[i].last - t.steps[i].start) as f64).collect(),
        );
        let next = commands.get(i + 1).map_or("run finished".to_owned(), |c| format!("`$ terraform {c}`"));
        step_row(
            &format!("end of {command} output → {next}"),
            runs.iter()
                .filter(same)
                .map(|t| (t.steps.get(i + 1).map_or(t.finished, |s| s.start) - t.steps[i].last) as f64)
                .collect(),
        );
    }
    let in_flight = max_overlap(runs.iter().map(|t| (t.started, t.finished)));
    println!("\nOther processes used {:.0}% of the machine's CPU during the run.", 100.0 * scale.others);
    println!(
        "\nMost runs in flight at once (started → finished): {in_flight}. Server start-up to /healthz: {:.0?}. \
         `git commit` → first run seen: {} ms; → first `$ terraform`: {} ms; → last run finished: {}.",
        scale.start_up,
        first_created - scale.committed,
        window_start - scale.committed,
        secs((window_end - scale.committed) as f64),
    );
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn report_memory(args: &ServerArgs, scale: &Scale) {
    let base = scale.empty_rss as f64;
    println!("\nMemory: resident set (VmRSS), median of 11 readings over 3 s\n");
    println!("| process | RSS | ratio to `sleep 60` |");
    println!("|---|---:|---:|");
    println!("| `sleep 60` (an empty process) | {} | 1.00x |", mib(scale.empty_rss));
    println!(
        "| plinth server, idle after start-up and the first poll | {} | {:.1}x |",
        mib(scale.idle_start.rss_kib),
        scale.idle_start.rss_kib as f64 / base
    );
    for (round, idle) in scale.idle_after.iter().enumerate() {
        let what = if round == 0 {
            format!("idle after the {}-stack run", scale.timelines.len())
        } else {
            format!("idle after changing every stack again ({})", round + 1)
        };
        println!("| plinth server, {what} | {} | {:.1}x |", mib(idle.rss_kib), idle.rss_kib as f64 / base);
    }
    println!(
        "| plinth server, peak during the first run (VmHWM, --concurrency {}) | {} | {:.1}x |",
        args.concurrency,
        mib(scale.peak_rss),
        scale.peak_rss as f64 / base
    );
    let kib = |bytes: u64| format!("{:.0} KiB", bytes as f64 / 1024.0);
    println!(
        "\nIdle CPU over the same 3 s (the server and the git processes it waits for): {:.1}% of a core \
         after start-up, {:.1}% after the run.",
        100.0 * scale.idle_start.cpu,
        100.0 * scale.idle_after.first().map_or(0.0, |i| i.cpu)
    );
    let runs = scale.total_runs.max(1) as u64;
    let checkpointed = match scale.db_checkpointed {
        Some(bytes) => format!("{} once checkpointed ({} per run)", kib(bytes), kib(bytes / runs)),
        None => "(no `sqlite3` CLI to checkpoint it)".to_owned(),
    };
    println!(
        "\nDatabase: {} with its WAL after the {}-stack run ({} log lines); after all {} runs, {} with its \
         WAL with the server stopped, {checkpointed}.",
        kib(scale.db_live),
        scale.timelines.len(),
        scale.log_lines,
        scale.total_runs,
        kib(scale.db_stopped),
    );
}
