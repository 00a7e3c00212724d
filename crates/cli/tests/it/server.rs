//! A real `plinth server` started as a child process over a real git repo, and the client
//! commands (`runs`, `plan`, `stacks`, `tokens`, `audit`) run against it as a user runs them:
//! the seed-000 release flow with its approval, plans by hand, tokens and the audit log.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use plinth_testkit::{TestRepo, write_seed_000};
use serde_json::Value;

use crate::Run;

/// How long a run may take to reach a status. Terraform with built-in providers needs a few
/// seconds; the rest is room for a busy machine.
pub const LONG: Duration = Duration::from_secs(120);

/// How long the server gets to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// Waits for `check` to give a value, trying again every 50 ms until `timeout`; then panics
/// with `what` and whatever `context` says about the state of things.
#[track_caller]
pub fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
    context: impl FnOnce() -> String,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}\n{}", context());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `plinth` command with plinth's environment variables cleared, so that the developer's own
/// PLINTH_SERVER or PLINTH_TOKEN never leak into a test.
pub fn plinth_command(server: Option<&str>, token: Option<&str>, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_plinth"));
    command
        .args(args)
        .current_dir(std::env::temp_dir())
        .env_remove("PLINTH_SERVER")
        .env_remove("PLINTH_TOKEN")
        .env_remove("PLINTH_LOG")
        .env_remove("PLINTH_LOG_FORMAT")
        .env_remove("PLINTH_CACHE_DIR")
        .stdin(Stdio::null());
    if let Some(server) = server {
        command.env("PLINTH_SERVER", server);
    }
    if let Some(token) = token {
        command.env("PLINTH_TOKEN", token);
    }
    command
}

