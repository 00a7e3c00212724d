//! What the server benchmark drives: a git repo made with the git CLI, the real `plinth server`
//! as a child process that is always stopped (SIGTERM, then SIGKILL) when it goes out of scope,
//! a blocking HTTP client for its API, and memory readings from `/proc`.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Milliseconds since the Unix epoch: the resolution of the server's timestamps.
pub type Ms = i64;

pub fn now_ms() -> Ms {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as Ms)
}

/// Parses the server's RFC 3339 timestamps (`2026-11-23T10:00:00.123Z`).
pub fn parse_ms(text: &str) -> Result<Ms> {
    let time = humantime::parse_rfc3339_weak(text).with_context(|| format!("`{text}` is not an RFC 3339 time"))?;
    Ok(time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as Ms))
}

/// A git working repository in a temp dir, isolated from the user's and the system's git
/// config.
#[derive(Debug)]
pub struct GitRepo {
    pub path: PathBuf,
}

impl GitRepo {
    /// A repository on branch `main` with one commit holding a README.
    pub fn init(path: PathBuf) -> Result<GitRepo> {
        std::fs::create_dir_all(&path)?;
        let repo = GitRepo { path };
        repo.git(&["init", "-q", "-b", "main"])?;
        repo.git(&["config", "user.name", "plinth bench"])?;
        repo.git(&["config", "user.email", "bench@plinth.invalid"])?;
        repo.git(&["config", "commit.gpgsign", "false"])?;
        // No gc in the background while the benchmark runs; it packs when it chooses to.
        repo.git(&["config", "gc.auto", "0"])?;
        repo.git(&["config", "maintenance.auto", "false"])?;
        repo.write("README.md", "# infra\n")?;
        repo.commit("start")?;
        Ok(repo)
    }

    pub fn git(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("git")
            .current_dir(&self.path)
            .args(args)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .stdin(Stdio::null())
            .output()
            .context("running git")?;
        if !out.status.success() {
            bail!("git {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    pub fn write(&self, path: &str, contents: &str) -> Result<()> {
        let file = self.path.join(path);
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&file, contents).with_context(|| format!("writing {}", file.display()))
    }

    /// Commits everything; returns the commit id and the time `git commit` returned.
    pub fn commit(&self, message: &str) -> Result<(String, Ms)> {
        self.git(&["add", "-A"])?;
        self.git(&["commit", "-q", "-m", message])?;
        let returned = now_ms();
        Ok((self.git(&["rev-parse", "HEAD"])?, returned))
    }
}

/// The `plinth server` child process. Dropping it stops the server, so that no path out of the
/// benchmark leaves one running.
#[derive(Debug)]
pub struct ServerProcess {
    child: Option<Child>,
    pub api: Api,
    /// From spawning the process to `/healthz` answering: opening the store, cloning the
    /// mirror, the first poll.
    pub start_up: Duration,
    log: PathBuf,
}

/// How long a stopping server may take before it is killed. The server is started with a
/// short shutdown grace, so this only runs out if it hangs.
const STOP_DEADLINE: Duration = Duration::from_secs(60);

/// What the server is started with.
#[derive(Debug)]
pub struct ServerOptions<'a> {
    pub plinth: &'a Path,
    pub repo: &'a Path,
    pub data_dir: &'a Path,
    /// Where its stdout and stderr go.
    pub log: &'a Path,
    pub poll_interval: Duration,
    pub concurrency: u16,
    /// The proxy's address (`--proxy-listen`), for the benchmarks that deploy services.
    pub proxy_listen: Option<SocketAddr>,
}

