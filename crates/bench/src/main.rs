//! `plinth-bench`: benchmarks that generate their own inputs and always report a ratio against a
//! baseline measured in the same run, because the machines they run on are noisy.
//!
//! `plinth-bench changed` builds a synthetic infrastructure monorepo with `git fast-import`,
//! makes one commit that touches files spread over stacks and modules, and times
//! `plinth changed` (with a warm and a cold module cache) against `git diff --name-only` for
//! the same two commits.
//!
//! `plinth-bench server` runs the real `plinth server` over a generated repo and measures its
//! overhead before terraform starts, its throughput with many stacks, and its memory (see
//! `server/mod.rs`).
//!
//! `plinth-bench proxy` loads plinth's proxy, nginx and a direct connection to the same demo
//! app with `wrk` (see `proxy.rs`). `plinth-bench rollout` times rollouts of a service on the
//! real server against their lower bound (see `rollout.rs`).
//!
//! `plinth-bench catalog` times the catalog and environment endpoints over 10,000 environments
//! against `/healthz` and the store's own read (see `catalog.rs`); `plinth-bench review` times a
//! branch push to its review environment serving, against its terraform and health-check time
//! (see `review.rs`).

mod catalog;
mod child;
mod proxy;
mod review;
mod rollout;
mod server;
mod workdir;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use workdir::{WorkDir, plinth_binary};

#[derive(Debug, Parser)]
#[command(name = "plinth-bench")]
enum Bench {
    /// Time `plinth changed` on a synthetic monorepo against `git diff --name-only`.
    Changed(ChangedArgs),
    /// Measure the plinth server: overhead before terraform starts, throughput at scale, and
    /// idle memory.
    Server(server::ServerArgs),
    /// Throughput and latency through plinth's proxy, against a direct connection and nginx.
    Proxy(proxy::ProxyArgs),
    /// Rollout duration on the real server, against start + health checks + the longest
    /// request in flight.
    Rollout(rollout::RolloutArgs),
    /// Catalog list and filter latency at 10,000 environments, against `/healthz` and the
    /// store's own read of the same rows.
    Catalog(catalog::CatalogArgs),
    /// From a branch push to its review environment serving, against its terraform time +
    /// health checks + the poll interval; and the teardown when the branch goes.
    Review(review::ReviewArgs),
}

#[derive(Debug, clap::Args)]
struct ChangedArgs {
    /// The plinth binary to time (build it with `cargo build --release` first).
    #[arg(long, default_value = "target/release/plinth")]
    plinth: PathBuf,
    /// Stack counts to measure; each gets its own repo. The first is the headline figure.
    #[arg(long, value_delimiter = ',', default_value = "5000,1250,20000")]
    stacks: Vec<usize>,
    /// Files per stack directory, so that 5,000 stacks make about 100,000 files with the
    /// modules and docs.
    #[arg(long, default_value_t = 19)]
    files_per_stack: usize,
    /// Files the measured commit touches, spread over stacks and modules.
    #[arg(long, default_value_t = 50)]
    touched: usize,
    /// Timed runs per command (after warm-up); the median is reported.
    #[arg(long, default_value_t = 31)]
    runs: usize,
    /// Keep the generated repos under this directory instead of a temp dir.
    #[arg(long)]
    keep: Option<PathBuf>,
}

/// Module families: each is a chain of local modules nested `DEPTH` deep, used by
/// `USERS_PER_FAMILY` stacks. The other stacks use no shared module, so that the number of
/// stacks a commit reaches stays the same however many stacks there are.
const FAMILIES: usize = 100;
const DEPTH: usize = 10;
const USERS_PER_FAMILY: usize = 5;
const TEAMS: usize = 50;

fn main() -> Result<()> {
    match Bench::parse() {
        Bench::Changed(args) => changed(args),
        Bench::Server(args) => server::run(args),
        Bench::Proxy(args) => proxy::run(args),
        Bench::Rollout(args) => rollout::run(args),
        Bench::Catalog(args) => catalog::run(args),
        Bench::Review(args) => review::run(args),
    }
}

/// The generated repo's layout, so that the touched files can be chosen from it.
struct Layout {
    stack_dirs: Vec<String>,
    module_dirs: Vec<String>,
    files: usize,
}

fn stack_dir(i: usize) -> String {
    format!("stacks/team-{:02}/svc-{:05}", i % TEAMS, i)
}

fn module_dir(family: usize, level: usize) -> String {
    let mut dir = format!("modules/family-{family:03}");
    for l in 1..=level {
        dir.push_str(&format!("/n{l}"));
    }
    dir
}