/// Runs a command to its end.
pub fn output_of(mut command: Command) -> Run {
    let output = command.output().expect("plinth runs");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

impl Run {
    /// Asserts an exit code, showing both streams when it differs.
    #[track_caller]
    pub fn exits(self, code: i32) -> Self {
        assert_eq!(self.code, code, "expected exit {code}:\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    /// The error a failed command printed as JSON on stderr (with `--output json`).
    #[track_caller]
    pub fn json_error(&self) -> Value {
        let value: Value = serde_json::from_str(self.stderr.trim())
            .unwrap_or_else(|e| panic!("stderr is not one JSON object ({e}):\n{}", self.stderr));
        assert!(value["error"]["code"].is_string(), "no error code in {value}");
        value["error"].clone()
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Whether `GET /healthz` at `addr` answers 200 with `{"status":"ok"}`.
fn healthy(addr: &str) -> bool {
    let Ok(socket) = addr.parse() else { return false };
    let Ok(mut stream) = TcpStream::connect_timeout(&socket, Duration::from_secs(1)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200") && response.contains(r#""status":"ok""#)
}

/// A `plinth server` child process, stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Server {
    pub url: String,
    /// Where the server's proxy listens (`--proxy-listen`).
    pub proxy: String,
    /// Where the proxy serves HTTPS (`--tls-listen`), for a server started with
    /// [`Server::start_tls`].
    pub tls: Option<String>,
    /// The admin token's secret, as the server wrote it to `<data-dir>/admin.token`.
    pub admin: String,
    pub repo: TestRepo,
    /// Holds `data/` (the data dir), `server.log` and `marks/` (files the stacks write).
    dir: tempfile::TempDir,
    child: Child,
}

impl Server {
    /// Starts `plinth server` on `repo` (which must have a commit: the server acts on the
    /// commits made after it starts) and waits until it answers `/healthz`.
    pub fn start(repo: TestRepo) -> Server {
        Self::start_with(repo, false)
    }

    /// [`Server::start`] with the proxy serving HTTPS too (`--tls-listen`).
    pub fn start_tls(repo: TestRepo) -> Server {
        Self::start_with(repo, true)
    }

    fn start_with(repo: TestRepo, tls: bool) -> Server {
        let dir = tempfile::Builder::new().prefix("plinth-server-").tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("marks")).unwrap();
        let (child, addr, proxy, tls) = launch(repo.path(), dir.path(), tls);
        let admin = std::fs::read_to_string(dir.path().join("data").join("admin.token")).unwrap().trim().to_owned();
        assert!(admin.starts_with("plinth_"), "admin.token holds {admin:?}");
        Server { url: format!("http://{addr}"), proxy, tls, admin, repo, dir, child }
    }

    /// Kills the server with SIGKILL, as the OOM killer or a lost machine would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same repo and data dir (on a new port), after a stop.
    pub fn restart(&mut self) {
        assert!(self.child.try_wait().unwrap().is_some(), "the server is still running");
        let (child, addr, proxy, tls) = launch(self.repo.path(), self.dir.path(), self.tls.is_some());
        self.child = child;
        self.url = format!("http://{addr}");
        self.proxy = proxy;
        self.tls = tls;
    }

    /// Where the stacks of a test write marker files.
    pub fn marks(&self) -> PathBuf {
        self.dir.path().join("marks")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's own output so far.
    pub fn log(&self) -> String {
        read(&self.dir.path().join("server.log"))
    }

    /// `plinth ARGS` with PLINTH_SERVER pointing here and PLINTH_TOKEN set to `token`.
    pub fn command(&self, token: &str, args: &[&str]) -> Command {
        plinth_command(Some(&self.url), Some(token), args)
    }

    /// Runs `plinth ARGS` with `token` to its end.
    pub fn cli(&self, token: &str, args: &[&str]) -> Run {
        output_of(self.command(token, args))
    }

    /// Runs `plinth ARGS` as admin.
    pub fn admin(&self, args: &[&str]) -> Run {
        self.cli(&self.admin, args)
    }

    /// Starts `plinth ARGS` with `token` without waiting for it.
    pub fn spawn(&self, token: &str, args: &[&str]) -> Background {
        Background::spawn(self.command(token, args))
    }

    /// Every run, oldest first, from `plinth runs list --output json`.
    pub fn runs(&self) -> Vec<Value> {
        let listed = self.admin(&["runs", "list", "--limit", "1000", "--output", "json"]).success().json();
        let mut runs = listed["runs"].as_array().unwrap().clone();
        runs.sort_by_key(|r| r["id"].as_i64().unwrap());
        runs
    }

    /// One run, from `plinth runs show ID --output json`.
    pub fn run(&self, id: i64) -> Value {
        self.admin(&["runs", "show", &id.to_string(), "--output", "json"]).success().json()
    }

    /// Waits until `count` runs exist for `commit`; returns them by stack name.
    pub fn runs_for(&self, commit: &str, count: usize) -> Vec<Value> {
        self.eventually(&format!("{count} runs for commit {commit}"), || {
            let mut runs: Vec<Value> = self.runs().into_iter().filter(|r| r["commit"] == commit).collect();
            runs.sort_by(|a, b| a["stack"].as_str().cmp(&b["stack"].as_str()));
            (runs.len() == count).then_some(runs)
        })
    }

    /// Waits until run `id` has `status`.
    pub fn wait_status(&self, id: i64, status: &str) -> Value {
        self.eventually(&format!("run #{id} to be {status}"), || {
            let run = self.run(id);
            (run["status"] == status).then_some(run)
        })
    }

    /// Waits for a condition, and on timeout shows the runs and the server's log.
    #[track_caller]
    pub fn eventually<T>(&self, what: &str, check: impl FnMut() -> Option<T>) -> T {
        eventually(what, LONG, check, || self.diagnostics())
    }

    /// What went on, for failure messages: the runs, the logs of unfinished runs, the server.
    pub fn diagnostics(&self) -> String {
        let runs = plinth_command(Some(&self.url), Some(&self.admin), &["runs", "list", "--limit", "1000"]);
        let runs = output_of(runs);
        format!("runs:\n{}{}\nserver log:\n{}", runs.stdout, runs.stderr, self.log())
    }

    /// Stops the server with SIGTERM and returns how it exited.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate().expect("the server stops after SIGTERM")
    }

    /// SIGTERM, then waits; None if the server had to be killed.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let start = Instant::now();
        while start.elapsed() < STOP_GRACE {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(_) => break,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Starts `plinth server` with its data in `dir/data` and its output appended to
/// `dir/server.log`, and waits until it answers `/healthz`. Returns the child, its address, its
/// proxy's, and with `tls`, its proxy's HTTPS address. `plinth` is on the server's PATH, so
/// that services can run `plinth demo-app` from shell scripts too.
fn launch(repo: &Path, dir: &Path, tls: bool) -> (Child, String, String, Option<String>) {
    let data = dir.join("data");
    let log_path = dir.join("server.log");
    // The port is free when picked but may be taken before the server binds it: then the
    // server says so and exits, and it starts again on another port.
    for attempt in 1..=5 {
        let addr = format!("127.0.0.1:{}", free_port());
        let proxy = format!("127.0.0.1:{}", free_port());
        let tls = tls.then(|| format!("127.0.0.1:{}", free_port()));
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_plinth")).parent().unwrap().to_path_buf();
        let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
        let before = read(&log_path).len();
        let mut child = Command::new(env!("CARGO_BIN_EXE_plinth"))
            .args(["server", "--repo"])
            .arg(repo)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", &addr, "--proxy-listen", &proxy, "--poll-interval", "100ms", "--shutdown-grace", "5s"])
            // The HTTPS server also runs its proxy on one worker thread instead of one per core,
            // so that a set `--proxy-workers` is served end to end too.
            .args(tls.iter().flat_map(|tls| ["--tls-listen", tls.as_str(), "--proxy-workers", "1"]))
            .env("PATH", &path)
            .env("PLINTH_LOG", "info")
            .env_remove("PLINTH_LOG_FORMAT")
            .env_remove("PLINTH_SERVER")
            .env_remove("PLINTH_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("plinth server starts");
        let start = Instant::now();
        let exited = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if healthy(&addr) {
                break None;
            }
            if start.elapsed() > LONG {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server did not answer /healthz within {LONG:?}:\n{}", read(&log_path));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let Some(status) = exited else { return (child, addr, proxy, tls) };
        let log = read(&log_path);
        if log.get(before..).is_some_and(|new| new.contains("server.listen")) && attempt < 5 {
            continue;
        }
        panic!("the server exited ({status}) before serving:\n{log}");
    }
    unreachable!("the loop returns or panics")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A `plinth` process running in the background, its output read line by line as it comes.
/// Killed when dropped, if still running.
#[derive(Debug)]
pub struct Background {
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    out: Vec<String>,
    err: Vec<String>,
}

/// Which of a process's streams.
#[derive(Clone, Copy, Debug)]
pub enum Pipe {
    Stdout,
    Stderr,
}

fn lines_of(pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Background {
    fn spawn(mut command: Command) -> Background {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("plinth starts");
        let stdout = lines_of(child.stdout.take().unwrap());
        let stderr = lines_of(child.stderr.take().unwrap());
        Background { child, stdout, stderr, out: Vec::new(), err: Vec::new() }
    }

    /// Waits for a line on `pipe` that contains `needle`; returns it.
    #[track_caller]
    pub fn wait_for_line(&mut self, pipe: Pipe, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            let (rx, seen) = match pipe {
                Pipe::Stdout => (&self.stdout, &mut self.out),
                Pipe::Stderr => (&self.stderr, &mut self.err),
            };
            match rx.recv_timeout(left) {
                Ok(line) => {
                    seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no line with {needle:?} on {pipe:?} within {timeout:?}; saw:\n{}", seen.join("\n"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("{pipe:?} ended without a line with {needle:?}; saw:\n{}", seen.join("\n"))
                }
            }
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the process to end by itself, and returns all it printed.
    #[track_caller]
    pub fn finish(mut self, timeout: Duration) -> Run {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                panic!(
                    "the command did not end within {timeout:?}\nstdout so far:\n{}\nstderr so far:\n{}",
                    self.out.join("\n"),
                    self.err.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The process has exited, so both pipes reach their end.
        self.out.extend(self.stdout.iter());
        self.err.extend(self.stderr.iter());
        let join = |lines: &[String]| lines.iter().map(|l| format!("{l}\n")).collect::<String>();
        Run { code: status.code().unwrap_or(-1), stdout: join(&self.out), stderr: join(&self.err) }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A repo with one commit (a README) and no plinth.toml: the server starts watching it, and
/// the tests then commit their stacks as changes.
pub fn watched_repo() -> TestRepo {
    let mut repo = TestRepo::new();
    repo.write("README.md", "# infra\n");
    repo.commit("start");
    repo
}

fn id_of(run: &Value) -> i64 {
    run["id"].as_i64().unwrap()
}

/// The secret `plinth tokens create` prints on its last line.
fn created_secret(run: &Run) -> String {
    assert!(run.stdout.contains("shown only now"), "{}", run.stdout);
    let secret = run.stdout.lines().last().unwrap().trim().to_owned();
    assert!(secret.starts_with("plinth_") && secret.len() > 40, "{}", run.stdout);
    secret
}

#[test]
fn seed_000_releases_to_stg_and_waits_for_an_sre_to_release_to_prd() {
    let mut server = Server::start(watched_repo());
    write_seed_000(&server.repo);
    let commit = server.repo.commit("seed 000 layout");

    // One run per environment; stg applies by itself.
    let runs = server.runs_for(&commit, 2);
    let (prd, stg) = (id_of(&runs[0]), id_of(&runs[1]));
    assert_eq!((runs[0]["stack"].as_str(), runs[1]["stack"].as_str()), (Some("app/prd"), Some("app/stg")));
    let waited = server.admin(&["runs", "wait", &stg.to_string(), "--timeout", "2m"]).success();
    assert_eq!(waited.stdout.trim(), format!("Run #{stg} (app/stg) ended applied"));
    assert!(waited.stderr.contains(&format!("run #{stg} app/stg: applied")), "{}", waited.stderr);
    server.wait_status(prd, "awaiting_approval");
    // stg has no backend: plinth keeps its state in the data dir, past the run's workspace.
    let state = std::fs::read_to_string(server.data_dir().join("state/app%2Fstg/terraform.tfstate")).unwrap();
    assert!(state.contains("\"app-stg\""), "{state}");
    assert!(!server.data_dir().join(format!("workspaces/{stg}")).exists());
    assert!(
        server.data_dir().join(format!("workspaces/{prd}/plan.tfplan.sealed")).exists(),
        "prd's plan waits, sealed"
    );

    let listed = server.admin(&["runs", "list", "--output", "json"]).success().json();
    let listed = listed["runs"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{listed:#?}");
    let by_stack = |name: &str| listed.iter().find(|r| r["stack"] == name).unwrap().clone();
    let (stg_run, prd_run) = (by_stack("app/stg"), by_stack("app/prd"));
    assert_eq!(stg_run["status"], "applied");
    assert_eq!(prd_run["status"], "awaiting_approval");
    for (run, env) in [(&stg_run, "stg"), (&prd_run, "prd")] {
        assert_eq!(run["environment"], env);
        assert_eq!(run["path"], format!("terraform/{env}"));
        assert_eq!(run["mode"], "apply");
        assert_eq!(run["branch"], "main");
        assert_eq!(run["commit"], commit.as_str());
        assert_eq!(run["created_by"], "poll");
        assert_eq!(run["plan"]["add"], 1, "{run:#}");
    }
    // The table says the same to people.
    let table = server.admin(&["runs", "list"]).success().stdout;
    let rows: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["RUN", "STACK", "ENV", "BRANCH", "COMMIT", "MODE", "STATUS", "PLAN", "CREATED"]);
    let row = rows.iter().find(|r| r[1] == "app/prd").unwrap();
    assert_eq!(
        row[..8],
        [prd.to_string().as_str(), "app/prd", "prd", "main", &commit[..10], "apply", "awaiting_approval", "+1"]
    );
    let only_prd = server.admin(&["runs", "list", "--stack", "app/prd", "--output", "json"]).success().json();
    assert_eq!(only_prd["runs"].as_array().unwrap().len(), 1, "{only_prd:#}");
    assert_eq!(only_prd["runs"][0]["id"], prd);

    // The log is terraform's own output, with plinth's notes.
    let logs = server.admin(&["runs", "logs", &stg.to_string()]).success().stdout;
    for expected in [
        "$ terraform init",
        "Terraform has been successfully initialized!",
        "# module.app.terraform_data.app will be created",
        "module.app.terraform_data.app: Creation complete",
        "Apply complete! Resources: 1 added, 0 changed, 0 destroyed.",
        "name = \"app-stg\"",
    ] {
        assert!(logs.contains(expected), "no {expected:?} in the log:\n{logs}");
    }
    assert!(logs.trim_end().ends_with("plinth: Applied."), "{logs}");
    // As JSON lines, with sequence numbers and streams.
    let jsonl = server.admin(&["runs", "logs", &stg.to_string(), "--output", "json"]).success().stdout;
    let lines: Vec<Value> = jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), logs.lines().count());
    assert_eq!(lines[0]["seq"], 1);
    assert_eq!(lines[0]["stream"], "plinth");
    assert!(
        lines.iter().any(|l| l["stream"] == "stdout" && l["text"] == "Terraform has been successfully initialized!")
    );

    // `show` gives the run and its plan.
    let shown = server.admin(&["runs", "show", &stg.to_string()]).success().stdout;
    let field = |name: &str| {
        shown
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .map(|l| l[name.len()..].trim().to_owned())
            .unwrap_or_else(|| panic!("no {name} in:\n{shown}"))
    };
    assert_eq!(field("run"), format!("#{stg}"));
    assert_eq!(field("stack"), "app/stg (terraform/stg)");
    assert_eq!(field("status"), "applied");
    assert_eq!(field("commit"), format!("{commit} on main"));
    assert_eq!(field("plan"), "Plan: 1 to add, 0 to change, 0 to destroy; 1 output changes.");
    assert!(
        shown.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["create", "module.app.terraform_data.app"]),
        "{shown}"
    );
    let shown = server.run(prd);
    assert_eq!(
        shown["plan"]["resources"],
        serde_json::json!([{"address": "module.app.terraform_data.app", "actions": ["create"]}])
    );

    // An admin makes tokens; each secret is printed once.
    let created = server.admin(&["tokens", "create", "--name", "dev", "--role", "developer"]).success();
    let developer = created_secret(&created);
    let created =
        server.admin(&["tokens", "create", "--name", "oncall", "--role", "sre", "--output", "json"]).success();
    let created = created.json();
    assert_eq!(created["token"]["name"], "oncall");
    assert_eq!(created["token"]["roles"], serde_json::json!(["sre"]));
    let sre = created["secret"].as_str().unwrap().to_owned();
    assert!(sre.starts_with("plinth_") && sre != developer);

    // A developer may read prd's run, but not approve it; the error says who may.
    let id = prd.to_string();
    server.cli(&developer, &["runs", "show", &id]).success();
    let denied = server.cli(&developer, &["runs", "approve", &id]).failure();
    assert!(denied.stdout.is_empty(), "{}", denied.stdout);
    assert!(denied.stderr.starts_with("error[auth.forbidden]: token `dev` (developer) may not"), "{}", denied.stderr);
    let help = denied.stderr.lines().find(|l| l.trim_start().starts_with("help:")).unwrap();
    assert!(help.contains("sre"), "{}", denied.stderr);
    let denied = server.cli(&developer, &["runs", "approve", &id, "--output", "json"]).failure();
    assert_eq!(denied.json_error()["code"], "auth.forbidden");
    assert_eq!(server.run(prd)["status"], "awaiting_approval");

    // The sre approves; `runs wait` follows the apply to its end.
    let approved = server.cli(&sre, &["runs", "approve", &id]).success();
    assert!(approved.stdout.starts_with(&format!("Approved run #{prd}")), "{}", approved.stdout);
    let waited = server.cli(&sre, &["runs", "wait", &id, "--timeout", "2m", "--output", "json"]).success();
    let run = waited.json();
    assert_eq!(run["status"], "applied", "{run:#}");
    assert_eq!(run["approved_by"], "oncall");
    let shown = server.admin(&["runs", "show", &id]).success().stdout;
    assert!(shown.lines().any(|l| l.starts_with("approved by") && l.ends_with("oncall")), "{shown}");
    let logs = server.admin(&["runs", "logs", &id]).success().stdout;
    assert!(logs.contains("plinth: Approved by oncall."), "{logs}");
    assert!(logs.contains("name = \"app-prd\""), "{logs}");

    // Both stacks, unlocked, with their latest runs; connection details given as flags.
    let stacks = output_of(plinth_command(
        None,
        None,
        &["stacks", "list", "--server", &format!("{}/", server.url), "--token", &server.admin, "--output", "json"],
    ))
    .success()
    .json();
    assert_eq!(stacks["main_branch"], "main");
    assert_eq!(stacks["commit"], commit.as_str());
    let names: Vec<&str> =
        stacks["stacks"].as_array().unwrap().iter().map(|s| s["stack"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["app/prd", "app/stg"]);
    for stack in stacks["stacks"].as_array().unwrap() {
        assert_eq!(stack["locks"], serde_json::json!([]), "{stack:#}");
        assert_eq!(stack["latest_run"]["status"], "applied", "{stack:#}");
    }
    let table = server.cli(&developer, &["stacks", "list"]).success().stdout;
    assert!(table.starts_with(&format!("Stacks at main ({}):", &commit[..10])), "{table}");
    let row = |stack: &str| -> Vec<String> {
        table.lines().find(|l| l.starts_with(stack)).unwrap().split_whitespace().map(str::to_owned).collect()
    };
    assert_eq!(row("app/prd"), ["app/prd", "terraform/prd", "prd", "-", &format!("#{prd}"), "applied"]);
    assert_eq!(row("app/stg"), ["app/stg", "terraform/stg", "stg", "-", &format!("#{stg}"), "applied"]);

    // A developer asks for a plan of stg at main: a plan-only run, which never applies.
    let asked = server.cli(&developer, &["plan", "--ref", "main", "--stack", "app/stg", "--output", "json"]).success();
    let asked = asked.json();
    assert_eq!(asked["runs"].as_array().unwrap().len(), 1, "{asked:#}");
    let plan = &asked["runs"][0];
    assert_eq!(plan["stack"], "app/stg");
    assert_eq!(plan["mode"], "plan");
    assert_eq!(plan["commit"], commit.as_str());
    assert_eq!(plan["created_by"], "dev");
    let plan_id = id_of(plan).to_string();
    let waited = server.cli(&developer, &["runs", "wait", &plan_id, "--timeout", "2m", "--output", "json"]).success();
    let status = waited.json()["status"].as_str().unwrap().to_owned();
    assert!(status == "no_changes" || status == "planned", "{}", waited.stdout);
    // In text, it says what it started.
    let asked = server.cli(&developer, &["plan", "--ref", "main", "--stack", "app/stg"]).success().stdout;
    assert!(asked.starts_with("Planning 1 stack at main:"), "{asked}");
    let second = asked.lines().nth(2).unwrap().split_whitespace().next().unwrap().to_owned();
    server.cli(&developer, &["runs", "wait", &second, "--timeout", "2m"]).success();
    // A stack that does not exist is refused.
    let refused = server.cli(&developer, &["plan", "--ref", "main", "--stack", "app/qa"]).failure();
    assert!(refused.stderr.starts_with("error[plan.not_possible]:"), "{}", refused.stderr);

    // Tokens are listed, never with their secrets.
    let secrets = [server.admin.as_str(), developer.as_str(), sre.as_str()];
    let listed = server.admin(&["tokens", "list"]).success();
    let listed_json = server.admin(&["tokens", "list", "--output", "json"]).success();
    for out in [&listed.stdout, &listed_json.stdout] {
        for secret in secrets {
            assert!(!out.contains(secret) && !out.contains(&secret[7..]), "a secret is listed:\n{out}");
        }
        assert!(!out.contains("plinth_"), "{out}");
    }
    let tokens = listed_json.json();
    let names: Vec<&str> = tokens["tokens"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["admin", "dev", "oncall"]);
    for token in tokens["tokens"].as_array().unwrap() {
        let keys: Vec<&str> = token.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["name", "roles", "services", "created_by", "created_at", "revoked_at"], "{token:#}");
    }
    let rows: Vec<Vec<&str>> = listed.stdout.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["NAME", "ROLES", "CREATED", "BY", "CREATED", "STATE"]);
    assert_eq!((rows[2][0], rows[2][1], rows[2][2], rows[2][4]), ("dev", "developer", "admin", "active"));
    // Only admins manage tokens.
    let denied = server.cli(&developer, &["tokens", "list"]).failure();
    assert!(denied.stderr.starts_with("error[auth.forbidden]"), "{}", denied.stderr);

    // Revoking a token: requests with it fail from then on.
    let revoked = server.admin(&["tokens", "revoke", "dev"]).success();
    assert_eq!(revoked.stdout.trim(), "Revoked token `dev`.");
    let refused = server.cli(&developer, &["runs", "list"]).failure();
    assert!(refused.stderr.starts_with("error[auth.invalid_token]: "), "{}", refused.stderr);
    assert!(refused.stderr.contains("\n  help: "), "{}", refused.stderr);
    let refused = server.cli(&developer, &["runs", "list", "--output", "json"]).failure();
    assert_eq!(refused.json_error()["code"], "auth.invalid_token");
    let again = server.admin(&["tokens", "revoke", "dev"]).failure();
    assert!(again.stderr.starts_with("error[token.not_found]"), "{}", again.stderr);
    let tokens = server.admin(&["tokens", "list", "--output", "json"]).success().json();
    let dev = tokens["tokens"].as_array().unwrap().iter().find(|t| t["name"] == "dev").unwrap().clone();
    assert!(dev["revoked_at"].is_string(), "{dev:#}");
    // The others still work.
    server.cli(&sre, &["runs", "list"]).success();

    // The audit log names who did what, refusals included.
    let audit = server.admin(&["audit", "--output", "json"]).success().json();
    let entries = audit["entries"].as_array().unwrap();
    let has = |actor: &str, action: &str, object: &str, result: &str| {
        entries
            .iter()
            .any(|e| e["actor"] == actor && e["action"] == action && e["object"] == object && e["result"] == result)
    };
    let prd_object = format!("run/{prd}");
    for (actor, action, object, result) in [
        ("plinth", "token.create", "token/admin", "ok"),
        ("admin", "token.create", "token/dev", "ok"),
        ("admin", "token.create", "token/oncall", "ok"),
        ("dev", "run.approve", prd_object.as_str(), "403 auth.forbidden"),
        ("oncall", "run.approve", prd_object.as_str(), "ok"),
        ("dev", "plan.request", "ref/main", "ok"),
        ("admin", "token.revoke", "token/dev", "ok"),
        ("admin", "token.revoke", "token/dev", "404 token.not_found"),
    ] {
        assert!(has(actor, action, object, result), "no {actor} {action} {object} {result} in:\n{audit:#}");
    }
    let approval = entries.iter().find(|e| e["actor"] == "oncall" && e["action"] == "run.approve").unwrap();
    assert_eq!(approval["details"], serde_json::json!({"stack": "app/prd", "environment": "prd"}));
    // Reads are not audited, and secrets never are.
    assert!(entries.iter().all(|e| !e["action"].as_str().unwrap().starts_with("GET")), "{audit:#}");
    let text = audit.to_string();
    for secret in secrets {
        assert!(!text.contains(secret), "a secret is in the audit log");
    }
    // Filtered by actor, and as a table.
    let by_oncall = server.admin(&["audit", "--actor", "oncall", "--output", "json"]).success().json();
    let actors: Vec<&str> =
        by_oncall["entries"].as_array().unwrap().iter().map(|e| e["actor"].as_str().unwrap()).collect();
    assert_eq!(actors, ["oncall"]);
    let table = server.admin(&["audit"]).success().stdout;
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["ID", "AT", "ACTOR", "ACTION", "OBJECT", "RESULT"]);
    assert!(table.lines().any(|l| l.contains("oncall") && l.contains("run.approve") && l.ends_with("ok")), "{table}");
    // Only admins read it.
    let denied = server.cli(&sre, &["audit"]).failure();
    assert!(denied.stderr.starts_with("error[auth.forbidden]"), "{}", denied.stderr);

    // SIGTERM stops the server cleanly.
    let status = server.stop();
    assert!(status.success(), "the server exited with {status}");
}