impl ServerProcess {
    /// Starts the server and waits for `/healthz` to answer.
    pub fn start(options: &ServerOptions<'_>) -> Result<ServerProcess> {
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let out = File::create(options.log).with_context(|| format!("creating {}", options.log.display()))?;
        let err = out.try_clone()?;
        let started = Instant::now();
        let child = Command::new(options.plinth)
            .arg("server")
            .arg("--repo")
            .arg(options.repo)
            .arg("--data-dir")
            .arg(options.data_dir)
            .args(["--listen", &listen])
            .args(["--poll-interval", &format!("{}ms", options.poll_interval.as_millis())])
            .args(["--concurrency", &options.concurrency.to_string()])
            .args(["--shutdown-grace", "5s"])
            .args(options.proxy_listen.iter().flat_map(|addr| ["--proxy-listen".to_owned(), addr.to_string()]))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {} (build it first)", options.plinth.display()))?;
        let mut server = ServerProcess {
            child: Some(child),
            api: Api::new(format!("http://{listen}"), String::new())?,
            start_up: Duration::ZERO,
            log: options.log.to_path_buf(),
        };
        let deadline = started + Duration::from_secs(120);
        loop {
            server.check_alive()?;
            if server.api.healthy() {
                break;
            }
            if Instant::now() > deadline {
                bail!("the server did not answer /healthz within 120 s; its output: {}", server.log.display());
            }
            sleep(Duration::from_millis(10));
        }
        server.start_up = started.elapsed();
        let token_file = options.data_dir.join("admin.token");
        let token =
            std::fs::read_to_string(&token_file).with_context(|| format!("reading {}", token_file.display()))?;
        server.api.token = token.trim().to_owned();
        Ok(server)
    }

    pub fn pid(&self) -> Result<u32> {
        self.child.as_ref().map(Child::id).context("the server was stopped")
    }

    /// Fails if the server has exited, pointing at its output.
    pub fn check_alive(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else { bail!("the server was stopped") };
        if let Some(status) = child.try_wait()? {
            self.child = None;
            bail!("the server exited ({status}); its output: {}\n{}", self.log.display(), tail(&self.log, 20));
        }
        Ok(())
    }

    /// SIGTERM, then waits for it to exit; SIGKILL if it does not within [`STOP_DEADLINE`].
    /// Returns how long it took to stop.
    pub fn stop(&mut self) -> Result<(ExitStatus, Duration)> {
        let mut child = self.child.take().context("the server was already stopped")?;
        let asked = Instant::now();
        if child.try_wait()?.is_none() {
            let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
            let _ = kill(pid, Signal::SIGTERM);
        }
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok((status, asked.elapsed())),
                Ok(None) => {}
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(e).context("waiting for the server to stop; it was killed");
                }
            }
            if asked.elapsed() > STOP_DEADLINE {
                let _ = child.kill();
                let status = child.wait()?;
                bail!("the server did not stop within {STOP_DEADLINE:?} of SIGTERM and was killed ({status})");
            }
            sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.child.is_some()
            && let Err(e) = self.stop()
        {
            eprintln!("plinth-bench: stopping the server: {e:#}");
        }
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The last lines of a file, for error messages.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The server's API, as an admin.
#[derive(Debug)]
pub struct Api {
    http: reqwest::blocking::Client,
    url: String,
    token: String,
}

/// A run as `GET /api/v1/runs` shows it: only what the benchmark reads.
#[derive(Clone, Debug, Deserialize)]
pub struct RunView {
    pub id: i64,
    pub stack: String,
    pub commit: String,
    pub status: String,
    pub mode: String,
    pub reason: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

impl RunView {
    /// Whether the run will not move again (or waits for a person, which this benchmark never
    /// asks for).
    pub fn settled(&self) -> bool {
        match self.status.as_str() {
            "queued" | "planning" | "applying" => false,
            "planned" => self.mode == "plan",
            _ => true,
        }
    }
}

#[derive(Debug, Deserialize)]
struct RunList {
    runs: Vec<RunView>,
}

/// One line of a run's log (`?format=jsonl`).
#[derive(Clone, Debug, Deserialize)]
pub struct LogLine {
    pub stream: String,
    pub text: String,
    pub at: String,
}

impl Api {
    fn new(url: String, token: String) -> Result<Api> {
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build()?;
        Ok(Api { http, url, token })
    }