/// Writes a fast-import stream for the first commit.
fn generate(stacks: usize, files_per_stack: usize) -> (Vec<u8>, Layout) {
    let mut files: Vec<(String, String)> = Vec::new();
    files.push((
        "plinth.toml".into(),
        "main_branch = \"main\"\n\n[environments.prd]\nbranches = [\"main\"]\n\n\
         [stacks.svc]\npath = \"stacks/{team}/{name}\"\nenvironment = \"prd\"\nwatch = [\"shared/*.json\"]\n\n\
         [stacks.base]\npath = \"base\"\n"
            .into(),
    ));
    files.push(("base/main.tf".into(), "resource \"terraform_data\" \"base\" {}\n".into()));
    files.push(("shared/tags.json".into(), "{}\n".into()));
    let mut module_dirs = Vec::new();
    for family in 0..FAMILIES {
        for level in 0..DEPTH {
            let dir = module_dir(family, level);
            let next = if level + 1 < DEPTH {
                format!("module \"next\" {{\n  source = \"./n{}\"\n}}\n", level + 1)
            } else {
                String::new()
            };
            files.push((format!("{dir}/main.tf"), format!("variable \"name\" {{}}\n{next}")));
            files.push((format!("{dir}/outputs.tf"), "output \"id\" {\n  value = 1\n}\n".into()));
            files.push((format!("{dir}/README.md"), format!("# {dir}\n")));
            module_dirs.push(dir);
        }
    }
    let mut stack_dirs = Vec::new();
    for i in 0..stacks {
        let dir = stack_dir(i);
        let main = if i < FAMILIES * USERS_PER_FAMILY {
            let family = i / USERS_PER_FAMILY;
            format!(
                "module \"lib\" {{\n  source = \"../../../modules/family-{family:03}\"\n  name   = \"svc-{i}\"\n}}\n"
            )
        } else {
            format!("resource \"terraform_data\" \"svc\" {{\n  input = \"svc-{i}\"\n}}\n")
        };
        files.push((format!("{dir}/main.tf"), main));
        files
            .push((format!("{dir}/variables.tf"), "variable \"region\" {\n  default = \"ap-northeast-1\"\n}\n".into()));
        for f in 2..files_per_stack {
            let name = match f % 4 {
                0 => format!("{dir}/config/{f}.json"),
                1 => format!("{dir}/src/handler_{f}.py"),
                2 => format!("{dir}/docs/{f}.md"),
                _ => format!("{dir}/assets/{f}.txt"),
            };
            files.push((name, format!("{i}:{f}\n")));
        }
        stack_dirs.push(dir);
    }
    // Docs outside any stack, to bring 5,000 stacks to 100,000 files.
    for d in 0..2000 {
        files.push((format!("docs/page-{d:04}.md"), format!("page {d}\n")));
    }
    let count = files.len();
    (fast_import_commit(&files, None, "generated monorepo"), Layout { stack_dirs, module_dirs, files: count })
}