    /// The server's base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn healthy(&self) -> bool {
        self.http
            .get(format!("{}/healthz", self.url))
            .timeout(Duration::from_secs(2))
            .send()
            .is_ok_and(|r| r.status().is_success())
    }

    fn get(&self, path: &str) -> Result<String> {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .with_context(|| format!("GET {path}"))?;
        let status = response.status();
        let text = response.text()?;
        if !status.is_success() {
            bail!("GET {path}: {status}: {text}");
        }
        Ok(text)
    }

    pub fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let text = self.get(path)?;
        serde_json::from_str(&text).with_context(|| format!("GET {path}: unexpected JSON: {text}"))
    }

    /// POSTs JSON as the admin.
    pub fn post_json<T: DeserializeOwned>(&self, path: &str, body: &serde_json::Value) -> Result<T> {
        self.post_json_as(&self.token, path, body)
    }

    /// POSTs JSON with another token (a `ci` token publishing a release).
    pub fn post_json_as<T: DeserializeOwned>(&self, token: &str, path: &str, body: &serde_json::Value) -> Result<T> {
        let response = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(token)
            .json(body)
            .send()
            .with_context(|| format!("POST {path}"))?;
        let status = response.status();
        let text = response.text()?;
        if !status.is_success() {
            bail!("POST {path}: {status}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("POST {path}: unexpected JSON: {text}"))
    }

    /// The runs of one commit.
    pub fn runs_of(&self, commit: &str) -> Result<Vec<RunView>> {
        let list: RunList = self.get_json("/api/v1/runs?limit=1000")?;
        Ok(list.runs.into_iter().filter(|r| r.commit == commit).collect())
    }

    pub fn logs(&self, run: i64) -> Result<Vec<LogLine>> {
        let text = self.get(&format!("/api/v1/runs/{run}/logs?format=jsonl"))?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("run #{run}: a log line that is not JSON: {l}")))
            .collect()
    }
}

/// Waits until `count` runs of `commit` exist and have all settled, checking every `every`.
pub fn settle(
    server: &mut ServerProcess,
    commit: &str,
    count: usize,
    every: Duration,
    timeout: Duration,
) -> Result<Vec<RunView>> {
    let deadline = Instant::now() + timeout;
    loop {
        server.check_alive()?;
        let runs = server.api.runs_of(commit)?;
        if runs.len() >= count && runs.iter().all(RunView::settled) {
            return Ok(runs);
        }
        if Instant::now() > deadline {
            let waiting = runs.iter().filter(|r| !r.settled()).count();
            bail!(
                "timed out after {timeout:?}: commit {commit} has {} of {count} runs, {waiting} not finished",
                runs.len()
            );
        }
        sleep(every);
    }
}

/// One field of `/proc/PID/status`, in KiB (`VmRSS`, `VmHWM`).
pub fn proc_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|rest| rest.strip_prefix(':')))
        .with_context(|| format!("no {field} in {path}"))?;
    let kib = line.trim().trim_end_matches("kB").trim();
    kib.parse().with_context(|| format!("{field} in {path} is `{kib}`"))
}

/// The server at rest: its resident memory and the CPU it and its children (git) use.
#[derive(Clone, Copy, Debug)]
pub struct Idle {
    /// The median of the `VmRSS` readings, in KiB.
    pub rss_kib: u64,
    /// CPU time over wall time, of one core.
    pub cpu: f64,
}

/// The process's CPU time and that of its children it has waited for, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // After `PID (comm) `: state is field 3, utime..cstime are fields 14 to 17.
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields.get(11..15).context("short stat")?.iter().map(|f| f.parse::<u64>().context("stat field")).sum()
}

/// CPU ticks the whole machine spent busy (all but idle and iowait), from /proc/stat.
fn machine_busy_ticks() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let ticks: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().unwrap_or(0)).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy = [0, 1, 2, 5, 6, 7].iter().map(|&i| ticks.get(i).copied().unwrap_or(0)).sum();
    Ok(busy)
}

/// How busy the rest of the machine was while the benchmark measured: every process but the
/// server, what it started, and this benchmark. The figures are only as good as this is small.
#[derive(Debug)]
pub struct Noise {
    /// The server, if the benchmark runs one; `None` counts this process (and the children
    /// it has reaped) only.
    server: Option<u32>,
    start: Instant,
    machine: u64,
    ours: u64,
}

impl Noise {
    pub fn start(server: u32) -> Result<Noise> {
        Noise::begin(Some(server))
    }

    /// Counts this process and the children it waits for (the proxy benchmark's backend,
    /// nginx and wrk) as ours: read [`Noise::others`] after they have been reaped.
    pub fn start_ours() -> Result<Noise> {
        Noise::begin(None)
    }

    fn begin(server: Option<u32>) -> Result<Noise> {
        Ok(Noise { server, start: Instant::now(), machine: machine_busy_ticks()?, ours: Noise::ours_now(server)? })
    }

    /// Our CPU ticks: the server's (with its reaped children) and this process's (with its
    /// reaped children). A server this process has stopped and reaped is gone from /proc;
    /// its time is then in this process's children's time.
    fn ours_now(server: Option<u32>) -> Result<u64> {
        let server = match server {
            Some(pid) => cpu_ticks(pid).unwrap_or(0),
            None => 0,
        };
        Ok(server + cpu_ticks(std::process::id())?)
    }

    /// The share of the machine's CPU (all cores) that other processes used since [`Noise::start`].
    /// Read it after the server's children have ended, so that their time is counted as ours.
    pub fn others(&self) -> Result<f64> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let machine = machine_busy_ticks()?.saturating_sub(self.machine) as f64;
        let ours = Noise::ours_now(self.server)?.saturating_sub(self.ours) as f64;
        let wall = self.start.elapsed().as_secs_f64() * TICKS_PER_SECOND * cores;
        Ok(((machine - ours) / wall).max(0.0))
    }
}

/// /proc counts CPU time in USER_HZ ticks, which is 100 on every Linux architecture.
const TICKS_PER_SECOND: f64 = 100.0;

/// Eleven `VmRSS` readings 300 ms apart, and the CPU used over those 3 s.
pub fn idle(pid: u32) -> Result<Idle> {
    let (start, ticks) = (Instant::now(), cpu_ticks(pid)?);
    let mut readings = Vec::new();
    for i in 0..11 {
        if i > 0 {
            sleep(Duration::from_millis(300));
        }
        readings.push(proc_kib(pid, "VmRSS")?);
    }
    let cpu = (cpu_ticks(pid)? - ticks) as f64 / TICKS_PER_SECOND / start.elapsed().as_secs_f64();
    readings.sort_unstable();
    Ok(Idle { rss_kib: readings[readings.len() / 2], cpu })
}

/// A child that is killed and reaped when dropped.
#[derive(Debug)]
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The resident memory of an empty process: `sleep 60`, read once it is asleep.
pub fn empty_process_rss() -> Result<u64> {
    let child = Reaped(
        Command::new("sleep").arg("60").stdin(Stdio::null()).stdout(Stdio::null()).spawn().context("starting sleep")?,
    );
    let pid = child.0.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // `PID (comm) STATE ...`: asleep in `nanosleep` once `sleep` has started.
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().chars().next());
        if stat.contains("(sleep)") && state == Some(Some('S')) {
            break;
        }
        if Instant::now() > deadline {
            bail!("`sleep 60` did not reach its sleep within 10 s");
        }
        sleep(Duration::from_millis(5));
    }
    proc_kib(pid, "VmRSS")
}