fn fast_import_commit(files: &[(String, String)], parent: Option<&str>, message: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = write!(
        out,
        "commit refs/heads/main\ncommitter bench <bench@plinth.invalid> 1767225600 +0000\ndata {}\n{message}\n",
        message.len() + 1
    );
    if let Some(parent) = parent {
        let _ = writeln!(out, "from {parent}");
    }
    for (path, contents) in files {
        let _ = write!(out, "M 100644 inline \"{path}\"\ndata {}\n{contents}\n", contents.len());
    }
    out
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git").current_dir(dir).args(args).output().context("running git")?;
    if !out.status.success() {
        bail!("git {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn fast_import(dir: &Path, stream: &[u8]) -> Result<()> {
    let mut child = Command::new("git")
        .current_dir(dir)
        .args(["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .spawn()
        .context("starting git fast-import")?;
    child.stdin.take().context("stdin")?.write_all(stream)?;
    if !child.wait()?.success() {
        bail!("git fast-import failed");
    }
    Ok(())
}

/// The touched files: spread evenly over stacks, with every fifth one in a module at some depth.
fn touched_files(layout: &Layout, count: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|k| {
            if k % 5 == 4 {
                let dir = &layout.module_dirs[(k * 37) % layout.module_dirs.len()];
                (format!("{dir}/main.tf"), format!("variable \"name\" {{}}\n# touched {k}\n"))
            } else {
                let dir = &layout.stack_dirs[(k * layout.stack_dirs.len()) / count];
                (format!("{dir}/config/4.json"), format!("{{\"touched\": {k}}}\n"))
            }
        })
        .collect()
}

/// Runs each command `runs` times after warm-up, taking turns so that a noisy moment hits them
/// alike, and returns each one's median wall time.
fn medians<const N: usize>(runs: usize, mut commands: [&mut dyn FnMut() -> Result<()>; N]) -> Result<[Duration; N]> {
    for _ in 0..3 {
        for f in commands.iter_mut() {
            f()?;
        }
    }
    let mut times: [Vec<Duration>; N] = std::array::from_fn(|_| Vec::with_capacity(runs));
    for _ in 0..runs {
        for (f, times) in commands.iter_mut().zip(times.iter_mut()) {
            let start = Instant::now();
            f()?;
            times.push(start.elapsed());
        }
    }
    Ok(times.map(|mut t| {
        t.sort();
        t[t.len() / 2]
    }))
}

fn run_quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output()?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

struct Figures {
    stacks: usize,
    files: usize,
    affected: usize,
    git: Duration,
    warm: Duration,
    new_head: Duration,
    cold: Duration,
}

fn measure(args: &ChangedArgs, root: &Path, stacks: usize) -> Result<Figures> {
    let dir = root.join(format!("monorepo-{stacks}"));
    std::fs::create_dir_all(&dir)?;
    git(&dir, &["init", "-q", "--bare", "-b", "main"])?;
    let (stream, layout) = generate(stacks, args.files_per_stack);
    fast_import(&dir, &stream)?;
    let base = git(&dir, &["rev-parse", "main"])?;
    let touched = touched_files(&layout, args.touched);
    fast_import(&dir, &fast_import_commit(&touched, Some(&base), "touch files"))?;
    let head = git(&dir, &["rev-parse", "main"])?;
    git(&dir, &["gc", "-q", "--aggressive"])?;
    let cache = dir.join("plinth-cache");

    let plinth = plinth_binary(&args.plinth)?;
    let plinth_cmd = |extra: &[&str]| {
        let mut cmd = Command::new(&plinth);
        cmd.args(["changed", "--repo"]).arg(&dir).args(["--base", &base, "--head", &head, "--output", "json"]);
        cmd.args(extra);
        cmd
    };
    let out = plinth_cmd(&["--cache-dir", cache.to_str().unwrap_or("cache")]).output()?;
    if !out.status.success() {
        bail!("plinth changed failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let affected = String::from_utf8_lossy(&out.stdout).matches("\"wave\"").count();
    let git_files = git(&dir, &["diff", "--name-only", &base, &head])?.lines().count();
    if git_files != args.touched {
        bail!("expected {} changed files, git shows {git_files}", args.touched);
    }

    // The usual CI case: the base commit was seen before, the head is new. Its cache entry (a
    // patch over the base's whole graph, or a whole graph) is removed before each run, so the
    // changed directories are re-read and laid over the base's graph.
    let head_tree = git(&dir, &["rev-parse", &format!("{head}^{{tree}}")])?;
    // Cache the base as a previous run on it would have.
    run_quiet(Command::new(&plinth).args(["changed", "--repo"]).arg(&dir).args([
        "--base",
        &base,
        "--head",
        &base,
        "--cache-dir",
        cache.to_str().unwrap_or("cache"),
    ]))?;
    let head_entries = ["bin", "patch"].map(|extension| cache.join(format!("{head_tree}.{extension}")));
    let cache_arg = cache.to_str().unwrap_or("cache");
    // Taking turns: git, then plinth with the head cached, then plinth with only the base
    // cached (which writes the head's entry back for the next turn).
    let [git_time, warm, new_head] = medians(
        args.runs,
        [
            &mut || run_quiet(Command::new("git").current_dir(&dir).args(["diff", "--name-only", &base, &head])),
            &mut || run_quiet(&mut plinth_cmd(&["--cache-dir", cache_arg])),
            &mut || {
                for entry in &head_entries {
                    let _ = std::fs::remove_file(entry);
                }
                run_quiet(&mut plinth_cmd(&["--cache-dir", cache_arg]))
            },
        ],
    )?;
    let [cold] = medians(args.runs.min(7), [&mut || run_quiet(&mut plinth_cmd(&["--no-cache"]))])?;
    Ok(Figures { stacks, files: layout.files, affected, git: git_time, warm, new_head, cold })
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn changed(args: ChangedArgs) -> Result<()> {
    let work = WorkDir::new(args.keep.as_deref(), "changed")?;
    let root = work.path().to_path_buf();
    println!("plinth changed vs git diff --name-only; {} files touched; median of {} runs\n", args.touched, args.runs);
    println!(
        "| stacks | files | affected | git diff | plinth, head cached | ratio | plinth, base cached | ratio | plinth, no cache | ratio |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &stacks in &args.stacks {
        let f = measure(&args, &root, stacks)?;
        let ratio = |d: Duration| d.as_secs_f64() / f.git.as_secs_f64();
        println!(
            "| {} | {} | {} | {} | {} | {:.2}x | {} | {:.2}x | {} | {:.2}x |",
            f.stacks,
            f.files,
            f.affected,
            ms(f.git),
            ms(f.warm),
            ratio(f.warm),
            ms(f.new_head),
            ratio(f.new_head),
            ms(f.cold),
            ratio(f.cold)
        );
    }
    Ok(())
}
